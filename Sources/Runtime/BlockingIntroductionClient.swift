import Foundation
import Identity
import OCapN
import Syrup
import Transport

/// Blocking helpers over non-blocking descriptors (wait for readiness, then retry). They throw
/// the layers' own errors: `TransportError` for the socket (`.timedOut` when a wait runs out).
public enum BlockingIO {
    /// Sends all of `bytes`; `passing` goes with the first chunk only (a partial write carried it).
    public static func sendAll(_ fd: FileDescriptor, _ bytes: [UInt8], passing: [FileDescriptor] = []) throws {
        var offset = 0
        var descriptors = passing
        while offset < bytes.count {
            let chunk = offset == 0 ? bytes : Array(bytes[offset...])
            switch try fd.send(chunk, passing: descriptors) {
            case let .processed(n):
                offset += n
                descriptors = []
            case .wouldBlock:
                try waitFor(fd, events: .writable)
            }
        }
    }

    /// Sends all of `bytes`, then `marker` carrying `descriptor`: one `sendmmsg` when the socket
    /// takes both (as `PeerNetlayer` sends an introduction), else the rest as `sendAll` would.
    /// The peer sees the same segments either way. The caller keeps `descriptor`.
    public static func sendAll(_ fd: FileDescriptor, _ bytes: [UInt8], then marker: [UInt8], passing descriptor: FileDescriptor) throws {
        precondition(!bytes.isEmpty && !marker.isEmpty, "a record and a marker to carry the descriptor")
        while true {
            let result = try bytes.withUnsafeBytes { first in
                try marker.withUnsafeBytes { second in try fd.send(first, then: second, passing: descriptor) }
            }
            switch result {
            case let .processed(sent):
                if sent.first < bytes.count { try sendAll(fd, Array(bytes[sent.first...])) }
                if sent.second == 0 { try sendAll(fd, marker, passing: [descriptor]) }
                else if sent.second < marker.count { try sendAll(fd, Array(marker[sent.second...])) }
                return
            case .wouldBlock:
                try waitFor(fd, events: .writable)
            }
        }
    }

    /// Waits until `fd` is ready for `events`, or throws after `seconds`.
    public static func waitFor(_ fd: FileDescriptor, events: Readiness, seconds: Double = 10) throws {
        guard try fd.wait(for: events, timeout: .milliseconds(Int64(seconds * 1000))) else {
            throw TransportError(.timedOut, "the socket was not ready within \(seconds) s")
        }
    }
}

/// A control-connection client with blocking calls: registration, sending introductions and
/// receiving introduced descriptors on the calling thread. For tools that drive the protocol
/// step by step (benchmarks, the demo's misbehaving peer); applications use `PeerNetlayer`.
public final class BlockingIntroductionClient {
    public let key: IdentityKeyPair
    public let control: FileDescriptor
    private var client: RegistrationClient
    private var reader = ControlStreamReader<FileDescriptor>()
    private var buffer = [UInt8](repeating: 0, count: 16 << 10)

    /// Connects to the server at `path`; `server` pins its key when given.
    public init(path: String, server: PublicIdentity?, key: IdentityKeyPair = .generate()) throws {
        self.key = key
        control = try FileDescriptor.connect(unixPath: path, timeout: .seconds(5))
        client = RegistrationClient(signer: key,
                                    challenge: .random(), expectedServer: server)
    }

    public var identity: PublicIdentity { key.publicIdentity }

    public func close() {
        control.close()
        for d in reader.drainDescriptors() { d.close() }
    }

    /// Sends all of `bytes`; `passing` goes with the first chunk only.
    public func sendAll(_ bytes: [UInt8], passing: [FileDescriptor] = []) throws {
        try BlockingIO.sendAll(control, bytes, passing: passing)
    }

    /// An introduction's record, then the marker carrying `descriptor` (`BlockingIO.sendAll(_:_:then:passing:)`).
    public func sendAll(_ bytes: [UInt8], then marker: [UInt8], passing descriptor: FileDescriptor) throws {
        try BlockingIO.sendAll(control, bytes, then: marker, passing: descriptor)
    }

    /// The next control message or introduction, waiting up to `timeout`.
    public func next(timeout: Double = 10) throws -> ControlStreamReader<FileDescriptor>.Item {
        while true {
            if let item = try reader.next() { return item }
            let result = try buffer.withUnsafeMutableBytes { try control.receive(into: $0, descriptorCapacity: 4) }
            switch result {
            case let .processed(r):
                if r.isEndOfStream { throw PeerError(.serverDisconnected, "the server closed the control connection") }
                // A padded control message's extra descriptor (issue #17) is closed at once.
                for extra in try reader.receive(Array(buffer[..<r.byteCount]), descriptors: r.descriptors) { extra.close() }
            case .wouldBlock:
                try BlockingIO.waitFor(control, events: .readable, seconds: timeout)
            }
        }
    }

    /// Runs `uds:register` → `uds:server-response` → `uds:signature`. The server answers nothing
    /// on success; a refusal shows as the connection closing.
    public func register() throws {
        try sendAll(client.start().encoded)
        let value: SyrupValue
        switch try next() {
        case let .message(message): value = message
        case let .newConnection(_, descriptor):
            descriptor.close()
            throw OCapNError(.unexpectedMessage, "an introduction where the server's registration response belongs")
        }
        for case let .send(reply) in try client.receive(value) { try sendAll(reply.encoded) }
    }

    /// Waits for an introduction and returns its descriptor (after `to` was checked).
    public func receiveDescriptor() throws -> FileDescriptor {
        guard case let .newConnection(value, descriptor) = try next() else { throw OCapNError(.unexpectedMessage, "a control message where an introduction was expected") }
        do {
            _ = try client.receive(value)
        } catch {
            descriptor.close()
            throw error
        }
        return descriptor
    }
}
