#if canImport(Glibc)
import Glibc
#endif
import Dispatch

/// Bytes from one `recvmsg`, with the descriptors that arrived on that same read.
///
/// By K5 a descriptor arrives with the read holding the first byte of the segment that
/// carried it, and that read ends where the segment ends. `streamOffset` is the position of
/// `bytes[0]` in the whole inbound stream, so the protocol layer can tag the descriptors with
/// the byte range `streamOffset ..< streamOffset + bytes.count` (§3.2). The receiver owns the
/// descriptors and must close or hand on each one.
public struct StreamChunk: Sendable {
    public let bytes: [UInt8]
    public let descriptors: [FileDescriptor]
    public let streamOffset: Int
    /// The kernel dropped descriptors sent with these bytes (MSG_CTRUNC; only with
    /// `Configuration.reportsLostDescriptors`).
    public let descriptorsLost: Bool

    public init(bytes: [UInt8], descriptors: [FileDescriptor], streamOffset: Int, descriptorsLost: Bool = false) {
        self.bytes = bytes
        self.descriptors = descriptors
        self.streamOffset = streamOffset
        self.descriptorsLost = descriptorsLost
    }

    /// Byte range of this read within the inbound stream.
    public var streamRange: Range<Int> { streamOffset..<(streamOffset + bytes.count) }
}

/// What a `StreamConnection` reports to its handler: on its loop's thread, or on its delivery
/// queue when it has one.
public enum StreamEvent: Sendable {
    /// One read's bytes and descriptors.
    case received(StreamChunk)
    /// The peer shut down its sending side. Reading stops; writing still works until `close()`.
    case endOfStream
    /// A read or write failed; the connection is already closed, queued descriptors too.
    case failed(TransportError)
}

/// A non-blocking AF_UNIX stream connection on an `EventLoop`: the descriptor is registered
/// once with the loop and unregistered before it closes; no thread or task per connection.
///
/// Readiness is handled on the loop thread: reads (with SCM_RIGHTS) and the writes that were
/// waiting for room happen there, with no hop. Every method may be called from any thread
/// (the connection's state sits under one lock) and a `send` writes at once, on the caller's
/// thread, when nothing is queued before it. Where the handler runs:
/// * without a delivery queue, on the loop thread, right after the read: an owner that lives
///   on the loop (the introduction server) reads, decides and forwards to another connection
///   of the same loop without any hop; it calls `close()` on the loop thread, after which no
///   event reaches it;
/// * with a delivery queue (`init(descriptor:queue:…)`), on that queue, in order, for an owner
///   whose state lives there; an event still in the queue when the owner calls `close()` there
///   is dropped (its descriptors closed). The loop keeps at most `deliveryWindow` reads in the
///   queue before it waits for the owner, so a slow owner holds back the peer, not memory.
///
/// Output is an ordered queue of segments. A plain segment is bytes; a descriptor segment is
/// bytes plus exactly one descriptor, sent by its own `sendmsg` so the descriptor rides on the
/// segment's first byte. On EAGAIN nothing was sent, so the whole segment with its descriptor is
/// retried when the socket becomes writable; after a partial write the rest goes without the
/// descriptor (K6), and our copy is closed as soon as the kernel has it (A10).
public final class StreamConnection: @unchecked Sendable {
    // @unchecked: every mutable field below is read and written only under `lock`.

    public struct Configuration: Sendable {
        /// Bytes per `recvmsg` (the buffer's size when the connection has one of its own; a
        /// shared `ReadBuffer` brings its own size).
        public var readBufferSize: Int = 64 * 1024
        /// Descriptors one `recvmsg` can take before MSG_CTRUNC; more than the protocol's one, so
        /// extras are seen and closed rather than silently dropped (§3.1).
        public var descriptorsPerRead: Int = 4
        /// Reads per readiness event before the loop turns to other descriptors (the socket
        /// stays readable, so the loop comes back to it).
        public var readsPerEvent: Int = 4
        /// Cap on queued, unsent output bytes (F4; §4 suggests 64 KiB).
        public var maximumQueuedBytes: Int = 64 * 1024
        /// Cap on descriptors waiting in the output queue.
        public var maximumQueuedDescriptors: Int = 16
        /// Deliver a read whose descriptors the kernel dropped (MSG_CTRUNC) with
        /// `StreamChunk.descriptorsLost` instead of failing the connection.
        public var reportsLostDescriptors: Bool = false

