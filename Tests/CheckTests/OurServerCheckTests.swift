import Check
import Foundation
import Glibc
import Identity
import RuntimeTestSupport
import Testing

/// Our `ocapn-uds intro-server` as a child process, with short deadlines.
final class OurIntroServer {
    let dir: TemporaryDirectory
    let socketPath: String
    let identity: PublicIdentity
    let child: ChildProcess

    init(_ extra: [String] = []) throws {
        dir = try TemporaryDirectory("chk-our")
        socketPath = dir.file("s.sock")
        let pair = IdentityKeyPair.generate()
        try IdentityKeyFile.write(pair, to: dir.file("server.key"))
        identity = pair.publicIdentity
        child = try ChildProcess(["intro-server", "--identity", dir.file("server.key"), "--socket", socketPath,
                                  "--registration-timeout-ms", "300", "--pending-lifetime-ms", "1000", "--log-level", "error"] + extra)
        guard child.waitForLine(timeout: 20, { $0.hasPrefix("listening: ") }) != nil else {
            child.stop()
            dir.remove()
            throw CheckError(.unreachable, "intro-server did not start: \(child.errorOutput.joined(separator: " "))")
        }
    }

    func stop() {
        child.stop()
        dir.remove()
    }
}

extension CheckSuites {
@Suite struct OurServerCheckTests {
    @Test("every check passes against our intro-server, and it leaks no descriptor to the probes")
    func ourServerPasses() throws {
        let server = try OurIntroServer()
        defer { server.stop() }
        let before = server.child.openDescriptorCount
        let report = try ServerChecker(path: server.socketPath, options: testOptions()).run()
        #expect(report.rows.count == ServerChecker.checks.count)
        for row in report.rows {
            // E2.registration-relay included: the server keeps a live registration (issue #11).
            #expect(row.status == .pass, "\(row.id) \(row.status.rawValue): \(row.evidence)")
        }
        #expect(report.summary.fail == 0)
        // Held introductions expire after 1 s; everything the probes opened is gone by then (I2).
        var after = server.child.openDescriptorCount
        for _ in 0..<160 where after > before {  // up to 8 s: a loaded CI host runs the expiry timers late
            usleep(50_000)
            after = server.child.openDescriptorCount
        }
        #expect(after <= before, "server descriptors: \(before) before the run, \(after) after")
        #expect(server.child.process.isRunning)
    }

    @Test("check server --json: documented keys, selected rows only, exit 0")
    func jsonOutput() throws {
        let server = try OurIntroServer()
        defer { server.stop() }
        let (status, stdout, stderr) = try runOCapNUDS(["check", "server", server.socketPath, "--json", "--timeout-ms", "1000",
                                                        "--only", "E2.register-goblins,A3,I1"])
        #expect(status == 0, "\(stderr)")
        let report = try JSONDecoder().decode(CheckReport.self, from: Data(stdout.utf8))
        #expect(report.format == "ocapn-uds-check/1")
        #expect(report.kind == "server" && report.target == server.socketPath)
        #expect(report.rows.map(\.id) == ["E2.register-goblins", "A3.extra-descriptors", "I1.alive"])
        #expect(report.rows.allSatisfy { $0.status == .pass && !$0.evidence.isEmpty && $0.catalog == String($0.id.prefix { $0 != "." }) })
        let object = try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any]
        #expect(Set(object?.keys.map { $0 } ?? []) == ["exit", "format", "kind", "rows", "summary", "target"])
        #expect((object?["summary"] as? [String: Int]) == ["pass": 3, "warn": 0, "fail": 0, "skip": 0])
        let row = (object?["rows"] as? [[String: Any]])?.first
        #expect(Set(row?.keys.map { $0 } ?? []) == ["catalog", "evidence", "id", "severity", "status", "title"])
    }

    @Test("check server exits 1 with a table and a summary line when a check fails; no colour off a terminal")
    func failingTable() throws {
        let dir = try TemporaryDirectory("chk-cli")
        defer { dir.remove() }
        let server = try WeakServer(path: dir.file("s.sock"), [.signsAnyChallengeLength])
        defer { server.stop() }
        let (status, stdout, _) = try runOCapNUDS(["check", "server", server.path, "--only", "E2.challenge-length,E2.bad-signature",
                                                   "--timeout-ms", "600"])
        #expect(status == 1)
        #expect(stdout.contains("FAIL    high      E2.challenge-length"), "\(stdout)")
        #expect(stdout.contains("PASS    critical  E2.bad-signature"), "\(stdout)")
        #expect(stdout.contains("summary: 2 checks, 1 pass, 0 warn, 1 fail, 0 skip"), "\(stdout)")
        #expect(!stdout.contains("\u{1B}["), "no ANSI colour when stdout is a pipe")
    }

    @Test("check server exits 3 when nothing listens and 2 for an unknown check id")
    func exitCodes() throws {
        let dir = try TemporaryDirectory("chk-exit")
        defer { dir.remove() }
        let unreachable = try runOCapNUDS(["check", "server", dir.file("nothing.sock")])
        #expect(unreachable.status == 3, "\(unreachable.stderr)")
        #expect(unreachable.stderr.contains("unreachable"))
        let usage = try runOCapNUDS(["check", "server", dir.file("nothing.sock"), "--only", "Z9.nope"])
        #expect(usage.status == 2)
        #expect(usage.stderr.contains("unknown check id Z9.nope"))
    }
}
}
