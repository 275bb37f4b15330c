import Audit
import Dispatch
import Identity
import Logging
import OCapN
import SecureChannel
import Synchronization
import Transport

/// How a channel ended.
public struct ChannelCloseSummary: Sendable, Equatable {
    /// Both sides sent an authenticated CLOSE (never true for a legacy channel).
    public let clean: Bool
    /// Why it was not clean (nil when clean).
    public let reason: PeerError?
    public let bytesSent: UInt64
    public let bytesReceived: UInt64
    public let messagesSent: UInt64
    public let messagesReceived: UInt64
}

/// A message channel to one peer over an introduced socket.
///
/// Made by `ChannelEstablishment` (or `PeerNetlayer`) only after the handshake: when
/// `isAuthenticated` is true, `verifiedPeer` is the key the peer *proved* (never the
/// introduction server's claim) and every message is encrypted and authenticated. A channel
/// admitted by the legacy opt-in (a Goblins peer) has `isAuthenticated == false`, no
/// `verifiedPeer`, and carries raw bytes whose read boundaries mean nothing.
///
/// Messages are 1…`maxMessageSize` bytes; larger ones are refused (`messageTooLarge`), each is
/// split into frames and reassembled by the receiver. `send` suspends while the outbound queue
/// is over its bound; the runtime stops reading while the inbound queue is full. `close()` sends
/// the authenticated CLOSE and waits for the peer's; an end without it is reported as
/// `truncated`. Dropping a channel without closing it aborts it. Thread-safe.
public final class PeerChannel: Sendable, CustomStringConvertible {
    /// False only for a legacy peer admitted by `allowLegacyPeers`.
    public let isAuthenticated: Bool
    /// The key the peer proved in the handshake; nil for a legacy channel.
    public let verifiedPeer: VerifiedPeer?
    /// The key the handshake was run against (`to` for an initiator, `from` for a responder)
    /// and proved; nil for a legacy channel, whose claim is only in `legacyClaim`.
    public let expectedPeer: PublicIdentity?
    /// A legacy channel: what the introduction server claimed, never a proved identity.
    public let legacyClaim: UnverifiedPeerClaim?
    public let role: HandshakeRole
    /// Public session label (both sides compute the same); nil for a legacy channel.
    public let sessionID: SessionID?
    /// The handshake hash HH (channel binding); nil for a legacy channel.
    public let handshakeHash: [UInt8]?
    public let introduction: IntroductionContext
    let engine: ChannelEngine

    init(engine: ChannelEngine, session: EstablishedSession?) {
        self.engine = engine
        isAuthenticated = session != nil
        verifiedPeer = session?.peer
        expectedPeer = session == nil ? nil : engine.facts.expected
        legacyClaim = session == nil ? engine.facts.legacyClaim : nil
        role = engine.facts.role
        sessionID = session?.sessionID
        handshakeHash = session?.handshakeHash
        introduction = engine.facts.introduction
    }

    deinit { engine.abandon() }

    /// Fingerprint of the verified peer, or `unauthenticated` for a legacy channel.
    public var peerFingerprint: String { verifiedPeer?.fingerprint ?? "unauthenticated" }

    public var description: String {
        "PeerChannel(\(role.rawValue), peer \(peerFingerprint), session \(sessionID?.description ?? "none"))"
    }

    /// Sends one message (1…maxMessageSize bytes). Suspends while the outbound queue is over
    /// its bound. Throws `messageTooLarge` (the channel stays usable), the error that ended the
    /// channel, or `channelClosed` after `close()`.
    public func send(_ message: [UInt8]) async throws(PeerError) {
        precondition(!message.isEmpty, "messages are at least one byte (PROTOCOL.md §6.3)")
        // Fast path on the caller's thread (queue.sync runs there when the queue is free):
        // seal and write without a thread hop; suspend only while the outbound queue is full.
        let engine = self.engine
        try await finishSend(engine.queue.sync(execute: { engine.trySend(message) }))
    }

    /// Sends `messages` (each 1…maxMessageSize bytes) in order, sealed together and written
    /// with one `sendmsg` where `send` makes one per message: the shape for an application
    /// that streams (it has several messages at hand, or collects them briefly). On the wire
    /// and to the receiver they are the same messages as sent one by one. Suspends while the
    /// outbound queue is over its bound. Throws `messageTooLarge` before sealing any when one
    /// is too large (the channel stays usable), else like `send`.
    public func send(contentsOf messages: [[UInt8]]) async throws(PeerError) {
        precondition(messages.allSatisfy { !$0.isEmpty }, "messages are at least one byte (PROTOCOL.md §6.3)")
        guard !messages.isEmpty else { return }
        let engine = self.engine
        try await finishSend(engine.queue.sync(execute: { engine.trySend(contentsOf: messages) }))
    }

