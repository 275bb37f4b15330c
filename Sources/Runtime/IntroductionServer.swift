import Audit
import Dispatch
import Identity
import Logging
import OCapN
import Transport

/// The introduction server daemon: `IntroductionServerCore` driven by a `Listener` and one
/// `StreamConnection` per control connection, all registered with one `EventLoop` and handled
/// on its thread, plus a timer armed for the core's next deadline. No thread or task per
/// connection, and no hop on the way through: a read, the core's decision and the forward to
/// the target (`sendmsg` with the descriptor) happen in one turn of the loop.
///
/// Every method may be called from any thread; work hops onto the loop.
public final class IntroductionServer: @unchecked Sendable {
    // @unchecked: every mutable field is touched only on the loop thread (asserted in the
    // handlers in debug builds).

    public struct Configuration: Sendable {
        /// The core's limits and uid policy.
        public var core: IntroductionServerConfiguration
        /// Bytes per `recvmsg` on a control connection: one buffer shared by every connection
        /// (they all read on the loop thread); a control message is a few hundred bytes and a
        /// read can be continued.
        public var readBufferBytes: Int = 4096
        /// Unsent bytes per connection before the peer is dropped as not reading.
        public var outputQueueBytes: Int = 64 * 1024
        /// Descriptors waiting in one connection's output queue before it is dropped.
        public var outputQueueDescriptors: Int = 16
        /// Descriptors kept free for the listening socket, lock, audit log, stdio and the
        /// dispatch runtime (catalog §4 budget rule).
        public var descriptorReserve: Int = 16
        /// How often the audit log is offered a signed checkpoint when idle.
        public var auditCheckpointInterval: Duration = .seconds(10)
        /// Pause after EMFILE/ENFILE on accept.
        public var acceptBackoff: Duration = .seconds(1)
        /// How often descriptors held for unregistered targets are polled for hang-up (F6).
        public var hangUpCheckInterval: Duration = .milliseconds(250)
        /// How often the socket path is checked for deletion or replacement (C3).
        public var socketWatchInterval: Duration = .milliseconds(500)
        /// What to do when the socket path is deleted or replaced (C3).
        public var onSocketLoss: SocketLossPolicy = .recreate

        public init(core: IntroductionServerConfiguration) { self.core = core }

        /// Descriptors the limits can hold at once: every connection (and one being refused),
        /// every pending introduction, plus the reserve.
        public var requiredDescriptors: UInt64 {
            UInt64(core.limits.maxClients + 1 + core.limits.maxPendingTotal + descriptorReserve)
        }

        /// Problems with these values, one sentence each; empty when usable.
        public var problems: [String] {
            var p = core.limits.problems
            if !(512...(1 << 20)).contains(readBufferBytes) { p.append("the read buffer must be 512...1048576 bytes") }
            if !(4096...(64 << 20)).contains(outputQueueBytes) { p.append("the output queue must be 4096...67108864 bytes") }
            if !(1...1024).contains(outputQueueDescriptors) { p.append("output queue descriptors must be 1...1024") }
            if !(8...4096).contains(descriptorReserve) { p.append("the descriptor reserve must be 8...4096") }
            if auditCheckpointInterval <= .zero { p.append("the audit checkpoint interval must be positive") }
            return p
        }
    }

    /// C3: an outage no supervisor sees is the failure to avoid.
    public enum SocketLossPolicy: String, Sendable {
        /// Log at error level and re-create the socket at the same path atomically.
        case recreate
        /// Log at error level and stop; `socketLost` tells the caller to exit with its status.
        case exit
    }

    private enum State { case idle, running, stopping, stopped }

    public let identity: PublicIdentity
    /// The server's name in every audit record it writes (two per introduction), made once.
    private let auditServerID: AuditPeerID
    /// The loop every descriptor of the server is registered with; its state lives there.
    public let loop: EventLoop
    /// Where the timers fire; their work then runs on the loop.
    private let timerQueue = DispatchQueue(label: "ocapn-uds.intro-server.timers")
    public let configuration: Configuration
    /// Where the server listens (nil path for an inherited socket).
    public let socketPath: String?

