import Identity
import SodiumCrypto

/// Why a log file was opened or closed (`cause` on log.opened / log.closed).
public enum AuditLogCause: String, Sendable, Hashable, CaseIterable {
    /// log.opened: a new chain, or a writer continuing an intact log after a restart.
    case start
    /// log.opened / log.closed: the previous file reached its size limit.
    case rotation
    /// log.opened: the previous writer stopped without closing (crash); any torn tail was cut
    /// off and is described by `torn_bytes` / `torn_hash`.
    case recovery
    /// log.closed: the writer shut down.
    case shutdown
    /// log.closed: the writer hands the log over to `next_writer` (signed by the old writer).
    case handover
    /// log.opened: the previous file failed verification on reopen and was moved aside; the
    /// record names it (`moved`, `moved_hash`) and the failure.
    case tampered
}

/// Fields of the writer's own bookkeeping records (log.opened, log.checkpoint, log.closed).
public struct AuditLogMeta: Hashable, Sendable {
    /// log.opened: the writer's identity (fingerprint and full key).
    public var writer: PublicIdentity?
    /// log.opened: whether checkpoints are signed from here on.
    public var signed: Bool?
    public var cause: AuditLogCause?
    /// log.opened after a crash: size and BLAKE2b-256 of the torn bytes that were cut off.
    public var tornBytes: UInt64?
    public var tornHash: AuditDigest?
    /// log.opened (cause tampered): the file moved aside, its BLAKE2b-256 and why it failed.
    public var moved: AuditPath?
    public var movedHash: AuditDigest?
    public var failure: AuditPath?
    /// log.opened: id of the forward-secure key chain sealing this run (absent: no seals).
    public var sealID: AuditDigest?
    /// log.closed (cause handover): the writer that may continue the log.
    public var nextWriter: PublicIdentity?
    /// log.checkpoint / log.closed in a sealed run: the epoch whose key made `seal`.
    public var epoch: UInt64?
    /// Keyed BLAKE2b-256 under the epoch key (see `AuditRecord.sealedMessage`).
    public var seal: AuditDigest?
    /// log.checkpoint / log.closed: Ed25519 signature by the writer (see `AuditRecord.signedMessage`).
    public var signature: [UInt8]?

    public init(writer: PublicIdentity? = nil, signed: Bool? = nil, cause: AuditLogCause? = nil,
                tornBytes: UInt64? = nil, tornHash: AuditDigest? = nil, signature: [UInt8]? = nil) {
        self.writer = writer
        self.signed = signed
        self.cause = cause
        self.tornBytes = tornBytes
        self.tornHash = tornHash
        self.signature = signature
    }
}

/// One line of the log: the chain envelope around an event.
public struct AuditRecord: Hashable, Sendable {
    /// The `v` this build writes and reads (docs/AUDIT.md).
    public static let schemaVersion: UInt64 = 1
    /// Domain separation for checkpoint signatures: the identity key also signs handshakes and
    /// registration challenges, so what it signs here must never parse as either.
    public static let checkpointContext: [UInt8] = SignedMessage.auditCheckpointContext
    /// `prev` of the first record of a chain.
    public static let genesis = AuditDigest([UInt8](repeating: 0, count: 32))

    public let seq: UInt64
    /// BLAKE2b-256 of the previous record's line bytes (without its newline).
    public let prev: AuditDigest
    public let timestamp: AuditTimestamp
    public let event: AuditEvent
    /// Present exactly on log.* records.
    public let log: AuditLogMeta?

    public init(seq: UInt64, prev: AuditDigest, timestamp: AuditTimestamp, event: AuditEvent, log: AuditLogMeta?) {
        precondition(event.kind.isLogBookkeeping == (log != nil), "log metadata belongs exactly on log.* records")
        self.seq = seq
        self.prev = prev
        self.timestamp = timestamp
        self.event = event
        self.log = log
    }

