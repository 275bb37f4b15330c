#if canImport(Glibc)
import Glibc
#endif
import Dispatch
internal import CFDShim

/// What a `Listener` reports: on its loop's thread, or on its delivery queue.
public enum ListenerEvent: Sendable {
    /// A new connection (non-blocking, close-on-exec) and its peer's kernel credentials. The
    /// handler owns the descriptor and must call `connectionClosed()` when it is gone.
    case accepted(FileDescriptor, PeerCredentials)
    /// accept failed with EMFILE/ENFILE (or ENOBUFS/ENOMEM): accepting pauses for the backoff
    /// (K13, F3). Reported once per pause.
    case pausedForResources(TransportError)
    /// The connection cap is reached; accepting resumes after `connectionClosed()`.
    case pausedAtCapacity
    /// The listening socket failed for good; the listener is closed.
    case failed(TransportError)
}

/// Accepts connections on a listening socket registered with an `EventLoop`; accept4 runs on
/// the loop thread when the socket is readable.
///
/// Over the connection cap it stops watching the socket (s6-fdholderd's approach): new clients
/// wait in the backlog, then get EAGAIN from their non-blocking connect (K14), instead of being
/// accepted only to be dropped. On EMFILE/ENFILE the connection stays queued and the socket
/// stays readable (K13), so watching is paused for `resourceBackoff` rather than spinning.
///
/// Every method may be called from any thread (the state sits under a lock). The handler runs
/// on the loop thread, or, with a delivery queue (`init(socket:queue:…)`), on that queue; a
/// connection accepted after `close()` is closed without being reported, and its slot freed.
public final class Listener: @unchecked Sendable {
    // @unchecked: every mutable field below is read and written only under `lock`.

    public struct Configuration: Sendable {
        /// Connections counted between `.accepted` and `connectionClosed()` (§4: 128).
        public var maximumConnections: Int = 128
        /// Pause after EMFILE/ENFILE (§4: 1 s, as tmux).
        public var resourceBackoff: Duration = .seconds(1)
        /// Accepts per readiness event before the loop turns to other descriptors.
        public var acceptsPerEvent: Int = 16

        public init() {}
    }

    private enum State {
        case idle
        case running(EventRegistration)
        case closed
    }

    public let loop: EventLoop
    /// Where the handler runs; nil: on the loop thread.
    public let deliveryQueue: DispatchQueue?
    public let configuration: Configuration
    public let socket: ListeningSocket
    private let lock = Lock()
    private var handler: ((ListenerEvent) -> Void)?
    private var state = State.idle
    private var watching = false
    private var backingOff = false
    private var backoffGeneration = 0
    private var connections = 0
    private var attempts = 0

    /// Takes ownership of `socket` (closed, and unlinked if bound to a path, by `close()`).
    /// The handler runs on `loop`'s thread.
    public convenience init(
        socket: ListeningSocket, loop: EventLoop, configuration: Configuration = Configuration(),
        handler: @escaping (ListenerEvent) -> Void
    ) {
        self.init(socket: socket, loop: loop, deliveryQueue: nil, configuration: configuration, handler: handler)
    }

    /// Takes ownership of `socket`, on a loop of the process's group, with the handler run on
    /// `queue`.
    public convenience init(
        socket: ListeningSocket, queue: DispatchQueue, configuration: Configuration = Configuration(),
        loop: EventLoop = EventLoopGroup.shared.next(), handler: @escaping (ListenerEvent) -> Void
    ) {
        self.init(socket: socket, loop: loop, deliveryQueue: queue, configuration: configuration, handler: handler)
    }

    private init(
        socket: ListeningSocket, loop: EventLoop, deliveryQueue: DispatchQueue?, configuration: Configuration,
        handler: @escaping (ListenerEvent) -> Void
    ) {
        precondition(configuration.maximumConnections > 0 && configuration.acceptsPerEvent > 0, "bad configuration")
        self.socket = socket
        self.loop = loop
        self.deliveryQueue = deliveryQueue
        self.configuration = configuration
        self.handler = handler
    }

    deinit {
        switch state {
        case .running(let registration):
            assertionFailure("Listener dropped while running: call close()")
            registration.unregister()
            socket.close()
        case .idle:
            socket.close()
        case .closed:
            break
        }
    }

    /// Connections handed out and not yet reported closed.
    public var connectionCount: Int { lock.withLock { connections } }

    /// accept4 calls made, for tests that check no busy loop happens during a backoff.
    public var acceptAttempts: Int { lock.withLock { attempts } }

    /// Registers the socket with the loop and starts accepting. A loop that refuses it fails
    /// the listener (`.failed`).
    public func start() {
        let failure = lock.withLock { () -> (((ListenerEvent) -> Void)?, TransportError)? in
            guard case .idle = state else { return nil }
            do throws(TransportError) {
                let registration = try loop.register(socket.descriptor, interest: .readable) { [weak self] _ in
                    self?.acceptReady()
                }
                state = .running(registration)
                watching = true
                return nil
            } catch {
                let handler = self.handler
                shutDown()
                return (handler, error)
            }
        }
        if let (handler, error) = failure { notify(.failed(error), handler: handler) }
    }

    /// Reports that a connection from `.accepted` has been closed, freeing a slot.
    public func connectionClosed() {
        let failure = lock.withLock { () -> (((ListenerEvent) -> Void)?, TransportError)? in
            precondition(connections > 0, "connectionClosed() without a matching accepted connection")
            connections -= 1
            return updateWatching()
        }
        if let (handler, error) = failure { notify(.failed(error), handler: handler) }
    }

