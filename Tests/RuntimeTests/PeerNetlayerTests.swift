import Audit
import Foundation
import Identity
import OCapN
import Runtime
import RuntimeTestSupport
import Testing
import Transport

@Suite(.ownThread) struct PeerNetlayerTests {
    @Test func twoPeersMeetThroughAServerAndEachSeesTheOthersVerifiedKey() async throws {
        let server = try TestIntroServer()
        defer { server.stop() }
        let a = TestPeer()
        let b = TestPeer()
        let handleA = try await a.netlayer.addServer(path: server.path, expectedKey: server.publicIdentity)
        _ = try await b.netlayer.addServer(path: server.path)
        #expect(handleA.server == server.publicIdentity)
        #expect(b.netlayer.locator.hintServers == [server.publicIdentity])
        #expect(b.netlayer.locator.hints?[server.publicIdentity] == .string("t"))

        async let accepted = b.nextIncoming()
        let ca = try await a.netlayer.connect(to: b.netlayer.locator)
        let cb = try #require(await accepted)
        #expect(ca.verifiedPeer?.publicKey == b.identity.publicKey)
        #expect(cb.verifiedPeer?.publicKey == a.identity.publicKey)
        #expect(cb.introduction.from?.identity == a.identity)
        #expect(cb.introduction.to?.identity == b.identity)
        #expect(cb.introduction.server == server.publicIdentity)

        try await ca.send(Array("ping".utf8))
        let got = try #require(try await cb.receive())
        try await cb.send(got)
        #expect(try await ca.receive() == Array("ping".utf8))
        #expect(await PeerTestSupport.closeBoth(ca, cb))

        let succeeded = b.events(.handshakeSucceeded).first
        #expect(succeeded?.introServer == AuditPeerID(server.publicIdentity))
        #expect(succeeded?.from == AuditPeerID(a.identity) && succeeded?.to == AuditPeerID(b.identity))
        #expect(a.events(.registrationAccepted).count == 1)
        await a.netlayer.shutdown()
        await b.netlayer.shutdown()
        #expect(await handleA.disconnected().code == .netlayer(.netlayerClosed))
    }

    @Test func hintsFollowTheLiveServersAndOneServersEndAffectsOnlyItself() async throws {
        let first = try TestIntroServer()
        let second = try TestIntroServer()
        defer { first.stop(); second.stop() }
        let a = TestPeer()
        let b = TestPeer()
        let handle1 = try await a.netlayer.addServer(path: first.path)
        _ = try await a.netlayer.addServer(path: second.path)
        _ = try await b.netlayer.addServer(path: first.path)
        _ = try await b.netlayer.addServer(path: second.path)
        #expect(Set(a.netlayer.locator.hintServers) == [first.publicIdentity, second.publicIdentity])

        first.stop()
        #expect(await handle1.disconnected().code == .netlayer(.serverDisconnected))
        #expect(await PeerTestSupport.eventually { a.netlayer.locator.hintServers == [second.publicIdentity] })
        #expect(await PeerTestSupport.eventually { b.netlayer.locator.hintServers == [second.publicIdentity] })

        // B's old locator still names both; the dead one is skipped, the live one is used.
        async let accepted = b.nextIncoming()
        let ca = try await a.netlayer.connect(to: b.netlayer.locator)
        let cb = try #require(await accepted)
        #expect(cb.introduction.server == second.publicIdentity)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
        await a.netlayer.shutdown()
        await b.netlayer.shutdown()
    }

