import Errors
import Identity
import Syrup

/// One control connection of the introduction server; assigned by the runtime, never reused
/// within a run.
public struct IntroductionServerConnectionID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "c\(rawValue)" }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// SO_PEERCRED of a control connection, as the kernel reported it at accept: a hint for logs,
/// audit and the uid policy, never an identity.
public struct IntroductionServerCredentials: Hashable, Sendable, CustomStringConvertible {
    public let pid: Int32
    public let uid: UInt32
    public let gid: UInt32
    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
    public var description: String { "pid=\(pid) uid=\(uid) gid=\(gid)" }
}

/// Stable reason codes of the introduction server. The raw values are the audit log's reason
/// codes (docs/AUDIT.md, docs/INTRO-SERVER.md), so the runtime maps them one to one.
public enum IntroductionServerReason: String, ErrorCode {
    /// A registration signature (or signed payload) that does not verify.
    case badSignature
    /// A registration challenge that is not exactly 64 bytes: never signed.
    case challengeLength
    /// Bytes that are not canonical Syrup, or not the message the state allows.
    case malformedMessage
    /// A message over the size, depth or count limits.
    case messageTooLarge
    /// `uds:new-connection` whose `from` is not the sender's registered identity.
    case spoofedFrom
    /// The marker after `uds:new-connection` carried no descriptor.
    case fdMissing
    /// The passed descriptor is not a connected, unnamed AF_UNIX stream socket.
    case fdInvalid
    /// A descriptor where none belongs, more than one, or MSG_CTRUNC.
    case extraFds
    /// No verified `uds:signature` within the absolute registration deadline.
    case registrationTimeout
    /// The connection cap was reached.
    case tooManyClients
    /// The cap on connections that have not registered yet was reached.
    case tooManyUnauthenticated
    /// An unauthenticated connection, the oldest, was closed to make room for a new one when
    /// the unauthenticated slots (of its uid, or in all) were full.
    case unauthenticatedEvicted
    /// A pending-introduction cap (per target, per sender, in total) was reached.
    case pendingLimit
    /// The sender exceeded its introductions-per-second budget.
    case rateLimited
    /// The target did not register within the pending lifetime.
    case targetUnknownExpired
    /// The sender's end of a held introduction hung up before the target registered.
    case abandoned
    /// The target left `maxInFlightPerTarget` forwarded descriptors unread: it is dropped.
    case targetNotReading
    /// The sender has `maxInFlightPerSender` introductions forwarded and not yet read.
    case inFlightLimit
    /// The connecting uid is not allowed.
    case uidNotAllowed
    /// The peer does not read: its output queue is full.
    case outputOverflow
    /// A registration of a key took over from an earlier connection of that key that the probe
    /// found closed (on the newer `registration.accepted`, with the incumbent's credentials).
    case replacedDeadConnection
    /// A registration of a key took over from a live connection of the same uid
    /// (`replaceSameUID` option; on the newer `registration.accepted`).
    case replacedSameUID
    /// A registration refused because the key's earlier connection is alive: a live registration
    /// is never displaced by default (on `registration.refused`, with the incumbent's credentials).
    case liveRegistrationKept
    /// A registration in a form this server does not accept, or a legacy registration of a key
    /// that registered with v2 before (refused before anything is signed).
    case registrationFormRefused
    /// The server is shutting down.
    case serverShutdown
    /// The stream ended inside a message or before a marker.
    case truncated
    /// A registered peer left a message incomplete past the partial-message deadline.
    case timeout
    /// The peer closed the connection (before registering).
    case peerReset
    /// A local I/O error ended the connection.
    case ioError
    /// An introduction of a peer to itself.
    case selfConnection
    /// A padded control message brought descriptors beyond the marker's one; they were closed
    /// unused and the introduction went on (issue #17).
    case extraDescriptorsClosed
}

