import Audit
import Foundation
import Identity
import OCapN
import Runtime
import RuntimeTestSupport
import SecureChannel
import TestSupport
import Testing
import Transport

@Suite(.ownThread) struct ChannelRuntimeTests {
    let alice = IdentityKeyPair.generate()
    let bob = IdentityKeyPair.generate()

    @Test func aHandshakeOverASocketpairYieldsChannelsThatReportTheVerifiedKeys() async throws {
        let sinkA = AuditMemorySink(writer: alice.publicIdentity)
        let sinkB = AuditMemorySink(writer: bob.publicIdentity)
        let a = PeerTestSupport.establishment(alice, audit: sinkA)
        let b = PeerTestSupport.establishment(bob, audit: sinkB)
        let (ea, eb) = try FileDescriptor.socketPair()
        let links = [RawSocket.link(of: ea), RawSocket.link(of: eb)]
        async let initiator = a.initiate(over: ea, to: bob.publicIdentity)
        async let responder = b.respond(over: eb, expecting: alice.publicIdentity)
        let (ca, cb) = try await (initiator, responder)
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
        for link in links { #expect(await RawSocket.becomesClosed(link)) }

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

@Suite(.ownThread) struct ChannelMessageTests {
    let alice = IdentityKeyPair.generate()
    let bob = IdentityKeyPair.generate()

    @Test func messagesLargerThanOneFrameAreSplitAndReassembledExactly() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        let sizes = [1, 65_518, 65_519, 65_536, 1 << 20, (3 << 20) + 7]
        let messages = sizes.map { n in (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ n) } }
        async let sending: Void = { for m in messages { try await ca.send(m) } }()
        for m in messages {
            let got = try await cb.receive()
            #expect(got == m, "message of \(m.count) bytes")
        }
        try await sending
        async let closing = ca.close()
        #expect(try await cb.receive() == nil)
        #expect((await cb.close()).clean)
        #expect((await closing).clean)
    }

    @Test func aMessageOverTheConfiguredMaximumIsRefusedAndTheChannelStaysUsable() async throws {
        var small = ChannelRuntimeConfiguration()
        small.handshake = HandshakeConfiguration(channel: ChannelConfiguration(maxMessageSize: 1000))
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, small), PeerTestSupport.establishment(bob, small))
        #expect(await PeerTestSupport.code { try await ca.send([UInt8](repeating: 1, count: 1001)) } == .handshake(.messageTooLarge))
        try await ca.send([UInt8](repeating: 2, count: 1000))
        #expect(try await cb.receive() == [UInt8](repeating: 2, count: 1000))
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func aReceiverThatDoesNotReadMakesTheSenderSuspendThenEverythingArrivesInOrder() async throws {
        var bounded = ChannelRuntimeConfiguration()
        bounded.maxInboundQueuedMessages = 4
        bounded.maxOutboundQueuedBytes = 64 << 10
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, bounded), PeerTestSupport.establishment(bob, bounded))
        let total = 100
        let sent = Counter()
        let sender = Task {
            for i in 0..<total {
                try await ca.send([UInt8](repeating: UInt8(i % 251), count: 64 << 10))
                sent.increment()
            }
        }
        // 100 × 64 KiB = 6.25 MiB cannot fit in 4 queued messages, the socket buffers and 64 KiB
        // of outbound queue: the sender must come to a stop while nobody reads.
        var stalled = -1
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while ContinuousClock.now < deadline {
            let before = sent.current
            try await Task.sleep(for: .milliseconds(150))
            if sent.current == before {
                stalled = before
                break
            }
        }
        #expect(stalled >= 0 && stalled < total, "the sender stopped short of \(total) (stopped at \(stalled))")
        for i in 0..<total {
            let m = try await cb.receive()
            #expect(m?.count == 64 << 10 && m?.first == UInt8(i % 251))
        }
        try await sender.value
        #expect(sent.current == total)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func anAbortWithoutCloseIsReportedAsTruncatedAndAudited() async throws {
        let sinkB = AuditMemorySink(writer: bob.publicIdentity)
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob, audit: sinkB))
        try await ca.send([1, 2, 3])
        await ca.abort()
        #expect(try await cb.receive() == [1, 2, 3], "messages before the cut are still delivered")
        #expect(await PeerTestSupport.code { try await cb.receive() } == .handshake(.truncated))
        let summary = await cb.close()
        #expect(!summary.clean && summary.reason?.code == .handshake(.truncated))
        let closed = PeerTestSupport.events(sinkB, .channelClosed)
        #expect(closed.count == 1 && closed.first?.clean == false && closed.first?.reason == .handshake(.truncated))
        #expect(closed.first?.traffic?.messagesReceived == 1)
    }

    @Test func messagesIterateAsAnAsyncSequenceThatEndsAtTheCleanClose() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        for i in 1...5 { try await ca.send([UInt8(i)]) }
        async let closing = ca.close()
        var seen: [[UInt8]] = []
        for try await m in cb.messages { seen.append(m) }
        #expect(seen == (1...5).map { [UInt8($0)] })
        await cb.close()
        #expect((await closing).clean)
        #expect(await PeerTestSupport.code { try await ca.send([9]) } == .netlayer(.channelClosed))
    }
}

