import Foundation
import Identity
import OCapN
import Syrup
import Transport
#if canImport(Glibc)
import Glibc
#endif

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
        var template = Array("/tmp/ocapn-uds-check-XXXXXX".utf8CString)
        let raw = mkstemp(&template)
        guard raw >= 0 else { throw CheckError(.localFailure, "mkstemp: errno \(errno)") }
        _ = fcntl(raw, F_SETFD, FD_CLOEXEC)
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }  // nothing left on disk
        return FileDescriptor(adopting: raw)
    }

    static func pipeEnds() throws -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw CheckError(.localFailure, "pipe: errno \(errno)") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return (FileDescriptor(adopting: fds[0]), FileDescriptor(adopting: fds[1]))
    }

    static func tcpSocket() throws -> FileDescriptor {
        let raw = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard raw >= 0 else { throw CheckError(.localFailure, "socket(AF_INET): errno \(errno)") }
        return FileDescriptor(adopting: raw)
    }

    /// A listening unix socket with a kernel-chosen abstract name (autobind): no file to clean up.
    static func listeningUnixSocket() throws -> FileDescriptor {
        let raw = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard raw >= 0 else { throw CheckError(.localFailure, "socket(AF_UNIX): errno \(errno)") }
        let fd = FileDescriptor(adopting: raw)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(raw, $0, socklen_t(MemoryLayout<sa_family_t>.size)) }
        }
        guard bound == 0, listen(raw, 1) == 0 else {
            let code = errno
            fd.close()
            throw CheckError(.localFailure, "bind/listen: errno \(code)")
        }
        return fd
    }

    static func duplicate(_ fd: FileDescriptor) throws -> FileDescriptor {
        let raw = try fd.withRawDescriptor { fcntl($0, F_DUPFD_CLOEXEC, 0) }
        guard raw >= 0 else { throw CheckError(.localFailure, "dup: errno \(errno)") }
        return FileDescriptor(adopting: raw)
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
            let ms = Int32(clamping: remaining.milliseconds + 1)
            _ = try? fd.withRawDescriptor { raw -> Int32 in
                var entry = pollfd(fd: raw, events: Int16(POLLIN), revents: 0)
                return poll(&entry, 1, ms)
            }
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
    let ms = Int32(clamping: timeout.milliseconds)
    let readable = (try? received.withRawDescriptor { raw -> Int32 in
        var entry = pollfd(fd: raw, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, ms)
    }) ?? -1
    guard readable > 0 else { return false }
    var byte = [UInt8](repeating: 0, count: 1)
    guard case let .processed(r)? = try? byte.withUnsafeMutableBytes({ try received.receive(into: $0, descriptorCapacity: 0) }) else { return false }
    return r.byteCount == 1 && byte[0] == 0x2a
}
