import Audit
import Identity
import Synchronization
import Transport

/// What other peers can make this peer spend, each bounded (issue #9 item 4). Counted for
/// introductions *to* us (responder side): our own `connect` calls are the application's to
/// bound. Defaults in docs/PEER.md; each is an option of `ocapn-uds peer`.
public struct PeerResourceLimits: Sendable, Equatable {
    /// Handshakes in progress for one claimed `from` key. With the total cap of
    /// `PeerNetlayer.Configuration.maxConcurrentHandshakes` (64) one initiator holds at most
    /// an eighth of the slots, so a flood from it never locks others out.
    public var maxHandshakesPerPeer: Int
    /// Open channels introduced to us, in total (legacy channels included).
    public var maxChannels: Int
    /// Open channels introduced to us by one verified key (legacy: one claimed key).
    public var maxChannelsPerPeer: Int
    /// Descriptors kept free below RLIMIT_NOFILE: introductions are refused before the process
    /// gets within this many of its limit, so a server can always still pass us a descriptor
    /// and we can always reconnect to a server (EMFILE/ENFILE never cost a registration).
    public var descriptorReserve: Int

    public init(maxHandshakesPerPeer: Int = 8, maxChannels: Int = 1024, maxChannelsPerPeer: Int = 256, descriptorReserve: Int = 32) {
        precondition(maxHandshakesPerPeer >= 1 && maxChannels >= 1 && maxChannelsPerPeer >= 1, "resource caps must be positive")
        precondition(descriptorReserve >= 4, "keep at least 4 descriptors in reserve")
        self.maxHandshakesPerPeer = maxHandshakesPerPeer
        self.maxChannels = maxChannels
        self.maxChannelsPerPeer = maxChannelsPerPeer
        self.descriptorReserve = descriptorReserve
    }
}

/// Counts what introductions to us hold, by claimed/verified key, and decides admission.
/// Thread-safe; every admission is matched by exactly one `handshakeEnded`.
final class PeerResourceGovernor: Sendable {
    struct Refusal: Sendable {
        let reason: AuditReason
        let detail: String
    }

    private struct Counts {
        var handshakes = 0
        var handshakesByPeer: [PublicIdentity: Int] = [:]
        var channels = 0
        var channelsByPeer: [PublicIdentity: Int] = [:]
        /// Descriptors open in the process at the last census, and what we held then.
        var censusOpen = 0
        var censusHeld = 0
    }

    let limits: PeerResourceLimits
    private let counts = Mutex(Counts())
    /// RLIMIT_NOFILE soft limit read when asked (nil: unknown, no descriptor check).
    private let descriptorLimit: @Sendable () -> Int?
    private let census: @Sendable () -> Int

    init(
        limits: PeerResourceLimits,
        descriptorLimit: @escaping @Sendable () -> Int? = PeerResourceGovernor.softDescriptorLimit,
        census: @escaping @Sendable () -> Int = { DescriptorCensus.openDescriptors().count }
    ) {
        self.limits = limits
        self.descriptorLimit = descriptorLimit
        self.census = census
        let open = census()
        counts.withLock { $0.censusOpen = open }
    }

    @Sendable static func softDescriptorLimit() -> Int? {
        guard let soft = try? OpenFileLimit.current().soft else { return nil }
        return soft > UInt64(Int.max) ? Int.max : Int(soft)
    }

    var handshakesInProgress: Int { counts.withLock { $0.handshakes } }
    var openChannels: Int { counts.withLock { $0.channels } }
    func openChannels(of key: PublicIdentity) -> Int { counts.withLock { $0.channelsByPeer[key, default: 0] } }

    /// Admits one introduction claiming `from` (whose descriptor we already hold), or says why
    /// not. Cheapest checks first; the descriptor census runs only near the limit.
    func admit(from key: PublicIdentity) -> Refusal? {
        let limit = descriptorLimit()
        return counts.withLock { c -> Refusal? in
            if c.handshakesByPeer[key, default: 0] >= limits.maxHandshakesPerPeer {
                return Refusal(reason: .runtime(.peerHandshakeLimit), detail: "\(limits.maxHandshakesPerPeer) handshakes already in progress for this key")
            }
            // Handshakes in progress count too: each may become a channel before it is counted.
            if c.channelsByPeer[key, default: 0] + c.handshakesByPeer[key, default: 0] >= limits.maxChannelsPerPeer {
                return Refusal(reason: .runtime(.peerChannelLimit), detail: "\(limits.maxChannelsPerPeer) channels already open with this key")
            }
            if c.channels + c.handshakes >= limits.maxChannels {
                return Refusal(reason: .runtime(.channelLimit), detail: "\(limits.maxChannels) channels open or being opened")
            }
            if let limit, let refusal = descriptorCheck(&c, limit: limit) { return refusal }
            c.handshakes += 1
            c.handshakesByPeer[key, default: 0] += 1
            return nil
        }
    }

