import Audit
import Dispatch
import Identity
import OCapN
import Synchronization
import Syrup
import Transport

/// One introduction-server control connection of a `PeerNetlayer`: registration, then
/// `uds:new-connection` traffic both ways. Runs the sans-IO `RegistrationClient` and
/// `ControlStreamReader` over a `StreamConnection`; every method runs on the netlayer's queue.
///
/// Reads are handled on the connection's event-loop thread, which takes the netlayer's queue
/// with `queue.sync` (no thread hop when it is free): an introduction goes from `recvmsg` to
/// the start of its handshake's I/O on that thread; only the handshake's crypto moves to the
/// channel's queue. The registration deadline is a timer of the same loop.
final class ServerConnection: @unchecked Sendable {
    enum State {
        case registering
        case registered(VerifiedServer)
        case closed
    }

    let queue: DispatchQueue
    /// The loop whose thread reads the control stream and keeps the registration deadline.
    let loop: EventLoop
    /// The server's key once registered (pinned key before, if any).
    private(set) var state: State = .registering
    let path: String?
    let handle: ServerHandle
    private let pinned: PublicIdentity?
    private var stream: StreamConnection?
    /// Reads at most `ControlMessageLimit` per record (the servers' limit never exceeds it).
    private var reader = ControlStreamReader<PassedDescriptor>(limits: .init(syrup: .controlMessage))
    private var client: RegistrationClient
    private var registrationTimer: EventLoopTimer?
    private var registrationWaiter: CheckedContinuation<ServerHandle, Error>?
    /// Handshakes started through this server that have not finished. Under a lock of its own:
    /// `connect` drops its entry from whatever thread the handshake ended on, without a hop.
    private let pendingConnects = Mutex<[ObjectIdentifier: HandshakeCancellation]>([:])
    private unowned let netlayer: PeerNetlayer

    init(netlayer: PeerNetlayer, path: String?, pinned: PublicIdentity?, form: RegistrationForm = .v2, queue: DispatchQueue) {
        self.netlayer = netlayer
        self.path = path
        self.pinned = pinned
        self.queue = queue
        loop = EventLoopGroup.shared.next()
        client = RegistrationClient(signer: netlayer.signer, challenge: Challenge.random(), expectedServer: pinned, form: form)
        handle = ServerHandle(path: path)
    }

    var server: VerifiedServer? {
        if case .registered(let s) = state { return s }
        return nil
    }

    /// Starts registration on `descriptor` (owned from here on); `waiter` learns the outcome.
    func start(descriptor: FileDescriptor, waiter: CheckedContinuation<ServerHandle, Error>) {
        dispatchPrecondition(condition: .onQueue(queue))
        registrationWaiter = waiter
        let stream: StreamConnection
        var control = netlayer.configuration.control
        // A descriptor the kernel could not install costs its introduction, not the server.
        control.reportsLostDescriptors = true
        do {
            stream = try StreamConnection(
                descriptor: descriptor, loop: loop, configuration: control
            ) { [weak self] event in self?.receivedOnLoop(event) }
        } catch {
            descriptor.close()
            disconnect(PeerError(.serverUnreachable, "control socket unusable: \(error)"))
            return
        }
        self.stream = stream
        let timeout = netlayer.configuration.registrationTimeout
        registrationTimer = loop.schedule(after: timeout) { [weak self] in
            guard let self else { return }
            self.queue.async { self.registrationTimedOut() }
        }
        if registrationTimer == nil {
            disconnect(PeerError(.serverUnreachable, "the event loop was shut down"))
            return
        }
        do {
            try stream.send(client.start().encoded)
        } catch {
            disconnect(PeerError(.serverDisconnected, "sending uds:register: \(error)"))
            return
        }
        stream.start()
    }

    private func registrationTimedOut() {
        guard case .registering = state else { return }
        // A Goblins server ignores uds-v2:register without closing; say what would fix it.
        let hint = client.form == .v2 ? " (registration v2; a Goblins or draft server must be marked goblins:PATH or draft:PATH)" : ""
        disconnect(PeerError(.registrationTimeout, "no server response within \(netlayer.configuration.registrationTimeout)\(hint)"))
    }

    // MARK: inbound

    /// On the loop thread: the event is handled there, under the netlayer's queue.
    private func receivedOnLoop(_ event: StreamEvent) {
        guard loop.inLoopThread else {
            // Only from a loop that was shut down, which reports on the caller's thread: that
            // may hold the queue already.
            queue.async { self.handle(event) }
            return
        }
        queue.sync { handle(event) }
    }

    private func handle(_ event: StreamEvent) {
        dispatchPrecondition(condition: .onQueue(queue))
        if case .closed = state {
            // A read already under way on the loop thread when we closed: nothing of it is ours.
            if case .received(let chunk) = event { for descriptor in chunk.descriptors { descriptor.close() } }
            return
        }
        switch event {
        case .received(let chunk):
            do throws(OCapNError) {
                // MSG_CTRUNC (EMFILE/ENFILE, or a descriptor with no room): the read that
                // holds the marker's first byte carried it (K5), so a placeholder tagged with
                // this read stands in for it and the stream stays in step.
                let passed = chunk.descriptors.map(PassedDescriptor.received) + (chunk.descriptorsLost ? [.lost] : [])
                let extras = try reader.receive(chunk.bytes, descriptors: passed)
                if !extras.isEmpty {
                    // Issue #17: a padded control message brings the sender's fd 0 along. The
                    // first descriptor still faces every check; the extras are closed now.
                    let kinds = extras.map { extra -> String in
                        if case .received(let d) = extra { return d.shortKindDescription() }
                        return "lost"
                    }
                    for extra in extras { extra.close() }
                    netlayer.closedExtraDescriptors(kinds: kinds, server: handle.server, path: path)
                }
                while true {
                    if case .closed = state { return }
                    guard let item = try reader.next() else { break }
                    process(item)
                }
            } catch {
                disconnect(PeerError(.serverDisconnected, "control stream: \(error)"))
            }
        case .endOfStream:
            do throws(OCapNError) {
                try reader.finish()
                disconnect(PeerError(.serverDisconnected, "the server closed the connection"))
            } catch {
                disconnect(PeerError(.serverDisconnected, "the server closed the connection mid-message: \(error)"))
            }
        case .failed(let error):
            disconnect(PeerError(.serverDisconnected, "control connection failed: \(error)"))
        }
    }