        public init() {}
    }

    /// One `recvmsg` buffer that every connection of the same loop may share: reads happen
    /// only on the loop thread and each is copied into its `StreamChunk` before the next, so
    /// no two reads overlap in it. A server with thousands of mostly idle connections then
    /// pays for one buffer instead of one per connection.
    public final class ReadBuffer: @unchecked Sendable {
        // @unchecked: only used on the thread of the one loop its connections share.
        let storage: UnsafeMutableRawBufferPointer

        public init(byteCount: Int) {
            precondition(byteCount > 0, "a read buffer needs room for a byte")
            storage = .allocate(byteCount: byteCount, alignment: 16)
        }

        public var byteCount: Int { storage.count }

        deinit { storage.deallocate() }
    }

    private enum Segment {
        case bytes([UInt8], offset: Int)
        /// `descriptor` is nil once the kernel has taken it with the first chunk.
        case descriptor([UInt8], offset: Int, descriptor: FileDescriptor?)

        var remaining: Int {
            switch self {
            case .bytes(let bytes, let offset), .descriptor(let bytes, let offset, _): bytes.count - offset
            }
        }
    }

    private enum State {
        case idle
        case running(EventRegistration)
        case closed
    }

    /// Work decided under the lock and done after it is released: handlers and completions
    /// never run under the lock, so they may call back into the connection.
    private struct Effects {
        var flushed: [(TransportError?) -> Void] = []
        var flushError: TransportError?
        /// Why the connection failed, for the handler.
        var failure: TransportError?
        var backPressure: (() -> Void)?

        var isEmpty: Bool { flushed.isEmpty && failure == nil && backPressure == nil }
    }

    /// Reads handed to the delivery queue and not yet taken there, before reading pauses.
    public static let deliveryWindow = 32

    public let loop: EventLoop
    /// Where the handler runs; nil: on the loop thread.
    public let deliveryQueue: DispatchQueue?
    public let configuration: Configuration
    private let descriptor: FileDescriptor
    private let readBuffer: ReadBuffer
    private let lock = Lock()
    private var handler: ((StreamEvent) -> Void)?
    private var state = State.idle
    private var interest: Interest = []
    private var readPaused = false
    private var readFinished = false
    private var writeArmed = false
    private var retryScheduled = false
    /// Reads in the delivery queue; reading waits while `deliveryWindow` are.
    private var undelivered = 0
    private var output: [Segment] = []
    private var outputHead = 0
    private var queuedBytes = 0
    private var queuedDescriptors = 0
    private var inboundOffset = 0
    private var drainWaiters: [(TransportError?) -> Void] = []
    private var backPressureHandler: (() -> Void)?

    /// Takes ownership of `descriptor` (a connected stream socket; it is made non-blocking).
    /// The handler runs on `loop`'s thread. Reads go into `readBuffer` when given (shared by
    /// connections of the same loop), else into a buffer of `configuration.readBufferSize` of
    /// the connection's own. Nothing happens until `start()`.
    public convenience init(
        descriptor: FileDescriptor, loop: EventLoop, configuration: Configuration = Configuration(),
        readBuffer: ReadBuffer? = nil, handler: @escaping (StreamEvent) -> Void
    ) throws(TransportError) {
        try self.init(descriptor: descriptor, loop: loop, deliveryQueue: nil, configuration: configuration,
                      readBuffer: readBuffer, handler: handler)
    }

    /// Takes ownership of `descriptor`, on a loop of the process's group, with the handler run
    /// on `queue` (for an owner whose state lives there). Nothing happens until `start()`.
    public convenience init(
        descriptor: FileDescriptor, queue: DispatchQueue, configuration: Configuration = Configuration(),
        loop: EventLoop = EventLoopGroup.shared.next(), handler: @escaping (StreamEvent) -> Void
    ) throws(TransportError) {
        try self.init(descriptor: descriptor, loop: loop, deliveryQueue: queue, configuration: configuration,
                      readBuffer: nil, handler: handler)
    }

