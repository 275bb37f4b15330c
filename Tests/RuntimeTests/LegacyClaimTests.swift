import Audit
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import RuntimeTestSupport
import SecureChannel
import TestSupport
import Testing
import Transport

/// Legacy (Goblins) channels claim nothing (issue 11 item 4): the server's `from` is an
/// `UnverifiedPeerClaim`, audited as `claimed_from` with `authenticated: false`; the allow-list
/// decides which claims are admitted; a key seen completing UDS-HS1 is never admitted as legacy.
@Suite(.ownThread) struct LegacyClaimTests {
    let alice = IdentityKeyPair.generate()
    let bob = IdentityKeyPair.generate()
    let carol = IdentityKeyPair.generate()
    static let marker = Array("<16'op:start-session".utf8)

    func establishment(_ policy: LegacyPeerPolicy, audit: AuditMemorySink) -> ChannelEstablishment {
        var configuration = PeerTestSupport.fastConfiguration(timeout: .seconds(3))
        configuration.legacyPeers = policy
        return PeerTestSupport.establishment(bob, configuration, audit: audit)
    }

    /// A Goblins peer on a fresh socket whose introduction claims `claimed`.
    func legacy(_ b: ChannelEstablishment, claiming claimed: PublicIdentity) async throws -> Result<PeerChannel, PeerError> {
        let (ours, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        try RawSocket.write(theirs, Self.marker + Array("x".utf8))
        do {
            return .success(try await b.respond(over: ours, expecting: claimed))
        } catch {
            return .failure(error)
        }
    }

    @Test("An admitted legacy channel shows its claim only as an UnverifiedPeerClaim, never as an identity, in the API and the audit log")
    func claimIsNotAnIdentity() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let b = establishment(.any, audit: sink)
        guard case let .success(channel) = try await legacy(b, claiming: alice.publicIdentity) else {
            Issue.record("legacy peer not admitted")
            return
        }
        #expect(!channel.isAuthenticated && channel.verifiedPeer == nil && channel.expectedPeer == nil)
        #expect(channel.legacyClaim?.claimedKey == alice.publicIdentity)
        #expect(channel.legacyClaim?.description.hasPrefix("unverified claim ") == true)
        #expect(channel.peerFingerprint == "unauthenticated")
        _ = await channel.close()
        for kind in [AuditEventKind.legacyPeerAdmitted, .channelClosed] {
            let event = try #require(PeerTestSupport.events(sink, kind).first)
            #expect(event.claimedFrom == AuditPeerID(alice.publicIdentity), "\(kind)")
            #expect(event.authenticated == false)
            #expect(event.expectedPeer == nil && event.from == nil && event.provedPeer == nil)
            #expect(event.remotePeer == nil && !event.peers.contains(AuditPeerID(alice.publicIdentity)))
        }
        let line = String(decoding: AuditRecord(
            seq: 1, prev: AuditRecord.genesis, timestamp: AuditTimestamp.now(),
            event: try #require(PeerTestSupport.events(sink, .legacyPeerAdmitted).first), log: nil).encode(), as: UTF8.self)
        #expect(line.contains("\"claimed_from\":\"\(alice.publicIdentity.fingerprint)\"") && line.contains("\"authenticated\":false"))
        #expect(!line.contains("\"expected\"") && !line.contains("\"from\"") && !line.contains("\"proved\""))
        let decoded = try AuditRecord.decode(ArraySlice(Array(line.utf8)))
        #expect(decoded.event.claimedFrom == AuditPeerID(alice.publicIdentity) && decoded.event.authenticated == false)
    }

    @Test("The allow-list admits only the claims it names; everything else is refused as legacyPeerRefused")
    func allowList() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let b = establishment(.allow([carol.publicIdentity]), audit: sink)
        guard case let .failure(error) = try await legacy(b, claiming: alice.publicIdentity) else {
            Issue.record("a claim outside the allow-list was admitted")
            return
        }
        #expect(error.code == .netlayer(.legacyPeerRefused))
        let refused = try #require(PeerTestSupport.events(sink, .legacyPeerRefused).first)
        #expect(refused.reason == .netlayer(.legacyPeerRefused) && refused.claimedFrom == AuditPeerID(alice.publicIdentity))
        #expect(refused.expectedPeer == nil && refused.authenticated == false)
        guard case let .success(channel) = try await legacy(b, claiming: carol.publicIdentity) else {
            Issue.record("an allow-listed claim was refused")
            return
        }
        #expect(channel.legacyClaim?.claimedKey == carol.publicIdentity)
        await channel.abort()
    }

    @Test("A key that completed UDS-HS1 with this peer is refused as legacy afterwards (legacyKeyProvedBefore)")
    func provedKeyNeverLegacy() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let b = establishment(.any, audit: sink)
        let a = PeerTestSupport.establishment(alice, PeerTestSupport.fastConfiguration(timeout: .seconds(3)))
        guard case let .success(before) = try await legacy(b, claiming: alice.publicIdentity) else {
            Issue.record("legacy refused before any handshake")
            return
        }
        await before.abort()
        let (ca, cb) = try await PeerTestSupport.connectedPair(a, b)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
        #expect(b.verifiedPeers.count == 1)
        guard case let .failure(error) = try await legacy(b, claiming: alice.publicIdentity) else {
            Issue.record("a key that proved itself was admitted as legacy")
            return
        }
        #expect(error.code == .netlayer(.legacyPeerRefused))
        #expect(PeerTestSupport.events(sink, .legacyPeerRefused).map(\.reason) == [.runtime(.legacyKeyProvedBefore)])
        guard case let .success(other) = try await legacy(b, claiming: carol.publicIdentity) else {
            Issue.record("an unrelated claim was refused")
            return
        }
        await other.abort()
    }

    @Test("A full memory of verified keys refuses every legacy claim: it fails closed, never forgets")
    func fullMemoryFailsClosed() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        var configuration = PeerTestSupport.fastConfiguration(timeout: .seconds(3))
        configuration.legacyPeers = .any
        let b = try ChannelEstablishment(identity: bob, configuration: configuration, verifiedPeers: VerifiedPeerMemory(capacity: 1),
                                     audit: sink, logger: PeerTestSupport.quietLogger)
        let a = PeerTestSupport.establishment(alice, PeerTestSupport.fastConfiguration(timeout: .seconds(3)))
        let (ca, cb) = try await PeerTestSupport.connectedPair(a, b)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
        guard case .failure = try await legacy(b, claiming: carol.publicIdentity) else {
            Issue.record("admitted with a full memory")
            return
        }
        #expect(PeerTestSupport.events(sink, .legacyPeerRefused).map(\.reason) == [.runtime(.legacyKeyProvedBefore)])
    }
}
