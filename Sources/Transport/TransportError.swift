#if canImport(Glibc)
import Glibc
#endif

/// The one error type of the Transport module.
///
/// Callers match on `code` (stable); `errno` and `syscall` say which kernel call failed, and
/// `detail` is a diagnostic for local logs only. No error carries payload bytes.
public struct TransportError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// A system call failed with an errno that has no more specific code here.
        case systemCallFailed
        /// The peer is gone: EPIPE or ECONNRESET on a send.
        case connectionReset
        /// The operation needs an open descriptor or connection and it was already closed.
        case closed
        /// `recvmsg` reported MSG_CTRUNC: descriptors were lost (K2–K4). What did arrive was closed.
        case controlTruncated
        /// Exactly one descriptor was expected and none arrived (A2).
        case descriptorExpected
        /// More descriptors arrived than allowed (A3). Extras have been closed.
        case unexpectedDescriptors
        /// A received descriptor is not a connected, unnamed AF_UNIX stream socket (A8, A9).
        /// `descriptorKind` names what it was.
        case unexpectedDescriptorKind
        /// The path is longer than `sun_path` allows, empty, or contains NUL.
        case invalidPath
        /// Another instance holds `PATH.lock` (C2).
        case alreadyRunning
        /// A live server answers at the path; it is never replaced (C1).
        case addressInUse
        /// Something that is not a socket sits at the path; it is never deleted.
        case pathOccupied
        /// A socket file exists but nothing listens on it (ECONNREFUSED): a stopped server's leftover.
        case connectionRefused
        /// Nothing at the path, or a directory on it is missing (ENOENT, ENOTDIR).
        case noSuchPath
        /// The path or a directory on it may not be used by this user (EACCES, EPERM).
        case permissionDenied
        /// A deadline passed (connect).
        case timedOut
        /// Queueing more output would exceed the configured output cap (F4).
        case outputQueueFull
        /// `LISTEN_FDS`/`LISTEN_PID`/`NOTIFY_SOCKET` are malformed or name unusable descriptors.
        case invalidEnvironment
        /// A request exceeded a configured or kernel limit (descriptor counts, sizes).
        case limitExceeded
    }

    public let code: Code
    /// errno of the failing system call, when one failed.
    public let errno: Int32?
    /// Name of the failing system call, when one failed.
    public let syscall: String?
    /// For `.unexpectedDescriptorKind`: what the descriptor turned out to be.
    public let descriptorKind: DescriptorKind?
    /// Diagnostic for local logs (sizes, counts, paths); never payload or secrets.
    public let detail: String

    public init(
        _ code: Code, _ detail: String, errno: Int32? = nil, syscall: String? = nil,
        descriptorKind: DescriptorKind? = nil
    ) {
        self.code = code
        self.detail = detail
        self.errno = errno
        self.syscall = syscall
        self.descriptorKind = descriptorKind
    }

    public var description: String {
        var text = "\(code.rawValue): \(detail)"
        if let syscall { text += " [\(syscall)" + (errno.map { " errno \($0) \(Self.errnoName($0))" } ?? "") + "]" }
        if let descriptorKind { text += " (\(descriptorKind))" }
        return text
    }

    /// For a person: the detail and the errno's text in words, without codes
    /// ("no socket at /run/x.sock (No such file or directory)").
    public var explanation: String {
        guard let errno else { return detail }
        return "\(detail) (\(Self.errnoName(errno)))"
    }

    /// What a path-based call's errno means for `path`, naming the path and what is missing
    /// ("directory /x does not exist", "no socket at /x/s.sock").
    public static func pathProblem(_ path: String, errno value: Int32, socket: Bool) -> String {
        switch value {
        case ENOENT, ENOTDIR:
            let directory = PathParts(path).directory
            var info = stat()
            if !directory.isEmpty, stat(directory, &info) != 0 { return "directory \(directory) does not exist" }
            if value == ENOTDIR { return "a component of \(path) is not a directory" }
            return socket ? "no socket at \(path)" : "no file at \(path)"
        case ECONNREFUSED:
            return "nothing is listening at \(path) (a socket file left by a stopped server?)"
        case EACCES, EPERM:
            return "permission denied on \(path) or its directory"
        default:
            return path
        }
    }

    static func errnoName(_ value: Int32) -> String {
        guard let message = strerror(value) else { return "" }
        return String(cString: message)
    }
}

extension TransportError {
    /// Maps an errno from `syscall` to the most specific code. Cold path.
    @inline(never)
    static func system(_ syscall: StaticString, _ errnoValue: Int32, _ detail: String = "") -> TransportError {
        let code: Code
        switch errnoValue {
        case EPIPE, ECONNRESET: code = .connectionReset
        case ECONNREFUSED: code = .connectionRefused
        case ENOENT, ENOTDIR: code = .noSuchPath
        case EACCES, EPERM: code = .permissionDenied
        case ETIMEDOUT: code = .timedOut
        default: code = .systemCallFailed
        }
        return TransportError(
            code, detail.isEmpty ? "\(syscall) failed" : detail, errno: errnoValue, syscall: "\(syscall)")
    }
}

/// The directory part of a path, without Foundation.
private struct PathParts {
    let path: String
    init(_ path: String) { self.path = path }
    var directory: String {
        guard let slash = path.lastIndex(of: "/") else { return "" }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
