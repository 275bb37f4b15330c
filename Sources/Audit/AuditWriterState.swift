/// The writer's small state file beside the log: the last checkpoint's seq and hash, replaced
/// atomically and fsynced at every checkpoint. On reopen the log must still contain that
/// checkpoint (or, right after a rotation, link to it): a shorter or different log is not extended.
///
///     ocapn-uds audit state v1
///     audit-witness v1 seq=<n> hash=<64 hex> ts=<RFC 3339>
enum AuditWriterState {
    static let header = "ocapn-uds audit state v1"

    static func read(path: String) throws(AuditError) -> AuditWitnessEntry? {
        guard let bytes = try FileIO.readSmallFile(path, limit: 4096) else { return nil }
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        guard lines.first == Substring(header), lines.count >= 2, let entry = AuditWitnessEntry(line: lines[1]) else {
            throw AuditError(.cannotContinueLog, "state file \(path) is malformed; move it aside after verifying the log")
        }
        return entry
    }

    static func write(_ entry: AuditWitnessEntry, path: String) throws(AuditError) {
        try FileIO.writeAtomically(path: path, bytes: Array("\(header)\n\(entry.line)\n".utf8), mode: 0o600)
    }
}