    private func process(_ item: ControlStreamReader<PassedDescriptor>.Item) {
        let value: SyrupValue
        var passed: PassedDescriptor?
        switch item {
        case .message(let v): value = v
        case .newConnection(let v, let descriptor):
            value = v
            passed = descriptor
        }
        let message: UDSMessage
        do {
            message = try UDSMessage(syrup: value)
        } catch {
            passed?.close()
            disconnect(PeerError(.serverDisconnected, "malformed control message: \(error)"))
            return
        }
        // An introduction for someone else is a semantic error: drop that socket, keep serving.
        if case .newConnection(let request) = message, case .registered(let server) = state,
           !request.to.isSamePeer(as: netlayer.ownLocatorWithoutHints) {
            let error = PeerError(.notAddressedToUs, "uds:new-connection for \(request.to.identity.fingerprint)")
            passed?.close()
            netlayer.refusedIntroduction(error, from: request.from, to: request.to, server: server.identity)
            return
        }
        let actions: [RegistrationClient.Action]
        do {
            actions = try client.receive(message)
        } catch {
            passed?.close()
            let code: PeerError.Code.Netlayer = server == nil ? .registrationFailed : .serverDisconnected
            disconnect(PeerError(code, "\(error.code.rawValue): \(error.detail)"))
            return
        }
        for action in actions {
            switch action {
            case .send(let reply):
                do {
                    try stream?.send(reply.encoded)
                } catch {
                    disconnect(PeerError(.serverDisconnected, "sending \(reply.name): \(error)"))
                    return
                }
            case .registered(let server):
                registered(server)
            case .incoming(let introduction):
                guard let descriptor = passed, case .registered(let server) = state else {
                    preconditionFailure("the reader pairs every uds:new-connection with its descriptor")
                }
                passed = nil
                switch descriptor {
                case .received(let socket):
                    netlayer.accept(socket, introduction: introduction, server: server.identity, onLoopThread: loop.inLoopThread)
                case .lost: netlayer.lostIntroduction(introduction, server: server.identity)
                }
            }
        }
        passed?.close()
    }

    private func registered(_ server: VerifiedServer) {
        state = .registered(server)
        registrationTimer?.cancel()
        registrationTimer = nil
        handle.server = server.identity
        netlayer.serverRegistered(self)
        registrationWaiter?.resume(returning: handle)
        registrationWaiter = nil
    }

    // MARK: outbound

    /// Sends `uds:new-connection` and then the marker carrying `passedEnd` (owned from here
    /// on: closed once the kernel has it, or with the connection).
    func introduce(to target: PeerLocator, from own: PeerLocator, passing passedEnd: FileDescriptor) throws(PeerError) {
        guard let stream, case .registered = state else {
            passedEnd.close()
            throw PeerError(.serverDisconnected, "server connection is not registered")
        }
        let request = client.introductionRequest(to: target, advertising: own)
        do {
            // One sendmmsg when the socket takes both; the server sees the same two segments.
            try stream.send(request.encoded, then: UDSNewConnection.fdMarker, passing: passedEnd)
        } catch {
            passedEnd.close()
            disconnect(PeerError(.serverDisconnected, "sending uds:new-connection: \(error)"))
            throw PeerError(.serverDisconnected, "sending uds:new-connection: \(error)")
        }
    }

    func track(_ cancellation: HandshakeCancellation) {
        pendingConnects.withLock { $0[ObjectIdentifier(cancellation)] = cancellation }
    }

    /// Any thread.
    func untrack(_ cancellation: HandshakeCancellation) {
        pendingConnects.withLock { $0[ObjectIdentifier(cancellation)] = nil }
    }

    // MARK: closing

    /// Ends this server's connection; affects nothing else.
    func disconnect(_ reason: PeerError) {
        dispatchPrecondition(condition: .onQueue(queue))
        if case .closed = state { return }
        let wasRegistered = server != nil
        state = .closed
        registrationTimer?.cancel()
        registrationTimer = nil
        stream?.close()
        stream = nil
        for descriptor in reader.drainDescriptors() { descriptor.close() }
        let pending = pendingConnects.withLock { pending in
            defer { pending = [:] }
            return pending
        }
        for cancellation in pending.values { cancellation.cancel(reason) }
        netlayer.serverDisconnected(self, reason: reason, wasRegistered: wasRegistered)
        if let waiter = registrationWaiter {
            registrationWaiter = nil
            waiter.resume(throwing: reason)
        }
        handle.finish(reason)
    }
}

/// A descriptor the server passed, or the mark of one the kernel dropped (MSG_CTRUNC: the
/// process was at its descriptor limit, EMFILE/ENFILE). The mark keeps the control stream's
/// marker-to-descriptor pairing in step, so only that one introduction is lost.
enum PassedDescriptor {
    case received(FileDescriptor)
    case lost

    func close() {
        if case .received(let descriptor) = self { descriptor.close() }
    }
}
