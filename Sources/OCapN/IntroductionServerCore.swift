import Identity
import Syrup

/// The introduction server as a sans-IO machine (ocapn-uds-wire.md §5–§7; reliability catalog
/// §3.6): events in (connection accepted, bytes and descriptors received, end of stream,
/// transport failure, forward outcome, clock tick), actions out (send bytes, forward a record
/// with a descriptor, close a descriptor, close a connection, audit, log). No sockets, clocks,
/// randomness or loggers: time is monotonic nanoseconds passed in, challenges and descriptor
/// checks are injected, so tests drive it with plain values.
///
/// It holds the connection table (a `RegistrationServer` and a `ControlStreamReader` per
/// connection), the routing table (registered key → connection; hints are ignored), the
/// pending introductions for targets not registered yet, and a token bucket per peer.
///
/// Descriptor ownership: every descriptor handed to `received` ends up, exactly once, in a
/// `.closeDescriptor` or a `.forward` action (possibly after waiting in the reader or in the
/// pending queue); `shutdown` hands back everything still held. A `.forward` passes ownership to
/// the runtime, which sends the descriptor or closes it, and then reports the outcome with
/// `forwardSucceeded` or `forwardFailed`.
///
/// Policy choices (docs/INTRO-SERVER.md): a live registration is never displaced. When a key
/// registers while an earlier connection of it is open, the injected probe asks the runtime
/// whether that connection is still alive (hang-up / end of stream): a dead one is replaced
/// (`replacedDeadConnection`), a live one is kept and the newcomer refused
/// (`liveRegistrationKept`), unless `replaceSameUID` lets the same uid take over; both records
/// carry both connections' credentials. Any protocol
/// error closes the connection; a well-formed introduction that is refused for a semantic reason
/// (rate, descriptor kind, self, caps) closes only its descriptor.
///
/// Not thread-safe: the runtime calls it from one serial queue.
///
/// The event methods are pre-specialised for `Int` descriptors (exported, so another module's
/// optimiser calls them): the runtime hands the core tokens for the descriptors it holds, and a
/// core called unspecialised across the module boundary spent about 7% of the server loop
/// looking up generic metadata.
public final class IntroductionServerCore<Descriptor> {
    public typealias ConnectionID = IntroductionServerConnectionID
    public typealias Reason = IntroductionServerReason

    /// A record to send to `target` followed by the marker carrying `descriptor`. The runtime
    /// owns `descriptor` from here on and reports back with the whole value.
    public struct Forward {
        public let target: ConnectionID
        /// The `uds:new-connection` record: the sender's bytes, canonical Syrup (so the same as
        /// the parsed record re-encoded: canonical encoding has one form).
        public let record: [UInt8]
        public let descriptor: Descriptor
        public let attempt: UInt64
        public let from: PublicIdentity
        public let to: PublicIdentity
        let requestedAt: UInt64
    }

    public enum Action {
        /// Queue bytes on a connection.
        case send(ConnectionID, [UInt8])
        /// Queue `record`, then `UDSNewConnection.fdMarker` with the descriptor in one `sendmsg`.
        case forward(Forward)
        /// Close a descriptor the core refused or no longer needs.
        case closeDescriptor(Descriptor)
        /// Close the connection (the core has forgotten it; no more events for it).
        case close(ConnectionID)
        case audit(IntroductionServerAuditRecord)
        case log(IntroductionServerLogEntry)
    }

    // MARK: state

    private struct Registering {
        let deadline: UInt64
        /// The key `uds:register` named, once it arrived (for the refusal record).
        var claimed: PublicIdentity?
    }

    private struct Registered {
        let identity: PublicIdentity
        var tokens: Double
        var refilledAt: UInt64
        /// When the message now in progress began, for the partial-message deadline.
        var partialSince: UInt64?
        /// Whether `partialDeadlines` holds this connection's entry. At most one per connection:
        /// a peer that starts and finishes messages in quick succession (each record read apart
        /// from its marker) would otherwise leave one stale entry per message, kept until it fell due.
        var partialQueued = false
    }

    private enum Phase {
        case registering(Registering)
        case registered(Registered)
    }

    /// A class so the reader's buffers are mutated in place inside the table.
    private final class Connection {
        let id: ConnectionID
        let credentials: IntroductionServerCredentials
        let acceptedAt: UInt64
        let registrationAttempt: UInt64
        var reader: ControlStreamReader<Descriptor>
        var registration: RegistrationServer
        var phase: Phase

        init(id: ConnectionID, credentials: IntroductionServerCredentials, acceptedAt: UInt64, attempt: UInt64,
             reader: ControlStreamReader<Descriptor>, registration: RegistrationServer, deadline: UInt64) {
            self.id = id
            self.credentials = credentials
            self.acceptedAt = acceptedAt
            registrationAttempt = attempt
            self.reader = reader
            self.registration = registration
            phase = .registering(Registering(deadline: deadline, claimed: nil))
        }

        var identity: PublicIdentity? {
            if case let .registered(r) = phase { return r.identity }
            return nil
        }
    }

    private struct Pending {
        let attempt: UInt64
        let from: PublicIdentity
        let to: PublicIdentity
        let record: [UInt8]
        let descriptor: Descriptor
        let requestedAt: UInt64
    }