    /// The core knows each descriptor it holds by a token (its `Int` specialisation, exported
    /// by OCapN, has no generic-metadata lookups); the descriptors stay here, owned.
    private let core: IntroductionServerCore<Int>
    private let held: HeldDescriptors
    private var listener: Listener
    /// The listener each open connection was accepted by (its count is released there, also
    /// after the socket was re-created).
    private var acceptedBy: [IntroductionServerConnectionID: Listener] = [:]
    private var socketWatchTimer: DispatchSourceTimer?
    private var socketMode: UInt32?
    private var lostSocket = false
    private let audit: (any AuditSink)?
    private let logger: Logger
    private let streamConfiguration: StreamConnection.Configuration
    /// Every connection reads into this one buffer (they share the loop thread), so an idle
    /// peer costs no read buffer of its own.
    private let readBuffer: StreamConnection.ReadBuffer
    private var connections: [IntroductionServerConnectionID: StreamConnection] = [:]
    private var nextConnection: UInt64 = 1
    private var state = State.idle
    private var deadlineTimer: DispatchSourceTimer?
    private var timerDeadline: UInt64?
    private var checkpointTimer: DispatchSourceTimer?
    private var hangUpTimer: DispatchSourceTimer?
    /// When forwarding met ETOOMANYREFS, until a forward completes again.
    private var backPressureSince: UInt64?
    /// Each target's unread output after the last forward to it (A12 progress).
    private var lastUnread: [IntroductionServerConnectionID: Int] = [:]
    private var stopWaiters: [@Sendable () -> Void] = []
    private var failed = false

    /// - Parameters:
    ///   - identity: the server's key; it signs registration challenges (64 bytes only) and, when
    ///     the audit sink was built with it, checkpoints.
    ///   - socket: a bound listening socket (`IntroductionServerSocket.open`); closed and
    ///     unlinked by `stop`.
    ///   - audit: where records go (nil: none).
    ///   - logger: operational log; never receives key material.
    public init(
        identity keyPair: IdentityKeyPair, socket: ListeningSocket, configuration: Configuration,
        audit: (any AuditSink)?, logger: Logger, loop: EventLoop = EventLoopGroup.shared.next()
    ) {
        precondition(configuration.problems.isEmpty, "invalid configuration: \(configuration.problems)")
        identity = keyPair.publicIdentity
        auditServerID = AuditPeerID(keyPair.publicIdentity)
        self.loop = loop
        self.configuration = configuration
        socketPath = socket.path
        self.audit = audit
        self.logger = logger
        var stream = StreamConnection.Configuration()
        stream.readBufferSize = configuration.readBufferBytes
        stream.maximumQueuedBytes = configuration.outputQueueBytes
        stream.maximumQueuedDescriptors = configuration.outputQueueDescriptors
        // A busy sender gets 16 reads per turn of the loop, then the others theirs; its socket
        // stays readable (level-triggered), so the loop comes back to it.
        stream.readsPerEvent = 16
        streamConfiguration = stream
        readBuffer = StreamConnection.ReadBuffer(byteCount: configuration.readBufferBytes)
        let signer = keyPair
        var drained: ((IntroductionServerConnectionID) -> Bool)?
        let probe = LivenessProbe()
        let held = HeldDescriptors()
        self.held = held
        core = IntroductionServerCore(
            signer: signer, configuration: configuration.core,
            attemptIDBase: AuditAttemptID.random().rawValue,
            makeChallenge: { Challenge.random() },
            checkDescriptor: { Self.checkDescriptor(held[$0]) },
            describeDescriptor: { held[$0].shortKindDescription() },
            targetHasReadEverything: { id in drained?(id) ?? false },
            probeConnection: { probe.server?.probeLiveness($0) ?? .alive })
        var listening = Listener.Configuration()
        // One above the core's cap, so a connection over the cap is accepted, refused with an
        // audit record (tooManyClients) and closed, instead of hanging in the backlog.
        listening.maximumConnections = configuration.core.limits.maxClients + 1
        listening.resourceBackoff = configuration.acceptBackoff
        var handler: ((ListenerEvent) -> Void)?
        listener = Listener(socket: socket, loop: loop, configuration: listening) { handler?($0) }
        handler = { [weak self] event in self?.handle(event) }
        drained = { [weak self] id in self?.targetReadSinceLastForward(id) ?? false }
        probe.server = self
    }

