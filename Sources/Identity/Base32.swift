/// RFC 4648 base32, lowercase, no padding: the OCapN designator alphabet.
public enum Base32 {
    static let alphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity((bytes.count * 8 + 4) / 5)
        var buffer: UInt32 = 0
        var bits = 0
        for b in bytes {
            buffer = (buffer << 8) | UInt32(b)
            bits += 8
            while bits >= 5 {
                bits -= 5
                out.append(alphabet[Int((buffer >> UInt32(bits)) & 0x1f)])
            }
        }
        if bits > 0 { out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 0x1f)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Why a string is not canonical base32.
    public enum DecodeFailure: Error, Equatable, Sendable, CustomStringConvertible {
        case invalidCharacter(position: Int, character: Character)
        case invalidLength(Int)
        case nonZeroTrailingBits

        public var description: String {
            switch self {
            case let .invalidCharacter(p, c):
                let hint: String
                if c == "=" { hint = " (padding is not allowed)" }
                else if c.isUppercase { hint = " (uppercase is not allowed; designators are lowercase)" }
                else if c == "-" { hint = " ('-' separators are not allowed)" }
                else { hint = "" }
                return "character \(String(reflecting: c)) at position \(p) is not in the lowercase RFC 4648 base32 alphabet\(hint)"
            case let .invalidLength(n): return "length \(n) is not a possible unpadded base32 length"
            case .nonZeroTrailingBits: return "the unused trailing bits of the last character are not zero (non-canonical)"
            }
        }
    }

    /// Strict decoding: only the canonical form of some byte string is accepted.
    public static func decode(_ text: String) -> Result<[UInt8], DecodeFailure> {
        var out = [UInt8]()
        out.reserveCapacity(text.utf8.count * 5 / 8)
        var buffer: UInt32 = 0
        var bits = 0
        var count = 0
        // Works on UTF-8 bytes (hot path: every designator on every introduction); the
        // character is only looked up to explain a failure.
        for a in text.utf8 {
            guard let v = value(of: a) else {
                // Every byte before this one was an ASCII alphabet character, so the byte
                // offset is also the character position.
                let character = text[text.index(text.startIndex, offsetBy: count)]
                return .failure(.invalidCharacter(position: count, character: character))
            }
            buffer = (buffer << 5) | UInt32(v)
            bits += 5
            count += 1
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((buffer >> UInt32(bits)) & 0xff))
            }
        }
        // Unpadded lengths mod 8 that encode whole bytes: 0, 2, 4, 5, 7.
        guard [0, 2, 4, 5, 7].contains(count % 8) else { return .failure(.invalidLength(count)) }
        if bits > 0 && (buffer & ((1 << UInt32(bits)) - 1)) != 0 { return .failure(.nonZeroTrailingBits) }
        return .success(out)
    }

    private static func value(of a: UInt8) -> UInt8? {
        switch a {
        case 0x61...0x7a: return a - 0x61
        case 0x32...0x37: return a - 0x32 + 26
        default: return nil
        }
    }
}
