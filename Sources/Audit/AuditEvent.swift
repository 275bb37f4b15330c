import Identity
import Synchronization
import SodiumCrypto

/// What happened. The JSON spelling (`event`) is the raw value.
public enum AuditEventKind: String, Sendable, CaseIterable, Hashable {
    case identityLoaded = "identity.loaded"
    case serverStarted = "server.started"
    case serverStopped = "server.stopped"
    case registrationAccepted = "registration.accepted"
    case registrationRefused = "registration.refused"
    case introductionRequested = "introduction.requested"
    case introductionForwarded = "introduction.forwarded"
    case introductionQueued = "introduction.queued"
    case introductionExpired = "introduction.expired"
    case introductionRefused = "introduction.refused"
    case handshakeStarted = "handshake.started"
    case handshakeSucceeded = "handshake.succeeded"
    case handshakeFailed = "handshake.failed"
    case channelClosed = "channel.closed"
    case legacyPeerRefused = "legacy.refused"
    case legacyPeerAdmitted = "legacy.admitted"
    /// Descriptors beyond a marker's one, closed unused (reason `extraDescriptorsClosed`).
    case descriptorsClosed = "descriptors.closed"
    // Chain bookkeeping, written only by the log writer itself.
    case logOpened = "log.opened"
    case logCheckpoint = "log.checkpoint"
    case logClosed = "log.closed"

    /// Records the writer makes; callers may not record these.
    public var isLogBookkeeping: Bool {
        switch self {
        case .logOpened, .logCheckpoint, .logClosed: return true
        case .identityLoaded, .serverStarted, .serverStopped, .registrationAccepted, .registrationRefused,
             .introductionRequested, .introductionForwarded, .introductionQueued, .introductionExpired,
             .introductionRefused, .handshakeStarted, .handshakeSucceeded, .handshakeFailed, .channelClosed,
             .legacyPeerRefused, .legacyPeerAdmitted, .descriptorsClosed:
            return false
        }
    }

    /// Whether a record of this kind ends its attempt (exactly one per attempt id).
    public var endsAttempt: Bool {
        switch self {
        case .registrationAccepted, .registrationRefused, .introductionForwarded, .introductionExpired,
             .introductionRefused, .handshakeSucceeded, .handshakeFailed, .legacyPeerRefused, .legacyPeerAdmitted:
            return true
        case .identityLoaded, .serverStarted, .serverStopped, .introductionRequested, .introductionQueued,
             .handshakeStarted, .channelClosed, .logOpened, .logCheckpoint, .logClosed, .descriptorsClosed:
            return false
        }
    }
}

/// The outcome column: derived from the kind (and `clean` for channel.closed), never set freely.
public enum AuditOutcome: String, Sendable, CaseIterable, Hashable {
    case success, failure
    /// An attempt in progress (started, requested, queued); a terminal record follows.
    case pending
    /// Log bookkeeping, and notices that end nothing (descriptors.closed).
    case info
}

/// Which side of the exchange the writer was.
public enum AuditRole: String, Sendable, CaseIterable, Hashable {
    case initiator, responder, server, client
}

/// A key named in the log, by fingerprint (`fp1:…`).
///
/// Built from key bytes, never from peer-supplied text, so the field always has the fingerprint
/// shape. Invalid keys (e.g. a low-order point a peer sent) still get a fingerprint, which is what
/// an operator needs to recognise them.
public struct AuditPeerID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let fingerprint: String

    public init(_ identity: PublicIdentity) { fingerprint = FingerprintCache.fingerprint(of: identity) }
    /// Fingerprint of raw key bytes that may not be a valid identity.
    public init(publicKey: [UInt8]) { fingerprint = Fingerprint.of(publicKey: publicKey) }
    /// Parses a fingerprint read back from a log or typed by an operator.
    public init?(fingerprint: String) {
        guard Fingerprint.isWellFormed(fingerprint) else { return nil }
        self.fingerprint = fingerprint
    }

    public var description: String { fingerprint }
    public static func < (a: AuditPeerID, b: AuditPeerID) -> Bool { a.fingerprint < b.fingerprint }
}

/// SO_PEERCRED of a control connection (kernel-reported; a logging hint, not an identity).
public struct AuditPeerCredentials: Hashable, Sendable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

/// A public digest or identifier (transcript hash, session id): 8–64 bytes, written as hex.
public struct AuditDigest: Hashable, Sendable, CustomStringConvertible {
    public static let lengths = 8...64
    public let bytes: [UInt8]