/// One audit fact from the core; the runtime turns it into an `AuditEvent` of the same kind.
///
/// Every registration attempt (one per connection) ends in exactly one `registrationAccepted` or
/// `registrationRefused`; every introduction attempt ends in exactly one `introductionForwarded`,
/// `introductionExpired` or `introductionRefused` (after `introductionRequested` and possibly
/// `introductionQueued` with the same `attempt`).
public struct IntroductionServerAuditRecord: Equatable, Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case registrationAccepted, registrationRefused
        case introductionRequested, introductionQueued
        case introductionForwarded, introductionExpired, introductionRefused
        /// Descriptors beyond the marker's one were closed at once (`descriptorKinds` names them).
        case extraDescriptorsClosed

        /// Whether a record of this kind ends its attempt.
        public var isTerminal: Bool {
            switch self {
            case .registrationAccepted, .registrationRefused, .introductionForwarded, .introductionExpired,
                 .introductionRefused:
                return true
            case .introductionRequested, .introductionQueued, .extraDescriptorsClosed:
                return false
            }
        }
    }

    public var kind: Kind
    public var reason: IntroductionServerReason?
    public var attempt: UInt64
    /// Registration: the key `uds:register` named (proved only on `registrationAccepted`).
    public var claimed: PublicIdentity?
    /// Registration: the key the peer proved by signing our challenge.
    public var proved: PublicIdentity?
    /// Introduction: the sender's registered identity, and the target's key.
    public var from: PublicIdentity?
    public var to: PublicIdentity?
    public var credentials: IntroductionServerCredentials?
    /// Registration of a key that already had a connection: that connection's credentials (the
    /// one displaced on `registrationAccepted`, the one kept on `registrationRefused`).
    public var incumbentCredentials: IntroductionServerCredentials?
    /// From accept (registration) or from the request (introduction) to this record.
    public var durationNanoseconds: UInt64?
    /// `extraDescriptorsClosed`: what each closed descriptor was ("tty", "pipe", "/dev/null").
    public var descriptorKinds: [String]?

    public init(
        _ kind: Kind, reason: IntroductionServerReason? = nil, attempt: UInt64, claimed: PublicIdentity? = nil,
        proved: PublicIdentity? = nil, from: PublicIdentity? = nil, to: PublicIdentity? = nil,
        credentials: IntroductionServerCredentials? = nil, incumbentCredentials: IntroductionServerCredentials? = nil,
        durationNanoseconds: UInt64? = nil, descriptorKinds: [String]? = nil
    ) {
        self.kind = kind
        self.reason = reason
        self.attempt = attempt
        self.claimed = claimed
        self.proved = proved
        self.from = from
        self.to = to
        self.credentials = credentials
        self.incumbentCredentials = incumbentCredentials
        self.durationNanoseconds = durationNanoseconds
        self.descriptorKinds = descriptorKinds
    }
}

/// One operational log line from the core. `message` is a fixed phrase; variable facts are
/// metadata (fingerprints, credentials, the error's local detail), never key material.
public struct IntroductionServerLogEntry: Equatable, Sendable {
    public enum Level: Int, Sendable, Comparable {
        case debug, info, notice, warning, error
        public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    public var level: Level
    public var message: String
    public var connection: IntroductionServerConnectionID?
    public var peer: PublicIdentity?
    public var target: PublicIdentity?
    public var credentials: IntroductionServerCredentials?
    public var reason: IntroductionServerReason?
    public var detail: String?