    /// After the fast path's attempt: done, failed, or suspended until the outbound queue has room.
    private func finishSend(_ attempt: ChannelEngine.Attempt<Void>) async throws(PeerError) {
        switch attempt {
        case .done: return
        case .failed(let error): throw error
        case .wait:
            let engine = self.engine
            try await PeerError.catching {
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                    engine.queue.sync { engine.awaitOutboundSpace(c) }
                }
            }
        }
    }

    /// The next message; nil once the peer closed cleanly (authenticated CLOSE) or after our
    /// own clean close. Throws the error that ended the channel (`truncated` when the stream
    /// ended without CLOSE, `decryptFailed` on tampering, …). Messages that arrived before an
    /// error are still delivered first.
    public func receive() async throws(PeerError) -> [UInt8]? {
        let engine = self.engine
        switch engine.queue.sync(execute: { engine.tryReceive() }) {
        case .done(let message): return message
        case .failed(let error): throw error
        case .wait:
            return try await PeerError.catching {
                // Registered on the caller's thread: no hop through a worker before waiting.
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<[UInt8]?, Error>) in
                    // On the caller's thread too: the waiter is in place without a thread hop.
                    engine.queue.sync { engine.receive(completion: c) }
                }
            }
        }
    }

    /// The received messages as an asynchronous sequence (ends at the peer's clean close).
    public var messages: Messages { Messages(channel: self) }

    /// What `deliver(to:)` hands its handler.
    public enum Delivery: Sendable {
        case message([UInt8])
        /// The channel ended: nil after a clean close (the peer's CLOSE, or our own close),
        /// else the error that ended it. Always the last delivery.
        case ended(PeerError?)
    }

    /// Delivers every message, then the end, to `handler` on the channel's event-loop thread,
    /// in order and without a continuation per message: the shape for a consumer that answers
    /// at once (an echo, a forwarder). Messages already queued are delivered first. Call it at
    /// most once, and use neither `receive()` nor `messages` afterwards.
    ///
    /// The handler must not block (the loop serves other channels meanwhile); it may call
    /// `sendNow` and the other methods of this channel. While the outbound queue is over its
    /// bound after a `sendNow`, reading pauses, so a peer that never reads its answers cannot
    /// make us queue without limit.
    public func deliver(to handler: @escaping @Sendable (Delivery) -> Void) {
        engine.installHandler(handler)
    }

    /// Sends one message without suspending: sealed and written at once on the caller's
    /// thread, or queued. Returns false when the outbound queue is now over its bound (the
    /// message is queued; a handler's reading pauses until it drains). Throws like `send`.
    @discardableResult
    public func sendNow(_ message: [UInt8]) throws(PeerError) -> Bool {
        precondition(!message.isEmpty, "messages are at least one byte (PROTOCOL.md §6.3)")
        let engine = self.engine
        switch engine.queue.sync(execute: { engine.trySend(message, pauseReadingWhenFull: true) }) {
        case .done: return true
        case .wait: return false
        case .failed(let error): throw error
        }
    }

    /// Sends CLOSE, waits (up to the close timeout) for the peer's CLOSE, then releases the
    /// socket. Idempotent: later calls return the same summary.
    @discardableResult
    public func close() async -> ChannelCloseSummary {
        await withCheckedContinuation { (c: CheckedContinuation<ChannelCloseSummary, Never>) in
            // CLOSE is sealed and written on the caller's thread, without a hop.
            engine.queue.sync { self.engine.close(completion: c) }
        }
    }

    /// Ends the channel at once without CLOSE (the peer sees `truncated`).
    public func abort() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            engine.queue.async {
                self.engine.abort()
                c.resume()
            }
        }
    }

    /// The messages of a channel, in order.
    public struct Messages: AsyncSequence, Sendable {
        public typealias Element = [UInt8]
        let channel: PeerChannel

        public func makeAsyncIterator() -> Iterator { Iterator(channel: channel) }

        public struct Iterator: AsyncIteratorProtocol {
            let channel: PeerChannel
            public mutating func next() async throws(PeerError) -> [UInt8]? { try await channel.receive() }
            public mutating func next(isolation actor: isolated (any Actor)?) async throws(PeerError) -> [UInt8]? {
                try await channel.receive()
            }
        }
    }
}

extension PeerError {
    /// Runs an untyped-throwing continuation body whose only error is a `PeerError`.
    static func catching<R>(_ body: () async throws -> R) async throws(PeerError) -> R {
        do {
            return try await body()
        } catch let error as PeerError {
            throw error
        } catch {
            preconditionFailure("unexpected error type \(type(of: error))")
        }
    }
}

/// The I/O engine under one socket: feeds socket readiness, timers and application calls to
/// the channel's sans-IO `ChannelMachine` and carries out its actions, on one serial queue with
/// one `ChannelSocket` registered with one of the process's event loops (no thread per
/// connection). During the handshake readiness is handed to the queue (a worker), so its
/// crypto never stalls the loop; once open, it is handled on the loop thread under the queue. The handshake, the framed channel and every
/// closing state are the machine's; the engine holds only what is about I/O and the
/// application: read back-pressure, the inbound queue, the waiters, logs and audit records.
///
/// Every mutable field is touched only on `queue` (`@unchecked Sendable` rests on that).
/// The socket's handlers hold the engine strongly until the machine's `.closeDescriptor`, so a
/// socket is never silently dropped.
final class ChannelEngine: @unchecked Sendable {
    struct Environment: Sendable {
        let configuration: ChannelRuntimeConfiguration
        let limiter: HandshakeLimiter
        let audit: (any AuditSink)?
        let logger: Logger
        let verifiedPeers: VerifiedPeerMemory
    }

