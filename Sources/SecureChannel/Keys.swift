import Dispatch
import Identity
import SodiumCrypto
import Synchronization

/// The static–static DH term of UDS-HS1, ss = DH(s_local, S_peer), kept per pair of identity
/// keys: it is the same for every handshake between the same two keys, so after the first one
/// a handshake spends one X25519 operation less per side, with not a byte changed on the wire.
///
/// Entries are keyed by both full 32-byte public keys (local, peer): a secret is never returned
/// for any other pair. A secret is remembered only once a handshake that used it has verified
/// the peer's signature, so unauthenticated peers cannot churn the cache. The secrets live in
/// one `GuardedBuffer` (sodium_malloc: guard pages, mlock, excluded from core dumps); an
/// evicted slot is wiped at once (then reused), and `removeAll()` or the cache's
/// release wipes all of them. Eviction is FIFO. Thread-safe.
public final class StaticSecretCache: Sendable {
    /// 1024 pairs: 32 KiB of guarded memory plus ≈ 100 bytes of index per pair.
    public static let defaultCapacity = 1024
    static let secretLength = X25519.keyLength

    struct Pair: Hashable {
        let local: IdentityKeyCache.Key
        let peer: IdentityKeyCache.Key
    }

    private struct State {
        var slots: [Pair: Int] = [:]
        var order: [Pair] = []  // ring of insertion order; order[i] lives in slot i
        var next = 0
    }

    public let capacity: Int
    private let secrets: GuardedBuffer
    private let state = Mutex(State())

    public init(capacity: Int = StaticSecretCache.defaultCapacity) {
        precondition(capacity >= 1, "cache capacity must be positive")
        self.capacity = capacity
        secrets = GuardedBuffer(count: capacity * Self.secretLength)
    }

    /// The cached ss of (local, peer) as a new secret, or nil.
    func secret(local: [UInt8], peer: [UInt8]) -> SecretBytes? {
        let pair = Pair(local: .init(local), peer: .init(peer))
        return state.withLock { s -> SecretBytes? in
            guard let slot = s.slots[pair] else { return nil }
            let out = SecretBytes(count: Self.secretLength)
            secrets.withReadable { src in
                out.withUnsafeMutableBytes { dst in
                    dst.baseAddress!.copyMemory(from: src.baseAddress! + slot * Self.secretLength, byteCount: Self.secretLength)
                }
            }
            return out
        }
    }

    /// Remembers ss for (local, peer), evicting (and wiping) the oldest pair when full.
    func remember(_ secret: SecretBytes, local: [UInt8], peer: [UInt8]) {
        precondition(secret.count == Self.secretLength, "ss is 32 bytes")
        let pair = Pair(local: .init(local), peer: .init(peer))
        state.withLock { s in
            guard s.slots[pair] == nil else { return }
            let slot: Int
            if s.order.count < capacity {
                slot = s.order.count
                s.order.append(pair)
            } else {
                slot = s.next
                s.slots[s.order[slot]] = nil
                s.order[slot] = pair
                s.next = (s.next + 1) % capacity
            }
            s.slots[pair] = slot
            secrets.withWritable { dst in
                // Wipe the evicted secret first, then write the new one in its place.
                secureZero(UnsafeMutableRawBufferPointer(rebasing: dst[slot * Self.secretLength..<(slot + 1) * Self.secretLength]))
                secret.withUnsafeBytes { src in
                    (dst.baseAddress! + slot * Self.secretLength).copyMemory(from: src.baseAddress!, byteCount: Self.secretLength)
                }
            }
        }
    }

    /// Forgets and wipes every secret (e.g. when an identity is retired).
    public func removeAll() {
        state.withLock { s in
            s = State()
            secrets.withWritable { secureZero($0) }
        }
    }

    /// Number of cached pairs.
    public var count: Int { state.withLock { $0.slots.count } }

    /// The raw table (tests of wiping).
    func tableForTesting() -> [UInt8] {
        state.withLock { _ in secrets.withReadable { Array($0) } }
    }
}

/// One ephemeral X25519 key pair.
struct EphemeralKeyPair: Sendable {
    let secret: SecretBytes
    let publicKey: [UInt8]

    init(secret: SecretBytes) {
        precondition(secret.count == X25519.keyLength, "ephemeral key source returned a key that is not 32 bytes")
        self.secret = secret
        publicKey = X25519.publicKey(secret: secret)
    }