    public let configuration: IntroductionServerConfiguration
    private var limits: IntroductionServerLimits { configuration.limits }
    private let signer: IdentityKeyPair
    private let makeChallenge: () -> Challenge
    private let checkDescriptor: (Descriptor) -> IntroductionServerDescriptorVerdict
    private let describeDescriptor: (Descriptor) -> String
    private let targetHasReadEverything: (ConnectionID) -> Bool
    private let probeConnection: (ConnectionID) -> IntroductionServerLiveness
    /// Keys that registered with v2 here: never answered in a legacy form afterwards, so a relay
    /// holding a legacy signature of such a key cannot register it (bounded, oldest out first).
    private var v2Keys: Set<PublicIdentity> = []
    private var v2KeyOrder = DeadlineQueue<PublicIdentity>()
    private let readerLimits: ControlStreamReader<Descriptor>.Limits
    private let registrationTimeout: UInt64
    private let partialTimeout: UInt64
    private let pendingLifetime: UInt64

    private var connections: [ConnectionID: Connection] = [:]
    private var routes: [PublicIdentity: ConnectionID] = [:]
    /// Connections still registering, and how many per uid (F2: eviction and the per-uid cap).
    private var unauthenticatedIDs = Set<ConnectionID>()
    private var unauthenticatedByUID: [UInt32: Int] = [:]
    private let pressureRegistrationTimeout: UInt64
    private var locators: IntroductionServerLocatorParser
    private var nextAttempt: UInt64

    private var pending: [UInt64: Pending] = [:]
    /// Descriptors forwarded to each registered target and not known to be taken yet, by
    /// sender (A12: the in-flight budget; cleared by `targetDrained`).
    private var inFlight: [ConnectionID: [PublicIdentity]] = [:]
    private var inFlightBySender: [PublicIdentity: Int] = [:]
    private var pendingByTarget: [PublicIdentity: [UInt64]] = [:]
    private var pendingBySender: [PublicIdentity: Int] = [:]

    // Deadlines are a constant offset from a nondecreasing clock, so each queue is in deadline
    // order by construction; stale entries are skipped when they reach the head.
    private var registrationDeadlines = DeadlineQueue<ConnectionID>()
    private var partialDeadlines = DeadlineQueue<ConnectionID>()
    private var expiries = DeadlineQueue<UInt64>()

    /// - Parameters:
    ///   - signer: the server's identity; it signs each peer's 64-byte challenge.
    ///   - attemptIDBase: random start of this run's audit attempt ids (ids are base + counter).
    ///   - makeChallenge: a fresh 64-byte challenge per connection (`Challenge.random` in production).
    ///   - checkDescriptor: the kind check for a passed descriptor (fstat/getsockopt only).
    ///   - describeDescriptor: a short name ("tty", "pipe") for an extra descriptor the core
    ///     closes unused, for its audit record.
    ///   - targetHasReadEverything: whether a connection's peer has read all we sent it,
    ///     descriptors included (the runtime asks the kernel); consulted only at an in-flight cap.
    ///   - probeConnection: whether a registered connection is still alive (non-blocking poll and
    ///     `recv(MSG_PEEK)` in the runtime); asked only when its key registers again. The default
    ///     answers alive, which never displaces anyone.
    public init(
        signer: IdentityKeyPair, configuration: IntroductionServerConfiguration, attemptIDBase: UInt64,
        makeChallenge: @escaping () -> Challenge,
        checkDescriptor: @escaping (Descriptor) -> IntroductionServerDescriptorVerdict,
        describeDescriptor: @escaping (Descriptor) -> String = { _ in "descriptor" },
        targetHasReadEverything: @escaping (ConnectionID) -> Bool = { _ in false },
        probeConnection: @escaping (ConnectionID) -> IntroductionServerLiveness = { _ in .alive }
    ) {
        precondition(configuration.limits.problems.isEmpty,
                     "invalid limits: \(configuration.limits.problems.joined(separator: "; "))")
        self.signer = signer
        self.configuration = configuration
        self.makeChallenge = makeChallenge
        self.checkDescriptor = checkDescriptor
        self.describeDescriptor = describeDescriptor
        self.targetHasReadEverything = targetHasReadEverything
        self.probeConnection = probeConnection
        nextAttempt = attemptIDBase
        let limits = configuration.limits
        readerLimits = .init(syrup: limits.syrupLimits, maxQueuedDescriptors: 1,
                             maxDescriptorsPerRead: configuration.toleratePaddingDescriptor ? 2 : 1)
        registrationTimeout = limits.registrationTimeout.nanoseconds
        pressureRegistrationTimeout = min(limits.pressureRegistrationTimeout, limits.registrationTimeout).nanoseconds
        partialTimeout = limits.partialMessageTimeout.nanoseconds
        pendingLifetime = limits.pendingLifetime.nanoseconds
        locators = IntroductionServerLocatorParser(recentCapacity: configuration.designatorCacheSize,
                                                   syrupLimits: readerLimits.syrup)
    }

    // MARK: observation

    public var connectionCount: Int { connections.count }
    public var registeredCount: Int { routes.count }
    public var unauthenticatedCount: Int { unauthenticatedIDs.count }
    public var pendingCount: Int { pending.count }
    /// Partial-message deadlines held, stale ones included: at most one per registered
    /// connection, however many messages it splits across reads.
    public var partialDeadlineCount: Int { partialDeadlines.count }
    /// Expiry deadlines held, stale ones included: at most about twice the pending
    /// introductions (plus a fixed slack), however many were delivered.
    public var expiryDeadlineCount: Int { expiries.count }
    /// The connection a key is routed to, if registered.
    public func route(for identity: PublicIdentity) -> ConnectionID? { routes[identity] }