    let queue: DispatchQueue
    let facts: ChannelFacts
    /// nil only when the descriptor was already closed when the engine was made.
    private let socket: ChannelSocket?
    private var machine: ChannelMachine
    /// Actions of the event being handled, reused across events.
    private var actions: [ChannelMachine.Action] = []
    private var processing = false
    private let environment: Environment
    private var configuration: ChannelRuntimeConfiguration { environment.configuration }
    private var logger: Logger
    private let started = ContinuousClock.now
    private var establishedAt: ContinuousClock.Instant?

    /// The machine's deadline as a timer of the socket's event loop (set up and cancelled
    /// without a thread hop or a kernel timer).
    private var timer: EventLoopTimer?
    private var timerDeadline: ContinuousClock.Instant?
    private var holdsHandshakeSlot = true
    /// Reading stopped because the inbound queue is full (back-pressure).
    private var readPaused = false
    /// The socket reported end of stream: level-triggered readiness would fire forever.
    private var endOfStream = false
    /// Bytes per read: starts small and doubles while reads fill it (memory follows use).
    private var readChunk: Int

    /// Set by `deliver(to:)`: messages go to it on the loop thread instead of the queue below.
    private var deliveryHandler: (@Sendable (PeerChannel.Delivery) -> Void)?
    private var handlerBatch: [PeerChannel.Delivery] = []
    /// The previous batch's storage, handed back after delivery: batches alternate between two
    /// arrays instead of copying one on write per batch.
    private var spareBatch: [PeerChannel.Delivery] = []
    private var drainScheduled = false
    /// A thread is in `drain()`: deliveries are made by one thread at a time, in order.
    private var draining = false
    private var endDelivered = false
    /// Reading paused because a handler's answers are over the outbound bound.
    private var outputPaused = false

    /// A write would block: sends only queue until the writable watch writes it all at once.
    private var writeBlocked = false
    /// Set while a readable event is handled: waiting receivers are answered once, at its end.
    private var readingBatch = false

    private var inbound: [[UInt8]] = []
    private var inboundHead = 0
    private var inboundBytes = 0

    /// Told the handshake's outcome once, on the queue.
    private var establishCompletion: (@Sendable (Result<PeerChannel, PeerError>) -> Void)?
    /// The outcome, held until the event's actions are carried out: the machine reports the
    /// session before msg3 is written, and waking the application first delayed msg3 (and the
    /// first message behind it) by a context switch.
    private var establishOutcome: Result<PeerChannel, PeerError>?
    private var receiveWaiters: [CheckedContinuation<[UInt8]?, Error>] = []
    private var sendWaiters: [CheckedContinuation<Void, Error>] = []
    private var closeWaiters: [CheckedContinuation<ChannelCloseSummary, Never>] = []

    private var session: EstablishedSession?
    /// What a local abort or cancellation reports (the machine only knows it was aborted).
    private var localEnd: (error: PeerError, reason: AuditReason)?
    private var failure: PeerError?
    private var summary: ChannelCloseSummary?
    /// Set once `summary` is: lets `abandon` skip its hop to the queue for a channel that
    /// already ended (the usual case: closed, then released).
    private let hasEnded = Atomic<Bool>(false)

    /// Smallest read: a handshake message or a few small frames.
    static let initialReadChunk = 1024

    init(socket: FileDescriptor, machine: ChannelMachine, facts: ChannelFacts, environment: Environment) {
        let queue = DispatchQueue(label: "ocapn-uds.channel", target: .global(qos: .userInitiated))
        self.queue = queue
        self.socket = try? ChannelSocket(descriptor: socket, queue: queue)
        self.machine = machine
        self.facts = facts
        self.environment = environment
        readChunk = min(Self.initialReadChunk, environment.configuration.readChunkSize)
        var log = environment.logger
        facts.annotate(&log)
        logger = log
    }

    // MARK: establishment

    /// Starts the I/O and waits for the handshake's outcome. The waiting task handles the
    /// handshake's readiness itself (the initiator's msg2 and its crypto): the loop wakes it
    /// once per event, where a worker would be woken first and then the task.
    func establish() async throws(PeerError) -> PeerChannel {
        let mailbox = HandshakeMailbox()
        socket?.setHandOff { work in mailbox.post(work) }
        start { outcome in
            // Later readiness, if any, goes to the workers: this task stops taking it.
            self.socket?.setHandOff(nil)
            mailbox.finish(outcome)
        }
        while true {
            switch await mailbox.next() {
            case .work(let work):
                work()
            case .outcome(let outcome):
                return try outcome.get()
            }
        }
    }

    /// Starts the I/O on the caller's thread (no hop: the start is a few system calls, and the
    /// initiator's msg1 is written at once); `completion` learns the outcome on the queue, or
    /// at once when the socket was already closed. Called once.
    func start(_ completion: @escaping @Sendable (Result<PeerChannel, PeerError>) -> Void) {
        queue.sync { begin(completion) }
    }

    private func begin(_ completion: @escaping @Sendable (Result<PeerChannel, PeerError>) -> Void) {
        establishCompletion = completion
        environment.audit?.record(facts.event(.handshakeStarted))
        logger.debug("handshake started")
        guard let socket else {
            localEnd = (PeerError(.ioError, "socket closed before the handshake"), .netlayer(.ioError))
            step(.abort)
            return
        }
        if let size = configuration.socketSendBufferSize {
            // A deeper kernel buffer lets the sender seal ahead while the receiver opens, with
            // fewer wake-ups per message. It is a property of our own end only.
            try? socket.setSendBufferSize(size)
        }
        // The initiator's msg1 is already queued in the machine.
        actions.append(.write)
        process()
    }

