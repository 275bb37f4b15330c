import Foundation
import Glibc
import Identity
import OCapN
import RuntimeTestSupport
import Testing
import Transport

/// `ocapn-uds peer` and `ocapn-uds connect` as real processes, through an introduction server
/// (the in-test `TestIntroServer`, built from the same OCapN machines as the daemon).
@Suite(.ownThread) struct PeerCLITests {
    /// Generates a key file with the real binary and returns (path, identity).
    static func keygen(_ dir: TemporaryDirectory, _ name: String) throws -> (String, PublicIdentity) {
        let path = dir.file(name)
        let result = try runOCapNUDS(["keygen", "--out", path])
        guard result.status == 0 else { throw POSIXError(.EIO) }
        return (path, try PublicIdentityFile.load(path: path))
    }

    /// Starts `peer` and waits for its first stdout line (the locator URI).
    static func startPeer(_ key: String, servers: [String], extra: [String] = []) throws -> (ChildProcess, String) {
        let child = try ChildProcess(["peer", "--identity", key] + servers.flatMap { ["--server", $0] } + extra)
        guard let uri = child.waitForLine(timeout: 10, { _ in true }) else {
            child.stop()
            throw POSIXError(.ETIMEDOUT)
        }
        return (child, uri)
    }

    /// Starts the real `ocapn-uds intro-server` and waits for its ready line.
    static func startIntroServer(_ key: String, socket: String, extra: [String] = []) throws -> (ChildProcess, PublicIdentity) {
        let child = try ChildProcess(["intro-server", "--identity", key, "--socket", socket] + extra)
        guard let ready = child.waitForLine(timeout: 10, { $0.hasPrefix("listening: ") }),
              let designator = ready.split(separator: " ").drop(while: { $0 != "designator:" }).dropFirst().first,
              let identity = try? PublicIdentity(designator: String(designator))
        else {
            child.stop()
            throw POSIXError(.ETIMEDOUT)
        }
        return (child, identity)
    }

    static func connect(_ key: String, server: String, _ uri: String, send: String = "hello", extra: [String] = []) throws
        -> (status: Int32, stdout: String, stderr: String)
    {
        try runOCapNUDS(["connect", "--identity", key, "--server", server, uri, "--send", send] + extra, timeout: 20)
    }

