import Identity
import SecureChannel
import Synchronization

/// What an introduction server said a legacy (Goblins) peer is: the key its `from` named.
///
/// Not an identity. No handshake ran, so nothing about the peer is proved, and a lying server
/// picks this value freely. Its own type, with no conversion to `PublicIdentity` or
/// `VerifiedPeer` and a description that says so, so it cannot be passed where a proved key is
/// expected. Audited as `claimed_from` with `authenticated: false`.
public struct UnverifiedPeerClaim: Hashable, Sendable, CustomStringConvertible {
    /// The key the introduction claimed; use it only for display and for the legacy allow-list.
    public let claimedKey: PublicIdentity

    init(claimedKey: PublicIdentity) { self.claimedKey = claimedKey }

    public var description: String { "unverified claim \(claimedKey.fingerprint)" }
}

/// Which legacy (Goblins) peers, which run no handshake, are admitted as unauthenticated
/// channels. The check is against the server's *claim* (`UnverifiedPeerClaim`), so an allow-list
/// narrows what a lying server can make appear, it does not authenticate anyone.
public enum LegacyPeerPolicy: Sendable, Equatable {
    /// Refused with `legacyPeerRefused` (the default).
    case refuse
    /// Admitted only when the introduction claims one of these keys.
    case allow(Set<PublicIdentity>)
    /// Admitted whatever the claim (`--allow-legacy-peers any`).
    case any

    func admits(_ claim: UnverifiedPeerClaim) -> Bool {
        switch self {
        case .refuse: return false
        case let .allow(keys): return keys.contains(claim.claimedKey)
        case .any: return true
        }
    }
}

/// Keys that completed UDS-HS1 with this identity: such a key speaks the handshake, so a legacy
/// channel claiming it is a lie and is refused (`legacyKeyProvedBefore`) for the life of the
/// process. Bounded: once full, every legacy claim is refused (failing closed, never forgetting).
public final class VerifiedPeerMemory: Sendable {
    public static let defaultCapacity = 65536
    public let capacity: Int
    private let keys = Mutex<Set<[UInt8]>>([])

    public init(capacity: Int = VerifiedPeerMemory.defaultCapacity) {
        precondition(capacity >= 1, "the verified-peer memory needs room for one key")
        self.capacity = capacity
    }

    func remember(_ publicKey: [UInt8]) {
        keys.withLock { set in
            if set.count < capacity { set.insert(publicKey) }
        }
    }

    /// Whether a legacy channel claiming `claim` must be refused: the key proved itself before,
    /// or the memory is full and cannot tell.
    func refusesLegacy(_ claim: UnverifiedPeerClaim) -> Bool {
        keys.withLock { $0.count >= capacity || $0.contains(claim.claimedKey.publicKey) }
    }

    /// Keys remembered.
    public var count: Int { keys.withLock { $0.count } }
}