    private init(
        descriptor: FileDescriptor, loop: EventLoop, deliveryQueue: DispatchQueue?, configuration: Configuration,
        readBuffer: ReadBuffer?, handler: @escaping (StreamEvent) -> Void
    ) throws(TransportError) {
        precondition(configuration.readBufferSize > 0 && configuration.readsPerEvent > 0, "bad configuration")
        precondition((0...maximumDescriptorsPerMessage).contains(configuration.descriptorsPerRead), "bad configuration")
        try descriptor.setNonBlocking()
        self.descriptor = descriptor
        self.loop = loop
        self.deliveryQueue = deliveryQueue
        self.configuration = configuration
        self.handler = handler
        self.readBuffer = readBuffer ?? ReadBuffer(byteCount: configuration.readBufferSize)
    }

    deinit {
        // The loop holds the connection only weakly, so dropping a running connection lands
        // here: a bug in the owner (it must close), reported in debug builds and cleaned up.
        switch state {
        case .running(let registration):
            assertionFailure("StreamConnection dropped while running: call close()")
            registration.unregister()
            discardOutput()
            descriptor.close()
        case .idle:
            discardOutput()
            descriptor.close()
        case .closed:
            break
        }
    }

    /// Whether the peer is still there, without reading (see `FileDescriptor.probeLiveness`).
    public func probeLiveness() -> SocketLiveness {
        lock.withLock {
            if case .closed = state { return .hungUp("connection closed") }
            return descriptor.probeLiveness()
        }
    }

    /// Whether `close()` has run (or a failure closed the connection).
    public var isClosed: Bool {
        lock.withLock {
            if case .closed = state { return true }
            return false
        }
    }

    /// Called each time a descriptor-carrying send meets ETOOMANYREFS (K7), on the thread that
    /// sent (the loop thread for a retry); the send is retried shortly, the connection stays.
    public var onDescriptorBackPressure: (() -> Void)? {
        get { lock.withLock { backPressureHandler } }
        set { lock.withLock { backPressureHandler = newValue } }
    }

    /// Whether everything sent so far, descriptors included, has been read by the peer: no
    /// output queued here and none unread in the kernel (SIOCOUTQ 0).
    public var peerHasReadEverything: Bool {
        lock.withLock {
            guard isOpen, outputHead == output.count else { return false }
            return (try? descriptor.unreadOutput()) == 0
        }
    }

    /// What the kernel holds of our output that the peer has not read (SIOCOUTQ; skb memory,
    /// so only comparable with itself); nil once closed.
    public var peerUnreadBytes: Int? {
        lock.withLock {
            guard isOpen else { return nil }
            return try? descriptor.unreadOutput()
        }
    }

    /// Unsent output bytes.
    public var pendingOutputBytes: Int {
        lock.withLock { queuedBytes }
    }

    /// Where the output stands, in one look (an owner asks after each forward).
    public struct OutputState: Sendable, Equatable {
        /// Bytes queued here and not yet handed to the kernel.
        public let unsentBytes: Int
        /// What the kernel holds of our output that the peer has not read (SIOCOUTQ), asked
        /// only when nothing is unsent; nil then if the kernel would not say.
        public let peerUnreadBytes: Int?
    }

    /// `pendingOutputBytes` and, when it is zero, `peerUnreadBytes`, under one lock; nil once
    /// closed.
    public var outputState: OutputState? {
        lock.withLock {
            guard isOpen else { return nil }
            guard queuedBytes == 0 else { return OutputState(unsentBytes: queuedBytes, peerUnreadBytes: nil) }
            return OutputState(unsentBytes: 0, peerUnreadBytes: try? descriptor.unreadOutput())
        }
    }

    /// Registers with the loop, starts reading and flushes anything queued before. A loop that
    /// refuses the descriptor fails the connection (`.failed`).
    public func start() {
        let effects = lock.withLock { () -> Effects in
            guard case .idle = state else { return Effects() }
            let wanted: Interest = readPaused ? [] : .readable
            let registration: EventRegistration
            do throws(TransportError) {
                registration = try loop.register(descriptor, interest: wanted) { [weak self] readiness in
                    self?.handle(readiness)
                }
            } catch {
                return shutDown(reporting: error, notifying: true)
            }
            state = .running(registration)
            interest = wanted
            return outputHead < output.count ? flush() : Effects()
        }
        perform(effects, onLoop: false)
    }

