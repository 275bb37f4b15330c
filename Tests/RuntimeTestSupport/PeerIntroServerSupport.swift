import CPaddedSender
import Dispatch
import Foundation
import Identity
import OCapN
import Runtime
import Syrup
import Testing
import Transport

/// A small introduction server for tests, built from OCapN's `RegistrationServer` and
/// Transport's `Listener`/`StreamConnection`. Honest by default; `onIntroduction` lets a test
/// make it misbehave (lie, swap, splice, duplicate, keep, replay, reflect).
public final class TestIntroServer: @unchecked Sendable {
    /// What the server can do with an introduction.
    public struct Forwarder: @unchecked Sendable {
        public let server: TestIntroServer
        public init(server: TestIntroServer) { self.server = server }
        /// Delivers `request` and `descriptor` to the registered peer `target` (closes the
        /// descriptor when that peer is not registered).
        public func deliver(_ request: UDSNewConnection, _ descriptor: FileDescriptor, to target: PublicIdentity) {
            server.deliver(request, descriptor, to: target)
        }
    }

    public typealias Hook = @Sendable (Introduction, FileDescriptor, Forwarder) -> Void

    public let identity: IdentityKeyPair
    public let directory: String?
    public let path: String
    /// How long an introduction for an unregistered target is held (0: closed at once).
    public let holdUnregistered: Duration
    private var held: [(request: UDSNewConnection, descriptor: FileDescriptor, target: PublicIdentity, until: ContinuousClock.Instant)] = []
    public let queue = DispatchQueue(label: "test-intro-server")
    private var listener: Listener?
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var registered: [PublicIdentity: Connection] = [:]
    private let hook: Hook?
    /// When set, markers go out with a Goblins-style padded control message whose padding int
    /// is this descriptor (issue #17); the test owns it.
    private let padding: FileDescriptor?
    private let lock = NSLock()
    private var _introductions = 0

    public final class Connection {
        public var stream: StreamConnection?
        /// A duplicate of the connection's socket, for padded markers only.
        public var raw: FileDescriptor?
        public var reader = ControlStreamReader<FileDescriptor>(limits: .init(maxDescriptorsPerRead: 1))  // strict: what we send carries one
        public var machine: RegistrationServer
        public var peer: PublicIdentity?
        public init(machine: RegistrationServer) { self.machine = machine }
    }

    /// Binds at `path`, or in a fresh private directory (removed by `stop()`).
    public init(
        identity: IdentityKeyPair = IdentityKeyPair.generate(), path: String? = nil,
        holdUnregistered: Duration = .seconds(5), padMarkersWith padding: FileDescriptor? = nil,
        onIntroduction hook: Hook? = nil
    ) throws {
        self.padding = padding
        if let path {
            directory = nil
            self.path = path
        } else {
            var template = Array("/tmp/ocapn-tis-XXXXXX".utf8CString)
            guard let p = mkdtemp(&template) else { throw POSIXError(.EIO) }
            directory = String(cString: p)
            self.path = directory! + "/s"
        }
        self.identity = identity
        self.holdUnregistered = holdUnregistered
        self.hook = hook
        queue.setSpecific(key: Self.queueKey, value: true)
        let socket = try ListeningSocket.bind(path: self.path)
        queue.sync {
            let listener = Listener(socket: socket, queue: queue) { [unowned self] event in self.handle(event) }
            self.listener = listener
            listener.start()
        }
    }

    public var publicIdentity: PublicIdentity { identity.publicIdentity }

    /// Introductions received so far.
    public var introductions: Int { lock.lock(); defer { lock.unlock() }; return _introductions }

    /// Whether `peer` is registered right now.
    public func isRegistered(_ peer: PublicIdentity) -> Bool { queue.sync { registered[peer] != nil } }

