import Identity
import SodiumCrypto

/// One problem or observation from verification, at a file and line.
public struct AuditFinding: Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable {
        // Breaks: the log is not what the writer wrote.
        /// A line is not a canonical schema-v1 record.
        case malformedRecord
        /// `seq` is not the previous record's seq + 1: records removed, inserted or reordered.
        case seqGap
        /// `prev` is not the hash of the previous line: it was edited, or lines were swapped or inserted.
        case brokenLink
        /// A checkpoint or closing signature does not verify under the writer's key.
        case badSignature
        /// A signed log has a checkpoint or closing record without a signature.
        case missingSignature
        /// A file does not begin with log.opened (its head was cut off), or the first record of
        /// a chain is not a genesis record.
        case badFileStart
        /// A record follows log.closed without a log.opened first.
        case recordAfterClose
        /// A log.opened names a writer other than the pinned one.
        case unexpectedWriter
        /// A log.opened names a new writer without a hand-over signed by the previous one.
        case writerChangeWithoutHandover
        /// A torn (newline-less) line anywhere but the end of the last file.
        case tornLineInside
        /// A line exceeds the reader's limit.
        case lineTooLong
        /// A run names a sealing key other than the verification key given.
        case sealKeyMismatch
        /// A checkpoint of a sealed run has no seal.
        case missingSeal
        /// A seal does not verify under its epoch's key.
        case badSeal
        /// A seal names an earlier epoch than the seal before it.
        case epochOutOfOrder
        /// A record is covered only by a seal of another epoch than its own: the seals of its
        /// epoch were dropped and the records re-sealed with a later key (CVE-2023-31439).
        case recordOutsideEpoch
        /// A timestamp goes backwards in a sealed log (writers clamp their clock).
        case timeWentBack
        /// The log differs from a checkpoint hash the witness recorded.
        case witnessMismatch
        /// The log ends before a checkpoint the witness recorded: it was cut.
        case cutBehindWitness
        // Its own status (exit 7): a run without signatures (or seals, with a verification key).
        /// Records no signature (or seal) of the expected writer can cover.
        case unsignedRun
        // Tail states: distinct from a broken chain.
        /// The last line of the last file has no newline: a write interrupted by a crash.
        case tornTail
        /// A signed log ends without a signed log.closed: the writer is live, crashed, or the
        /// tail was cut off.
        case unsealedTail
        // Notes: worth knowing, not failures.
        /// The chain starts after seq 1: older files were not given (or were deleted by rotation).
        case earlierFilesMissing
        /// A writer restarted without closing the log (crash), possibly cutting a torn tail.
        case restartAfterCrash
        /// The log has no signed checkpoints: a cut tail cannot be detected.
        case unsignedLog
        /// Signatures verify under the key the log names itself; nothing outside pinned it.
        case writerNotPinned
        /// The writer refused to extend a file that failed verification and moved it aside.
        case fileMovedAside
        /// A signed hand-over to another writer.
        case handover
        /// Seals are present but were not checked (no verification key given).
        case sealsNotChecked
        /// Witness entries before the first record given (older files not given).
        case witnessBeforeLog
    }

    public let code: Code
    public let location: AuditLocation
    public let message: String

    public var isBreak: Bool {
        switch code {
        case .malformedRecord, .seqGap, .brokenLink, .badSignature, .missingSignature, .badFileStart,
             .recordAfterClose, .unexpectedWriter, .writerChangeWithoutHandover, .tornLineInside, .lineTooLong,
             .sealKeyMismatch, .missingSeal, .badSeal, .epochOutOfOrder, .recordOutsideEpoch, .timeWentBack,
             .witnessMismatch, .cutBehindWitness:
            return true
        case .unsignedRun, .tornTail, .unsealedTail, .earlierFilesMissing, .restartAfterCrash, .unsignedLog,
             .writerNotPinned, .fileMovedAside, .handover, .sealsNotChecked, .witnessBeforeLog:
            return false
        }
    }

    public var description: String { "\(location): \(code.rawValue): \(message)" }
}

