import SodiumCrypto

/// Our own Ed25519 identity: the secret key plus the public identity it derives.
///
/// The secret key (libsodium's 64-byte seed ‖ public key form) lives only in guarded
/// `SecretBytes` (guard pages, locked, wiped on release). There is deliberately no way to print,
/// encode or read it out: callers sign, convert for a handshake, or write a key file
/// (`IdentityKeyFile`), nothing else.
public final class IdentityKeyPair: Sendable {
    /// Length of the seed a key pair is derived from (RFC 8032 private key).
    public static let seedLength = Ed25519.seedLength

    /// The public half, validated like any peer's.
    public let publicIdentity: PublicIdentity
    private let secretKey: SecretBytes

    private init(publicKey: [UInt8], secretKey: SecretBytes) {
        // A key derived from a seed is A = s·B with s a non-zero multiple of 8 below the group
        // order, so it is always a valid prime-order point: failing here is a libsodium bug.
        do {
            publicIdentity = try PublicIdentity(publicKey: publicKey)
        } catch {
            preconditionFailure("libsodium derived an invalid Ed25519 public key")
        }
        self.secretKey = secretKey
    }

    /// A fresh key pair from the system CSPRNG.
    public static func generate() -> IdentityKeyPair {
        let fresh = Ed25519.generate()
        return IdentityKeyPair(publicKey: fresh.publicKey, secretKey: fresh.secretKey)
    }

    /// The key pair of a 32-byte seed (RFC 8032 §5.1.5). The seed is copied; the caller keeps
    /// ownership of `seed`.
    public convenience init(seed: SecretBytes) throws(IdentityError) {
        guard seed.count == Self.seedLength else {
            throw IdentityError(.invalidSeed, "an Ed25519 seed is \(Self.seedLength) bytes, got \(seed.count)")
        }
        let pair: (publicKey: [UInt8], secretKey: SecretBytes)
        do {
            pair = try Ed25519.keyPair(seed: seed)
        } catch {
            preconditionFailure("seed length was checked above")
        }
        self.init(publicKey: pair.publicKey, secretKey: pair.secretKey)
    }

    /// Raw 32-byte public key.
    public var publicKey: [UInt8] { publicIdentity.publicKey }

    /// Deterministic pure Ed25519 signature (RFC 8032, no prehash, no context) over `message`.
    public func sign(_ message: [UInt8]) -> [UInt8] {
        Ed25519.sign(message, secretKey: secretKey)
    }

    /// Signs bytes lent by the caller without copying them.
    public func sign(_ message: UnsafeRawBufferPointer) -> [UInt8] {
        Ed25519.sign(message, secretKey: secretKey)
    }

    /// The X25519 scalar of this identity (RFC 7748 form of the Ed25519 secret), for handshakes
    /// that use the identity key in a Diffie-Hellman. Guarded; the caller owns it.
    public func x25519SecretKey() -> SecretBytes {
        Ed25519.secretKeyToX25519(secretKey)
    }

    /// Lends the 32-byte seed to the key-file writer only.
    func withSeed<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try secretKey.withUnsafeBytes { all in
            try body(UnsafeRawBufferPointer(rebasing: all[0..<Self.seedLength]))
        }
    }

    /// Whether two key pairs hold the same secret (constant time).
    public func hasSameSecret(as other: IdentityKeyPair) -> Bool {
        secretKey.constantTimeEquals(other.secretKey)
    }
}

extension IdentityKeyPair: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// Names the identity by fingerprint; the secret is never shown.
    public var description: String { "IdentityKeyPair(\(publicIdentity.fingerprint), secret redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["publicIdentity": publicIdentity], displayStyle: .class) }
}

extension SecretBytes {
    /// Copies lent bytes straight into secret storage. (`init(copying:)` takes a Sequence and
    /// goes through an intermediate array that is never wiped.)
    static func copy(of bytes: UnsafeRawBufferPointer, guarded: Bool = true) -> SecretBytes {
        let out = SecretBytes(count: bytes.count, guarded: guarded)
        out.withUnsafeMutableBytes { dst in
            if let base = bytes.baseAddress, bytes.count > 0 { dst.baseAddress!.copyMemory(from: base, byteCount: bytes.count) }
        }
        return out
    }
}
