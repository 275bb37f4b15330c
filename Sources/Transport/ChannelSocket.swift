#if canImport(Glibc)
import Glibc
#endif
import Dispatch

/// A connected stream socket under one channel, with its readiness sources: the descriptor and
/// everything that watches it in one owner, so the raw number never leaves Transport.
///
/// Confined to `queue` like `StreamConnection` (every method is called there and the handlers
/// run there; `@unchecked Sendable` rests on that). I/O uses MSG_DONTWAIT and never sets
/// O_NONBLOCK: a passed socket shares its file status flags with the sender (A8).
///
/// Watching is per direction and can be switched on and off; after `close()` nothing watches
/// the socket again, and the descriptor itself is closed only once every source created on it
/// has finished cancelling, so no source ever sees a number that was closed and reused.
public final class ChannelSocket: @unchecked Sendable {
    private enum State {
        case open
        /// `close()` ran; the descriptor closes when the last source finished cancelling.
        case closed
    }

    public let queue: DispatchQueue
    private let descriptor: FileDescriptor
    private var state = State.open
    private var readSource: DispatchSourceRead?
    private var writeSource: DispatchSourceWrite?
    private var raw: Int32
    /// Every source created on the descriptor, until it finished cancelling.
    private let sources = DispatchGroup()

    /// Takes ownership of `descriptor` (a connected stream socket). Throws `.closed` when it
    /// is already closed.
    public init(descriptor: FileDescriptor, queue: DispatchQueue) throws(TransportError) {
        self.descriptor = descriptor
        self.queue = queue
        // The number is kept for the sources only (they need it for their whole life); the
        // descriptor closes after the last one finished, so it stays valid meanwhile.
        raw = try descriptor.with { $0 }
    }

    deinit {
        switch state {
        case .open:
            // The owner must close; sources keep their handlers (and usually the owner) alive,
            // so an open socket lands here only if nothing was ever watched.
            readSource?.cancel()
            writeSource?.cancel()
            descriptor.close()
        case .closed:
            break
        }
    }

    /// Whether a source watches the socket now.
    public var isWatching: Bool { readSource != nil || writeSource != nil }

    public var isClosed: Bool {
        switch state {
        case .open: return false
        case .closed: return true
        }
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
    /// until would-block, or stop watching at end of stream). nil stops watching.
    public func watchReadable(_ handler: (() -> Void)?) {
        dispatchPrecondition(condition: .onQueue(queue))
        if let handler {
            guard readSource == nil, !isClosed else { return }
            let source = DispatchSource.makeReadSource(fileDescriptor: raw, queue: queue)
            source.setEventHandler(handler: handler)
            track(source)
            readSource = source
            source.activate()
        } else if let source = readSource {
            readSource = nil
            source.cancel()
        }
    }

    /// Calls `handler` on the queue whenever the socket is writable. nil stops watching.
    public func watchWritable(_ handler: (() -> Void)?) {
        dispatchPrecondition(condition: .onQueue(queue))
        if let handler {
            guard writeSource == nil, !isClosed else { return }
            let source = DispatchSource.makeWriteSource(fileDescriptor: raw, queue: queue)
            source.setEventHandler(handler: handler)
            track(source)
            writeSource = source
            source.activate()
        } else if let source = writeSource {
            writeSource = nil
            source.cancel()
        }
    }

    // Sources are created when wanted and cancelled when not, never suspended: on Linux a read
    // and a write source on one descriptor share one epoll registration, and a suspended one
    // was seen to lose the other's events.
    private func track(_ source: DispatchSourceProtocol) {
        sources.enter()
        source.setCancelHandler { [sources] in sources.leave() }
    }

    /// Stops watching and closes the socket (once the sources have finished). Idempotent.
    public func close() {
        dispatchPrecondition(condition: .onQueue(queue))
        guard !isClosed else { return }
        state = .closed
        raw = -1
        readSource?.cancel()
        writeSource?.cancel()
        readSource = nil
        writeSource = nil
        sources.notify(queue: queue) { [descriptor] in descriptor.close() }
    }
}
