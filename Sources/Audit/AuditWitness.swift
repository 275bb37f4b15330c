
/// One checkpoint as a witness saw it: its seq and the BLAKE2b-256 of its line.
///
/// The line format (one per checkpoint, docs/AUDIT.md):
///
///     audit-witness v1 seq=<n> hash=<64 hex> ts=<RFC 3339>
///
/// Readers look for `audit-witness v1 ` anywhere in a line, so a journal export or a captured
/// stderr with other lines around (and a prefix before) still parses.
public struct AuditWitnessEntry: Sendable, Hashable {
    public static let marker = "audit-witness v1 "
    public let seq: UInt64
    public let hash: AuditDigest
    public let timestamp: AuditTimestamp?

    public init(seq: UInt64, hash: AuditDigest, timestamp: AuditTimestamp? = nil) {
        self.seq = seq
        self.hash = hash
        self.timestamp = timestamp
    }

    public var line: String {
        "\(Self.marker)seq=\(seq) hash=\(hash.hex)" + (timestamp.map { " ts=\($0.rfc3339)" } ?? "")
    }

    /// Parses one line; nil when it carries no witness entry.
    public init?(line: Substring) {
        let bytes = Array(line.utf8), marker = Array(Self.marker.utf8)
        guard bytes.count >= marker.count,
              let at = (0...(bytes.count - marker.count)).first(where: { bytes[$0..<($0 + marker.count)].elementsEqual(marker) })
        else { return nil }
        var seq: UInt64?, hash: AuditDigest?, ts: AuditTimestamp?
        for token in String(decoding: bytes[(at + marker.count)...], as: UTF8.self).split(separator: " ") {
            if token.hasPrefix("seq=") { seq = UInt64(token.dropFirst(4)) }
            else if token.hasPrefix("hash=") { hash = AuditDigest(hex: String(token.dropFirst(5))).flatMap { $0.bytes.count == 32 ? $0 : nil } }
            else if token.hasPrefix("ts=") { ts = AuditTimestamp(recordText: String(token.dropFirst(3))) }
        }
        guard let seq, let hash else { return nil }
        self.init(seq: seq, hash: hash, timestamp: ts)
    }

    /// Every entry of a witness file. Two entries for one seq with different hashes mean the
    /// witness itself saw two logs: that is refused.
    public static func read(path: String, maxBytes: Int = 64 << 20) throws(AuditError) -> [AuditWitnessEntry] {
        guard let bytes = try FileIO.readSmallFile(path, limit: maxBytes) else {
            throw AuditError(.ioError, "witness file \(path) does not exist")
        }
        var out: [UInt64: AuditWitnessEntry] = [:]
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            guard let e = AuditWitnessEntry(line: line) else { continue }
            if let old = out[e.seq], old.hash != e.hash {
                throw AuditError(.invalidArgument, "witness \(path) records two different hashes for seq \(e.seq)")
            }
            out[e.seq] = e
        }
        return out.values.sorted { $0.seq < $1.seq }
    }
}

/// Where the writer sends each checkpoint's witness line.
public enum AuditWitnessTarget: Sendable, Hashable {
    /// Appended to a file (ideally on other storage or another host's mount).
    case file(String)
    /// Written to standard error, for journald or a log shipper.
    case standardError
}