    /// The earliest time `tick` has work (possibly a little early; never late).
    public var nextDeadline: UInt64? {
        // Asked after every event: no array.
        var earliest = registrationDeadlines.head
        if let h = partialDeadlines.head, earliest.map({ h < $0 }) ?? true { earliest = h }
        if let h = expiries.head, earliest.map({ h < $0 }) ?? true { earliest = h }
        return earliest
    }

    // MARK: events

    /// A connection was accepted. Refused at once (`.close`) when the uid is not allowed or a
    /// connection cap is reached.
    @_specialize(exported: true, where Descriptor == Int)
    public func connectionAccepted(_ id: ConnectionID, credentials: IntroductionServerCredentials, now: UInt64) -> [Action] {
        precondition(connections[id] == nil, "connection id \(id) reused")
        var out: [Action] = []
        let refusal: Reason?
        if !configuration.allowedUIDs.contains(credentials.uid) {
            refusal = .uidNotAllowed
        } else if connections.count >= limits.maxClients && unauthenticatedIDs.isEmpty {
            // Every slot is a registered peer: those are never evicted for a newcomer.
            refusal = .tooManyClients
        } else {
            refusal = nil
        }
        if let refusal {
            let attempt = takeAttempt()
            out.append(.audit(.init(.registrationRefused, reason: refusal, attempt: attempt, credentials: credentials,
                                    durationNanoseconds: 0)))
            out.append(.log(.init(.notice, "connection refused", connection: id, credentials: credentials, reason: refusal)))
            out.append(.close(id))
            return out
        }
        // F2, in the spirit of OpenSSH's MaxStartups: when the unauthenticated slots (of this
        // uid, or in all) are full, the oldest unauthenticated connection makes room. A silent
        // flood then cannot keep a real peer out: the real peer registers in one round trip and
        // is no longer a candidate, while the flood's sockets are the old ones. Registered peers
        // are never candidates.
        if unauthenticatedByUID[credentials.uid, default: 0] >= limits.maxUnauthenticatedPerUID,
           let oldest = unauthenticatedIDs.filter({ connections[$0]?.credentials.uid == credentials.uid }).min(),
           let victim = connections[oldest] {
            drop(victim, reason: .unauthenticatedEvicted,
                 detail: "the oldest unauthenticated connection of uid \(credentials.uid) made room for a new one",
                 now: now, into: &out)
        }
        if unauthenticatedIDs.count >= limits.maxUnauthenticated || connections.count >= limits.maxClients,
           let oldest = unauthenticatedIDs.min(),
           let victim = connections[oldest] {
            drop(victim, reason: .unauthenticatedEvicted,
                 detail: "the oldest unauthenticated connection made room for a new one", now: now, into: &out)
        }
        // Under pressure (half the slots taken) a new connection gets the short deadline.
        let pressured = unauthenticatedIDs.count * 2 >= limits.maxUnauthenticated
        let deadline = now.addingSaturated(pressured ? pressureRegistrationTimeout : registrationTimeout)
        let connection = Connection(
            id: id, credentials: credentials, acceptedAt: now, attempt: takeAttempt(),
            reader: ControlStreamReader(limits: readerLimits),
            registration: RegistrationServer(signer: signer, challenge: makeChallenge(),
                                             accepting: configuration.registrationForms),
            deadline: deadline)
        connections[id] = connection
        unauthenticatedIDs.insert(id)
        unauthenticatedByUID[credentials.uid, default: 0] += 1
        registrationDeadlines.push(deadline, id)
        if configuration.debugLogging {
            out.append(.log(.init(.debug, "connection accepted", connection: id, credentials: credentials)))
        }
        return out
    }

    /// The bytes and descriptors of one read. The core owns `descriptors` from here on.
    @_specialize(exported: true, where Descriptor == Int)
    public func received(_ id: ConnectionID, bytes: [UInt8], descriptors: [Descriptor], now: UInt64) -> [Action] {
        guard let connection = connections[id] else {
            // The runtime forwards events only for connections the core has not closed.
            preconditionFailure("received for unknown connection \(id)")
        }
        var out: [Action] = []
        var extraKinds: [String] = []
        do throws(OCapNError) {
            let extras = try connection.reader.receive(bytes, descriptors: descriptors)
            extraKinds = closeExtras(extras, into: &out)
        } catch {
            drop(connection, reason: Self.reason(error.code), detail: error.detail, now: now, into: &out)
            return out
        }
        while connections[id] != nil {
            let item: ControlStreamReader<Descriptor>.EncodedItem?
            do throws(OCapNError) {
                item = try connection.reader.nextEncoded()
            } catch {
                drop(connection, reason: Self.reason(error.code), detail: error.detail, now: now, into: &out)
                break
            }
            guard let item else { break }
            switch item {
            case let .message(value):
                handleMessage(value, on: connection, now: now, into: &out)
            case let .newConnection(introduction):
                handleNewConnection(introduction.record, descriptor: introduction.descriptor, on: connection, now: now,
                                    into: &out)
            }
        }
        if connections[id] != nil, case var .registered(r) = connection.phase {
            // Track the partial-message deadline only for registered peers: before that the
            // absolute registration deadline covers a slow sender.
            if connection.reader.isMidMessage {
                if r.partialSince == nil {
                    r.partialSince = now
                    if !r.partialQueued {
                        r.partialQueued = true
                        partialDeadlines.push(now.addingSaturated(partialTimeout), id)
                    }
                    connection.phase = .registered(r)
                }
            } else if r.partialSince != nil {
                r.partialSince = nil
                connection.phase = .registered(r)
            }
        }
        // Recorded once this read's messages are handled: a sender that registers and
        // introduces in one burst is then named by the key it just proved.
        if !extraKinds.isEmpty { auditExtras(extraKinds, on: connection, into: &out) }
        return out
    }

