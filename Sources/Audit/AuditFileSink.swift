import Dispatch
import Identity
import SodiumCrypto
import Synchronization
import Transport

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
    public var signer: IdentityKeyPair?
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
    /// The forward-secure sealing key file (`ocapn-uds audit setup-keys`), evolved in place each
    /// epoch; nil: checkpoints are signed but not sealed.
    public var sealingKeyPath: String?
    /// Where each checkpoint's seq and hash also go (nil: nowhere).
    public var witness: AuditWitnessTarget?
    /// How often a timer of the sink's own offers a checkpoint and ends an epoch (nil: only
    /// records and `checkpointIfDue` do). Daemons set it so an idle log is still sealed in time.
    public var tick: Duration?
    /// `record` queues the event (its time read at the call, so file order is call order) and a
    /// writer queue of the sink's own writes it: the caller never waits on the disk. At most
    /// 16384 events wait; beyond that `record` waits for the writer. `flush` and `close` drain it.
    public var asynchronous: Bool = false

    public init(
        path: String, writer: PublicIdentity, signer: IdentityKeyPair? = nil, checkpoints: AuditCheckpointPolicy = .init(),
        fsync: AuditFsyncPolicy = .onCheckpoint, maxFileBytes: Int64 = 64 << 20, maxRotatedFiles: Int = 16,
        maxRecordBytes: Int = 8192, clock: @escaping @Sendable () -> AuditTimestamp = AuditTimestamp.now,
        sealingKeyPath: String? = nil, witness: AuditWitnessTarget? = nil, tick: Duration? = nil, asynchronous: Bool = false
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
        self.sealingKeyPath = sealingKeyPath
        self.witness = witness
        self.tick = tick
        self.asynchronous = asynchronous
    }

    /// Path of rotated file `n` (1 = newest).
    public func rotatedPath(_ n: Int) -> String { "\(path).\(n)" }

    /// The writer's state file beside the log (hidden, so `PATH*` globs do not pick it up):
    /// the last checkpoint's seq and hash.
    public var statePath: String {
        let dir = FileIO.directory(of: path)
        let base = path.split(separator: "/").last.map(String.init) ?? path
        return (dir == "/" ? "" : dir) + "/." + base + ".state"
    }
}

/// Appends records to a JSONL file: one write(2) per line on an O_APPEND descriptor, under a
/// lock so the file order is the chain order, usable from any thread or queue.
///
/// Opening never extends what it cannot verify: the existing file is checked (every signature
/// under its writer, the chain, a hand-over to this writer if another wrote it, and the state
/// file's last checkpoint). A file that fails is moved aside as `PATH.tampered-TIMESTAMP` and a
/// new file starts whose log.opened names it, its hash and the failure (`reopenFailure`). A
/// torn last line left by a crash is cut off and described in the new log.opened record. A
/// write failure is counted in `status` and leaves the chain as it was.
public final class AuditFileSink: AuditSink {
    private struct State {
        var fd: FileDescriptor
        var chain: AuditChain
        var size: Int64
        var status = AuditSinkStatus()
        var closed = false
        var witness: WitnessOutput?
        /// Checkpoints written but not yet made durable: a dup of the log's descriptor (the
        /// file may be rotated away meanwhile) and the entry for the state file and witness.
        var durable: [DurableJob] = []
        /// Asynchronous batches: lines appended but not yet written, written with one write(2)
        /// by `flushPending`; the chain and counters to go back to if that write fails.
        var batching = false
        var pending: [UInt8] = []
        var pendingRecords: UInt64 = 0
        var beforePending: (chain: AuditChain, size: Int64, written: UInt64)?
    }