    public init(
        _ level: Level, _ message: String, connection: IntroductionServerConnectionID? = nil,
        peer: PublicIdentity? = nil, target: PublicIdentity? = nil, credentials: IntroductionServerCredentials? = nil,
        reason: IntroductionServerReason? = nil, detail: String? = nil
    ) {
        self.level = level
        self.message = message
        self.connection = connection
        self.peer = peer
        self.target = target
        self.credentials = credentials
        self.reason = reason
        self.detail = detail
    }
}

/// What the runtime's probe of a registered connection found (a non-blocking poll and
/// `recv(MSG_PEEK)`: hang-up, reset or end of stream mean dead).
public enum IntroductionServerLiveness: Equatable, Sendable {
    case alive
    /// `description` names what the probe saw, for the log.
    case dead(description: String)
}

/// What the runtime's check of a received descriptor found.
public enum IntroductionServerDescriptorVerdict: Equatable, Sendable {
    /// A connected, unnamed AF_UNIX stream socket: forwardable.
    case acceptable
    /// Anything else; `description` names what it was, for the log.
    case refused(description: String)
}

/// Every bound of the introduction server (reliability catalog §4). Defaults suit one user's
/// session daemon; each is a CLI option of `ocapn-uds intro-server`.
public struct IntroductionServerLimits: Sendable, Equatable {
    /// Connections in any state, registered or not.
    public var maxClients: Int = 1024
    /// Connections that have not completed registration. When full, the oldest of them is
    /// closed for a newcomer (`unauthenticatedEvicted`); registered peers never are.
    public var maxUnauthenticated: Int = 64
    /// Connections of one uid that have not completed registration (oldest evicted likewise).
    public var maxUnauthenticatedPerUID: Int = 32
    /// Registration deadline for a connection accepted while half the unauthenticated slots
    /// are taken (a silent flood then turns over fast).
    public var pressureRegistrationTimeout: Duration = .seconds(1)
    /// Absolute deadline from accept to a verified `uds:signature`, whatever the activity.
    public var registrationTimeout: Duration = .seconds(5)
    /// After registration: first byte of a message to its last (and its descriptor).
    public var partialMessageTimeout: Duration = .seconds(5)
    /// Bytes of one Syrup control message (at most `ControlMessageLimit.maxBytes`).
    public var maxMessageBytes: Int = ControlMessageLimit.maxBytes
    /// Nesting depth of one Syrup control message (at most `ControlMessageLimit.maxDepth`).
    public var maxMessageDepth: Int = ControlMessageLimit.maxDepth
    /// Introductions held for one target that has not registered yet.
    public var maxPendingPerTarget: Int = 8
    /// Introductions held for unregistered targets on behalf of one sender.
    public var maxPendingPerSender: Int = 8
    /// Introductions held in total (each holds one descriptor).
    public var maxPendingTotal: Int = 256
    /// Descriptors forwarded to one registered target and not yet read by it (A12). Reaching
    /// it drops that target (`targetNotReading`): it is the one that does not read.
    public var maxInFlightPerTarget: Int = 32
    /// Introductions of one sender forwarded and not yet read by their targets.
    public var maxInFlightPerSender: Int = 64
    /// How long an introduction waits for its target to register; zero refuses at once.
    /// Shorter than the initiator's 10 s handshake deadline, so an initiator whose target never
    /// registers learns it from the server's drop (EOF: `introductionDropped`), not its timer.
    public var pendingLifetime: Duration = .seconds(5)
    /// Sustained introductions per second per registered peer; zero means unlimited.
    public var introductionsPerSecond: Int = 200
    /// Token-bucket depth: introductions a peer may send at once after being idle.
    public var introductionBurst: Int = 400

    public init() {}

