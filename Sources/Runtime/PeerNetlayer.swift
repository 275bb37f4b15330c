import Audit
import Dispatch
import Identity
import Logging
import OCapN
import SecureChannel
import Synchronization
import Transport

/// One introduction server as seen by the netlayer: known by key once registered, and a
/// completion for when its connection ends (Goblins' `add-server` promise).
public final class ServerHandle: Sendable, CustomStringConvertible {
    /// The socket path it was reached by (nil for a connection handed in as a descriptor).
    public let path: String?
    private struct State {
        var server: PublicIdentity?
        var result: PeerError?
        var waiters: [CheckedContinuation<PeerError, Never>] = []
    }
    private let state = Mutex(State())

    init(path: String?) { self.path = path }

    /// The server's verified key (set once registration succeeded).
    public internal(set) var server: PublicIdentity? {
        get { state.withLock { $0.server } }
        set { state.withLock { $0.server = newValue } }
    }

    /// Waits until this server's connection ends and returns why (`serverDisconnected`, or
    /// `netlayerClosed` after `shutdown()`).
    public func disconnected() async -> PeerError {
        await withCheckedContinuation { (c: CheckedContinuation<PeerError, Never>) in
            let done = state.withLock { s -> PeerError? in
                if let r = s.result { return r }
                s.waiters.append(c)
                return nil
            }
            if let done { c.resume(returning: done) }
        }
    }

    /// Whether the connection has ended.
    public var isDisconnected: Bool { state.withLock { $0.result != nil } }

    func finish(_ reason: PeerError) {
        let waiters = state.withLock { s -> [CheckedContinuation<PeerError, Never>] in
            guard s.result == nil else { return [] }
            s.result = reason
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume(returning: reason) }
    }

    public var description: String {
        "ServerHandle(\(server?.fingerprint ?? "unregistered")\(path.map { " at \($0)" } ?? ""))"
    }
}