    /// The peer shut down its side (EOF).
    @_specialize(exported: true, where Descriptor == Int)
    public func endOfStream(_ id: ConnectionID, now: UInt64) -> [Action] {
        guard let connection = connections[id] else { preconditionFailure("endOfStream for unknown connection \(id)") }
        var out: [Action] = []
        do throws(OCapNError) {
            try connection.reader.finish()
        } catch {
            drop(connection, reason: Self.reason(error.code), detail: error.detail, now: now, into: &out)
            return out
        }
        // An orderly EOF is a peer leaving, not a reset: no reason (a registering peer's audit
        // record still says peerReset, the refusal's reason code).
        drop(connection, reason: nil, detail: "the peer closed the connection", now: now, into: &out)
        return out
    }

    /// The transport failed (reset, I/O error, MSG_CTRUNC as `.extraFds`, output overflow).
    @_specialize(exported: true, where Descriptor == Int)
    public func connectionFailed(_ id: ConnectionID, reason: Reason, detail: String, now: UInt64) -> [Action] {
        guard let connection = connections[id] else { preconditionFailure("connectionFailed for unknown connection \(id)") }
        var out: [Action] = []
        drop(connection, reason: reason, detail: detail, now: now, into: &out)
        return out
    }

    /// The runtime saw `target` read something since the previous forward to it (its unread
    /// output did not grow by what we just sent): it reads, so its in-flight count starts over.
    /// Only a target that reads nothing across `maxInFlightPerTarget` forwards reaches the cap.
    @_specialize(exported: true, where Descriptor == Int)
    public func targetRead(_ target: ConnectionID) {
        clearInFlight(target)
    }

    /// Introductions forwarded to `target` and not known to be taken (for tests and health).
    public func inFlightCount(_ target: ConnectionID) -> Int { inFlight[target]?.count ?? 0 }

    /// The runtime handed a `.forward`'s record and descriptor to the kernel: the send completed.
    @_specialize(exported: true, where Descriptor == Int)
    public func forwardSucceeded(_ forward: Forward, now: UInt64) -> [Action] {
        var out: [Action] = [.audit(.init(.introductionForwarded, attempt: forward.attempt, from: forward.from,
                                          to: forward.to, durationNanoseconds: now &- forward.requestedAt))]
        if configuration.debugLogging {
            out.append(.log(.init(.debug, "introduction forwarded", connection: forward.target, peer: forward.from,
                                  target: forward.to)))
        }
        return out
    }

    /// The runtime could not queue a `.forward` (and closed its descriptor): the target's
    /// connection is gone or does not read. The target is dropped.
    @_specialize(exported: true, where Descriptor == Int)
    public func forwardFailed(_ forward: Forward, reason: Reason, detail: String, now: UInt64) -> [Action] {
        var out: [Action] = [.audit(.init(.introductionRefused, reason: reason, attempt: forward.attempt,
                                          from: forward.from, to: forward.to,
                                          durationNanoseconds: now &- forward.requestedAt))]
        if let target = connections[forward.target] {
            drop(target, reason: reason, detail: detail, now: now, into: &out)
        }
        return out
    }

    /// Runs every deadline due at `now`: registration timeouts, partial-message timeouts,
    /// expired pending introductions.
    @_specialize(exported: true, where Descriptor == Int)
    public func tick(now: UInt64) -> [Action] {
        var out: [Action] = []
        while let id = registrationDeadlines.popDue(now) {
            guard let connection = connections[id], case .registering = connection.phase else { continue }
            drop(connection, reason: .registrationTimeout, detail: "no verified uds:signature within the registration deadline",
                 now: now, into: &out)
        }
        while let id = partialDeadlines.popDue(now) {
            guard let connection = connections[id], case var .registered(r) = connection.phase else { continue }
            r.partialQueued = false
            if let since = r.partialSince, now < since.addingSaturated(partialTimeout) {
                // A later message in progress: its own deadline, in the one entry.
                r.partialQueued = true
                partialDeadlines.push(since.addingSaturated(partialTimeout), id)
            }
            connection.phase = .registered(r)
            guard let since = r.partialSince, now >= since.addingSaturated(partialTimeout) else { continue }
            drop(connection, reason: .timeout, detail: "a message stayed incomplete past the partial-message deadline",
                 now: now, into: &out)
        }
        while let attempt = expiries.popDue(now) {
            guard let p = removePending(attempt) else { continue }
            out.append(.closeDescriptor(p.descriptor))
            out.append(.audit(.init(.introductionExpired, reason: .targetUnknownExpired, attempt: p.attempt,
                                    from: p.from, to: p.to, durationNanoseconds: now &- p.requestedAt)))
            out.append(.log(.init(.info, "introduction expired: target never registered", peer: p.from, target: p.to,
                                  reason: .targetUnknownExpired)))
        }
        return out
    }