/// The last checkpoint that covers every record before it (signed, and sealed when checked).
public struct AuditSealedPoint: Sendable, Hashable {
    public let seq: UInt64
    public let location: AuditLocation
    public let timestamp: AuditTimestamp
    /// The sealing epoch, when its seal was checked with the verification key.
    public let epoch: UInt64?
    /// BLAKE2b-256 of the checkpoint's line (what a witness records).
    public let hash: AuditDigest
}

/// The verdict of `AuditVerifier`; `exitCode` is what `ocapn-uds audit --verify` returns.
public struct AuditVerifyReport: Sendable {
    public enum Status: String, Sendable {
        /// Every link and signature checks, and the log is sealed (or unsigned and complete).
        case intact
        /// The chain is broken: see `firstBreak`.
        case broken
        /// Intact up to a torn last line (a crash during a write).
        case tornTail
        /// Intact, but a signed log ends without its signed closing record.
        case unsealed
        /// Intact as a chain, but records are not covered by the expected writer's signature
        /// (or seal): an unsigned log or an unsigned run inside a signed one.
        case unsigned

        var rank: Int {
            switch self {
            case .intact: return 0
            case .unsealed: return 1
            case .tornTail: return 2
            case .unsigned: return 3
            case .broken: return 4
            }
        }
    }

    public var status: Status
    /// The first break, when `status == .broken`. Verification stops there: after a break
    /// nothing later can be trusted.
    public var firstBreak: AuditFinding?
    /// Everything found, in order (the break, tail states and notes).
    public var findings: [AuditFinding]
    public var files: [String]
    public var records: Int
    public var signaturesVerified: Int
    public var firstSeq: UInt64?
    public var lastSeq: UInt64?
    /// Writers named by log.opened records, in order of first appearance.
    public var writers: [PublicIdentity]
    /// Seals checked with the verification key.
    public var sealsVerified = 0
    /// Key chain id of the last sealed run, if any.
    public var sealID: AuditDigest?
    /// Whether the writer was pinned (`--writer`) or the seals checked (`--verify-key`).
    public var pinned = false
    public var lastSealed: AuditSealedPoint?
    /// Records after `lastSealed` (all records, when nothing is sealed).
    public var recordsAfterSeal = 0
    /// The writer entitled to continue the log: the last run's writer, or whom it handed over to.
    public var currentWriter: PublicIdentity?
    /// Witness entries matched against the log.
    public var witnessMatched = 0

    /// 0 intact, 4 broken, 5 torn last line only, 6 unsealed tail only, 7 unsigned (the CLI's
    /// shared table uses 1–3 for I/O, usage and refused input; 4 is "verification failed").
    public var exitCode: Int32 {
        switch status {
        case .intact: return 0
        case .broken: return 4
        case .tornTail: return 5
        case .unsealed: return 6
        case .unsigned: return 7
        }
    }
}

/// What verification trusts from outside the files.
public struct AuditVerifyOptions: Sendable {
    /// The writer that opened the oldest file given (later writers only through signed hand-overs).
    public var expectedWriter: PublicIdentity?
    /// The operator's key: every checkpoint's seal is checked against its own epoch's key.
    public var verificationKey: AuditVerificationKey?
    /// Accept unsigned logs and unsigned runs (reported as notes, exit 0).
    public var allowUnsigned: Bool
    /// Checkpoint hashes recorded outside the host; a rewrite or a cut behind one is a break.
    public var witness: [AuditWitnessEntry]

    public init(expectedWriter: PublicIdentity? = nil, verificationKey: AuditVerificationKey? = nil,
                allowUnsigned: Bool = false, witness: [AuditWitnessEntry] = []) {
        self.expectedWriter = expectedWriter
        self.verificationKey = verificationKey
        self.allowUnsigned = allowUnsigned
        self.witness = witness
    }
}

