#if canImport(Glibc)
import Glibc
#endif

/// How a file is opened for reading and writing.
public enum FileAccess: Sendable {
    case readOnly, writeOnly, readWrite

    var flags: Int32 {
        switch self {
        case .readOnly: O_RDONLY
        case .writeOnly: O_WRONLY
        case .readWrite: O_RDWR
        }
    }
}

/// `open(2)` options beyond the access mode. Every file is opened close-on-exec.
public struct FileOpenOptions: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let create = FileOpenOptions(rawValue: O_CREAT)
    /// With `create`: fail with EEXIST when the path exists (also refuses a symlink there).
    public static let exclusive = FileOpenOptions(rawValue: O_EXCL)
    public static let truncate = FileOpenOptions(rawValue: O_TRUNC)
    public static let append = FileOpenOptions(rawValue: O_APPEND)
    public static let directory = FileOpenOptions(rawValue: O_DIRECTORY)
    public static let noFollow = FileOpenOptions(rawValue: O_NOFOLLOW)
    /// Never become the controlling terminal (a key file path may name a tty by mistake).
    public static let noControllingTerminal = FileOpenOptions(rawValue: O_NOCTTY)
}

/// What `fstat`/`stat`/`lstat` report, reduced to what callers check.
public struct FileStatus: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case regular, directory, fifo, socket, characterDevice, blockDevice, symbolicLink, other
    }

    public let kind: Kind
    /// Permission bits (`st_mode & 0o7777`).
    public let permissions: UInt32
    public let owner: UInt32
    public let size: Int64
    /// Device and inode: the file's identity, to notice a path replaced by another file.
    public let device: UInt64
    public let inode: UInt64

    init(_ st: stat) {
        switch st.st_mode & S_IFMT {
        case S_IFREG: kind = .regular
        case S_IFDIR: kind = .directory
        case S_IFIFO: kind = .fifo
        case S_IFSOCK: kind = .socket
        case S_IFCHR: kind = .characterDevice
        case S_IFBLK: kind = .blockDevice
        case S_IFLNK: kind = .symbolicLink
        default: kind = .other
        }
        permissions = UInt32(st.st_mode & 0o7777)
        owner = UInt32(st.st_uid)
        size = Int64(st.st_size)
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}

extension FileDescriptor {
    /// Opens `path` (close-on-exec). `permissions` apply when `.create` makes the file (before
    /// the umask). EINTR is retried; ENOENT/ENOTDIR give `.noSuchPath`, EACCES/EPERM
    /// `.permissionDenied`, anything else `.systemCallFailed` with the errno.
    public static func open(
        _ path: String, _ access: FileAccess, options: FileOpenOptions = [], permissions: UInt32 = 0o600
    ) throws(TransportError) -> FileDescriptor {
        let flags = access.flags | options.rawValue | O_CLOEXEC
        let raw = try systemCallNonBlocking("open") { Glibc.open(path, flags, mode_t(permissions)) }
        return FileDescriptor(adopting: raw)
    }