    private var isOpen: Bool {
        if case .closed = state { return false }
        return true
    }

    private var isRunning: Bool {
        if case .running = state { return true }
        return false
    }

    // MARK: output

    /// Queues `bytes` after everything queued before and writes what the socket takes now.
    /// Throws `.closed`, or `.outputQueueFull` (the connection is then closed: a peer that does
    /// not read is dropped, F4).
    public func send(_ bytes: [UInt8]) throws(TransportError) {
        let effects = try lock.withLock { () throws(TransportError) -> Effects in
            guard isOpen else { throw TransportError(.closed, "send on a closed connection") }
            guard !bytes.isEmpty else { return Effects() }
            try reserve(bytes: bytes.count, descriptors: 0)
            appendBytes(bytes)
            return isRunning && !writeArmed ? flush() : Effects()
        }
        perform(effects, onLoop: false)
    }

    /// Under the lock: queues plain bytes, coalesced with a plain tail so one send covers them
    /// (the tail keeps its sent offset).
    private func appendBytes(_ bytes: [UInt8]) {
        if outputHead < output.count, case .bytes(var tail, let offset) = output[output.count - 1] {
            output[output.count - 1] = .bytes([], offset: 0)
            tail.append(contentsOf: bytes)
            output[output.count - 1] = .bytes(tail, offset: offset)
        } else {
            output.append(.bytes(bytes, offset: 0))
        }
    }

    /// Queues `bytes` (at least one byte, for example the 4-byte marker) carrying `descriptor`
    /// in one `sendmsg`. Takes ownership of `descriptor`: it is closed once sent, or when the
    /// connection closes. Throws `.closed` or `.outputQueueFull` (closing `descriptor` too).
    public func send(_ bytes: [UInt8], passing descriptor: FileDescriptor) throws(TransportError) {
        try send([], then: bytes, passing: descriptor)
    }

    /// Queues `bytes`, then `marker` (at least one byte) carrying `descriptor`: what `send(bytes)`
    /// then `send(marker, passing: descriptor)` queue, under one lock, and written by one
    /// `sendmmsg` when the socket takes both (the peer sees the same two segments). Takes
    /// ownership of `descriptor` as `send(_:passing:)` does; throws what it throws.
    public func send(_ bytes: [UInt8], then marker: [UInt8], passing descriptor: FileDescriptor) throws(TransportError) {
        precondition(!marker.isEmpty, "a descriptor needs at least one byte to ride on")
        let effects = try lock.withLock { () throws(TransportError) -> Effects in
            guard isOpen else {
                descriptor.close()
                throw TransportError(.closed, "send on a closed connection")
            }
            do throws(TransportError) {
                try reserve(bytes: bytes.count + marker.count, descriptors: 1)
            } catch {
                descriptor.close()
                throw error
            }
            if !bytes.isEmpty { appendBytes(bytes) }
            output.append(.descriptor(marker, offset: 0, descriptor: descriptor))
            return isRunning && !writeArmed ? flush() : Effects()
        }
        perform(effects, onLoop: false)
    }

    /// Calls `completion` once everything queued so far is handed to the kernel (nil), or with
    /// the error that closed the connection first: at once on this thread when that is already
    /// so, else on the thread that finishes the flush (the loop thread, or a later sender's).
    public func whenFlushed(_ completion: @escaping (TransportError?) -> Void) {
        let now: TransportError?? = lock.withLock {
            if !isOpen { return .some(TransportError(.closed, "connection closed before flush")) }
            if outputHead == output.count { return .some(nil) }
            drainWaiters.append(completion)
            return .none
        }
        if case .some(let result) = now { completion(result) }
    }

