import SodiumCrypto

/// Our own Ed25519 identity: the one holder of the identity secret in this package.
///
/// The secret key (libsodium's 64-byte seed ‖ public key form) and its X25519 form, derived
/// once here for UDS-HS1's DH terms (PROTOCOL.md §4.1), live only in guarded, read-only
/// `SecretBytes` (guard pages, locked, excluded from core dumps, wiped on release). There is
/// deliberately no way to print, encode or read them out, and no general-purpose `sign`: the
/// key signs exactly the four messages of `SignedMessage`, one operation per purpose, each
/// building its own bytes, so no caller can make it sign anything else. Handshakes, registration
/// machines and the audit log all take this type itself, never a copy of its secret.
public final class IdentityKeyPair: Sendable {
    /// Length of the seed a key pair is derived from (RFC 8032 private key).
    public static let seedLength = Ed25519.seedLength

    /// The public half, validated like any peer's.
    public let publicIdentity: PublicIdentity
    // Both secrets are internal (not private) only so that tests, through `@testable`, can
    // forge messages a correct peer never makes and drive the plain Noise pattern with them.
    let secretKey: SecretBytes
    /// The X25519 scalar of `secretKey`, for the handshake's static DH terms.
    let handshakeSecret: SecretBytes
    /// The X25519 form of the public key: the static key UDS-HS1 mixes into its transcript.
    package let handshakePublicKey: [UInt8]

    private init(publicKey: [UInt8], secretKey: SecretBytes) {
        // A key derived from a seed is A = s·B with s a non-zero multiple of 8 below the group
        // order, so it is always a valid prime-order point: failing here is a libsodium bug.
        do {
            publicIdentity = try PublicIdentity(publicKey: publicKey)
        } catch {
            preconditionFailure("libsodium derived an invalid Ed25519 public key")
        }
        guard let x = IdentityKeyCache.shared.x25519(forIdentity: publicKey) else {
            preconditionFailure("a validated identity key has an X25519 form")
        }
        handshakePublicKey = x
        // Written once, read by every signature and handshake: read-only pages, so a stray
        // write faults instead of corrupting the key.
        secretKey.makeReadOnly()
        // The X25519 form sits in a slot of the guarded slab (locked, kept out of core dumps,
        // guard pages around the slab, wiped on release), not read-only: slots share pages.
        let handshakeSecret = Ed25519.secretKeyToX25519(secretKey)
        self.secretKey = secretKey
        self.handshakeSecret = handshakeSecret
    }

    /// A fresh key pair from the system CSPRNG.
    public static func generate() -> IdentityKeyPair {
        let fresh = Ed25519.generate()
        return IdentityKeyPair(publicKey: fresh.publicKey, secretKey: fresh.secretKey)
    }

    /// The key pair of a 32-byte seed (RFC 8032 §5.1.5). The seed is copied; the caller keeps
    /// ownership of `seed`.
    package convenience init(seed: SecretBytes) throws(IdentityError) {
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

    /// The key pair of a seed published in a test vector (the fuzz package, a separate package,
    /// replays the vectors' identities with it). Real identities come from `generate()` or a
    /// key file.
    @_spi(TestVectors) public convenience init(vectorSeed seed: [UInt8]) throws(IdentityError) {
        try self.init(seed: SecretBytes(copying: seed, guarded: true))
    }

    /// Raw 32-byte public key.
    public var publicKey: [UInt8] { publicIdentity.publicKey }

    /// Whether two key pairs hold the same secret (constant time).
    public func hasSameSecret(as other: IdentityKeyPair) -> Bool {
        secretKey.constantTimeEquals(other.secretKey)
    }

    /// Lends the 32-byte seed to the key-file writer only.
    func withSeed<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try secretKey.withUnsafeBytes { all in
            try body(UnsafeRawBufferPointer(rebasing: all[0..<Self.seedLength]))
        }
    }
}

// MARK: - The purposes the key serves

extension IdentityKeyPair {
    /// Registration, Goblins form: the other side's raw 64-byte challenge, no context
    /// (OCapN's `sign(_: Challenge)` is the typed entry point).
    package func signRegistrationChallenge(_ challenge: [UInt8]) -> [UInt8] {
        precondition(challenge.count == SignedMessage.challengeLength, "a registration challenge is 64 bytes")
        return Ed25519.sign(challenge, secretKey: secretKey)
    }

    /// Registration v2: the transcript of `role`, with this identity in that role's key slot
    /// and `peer` in the other.
    package func signRegistrationTranscript(
        _ role: SignedMessage.RegistrationRole, peer: PublicIdentity, clientChallenge: [UInt8], serverChallenge: [UInt8]
    ) -> [UInt8] {
        let message = SignedMessage.registrationTranscript(
            role, server: role == .server ? publicIdentity : peer, client: role == .client ? publicIdentity : peer,
            clientChallenge: clientChallenge, serverChallenge: serverChallenge)
        return Ed25519.sign(message, secretKey: secretKey)
    }

    /// UDS-HS1: `role`'s signature over the 32-byte handshake hash it commits to.
    package func signHandshakeTranscript(_ role: SignedMessage.HandshakeRole, hash: [UInt8]) -> [UInt8] {
        Ed25519.sign(SignedMessage.handshakeTranscript(role, hash: hash), secretKey: secretKey)
    }

    /// An audit checkpoint (or closing/handover record): `recordLine` is the record's line
    /// without its signature field and newline.
    package func signAuditCheckpoint<Line: Collection<UInt8>>(recordLine: Line) -> [UInt8] {
        Ed25519.sign(SignedMessage.auditCheckpoint(recordLine: recordLine), secretKey: secretKey)
    }

    /// UDS-HS1's static DH term with a peer's X25519 key, DH(s, peer): nil when libsodium
    /// refuses the point (an all-zero result). The result is a fresh secret the caller owns.
    package func handshakeAgreement(with peerX25519: [UInt8]) -> SecretBytes? {
        try? X25519.sharedSecret(secret: handshakeSecret, publicKey: peerX25519)
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
