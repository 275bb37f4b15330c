#if canImport(Glibc)
import Glibc
#endif
import Audit
import Dispatch
import Identity
import Logging
import OCapN
import SecureChannel
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
        switch engine.queue.sync(execute: { engine.trySend(message) }) {
        case .done: return
        case .failed(let error): throw error
        case .wait:
            try await PeerError.catching {
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                    engine.queue.async { engine.awaitOutboundSpace(c) }
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
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<[UInt8]?, Error>) in
                    engine.queue.async { engine.receive(completion: c) }
                }
            }
        }
    }

    /// The received messages as an asynchronous sequence (ends at the peer's clean close).
    public var messages: Messages { Messages(channel: self) }

    /// Sends CLOSE, waits (up to the close timeout) for the peer's CLOSE, then releases the
    /// socket. Idempotent: later calls return the same summary.
    @discardableResult
    public func close() async -> ChannelCloseSummary {
        await withCheckedContinuation { (c: CheckedContinuation<ChannelCloseSummary, Never>) in
            engine.queue.async { self.engine.close(completion: c) }
        }
    }

    /// Ends the channel at once without CLOSE (the peer sees `truncated`).
    public func abort() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            engine.queue.async {
                self.engine.finish(error: PeerError(.channelClosed, "aborted locally"), reason: .localAbort)
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

/// The I/O engine under one socket: drives the handshake machine, then the framed channel, on
/// one serial queue with one read and one write dispatch source (no thread per connection).
///
/// Every mutable field is touched only on `queue` (`@unchecked Sendable` rests on that).
/// The sources hold the engine strongly until `finish` cancels them, so a socket is never
/// silently dropped; the socket is closed once both sources have finished cancelling.
final class ChannelEngine: @unchecked Sendable {
    struct Environment: Sendable {
        let configuration: ChannelRuntimeConfiguration
        let limiter: HandshakeLimiter
        let audit: (any AuditSink)?
        let logger: Logger
        let verifiedPeers: VerifiedPeerMemory
    }

    struct Open {
        /// nil for a legacy channel (raw bytes, no framing).
        let sender: FrameSender?
        let receiver: FrameReceiver?
    }

    enum Phase {
        case initiating(HandshakeInitiator)
        /// `legacyProbe` collects the first bytes until they tell a Goblins peer from UDS-HS1;
        /// nil once decided.
        case responding(HandshakeResponder, legacyProbe: [UInt8]?)
        case open(Open)
        case finished
    }

    /// What a Goblins peer sends first: the start of its `op:start-session` record.
    static let legacyMarker: [UInt8] = Array("<16'op:start-session".utf8)

    let queue: DispatchQueue
    let facts: ChannelFacts
    private let socket: FileDescriptor
    private let environment: Environment
    private var configuration: ChannelRuntimeConfiguration { environment.configuration }
    private var logger: Logger
    private var phase: Phase
    private let deadline: ContinuousClock.Instant
    private let started = ContinuousClock.now
    private var establishedAt: ContinuousClock.Instant?

    /// The socket's number, lent to the dispatch sources while the socket is open.
    private var raw: Int32 = -1
    private var readSource: DispatchSourceRead?
    private var writeSource: DispatchSourceWrite?
    /// Sources created and not yet cancelled-and-finished: the socket closes only at zero, so
    /// libdispatch never watches a number that was closed and reused.
    private var liveSources = 0
    private var timer: DispatchSourceTimer?
    private var readPaused = false
    private var holdsHandshakeSlot = true

    private let output = OutputBuffer()
    private var inbound: [[UInt8]] = []
    private var inboundHead = 0
    private var inboundBytes = 0

    private var establishWaiter: CheckedContinuation<PeerChannel, Error>?
    private var receiveWaiters: [CheckedContinuation<[UInt8]?, Error>] = []
    private var sendWaiters: [CheckedContinuation<Void, Error>] = []
    private var closeWaiters: [CheckedContinuation<ChannelCloseSummary, Never>] = []

    private var session: EstablishedSession?
    private var closeSent = false
    private var writeShutDown = false
    private var peerClosed = false
    private var endOfStream = false
    private var failure: PeerError?
    private var summary: ChannelCloseSummary?
    private var bytesSent: UInt64 = 0
    private var bytesReceived: UInt64 = 0
    private var messagesSent: UInt64 = 0
    private var messagesReceived: UInt64 = 0

    init(
        socket: FileDescriptor, phase: Phase, initialOutput: [UInt8], deadline: ContinuousClock.Instant,
        facts: ChannelFacts, environment: Environment
    ) {
        self.socket = socket
        self.phase = phase
        self.deadline = deadline
        self.facts = facts
        self.environment = environment
        output.append(initialOutput)
        var log = environment.logger
        facts.annotate(&log)
        logger = log
        queue = DispatchQueue(label: "ocapn-uds.channel", target: .global(qos: .userInitiated))
    }

    // MARK: establishment

    /// Starts the I/O and waits for the handshake's outcome.
    func establish() async throws(PeerError) -> PeerChannel {
        try await PeerError.catching {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<PeerChannel, Error>) in
                queue.async { self.start(c) }
            }
        }
    }

    private func start(_ waiter: CheckedContinuation<PeerChannel, Error>) {
        establishWaiter = waiter
        environment.audit?.record(facts.event(.handshakeStarted))
        logger.debug("handshake started")
        do {
            raw = try socket.withRawDescriptor { $0 }
        } catch {
            finish(error: PeerError(.ioError, "socket closed before the handshake"), reason: .ioError)
            return
        }
        if let size = configuration.socketSendBufferSize {
            // A deeper kernel buffer lets the sender seal ahead while the receiver opens, with
            // fewer wake-ups per message. It is a property of our own end only.
            var value = Int32(clamping: size)
            _ = setsockopt(raw, SOL_SOCKET, SO_SNDBUF, &value, socklen_t(MemoryLayout<Int32>.size))
        }
        watchReadable(true)
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.setEventHandler { self.deadlinePassed() }
        timer.schedule(deadline: .now() + ContinuousClock.now.duration(to: deadline).dispatchInterval)
        timer.activate()
        self.timer = timer
        flush()
    }

    private func deadlinePassed() {
        let now = ContinuousClock.now
        do throws(HandshakeError) {
            switch phase {
            case .initiating(let machine): try machine.checkDeadline(now: now)
            case .responding(let machine, _): try machine.checkDeadline(now: now)
            case .open, .finished: return
            }
            // A timer that fired a hair early: wait for the rest.
            timer?.schedule(deadline: .now() + now.duration(to: deadline).dispatchInterval)
        } catch {
            finish(error: PeerError(error))
        }
    }

    /// Feeds bytes read during the handshake to the machine.
    private func feedHandshake(_ bytes: [UInt8]) {
        do throws(HandshakeError) {
            switch phase {
            case .initiating(let machine):
                try apply(machine.receive(bytes, now: .now))
            case .responding(let machine, let probe?):
                let collected = probe + bytes
                switch Self.classify(collected) {
                case .undecided:
                    phase = .responding(machine, legacyProbe: collected)
                case .legacy:
                    admitLegacy(collected)
                case .handshake:
                    phase = .responding(machine, legacyProbe: nil)
                    try apply(machine.receive(collected, now: .now))
                }
            case .responding(let machine, nil):
                try apply(machine.receive(bytes, now: .now))
            case .open, .finished:
                preconditionFailure("handshake bytes after the handshake ended")
            }
        } catch {
            finish(error: PeerError(error))
        }
    }

    private func handshakeEnded() {
        do throws(HandshakeError) {
            switch phase {
            case .initiating(let machine): try machine.receiveEOF()
            case .responding(let machine, _): try machine.receiveEOF()
            case .open, .finished: preconditionFailure("handshake EOF after the handshake ended")
            }
        } catch {
            finish(error: PeerError(error))
        }
    }

    enum ProbeResult { case undecided, legacy, handshake }

    /// UDS-HS1 starts with `o` (MAGIC), a Goblins peer with `<`: the first byte decides, and
    /// the whole 20-byte marker confirms a legacy peer.
    static func classify(_ bytes: [UInt8]) -> ProbeResult {
        guard let first = bytes.first, first == legacyMarker[0] else { return bytes.isEmpty ? .undecided : .handshake }
        let n = min(bytes.count, legacyMarker.count)
        guard bytes[0..<n].elementsEqual(legacyMarker[0..<n]) else { return .handshake }
        return n == legacyMarker.count ? .legacy : .undecided
    }

    private func apply(_ step: HandshakeStep) {
        switch step {
        case .needMoreBytes:
            return
        case .send(let bytes):
            output.append(bytes)
            flush()
        case .established(let session, let send):
            output.append(send)
            established(session)
        }
    }

    private func established(_ session: EstablishedSession) {
        self.session = session
        environment.verifiedPeers.remember(session.peer.publicKey)
        phase = .open(Open(sender: session.sender, receiver: session.receiver))
        leaveHandshake()
        let now = ContinuousClock.now
        establishedAt = now
        logger[metadataKey: "peer"] = "\(session.peer.fingerprint)"
        logger[metadataKey: "session"] = "\(session.sessionID)"
        environment.audit?.record(facts.event(
            .handshakeSucceeded, proved: session.peer.publicKey, handshakeHash: session.handshakeHash,
            session: session.sessionID, durationMicros: Self.micros(started.duration(to: now))))
        logger.info("handshake succeeded")
        let channel = PeerChannel(engine: self, session: session)
        establishWaiter?.resume(returning: channel)
        establishWaiter = nil
        flush()
        // Bytes that arrived behind the handshake are already in the receiver.
        drainReceiver()
    }

    private func admitLegacy(_ firstBytes: [UInt8]) {
        let claim = facts.legacyClaim
        guard configuration.legacyPeers.admits(claim) else {
            logger.info("legacy peer refused (first bytes are a CapTP op:start-session)", metadata: ["claim": "\(claim)"])
            environment.audit?.record(facts.legacyEvent(.legacyPeerRefused, reason: .legacyPeerRefused))
            finish(error: PeerError(.legacyPeerRefused, "peer speaks CapTP without a handshake"), audited: true)
            return
        }
        guard !environment.verifiedPeers.refusesLegacy(claim) else {
            // That key runs UDS-HS1 with us: a plaintext channel "from" it is a lie.
            logger.warning("legacy peer refused: the claimed key completed UDS-HS1 before", metadata: ["claim": "\(claim)"])
            environment.audit?.record(facts.legacyEvent(.legacyPeerRefused, reason: .legacyKeyProvedBefore))
            finish(error: PeerError(.legacyPeerRefused, "the claimed key completed UDS-HS1 with us before"), audited: true)
            return
        }
        phase = .open(Open(sender: nil, receiver: nil))
        leaveHandshake()
        establishedAt = ContinuousClock.now
        logger.warning("legacy peer admitted WITHOUT authentication (allowLegacyPeers)", metadata: ["claim": "\(claim)"])
        environment.audit?.record(facts.legacyEvent(.legacyPeerAdmitted))
        let channel = PeerChannel(engine: self, session: nil)
        establishWaiter?.resume(returning: channel)
        establishWaiter = nil
        enqueueInbound(firstBytes)
    }

    private func leaveHandshake() {
        timer?.cancel()
        timer = nil
        if holdsHandshakeSlot {
            holdsHandshakeSlot = false
            environment.limiter.release()
        }
    }

    // MARK: reading

    private enum ReadOutcome {
        case bytes(Int)
        case wouldBlock
        case endOfStream
        case failed(TransportError)
    }

    private func handleReadable() {
        for _ in 0..<configuration.readsPerEvent {
            guard !readPaused, !endOfStream else { return }
            switch phase {
            case .finished:
                return
            case .open(let open) where open.receiver != nil && !peerClosed:
                let receiver = open.receiver!
                var outcome = ReadOutcome.wouldBlock
                receiver.withInputBuffer(minimumCapacity: configuration.readChunkSize) { buffer in
                    outcome = Self.read(socket, into: buffer)
                    if case .bytes(let n) = outcome { return n }
                    return 0
                }
                guard continueAfter(outcome) else { return }
                drainReceiver()
            case .initiating, .responding, .open:
                var scratch = [UInt8](repeating: 0, count: configuration.readChunkSize)
                let outcome = scratch.withUnsafeMutableBytes { Self.read(socket, into: $0) }
                guard continueAfter(outcome) else { return }
                guard case .bytes(let n) = outcome else { return }
                scratch.removeSubrange(n...)
                switch phase {
                case .initiating, .responding:
                    feedHandshake(scratch)
                case .open(let open):
                    if let receiver = open.receiver {
                        // Only after the peer's CLOSE: any byte now is `dataAfterClose`.
                        do throws(HandshakeError) {
                            try receiver.receive(scratch)
                        } catch {
                            finish(error: PeerError(error))
                            return
                        }
                    } else {
                        bytesReceived += UInt64(n)
                        messagesReceived += 1
                        enqueueInbound(scratch)
                    }
                case .finished:
                    return
                }
            }
        }
    }

    private static func read(_ socket: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) -> ReadOutcome {
        do throws(TransportError) {
            switch try socket.receive(into: buffer, descriptorCapacity: 0) {
            case .wouldBlock: return .wouldBlock
            case .processed(let received): return received.isEndOfStream ? .endOfStream : .bytes(received.byteCount)
            }
        } catch {
            return .failed(error)
        }
    }

    /// Handles what a read returned; false when the read loop must stop.
    private func continueAfter(_ outcome: ReadOutcome) -> Bool {
        switch outcome {
        case .bytes:
            return true
        case .wouldBlock:
            return false
        case .failed(let error) where error.code == .connectionReset:
            // A reset is an end of stream without CLOSE, like EOF: `truncated` unless the
            // peer's CLOSE already arrived.
            return continueAfter(.endOfStream)
        case .failed(let error):
            finish(error: PeerError.transport(error, "read"))
            return false
        case .endOfStream:
            endOfStream = true
            // Level-triggered: a source at EOF would fire forever.
            watchReadable(false)
            streamEnded()
            return false
        }
    }

    private func streamEnded() {
        switch phase {
        case .initiating, .responding:
            handshakeEnded()
        case .open(let open):
            if let receiver = open.receiver {
                do throws(HandshakeError) {
                    try receiver.receiveEOF()
                } catch {
                    finish(error: PeerError(error))
                    return
                }
                finishIfClosedBothWays()
            } else {
                // A legacy stream has no authenticated end: EOF is all there is.
                peerClosed = true
                wakeReceivers()
                if closeSent { finish(error: nil, reason: .peerReset) }
            }
        case .finished:
            return
        }
    }

    /// Opens every complete frame the receiver holds.
    private func drainReceiver() {
        guard case .open(let open) = phase, let receiver = open.receiver, !peerClosed else { return }
        while true {
            let event: ChannelRead<[UInt8]>
            do throws(HandshakeError) {
                event = try receiver.nextMessage { body in
                    [UInt8](unsafeUninitializedCapacity: body.count) { buffer, count in
                        UnsafeMutableRawBufferPointer(buffer).copyMemory(from: body)
                        count = body.count
                    }
                }
            } catch {
                finish(error: PeerError(error))
                return
            }
            switch event {
            case .message(let message):
                bytesReceived += UInt64(message.count)
                messagesReceived += 1
                enqueueInbound(message)
            case .closed:
                peerClosed = true
                logger.debug("peer sent CLOSE")
                wakeReceivers()
                finishIfClosedBothWays()
                return
            case .needMoreBytes:
                return
            }
        }
    }

    private func enqueueInbound(_ message: [UInt8]) {
        if let waiter = receiveWaiters.first, inboundHead == inbound.count {
            receiveWaiters.removeFirst()
            waiter.resume(returning: message)
            return
        }
        inbound.append(message)
        inboundBytes += message.count
        if inboundBytes >= configuration.maxInboundQueuedBytes || inbound.count - inboundHead >= configuration.maxInboundQueuedMessages {
            setReading(paused: true)
        }
    }

    private func setReading(paused: Bool) {
        guard paused != readPaused else { return }
        readPaused = paused
        guard !endOfStream else { return }
        watchReadable(!paused)
    }

    // Sources are created when needed and cancelled when not, never suspended: a suspended
    // source that libdispatch disarms can lose the other direction's events on a shared
    // descriptor (seen under load on Linux), and cancel-then-recreate costs little.

    private func watchReadable(_ wanted: Bool) {
        if wanted {
            guard readSource == nil else { return }
            let source = DispatchSource.makeReadSource(fileDescriptor: raw, queue: queue)
            source.setEventHandler { self.handleReadable() }
            source.setCancelHandler { self.sourceFinished() }
            liveSources += 1
            readSource = source
            source.activate()
        } else if let source = readSource {
            readSource = nil
            source.cancel()
        }
    }

    private func armWrite(_ wanted: Bool) {
        if wanted {
            guard writeSource == nil else { return }
            let source = DispatchSource.makeWriteSource(fileDescriptor: raw, queue: queue)
            source.setEventHandler { self.flush() }
            source.setCancelHandler { self.sourceFinished() }
            liveSources += 1
            writeSource = source
            source.activate()
        } else if let source = writeSource {
            writeSource = nil
            source.cancel()
        }
    }

    private func sourceFinished() {
        liveSources -= 1
        closeSocketIfUnwatched()
    }

    private func closeSocketIfUnwatched() {
        guard case .finished = phase, liveSources == 0 else { return }
        socket.close()
    }

    /// Receivers waiting with nothing queued learn that the stream ended.
    private func wakeReceivers() {
        guard inboundHead == inbound.count else { return }
        let waiters = receiveWaiters
        receiveWaiters = []
        for waiter in waiters {
            if let failure { waiter.resume(throwing: failure) } else { waiter.resume(returning: nil) }
        }
    }

    /// Takes a queued message, or reports the end, without waiting.
    func tryReceive() -> Attempt<[UInt8]?> {
        if inboundHead < inbound.count {
            let message = inbound[inboundHead]
            inbound[inboundHead] = []
            inboundHead += 1
            inboundBytes -= message.count
            if inboundHead == inbound.count {
                inbound.removeAll(keepingCapacity: inbound.capacity <= 4096)
                inboundHead = 0
            }
            if readPaused, inboundBytes < configuration.maxInboundQueuedBytes,
               inbound.count - inboundHead < configuration.maxInboundQueuedMessages {
                setReading(paused: false)
            }
            return .done(message)
        }
        if let failure { return .failed(failure) }
        if peerClosed || summary != nil { return .done(nil) }
        return .wait
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
    func trySend(_ message: [UInt8]) -> Attempt<Void> {
        guard case .open(let open) = phase, !closeSent else {
            return .failed(failure ?? PeerError(.channelClosed, "send after close"))
        }
        if let sender = open.sender {
            guard message.count <= sender.configuration.maxMessageSize else {
                return .failed(PeerError(.messageTooLarge, "message of \(message.count) bytes exceeds maxMessageSize \(sender.configuration.maxMessageSize)"))
            }
            // Sealed straight into the output buffer: one copy of the body, no allocation
            // once the buffer has grown to the working size.
            let region = output.reserve(sender.sealedLength(messageLength: message.count))
            let sealed: Result<Int, HandshakeError> = message.withUnsafeBytes { body in
                do throws(HandshakeError) {
                    return .success(try sender.seal(body, into: region))
                } catch {
                    return .failure(error)
                }
            }
            switch sealed {
            case .success(let written):
                output.commit(written)
            case .failure(let error):
                let failure = PeerError(error)
                finish(error: failure)
                return .failed(failure)
            }
        } else {
            output.append(message)
        }
        bytesSent += UInt64(message.count)
        messagesSent += 1
        flush()
        if case .finished = phase {
            return .failed(failure ?? PeerError(.channelClosed, "channel ended during send"))
        }
        return output.count > configuration.maxOutboundQueuedBytes ? .wait : .done(())
    }

    /// Resumes `completion` once the outbound queue is back within its bound.
    func awaitOutboundSpace(_ completion: CheckedContinuation<Void, Error>) {
        if case .finished = phase {
            completion.resume(throwing: failure ?? PeerError(.channelClosed, "channel closed"))
        } else if output.count > configuration.maxOutboundQueuedBytes {
            sendWaiters.append(completion)
        } else {
            completion.resume()
        }
    }

    /// Writes as much queued output as the socket takes, in one `sendmsg` per call.
    private func flush() {
        switch phase {
        case .finished: return
        case .initiating, .responding, .open: break
        }
        while output.count > 0 {
            let result: IOResult<Int>
            do throws(TransportError) {
                // Everything queued goes in one sendmsg: frames coalesce.
                result = try socket.send(output.readable)
            } catch {
                if error.code == .connectionReset, !endOfStream {
                    // The peer is gone (EPIPE): judge it like an end of stream.
                    endOfStream = true
                    watchReadable(false)
                    streamEnded()
                    if case .finished = phase { return }
                }
                finish(error: PeerError.transport(error, "write"))
                return
            }
            guard case .processed(let written) = result else {
                armWrite(true)
                return
            }
            output.consume(written)
        }
        output.releaseIfLarge()
        armWrite(false)
        let waiters = sendWaiters
        sendWaiters = []
        for waiter in waiters { waiter.resume() }
        if closeSent && !writeShutDown {
            writeShutDown = true
            _ = try? socket.withRawDescriptor { Glibc.shutdown($0, Int32(SHUT_WR)) }
            closedOurSide()
        }
    }


    // MARK: closing

    func close(completion: CheckedContinuation<ChannelCloseSummary, Never>) {
        if let summary {
            completion.resume(returning: summary)
            return
        }
        guard case .open(let open) = phase else {
            preconditionFailure("close() before the channel existed")
        }
        closeWaiters.append(completion)
        guard !closeSent else { return }
        closeSent = true
        if let sender = open.sender {
            do throws(HandshakeError) {
                output.append(try sender.close())
            } catch {
                finish(error: PeerError(error))
                return
            }
        }
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.setEventHandler {
            self.finish(error: PeerError(.timeout, "peer did not answer CLOSE within \(self.configuration.closeTimeout)"))
        }
        timer.schedule(deadline: .now() + configuration.closeTimeout.dispatchInterval)
        timer.activate()
        self.timer = timer
        flush()
    }

    /// Our side is flushed and shut down.
    private func closedOurSide() {
        guard case .open(let open) = phase else { return }
        if open.sender == nil {
            // Legacy: there is no CLOSE to wait for.
            finish(error: nil, reason: peerClosed ? .peerReset : .localAbort)
        } else {
            finishIfClosedBothWays()
        }
    }

    private func finishIfClosedBothWays() {
        guard session != nil, closeSent, writeShutDown, peerClosed else { return }
        finish(error: nil)
    }

    /// Fails the handshake if it is still running (the channel, once open, is unaffected).
    func cancelHandshake(_ error: PeerError) {
        switch phase {
        case .initiating, .responding: finish(error: error)
        case .open, .finished: return
        }
    }

    /// Called when the owning `PeerChannel` is released: an unclosed channel is aborted.
    func abandon() {
        queue.async {
            if case .finished = self.phase { return }
            self.finish(error: PeerError(.channelClosed, "channel released without close()"), reason: .localAbort)
        }
    }

    /// Ends the handshake or channel: cancels the sources (the socket closes after them), answers
    /// every waiter, writes the terminal log line and audit record. `error` nil means clean
    /// (only with both CLOSEs) or, with `reason`, a legacy end.
    func finish(error: PeerError?, reason: AuditReason? = nil, audited: Bool = false) {
        let wasOpen: Bool
        switch phase {
        case .finished: return
        case .open: wasOpen = true
        case .initiating, .responding: wasOpen = false
        }
        phase = .finished
        failure = error
        timer?.cancel()
        timer = nil
        if holdsHandshakeSlot {
            holdsHandshakeSlot = false
            environment.limiter.release()
        }
        watchReadable(false)
        armWrite(false)
        closeSocketIfUnwatched()
        output.clear()

        let now = ContinuousClock.now
        let clean = error == nil && session != nil
        if wasOpen {
            let auditReason = clean ? nil : (reason ?? error?.auditReason ?? .localAbort)
            let traffic = AuditTraffic(
                bytesSent: bytesSent, bytesReceived: bytesReceived, messagesSent: messagesSent, messagesReceived: messagesReceived)
            let closed = facts.event(
                .channelClosed, reason: auditReason, proved: session?.peer.publicKey, handshakeHash: session?.handshakeHash,
                session: session?.sessionID, durationMicros: Self.micros((establishedAt ?? started).duration(to: now)),
                clean: clean, traffic: traffic)
            environment.audit?.record(session == nil ? facts.asLegacy(closed) : closed)
            if clean {
                logger.info("channel closed cleanly", metadata: ["messagesSent": "\(messagesSent)", "messagesReceived": "\(messagesReceived)"])
            } else {
                logger.info("channel ended", metadata: ["reason": "\(auditReason!.rawValue)", "detail": "\(error?.detail ?? "")"])
            }
        } else if let error {
            if !audited {
                environment.audit?.record(facts.event(
                    .handshakeFailed, reason: error.auditReason, durationMicros: Self.micros(started.duration(to: now))))
            }
            logger.info("handshake failed", metadata: ["reason": "\(error.code.rawValue)", "detail": "\(error.detail)"])
        }
        let summary = ChannelCloseSummary(
            clean: clean, reason: clean ? nil : (error ?? PeerError(.channelClosed, "legacy channel ended")),
            bytesSent: bytesSent, bytesReceived: bytesReceived, messagesSent: messagesSent, messagesReceived: messagesReceived)
        self.summary = summary

        if let waiter = establishWaiter {
            establishWaiter = nil
            waiter.resume(throwing: error ?? PeerError(.channelClosed, "ended before the handshake finished"))
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

extension Duration {
    /// For dispatch deadlines; negative durations become zero.
    var dispatchInterval: DispatchTimeInterval {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return .nanoseconds(0) }
        let nanos = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        guard !nanos.overflow, nanos.partialValue <= Int64(Int.max) - 1_000_000_000 else { return .never }
        return .nanoseconds(Int(nanos.partialValue + attoseconds / 1_000_000_000))
    }
}


/// The sealed bytes waiting for the socket: one contiguous buffer reused across messages, so
/// frames are sealed in place and leave together in one `sendmsg`.
final class OutputBuffer {
    private var storage: UnsafeMutableRawPointer
    private var capacity: Int
    private var head = 0
    private var tail = 0
    private static let initialCapacity = 64 << 10
    /// Capacity above this is given back once the buffer drains.
    private static let retainedCapacity = 4 << 20

    init() {
        capacity = Self.initialCapacity
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { storage.deallocate() }

    /// Queued bytes.
    var count: Int { tail - head }

    var readable: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: storage + head, count: tail - head) }

    /// Free space of at least `n` bytes after the queued ones (compacting or growing).
    func reserve(_ n: Int) -> UnsafeMutableRawBufferPointer {
        if capacity - tail < n {
            let live = tail - head
            if head > 0 && capacity - live >= n {
                if live > 0 { storage.copyMemory(from: storage + head, byteCount: live) }
            } else {
                var grown = capacity
                while grown - live < n { grown *= 2 }
                let fresh = UnsafeMutableRawPointer.allocate(byteCount: grown, alignment: 16)
                if live > 0 { fresh.copyMemory(from: storage + head, byteCount: live) }
                storage.deallocate()
                storage = fresh
                capacity = grown
            }
            head = 0
            tail = live
        }
        return UnsafeMutableRawBufferPointer(start: storage + tail, count: n)
    }

    func commit(_ n: Int) {
        precondition(n >= 0 && tail + n <= capacity, "committed more than reserved")
        tail += n
    }

    func append(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        let region = reserve(bytes.count)
        bytes.withUnsafeBytes { region.copyMemory(from: $0) }
        commit(bytes.count)
    }

    func consume(_ n: Int) {
        precondition(n >= 0 && n <= count, "consumed more than queued")
        head += n
        if head == tail {
            head = 0
            tail = 0
        }
    }

    /// Gives back memory a burst grew, once empty.
    func releaseIfLarge() {
        guard count == 0, capacity > Self.retainedCapacity else { return }
        storage.deallocate()
        capacity = Self.initialCapacity
        storage = .allocate(byteCount: capacity, alignment: 16)
    }

    func clear() {
        head = 0
        tail = 0
    }
}
