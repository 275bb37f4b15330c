import SodiumCrypto

/// RFC 4648 §4 base64 (standard alphabet, `=` padding), strict: only the canonical encoding of
/// some byte string decodes. Works on byte arrays so secret payloads never become `String`s.
enum Base64 {
    private static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let pad = UInt8(ascii: "=")

    static func encodedLength(_ count: Int) -> Int { (count + 2) / 3 * 4 }

    static func encode(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(encodedLength(bytes.count))
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            let b0 = UInt32(bytes[i])
            let b1 = n > 1 ? UInt32(bytes[i + 1]) : 0
            let b2 = n > 2 ? UInt32(bytes[i + 2]) : 0
            let v = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(v >> 18 & 0x3f)])
            out.append(alphabet[Int(v >> 12 & 0x3f)])
            out.append(n > 1 ? alphabet[Int(v >> 6 & 0x3f)] : pad)
            out.append(n > 2 ? alphabet[Int(v & 0x3f)] : pad)
            i += 3
        }
        return out
    }

    static func encode(_ bytes: [UInt8]) -> [UInt8] { bytes.withUnsafeBytes { encode($0) } }

    /// Decodes canonical base64; nil for a bad character, misplaced or missing padding, a length
    /// not a multiple of 4, or non-zero unused bits in the last character.
    static func decode(_ text: ArraySlice<UInt8>) -> [UInt8]? {
        guard text.count % 4 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(text.count / 4 * 3)
        var index = text.startIndex
        while index < text.endIndex {
            let isLast = text.endIndex - index == 4
            var v: UInt32 = 0
            var pads = 0
            for k in 0..<4 {
                let c = text[index + k]
                if c == pad {
                    // Padding only in the last quantum, only in its last two places, only trailing.
                    guard isLast, k >= 2 else { return nil }
                    pads += 1
                    v <<= 6
                } else {
                    guard pads == 0, let d = value(of: c) else { return nil }
                    v = v << 6 | UInt32(d)
                }
            }
            out.append(UInt8(v >> 16 & 0xff))
            if pads < 2 { out.append(UInt8(v >> 8 & 0xff)) }
            if pads < 1 { out.append(UInt8(v & 0xff)) }
            // Canonical form: the bits dropped by padding must be zero.
            if pads == 2 && v & 0xffff != 0 { secureZero(&out); return nil }
            if pads == 1 && v & 0xff != 0 { secureZero(&out); return nil }
            index += 4
        }
        return out
    }

    private static func value(of c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): return c - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): return c - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): return 62
        case UInt8(ascii: "/"): return 63
        default: return nil
        }
    }
}
