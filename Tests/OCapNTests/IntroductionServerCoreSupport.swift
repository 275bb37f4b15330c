import Identity
import OCapN
import SodiumCrypto
import Syrup
import Testing

/// Drives an `IntroductionServerCore<Int>` in memory: descriptors are integers handed out by a
/// ledger that checks each one ends up closed or forwarded exactly once; forwards succeed unless
/// the target is marked as not reading.
final class CoreHarness {
    typealias Core = IntroductionServerCore<Int>
    typealias ID = IntroductionServerConnectionID

    let core: Core
    var now: UInt64 = 1_000_000_000
    let credentials = IntroductionServerCredentials(pid: 4242, uid: 1000, gid: 1000)

    private(set) var handedOut: [Int] = []
    private(set) var closedDescriptors: [Int] = []
    private(set) var forwards: [Core.Forward] = []
    private(set) var sent: [ID: [UInt8]] = [:]
    private(set) var closedConnections: [ID] = []
    private(set) var audits: [IntroductionServerAuditRecord] = []
    private(set) var logs: [IntroductionServerLogEntry] = []
    /// Targets whose output queue is full: forwards to them fail with outputOverflow.
    var notReading: Set<ID> = []
    /// Descriptors the check reports as something other than a socketpair end.
    var invalidDescriptors: Set<Int> = []
    /// Targets the fake kernel reports as having read everything sent to them.
    var drained: Set<ID> = []
    /// Connections the liveness probe reports as hung up.
    var deadConnections: Set<ID> = []
    /// Connections the core probed, in order.
    private(set) var probed: [ID] = []
    private var nextDescriptor = 100
    private var nextID: UInt64 = 1
    private var challenges: [Challenge]

    init(limits: IntroductionServerLimits = IntroductionServerLimits(), allowedUIDs: Set<UInt32> = [1000],
         challenges: [Challenge] = [], registrationForms: RegistrationForms = .all, replaceSameUID: Bool = false,
         toleratePadding: Bool = true) {
        self.challenges = challenges
        weak var box: CoreHarness?
        var configuration = IntroductionServerConfiguration(
            limits: limits, allowedUIDs: allowedUIDs, debugLogging: true, registrationForms: registrationForms,
            replaceSameUID: replaceSameUID)
        configuration.toleratePaddingDescriptor = toleratePadding
        var counter: UInt8 = 0
        core = Core(
            signer: Fixtures.serverS, configuration: configuration, attemptIDBase: 1 << 40,
            makeChallenge: {
                if let h = box, !h.challenges.isEmpty { return h.challenges.removeFirst() }
                counter &+= 1
                return try! Challenge([UInt8](repeating: counter, count: 64))
            },
            checkDescriptor: { fd in
                box?.invalidDescriptors.contains(fd) == true ? .refused(description: "regular file") : .acceptable
            },
            describeDescriptor: { fd in "fake-\(fd)" },
            targetHasReadEverything: { id in box?.drained.contains(id) == true },
            probeConnection: { id in
                box?.probed.append(id)
                return box?.deadConnections.contains(id) == true ? .dead(description: "test: hung up") : .alive
            })
        box = self
    }

    func descriptor() -> Int {
        nextDescriptor += 1
        handedOut.append(nextDescriptor)
        return nextDescriptor
    }

    func newID() -> ID {
        defer { nextID += 1 }
        return ID(nextID)
    }

    // MARK: driving

    @discardableResult
    func accept(uid: UInt32 = 1000) -> ID {
        let id = newID()
        let c = IntroductionServerCredentials(pid: 4242, uid: uid, gid: 1000)
        apply(core.connectionAccepted(id, credentials: c, now: now))
        return id
    }

    func feed(_ id: ID, _ bytes: [UInt8], descriptors: [Int] = []) {
        apply(core.received(id, bytes: bytes, descriptors: descriptors, now: now))
    }

    func eof(_ id: ID) { apply(core.endOfStream(id, now: now)) }

    func advance(_ duration: Duration) {
        now += UInt64(duration.components.seconds) * 1_000_000_000 + UInt64(duration.components.attoseconds / 1_000_000_000)
        apply(core.tick(now: now))
    }

    /// Takes what the server sent on `id` so far.
    func takeSent(_ id: ID) -> [UInt8] {
        defer { sent[id] = nil }
        return sent[id] ?? []
    }

