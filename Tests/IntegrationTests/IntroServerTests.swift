import Foundation
import Glibc
import Identity
import OCapN
import RuntimeTestSupport
import Syrup
import Testing
import Transport

// MARK: - Support: the real server process and in-process test peers

enum IntroTestError: Error, CustomStringConvertible {
    case timeout(String)
    case unexpected(String)
    var description: String {
        switch self {
        case let .timeout(s): return "timeout: \(s)"
        case let .unexpected(s): return "unexpected: \(s)"
        }
    }
}

/// Waits up to `timeout` seconds for `poll` events on `descriptor`.
func waitFor(_ descriptor: FileDescriptor, events: Int16, timeout: Double) throws -> Bool {
    try descriptor.withRawDescriptor { fd in
        var entry = pollfd(fd: fd, events: events, revents: 0)
        return poll(&entry, 1, Int32(timeout * 1000)) > 0
    }
}

/// One `ocapn-uds intro-server` process with its own key, socket and audit log in a 0700 directory.
final class IntroServerProcess {
    let dir: TemporaryDirectory
    let keyPath: String
    let socketPath: String
    let auditPath: String
    let identity: PublicIdentity
    private(set) var child: ChildProcess!
    let arguments: [String]

    let wrapper: [String]

    /// `prepare` runs after the key is written and before the server starts (e.g. chown for a
    /// server started as another uid through `wrapper`).
    init(_ extra: [String] = [], dir: TemporaryDirectory? = nil, wrapper: [String] = [],
         prepare: (IntroServerProcess) -> Void = { _ in }) throws {
        self.wrapper = wrapper
        self.dir = try dir ?? TemporaryDirectory("intro")
        keyPath = self.dir.file("server.key")
        socketPath = self.dir.file("s.sock")
        auditPath = self.dir.file("audit.jsonl")
        if FileManager.default.fileExists(atPath: keyPath) {
            identity = try IdentityKeyFile.load(path: keyPath).publicIdentity
        } else {
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: keyPath)
            identity = pair.publicIdentity
        }
        // --allow-core-dumps: these tests read the server's /proc/PID/fd, which a non-dumpable
        // process closes to other processes of its uid (KeyHygieneCLITests covers the default).
        arguments = ["intro-server", "--identity", keyPath, "--socket", socketPath, "--audit-log", auditPath, "--allow-core-dumps"] + extra
        prepare(self)
        try start()
    }

    func start() throws {
        child = try ChildProcess(arguments, launcher: wrapper.isEmpty ? nil : wrapper)
        guard let line = child.waitForLine(timeout: 20, { $0.hasPrefix("listening: ") }) else {
            throw IntroTestError.unexpected("server did not start: \(child.errorOutput.joined(separator: "\n"))")
        }
        guard line == "listening: \(socketPath) designator: \(identity.designator) fingerprint: \(identity.fingerprint)" else {
            throw IntroTestError.unexpected("ready line: \(line)")
        }
        inheritedWithoutCloseOnExec = Set(Self.withoutCloseOnExec(pid: "\(pid)").map(linkTarget))
    }

    var pid: Int32 { child.pid }

    /// What each of the server's descriptors is (the /proc/PID/fd link targets), for diagnostics.
    var descriptorTargets: [String] {
        let dir = "/proc/\(pid)/fd"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.sorted { (Int($0) ?? 0) < (Int($1) ?? 0) }.map {
            "\($0)->" + ((try? FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/\($0)")) ?? "?")
        }
    }
    /// Sockets, pipes and files the server holds. libdispatch's own epoll, eventfd and timerfd
    /// descriptors (anon_inode) are created lazily on first use and would make an early
    /// baseline look like a leak later, so they are not counted.
    /// The server's descriptors without FD_CLOEXEC when it printed its ready line: what it
    /// inherited (Foundation's Process passes on whatever the test runner has open, including
    /// a socket it makes for the spawn itself). Everything the server opens at start-up is
    /// close-on-exec (checked by hand with /proc/PID/fdinfo); I5 then covers what it opens later.
    private(set) var inheritedWithoutCloseOnExec: Set<String> = []

    /// I5: the descriptors (beyond stdio and what it inherited) the server holds that lack
    /// FD_CLOEXEC, from the `flags` line of /proc/PID/fdinfo (O_CLOEXEC is 02000000 octal).
    var descriptorsWithoutCloseOnExec: [String] {
        Self.withoutCloseOnExec(pid: "\(pid)").filter { !inheritedWithoutCloseOnExec.contains(linkTarget($0)) }
    }

    private func linkTarget(_ name: String) -> String {
        "\(name)->" + ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(name)")) ?? "?")
    }

    static func withoutCloseOnExec(pid: String) -> [String] {
        let dir = "/proc/\(pid)/fdinfo"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { (Int($0) ?? 0) > 2 }.filter { name in
            guard let text = try? String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8),
                  let line = text.split(separator: "\n").first(where: { $0.hasPrefix("flags:") }),
                  let flags = Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces), radix: 8) else { return false }
            return flags & 0o2000000 == 0
        }
    }

    var descriptorCount: Int { descriptorTargets.filter { !$0.contains("->anon_inode:") }.count }

    /// Waits until the server holds at most `count` descriptors (closes happen asynchronously).
    /// At most, not exactly: a descriptor the child inherited at spawn from a concurrently
    /// running test may close after the baseline was taken, and that is no leak.
    func waitForDescriptors(_ count: Int, timeout: Double = 8) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if descriptorCount <= count { return true }
            usleep(10_000)
        }
        return descriptorCount <= count
    }

    /// Every record of the audit log, as JSON objects.
    func auditRecords() -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: auditPath, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
    }

    /// Waits for a record with `event` (and `reason`, if given); returns it.
    @discardableResult
    func waitForAudit(_ event: String, reason: String? = nil, count: Int = 1, timeout: Double = 10) -> [String: Any]? {
        let deadline = Date().addingTimeInterval(timeout)
        repeat {
            let matches = auditRecords().filter {
                $0["event"] as? String == event && (reason == nil || $0["reason"] as? String == reason)
            }
            if matches.count >= count { return matches.last }
            usleep(10_000)
        } while Date() < deadline
        return nil
    }

    @discardableResult
    func stop(signal: Int32 = SIGTERM) -> Int32 { child.stop(signal: signal) }
}

