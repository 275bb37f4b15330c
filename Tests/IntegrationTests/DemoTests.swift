import Audit
import Foundation
import Glibc
import Identity
import RuntimeTestSupport
import SodiumCrypto
import TestSupport
import Testing

@Suite(.serialized, .ownThread) struct DemoTests {
    /// Paths of the demo directory a run printed.
    private func directory(in output: [String]) -> String? {
        output.first { $0.hasPrefix("demo: working directory ") }
            .map { String($0.dropFirst("demo: working directory ".count).split(separator: " ").first ?? "") }
    }

    /// Processes whose command line mentions `text` (the demo's children name its directory).
    private func processes(mentioning text: String) -> [String] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return pids.filter { Int($0) != nil }.compactMap { pid in
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            let line = String(decoding: raw.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            return line.contains(text) ? line : nil
        }
    }

    @Test func theDemoRunsEndToEndRefusesBothAttacksAndLeavesVerifiedAuditLogsOnly() throws {
        let demo = try ChildProcess(["demo", "--peers", "3", "--connections", "6", "--messages", "3", "--keep-keys"])
        let status = demo.waitForExit(timeout: 120)
        let out = demo.output
        let dir = try #require(directory(in: out), "\(out)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(status == 0, "\(out.joined(separator: "\n"))\n\(demo.errorOutput.joined(separator: "\n"))")
        #expect(out.last == "demo: OK; logs and audit trails are in \(dir) (each log is a chain of its own: ocapn-uds audit --verify \(dir)/intro-server.audit.jsonl)",
                "the last line names where the logs are")
        let suggested = try ChildProcess(["audit", "--verify", "\(dir)/intro-server.audit.jsonl"])
        #expect(suggested.waitForExit(timeout: 60) == 0, "the command the last line suggests succeeds")
        // Identities by name and fingerprint at the top, no designators or URIs.
        #expect(out.contains { $0.hasPrefix("demo:   impostor      fp1:") }, "the attacker is introduced")
        #expect(!out.contains { $0.contains("ocapn://") && !$0.contains("<key>") }, "no full locator URIs in the progress")
        // Each refused attack says what it would have achieved against plain Goblins.
        #expect(out.filter { $0.hasPrefix("demo:   with an unauthenticated netlayer (plain Goblins)") }.count == 2)
        #expect(out.contains { $0.contains("handshakes:") && $0.contains("6 succeeded, 0 failed") })
        #expect(out.contains { $0.contains("messages:") && $0.contains("18 of 18 echoed") })
        #expect(out.contains { $0.contains("registered peer lying about from: refused (spoofedFrom)") })
        #expect(out.contains { $0.contains("introduction server lying about from: refused (identityMismatch)") })
        #expect(out.contains { $0.hasPrefix("failures by reason:") }, "the audit summary is printed")
        // Processes gone; keys and sockets removed; audit trails kept and intact.
        #expect(processes(mentioning: dir).isEmpty)
        let left = try FileManager.default.contentsOfDirectory(atPath: dir)
        #expect(!left.contains { $0.hasSuffix(".sock") }, "\(left)")
        // No key material anywhere in what the run wrote: every audit record and every log
        // line is scanned for each identity's secret (seed and full secret key, raw, hex,
        // base64, base32, and any 16-byte piece of them).
        var secrets: [[UInt8]] = []
        for name in left where name.hasSuffix(".key") {
            let text = try String(contentsOfFile: (dir as NSString).appendingPathComponent(name), encoding: .utf8)
            let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("secret: ") })
            let seed = try #require(Data(base64Encoded: String(line.dropFirst("secret: ".count))))
            let pair = try Ed25519.keyPair(seed: SecretBytes(copying: [UInt8](seed)))
            secrets.append([UInt8](seed))
            secrets.append(pair.secretKey.withUnsafeBytes { Array($0) })
        }
        #expect(secrets.count == 2 * 4, "the server and three peers left their key files (--keep-keys)")
        let written = left.filter { $0.hasSuffix(".jsonl") || $0.hasSuffix(".log") }.map { (dir as NSString).appendingPathComponent($0) }
        let hits = try AuditSecretScanner(secrets: secrets).scan(files: written)
        #expect(hits.isEmpty, "key material found: \(hits)")
        let trails = left.filter { $0.hasSuffix(".audit.jsonl") }
        #expect(trails.count == 5)
        for trail in trails {
            let verify = try runOCapNUDS(["audit", "--verify", (dir as NSString).appendingPathComponent(trail)])
            #expect(verify.status == 0, "\(trail): \(verify.stdout) \(verify.stderr)")
        }
    }

    @Test func ctrlCStopsEveryProcessTheDemoStarted() throws {
        let demo = try ChildProcess(["demo", "--peers", "2", "--connections", "1000000", "--messages", "1"])
        let opening = demo.waitForLine(timeout: 60) { $0.hasPrefix("demo: opening ") }
        let dir = try #require(directory(in: demo.output), "\(demo.output)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(opening != nil)
        // A long run reports progress, not a line per connection.
        #expect(demo.waitForLine(timeout: 30) { $0.contains(" of 1000000 connections done (") } != nil)
        #expect(!demo.output.contains { $0.hasPrefix("demo:   connection ") })
        #expect(!processes(mentioning: dir).isEmpty, "the server and peers run while connecting")
        kill(demo.pid, SIGINT)
        let status = demo.waitForExit(timeout: 30)
        #expect(status == 130)
        // The notice, then at most one line: where the logs are.
        let out = demo.output
        let notice = try #require(out.firstIndex(of: "demo: interrupted; stopping the connections, the server and the peers"), "\(out.suffix(5))")
        #expect(Array(out[(notice + 1)...]) == ["demo: stopped; logs and sealed audit trails are in \(dir)"], "\(out.suffix(5))")
        // Every audit log it opened is sealed: the server's, each peer's and the client's.
        let trails = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".audit.jsonl") }
        #expect(Set(trails) == ["intro-server.audit.jsonl", "peer-1.audit.jsonl", "peer-2.audit.jsonl", "client.audit.jsonl"])
        for trail in trails {
            let verify = try runOCapNUDS(["audit", "--verify", (dir as NSString).appendingPathComponent(trail)])
            #expect(verify.status == 0, "\(trail) sealed: \(verify.stdout) \(verify.stderr)")
        }
        let deadline = Date().addingTimeInterval(5)
        while !processes(mentioning: dir).isEmpty && Date() < deadline { usleep(50_000) }
        #expect(processes(mentioning: dir).isEmpty, "\(processes(mentioning: dir))")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        #expect(!left.contains { $0.hasSuffix(".key") || $0.hasSuffix(".sock") }, "\(left)")
    }
}
