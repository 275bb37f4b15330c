// Canonical Syrup codec (ocapn/syrup draft-specification.md).
//
// Decisions where the draft leaves room, chosen so that decode -> encode is the identity on
// every accepted input (reliability catalog D4):
// * Floats and doubles: any bit pattern is accepted (NaN payloads, signalling NaNs, -0.0) and
//   kept exactly; values compare by bit pattern (see `SyrupValue` equality).
// * No whitespace anywhere; Goblins never writes any.
// * Record labels may be any value (zoo.bin uses a bytestring); protocol layers check theirs.
// * Strings and symbols must be valid UTF-8 (RFC 3629); NUL is allowed, as in Syrup.
// * A length prefix above its limit is an error as soon as its terminator arrives, before any
//   body byte; a digit run that no limit could accept is an error as soon as it is too long.

/// Named limits, each checked before any allocation.
///
/// Depth counts open containers (list, dictionary, set, record): a scalar has depth 0, `[1+]`
/// depth 1. `maxTotalBytes` bounds the encoded size of one whole value. `maxCollectionCount`
/// bounds list and set items, dictionary pairs and record fields (the label not counted).
/// Lengths count bytes (UTF-8 bytes for strings and symbols). Keep `maxDepth` modest (hundreds
/// at most): decoding uses no recursion, but releasing or encoding a value recurses per level.
public struct SyrupLimits: Sendable, Equatable {
    public var maxDepth: Int
    public var maxTotalBytes: Int
    public var maxBytestringLength: Int
    public var maxStringLength: Int
    public var maxSymbolLength: Int
    public var maxCollectionCount: Int
    public var maxIntegerDigits: Int

    public init(maxDepth: Int, maxTotalBytes: Int, maxBytestringLength: Int, maxStringLength: Int,
                maxSymbolLength: Int, maxCollectionCount: Int, maxIntegerDigits: Int) {
        self.maxDepth = maxDepth
        self.maxTotalBytes = maxTotalBytes
        self.maxBytestringLength = maxBytestringLength
        self.maxStringLength = maxStringLength
        self.maxSymbolLength = maxSymbolLength
        self.maxCollectionCount = maxCollectionCount
        self.maxIntegerDigits = maxIntegerDigits
    }

    /// General-purpose defaults (1 MiB values, depth 64).
    public static let `default` = SyrupLimits(
        maxDepth: 64, maxTotalBytes: 1 << 20, maxBytestringLength: 1 << 20, maxStringLength: 1 << 20,
        maxSymbolLength: 1 << 10, maxCollectionCount: 1 << 16, maxIntegerDigits: 1 << 10)

    /// Introduction-server control messages (reliability catalog §4: 16 KiB, depth 16).
    public static let controlMessage = SyrupLimits(
        maxDepth: 16, maxTotalBytes: 16 << 10, maxBytestringLength: 4 << 10, maxStringLength: 4 << 10,
        maxSymbolLength: 256, maxCollectionCount: 256, maxIntegerDigits: 20)
}

/// A decoding failure: stable code, byte offset, and a detail for local diagnostics.
public struct SyrupError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable {
        /// A byte that cannot appear here (unknown type, stray or mismatched closer, bad terminator).
        case unexpectedByte
        /// Valid syntax in a non-canonical form: leading zero, `0-`, unsorted dictionary or set.
        case nonCanonical
        /// A `SyrupLimits` bound would be exceeded (reported before allocating or waiting for bytes).
        case limitExceeded
        /// A string or symbol body that is not UTF-8 (RFC 3629).
        case invalidUTF8
        /// A dictionary key or set element that occurs twice.
        case duplicateKey
        /// `decode`: the input ends inside the value.
        case unexpectedEnd
        /// `decode`: bytes follow the complete value.
        case trailingBytes
    }
    public let code: Code
    public let offset: Int
    public let detail: String

    public init(_ code: Code, offset: Int, _ detail: String) {
        self.code = code
        self.offset = offset
        self.detail = detail
    }

    public var description: String { "syrup \(code.rawValue) at byte \(offset): \(detail)" }
}

/// Result of decoding from the front of a buffer that may hold a partial value.
public enum SyrupDecodeStep: Equatable, Sendable {
    /// The bytes are a valid prefix of some value; read more and call again.
    case needMoreBytes
    /// A complete value that used the first `consumed` bytes.
    case value(SyrupValue, consumed: Int)
}

public struct SyrupDecoder: Sendable {
    public var limits: SyrupLimits

    public init(limits: SyrupLimits = .default) { self.limits = limits }

    /// Decodes exactly one value spanning all of `bytes` (`unexpectedEnd`, `trailingBytes` otherwise).
    public func decode(_ bytes: [UInt8]) throws(SyrupError) -> SyrupValue {
        try bytes.withUnsafeBytes { raw in Result { () throws(SyrupError) in try decode(raw) } }.get()
    }

    /// Decodes exactly one value spanning all of `bytes` (`unexpectedEnd`, `trailingBytes` otherwise).
    public func decode(_ bytes: UnsafeRawBufferPointer) throws(SyrupError) -> SyrupValue {
        switch try decodePrefix(bytes) {
        case .needMoreBytes:
            throw SyrupError(.unexpectedEnd, offset: bytes.count, "input ends inside the value")
        case .value(let value, let consumed):
            guard consumed == bytes.count else {
                throw SyrupError(.trailingBytes, offset: consumed, "\(bytes.count - consumed) bytes after the value")
            }
            return value
        }
    }