    /// Estimated open descriptors = last census + what we took since; when the estimate comes
    /// within twice the reserve of the limit, count again (the application may have opened or
    /// closed files of its own). Each admission can cost one descriptor per side of a channel
    /// (ours is the passed one, already open), so the check keeps `reserve` free after it.
    private func descriptorCheck(_ c: inout Counts, limit: Int) -> Refusal? {
        let held = c.handshakes + c.channels
        var estimate = c.censusOpen + (held - c.censusHeld)
        if estimate + 2 * limits.descriptorReserve >= limit {
            c.censusOpen = census()
            c.censusHeld = held
            estimate = c.censusOpen
        }
        if estimate + limits.descriptorReserve >= limit {
            return Refusal(
                reason: .runtime(.descriptorReserve),
                detail: "\(estimate) of \(limit) descriptors open; \(limits.descriptorReserve) are kept for server connections")
        }
        return nil
    }

    /// The handshake admitted for `claimed` ended without a channel.
    func handshakeEnded(claimed: PublicIdentity) {
        counts.withLock { c in
            precondition(c.handshakes > 0, "handshake slot released twice")
            c.handshakes -= 1
            Self.decrement(&c.handshakesByPeer, claimed)
        }
    }

    /// The handshake admitted for `key` opened a channel: its slot becomes a channel slot in
    /// one step, so the two are never counted at once. Counted under the claim, which an
    /// authenticated channel proved (a legacy channel stays counted under its claim).
    func channelOpened(_ key: PublicIdentity) {
        counts.withLock { c in
            precondition(c.handshakes > 0, "a channel opened without its handshake slot")
            c.handshakes -= 1
            Self.decrement(&c.handshakesByPeer, key)
            c.channels += 1
            c.channelsByPeer[key, default: 0] += 1
        }
    }

    /// A channel counted by `channelOpened` ended.
    func channelEnded(_ key: PublicIdentity) {
        counts.withLock { c in
            precondition(c.channels > 0, "channel released twice")
            c.channels -= 1
            Self.decrement(&c.channelsByPeer, key)
        }
    }

    private static func decrement(_ table: inout [PublicIdentity: Int], _ key: PublicIdentity) {
        guard let n = table[key] else { preconditionFailure("released a slot never taken") }
        table[key] = n > 1 ? n - 1 : nil
    }
}

/// One admitted introduction's hold on the governor, from its handshake slot to its channel's
/// end. It is also the audit sink of that handshake: it passes every record to `inner` and
/// counts the channel open on `handshake.succeeded`/`legacy.admitted` and gone on
/// `channel.closed` (docs/AUDIT.md: at most one of each per attempt). The establishment's
/// return reports the outcome too (`opened()`/`failed()`); whichever comes first counts, so the
/// order in which the runtime writes records and returns never double-counts or leaks a slot.
final class AdmissionTicket: AuditSink {
    private enum Stage {
        case handshaking
        case open
        /// `channel.closed` came before anything said the channel opened.
        case endedEarly
        case ended
        /// The handshake slot was given back without a channel.
        case released
    }

    private let inner: (any AuditSink)?
    private let governor: PeerResourceGovernor
    private let key: PublicIdentity
    private let stage = Mutex(Stage.handshaking)

    init(inner: (any AuditSink)?, governor: PeerResourceGovernor, key: PublicIdentity) {
        self.inner = inner
        self.governor = governor
        self.key = key
    }

    func record(_ event: AuditEvent) {
        inner?.record(event)
        switch event.kind {
        case .handshakeSucceeded, .legacyPeerAdmitted: opened()
        case .channelClosed: ended()
        default: break
        }
    }

    /// The handshake produced a channel: its slot becomes a channel slot.
    func opened() {
        enum Step { case none, open, release }
        let step = stage.withLock { s -> Step in
            switch s {
            case .handshaking: s = .open; return .open
            case .endedEarly: s = .released; return .release
            case .open, .ended, .released: return .none
            }
        }
        switch step {
        case .open: governor.channelOpened(key)
        case .release: governor.handshakeEnded(claimed: key)
        case .none: break
        }
    }

    /// The handshake ended without a channel.
    func failed() {
        let release = stage.withLock { s -> Bool in
            switch s {
            case .handshaking, .endedEarly: s = .released; return true
            case .open, .ended, .released: return false
            }
        }
        if release { governor.handshakeEnded(claimed: key) }
    }

    private func ended() {
        let end = stage.withLock { s -> Bool in
            switch s {
            case .open: s = .ended; return true
            case .handshaking: s = .endedEarly; return false
            case .endedEarly, .ended, .released: return false
            }
        }
        if end { governor.channelEnded(key) }
    }
}

/// Logs refusals at warning level without letting a flood flood the log: the first of each
/// reason per second is logged, the rest counted and reported with the next one logged.
/// Every refusal is audited regardless (by the caller).
final class RefusalReporter: Sendable {
    private struct Slot {
        var lastLogged: ContinuousClock.Instant?
        var suppressed = 0
    }
    private let slots = Mutex<[AuditReason: Slot]>([:])
    private let interval: Duration

    init(interval: Duration = .seconds(1)) { self.interval = interval }

    /// Whether to log this refusal now, and how many were suppressed since the last logged one.
    func shouldLog(_ reason: AuditReason, now: ContinuousClock.Instant = .now) -> (log: Bool, suppressed: Int) {
        slots.withLock { s in
            var slot = s[reason, default: Slot()]
            defer { s[reason] = slot }
            if let last = slot.lastLogged, last.duration(to: now) < interval {
                slot.suppressed += 1
                return (false, 0)
            }
            let suppressed = slot.suppressed
            slot.lastLogged = now
            slot.suppressed = 0
            return (true, suppressed)
        }
    }
}