/// A peer's control connection, built from `RegistrationClient` and Transport, blocking with
/// deadlines, so a test can also make it misbehave.
final class TestPeer {
    let key: IdentityKeyPair
    let control: FileDescriptor
    let server: PublicIdentity
    private var reader = ControlStreamReader<FileDescriptor>(limits: .init(maxDescriptorsPerRead: 1))  // strict: what we send carries one
    private var client: RegistrationClient
    private var received: [FileDescriptor] = []

    init(_ server: IntroServerProcess, key: IdentityKeyPair = .generate(), form: RegistrationForm = .v2) throws {
        self.key = key
        self.server = server.identity
        control = try FileDescriptor.connect(unixPath: server.socketPath, timeout: .seconds(2))
        client = RegistrationClient(signer: key, challenge: .random(), expectedServer: server.identity, form: form)
    }

    deinit { close() }

    var identity: PublicIdentity { key.publicIdentity }

    func close() {
        control.close()
        for d in reader.drainDescriptors() { d.close() }
    }

    /// Writes all of `bytes`; `passing` rides on the first byte.
    func write(_ bytes: [UInt8], passing descriptors: [FileDescriptor] = []) throws {
        var offset = 0
        var attach = descriptors
        while offset < bytes.count {
            switch try control.send(Array(bytes[offset...]), passing: attach) {
            case let .processed(n):
                offset += n
                attach = []
            case .wouldBlock:
                guard try waitFor(control, events: Int16(POLLOUT), timeout: 6) else { throw IntroTestError.timeout("write") }
            }
        }
    }