    /// Stops listening and drops every connection; removes the directory.
    public func stop() {
        queue.sync {
            listener?.close()
            listener = nil
            for c in connections.values {
                c.stream?.close()
                c.raw?.close()
                for d in c.reader.drainDescriptors() { d.close() }
            }
            connections = [:]
            registered = [:]
            for h in held { h.descriptor.close() }
            held = []
        }
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// Sign registrations with another key than the one announced (a server whose signature
    /// does not verify).
    public var forgesSignatures = false


    private func handle(_ event: ListenerEvent) {
        guard case .accepted(let descriptor, _) = event else { return }
        let connection = Connection(machine: RegistrationServer(signer: identity, challenge: Challenge.random()))
        let id = ObjectIdentifier(connection)
        if padding != nil, let copy = try? descriptor.withRawDescriptor({ fcntl($0, F_DUPFD_CLOEXEC, 0) }), copy >= 0 {
            connection.raw = FileDescriptor(adopting: copy)
        }
        do {
            connection.stream = try StreamConnection(descriptor: descriptor, queue: queue) { [unowned self] event in
                self.handle(event, on: connection)
            }
        } catch {
            descriptor.close()
            listener?.connectionClosed()
            return
        }
        connections[id] = connection
        connection.stream?.start()
    }

    private func handle(_ event: StreamEvent, on connection: Connection) {
        switch event {
        case .received(let chunk):
            do {
                _ = try connection.reader.receive(chunk.bytes, descriptors: chunk.descriptors)
                while connection.stream != nil, let item = try connection.reader.next() {
                    try process(item, on: connection)
                }
            } catch {
                drop(connection)
            }
        case .endOfStream, .failed:
            drop(connection)
        }
    }

    private func process(_ item: ControlStreamReader<FileDescriptor>.Item, on connection: Connection) throws {
        var passed: FileDescriptor?
        let value: SyrupValue
        switch item {
        case .message(let v): value = v
        case .newConnection(let v, let d):
            value = v
            passed = d
        }
        defer { passed?.close() }
        for action in try connection.machine.receive(value) {
            switch action {
            case .send(let message):
                try connection.stream?.send((forgesSignatures ? Self.forged(message) : message).encoded)
            case .registered(let peer):
                connection.peer = peer.identity
                if let old = registered[peer.identity], old !== connection { drop(old) }
                registered[peer.identity] = connection
                let now = ContinuousClock.now
                let waiting = held.filter { $0.target == peer.identity }
                held.removeAll { $0.target == peer.identity || $0.until <= now }
                for h in waiting where h.until > now { deliver(h.request, h.descriptor, to: h.target) }
                for h in waiting where h.until <= now { h.descriptor.close() }
            case .forward(let introduction):
                guard let descriptor = passed else { continue }
                passed = nil
                lock.lock(); _introductions += 1; lock.unlock()
                if let hook {
                    hook(introduction, descriptor, Forwarder(server: self))
                } else {
                    deliver(introduction.request, descriptor, to: introduction.target)
                }
            }
        }
    }

    /// `message` with its registration signature's last byte flipped: a server whose signature
    /// does not verify under the key it announces.
    static func forged(_ message: UDSMessage) -> UDSMessage {
        func flip(_ s: Ed25519Signature) -> Ed25519Signature {
            var bytes = s.bytes
            bytes[63] ^= 0x01
            return try! Ed25519Signature(bytes)
        }
        switch message {
        case let .serverResponseV2(r):
            return .serverResponseV2(UDSServerResponseV2(serverKey: r.serverKey, serverChallenge: r.serverChallenge, signature: flip(r.signature)))
        case let .serverResponse(r):
            guard case let .sigVal(s) = r.clientChallengeResponse else { return message }
            return .serverResponse(UDSServerResponse(serverKey: r.serverKey, serverChallenge: r.serverChallenge, clientChallengeResponse: .sigVal(flip(s))))
        default:
            return message
        }
    }

    fileprivate func deliver(_ request: UDSNewConnection, _ descriptor: FileDescriptor, to target: PublicIdentity) {
        let work: @Sendable () -> Void = { [self] in
            guard let connection = registered[target], let stream = connection.stream else {
                if holdUnregistered > .zero {
                    held.append((request, descriptor, target, ContinuousClock.now.advanced(by: holdUnregistered)))
                    queue.asyncAfter(deadline: .now() + .milliseconds(Int(holdUnregistered.components.seconds * 1000) + 50)) { [self] in
                        let now = ContinuousClock.now
                        for h in held where h.until <= now { h.descriptor.close() }
                        held.removeAll { $0.until <= now }
                    }
                } else {
                    descriptor.close()
                }
                return
            }
            do {
                try stream.send(UDSMessage.newConnection(request).encoded)
                if let padding, let raw = connection.raw {
                    // The record is small and the queue empty, so it is already in the socket.
                    let sent = try raw.withRawDescriptor { socket in
                        try descriptor.withRawDescriptor { fd in
                            try padding.withRawDescriptor { pad in
                                UDSNewConnection.fdMarker.withUnsafeBytes {
                                    cps_send_padded(socket, $0.baseAddress!, $0.count, fd, pad)
                                }
                            }
                        }
                    }
                    descriptor.close()
                    if sent != UDSNewConnection.fdMarker.count { drop(connection) }
                } else {
                    try stream.send(UDSNewConnection.fdMarker, passing: descriptor)
                }
            } catch {
                descriptor.close()  // idempotent
                drop(connection)
            }
        }
        if DispatchQueue.getSpecific(key: Self.queueKey) == true { work() } else { queue.async(execute: work) }
    }

    private static let queueKey = DispatchSpecificKey<Bool>()

    private func drop(_ connection: Connection) {
        guard let stream = connection.stream else { return }
        connection.stream = nil
        stream.close()
        connection.raw?.close()
        for d in connection.reader.drainDescriptors() { d.close() }
        connections[ObjectIdentifier(connection)] = nil
        if let peer = connection.peer, registered[peer] === connection { registered[peer] = nil }
        listener?.connectionClosed()
    }
}
