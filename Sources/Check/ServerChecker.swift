import Foundation
import Identity
import OCapN
import Synchronization
import Syrup
import Transport

/// One check: its stable id, the catalog row it comes from, what it tests and how bad a FAIL is.
public struct CheckDefinition: Sendable, Equatable {
    public let id: String
    public let catalog: String
    public let title: String
    public let severity: CheckSeverity

    public init(_ id: String, _ catalog: String, _ severity: CheckSeverity, _ title: String) {
        self.id = id
        self.catalog = catalog
        self.title = title
        self.severity = severity
    }

    /// The checks named by `ids`: each an exact id or a catalog row (`E2` selects every `E2.*`).
    public static func select(_ ids: [String], from all: [CheckDefinition]) throws(CheckError) -> [CheckDefinition] {
        var wanted = Set<String>()
        for raw in ids {
            let id = raw.trimmingCharacters(in: .whitespaces)
            if id.isEmpty { continue }
            let matches = all.filter { $0.id == id || $0.catalog == id || $0.id.hasPrefix(id + ".") }
            guard !matches.isEmpty else {
                throw CheckError(.invalidArgument, "unknown check id \(id) (known: \(all.map(\.id).joined(separator: ", ")))")
            }
            wanted.formUnion(matches.map(\.id))
        }
        guard !wanted.isEmpty else { throw CheckError(.invalidArgument, "--only names no check") }
        return all.filter { wanted.contains($0.id) }
    }
}

/// Bounds of a `check server` run.
public struct ServerCheckOptions: Sendable {
    /// How long a probe waits for an answer, a close or a delivery (`--timeout-ms`).
    public var timeout: Duration = .milliseconds(2000)
    /// How long the deadline probes wait for the server to drop a silent or dripping client.
    public var deadlineWait: Duration = .seconds(8)
    /// How long the expiry probe waits for a held introduction to be dropped.
    public var expiryWait: Duration = .seconds(15)
    /// Introductions to unknown targets sent by the pending-bound probe (two descriptors each).
    public var pendingProbes = 32
    /// Probes run at once (each holds a few connections; F5 holds `pendingProbes` pairs).
    public var parallelism = 4

    public init() {}
}

/// A setup step of a probe failed (not a finding about the target): the row is SKIP.
struct ProbeSetupFailure: Error { let detail: String }

