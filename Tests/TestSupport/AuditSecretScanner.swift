import Audit
import Identity
import SodiumCrypto

/// Scans audit records for known key material: the check that no record ever carries a secret.
///
/// Give it every secret a test or integration run used (identity seeds and secret keys,
/// ephemeral secrets, session keys); it looks for each as raw bytes, hex (either case), base64
/// and base64url at every byte alignment, and base32 (either case) at every alignment, plus
/// every 16-byte window of the raw and hex forms (a leaked half key is still a leak).
///
/// The scanner holds encodings of the secrets, so it lives in TestSupport, never in a product.
public struct AuditSecretScanner: Sendable {
    /// Shortest secret accepted: shorter needles would match by chance.
    public static let minimumSecretLength = 16
    public static let windowLength = 16

    /// A secret found in scanned data.
    public struct Hit: Sendable, Hashable, CustomStringConvertible {
        /// Index of the secret in the list given to `init`.
        public let secretIndex: Int
        /// "raw", "hex", "HEX", "base64", "base64url", "base32", "BASE32", "raw-window", "hex-window".
        public let encoding: String
        /// Where, when scanning files.
        public let location: AuditLocation?
        public var description: String {
            "secret #\(secretIndex) as \(encoding)" + (location.map { " at \($0)" } ?? "")
        }
    }

    private let needles: [(secret: Int, encoding: String, bytes: [UInt8])]

    public init(secrets: [[UInt8]]) {
        var n: [(Int, String, [UInt8])] = []
        for (i, s) in secrets.enumerated() {
            precondition(s.count >= Self.minimumSecretLength, "secrets to scan for must be at least 16 bytes")
            let hex = Array(Hex.encode(s).utf8)
            n.append((i, "raw", s))
            n.append((i, "hex", hex))
            n.append((i, "HEX", hex.map { $0 >= 0x61 ? $0 - 0x20 : $0 }))
            for k in 0..<3 {
                let std = Self.stableBase64(s, alignment: k)
                n.append((i, "base64", std))
                n.append((i, "base64url", std.map { $0 == 0x2b ? 0x2d : $0 == 0x2f ? 0x5f : $0 }))
            }
            for k in 0..<5 {
                let b32 = Self.stableBase32(s, alignment: k)
                n.append((i, "base32", b32))
                n.append((i, "BASE32", b32.map { $0 >= 0x61 ? $0 - 0x20 : $0 }))
            }
            if s.count > Self.windowLength {
                for start in 0...(s.count - Self.windowLength) {
                    let w = Array(s[start..<(start + Self.windowLength)])
                    n.append((i, "raw-window", w))
                    n.append((i, "hex-window", Array(Hex.encode(w).utf8)))
                }
            }
        }
        needles = n
    }

    /// Copies each secret's bytes for scanning (see the note on the type).
    package init(secrets: [SecretBytes]) {
        self.init(secrets: secrets.map { s in s.withUnsafeBytes { Array($0) } })
    }

    /// Secrets found in `data`, one hit per secret and encoding.
    public func scan(_ data: [UInt8], location: AuditLocation? = nil) -> [Hit] {
        var hits: [Hit] = []
        var seen = Set<String>()
        for nd in needles where Self.contains(data, nd.bytes) {
            let key = "\(nd.secret)/\(nd.encoding)"
            if seen.insert(key).inserted { hits.append(Hit(secretIndex: nd.secret, encoding: nd.encoding, location: location)) }
        }
        return hits
    }

    public func scan(text: String) -> [Hit] { scan(Array(text.utf8)) }

    /// Scans every line of every file, torn lines included.
    public func scan(files: [String]) throws(AuditError) -> [Hit] {
        var hits: [Hit] = []
        for p in files {
            let r = try AuditLineReader(path: p)
            while let line = try r.next() {
                hits += scan(line.bytes, location: AuditLocation(file: p, line: line.number))
            }
        }
        return hits
    }

    private static func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, hay.count >= needle.count else { return false }
        let first = needle[0]
        var i = 0
        let end = hay.count - needle.count
        while i <= end {
            if hay[i] == first && hay[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }

    private static let b64 = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    private static let b32 = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)

    /// The characters of `bits`-wide groups that depend only on the secret when it starts
    /// `alignment` bytes into the encoded data (so the same secret is found wherever it sits).
    private static func stableGroups(_ s: [UInt8], alignment k: Int, bits: Int, alphabet: [UInt8]) -> [UInt8] {
        let data = [UInt8](repeating: 0, count: k) + s
        var out: [UInt8] = []
        var acc: UInt32 = 0
        var have = 0
        var bitPos = 0
        let lo = 8 * k, hi = 8 * data.count
        for b in data {
            acc = acc << 8 | UInt32(b)
            have += 8
            while have >= bits {
                have -= bits
                let v = Int((acc >> UInt32(have)) & UInt32((1 << bits) - 1))
                if bitPos >= lo && bitPos + bits <= hi { out.append(alphabet[v]) }
                bitPos += bits
            }
            acc &= (1 << UInt32(have)) - 1
        }
        return out
    }

    private static func stableBase64(_ s: [UInt8], alignment: Int) -> [UInt8] {
        stableGroups(s, alignment: alignment, bits: 6, alphabet: b64)
    }

    private static func stableBase32(_ s: [UInt8], alignment: Int) -> [UInt8] {
        stableGroups(s, alignment: alignment, bits: 5, alphabet: b32)
    }
}