/// The peer side of the OCapN Unix-domain-socket netlayer (issue #4): one identity, any number
/// of introduction servers, authenticated channels out and in.
///
/// * `addServer` connects (or adopts a connected descriptor), registers, and returns a handle
///   whose `disconnected()` completes when that server goes away. Only that server is affected:
///   it leaves the hints, and handshakes still running through it fail.
/// * `locator` always advertises the live, registered servers as hints.
/// * `connect(to:)` goes through the first live server (in the order added) that the target's
///   hints also name, makes a CLOEXEC socketpair, passes one end, and returns only once the
///   target proved its key (UDS-HS1).
/// * `incoming` yields only authenticated channels, each with `from`/`to` and the verified peer;
///   legacy (Goblins) channels admitted by the opt-in go to `legacyIncoming` instead.
public final class PeerNetlayer: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// Handshake and channel settings (deadline, queues, legacy opt-in).
        public var channel: ChannelRuntimeConfiguration
        /// Handshakes in progress at once, both roles (PROTOCOL.md §6.4: 64).
        public var maxConcurrentHandshakes: Int
        /// Deadline for `uds:server-response` after connecting.
        public var registrationTimeout: Duration
        /// Deadline for connecting to a server's socket path (reliability catalogue §4: 2 s).
        public var connectTimeout: Duration
        /// Control-connection buffers and caps.
        public var control: StreamConnection.Configuration
        /// Incoming channels held until the application takes them; more are aborted.
        public var maxQueuedIncoming: Int
        /// Whose introduction servers `addServer(path:)` accepts, by the listener's uid
        /// (SO_PEERCRED, B2). A pinned key always suffices.
        public var serverUIDPolicy: ServerUIDPolicy = .sameUserOrRoot
        /// Per-peer and total caps on what introductions to us hold, and the descriptor reserve.
        public var resources: PeerResourceLimits
        /// Backoff and contested threshold of `keepServer`.
        public var reconnect: ReconnectPolicy
        /// Uniform random numbers in [0, 1) for the backoff's jitter (tests inject their own).
        public var randomUnit: @Sendable () -> Double
        /// Registration forms per server socket path (PROTOCOL.md §15): `goblins` or `draft` for
        /// servers that do not speak v2. Absent paths speak v2. Fixed per server: a failure never
        /// makes the netlayer retry in another form.
        public var registrationForms: [String: RegistrationForm] = [:]

        public init(
            channel: ChannelRuntimeConfiguration = ChannelRuntimeConfiguration(), maxConcurrentHandshakes: Int = HandshakeLimiter.defaultLimit,
            registrationTimeout: Duration = .seconds(5), connectTimeout: Duration = .seconds(2),
            control: StreamConnection.Configuration = StreamConnection.Configuration(), maxQueuedIncoming: Int = 64,
            resources: PeerResourceLimits = PeerResourceLimits(), reconnect: ReconnectPolicy = ReconnectPolicy(),
            randomUnit: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
        ) {
            precondition(maxConcurrentHandshakes >= 1 && maxQueuedIncoming >= 1, "limits must be positive")
            precondition(registrationTimeout > .zero && connectTimeout > .zero, "timeouts must be positive")
            self.channel = channel
            self.maxConcurrentHandshakes = maxConcurrentHandshakes
            self.registrationTimeout = registrationTimeout
            self.connectTimeout = connectTimeout
            self.control = control
            self.maxQueuedIncoming = maxQueuedIncoming
            self.resources = resources
            self.reconnect = reconnect
            self.randomUnit = randomUnit
        }
    }

    public let identity: PublicIdentity
    public let configuration: Configuration
    /// Authenticated incoming channels.
    public let incoming: AsyncStream<PeerChannel>
    /// Unauthenticated legacy channels (only with `allowLegacyPeers`).
    public let legacyIncoming: AsyncStream<PeerChannel>

    /// Our identity: registration signs with it (`ServerConnection`).
    let signer: IdentityKeyPair
    let establishment: ChannelEstablishment
    let queue = DispatchQueue(label: "ocapn-uds.netlayer")
    private let audit: (any AuditSink)?
    private let logger: Logger
    private let incomingContinuation: AsyncStream<PeerChannel>.Continuation
    private let legacyContinuation: AsyncStream<PeerChannel>.Continuation
    /// Servers in the order added (queue-confined).
    private var servers: [ServerConnection] = []
    private var closed = false
    /// Servers kept registered by `keepServer` (queue-confined).
    private var keepers: [ServerKeeper] = []
    private let locatorSnapshot: Mutex<PeerLocator>
    /// Set by `acceptIncoming`: authenticated channels go to it instead of `incoming`. In a
    /// class box: a function value as a Mutex's value is re-wrapped in a reabstraction thunk on
    /// every inout access, a chain that grows with every introduction.
    private final class Acceptor: Sendable {
        let accept: IncomingAcceptor
        init(_ accept: @escaping IncomingAcceptor) { self.accept = accept }
    }

    private let incomingAcceptor = Mutex<Acceptor?>(nil)
    let resources: PeerResourceGovernor
    private let refusals = RefusalReporter()

    /// Throws `invalidConfiguration` when the channel settings do not work together.
    public init(
        identity keyPair: IdentityKeyPair, configuration: Configuration = Configuration(),
        audit: (any AuditSink)? = nil, logger: Logger
    ) throws(PeerError) {
        identity = keyPair.publicIdentity
        self.configuration = configuration
        self.audit = audit
        var log = logger
        log[metadataKey: "local"] = "\(keyPair.publicIdentity.fingerprint)"
        self.logger = log
        signer = keyPair
        establishment = try ChannelEstablishment(
            identity: keyPair, configuration: configuration.channel,
            limiter: HandshakeLimiter(limit: configuration.maxConcurrentHandshakes), audit: audit, logger: log)
        (incoming, incomingContinuation) = AsyncStream.makeStream(of: PeerChannel.self, bufferingPolicy: .bufferingOldest(configuration.maxQueuedIncoming))
        (legacyIncoming, legacyContinuation) = AsyncStream.makeStream(of: PeerChannel.self, bufferingPolicy: .bufferingOldest(configuration.maxQueuedIncoming))
        locatorSnapshot = Mutex(PeerLocator(identity: keyPair.publicIdentity))
        resources = PeerResourceGovernor(limits: configuration.resources)
    }

    /// Handshakes in progress for introductions to us, and channels they opened that are
    /// still open (the counts `configuration.resources` caps).
    public var inboundHandshakesInProgress: Int { resources.handshakesInProgress }
    public var inboundOpenChannels: Int { resources.openChannels }

    /// Introductions accepted on the loop thread that read them (queue-confined): no hop
    /// between `recvmsg` and the start of the handshake.
    private var introductionsOnLoopThread = 0
    /// Tests: how many introductions were accepted without a hop off the control loop thread.
    var introductionsAcceptedOnLoopThread: Int { queue.sync { introductionsOnLoopThread } }

    /// Our locator with one hint per live, registered server (hints `f` when there is none).
    public var locator: PeerLocator { locatorSnapshot.withLock { $0 } }

    var ownLocatorWithoutHints: PeerLocator { PeerLocator(identity: identity) }

    /// Handles of the live, registered servers, in the order added.
    public var liveServers: [ServerHandle] {
        queue.sync { servers.filter { $0.server != nil }.map(\.handle) }
    }

    // MARK: servers

    /// Connects to the introduction server at `path` and registers. With `expectedKey`, a server
    /// proving any other key is refused (`registrationFailed`, detail `serverKeyMismatch`).
    /// Throws `serverUnreachable`, `registrationFailed`, `registrationTimeout`,
    /// `serverDisconnected` or `netlayerClosed`.
    /// `form` overrides `configuration.registrationForms[path]` (default v2).
    public func addServer(path: String, expectedKey: PublicIdentity? = nil, form: RegistrationForm? = nil) async throws(PeerError) -> ServerHandle {
        let timeout = configuration.connectTimeout
        let descriptor: FileDescriptor
        do {
            // The connect blocks (bounded by its deadline); keep it off the netlayer queue.
            descriptor = try await Task.detached { () throws(TransportError) -> FileDescriptor in
                try FileDescriptor.connect(unixPath: path, timeout: timeout)
            }.value
        } catch let error as TransportError {
            logger.info("introduction server unreachable", metadata: ["path": "\(path)", "detail": "\(error)"])
            audit?.record(AuditEvent(
                .registrationRefused, reason: .netlayer(.serverUnreachable), attempt: .random(), role: .client, local: AuditPeerID(identity),
                introServer: expectedKey.map { AuditPeerID($0) }, path: AuditPath(path)))
            throw PeerError(.serverUnreachable, error.explanation)
        } catch {
            preconditionFailure("unexpected error type \(type(of: error))")
        }
        // B2: anyone may bind a socket where we look (an abstract @name, a path in a shared
        // directory); the listener's uid says who did. Checked before a byte is sent.
        let listenerUID: UInt32?
        do throws(TransportError) { listenerUID = try descriptor.peerCredentials().uid } catch { listenerUID = nil }
        if let refusal = configuration.serverUIDPolicy.refusal(listenerUID: listenerUID, ownUID: ProcessIdentity.realUserID,
                                                             pinned: expectedKey != nil) {
            descriptor.close()
            let error = PeerError(.serverNotTrusted, "\(path): \(refusal)")
            logger.warning("introduction server refused", metadata: ["path": "\(path)", "detail": "\(refusal)"])
            audit?.record(AuditEvent(
                .registrationRefused, reason: .netlayer(.serverNotTrusted), attempt: .random(), role: .client,
                local: AuditPeerID(identity), path: AuditPath(path)))
            throw error
        }
        return try await register(descriptor, path: path, expectedKey: expectedKey,
                                  form: form ?? configuration.registrationForms[path] ?? .v2)
    }

    /// Registers over an already connected control socket (owned from here on).
    public func addServer(descriptor: FileDescriptor, expectedKey: PublicIdentity? = nil,
                          form: RegistrationForm = .v2) async throws(PeerError) -> ServerHandle {
        try await register(descriptor, path: nil, expectedKey: expectedKey, form: form)
    }

    private func register(_ descriptor: FileDescriptor, path: String?, expectedKey: PublicIdentity?,
                          form: RegistrationForm) async throws(PeerError) -> ServerHandle {
        try await PeerError.catching {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<ServerHandle, Error>) in
                queue.async {
                    guard !self.closed else {
                        descriptor.close()
                        c.resume(throwing: PeerError(.netlayerClosed, "the netlayer was shut down"))
                        return
                    }
                    let connection = ServerConnection(netlayer: self, path: path, pinned: expectedKey, form: form, queue: self.queue)
                    self.servers.append(connection)
                    connection.start(descriptor: descriptor, waiter: c)
                }
            }
        }
    }

    /// Keeps a registration with the server at `path` for the life of the netlayer: registers,
    /// and after every failure or lost registration tries again after the backoff of
    /// `configuration.reconnect` (capped exponential, with jitter). A failing server never
    /// affects the others. Failures are audited (`registration.refused` with the reason) and
    /// logged; registrations lost or refused `contestedAfter` times in a row are reported as
    /// contested (warning, audit `serverContested`). `shutdown()` stops every keeper.
    public func keepServer(path: String, expectedKey: PublicIdentity? = nil) -> ServerKeeper {
        let keeper = ServerKeeper(path: path, expectedKey: expectedKey)
        let accepted: Bool = queue.sync {
            guard !closed else { return false }
            keepers.append(keeper)
            return true
        }
        guard accepted else {
            keeper.ended()
            return keeper
        }
        keeper.attach(Task { await self.runKeeper(keeper) })
        return keeper
    }

    private func runKeeper(_ keeper: ServerKeeper) async {
        var retry = ServerRetryState(policy: configuration.reconnect)
        var log = logger
        log[metadataKey: "path"] = "\(keeper.path)"
        defer { keeper.ended() }
        while !keeper.isStopped && !Task.isCancelled {
            let error: PeerError
            let kind: ServerFailureKind
            var server = keeper.expectedKey
            do {
                let handle = try await addServer(path: keeper.path, expectedKey: keeper.expectedKey)
                retry.registered(at: .now)
                keeper.registered(handle)
                error = await handle.disconnected()
                server = handle.server ?? server
                kind = .lost
            } catch let failure {
                error = failure
                kind = ServerKeeper.kind(ofAttemptFailure: failure)
            }
            if error.code == .netlayer(.netlayerClosed) || keeper.isStopped { return }
            let decision = retry.failed(kind, at: .now, unit: configuration.randomUnit())
            log.notice("introduction server unavailable; retrying", metadata: [
                "reason": "\(error.code.rawValue)", "detail": "\(error.detail)", "kind": "\(kind.rawValue)",
                "failures": "\(decision.consecutiveFailures)", "retryInMs": "\(decision.delayMilliseconds)",
            ])
            if decision.becameContested {
                log.warning("introduction server contested: our registration was lost or refused repeatedly", metadata: [
                    "losses": "\(decision.consecutiveLosses)", "retryInMs": "\(decision.delayMilliseconds)"])
                audit?.record(AuditEvent(
                    .registrationRefused, reason: .runtime(.serverContested), attempt: .random(), role: .client, local: AuditPeerID(identity),
                    introServer: server.map { AuditPeerID($0) }, path: AuditPath(keeper.path)))
            }
            keeper.failed(error, kind: kind, decision: decision)
            do { try await Task.sleep(for: decision.delay) } catch { return }
        }
    }

    /// Called by a connection once the server proved its key.
    func serverRegistered(_ connection: ServerConnection) {
        updateLocator()
        var log = logger
        if let key = connection.server?.identity { log[metadataKey: "server"] = "\(key.fingerprint)" }
        log.info("registered with introduction server", metadata: ["path": "\(connection.path ?? "(descriptor)")"])
        audit?.record(AuditEvent(
            .registrationAccepted, attempt: .random(), role: .client, local: AuditPeerID(identity),
            introServer: connection.server.map { AuditPeerID($0.identity) }, path: connection.path.flatMap { AuditPath($0) }))
    }

    /// Called by a connection when it ends, once.
    func serverDisconnected(_ connection: ServerConnection, reason: PeerError, wasRegistered: Bool) {
        servers.removeAll { $0 === connection }
        updateLocator()
        var log = logger
        if let key = connection.handle.server { log[metadataKey: "server"] = "\(key.fingerprint)" }
        if wasRegistered {
            log.info("introduction server disconnected", metadata: ["reason": "\(reason.code.rawValue)", "detail": "\(reason.detail)"])
            if reason.code != .netlayer(.netlayerClosed) {
                // Displaced by another connection for our key, or the server went away: the
                // peer cannot tell which, the pattern (ServerRetryState) can.
                audit?.record(AuditEvent(
                    .registrationRefused, reason: .runtime(.registrationLost), attempt: .random(), role: .client, local: AuditPeerID(identity),
                    introServer: connection.handle.server.map { AuditPeerID($0) }, path: connection.path.flatMap { AuditPath($0) }))
            }
        } else {
            log.info("registration failed", metadata: ["reason": "\(reason.code.rawValue)", "detail": "\(reason.detail)"])
            let auditReason = reason.auditReason
            audit?.record(AuditEvent(
                .registrationRefused, reason: auditReason, attempt: .random(), role: .client, local: AuditPeerID(identity),
                introServer: connection.handle.server.map { AuditPeerID($0) }, path: connection.path.flatMap { AuditPath($0) }))
        }
    }

    private func updateLocator() {
        let live = servers.compactMap { $0.server?.identity }
        locatorSnapshot.withLock { $0 = PeerLocator(identity: identity, introductionServers: live) }
    }

    // MARK: outgoing

    /// Opens an authenticated channel to `target` through the first live server that both we
    /// and the target's hints name. Throws `noSharedServer`, `selfConnection`, the handshake's
    /// code (`wrongResponder`, `timeout`, `truncated`, …) or `serverDisconnected` when the server
    /// went away before the handshake finished.
    public func connect(to target: PeerLocator) async throws(PeerError) -> PeerChannel {
        guard target.identity != identity else {
            throw PeerError(.selfConnection, "the target locator is our own")
        }
        let wanted = Set(target.hintServers)
        let own = locator
        let plan: Result<(ServerConnection, FileDescriptor, HandshakeCancellation), PeerError> = queue.sync {
            guard !closed else { return .failure(PeerError(.netlayerClosed, "the netlayer was shut down")) }
            guard let server = servers.first(where: { $0.server.map { wanted.contains($0.identity) } ?? false }) else {
                return .failure(PeerError(
                    .noSharedServer, "none of the target's \(wanted.count) hinted servers is among our \(servers.count) live servers"))
            }
            let ends: (FileDescriptor, FileDescriptor)
            do {
                ends = try FileDescriptor.socketPair()
            } catch {
                return .failure(PeerError(.ioError, "socketpair: \(error)"))
            }
            do throws(PeerError) {
                try server.introduce(to: target, from: own, passing: ends.1)
            } catch {
                ends.0.close()
                return .failure(error)
            }
            let cancellation = HandshakeCancellation()
            server.track(cancellation)
            return .success((server, ends.0, cancellation))
        }
        let (server, ours, cancellation) = try plan.get()
        defer { server.untrack(cancellation) }
        let context = IntroductionContext(from: own, to: target, server: server.server?.identity)
        do throws(PeerError) {
            return try await establishment.initiate(over: ours, to: target.identity, introduction: context, cancellation: cancellation)
        } catch {
            throw PeerError.initiatorFailure(error, target: target.identity, server: server.server?.identity)
        }
    }

    // MARK: incoming

    /// Makes the delivery handler of an incoming channel (see `acceptIncoming`).
    public typealias IncomingAcceptor = @Sendable (PeerChannel) -> @Sendable (PeerChannel.Delivery) -> Void

    /// From now on, each authenticated incoming channel is handed to `accept` as its handshake
    /// completes, instead of to `incoming`, and the handler `accept` returns is installed at
    /// once, as `deliver(to:)` would: no task, no thread hop between the handshake and the
    /// first message (the messages that came with the handshake's last one are delivered on
    /// the thread that finished it, the later ones on the channel's event-loop thread).
    /// `accept` runs under the channel's queue: it must not block nor call the channel's
    /// methods (its handler may). Legacy channels still go to `legacyIncoming`.
    public func acceptIncoming(_ accept: @escaping IncomingAcceptor) {
        let box = Acceptor(accept)
        incomingAcceptor.withLock { $0 = box }
    }

    /// An introduction for us arrived with `descriptor`: run the responder, expecting `from`.
    /// Called on the netlayer's queue, usually on the control connection's loop thread: the
    /// checks and the start of the handshake's I/O run here, its crypto on the channel's queue,
    /// and the channel is handed to `incoming` from there, with no task in between.
    func accept(_ descriptor: FileDescriptor, introduction: IncomingIntroduction, server: PublicIdentity, onLoopThread: Bool) {
        if onLoopThread { introductionsOnLoopThread += 1 }
        let claimed = introduction.claimedFrom.identity
        if let refusal = resources.admit(from: claimed) {
            refuseIntroduction(refusal, introduction: introduction, server: server)
            descriptor.close()
            return
        }
        let context = IntroductionContext(from: introduction.claimedFrom, to: introduction.to, server: server)
        // The ticket counts the handshake, then its channel until the channel's end.
        let ticket = AdmissionTicket(inner: audit, governor: resources, key: claimed)
        let establishment = self.establishment.observed(by: ticket)
        let incoming = incomingContinuation
        let legacy = legacyContinuation
        let acceptor = incomingAcceptor.withLock { $0 }
        establishment.respond(over: descriptor, expecting: claimed, introduction: context) { outcome in
            // logged and audited by the establishment
            guard case .success(let channel) = outcome else { return ticket.failed() }
            ticket.opened()
            if channel.isAuthenticated, let acceptor {
                // On the channel's queue, inside the event that finished the handshake.
                return channel.engine.installHandlerAtEstablishment(acceptor.accept(channel))
            }
            let queue = channel.isAuthenticated ? incoming : legacy
            switch queue.yield(channel) {
            case .enqueued: break
            case .dropped(let dropped): dropped.abortSoon()
            case .terminated: channel.abortSoon()
            @unknown default: channel.abortSoon()
            }
        }
    }

    /// An introduction refused by a resource cap: the socket is closed without a byte; logged
    /// at warning (rate-limited per reason) and audited, every one.
    private func refuseIntroduction(_ refusal: PeerResourceGovernor.Refusal, introduction: IncomingIntroduction, server: PublicIdentity) {
        let (log, suppressed) = refusals.shouldLog(refusal.reason)
        if log {
            var logger = self.logger
            logger[metadataKey: "server"] = "\(server.fingerprint)"
            logger.warning("introduction refused", metadata: [
                "reason": "\(refusal.reason)", "detail": "\(refusal.detail)",
                "claimedFrom": "\(introduction.claimedFrom.identity.fingerprint)", "suppressedSinceLast": "\(suppressed)",
            ])
        }
        audit?.record(AuditEvent(
            .handshakeFailed, reason: refusal.reason, attempt: .random(), role: .responder, local: AuditPeerID(identity),
            expectedPeer: AuditPeerID(introduction.claimedFrom.identity), from: AuditPeerID(introduction.claimedFrom.identity),
            to: AuditPeerID(introduction.to.identity), introServer: AuditPeerID(server)))
    }

    /// An introduction whose descriptor the kernel dropped (we were at our descriptor limit):
    /// the initiator sees its socket end; the server connection stays. Logged and audited.
    func lostIntroduction(_ introduction: IncomingIntroduction, server: PublicIdentity) {
        refuseIntroduction(
            PeerResourceGovernor.Refusal(
                reason: .runtime(.passedDescriptorLost),
                detail: "the kernel could not install the passed descriptor (MSG_CTRUNC: descriptor limit reached)"),
            introduction: introduction, server: server)
    }

    /// An introduction refused before its handshake (wrong target): logged and audited.
    func refusedIntroduction(_ error: PeerError, from: PeerLocator, to: PeerLocator, server: PublicIdentity) {
        var log = logger
        log[metadataKey: "server"] = "\(server.fingerprint)"
        log.info("introduction refused", metadata: ["reason": "\(error.code.rawValue)", "detail": "\(error.detail)"])
        audit?.record(AuditEvent(
            .handshakeFailed, reason: error.auditReason, attempt: .random(), role: .responder, local: AuditPeerID(identity),
            expectedPeer: AuditPeerID(from.identity), from: AuditPeerID(from.identity), to: AuditPeerID(to.identity),
            introServer: AuditPeerID(server)))
    }

    /// A server's marker came with extra descriptors (a padded control message, issue #17),
    /// already closed by the connection: logged and audited with what they were.
    func closedExtraDescriptors(kinds: [String], server: PublicIdentity?, path: String?) {
        var log = logger
        if let server { log[metadataKey: "server"] = "\(server.fingerprint)" }
        log.notice("extra descriptors closed: the server's control message carried more than one",
                   metadata: ["descriptors": "\(kinds.joined(separator: ", "))", "path": "\(path ?? "(descriptor)")"])
        audit?.record(AuditEvent(
            .descriptorsClosed, reason: .runtime(.extraDescriptorsClosed), role: .client, local: AuditPeerID(identity),
            introServer: server.map { AuditPeerID($0) }, path: path.flatMap { AuditPath($0) },
            descriptorKinds: AuditDescriptorKinds(kinds)))
    }

    // MARK: shutdown

    /// Disconnects every server and ends `incoming`. Open channels are not affected.
    public func shutdown() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            queue.async {
                self.closed = true
                for keeper in self.keepers { keeper.stop() }
                self.keepers = []
                for server in self.servers { server.disconnect(PeerError(.netlayerClosed, "the netlayer was shut down")) }
                self.incomingContinuation.finish()
                self.legacyContinuation.finish()
                c.resume()
            }
        }
    }
}

