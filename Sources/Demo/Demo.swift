import Audit
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import Transport

/// `ocapn-uds demo`: the whole product on an embedded default, in one command.
///
/// A temporary directory, an introduction server and `peers` echo peers as separate processes
/// (the real `ocapn-uds intro-server` and `ocapn-uds peer`), and this process as a client peer
/// that opens `connections` channels through the server, handshakes, and has `messages`
/// messages echoed on each. Then two attacks that must be refused: a registered peer lying about
/// `from` (the server refuses it) and a lying introduction server (the target's handshake
/// refuses it). Prints progress, then a summary and the audit-log summary.
public final class Demo: @unchecked Sendable {
    public struct Options: Sendable {
        public var peers = 4
        public var connections = 12
        public var messages = 5
        /// Connections in flight at once.
        public var concurrency = 4
        /// Keep the key files too (the directory, its logs and audit trails are always kept).
        public var keepKeys = false
        /// The `ocapn-uds` executable to start the server and peers with.
        public var executable: String
        public init(executable: String) { self.executable = executable }
    }

    public struct Summary: Sendable {
        public var directory: String
        public var peers: Int
        public var handshakesSucceeded: Int
        public var handshakesFailed: [String: Int]
        public var latenciesMicros: [Double]
        public var messagesEchoed: Int
        public var messagesExpected: Int
        public var refusals: [(attack: String, refused: Bool, reason: String?)]
        public var auditLogs: [String]
        /// `audit --verify` of each log: (path, status) where status is intact, broken, …
        public var auditVerification: [(path: String, status: String)]
        public var elapsedSeconds: Double

        /// Every connection worked, every attack was refused, every audit chain is intact.
        public var succeeded: Bool {
            handshakesFailed.isEmpty && messagesEchoed == messagesExpected && refusals.allSatisfy(\.refused)
                && auditVerification.allSatisfy { $0.status == "intact" }
        }
    }

    let options: Options
    private let progress: @Sendable (String) -> Void
    private let lock = NSLock()
    private var children: [Process] = []
    private var cleanedUp = false
    /// Set by `interrupt()`: progress goes quiet and no new connection starts.
    private var stopping = false
    /// The client's audit log, sealed by `interrupt()` when the run is cut short.
    private var clientAudit: AuditFileSink?
    /// Display names of the run's identities ("peer-1"), for progress lines.
    private var names: [PublicIdentity: String] = [:]
    public private(set) var directory = ""

    public init(options: Options, progress: @escaping @Sendable (String) -> Void) {
        self.options = options
        self.progress = progress
    }

    /// True once `interrupt()` ran.
    public var isStopping: Bool { lock.withLock { stopping } }

    /// One progress line, unless the run is being interrupted (then nothing more is said).
    func say(_ line: String) {
        // Under the lock: once `interrupt()` has set `stopping`, no line can slip out after it.
        lock.withLock {
            guard !stopping else { return }
            progress(line)
        }
    }

    /// `name fp1:…` for an identity of this run.
    func label(_ identity: PublicIdentity) -> String {
        let name = lock.withLock { names[identity] }
        return name.map { "\($0) \(identity.fingerprint)" } ?? identity.fingerprint
    }

    private func name(_ identity: PublicIdentity, _ name: String) { lock.withLock { names[identity] = name } }

    /// Ctrl-C: stop the loops, the server and the peers (they seal their audit logs on SIGTERM),
    /// seal the client's audit log, remove keys and sockets. Returns the directory that keeps the
    /// logs and audit trails; `notice` runs once progress has gone quiet. Safe to call from a
    /// signal handler's queue.
    public func interrupt(notice: () -> Void = {}) -> String {
        let sink = lock.withLock { () -> AuditFileSink? in
            stopping = true
            return clientAudit
        }
        notice()
        cleanUp()
        sink?.close()
        return directory
    }

    // MARK: processes

