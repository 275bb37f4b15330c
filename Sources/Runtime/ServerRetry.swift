/// How a peer retries an introduction server that failed, refused or displaced it: capped
/// exponential backoff with jitter, and when to call the server contested (issue #9 item 5,
/// issue #11 item 3). Defaults are documented in docs/PEER.md.
public struct ReconnectPolicy: Sendable, Equatable {
    /// Delay before the first retry.
    public var initialDelay: Duration
    /// The delay doubles per consecutive failure up to this cap.
    public var maximumDelay: Duration
    /// Fraction of each delay drawn at random (0…1): the delay is `base × (1 − jitter × u)`,
    /// u uniform in [0, 1), so peers displaced together do not come back in step.
    public var jitter: Double
    /// A registration that lasted at least this long counts as stable: when it ends, the
    /// backoff and the displacement count start over.
    public var stableAfter: Duration
    /// Registrations lost or refused in a row (none stable in between) before the server is
    /// reported as contested.
    public var contestedAfter: Int

    public init(
        initialDelay: Duration = .milliseconds(100), maximumDelay: Duration = .seconds(30), jitter: Double = 0.5,
        stableAfter: Duration = .seconds(30), contestedAfter: Int = 3
    ) {
        precondition(initialDelay > .zero && maximumDelay >= initialDelay, "backoff delays must be positive, initial ≤ maximum")
        precondition((0...1).contains(jitter), "jitter is a fraction in 0...1")
        precondition(stableAfter >= .zero && contestedAfter >= 1, "stableAfter ≥ 0, contestedAfter ≥ 1")
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.jitter = jitter
        self.stableAfter = stableAfter
        self.contestedAfter = contestedAfter
    }

    /// The delay before retry number `failures` (1 = the first retry) for a random `unit` in
    /// [0, 1): `min(maximum, initial × 2^(failures−1)) × (1 − jitter × unit)`.
    public func delay(afterFailures failures: Int, unit: Double) -> Duration {
        precondition(failures >= 1, "a delay follows at least one failure")
        let u = min(max(unit, 0), 1)
        var base = initialDelay
        var doublings = failures - 1
        while doublings > 0 && base < maximumDelay {
            base = base * 2
            doublings -= 1
        }
        base = min(base, maximumDelay)
        return base * (1 - jitter * u)
    }
}

/// How one attempt to hold a registration ended.
public enum ServerFailureKind: String, Sendable, Equatable {
    /// The socket could not be reached (no such path, refused, connect deadline).
    case unreachable
    /// The server answered but failed our checks (bad server signature, pinned key mismatch)
    /// or never answered (registration deadline): not a contest for our key.
    case rejectedServer
    /// The server closed our connection before registering us.
    case refused
    /// The server ended a registration it had accepted (displaced by another connection for
    /// our key, or the server went away).
    case lost
}

/// What to do after a failure.
public struct RetryDecision: Sendable, Equatable {
    /// Wait this long before the next attempt.
    public let delay: Duration
    /// Consecutive failures so far (1 for the first).
    public let consecutiveFailures: Int
    /// Registrations refused or lost in a row without a stable one in between.
    public let consecutiveLosses: Int
    /// True exactly once, at the failure that made the server contested.
    public let becameContested: Bool

    /// `delay` in whole milliseconds (for log and CLI lines).
    public var delayMilliseconds: Int64 {
        let (seconds, attoseconds) = delay.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}

/// Sans-IO retry state for one server: events in (registered, failed) with the time and a
/// random unit injected, decisions out. The netlayer's keeper drives one per server.
public struct ServerRetryState: Sendable {
    public let policy: ReconnectPolicy
    public private(set) var consecutiveFailures = 0
    public private(set) var consecutiveLosses = 0
    /// Reported contested and not stable since.
    public private(set) var isContested = false
    private var registeredAt: ContinuousClock.Instant?

    public init(policy: ReconnectPolicy = ReconnectPolicy()) { self.policy = policy }

    /// The server registered us at `now`.
    public mutating func registered(at now: ContinuousClock.Instant) {
        registeredAt = now
    }

    /// An attempt ended with `kind` at `now`; `unit` is a random number in [0, 1).
    public mutating func failed(_ kind: ServerFailureKind, at now: ContinuousClock.Instant, unit: Double) -> RetryDecision {
        if let since = registeredAt {
            registeredAt = nil
            if kind == .lost && since.duration(to: now) >= policy.stableAfter {
                consecutiveFailures = 0
                consecutiveLosses = 0
                isContested = false
            }
        }
        consecutiveFailures += 1
        var becameContested = false
        switch kind {
        case .refused, .lost:
            consecutiveLosses += 1
            if consecutiveLosses >= policy.contestedAfter && !isContested {
                isContested = true
                becameContested = true
            }
        case .unreachable, .rejectedServer:
            break
        }
        return RetryDecision(
            delay: policy.delay(afterFailures: consecutiveFailures, unit: unit), consecutiveFailures: consecutiveFailures,
            consecutiveLosses: consecutiveLosses, becameContested: becameContested)
    }
}