    // MARK: the machine

    private func step(_ event: ChannelMachine.Event) {
        machine.handle(event, into: &actions)
        process()
    }

    /// Carries out the queued actions (including those they cause), then brings the socket's
    /// watches and the timer in line with the machine.
    private func process() {
        guard !processing else { return }
        processing = true
        var i = 0
        while i < actions.count {
            let action = actions[i]
            i += 1
            perform(action)
        }
        actions.removeAll(keepingCapacity: actions.capacity <= 16)
        processing = false
        updateWatches()
        updateTimer()
        if let outcome = establishOutcome, let completion = establishCompletion {
            establishOutcome = nil
            establishCompletion = nil
            completion(outcome)
        }
    }

    private func perform(_ action: ChannelMachine.Action) {
        switch action {
        case .write:
            flush()
        case .shutDownWrite:
            try? socket?.shutDownWrite()
        case .deliver(let message):
            enqueueInbound(message)
        case .fact(.established(let session)):
            established(session)
        case .fact(.legacyAdmitted):
            legacyAdmitted()
        case .fact(.peerClosed):
            logger.debug("peer sent CLOSE")
            wakeReceivers()
        case .fact(.ended(let end, let wasOpen)):
            ended(end, wasOpen: wasOpen)
        case .closeDescriptor:
            socket?.close()
        }
    }

    private func updateWatches() {
        guard let socket, !socket.isClosed else { return }
        if machine.wantsToRead && !readPaused && !outputPaused && !endOfStream {
            // The handler holds the engine until the machine closes the descriptor, so a
            // handshake in progress (which nothing else holds) is never dropped. Made only
            // when not watching yet: this runs after every event.
            guard !socket.isWatchingReadable else { return }
            socket.watchReadable { self.handleReadable() }
        } else {
            socket.watchReadable(nil)
        }
    }

    private func updateTimer() {
        let wanted: ContinuousClock.Instant?
        switch (machine.deadline, machine.releaseDeadline) {
        case (let a?, let b?): wanted = min(a, b)
        case (let a?, nil): wanted = a
        case (nil, let b?): wanted = b
        case (nil, nil): wanted = nil
        }
        switch (wanted, timerDeadline) {
        case (nil, nil): return
        case (let a?, let b?) where a == b: return
        default: break
        }
        timerDeadline = wanted
        timer?.cancel()
        timer = nil
        guard let wanted, let socket else { return }
        // Runs on the loop thread; the machine is the queue's, which a handshake's crypto may
        // hold, so the deadline (the rare path) goes there. The timer holds the engine until it
        // runs or is cancelled; an early or stale deadline is harmless to the machine.
        timer = socket.loop.schedule(at: wanted) {
            self.queue.async { self.timerFired() }
        }
    }

    private func timerFired() {
        // The timer has run: a deadline the machine still holds after this step is armed again.
        timer = nil
        timerDeadline = nil
        step(.deadline(.now))
        // The idle release gave the grown buffers back: reads start small again too.
        if machine.releaseDeadline == nil { readChunk = min(Self.initialReadChunk, configuration.readChunkSize) }
    }

    private func established(_ session: EstablishedSession) {
        self.session = session
        // The crypto-heavy part is over: from now on readiness is handled on the loop thread.
        socket?.handleReadinessOnLoopThread(true)
        environment.verifiedPeers.remember(session.peer.publicKey)
        leaveHandshake()
        let now = ContinuousClock.now
        establishedAt = now
        logger[metadataKey: "peer"] = .stringConvertible(FingerprintMetadata(publicKey: session.peer.publicKey))
        logger[metadataKey: "session"] = .stringConvertible(session.sessionID)
        environment.audit?.record(facts.event(
            .handshakeSucceeded, proved: session.peer.publicKey, handshakeHash: session.handshakeHash,
            session: session.sessionID, durationMicros: Self.micros(started.duration(to: now))))
        logger.info("handshake succeeded")
        establishOutcome = .success(PeerChannel(engine: self, session: session))
    }

    private func legacyAdmitted() {
        let claim = facts.legacyClaim
        leaveHandshake()
        socket?.handleReadinessOnLoopThread(true)
        establishedAt = ContinuousClock.now
        logger.warning("legacy peer admitted WITHOUT authentication (allowLegacyPeers)", metadata: ["claim": "\(claim)"])
        environment.audit?.record(facts.legacyEvent(.legacyPeerAdmitted))
        establishOutcome = .success(PeerChannel(engine: self, session: nil))
    }

    private func leaveHandshake() {
        if holdsHandshakeSlot {
            holdsHandshakeSlot = false
            environment.limiter.release()
        }
    }

    // MARK: reading

