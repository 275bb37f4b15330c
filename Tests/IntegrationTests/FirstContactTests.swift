import Foundation
import Glibc
import Identity
import OCapN
import RuntimeTestSupport
import Testing

/// What a new user sees when something is wrong: each error names the path or the party, the
/// reason in words and what to check, with its own exit status (issue 13).
@Suite(.ownThread) struct FirstContactTests {
    @Test func connectToATargetThatNeverRegisteredSaysItWaitsThenThatTheIntroductionWasDropped() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try PeerCLITests.keygen(dir, "a.key")
        let (_, idB) = try PeerCLITests.keygen(dir, "b.key")
        let (keyS, _) = try PeerCLITests.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        // Both sides at their defaults: the server's pending lifetime (5 s) ends before the
        // client's handshake deadline (10 s), so the drop, not the timer, ends the wait.
        let (server, serverID) = try PeerCLITests.startIntroServer(keyS, socket: socket)
        defer { server.stop() }
        let uri = PeerLocator(identity: idB, introductionServers: [serverID]).uri
        let started = Date()
        let result = try runOCapNUDS(["connect", "--identity", keyA, "--server", socket, uri, "--send", "hi"], timeout: 30)
        let elapsed = Date().timeIntervalSince(started)
        #expect(result.status == 5, "\(result.stderr)")
        let lines = result.stderr.split(separator: "\n").map(String.init)
        #expect(lines.first == "waiting for \(idB.fingerprint) to pick up the introduction", "\(lines)")
        let expected: String = "ocapn-uds: connect: introductionDropped: \(idB.fingerprint) never answered the introduction"
            + " via server \(serverID.fingerprint): it is not registered there, or it refused"
            + " — is the target's `ocapn-uds peer` running and registered with that server?"
            + " (the server drops an introduction its target does not pick up within --pending-lifetime-ms)"
        #expect(lines.last == expected)
        #expect(!result.stderr.contains("timeout"), "the server's drop comes before the handshake deadline")
        #expect(elapsed < 9.5, "ended by the drop after about 5 s, not the 10 s deadline: \(elapsed) s")
        #expect(result.stdout.isEmpty)
    }

    @Test func connectToAMissingSocketNamesThePathAndWhatToCheck() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try PeerCLITests.keygen(dir, "a.key")
        let uri = PeerLocator(identity: IdentityKeyPair.generate().publicIdentity,
                              introductionServers: [IdentityKeyPair.generate().publicIdentity]).uri
        let path = dir.file("nope.sock")
        let result = try PeerCLITests.connect(keyA, server: path, uri)
        #expect(result.status == 1)
        let expected: String = "ocapn-uds: connect: serverUnreachable: no socket at \(path) (No such file or directory)"
            + " — is the intro-server running? see --server"
        #expect(result.stderr == expected)
        #expect(!result.stderr.contains("connectionRefused"), "ENOENT is not a refusal")

        let inMissingDirectory = try PeerCLITests.connect(keyA, server: dir.file("gone/s.sock"), uri)
        #expect(inMissingDirectory.status == 1)
        #expect(inMissingDirectory.stderr.contains("serverUnreachable: directory \(dir.file("gone")) does not exist"), "\(inMissingDirectory.stderr)")
    }

    @Test func aLocatorWithoutHintsSaysWhatToUseInstead() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try PeerCLITests.keygen(dir, "a.key")
        let bare = PeerLocator(identity: IdentityKeyPair.generate().publicIdentity).uri
        let result = try PeerCLITests.connect(keyA, server: dir.file("s.sock"), bare)
        #expect(result.status == 1)
        let expected: String = "ocapn-uds: connect: noSharedServer: the locator names no introduction server"
            + " (it has no ?<server>=t hints) — use the full URI the target's `ocapn-uds peer` printed on its first line"
        #expect(result.stderr == expected)
    }

    @Test func anIntroServerInAMissingDirectoryNamesTheDirectory() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyS, _) = try PeerCLITests.keygen(dir, "s.key")
        let path = dir.file("gone/s.sock")
        let result = try runOCapNUDS(["intro-server", "--identity", keyS, "--socket", path])
        #expect(result.status == 1)
        let expected: String = "ocapn-uds: intro-server: cannot listen at \(path): noSuchPath: directory \(dir.file("gone")) does not exist"
            + " (No such file or directory) — create the directory or choose another --socket"
        #expect(result.stderr == expected)
    }

    @Test func aSecondIntroServerOnTheSamePathSaysAnotherRunsThere() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyS, _) = try PeerCLITests.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        let (first, _) = try PeerCLITests.startIntroServer(keyS, socket: socket)
        defer { first.stop() }
        let second = try runOCapNUDS(["intro-server", "--identity", keyS, "--socket", socket])
        #expect(second.status == 1)
        #expect(second.stderr.hasPrefix("ocapn-uds: intro-server: cannot listen at \(socket): alreadyRunning: "), "\(second.stderr)")
        #expect(second.stderr.hasSuffix(" — another intro-server runs on this path; stop it or choose another --socket"))
    }

    @Test func auditOfAMissingFileGivesTheErrnoInWords() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let path = dir.file("nope.jsonl")
        let result = try runOCapNUDS(["audit", path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("open(\(path)): No such file or directory (errno 2) — check the path"), "\(result.stderr)")

        let (keyS, _) = try PeerCLITests.keygen(dir, "s.key")
        let log = dir.file("gone/s.audit.jsonl")
        let server = try runOCapNUDS(["intro-server", "--identity", keyS, "--socket", dir.file("s.sock"), "--audit-log", log])
        #expect(server.status == 1)
        #expect(server.stderr.hasSuffix("open(\(log)): No such file or directory (errno 2) — directory \(dir.file("gone")) does not exist"),
                "\(server.stderr)")
    }

    /// `peer` shows what it echoes; the server logs an ordinary exit without `peerReset`; the
    /// audit summary counts the records `--verify` counts, and its listings name the target.
    @Test func aSessionReadsRightInThePeerTheServerLogAndTheAuditSummary() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, idA) = try PeerCLITests.keygen(dir, "a.key")
        let (keyB, _) = try PeerCLITests.keygen(dir, "b.key")
        let (keyS, serverKey) = try PeerCLITests.keygen(dir, "s.key")
        _ = serverKey
        let socket = dir.file("s.sock")
        let audit = dir.file("s.audit.jsonl")
        let (server, serverID) = try PeerCLITests.startIntroServer(
            keyS, socket: socket, extra: ["--audit-log", audit, "--pending-lifetime-ms", "0"])
        let (peer, uri) = try PeerCLITests.startPeer(keyB, servers: [socket])
        let result = try PeerCLITests.connect(keyA, server: socket, uri, send: "hello\tthere")
        #expect(result.status == 0, "\(result.stderr)")
        #expect(peer.waitForLine(onStderr: true, timeout: 10) { $0 == "echoed to \(idA.fingerprint): \"hello\\tthere\" (11 bytes)" } != nil,
                "\(peer.errorOutput)")
        #expect(peer.waitForLine(onStderr: true, timeout: 10) { $0 == "channel \(idA.fingerprint) closed: 1 message (11 bytes) echoed" } != nil)
        // A target nobody registered: refused at once (pending lifetime 0), a failure to list.
        let nobody = IdentityKeyPair.generate().publicIdentity
        let dropped = try PeerCLITests.connect(keyA, server: socket, PeerLocator(identity: nobody, introductionServers: [serverID]).uri)
        #expect(dropped.status == 5)
        peer.stop()
        #expect(server.stop() == 0)
        let disconnects = server.errorOutput.filter { $0.contains("registered peer disconnected") }
        #expect(disconnects.count >= 2, "\(server.errorOutput)")
        #expect(!disconnects.contains { $0.contains("peerReset") }, "an ordinary exit is not a reset: \(disconnects)")

        let summary = try runOCapNUDS(["audit", audit])
        let verify = try runOCapNUDS(["audit", "--verify", audit])
        #expect(verify.status == 0)
        let total = try #require(verify.stdout.split(separator: " ").dropFirst().first.flatMap { Int($0) }, "\(verify.stdout)")
        #expect(summary.stdout.hasPrefix("records: \(total) ("), "the summary counts what --verify counts: \(summary.stdout)")
        #expect(summary.stdout.contains("event                   success  failure  started  info"))
        let failures = try runOCapNUDS(["audit", "--failures", "--list", audit])
        #expect(failures.stdout.contains("to=\(nobody.fingerprint)"), "the listing names the introduction's target: \(failures.stdout)")
    }

    @Test func connectHelpDocumentsTheDroppedIntroductionExitStatus() throws {
        let help = try runOCapNUDS(["connect", "--help"])
        #expect(help.stdout.contains("5  introductionDropped"), "\(help.stdout)")
    }

    /// Every command's help: paragraphs are wrapped by the parser, not cut mid-sentence by hard
    /// line breaks, and no default is printed twice.
    @Test(arguments: [[], ["demo"], ["keygen"], ["id", "show"], ["audit"], ["vectors", "verify"], ["bench"],
                      ["intro-server"], ["peer"], ["connect"], ["check", "server"], ["check", "peer"]])
    func helpTextsWrapAtWordsAndSayEachDefaultOnce(_ command: [String]) throws {
        let help = try runOCapNUDS(command + ["--help"])
        #expect(help.status == 0)
        let lines = help.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for (line, next) in zip(lines, lines.dropFirst()) where !line.isEmpty && !line.hasPrefix(" ") {
            // A short unindented line followed by more of the same paragraph is a hard break.
            let continues = !next.isEmpty && !next.hasPrefix(" ") && !next.hasSuffix(":") && next.first.map { !$0.isUppercase } ?? false
            #expect(!(line.count < 60 && continues && !line.hasSuffix(":") && !line.hasSuffix(".")),
                    "\(command): a paragraph is cut after \"\(line)\"")
        }
        for line in lines { #expect(line.components(separatedBy: "(default:").count <= 2, "\(command): \(line)") }
        for (line, next) in zip(lines, lines.dropFirst()) where line.contains("(default:") {
            #expect(!next.trimmingCharacters(in: .whitespaces).hasPrefix("(default:"), "\(command): default printed twice: \(line)")
        }
    }
}