    /// Lets the core ask about a registered connection (on the loop, inside a core call).
    private final class LivenessProbe {
        weak var server: IntroductionServer?
    }

    /// The descriptors the core holds, by token: each one received is held until the core hands
    /// its token back in a `.forward` or `.closeDescriptor` (which `take` ends). Loop thread only.
    private final class HeldDescriptors {
        private var descriptors: [Int: FileDescriptor] = [:]
        private var nextToken = 0

        func hold(_ descriptor: FileDescriptor) -> Int {
            let token = nextToken
            nextToken &+= 1
            descriptors[token] = descriptor
            return token
        }

        /// A held descriptor, still held (for the core's checks).
        subscript(token: Int) -> FileDescriptor {
            guard let descriptor = descriptors[token] else { preconditionFailure("the core used an unknown descriptor token") }
            return descriptor
        }

        /// Ends holding: the caller now owns the descriptor.
        func take(_ token: Int) -> FileDescriptor {
            guard let descriptor = descriptors.removeValue(forKey: token) else {
                preconditionFailure("the core handed back an unknown descriptor token")
            }
            return descriptor
        }

        var isEmpty: Bool { descriptors.isEmpty }
    }

    private func probeLiveness(_ id: IntroductionServerConnectionID) -> IntroductionServerLiveness {
        guard let connection = connections[id] else { return .dead(description: "connection already closed") }
        switch connection.probeLiveness() {
        case .alive: return .alive
        case let .hungUp(what): return .dead(description: what)
        }
    }

    /// Starts accepting. Records `server.started`.
    public func start() {
        onLoop { [self] in
            guard state == .idle else { return }
            state = .running
            listener.start()
            deadlineTimer = makeTimer { server in server.deadlineFired() }
            deadlineTimer?.activate()
            if let file = audit as? AuditFileSink {
                let interval = Self.dispatchInterval(configuration.auditCheckpointInterval)
                checkpointTimer = makeTimer { _ in file.checkpointIfDue() }
                checkpointTimer?.schedule(deadline: .now() + interval, repeating: interval, leeway: .seconds(1))
                checkpointTimer?.activate()
            }
            let every = Self.dispatchInterval(configuration.hangUpCheckInterval)
            hangUpTimer = makeTimer { server in server.checkHangUps() }
            hangUpTimer?.schedule(deadline: .now() + every, repeating: every, leeway: .milliseconds(20))
            hangUpTimer?.activate()
            if listener.socket.path != nil {
                socketMode = listener.socket.pathMode()
                let period = Self.dispatchInterval(configuration.socketWatchInterval)
                socketWatchTimer = makeTimer { server in server.checkSocketPath() }
                socketWatchTimer?.schedule(deadline: .now() + period, repeating: period, leeway: .milliseconds(50))
                socketWatchTimer?.activate()
            }
            audit?.record(AuditEvent(.serverStarted, role: .server, local: AuditPeerID(identity),
                                     path: socketPath.flatMap(AuditPath.init)))
            logger.info("introduction server listening", metadata: [
                "path": "\(socketPath ?? "(inherited)")", "server": "\(identity.fingerprint)",
                "max_clients": "\(configuration.core.limits.maxClients)",
            ])
        }
    }

    /// Stops: closes the listener (unlinking the socket path), every connection and every held
    /// descriptor; records `server.stopped`. `completion` runs once the listening socket is
    /// closed. Idempotent.
    public func stop(completion: @escaping @Sendable () -> Void = {}) {
        onLoop { [self] in
            switch state {
            case .stopped:
                completion()
                return
            case .stopping:
                stopWaiters.append(completion)
                return
            case .idle, .running:
                break
            }
            state = .stopping
            stopWaiters.append(completion)
            listener.close()
            perform(core.shutdown(now: Self.now()))
            assert(held.isEmpty, "the core's shutdown hands back every descriptor it held")
            deadlineTimer?.cancel()
            deadlineTimer = nil
            checkpointTimer?.cancel()
            checkpointTimer = nil
            hangUpTimer?.cancel()
            hangUpTimer = nil
            socketWatchTimer?.cancel()
            socketWatchTimer = nil
            audit?.record(AuditEvent(.serverStopped, reason: AuditReason(introductionServer: .serverShutdown), role: .server, local: AuditPeerID(identity),
                                     path: socketPath.flatMap(AuditPath.init)))
            logger.info("introduction server stopped", metadata: ["server": "\(identity.fingerprint)"])
            // The listener unregistered and closed its socket in `close()`, at once.
            state = .stopped
            let waiters = stopWaiters
            stopWaiters = []
            for waiter in waiters { waiter() }
        }
    }