    /// The descriptors held for unregistered targets, by attempt, for the runtime's hang-up
    /// check (F6).
    public var pendingDescriptors: [(attempt: UInt64, descriptor: Descriptor)] {
        pending.values.map { ($0.attempt, $0.descriptor) }
    }

    /// The runtime saw these held descriptors report hang-up (the sender's end is closed, so
    /// nobody will ever use the introduction): close them and end their attempts as abandoned.
    @_specialize(exported: true, where Descriptor == Int)
    public func pendingHungUp(_ attempts: [UInt64], now: UInt64) -> [Action] {
        var out: [Action] = []
        for attempt in attempts {
            guard let p = removePending(attempt) else { continue }
            out.append(.closeDescriptor(p.descriptor))
            out.append(.audit(.init(.introductionExpired, reason: .abandoned, attempt: p.attempt, from: p.from, to: p.to,
                                    durationNanoseconds: now &- p.requestedAt)))
            out.append(.log(.init(.info, "introduction abandoned: its sender hung up before the target registered",
                                  peer: p.from, target: p.to, reason: .abandoned)))
        }
        return out
    }

    /// Closes everything: every connection, every held descriptor. The core is empty afterwards.
    @_specialize(exported: true, where Descriptor == Int)
    public func shutdown(now: UInt64) -> [Action] {
        var out: [Action] = []
        for id in connections.keys.sorted() {
            if let connection = connections[id] {
                drop(connection, reason: .serverShutdown, detail: "server shutting down", now: now, into: &out)
            }
        }
        for attempt in pending.keys.sorted() {
            guard let p = removePending(attempt) else { continue }
            out.append(.closeDescriptor(p.descriptor))
            out.append(.audit(.init(.introductionRefused, reason: .serverShutdown, attempt: p.attempt, from: p.from,
                                    to: p.to, durationNanoseconds: now &- p.requestedAt)))
        }
        registrationDeadlines = DeadlineQueue()
        partialDeadlines = DeadlineQueue()
        expiries = DeadlineQueue()
        return out
    }

    // MARK: messages

    private func handleMessage(_ value: SyrupValue, on connection: Connection, now: UInt64, into out: inout [Action]) {
        let message: UDSMessage
        do { message = try UDSMessage(syrup: value) } catch {
            drop(connection, reason: Self.reason(error.code), detail: error.detail, now: now, into: &out)
            return
        }
        if case var .registering(r) = connection.phase {
            switch message {
            case let .register(register):
                r.claimed = register.locator.identity
                connection.phase = .registering(r)
                if v2Keys.contains(register.locator.identity) {
                    // Refused before signing: a legacy signature of a v2 peer can only come from
                    // a relay (or a downgraded peer), never from the peer's own v2 setting.
                    drop(connection, reason: .registrationFormRefused,
                         detail: "legacy uds:register of a key that registered with v2 before", now: now, into: &out)
                    return
                }
            case let .registerV2(register):
                r.claimed = register.locator.identity
                connection.phase = .registering(r)
            default:
                break
            }
        }
        let actions: [RegistrationServer.Action]
        do { actions = try connection.registration.receive(message) } catch {
            drop(connection, reason: Self.reason(error.code), detail: error.detail, now: now, into: &out)
            return
        }
        for action in actions {
            switch action {
            case let .send(reply):
                out.append(.send(connection.id, reply.encoded))
            case let .registered(peer):
                register(connection, as: peer, now: now, into: &out)
            case .forward:
                // Only `uds:new-connection` yields a forward, and it never takes this path.
                preconditionFailure("a forward from a message without a descriptor")
            }
        }
    }

    /// `record`: the `uds:new-connection` as received, canonical Syrup. It is parsed once, here,
    /// for its two keys, and forwarded as it is: the target gets the sender's bytes, which is
    /// the same record re-serialised (wire §5; canonical Syrup has one encoding).
    private func handleNewConnection(_ record: [UInt8], descriptor: Descriptor, on connection: Connection, now: UInt64,
                                     into out: inout [Action]) {
        guard connection.identity != nil else {
            out.append(.closeDescriptor(descriptor))
            drop(connection, reason: .malformedMessage, detail: "uds:new-connection before registration", now: now, into: &out)
            return
        }
        let from: PublicIdentity, to: PublicIdentity
        do { (from, to) = try locators.newConnection(record: record) } catch {
            out.append(.closeDescriptor(descriptor))
            drop(connection, reason: Self.reason(error.code), detail: error.detail, now: now, into: &out)
            return
        }
        do { _ = try connection.registration.receiveIntroduction(from: from, to: to) } catch {
            out.append(.closeDescriptor(descriptor))
            if error.code == .spoofedFrom, let sender = connection.identity {
                // The attempt is audited on its own; the connection then closes without a
                // second record, since this one explains it.
                out.append(.audit(.init(.introductionRefused, reason: .spoofedFrom, attempt: takeAttempt(), from: sender,
                                        to: to, credentials: connection.credentials, durationNanoseconds: 0)))
                drop(connection, reason: nil, detail: error.detail, now: now, into: &out, logReason: .spoofedFrom)
            } else {
                drop(connection, reason: Self.reason(error.code), detail: error.detail, now: now, into: &out)
            }
            return
        }
        introduce(from: from, to: to, record: record, descriptor: descriptor, on: connection, now: now, into: &out)
    }

