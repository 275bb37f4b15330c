import Check
import Foundation
import Glibc
import Identity
import OCapN
import RuntimeTestSupport
import Testing

func peerTestOptions() -> PeerCheckOptions {
    var options = PeerCheckOptions()
    options.timeout = .milliseconds(500)
    options.deadlineWait = .milliseconds(2500)
    return options
}

extension CheckSuites {
@Suite struct PeerCheckTests {
    @Test("every check passes against our peer process")
    func ourPeerPasses() throws {
        let server = try OurIntroServer()
        defer { server.stop() }
        let dir = try TemporaryDirectory("chk-peer")
        defer { dir.remove() }
        try IdentityKeyFile.write(IdentityKeyPair.generate(), to: dir.file("peer.key"))
        let peer = try ChildProcess(["peer", "--identity", dir.file("peer.key"), "--server", server.socketPath,
                                     "--handshake-timeout-ms", "1000", "--log-level", "error"])
        defer { peer.stop() }
        let line = try #require(peer.waitForLine(timeout: 20) { $0.hasPrefix("ocapn://") })
        let report = try PeerChecker(target: try PeerLocator(uri: line), serverPath: server.socketPath, options: peerTestOptions()).run()
        #expect(report.rows.count == PeerChecker.checks.count)
        #expect(report.rows.allSatisfy { $0.status == .pass }, "\(describe(report))")
        #expect(peer.process.isRunning)
    }

    @Test("the reference behaviour of the test peer passes every check")
    func referencePasses() throws {
        let server = try OurIntroServer()
        defer { server.stop() }
        let peer = try WeakPeer(serverPath: server.socketPath, nil)
        defer { peer.stop() }
        let report = try PeerChecker(target: peer.locator, serverPath: server.socketPath, options: peerTestOptions()).run()
        #expect(report.rows.allSatisfy { $0.status == .pass }, "\(describe(report))")
    }

    @Test("each peer weakness is reported as FAIL by the rows meant for it and by no other row",
          arguments: PeerWeakness.allCases)
    func weaknessIsolated(weakness: PeerWeakness) throws {
        let server = try OurIntroServer()
        defer { server.stop() }
        let peer = try WeakPeer(serverPath: server.socketPath, weakness)
        defer { peer.stop() }
        let report = try PeerChecker(target: peer.locator, serverPath: server.socketPath, options: peerTestOptions()).run()
        let failed = Set(report.rows.filter { $0.status == .fail }.map(\.id))
        #expect(failed == weakness.failingChecks, "\(weakness): \(describe(report))")
        if weakness == .plaintextCapTP {
            // Nothing else can be asked of a peer without a handshake: every other row says why.
            #expect(report.rows.filter { $0.id != "W9.speaks-uds-hs1" }.allSatisfy { $0.status == .skip && $0.evidence.contains("UDS-HS1") || $0.evidence.contains("plaintext") })
        } else {
            #expect(report.rows.allSatisfy { $0.status != .skip && $0.status != .warn }, "\(describe(report))")
        }
        #expect(report.exitStatus == 1)
    }

    @Test("check peer: JSON report, exit 3 for a peer that is not there, 2 for a bad locator")
    func cli() throws {
        let server = try OurIntroServer()
        defer { server.stop() }
        let peer = try WeakPeer(serverPath: server.socketPath, nil)
        defer { peer.stop() }
        let ok = try runOCapNUDS(["check", "peer", peer.locator.uri, "--server", server.socketPath, "--json",
                                  "--only", "W9,I3", "--timeout-ms", "1000"])
        #expect(ok.status == 0, "\(ok.stderr)")
        let report = try JSONDecoder().decode(CheckReport.self, from: Data(ok.stdout.utf8))
        #expect(report.kind == "peer")
        #expect(report.rows.map(\.id) == ["W9.speaks-uds-hs1", "W9.from-checked", "I3.reachable-after"])
        let absent = IdentityKeyPair.generate().publicIdentity.designator
        let gone = try runOCapNUDS(["check", "peer", absent, "--server", server.socketPath, "--timeout-ms", "500"])
        #expect(gone.status == 3, "\(gone.stderr)")
        let noServer = try runOCapNUDS(["check", "peer", absent, "--server", server.dir.file("none.sock")])
        #expect(noServer.status == 3)
        let bad = try runOCapNUDS(["check", "peer", "not-a-locator", "--server", server.socketPath])
        #expect(bad.status == 2)
    }
}
}
