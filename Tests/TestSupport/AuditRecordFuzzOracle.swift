import Audit

/// Audit log lines (issue #12 item 7). Shared by `FuzzAuditRecord` (through the TestSupport product) and the
/// regression tests. Oracle: never a crash; a line `AuditRecord.decode` accepts encodes back
/// to exactly its bytes, and its event obeys the invariants a writer enforces (a failure has
/// a reason, channel.closed has `clean`).
public enum AuditRecordFuzzOracle {
    public static func violations(_ input: [UInt8]) -> [String] {
        var out: [String] = []
        for line in input.split(separator: 0x0a, omittingEmptySubsequences: true).prefix(16) {
            guard let record = try? AuditRecord.decode(line) else { continue }
            if record.encode()[...] != line { out.append("accepted line re-encodes to other bytes") }
            if record.event.outcome == .failure && record.event.reason == nil { out.append("a failure without a reason") }
            if record.event.kind == .channelClosed && record.event.clean == nil { out.append("channel.closed without clean") }
        }
        return out
    }
}