    /// The next item from the server, or nil at end of stream.
    func next(timeout: Double = 6) throws -> ControlStreamReader<FileDescriptor>.Item? {
        let deadline = Date().addingTimeInterval(timeout)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            if let item = try reader.next() { return item }
            let result = try buffer.withUnsafeMutableBytes { raw in try control.receive(into: raw, descriptorCapacity: 4) }
            switch result {
            case .wouldBlock:
                let left = deadline.timeIntervalSinceNow
                guard left > 0, try waitFor(control, events: Int16(POLLIN), timeout: left) else {
                    throw IntroTestError.timeout("read")
                }
            case let .processed(r):
                if r.isEndOfStream {
                    try reader.finish()
                    return nil
                }
                for extra in try reader.receive(Array(buffer[..<r.byteCount]), descriptors: r.descriptors) { extra.close() }
            }
        }
    }

    /// Runs registration; the server's key is pinned.
    func register() throws {
        try write(client.start().encoded)
        guard case let .message(value)? = try next() else { throw IntroTestError.unexpected("no uds:server-response") }
        for action in try client.receive(value) {
            if case let .send(reply) = action { try write(reply.encoded) }
        }
        guard client.server != nil else { throw IntroTestError.unexpected("server not verified") }
    }

    /// `uds:new-connection` (with `from`, default ourselves) then the marker with `descriptors`.
    func sendIntroduction(to target: PublicIdentity, from: PublicIdentity? = nil, passing descriptors: [FileDescriptor]) throws {
        let request = UDSNewConnection(from: PeerLocator(identity: from ?? identity, introductionServers: [server]),
                                       to: PeerLocator(identity: target, introductionServers: [server]))
        try write(UDSMessage.newConnection(request).encoded)
        try write(UDSNewConnection.fdMarker, passing: descriptors)
    }

    /// Introduces us to `target` through a fresh socketpair; returns our end (the other end is
    /// passed, and our copy of it closed, as a well-behaved sender does).
    func introduce(to target: PublicIdentity) throws -> FileDescriptor {
        let (mine, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        try sendIntroduction(to: target, passing: [theirs])
        return mine
    }

    /// Waits for an introduction addressed to us.
    func awaitIntroduction(timeout: Double = 6) throws -> (from: PeerLocator, descriptor: FileDescriptor) {
        guard case let .newConnection(value, descriptor)? = try next(timeout: timeout) else {
            throw IntroTestError.unexpected("expected uds:new-connection")
        }
        for action in try client.receive(value) {
            if case let .incoming(incoming) = action { return (incoming.claimedFrom, descriptor) }
        }
        descriptor.close()
        throw IntroTestError.unexpected("introduction not accepted by the client machine")
    }

    /// Whether the server closes this connection within `timeout` (EOF or reset).
    func seesEndOfStream(timeout: Double = 6) -> Bool {
        do {
            while let item = try next(timeout: timeout) {
                if case let .newConnection(_, d) = item { d.close() }
            }
            return true
        } catch IntroTestError.timeout {
            return false
        } catch {
            return true  // reset, or a truncated stream: closed either way
        }
    }
}

/// Whether bytes written on `a` arrive on `b` (the two are the ends of one socketpair).
func endsAreConnected(_ a: FileDescriptor, _ b: FileDescriptor) throws -> Bool {
    let ping: [UInt8] = Array("ping".utf8)
    _ = try a.send(ping)
    guard try waitFor(b, events: Int16(POLLIN), timeout: 6) else { return false }
    var buffer = [UInt8](repeating: 0, count: 16)
    let r = try buffer.withUnsafeMutableBytes { try b.receive(into: $0, descriptorCapacity: 0) }
    guard case let .processed(got) = r else { return false }
    return Array(buffer[..<got.byteCount]) == ping
}

/// Whether `descriptor` reaches end of stream within `timeout`.
func seesEOF(_ descriptor: FileDescriptor, timeout: Double = 6) throws -> Bool {
    guard try waitFor(descriptor, events: Int16(POLLIN), timeout: timeout) else { return false }
    var buffer = [UInt8](repeating: 0, count: 64)
    let r = try buffer.withUnsafeMutableBytes { try descriptor.receive(into: $0, descriptorCapacity: 0) }
    if case let .processed(got) = r { return got.isEndOfStream }
    return false
}

// MARK: - Lifecycle tests