    /// The exact line bytes (no newline). Field order is fixed; absent fields are omitted.
    public func encode() -> [UInt8] {
        var w = JSONLineWriter()
        w.uint("v", Self.schemaVersion)
        w.uint("seq", seq)
        w.hex("prev", prev.bytes)
        w.timestamp("ts", timestamp)
        w.string("event", event.kind.rawValue)
        w.string("outcome", event.outcome.rawValue)
        w.string("reason", event.reason?.rawValue)
        w.hex64("attempt", event.attempt?.rawValue)
        w.string("role", event.role?.rawValue)
        w.string("local", event.local?.fingerprint)
        w.string("expected", event.expectedPeer?.fingerprint)
        w.string("proved", event.provedPeer?.fingerprint)
        w.string("from", event.from?.fingerprint)
        w.string("to", event.to?.fingerprint)
        w.string("server", event.introServer?.fingerprint)
        w.int("pid", event.credentials.map { Int64($0.pid) })
        w.uint("uid", event.credentials.map { UInt64($0.uid) })
        w.uint("gid", event.credentials.map { UInt64($0.gid) })
        w.int("incumbent_pid", event.incumbentCredentials.map { Int64($0.pid) })
        w.uint("incumbent_uid", event.incumbentCredentials.map { UInt64($0.uid) })
        w.uint("incumbent_gid", event.incumbentCredentials.map { UInt64($0.gid) })
        w.string("claimed_from", event.claimedFrom?.fingerprint)
        w.bool("authenticated", event.authenticated)
        w.hex("transcript", event.transcriptHash?.bytes)
        w.hex("session", event.sessionID?.bytes)
        w.uint("version", event.protocolVersion.map { UInt64($0) })
        w.uint("duration_us", event.durationMicros)
        w.bool("clean", event.clean)
        w.uint("bytes_sent", event.traffic?.bytesSent)
        w.uint("bytes_received", event.traffic?.bytesReceived)
        w.uint("messages_sent", event.traffic?.messagesSent)
        w.uint("messages_received", event.traffic?.messagesReceived)
        w.string("path", event.path?.value)
        w.string("descriptors", event.descriptorKinds?.description)
        if let log {
            w.string("writer", log.writer?.fingerprint)
            w.string("writer_key", log.writer?.designator)
            w.bool("signed", log.signed)
            w.string("cause", log.cause?.rawValue)
            w.uint("torn_bytes", log.tornBytes)
            w.hex("torn_hash", log.tornHash?.bytes)
            w.string("moved", log.moved?.value)
            w.hex("moved_hash", log.movedHash?.bytes)
            w.string("failure", log.failure?.value)
            w.hex("seal_id", log.sealID?.bytes)
            w.string("next_writer", log.nextWriter?.designator)
            w.uint("epoch", log.epoch)
            w.hex("seal", log.seal?.bytes)
            // Last, so the signed bytes are simply the line before it.
            w.hex("sig", log.signature)
        }
        return w.finish()
    }

    /// What a checkpoint signature covers: the context, then this record's line up to (not
    /// including) `,"sig":` — every field of the record, `prev` binding everything before it.
    public func signedMessage() -> [UInt8] {
        SignedMessage.auditCheckpoint(recordLine: unsignedLine())
    }

    /// This record's line without its signature and newline: what follows the context in
    /// `signedMessage()`, and what the writer's key pair signs (`signAuditCheckpoint`).
    func unsignedLine() -> ArraySlice<UInt8> {
        var unsigned = self.log!
        unsigned.signature = nil
        return AuditRecord(seq: seq, prev: prev, timestamp: timestamp, event: event, log: unsigned).encode().dropLast()
    }

