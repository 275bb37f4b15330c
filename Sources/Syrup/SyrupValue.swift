/// One Syrup value (ocapn/syrup draft-specification.md).
///
/// Dictionaries and sets are stored unordered; the encoder writes them in canonical order
/// (entries sorted by the bytes of their encoded keys / elements).
public indirect enum SyrupValue: Hashable, Sendable {
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
    case record(label: SyrupValue, fields: [SyrupValue])
}

extension SyrupValue {
    /// Integer convenience.
    public static func int(_ v: Int) -> SyrupValue { .integer(SyrupInteger(v)) }
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