    /// Decodes one value from the front of `bytes`, or answers `.needMoreBytes`.
    ///
    /// Any strict prefix of a valid value answers `.needMoreBytes`; input that no continuation
    /// could make valid throws as soon as that is certain. Error offsets index into `bytes`.
    public func decodePrefix(_ bytes: UnsafeRawBufferPointer) throws(SyrupError) -> SyrupDecodeStep {
        var scanner = SyrupScanner(limits: limits, start: 0)
        guard let end = try scanner.scan(bytes) else { return .needMoreBytes }
        return .value(SyrupBuilder.build(bytes, from: 0), consumed: end)
    }

    /// Decodes one value from the front of `bytes` (offsets in errors and `consumed` are
    /// relative to `bytes.startIndex`).
    public func decodePrefix(_ bytes: ArraySlice<UInt8>) throws(SyrupError) -> SyrupDecodeStep {
        try bytes.withUnsafeBytes { raw in Result { () throws(SyrupError) in try decodePrefix(raw) } }.get()
    }

    /// Decodes one value from the front of `bytes`, or answers `.needMoreBytes`.
    public func decodePrefix(_ bytes: [UInt8]) throws(SyrupError) -> SyrupDecodeStep {
        try decodePrefix(bytes[...])
    }
}

/// Canonical encoder. Dictionaries and sets are written sorted by the encoded bytes of their
/// keys / elements. It recurses once per nesting level of the value it is given.
public enum SyrupEncoder {
    /// Canonical encoding.
    public static func encode(_ value: SyrupValue) -> [UInt8] {
        var out: [UInt8] = []
        encode(value, into: &out)
        return out
    }

    /// Appends the canonical encoding of `value` to `out`.
    public static func encode(_ value: SyrupValue, into out: inout [UInt8]) {
        switch value {
        case .bool(let b):
            out.append(b ? SyrupByte.t : SyrupByte.f)
        case .integer(let i):
            out.append(contentsOf: i.magnitude.utf8)
            out.append(i.isNegative ? SyrupByte.minus : SyrupByte.plus)
        case .float(let f):
            out.append(SyrupByte.float)
            appendBigEndian(f.bitPattern, to: &out)
        case .double(let d):
            out.append(SyrupByte.double)
            appendBigEndian(d.bitPattern, to: &out)
        case .bytes(let b):
            appendDecimal(b.count, to: &out)
            out.append(SyrupByte.colon)
            out.append(contentsOf: b)
        case .string(let s):
            appendDecimal(s.utf8.count, to: &out)
            out.append(SyrupByte.quote)
            out.append(contentsOf: s.utf8)
        case .symbol(let s):
            appendDecimal(s.utf8.count, to: &out)
            out.append(SyrupByte.apostrophe)
            out.append(contentsOf: s.utf8)
        case .list(let items):
            out.append(SyrupByte.listOpen)
            for item in items { encode(item, into: &out) }
            out.append(SyrupByte.listClose)
        case .record(let label, let fields):
            out.append(SyrupByte.recordOpen)
            encode(label, into: &out)
            for field in fields { encode(field, into: &out) }
            out.append(SyrupByte.recordClose)
        case .dictionary(let dict):
            out.append(SyrupByte.dictOpen)
            appendSorted(dict, into: &out) { entry, out in
                encode(entry.key, into: &out)
                let keyEnd = out.count
                encode(entry.value, into: &out)
                return keyEnd
            }
            out.append(SyrupByte.dictClose)
        case .set(let set):
            out.append(SyrupByte.setOpen)
            appendSorted(set, into: &out) { element, out in
                encode(element, into: &out)
                return out.count
            }
            out.append(SyrupByte.setClose)
        }
    }

    /// One encoded entry in `out`: sort key is `start..<keyEnd`, the entry is `start..<end`.
    private struct Span {
        let start: Int
        let keyEnd: Int
        let end: Int
    }

    /// Encodes entries in hash order straight into `out`, then reorders that region by sort key.
    /// This avoids one array per key; the only extra buffer is one copy of the region.
    /// `write` encodes one entry and returns where its sort key ends.
    private static func appendSorted<Entries: Collection>(
        _ entries: Entries, into out: inout [UInt8], _ write: (Entries.Element, inout [UInt8]) -> Int
    ) {
        let base = out.count
        var spans: [Span] = []
        spans.reserveCapacity(entries.count)
        for entry in entries {
            let start = out.count
            let keyEnd = write(entry, &out)
            spans.append(Span(start: start, keyEnd: keyEnd, end: out.count))
        }
        guard entries.count > 1 else { return }
        out.withUnsafeBytes { raw in
            spans.sort { a, b in
                SyrupScanner.compare(raw, a.start, a.keyEnd, b.start, b.keyEnd) == .less
            }
        }
        let region = Array(out[base...])
        out.removeSubrange(base...)
        for span in spans {
            out.append(contentsOf: region[(span.start - base)..<(span.end - base)])
        }
    }

    private static func appendBigEndian<T: FixedWidthInteger>(_ v: T, to out: inout [UInt8]) {
        var be = v.bigEndian
        withUnsafeBytes(of: &be) { out.append(contentsOf: $0) }
    }

    /// ASCII decimal of a non-negative count, without building a String.
    private static func appendDecimal(_ n: Int, to out: inout [UInt8]) {
        precondition(n >= 0, "lengths are never negative")
        var divisor = 1
        while divisor <= n / 10 { divisor *= 10 }
        var rest = n
        while divisor > 0 {
            out.append(SyrupByte.zero + UInt8(rest / divisor))
            rest %= divisor
            divisor /= 10
        }
    }
}