/// Sans-IO chain verification: feed files' lines in chain order, then `finish`.
public struct AuditVerifier {
    private let options: AuditVerifyOptions
    private var report = AuditVerifyReport(status: .intact, firstBreak: nil, findings: [], files: [], records: 0,
                                           signaturesVerified: 0, firstSeq: nil, lastSeq: nil, writers: [])
    private var last: (seq: UInt64, hash: AuditDigest, kind: AuditEventKind, location: AuditLocation, time: AuditTimestamp)?
    private var writer: PublicIdentity?
    /// Who may open the next run: the pinned or first writer, then whom a hand-over names.
    private var entitled: PublicIdentity?
    private var handedOver = false
    private var signed = false
    private var sealedRun = false
    private var lastClosedCause: AuditLogCause?
    private var currentFile = ""
    private var firstInFile = true
    private var pendingTorn: AuditLocation?
    private var uncovered = 0
    private var uncoveredEpochs: ClosedRange<UInt64>?
    private var lastSealEpoch: UInt64?
    private var epochKey: (epoch: UInt64, key: SecretBytes)?
    private var witness: [UInt64: AuditDigest]
    private var unsignedReported = false
    private var sealedButUnchecked = 0

    public init(options: AuditVerifyOptions = .init()) {
        self.options = options
        entitled = options.expectedWriter
        witness = Dictionary(options.witness.map { ($0.seq, $0.hash) }, uniquingKeysWith: { a, _ in a })
        report.pinned = options.expectedWriter != nil || options.verificationKey != nil
    }

    public init(expectedWriter: PublicIdentity?) { self.init(options: AuditVerifyOptions(expectedWriter: expectedWriter)) }

    /// Whether verification already found a break (later input is ignored).
    public var isBroken: Bool { report.firstBreak != nil }

    public mutating func beginFile(_ name: String) {
        guard !isBroken else { return }
        if let torn = pendingTorn {
            fail(.tornLineInside, torn, "a torn (unterminated) line is followed by another file")
            return
        }
        report.files.append(name)
        currentFile = name
        firstInFile = true
    }

    private mutating func raise(_ status: AuditVerifyReport.Status) {
        if status.rank > report.status.rank { report.status = status }
    }

    private mutating func fail(_ code: AuditFinding.Code, _ loc: AuditLocation, _ message: String) {
        let f = AuditFinding(code: code, location: loc, message: message)
        report.findings.append(f)
        report.firstBreak = f
        report.status = .broken
    }

    private mutating func note(_ code: AuditFinding.Code, _ loc: AuditLocation, _ message: String) {
        report.findings.append(AuditFinding(code: code, location: loc, message: message))
    }

    private mutating func unsignedRun(_ loc: AuditLocation, _ message: String) {
        guard !options.allowUnsigned else { return }
        note(.unsignedRun, loc, message + " (--allow-unsigned accepts it)")
        raise(.unsigned)
    }

    /// The key of `epoch`, derived forward from k[0] (or from the last key derived).
    private mutating func key(of epoch: UInt64, _ vkey: AuditVerificationKey) -> SecretBytes {
        if let cached = epochKey, cached.epoch <= epoch {
            let k = AuditSealing.evolve(cached.key, from: cached.epoch, to: epoch)
            epochKey = (epoch, k)
            return k
        }
        let k0 = vkey.k0.withUnsafeBytes { SecretBytes(copying: $0) }
        let k = AuditSealing.evolve(k0, from: 0, to: epoch)
        epochKey = (epoch, k)
        return k
    }