    /// Under the lock. On overflow the connection is shut down; its failure is not reported to
    /// the handler (the caller learns it from the throw).
    private func reserve(bytes: Int, descriptors: Int) throws(TransportError) {
        let bytesAfter = queuedBytes + bytes
        let descriptorsAfter = queuedDescriptors + descriptors
        guard bytesAfter <= configuration.maximumQueuedBytes,
              descriptorsAfter <= configuration.maximumQueuedDescriptors else {
            let error = TransportError(
                .outputQueueFull,
                "output queue would hold \(bytesAfter) bytes and \(descriptorsAfter) descriptors " +
                "(caps \(configuration.maximumQueuedBytes), \(configuration.maximumQueuedDescriptors))")
            let effects = shutDown(reporting: error, notifying: false)
            let waiters = effects.flushed
            if !waiters.isEmpty {
                // Completions never run under the lock: hand them to the loop.
                let box = UncheckedSendableBox(waiters)
                let error = effects.flushError
                if !loop.execute({ for waiter in box.value { waiter(error) } }) {
                    for waiter in waiters { waiter(error) }
                }
            }
            throw error
        }
        queuedBytes = bytesAfter
        queuedDescriptors = descriptorsAfter
    }

    /// Under the lock: writes queued segments until the queue is empty or the socket is full.
    private func flush() -> Effects {
        guard isRunning else { return Effects() }
        while outputHead < output.count {
            let segment = output[outputHead]
            if case .bytes(let bytes, let offset) = segment, outputHead + 1 < output.count,
               case .descriptor(let marker, 0, let passed?) = output[outputHead + 1] {
                // Plain bytes, then a descriptor segment none of which went yet: one sendmmsg.
                let result: IOResult<(first: Int, second: Int)>
                do throws(TransportError) {
                    result = try sendPair(bytes, from: offset, marker, passing: passed)
                } catch {
                    return shutDown(reporting: error, notifying: true)
                }
                guard case .processed(let written) = result else { return armWrite(true) }
                queuedBytes -= written.first
                guard offset + written.first == bytes.count else {
                    // Partial write: the socket buffer is full (the marker did not go).
                    output[outputHead] = .bytes(bytes, offset: offset + written.first)
                    return armWrite(true)
                }
                outputHead += 1
                if written.second > 0 {
                    // The kernel took the descriptor with the marker's first byte (K6).
                    passed.close()
                    queuedDescriptors -= 1
                    queuedBytes -= written.second
                    output[outputHead] = .descriptor(marker, offset: written.second, descriptor: nil)
                    if written.second == marker.count { outputHead += 1 } else { return armWrite(true) }
                }
                // Otherwise the marker would block or failed: the plain send below says which.
                continue
            }
            let result: IOResult<Int>
            do throws(TransportError) {
                switch segment {
                case .bytes(let bytes, let offset):
                    result = try send(bytes, from: offset, passing: nil)
                case .descriptor(let bytes, let offset, let passed):
                    result = try send(bytes, from: offset, passing: passed)
                }
            } catch {
                if error.errno == ETOOMANYREFS, case .descriptor(_, 0, _?) = segment {
                    // K7: the uid's descriptors in flight exceed its RLIMIT_NOFILE. Nothing was
                    // sent; it is the whole process's back-pressure, not this peer's fault, so
                    // keep the segment and retry once receivers have drained some.
                    scheduleRetry()
                    var effects = Effects()
                    effects.backPressure = backPressureHandler
                    return effects
                }
                return shutDown(reporting: error, notifying: true)
            }
            guard case .processed(let written) = result else {
                return armWrite(true)
            }
            switch segment {
            case .bytes(let bytes, let offset):
                output[outputHead] = .bytes(bytes, offset: offset + written)
            case .descriptor(let bytes, let offset, let passed):
                if let passed {
                    // The kernel took the descriptor with the first byte (K6): our copy goes now.
                    passed.close()
                    queuedDescriptors -= 1
                }
                output[outputHead] = .descriptor(bytes, offset: offset + written, descriptor: nil)
            }
            queuedBytes -= written
            if output[outputHead].remaining == 0 {
                outputHead += 1
            } else {
                // Partial write: the socket buffer is full; wait rather than spin on EAGAIN.
                return armWrite(true)
            }
        }
        output.removeAll(keepingCapacity: output.capacity <= 64)
        outputHead = 0
        var effects = armWrite(false)
        effects.flushed = drainWaiters
        drainWaiters = []
        return effects
    }