    /// Runs `completion` once the server has stopped, whatever stopped it (a signal handler
    /// calling `stop`, or a failed listening socket).
    public func whenStopped(_ completion: @escaping @Sendable () -> Void) {
        onLoop { [self] in
            if state == .stopped { completion() } else { stopWaiters.append(completion) }
        }
    }

    /// Whether the listening socket failed (the server then stops by itself).
    public var listenerFailed: Bool { onLoopWaiting { [self] in failed } }

    /// Whether the server stopped because its socket path was deleted or replaced and could
    /// not be (or, by policy, was not) re-created.
    public var socketLost: Bool { onLoopWaiting { [self] in lostSocket } }

    /// Counts for health checks and tests (on any thread).
    public func statistics() -> (connections: Int, registered: Int, unauthenticated: Int, pending: Int) {
        onLoopWaiting { [self] in (core.connectionCount, core.registeredCount, core.unauthenticatedCount, core.pendingCount) }
    }

    // MARK: the loop

    /// Runs `work` on the loop thread (now, when already there).
    private func onLoop(_ work: @escaping @Sendable () -> Void) {
        if loop.inLoopThread {
            work()
        } else if !loop.execute(work) {
            preconditionFailure("the introduction server's event loop was shut down while the server ran")
        }
    }

    /// Runs `work` on the loop thread and waits for its result (not to be called on the loop
    /// thread of another server: it blocks the calling thread).
    private func onLoopWaiting<T>(_ work: @escaping () -> T) -> T {
        if loop.inLoopThread { return work() }
        nonisolated(unsafe) var result: T?
        nonisolated(unsafe) let work = work
        let done = DispatchSemaphore(value: 0)
        onLoop {
            result = work()
            done.signal()
        }
        done.wait()
        return result!
    }

    /// A timer on the timer queue whose work runs on the loop; the caller schedules and
    /// activates it.
    private func makeTimer(_ work: @escaping @Sendable (IntroductionServer) -> Void) -> DispatchSourceTimer {
        let timer = DispatchSource.makeTimerSource(queue: timerQueue)
        let loop = self.loop
        timer.setEventHandler { [weak self] in
            loop.execute { [weak self] in
                guard let self else { return }
                work(self)
            }
        }
        return timer
    }

    // MARK: events

    private func handle(_ event: ListenerEvent) {
        assert(loop.inLoopThread, "listener events run on the loop thread")
        switch event {
        case let .accepted(descriptor, credentials):
            accept(descriptor, credentials: credentials)
        case let .pausedForResources(error):
            logger.warning("accepting paused: out of descriptors", metadata: ["error": "\(error)"])
        case .pausedAtCapacity:
            logger.notice("accepting paused: connection cap reached",
                          metadata: ["max_clients": "\(configuration.core.limits.maxClients)"])
        case let .failed(error):
            logger.error("listening socket failed; stopping", metadata: ["error": "\(error)"])
            failed = true
            stop()
        }
        armTimer()
    }