    private func introduce(from: PublicIdentity, to: PublicIdentity, record: [UInt8], descriptor: Descriptor,
                           on connection: Connection, now: UInt64, into out: inout [Action]) {
        let attempt = takeAttempt()
        out.append(.audit(.init(.introductionRequested, attempt: attempt, from: from, to: to)))

        func refuse(_ reason: Reason, _ message: String, detail: String? = nil) {
            out.append(.closeDescriptor(descriptor))
            out.append(.audit(.init(.introductionRefused, reason: reason, attempt: attempt, from: from, to: to,
                                    credentials: connection.credentials, durationNanoseconds: 0)))
            out.append(.log(.init(.info, message, connection: connection.id, peer: from, target: to,
                                  credentials: connection.credentials, reason: reason, detail: detail)))
        }

        if !takeToken(connection, now: now) {
            return refuse(.rateLimited, "introduction refused: rate limit")
        }
        if case let .refused(kind) = checkDescriptor(descriptor) {
            return refuse(.fdInvalid, "introduction refused: the passed descriptor is not a socketpair end", detail: kind)
        }
        if from == to {
            return refuse(.selfConnection, "introduction refused: a peer introduced to itself")
        }
        if record.count > ControlMessageLimit.maxBytes {
            // The target could not read it and would lose its connection; only the sender pays.
            return refuse(.messageTooLarge, "introduction refused: the forwarded record exceeds what a peer accepts",
                          detail: "\(record.count) > \(ControlMessageLimit.maxBytes) bytes")
        }
        if let target = routes[to] {
            if inFlightBySender[from, default: 0] >= limits.maxInFlightPerSender {
                // Only at the cap is the kernel asked which of this sender's targets have read.
                for (id, senders) in inFlight where senders.contains(from) && targetHasReadEverything(id) {
                    clearInFlight(id)
                }
                if inFlightBySender[from, default: 0] >= limits.maxInFlightPerSender {
                    return refuse(.inFlightLimit, "introduction refused: the sender's introductions in flight reached the cap")
                }
            }
            if inFlight[target, default: []].count >= limits.maxInFlightPerTarget && targetHasReadEverything(target) {
                clearInFlight(target)
            }
            if inFlight[target, default: []].count >= limits.maxInFlightPerTarget, let stalled = connections[target] {
                // A12: the target holds the cap of descriptors unread; it is the one that does
                // not read, so it is dropped (releasing what it holds), never an innocent one.
                refuse(.targetNotReading, "introduction refused: the target does not take its introductions")
                drop(stalled, reason: .targetNotReading,
                     detail: "\(limits.maxInFlightPerTarget) introductions forwarded and not read", now: now, into: &out)
                return
            }
            sendForward(Forward(target: target, record: record, descriptor: descriptor, attempt: attempt,
                                from: from, to: to, requestedAt: now), into: &out)
            return
        }
        guard pendingLifetime > 0 else {
            return refuse(.targetUnknownExpired, "introduction refused: target not registered (no waiting configured)")
        }
        guard pending.count < limits.maxPendingTotal, pendingByTarget[to, default: []].count < limits.maxPendingPerTarget,
              pendingBySender[from, default: 0] < limits.maxPendingPerSender else {
            return refuse(.pendingLimit, "introduction refused: pending-introduction cap reached")
        }
        pending[attempt] = Pending(attempt: attempt, from: from, to: to, record: record, descriptor: descriptor,
                                   requestedAt: now)
        pendingByTarget[to, default: []].append(attempt)
        pendingBySender[from, default: 0] += 1
        expiries.push(now.addingSaturated(pendingLifetime), attempt)
        out.append(.audit(.init(.introductionQueued, attempt: attempt, from: from, to: to)))
        if configuration.debugLogging {
            out.append(.log(.init(.debug, "introduction queued until the target registers", connection: connection.id,
                                  peer: from, target: to)))
        }
    }

    /// A padded control message (issue #17) brought descriptors beyond the marker's one: close
    /// them before anything else and return what they were. The first descriptor goes on to its
    /// marker and the kind check like any other; the connection stays.
    private func closeExtras(_ extras: [Descriptor], into out: inout [Action]) -> [String] {
        let kinds = extras.map(describeDescriptor)
        for extra in extras { out.append(.closeDescriptor(extra)) }
        return kinds
    }

    private func auditExtras(_ kinds: [String], on connection: Connection, into out: inout [Action]) {
        var sender = connection.identity
        if sender == nil, case let .registering(r) = connection.phase { sender = r.claimed }
        out.append(.audit(.init(.extraDescriptorsClosed, reason: .extraDescriptorsClosed, attempt: takeAttempt(),
                                from: sender, credentials: connection.credentials, descriptorKinds: kinds)))
        out.append(.log(.init(.notice, "extra descriptors closed: the sender's control message carried more than one",
                              connection: connection.id, peer: sender, credentials: connection.credentials,
                              reason: .extraDescriptorsClosed, detail: kinds.joined(separator: ", "))))
    }

    // MARK: registration and routing