    public let configuration: AuditFileConfiguration
    private let state: Mutex<State>
    /// Set when the existing log failed verification on open and was moved aside; the caller
    /// logs it at error level.
    public let reopenFailure: AuditTamperNote?
    // Set once at the end of init, then only cancelled (thread-safe).
    private nonisolated(unsafe) var tickTimer: DispatchSourceTimer?
    /// fdatasync, state file and witness after each checkpoint, in order, off the caller's path
    /// (a checkpoint's fsyncs would otherwise stall every record behind them).
    private let durability = DispatchQueue(label: "ocapn-uds.audit.durability")
    /// Asynchronous mode: events queued by `record`, written in order by `writer`.
    private struct Inbox {
        var items: [(AuditEvent, AuditTimestamp)] = []
        var scheduled = false
    }
    private let inbox = Mutex(Inbox())
    private let writer = DispatchQueue(label: "ocapn-uds.audit.writer")
    private static let onDurabilityQueue = DispatchSpecificKey<Bool>()

    public init(_ configuration: AuditFileConfiguration) throws(AuditError) {
        self.configuration = configuration
        let c = configuration
        let path = c.path
        let sealing = try c.sealingKeyPath.map { p throws(AuditError) in try AuditSealingKeyFile.load(path: p) }
        if sealing != nil, c.signer == nil { throw AuditError(.invalidArgument, "a sealed log needs a signer") }
        var fd = try FileIO.open(path, .readWrite, [.append, .create])
        var witness: WitnessOutput?
        do {
            try FileIO.lockExclusive(fd, path: path)
            witness = try c.witness.map { w throws(AuditError) -> WitnessOutput in
                switch w {
                case .file(let p): return .file(try FileIO.open(p, .writeOnly, [.append, .create], mode: 0o644))
                case .standardError: return .standardError
                }
            }
            let saved = try AuditWriterState.read(path: c.statePath)
            var tamper: AuditTamperNote?
            var resumeFromState = false
            var rotated = false
            let fileSize = try FileIO.size(fd, path: path)
            if fileSize > 0 {
                if let failure = Self.verifyForReopen(c, saved: saved) {
                    let moved = try Self.moveAside(c, fd: &fd)
                    tamper = AuditTamperNote(moved: AuditPath(moved.path), movedHash: moved.hash, failure: failure)
                    resumeFromState = saved != nil
                }
            } else if let saved {
                // An empty or missing live file: only right after a rotation may the chain go on,
                // from the rotated file's last record, which must be the state's checkpoint.
                if Self.rotatedTailMatches(c, saved) {
                    resumeFromState = true
                    rotated = true
                } else {
                    tamper = AuditTamperNote(moved: nil, movedHash: nil, failure: AuditPath(
                        "the log is empty or missing but the state file names checkpoint seq \(saved.seq)")!)
                    resumeFromState = true
                }
            }
            var st: State
            var cause = AuditLogCause.start
            var torn: (UInt64, AuditDigest)?
            var needsSealBeforeOpen = false
            if tamper != nil || rotated || FileIO.sizeOrZero(fd) == 0 {
                let chain = resumeFromState
                    ? AuditChain(writer: c.writer, signer: c.signer, policy: c.checkpoints, nextSeq: saved!.seq + 1, head: saved!.hash, sealing: sealing)
                    : AuditChain(writer: c.writer, signer: c.signer, policy: c.checkpoints, sealing: sealing)
                st = State(fd: fd, chain: chain, size: 0, witness: witness)
                if tamper != nil { cause = .tampered } else if rotated { cause = .rotation }
            } else {
                let tail = try Self.readTail(fd, path: path, maxLine: c.maxRecordBytes * 2)
                if let t = tail.torn {
                    try FileIO.truncate(fd, to: tail.completeSize, path: path)
                    torn = (UInt64(t.count), AuditRecord.chainHash(t))
                    cause = .recovery
                }
                var chain: AuditChain
                if let last = tail.lastRecord {
                    chain = AuditChain(writer: c.writer, signer: c.signer, policy: c.checkpoints,
                                       nextSeq: last.record.seq + 1, head: last.hash, sealing: sealing, lastTime: last.record.timestamp)
                    let k = last.record.event.kind
                    if k != .logClosed { cause = .recovery }
                    needsSealBeforeOpen = k != .logClosed && k != .logCheckpoint
                } else {
                    chain = AuditChain(writer: c.writer, signer: c.signer, policy: c.checkpoints, sealing: sealing)
                }
                st = State(fd: fd, chain: chain, size: tail.completeSize, witness: witness)
                if let last = tail.lastRecord, last.record.event.kind == .logClosed, last.record.log?.cause == .rotation {
                    // A rotation was interrupted after closing the file: finish it now.
                    try Self.shiftFiles(c)
                    let newFD = try FileIO.open(path, .readWrite, [.append, .create, .exclusive])
                    fd.close()
                    st.fd = newFD
                    try FileIO.lockExclusive(newFD, path: path)
                    st.size = 0
                    cause = .rotation
                }
            }
            let now = c.clock()
            if st.chain.epochEnded(at: now) {
                // Records of the previous run's epoch are sealed with its key before it is gone.
                if needsSealBeforeOpen { try Self.writeCheckpointStatic(c, &st, at: now) }
                try Self.advanceEpoch(c, &st, at: now)
            }
            let line = st.chain.opened(cause: cause, at: now, torn: torn.map { (bytes: $0.0, hash: $0.1) }, tampered: tamper)
            try Self.append(line, to: &st, path: path)
            if c.fsync != .never || tamper != nil { try FileIO.sync(st.fd, path: path) }
            st.status.recordsWritten += 1
            reopenFailure = tamper
            for job in st.durable { try Self.makeDurable(configuration, job) }
            st.durable = []
            state = Mutex(st)
        } catch {
            fd.close()
            witness?.close()
            throw error
        }
        durability.setSpecific(key: Self.onDurabilityQueue, value: true)
        if let tick = c.tick { startTimer(tick) }
    }