    private func scheduleRetry() {
        guard !retryScheduled else { return }
        // Called under `lock`. A loop timer: no thread of its own; nil once the loop stopped.
        retryScheduled = loop.schedule(after: .milliseconds(20)) { [weak self] in self?.retryFlush() } != nil
    }

    private func retryFlush() {
        let effects = lock.withLock { () -> Effects in
            retryScheduled = false
            guard isRunning, !writeArmed else { return Effects() }
            return flush()
        }
        perform(effects, onLoop: true)
    }

    private func send(_ bytes: [UInt8], from offset: Int, passing passed: FileDescriptor?) throws(TransportError) -> IOResult<Int> {
        try typed {
            try bytes.withUnsafeBytes { all in
                try descriptor.send(UnsafeRawBufferPointer(rebasing: all[offset...]), passing: passed.map { [$0] } ?? [])
            }
        }
    }

    private func sendPair(
        _ bytes: [UInt8], from offset: Int, _ marker: [UInt8], passing passed: FileDescriptor
    ) throws(TransportError) -> IOResult<(first: Int, second: Int)> {
        try typed {
            try bytes.withUnsafeBytes { all in
                try marker.withUnsafeBytes { markerBytes in
                    try descriptor.send(UnsafeRawBufferPointer(rebasing: all[offset...]), then: markerBytes, passing: passed)
                }
            }
        }
    }

    private func armWrite(_ wanted: Bool) -> Effects {
        guard isRunning, wanted != writeArmed else { return Effects() }
        writeArmed = wanted
        return updateInterest()
    }

    // MARK: interest

    /// Under the lock: tells the loop what the connection waits for now.
    private func updateInterest() -> Effects {
        guard case .running(let registration) = state else { return Effects() }
        var wanted: Interest = []
        if !readPaused, !readFinished, undelivered < Self.deliveryWindow { wanted.insert(.readable) }
        if writeArmed { wanted.insert(.writable) }
        guard wanted != interest else { return Effects() }
        do throws(TransportError) {
            try registration.setInterest(wanted)
        } catch {
            return shutDown(reporting: error, notifying: true)
        }
        interest = wanted
        return Effects()
    }

    // MARK: input

    /// Stops reading (back-pressure). Bytes stay in the kernel; the peer's sends eventually block.
    public func suspendReading() {
        let effects = lock.withLock { () -> Effects in
            guard !readPaused else { return Effects() }
            readPaused = true
            return updateInterest()
        }
        perform(effects, onLoop: false)
    }

    /// Resumes reading after `suspendReading()`.
    public func resumeReading() {
        let effects = lock.withLock { () -> Effects in
            guard readPaused else { return Effects() }
            readPaused = false
            return updateInterest()
        }
        perform(effects, onLoop: false)
    }

    /// Readiness from the loop, on its thread.
    private func handle(_ readiness: Readiness) {
        if readiness.contains(.writable) {
            let effects = lock.withLock { () -> Effects in
                guard isRunning, writeArmed else { return Effects() }
                return flush()
            }
            perform(effects, onLoop: true)
        }
        // A hang-up or an error is seen by the read that follows it (end of stream, reset).
        guard !readiness.isDisjoint(with: [.readable, .hangUp, .error]) else { return }
        for _ in 0..<configuration.readsPerEvent {
            guard let event = readOnce() else { return }
            deliver(event, counted: true)
            if case .received = event { continue }
            return
        }
    }

    /// One `recvmsg` under the lock, as the event to deliver; nil when there is nothing to
    /// deliver (would block, not reading, closed).
    private func readOnce() -> StreamEvent? {
        var failure: Effects?
        let event = lock.withLock { () -> StreamEvent? in
            guard isRunning, !readPaused, !readFinished, undelivered < Self.deliveryWindow else { return nil }
            let result: IOResult<Received>
            do throws(TransportError) {
                result = try descriptor.receive(
                    into: readBuffer.storage, descriptorCapacity: configuration.descriptorsPerRead,
                    reportingTruncation: configuration.reportsLostDescriptors)
            } catch {
                failure = shutDown(reporting: error, notifying: true)
                return nil
            }
            guard case .processed(let received) = result else { return nil }
            if deliveryQueue != nil { undelivered += 1 }
            if received.isEndOfStream {
                readFinished = true  // level-triggered: a socket at EOF stays readable forever
                failure = updateInterest()
                return .endOfStream
            }
            let bytes = Array(UnsafeRawBufferPointer(rebasing: readBuffer.storage[..<received.byteCount]))
            let chunk = StreamChunk(
                bytes: bytes, descriptors: received.descriptors, streamOffset: inboundOffset,
                descriptorsLost: received.descriptorsLost)
            inboundOffset += received.byteCount
            if undelivered >= Self.deliveryWindow { failure = updateInterest() }
            return .received(chunk)
        }
        if let failure { perform(failure, onLoop: true) }
        return event
    }

