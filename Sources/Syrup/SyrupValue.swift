/// One Syrup value (ocapn/syrup draft-specification.md).
///
/// Dictionaries and sets are stored unordered; the encoder writes them in canonical order
/// (entries sorted by the bytes of their encoded keys / elements).
///
/// Equality and hashing follow the encoding, not Swift's numeric or Unicode rules: two values
/// are equal exactly when their canonical encodings are the same bytes. So floats and doubles
/// compare by bit pattern (`-0.0 != 0.0`, a NaN equals the same NaN bit pattern), and strings
/// and symbols compare by their UTF-8 bytes (Swift's `String ==` would merge canonically
/// equivalent spellings such as "é" and "e\u{301}", which encode differently). Without this a
/// set or dictionary could silently merge distinct wire values and re-encoding would change
/// the bytes.
public enum SyrupValue: Hashable, Sendable {
    case bool(Bool)
    case integer(SyrupInteger)
    case float(Float)
    case double(Double)
    case bytes([UInt8])
    case string(String)
    case symbol(String)
    case list([SyrupValue])
    case dictionary([SyrupValue: SyrupValue])
    case set(Set<SyrupValue>)
    // Only the record holds a SyrupValue inline; marking just this case indirect spares every
    // other value a heap box (collections already store their elements out of line).
    indirect case record(label: SyrupValue, fields: [SyrupValue])

    public static func == (lhs: SyrupValue, rhs: SyrupValue) -> Bool {
        switch (lhs, rhs) {
        case let (.bool(a), .bool(b)): return a == b
        case let (.integer(a), .integer(b)): return a == b
        case let (.float(a), .float(b)): return a.bitPattern == b.bitPattern
        case let (.double(a), .double(b)): return a.bitPattern == b.bitPattern
        case let (.bytes(a), .bytes(b)): return a == b
        case let (.string(a), .string(b)), let (.symbol(a), .symbol(b)): return utf8Equal(a, b)
        case let (.list(a), .list(b)): return a == b
        case let (.dictionary(a), .dictionary(b)): return a == b
        case let (.set(a), .set(b)): return a == b
        case let (.record(la, fa), .record(lb, fb)): return la == lb && fa == fb
        case (.bool, _), (.integer, _), (.float, _), (.double, _), (.bytes, _), (.string, _),
             (.symbol, _), (.list, _), (.dictionary, _), (.set, _), (.record, _):
            return false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .bool(let b): hasher.combine(0 as UInt8); hasher.combine(b)
        case .integer(let i): hasher.combine(1 as UInt8); hasher.combine(i)
        case .float(let f): hasher.combine(2 as UInt8); hasher.combine(f.bitPattern)
        case .double(let d): hasher.combine(3 as UInt8); hasher.combine(d.bitPattern)
        case .bytes(let b): hasher.combine(4 as UInt8); hasher.combine(b)
        case .string(let s): hasher.combine(5 as UInt8); Self.hashUTF8(s, into: &hasher)
        case .symbol(let s): hasher.combine(6 as UInt8); Self.hashUTF8(s, into: &hasher)
        case .list(let l): hasher.combine(7 as UInt8); hasher.combine(l)
        case .dictionary(let d): hasher.combine(8 as UInt8); hasher.combine(d)
        case .set(let s): hasher.combine(9 as UInt8); hasher.combine(s)
        case .record(let label, let fields):
            hasher.combine(10 as UInt8); hasher.combine(label); hasher.combine(fields)
        }
    }

    private static func utf8Equal(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count && a.utf8.elementsEqual(b.utf8)
    }

    private static func hashUTF8(_ s: String, into hasher: inout Hasher) {
        hasher.combine(s.utf8.count)
        let done: Void? = s.utf8.withContiguousStorageIfAvailable { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        if done == nil {
            for byte in s.utf8 { hasher.combine(byte) }
        }
    }
}

extension SyrupValue {
    /// Integer convenience.
    public static func int(_ v: Int) -> SyrupValue { .integer(SyrupInteger(v)) }

    /// The boolean, or nil for any other type.
    public var asBool: Bool? { if case .bool(let v) = self { v } else { nil } }
    /// The integer, or nil for any other type.
    public var asInteger: SyrupInteger? { if case .integer(let v) = self { v } else { nil } }
    /// The integer as `Int`, or nil for any other type or when it does not fit.
    public var asInt: Int? { asInteger?.intValue }
    /// The bytestring's bytes, or nil for any other type.
    public var asBytes: [UInt8]? { if case .bytes(let v) = self { v } else { nil } }
    /// The string, or nil for any other type (a symbol is not a string).
    public var asString: String? { if case .string(let v) = self { v } else { nil } }
    /// The symbol's text, or nil for any other type (a string is not a symbol).
    public var asSymbol: String? { if case .symbol(let v) = self { v } else { nil } }
    /// The list's items, or nil for any other type.
    public var asList: [SyrupValue]? { if case .list(let v) = self { v } else { nil } }
    /// The dictionary, or nil for any other type.
    public var asDictionary: [SyrupValue: SyrupValue]? { if case .dictionary(let v) = self { v } else { nil } }
    /// The set, or nil for any other type.
    public var asSet: Set<SyrupValue>? { if case .set(let v) = self { v } else { nil } }
    /// The record's label and fields, or nil for any other type.
    public var asRecord: (label: SyrupValue, fields: [SyrupValue])? {
        if case .record(let label, let fields) = self { (label, fields) } else { nil }
    }

    /// The fields of a record whose label is the symbol `label` (compared by UTF-8 bytes) and,
    /// when `count` is given, that has exactly that many fields; nil otherwise.
    public func recordFields(label: String, count: Int? = nil) -> [SyrupValue]? {
        guard case .record(let l, let fields) = self, l == .symbol(label) else { return nil }
        if let count, fields.count != count { return nil }
        return fields
    }
}

/// An integer of any size, kept as sign and canonical decimal magnitude (no leading zeros).
public struct SyrupInteger: Hashable, Sendable, CustomStringConvertible {
    /// True for values below zero; zero is never negative.
    public let isNegative: Bool
    /// Decimal digits of the absolute value, ASCII, no leading zeros ("0" for zero).
    public let magnitude: String

    public init(_ value: Int) {
        isNegative = value < 0
        magnitude = String(value.magnitude)
    }

    /// Builds from decimal digits; returns nil unless `magnitude` is canonical
    /// (ASCII digits, no leading zero except "0" itself) and zero is not negative.
    public init?(isNegative: Bool, magnitude: String) {
        guard !magnitude.isEmpty, magnitude.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        if magnitude.utf8.count > 1 && magnitude.utf8.first == 0x30 { return nil }
        if magnitude == "0" && isNegative { return nil }
        self.isNegative = isNegative
        self.magnitude = magnitude
    }

    /// For digits the decoder has already checked to be canonical.
    init(validatedNegative isNegative: Bool, magnitude: String) {
        self.isNegative = isNegative
        self.magnitude = magnitude
    }

    /// The value as `Int`, or nil when it does not fit.
    public var intValue: Int? {
        guard let m = UInt(magnitude) else { return nil }
        if isNegative {
            if m <= UInt(Int.max) { return -Int(m) }
            return m == UInt(Int.max) + 1 ? Int.min : nil
        }
        return m <= UInt(Int.max) ? Int(m) : nil
    }

    public var description: String { (isNegative ? "-" : "") + magnitude }
}
