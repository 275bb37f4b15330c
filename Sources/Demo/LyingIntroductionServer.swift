import Foundation
import Identity
import OCapN
import Runtime
import SecureChannel
import Transport

/// A deliberately dishonest introduction server, for the demo's attack.
///
/// It registers peers like a real server, then introduces a socket whose other end it keeps,
/// announcing `from` = a victim it names, and runs the UDS-HS1 initiator *as itself*. A peer that
/// trusted the server's word (as Goblins' netlayer does) would now talk to the server believing
/// it talks to the victim; ours must refuse in the handshake (`identityMismatch`).
final class LyingIntroductionServer: @unchecked Sendable {
    let key = IdentityKeyPair.generate()
    let path: String
    private let socket: ListeningSocket
    private let lock = NSLock()
    private var registered: (peer: RegisteredPeer, control: FileDescriptor)?
    private let ready = DispatchSemaphore(value: 0)

    init(path: String) throws {
        self.path = path
        socket = try ListeningSocket.bind(path: path, mode: 0o600)
    }

    /// Starts serving one registration on a thread of its own (blocking I/O, demo only).
    func start() {
        Thread { [self] in serveOne() }.start()
    }

    var identity: PublicIdentity { key.publicIdentity }

    /// Accepts one peer and runs the registration (the server's half of the draft).
    private func serveOne() {
        defer { ready.signal() }
        guard (try? socket.descriptor.wait(for: .readable, timeout: .seconds(20))) == true,
              case .processed(let control)? = try? socket.descriptor.acceptConnection() else { return }
        var machine = RegistrationServer(signer: key, challenge: .random())
        var reader = ControlStreamReader<FileDescriptor>()
        var buffer = [UInt8](repeating: 0, count: 4096)
        do {
            while true {
                while let item = try reader.next() {
                    guard case let .message(value) = item else { throw OCapNError(.unexpectedFD, "a descriptor during registration") }
                    for action in try machine.receive(value) {
                        switch action {
                        case let .send(message): try BlockingIO.sendAll(control, message.encoded)
                        case let .registered(peer):
                            lock.withLock { registered = (peer, control) }
                            return
                        case .forward: break
                        }
                    }
                }
                try BlockingIO.waitFor(control, events: .readable, seconds: 20)
                guard case let .processed(r) = try buffer.withUnsafeMutableBytes({ try control.receive(into: $0, descriptorCapacity: 1) }),
                      !r.isEndOfStream else { throw OCapNError(.truncated, "the peer closed the connection during registration") }
                r.descriptors.forEach { $0.close() }
                _ = try reader.receive(Array(buffer[..<r.byteCount]), descriptors: [])
            }
        } catch {
            control.close()
            for d in reader.drainDescriptors() { d.close() }
        }
    }

    /// Waits for a peer to register (the demo starts that peer with this server in its list).
    func waitForRegistration(timeout: Double) -> PublicIdentity? {
        _ = ready.wait(timeout: .now() + timeout)
        return lock.withLock { registered?.peer.identity }
    }

    /// The attack. Returns how the target answered: `.refused` when it closed the socket without
    /// completing the handshake (what must happen), `.answered` if it sent msg2.
    enum Outcome: Equatable {
        case refused
        case answered
        case notRegistered
        case failed(String)
    }

    func impersonate(_ victim: PeerLocator) -> Outcome {
        guard let (peer, control) = lock.withLock({ registered }) else { return .notRegistered }
        do {
            let (mine, theirs) = try FileDescriptor.socketPair()
            defer { mine.close(); theirs.close() }  // theirs too: a failed send must not leak it
            let lie = UDSMessage.newConnection(UDSNewConnection(from: victim, to: peer.locator))
            try BlockingIO.sendAll(control, lie.encoded)
            try BlockingIO.sendAll(control, UDSNewConnection.fdMarker, passing: [theirs])
            theirs.close()
            let initiator = try HandshakeInitiator(identity: key, responder: peer.identity,
                                                   keyCache: IdentityKeyCache(), now: .now)
            try BlockingIO.sendAll(mine, initiator.initialMessage)
            // From here on, end of stream or a reset is the target refusing.
            do {
                try BlockingIO.waitFor(mine, events: .readable, seconds: 10)
                var buffer = [UInt8](repeating: 0, count: 256)
                let result = try buffer.withUnsafeMutableBytes { try mine.receive(into: $0, descriptorCapacity: 0) }
                if case let .processed(r) = result, !r.isEndOfStream { return .answered }
                return .refused
            } catch let error as TransportError where error.code == .connectionReset {
                return .refused
            } catch {
                return .failed("no answer from the target: \(error)")
            }
        } catch {
            return .failed("\(error)")
        }
    }

    func stop() {
        lock.withLock {
            registered?.control.close()
        }
        socket.close()
    }
}