/// `ocapn-uds check server PATH`: drives whatever listens at PATH as clients with fresh
/// identities and reports one row per check (docs/CHECK.md). Every probe is bounded in time
/// (`ServerCheckOptions`), in descriptors (at most `pendingProbes` pairs at once) and in memory
/// (16 KiB per control message), and closes everything it opened before the next one starts.
public final class ServerChecker: Sendable {
    public static let checks: [CheckDefinition] = [
        CheckDefinition("E2.register-goblins", "E2", .critical, "registration in Goblins' forms, then an introduction"),
        CheckDefinition("E2.register-draft", "E2", .low, "uds:signature in the draft's sig-val form"),
        CheckDefinition("E2.worked-example", "E2", .medium, "the worked example's uds:register bytes"),
        CheckDefinition("E2.bad-signature", "E2", .critical, "a corrupted registration signature"),
        CheckDefinition("E2.wrong-key", "E2", .critical, "a signature by another key than the designator's"),
        CheckDefinition("E2.replayed-signature", "E2", .critical, "a uds:signature replayed from an earlier connection"),
        CheckDefinition("E2.challenge-length", "E2", .high, "client challenges of other lengths than 64 bytes"),
        CheckDefinition("E2.registration-relay", "E2", .medium, "a second registration of a live key (relay lever)"),
        CheckDefinition("D4.non-canonical-designator", "D4", .medium, "designators in upper case or padded"),
        CheckDefinition("D1.length-prefix", "D1", .high, "a huge Syrup length prefix"),
        CheckDefinition("D1.oversized", "D1", .medium, "a 20 KB control message"),
        CheckDefinition("D2.deep-nesting", "D2", .high, "4096 nested lists"),
        CheckDefinition("D7.trailing-garbage", "D7", .low, "bytes after a record that are not Syrup"),
        CheckDefinition("E1.intro-before-registration", "E1", .critical, "uds:new-connection before registering"),
        CheckDefinition("E1.out-of-order", "E1", .medium, "uds:signature first; uds:register twice"),
        CheckDefinition("E4.from-spoofing", "E4", .high, "uds:new-connection with another peer's from"),
        CheckDefinition("A2.no-descriptor", "A2", .critical, "the marker without a descriptor"),
        CheckDefinition("A1.descriptor-on-register", "A1", .medium, "a descriptor attached to uds:register"),
        CheckDefinition("A1.descriptor-on-record", "A1", .high, "the descriptor on the record instead of the marker"),
        CheckDefinition("A3.extra-descriptors", "A3", .high, "the marker with two descriptors (one per introduction is forwarded)"),
        CheckDefinition("A8.kind-file", "A8", .high, "a regular file as the passed descriptor"),
        CheckDefinition("A8.kind-pipe", "A8", .high, "a pipe as the passed descriptor"),
        CheckDefinition("A9.kind-tcp", "A9", .high, "a TCP socket as the passed descriptor"),
        CheckDefinition("A9.kind-listening", "A9", .high, "a listening socket as the passed descriptor"),
        CheckDefinition("A9.kind-own-connection", "A9", .high, "the sender's own control connection as the passed descriptor"),
        CheckDefinition("A10.keeps-descriptor", "A10", .high, "the server closes its copy of a forwarded descriptor"),
        CheckDefinition("E3.re-registration", "E3", .medium, "a peer that reconnects is routed to again"),
        CheckDefinition("F5.pending-bound", "F5", .medium, "introductions held for unknown targets are bounded"),
        CheckDefinition("F6.pending-expiry", "F6", .medium, "an introduction held for an unknown target expires"),
        CheckDefinition("F1.silent-client", "F1", .medium, "a client that connects and sends nothing"),
        CheckDefinition("F1.slow-client", "F1", .medium, "a client that drips its registration one byte at a time"),
        CheckDefinition("I4.close-on-error", "I4", .medium, "the connection is closed after a protocol error"),
        CheckDefinition("I1.alive", "I1", .critical, "the server still serves after every probe"),
    ]

    /// Checks that wait long (deadlines, expiry): started first.
    static let background: Set<String> = ["F1.silent-client", "F1.slow-client", "F6.pending-expiry"]

    public let path: String
    public let options: ServerCheckOptions

    /// How long to wait for what a working server does (an answer, a delivery, a close): longer
    /// than `timeout`, which bounds waits for what should not happen, so a loaded host slows a
    /// run down instead of failing it.
    var patience: Duration { options.timeout * 3 }

    public init(path: String, options: ServerCheckOptions = ServerCheckOptions()) {
        self.path = path
        self.options = options
    }