    private func register(_ connection: Connection, as peer: RegisteredPeer, now: UInt64, into out: inout [Action]) {
        guard case .registering = connection.phase else { preconditionFailure("registered twice") }
        let identity = peer.identity
        var reason: Reason?
        var incumbent: IntroductionServerCredentials?
        if let previousID = routes[identity], let previous = connections[previousID] {
            // A live registration is never displaced by default: a relay that obtained the
            // key's signature could otherwise take the key's introductions over and over.
            incumbent = previous.credentials
            let liveness = probeConnection(previousID)
            switch liveness {
            case let .dead(description):
                reason = .replacedDeadConnection
                out.append(.log(.init(.notice, "registration replaced an earlier connection of the key that was closed",
                                      connection: previousID, peer: identity, credentials: previous.credentials,
                                      reason: .replacedDeadConnection, detail: description)))
            case .alive where configuration.replaceSameUID && previous.credentials.uid == connection.credentials.uid:
                reason = .replacedSameUID
                out.append(.log(.init(.notice, "registration replaced a live connection of the same key and uid",
                                      connection: previousID, peer: identity, credentials: previous.credentials,
                                      reason: .replacedSameUID)))
            case .alive:
                out.append(.log(.init(.warning, "registration refused: the key is registered on a live connection",
                                      connection: connection.id, peer: identity, credentials: connection.credentials,
                                      reason: .liveRegistrationKept, detail: "kept \(previousID) (\(previous.credentials))")))
                drop(connection, reason: .liveRegistrationKept, detail: "the key's registration on \(previousID) is alive",
                     now: now, into: &out, claimed: identity, incumbent: previous.credentials, logged: true)
                return
            }
            drop(previous, reason: nil, detail: "replaced by a newer registration", now: now, into: &out)
        }
        let limits = limits
        connection.phase = .registered(Registered(identity: identity, tokens: Double(limits.introductionBurst),
                                                  refilledAt: now, partialSince: nil))
        forgetUnauthenticated(connection)
        if peer.form == .v2 { rememberV2(identity) }
        routes[identity] = connection.id
        locators.pin(identity)
        out.append(.audit(.init(.registrationAccepted, reason: reason, attempt: connection.registrationAttempt,
                                proved: identity, credentials: connection.credentials, incumbentCredentials: incumbent,
                                durationNanoseconds: now &- connection.acceptedAt)))
        out.append(.log(.init(.info, "peer registered", connection: connection.id, peer: identity,
                              credentials: connection.credentials, detail: "registration \(peer.form)")))
        deliverPending(to: identity, on: connection.id, into: &out)
    }

    private func rememberV2(_ identity: PublicIdentity) {
        guard configuration.maxRememberedV2Keys > 0, v2Keys.insert(identity).inserted else { return }
        v2KeyOrder.push(0, identity)
        while v2Keys.count > configuration.maxRememberedV2Keys, let oldest = v2KeyOrder.popDue(0) {
            v2Keys.remove(oldest)
        }
    }

    /// Whether a legacy registration of `identity` is refused because it registered with v2.
    public func remembersV2(_ identity: PublicIdentity) -> Bool { v2Keys.contains(identity) }

    private func deliverPending(to identity: PublicIdentity, on target: ConnectionID, into out: inout [Action]) {
        guard let attempts = pendingByTarget[identity] else { return }
        for attempt in attempts {
            guard let p = removePending(attempt) else { continue }
            sendForward(Forward(target: target, record: p.record, descriptor: p.descriptor, attempt: p.attempt,
                                from: p.from, to: p.to, requestedAt: p.requestedAt), into: &out)
        }
    }

    private func sendForward(_ forward: Forward, into out: inout [Action]) {
        inFlight[forward.target, default: []].append(forward.from)
        inFlightBySender[forward.from, default: 0] += 1
        out.append(.forward(forward))
    }

    /// Forgets the in-flight accounting of `target` (it drained, or it is gone).
    private func clearInFlight(_ target: ConnectionID) {
        guard let senders = inFlight.removeValue(forKey: target) else { return }
        for sender in senders {
            let left = inFlightBySender[sender, default: 1] - 1
            inFlightBySender[sender] = left > 0 ? left : nil
        }
    }

    private func removePending(_ attempt: UInt64) -> Pending? {
        guard let p = pending.removeValue(forKey: attempt) else { return nil }
        if var list = pendingByTarget[p.to], let i = list.firstIndex(of: attempt) {
            list.remove(at: i)
            pendingByTarget[p.to] = list.isEmpty ? nil : list
        }
        let left = pendingBySender[p.from, default: 1] - 1
        pendingBySender[p.from] = left > 0 ? left : nil
        // A delivered or dropped introduction leaves its expiry behind until it falls due; with
        // targets that register soon after, that is one stale entry per introduction for a whole
        // lifetime. Rebuilt from what is still pending once the stale ones clearly outnumber it.
        if expiries.count > 2 * pending.count + 1024 {
            expiries = DeadlineQueue(pending.values.map { ($0.requestedAt.addingSaturated(pendingLifetime), $0.attempt) })
        }
        return p
    }

    private func takeToken(_ connection: Connection, now: UInt64) -> Bool {
        let rate = limits.introductionsPerSecond
        guard rate > 0, case var .registered(r) = connection.phase else { return true }
        if now > r.refilledAt {
            let earned = Double(now - r.refilledAt) * Double(rate) / 1e9
            r.tokens = min(Double(limits.introductionBurst), r.tokens + earned)
            r.refilledAt = now
        }
        let granted = r.tokens >= 1
        if granted { r.tokens -= 1 }
        connection.phase = .registered(r)
        return granted
    }