    /// Feeds one raw line of the current file.
    public mutating func line(_ raw: AuditRawLine) {
        guard !isBroken else { return }
        let loc = AuditLocation(file: currentFile, line: raw.number)
        if let torn = pendingTorn {
            fail(.tornLineInside, torn, "a torn (unterminated) line is followed by more data")
            return
        }
        guard raw.complete else {
            pendingTorn = loc
            return
        }
        let record: AuditRecord
        do { record = try AuditRecord.decode(raw.bytes[...]) } catch {
            fail(.malformedRecord, loc, "not a valid record (\(error.detail))")
            return
        }
        let kind = record.event.kind
        let hash = AuditRecord.chainHash(raw.bytes)
        let restartAfterTamper = kind == .logOpened && record.log?.cause == .tampered && firstInFile
        if firstInFile {
            firstInFile = false
            guard kind == .logOpened else {
                fail(.badFileStart, loc, "the file does not begin with log.opened: its head was cut off or it was spliced")
                return
            }
        }
        if let last, !restartAfterTamper {
            guard record.seq == last.seq &+ 1 else {
                let what = record.seq > last.seq ? "\(record.seq - last.seq - 1) record(s) missing" : "records reordered or inserted"
                fail(.seqGap, loc, "seq \(record.seq) follows seq \(last.seq) at \(last.location): \(what)")
                return
            }
            guard record.prev == last.hash else {
                fail(.brokenLink, loc, "prev is not the hash of \(last.location): that line was altered, or lines were swapped or inserted here")
                return
            }
            if last.kind == .logClosed && kind != .logOpened {
                fail(.recordAfterClose, loc, "a \(kind.rawValue) record follows log.closed at \(last.location)")
                return
            }
        } else if last == nil {
            report.firstSeq = record.seq
            if record.seq == 1 {
                guard record.prev == AuditRecord.genesis else {
                    fail(.badFileStart, loc, "seq 1 must have the all-zero prev")
                    return
                }
            } else if !restartAfterTamper {
                note(.earlierFilesMissing, loc, "the chain starts at seq \(record.seq); earlier files were not given")
            }
            if let w = witness.keys.min(), w < record.seq {
                if w == record.seq - 1, witness[w] != record.prev {
                    fail(.witnessMismatch, loc, "the witness recorded seq \(w) with another hash than this record's prev")
                    return
                }
                let before = witness.keys.filter { $0 < record.seq }
                note(.witnessBeforeLog, loc, "\(before.count) witness entr\(before.count == 1 ? "y" : "ies") before seq \(record.seq) not checked (older files not given)")
                for k in before { witness[k] = nil }
            }
        }
        if let want = witness.removeValue(forKey: record.seq) {
            guard want == hash else {
                fail(.witnessMismatch, loc, "seq \(record.seq) differs from the checkpoint the witness recorded: the log was rewritten")
                return
            }
            report.witnessMatched += 1
        }
        if options.verificationKey != nil, sealedRun, let last, record.timestamp < last.time {
            fail(.timeWentBack, loc, "timestamp earlier than the record before it at \(last.location)")
            return
        }
        if kind == .logOpened, let meta = record.log, let w = meta.writer {
            guard openRun(meta, writer: w, loc: loc, restartAfterTamper: restartAfterTamper) else { return }
        }
        var covers = false
        if kind == .logCheckpoint || kind == .logClosed {
            guard let c = checkSeal(record, loc: loc) else { return }
            covers = c
        }
        if covers {
            uncovered = 0
            uncoveredEpochs = nil
            report.lastSealed = AuditSealedPoint(seq: record.seq, location: loc, timestamp: record.timestamp,
                                                 epoch: sealedRun && options.verificationKey != nil ? record.log?.epoch : nil, hash: hash)
        } else {
            uncovered += 1
            if let vkey = options.verificationKey, sealedRun {
                let e = AuditSealing.epoch(of: record.timestamp, startMicros: vkey.startMicros, intervalMicros: vkey.intervalMicros)
                uncoveredEpochs = uncoveredEpochs.map { min($0.lowerBound, e)...max($0.upperBound, e) } ?? e...e
            }
        }
        if kind == .logClosed { lastClosedCause = record.log?.cause }
        report.records += 1
        report.lastSeq = record.seq
        last = (record.seq, hash, kind, loc, record.timestamp)
    }