    private func accept(_ descriptor: FileDescriptor, credentials: PeerCredentials) {
        guard state == .running else {
            descriptor.close()
            listener.connectionClosed()
            return
        }
        let id = IntroductionServerConnectionID(nextConnection)
        nextConnection += 1
        let connection: StreamConnection
        do {
            connection = try StreamConnection(
                descriptor: descriptor, loop: loop, configuration: streamConfiguration, readBuffer: readBuffer
            ) { [weak self] event in self?.handle(event, on: id)
            }
        } catch {
            // Only setNonBlocking can fail here; the client is gone or the descriptor is odd.
            descriptor.close()
            listener.connectionClosed()
            logger.warning("accepted connection unusable", metadata: ["error": "\(error)", "pid": "\(credentials.pid)"])
            return
        }
        connection.onDescriptorBackPressure = { [weak self] in self?.descriptorBackPressure() }
        connections[id] = connection
        acceptedBy[id] = listener
        perform(core.connectionAccepted(
            id, credentials: IntroductionServerCredentials(pid: credentials.pid, uid: credentials.uid, gid: credentials.gid),
            now: Self.now()))
        // Still ours unless the core refused it at once.
        if connections[id] != nil { connection.start() }
    }

    private func handle(_ event: StreamEvent, on id: IntroductionServerConnectionID) {
        assert(loop.inLoopThread, "connection events run on the loop thread")
        guard connections[id] != nil else {
            // A failure reported after the core already closed the connection.
            if case let .received(chunk) = event { for d in chunk.descriptors { d.close() } }
            return
        }
        switch event {
        case let .received(chunk):
            perform(core.received(id, bytes: chunk.bytes, descriptors: chunk.descriptors.map(held.hold), now: Self.now()))
        case .endOfStream:
            perform(core.endOfStream(id, now: Self.now()))
        case let .failed(error):
            perform(core.connectionFailed(id, reason: Self.reason(for: error), detail: error.description, now: Self.now()))
        }
        armTimer()
    }

    private func deadlineFired() {
        timerDeadline = nil
        guard state == .running else { return }
        perform(core.tick(now: Self.now()))
        armTimer()
    }

    /// C3: the socket file deleted (an over-eager cleanup) or replaced leaves a daemon alive
    /// and unreachable. Say so at error level, then re-create it atomically or stop.
    private func checkSocketPath() {
        guard state == .running, let path = listener.socket.path, let found = listener.socket.pathState(),
              found != .ours else { return }
        let what = found == .missing ? "deleted" : "replaced by another file"
        logger.error("socket path \(what)", metadata: ["path": "\(path)", "policy": "\(configuration.onSocketLoss.rawValue)"])
        guard configuration.onSocketLoss == .recreate else {
            lostSocket = true
            stop()
            return
        }
        let fresh: ListeningSocket
        do {
            fresh = try listener.socket.rebound(mode: socketMode ?? 0o600)
        } catch {
            logger.error("socket path could not be re-created; stopping", metadata: ["path": "\(path)", "error": "\(error)"])
            lostSocket = true
            stop()
            return
        }
        let old = listener
        var handler: ((ListenerEvent) -> Void)?
        listener = Listener(socket: fresh, loop: loop, configuration: old.configuration) { handler?($0) }
        handler = { [weak self] event in self?.handle(event) }
        listener.start()
        old.close()
        logger.error("socket path re-created", metadata: ["path": "\(path)"])
    }

    /// F6: a held introduction whose sender's end hung up can never be used; release it now
    /// rather than at the end of the pending lifetime.
    private func checkHangUps() {
        guard state == .running else { return }
        let pending = core.pendingDescriptors
        guard !pending.isEmpty else { return }
        let flags = FileDescriptor.hungUp(pending.map { held[$0.descriptor] })
        let gone = zip(pending, flags).filter(\.1).map(\.0.attempt)
        if !gone.isEmpty { perform(core.pendingHungUp(gone, now: Self.now())) }
    }

    /// Arms the timer for the core's next deadline, unless it already fires earlier (an early
    /// fire just finds less to do and re-arms), so the hot path rarely touches the timer.
    private func armTimer() {
        guard state == .running, let timer = deadlineTimer, let next = core.nextDeadline else { return }
        if let armed = timerDeadline, armed <= next { return }
        timerDeadline = next
        timer.schedule(deadline: DispatchTime(uptimeNanoseconds: max(next, 1)), leeway: .milliseconds(2))
    }

    // MARK: actions

