import Identity

/// When signed checkpoints are written (only with a signer).
public struct AuditCheckpointPolicy: Sendable, Equatable {
    /// A checkpoint after this many records since the last one.
    public var everyRecords: Int
    /// A checkpoint once this long has passed since the last one (checked on each record and by
    /// `checkpointIfDue`).
    public var intervalMicros: Int64

    public init(everyRecords: Int = 1000, intervalMicros: Int64 = 60_000_000) {
        precondition(everyRecords >= 1 && intervalMicros >= 1, "checkpoint policy must be positive")
        self.everyRecords = everyRecords
        self.intervalMicros = intervalMicros
    }
}

/// The sans-IO hash chain: events and times in, line bytes out.
///
/// A value type so a writer can build the next state on a copy, write the bytes, and keep the
/// copy only if the write succeeded: a failed write never advances `seq` or the head.
public struct AuditChain: Sendable {
    public let writer: PublicIdentity
    /// The writer's own key pair, which signs checkpoints (`signAuditCheckpoint`: always under
    /// `AuditRecord.checkpointContext`, so never as a registration or handshake signature).
    public let signer: IdentityKeyPair?
    public let policy: AuditCheckpointPolicy
    /// Seq of the next record.
    public private(set) var nextSeq: UInt64
    /// BLAKE2b-256 of the last line written: the next record's `prev`.
    public private(set) var head: AuditDigest
    /// The forward-secure key chain sealing checkpoints (nil: signatures only). Its epoch is
    /// advanced by the writer (`AuditFileSink`), which persists it.
    public let sealing: AuditSealingKey?
    private var sinceCheckpoint = 0
    private var lastCheckpoint: AuditTimestamp?
    /// Timestamps never go backwards in a chain (a stepped clock is clamped), so a record's
    /// epoch never precedes the seal before it.
    public private(set) var lastTime: AuditTimestamp?

    /// A chain continuing after `head` (or a new chain from `AuditRecord.genesis`, seq 1).
    public init(writer: PublicIdentity, signer: IdentityKeyPair?, policy: AuditCheckpointPolicy = .init(),
                nextSeq: UInt64 = 1, head: AuditDigest = AuditRecord.genesis, sealing: AuditSealingKey? = nil,
                lastTime: AuditTimestamp? = nil) {
        precondition(signer.map { $0.publicIdentity == writer } ?? true, "the audit signer must be the writer's identity")
        precondition(sealing == nil || signer != nil, "sealed checkpoints are also signed: sealing needs a signer")
        self.sealing = sealing
        self.lastTime = lastTime
        precondition(head.bytes.count == 32, "chain head is a 32-byte hash")
        self.writer = writer
        self.signer = signer
        self.policy = policy
        self.nextSeq = nextSeq
        self.head = head
    }

    /// `time`, or the last record's time if the clock stepped back.
    public func clamped(_ time: AuditTimestamp) -> AuditTimestamp {
        guard let lastTime, lastTime.microsSinceEpoch > time.microsSinceEpoch else { return time }
        return lastTime
    }

    /// Whether the sealing epoch has ended at `time`: the writer seals with the current key,
    /// then advances it, before writing anything else.
    public func epochEnded(at time: AuditTimestamp) -> Bool {
        guard let sealing else { return false }
        return sealing.epoch(of: clamped(time)) > sealing.epoch
    }

