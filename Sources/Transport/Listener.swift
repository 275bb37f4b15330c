#if canImport(Glibc)
import Glibc
#endif
import Dispatch
internal import CFDShim

/// What a `Listener` reports, on its queue.
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

/// Accepts connections on a listening socket from a dispatch read source.
///
/// Over the connection cap it stops watching the socket (s6-fdholderd's approach): new clients
/// wait in the backlog, then get EAGAIN from their non-blocking connect (K14), instead of being
/// accepted only to be dropped. On EMFILE/ENFILE the connection stays queued and the socket
/// stays readable (K13), so watching is paused for `resourceBackoff` rather than spinning.
///
/// Like `StreamConnection`, every method must be called on `queue`.
public final class Listener: @unchecked Sendable {
    public struct Configuration: Sendable {
        /// Connections counted between `.accepted` and `connectionClosed()` (§4: 128).
        public var maximumConnections: Int = 128
        /// Pause after EMFILE/ENFILE (§4: 1 s, as tmux).
        public var resourceBackoff: Duration = .seconds(1)
        /// Accepts per readable event before yielding the queue.
        public var acceptsPerEvent: Int = 16

        public init() {}
    }

    private enum State {
        case idle
        case running
        case closed
    }

    public let queue: DispatchQueue
    public let configuration: Configuration
    public let socket: ListeningSocket
    private var handler: ((ListenerEvent) -> Void)?
    private var state = State.idle
    private var source: DispatchSourceRead?
    private var watching = false
    private var backingOff = false
    private var backoffGeneration = 0
    /// Connections handed out and not yet reported closed.
    public private(set) var connectionCount = 0
    /// accept4 calls made, for tests that check no busy loop happens during a backoff.
    public private(set) var acceptAttempts = 0

    /// Takes ownership of `socket` (closed, and unlinked if bound to a path, by `close()`).
    public init(
        socket: ListeningSocket, queue: DispatchQueue, configuration: Configuration = Configuration(),
        handler: @escaping (ListenerEvent) -> Void
    ) {
        precondition(configuration.maximumConnections > 0 && configuration.acceptsPerEvent > 0, "bad configuration")
        self.socket = socket
        self.queue = queue
        self.configuration = configuration
        self.handler = handler
    }

    deinit {
        if state == .running {
            assertionFailure("Listener dropped while running: call close()")
            cancelSource()
        } else if state == .idle {
            socket.close()
        }
    }

    public func start() {
        dispatchPrecondition(condition: .onQueue(queue))
        guard state == .idle else { return }
        state = .running
        guard let raw = try? socket.descriptor.withRawDescriptor({ $0 }) else {
            preconditionFailure("Listener started with a closed socket")
        }
        let source = DispatchSource.makeReadSource(fileDescriptor: raw, queue: queue)
        source.setEventHandler { [weak self] in self?.acceptReady() }
        // Close (and unlink) only after the source stopped watching the number.
        source.setCancelHandler { [socket] in socket.close() }
        self.source = source
        source.activate()
        watching = true
    }

    /// Reports that a connection from `.accepted` has been closed, freeing a slot.
    public func connectionClosed() {
        dispatchPrecondition(condition: .onQueue(queue))
        precondition(connectionCount > 0, "connectionClosed() without a matching accepted connection")
        connectionCount -= 1
        updateWatching()
    }

    /// Stops accepting, closes the listening socket and unlinks its path. Idempotent. Accepted
    /// connections are not affected.
    public func close() {
        dispatchPrecondition(condition: .onQueue(queue))
        switch state {
        case .idle: socket.close()
        case .running:
            // The descriptor closes in the source's cancel handler, later; the path goes now.
            socket.unlinkPath()
            cancelSource()
        case .closed: return
        }
        state = .closed
        handler = nil
    }

    private func cancelSource() {
        guard let source else { return }
        if !watching { source.resume() }
        watching = true
        source.cancel()
        self.source = nil
    }

    private func updateWatching() {
        guard state == .running, let source else { return }
        let wanted = !backingOff && connectionCount < configuration.maximumConnections
        guard wanted != watching else { return }
        watching = wanted
        if wanted { source.resume() } else { source.suspend() }
    }

    private func acceptReady() {
        for _ in 0..<configuration.acceptsPerEvent {
            guard state == .running, watching else { return }
            if connectionCount >= configuration.maximumConnections {
                updateWatching()
                handler?(.pausedAtCapacity)
                return
            }
            acceptAttempts += 1
            let result: IOResult<Int32>
            do throws(TransportError) {
                result = try socket.descriptor.with { (fd) throws(TransportError) -> IOResult<Int32> in
                    try systemCall("accept4") {
                        cfd_accept4(fd, SocketType.closeOnExec | SocketType.nonBlocking)
                    }
                }
            } catch {
                if !handle(acceptError: error) { return }
                continue
            }
            guard case .processed(let raw) = result else { return }
            let connection = FileDescriptor(adopting: raw)
            let credentials: PeerCredentials
            do throws(TransportError) {
                credentials = try connection.peerCredentials()
            } catch {
                connection.close()  // the client vanished already; nothing to serve
                continue
            }
            connectionCount += 1
            if let handler {
                handler(.accepted(connection, credentials))
            } else {
                connection.close()
                connectionCount -= 1
            }
        }
        // Cap reached with connections possibly still queued: continue on a later turn rather
        // than trusting the source to fire again (see StreamConnection.handleReadable).
        queue.async { [weak self] in self?.acceptReady() }
    }

    /// Returns whether accepting may continue at once.
    private func handle(acceptError error: TransportError) -> Bool {
        switch error.errno {
        case ECONNABORTED, EPROTO, EPERM:
            // That one client is gone or refused by policy; the next may be fine.
            return true
        case EMFILE, ENFILE, ENOBUFS, ENOMEM:
            backingOff = true
            updateWatching()
            backoffGeneration += 1
            let generation = backoffGeneration
            handler?(.pausedForResources(error))
            queue.asyncAfter(deadline: .now() + dispatchInterval(configuration.resourceBackoff)) { [weak self] in
                guard let self, state == .running, backoffGeneration == generation else { return }
                backingOff = false
                updateWatching()
            }
            return false
        default:
            let handler = self.handler
            close()
            handler?(.failed(error))
            return false
        }
    }
}

func dispatchInterval(_ duration: Duration) -> DispatchTimeInterval {
    let (seconds, attoseconds) = duration.components
    return .nanoseconds(Int(clamping: seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
}
