import Identity

/// The one-line JSON used by audit records: a flat object of strings, integers and booleans.
///
/// Records are written by `JSONLineWriter` with a fixed key order and parsed by `FlatJSON`,
/// a bounded parser that refuses duplicate keys (an edited duplicate would otherwise be
/// ambiguous evidence), nesting, floats and null. Record decoding re-encodes and compares, so
/// only the canonical spelling of a record is accepted.
struct JSONLineWriter {
    private(set) var bytes: [UInt8] = [0x7b]
    private var first = true

    init() { bytes.reserveCapacity(512) }

    private mutating func key(_ k: StaticString) {
        if !first { bytes.append(0x2c) }
        first = false
        bytes.append(0x22)
        k.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(0x22)
        bytes.append(0x3a)
    }

    mutating func string(_ k: StaticString, _ v: String) {
        key(k)
        Self.appendQuoted(v, to: &bytes)
    }

    mutating func string(_ k: StaticString, _ v: String?) {
        if let v { string(k, v) }
    }

    /// A string field of lowercase hex, encoded from the bytes in place (the same bytes as
    /// `string(k, Hex.encode(v))` without building the String).
    mutating func hex(_ k: StaticString, _ v: [UInt8]?) {
        guard let v else { return }
        key(k)
        bytes.append(0x22)
        Hex.append(v, to: &bytes)
        bytes.append(0x22)
    }

    /// A string field of 16 lowercase hex digits, big-endian (`AuditAttemptID.hex`).
    mutating func hex64(_ k: StaticString, _ v: UInt64?) {
        guard let v else { return }
        key(k)
        bytes.append(0x22)
        var shift: UInt64 = 60
        while true {
            bytes.append(Hex.digit(UInt8((v >> shift) & 0x0f)))
            if shift == 0 { break }
            shift -= 4
        }
        bytes.append(0x22)
    }

    /// A string field holding `AuditTimestamp.rfc3339`.
    mutating func timestamp(_ k: StaticString, _ v: AuditTimestamp) {
        key(k)
        bytes.append(0x22)
        v.appendRFC3339(to: &bytes)
        bytes.append(0x22)
    }

    mutating func uint(_ k: StaticString, _ v: UInt64?) {
        guard let v else { return }
        key(k)
        Self.appendDecimal(v, to: &bytes)
    }

    mutating func int(_ k: StaticString, _ v: Int64?) {
        guard let v else { return }
        key(k)
        if v < 0 { bytes.append(0x2d) }
        Self.appendDecimal(v.magnitude, to: &bytes)
    }

    mutating func bool(_ k: StaticString, _ v: Bool?) {
        guard let v else { return }
        key(k)
        if v {
            bytes.append(contentsOf: [0x74, 0x72, 0x75, 0x65] as [UInt8])
        } else {
            bytes.append(contentsOf: [0x66, 0x61, 0x6c, 0x73, 0x65] as [UInt8])
        }
    }

    mutating func finish() -> [UInt8] {
        bytes.append(0x7d)
        return bytes
    }

    /// The shortest decimal spelling (what `String(v)` gives), written in place.
    static func appendDecimal(_ v: UInt64, to out: inout [UInt8]) {
        if v < 10 {
            out.append(0x30 + UInt8(v))
            return
        }
        var digits = 0
        var x = v
        while x > 0 { digits += 1; x /= 10 }
        let start = out.count
        for _ in 0..<digits { out.append(0x30) }
        x = v
        var i = start + digits - 1
        while x > 0 {
            out[i] = 0x30 + UInt8(x % 10)
            x /= 10
            i -= 1
        }
    }

    /// JSON string escaping: quote, backslash and every control character (so a value can
    /// never break the one-record-per-line framing); everything else as UTF-8.
    static func appendQuoted(_ s: String, to out: inout [UInt8]) {
        out.append(0x22)
        // Fast path: record values (fingerprints, codes, paths) rarely need escaping, so copy the
        // contiguous UTF-8 in one go when no byte needs it.
        let copied: Bool? = s.utf8.withContiguousStorageIfAvailable { u in
            for c in u where c < 0x20 || c == 0x22 || c == 0x5c || c == 0x7f { return false }
            out.append(contentsOf: u)
            return true
        }
        if copied != true {
            for c in s.utf8 { appendEscaped(c, to: &out) }
        }
        out.append(0x22)
    }

    private static func appendEscaped(_ c: UInt8, to out: inout [UInt8]) {
        switch c {
        case 0x22: out += [0x5c, 0x22]
        case 0x5c: out += [0x5c, 0x5c]
        case 0x0a: out += [0x5c, 0x6e]
        case 0x0d: out += [0x5c, 0x72]
        case 0x09: out += [0x5c, 0x74]
        case 0x00..<0x20, 0x7f:
            out += [0x5c, 0x75, 0x30, 0x30, Hex.digit(c >> 4), Hex.digit(c & 0xf)]
        default: out.append(c)
        }
    }
}

/// A scalar value of a flat record.
enum FlatJSONValue: Equatable {
    case string(String)
    case number(negative: Bool, magnitude: UInt64)
    case bool(Bool)
}

/// Bounded parser for one flat JSON object.
struct FlatJSON {
    static let maxFields = 64
    static let maxStringBytes = 4096

    private let u: [UInt8]
    private var i = 0

    /// Parses `line` (no trailing newline) into its fields in order.
    static func parse(_ line: ArraySlice<UInt8>) throws(AuditError) -> [(String, FlatJSONValue)] {
        var p = FlatJSON(u: Array(line))
        return try p.object()
    }

