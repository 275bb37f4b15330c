#if canImport(Glibc)
import Glibc
#endif

/// What a descriptor turned out to be, for validation errors and logs (K10).
public enum DescriptorKind: Equatable, Sendable, CustomStringConvertible {
    case regularFile
    case directory
    case pipe
    case characterDevice
    case blockDevice
    case symbolicLink
    /// Not a socket and none of the above (for example an epoll or event descriptor).
    case otherNonSocket
    /// AF_UNIX SOCK_STREAM; `listening` is SO_ACCEPTCONN; `named` says getsockname or
    /// getpeername has an address (path or abstract), `connected` that it has a peer.
    case unixStream(listening: Bool, named: Bool, connected: Bool)
    case unixDatagram
    case unixSeqpacket
    /// AF_INET or AF_INET6 SOCK_STREAM.
    case tcp(listening: Bool)
    /// AF_INET or AF_INET6 SOCK_DGRAM.
    case udp
    case otherSocket(family: Int32, type: Int32)

    /// The one kind the introduction protocol may carry: a socketpair end (A9).
    public var isUnnamedConnectedUnixStream: Bool {
        self == .unixStream(listening: false, named: false, connected: true)
    }

    public var description: String {
        switch self {
        case .regularFile: return "regular file"
        case .directory: return "directory"
        case .pipe: return "pipe or FIFO"
        case .characterDevice: return "character device"
        case .blockDevice: return "block device"
        case .symbolicLink: return "symbolic link"
        case .otherNonSocket: return "non-socket descriptor"
        case .unixStream(let listening, let named, let connected):
            if listening { return "listening unix stream socket" }
            if !connected { return "unconnected unix stream socket" }
            return named ? "unix stream socket with a bound or connected address" : "unix stream socket pair end"
        case .unixDatagram: return "unix datagram socket"
        case .unixSeqpacket: return "unix seqpacket socket"
        case .tcp(let listening): return listening ? "listening TCP socket" : "TCP socket"
        case .udp: return "UDP socket"
        case .otherSocket(let family, let type): return "socket of family \(family) type \(type)"
        }
    }
}

/// Credentials the kernel recorded for a unix socket's peer (SO_PEERCRED).
///
/// On a socketpair end these name whoever called `socketpair()`, even after the end was
/// passed on (K9), so they serve logging and policy hints, never identity (B1).
public struct PeerCredentials: Equatable, Sendable, CustomStringConvertible {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32

    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    public var description: String { "pid=\(pid) uid=\(uid) gid=\(gid)" }
}

extension FileDescriptor {
    /// A short name for what this descriptor is, for audit records about descriptors we close
    /// unused: "tty", "/dev/null", "pipe", "regular file", "unix stream socket pair end", …
    /// Uses `fstat`, `isatty` and `getsockopt` only; never changes the descriptor (A8). A passed
    /// stdin is the usual case (issue #17: a sender's padded control message carries its fd 0).
    public func shortKindDescription() -> String {
        var info = stat()
        let statted = (try? withRawDescriptor { fstat($0, &info) }) ?? -1
        guard statted == 0 else { return "unknown" }
        if info.st_mode & S_IFMT == S_IFCHR {
            if (try? withRawDescriptor { isatty($0) }) == 1 { return "tty" }
            var null = stat()
            if stat("/dev/null", &null) == 0 && null.st_mode & S_IFMT == S_IFCHR && null.st_rdev == info.st_rdev {
                return "/dev/null"
            }
            return "character device"
        }
        if info.st_mode & S_IFMT == S_IFIFO { return "pipe" }
        return (try? kind().description) ?? "unknown"
    }
}
