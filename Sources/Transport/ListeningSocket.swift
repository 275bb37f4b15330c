#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A listening AF_UNIX stream socket, bound at a filesystem path or inherited.
///
/// Binding follows the tmux/Wayland pattern (C1, C2): take `flock` on `PATH.lock` for the
/// socket's lifetime, so two instances never race; a leftover socket file that refuses
/// connections is stale and replaced; a socket that answers is live and is never stolen; a
/// non-socket at the path is never deleted. The lock file is left in place on close:
/// unlinking it would let a waiter lock the old inode while a newcomer locks a new one.
///
/// Mode without a umask race: the socket inode is `fchmod`ed before `bind`, and Linux creates
/// the file with that mode minus the umask, so it is never wider than requested, even for an
/// instant. If the umask removed bits the caller asked for, the path is `chmod`ed afterwards
/// (widening only to the requested mode). Changing the process umask instead would affect
/// every other thread creating files at the same time.
public final class ListeningSocket: Sendable {
    /// Filesystem path, or nil for an inherited socket (which is never unlinked).
    public let path: String?
    /// The listening descriptor: non-blocking, close-on-exec.
    public let descriptor: FileDescriptor
    private let lock: FileDescriptor?
    /// (st_dev, st_ino) of the socket file we created, so close never unlinks a successor's.
    private let fileIdentity: FileIdentity?

    struct FileIdentity: Equatable, Sendable {
        let device: UInt64
        let inode: UInt64
    }

    /// Binds and listens at `path`. Throws `.alreadyRunning` (lock held), `.addressInUse`
    /// (a live server answers), `.pathOccupied` (not a socket), `.invalidPath`.
    public static func bind(
        path: String, mode: mode_t = 0o600, backlog: Int32 = 128
    ) throws(TransportError) -> ListeningSocket {
        precondition(mode & ~0o777 == 0, "socket mode takes permission bits only")
        // Validate early: nothing is created for a path that cannot be bound.
        try UnixAddress.withAddress(path, allowAbstract: false) { _, _ throws(TransportError) in }
        let lock = try takeLock(path + ".lock")
        do throws(TransportError) {
            try removeStaleSocket(at: path)
            let (socket, identity) = try listening(at: path, mode: mode, backlog: backlog)
            return ListeningSocket(path: path, descriptor: socket, lock: lock, fileIdentity: identity)
        } catch {
            lock.close()
            throw error
        }
    }

    /// Wraps an inherited listening socket (socket activation). Validates that it is a listening
    /// unix stream socket; close() does not unlink anything.
    public init(inherited descriptor: FileDescriptor) throws(TransportError) {
        let found = try descriptor.kind()
        guard case .unixStream(listening: true, _, _) = found else {
            throw TransportError(.unexpectedDescriptorKind, "inherited descriptor is \(found)", descriptorKind: found)
        }
        try descriptor.setNonBlocking()
        self.path = nil
        self.descriptor = descriptor
        self.lock = nil
        self.fileIdentity = nil
    }

    private init(path: String, descriptor: FileDescriptor, lock: FileDescriptor, fileIdentity: FileIdentity) {
        self.path = path
        self.descriptor = descriptor
        self.lock = lock
        self.fileIdentity = fileIdentity
    }

    /// Unlinks the socket file (only if it is still the one we bound), closes the socket, then
    /// releases the lock. Idempotent.
    public func close() {
        unlinkPath()
        descriptor.close()
        lock?.close()
    }

    /// Removes the socket file now, if it is still ours, so clients stop finding it at once even
    /// while the descriptor is still being released. Idempotent.
    public func unlinkPath() {
        if let path, let fileIdentity, descriptor.isOpen,
           let info = try? Self.lstatPath(path), info.isSocket, info.identity == fileIdentity {
            unlink(path)
        }
    }

    // MARK: steps

    private static func takeLock(_ lockPath: String) throws(TransportError) -> FileDescriptor {
        let raw: Int32
        do throws(TransportError) {
            raw = try systemCallNonBlocking("open(lock)") {
                open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            }
        } catch {
            // Say which path and what is wrong with it ("directory D does not exist").
            guard let number = error.errno else { throw error }
            throw TransportError.system("open(lock)", number, TransportError.pathProblem(lockPath, errno: number, socket: false))
        }
        let lock = FileDescriptor(adopting: raw)
        do throws(TransportError) {
            let result = try lock.with { (fd) throws(TransportError) -> IOResult<Int32> in
                try systemCall("flock") { flock(fd, LOCK_EX | LOCK_NB) }
            }
            guard case .processed = result else {
                throw TransportError(.alreadyRunning, "another instance holds \(lockPath)")
            }
            return lock
        } catch {
            lock.close()
            throw error
        }
    }

