/// Tails a live log by polling (`--follow`): returns the complete records appended since the
/// last poll, and moves to the new file when the writer rotates.
public final class AuditFollower {
    public let path: String
    private var reader: AuditLineReader?
    private let maxLineBytes: Int

    /// Starts at the current end of `path` (only new records), or at its start.
    public init(path: String, fromStart: Bool = false, maxLineBytes: Int = AuditLineReader.defaultMaxLineBytes) throws(AuditError) {
        self.path = path
        self.maxLineBytes = maxLineBytes
        let r = try AuditLineReader(path: path, maxLineBytes: maxLineBytes)
        if !fromStart { while try r.next(final: false) != nil {} }
        reader = r
    }

    /// New records since the last call. Lines that do not decode are returned as errors in
    /// `unreadable` so the caller can say so; a line still being written is held back.
    public func poll() throws(AuditError) -> (records: [AuditLocatedRecord], unreadable: [AuditLocation]) {
        var out: [AuditLocatedRecord] = []
        var bad: [AuditLocation] = []
        for _ in 0..<2 {
            if reader == nil {
                guard FileIO.exists(path) else { return (out, bad) }
                reader = try AuditLineReader(path: path, maxLineBytes: maxLineBytes)
            }
            let r = reader!
            // Check for rotation before draining, so lines written to the old file just before
            // it was renamed are still read from the descriptor we hold.
            let replaced = r.wasReplaced
            while let raw = try r.next(final: false) {
                let loc = AuditLocation(file: path, line: raw.number)
                if let rec = try? AuditRecord.decode(raw.bytes[...]) {
                    out.append(AuditLocatedRecord(location: loc, record: rec, line: raw.bytes))
                } else {
                    bad.append(loc)
                }
            }
            guard replaced else { break }
            reader = nil
        }
        return (out, bad)
    }
}
