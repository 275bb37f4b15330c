/// Lowercase hexadecimal: the one encoder and decoder of key files, audit records, URIs and
/// vector files.
public enum Hex {
    public static func encode<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        append(bytes, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the lowercase hex of `bytes` to `out` (encoders that build a line in place).
    @inlinable
    public static func append<Bytes: Collection>(_ bytes: Bytes, to out: inout [UInt8]) where Bytes.Element == UInt8 {
        for b in bytes {
            out.append(digit(b >> 4))
            out.append(digit(b & 0x0f))
        }
    }

    /// The lowercase digit of a nibble (0...15).
    @inlinable
    public static func digit(_ nibble: UInt8) -> UInt8 {
        nibble < 10 ? 0x30 + nibble : 0x57 + nibble
    }

    /// Decodes hex; nil on odd length or any other character. Strict (the default) accepts
    /// only lowercase, so every byte string has exactly one accepted spelling (what signed and
    /// hash-chained records need); `allowUppercase` is for reading other tools' files.
    public static func decode<Text: Collection>(_ text: Text, allowUppercase: Bool = false) -> [UInt8]? where Text.Element == UInt8 {
        guard text.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(text.count / 2)
        var high: UInt8?
        for c in text {
            guard let v = value(ofDigit: c, allowUppercase: allowUppercase) else { return nil }
            if let h = high {
                out.append(h << 4 | v)
                high = nil
            } else {
                high = v
            }
        }
        return out
    }

    public static func decode(_ text: String, allowUppercase: Bool = false) -> [UInt8]? {
        decode(text.utf8, allowUppercase: allowUppercase)
    }

    /// The value of one hex digit, nil for any other byte (uppercase only when allowed).
    public static func value(ofDigit c: UInt8, allowUppercase: Bool = false) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46 where allowUppercase: return c - 0x41 + 10
        default: return nil
        }
    }
}
