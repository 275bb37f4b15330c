import Audit
@_spi(TestVectors) import Identity
import SodiumCrypto

/// The audit verifier (issue #12 item 7). Shared by `FuzzAuditVerifier` (through the TestSupport product) and the
/// regression tests.
///
/// The input edits one of two genuine logs written by a fixed writer key through `AuditChain`: a
/// closed, signed log (checkpoints every 4 records), and the same events in a forward-secure
/// sealed log (a fixed sealing key whose epoch ends every 3.5 ms of the log's clock, i.e. every
/// one or two records; checkpoints sealed,
/// then signed, the key advanced after each epoch's seal, as `AuditFileSink` does). The first
/// byte picks the form: odd, the rest of the input is a whole file in its own right; even, the
/// rest is a list of edits (flip a byte, delete, duplicate, swap, cut the file short, replace or
/// insert a line of fuzzer bytes, cut a line short) applied to the signed log's lines (bit 1
/// clear) or the sealed log's (bit 1 set).
///
/// Every file is verified four ways: pinned to the writer or not, with the verification key or
/// without. Oracle: never a crash; the verdict is `intact` exactly when the file is a genuine log
/// byte for byte — with the verification key only the sealed one, without it either (seals are
/// then not checked, signatures are) — so no edit, cut or splice goes unreported and no input
/// the fuzzer can build without the keys passes; `broken` exactly when there is a first break; a
/// verdict other than intact comes with a finding; the verifier never counts more records than
/// the file has lines.
public enum AuditVerifierFuzzOracle {
    public static let file = "fuzz.jsonl"

    /// A genuine log's lines (without newlines), its writer and, when sealed, its verification key.
    struct Genuine {
        let lines: [[UInt8]]
        let writer: PublicIdentity
        let verificationKey: AuditVerificationKey?
    }

    static let genuine = makeGenuine(sealed: false)
    static let sealed = makeGenuine(sealed: true)

    static func makeGenuine(sealed: Bool) -> Genuine {
        let pair = try! IdentityKeyPair(vectorSeed: [UInt8](repeating: 0x5a, count: IdentityKeyPair.seedLength))
        let start: Int64 = 1_795_000_000_000_000
        var verificationKey: AuditVerificationKey?
        var sealing: AuditSealingKey?
        if sealed {
            let k0 = [UInt8](repeating: 0x7e, count: AuditSealing.keyLength)
            let key = AuditVerificationKey(k0: SecretBytes(copying: k0), startMicros: start, intervalMicros: 3_500)
            verificationKey = key
            sealing = AuditSealingKey(key: SecretBytes(copying: k0), epoch: 0, startMicros: start,
                                      intervalMicros: key.intervalMicros, id: key.id)
        }
        var chain = AuditChain(writer: pair.publicIdentity, signer: pair, policy: AuditCheckpointPolicy(everyRecords: 4),
                               sealing: sealing)
        var t = start
        var lines: [[UInt8]] = []
        func now() -> AuditTimestamp {
            t += 1000
            let time = AuditTimestamp(microsSinceEpoch: t)
            // As AuditFileSink: the ended epoch's records are sealed with its key, then it advances.
            if let sealing, chain.epochEnded(at: time) {
                let checkpoint = chain.checkpoint(at: time)
                lines.append(checkpoint)
                sealing.advance(to: sealing.epoch(of: time))
            }
            return time
        }
        let local = AuditPeerID(pair.publicIdentity)
        let remote = AuditPeerID(try! IdentityKeyPair(vectorSeed: [UInt8](repeating: 0x33, count: 32)).publicIdentity)
        let opened = now()
        lines.append(chain.opened(cause: .start, at: opened))
        for i in 0..<10 {
            let failed = i % 3 == 0
            let at = now()
            let record = chain.append(AuditEvent(failed ? .handshakeFailed : .handshakeSucceeded, reason: failed ? AuditReason(rawValue: "timeout") : nil,
                                                 attempt: AuditAttemptID(rawValue: UInt64(i)), role: .initiator, local: local,
                                                 expectedPeer: remote, provedPeer: failed ? nil : remote,
                                                 durationMicros: UInt64(100 + i)), at: at)
            lines.append(record)
            let time = now()
            if chain.checkpointDue(at: time) {
                let checkpoint = chain.checkpoint(at: time)
                lines.append(checkpoint)
            }
        }
        let end = now()
        let closed = chain.closed(cause: .shutdown, at: end)
        lines.append(closed)
        return Genuine(lines: lines, writer: pair.publicIdentity, verificationKey: verificationKey)
    }