    private func handleReadable() {
        guard let socket else { return }
        let outer = !readingBatch
        readingBatch = true
        defer {
            if outer {
                readingBatch = false
                answerReceivers()
            }
        }
        for _ in 0..<configuration.readsPerEvent {
            guard machine.wantsToRead, !readPaused, !outputPaused, !endOfStream else { return }
            let chunk = readChunk
            let result = machine.read(chunk: chunk, into: &actions) { buffer in
                readCalls += 1
                do throws(TransportError) {
                    switch try socket.receive(into: buffer) {
                    case .wouldBlock: return .wouldBlock
                    case .processed(0): return .endOfStream
                    case .processed(let n): return .bytes(n)
                    }
                } catch where error.code == .connectionReset {
                    // A reset is an end of stream without CLOSE, like EOF: `truncated` unless
                    // the peer's CLOSE already arrived.
                    return .endOfStream
                } catch {
                    return .failed(PeerError.transport(error, "read").detail)
                }
            }
            if case .endOfStream = result { endOfStream = true }
            process()
            guard case .bytes(let n) = result else {
                // Nothing more to read now: reads shrink back toward their start as traffic does.
                if readChunk > Self.initialReadChunk { readChunk = max(Self.initialReadChunk, readChunk / 2) }
                return
            }
            // A short read emptied the socket: what it brought is delivered now (the handler
            // runs after this event) rather than after a read that would only say EAGAIN; if
            // the peer wrote meanwhile, the level-triggered loop reports it at once.
            guard n == chunk else {
                if readChunk > Self.initialReadChunk { readChunk = max(Self.initialReadChunk, readChunk / 2) }
                return
            }
            if chunk < configuration.readChunkSize { readChunk = min(chunk * 2, configuration.readChunkSize) }
        }
    }

    /// Hands queued messages to waiting receivers: once per readable event rather than once per
    /// message, so a woken task takes the rest of the batch without waiting again.
    private func answerReceivers() {
        while !receiveWaiters.isEmpty, let message = takeQueued() {
            receiveWaiters.removeFirst().resume(returning: message)
        }
    }

    private func enqueueInbound(_ message: [UInt8]) {
        if deliveryHandler != nil {
            handlerBatch.append(.message(message))
            scheduleDrain()
            return
        }
        if !readingBatch, let waiter = receiveWaiters.first, inboundHead == inbound.count {
            receiveWaiters.removeFirst()
            waiter.resume(returning: message)
            return
        }
        inbound.append(message)
        inboundBytes += message.count
        if inboundBytes >= configuration.maxInboundQueuedBytes || inbound.count - inboundHead >= configuration.maxInboundQueuedMessages {
            readPaused = true
        }
    }

    /// Receivers waiting with nothing queued learn that the stream ended.
    private func wakeReceivers() {
        if deliveryHandler != nil, !endDelivered, inboundHead == inbound.count, machine.peerFinished || summary != nil {
            endDelivered = true
            handlerBatch.append(.ended(failure))
            scheduleDrain()
        }
        guard inboundHead == inbound.count else { return }
        let waiters = receiveWaiters
        receiveWaiters = []
        for waiter in waiters {
            if let failure { waiter.resume(throwing: failure) } else { waiter.resume(returning: nil) }
        }
    }

    /// Whether the event loop watches the socket for us now (tests: a finished channel never does).
    var isWatchingDescriptor: Bool { socket?.isWatching ?? false }
    /// How the channel ended; nil while it is open (on the queue).
    var closeSummary: ChannelCloseSummary? { summary }

    /// The loop timer of the machine's deadline now (tests).
    var deadlineTimer: EventLoopTimer? { timer }

    /// Whether reading is paused because the inbound queue is full (tests).
    var isReadingPaused: Bool { readPaused }

    /// Whether reading is paused because a handler's answers are over the outbound bound (tests).
    var isReadingPausedForOutput: Bool { outputPaused }

    /// Whether the caller runs on the thread of the channel's event loop (tests).
    var callerIsOnLoopThread: Bool { socket?.loop.inLoopThread ?? false }

    /// Bytes sealed and not yet written (tests).
    var pendingOutputBytes: Int { machine.pendingOutputCount }

    /// Whether a write would block and sends only queue until the socket is writable (tests).
    var isWriteBlocked: Bool { writeBlocked }

    /// `sendmsg` calls so far, would-block ones included (tests: frames coalesce).
    private(set) var writeCalls = 0

    /// `recvmsg` calls so far, would-block ones included (tests: no read that only says EAGAIN
    /// stands between a message and its delivery).
    private(set) var readCalls = 0

    /// Buffer memory of the machine (tests: memory follows use).
    var heldBufferBytes: Int { machine.heldBufferBytes }

    /// Bytes the next read asks for (tests: reads start small again once idle).
    var currentReadChunk: Int { readChunk }

    /// Receivers waiting in `receive()` (tests).
    var waitingReceivers: Int { receiveWaiters.count }

    /// Takes a queued message, or reports the end, without waiting. With nothing queued it
    /// reads the socket once on the caller's thread first, so a message already in the kernel
    /// reaches the application without waiting for a readiness event and a thread hop.
    func tryReceive() -> Attempt<[UInt8]?> {
        precondition(deliveryHandler == nil && !endDelivered, "receive() on a channel that delivers to a handler")
        if let message = takeQueued() { return .done(message) }
        if receiveWaiters.isEmpty, machine.isEstablished, machine.wantsToRead, !readPaused, !endOfStream {
            handleReadable()
            if let message = takeQueued() { return .done(message) }
        }
        if let failure { return .failed(failure) }
        if machine.peerFinished || summary != nil { return .done(nil) }
        return .wait
    }

    // MARK: the handler

