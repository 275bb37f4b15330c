import SodiumCrypto

/// A peer's public identity: a validated Ed25519 public key.
///
/// Construction checks that the key converts to X25519 (libsodium refuses small-order,
/// mixed-order and non-canonical points), so every value of this type can take part in a
/// handshake. Compare identities by key bytes, never by designator spelling.
public struct PublicIdentity: Hashable, Sendable, CustomStringConvertible {
    public static let keyLength = 32
    public static let designatorLength = 52

    /// Raw 32-byte Ed25519 public key.
    public let publicKey: [UInt8]

    public init(publicKey: [UInt8]) throws(IdentityError) {
        guard publicKey.count == Self.keyLength else {
            throw IdentityError(.invalidPublicKey, "an Ed25519 public key is 32 bytes, got \(publicKey.count)")
        }
        // The cache keeps the key's X25519 form too, so the handshake does not convert it again.
        guard IdentityKeyCache.shared.isValidIdentityKey(publicKey) else {
            throw IdentityError(.invalidPublicKey, "not a valid Ed25519 identity key (small-order, mixed-order or non-canonical point)")
        }
        self.publicKey = publicKey
    }

    /// Parses a canonical designator: 52 lowercase base32 characters of the raw key, no padding.
    public init(designator: String) throws(IdentityError) {
        // utf8.count is O(1) for native strings; a non-ASCII string fails the alphabet check anyway.
        guard designator.utf8.count == Self.designatorLength else {
            throw IdentityError(.invalidDesignator, "a designator is \(Self.designatorLength) characters, got \(designator.count)")
        }
        switch Base32.decode(designator) {
        case let .failure(why):
            throw IdentityError(.invalidDesignator, "designator is not canonical base32: \(why)")
        case let .success(bytes):
            try self.init(publicKey: bytes)
        }
    }

    public static func == (lhs: PublicIdentity, rhs: PublicIdentity) -> Bool { lhs.publicKey == rhs.publicKey }

    /// The key's 32 bytes in one call: routing tables look keys up on every introduction, and
    /// `[UInt8]`'s own hashing feeds the hasher a byte at a time.
    public func hash(into hasher: inout Hasher) {
        publicKey.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    /// Base32 (RFC 4648, lowercase, unpadded) of the raw public key, as OCapN uses it.
    public var designator: String { Base32.encode(publicKey) }

    /// Short human fingerprint; see `Fingerprint`.
    public var fingerprint: String { Fingerprint.of(publicKey: publicKey) }

    public var description: String { fingerprint }

    /// Verifies a raw Ed25519 signature by this identity.
    public func verify(signature: [UInt8], message: [UInt8]) -> Bool {
        Ed25519.verify(signature: signature, message: message, publicKey: publicKey)
    }
}

/// The human fingerprint of an identity (SECURITY.md, "Fingerprints").
///
/// `fp1:` followed by the first 15 bytes of BLAKE2b-256("ocapn-uds fingerprint v1" ‖ 0x00 ‖ key),
/// in lowercase base32 (24 characters), grouped by four with `-`:
/// `fp1:xxxx-xxxx-xxxx-xxxx-xxxx-xxxx`. 120 bits resist second preimages; the prefix names the
/// version so the scheme can change without ambiguity.
public enum Fingerprint {
    public static let prefix = "fp1:"
    static let domain = Array("ocapn-uds fingerprint v1".utf8) + [0]

    public static func of(publicKey: [UInt8]) -> String {
        let digest = BLAKE2b.hash(domain + publicKey, outputLength: 32)
        let text = Array(Base32.encode(Array(digest[0..<15])))
        var groups: [String] = []
        var i = 0
        while i < text.count {
            groups.append(String(text[i..<min(i + 4, text.count)]))
            i += 4
        }
        return prefix + groups.joined(separator: "-")
    }

    /// Whether `text` has the shape of a fingerprint (for argument validation).
    public static func isWellFormed(_ text: String) -> Bool {
        guard text.hasPrefix(prefix) else { return false }
        let body = text.dropFirst(prefix.count).split(separator: "-", omittingEmptySubsequences: false)
        guard body.count == 6, body.allSatisfy({ $0.count == 4 }) else { return false }
        return body.allSatisfy { g in g.allSatisfy { c in Base32.alphabet.contains(c.asciiValue ?? 0) } }
    }
}
