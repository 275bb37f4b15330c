#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Synchronization

/// A connected stream socket under one channel, registered once with an `EventLoop`: the
/// descriptor and its registration in one owner, so the raw number never leaves Transport.
///
/// The channel's serial `queue` is its lock: every method is called on it (`queue.sync` from
/// the caller's thread runs there without a thread hop) and the handlers run on it
/// (`@unchecked Sendable` rests on that). Readiness arrives on the loop thread and is handled
/// in one of two ways:
/// * on the loop thread (`handleReadinessOnLoopThread(true)`), under the queue with
///   `queue.sync`: no thread hop from `recvmsg` to the handler (an open channel);
/// * handed to a worker (the default), which runs the handler under the queue: the descriptor
///   is disarmed until the handler ran, so CPU-heavy steps (handshake crypto) never stall the
///   loop's other descriptors.
/// Either way the after-readiness call (`setAfterReadiness`) runs on that thread once it left
/// the queue.
///
/// I/O uses MSG_DONTWAIT and never sets O_NONBLOCK: a passed socket shares its file status
/// flags with the sender (A8). After `close()` nothing watches the socket again: it is
/// unregistered from the loop and then closed, in that order, at once.
public final class ChannelSocket: @unchecked Sendable {
    private enum State {
        case open
        case closed
    }

    public let queue: DispatchQueue
    public let loop: EventLoop
    /// Where handed-off readiness is handled (a concurrent queue: the handler takes `queue`).
    private let worker: DispatchQueue
    private let descriptor: FileDescriptor
    private var state = State.open
    private var readHandler: (() -> Void)?
    private var writeHandler: (() -> Void)?
    /// Set once in `init`, read on the loop thread (to disarm) and on the queue.
    private let registration = Mutex<EventRegistration?>(nil)
    private let onLoopThread = Atomic<Bool>(false)
    /// In a class box: a function value as a Mutex's value would be re-wrapped in a
    /// reabstraction thunk on every inout access, a chain that grows with every event.
    private final class Callback: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    private let afterReadiness = Mutex<Callback?>(nil)
    /// Takes handed-off readiness instead of a worker (see `setHandOff`).
    private final class HandOff: Sendable {
        let take: @Sendable (_ work: @escaping @Sendable () -> Void) -> Bool
        init(_ take: @escaping @Sendable (_ work: @escaping @Sendable () -> Void) -> Bool) { self.take = take }
    }

    private let handOff = Mutex<HandOff?>(nil)
    /// True while a readiness event is being handled on the loop thread (queue-confined).
    public private(set) var isHandlingOnLoopThread = false
    /// True while a readiness event is being handled, on the loop thread or on a worker
    /// (queue-confined): the after-readiness call follows when it ends.
    public private(set) var isHandlingReadiness = false

    /// Takes ownership of `descriptor` (a connected stream socket) and registers it with
    /// `loop` (by default the next of the process's loops). Throws `.closed` when it is
    /// already closed, or the loop's error (the descriptor is then closed).
    public init(
        descriptor: FileDescriptor, queue: DispatchQueue, loop: EventLoop = EventLoopGroup.shared.next(),
        worker: DispatchQueue = .global(qos: .userInitiated)
    ) throws(TransportError) {
        guard descriptor.isOpen else { throw TransportError(.closed, "descriptor already closed") }
        self.descriptor = descriptor
        self.queue = queue
        self.loop = loop
        self.worker = worker
        do {
            let registration = try loop.register(descriptor, interest: []) { [weak self] readiness in
                self?.ready(readiness)
            }
            self.registration.withLock { $0 = registration }
        } catch {
            descriptor.close()
            throw error
        }
    }

    deinit {
        switch state {
        case .open:
            // The owner must close; handlers usually keep it alive while watching, so an open
            // socket lands here only if nothing watched it.
            registration.withLock { $0 }?.unregisterAndClose()
        case .closed:
            break
        }
    }

    /// Whether a handler watches the socket now.
    public var isWatching: Bool { readHandler != nil || writeHandler != nil }

    /// Whether a read handler watches the socket now (an owner asks before making a new
    /// handler closure on every event).
    public var isWatchingReadable: Bool { readHandler != nil }

    public var isClosed: Bool {
        switch state {
        case .open: return false
        case .closed: return true
        }
    }

    /// Where readiness is handled from now on (see the type's comment). Any thread.
    public func handleReadinessOnLoopThread(_ onLoop: Bool) {
        onLoopThread.store(onLoop, ordering: .releasing)
    }

    /// Called after each readiness event, on the thread that handled it (the loop thread, or
    /// the worker of a handed-off event), outside the queue: an owner delivers what the
    /// handlers collected to code that may call back into it. Set during an event, it is
    /// called when that event ends.
    public func setAfterReadiness(_ body: (@Sendable () -> Void)?) {
        let callback = body.map(Callback.init)
        afterReadiness.withLock { $0 = callback }
    }

    /// Who handles readiness handed off the loop: `take` gets the work (run it once, on any
    /// thread but the loop's, outside the queue), or returns false and a worker runs it. An
    /// owner that waits for the outcome anyway (a connecting task) runs it itself: one thread
    /// wakes per event instead of a worker and then the waiter. nil: the workers. Any thread.
    public func setHandOff(_ take: (@Sendable (_ work: @escaping @Sendable () -> Void) -> Bool)?) {
        let box = take.map(HandOff.init)
        handOff.withLock { $0 = box }
    }