    /// Our own code picks the bytes, so a wrong length is a bug.
    public init(_ bytes: [UInt8]) {
        precondition(Self.lengths.contains(bytes.count), "audit digests are 8-64 bytes")
        self.bytes = bytes
    }

    public init?(hex: String) {
        guard let b = Hex.decode(hex), Self.lengths.contains(b.count) else { return nil }
        bytes = b
    }

    public var hex: String { Hex.encode(bytes) }
    public var description: String { hex }
}

/// Identifies one attempt (a registration, introduction, handshake) across its records.
public struct AuditAttemptID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// A random id, unique across restarts without coordination.
    public static func random() -> AuditAttemptID {
        let b = RandomBytes.bytes(8)
        return AuditAttemptID(rawValue: b.reduce(0) { $0 << 8 | UInt64($1) })
    }
    public init?(hex: String) {
        guard hex.utf8.count == 16, let b = Hex.decode(hex) else { return nil }
        rawValue = b.reduce(0) { $0 << 8 | UInt64($1) }
    }
    public var hex: String {
        Hex.encode((0..<8).map { UInt8(truncatingIfNeeded: rawValue >> (56 - 8 * UInt64($0))) })
    }
    public var description: String { hex }
}

/// Traffic counts of a channel when it closed.
public struct AuditTraffic: Hashable, Sendable {
    public var bytesSent: UInt64
    public var bytesReceived: UInt64
    public var messagesSent: UInt64
    public var messagesReceived: UInt64
    public init(bytesSent: UInt64, bytesReceived: UInt64, messagesSent: UInt64, messagesReceived: UInt64) {
        self.bytesSent = bytesSent
        self.bytesReceived = bytesReceived
        self.messagesSent = messagesSent
        self.messagesReceived = messagesReceived
    }
}

/// A socket or file path named in a record (server.started, identity.loaded).
/// Bounded; control characters are refused so a line stays one line even before JSON escaping.
public struct AuditPath: Hashable, Sendable, CustomStringConvertible {
    public static let maxLength = 1024
    public let value: String
    public init?(_ value: String) {
        guard !value.isEmpty, value.utf8.count <= Self.maxLength,
              !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else { return nil }
        self.value = value
    }
    public var description: String { value }
}

/// What descriptors closed unused were ("tty", "pipe", "/dev/null"), in arrival order.
/// Bounded; a name holds no comma or control character, so the list is one field.
public struct AuditDescriptorKinds: Hashable, Sendable, CustomStringConvertible {
    public static let maxCount = 253
    public static let maxNameLength = 64
    public let names: [String]
    public init?(_ names: [String]) {
        guard (1...Self.maxCount).contains(names.count), names.allSatisfy({ name in
            !name.isEmpty && name.utf8.count <= Self.maxNameLength
                && !name.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f || $0 == "," })
        }) else { return nil }
        self.names = names
    }
    /// The field's text: names joined by commas.
    public var description: String { names.joined(separator: ",") }
    public init?(field: String) {
        self.init(field.split(separator: ",", omittingEmptySubsequences: false).map(String.init))
    }
}

/// One event as a caller records it. Every field is a public fact (fingerprints, counts,
/// digests, codes): there is no field that can hold a `SecretBytes` or a payload.
public struct AuditEvent: Hashable, Sendable {
    public var kind: AuditEventKind
    /// Required when the outcome is `failure`.
    public var reason: AuditReason?
    public var attempt: AuditAttemptID?
    public var role: AuditRole?
    /// The writer's own identity in this exchange.
    public var local: AuditPeerID?
    /// Whom we meant to reach (initiator) or whom `from` claimed (responder).
    public var expectedPeer: AuditPeerID?
    /// The key the peer proved possession of in the handshake.
    public var provedPeer: AuditPeerID?
    /// Introduction sender and target.
    public var from: AuditPeerID?
    public var to: AuditPeerID?
    /// The introduction server the connection came through.
    public var introServer: AuditPeerID?
    /// SO_PEERCRED of the control connection.
    public var credentials: AuditPeerCredentials?
    /// A registration of a key that already had a connection: SO_PEERCRED of that connection
    /// (displaced on `registration.accepted`, kept on `registration.refused`).
    public var incumbentCredentials: AuditPeerCredentials?
    /// Legacy channels: the key the introduction's `from` named. A claim nobody proved, kept
    /// out of `expectedPeer`, `from`, `peers` and `remotePeer` so it is never read as an identity.
    public var claimedFrom: AuditPeerID?
    /// Legacy channels: `false` (no handshake ran; nothing about the peer is proved).
    public var authenticated: Bool?
    public var transcriptHash: AuditDigest?
    public var sessionID: AuditDigest?
    public var protocolVersion: UInt32?
    public var durationMicros: UInt64?
    /// channel.closed: whether both sides closed with a close frame.
    public var clean: Bool?
    /// channel.closed: byte and message counts.
    public var traffic: AuditTraffic?
    public var path: AuditPath?
    /// descriptors.closed: what the closed descriptors were.
    public var descriptorKinds: AuditDescriptorKinds?

