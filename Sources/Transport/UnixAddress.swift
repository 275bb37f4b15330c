#if canImport(Glibc)
import Glibc
#endif
internal import CFDShim

/// Builds a `sockaddr_un` for a filesystem path, or (when allowed) an abstract name written
/// with a leading `@`, as systemd's NOTIFY_SOCKET does.
enum UnixAddress {
    /// sun_path capacity on Linux (asserted in the C shim).
    static let pathCapacity = 108

    static func withAddress<R>(
        _ path: String, allowAbstract: Bool,
        _ body: (UnsafePointer<sockaddr>, socklen_t) throws(TransportError) -> R
    ) throws(TransportError) -> R {
        var bytes = Array(path.utf8)
        let abstract = allowAbstract && bytes.first == UInt8(ascii: "@")
        guard !bytes.isEmpty, abstract || !bytes.contains(0) else {
            throw TransportError(.invalidPath, "socket path is empty or contains NUL")
        }
        if abstract { bytes[0] = 0 }
        // A path needs a terminating NUL inside sun_path; an abstract name uses every byte.
        let limit = abstract ? pathCapacity : pathCapacity - 1
        guard bytes.count <= limit else {
            throw TransportError(.invalidPath, "socket path of \(bytes.count) bytes exceeds \(limit)")
        }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        let offset = Int(cfd_sockaddr_un_path_offset())
        let length = socklen_t(offset + bytes.count + (abstract ? 0 : 1))
        return try withUnsafePointer(to: &address) { (pointer) throws(TransportError) -> R in
            try pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (generic) throws(TransportError) -> R in
                try body(generic, length)
            }
        }
    }
}