    func installHandler(_ handler: @escaping @Sendable (PeerChannel.Delivery) -> Void) {
        guard let socket else {
            handler(.ended(PeerError(.ioError, "socket closed before the handshake")))
            return
        }
        let installed = socket.loop.execute {
            self.queue.sync {
                precondition(self.deliveryHandler == nil, "deliver(to:) called twice")
                self.deliveryHandler = handler
                // Queued messages first, in order; then reading resumes if the queue paused it.
                while let message = self.takeQueued() { self.handlerBatch.append(.message(message)) }
                self.drainScheduled = true
                socket.setAfterReadiness { self.drain() }
                self.wakeReceivers()
                self.updateWatches()
            }
            self.drain()
        }
        if !installed {
            handler(.ended(PeerError(.channelClosed, "the event loop was shut down")))
        }
    }

    /// On the queue, from the establishment's completion (a responder's accept handler): the
    /// handler is in place before any message past the handshake is read. What the handshake's
    /// last read brought is delivered when that readiness event ends, on its thread, without a
    /// hop to the loop.
    func installHandlerAtEstablishment(_ handler: @escaping @Sendable (PeerChannel.Delivery) -> Void) {
        precondition(deliveryHandler == nil, "deliver(to:) called twice")
        guard let socket else { preconditionFailure("an established channel has its socket") }
        deliveryHandler = handler
        while let message = takeQueued() { handlerBatch.append(.message(message)) }
        socket.setAfterReadiness { self.drain() }
        wakeReceivers()
        updateWatches()
        if !handlerBatch.isEmpty { scheduleDrain() }
    }

    /// On the queue: makes sure `handlerBatch` is delivered soon.
    private func scheduleDrain() {
        guard !drainScheduled, let socket else { return }
        drainScheduled = true
        // Handling readiness now: its after-readiness call drains.
        if socket.isHandlingReadiness { return }
        socket.loop.execute { self.drain() }
    }

    /// Outside the queue (on the loop thread, or on the thread that finished the handshake):
    /// hands the batch to the handler, repeatedly, until nothing is left (the handler's own
    /// calls may add to it). One thread at a time: a second caller leaves it to the first.
    private func drain() {
        // Two arrays take turns: the delivered batch's storage, emptied, collects the next one,
        // so no batch is copied on write or allocated anew.
        var batch: [PeerChannel.Delivery] = []
        var claimed = false
        while true {
            batch.removeAll(keepingCapacity: batch.capacity <= 64)
            let handler = queue.sync { () -> (@Sendable (PeerChannel.Delivery) -> Void)? in
                if !claimed {
                    guard !draining else { return nil }
                    draining = true
                    claimed = true
                }
                guard !handlerBatch.isEmpty, let handler = deliveryHandler else {
                    drainScheduled = false
                    draining = false
                    if spareBatch.capacity < batch.capacity { swap(&spareBatch, &batch) }
                    return nil
                }
                if batch.capacity == 0 { swap(&batch, &spareBatch) }
                swap(&batch, &handlerBatch)
                return handler
            }
            guard let handler else { return }
            for delivery in batch {
                handler(delivery)
                if case .ended = delivery {
                    // The end is the last delivery: drop the handler (it usually holds the channel).
                    queue.sync {
                        deliveryHandler = nil
                        handlerBatch = []
                        drainScheduled = false
                        draining = false
                        socket?.setAfterReadiness(nil)
                    }
                    return
                }
            }
        }
    }

    private func takeQueued() -> [UInt8]? {
        guard inboundHead < inbound.count else { return nil }
        let message = inbound[inboundHead]
        inbound[inboundHead] = []
        inboundHead += 1
        inboundBytes -= message.count
        if inboundHead == inbound.count {
            inbound.removeAll(keepingCapacity: inbound.capacity <= 64)
            inboundHead = 0
        }
        if readPaused, inboundBytes < configuration.maxInboundQueuedBytes,
           inbound.count - inboundHead < configuration.maxInboundQueuedMessages {
            readPaused = false
            // Only watches again while the machine still wants bytes: never once it ended.
            updateWatches()
        }
        return message
    }

    func receive(completion: CheckedContinuation<[UInt8]?, Error>) {
        switch tryReceive() {
        case .done(let message): completion.resume(returning: message)
        case .failed(let error): completion.resume(throwing: error)
        case .wait: receiveWaiters.append(completion)
        }
    }

    // MARK: writing

    /// What a fast-path call on the queue decided.
    enum Attempt<Value> {
        case done(Value)
        case failed(PeerError)
        /// Nothing to return yet: wait with a continuation.
        case wait
    }

    /// Seals and writes `message` at once; `.wait` when the outbound queue is now over its bound
    /// (the message is queued; the caller waits for space).
    func trySend(_ message: [UInt8], pauseReadingWhenFull: Bool = false) -> Attempt<Void> {
        let outcome = message.withUnsafeBytes { machine.send($0, into: &actions) }
        switch outcome {
        case .queued:
            process()
        case .tooLarge(let limit):
            return .failed(PeerError(.messageTooLarge, "message of \(message.count) bytes exceeds maxMessageSize \(limit)"))
        case .notOpen:
            process()
            return .failed(failure ?? PeerError(.channelClosed, "send after close"))
        }
        if summary != nil {
            return .failed(failure ?? PeerError(.channelClosed, "channel ended during send"))
        }
        guard machine.pendingOutputCount > configuration.maxOutboundQueuedBytes else { return .done(()) }
        if pauseReadingWhenFull, !outputPaused {
            outputPaused = true
            updateWatches()
        }
        return .wait
    }

