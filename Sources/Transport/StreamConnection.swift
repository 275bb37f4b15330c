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

/// What a `StreamConnection` reports to its handler, always on its queue.
public enum StreamEvent: Sendable {
    /// One read's bytes and descriptors.
    case received(StreamChunk)
    /// The peer shut down its sending side. Reading stops; writing still works until `close()`.
    case endOfStream
    /// A read or write failed; the connection is already closed, queued descriptors too.
    case failed(TransportError)
}

/// A non-blocking AF_UNIX stream connection driven by libdispatch: one serial queue, one read
/// source, one write source; no thread or task per connection.
///
/// Every method must be called on `queue`, and the handler runs there too. That confinement is
/// what makes the class safe to share (`@unchecked Sendable`): its mutable state is only
/// touched on the queue, which `dispatchPrecondition` checks in debug builds.
///
/// Output is an ordered queue of segments. A plain segment is bytes; a descriptor segment is
/// bytes plus exactly one descriptor, sent by its own `sendmsg` so the descriptor rides on the
/// segment's first byte. On EAGAIN nothing was sent, so the whole segment with its descriptor is
/// retried when the socket becomes writable; after a partial write the rest goes without the
/// descriptor (K6), and our copy is closed as soon as the kernel has it (A10).
public final class StreamConnection: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// Bytes per `recvmsg` (the buffer's size when the connection has one of its own; a
        /// shared `ReadBuffer` brings its own size).
        public var readBufferSize: Int = 64 * 1024
        /// Descriptors one `recvmsg` can take before MSG_CTRUNC; more than the protocol's one, so
        /// extras are seen and closed rather than silently dropped (§3.1).
        public var descriptorsPerRead: Int = 4
        /// Reads per readable event before yielding the queue to other connections.
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
        case running
        case closed
    }

    public let queue: DispatchQueue
    public let configuration: Configuration
    private let descriptor: FileDescriptor
    private var handler: ((StreamEvent) -> Void)?
    private var state = State.idle
    private var readSource: DispatchSourceRead?
    private var writeSource: DispatchSourceWrite?
    private var readPaused = false
    private var readFinished = false
    private var writeArmed = false
    /// Every source created on the descriptor, until it finished cancelling.
    private let sources = DispatchGroup()
    private var output: [Segment] = []
    private var outputHead = 0
    private var queuedBytes = 0
    private var queuedDescriptors = 0
    private var inboundOffset = 0
    private var drainWaiters: [(TransportError?) -> Void] = []
    private let readBuffer: ReadBuffer

    /// One `recvmsg` buffer that every connection confined to the same queue may share: a
    /// read is copied into its `StreamChunk` before the handler runs, so no two reads ever
    /// overlap in it. A server with thousands of mostly idle connections then pays for one
    /// buffer instead of one per connection.
    public final class ReadBuffer: @unchecked Sendable {
        // @unchecked: only used on the one queue its connections share (see above).
        let storage: UnsafeMutableRawBufferPointer

        public init(byteCount: Int) {
            precondition(byteCount > 0, "a read buffer needs room for a byte")
            storage = .allocate(byteCount: byteCount, alignment: 16)
        }

        public var byteCount: Int { storage.count }

        deinit { storage.deallocate() }
    }

    /// Takes ownership of `descriptor` (a connected stream socket; it is made non-blocking).
    /// Reads go into `readBuffer` when given (shared by connections on the same `queue`),
    /// else into a buffer of `configuration.readBufferSize` of the connection's own. Nothing
    /// happens until `start()`.
    public init(
        descriptor: FileDescriptor, queue: DispatchQueue, configuration: Configuration = Configuration(),
        readBuffer: ReadBuffer? = nil, handler: @escaping (StreamEvent) -> Void
    ) throws(TransportError) {
        precondition(configuration.readBufferSize > 0 && configuration.readsPerEvent > 0, "bad configuration")
        precondition((0...maximumDescriptorsPerMessage).contains(configuration.descriptorsPerRead), "bad configuration")
        try descriptor.setNonBlocking()
        self.descriptor = descriptor
        self.queue = queue
        self.configuration = configuration
        self.handler = handler
        self.readBuffer = readBuffer ?? ReadBuffer(byteCount: configuration.readBufferSize)
    }

    deinit {
        // Sources only hold weak references, so dropping a running connection lands here: a
        // bug in the owner (it must close), reported in debug builds and cleaned up anyway.
        switch state {
        case .running:
            assertionFailure("StreamConnection dropped while running: call close()")
            discardOutput()
            cancelSources()
        case .idle:
            discardOutput()
            descriptor.close()
        case .closed:
            break
        }
    }

    /// Whether the peer is still there, without reading (see `FileDescriptor.probeLiveness`).
    public func probeLiveness() -> SocketLiveness {
        dispatchPrecondition(condition: .onQueue(queue))
        if case .closed = state { return .hungUp("connection closed") }
        return descriptor.probeLiveness()
    }

    /// Whether `close()` has run (or a failure closed the connection).
    public var isClosed: Bool {
        dispatchPrecondition(condition: .onQueue(queue))
        return state == .closed
    }

    /// Called on the queue each time a descriptor-carrying send meets ETOOMANYREFS (K7); the
    /// send is retried shortly, the connection stays.
    public var onDescriptorBackPressure: (() -> Void)?

    /// Whether everything sent so far, descriptors included, has been read by the peer: no
    /// output queued here and none unread in the kernel (SIOCOUTQ 0).
    public var peerHasReadEverything: Bool {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state != .closed, outputHead == output.count else { return false }
        return (try? descriptor.unreadOutput()) == 0
    }

    /// What the kernel holds of our output that the peer has not read (SIOCOUTQ; skb memory,
    /// so only comparable with itself); nil once closed.
    public var peerUnreadBytes: Int? {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state != .closed else { return nil }
        return try? descriptor.unreadOutput()
    }

    /// Unsent output bytes.
    public var pendingOutputBytes: Int {
        dispatchPrecondition(condition: .onQueue(queue))
        return queuedBytes
    }

    /// Starts reading and flushes anything queued before.
    public func start() {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state == .idle else { return }
        state = .running
        if !readPaused { makeReadSource() }
        if outputHead < output.count { flush() }
    }

    // MARK: output

    /// Queues `bytes` after everything queued before. Throws `.closed`, or `.outputQueueFull`
    /// (the connection is then closed: a peer that does not read is dropped, F4).
    public func send(_ bytes: [UInt8]) throws(TransportError) {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state != .closed else { throw TransportError(.closed, "send on a closed connection") }
        guard !bytes.isEmpty else { return }
        try reserve(bytes: bytes.count, descriptors: 0)
        if outputHead < output.count, case .bytes(var tail, let offset) = output[output.count - 1] {
            // Coalesce plain bytes so one send covers them; the tail keeps its sent offset.
            output[output.count - 1] = .bytes([], offset: 0)
            tail.append(contentsOf: bytes)
            output[output.count - 1] = .bytes(tail, offset: offset)
        } else {
            output.append(.bytes(bytes, offset: 0))
        }
        if state == .running && !writeArmed { flush() }
    }

    /// Queues `bytes` (at least one byte, for example the 4-byte marker) carrying `descriptor`
    /// in one `sendmsg`. Takes ownership of `descriptor`: it is closed once sent, or when the
    /// connection closes. Throws `.closed` or `.outputQueueFull` (closing `descriptor` too).
    public func send(_ bytes: [UInt8], passing descriptor: FileDescriptor) throws(TransportError) {
        dispatchPrecondition(condition: .onQueue(queue))
        precondition(!bytes.isEmpty, "a descriptor needs at least one byte to ride on")
        guard state != .closed else {
            descriptor.close()
            throw TransportError(.closed, "send on a closed connection")
        }
        do throws(TransportError) {
            try reserve(bytes: bytes.count, descriptors: 1)
        } catch {
            descriptor.close()
            throw error
        }
        output.append(.descriptor(bytes, offset: 0, descriptor: descriptor))
        if state == .running && !writeArmed { flush() }
    }

    /// Calls `completion` on the queue once everything queued so far is handed to the kernel
    /// (nil), or with the error that closed the connection first.
    public func whenFlushed(_ completion: @escaping (TransportError?) -> Void) {
        dispatchPrecondition(condition: .onQueue(queue))
        if state == .closed {
            completion(TransportError(.closed, "connection closed before flush"))
        } else if outputHead == output.count {
            completion(nil)
        } else {
            drainWaiters.append(completion)
        }
    }

    private func reserve(bytes: Int, descriptors: Int) throws(TransportError) {
        let bytesAfter = queuedBytes + bytes
        let descriptorsAfter = queuedDescriptors + descriptors
        guard bytesAfter <= configuration.maximumQueuedBytes,
              descriptorsAfter <= configuration.maximumQueuedDescriptors else {
            let error = TransportError(
                .outputQueueFull,
                "output queue would hold \(bytesAfter) bytes and \(descriptorsAfter) descriptors " +
                "(caps \(configuration.maximumQueuedBytes), \(configuration.maximumQueuedDescriptors))")
            shutDown(reporting: error, notifyHandler: false)
            throw error
        }
        queuedBytes = bytesAfter
        queuedDescriptors = descriptorsAfter
    }

    private func flush() {
        guard state == .running else { return }
        while outputHead < output.count {
            let segment = output[outputHead]
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
                    onDescriptorBackPressure?()
                    queue.asyncAfter(deadline: .now() + .milliseconds(20)) { [weak self] in
                        guard let self, self.state == .running, !self.writeArmed else { return }
                        self.flush()
                    }
                    return
                }
                shutDown(reporting: error, notifyHandler: true)
                return
            }
            guard case .processed(let written) = result else {
                armWrite(true)
                return
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
                armWrite(true)
                return
            }
        }
        output.removeAll(keepingCapacity: output.capacity <= 64)
        outputHead = 0
        armWrite(false)
        let waiters = drainWaiters
        drainWaiters = []
        for waiter in waiters { waiter(nil) }
    }

    private func send(_ bytes: [UInt8], from offset: Int, passing passed: FileDescriptor?) throws(TransportError) -> IOResult<Int> {
        try typed {
            try bytes.withUnsafeBytes { all in
                try descriptor.send(UnsafeRawBufferPointer(rebasing: all[offset...]), passing: passed.map { [$0] } ?? [])
            }
        }
    }

    private func armWrite(_ wanted: Bool) {
        guard state == .running, wanted != writeArmed else { return }
        writeArmed = wanted
        if wanted {
            let write = DispatchSource.makeWriteSource(fileDescriptor: borrowRawForSources(), queue: queue)
            write.setEventHandler { [weak self] in self?.flush() }
            track(write)
            writeSource = write
            write.activate()
        } else {
            writeSource?.cancel()
            writeSource = nil
        }
    }

    // MARK: sources
    //
    // Sources are created when wanted and cancelled when not, never suspended: on Linux a read
    // and a write source on one descriptor share one epoll registration, and suspending one of
    // them was seen to lose the other's events (a connection stalled with unread data, a
    // registration reply never read). The descriptor closes only after every source created on
    // it has finished cancelling, so libdispatch never watches a reused descriptor number.

    private func makeReadSource() {
        let read = DispatchSource.makeReadSource(fileDescriptor: borrowRawForSources(), queue: queue)
        read.setEventHandler { [weak self] in self?.handleReadable() }
        track(read)
        readSource = read
        read.activate()
    }

    private func track(_ source: DispatchSourceProtocol) {
        sources.enter()
        source.setCancelHandler { [sources] in sources.leave() }
    }

    // MARK: input

    /// Stops reading (back-pressure). Bytes stay in the kernel; the peer's sends eventually block.
    public func suspendReading() {
        dispatchPrecondition(condition: .onQueue(queue))
        guard !readPaused else { return }
        readPaused = true
        if state == .running, !readFinished {
            readSource?.cancel()
            readSource = nil
        }
    }

    /// Resumes reading after `suspendReading()`.
    public func resumeReading() {
        dispatchPrecondition(condition: .onQueue(queue))
        guard readPaused else { return }
        readPaused = false
        if state == .running, !readFinished, readSource == nil { makeReadSource() }
    }

    private func handleReadable() {
        for _ in 0..<configuration.readsPerEvent {
            guard state == .running, !readPaused, !readFinished else { return }
            let result: IOResult<Received>
            do throws(TransportError) {
                result = try descriptor.receive(
                    into: readBuffer.storage, descriptorCapacity: configuration.descriptorsPerRead,
                    reportingTruncation: configuration.reportsLostDescriptors)
            } catch {
                shutDown(reporting: error, notifyHandler: true)
                return
            }
            guard case .processed(let received) = result else { return }
            if received.isEndOfStream {
                readFinished = true
                readSource?.cancel()  // level-triggered: a source at EOF would fire forever
                readSource = nil
                deliver(.endOfStream)
                return
            }
            let bytes = Array(UnsafeRawBufferPointer(rebasing: readBuffer.storage[..<received.byteCount]))
            let chunk = StreamChunk(
                bytes: bytes, descriptors: received.descriptors, streamOffset: inboundOffset, descriptorsLost: received.descriptorsLost)
            inboundOffset += received.byteCount
            deliver(.received(chunk))
        }
        // The per-event cap was reached with data possibly still queued. Do not rely on the read
        // source firing again for it (it may not: seen as a stalled connection under load);
        // continue on a later turn of the queue, after other connections had theirs.
        queue.async { [weak self] in self?.handleReadable() }
    }

    private func deliver(_ event: StreamEvent) {
        if let handler {
            handler(event)
        } else if case .received(let chunk) = event {
            for passed in chunk.descriptors { passed.close() }
        }
    }

    // MARK: closing

    /// Closes the connection: the socket, and every descriptor still queued for sending.
    /// Idempotent; the handler is not called for a close the owner asked for.
    public func close() {
        dispatchPrecondition(condition: .onQueue(queue))
        shutDown(reporting: nil, notifyHandler: false)
    }

    private func shutDown(reporting error: TransportError?, notifyHandler: Bool) {
        guard state != .closed else { return }
        let wasRunning = state == .running
        state = .closed
        let handler = self.handler
        self.handler = nil
        discardOutput()
        let closedError = error ?? TransportError(.closed, "connection closed before flush")
        let waiters = drainWaiters
        drainWaiters = []
        if wasRunning {
            cancelSources()  // the descriptor closes once every source has cancelled
        } else {
            descriptor.close()
        }
        for waiter in waiters { waiter(closedError) }
        if notifyHandler, let error, let handler {
            // Asynchronously, so a handler never re-enters the code that detected the failure.
            // The box is sound: the handler runs on `queue`, like every other call to it.
            let box = UncheckedSendableBox(handler)
            queue.async { box.value(.failed(error)) }
        }
    }

    private func discardOutput() {
        for case .descriptor(_, _, let passed?) in output[outputHead...] { passed.close() }
        output = []
        outputHead = 0
        queuedBytes = 0
        queuedDescriptors = 0
    }

    private func cancelSources() {
        readSource?.cancel()
        writeSource?.cancel()
        readSource = nil
        writeSource = nil
        sources.notify(queue: queue) { [descriptor] in descriptor.close() }
    }

    private func borrowRawForSources() -> Int32 {
        // The sources need the raw number for their whole life; the descriptor is closed only
        // after both have cancelled, which keeps the number valid meanwhile.
        guard let raw = try? descriptor.withRawDescriptor({ $0 }) else {
            preconditionFailure("StreamConnection started with a closed descriptor")
        }
        return raw
    }
}

/// Carries a value across a `@Sendable` boundary when the code guarantees it is only used on
/// one serial queue.
struct UncheckedSendableBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