@Suite(.ownThread) struct ChannelHandshakeRuntimeTests {
    let alice = IdentityKeyPair.generate()
    let bob = IdentityKeyPair.generate()

    @Test func aResponderThatHearsNothingTimesOutClosesTheSocketAndAudits() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let b = PeerTestSupport.establishment(bob, PeerTestSupport.fastConfiguration(timeout: .milliseconds(150)), audit: sink)
        let (ours, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        let link = RawSocket.link(of: ours)
        let started = ContinuousClock.now
        #expect(await PeerTestSupport.code { try await b.respond(over: ours, expecting: alice.publicIdentity) } == .handshake(.timeout))
        #expect(started.duration(to: .now) < .seconds(5), "ends at its own deadline, not the 10 s default")
        #expect(await RawSocket.becomesClosed(link))
        #expect(RawSocket.read(theirs).eof, "the initiator's end sees EOF and no byte")
        let failed = PeerTestSupport.events(sink, .handshakeFailed)
        #expect(failed.count == 1 && failed.first?.reason == .handshake(.timeout) && failed.first?.role == .responder)
        #expect(PeerTestSupport.events(sink, .handshakeStarted).first?.attempt == failed.first?.attempt)
        #expect(b.limiter.inProgress == 0)
    }

    @Test func anInitiatorWhoseResponderNeverAnswersTimesOut() async throws {
        let a = PeerTestSupport.establishment(alice, PeerTestSupport.fastConfiguration(timeout: .milliseconds(150)))
        let (ours, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        let link = RawSocket.link(of: ours)
        #expect(await PeerTestSupport.code { try await a.initiate(over: ours, to: bob.publicIdentity) } == .handshake(.timeout))
        let seen = RawSocket.read(theirs)
        #expect(seen.bytes.count == 120 && seen.eof, "msg1, then the close")
        #expect(await RawSocket.becomesClosed(link))
    }

    @Test func junkGetsNothingBackButACloseAndItsOwnCode() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let b = PeerTestSupport.establishment(bob, audit: sink)
        let (ours, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        try RawSocket.write(theirs, [UInt8](repeating: 0x41, count: 120))
        #expect(await PeerTestSupport.code { try await b.respond(over: ours, expecting: alice.publicIdentity) } == .handshake(.badMagic))
        let seen = RawSocket.read(theirs)
        #expect(seen.bytes.isEmpty && seen.eof)
        #expect(PeerTestSupport.events(sink, .handshakeFailed).first?.reason == .handshake(.badMagic))
    }

    @Test func theHandshakeCapRefusesTheNextHandshakeAtOnceAndFreesItsSlotAfterwards() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let limiter = HandshakeLimiter(limit: 1)
        let b = PeerTestSupport.establishment(
            bob, PeerTestSupport.fastConfiguration(timeout: .milliseconds(300)), limiter: limiter, audit: sink)
        let (first, firstPeer) = try FileDescriptor.socketPair()
        let (second, secondPeer) = try FileDescriptor.socketPair()
        defer { firstPeer.close(); secondPeer.close() }
        let secondLink = RawSocket.link(of: second)
        let pending = Task { await PeerTestSupport.code { try await b.respond(over: first, expecting: alice.publicIdentity) } }
        #expect(await PeerTestSupport.eventually { limiter.inProgress == 1 })
        #expect(await PeerTestSupport.code { try await b.respond(over: second, expecting: alice.publicIdentity) } == .handshake(.handshakeLimitExceeded))
        #expect(await RawSocket.becomesClosed(secondLink))
        #expect(await pending.value == .handshake(.timeout))
        #expect(limiter.inProgress == 0)
        #expect(PeerTestSupport.events(sink, .handshakeFailed).map(\.reason).contains(.handshake(.handshakeLimitExceeded)))
        // The slot is free again: a real handshake now succeeds.
        let (ca, cb) = try await PeerTestSupport.connectedPair(PeerTestSupport.establishment(alice), b)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func aDescriptorThatIsNotASocketpairEndIsRefusedAndClosed() async throws {
        let b = PeerTestSupport.establishment(bob)
        let (readEnd, writeEnd) = RawSocket.pipeEnds()
        defer { writeEnd.close() }
        #expect(await PeerTestSupport.code { try await b.respond(over: readEnd, expecting: alice.publicIdentity) } == .handshake(.passedSocketInvalid))
        #expect(!readEnd.isOpen, "the runtime closed the descriptor it was given")
    }

    @Test func anIntroductionAddressedToSomeoneElseIsRefusedBeforeAnyByteIsRead() async throws {
        let b = PeerTestSupport.establishment(bob)
        let (ours, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        let intro = IntroductionContext(from: PeerLocator(identity: alice.publicIdentity), to: PeerLocator(identity: alice.publicIdentity))
        #expect(await PeerTestSupport.code { try await b.respond(over: ours, expecting: alice.publicIdentity, introduction: intro) } == .handshake(.notAddressedToUs))
        #expect(RawSocket.read(theirs).eof)
    }

    @Test func aGoblinsPeerIsRefusedByDefaultWithItsOwnCode() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let b = PeerTestSupport.establishment(bob, audit: sink)
        let (ours, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        try RawSocket.write(theirs, Array("<16'op:start-session".utf8) + [0x33])
        #expect(await PeerTestSupport.code { try await b.respond(over: ours, expecting: alice.publicIdentity) } == .netlayer(.legacyPeerRefused))
        #expect(RawSocket.read(theirs).eof)
        let refused = PeerTestSupport.events(sink, .legacyPeerRefused)
        #expect(refused.count == 1 && refused.first?.reason == .netlayer(.legacyPeerRefused))
        #expect(PeerTestSupport.events(sink, .handshakeFailed).isEmpty, "one terminal record per attempt")
    }

    @Test func aGoblinsPeerIsAdmittedUnauthenticatedOnlyWhenOptedIn() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let b = PeerTestSupport.establishment(bob, PeerTestSupport.fastConfiguration(timeout: .seconds(3), allowLegacy: true), audit: sink)
        let (ours, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        let link = RawSocket.link(of: ours)
        // Dripped: the marker arrives in pieces.
        let marker = Array("<16'op:start-session".utf8)
        try RawSocket.write(theirs, Array(marker[0..<5]))
        let writer = Task {
            try await Task.sleep(for: .milliseconds(20))
            try RawSocket.write(theirs, Array(marker[5...]) + Array("rest".utf8))
        }
        let channel = try await b.respond(over: ours, expecting: alice.publicIdentity)
        try await writer.value
        #expect(!channel.isAuthenticated)
        #expect(channel.verifiedPeer == nil)
        #expect(channel.peerFingerprint == "unauthenticated")
        var got: [UInt8] = []
        while got.count < marker.count + 4, let m = try await channel.receive() { got += m }
        #expect(got == marker + Array("rest".utf8))
        try await channel.send(Array("reply".utf8))
        #expect(RawSocket.read(theirs, atLeast: 5).bytes == Array("reply".utf8))
        let summary = await channel.close()
        #expect(!summary.clean)
        #expect(await RawSocket.becomesClosed(link))
        #expect(PeerTestSupport.events(sink, .legacyPeerAdmitted).count == 1)
        #expect(PeerTestSupport.events(sink, .channelClosed).first?.clean == false)
    }
}

@Suite(.ownThread) struct ChannelConcurrencyTests {
    /// Regression: with a suspended write source on the same descriptor, libdispatch on Linux
    /// lost read events under load and handshakes hung until their deadline.
    @Test(arguments: 0..<6) func manyConcurrentHandshakesAndRoundTripsAllComplete(_ lane: Int) async throws {
        let a = PeerTestSupport.establishment(IdentityKeyPair.generate(), PeerTestSupport.fastConfiguration(timeout: .seconds(3)))
        let b = PeerTestSupport.establishment(IdentityKeyPair.generate(), PeerTestSupport.fastConfiguration(timeout: .seconds(3)))
        for round in 0..<40 {
            let (ca, cb) = try await PeerTestSupport.connectedPair(a, b)
            try await ca.send([UInt8(lane), UInt8(round)])
            #expect(try await cb.receive() == [UInt8(lane), UInt8(round)])
            #expect(await PeerTestSupport.closeBoth(ca, cb))
        }
    }
}