    /// Runs `selected` (all by default). Throws `unreachable` when nothing accepts at the path.
    public func run(_ selected: [CheckDefinition] = ServerChecker.checks) throws(CheckError) -> CheckReport {
        do {
            let first = try ProbeConnection.connect(path: path, timeout: options.timeout)
            first.close()
        } catch {
            throw CheckError(.unreachable, "cannot connect to \(path): \(error.code.rawValue)")
        }
        // Probes use fresh keys and their own connections, so they run side by side; the long
        // waits (deadlines, expiry) start first. I1.alive runs alone at the end.
        let queue = Mutex<[String]>(selected.map(\.id).filter { $0 != "I1.alive" }
            .sorted { Self.background.contains($0) && !Self.background.contains($1) })
        let results = Mutex<[String: (CheckStatus, String)]>([:])
        let done = DispatchGroup()
        for _ in 0..<max(1, options.parallelism) {
            done.enter()
            let thread = Thread { [self] in
                while let id = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) {
                    let r = self.execute(id)
                    results.withLock { $0[id] = r }
                }
                done.leave()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        done.wait()
        if selected.contains(where: { $0.id == "I1.alive" }) {
            let r = execute("I1.alive")
            results.withLock { $0["I1.alive"] = r }
        }
        var report = CheckReport(kind: "server", target: path)
        let final = results.withLock { $0 }
        for check in selected {
            let (status, evidence) = final[check.id] ?? (.skip, "not run")
            report.append(CheckRow(id: check.id, catalog: check.catalog, title: check.title, status: status,
                                   severity: check.severity, evidence: evidence))
        }
        return report
    }

    private func execute(_ id: String) -> (CheckStatus, String) {
        do {
            return try probe(id)
        } catch let failure as ProbeSetupFailure {
            return (.skip, "setup failed: \(failure.detail)")
        } catch {
            return (.skip, "setup failed: \(error)")
        }
    }

    // MARK: - probe helpers

    /// A connection registered (Goblins' forms) under a fresh key.
    final class Client {
        let connection: ProbeConnection
        let key: IdentityKeyPair
        init(_ connection: ProbeConnection, _ key: IdentityKeyPair) {
            self.connection = connection
            self.key = key
        }
        var identity: PublicIdentity { key.publicIdentity }
        var locator: PeerLocator { PeerLocator(identity: identity) }
        func close() { connection.close() }
    }

    func connect() throws -> ProbeConnection {
        do { return try ProbeConnection.connect(path: path, timeout: patience) } catch {
            throw ProbeSetupFailure(detail: "connect: \(error.code.rawValue)")
        }
    }

    enum SignatureForm { case raw, sigVal }

    /// Sends `uds:register`, checks the server's answer, returns it (nil with a reason otherwise).
    func startRegistration(_ connection: ProbeConnection, _ key: IdentityKeyPair) -> (ServerResponse?, String) {
        let challenge = Challenge.random()
        guard connection.send(.register(UDSRegister(locator: PeerLocator(identity: key.publicIdentity), challenge: challenge))) else {
            return (nil, "could not send uds:register")
        }
        switch connection.next(timeout: patience) {
        case let .value(value):
            guard let response = ServerResponse(value) else { return (nil, "answer is not a uds:server-response") }
            guard response.signs(challenge.bytes) else { return (nil, "the server's signature over our challenge does not verify") }
            return (response, "")
        case .closed: return (nil, "closed the connection")
        case .timeout: return (nil, "no answer within \(patience.milliseconds) ms")
        case let .malformed(reason): return (nil, "answered malformed bytes: \(reason)")
        case let .introduction(_, descriptors):
            for d in descriptors { d.close() }
            return (nil, "answered uds:new-connection")
        }
    }

    func signature(_ key: IdentityKeyPair, over challenge: [UInt8], form: SignatureForm) throws -> [UInt8] {
        let payload = try Challenge(challenge)
        let signature = key.sign(payload)
        let field: SignatureField = form == .raw ? .raw(signature) : .sigVal(signature)
        return UDSMessage.signature(UDSSignature(payload: payload, signature: field)).encoded
    }

    /// A fresh key registered in Goblins' forms; throws (setup) if the server does not take it.
    func registeredClient(form: SignatureForm = .raw) throws -> Client {
        let connection = try connect()
        let key = IdentityKeyPair.generate()
        let (response, reason) = startRegistration(connection, key)
        guard let response else {
            connection.close()
            throw ProbeSetupFailure(detail: "a standard registration failed: \(reason)")
        }
        guard connection.send(try signature(key, over: response.serverChallenge, form: form)) else {
            connection.close()
            throw ProbeSetupFailure(detail: "could not send uds:signature")
        }
        return Client(connection, key)
    }

    /// Sends `uds:new-connection` (from `from`, default the sender) and the marker with `passing`.
    @discardableResult
    func introduce(_ sender: ProbeConnection, from: PeerLocator, to target: PublicIdentity, passing: [FileDescriptor]) -> Bool {
        sender.send(.newConnection(UDSNewConnection(from: from, to: PeerLocator(identity: target))))
            && sender.sendMarker(passing: passing)
    }

    /// Waits for an introduction on `connection`; its descriptors, or nil when none came.
    func awaitIntroduction(_ connection: ProbeConnection, timeout: Duration? = nil) -> [FileDescriptor]? {
        awaitIntroductionRecord(connection, timeout: timeout)?.descriptors
    }

    /// Waits for an introduction on `connection`: the record and its descriptors.
    func awaitIntroductionRecord(_ connection: ProbeConnection, timeout: Duration? = nil) -> (record: SyrupValue, descriptors: [FileDescriptor])? {
        let deadline = ContinuousClock.now.advanced(by: timeout ?? options.timeout)
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .zero else { return nil }
            switch connection.next(timeout: remaining) {
            case let .introduction(record, descriptors): return (record, descriptors)
            case .value: continue
            case .closed, .timeout, .malformed: return nil
            }
        }
    }