    /// One `read(2)` into `buffer`: how many bytes arrived, 0 at end of file.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(TransportError) -> Int {
        try with { (fd) throws(TransportError) -> Int in
            try systemCallNonBlocking("read") { Glibc.read(fd, buffer.baseAddress, buffer.count) }
        }
    }

    /// One `read(2)` into `buffer[index...]`: how many bytes arrived, 0 at end of file.
    public func read(into buffer: inout [UInt8], at index: Int) throws(TransportError) -> Int {
        try typed {
            try buffer.withUnsafeMutableBytes { (b) throws(TransportError) -> Int in
                try read(into: UnsafeMutableRawBufferPointer(rebasing: b[index...]))
            }
        }
    }

    /// One `write(2)` of `bytes`: how many went out (an append of the whole buffer is atomic).
    public func write(_ bytes: UnsafeRawBufferPointer) throws(TransportError) -> Int {
        try with { (fd) throws(TransportError) -> Int in
            try systemCallNonBlocking("write") { Glibc.write(fd, bytes.baseAddress, bytes.count) }
        }
    }

    /// One `write(2)` of `bytes`: how many went out.
    public func write(_ bytes: [UInt8]) throws(TransportError) -> Int {
        try typed { try bytes.withUnsafeBytes { (buffer) throws(TransportError) -> Int in try write(buffer) } }
    }

    /// Writes every byte, looping over short writes.
    public func writeAll(_ bytes: UnsafeRawBufferPointer) throws(TransportError) {
        var done = 0
        while done < bytes.count {
            let n = try write(UnsafeRawBufferPointer(rebasing: bytes[done...]))
            guard n > 0 else { throw TransportError.system("write", EIO, "write made no progress") }
            done += n
        }
    }

    /// Writes every byte of `bytes`, looping over short writes.
    public func writeAll(_ bytes: [UInt8]) throws(TransportError) {
        var done = 0
        while done < bytes.count {
            let start = done
            let n = try typed {
                try bytes.withUnsafeBytes { (buffer) throws(TransportError) -> Int in
                    try write(UnsafeRawBufferPointer(rebasing: buffer[start...]))
                }
            }
            guard n > 0 else { throw TransportError.system("write", EIO, "write made no progress") }
            done += n
        }
    }

    /// Up to `count` bytes from `offset` (fewer only at end of file), without moving the offset.
    public func read(count: Int, at offset: Int64) throws(TransportError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        try with { (fd) throws(TransportError) in
            while got < count {
                let start = got
                let n = try typed {
                    try out.withUnsafeMutableBytes { (b) throws(TransportError) -> Int in
                        try systemCallNonBlocking("pread") {
                            Glibc.pread(fd, b.baseAddress! + start, count - start, off_t(offset) + off_t(start))
                        }
                    }
                }
                if n == 0 { break }
                got += n
            }
        }
        out.removeLast(count - got)
        return out
    }

    /// `fstat(2)`.
    public func status() throws(TransportError) -> FileStatus {
        var st = stat()
        _ = try with { (fd) throws(TransportError) in try systemCallNonBlocking("fstat") { fstat(fd, &st) } }
        return FileStatus(st)
    }

    /// `fsync(2)`, or `fdatasync(2)` with `dataOnly` (the size still reaches the disk; other
    /// metadata such as mtime may not).
    public func synchronize(dataOnly: Bool = false) throws(TransportError) {
        _ = try with { (fd) throws(TransportError) in
            dataOnly
                ? try systemCallNonBlocking("fdatasync") { fdatasync(fd) }
                : try systemCallNonBlocking("fsync") { fsync(fd) }
        }
    }

    /// `ftruncate(2)`.
    public func truncate(to size: Int64) throws(TransportError) {
        _ = try with { (fd) throws(TransportError) in try systemCallNonBlocking("ftruncate") { ftruncate(fd, off_t(size)) } }
    }

    /// `fchmod(2)`: the exact permission bits, whatever the umask removed at creation.
    public func setPermissions(_ permissions: UInt32) throws(TransportError) {
        _ = try with { (fd) throws(TransportError) in try systemCallNonBlocking("fchmod") { fchmod(fd, mode_t(permissions)) } }
    }

    /// Takes an exclusive `flock(2)` without waiting. False when another open file holds it.
    public func tryLockExclusive() throws(TransportError) -> Bool {
        let result = try with { (fd) throws(TransportError) in try systemCall("flock") { flock(fd, LOCK_EX | LOCK_NB) } }
        if case .processed = result { return true }
        return false
    }

    /// A second descriptor for the same open file (close-on-exec), closed independently.
    public func duplicate() throws(TransportError) -> FileDescriptor {
        let raw = try with { (fd) throws(TransportError) in try systemCallNonBlocking("fcntl") { fcntl(fd, F_DUPFD_CLOEXEC, 0) } }
        return FileDescriptor(adopting: raw)
    }

    /// Closes and reports what `close(2)` says: after an fsync a failure there is still a lost
    /// write on some file systems (NFS). The descriptor is released either way (never retried).
    public func closeReportingError() throws(TransportError) {
        let raw = try take()
        if Glibc.close(raw) == -1 {
            let code = errno
            precondition(code != EBADF, "close(\(raw)) gave EBADF: someone else closed an owned descriptor")
            throw TransportError.system("close", code)
        }
    }
}

