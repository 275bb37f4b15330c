import Audit
import Foundation
import Identity
import Runtime
import Testing
import Transport

@Suite struct ChannelRuntimeTests {
    let alice = IdentityKeyPair.generate()
    let bob = IdentityKeyPair.generate()

    @Test func aHandshakeOverASocketpairYieldsChannelsThatReportTheVerifiedKeys() async throws {
        let baseline = DescriptorCensus.openCount()
        let sinkA = AuditMemorySink(writer: alice.publicIdentity)
        let sinkB = AuditMemorySink(writer: bob.publicIdentity)
        let a = PeerTestSupport.establishment(alice, audit: sinkA)
        let b = PeerTestSupport.establishment(bob, audit: sinkB)
        let (ca, cb) = try await PeerTestSupport.connectedPair(a, b)
        #expect(ca.isAuthenticated && cb.isAuthenticated)
        #expect(ca.verifiedPeer?.publicKey == bob.publicKey)
        #expect(cb.verifiedPeer?.publicKey == alice.publicKey)
        #expect(ca.sessionID == cb.sessionID && ca.sessionID != nil)
        #expect(ca.handshakeHash == cb.handshakeHash)

        try await ca.send(Array("hello".utf8))
        #expect(try await cb.receive() == Array("hello".utf8))
        try await cb.send(Array("world".utf8))
        #expect(try await ca.receive() == Array("world".utf8))

        async let closeA = ca.close()
        #expect(try await cb.receive() == nil, "the peer's CLOSE ends the message sequence")
        let summaryB = await cb.close()
        let summaryA = await closeA
        #expect(summaryA.clean && summaryB.clean)
        #expect(summaryA.messagesSent == 1 && summaryA.messagesReceived == 1)
        #expect(await PeerTestSupport.descriptorsReturn(to: baseline))

        let succeeded = PeerTestSupport.events(sinkB, .handshakeSucceeded)
        #expect(succeeded.count == 1)
        #expect(succeeded.first?.provedPeer == AuditPeerID(alice.publicIdentity))
        #expect(succeeded.first?.expectedPeer == AuditPeerID(alice.publicIdentity))
        #expect(succeeded.first?.sessionID?.bytes == cb.sessionID?.bytes)
        #expect(succeeded.first?.transcriptHash?.bytes == cb.handshakeHash)
        let closed = PeerTestSupport.events(sinkA, .channelClosed)
        #expect(closed.count == 1 && closed.first?.clean == true)
        #expect(closed.first?.traffic == AuditTraffic(bytesSent: 5, bytesReceived: 5, messagesSent: 1, messagesReceived: 1))
    }
}