    // MARK: options

    /// SO_SNDBUF of our end (the kernel doubles it and caps it at net.core.wmem_max).
    public func setSendBufferSize(_ bytes: Int) throws(TransportError) {
        var value = Int32(clamping: bytes)
        try descriptor.with { (fd) throws(TransportError) in
            _ = try systemCallNonBlocking("setsockopt") {
                setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &value, socklen_t(MemoryLayout<Int32>.size))
            }
        }
    }

    /// Shuts down our sending side: the peer reads end of stream after our last byte.
    public func shutDownWrite() throws(TransportError) {
        try descriptor.with { (fd) throws(TransportError) in
            _ = try systemCallNonBlocking("shutdown") { Glibc.shutdown(fd, Int32(SHUT_WR)) }
        }
    }

    // MARK: I/O

    /// One non-blocking `sendmsg` of `bytes`. A closed peer is `.connectionReset`.
    public func send(_ bytes: UnsafeRawBufferPointer) throws(TransportError) -> IOResult<Int> {
        try descriptor.send(bytes)
    }

    /// One non-blocking `recvmsg` into `buffer`; `.processed(0)` is end of stream. A
    /// descriptor arriving on a channel socket is closed and reported (`.controlTruncated`).
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws(TransportError) -> IOResult<Int> {
        try descriptor.receiveBytes(into: buffer)
    }

    // MARK: watching

    /// Calls `handler` on the queue whenever the socket is readable (level-triggered: read
    /// until would-block, or stop watching at end of stream). nil stops watching. While a
    /// handler watches, asking again keeps the first one (owners call this after every event).
    public func watchReadable(_ handler: (() -> Void)?) {
        dispatchPrecondition(condition: .onQueue(queue))
        guard !isClosed, (handler == nil) != (readHandler == nil) else { return }
        readHandler = handler
        applyInterest()
    }

    /// Calls `handler` on the queue whenever the socket is writable. nil stops watching.
    /// While a handler watches, asking again keeps the first one.
    public func watchWritable(_ handler: (() -> Void)?) {
        dispatchPrecondition(condition: .onQueue(queue))
        guard !isClosed, (handler == nil) != (writeHandler == nil) else { return }
        writeHandler = handler
        applyInterest()
    }

    private func applyInterest() {
        var interest: Interest = []
        if readHandler != nil { interest.insert(.readable) }
        if writeHandler != nil { interest.insert(.writable) }
        do throws(TransportError) {
            try registration.withLock { registration throws(TransportError) in
                try registration?.setInterest(interest)
            }
        } catch {
            // epoll_ctl MOD fails only for lack of kernel memory: report it to the handlers as
            // an error they will meet on their next read or write.
            queue.async { self.dispatch(.error) }
        }
    }

    /// On the loop thread.
    private func ready(_ readiness: Readiness) {
        if onLoopThread.load(ordering: .acquiring) {
            var after: Callback?
            queue.sync {
                isHandlingOnLoopThread = true
                after = handle(readiness)
                isHandlingOnLoopThread = false
            }
            after?.body()
        } else {
            // Disarmed until the handler ran: level-triggered readiness would repeat meanwhile.
            registration.withLock { try? $0?.setInterest([]) }
            // Whoever runs it takes the queue itself (rather than `queue.async`), so that it can
            // make the after-readiness call once it left the queue, without another hop.
            let work: @Sendable () -> Void = {
                var after: Callback?
                self.queue.sync {
                    after = self.handle(readiness)
                    if !self.isClosed { self.applyInterest() }
                }
                after?.body()
            }
            if let taker = handOff.withLock({ $0 }), taker.take(work) { return }
            worker.async(execute: work)
        }
    }

    /// On the queue: runs the handlers, then says what to call once out of the queue. Taken
    /// after the handlers: one may install it (a handler set at a channel's establishment).
    private func handle(_ readiness: Readiness) -> Callback? {
        isHandlingReadiness = true
        dispatch(readiness)
        isHandlingReadiness = false
        let after = afterReadiness.withLock { $0 }
        // A handler that ended the channel closed the socket, which left the call in place for
        // this event (what that end produced must still be delivered); it goes now.
        if isClosed { afterReadiness.withLock { $0 = nil } }
        return after
    }

    private func dispatch(_ readiness: Readiness) {
        let failed = readiness.contains(.hangUp) || readiness.contains(.error)
        if readiness.contains(.readable) || failed, !isClosed, let handler = readHandler { handler() }
        if readiness.contains(.writable) || failed, !isClosed, let handler = writeHandler { handler() }
    }

    /// Stops watching, unregisters the socket from its loop and closes it. Idempotent.
    public func close() {
        dispatchPrecondition(condition: .onQueue(queue))
        guard !isClosed else { return }
        state = .closed
        readHandler = nil
        writeHandler = nil
        // During an event, the event's end drops it (after its last call).
        if !isHandlingReadiness { afterReadiness.withLock { $0 = nil } }
        registration.withLock { $0 }?.unregisterAndClose()
    }
}