    /// What a seal covers: the seal context, then this record's line up to (not including)
    /// `,"seal":` (every field but `seal` and `sig`; `epoch` included).
    public func sealedMessage() -> [UInt8] {
        var unsealed = self.log!
        unsealed.signature = nil
        unsealed.seal = nil
        let line = AuditRecord(seq: seq, prev: prev, timestamp: timestamp, event: event, log: unsealed).encode()
        return Array(line.dropLast())
    }

    /// BLAKE2b-256 of line bytes: the next record's `prev`.
    public static func chainHash(_ line: some Collection<UInt8>) -> AuditDigest {
        AuditDigest(BLAKE2b.hash(Array(line), outputLength: 32))
    }

    /// Parses one line (without newline). Only the canonical encoding is accepted: the record
    /// is re-encoded and must give back the same bytes.
    public static func decode(_ line: ArraySlice<UInt8>) throws(AuditError) -> AuditRecord {
        let fields = try FlatJSON.parse(line)
        var d = FieldReader(fields)
        let v = try d.uint("v", required: true)!
        guard v == schemaVersion else { throw AuditError(.unsupportedVersion, "schema version \(v), this build reads \(schemaVersion)") }
        let seq = try d.uint("seq", required: true)!
        let prev = try d.digest("prev", required: true, length: 32)!
        guard let ts = AuditTimestamp(recordText: try d.string("ts", required: true)!) else { throw .malformed("bad ts") }
        guard let kind = AuditEventKind(rawValue: try d.string("event", required: true)!) else { throw .malformed("unknown event") }
        let outcomeText = try d.string("outcome", required: true)!
        var e = AuditEvent(kind)
        if let r = try d.string("reason") {
            guard let reason = AuditReason(rawValue: r) else { throw .malformed("bad reason code") }
            e.reason = reason
        }
        if let a = try d.string("attempt") {
            guard let id = AuditAttemptID(hex: a) else { throw .malformed("bad attempt") }
            e.attempt = id
        }
        if let r = try d.string("role") {
            guard let role = AuditRole(rawValue: r) else { throw .malformed("bad role") }
            e.role = role
        }
        e.local = try d.peer("local")
        e.expectedPeer = try d.peer("expected")
        e.provedPeer = try d.peer("proved")
        e.from = try d.peer("from")
        e.to = try d.peer("to")
        e.introServer = try d.peer("server")
        let pid = try d.int("pid"), uid = try d.uint("uid"), gid = try d.uint("gid")
        if pid != nil || uid != nil || gid != nil {
            guard let pid, let uid, let gid, let p = Int32(exactly: pid), let u = UInt32(exactly: uid), let g = UInt32(exactly: gid)
            else { throw .malformed("pid/uid/gid must appear together and fit 32 bits") }
            e.credentials = AuditPeerCredentials(pid: p, uid: u, gid: g)
        }
        let ipid = try d.int("incumbent_pid"), iuid = try d.uint("incumbent_uid"), igid = try d.uint("incumbent_gid")
        if ipid != nil || iuid != nil || igid != nil {
            guard let ipid, let iuid, let igid, let p = Int32(exactly: ipid), let u = UInt32(exactly: iuid),
                  let g = UInt32(exactly: igid)
            else { throw .malformed("incumbent_pid/uid/gid must appear together and fit 32 bits") }
            e.incumbentCredentials = AuditPeerCredentials(pid: p, uid: u, gid: g)
        }
        e.claimedFrom = try d.peer("claimed_from")
        e.authenticated = try d.bool("authenticated")
        e.transcriptHash = try d.digest("transcript")
        e.sessionID = try d.digest("session")
        if let ver = try d.uint("version") {
            guard let v32 = UInt32(exactly: ver) else { throw .malformed("version out of range") }
            e.protocolVersion = v32
        }
        e.durationMicros = try d.uint("duration_us")
        e.clean = try d.bool("clean")
        let bs = try d.uint("bytes_sent"), br = try d.uint("bytes_received")
        let ms = try d.uint("messages_sent"), mr = try d.uint("messages_received")
        if bs != nil || br != nil || ms != nil || mr != nil {
            guard let bs, let br, let ms, let mr else { throw .malformed("traffic counts must appear together") }
            e.traffic = AuditTraffic(bytesSent: bs, bytesReceived: br, messagesSent: ms, messagesReceived: mr)
        }
        if let p = try d.string("path") {
            guard let path = AuditPath(p) else { throw .malformed("bad path") }
            e.path = path
        }
        if let k = try d.string("descriptors") {
            guard let kinds = AuditDescriptorKinds(field: k) else { throw .malformed("bad descriptors") }
            e.descriptorKinds = kinds
        }
        var meta: AuditLogMeta?
        if kind.isLogBookkeeping {
            var m = AuditLogMeta()
            let writerFP = try d.string("writer")
            if let key = try d.string("writer_key") {
                do { m.writer = try PublicIdentity(designator: key) } catch { throw .malformed("bad writer_key") }
            }
            guard writerFP == m.writer?.fingerprint else { throw .malformed("writer does not match writer_key") }
            m.signed = try d.bool("signed")
            if let c = try d.string("cause") {
                guard let cause = AuditLogCause(rawValue: c) else { throw .malformed("bad cause") }
                m.cause = cause
            }
            m.tornBytes = try d.uint("torn_bytes")
            m.tornHash = try d.digest("torn_hash")
            if let p = try d.string("moved") {
                guard let path = AuditPath(p) else { throw .malformed("bad moved") }
                m.moved = path
            }
            m.movedHash = try d.digest("moved_hash", length: 32)
            if let f = try d.string("failure") {
                guard let text = AuditPath(f) else { throw .malformed("bad failure") }
                m.failure = text
            }
            m.sealID = try d.digest("seal_id", length: 16)
            if let key = try d.string("next_writer") {
                do { m.nextWriter = try PublicIdentity(designator: key) } catch { throw .malformed("bad next_writer") }
            }
            m.epoch = try d.uint("epoch")
            m.seal = try d.digest("seal", length: 32)
            if let s = try d.string("sig") {
                guard let sig = Hex.decode(s), sig.count == Ed25519.signatureLength else { throw .malformed("bad sig") }
                m.signature = sig
            }
            try Self.checkShape(kind: kind, meta: m)
            meta = m
        }
        if let unknown = d.remaining.first { throw .malformed("unknown field \"\(unknown)\"") }
        guard outcomeText == e.outcome.rawValue else { throw .malformed("outcome does not match event") }
        if let why = e.invariantViolation { throw .malformed(why) }
        let record = AuditRecord(seq: seq, prev: prev, timestamp: ts, event: e, log: meta)
        guard record.encode()[...] == line else { throw .malformed("not the canonical encoding (field order, spacing or escapes)") }
        return record
    }