    /// With the lock held: a socket file nobody answers on is removed; a live one is refused.
    private static func removeStaleSocket(at path: String) throws(TransportError) {
        guard let info = try lstatPath(path) else { return }
        guard info.isSocket else {
            throw TransportError(.pathOccupied, "\(path) exists and is not a socket")
        }
        let probe = try FileDescriptor.makeSocket(family: AF_UNIX, type: SocketType.stream, nonBlocking: true)
        defer { probe.close() }
        let answer = try probe.with { (fd) throws(TransportError) -> Int32 in
            try UnixAddress.withAddress(path, allowAbstract: false) { (address, length) throws(TransportError) -> Int32 in
                while true {
                    if Glibc.connect(fd, address, length) == 0 { return 0 }
                    let code = errno
                    if code != EINTR { return code }
                }
            }
        }
        switch answer {
        case ECONNREFUSED:
            if unlink(path) == -1 && errno != ENOENT {
                throw TransportError.system("unlink", errno, "cannot remove stale socket \(path)")
            }
        case ENOENT:
            return
        case 0, EAGAIN, EINPROGRESS:
            // EAGAIN: a live server whose backlog is full (K14).
            throw TransportError(.addressInUse, "a live server answers at \(path)")
        default:
            throw TransportError.system("connect", answer, "probing \(path)")
        }
    }

    private static func fixMode(path: String, mode: mode_t) throws(TransportError) -> FileIdentity {
        guard let info = try lstatPath(path), info.isSocket else {
            throw TransportError(.pathOccupied, "\(path) vanished or changed right after bind")
        }
        if info.mode & 0o777 != mode {
            _ = try systemCallNonBlocking("chmod") { chmod(path, mode) }
        }
        return info.identity
    }

    struct PathInfo {
        let mode: mode_t
        let isSocket: Bool
        let identity: FileIdentity
    }

    static func lstatPath(_ path: String) throws(TransportError) -> PathInfo? {
        var info = stat()
        if lstat(path, &info) == -1 {
            if errno == ENOENT { return nil }
            throw TransportError.system("lstat", errno, "cannot inspect \(path)")
        }
        return PathInfo(
            mode: info.st_mode, isSocket: info.st_mode & S_IFMT == S_IFSOCK,
            identity: FileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino)))
    }

    // MARK: watching the path (C3)

    /// What is at `path` now, compared with the socket file we bound.
    public enum PathState: Sendable, Equatable {
        case ours
        case missing
        /// Another file, or another socket, sits at the path.
        case replaced
    }

    /// nil for an inherited socket (no path of ours to watch).
    public func pathState() -> PathState? {
        guard let path, let fileIdentity else { return nil }
        guard let info = try? Self.lstatPath(path) else { return .missing }
        return info.isSocket && info.identity == fileIdentity ? .ours : .replaced
    }

    /// Permission bits of the socket file as bound (for `rebound`), nil when gone or inherited.
    public func pathMode() -> mode_t? {
        guard let path, pathState() == .ours, let info = try? Self.lstatPath(path) else { return nil }
        return info.mode & 0o777
    }

    /// A fresh listening socket at the same path, bound at `PATH.new` and renamed over `PATH`
    /// in one step (clients see the old file, nothing, or the new socket; never a half-made
    /// one). The lock carries over (a duplicate of the same locked open file), so releasing
    /// this socket afterwards neither unlinks the new file nor frees the lock.
    public func rebound(mode: mode_t, backlog: Int32 = 128) throws(TransportError) -> ListeningSocket {
        guard let path, let lock else { throw TransportError(.invalidPath, "an inherited socket has no path to re-create") }
        let temporary = path + ".new"
        try UnixAddress.withAddress(temporary, allowAbstract: false) { _, _ throws(TransportError) in }
        if let stale = try Self.lstatPath(temporary), stale.isSocket { unlink(temporary) }
        let (socket, identity) = try Self.listening(at: temporary, mode: mode, backlog: backlog) { () throws(TransportError) in
            _ = try systemCallNonBlocking("rename") { rename(temporary, path) }
        }
        do throws(TransportError) {
            let copy = try lock.with { (fd) throws(TransportError) -> Int32 in
                try systemCallNonBlocking("fcntl(F_DUPFD_CLOEXEC)") { fcntl(fd, F_DUPFD_CLOEXEC, 0) }
            }
            return ListeningSocket(path: path, descriptor: socket, lock: FileDescriptor(adopting: copy), fileIdentity: identity)
        } catch {
            if let info = try? Self.lstatPath(temporary), info.isSocket { unlink(temporary) }
            socket.close()
            throw error
        }
    }

    /// A non-blocking socket bound at `path` with `mode` and listening, with the identity of the
    /// file it made; `thenAtPath` runs last (while a failure still cleans up). A failure at any
    /// step removes the file if it is a socket (it is ours) and closes the socket.
    private static func listening(
        at path: String, mode: mode_t, backlog: Int32, thenAtPath: () throws(TransportError) -> Void = {}
    ) throws(TransportError) -> (FileDescriptor, FileIdentity) {
        let socket = try FileDescriptor.makeSocket(family: AF_UNIX, type: SocketType.stream, nonBlocking: true)
        do throws(TransportError) {
            let identity = try socket.with { (fd) throws(TransportError) -> FileIdentity in
                _ = try systemCallNonBlocking("fchmod") { fchmod(fd, mode) }
                try UnixAddress.withAddress(path, allowAbstract: false) { (address, length) throws(TransportError) in
                    _ = try systemCallNonBlocking("bind") { Glibc.bind(fd, address, length) }
                }
                let identity = try fixMode(path: path, mode: mode)
                _ = try systemCallNonBlocking("listen") { listen(fd, backlog) }
                try thenAtPath()
                return identity
            }
            return (socket, identity)
        } catch {
            // Bound but failed later: remove our file before giving up.
            if let info = try? lstatPath(path), info.isSocket { unlink(path) }
            socket.close()
            throw error
        }
    }
}
