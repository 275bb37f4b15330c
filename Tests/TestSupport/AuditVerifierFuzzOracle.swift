import Audit
@_spi(TestVectors) import Identity

/// The audit verifier (issue #12 item 7). Shared by `FuzzAuditVerifier` (through the TestSupport product) and the
/// regression tests.
///
/// The input edits one genuine log: a closed, signed log (checkpoints every 4 records) written by
/// a fixed writer key through `AuditChain`. Its first byte picks the form: odd, the rest of the
/// input is a whole file in its own right; even, the rest is a list of edits applied to the
/// genuine log's lines (flip a byte, delete, duplicate, swap, cut the file short, replace or
/// insert a line of fuzzer bytes, cut a line short).
///
/// Oracle: never a crash; the verdict is `intact` — pinned to the writer or not — exactly when the
/// file is the genuine log byte for byte (the log is closed and signed, so no edit, cut or splice
/// goes unreported, and no input the fuzzer can build without the key passes); `broken` exactly
/// when there is a first break; a verdict other than intact comes with a finding; the verifier
/// never counts more records than the file has lines.
public enum AuditVerifierFuzzOracle {
    public static let file = "fuzz.jsonl"

    /// The genuine log's lines (without newlines) and its writer.
    static let genuine: (lines: [[UInt8]], writer: PublicIdentity) = {
        let pair = try! IdentityKeyPair(vectorSeed: [UInt8](repeating: 0x5a, count: IdentityKeyPair.seedLength))
        var chain = AuditChain(writer: pair.publicIdentity, signer: pair, policy: AuditCheckpointPolicy(everyRecords: 4))
        var t: Int64 = 1_795_000_000_000_000
        func now() -> AuditTimestamp {
            t += 1000
            return AuditTimestamp(microsSinceEpoch: t)
        }
        let local = AuditPeerID(pair.publicIdentity)
        let remote = AuditPeerID(try! IdentityKeyPair(vectorSeed: [UInt8](repeating: 0x33, count: 32)).publicIdentity)
        var lines = [chain.opened(cause: .start, at: now())]
        for i in 0..<10 {
            let failed = i % 3 == 0
            lines.append(chain.append(AuditEvent(failed ? .handshakeFailed : .handshakeSucceeded, reason: failed ? AuditReason(rawValue: "timeout") : nil,
                                                 attempt: AuditAttemptID(rawValue: UInt64(i)), role: .initiator, local: local,
                                                 expectedPeer: remote, provedPeer: failed ? nil : remote,
                                                 durationMicros: UInt64(100 + i)), at: now()))
            let time = now()
            if chain.checkpointDue(at: time) { lines.append(chain.checkpoint(at: time)) }
        }
        lines.append(chain.closed(cause: .shutdown, at: now()))
        return (lines, pair.publicIdentity)
    }()

    public static var genuineFile: [UInt8] { joined(genuine.lines) }

    static func joined(_ lines: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        for line in lines { out += line; out.append(0x0a) }
        return out
    }

    public static func violations(_ input: [UInt8]) -> [String] {
        let bytes = file(for: input)
        let lines = split(bytes)
        var out: [String] = []
        let isGenuine = bytes == genuineFile
        for pinned in [true, false] {
            var verifier = AuditVerifier(expectedWriter: pinned ? genuine.writer : nil)
            verifier.beginFile(file)
            for line in lines where !verifier.isBroken { verifier.line(line) }
            let report = verifier.finish()
            let how = pinned ? "pinned" : "unpinned"
            if (report.status == .intact) != isGenuine {
                out.append("\(how): status \(report.status.rawValue) for a \(isGenuine ? "genuine" : "changed") log")
            }
            if (report.status == .broken) != (report.firstBreak != nil) { out.append("\(how): broken without a first break, or the reverse") }
            if report.status != .intact && report.findings.isEmpty { out.append("\(how): \(report.status.rawValue) without a finding") }
            if report.records > lines.count { out.append("\(how): \(report.records) records counted in \(lines.count) lines") }
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
        var lines = genuine.lines
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