    deinit {
        // Without close() the log ends unsealed, which the verifier reports: that is honest,
        // the writer did not shut down cleanly.
        tickTimer?.cancel()
        // Let queued state-file writes finish, so a later writer on the same file never sees
        // an older state land after its own (unless the last reference died on that queue).
        if DispatchQueue.getSpecific(key: Self.onDurabilityQueue) == nil { durability.sync {} }
        state.withLock { s in
            if !s.closed {
                s.fd.close()
                s.witness?.close()
            }
            for job in s.durable { job.close() }
        }
    }

    private func startTimer(_ tick: Duration) {
        let t = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "ocapn-uds.audit.tick"))
        let (sec, atto) = tick.components
        let nanos = max(1_000_000, Int(sec) * 1_000_000_000 + Int(atto / 1_000_000_000))
        t.schedule(deadline: .now() + .nanoseconds(nanos), repeating: .nanoseconds(nanos), leeway: .milliseconds(100))
        t.setEventHandler { [weak self] in self?.checkpointIfDue() }
        t.activate()
        tickTimer = t
    }

    /// Whether the existing live file may be extended; nil if so, else why not.
    private static func verifyForReopen(_ c: AuditFileConfiguration, saved: AuditWitnessEntry?) -> AuditPath? {
        var options = AuditVerifyOptions(allowUnsigned: c.signer == nil)
        if let saved { options.witness = [saved] }
        var v = AuditVerifier(options: options)
        v.beginFile(c.path)
        var lineNo = 0
        do {
            let r = try AuditLineReader(path: c.path, maxLineBytes: max(AuditLineReader.defaultMaxLineBytes, c.maxRecordBytes * 2))
            while let raw = try r.next(), !v.isBroken {
                lineNo = raw.number
                v.line(raw)
            }
        } catch {
            v.readError(error, at: AuditLocation(file: c.path, line: lineNo + 1))
        }
        let report = v.finish()
        func why(_ f: AuditFinding) -> AuditPath {
            switch f.code {
            case .cutBehindWitness:
                return AuditPath("shorter than the state file says: it names checkpoint seq \(saved?.seq ?? 0), the log ends at seq \(report.lastSeq ?? 0)")!
            case .witnessMismatch:
                return AuditPath("the state file's checkpoint differs at line \(f.location.line): rewritten")!
            default:
                return AuditPath("\(f.code.rawValue) at line \(f.location.line)")!
            }
        }
        if let b = report.firstBreak { return why(b) }
        if report.status == .unsigned, let f = report.findings.first(where: { $0.code == .unsignedRun }) { return why(f) }
        if let saved, let first = report.firstSeq, saved.seq + 1 < first {
            return AuditPath("the state file names checkpoint seq \(saved.seq), before this file's first record \(first)")!
        }
        if let w = report.currentWriter, w != c.writer {
            return AuditPath("written by \(w.fingerprint) without a hand-over to \(c.writer.fingerprint)")!
        }
        return nil
    }

    /// Whether `PATH.1` ends with the state's checkpoint (a rotation finished, the new file not written yet).
    private static func rotatedTailMatches(_ c: AuditFileConfiguration, _ saved: AuditWitnessEntry) -> Bool {
        guard let fd = try? FileIO.open(c.rotatedPath(1), .readOnly) else { return false }
        defer { fd.close() }
        guard let tail = try? readTail(fd, path: c.rotatedPath(1), maxLine: c.maxRecordBytes * 2), tail.torn == nil,
              let last = tail.lastRecord else { return false }
        return last.record.seq == saved.seq && last.hash == saved.hash
    }

    /// Renames the live file to `PATH.tampered-TIMESTAMP`, hashes it, and opens a fresh live file.
    private static func moveAside(_ c: AuditFileConfiguration, fd: inout FileDescriptor) throws(AuditError) -> (path: String, hash: AuditDigest) {
        let stamp = c.clock().rfc3339.filter { $0 != "-" && $0 != ":" }.split(separator: ".").first.map(String.init) ?? "now"
        var target = "\(c.path).tampered-\(stamp)Z"
        var n = 2
        while FileIO.exists(target) {
            target = "\(c.path).tampered-\(stamp)Z-\(n)"
            n += 1
        }
        let hasher = BLAKE2b.Hasher(outputLength: 32)
        let size = try FileIO.size(fd, path: c.path)
        var offset: Int64 = 0
        while offset < size {
            let chunk = try FileIO.pread(fd, count: Int(min(1 << 20, size - offset)), offset: offset, path: c.path)
            if chunk.isEmpty { break }
            hasher.update(chunk)
            offset += Int64(chunk.count)
        }
        let hash = AuditDigest(hasher.finalize())
        try FileIO.rename(c.path, target)
        let newFD = try FileIO.open(c.path, .readWrite, [.append, .create, .exclusive])
        fd.close()
        fd = newFD
        try FileIO.lockExclusive(fd, path: c.path)
        try FileIO.syncDirectory(FileIO.directory(of: c.path))
        return (target, hash)
    }

    /// Ends the current sealing epoch: the seal is durable before the key moves on, and the
    /// old key is wiped from memory and replaced on disk.
    private static func advanceEpoch(_ c: AuditFileConfiguration, _ s: inout State, at now: AuditTimestamp) throws(AuditError) {
        guard let sealing = s.chain.sealing, let keyPath = c.sealingKeyPath else { return }
        try flushPending(&s, path: c.path)
        try FileIO.sync(s.fd, path: c.path)
        sealing.advance(to: sealing.epoch(of: s.chain.clamped(now)))
        try AuditSealingKeyFile.store(sealing, path: keyPath)
    }


    /// Counters: records written, failures, last failure.
    public var status: AuditSinkStatus { state.withLock { $0.status } }

    public func record(_ event: AuditEvent) {
        precondition(!event.kind.isLogBookkeeping, "log.* records are written by the sink itself")
        if let why = event.invariantViolation { preconditionFailure("invalid audit event: \(why)") }
        guard configuration.asynchronous else {
            defer { scheduleDurable() }
            state.withLock { s in
                // Read under the lock so timestamps follow file order.
                write(event, at: configuration.clock(), &s)
            }
            return
        }
        let (schedule, full) = inbox.withLock { box -> (Bool, Bool) in
            // Read under the lock so timestamps follow file order.
            box.items.append((event, configuration.clock()))
            defer { box.scheduled = true }
            return (!box.scheduled, box.items.count >= Self.maxQueued)
        }
        // Coalesced: the writer wakes at most every `batchDelay` and takes everything queued,
        // so a busy daemon pays one wake-up and one write(2) per batch, not per record.
        if schedule { writer.asyncAfter(deadline: .now() + Self.batchDelay) { [self] in drain() } }
        // Backpressure: a caller far ahead of the disk waits for the writer instead of growing memory.
        if full { writer.sync { drain() } }
    }

    /// Waits until every record passed to `record` so far is written (asynchronous mode).
    public func flush() {
        guard configuration.asynchronous else { return }
        writer.sync { drain() }
    }

    private static let maxQueued = 16_384
    private static let batchDelay = DispatchTimeInterval.milliseconds(2)

    /// The asynchronous writer: takes what is queued, writes it in order, until nothing is left.
    private func drain() {
        while true {
            let batch = inbox.withLock { box -> [(AuditEvent, AuditTimestamp)] in
                let items = box.items
                box.items.removeAll(keepingCapacity: true)
                if items.isEmpty { box.scheduled = false }
                return items
            }
            if batch.isEmpty { return }
            state.withLock { s in
                s.batching = true
                for (event, time) in batch { write(event, at: time, &s) }
                s.batching = false
                do throws(AuditError) { try Self.flushPending(&s, path: configuration.path) } catch {
                    s.status.lastFailure = error
                }
            }
            scheduleDurable()
        }
    }

    /// Appends one event (under the state lock): seals an ended epoch first, checkpoints and
    /// rotates when due; a failure is counted and leaves the chain as it was.
    private func write(_ event: AuditEvent, at now: AuditTimestamp, _ s: inout State) {
        do {
            guard !s.closed else {
                fail(&s, AuditError(.ioError, "audit sink is closed"))
                return
            }
            if s.chain.epochEnded(at: now) {
                do throws(AuditError) {
                    try Self.writeCheckpointStatic(configuration, &s, at: now)
                    try Self.advanceEpoch(configuration, &s, at: now)
                } catch {
                    fail(&s, error)
                }
            }
            var next = s.chain
            let line = next.append(event, at: now)
            guard line.count < configuration.maxRecordBytes else {
                fail(&s, AuditError(.recordTooLarge, "record of \(line.count) bytes over \(configuration.maxRecordBytes)"))
                return
            }
            do throws(AuditError) {
                try Self.append(line, to: &s, path: configuration.path)
                s.chain = next
                s.status.recordsWritten += 1
                if configuration.fsync == .everyRecord {
                    try Self.flushPending(&s, path: configuration.path)
                    try FileIO.sync(s.fd, path: configuration.path)
                }
                if s.chain.checkpointDue(at: now) { try writeCheckpoint(&s, at: now) }
                if s.size >= configuration.maxFileBytes { try rotate(&s, at: now) }
            } catch {
                fail(&s, error)
            }
        }
    }

    /// Writes a signed checkpoint if one is owed by the interval policy, and ends a sealing
    /// epoch that is over (seal, then evolve the key); for a timer, so an idle log's tail is
    /// still sealed within the interval and no epoch key outlives its epoch by much.
    public func checkpointIfDue() {
        defer { scheduleDurable() }
        state.withLock { s in
            let now = configuration.clock()
            guard !s.closed else { return }
            do throws(AuditError) {
                if s.chain.epochEnded(at: now) {
                    try Self.writeCheckpointStatic(configuration, &s, at: now)
                    try Self.advanceEpoch(configuration, &s, at: now)
                } else if s.chain.checkpointDue(at: now) {
                    try Self.writeCheckpointStatic(configuration, &s, at: now)
                }
            } catch {
                fail(&s, error)
            }
        }
    }

    /// Seals the log with a (signed) log.closed record, syncs and closes the file. Later
    /// records are counted as failures. With `handoverTo`, the closing record (signed by this
    /// writer) names the writer that may continue the log.
    public func close(handoverTo next: PublicIdentity? = nil) {
        tickTimer?.cancel()
        flush()
        let first = state.withLock { s -> Bool in
            // Read under the lock so timestamps follow file order.
            let now = configuration.clock()
            guard !s.closed else { return false }
            do throws(AuditError) {
                if s.chain.epochEnded(at: now) {
                    try Self.writeCheckpointStatic(configuration, &s, at: now)
                    try Self.advanceEpoch(configuration, &s, at: now)
                }
                var chain = s.chain
                let line = chain.closed(cause: next == nil ? .shutdown : .handover, at: now, nextWriter: next)
                try Self.append(line, to: &s, path: configuration.path)
                s.chain = chain
                s.status.recordsWritten += 1
                try Self.afterCheckpoint(configuration, &s, line: line, at: now)
            } catch {
                fail(&s, error)
            }
            s.closed = true  // later records fail from here on
            return true
        }
        guard first else { return }
        // The closing record is durable, and named by the state file, before close returns.
        scheduleDurable()
        durability.sync {}
        state.withLock { s in
            s.fd.close()
            s.witness?.close()
            s.witness = nil
        }
    }

    private func fail(_ s: inout State, _ error: AuditError) {
        s.status.failures += 1
        s.status.lastFailure = error
    }

    private func writeCheckpoint(_ s: inout State, at now: AuditTimestamp) throws(AuditError) {
        try Self.writeCheckpointStatic(configuration, &s, at: now)
    }

    private static func writeCheckpointStatic(_ c: AuditFileConfiguration, _ s: inout State, at now: AuditTimestamp) throws(AuditError) {
        guard s.chain.signer != nil else { return }
        var next = s.chain
        let line = next.checkpoint(at: now)
        try append(line, to: &s, path: c.path)
        s.chain = next
        s.status.recordsWritten += 1
        try afterCheckpoint(c, &s, line: line, at: now)
    }

    /// After a checkpoint or closing record: sync, remember it in the state file
    /// (atomic, fsynced) and tell the witness.
    /// A checkpoint to make durable; owns duplicates of the descriptors it needs, so the log
    /// may rotate or close meanwhile.
    private struct DurableJob: Sendable {
        let fd: FileDescriptor
        let witness: WitnessOutput?
        let entry: AuditWitnessEntry

        func close() {
            fd.close()
            witness?.close()
        }
    }

    private static func afterCheckpoint(_ c: AuditFileConfiguration, _ s: inout State, line: [UInt8], at now: AuditTimestamp) throws(AuditError) {
        let entry = AuditWitnessEntry(seq: s.chain.nextSeq - 1, hash: s.chain.head, timestamp: s.chain.clamped(now))
        let fd = try FileIO.dup(s.fd, path: c.path)
        var witness: WitnessOutput?
        if let w = s.witness {
            do throws(AuditError) { witness = try w.duplicate() } catch {
                fd.close()
                throw error
            }
        }
        s.durable.append(DurableJob(fd: fd, witness: witness, entry: entry))
    }

    /// Syncs the log (always: the state file must never be ahead of the durable log), then
    /// replaces the state file and tells the witness. Closes the job's descriptors.
    private static func makeDurable(_ c: AuditFileConfiguration, _ job: DurableJob) throws(AuditError) {
        defer { job.close() }
        try FileIO.sync(job.fd, path: c.path)
        try AuditWriterState.write(job.entry, path: c.statePath)
        if let w = job.witness {
            try w.write(Array((job.entry.line + "\n").utf8))
        }
    }

    /// Hands the checkpoints written under the lock to the durability queue.
    private func scheduleDurable() {
        let jobs: [DurableJob] = state.withLock { s in
            defer { s.durable = [] }
            return s.durable
        }
        guard !jobs.isEmpty else { return }
        let c = configuration
        durability.async { [weak self] in
            for job in jobs {
                do throws(AuditError) { try Self.makeDurable(c, job) } catch {
                    self?.state.withLock { s in
                        s.status.failures += 1
                        s.status.lastFailure = error
                    }
                }
            }
        }
    }

    /// Closes the live file with log.closed(rotation), shifts the rotated files, and starts a
    /// new live file whose log.opened links to the closing record.
    private func rotate(_ s: inout State, at now: AuditTimestamp) throws(AuditError) {
        let c = configuration
        try Self.flushPending(&s, path: c.path)
        // A rotation writes through: the closing line must be on disk before the rename.
        let wasBatching = s.batching
        s.batching = false
        defer { s.batching = wasBatching }
        var next = s.chain
        let closing = next.closed(cause: .rotation, at: now)
        try Self.append(closing, to: &s, path: c.path)
        s.chain = next
        s.status.recordsWritten += 1
        try Self.afterCheckpoint(c, &s, line: closing, at: now)
        let fd: FileDescriptor
        do throws(AuditError) {
            try Self.shiftFiles(c)
            fd = try FileIO.open(c.path, .readWrite, [.append, .create, .exclusive])
        } catch {
            // The closed file stays live: reopen it in the chain so later records still follow
            // a log.opened, and the next record retries the rotation.
            var reopened = s.chain
            let line = reopened.opened(cause: .recovery, at: now)
            if (try? Self.append(line, to: &s, path: c.path)) != nil {
                s.chain = reopened
                s.status.recordsWritten += 1
            }
            throw error
        }
        s.fd.close()
        s.fd = fd
        s.size = 0
        try FileIO.lockExclusive(fd, path: c.path)
        var opened = s.chain
        let line = opened.opened(cause: .rotation, at: now)
        try Self.append(line, to: &s, path: c.path)
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

    /// Appends one line and its newline with a single write(2) (or to the pending batch). A
    /// short write (disk full) is cut off again so the file never holds half a record in the
    /// middle of the chain.
    private static func append(_ line: [UInt8], to s: inout State, path: String) throws(AuditError) {
        if s.batching {
            if s.beforePending == nil { s.beforePending = (s.chain, s.size, s.status.recordsWritten) }
            s.pending.append(contentsOf: line)
            s.pending.append(0x0a)
            s.pendingRecords += 1
            s.size += Int64(line.count + 1)
            return
        }
        try writeNow(line + [0x0a], to: &s, path: path)
    }

    /// Writes a batch: one write(2). On failure the file is cut back and the chain, size and
    /// counters return to where they were before the batch, whose records count as failures.
    private static func flushPending(_ s: inout State, path: String) throws(AuditError) {
        guard let before = s.beforePending else { return }
        let bytes = s.pending, records = s.pendingRecords
        s.pending.removeAll(keepingCapacity: true)
        s.pendingRecords = 0
        s.beforePending = nil
        s.size = before.size
        do throws(AuditError) { try writeNow(bytes, to: &s, path: path) } catch {
            s.chain = before.chain
            s.status.recordsWritten = before.written
            s.status.failures += records
            s.durable.removeAll { job in
                let drop = job.entry.seq >= before.chain.nextSeq
                if drop { job.close() }
                return drop
            }
            throw error
        }
    }

    private static func writeNow(_ bytes: [UInt8], to s: inout State, path: String) throws(AuditError) {
        let (n, error) = FileIO.writeOnce(s.fd, bytes)
        if n == bytes.count {
            s.size += Int64(n)
            return
        }
        if n > 0 { try FileIO.truncate(s.fd, to: s.size, path: path) }
        throw n > 0 ? AuditError(.ioError, "short write to \(path) (\(n) of \(bytes.count) bytes), cut off")
                    : AuditError.io("write", path, error ?? TransportError(.systemCallFailed, "write wrote nothing"))
    }

    private struct Tail {
        var completeSize: Int64 = 0
        var torn: [UInt8]?
        var lastRecord: (record: AuditRecord, hash: AuditDigest)?
    }

    /// Finds the last complete line (and any torn bytes after it) by reading backwards.
    private static func readTail(_ fd: FileDescriptor, path: String, maxLine: Int) throws(AuditError) -> Tail {
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