    public init(
        _ kind: AuditEventKind, reason: AuditReason? = nil, attempt: AuditAttemptID? = nil, role: AuditRole? = nil,
        local: AuditPeerID? = nil, expectedPeer: AuditPeerID? = nil, provedPeer: AuditPeerID? = nil,
        from: AuditPeerID? = nil, to: AuditPeerID? = nil, introServer: AuditPeerID? = nil,
        credentials: AuditPeerCredentials? = nil, transcriptHash: AuditDigest? = nil, sessionID: AuditDigest? = nil,
        protocolVersion: UInt32? = nil, durationMicros: UInt64? = nil, clean: Bool? = nil,
        traffic: AuditTraffic? = nil, path: AuditPath? = nil, descriptorKinds: AuditDescriptorKinds? = nil
    ) {
        self.kind = kind
        self.reason = reason
        self.attempt = attempt
        self.role = role
        self.local = local
        self.expectedPeer = expectedPeer
        self.provedPeer = provedPeer
        self.from = from
        self.to = to
        self.introServer = introServer
        self.credentials = credentials
        self.transcriptHash = transcriptHash
        self.sessionID = sessionID
        self.protocolVersion = protocolVersion
        self.durationMicros = durationMicros
        self.clean = clean
        self.traffic = traffic
        self.path = path
        self.descriptorKinds = descriptorKinds
    }

    public var outcome: AuditOutcome {
        switch kind {
        case .identityLoaded, .serverStarted, .serverStopped, .registrationAccepted, .introductionForwarded,
             .handshakeSucceeded, .legacyPeerAdmitted:
            return .success
        case .registrationRefused, .introductionExpired, .introductionRefused, .handshakeFailed, .legacyPeerRefused:
            return .failure
        case .introductionRequested, .introductionQueued, .handshakeStarted:
            return .pending
        case .channelClosed:
            return clean == true ? .success : .failure
        case .logOpened, .logCheckpoint, .logClosed, .descriptorsClosed:
            return .info
        }
    }

    /// Why the event cannot be written, or nil. Failures need a reason so every failure is
    /// explained; channel.closed needs `clean` so the outcome is stated, not assumed.
    var invariantViolation: String? {
        if kind == .channelClosed && clean == nil { return "channel.closed needs clean" }
        if outcome == .failure && reason == nil { return "\(kind.rawValue) needs a reason" }
        return nil
    }

    /// Every fingerprint the event names (for peer filters and the top-peers table).
    public var peers: [AuditPeerID] {
        [local, expectedPeer, provedPeer, from, to, introServer].compactMap { $0 }
    }

    /// The remote party, as best known: proved, else expected, else `from`/`to`.
    public var remotePeer: AuditPeerID? { provedPeer ?? expectedPeer ?? from ?? to }
}


/// Fingerprints of recently seen identities: a server names the same few keys in every record,
/// and each fingerprint costs a BLAKE2b and a base32 encoding. Bounded: cleared when full.
enum FingerprintCache {
    private static let cache = Mutex<[Key: String]>([:])
    static let capacity = 4096

    /// The key bytes, hashed as one buffer: `[UInt8]`'s own `hash(into:)` feeds the hasher a
    /// byte at a time, and this lookup runs for every key of every record.
    private struct Key: Hashable {
        let bytes: [UInt8]
        func hash(into h: inout Hasher) { bytes.withUnsafeBytes { h.combine(bytes: $0) } }
    }

    static func fingerprint(of identity: PublicIdentity) -> String {
        let key = Key(bytes: identity.publicKey)
        if let hit = cache.withLock({ $0[key] }) { return hit }
        let fp = identity.fingerprint
        cache.withLock { c in
            if c.count >= capacity { c.removeAll(keepingCapacity: true) }
            c[key] = fp
        }
        return fp
    }
}