    private func perform(_ actions: [IntroductionServerCore<Int>.Action]) {
        for action in actions {
            switch action {
            case let .send(id, bytes):
                guard let connection = connections[id] else { continue }
                do { try connection.send(bytes) } catch {
                    perform(core.connectionFailed(id, reason: Self.reason(for: error), detail: error.description,
                                                  now: Self.now()))
                }
            case let .forward(forward):
                self.forward(forward)
            case let .closeDescriptor(token):
                held.take(token).close()
            case let .close(id):
                lastUnread[id] = nil
                guard let connection = connections.removeValue(forKey: id) else { continue }
                connection.close()
                (acceptedBy.removeValue(forKey: id) ?? listener).connectionClosed()
            case let .audit(record):
                audit?.record(AuditEvent(record, server: auditServerID))
            case let .log(entry):
                log(entry)
            }
        }
    }

    private func forward(_ forward: IntroductionServerCore<Int>.Forward) {
        let descriptor = held.take(forward.descriptor)
        guard let connection = connections[forward.target] else {
            descriptor.close()
            perform(core.forwardFailed(forward, reason: .ioError, detail: "target connection already closed", now: Self.now()))
            return
        }
        do {
            // The record as plain bytes, then the marker alone carrying the descriptor: the
            // segments Goblins reads them from (wire §5), both in one sendmmsg when the socket
            // takes them. StreamConnection closes our copy once the kernel has it (A10), or on
            // any failure.
            try connection.send(forward.record, then: UDSNewConnection.fdMarker, passing: descriptor)
        } catch {
            descriptor.close()  // idempotent: the failed send already closed it
            perform(core.forwardFailed(forward, reason: Self.reason(for: error), detail: error.description,
                                       now: Self.now()))
            return
        }
        let output = connection.outputState
        noteProgress(of: forward.target, output)
        // A12: `introduction.forwarded` only once the kernel has the descriptor; a send that
        // fails later (the target reset, ETOOMANYREFS that never clears before a close) is
        // audited as refused with its reason. Usually the kernel took it all just now.
        if let output, output.unsentBytes == 0 {
            forwardFlushed(forward, error: nil)
            return
        }
        connection.whenFlushed { [weak self] error in
            guard let self else { return }
            forwardFlushed(forward, error: error)
            armTimer()
        }
    }

    private func forwardFlushed(_ forward: IntroductionServerCore<Int>.Forward, error: TransportError?) {
        if let since = backPressureSince {
            logger.notice("forwarding resumed", metadata: ["paused_ms": "\((Self.now() &- since) / 1_000_000)"])
            backPressureSince = nil
        }
        if let error {
            perform(core.forwardFailed(forward, reason: Self.reason(for: error), detail: error.description, now: Self.now()))
        } else {
            perform(core.forwardSucceeded(forward, now: Self.now()))
        }
    }

    /// A12: each forward adds to the target's unread output (SIOCOUTQ), so if it did not grow
    /// since the previous forward, the target read in between. Measured only when nothing waits
    /// in our own queue (then the kernel has everything we sent).
    private func noteProgress(of target: IntroductionServerConnectionID, _ output: StreamConnection.OutputState?) {
        guard let output, output.unsentBytes == 0, let unread = output.peerUnreadBytes else {
            lastUnread[target] = nil
            return
        }
        if unread == 0 || lastUnread[target].map({ unread <= $0 }) == true { core.targetRead(target) }
        lastUnread[target] = unread
    }

    /// Asked by the core at a target's in-flight cap: has it read everything, or anything since
    /// our last forward to it?
    private func targetReadSinceLastForward(_ target: IntroductionServerConnectionID) -> Bool {
        guard let connection = connections[target] else { return false }
        if connection.peerHasReadEverything { return true }
        guard connection.pendingOutputBytes == 0, let unread = connection.peerUnreadBytes,
              let last = lastUnread[target] else { return false }
        return unread < last
    }

    /// K7: ETOOMANYREFS means this uid's descriptors in flight exceed RLIMIT_NOFILE. It is the
    /// whole daemon's back-pressure, not the target's fault: the send waits and retries (in
    /// StreamConnection), and this logs the pause once.
    private func descriptorBackPressure() {
        guard backPressureSince == nil else { return }
        backPressureSince = Self.now()
        logger.warning("forwarding paused: descriptors in flight exceed RLIMIT_NOFILE (ETOOMANYREFS); retrying as targets read")
    }

