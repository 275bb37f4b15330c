import SodiumCrypto
import Synchronization

/// The local identity a handshake runs under: the Ed25519 key pair plus its X25519 form,
/// converted once here so no handshake pays for it (PROTOCOL.md §4.1).
public struct HandshakeIdentity: Sendable {
    /// Raw 32-byte Ed25519 public key (the identity the peer expects).
    public let publicKey: [UInt8]
    let secretKey: SecretBytes
    let x25519Secret: SecretBytes
    let x25519Public: [UInt8]

    /// Checks that `secretKey` (libsodium's 64-byte seed ‖ public key form) really belongs to
    /// `publicKey` and that the key is a valid identity key; throws `invalidIdentityKey` if not.
    /// Costs one key derivation and one point conversion (≈ 45 µs), once per identity.
    public init(publicKey: [UInt8], secretKey: SecretBytes) throws(HandshakeError) {
        guard publicKey.count == Ed25519.publicKeyLength, secretKey.count == Ed25519.secretKeyLength else {
            throw HandshakeError.make(.invalidIdentityKey, "identity key lengths are 32 (public) and 64 (secret) bytes")
        }
        // Re-derive from the seed: a key file whose halves disagree would sign with the wrong key.
        let seed = secretKey.slice(0..<Ed25519.seedLength, guarded: true)
        guard let derived = try? Ed25519.keyPair(seed: seed), derived.publicKey == publicKey else {
            throw HandshakeError.make(.invalidIdentityKey, "secret key does not belong to the public key")
        }
        guard let x = try? Ed25519.publicKeyToX25519(publicKey) else {
            throw HandshakeError.make(.invalidIdentityKey, "own public key is not a valid prime-order point")
        }
        self.publicKey = publicKey
        self.secretKey = derived.secretKey
        self.x25519Secret = Ed25519.secretKeyToX25519(derived.secretKey)
        self.x25519Public = x
    }
}

/// A bounded, thread-safe cache of peer identity keys converted to X25519.
///
/// `crypto_sign_ed25519_pk_to_curve25519` costs about 31 µs (a sixth of a handshake), and a
/// daemon talks to the same peers again and again. Only successful conversions are cached, so
/// the cache also remembers "this key passed the identity-key validation". Eviction is FIFO:
/// simple, O(1), and an attacker filling the cache only costs honest peers one conversion.
public final class X25519KeyCache: Sendable {
    public static let defaultCapacity = 4096

    private struct Key: Hashable {
        let a: UInt64, b: UInt64, c: UInt64, d: UInt64
        init(_ bytes: [UInt8]) {
            precondition(bytes.count == 32, "cache keys are 32-byte public keys")
            (a, b, c, d) = bytes.withUnsafeBytes { r in
                (r.loadUnaligned(fromByteOffset: 0, as: UInt64.self), r.loadUnaligned(fromByteOffset: 8, as: UInt64.self),
                 r.loadUnaligned(fromByteOffset: 16, as: UInt64.self), r.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
            }
        }
    }

    private struct Storage {
        var entries: [Key: [UInt8]] = [:]
        var order: [Key] = []  // ring of insertion order
        var next = 0
    }

    public let capacity: Int
    private let storage = Mutex(Storage())

    public init(capacity: Int = X25519KeyCache.defaultCapacity) {
        precondition(capacity >= 1, "cache capacity must be positive")
        self.capacity = capacity
    }

    /// The X25519 form of an Ed25519 identity key, or nil when the key is not a valid identity
    /// key (wrong length, small-order, mixed-order or non-canonical point).
    public func x25519(forIdentity publicKey: [UInt8]) -> [UInt8]? {
        guard publicKey.count == Ed25519.publicKeyLength else { return nil }
        let key = Key(publicKey)
        if let hit = storage.withLock({ $0.entries[key] }) { return hit }
        // Convert outside the lock: it is the slow part and needs no shared state.
        guard let converted = try? Ed25519.publicKeyToX25519(publicKey) else { return nil }
        storage.withLock { s in
            guard s.entries[key] == nil else { return }
            if s.order.count < capacity {
                s.order.append(key)
            } else {
                s.entries[s.order[s.next]] = nil
                s.order[s.next] = key
                s.next = (s.next + 1) % capacity
            }
            s.entries[key] = converted
        }
        return converted
    }

    /// Number of cached keys (for metrics and tests).
    public var count: Int { storage.withLock { $0.entries.count } }
}

/// Where ephemeral X25519 private keys come from. Production uses `system`; tests and vector
/// generation inject fixed keys so transcripts are reproducible.
public struct EphemeralKeySource: Sendable {
    private let make: @Sendable () -> SecretBytes

    /// `make` must return a fresh 32-byte X25519 private key on every call.
    public init(_ make: @escaping @Sendable () -> SecretBytes) { self.make = make }

    /// The libsodium CSPRNG.
    public static let system = EphemeralKeySource { SecretBytes.random(count: X25519.keyLength) }

    func next() -> SecretBytes {
        let key = make()
        precondition(key.count == X25519.keyLength, "ephemeral key source returned a key that is not 32 bytes")
        return key
    }
}
