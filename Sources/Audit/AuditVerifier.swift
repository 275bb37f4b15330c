import Identity

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
        /// A log.opened names a writer other than the expected one.
        case unexpectedWriter
        /// A torn (newline-less) line anywhere but the end of the last file.
        case tornLineInside
        /// A line exceeds the reader's limit.
        case lineTooLong
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
    }

    public let code: Code
    public let location: AuditLocation
    public let message: String

    public var isBreak: Bool {
        switch code {
        case .malformedRecord, .seqGap, .brokenLink, .badSignature, .missingSignature, .badFileStart,
             .recordAfterClose, .unexpectedWriter, .tornLineInside, .lineTooLong:
            return true
        case .tornTail, .unsealedTail, .earlierFilesMissing, .restartAfterCrash, .unsignedLog:
            return false
        }
    }

    public var description: String { "\(location): \(code.rawValue): \(message)" }
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

    /// 0 intact, 4 broken, 5 torn last line only, 6 unsealed tail only (the CLI's shared table
    /// uses 1–3 for I/O, usage and refused input; 4 is "verification failed").
    public var exitCode: Int32 {
        switch status {
        case .intact: return 0
        case .broken: return 4
        case .tornTail: return 5
        case .unsealed: return 6
        }
    }
}

/// Sans-IO chain verification: feed files' lines in chain order, then `finish`.
public struct AuditVerifier {
    private let expectedWriter: PublicIdentity?
    private var report = AuditVerifyReport(status: .intact, firstBreak: nil, findings: [], files: [], records: 0,
                                           signaturesVerified: 0, firstSeq: nil, lastSeq: nil, writers: [])
    private var last: (seq: UInt64, hash: AuditDigest, kind: AuditEventKind, location: AuditLocation)?
    private var writer: PublicIdentity?
    private var signed = false
    private var lastCheckpoint: AuditLocation?
    private var lastClosedCause: AuditLogCause?
    private var currentFile = ""
    private var firstInFile = true
    private var pendingTorn: AuditLocation?

    public init(expectedWriter: PublicIdentity? = nil) { self.expectedWriter = expectedWriter }

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

    private mutating func fail(_ code: AuditFinding.Code, _ loc: AuditLocation, _ message: String) {
        let f = AuditFinding(code: code, location: loc, message: message)
        report.findings.append(f)
        report.firstBreak = f
        report.status = .broken
    }

    private mutating func note(_ code: AuditFinding.Code, _ loc: AuditLocation, _ message: String) {
        report.findings.append(AuditFinding(code: code, location: loc, message: message))
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
        if firstInFile {
            firstInFile = false
            guard kind == .logOpened else {
                fail(.badFileStart, loc, "the file does not begin with log.opened: its head was cut off or it was spliced")
                return
            }
        }
        if let last {
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
        } else {
            report.firstSeq = record.seq
            if record.seq == 1 {
                guard record.prev == AuditRecord.genesis else {
                    fail(.badFileStart, loc, "seq 1 must have the all-zero prev")
                    return
                }
            } else {
                note(.earlierFilesMissing, loc, "the chain starts at seq \(record.seq); earlier files were not given")
            }
        }
        if kind == .logOpened, let meta = record.log, let w = meta.writer {
            if let expectedWriter, w != expectedWriter {
                fail(.unexpectedWriter, loc, "log.opened names writer \(w.fingerprint), expected \(expectedWriter.fingerprint)")
                return
            }
            if let last, last.kind != .logClosed {
                let torn = meta.tornBytes.map { ", cutting a torn tail of \($0) bytes" } ?? ""
                note(.restartAfterCrash, loc, "writer restarted without closing the log\(torn)")
            }
            if !report.writers.contains(w) { report.writers.append(w) }
            writer = w
            signed = meta.signed ?? false
        }
        if kind == .logCheckpoint || kind == .logClosed {
            if let sig = record.log?.signature {
                guard let writer, writer.verify(signature: sig, message: record.signedMessage()) else {
                    fail(.badSignature, loc, "the \(kind.rawValue) signature does not verify under the writer's key")
                    return
                }
                report.signaturesVerified += 1
                lastCheckpoint = loc
            } else if signed {
                fail(.missingSignature, loc, "\(kind.rawValue) in a signed log has no signature")
                return
            }
        }
        if kind == .logClosed { lastClosedCause = record.log?.cause }
        report.records += 1
        report.lastSeq = record.seq
        last = (record.seq, AuditRecord.chainHash(raw.bytes), kind, loc)
    }

    /// Reports a reader error (line too long, unreadable file) at a location.
    public mutating func readError(_ error: AuditError, at loc: AuditLocation) {
        guard !isBroken else { return }
        fail(error.code == .recordTooLarge ? .lineTooLong : .malformedRecord, loc, error.detail)
    }

    public mutating func finish() -> AuditVerifyReport {
        guard !isBroken else { return report }
        if let torn = pendingTorn {
            note(.tornTail, torn, "the last line has no newline: a write was interrupted (crash); the chain before it is intact")
            report.status = .tornTail
            return report
        }
        guard let last else {
            let loc = AuditLocation(file: report.files.last ?? "", line: 0)
            fail(.badFileStart, loc, "no records")
            return report
        }
        if last.kind == .logClosed && lastClosedCause == .rotation {
            // A rotation close promises a next file; without it the live file was removed or emptied.
            note(.unsealedTail, last.location, "the log ends with a rotation close at seq \(last.seq): the next file is missing or empty")
            report.status = .unsealed
        } else if signed {
            if last.kind != .logClosed {
                let since = lastCheckpoint.map { " (last signed checkpoint at \($0))" } ?? ""
                note(.unsealedTail, last.location,
                     "the log ends at seq \(last.seq) without a signed log.closed\(since): the writer is running, crashed, or the tail was cut off")
                report.status = .unsealed
            }
        } else {
            note(.unsignedLog, last.location, "no signed checkpoints: a cut tail cannot be detected")
        }
        return report
    }

    /// Verifies `paths` (any order; sorted by chain position) as one chain.
    public static func verify(paths: [String], expectedWriter: PublicIdentity? = nil,
                              maxLineBytes: Int = AuditLineReader.defaultMaxLineBytes) -> AuditVerifyReport {
        var v = AuditVerifier(expectedWriter: expectedWriter)
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
}