    private func log(_ entry: IntroductionServerLogEntry) {
        let level = Self.level(entry.level)
        guard logger.logLevel <= level else { return }
        var metadata: Logger.Metadata = [:]
        if let c = entry.connection { metadata["connection"] = "\(c)" }
        if let p = entry.peer { metadata["peer"] = "\(p.fingerprint)" }
        if let t = entry.target { metadata["target"] = "\(t.fingerprint)" }
        if let c = entry.credentials {
            metadata["pid"] = "\(c.pid)"
            metadata["uid"] = "\(c.uid)"
            metadata["gid"] = "\(c.gid)"
        }
        if let r = entry.reason { metadata["reason"] = "\(r.rawValue)" }
        if let d = entry.detail { metadata["detail"] = "\(d)" }
        logger.log(level: level, "\(entry.message)", metadata: metadata)
    }

    // MARK: mapping

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    static func checkDescriptor(_ descriptor: FileDescriptor) -> IntroductionServerDescriptorVerdict {
        do throws(TransportError) {
            // fstat/getsockopt/getsockname/getpeername only: the passed descriptor's flags are
            // shared with the sender and are never changed (A8).
            try descriptor.validateAsConnectedUnixStream(requireUnnamed: true)
            return .acceptable
        } catch {
            return .refused(description: error.descriptorKind?.description ?? error.description)
        }
    }

    static func reason(for error: TransportError) -> IntroductionServerReason {
        switch error.code {
        case .outputQueueFull: return .outputOverflow
        case .controlTruncated, .unexpectedDescriptors: return .extraFds
        case .descriptorExpected: return .fdMissing
        case .unexpectedDescriptorKind: return .fdInvalid
        case .connectionReset: return .peerReset
        case .systemCallFailed, .closed, .invalidPath, .alreadyRunning, .addressInUse, .pathOccupied,
             .connectionRefused, .noSuchPath, .permissionDenied, .timedOut, .invalidEnvironment, .limitExceeded:
            return .ioError
        }
    }

    static func reason(for error: any Error) -> IntroductionServerReason {
        (error as? TransportError).map { reason(for: $0) } ?? .ioError
    }

    static func level(_ level: IntroductionServerLogEntry.Level) -> Logger.Level {
        switch level {
        case .debug: return .debug
        case .info: return .info
        case .notice: return .notice
        case .warning: return .warning
        case .error: return .error
        }
    }

    static func dispatchInterval(_ duration: Duration) -> DispatchTimeInterval {
        let (seconds, attoseconds) = duration.components
        return .nanoseconds(Int(clamping: seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
    }
}

extension AuditEvent {
    /// The audit event for one core record, written by the server `server`.
    init(_ record: IntroductionServerAuditRecord, server: AuditPeerID) {
        let kind: AuditEventKind
        switch record.kind {
        case .registrationAccepted: kind = .registrationAccepted
        case .registrationRefused: kind = .registrationRefused
        case .introductionRequested: kind = .introductionRequested
        case .introductionQueued: kind = .introductionQueued
        case .introductionForwarded: kind = .introductionForwarded
        case .introductionExpired: kind = .introductionExpired
        case .introductionRefused: kind = .introductionRefused
        case .extraDescriptorsClosed: kind = .descriptorsClosed
        }
        self.init(
            kind, reason: record.reason.map(AuditReason.init(introductionServer:)),
            attempt: AuditAttemptID(rawValue: record.attempt), role: .server, local: server,
            expectedPeer: record.claimed.map(AuditPeerID.init), provedPeer: record.proved.map(AuditPeerID.init),
            from: record.from.map(AuditPeerID.init), to: record.to.map(AuditPeerID.init),
            credentials: record.credentials.map { AuditPeerCredentials(pid: $0.pid, uid: $0.uid, gid: $0.gid) },
            durationMicros: record.durationNanoseconds.map { $0 / 1000 },
            descriptorKinds: record.descriptorKinds.flatMap(AuditDescriptorKinds.init))
        incumbentCredentials = record.incumbentCredentials.map { AuditPeerCredentials(pid: $0.pid, uid: $0.uid, gid: $0.gid) }
    }
}