@Suite(.serialized, .ownThread) struct IntroServerTests {
    @Test("Two peers register and an introduction hands the target a working end of the initiator's socketpair")
    func introductionPassesAWorkingSocket() throws {
        let server = try IntroServerProcess()
        defer { server.stop(); server.dir.remove() }
        let baseline = server.descriptorCount
        let a = try TestPeer(server), b = try TestPeer(server)
        try a.register()
        try b.register()
        let mine = try a.introduce(to: b.identity)
        defer { mine.close() }
        let (from, theirs) = try b.awaitIntroduction()
        #expect(from.identity == a.identity)
        #expect(try endsAreConnected(mine, theirs))
        #expect(try endsAreConnected(theirs, mine))
        // The server closed its copy right after forwarding (A10): B closing means EOF for A.
        theirs.close()
        #expect(try seesEOF(mine))
        #expect(server.waitForAudit("introduction.forwarded") != nil)
        #expect(server.waitForAudit("registration.accepted", count: 2)?["pid"] as? Int == Int(getpid()))
        a.close()
        b.close()
        #expect(server.waitForDescriptors(baseline), "server descriptors \(server.descriptorCount), baseline \(baseline)")
        #expect(server.stop() == 0)
        #expect(!FileManager.default.fileExists(atPath: server.socketPath), "the socket path is unlinked on shutdown")
        let verify = try runOCapNUDS(["audit", "--verify", server.auditPath])
        #expect(verify.status == 0, "audit log: \(verify.stdout)")
    }

    @Test("An introduction waits for a target that registers after it was requested")
    func targetRegistersLater() throws {
        let server = try IntroServerProcess()
        defer { server.stop(); server.dir.remove() }
        let a = try TestPeer(server)
        try a.register()
        let b = try TestPeer(server)
        let mine = try a.introduce(to: b.identity)
        defer { mine.close() }
        #expect(server.waitForAudit("introduction.queued") != nil, "\(server.child.errorOutput) \(server.auditRecords())")
        try b.register()
        let (_, theirs) = try b.awaitIntroduction()
        defer { theirs.close() }
        #expect(try endsAreConnected(mine, theirs))
    }

