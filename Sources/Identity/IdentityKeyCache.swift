import SodiumCrypto
import Synchronization

/// Identity keys proved valid in this process, each with its X25519 form: the one key cache of
/// the package (identity validation and the handshake's static-key conversion share it).
///
/// Validating a key (`crypto_sign_ed25519_pk_to_curve25519`, a subgroup check) costs about
/// 31 µs and yields the key's X25519 form, which UDS-HS1 needs for its DH terms. Every
/// introduction names at least four keys, and a peer meets the same keys again and again, so
/// `PublicIdentity` and the handshake machines both ask this cache and a key is converted once
/// per process, not once per use. Validity is a pure function of the bytes, so remembering a
/// positive answer is safe; only valid keys are remembered, so hostile input cannot fill the
/// cache with refusals. Eviction is FIFO (O(1)); an attacker filling it only costs honest peers
/// one conversion each. Public values only: no secret is stored here.
public final class IdentityKeyCache: Sendable {
    /// Entries of `shared` (≈ 100 bytes each: 800 KiB when full).
    public static let defaultCapacity = 8192
    /// The process-wide cache `PublicIdentity` uses; the runtime's handshakes use it too.
    public static let shared = IdentityKeyCache()

    /// A 32-byte public key as four words: hashing and comparing it is cheap (the whole key).
    package struct Key: Hashable, Sendable {
        let a: UInt64, b: UInt64, c: UInt64, d: UInt64
        package init(_ bytes: [UInt8]) {
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

    public init(capacity: Int = IdentityKeyCache.defaultCapacity) {
        precondition(capacity >= 1, "cache capacity must be positive")
        self.capacity = capacity
    }

    /// The X25519 form of an identity key, or nil when the key is not a valid identity key
    /// (wrong length, non-canonical encoding, small-order or mixed-order point).
    public func x25519(forIdentity publicKey: [UInt8]) -> [UInt8]? {
        guard publicKey.count == Ed25519.publicKeyLength else { return nil }
        let key = Key(publicKey)
        if let hit = storage.withLock({ $0.entries[key] }) { return hit }
        // Convert outside the lock: it is the slow part and needs no shared state.
        guard Ed25519.isCanonicalEncoding(publicKey), let converted = try? Ed25519.publicKeyToX25519(publicKey) else { return nil }
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

    /// Whether `publicKey` is a valid identity key (the same test, cached the same way).
    public func isValidIdentityKey(_ publicKey: [UInt8]) -> Bool { x25519(forIdentity: publicKey) != nil }

    /// Whether `publicKey` is cached now (tests).
    func contains(_ publicKey: [UInt8]) -> Bool {
        publicKey.count == 32 && storage.withLock { $0.entries[Key(publicKey)] != nil }
    }

    /// Number of cached keys (for metrics and tests).
    public var count: Int { storage.withLock { $0.entries.count } }
}