    @Test func aPeerAndAConnectProcessEchoThroughTheIntroServerAndPrintTheVerifiedKeys() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, idA) = try Self.keygen(dir, "a.key")
        let (keyB, idB) = try Self.keygen(dir, "b.key")
        let (keyS, _) = try Self.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        let (server, serverID) = try Self.startIntroServer(keyS, socket: socket)
        defer { server.stop() }
        let audit = dir.file("b-audit.jsonl")
        let (peer, uri) = try Self.startPeer(keyB, servers: [socket], extra: ["--audit-log", audit])
        defer { peer.stop() }
        let parsed = try PeerLocator(uri: uri)
        #expect(parsed.identity == idB)
        #expect(parsed.hintServers == [serverID])

        let result = try Self.connect(keyA, server: socket, uri, send: "hello over UDS-HS1")
        #expect(result.status == 0, "connect failed: \(result.stderr)")
        #expect(result.stdout == "hello over UDS-HS1")
        #expect(result.stderr.contains("verified-peer: \(idB.fingerprint)"))
        #expect(peer.waitForLine(onStderr: true, timeout: 5) { $0.contains("verified-peer: \(idA.fingerprint)") } != nil)

        #expect(peer.stop(signal: SIGTERM) == 0, "SIGTERM is a clean exit")
        let verify = try runOCapNUDS(["audit", "--verify", audit])
        #expect(verify.status == 0, "audit log intact and sealed: \(verify.stdout) \(verify.stderr)")
        let text = try String(contentsOfFile: audit, encoding: .utf8)
        #expect(text.contains("\"event\":\"handshake.succeeded\""))
        #expect(text.contains("\"event\":\"channel.closed\""))
    }

    @Test func aPeerOnSeveralServersIsReachableThroughEachOfThem() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try Self.keygen(dir, "a.key")
        let (keyB, _) = try Self.keygen(dir, "b.key")
        var servers: [(ChildProcess, PublicIdentity, String)] = []
        defer { for s in servers { s.0.stop() } }
        for name in ["s1", "s2"] {
            let (key, _) = try Self.keygen(dir, "\(name).key")
            let socket = dir.file("\(name).sock")
            let (child, id) = try Self.startIntroServer(key, socket: socket)
            servers.append((child, id, socket))
        }
        let (peer, uri) = try Self.startPeer(keyB, servers: servers.map(\.2))
        defer { peer.stop() }
        #expect(Set(try PeerLocator(uri: uri).hintServers) == Set(servers.map(\.1)))
        for (_, id, socket) in servers {
            let result = try Self.connect(keyA, server: socket, uri, send: "via \(id.fingerprint)")
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == "via \(id.fingerprint)")
        }
    }

    @Test func aTargetThatRegistersAfterTheIntroductionWasRequestedIsStillReached() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try Self.keygen(dir, "a.key")
        let (keyB, idB) = try Self.keygen(dir, "b.key")
        let (keyS, _) = try Self.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        let (server, serverID) = try Self.startIntroServer(keyS, socket: socket, extra: ["--pending-lifetime-ms", "8000"])
        defer { server.stop() }
        let uri = PeerLocator(identity: idB, introductionServers: [serverID]).uri
        let connect = try ChildProcess(["connect", "--identity", keyA, "--server", socket, uri, "--send", "early"])
        // Give the introduction time to reach the server before B exists.
        usleep(300_000)
        #expect(connect.process.isRunning, "connect waits for the late target")
        let (peer, peerURI) = try Self.startPeer(keyB, servers: [socket])
        defer { peer.stop() }
        #expect(peerURI == uri)
        #expect(connect.waitForExit(timeout: 15) == 0, "\(connect.errorOutput)")
        #expect(connect.output == ["early"])
    }

    @Test func aPeerReregistersAfterItsServerRestartsAndAfterItselfRestarts() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try Self.keygen(dir, "a.key")
        let (keyB, _) = try Self.keygen(dir, "b.key")
        let (keyS, _) = try Self.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        var (server, _) = try Self.startIntroServer(keyS, socket: socket)
        var (peer, uri) = try Self.startPeer(keyB, servers: [socket])
        #expect(try Self.connect(keyA, server: socket, uri).status == 0)

        // Server restart: same key, same path. The peer notices, backs off and registers again.
        #expect(server.stop() == 0)
        #expect(peer.waitForLine(onStderr: true, timeout: 5) { $0.contains("disconnected") } != nil)
        (server, _) = try Self.startIntroServer(keyS, socket: socket)
        #expect(peer.waitForLine(onStderr: true, timeout: 10) { $0.contains("registered; locator: \(uri)") } != nil)
        let afterServerRestart = try Self.connect(keyA, server: socket, uri, send: "after server restart")
        #expect(afterServerRestart.status == 0, "\(afterServerRestart.stderr)")
        #expect(afterServerRestart.stdout == "after server restart")

        // Peer restart: the new registration replaces the old one.
        #expect(peer.stop() == 0)
        (peer, uri) = try Self.startPeer(keyB, servers: [socket])
        let afterPeerRestart = try Self.connect(keyA, server: socket, uri, send: "after peer restart")
        #expect(afterPeerRestart.status == 0, "\(afterPeerRestart.stderr)")
        #expect(afterPeerRestart.stdout == "after peer restart")
        peer.stop()
        server.stop()
    }

    @Test func serverMarksPickTheRegistrationFormAndTheLegacyAllowListIsChecked() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try Self.keygen(dir, "a.key")
        let (keyS, _) = try Self.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        let (server, serverID) = try Self.startIntroServer(keyS, socket: socket, extra: ["--registration-forms", "legacy"])
        defer { server.stop() }
        // A v2-only peer fails against a legacy-only server; marked goblins: it registers.
        let (goblins, uri) = try Self.startPeer(keyA, servers: ["goblins:\(socket)=\(serverID.designator)"])
        defer { goblins.stop() }
        #expect(uri.contains(serverID.designator))
        let v2 = try runOCapNUDS(["peer", "--identity", keyA, "--server", socket, "--registration-timeout-ms", "2000"])
        #expect(v2.status != 0, "a v2 peer must not fall back to the legacy form")
        for bad in [["--allow-legacy-peers", "nobody"], ["--allow-legacy-peers", "any,\(serverID.designator)"],
                    ["--server", "goblins:\(socket)", "--server", "draft:\(socket)"]] {
            let r = try runOCapNUDS(["peer", "--identity", keyA, "--server", socket] + bad)
            #expect(r.status == 2, "\(bad): \(r.stderr)")
        }
    }

    @Test func connectFailuresExitNonZeroAndPrintTheirReasonCode() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, _) = try Self.keygen(dir, "a.key")
        let (_, idB) = try Self.keygen(dir, "b.key")
        let honest = try TestIntroServer(holdUnregistered: .zero)
        defer { honest.stop() }

        // No shared server: B's hints name a server A does not use.
        let elsewhere = PeerLocator(identity: idB, introductionServers: [IdentityKeyPair.generate().publicIdentity]).uri
        let noShared = try Self.connect(keyA, server: honest.path, elsewhere)
        #expect(noShared.status == 1)
        #expect(noShared.stderr.contains("noSharedServer"))

        // Unreachable server.
        let unreachable = try Self.connect(keyA, server: dir.file("nobody-listens"), elsewhere)
        #expect(unreachable.status == 1)
        #expect(unreachable.stderr.contains("serverUnreachable"))

        // Refused introduction: the real server refuses an unregistered target at once.
        let (keyS, _) = try Self.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        let (real, realID) = try Self.startIntroServer(keyS, socket: socket, extra: ["--pending-lifetime-ms", "0"])
        defer { real.stop() }
        let uri = PeerLocator(identity: idB, introductionServers: [realID]).uri
        let refused = try Self.connect(keyA, server: socket, uri)
        #expect(refused.status == 5, "a dropped introduction has its own exit status")
        #expect(refused.stderr.contains("connect: introductionDropped: \(idB.fingerprint) never answered the introduction"), "\(refused.stderr)")

        // Timeout: the server keeps the socket and never delivers it.
        let kept = KeptDescriptors()
        let swallowing = try TestIntroServer { _, descriptor, _ in kept.keep(descriptor) }
        defer { swallowing.stop(); kept.closeAll() }
        let slowURI = PeerLocator(identity: idB, introductionServers: [swallowing.publicIdentity]).uri
        let timedOut = try Self.connect(keyA, server: swallowing.path, slowURI, extra: ["--handshake-timeout-ms", "300"])
        #expect(timedOut.status == 1)
        #expect(timedOut.stderr.contains("timeout"))

        // Handshake rejection: the server answers msg1 itself with a forged msg2.
        let forging = try TestIntroServer { _, descriptor, _ in
            Thread.detachNewThread {
                _ = RawPeerSocket.read(descriptor, count: 120)
                let forged = [UInt8(0x02)] + [UInt8](repeating: 9, count: 1) + [UInt8](repeating: 0, count: 31) + [UInt8](repeating: 0x5a, count: 80)
                RawPeerSocket.write(descriptor, forged)
                usleep(500_000)
                descriptor.close()
            }
        }
        defer { forging.stop() }
        let forgedURI = PeerLocator(identity: idB, introductionServers: [forging.publicIdentity]).uri
        let rejected = try Self.connect(keyA, server: forging.path, forgedURI)
        #expect(rejected.status == 3, "a failed security check is exit 3: \(rejected.stderr)")
        #expect(rejected.stderr.contains("decryptFailed"))

        // Usage errors.
        #expect(try runOCapNUDS(["connect", "--identity", keyA, "--server", honest.path, "not-a-uri", "--send", "x"]).status == 2)
        #expect(try runOCapNUDS(["connect", "--identity", keyA, "--server", honest.path, uri]).status == 2)
        #expect(try runOCapNUDS(["peer", "--identity", keyA]).status == 2)
    }

    @Test func aPinnedServerKeyThatDoesNotMatchStopsThePeerWithExitThree() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = try TestIntroServer()
        defer { server.stop() }
        let (keyB, _) = try Self.keygen(dir, "b.key")
        let wrong = IdentityKeyPair.generate().publicIdentity.designator
        let pinnedWrong = try runOCapNUDS(["peer", "--identity", keyB, "--server", "\(server.path)=\(wrong)"])
        #expect(pinnedWrong.status == 3)
        #expect(pinnedWrong.stderr.contains("registrationFailed") && pinnedWrong.stderr.contains("serverKeyMismatch"))
        let (peer, uri) = try Self.startPeer(
            keyB, servers: [server.path], extra: ["--server-key", server.publicIdentity.designator])
        defer { peer.stop() }
        #expect(try PeerLocator(uri: uri).hintServers == [server.publicIdentity])
    }
}