    /// Seals every message into the output, then writes them together (one `sendmsg` for all
    /// unless the socket takes less). `.wait` as for `trySend`.
    func trySend(contentsOf messages: [[UInt8]]) -> Attempt<Void> {
        if let limit = machine.maxMessageSize, let large = messages.first(where: { $0.count > limit }) {
            return .failed(PeerError(.messageTooLarge, "message of \(large.count) bytes exceeds maxMessageSize \(limit)"))
        }
        // The write actions of all but the first are dropped: the first flush writes them all.
        let firstAction = actions.count
        for message in messages {
            let outcome = message.withUnsafeBytes { machine.send($0, into: &actions) }
            switch outcome {
            case .queued:
                if actions.count > firstAction + 1, case .write = actions[actions.count - 1] { actions.removeLast() }
            case .tooLarge(let limit):
                process()
                return .failed(PeerError(.messageTooLarge, "message of \(message.count) bytes exceeds maxMessageSize \(limit)"))
            case .notOpen:
                process()
                return .failed(failure ?? PeerError(.channelClosed, "send after close"))
            }
        }
        process()
        if summary != nil {
            return .failed(failure ?? PeerError(.channelClosed, "channel ended during send"))
        }
        return machine.pendingOutputCount > configuration.maxOutboundQueuedBytes ? .wait : .done(())
    }

    /// Resumes `completion` once the outbound queue is back within its bound.
    func awaitOutboundSpace(_ completion: CheckedContinuation<Void, Error>) {
        if summary != nil {
            completion.resume(throwing: failure ?? PeerError(.channelClosed, "channel closed"))
        } else if machine.pendingOutputCount > configuration.maxOutboundQueuedBytes {
            sendWaiters.append(completion)
        } else {
            completion.resume()
        }
    }

    /// Writes as much queued output as the socket takes, everything queued in one `sendmsg`.
    /// While a write would block it writes nothing: sends only seal into the queue, and the
    /// writable watch writes all of it at once (no `sendmsg` per message that would fail).
    private func flush() {
        guard let socket, !socket.isClosed, !writeBlocked else { return }
        while machine.pendingOutputCount > 0 {
            let result: IOResult<Int>
            do throws(TransportError) {
                // Everything queued goes in one sendmsg: frames coalesce.
                writeCalls += 1
                result = try socket.send(machine.pendingOutput)
            } catch {
                if error.code == .connectionReset, !endOfStream {
                    // The peer is gone (EPIPE): judge it like an end of stream first.
                    endOfStream = true
                    machine.handle(.endOfStream, into: &actions)
                }
                machine.handle(.transportFailed(PeerError.transport(error, "write").detail), into: &actions)
                return
            }
            guard case .processed(let written) = result else {
                writeBlocked = true
                socket.watchWritable {
                    self.writeBlocked = false
                    self.actions.append(.write)
                    self.process()
                }
                // Back within the bound after a partial write: waiting sends queue more while
                // the socket is full, rather than waiting for everything to drain.
                if machine.pendingOutputCount <= configuration.maxOutboundQueuedBytes { resumeSendWaiters() }
                return
            }
            machine.handle(.wrote(written), into: &actions)
        }
        socket.watchWritable(nil)
        // The answers drained: a handler's channel reads again (process() re-watches).
        outputPaused = false
        resumeSendWaiters()
    }