    @Test func aTargetThatSharesNoServerIsAClearError() async throws {
        let first = try TestIntroServer()
        let second = try TestIntroServer()
        defer { first.stop(); second.stop() }
        let a = TestPeer()
        let b = TestPeer()
        _ = try await a.netlayer.addServer(path: first.path)
        _ = try await b.netlayer.addServer(path: second.path)
        #expect(await PeerTestSupport.code { try await a.netlayer.connect(to: b.netlayer.locator) } == .netlayer(.noSharedServer))
        #expect(await PeerTestSupport.code { try await a.netlayer.connect(to: PeerLocator(identity: b.identity)) } == .netlayer(.noSharedServer))
        #expect(await PeerTestSupport.code { try await a.netlayer.connect(to: a.netlayer.locator) } == .handshake(.selfConnection))
        await a.netlayer.shutdown()
        await b.netlayer.shutdown()
    }

    @Test func aPinnedServerKeyThatDoesNotMatchRefusesRegistration() async throws {
        let server = try TestIntroServer()
        defer { server.stop() }
        let a = TestPeer()
        let wrong = IdentityKeyPair.generate().publicIdentity
        let error = await PeerTestSupport.code { try await a.netlayer.addServer(path: server.path, expectedKey: wrong) }
        #expect(error == .netlayer(.registrationFailed))
        #expect(a.netlayer.locator.hints == nil)
        #expect(a.events(.registrationRefused).count == 1)
        await a.netlayer.shutdown()
    }

    @Test func anUnreachableOrSilentServerFailsWithinItsDeadline() async throws {
        let a = TestPeer(registrationTimeout: .milliseconds(200))
        #expect(await PeerTestSupport.code { try await a.netlayer.addServer(path: "/nonexistent/ocapn-uds-test.sock") } == .netlayer(.serverUnreachable))
        let dir = try TemporaryTestDirectory()
        defer { dir.remove() }
        let silent = try ListeningSocket.bind(path: dir.path + "/silent")  // accepts nothing, answers nothing
        defer { silent.close() }
        // How late a 200 ms sleep wakes on this machine right now (other tests run beside this one):
        // the allowance for scheduling, measured in the same run instead of guessed.
        let probe = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(200))
        let lateness = probe.duration(to: .now) - .milliseconds(200)
        let started = ContinuousClock.now
        #expect(await PeerTestSupport.code { try await a.netlayer.addServer(path: dir.path + "/silent") } == .netlayer(.registrationTimeout))
        let elapsed = started.duration(to: .now)
        // The configured 200 ms deadline governs, not the 5 s default: neither early nor anywhere near 5 s.
        #expect(elapsed >= .milliseconds(200))
        #expect(elapsed < .seconds(2) + lateness, "\(elapsed), a 200 ms sleep ran \(lateness) late")
        await a.netlayer.shutdown()
    }

    @Test func anIntroductionForAnotherPeerIsRefusedAndTheServerConnectionStays() async throws {
        let c = TestPeer()
        let server = try TestIntroServer { introduction, descriptor, forward in
            // Deliver B's introduction to C, unchanged (to still names B).
            forward.deliver(introduction.request, descriptor, to: c.identity)
        }
        defer { server.stop() }
        let a = TestPeer(handshakeTimeout: .seconds(3))
        let b = TestPeer()
        _ = try await a.netlayer.addServer(path: server.path)
        _ = try await b.netlayer.addServer(path: server.path)
        let handleC = try await c.netlayer.addServer(path: server.path)
        // C closes the socket without a byte: for A the introduction was dropped.
        #expect(await PeerTestSupport.code { try await a.netlayer.connect(to: b.netlayer.locator) } == .netlayer(.introductionDropped))
        // C may close the socket before its audit record is written: A can see the EOF first.
        #expect(await PeerTestSupport.eventually { c.events(.handshakeFailed).first?.reason == .handshake(.notAddressedToUs) })
        #expect(!handleC.isDisconnected)
        await a.netlayer.shutdown()
        await b.netlayer.shutdown()
        await c.netlayer.shutdown()
    }
}

/// A private temporary directory for sockets (short path: sun_path holds 108 bytes).
struct TemporaryTestDirectory {
    let path: String
    init() throws {
        var template = Array("/tmp/ocapn-ptd-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw POSIXError(.EIO) }
        path = String(cString: p)
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}
