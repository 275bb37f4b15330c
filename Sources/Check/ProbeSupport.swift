import Foundation
import Identity
import OCapN
import SodiumCrypto
import Syrup
import Transport

/// What a server answered to a `uds:register`, parsed leniently so the checker can report
/// servers that do not follow the rules (any challenge length, any of the three signature forms).
struct ServerResponse {
    let serverKey: PublicIdentity
    let serverChallenge: [UInt8]
    let signature: [UInt8]
    /// `sig-val` (Goblins), `raw` or `record` (the draft text).
    let form: String

    init?(_ value: SyrupValue) {
        guard case let .record(label, fields) = value, label == .symbol(UDSServerResponse.label), fields.count == 3,
              let key = try? PublicIdentity(captpPublicKey: fields[0]), case let .bytes(challenge) = fields[1] else { return nil }
        switch fields[2] {
        case .list:
            guard let s = try? Ed25519Signature(captpSigVal: fields[2]) else { return nil }
            signature = s.bytes
            form = "sig-val"
        case let .bytes(b):
            signature = b
            form = "raw"
        case let .record(_, inner) where inner.count == 2:
            if case let .bytes(b) = inner[1] { signature = b } else if let s = try? Ed25519Signature(captpSigVal: inner[1]) {
                signature = s.bytes
            } else { return nil }
            form = "record"
        default:
            return nil
        }
        serverKey = key
        serverChallenge = challenge
    }

    func signs(_ bytes: [UInt8]) -> Bool { serverKey.verify(signature: signature, message: bytes) }
}

/// Raw records for probes that must send what the typed messages refuse to build.
enum RawRecords {
    static func locator(designator: String) -> SyrupValue {
        .record(label: .symbol(PeerLocator.label), fields: [.symbol(PeerLocator.transport), .string(designator), .bool(false)])
    }

    static func register(designator: String, challenge: [UInt8]) -> [UInt8] {
        SyrupEncoder.encode(.record(label: .symbol(UDSRegister.label), fields: [locator(designator: designator), .bytes(challenge)]))
    }

    static func randomBytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        for i in out.indices { out[i] = UInt8.random(in: 0...255) }
        return out
    }
}

/// Local descriptors of kinds a server must refuse to pass on (A8, A9). Every one is owned and
/// closed by the caller.
enum WrongKinds {
    static func regularFile() throws -> FileDescriptor {
        let path = "/tmp/ocapn-uds-check-" + Hex.encode(RandomBytes.bytes(8))
        let fd = try local("open a temporary file") { () throws(TransportError) in
            try FileDescriptor.open(path, .readWrite, options: [.create, .exclusive, .noFollow])
        }
        try? FileSystem.removeIfPresent(path)  // nothing left on disk
        return fd
    }

    static func pipeEnds() throws -> (read: FileDescriptor, write: FileDescriptor) {
        try local("pipe") { () throws(TransportError) in try FileDescriptor.pipe() }
    }

    static func tcpSocket() throws -> FileDescriptor {
        try local("socket(AF_INET)") { () throws(TransportError) in try FileDescriptor.unconnectedTCPSocket() }
    }

    /// A listening unix socket with a kernel-chosen abstract name (autobind): no file to clean up.
    static func listeningUnixSocket() throws -> FileDescriptor {
        try local("bind/listen") { () throws(TransportError) in try FileDescriptor.autoboundUnixListener() }
    }

    static func duplicate(_ fd: FileDescriptor) throws -> FileDescriptor {
        try local("dup") { () throws(TransportError) in try fd.duplicate() }
    }

    /// Runs a local set-up call; its failure is ours, not the target's.
    private static func local<R>(_ what: String, _ body: () throws(TransportError) -> R) throws(CheckError) -> R {
        do { return try body() } catch { throw CheckError(.localFailure, "\(what): \(error)") }
    }
}

/// Whether `fd` sees end of stream (every other copy of its peer closed) within `timeout`.
func seesEndOfStream(_ fd: FileDescriptor, timeout: Duration) -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    var byte = [UInt8](repeating: 0, count: 64)
    while true {
        let result = try? byte.withUnsafeMutableBytes { try fd.receive(into: $0, descriptorCapacity: 0) }
        switch result {
        case let .processed(r)?:
            if r.isEndOfStream { return true }
            // A peer that keeps writing must not keep us here past the deadline.
            if ContinuousClock.now >= deadline { return false }
        case .wouldBlock?:
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return false }
            _ = try? fd.wait(for: .readable, timeout: remaining + .milliseconds(1))
        case nil:
            return true  // reset
        }
    }
}

/// Human name of a received descriptor's kind (for evidence).
func kindName(_ fd: FileDescriptor) -> String {
    (try? fd.kind().description) ?? "unknown descriptor"
}

/// Whether `received` is the other end of the pair whose end we hold as `mine`: a byte written
/// on ours must arrive on it.
func isOtherEnd(_ received: FileDescriptor, of mine: FileDescriptor, timeout: Duration) -> Bool {
    guard case .processed? = try? mine.send([0x2a]) else { return false }
    guard (try? received.wait(for: .readable, timeout: timeout)) == true else { return false }
    var byte = [UInt8](repeating: 0, count: 1)
    guard case let .processed(r)? = try? byte.withUnsafeMutableBytes({ try received.receive(into: $0, descriptorCapacity: 0) }) else { return false }
    return r.byteCount == 1 && byte[0] == 0x2a
}