    func apply(_ actions: [Core.Action]) {
        for action in actions {
            switch action {
            case let .send(id, bytes):
                #expect(!closedConnections.contains(id), "send on a closed connection")
                sent[id, default: []] += bytes
            case let .forward(f):
                if notReading.contains(f.target) || closedConnections.contains(f.target) {
                    closedDescriptors.append(f.descriptor)  // the runtime closes what it could not queue
                    apply(core.forwardFailed(f, reason: .outputOverflow, detail: "test: output queue full", now: now))
                } else {
                    forwards.append(f)
                    apply(core.forwardSucceeded(f, now: now))
                }
            case let .closeDescriptor(fd):
                closedDescriptors.append(fd)
            case let .close(id):
                #expect(!closedConnections.contains(id), "connection \(id) closed twice")
                closedConnections.append(id)
            case let .audit(record):
                audits.append(record)
            case let .log(entry):
                logs.append(entry)
            }
        }
    }

    /// Registers `signer` on a new connection through a real `RegistrationClient`.
    @discardableResult
    func register(_ signer: IdentityKeyPair, challenge: Challenge? = nil, form: RegistrationForm = .v2,
                  uid: UInt32 = 1000) -> ID {
        let id = attemptRegistration(signer, challenge: challenge, form: form, uid: uid)
        #expect(core.route(for: signer.publicIdentity) == id, "registration of \(signer.publicIdentity) failed")
        return id
    }

    /// Runs a registration as far as the server lets it; the caller checks the outcome.
    @discardableResult
    func attemptRegistration(_ signer: IdentityKeyPair, challenge: Challenge? = nil, form: RegistrationForm = .v2,
                             uid: UInt32 = 1000) -> ID {
        let id = accept(uid: uid)
        var client = RegistrationClient(signer: signer, challenge: challenge ?? Challenge.random(),
                                        expectedServer: Fixtures.serverS.publicIdentity, form: form)
        feed(id, client.start().encoded)
        let response = takeSent(id)
        guard !closedConnections.contains(id) else { return id }
        let actions = try! client.receive(Fixtures.decode(response))
        guard case let .send(reply) = actions.first else { fatalError("client did not answer") }
        feed(id, reply.encoded)
        return id
    }

    /// `uds:new-connection` from `from` to `to` then the marker carrying `fd`, as two reads.
    func introduce(on id: ID, from: PublicIdentity, to: PublicIdentity, fd: Int, hints: [PublicIdentity] = []) {
        let record = UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: from, introductionServers: [Fixtures.serverS.publicIdentity]),
            to: PeerLocator(identity: to, introductionServers: hints.isEmpty ? [Fixtures.serverS.publicIdentity] : hints)))
        feed(id, record.encoded)
        feed(id, UDSNewConnection.fdMarker, descriptors: [fd])
    }

    // MARK: checks

    func audits(_ kind: IntroductionServerAuditRecord.Kind) -> [IntroductionServerAuditRecord] {
        audits.filter { $0.kind == kind }
    }

    func reasons(_ kind: IntroductionServerAuditRecord.Kind) -> [IntroductionServerReason?] {
        audits(kind).map(\.reason)
    }

    /// Shuts the core down, then checks the invariants: every descriptor handed in was closed or
    /// forwarded exactly once; every attempt that started ended exactly once.
    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        apply(core.shutdown(now: now))
        #expect(core.connectionCount == 0 && core.pendingCount == 0 && core.registeredCount == 0,
                sourceLocation: sourceLocation)
        var seen: [Int: Int] = [:]
        for fd in closedDescriptors { seen[fd, default: 0] += 1 }
        for f in forwards { seen[f.descriptor, default: 0] += 1 }
        for fd in handedOut {
            #expect(seen[fd] == 1, "descriptor \(fd) ended \(seen[fd] ?? 0) times", sourceLocation: sourceLocation)
        }
        #expect(Set(seen.keys) == Set(handedOut), "unknown descriptors were closed", sourceLocation: sourceLocation)
        var ends: [UInt64: Int] = [:]
        var starts: Set<UInt64> = []
        for a in audits {
            // extraDescriptorsClosed is a notice of its own, not the start of an attempt.
            if a.kind.isTerminal { ends[a.attempt, default: 0] += 1 } else if a.kind != .extraDescriptorsClosed { starts.insert(a.attempt) }
            if a.kind == .registrationRefused || a.kind == .introductionRefused || a.kind == .introductionExpired {
                #expect(a.reason != nil, "failure without a reason", sourceLocation: sourceLocation)
            }
        }
        for (attempt, n) in ends { #expect(n == 1, "attempt \(attempt) ended \(n) times", sourceLocation: sourceLocation) }
        for attempt in starts { #expect(ends[attempt] == 1, "attempt \(attempt) never ended", sourceLocation: sourceLocation) }
    }
}

enum Peers {
    /// A deterministic test identity.
    static func signer(_ n: UInt8) -> IdentityKeyPair {
        try! IdentityKeyPair(seed: SecretBytes(copying: [UInt8](repeating: n, count: 32)))
    }
}