    /// A new run: who may write it, whether it is signed and sealed.
    private mutating func openRun(_ meta: AuditLogMeta, writer w: PublicIdentity, loc: AuditLocation, restartAfterTamper: Bool) -> Bool {
        if let expected = entitled, w != expected {
            if handedOver {
                fail(.writerChangeWithoutHandover, loc, "log.opened names writer \(w.fingerprint), but the log was handed over to \(expected.fingerprint)")
            } else if options.expectedWriter != nil && report.writers.isEmpty {
                fail(.unexpectedWriter, loc, "log.opened names writer \(w.fingerprint), expected \(expected.fingerprint)")
            } else {
                fail(.writerChangeWithoutHandover, loc,
                     "log.opened names writer \(w.fingerprint) after \(expected.fingerprint) without a hand-over signed by \(expected.fingerprint)")
            }
            return false
        }
        entitled = w
        handedOver = false
        if let last, last.kind != .logClosed {
            let torn = meta.tornBytes.map { ", cutting a torn tail of \($0) bytes" } ?? ""
            note(.restartAfterCrash, loc, "writer restarted without closing the log\(torn)")
        }
        if restartAfterTamper {
            let moved = meta.moved.map { "\($0.value) (BLAKE2b-256 \(meta.movedHash?.hex ?? "-"))" } ?? "a missing file"
            note(.fileMovedAside, loc, "the writer refused to extend \(moved): \(meta.failure?.value ?? "-"); the chain restarts here")
        }
        if !report.writers.contains(w) { report.writers.append(w) }
        writer = w
        signed = meta.signed ?? false
        sealedRun = meta.sealID != nil
        if let id = meta.sealID { report.sealID = id }
        if !signed { unsignedRun(loc, "a run of writer \(w.fingerprint) without signed checkpoints starts here") }
        if let vkey = options.verificationKey {
            if let id = meta.sealID, id != vkey.id {
                fail(.sealKeyMismatch, loc, "this run is sealed with key id \(id.hex), the verification key given is \(vkey.id.hex)")
                return false
            }
            if meta.sealID == nil, signed { unsignedRun(loc, "a run without forward-secure seals starts here") }
        }
        return true
    }

    /// Checks a checkpoint's signature and seal. nil: a break was recorded; else whether it
    /// covers the records before it.
    private mutating func checkSeal(_ record: AuditRecord, loc: AuditLocation) -> Bool? {
        let kind = record.event.kind
        guard let meta = record.log else { return false }
        guard let sig = meta.signature else {
            if signed {
                fail(.missingSignature, loc, "\(kind.rawValue) in a signed log has no signature")
                return nil
            }
            return false
        }
        guard let writer, writer.verify(signature: sig, message: record.signedMessage()) else {
            fail(.badSignature, loc, "the \(kind.rawValue) signature does not verify under the writer's key")
            return nil
        }
        report.signaturesVerified += 1
        if let vkey = options.verificationKey, sealedRun {
            guard let epoch = meta.epoch, let seal = meta.seal else {
                fail(.missingSeal, loc, "\(kind.rawValue) in a sealed run has no seal")
                return nil
            }
            if let prior = lastSealEpoch, epoch < prior {
                fail(.epochOutOfOrder, loc, "seal of epoch \(epoch) follows a seal of epoch \(prior)")
                return nil
            }
            let ownEpoch = AuditSealing.epoch(of: record.timestamp, startMicros: vkey.startMicros, intervalMicros: vkey.intervalMicros)
            guard ownEpoch >= epoch else {
                fail(.recordOutsideEpoch, loc, "a seal of epoch \(epoch) written at a time of epoch \(ownEpoch)")
                return nil
            }
            if let r = uncoveredEpochs, r.lowerBound != epoch || r.upperBound != epoch {
                fail(.recordOutsideEpoch, loc,
                     "records of epoch(s) \(r.lowerBound)...\(r.upperBound) are sealed only by this seal of epoch \(epoch): their own epoch's seals were dropped and they were re-sealed")
                return nil
            }
            guard AuditSealing.mac(key: key(of: epoch, vkey), message: record.sealedMessage()) == seal else {
                fail(.badSeal, loc, "the seal does not verify under the key of epoch \(epoch)")
                return nil
            }
            lastSealEpoch = epoch
            report.sealsVerified += 1
        } else if meta.seal != nil {
            sealedButUnchecked += 1
        }
        if kind == .logClosed, meta.cause == .handover, let next = meta.nextWriter {
            entitled = next
            handedOver = true
            note(.handover, loc, "writer \(writer.fingerprint) hands the log over to \(next.fingerprint)")
        }
        return true
    }