    private func resumeSendWaiters() {
        guard !sendWaiters.isEmpty else { return }
        let waiters = sendWaiters
        sendWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    // MARK: closing

    func close(completion: CheckedContinuation<ChannelCloseSummary, Never>) {
        if let summary {
            completion.resume(returning: summary)
            return
        }
        precondition(machine.isEstablished, "close() before the channel existed")
        closeWaiters.append(completion)
        step(.close(now: .now))
    }

    /// Ends the channel at once without CLOSE (the peer sees `truncated`).
    func abort(_ error: PeerError = PeerError(.channelClosed, "aborted locally"), reason: AuditReason = .runtime(.localAbort)) {
        guard summary == nil else { return }
        localEnd = (error, reason)
        step(.abort)
    }

    /// Fails the handshake if it is still running (the channel, once open, is unaffected).
    func cancelHandshake(_ error: PeerError) {
        guard !machine.isEstablished, summary == nil else { return }
        abort(error, reason: error.auditReason)
    }

    /// Called when the owning `PeerChannel` is released: an unclosed channel is aborted.
    func abandon() {
        if hasEnded.load(ordering: .acquiring) { return }
        queue.async {
            self.abort(PeerError(.channelClosed, "channel released without close()"))
        }
    }

    /// The machine ended: answers every waiter, writes the terminal log line and audit record.
    private func ended(_ end: ChannelEnd, wasOpen: Bool) {
        timer?.cancel()
        timer = nil
        timerDeadline = nil
        leaveHandshake()
        let error: PeerError?
        var reason: AuditReason?
        switch end {
        case .clean:
            error = nil
        case .protocolError(let e):
            error = PeerError(e)
        case .transportFailed(let detail):
            error = PeerError(.ioError, detail)
        case .aborted:
            error = localEnd?.error ?? PeerError(.channelClosed, "aborted locally")
            reason = localEnd?.reason ?? .runtime(.localAbort)
        case .legacyEnded(let byPeer):
            error = nil
            reason = byPeer ? .runtime(.peerReset) : .runtime(.localAbort)
        case .legacyRefused:
            let claim = facts.legacyClaim
            if configuration.legacyPeers.admits(claim) {
                // The policy admits the claim, so the machine's check refused it: that key runs
                // UDS-HS1 with us, and a plaintext channel "from" it is a lie.
                error = PeerError(.legacyPeerRefused, "the claimed key completed UDS-HS1 with us before")
                logger.warning("legacy peer refused: the claimed key completed UDS-HS1 before", metadata: ["claim": "\(claim)"])
                environment.audit?.record(facts.legacyEvent(.legacyPeerRefused, reason: .runtime(.legacyKeyProvedBefore)))
            } else {
                error = PeerError(.legacyPeerRefused, "peer speaks CapTP without a handshake")
                logger.info("legacy peer refused (first bytes are a CapTP op:start-session)", metadata: ["claim": "\(claim)"])
                environment.audit?.record(facts.legacyEvent(.legacyPeerRefused, reason: .netlayer(.legacyPeerRefused)))
            }
        }
        failure = error
        let traffic = machine.traffic
        let now = ContinuousClock.now
        let clean = end == .clean
        if wasOpen {
            let auditReason = clean ? nil : (reason ?? error?.auditReason ?? .runtime(.localAbort))
            let closed = facts.event(
                .channelClosed, reason: auditReason, proved: session?.peer.publicKey, handshakeHash: session?.handshakeHash,
                session: session?.sessionID, durationMicros: Self.micros((establishedAt ?? started).duration(to: now)),
                clean: clean, traffic: AuditTraffic(
                    bytesSent: traffic.bytesSent, bytesReceived: traffic.bytesReceived,
                    messagesSent: traffic.messagesSent, messagesReceived: traffic.messagesReceived))
            environment.audit?.record(session == nil ? facts.asLegacy(closed) : closed)
            if clean {
                logger.info("channel closed cleanly", metadata: ["messagesSent": "\(traffic.messagesSent)", "messagesReceived": "\(traffic.messagesReceived)"])
            } else {
                logger.info("channel ended", metadata: ["reason": "\(auditReason!.rawValue)", "detail": "\(error?.detail ?? "")"])
            }
        } else if let error {
            if end != .legacyRefused {
                environment.audit?.record(facts.event(
                    .handshakeFailed, reason: reason ?? error.auditReason, durationMicros: Self.micros(started.duration(to: now))))
            }
            logger.info("handshake failed", metadata: ["reason": "\(error.code.rawValue)", "detail": "\(error.detail)"])
        }
        let summary = ChannelCloseSummary(
            clean: clean, reason: clean ? nil : (error ?? PeerError(.channelClosed, "legacy channel ended")),
            bytesSent: traffic.bytesSent, bytesReceived: traffic.bytesReceived,
            messagesSent: traffic.messagesSent, messagesReceived: traffic.messagesReceived)
        self.summary = summary
        hasEnded.store(true, ordering: .releasing)

        if establishCompletion != nil, establishOutcome == nil {
            establishOutcome = .failure(error ?? PeerError(.channelClosed, "ended before the handshake finished"))
        }
        wakeReceivers()
        let senders = sendWaiters
        sendWaiters = []
        for waiter in senders { waiter.resume(throwing: error ?? PeerError(.channelClosed, "channel closed")) }
        let closers = closeWaiters
        closeWaiters = []
        for waiter in closers { waiter.resume(returning: summary) }
    }

    static func micros(_ d: Duration) -> UInt64 {
        let (seconds, attoseconds) = d.components
        guard seconds >= 0 else { return 0 }
        return UInt64(seconds) * 1_000_000 + UInt64(attoseconds / 1_000_000_000_000)
    }
}

/// What a connecting task waits for during its handshake: readiness handed to it by the
/// channel's socket (work to run), then the outcome, in order.
final class HandshakeMailbox: Sendable {
    enum Item {
        case work(@Sendable () -> Void)
        case outcome(Result<PeerChannel, PeerError>)
    }

    private struct State {
        var work: [@Sendable () -> Void] = []
        var outcome: Result<PeerChannel, PeerError>?
        var waiter: CheckedContinuation<Void, Never>?
        /// The task took the outcome: it runs no more work.
        var closed = false
    }

    private let state = Mutex(State())

    /// From the loop thread. False once the task no longer takes work (a worker runs it).
    func post(_ work: @escaping @Sendable () -> Void) -> Bool {
        let (taken, waiter) = state.withLock { s -> (Bool, CheckedContinuation<Void, Never>?) in
            guard !s.closed else { return (false, nil) }
            s.work.append(work)
            defer { s.waiter = nil }
            return (true, s.waiter)
        }
        waiter?.resume()
        return taken
    }

    /// Once, from the queue.
    func finish(_ outcome: Result<PeerChannel, PeerError>) {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.outcome = outcome
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume()
    }

    /// Work first, in the order posted (the outcome is decided by running it), then the outcome.
    func next() async -> Item {
        while true {
            if let item = take() { return item }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if !s.work.isEmpty || s.outcome != nil { return true }
                    s.waiter = c
                    return false
                }
                if ready { c.resume() }
            }
        }
    }

    private func take() -> Item? {
        state.withLock { s -> Item? in
            if !s.work.isEmpty { return .work(s.work.removeFirst()) }
            guard let outcome = s.outcome else { return nil }
            s.closed = true
            s.outcome = nil
            return .outcome(outcome)
        }
    }
}
