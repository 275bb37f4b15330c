#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The few system calls the audit writer and reader need, each retried on EINTR and turned
/// into a typed error. Bad descriptors are our bug and trap.
enum FileIO {
    static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o600) throws(AuditError) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw AuditError.io("open", path, errno: errno)
        }
    }

    static func close(_ fd: Int32) {
        // Never retried: on Linux the descriptor is gone even when close reports EINTR.
        let rc = Glibc.close(fd)
        precondition(rc == 0 || errno != EBADF, "close of a descriptor we do not own")
    }

    /// One write(2) of the whole buffer (the append is atomic); a short write is reported as
    /// how many bytes went out so the caller can cut them off again.
    static func writeOnce(_ fd: Int32, _ bytes: [UInt8]) -> (written: Int, errno: Int32) {
        while true {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n >= 0 { return (n, 0) }
            if errno == EINTR { continue }
            precondition(errno != EBADF && errno != EFAULT, "write to a descriptor we do not own")
            return (0, errno)
        }
    }

    static func pread(_ fd: Int32, count: Int, offset: Int64, path: String) throws(AuditError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress! + got, count - got, off_t(offset) + off_t(got)) }
            if n > 0 { got += n; continue }
            if n == 0 { break }
            if errno == EINTR { continue }
            throw AuditError.io("pread", path, errno: errno)
        }
        out.removeLast(count - got)
        return out
    }

    static func size(_ fd: Int32, path: String) throws(AuditError) -> Int64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw AuditError.io("fstat", path, errno: errno) }
        return Int64(st.st_size)
    }

    /// Device and inode of a path, or nil when it does not exist (for --follow's rotation check).
    static func identity(ofPath path: String) -> (UInt64, UInt64)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    static func identity(ofFD fd: Int32) -> (UInt64, UInt64)? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    static func dup(_ fd: Int32, path: String) throws(AuditError) -> Int32 {
        let d = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard d >= 0 else { throw AuditError.io("dup", path, errno: errno) }
        return d
    }

    static func sizeOrZero(_ fd: Int32) -> Int64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return 0 }
        return Int64(st.st_size)
    }

    static func truncate(_ fd: Int32, to size: Int64, path: String) throws(AuditError) {
        while ftruncate(fd, off_t(size)) != 0 {
            if errno == EINTR { continue }
            throw AuditError.io("ftruncate", path, errno: errno)
        }
    }

    static func sync(_ fd: Int32, path: String) throws(AuditError) {
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw AuditError.io("fdatasync", path, errno: errno)
        }
    }

    /// Makes renames and creations in `dir` durable.
    static func syncDirectory(_ dir: String) throws(AuditError) {
        let fd = try open(dir, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        while fsync(fd) != 0 {
            if errno == EINTR { continue }
            // Some file systems refuse fsync on directories; the data itself is synced.
            if errno == EINVAL { return }
            throw AuditError.io("fsync", dir, errno: errno)
        }
    }

    static func lockExclusive(_ fd: Int32, path: String) throws(AuditError) {
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            if errno == EWOULDBLOCK { throw AuditError(.logInUse, "another writer holds the lock on \(path)") }
            throw AuditError.io("flock", path, errno: errno)
        }
    }

    static func rename(_ from: String, _ to: String) throws(AuditError) {
        guard Glibc.rename(from, to) == 0 else { throw AuditError.io("rename", from, errno: errno) }
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    static func unlink(_ path: String) throws(AuditError) {
        guard Glibc.unlink(path) == 0 || errno == ENOENT else { throw AuditError.io("unlink", path, errno: errno) }
    }

    /// Replaces `path` with `bytes` so a reader sees the old or the new content, never a mix,
    /// and the new content survives a crash: temp file, fsync, rename, directory fsync.
    static func writeAtomically(path: String, bytes: [UInt8], mode: mode_t = 0o600) throws(AuditError) {
        let dir = directory(of: path)
        let base = path.split(separator: "/").last.map(String.init) ?? path
        let tmp = (dir == "/" ? "" : dir) + "/." + base + ".tmp"
        let fd = try open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: mode)
        var ok = false
        defer {
            close(fd)
            if !ok { try? unlink(tmp) }
        }
        _ = fchmod(fd, mode)
        var done = 0
        while done < bytes.count {
            let (n, err) = writeOnce(fd, Array(bytes[done...]))
            if n <= 0 { throw AuditError.io("write", tmp, errno: err) }
            done += n
        }
        while fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw AuditError.io("fsync", tmp, errno: errno)
        }
        try rename(tmp, path)
        ok = true
        try syncDirectory(dir)
    }

    /// The whole content of a small file (at most `limit` bytes), or nil when it does not exist.
    static func readSmallFile(_ path: String, limit: Int) throws(AuditError) -> [UInt8]? {
        let fd: Int32
        do { fd = try open(path, O_RDONLY) } catch {
            if !exists(path) { return nil }
            throw error
        }
        defer { close(fd) }
        let size = try self.size(fd, path: path)
        guard size <= Int64(limit) else { throw AuditError(.recordTooLarge, "\(path) is larger than \(limit) bytes") }
        return try pread(fd, count: Int(size), offset: 0, path: path)
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
