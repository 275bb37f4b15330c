#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Identity
import Synchronization

/// When the writer calls fdatasync.
public enum AuditFsyncPolicy: String, Sendable, CaseIterable {
    /// Leave it to the kernel (fastest; a power loss may lose recent records, never corrupt the chain).
    case never
    /// After every record (each record is durable before `record` returns).
    case everyRecord
    /// After checkpoints, rotations and close.
    case onCheckpoint
}

/// Settings of a JSONL audit file.
public struct AuditFileConfiguration: Sendable {
    /// The live file, e.g. `/var/log/ocapn-uds/audit.jsonl`; rotated files are `PATH.1` (newest)
    /// … `PATH.N` (oldest).
    public var path: String
    public var writer: PublicIdentity
    /// Signs checkpoints and the closing record; nil for an unsigned (hash-chain only) log.
    public var signer: AuditSigner?
    public var checkpoints: AuditCheckpointPolicy
    public var fsync: AuditFsyncPolicy
    /// The live file is rotated once it reaches this size (it may exceed it by one record and
    /// the closing record).
    public var maxFileBytes: Int64
    /// How many rotated files are kept; the oldest beyond this are deleted at rotation.
    public var maxRotatedFiles: Int
    /// Longest record accepted; longer events are refused and counted as failures.
    public var maxRecordBytes: Int
    public var clock: @Sendable () -> AuditTimestamp

    public init(
        path: String, writer: PublicIdentity, signer: AuditSigner? = nil, checkpoints: AuditCheckpointPolicy = .init(),
        fsync: AuditFsyncPolicy = .onCheckpoint, maxFileBytes: Int64 = 64 << 20, maxRotatedFiles: Int = 16,
        maxRecordBytes: Int = 8192, clock: @escaping @Sendable () -> AuditTimestamp = AuditTimestamp.now
    ) {
        precondition(maxFileBytes >= 4096, "audit files must hold at least 4096 bytes")
        precondition(maxRotatedFiles >= 1 && maxRotatedFiles <= 10_000, "maxRotatedFiles must be 1...10000")
        precondition(maxRecordBytes >= 1024 && maxRecordBytes <= 1 << 20, "maxRecordBytes must be 1 KiB...1 MiB")
        self.path = path
        self.writer = writer
        self.signer = signer
        self.checkpoints = checkpoints
        self.fsync = fsync
        self.maxFileBytes = maxFileBytes
        self.maxRotatedFiles = maxRotatedFiles
        self.maxRecordBytes = maxRecordBytes
        self.clock = clock
    }

    /// Path of rotated file `n` (1 = newest).
    public func rotatedPath(_ n: Int) -> String { "\(path).\(n)" }
}

/// Appends records to a JSONL file: one write(2) per line on an O_APPEND descriptor, under a
/// lock so the file order is the chain order, usable from any thread or queue.
///
/// Opening continues an existing log: the chain resumes after its last line; a torn last line
/// left by a crash is cut off and described in the new log.opened record. A write failure is
/// counted in `status` and leaves the chain as it was, so later records still link.
public final class AuditFileSink: AuditSink {
    private struct State {
        var fd: Int32
        var chain: AuditChain
        var size: Int64
        var status = AuditSinkStatus()
        var closed = false
    }

    public let configuration: AuditFileConfiguration
    private let state: Mutex<State>

