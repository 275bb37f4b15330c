import Foundation
import Glibc
import Identity
import Logging
import OCapN
import Runtime
import RuntimeTestSupport
import Testing
import Transport

/// Issue #9 items 4 and 5 with real processes: `peer` serves through the servers that work,
/// and keeps its registration at its descriptor limit.
@Suite(.ownThread) struct PeerResilienceCLITests {
    @Test func aPeerServesThroughTheGoodServerWhileBadOnesAreReportedAuditedAndRetried() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try PeerCLITests.keygen(dir, "a.key")
        let (keyB, _) = try PeerCLITests.keygen(dir, "b.key")
        let (keyS, _) = try PeerCLITests.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        let (server, serverID) = try PeerCLITests.startIntroServer(keyS, socket: socket)
        defer { server.stop() }
        let pinnedWrong = try TestIntroServer()
        defer { pinnedWrong.stop() }
        let missing = dir.file("nobody.sock")
        let wrong = IdentityKeyPair.generate().publicIdentity.designator
        let audit = dir.file("b-audit.jsonl")
        let (peer, uri) = try PeerCLITests.startPeer(
            keyB, servers: [missing, "\(pinnedWrong.path)=\(wrong)", socket],
            extra: ["--audit-log", audit, "--reconnect-max-ms", "300"])
        defer { peer.stop() }
        #expect(try PeerLocator(uri: uri).hintServers == [serverID], "only the good server is a hint")
        #expect(peer.waitForLine(onStderr: true) { $0.hasPrefix("server \(missing) failed: serverUnreachable") } != nil)
        #expect(peer.waitForLine(onStderr: true) {
            $0.hasPrefix("server \(pinnedWrong.path) failed: registrationFailed") && $0.contains("serverKeyMismatch")
        } != nil)
        // Retried with backoff: a later attempt is reported with its number.
        #expect(peer.waitForLine(onStderr: true) { $0.hasPrefix("server \(missing) failed:") && $0.contains("retry 3 in") } != nil)

        let echoed = try PeerCLITests.connect(keyA, server: socket, uri, send: "through the good one")
        #expect(echoed.status == 0, "\(echoed.stderr)")
        #expect(echoed.stdout == "through the good one")
        // A server that appears later at the missing path is registered by the retries.
        let late = try TestIntroServer(path: missing)
        defer { late.stop() }
        let registered = peer.waitForLine(onStderr: true) { $0.hasPrefix("server \(missing) registered; locator: ") }
        let later = try PeerLocator(uri: String(try #require(registered).split(separator: " ").last!))
        #expect(Set(later.hintServers) == [serverID, late.publicIdentity])
        #expect(peer.stop() == 0)
        let log = try String(contentsOfFile: audit, encoding: .utf8)
        let refused = log.split(separator: "\n").filter { $0.contains("\"registration.refused\"") }
        #expect(refused.contains { $0.contains("\"serverUnreachable\"") })
        #expect(refused.contains { $0.contains("\"registrationFailed\"") })
        let verify = try runOCapNUDS(["audit", "--verify", audit])
        #expect(verify.status == 0, "\(verify.stdout) \(verify.stderr)")
    }

    @Test func atStartThePeerExitsOneOnlyWhenNoServerRegisteredUnlessAllAreRequired() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyB, _) = try PeerCLITests.keygen(dir, "b.key")
        let good = try TestIntroServer()
        defer { good.stop() }
        let missing = dir.file("nobody.sock")
        let strict = try runOCapNUDS(["peer", "--identity", keyB, "--server", good.path, "--server", missing, "--require-all-servers"])
        #expect(strict.status == 1)
        #expect(strict.stderr.contains("server \(missing): serverUnreachable"), "\(strict.stderr)")
        let none = try runOCapNUDS(["peer", "--identity", keyB, "--server", missing, "--server", dir.file("other.sock")])
        #expect(none.status == 1)
        #expect(none.stderr.contains("no server registered"), "\(none.stderr)")
        #expect(none.stdout.isEmpty, "no locator is printed")
        #expect(try runOCapNUDS(["peer", "--identity", keyB, "--server", good.path, "--max-channels-per-peer", "0"]).status == 2)
    }

    @Test func twoPeersWithOneKeyDisplacingEachOtherBackOffAndReportTheServerContested() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (key, _) = try PeerCLITests.keygen(dir, "b.key")
        let server = try TestIntroServer()  // newest registration of a key wins here
        defer { server.stop() }
        let auditA = dir.file("a.jsonl")
        let auditB = dir.file("b.jsonl")
        let (first, _) = try PeerCLITests.startPeer(key, servers: [server.path], extra: ["--audit-log", auditA, "--reconnect-max-ms", "400"])
        defer { first.stop() }
        let (second, _) = try PeerCLITests.startPeer(key, servers: [server.path], extra: ["--audit-log", auditB, "--reconnect-max-ms", "400"])
        defer { second.stop() }
        let contested = { (line: String) in line.hasPrefix("server \(server.path) contested:") }
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline && !first.errorOutput.contains(where: contested) && !second.errorOutput.contains(where: contested) {
            usleep(50_000)
        }
        let reporter = first.errorOutput.contains(where: contested) ? (first, auditA) : (second, auditB)
        #expect(reporter.0.errorOutput.contains(where: contested), "\(first.errorOutput) \(second.errorOutput)")
        #expect(reporter.0.errorOutput.contains { $0.hasPrefix("server \(server.path) disconnected:") })
        #expect(reporter.0.stop() == 0)
        let log = try String(contentsOfFile: reporter.1, encoding: .utf8)
        #expect(log.contains("\"serverContested\"") && log.contains("\"registrationLost\""))
    }

    @Test func anIntroServerRefusesAMessageLimitAboveWhatAPeerReads() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyS, _) = try PeerCLITests.keygen(dir, "s.key")
        let result = try runOCapNUDS([
            "intro-server", "--identity", keyS, "--socket", dir.file("s.sock"), "--max-message-bytes", "65536"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("max message bytes must be 1024...16384 (the largest control record a peer accepts)"),
                "\(result.stderr)")
    }

    @Test func aPeerAtItsDescriptorLimitKeepsItsRegistrationAndReRegistersWhenItsServerRestarts() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyB, _) = try PeerCLITests.keygen(dir, "b.key")
        let (keyC, _) = try PeerCLITests.keygen(dir, "c.key")
        let (keyS, _) = try PeerCLITests.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        let serverArgs = ["--max-intros-per-second", "0"]
        var (server, _) = try PeerCLITests.startIntroServer(keyS, socket: socket, extra: serverArgs)
        defer { server.stop() }
        let audit = dir.file("b-audit.jsonl")
        // The victim runs with RLIMIT_NOFILE = 64 (set in its own shell before exec).
        let limit = 64
        let victim = try ChildProcess(
            ["peer", "--identity", keyB, "--server", socket, "--audit-log", audit, "--descriptor-reserve", "16",
             "--max-channels-per-peer", "1000", "--max-channels", "1000", "--reconnect-max-ms", "200", "--log-level", "warning"],
            launcher: ["/bin/sh", "-c", "ulimit -n \(limit) && exec \"$@\"", "sh"])
        defer { victim.stop() }
        let uri = try #require(victim.waitForLine(timeout: 10) { _ in true })
        let target = try PeerLocator(uri: uri)

        // One greedy peer opens channels until the victim refuses them.
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let greedy = try PeerNetlayer(identity: .generate(), logger: logger)
        _ = try await greedy.addServer(path: socket)
        var held: [PeerChannel] = []
        var refused = 0
        for _ in 0..<80 {
            if let channel = try? await greedy.connect(to: target) { held.append(channel) } else { refused += 1 }
        }
        #expect(refused > 0 && held.count < limit, "\(held.count) channels held, \(refused) refused")
        #expect(victim.openDescriptorCount <= limit - 8, "the reserve stays free: \(victim.openDescriptorCount) open")
        #expect(victim.waitForLine(onStderr: true) { $0.contains("introduction refused") && $0.contains("descriptorReserve") } != nil)
        #expect(!victim.errorOutput.contains { $0.contains("disconnected") }, "the registration survived: \(victim.errorOutput)")

        // At its limit, the victim still reconnects when its server restarts.
        server.stop()
        #expect(victim.waitForLine(onStderr: true) { $0.hasPrefix("server \(socket) disconnected:") } != nil)
        (server, _) = try PeerCLITests.startIntroServer(keyS, socket: socket, extra: serverArgs)
        #expect(victim.waitForLine(onStderr: true, timeout: 15) { $0.hasPrefix("server \(socket) registered; locator:") } != nil)

        // Once the greedy peer lets go, others get in through the kept registration.
        for channel in held { await channel.abort() }
        await greedy.shutdown()
        var echoed = try PeerCLITests.connect(keyC, server: socket, uri, send: "still here")
        for _ in 0..<20 where echoed.status != 0 {
            usleep(100_000)  // the victim notices the aborted channels' ends
            echoed = try PeerCLITests.connect(keyC, server: socket, uri, send: "still here")
        }
        #expect(echoed.status == 0, "\(echoed.stderr)")
        #expect(echoed.stdout == "still here")
        #expect(victim.stop() == 0)
        let log = try String(contentsOfFile: audit, encoding: .utf8)
        #expect(log.split(separator: "\n").contains { $0.contains("\"handshake.failed\"") && $0.contains("\"descriptorReserve\"") })
    }
}
