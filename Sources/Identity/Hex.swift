/// Lowercase hexadecimal, shared by key files, audit records and vector files.
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    public static func encode<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
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
            guard let v = nibble(c, allowUppercase) else { return nil }
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

    private static func nibble(_ c: UInt8, _ allowUppercase: Bool) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46 where allowUppercase: return c - 0x41 + 10
        default: return nil
        }
    }
}
