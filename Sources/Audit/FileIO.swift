import Transport

/// The audit writer's and reader's file operations: Transport's system-call layer (EINTR
/// retried, owned descriptors) with its errors turned into `AuditError`s naming the path.
enum FileIO {
    static func open(
        _ path: String, _ access: FileAccess, _ options: FileOpenOptions = [], mode: UInt32 = 0o600
    ) throws(AuditError) -> FileDescriptor {
        do { return try FileDescriptor.open(path, access, options: options, permissions: mode) } catch {
            throw AuditError.io("open", path, error)
        }
    }

    /// One write(2) of the whole buffer (the append is atomic); a short write is reported as
    /// how many bytes went out so the caller can cut them off again.
    static func writeOnce(_ fd: FileDescriptor, _ bytes: [UInt8]) -> (written: Int, error: TransportError?) {
        do {
            return (try fd.write(bytes), nil)
        } catch {
            return (0, error)
        }
    }

    static func pread(_ fd: FileDescriptor, count: Int, offset: Int64, path: String) throws(AuditError) -> [UInt8] {
        do { return try fd.read(count: count, at: offset) } catch { throw AuditError.io("pread", path, error) }
    }

    /// One read(2) into `buffer`; 0 at end of file.
    static func read(_ fd: FileDescriptor, into buffer: inout [UInt8], path: String) throws(AuditError) -> Int {
        do { return try fd.read(into: &buffer, at: 0) } catch { throw AuditError.io("read", path, error) }
    }

    static func status(_ fd: FileDescriptor, path: String) throws(AuditError) -> FileStatus {
        do { return try fd.status() } catch { throw AuditError.io("fstat", path, error) }
    }

    static func size(_ fd: FileDescriptor, path: String) throws(AuditError) -> Int64 {
        try status(fd, path: path).size
    }

    /// Device and inode of a path, or nil when it does not exist (for --follow's rotation check).
    static func identity(ofPath path: String) -> (UInt64, UInt64)? {
        guard let st = try? FileSystem.status(ofPath: path) else { return nil }
        return (st.device, st.inode)
    }

    static func identity(ofFD fd: FileDescriptor) -> (UInt64, UInt64)? {
        guard let st = try? fd.status() else { return nil }
        return (st.device, st.inode)
    }

    static func dup(_ fd: FileDescriptor, path: String) throws(AuditError) -> FileDescriptor {
        do { return try fd.duplicate() } catch { throw AuditError.io("dup", path, error) }
    }

    static func sizeOrZero(_ fd: FileDescriptor) -> Int64 {
        (try? fd.status().size) ?? 0
    }

    static func truncate(_ fd: FileDescriptor, to size: Int64, path: String) throws(AuditError) {
        do { try fd.truncate(to: size) } catch { throw AuditError.io("ftruncate", path, error) }
    }

    static func sync(_ fd: FileDescriptor, path: String) throws(AuditError) {
        do { try fd.synchronize(dataOnly: true) } catch { throw AuditError.io("fdatasync", path, error) }
    }

    /// Makes renames and creations in `dir` durable.
    static func syncDirectory(_ dir: String) throws(AuditError) {
        do { try FileSystem.synchronizeDirectory(dir) } catch {
            throw AuditError.io(error.syscall ?? "fsync", dir, error)
        }
    }

    static func lockExclusive(_ fd: FileDescriptor, path: String) throws(AuditError) {
        let locked: Bool
        do { locked = try fd.tryLockExclusive() } catch { throw AuditError.io("flock", path, error) }
        guard locked else { throw AuditError(.logInUse, "another writer holds the lock on \(path)") }
    }

    static func rename(_ from: String, _ to: String) throws(AuditError) {
        do { try FileSystem.rename(from, to: to) } catch { throw AuditError.io("rename", from, error) }
    }

    static func exists(_ path: String) -> Bool { FileSystem.exists(path) }

    static func unlink(_ path: String) throws(AuditError) {
        do { try FileSystem.removeIfPresent(path) } catch { throw AuditError.io("unlink", path, error) }
    }

    /// Replaces `path` with `bytes` so a reader sees the old or the new content, never a mix,
    /// and the new content survives a crash: temp file, fsync, rename, directory fsync.
    static func writeAtomically(path: String, bytes: [UInt8], mode: UInt32 = 0o600) throws(AuditError) {
        let dir = directory(of: path)
        let base = path.split(separator: "/").last.map(String.init) ?? path
        let tmp = (dir == "/" ? "" : dir) + "/." + base + ".tmp"
        let fd = try open(tmp, .writeOnly, [.create, .truncate], mode: mode)
        var ok = false
        defer {
            fd.close()
            if !ok { try? unlink(tmp) }
        }
        try? fd.setPermissions(mode)
        do { try fd.writeAll(bytes) } catch { throw AuditError.io("write", tmp, error) }
        do { try fd.synchronize() } catch { throw AuditError.io("fsync", tmp, error) }
        try rename(tmp, path)
        ok = true
        try syncDirectory(dir)
    }

    /// The whole content of a small file (at most `limit` bytes), or nil when it does not exist.
    static func readSmallFile(_ path: String, limit: Int) throws(AuditError) -> [UInt8]? {
        let fd: FileDescriptor
        do { fd = try open(path, .readOnly) } catch {
            if !exists(path) { return nil }
            throw error
        }
        defer { fd.close() }
        let size = try self.size(fd, path: path)
        guard size <= Int64(limit) else { throw AuditError(.recordTooLarge, "\(path) is larger than \(limit) bytes") }
        return try pread(fd, count: Int(size), offset: 0, path: path)
    }

    static func directory(of path: String) -> String { FileSystem.directory(of: path) }
}

/// Where checkpoint entries go besides the state file: standard error (not owned, never
/// closed) or a file this writer opened.
enum WitnessOutput: Sendable {
    case standardError
    case file(FileDescriptor)

    /// A copy that stays valid after the original is closed (standard error is shared).
    func duplicate() throws(AuditError) -> WitnessOutput {
        switch self {
        case .standardError: return .standardError
        case .file(let fd): return .file(try FileIO.dup(fd, path: "audit witness"))
        }
    }

    func close() {
        if case .file(let fd) = self { fd.close() }
    }

    /// One write(2) of the entry (O_APPEND keeps it whole); a short write is an error.
    func write(_ bytes: [UInt8]) throws(AuditError) {
        let written: Int
        do {
            switch self {
            case .standardError:
                try StandardStreams.writeError(bytes)
                written = bytes.count
            case .file(let fd):
                written = try fd.write(bytes)
            }
        } catch {
            throw AuditError.io("write", "audit witness", error)
        }
        if written != bytes.count {
            throw AuditError(.ioError, "short write to the audit witness (\(written) of \(bytes.count) bytes)")
        }
    }
}