    private mutating func emit(_ event: AuditEvent, _ meta: AuditLogMeta?, at rawTime: AuditTimestamp) -> [UInt8] {
        let time = clamped(rawTime)
        lastTime = time
        var record = AuditRecord(seq: nextSeq, prev: head, timestamp: time, event: event, log: meta)
        if var m = meta, event.kind == .logCheckpoint || event.kind == .logClosed, let sealing {
            m.epoch = sealing.epoch
            let unsealed = AuditRecord(seq: nextSeq, prev: head, timestamp: time, event: event, log: m)
            m.seal = sealing.seal(unsealed.sealedMessage())
            record = AuditRecord(seq: nextSeq, prev: head, timestamp: time, event: event, log: m)
        }
        if var m = record.log, event.kind == .logCheckpoint || event.kind == .logClosed, let signer {
            m.signature = signer.signAuditCheckpoint(recordLine: record.unsignedLine())
            record = AuditRecord(seq: nextSeq, prev: head, timestamp: time, event: event, log: m)
        }
        let line = record.encode()
        nextSeq += 1
        head = AuditRecord.chainHash(line)
        if event.kind == .logCheckpoint || event.kind == .logClosed || event.kind == .logOpened {
            sinceCheckpoint = 0
            lastCheckpoint = time
        } else {
            sinceCheckpoint += 1
        }
        return line
    }

    /// The first record of a file, or of a writer's run: names the writer.
    public mutating func opened(cause: AuditLogCause, at time: AuditTimestamp, torn: (bytes: UInt64, hash: AuditDigest)? = nil,
                                tampered: AuditTamperNote? = nil) -> [UInt8] {
        precondition(cause != .shutdown && cause != .handover, "log.opened cause cannot be shutdown or handover")
        precondition((cause == .tampered) == (tampered != nil), "a tampered log.opened names the moved file")
        var meta = AuditLogMeta(writer: writer, signed: signer != nil, cause: cause, tornBytes: torn?.bytes, tornHash: torn?.hash)
        meta.moved = tampered?.moved
        meta.movedHash = tampered?.movedHash
        meta.failure = tampered?.failure
        meta.sealID = sealing?.id
        return emit(AuditEvent(.logOpened), meta, at: time)
    }

    /// An event record. Bookkeeping kinds and failures without a reason are caller bugs.
    public mutating func append(_ event: AuditEvent, at time: AuditTimestamp) -> [UInt8] {
        precondition(!event.kind.isLogBookkeeping, "log.* records are written by the chain itself")
        if let why = event.invariantViolation { preconditionFailure("invalid audit event: \(why)") }
        return emit(event, nil, at: time)
    }

    /// Whether a signed checkpoint is owed at `time`.
    public func checkpointDue(at time: AuditTimestamp) -> Bool {
        guard signer != nil, sinceCheckpoint > 0 else { return false }
        if sinceCheckpoint >= policy.everyRecords { return true }
        guard let last = lastCheckpoint else { return true }
        return time.microsSinceEpoch - last.microsSinceEpoch >= policy.intervalMicros
    }

    /// A signed checkpoint of the current head (only with a signer).
    public mutating func checkpoint(at time: AuditTimestamp) -> [UInt8] {
        precondition(signer != nil, "checkpoints need a signer")
        return emit(AuditEvent(.logCheckpoint), AuditLogMeta(), at: time)
    }

    /// The last record of a file: signed when there is a signer, so a cut tail is detectable.
    public mutating func closed(cause: AuditLogCause, at time: AuditTimestamp, nextWriter: PublicIdentity? = nil) -> [UInt8] {
        precondition(cause == .rotation || cause == .shutdown || cause == .handover, "log.closed cause is rotation, shutdown or handover")
        precondition((cause == .handover) == (nextWriter != nil) && (nextWriter == nil || signer != nil),
                     "a hand-over names the next writer and is signed")
        var meta = AuditLogMeta(cause: cause)
        meta.nextWriter = nextWriter
        return emit(AuditEvent(.logClosed), meta, at: time)
    }
}

/// What a tampered log.opened says about the file the writer refused to extend.
public struct AuditTamperNote: Sendable, Hashable {
    /// Where the file was moved (nil when it was missing).
    public var moved: AuditPath?
    public var movedHash: AuditDigest?
    /// The verification failure, e.g. `brokenLink at line 12`.
    public var failure: AuditPath
    public init(moved: AuditPath?, movedHash: AuditDigest?, failure: AuditPath) {
        self.moved = moved
        self.movedHash = movedHash
        self.failure = failure
    }
}