    public static var genuineFile: [UInt8] { joined(genuine.lines) }
    public static var sealedFile: [UInt8] { joined(sealed.lines) }

    static func joined(_ lines: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        for line in lines { out += line; out.append(0x0a) }
        return out
    }

    public static func violations(_ input: [UInt8]) -> [String] {
        let bytes = file(for: input)
        let lines = split(bytes)
        var out: [String] = []
        let isSigned = bytes == genuineFile, isSealed = bytes == sealedFile
        for pinned in [true, false] {
            for key in [nil, sealed.verificationKey] {
                let options = AuditVerifyOptions(expectedWriter: pinned ? genuine.writer : nil, verificationKey: key)
                var verifier = AuditVerifier(options: options)
                verifier.beginFile(file)
                for line in lines where !verifier.isBroken { verifier.line(line) }
                let report = verifier.finish()
                let how = (pinned ? "pinned" : "unpinned") + (key == nil ? "" : ", with the verification key")
                let isGenuine = key == nil ? isSigned || isSealed : isSealed
                if (report.status == .intact) != isGenuine {
                    out.append("\(how): status \(report.status.rawValue) for a \(isGenuine ? "genuine" : "changed") log")
                }
                if (report.status == .broken) != (report.firstBreak != nil) { out.append("\(how): broken without a first break, or the reverse") }
                if report.status != .intact && report.findings.isEmpty { out.append("\(how): \(report.status.rawValue) without a finding") }
                if report.records > lines.count { out.append("\(how): \(report.records) records counted in \(lines.count) lines") }
            }
        }
        return out
    }

    /// Lines as `AuditLineReader` returns them: split at newlines, a last line without one torn.
    static func split(_ bytes: [UInt8]) -> [AuditRawLine] {
        var out: [AuditRawLine] = []
        var start = 0
        for (i, b) in bytes.enumerated() where b == 0x0a {
            out.append(AuditRawLine(number: out.count + 1, bytes: Array(bytes[start..<i]), complete: true))
            start = i + 1
        }
        if start < bytes.count { out.append(AuditRawLine(number: out.count + 1, bytes: Array(bytes[start...]), complete: false)) }
        return out
    }

    /// The file an input stands for (see the type's comment).
    public static func file(for input: [UInt8]) -> [UInt8] {
        guard let form = input.first else { return genuineFile }
        if form & 1 == 1 { return Array(input.dropFirst()) }
        var lines = form & 2 == 0 ? genuine.lines : sealed.lines
        var cut: Int?
        var i = 1
        func next() -> Int? {
            guard i < input.count else { return nil }
            defer { i += 1 }
            return Int(input[i])
        }
        func raw() -> [UInt8] {
            let n = next() ?? 0
            let end = min(input.count, i + n)
            defer { i = end }
            return input[i..<end].map { $0 == 0x0a ? 0x20 : $0 }
        }
        while let op = next() {
            guard let a = next(), let b = next() else { break }
            let n = lines.count
            switch op & 7 {
            case 0:
                guard n > 0, !lines[a % n].isEmpty else { continue }
                let mask = UInt8(truncatingIfNeeded: next() ?? 1)
                let at = b % lines[a % n].count
                lines[a % n][at] ^= mask == 0 ? 1 : mask
                if lines[a % n][at] == 0x0a { lines[a % n][at] = 0x20 }
            case 1: if n > 0 { lines.remove(at: a % n) }
            case 2: if n > 0 { lines.insert(lines[a % n], at: b % (n + 1)) }
            case 3: if n > 0 { lines.swapAt(a % n, b % n) }
            case 4: cut = a << 8 | b
            case 5: if n > 0 { lines[a % n] = raw() } else { i -= 1; _ = raw() }
            case 6: lines.insert(raw(), at: a % (n + 1))
            default: if n > 0 { lines[a % n] = Array(lines[a % n].prefix(b)) }
            }
        }
        var bytes = joined(lines)
        if let cut, !bytes.isEmpty { bytes = Array(bytes.prefix(cut % bytes.count)) }
        return bytes
    }
}