/// Which uids may run an introduction server this peer registers with (checked with SO_PEERCRED
/// on the connected control socket; reliability catalog B2). A pinned server key always passes:
/// the registration then proves the key whoever runs it.
public enum ServerUIDPolicy: Sendable, Equatable {
    /// Our own uid or root (the default): another user's server could watch whom we meet.
    case sameUserOrRoot
    /// These uids, plus our own and root.
    case allowed(Set<UInt32>)
    /// No uid check (the key, pinned or not, is the only check).
    case anyUID

    /// Why a listener run by `listenerUID` is refused, or nil. An unknown uid (SO_PEERCRED
    /// failed) is refused unless pinned or `anyUID`.
    public func refusal(listenerUID: UInt32?, ownUID: UInt32, pinned: Bool) -> String? {
        if pinned { return nil }
        let extra: Set<UInt32>
        switch self {
        case .anyUID: return nil
        case .sameUserOrRoot: extra = []
        case .allowed(let uids): extra = uids
        }
        guard let uid = listenerUID else { return "the listener's uid is unknown (SO_PEERCRED failed) and no key is pinned" }
        if uid == ownUID || uid == 0 || extra.contains(uid) { return nil }
        return "the server runs as uid \(uid), not ours (\(ownUID)) nor root, and its key is not pinned "
            + "(pin it with PATH=DESIGNATOR, or allow the uid)"
    }
}

extension PeerChannel {
    /// `abort()` without waiting for it: for a channel refused on its engine's queue, where
    /// waiting would be waiting for ourselves.
    func abortSoon() {
        let engine = self.engine
        engine.queue.async { engine.abort() }
    }
}