    public init(_ configuration: AuditFileConfiguration) throws(AuditError) {
        self.configuration = configuration
        let c = configuration
        let path = c.path
        let fd = try FileIO.open(path, O_RDWR | O_APPEND | O_CREAT)
        do {
            try FileIO.lockExclusive(fd, path: path)
            let tail = try Self.readTail(fd, path: path, maxLine: c.maxRecordBytes * 2)
            var chain: AuditChain
            var cause = AuditLogCause.start
            var torn: (UInt64, AuditDigest)?
            var size = tail.completeSize
            if let t = tail.torn {
                try FileIO.truncate(fd, to: tail.completeSize, path: path)
                torn = (UInt64(t.count), AuditRecord.chainHash(t))
                cause = .recovery
            }
            if let last = tail.lastRecord {
                chain = AuditChain(writer: c.writer, signer: c.signer, policy: c.checkpoints,
                                   nextSeq: last.record.seq + 1, head: last.hash)
                if last.record.event.kind != .logClosed { cause = .recovery }
            } else {
                chain = AuditChain(writer: c.writer, signer: c.signer, policy: c.checkpoints)
            }
            var st = State(fd: fd, chain: chain, size: size)
            if let last = tail.lastRecord, last.record.event.kind == .logClosed, last.record.log?.cause == .rotation {
                // A rotation was interrupted after closing the file: finish it now.
                try Self.shiftFiles(c)
                let newFD = try FileIO.open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL)
                FileIO.close(fd)
                st.fd = newFD
                try FileIO.lockExclusive(newFD, path: path)
                size = 0
                st.size = 0
                cause = .rotation
            }
            let line = st.chain.opened(cause: cause, at: c.clock(), torn: torn.map { (bytes: $0.0, hash: $0.1) })
            try Self.append(line + [0x0a], to: &st, path: path)
            if c.fsync != .never { try FileIO.sync(st.fd, path: path) }
            st.status.recordsWritten += 1
            state = Mutex(st)
        } catch {
            FileIO.close(fd)
            throw error
        }
    }

    deinit {
        // Without close() the log ends unsealed, which the verifier reports: that is honest,
        // the writer did not shut down cleanly.
        state.withLock { s in
            if !s.closed { FileIO.close(s.fd) }
        }
    }

    /// Counters: records written, failures, last failure.
    public var status: AuditSinkStatus { state.withLock { $0.status } }

    public func record(_ event: AuditEvent) {
        precondition(!event.kind.isLogBookkeeping, "log.* records are written by the sink itself")
        if let why = event.invariantViolation { preconditionFailure("invalid audit event: \(why)") }
        state.withLock { s in
            // Read under the lock so timestamps follow file order.
            let now = configuration.clock()
            guard !s.closed else {
                fail(&s, AuditError(.ioError, "audit sink is closed"))
                return
            }
            var next = s.chain
            let line = next.append(event, at: now)
            guard line.count < configuration.maxRecordBytes else {
                fail(&s, AuditError(.recordTooLarge, "record of \(line.count) bytes over \(configuration.maxRecordBytes)"))
                return
            }
            do throws(AuditError) {
                try Self.append(line + [0x0a], to: &s, path: configuration.path)
                s.chain = next
                s.status.recordsWritten += 1
                if configuration.fsync == .everyRecord { try FileIO.sync(s.fd, path: configuration.path) }
                if s.chain.checkpointDue(at: now) { try writeCheckpoint(&s, at: now) }
                if s.size >= configuration.maxFileBytes { try rotate(&s, at: now) }
            } catch {
                fail(&s, error)
            }
        }
    }

    /// Writes a signed checkpoint if one is owed by the interval policy; for a runtime timer, so
    /// an idle log's tail is still sealed within the interval.
    public func checkpointIfDue() {
        let now = configuration.clock()
        state.withLock { s in
            guard !s.closed, s.chain.checkpointDue(at: now) else { return }
            do throws(AuditError) { try writeCheckpoint(&s, at: now) } catch { fail(&s, error) }
        }
    }

    /// Seals the log with a (signed) log.closed record, syncs and closes the file. Later
    /// records are counted as failures.
    public func close() {
        state.withLock { s in
            // Read under the lock so timestamps follow file order.
            let now = configuration.clock()
            guard !s.closed else { return }
            var next = s.chain
            let line = next.closed(cause: .shutdown, at: now)
            do throws(AuditError) {
                try Self.append(line + [0x0a], to: &s, path: configuration.path)
                s.chain = next
                s.status.recordsWritten += 1
                if configuration.fsync != .never { try FileIO.sync(s.fd, path: configuration.path) }
            } catch {
                fail(&s, error)
            }
            FileIO.close(s.fd)
            s.closed = true
        }
    }

    private func fail(_ s: inout State, _ error: AuditError) {
        s.status.failures += 1
        s.status.lastFailure = error
    }

    private func writeCheckpoint(_ s: inout State, at now: AuditTimestamp) throws(AuditError) {
        var next = s.chain
        let line = next.checkpoint(at: now)
        try Self.append(line + [0x0a], to: &s, path: configuration.path)
        s.chain = next
        s.status.recordsWritten += 1
        if configuration.fsync != .never { try FileIO.sync(s.fd, path: configuration.path) }
    }

    /// Closes the live file with log.closed(rotation), shifts the rotated files, and starts a
    /// new live file whose log.opened links to the closing record.
    private func rotate(_ s: inout State, at now: AuditTimestamp) throws(AuditError) {
        let c = configuration
        var next = s.chain
        let closing = next.closed(cause: .rotation, at: now)
        try Self.append(closing + [0x0a], to: &s, path: c.path)
        s.chain = next
        s.status.recordsWritten += 1
        if c.fsync != .never { try FileIO.sync(s.fd, path: c.path) }
        let fd: Int32
        do throws(AuditError) {
            try Self.shiftFiles(c)
            fd = try FileIO.open(c.path, O_RDWR | O_APPEND | O_CREAT | O_EXCL)
        } catch {
            // The closed file stays live: reopen it in the chain so later records still follow
            // a log.opened, and the next record retries the rotation.
            var reopened = s.chain
            let line = reopened.opened(cause: .recovery, at: now)
            if (try? Self.append(line + [0x0a], to: &s, path: c.path)) != nil {
                s.chain = reopened
                s.status.recordsWritten += 1
            }
            throw error
        }
        FileIO.close(s.fd)
        s.fd = fd
        s.size = 0
        try FileIO.lockExclusive(fd, path: c.path)
        var opened = s.chain
        let line = opened.opened(cause: .rotation, at: now)
        try Self.append(line + [0x0a], to: &s, path: c.path)
        s.chain = opened
        s.status.recordsWritten += 1
        if c.fsync != .never {
            try FileIO.sync(fd, path: c.path)
            try FileIO.syncDirectory(FileIO.directory(of: c.path))
        }
    }

    /// PATH.(n) → PATH.(n+1) from the oldest down, dropping the one beyond the limit; PATH → PATH.1.
    private static func shiftFiles(_ c: AuditFileConfiguration) throws(AuditError) {
        try FileIO.unlink(c.rotatedPath(c.maxRotatedFiles))
        var n = c.maxRotatedFiles - 1
        while n >= 1 {
            if FileIO.exists(c.rotatedPath(n)) { try FileIO.rename(c.rotatedPath(n), c.rotatedPath(n + 1)) }
            n -= 1
        }
        try FileIO.rename(c.path, c.rotatedPath(1))
    }

    /// Appends one line with a single write(2). A short write (disk full) is cut off again so
    /// the file never holds half a record in the middle of the chain.
    private static func append(_ bytes: [UInt8], to s: inout State, path: String) throws(AuditError) {
        let (n, err) = FileIO.writeOnce(s.fd, bytes)
        if n == bytes.count {
            s.size += Int64(n)
            return
        }
        if n > 0 { try FileIO.truncate(s.fd, to: s.size, path: path) }
        throw n > 0 ? AuditError(.ioError, "short write to \(path) (\(n) of \(bytes.count) bytes), cut off")
                    : AuditError.io("write", path, errno: err)
    }

    private struct Tail {
        var completeSize: Int64
        var torn: [UInt8]?
        var lastRecord: (record: AuditRecord, hash: AuditDigest)?
    }

    /// Finds the last complete line (and any torn bytes after it) by reading backwards.
    private static func readTail(_ fd: Int32, path: String, maxLine: Int) throws(AuditError) -> Tail {
        let size = try FileIO.size(fd, path: path)
        guard size > 0 else { return Tail(completeSize: 0) }
        let window = Int64(maxLine) + 2
        let start = max(0, size - window)
        let bytes = try FileIO.pread(fd, count: Int(size - start), offset: start, path: path)
        guard let lastNL = bytes.lastIndex(of: 0x0a) else {
            guard start == 0 else { throw AuditError(.cannotContinueLog, "\(path): last line longer than \(maxLine) bytes") }
            // No complete line at all: the whole file is a torn first record.
            return Tail(completeSize: 0, torn: bytes)
        }
        let completeSize = start + Int64(lastNL) + 1
        let torn = lastNL + 1 < bytes.count ? Array(bytes[(lastNL + 1)...]) : nil
        let before = bytes[..<lastNL]
        let lineStart = before.lastIndex(of: 0x0a).map { $0 + 1 }
        guard lineStart != nil || start == 0 else {
            throw AuditError(.cannotContinueLog, "\(path): last record longer than \(maxLine) bytes")
        }
        let line = bytes[(lineStart ?? 0)..<lastNL]
        let record: AuditRecord
        do { record = try AuditRecord.decode(line) } catch {
            throw AuditError(.cannotContinueLog, "\(path): last complete record is not readable (\(error.code.rawValue)); verify and move the file aside")
        }
        return Tail(completeSize: completeSize, torn: torn, lastRecord: (record, AuditRecord.chainHash(line)))
    }
}
