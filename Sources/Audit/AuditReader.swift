import Transport

/// Where a line is: file path and 1-based line number.
public struct AuditLocation: Hashable, Sendable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public init(file: String, line: Int) {
        self.file = file
        self.line = line
    }
    public var description: String { "\(file):\(line)" }
}

/// A decoded record and where it was read.
public struct AuditLocatedRecord: Sendable, Hashable {
    public let location: AuditLocation
    public let record: AuditRecord
    /// The exact line bytes (for `--json` output and hashing).
    public let line: [UInt8]
}

/// One raw line of a file. `complete` is false for a last line without a newline (torn write).
public struct AuditRawLine: Sendable {
    public let number: Int
    public let bytes: [UInt8]
    public let complete: Bool

    public init(number: Int, bytes: [UInt8], complete: Bool) {
        self.number = number
        self.bytes = bytes
        self.complete = complete
    }
}

/// Reads a log file line by line in bounded chunks; a line over `maxLineBytes` is an error
/// rather than an allocation.
public final class AuditLineReader {
    public static let defaultMaxLineBytes = 64 * 1024
    public let path: String
    private let fd: FileDescriptor
    private let maxLineBytes: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false
    private var lineNumber = 0
    /// Bytes consumed so far (offset of the next unread line).
    public private(set) var offset: Int64 = 0

    public init(path: String, maxLineBytes: Int = AuditLineReader.defaultMaxLineBytes) throws(AuditError) {
        self.path = path
        self.maxLineBytes = maxLineBytes
        fd = try FileIO.open(path, .readOnly)
    }

    deinit { fd.close() }

    /// The next line, or nil at end of file. At end of data that is still being written
    /// (`--follow`) an incomplete line is held back unless `final` is true.
    public func next(final: Bool = true) throws(AuditError) -> AuditRawLine? {
        while true {
            if let nl = buffer[start...].firstIndex(of: 0x0a) {
                let bytes = Array(buffer[start..<nl])
                offset += Int64(nl - start + 1)
                start = nl + 1
                lineNumber += 1
                return AuditRawLine(number: lineNumber, bytes: bytes, complete: true)
            }
            guard buffer.count - start <= maxLineBytes else {
                throw AuditError(.recordTooLarge, "\(path):\(lineNumber + 1): line longer than \(maxLineBytes) bytes")
            }
            if try !fill() {
                guard start < buffer.count, final else { return nil }
                let bytes = Array(buffer[start...])
                offset += Int64(bytes.count)
                start = buffer.count
                lineNumber += 1
                return AuditRawLine(number: lineNumber, bytes: bytes, complete: false)
            }
        }
    }

    /// Reads more bytes; false at (current) end of file.
    private func fill() throws(AuditError) -> Bool {
        if start > 0 {
            buffer.removeFirst(start)
            start = 0
        }
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        let n = try FileIO.read(fd, into: &chunk, path: path)
        guard n > 0 else { return false }
        buffer.append(contentsOf: chunk[..<n])
        return true
    }

    /// Whether `path` now names a different file than the one open (rotated away) or none.
    public var wasReplaced: Bool {
        guard let open = FileIO.identity(ofFD: fd) else { return true }
        guard let now = FileIO.identity(ofPath: path) else { return true }
        return open != now
    }
}

/// Reading several files of one chain.
public enum AuditLog {
    /// Orders files by the `seq` of their first record (oldest first), whatever order the shell
    /// gave (`audit.jsonl audit.jsonl.1 audit.jsonl.10 …`). Unreadable first lines sort last,
    /// keeping their given order, so the verifier reports them.
    public static func chainOrder(_ paths: [String]) -> [String] {
        let keyed = paths.enumerated().map { (i, p) -> (UInt64, Int, String) in
            var seq = UInt64.max
            if let r = try? AuditLineReader(path: p), let first = try? r.next(), first.complete,
               let rec = try? AuditRecord.decode(first.bytes[...]) {
                seq = rec.seq
            }
            return (seq, i, p)
        }
        return keyed.sorted { ($0.0, $0.1) < ($1.0, $1.1) }.map { $0.2 }
    }

    /// Every file a live path has, oldest first: `PATH.N … PATH.1, PATH`.
    public static func rotationSet(of path: String, maxRotated: Int = 10_000) -> [String] {
        var out = [path]
        var n = 1
        while n <= maxRotated, FileIO.exists("\(path).\(n)") {
            out.insert("\(path).\(n)", at: 0)
            n += 1
        }
        return out
    }

    /// Decoded records of `paths` in chain order. Lines that do not decode are skipped and
    /// counted in `unreadable` (`verify` says why).
    public static func records(
        _ paths: [String], maxLineBytes: Int = AuditLineReader.defaultMaxLineBytes,
        _ body: (AuditLocatedRecord) throws -> Void
    ) throws -> (unreadable: Int, tornTail: AuditLocation?) {
        var unreadable = 0
        var torn: AuditLocation?
        for p in chainOrder(paths) {
            let reader = try AuditLineReader(path: p, maxLineBytes: maxLineBytes)
            while let raw = try reader.next() {
                let loc = AuditLocation(file: p, line: raw.number)
                guard raw.complete else { torn = loc; break }
                guard let rec = try? AuditRecord.decode(raw.bytes[...]) else { unreadable += 1; continue }
                try body(AuditLocatedRecord(location: loc, record: rec, line: raw.bytes))
            }
        }
        return (unreadable, torn)
    }
}