    private static func checkShape(kind: AuditEventKind, meta m: AuditLogMeta) throws(AuditError) {
        switch kind {
        case .logOpened:
            guard m.writer != nil, m.signed != nil, let c = m.cause, c != .shutdown, c != .handover, m.signature == nil,
                  m.epoch == nil, m.seal == nil, m.nextWriter == nil
            else { throw .malformed("log.opened needs writer, signed, cause and no sig or seal") }
            guard (m.tornBytes == nil) == (m.tornHash == nil) else { throw .malformed("torn_bytes and torn_hash go together") }
            guard (m.moved == nil || m.movedHash != nil), (c == .tampered) == (m.failure != nil),
                  c == .tampered || (m.moved == nil && m.movedHash == nil)
            else { throw .malformed("moved, moved_hash and failure belong on a tampered log.opened") }
        case .logCheckpoint:
            guard m.writer == nil, m.signed == nil, m.cause == nil, m.tornBytes == nil, m.tornHash == nil, m.signature != nil,
                  m.moved == nil, m.movedHash == nil, m.failure == nil, m.sealID == nil, m.nextWriter == nil,
                  (m.epoch == nil) == (m.seal == nil)
            else { throw .malformed("log.checkpoint carries sig and an optional epoch and seal") }
        case .logClosed:
            guard m.writer == nil, m.signed == nil, m.cause == .rotation || m.cause == .shutdown || m.cause == .handover,
                  m.tornBytes == nil, m.tornHash == nil, m.moved == nil, m.movedHash == nil, m.failure == nil, m.sealID == nil,
                  (m.cause == .handover) == (m.nextWriter != nil), m.cause != .handover || m.signature != nil,
                  (m.epoch == nil) == (m.seal == nil)
            else { throw .malformed("log.closed carries cause, an optional seal and sig (a hand-over: next_writer and sig)") }
        case .identityLoaded, .serverStarted, .serverStopped, .registrationAccepted, .registrationRefused,
             .introductionRequested, .introductionForwarded, .introductionQueued, .introductionExpired,
             .introductionRefused, .handshakeStarted, .handshakeSucceeded, .handshakeFailed, .channelClosed,
             .legacyPeerRefused, .legacyPeerAdmitted, .descriptorsClosed:
            preconditionFailure("only log.* records carry log metadata")
        }
    }
}

