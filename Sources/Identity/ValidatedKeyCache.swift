import Synchronization

/// Public keys already proved valid identity keys in this process.
///
/// Validating a key (`crypto_sign_ed25519_pk_to_curve25519`, a subgroup check) costs about
/// 31 µs, and every introduction names at least four keys (sender, target and their hints):
/// re-validating them dominated the cost of an introduction, on the server and on both peers.
/// Validity is a pure function of the bytes, so remembering a positive answer is safe; only
/// valid keys are remembered, so hostile input cannot fill the cache with refusals, and the
/// bounded FIFO keeps memory fixed whatever keys a peer sends.
final class ValidatedKeyCache: Sendable {
    static let shared = ValidatedKeyCache(capacity: 8192)

    private struct State {
        var members: Set<[UInt8]> = []
        var order: [[UInt8]] = []
        var next = 0
    }

    private let state = Mutex(State())
    let capacity: Int

    init(capacity: Int) {
        precondition(capacity > 0, "cache capacity must be positive")
        self.capacity = capacity
    }

    func contains(_ key: [UInt8]) -> Bool {
        state.withLock { $0.members.contains(key) }
    }

    func insert(_ key: [UInt8]) {
        state.withLock { s in
            guard !s.members.contains(key) else { return }
            if s.order.count < capacity {
                s.order.append(key)
            } else {
                s.members.remove(s.order[s.next])
                s.order[s.next] = key
                s.next = (s.next + 1) % capacity
            }
            s.members.insert(key)
        }
    }
}