    private func spawn(_ name: String, _ arguments: [String]) throws -> (Process, FileHandle) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: options.executable)
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        let logPath = file("\(name).log")
        _ = FileManager.default.createFile(atPath: logPath, contents: nil, attributes: [.posixPermissions: 0o600])
        process.standardError = FileHandle(forWritingAtPath: logPath)
        process.standardInput = FileHandle.nullDevice
        try lock.withLock {
            guard !cleanedUp else { throw DemoError("interrupted") }
            try process.run()
            children.append(process)
        }
        return (process, out.fileHandleForReading)
    }

    /// Reads the first stdout line of a child, with a deadline.
    private func firstLine(_ handle: FileHandle, of name: String, timeout: Double = 20) throws -> String {
        var collected = Data()
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let remaining = Duration.milliseconds(max(1, Int(deadline.timeIntervalSinceNow * 1000)))
            guard try BorrowedDescriptor.wait(handle.fileDescriptor, for: .readable, timeout: remaining) else { break }
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            collected.append(chunk)
            if let nl = collected.firstIndex(of: 0x0a) {
                return String(decoding: collected[collected.startIndex..<nl], as: UTF8.self)
            }
        }
        let log = (try? String(contentsOfFile: file("\(name).log"), encoding: .utf8)) ?? ""
        throw DemoError("\(name) did not start: \(log.split(separator: "\n").last.map(String.init) ?? "no output")")
    }

    private func file(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    /// Stops every child (SIGTERM, then SIGKILL after 3 s) and removes keys and sockets.
    /// Safe to call from a signal handler's queue and more than once.
    public func cleanUp() {
        let processes: [Process] = lock.withLock {
            guard !cleanedUp else { return [] }
            cleanedUp = true
            return children
        }
        for p in processes where p.isRunning { try? ProcessSignals.send(.terminate, to: p.processIdentifier) }
        let deadline = Date().addingTimeInterval(3)
        for p in processes {
            while p.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
            if p.isRunning { try? ProcessSignals.send(.kill, to: p.processIdentifier) }
            p.waitUntilExit()
        }
        guard !directory.isEmpty, let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return }
        for name in names where name.hasSuffix(".sock") || name.hasSuffix(".lock") || (!options.keepKeys && name.hasSuffix(".key")) {
            try? FileManager.default.removeItem(atPath: file(name))
        }
    }

    // MARK: the run

    public func run() async throws -> Summary {
        let started = Date()
        do { directory = try FileSystem.makeTemporaryDirectory(prefix: "/tmp/ocapn-demo-") } catch {
            throw DemoError("cannot create a temporary directory: \(error.explanation)")
        }
        say("working directory \(directory) (mode 0700)")
        defer { cleanUp() }

        // Identities.
        let serverKey = IdentityKeyPair.generate()
        try IdentityKeyFile.write(serverKey, to: file("intro-server.key"))
        var peerKeys: [IdentityKeyPair] = []
        for i in 1...options.peers {
            let k = IdentityKeyPair.generate()
            try IdentityKeyFile.write(k, to: file("peer-\(i).key"))
            peerKeys.append(k)
        }
        let clientKey = IdentityKeyPair.generate()
        let impostorKey = IdentityKeyPair.generate()
        name(serverKey.publicIdentity, "intro-server")
        for (i, k) in peerKeys.enumerated() { name(k.publicIdentity, "peer-\(i + 1)") }
        name(clientKey.publicIdentity, "client")
        name(impostorKey.publicIdentity, "impostor")
        say("identities (name and fingerprint; the audit summary below names them by fingerprint):")
        say("  intro-server  \(serverKey.publicIdentity.fingerprint)  the introduction server (a separate process)")
        for (i, k) in peerKeys.enumerated() {
            say("  " + "peer-\(i + 1)".padding(toLength: 12, withPad: " ", startingAt: 0) + "  \(k.publicIdentity.fingerprint)  an echo peer (a separate process)")
        }
        say("  client        \(clientKey.publicIdentity.fingerprint)  this process, which opens the connections")
        say("  impostor      \(impostorKey.publicIdentity.fingerprint)  a registered peer that will lie about `from` (attack 1)")

        // The introduction server.
        let socketPath = file("intro.sock")
        let serverAudit = file("intro-server.audit.jsonl")
        let (_, serverOut) = try spawn("intro-server", [
            "intro-server", "--identity", file("intro-server.key"), "--socket", socketPath,
            "--audit-log", serverAudit, "--log-level", "notice",
        ])
        _ = try firstLine(serverOut, of: "intro-server")
        say("intro-server listening on \(socketPath)")

        // A lying introduction server, which the last peer also registers with.
        let liar = try LyingIntroductionServer(path: file("lying.sock"))
        name(liar.identity, "lying-server")
        defer { liar.stop() }  // also when a later step throws (an interrupt, a failed start)
        liar.start()

        // The echo peers.
        var locators: [PeerLocator] = []
        var auditLogs = [serverAudit]
        let pinned = "\(socketPath)=\(serverKey.publicIdentity.designator)"
        for i in 1...options.peers {
            var arguments = ["peer", "--identity", file("peer-\(i).key"), "--server", pinned,
                             "--audit-log", file("peer-\(i).audit.jsonl"), "--log-level", "notice"]
            if i == options.peers { arguments += ["--server", liar.path] }
            let (_, out) = try spawn("peer-\(i)", arguments)
            let uri = try firstLine(out, of: "peer-\(i)")
            let locator = try PeerLocator(uri: uri)
            guard locator.identity == peerKeys[i - 1].publicIdentity else { throw DemoError("peer-\(i) printed another identity") }
            locators.append(locator)
            auditLogs.append(file("peer-\(i).audit.jsonl"))
            if i == options.peers {
                say("peer-\(i) registered with intro-server and with lying-server \(liar.identity.fingerprint), a lying"
                    + " introduction server (attack 2); its locator names both servers as hints")
            } else {
                say("peer-\(i) registered with intro-server; its locator ocapn://<key>.unix-domain-socket?<server key>=t names it")
            }
        }

        // This process as a client peer.
        let clientAuditPath = file("client.audit.jsonl")
        let clientAudit = try AuditFileSink(AuditFileConfiguration(
            path: clientAuditPath, writer: clientKey.publicIdentity,
            signer: clientKey))
        // Handed to `interrupt()`, which seals it; an interrupt that came first is honoured here.
        let kept = lock.withLock { () -> Bool in
            guard !stopping else { return false }
            self.clientAudit = clientAudit
            return true
        }
        guard kept else {
            clientAudit.close()
            throw DemoError("interrupted")
        }
        auditLogs.append(clientAuditPath)
        var logger = Logger(label: "ocapn-uds.demo")
        logger.logLevel = .error
        let netlayer = try PeerNetlayer(identity: clientKey, audit: clientAudit, logger: logger)
        _ = try await netlayer.addServer(path: socketPath, expectedKey: serverKey.publicIdentity)
        say("client registered with intro-server")

        // Connections: handshake, echo, close.
        say("opening \(options.connections) connections (\(options.concurrency) at a time), \(options.messages) messages each")
        let results = await connectAll(netlayer: netlayer, to: locators)
        await netlayer.shutdown()
        clientAudit.close()

        guard !isStopping else { throw DemoError("interrupted") }

        // Attack 1: a registered peer lies about `from`; the server must refuse.
        let victim = locators[0], spoofTarget = locators[1 % locators.count]
        say("attack 1: the impostor asks intro-server to introduce it to \(label(spoofTarget.identity)) as \(label(victim.identity))")
        let spoof = try spoofedFrom(socketPath: socketPath, server: serverKey.publicIdentity, impostor: impostorKey,
                                    victim: victim, target: spoofTarget)
        let spoofReason = spoof ? waitForReason(in: serverAudit, event: "introduction.refused") : nil
        say(spoof ? "  refused by the introduction server: \(spoofReason ?? "closed")" : "  NOT refused")
        say("  with an unauthenticated netlayer (plain Goblins) nothing checks `from`: \(names(spoofTarget)) would have"
            + " talked CapTP with the impostor as if it were \(names(victim))")

        // Attack 2: a lying introduction server hands the last peer a socket it holds itself.
        let target = locators[locators.count - 1]
        say("attack 2: lying-server hands \(label(target.identity)) a socket it holds itself, saying \(label(victim.identity)) is calling")
        let outcome: LyingIntroductionServer.Outcome
        if liar.waitForRegistration(timeout: 10) == nil {
            outcome = .notRegistered
        } else {
            outcome = liar.impersonate(locators[0])
        }
        liar.stop()
        let liarReason = outcome == .refused ? waitForReason(in: file("peer-\(options.peers).audit.jsonl"), event: "handshake.failed") : nil
        switch outcome {
        case .refused: say("  refused by \(names(target))'s handshake: \(liarReason ?? "closed")")
        case .answered: say("  NOT refused: the target answered the handshake")
        case .notRegistered: say("  could not run: the target never registered with the lying server")
        case let .failed(why): say("  could not run: \(why)")
        }
        say("  with an unauthenticated netlayer (plain Goblins) \(names(target)) would have taken the socket for"
            + " \(names(victim))'s, and lying-server would read and write everything on it")

        // Stop everything so every audit log is sealed with its signed closing record.
        cleanUp()

        var failures: [String: Int] = [:]
        var latencies: [Double] = []
        var echoed = 0
        for r in results {
            switch r {
            case let .success(latency, messages):
                latencies.append(latency)
                echoed += messages
            case let .failure(code):
                failures[code, default: 0] += 1
            }
        }
        return Summary(
            directory: directory, peers: options.peers, handshakesSucceeded: latencies.count,
            handshakesFailed: failures, latenciesMicros: latencies, messagesEchoed: echoed,
            messagesExpected: options.connections * options.messages,
            refusals: [
                ("registered peer lying about from", spoof, spoofReason),
                ("introduction server lying about from", outcome == .refused, liarReason),
            ],
            auditLogs: auditLogs,
            auditVerification: auditLogs.map { ($0, AuditVerifier.verify(paths: [$0]).status.rawValue) },
            elapsedSeconds: Date().timeIntervalSince(started))
    }

    enum ConnectionResult: Sendable {
        case success(latencyMicros: Double, messages: Int)
        case failure(String)
    }

    /// Above this many connections, one progress line a second replaces the line per connection.
    static let perConnectionLinesUpTo = 20

    private func connectAll(netlayer: PeerNetlayer, to locators: [PeerLocator]) async -> [ConnectionResult] {
        let total = options.connections, perConnection = options.messages, width = max(1, options.concurrency)
        let perLine = total <= Self.perConnectionLinesUpTo
        let say: @Sendable (String) -> Void = { [self] line in if perLine { self.say(line) } }
        let names: @Sendable (PublicIdentity) -> String = { [self] in label($0) }
        let started = ContinuousClock.now
        return await withTaskGroup(of: ConnectionResult.self) { group in
            var results: [ConnectionResult] = []
            var next = 0, failed = 0
            var lastReport = started
            func add() {
                let index = next
                next += 1
                let target = locators[index % locators.count]
                group.addTask {
                    await Self.oneConnection(netlayer: netlayer, target: target, index: index, messages: perConnection,
                                             names: names, say: say)
                }
            }
            for _ in 0..<min(width, total) { add() }
            while let r = await group.next() {
                results.append(r)
                if case .failure = r { failed += 1 }
                let now = ContinuousClock.now
                if !perLine, now - lastReport >= .seconds(1) || results.count == total {
                    lastReport = now
                    let seconds = max(0.001, Double((now - started).components.attoseconds) / 1e18 + Double((now - started).components.seconds))
                    self.say("  \(results.count) of \(total) connections done (\(results.count - failed) verified and echoed,"
                             + " \(failed) failed), \(Int(Double(results.count) / seconds))/s")
                }
                // Ctrl-C: no new connection; the ones in flight end with the server's exit.
                if next < total, !isStopping { add() }
            }
            return results
        }
    }

    private static func oneConnection(netlayer: PeerNetlayer, target: PeerLocator, index: Int, messages: Int,
                                      names: @Sendable (PublicIdentity) -> String,
                                      say: @Sendable (String) -> Void) async -> ConnectionResult {
        let t0 = ContinuousClock.now
        do throws(PeerError) {
            let channel = try await netlayer.connect(to: target)
            var latency: Double = 0
            var echoed = 0
            for m in 0..<messages {
                let text = Array("message \(m) of connection \(index)".utf8)
                try await channel.send(text)
                guard let reply = try await channel.receive(), reply == text else {
                    _ = await channel.close()
                    return .failure("echoMismatch")
                }
                if m == 0 {
                    let d = t0.duration(to: .now).components
                    latency = Double(d.seconds) * 1e6 + Double(d.attoseconds) / 1e12
                }
                echoed += 1
            }
            let summary = await channel.close()
            say("  connection \(index + 1): \(names(target.identity)) verified, \(echoed) echoed, \(summary.clean ? "closed cleanly" : "closed: \(summary.reason?.code.rawValue ?? "?")"), first echo after \(Int(latency)) µs")
            return .success(latencyMicros: latency, messages: echoed)
        } catch {
            say("  connection \(index + 1) to \(names(target.identity)) failed: \(error.code.rawValue)")
            return .failure(error.code.rawValue)
        }
    }

    /// Registers an impostor and sends an introduction claiming to come from `victim`.
    /// True when the server closed the impostor's connection (the refusal).
    private func spoofedFrom(socketPath: String, server: PublicIdentity, impostor key: IdentityKeyPair,
                             victim: PeerLocator, target: PeerLocator) throws -> Bool {
        let impostor = try BlockingIntroductionClient(path: socketPath, server: server, key: key)
        defer { impostor.close() }
        try impostor.register()
        let (mine, theirs) = try FileDescriptor.socketPair()
        defer { mine.close(); theirs.close() }
        try impostor.sendAll(UDSMessage.newConnection(UDSNewConnection(from: victim, to: target)).encoded)
        try impostor.sendAll(UDSNewConnection.fdMarker, passing: [theirs])
        theirs.close()
        do {
            _ = try impostor.next(timeout: 10)
            return false
        } catch {
            return true  // end of stream or reset: the server closed the impostor
        }
    }

    /// The short name of a locator's identity ("peer-1").
    private func names(_ locator: PeerLocator) -> String {
        lock.withLock { names[locator.identity] } ?? locator.identity.fingerprint
    }

    /// The reason of the last `event` record in an audit log, waiting briefly for it.
    private func waitForReason(in path: String, event: String) -> String? {
        let deadline = Date().addingTimeInterval(5)
        repeat {
            if let text = try? String(contentsOfFile: path, encoding: .utf8) {
                for line in text.split(separator: "\n").reversed() {
                    guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                          object["event"] as? String == event else { continue }
                    return object["reason"] as? String
                }
            }
            Thread.sleep(forTimeInterval: 0.02)
        } while Date() < deadline
        return nil
    }
}

public struct DemoError: Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
}