/// Takes typed fields out of a parsed object, leaving the unknown ones in `remaining`.
private struct FieldReader {
    private var fields: [String: FlatJSONValue]

    init(_ list: [(String, FlatJSONValue)]) {
        fields = Dictionary(list, uniquingKeysWith: { a, _ in a })
    }

    var remaining: Dictionary<String, FlatJSONValue>.Keys { fields.keys }

    private mutating func take(_ k: String, _ required: Bool) throws(AuditError) -> FlatJSONValue? {
        guard let v = fields.removeValue(forKey: k) else {
            if required { throw .malformed("missing field \"\(k)\"") }
            return nil
        }
        return v
    }

    mutating func string(_ k: String, required: Bool = false) throws(AuditError) -> String? {
        guard let v = try take(k, required) else { return nil }
        guard case .string(let s) = v else { throw .malformed("field \"\(k)\" must be a string") }
        return s
    }

    mutating func uint(_ k: String, required: Bool = false) throws(AuditError) -> UInt64? {
        guard let v = try take(k, required) else { return nil }
        guard case .number(false, let m) = v else { throw .malformed("field \"\(k)\" must be a non-negative integer") }
        return m
    }

    mutating func int(_ k: String) throws(AuditError) -> Int64? {
        guard let v = try take(k, false) else { return nil }
        guard case .number(let neg, let m) = v else { throw .malformed("field \"\(k)\" must be an integer") }
        if neg {
            guard m != 0, m <= UInt64(Int64.max) + 1 else { throw .malformed("field \"\(k)\" out of range") }
            return m == UInt64(Int64.max) + 1 ? Int64.min : -Int64(m)
        }
        guard let x = Int64(exactly: m) else { throw .malformed("field \"\(k)\" out of range") }
        return x
    }

    mutating func bool(_ k: String) throws(AuditError) -> Bool? {
        guard let v = try take(k, false) else { return nil }
        guard case .bool(let b) = v else { throw .malformed("field \"\(k)\" must be a boolean") }
        return b
    }

    mutating func peer(_ k: String) throws(AuditError) -> AuditPeerID? {
        guard let s = try string(k) else { return nil }
        guard let p = AuditPeerID(fingerprint: s) else { throw .malformed("field \"\(k)\" is not a fingerprint") }
        return p
    }

    mutating func digest(_ k: String, required: Bool = false, length: Int? = nil) throws(AuditError) -> AuditDigest? {
        guard let s = try string(k, required: required) else { return nil }
        guard let d = AuditDigest(hex: s), length.map({ d.bytes.count == $0 }) ?? true else {
            throw .malformed("field \"\(k)\" is not a hex digest of the right length")
        }
        return d
    }
}