    /// Stops accepting: unregisters from the loop, closes the listening socket and unlinks its
    /// path. Idempotent. Accepted connections are not affected.
    public func close() {
        lock.withLock { shutDown() }
    }

    /// Under the lock.
    private func shutDown() {
        switch state {
        case .idle:
            socket.close()
        case .running(let registration):
            registration.unregister()
            socket.close()
        case .closed:
            return
        }
        state = .closed
        handler = nil
        watching = false
    }

    /// Under the lock: watches the socket when below the cap and not backing off. Returns the
    /// failure to report when the loop refused the change (the listener is then closed).
    private func updateWatching() -> (((ListenerEvent) -> Void)?, TransportError)? {
        guard case .running(let registration) = state else { return nil }
        let wanted = !backingOff && connections < configuration.maximumConnections
        guard wanted != watching else { return nil }
        do throws(TransportError) {
            try registration.setInterest(wanted ? .readable : [])
        } catch {
            let handler = self.handler
            shutDown()
            return (handler, error)
        }
        watching = wanted
        return nil
    }

    /// One accept step under the lock, and what to report.
    private enum Step {
        case stop
        case report(ListenerEvent, ((ListenerEvent) -> Void)?, continuing: Bool)
        case again
    }

    /// Readiness from the loop, on its thread.
    private func acceptReady() {
        for _ in 0..<configuration.acceptsPerEvent {
            switch acceptOne() {
            case .stop:
                return
            case .again:
                continue
            case let .report(event, handler, continuing):
                notify(event, handler: handler)
                if !continuing { return }
            }
        }
    }

    private func acceptOne() -> Step {
        lock.withLock { () -> Step in
            guard case .running = state, watching else { return .stop }
            if connections >= configuration.maximumConnections {
                if let (handler, error) = updateWatching() { return .report(.failed(error), handler, continuing: false) }
                return .report(.pausedAtCapacity, handler, continuing: false)
            }
            attempts += 1
            let result: IOResult<Int32>
            do throws(TransportError) {
                result = try socket.descriptor.with { (fd) throws(TransportError) -> IOResult<Int32> in
                    try systemCall("accept4") {
                        cfd_accept4(fd, SocketType.closeOnExec | SocketType.nonBlocking)
                    }
                }
            } catch {
                return handle(acceptError: error)
            }
            guard case .processed(let raw) = result else { return .stop }
            let connection = FileDescriptor(adopting: raw)
            let credentials: PeerCredentials
            do throws(TransportError) {
                credentials = try connection.peerCredentials()
            } catch {
                connection.close()  // the client vanished already; nothing to serve
                return .again
            }
            connections += 1
            return .report(.accepted(connection, credentials), handler, continuing: true)
        }
    }

    /// Under the lock: what an accept error means for accepting.
    private func handle(acceptError error: TransportError) -> Step {
        switch error.errno {
        case ECONNABORTED, EPROTO, EPERM:
            // That one client is gone or refused by policy; the next may be fine.
            return .again
        case EMFILE, ENFILE, ENOBUFS, ENOMEM:
            backingOff = true
            if let (handler, failure) = updateWatching() { return .report(.failed(failure), handler, continuing: false) }
            backoffGeneration += 1
            let generation = backoffGeneration
            // A loop timer: no thread of its own, and it never runs once the loop has stopped.
            _ = loop.schedule(after: configuration.resourceBackoff) { [weak self] in self?.endBackoff(generation) }
            return .report(.pausedForResources(error), handler, continuing: false)
        default:
            let handler = self.handler
            shutDown()
            return .report(.failed(error), handler, continuing: false)
        }
    }

    private func endBackoff(_ generation: Int) {
        let failure = lock.withLock { () -> (((ListenerEvent) -> Void)?, TransportError)? in
            guard case .running = state, backoffGeneration == generation else { return nil }
            backingOff = false
            return updateWatching()
        }
        if let (handler, error) = failure { notify(.failed(error), handler: handler) }
    }

    /// Reports `event` to `handler` (captured under the lock when it was decided), on the loop
    /// thread or through the delivery queue. With the queue, an accepted connection that
    /// arrives after `close()` is closed there and its slot freed.
    private func notify(_ event: ListenerEvent, handler: ((ListenerEvent) -> Void)?) {
        guard let queue = deliveryQueue else {
            deliverNow(event, handler: handler)
            return
        }
        let event = UncheckedSendableBox(event)
        let captured = UncheckedSendableBox(handler)
        queue.async { [self] in deliverOnQueue(event.value, captured: captured.value) }
    }

    private func deliverOnQueue(_ event: ListenerEvent, captured: ((ListenerEvent) -> Void)?) {
        if case .failed = event {
            deliverNow(event, handler: captured)  // the listener is already closed
        } else {
            deliverNow(event, handler: currentHandler)
        }
    }

    private var currentHandler: ((ListenerEvent) -> Void)? { lock.withLock { handler } }

    private func deliverNow(_ event: ListenerEvent, handler: ((ListenerEvent) -> Void)?) {
        if let handler {
            handler(event)
        } else if case .accepted(let connection, _) = event {
            connection.close()
            lock.withLock { connections -= 1 }
        }
    }
}