    private init(u: [UInt8]) { self.u = u }

    private mutating func skipSpace() {
        while i < u.count, u[i] == 0x20 || u[i] == 0x09 { i += 1 }
    }

    private mutating func expect(_ c: UInt8, _ what: String) throws(AuditError) {
        skipSpace()
        guard i < u.count, u[i] == c else { throw .malformed("expected \(what) at byte \(i)") }
        i += 1
    }

    private mutating func object() throws(AuditError) -> [(String, FlatJSONValue)] {
        try expect(0x7b, "'{'")
        var fields: [(String, FlatJSONValue)] = []
        var seen = Set<String>()
        skipSpace()
        if i < u.count, u[i] == 0x7d {
            i += 1
        } else {
            while true {
                skipSpace()
                let k = try string()
                guard seen.insert(k).inserted else { throw .malformed("duplicate field \"\(k)\"") }
                guard fields.count < Self.maxFields else { throw .malformed("more than \(Self.maxFields) fields") }
                try expect(0x3a, "':'")
                fields.append((k, try value()))
                skipSpace()
                guard i < u.count else { throw .malformed("unterminated object") }
                if u[i] == 0x2c { i += 1; continue }
                if u[i] == 0x7d { i += 1; break }
                throw .malformed("expected ',' or '}' at byte \(i)")
            }
        }
        skipSpace()
        guard i == u.count else { throw .malformed("trailing bytes after the object") }
        return fields
    }

    private mutating func value() throws(AuditError) -> FlatJSONValue {
        skipSpace()
        guard i < u.count else { throw .malformed("missing value") }
        switch u[i] {
        case 0x22: return .string(try string())
        case 0x74: try literal("true"); return .bool(true)
        case 0x66: try literal("false"); return .bool(false)
        case 0x2d, 0x30...0x39: return try number()
        default: throw .malformed("unsupported value at byte \(i) (only strings, integers, booleans)")
        }
    }

    private mutating func literal(_ word: String) throws(AuditError) {
        let w = Array(word.utf8)
        guard i + w.count <= u.count, Array(u[i..<(i + w.count)]) == w else { throw .malformed("bad literal at byte \(i)") }
        i += w.count
    }

    private mutating func number() throws(AuditError) -> FlatJSONValue {
        var negative = false
        if u[i] == 0x2d { negative = true; i += 1 }
        let start = i
        var m: UInt64 = 0
        while i < u.count, u[i] >= 0x30, u[i] <= 0x39 {
            let (a, o1) = m.multipliedReportingOverflow(by: 10)
            let (b, o2) = a.addingReportingOverflow(UInt64(u[i] - 0x30))
            guard !o1, !o2 else { throw .malformed("integer out of range at byte \(start)") }
            m = b
            i += 1
        }
        guard i > start else { throw .malformed("bad number at byte \(start)") }
        guard !(u[start] == 0x30 && i - start > 1) else { throw .malformed("leading zero at byte \(start)") }
        if i < u.count, u[i] == 0x2e || u[i] == 0x65 || u[i] == 0x45 {
            throw .malformed("non-integer number at byte \(start)")
        }
        return .number(negative: negative, magnitude: m)
    }

    private mutating func string() throws(AuditError) -> String {
        guard i < u.count, u[i] == 0x22 else { throw .malformed("expected a string at byte \(i)") }
        i += 1
        var out = [UInt8]()
        while true {
            guard i < u.count else { throw .malformed("unterminated string") }
            guard out.count <= Self.maxStringBytes else { throw .malformed("string longer than \(Self.maxStringBytes) bytes") }
            let c = u[i]
            i += 1
            switch c {
            case 0x22:
                guard let s = String(validating: out, as: UTF8.self) else { throw .malformed("string is not UTF-8") }
                return s
            case 0x5c:
                guard i < u.count else { throw .malformed("unterminated escape") }
                let e = u[i]
                i += 1
                switch e {
                case 0x22, 0x5c, 0x2f: out.append(e)
                case 0x62: out.append(0x08)
                case 0x66: out.append(0x0c)
                case 0x6e: out.append(0x0a)
                case 0x72: out.append(0x0d)
                case 0x74: out.append(0x09)
                case 0x75:
                    var scalar = try hex4()
                    if (0xd800..<0xdc00).contains(scalar) {
                        guard i + 1 < u.count, u[i] == 0x5c, u[i + 1] == 0x75 else { throw .malformed("lone surrogate") }
                        i += 2
                        let low = try hex4()
                        guard (0xdc00..<0xe000).contains(low) else { throw .malformed("bad surrogate pair") }
                        scalar = 0x10000 + ((scalar - 0xd800) << 10) + (low - 0xdc00)
                    } else if (0xdc00..<0xe000).contains(scalar) {
                        throw .malformed("lone surrogate")
                    }
                    guard let us = Unicode.Scalar(scalar) else { throw .malformed("bad \\u escape") }
                    out.append(contentsOf: Array(String(Character(us)).utf8))
                default:
                    throw .malformed("bad escape at byte \(i - 1)")
                }
            case 0x00..<0x20:
                throw .malformed("raw control character in string at byte \(i - 1)")
            default:
                out.append(c)
            }
        }
    }

    private mutating func hex4() throws(AuditError) -> UInt32 {
        guard i + 4 <= u.count else { throw .malformed("short \\u escape") }
        var v: UInt32 = 0
        for c in u[i..<(i + 4)] {
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            default: throw .malformed("bad \\u escape")
            }
            v = v << 4 | d
        }
        i += 4
        return v
    }
}