    /// Reports a reader error (line too long, unreadable file) at a location.
    public mutating func readError(_ error: AuditError, at loc: AuditLocation) {
        guard !isBroken else { return }
        fail(error.code == .recordTooLarge ? .lineTooLong : .malformedRecord, loc, error.detail)
    }

    public mutating func finish() -> AuditVerifyReport {
        guard !isBroken else { return report }
        report.recordsAfterSeal = uncovered
        report.currentWriter = entitled
        guard let last else {
            let loc = AuditLocation(file: report.files.last ?? "", line: 0)
            fail(.badFileStart, loc, pendingTorn == nil ? "no records" : "no complete record")
            return report
        }
        if let (seq, _) = witness.min(by: { $0.key < $1.key }) {
            let n = witness.count
            fail(.cutBehindWitness, last.location,
                 "the log ends at seq \(last.seq), but the witness recorded a checkpoint at seq \(seq)\(n > 1 ? " and \(n - 1) more" : ""): the log was cut")
            return report
        }
        if let torn = pendingTorn {
            note(.tornTail, torn, "the last line has no newline: a write was interrupted (crash); the chain before it is intact")
            raise(.tornTail)
        }
        let sealedAt = report.lastSealed.map { "last sealed point seq \($0.seq) at \($0.location) (\($0.timestamp.rfc3339))" }
            ?? "nothing sealed"
        if last.kind == .logClosed && lastClosedCause == .rotation {
            // A rotation close promises a next file; without it the live file was removed or emptied.
            note(.unsealedTail, last.location, "the log ends with a rotation close at seq \(last.seq): the next file is missing or empty")
            raise(.unsealed)
        } else if signed {
            if last.kind != .logClosed || uncovered > 0 {
                note(.unsealedTail, last.location,
                     "the log ends at seq \(last.seq) without a signed log.closed; \(sealedAt), \(uncovered) record(s) after it: the writer is running, crashed, or the tail was cut off")
                raise(.unsealed)
            }
        } else {
            note(.unsignedLog, last.location, "no signed checkpoints at the end: a cut tail cannot be detected")
        }
        if !report.pinned, report.signaturesVerified > 0, let w = report.writers.first {
            note(.writerNotPinned, last.location,
                 "signatures verify under the key the log names itself (\(w.fingerprint)); nothing pinned it: pass --writer or --verify-key")
        }
        if sealedButUnchecked > 0 {
            note(.sealsNotChecked, last.location, "\(sealedButUnchecked) forward-secure seal(s) not checked: pass --verify-key")
        }
        return report
    }

    /// Verifies `paths` (any order; sorted by chain position) as one chain.
    public static func verify(paths: [String], options: AuditVerifyOptions,
                              maxLineBytes: Int = AuditLineReader.defaultMaxLineBytes) -> AuditVerifyReport {
        var v = AuditVerifier(options: options)
        for p in AuditLog.chainOrder(paths) {
            v.beginFile(p)
            var lineNo = 0
            do {
                let r = try AuditLineReader(path: p, maxLineBytes: maxLineBytes)
                while let raw = try r.next(), !v.isBroken {
                    lineNo = raw.number
                    v.line(raw)
                }
            } catch {
                v.readError(error, at: AuditLocation(file: p, line: lineNo + 1))
            }
            if v.isBroken { break }
        }
        return v.finish()
    }

    /// Verifies with only a pinned writer (or none); unsigned runs fail unless `allowUnsigned`.
    public static func verify(paths: [String], expectedWriter: PublicIdentity? = nil, allowUnsigned: Bool = false,
                              maxLineBytes: Int = AuditLineReader.defaultMaxLineBytes) -> AuditVerifyReport {
        verify(paths: paths, options: AuditVerifyOptions(expectedWriter: expectedWriter, allowUnsigned: allowUnsigned),
               maxLineBytes: maxLineBytes)
    }
}