    /// Whether the server routes introductions for `key` to `connection`: a fresh registered
    /// witness introduces itself to `key` and we watch `connection`.
    /// `expected`: a working server delivers, so wait with patience.
    func receivesIntroductions(_ connection: ProbeConnection, for key: PublicIdentity, expected: Bool) throws -> Bool {
        let witness = try registeredClient()
        defer { witness.close() }
        let (mine, theirs) = try socketPair()
        defer { mine.close() }
        introduce(witness.connection, from: witness.locator, to: key, passing: [theirs])
        theirs.close()
        guard let got = awaitIntroduction(connection, timeout: expected ? patience : options.timeout) else { return false }
        for d in got { d.close() }
        return true
    }

    func socketPair() throws -> (FileDescriptor, FileDescriptor) {
        do { return try FileDescriptor.socketPair() } catch { throw ProbeSetupFailure(detail: "socketpair: \(error.code.rawValue)") }
    }

    /// After sending bad input: closed, silent (open, no answer) or answered.
    enum Reaction { case closed, silent, answered(SyrupValue), other(String) }

    func reaction(_ connection: ProbeConnection) -> Reaction {
        // A correct server closes at once, so a long wait costs nothing and catches slow answers.
        switch connection.next(timeout: patience) {
        case .closed: return .closed
        case .timeout: return .silent
        case let .value(v): return .answered(v)
        case let .malformed(reason): return .other("malformed answer: \(reason)")
        case let .introduction(_, descriptors):
            for d in descriptors { d.close() }
            return .other("answered with an introduction")
        }
    }

    /// Whether a fresh client can still register and be introduced (I1).
    func serverStillServes() -> (Bool, String) {
        do {
            let a = try registeredClient(), b = try registeredClient()
            defer { a.close(); b.close() }
            let (mine, theirs) = try socketPair()
            defer { mine.close() }
            introduce(a.connection, from: a.locator, to: b.identity, passing: [theirs])
            theirs.close()
            guard let got = awaitIntroduction(b.connection, timeout: patience) else { return (false, "a fresh pair registered but the introduction never arrived") }
            defer { for d in got { d.close() } }
            guard got.count == 1 else { return (false, "the introduction arrived with \(got.count) descriptors") }
            return (true, "a fresh pair registered and was introduced")
        } catch let failure as ProbeSetupFailure {
            return (false, failure.detail)
        } catch {
            return (false, "\(error)")
        }
    }

    /// Sends `bytes` on a fresh connection; closed → PASS, silent → WARN, and FAIL if the server
    /// no longer serves afterwards (D1, D2, D7).
    func hostileBytes(_ bytes: [UInt8], _ what: String) throws -> (CheckStatus, String) {
        let x = try connect()
        defer { x.close() }
        x.send(bytes)
        let seen = reaction(x)
        let (alive, detail) = serverStillServes()
        if !alive { return (.fail, "after \(what) the server stopped serving: \(detail)") }
        switch seen {
        case .closed: return (.pass, "\(what): connection closed; the server still serves")
        case .silent: return (.warn, "\(what): connection left open and silent for \(patience.milliseconds) ms (see I4); the server still serves")
        case .answered:
            // An answer to a complete record in front of the bad bytes is fine; then it must close.
            if x.waitForClose(timeout: patience) { return (.pass, "\(what): answered the complete record, then closed; the server still serves") }
            return (.warn, "\(what): answered and left the connection open (see I4); the server still serves")
        case let .other(reason): return (.warn, "\(what): \(reason)")
        }
    }
}