    static func generate() -> EphemeralKeyPair { EphemeralKeyPair(secret: SecretBytes.random(count: X25519.keyLength)) }
}

/// Where ephemeral X25519 key pairs come from. Production uses `pooled` (or `system`); tests
/// and vector generation inject fixed keys so transcripts are reproducible.
public struct EphemeralKeySource: Sendable {
    private let make: @Sendable () -> EphemeralKeyPair

    /// `make` must return a fresh 32-byte X25519 private key on every call.
    /// The same fixed private key every time: for published vectors only (tests, vector checks
    /// and the fuzz package replay exact transcripts with it).
    @_spi(TestVectors) public static func vector(_ secret: [UInt8]) -> EphemeralKeySource {
        precondition(secret.count == X25519.keyLength, "an X25519 private key is 32 bytes")
        return EphemeralKeySource { SecretBytes(copying: secret) }
    }

    package init(_ make: @escaping @Sendable () -> SecretBytes) { self.make = { EphemeralKeyPair(secret: make()) } }

    private init(pairs: @escaping @Sendable () -> EphemeralKeyPair) { make = pairs }

    /// The libsodium CSPRNG, one key pair made on demand.
    public static let system = EphemeralKeySource(pairs: EphemeralKeyPair.generate)

    /// Key pairs made ahead of time by `pool`.
    public static func pool(_ pool: EphemeralKeyPool) -> EphemeralKeySource { EphemeralKeySource(pairs: pool.take) }

    /// The process-wide pool (`EphemeralKeyPool.shared`).
    public static let pooled = EphemeralKeySource.pool(.shared)

    func next() -> EphemeralKeyPair { make() }
}

/// Ephemeral X25519 key pairs made ahead of time (one key generation, ≈ 25 µs, off each
/// handshake's critical path). Each pair is handed out once and wiped when the handshake drops
/// it; pairs waiting in the pool sit in guarded memory. Taking a pair that leaves the pool
/// under half full schedules a refill on a background queue; an empty pool makes a pair on the
/// spot, so a burst is never slower than without a pool. Thread-safe.
public final class EphemeralKeyPool: Sendable {
    /// 16 pairs (≈ 2 KiB): a burst of 16 handshakes, then refills at ≈ 40,000 pairs/s per core.
    public static let defaultCapacity = 16
    public static let shared = EphemeralKeyPool()

    private struct State {
        var pairs: [EphemeralKeyPair] = []
        var refilling = false
        var misses = 0
    }

    public let capacity: Int
    private let state = Mutex(State())
    private let queue = DispatchQueue(label: "ocapn-uds.ephemeral-pool", qos: .utility)

    public init(capacity: Int = EphemeralKeyPool.defaultCapacity) {
        precondition(capacity >= 1, "pool capacity must be positive")
        self.capacity = capacity
    }

    /// Schedules a fill now (a runtime calls it at start so the first handshakes find pairs).
    public func prefill() { scheduleRefill(force: true) }

    /// Pairs ready now.
    public var available: Int { state.withLock { $0.pairs.count } }

    /// Pairs made on the spot because the pool was empty.
    public var misses: Int { state.withLock { $0.misses } }

    /// Drops and wipes every waiting pair.
    public func removeAll() { state.withLock { $0.pairs.removeAll() } }

    func take() -> EphemeralKeyPair {
        let pair = state.withLock { s -> EphemeralKeyPair? in
            let p = s.pairs.popLast()
            if p == nil { s.misses += 1 }
            return p
        }
        scheduleRefill(force: false)
        return pair ?? EphemeralKeyPair.generate()
    }

    private func scheduleRefill(force: Bool) {
        let start = state.withLock { s -> Bool in
            guard !s.refilling, force || s.pairs.count < (capacity + 1) / 2 else { return false }
            s.refilling = true
            return true
        }
        guard start else { return }
        queue.async { [self] in
            while true {
                let pair = EphemeralKeyPair.generate()
                let more = state.withLock { s -> Bool in
                    if s.pairs.count < capacity { s.pairs.append(pair) }
                    if s.pairs.count < capacity { return true }
                    s.refilling = false
                    return false
                }
                if !more { return }
            }
        }
    }
}