/// Descriptors a misbehaving server keeps (closed at the end of the test).
final class KeptDescriptors: @unchecked Sendable {
    private let lock = NSLock()
    private var kept: [FileDescriptor] = []
    func keep(_ d: FileDescriptor) { lock.lock(); kept.append(d); lock.unlock() }
    func closeAll() { lock.lock(); for d in kept { d.close() }; kept = []; lock.unlock() }
}

enum PeerTestWait {
    static func until(timeout: Double = 10, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(10_000)
        }
        return condition()
    }
}

/// Blocking-style helpers on a descriptor a test server holds (MSG_DONTWAIT polled).
enum RawPeerSocket {
    static func read(_ d: FileDescriptor, count: Int, timeout: Double = 3) -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(timeout)
        while out.count < count && Date() < deadline {
            let want = min(buffer.count, count - out.count)
            let r = try? buffer.withUnsafeMutableBytes { try d.receive(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<want]), descriptorCapacity: 0) }
            switch r {
            case .processed(let got)?:
                if got.isEndOfStream { return out }
                out += buffer[0..<got.byteCount]
            case .wouldBlock?: usleep(1000)
            case nil: return out
            }
        }
        return out
    }

    static func write(_ d: FileDescriptor, _ bytes: [UInt8]) {
        var offset = 0
        let deadline = Date().addingTimeInterval(3)
        while offset < bytes.count && Date() < deadline {
            switch try? d.send(Array(bytes[offset...])) {
            case .processed(let n)?: offset += n
            case .wouldBlock?: usleep(1000)
            case nil: return
            }
        }
    }
}