    @Test("An introduction to a target that never registers expires and the initiator sees end of stream")
    func pendingExpiresWithEOF() throws {
        let server = try IntroServerProcess(["--pending-lifetime-ms", "300"])
        defer { server.stop(); server.dir.remove() }
        let a = try TestPeer(server)
        try a.register()
        let baseline = server.descriptorCount
        let mine = try a.introduce(to: IdentityKeyPair.generate().publicIdentity)
        defer { mine.close() }
        #expect(try seesEOF(mine, timeout: 6))
        #expect(server.waitForAudit("introduction.expired", reason: "targetUnknownExpired") != nil,
                "\(server.auditRecords().map { "\($0["event"]!) \($0["reason"] ?? "-")" })")
        #expect(server.waitForDescriptors(baseline))
    }

    @Test("A restarted server serves again: old peers see end of stream and register anew")
    func serverRestart() throws {
        let server = try IntroServerProcess()
        defer { server.stop(); server.dir.remove() }
        let a = try TestPeer(server)
        try a.register()
        #expect(server.stop() == 0)
        #expect(a.seesEndOfStream())
        try server.start()
        let a2 = try TestPeer(server, key: a.key), b = try TestPeer(server)
        try a2.register()
        try b.register()
        let mine = try a2.introduce(to: b.identity)
        defer { mine.close() }
        let (_, theirs) = try b.awaitIntroduction()
        defer { theirs.close() }
        #expect(try endsAreConnected(mine, theirs))
    }

    @Test("A stale socket file left by a killed server is replaced on start")
    func staleSocketIsReplaced() throws {
        let server = try IntroServerProcess()
        defer { server.stop(); server.dir.remove() }
        server.stop(signal: SIGKILL)
        #expect(FileManager.default.fileExists(atPath: server.socketPath), "SIGKILL leaves the file behind")
        try server.start()
        let a = try TestPeer(server)
        try a.register()
    }

    @Test("A second server on a live server's path refuses to start and the first keeps serving")
    func liveServerIsNotStolen() throws {
        let server = try IntroServerProcess()
        defer { server.stop(); server.dir.remove() }
        let second = try runOCapNUDS(["intro-server", "--identity", server.keyPath, "--socket", server.socketPath])
        #expect(second.status == 1)
        #expect(second.stderr.contains("alreadyRunning") || second.stderr.contains("addressInUse"), "\(second.stderr)")
        let a = try TestPeer(server)
        try a.register()
    }

    @Test("A peer that disconnects can register again; a live registration is kept against a second one, audited with both credentials")
    func reRegistration() throws {
        let server = try IntroServerProcess()
        defer { server.stop(); server.dir.remove() }
        let a = try TestPeer(server), b = try TestPeer(server)
        try a.register()
        try b.register()
        b.close()
        let b2 = try TestPeer(server, key: b.key)
        try b2.register()
        let b3 = try TestPeer(server, key: b.key)
        try b3.register()
        #expect(b3.seesEndOfStream(), "the newer registration is refused")
        let refused = server.waitForAudit("registration.refused", reason: "liveRegistrationKept")
        #expect(refused?["incumbent_pid"] as? Int == Int(getpid()) && refused?["pid"] as? Int == Int(getpid()))
        #expect(server.auditRecords().filter { $0["event"] as? String == "registration.accepted" && $0["reason"] != nil }
            .allSatisfy { $0["reason"] as? String == "replacedDeadConnection" })
        let mine = try a.introduce(to: b.identity)
        defer { mine.close() }
        let (_, theirs) = try b2.awaitIntroduction()
        defer { theirs.close() }
        #expect(try endsAreConnected(mine, theirs))
    }

    @Test("With --replace-same-uid a live registration is replaced by the same uid, audited with both credentials")
    func replaceSameUID() throws {
        let server = try IntroServerProcess(["--replace-same-uid"])
        defer { server.stop(); server.dir.remove() }
        let b = try TestPeer(server)
        try b.register()
        let b2 = try TestPeer(server, key: b.key)
        try b2.register()
        #expect(b.seesEndOfStream(), "the older registration is closed")
        let record = server.waitForAudit("registration.accepted", reason: "replacedSameUID")
        #expect(record?["incumbent_uid"] as? Int == Int(getuid()))
    }

    @Test("--registration-forms v2 refuses a Goblins-form registration before signing; the default serves both")
    func registrationForms() throws {
        let strict = try IntroServerProcess(["--registration-forms", "v2"])
        defer { strict.stop(); strict.dir.remove() }
        let legacy = try TestPeer(strict, form: .goblins)
        #expect(throws: (any Error).self) { try legacy.register() }
        #expect(strict.waitForAudit("registration.refused", reason: "registrationFormRefused") != nil)
        try TestPeer(strict).register()
        let open = try IntroServerProcess()
        defer { open.stop(); open.dir.remove() }
        try TestPeer(open, form: .goblins).register()
        try TestPeer(open, form: .draft).register()
    }

    @Test("The socket file is created with mode 0600 by default and the requested mode otherwise")
    func socketMode() throws {
        for (arguments, mode) in [([String](), mode_t(0o600)), (["--socket-mode", "0660"], mode_t(0o660))] {
            let server = try IntroServerProcess(arguments)
            var st = stat()
            #expect(stat(server.socketPath, &st) == 0)
            #expect(st.st_mode & 0o777 == mode)
            server.stop()
            server.dir.remove()
        }
    }

    @Test("Ten thousand clients fit after raising RLIMIT_NOFILE; caps no limit can hold refuse to start")
    func descriptorBudget() throws {
        let big = try IntroServerProcess(["--max-clients", "10000"])
        let limits = try String(contentsOfFile: "/proc/\(big.pid)/limits", encoding: .utf8)
        let line = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") } ?? ""
        let soft = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).first.flatMap { Int($0) } ?? 0
        #expect(soft >= 10_000 + 1 + 256 + 16, "\(line)")
        big.stop()
        let huge = try runOCapNUDS(["intro-server", "--identity", big.keyPath, "--socket", big.socketPath,
                                    "--max-clients", "1000000", "--max-pending", "1000000"])
        #expect(huge.status == 1)
        #expect(huge.stderr.contains("RLIMIT_NOFILE"), "\(huge.stderr)")
        big.dir.remove()
    }

    @Test("Bad options exit with the usage code and a key file that is not private is refused")
    func usageAndKeyErrors() throws {
        let dir = try TemporaryDirectory("intro")
        defer { dir.remove() }
        let bad = try runOCapNUDS(["intro-server", "--identity", dir.file("k"), "--socket", dir.file("s"), "--max-clients", "0"])
        #expect(bad.status == 2, "\(bad.stderr)")
        let mode = try runOCapNUDS(["intro-server", "--identity", dir.file("k"), "--socket", dir.file("s"), "--socket-mode", "999"])
        #expect(mode.status == 2)
        let missing = try runOCapNUDS(["intro-server", "--identity", dir.file("missing.key"), "--socket", dir.file("s")])
        #expect(missing.status == 3, "\(missing.stderr)")
    }
}