    /// Problems with these values, one sentence each; empty when usable.
    public var problems: [String] {
        var p: [String] = []
        func check(_ ok: Bool, _ text: String) { if !ok { p.append(text) } }
        check((1...1_000_000).contains(maxClients), "max clients must be 1...1000000")
        check(maxUnauthenticated >= 1 && maxUnauthenticated <= maxClients, "max unauthenticated must be 1...max clients")
        check(registrationTimeout > .zero, "the registration timeout must be positive")
        // Above max unauthenticated it simply never binds.
        check(maxUnauthenticatedPerUID >= 1, "max unauthenticated per uid must be at least 1")
        check(pressureRegistrationTimeout > .zero, "the registration timeout under pressure must be positive")
        check(partialMessageTimeout > .zero, "the partial-message timeout must be positive")
        // A uds:new-connection with a few hints needs ~500 bytes and depth 4.
        // Never above what a peer reads (ControlMessageLimit): a forwarded record a target
        // cannot read would cost the target its server connection.
        check((1024...ControlMessageLimit.maxBytes).contains(maxMessageBytes),
              "max message bytes must be 1024...\(ControlMessageLimit.maxBytes) (the largest control record a peer accepts)")
        check((4...ControlMessageLimit.maxDepth).contains(maxMessageDepth),
              "max message depth must be 4...\(ControlMessageLimit.maxDepth) (the deepest control record a peer accepts)")
        check((0...10_000).contains(maxPendingPerTarget), "max pending per target must be 0...10000")
        check((0...10_000).contains(maxPendingPerSender), "max pending per sender must be 0...10000")
        check((0...1_000_000).contains(maxPendingTotal), "max pending in total must be 0...1000000")
        check((1...10_000).contains(maxInFlightPerTarget), "max in flight per target must be 1...10000")
        check((1...100_000).contains(maxInFlightPerSender), "max in flight per sender must be 1...100000")
        check(pendingLifetime >= .zero && pendingLifetime <= .seconds(3600), "the pending lifetime must be 0...3600 s")
        check((0...1_000_000).contains(introductionsPerSecond), "introductions per second must be 0...1000000")
        check((1...10_000_000).contains(introductionBurst), "the introduction burst must be 1...10000000")
        return p
    }

    /// The Syrup decoder limits for one control message.
    public var syrupLimits: SyrupLimits {
        var s = SyrupLimits.controlMessage
        s.maxTotalBytes = maxMessageBytes
        s.maxDepth = maxMessageDepth
        return s
    }
}

/// Policy and limits of one introduction server.
public struct IntroductionServerConfiguration: Sendable {
    public var limits: IntroductionServerLimits
    /// Uids whose connections are served (SO_PEERCRED); the runtime always adds its own.
    public var allowedUIDs: Set<UInt32>
    /// Emit a debug log entry per forwarded introduction (off: the hot path formats nothing).
    public var debugLogging: Bool
    /// Designators other than registered peers' kept validated (hint keys, awaited targets).
    public var designatorCacheSize: Int
    /// Accept a marker whose read carries one extra descriptor (a sender's padded 24-byte
    /// control message, issue #17): the extra is closed at once and audited. Off: strict, any
    /// second descriptor is `extraFds` and closes the connection.
    public var toleratePaddingDescriptor: Bool = true
    /// Registration forms answered (PROTOCOL.md §15); both by default so Goblins peers work.
    public var registrationForms: RegistrationForms
    /// Let a registration displace a *live* earlier connection of its key when both connections
    /// have the same uid (SO_PEERCRED). Off: a live registration is never displaced.
    public var replaceSameUID: Bool
    /// Keys remembered as having registered with v2 (and therefore refused in a legacy form),
    /// oldest forgotten first beyond this.
    public var maxRememberedV2Keys: Int

    public init(limits: IntroductionServerLimits = IntroductionServerLimits(), allowedUIDs: Set<UInt32>,
                debugLogging: Bool = false, designatorCacheSize: Int = 256, registrationForms: RegistrationForms = .all,
                replaceSameUID: Bool = false, maxRememberedV2Keys: Int = 65536) {
        precondition(!registrationForms.isEmpty, "a server must accept at least one registration form")
        precondition(maxRememberedV2Keys >= 0, "maxRememberedV2Keys must not be negative")
        self.limits = limits
        self.allowedUIDs = allowedUIDs
        self.debugLogging = debugLogging
        self.designatorCacheSize = designatorCacheSize
        self.registrationForms = registrationForms
        self.replaceSameUID = replaceSameUID
        self.maxRememberedV2Keys = maxRememberedV2Keys
    }
}

extension Duration {
    /// Whole nanoseconds, saturating; the core's clock unit.
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0 else { return 0 }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        let (total, carry) = whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000))
        return overflow || carry ? .max : total
    }
}