    /// Hands an event to the owner: now (on the loop thread), or through the delivery queue.
    /// `counted`: a read that holds a place in the delivery window.
    private func deliver(_ event: StreamEvent, counted: Bool) {
        guard let queue = deliveryQueue else {
            Self.give(event, to: currentHandler)
            return
        }
        let box = UncheckedSendableBox(event)
        queue.async { [self] in deliverOnQueue(box.value, counted: counted) }
    }

    private func deliverOnQueue(_ event: StreamEvent, counted: Bool) {
        if counted {
            let effects = lock.withLock { () -> Effects in
                undelivered -= 1
                return undelivered == Self.deliveryWindow - 1 ? updateInterest() : Effects()
            }
            perform(effects, onLoop: false)
        }
        Self.give(event, to: currentHandler)
    }

    private var currentHandler: ((StreamEvent) -> Void)? { lock.withLock { handler } }

    /// Calls `handler`, or, for an owner that closed meanwhile, closes what the event carried.
    private static func give(_ event: StreamEvent, to handler: ((StreamEvent) -> Void)?) {
        if let handler {
            handler(event)
        } else if case .received(let chunk) = event {
            for passed in chunk.descriptors { passed.close() }
        }
    }

    // MARK: closing

    /// Closes the connection: unregisters it from the loop, closes the socket and every
    /// descriptor still queued for sending. Idempotent; the handler is not called for a close
    /// the owner asked for.
    public func close() {
        let effects = lock.withLock {
            handler = nil  // also after a failure: reads still waiting in the delivery queue go
            return shutDown(reporting: nil, notifying: false)
        }
        perform(effects, onLoop: false)
    }

    /// Under the lock: closes everything and returns what to tell whom once it is released.
    /// A failure the handler is told of keeps the handler, so reads that came before it still
    /// reach the owner, in order, and then the failure; otherwise the handler is dropped.
    private func shutDown(reporting error: TransportError?, notifying: Bool) -> Effects {
        var effects = Effects()
        switch state {
        case .closed:
            return effects
        case .running(let registration):
            registration.unregister()  // before the close: the number may be reused at once
        case .idle:
            break
        }
        state = .closed
        if !notifying { handler = nil }
        backPressureHandler = nil
        discardOutput()
        descriptor.close()
        effects.flushed = drainWaiters
        effects.flushError = error ?? TransportError(.closed, "connection closed before flush")
        drainWaiters = []
        if notifying, let error, handler != nil { effects.failure = error }
        return effects
    }

    private func discardOutput() {
        for case .descriptor(_, _, let passed?) in output[outputHead...] { passed.close() }
        output = []
        outputHead = 0
        queuedBytes = 0
        queuedDescriptors = 0
    }

    /// Runs what was decided under the lock. A failure reaches the handler asynchronously (on
    /// the loop, or through the delivery queue) when it was found in a call the owner made, so
    /// the handler never re-enters the owner's code that made it; found by the loop itself, it
    /// is reported at once.
    private func perform(_ effects: Effects, onLoop: Bool) {
        guard !effects.isEmpty else { return }
        effects.backPressure?()
        for waiter in effects.flushed { waiter(effects.flushError) }
        guard let error = effects.failure else { return }
        if onLoop || deliveryQueue != nil {
            deliver(.failed(error), counted: false)
        } else if !loop.execute({ [self] in deliver(.failed(error), counted: false) }) {
            deliver(.failed(error), counted: false)
        }
    }
}

/// Carries a value across a `@Sendable` boundary when the code guarantees it is only used on
/// one thread at a time (a serial queue, or a loop thread).
struct UncheckedSendableBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