    // MARK: closing

    /// Forgets `connection`, closes what it held, and records why. Before registration every
    /// close ends the registration attempt (`reason` nil means peerReset). After registration a
    /// protocol error is recorded as a refused introduction (the only thing a registered peer
    /// may send); a plain disconnect, a replacement or a shutdown is only logged.
    private func drop(_ connection: Connection, reason: Reason?, detail: String, now: UInt64, into out: inout [Action],
                      logReason: Reason? = nil, claimed: PublicIdentity? = nil,
                      incumbent: IntroductionServerCredentials? = nil, logged: Bool = false) {
        let id = connection.id
        guard connections.removeValue(forKey: id) != nil else { return }
        clearInFlight(id)
        for descriptor in connection.reader.drainDescriptors() { out.append(.closeDescriptor(descriptor)) }
        switch connection.phase {
        case let .registering(r):
            forgetUnauthenticated(connection)
            let why = reason ?? .peerReset
            out.append(.audit(.init(.registrationRefused, reason: why, attempt: connection.registrationAttempt,
                                    claimed: claimed ?? r.claimed, credentials: connection.credentials,
                                    incumbentCredentials: incumbent, durationNanoseconds: now &- connection.acceptedAt)))
            if !logged {
                out.append(.log(.init(why == .peerReset || why == .serverShutdown ? .info : .notice,
                                      "registration refused, connection closed", connection: id, peer: r.claimed,
                                      credentials: connection.credentials, reason: why, detail: detail)))
            }
        case let .registered(r):
            if routes[r.identity] == id {
                routes[r.identity] = nil
                locators.unpin(r.identity)
            }
            switch reason {
            case nil, .peerReset?, .serverShutdown?:
                out.append(.log(.init(logReason == nil ? .info : .notice,
                                      logReason == nil ? "registered peer disconnected" : "registered peer dropped",
                                      connection: id, peer: r.identity, credentials: connection.credentials,
                                      reason: logReason ?? reason, detail: detail)))
            case let why?:
                out.append(.audit(.init(.introductionRefused, reason: why, attempt: takeAttempt(), from: r.identity,
                                        credentials: connection.credentials, durationNanoseconds: 0)))
                out.append(.log(.init(.notice, "registered peer dropped", connection: id, peer: r.identity,
                                      credentials: connection.credentials, reason: why, detail: detail)))
            }
        }
        out.append(.close(id))
    }

    private func forgetUnauthenticated(_ connection: Connection) {
        unauthenticatedIDs.remove(connection.id)
        let left = unauthenticatedByUID[connection.credentials.uid, default: 1] - 1
        unauthenticatedByUID[connection.credentials.uid] = left > 0 ? left : nil
    }

    private func takeAttempt() -> UInt64 {
        defer { nextAttempt &+= 1 }
        return nextAttempt
    }

    // MARK: error mapping (one place)

    static func reason(_ code: OCapNError.Code) -> Reason {
        switch code {
        case .challengeLength: return .challengeLength
        case .badSignature, .challengeMismatch: return .badSignature
        case .spoofedFrom: return .spoofedFrom
        case .registrationFormRefused: return .registrationFormRefused
        case .limitExceeded, .messageTooLarge: return .messageTooLarge
        case .fdMissing: return .fdMissing
        case .unexpectedFD, .extraFDs: return .extraFds
        case .truncated: return .truncated
        case .invalidSyrup, .malformedMessage, .unknownMessage, .unexpectedMessage, .reflectedChallenge,
             .invalidPublicKey, .wrongTransport, .invalidDesignator, .invalidHint, .invalidURI,
             .serverKeyMismatch, .wrongTarget:
            return .malformedMessage
        }
    }
}

/// Keys in deadline order, for deadlines that are a fixed offset from a nondecreasing clock.
struct DeadlineQueue<Key> {
    private var entries: [(deadline: UInt64, key: Key)] = []
    private var headIndex = 0

    init() {}

    /// A queue holding `entries`, in deadline order.
    init(_ entries: [(deadline: UInt64, key: Key)]) {
        self.entries = entries.sorted { $0.deadline < $1.deadline }
    }

    var head: UInt64? { headIndex < entries.count ? entries[headIndex].deadline : nil }
    var count: Int { entries.count - headIndex }

    mutating func push(_ deadline: UInt64, _ key: Key) {
        // Deadlines arrive in order; keep the queue sorted anyway if the clock misbehaves.
        var i = entries.count
        while i > headIndex && entries[i - 1].deadline > deadline { i -= 1 }
        entries.insert((deadline, key), at: i)
    }

    mutating func popDue(_ now: UInt64) -> Key? {
        guard headIndex < entries.count, entries[headIndex].deadline <= now else { return nil }
        let key = entries[headIndex].key
        headIndex += 1
        if headIndex == entries.count {
            entries.removeAll(keepingCapacity: entries.count <= 1024)
            headIndex = 0
        } else if headIndex >= 1024 && headIndex * 2 >= entries.count {
            entries.removeFirst(headIndex)
            headIndex = 0
        }
        return key
    }
}

extension UInt64 {
    func addingSaturated(_ other: UInt64) -> UInt64 {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}