/// Path operations: the file-system calls that take names rather than descriptors.
public enum FileSystem {
    /// `stat(2)` (or `lstat(2)` when `followLinks` is false); nil when nothing is at `path`
    /// (ENOENT or ENOTDIR).
    public static func status(ofPath path: String, followLinks: Bool = true) throws(TransportError) -> FileStatus? {
        var st = stat()
        do throws(TransportError) {
            _ = try systemCallNonBlocking(followLinks ? "stat" : "lstat") {
                followLinks ? stat(path, &st) : lstat(path, &st)
            }
        } catch where error.code == .noSuchPath {
            return nil
        }
        return FileStatus(st)
    }

    /// Whether anything the caller may see is at `path` (a dangling symlink counts as absent).
    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// `rename(2)`: atomically replaces `to`.
    public static func rename(_ from: String, to: String) throws(TransportError) {
        _ = try systemCallNonBlocking("rename") { Glibc.rename(from, to) }
    }

    /// `link(2)`: fails with EEXIST rather than replace `to`.
    public static func link(_ from: String, to: String) throws(TransportError) {
        _ = try systemCallNonBlocking("link") { Glibc.link(from, to) }
    }

    /// `unlink(2)`; a path already gone is not an error.
    public static func removeIfPresent(_ path: String) throws(TransportError) {
        do throws(TransportError) {
            _ = try systemCallNonBlocking("unlink") { Glibc.unlink(path) }
        } catch where error.errno == ENOENT {}
    }

    /// fsyncs a directory so renames and creations in it survive a crash. File systems that
    /// cannot fsync a directory (EINVAL) are accepted: the entries themselves are in place.
    public static func synchronizeDirectory(_ path: String) throws(TransportError) {
        let directory = try FileDescriptor.open(path, .readOnly, options: .directory)
        defer { directory.close() }
        do throws(TransportError) {
            try directory.synchronize()
        } catch where error.errno == EINVAL {}
    }

    /// `mkdtemp(3)`: a new directory, mode 0700, named `prefix` and six random characters.
    public static func makeTemporaryDirectory(prefix: String) throws(TransportError) -> String {
        var template = Array((prefix + "XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw TransportError.system("mkdtemp", errno, "cannot create a directory \(prefix)XXXXXX") }
        return String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The directory part of `path` ("." for a bare name, "/" for a name at the root).
    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}

/// The calling process's identity.
public enum ProcessIdentity {
    public static var effectiveUserID: UInt32 { UInt32(geteuid()) }
    public static var realUserID: UInt32 { UInt32(getuid()) }
    public static var processID: Int32 { getpid() }
}

/// Writes to the process's standard streams without taking ownership of them.
public enum StandardStreams {
    /// Whether standard output is a terminal (colour and other decoration only then).
    public static var outputIsTerminal: Bool { isatty(STDOUT_FILENO) == 1 }

    /// Writes all of `bytes` to standard error (descriptor 2), retrying EINTR and short writes.
    public static func writeError(_ bytes: [UInt8]) throws(TransportError) {
        var done = 0
        while done < bytes.count {
            let start = done
            let n = try systemCallNonBlocking("write") {
                bytes.withUnsafeBytes { Glibc.write(2, $0.baseAddress! + start, $0.count - start) }
            }
            guard n > 0 else { throw TransportError.system("write", EIO, "write made no progress") }
            done += n
        }
    }
}

extension TransportError {
    /// The errno in words ("No such file or directory"), or "" when this error has none.
    public var errnoDescription: String { errno.map(Self.errnoName) ?? "" }

    /// Whether the failing call found nothing at the path (ENOENT; ENOTDIR is not included).
    public var isNoSuchEntry: Bool { errno == ENOENT }

    /// Whether the failing call reported that something already exists at the path (EEXIST).
    public var isAlreadyExists: Bool { errno == EEXIST }

    /// Whether a non-blocking lock or call found the resource busy (EWOULDBLOCK).
    public var isWouldBlock: Bool { errno == EWOULDBLOCK || errno == EAGAIN }
}
