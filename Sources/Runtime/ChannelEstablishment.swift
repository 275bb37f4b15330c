import Audit
import Identity
import Logging
import OCapN
import SecureChannel
import Synchronization
import Transport

/// Settings of the channel runtime: the handshake, the channel's queues, legacy peers.
/// Every limit has a default from PROTOCOL.md §6.4 or the reliability catalogue §4.
public struct ChannelRuntimeConfiguration: Sendable {
    /// Handshake deadline (default 10 s, PROTOCOL.md §6.4) and framed-channel limits.
    public var handshake: HandshakeConfiguration
    /// Received messages held for the application; above either bound the runtime stops reading
    /// the socket until the application takes some (back-pressure reaches the sender's kernel).
    public var maxInboundQueuedBytes: Int
    public var maxInboundQueuedMessages: Int
    /// Sealed bytes waiting for the socket; `send` suspends while more than this is queued.
    public var maxOutboundQueuedBytes: Int
    /// Bytes per read (large chunks: one `recvmsg` can carry several frames).
    public var readChunkSize: Int
    /// Reads per readable event before yielding the queue to other channels.
    public var readsPerEvent: Int
    /// How long `close()` waits for the peer's CLOSE after sending ours.
    public var closeTimeout: Duration
    /// How long buffers a burst grew are kept after the traffic stops (default 100 ms): long
    /// enough to serve the next burst without reallocating, short enough that an idle channel
    /// holds only its small buffers (docs/DESIGN.md, "Memory follows use").
    public var idleBufferRelease: Duration
    /// Which Goblins peers (no handshake; their first bytes are `<16'op:start-session`) are
    /// admitted as unauthenticated channels. `.refuse` by default (`legacyPeerRefused`). A key
    /// that completed UDS-HS1 with us is refused as legacy whatever this says.
    public var legacyPeers: LegacyPeerPolicy
    /// `legacyPeers` as a switch: true is `.any`.
    public var allowLegacyPeers: Bool {
        get { legacyPeers != .refuse }
        set { legacyPeers = newValue ? .any : .refuse }
    }
    /// Asked about an initiator's key after msg1's header checks; false → `peerNotAllowed`.
    public var peerPolicy: (@Sendable (_ initiatorKey: [UInt8]) -> Bool)?
    /// Ephemeral X25519 keys: made ahead of time by the process-wide pool (tests inject fixed ones).
    public var ephemeralKeys: EphemeralKeySource
    /// SO_SNDBUF for our end of each channel socket (nil: the kernel default, about 208 KiB);
    /// the kernel caps it at net.core.wmem_max.
    public var socketSendBufferSize: Int?

    public init(
        handshake: HandshakeConfiguration = HandshakeConfiguration(),
        maxInboundQueuedBytes: Int = 4 << 20, maxInboundQueuedMessages: Int = 1024,
        maxOutboundQueuedBytes: Int = 1 << 20, readChunkSize: Int = 64 << 10, readsPerEvent: Int = 8,
        closeTimeout: Duration = .seconds(2), allowLegacyPeers: Bool = false,
        peerPolicy: (@Sendable (_ initiatorKey: [UInt8]) -> Bool)? = nil, ephemeralKeys: EphemeralKeySource = .pooled,
        socketSendBufferSize: Int? = 1 << 20, idleBufferRelease: Duration = .milliseconds(100)
    ) {
        precondition(maxInboundQueuedBytes >= 1 && maxInboundQueuedMessages >= 1, "inbound queue bounds must be positive")
        precondition(maxOutboundQueuedBytes >= 1, "outbound queue bound must be positive")
        precondition(readChunkSize >= 512 && readsPerEvent >= 1, "read chunk of at least 512 bytes, at least one read per event")
        precondition(closeTimeout > .zero, "close timeout must be positive")
        precondition(idleBufferRelease > .zero, "idle buffer release must be positive")
        self.idleBufferRelease = idleBufferRelease
        self.handshake = handshake
        self.maxInboundQueuedBytes = maxInboundQueuedBytes
        self.maxInboundQueuedMessages = maxInboundQueuedMessages
        self.maxOutboundQueuedBytes = maxOutboundQueuedBytes
        self.readChunkSize = readChunkSize
        self.readsPerEvent = readsPerEvent
        self.closeTimeout = closeTimeout
        legacyPeers = allowLegacyPeers ? .any : .refuse
        self.peerPolicy = peerPolicy
        self.ephemeralKeys = ephemeralKeys
        self.socketSendBufferSize = socketSendBufferSize
    }

    /// Checks the settings that only work together. `ChannelEstablishment` (and so
    /// `PeerNetlayer`) refuses a configuration that fails with `invalidConfiguration` when it
    /// is built, so no combination traps later on a live channel.
    public func validate() throws(PeerError) {
        let buffered = handshake.channel.maxBufferedInput
        // A read lands behind the unfinished frame the receiver may hold (up to one frame less
        // a byte), and the receiver never buffers more than maxBufferedInput.
        let needed = readChunkSize + FrameFormat.maxFrameLength - 1
        guard needed <= buffered else {
            throw PeerError(
                .invalidConfiguration,
                "readChunkSize \(readChunkSize) plus one unfinished frame (\(FrameFormat.maxFrameLength - 1) bytes) " +
                "exceeds maxBufferedInput \(buffered)")
        }
    }
}

/// Caps the handshakes in progress at once, across every socket that shares it (both roles).
/// A handshake over the cap fails at once with `handshakeLimitExceeded` and costs no crypto.
public final class HandshakeLimiter: Sendable {
    /// PROTOCOL.md §6.4: 64 pending handshakes per process.
    public static let defaultLimit = 64

    public let limit: Int
    private let count = Mutex(0)

    public init(limit: Int = HandshakeLimiter.defaultLimit) {
        precondition(limit >= 1, "handshake limit must be positive")
        self.limit = limit
    }

    /// Handshakes in progress now.
    public var inProgress: Int { count.withLock { $0 } }

    func tryAcquire() -> Bool {
        count.withLock { c in
            guard c < limit else { return false }
            c += 1
            return true
        }
    }

    func release() {
        count.withLock { c in
            precondition(c > 0, "handshake slot released twice")
            c -= 1
        }
    }
}

/// What the introduction said about a socket, for checks and the audit trail. All optional: a
/// socketpair made without a server (tests, embedding) has none of it.
public struct IntroductionContext: Sendable {
    /// The initiator's locator as announced (`from`).
    public var from: PeerLocator?
    /// The target's locator (`to`).
    public var to: PeerLocator?
    /// The introduction server the socket came through.
    public var server: PublicIdentity?

    public init(from: PeerLocator? = nil, to: PeerLocator? = nil, server: PublicIdentity? = nil) {
        self.from = from
        self.to = to
        self.server = server
    }
}

/// Runs UDS-HS1 on introduced sockets and turns them into channels.
///
/// One value per local identity; cheap to copy (the limiter and key cache are shared objects).
/// `initiate` and `respond` take ownership of the socket: on every path it ends up either in the
/// returned channel or closed.
public struct ChannelEstablishment: Sendable {
    public let identity: PublicIdentity
    public let configuration: ChannelRuntimeConfiguration
    public let limiter: HandshakeLimiter
    /// Our identity; its handshake key was derived once, when it was made.
    let keyPair: IdentityKeyPair
    let keyCache: IdentityKeyCache
    let staticSecrets: StaticSecretCache
    /// Keys that completed UDS-HS1 here, never admitted as legacy afterwards.
    public let verifiedPeers: VerifiedPeerMemory
    private(set) var audit: (any AuditSink)?
    let logger: Logger
    /// Shared by copies: rate-limits the warning line of resource refusals.
    let refusals = RefusalReporter()

    /// Throws `invalidConfiguration` when `configuration.validate()` fails.
    ///
    /// - Parameters:
    ///   - limiter: share one between establishments that must respect one cap (default: a new
    ///     limiter of `HandshakeLimiter.defaultLimit`).
    ///   - keyCache: peers' keys in X25519 form (default: the process-wide cache that identity
    ///     validation fills too).
    ///   - staticSecrets: ss per peer key, for this identity (default: a new cache of
    ///     `StaticSecretCache.defaultCapacity` pairs, wiped when the establishment goes).
    ///   - audit: where handshake and channel records go (nil: none).
    public init(
        identity keyPair: IdentityKeyPair, configuration: ChannelRuntimeConfiguration = ChannelRuntimeConfiguration(),
        limiter: HandshakeLimiter = HandshakeLimiter(), keyCache: IdentityKeyCache = .shared,
        staticSecrets: StaticSecretCache = StaticSecretCache(), verifiedPeers: VerifiedPeerMemory = VerifiedPeerMemory(),
        audit: (any AuditSink)? = nil, logger: Logger
    ) throws(PeerError) {
        try configuration.validate()
        self.keyPair = keyPair
        identity = keyPair.publicIdentity
        self.configuration = configuration
        self.limiter = limiter
        self.keyCache = keyCache
        self.staticSecrets = staticSecrets
        self.verifiedPeers = verifiedPeers
        self.audit = audit
        self.logger = logger
    }

    /// Runs the initiator's side on `socket` (our socketpair end), expecting `responder`'s key
    /// (from the `to` locator). Returns only once the responder proved that key.
    public func initiate(
        over socket: FileDescriptor, to responder: PublicIdentity, introduction: IntroductionContext = IntroductionContext()
    ) async throws(PeerError) -> PeerChannel {
        try await initiate(over: socket, to: responder, introduction: introduction, cancellation: nil)
    }

    func initiate(
        over socket: FileDescriptor, to responder: PublicIdentity, introduction: IntroductionContext,
        cancellation: HandshakeCancellation?
    ) async throws(PeerError) -> PeerChannel {
        let facts = ChannelFacts(
            role: .initiator, local: identity, expected: responder, introduction: introduction,
            attempt: AuditAttemptID.random())
        guard limiter.tryAcquire() else {
            socket.close()
            throw refuse(PeerError(.handshakeLimitExceeded, "\(limiter.limit) handshakes already in progress"), facts)
        }
        let machine: HandshakeInitiator
        do {
            machine = try HandshakeInitiator(
                identity: keyPair, responder: responder, configuration: configuration.handshake,
                keyCache: keyCache, staticSecrets: staticSecrets, ephemeralKeys: configuration.ephemeralKeys, now: .now)
        } catch {
            limiter.release()
            socket.close()
            throw refuse(PeerError(error), facts)
        }
        let engine = ChannelEngine(
            socket: socket, machine: ChannelMachine(initiator: machine, configuration: machineConfiguration(facts)),
            facts: facts, environment: environment)
        cancellation?.attach(engine)
        return try await engine.establish()
    }

    /// Runs the responder's side on a passed `socket`, expecting the initiator to prove
    /// `initiator`'s key (the key of the introduction's `from`). Checks first, cheapest first:
    /// the descriptor is a socketpair end (`passedSocketInvalid`), `introduction.to` (when
    /// given) names us (`notAddressedToUs`), a handshake slot is free (`handshakeLimitExceeded`).
    public func respond(
        over socket: FileDescriptor, expecting initiator: PublicIdentity, introduction: IntroductionContext = IntroductionContext()
    ) async throws(PeerError) -> PeerChannel {
        try await PeerError.catching {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<PeerChannel, Error>) in
                respond(over: socket, expecting: initiator, introduction: introduction) { c.resume(with: $0) }
            }
        }
    }

    /// `respond` without waiting: the checks and the start of the I/O run on the caller's
    /// thread (a few system calls, no crypto), the handshake's crypto on the channel's queue.
    /// `completion` is called once: at once for a refusal, else on the channel's queue.
    func respond(
        over socket: FileDescriptor, expecting initiator: PublicIdentity, introduction: IntroductionContext,
        completion: @escaping @Sendable (Result<PeerChannel, PeerError>) -> Void
    ) {
        let facts = ChannelFacts(
            role: .responder, local: identity, expected: initiator, introduction: introduction,
            attempt: AuditAttemptID.random())
        do {
            try socket.validateAsConnectedUnixStream()
        } catch {
            socket.close()
            return completion(.failure(refuse(PeerError(.passedSocketInvalid, error.description), facts)))
        }
        if let to = introduction.to, to.identity != identity {
            socket.close()
            return completion(.failure(refuse(PeerError(.notAddressedToUs, "introduction addressed to \(to.identity.fingerprint)"), facts)))
        }
        guard limiter.tryAcquire() else {
            socket.close()
            return completion(.failure(refuse(PeerError(.handshakeLimitExceeded, "\(limiter.limit) handshakes already in progress"), facts)))
        }
        let machine = HandshakeResponder(
            identity: keyPair, announcedInitiator: initiator, configuration: configuration.handshake,
            policy: configuration.peerPolicy, keyCache: keyCache, staticSecrets: staticSecrets,
            ephemeralKeys: configuration.ephemeralKeys, now: .now)
        let engine = ChannelEngine(
            socket: socket, machine: ChannelMachine(responder: machine, configuration: machineConfiguration(facts)),
            facts: facts, environment: environment)
        engine.start(completion)
    }

    /// The machine's settings for one socket: a legacy peer is admitted only when the policy
    /// admits its claim and, when it shows up, the claimed key has not completed UDS-HS1 here.
    func machineConfiguration(_ facts: ChannelFacts) -> ChannelMachine.Configuration {
        let claim = facts.legacyClaim
        let verifiedPeers = verifiedPeers
        return ChannelMachine.Configuration(
            closeTimeout: configuration.closeTimeout, allowLegacyPeers: configuration.legacyPeers.admits(claim),
            legacyCheck: { !verifiedPeers.refusesLegacy(claim) }, idleRelease: configuration.idleBufferRelease)
    }

    /// The same establishment writing its records to `sink` (which forwards them on).
    func observed(by sink: any AuditSink) -> ChannelEstablishment {
        var copy = self
        copy.audit = sink
        return copy
    }

    var environment: ChannelEngine.Environment {
        ChannelEngine.Environment(configuration: configuration, limiter: limiter, audit: audit, logger: logger,
                                  verifiedPeers: verifiedPeers)
    }

    /// A handshake refused before it started: logged and audited (terminal record only).
    private func refuse(_ error: PeerError, _ facts: ChannelFacts) -> PeerError {
        var log = logger
        facts.annotate(&log)
        if error.code == .handshake(.handshakeLimitExceeded) {
            // A resource refusal: visible at the default level, at most once a second.
            let (shouldLog, suppressed) = refusals.shouldLog(error.auditReason)
            if shouldLog {
                log.warning("handshake refused", metadata: [
                    "reason": "\(error.code.rawValue)", "detail": "\(error.detail)", "suppressedSinceLast": "\(suppressed)"])
            }
        } else {
            log.info("handshake refused", metadata: ["reason": "\(error.code.rawValue)", "detail": "\(error.detail)"])
        }
        audit?.record(facts.event(.handshakeFailed, reason: error.auditReason))
        return error
    }
}

/// Public facts about one handshake or channel, for logs and audit records.
struct ChannelFacts: Sendable {
    let role: HandshakeRole
    let local: PublicIdentity
    /// Initiator: the `to` key; responder: the `from` key (a claim until proved).
    let expected: PublicIdentity
    let introduction: IntroductionContext
    let attempt: AuditAttemptID

    var auditRole: AuditRole {
        switch role {
        case .initiator: return .initiator
        case .responder: return .responder
        }
    }

    func event(
        _ kind: AuditEventKind, reason: AuditReason? = nil, proved: [UInt8]? = nil, handshakeHash: [UInt8]? = nil,
        session: SessionID? = nil, durationMicros: UInt64? = nil, clean: Bool? = nil, traffic: AuditTraffic? = nil
    ) -> AuditEvent {
        AuditEvent(
            kind, reason: reason, attempt: attempt, role: auditRole, local: AuditPeerID(local),
            expectedPeer: AuditPeerID(expected), provedPeer: proved.map { AuditPeerID(publicKey: $0) },
            from: introduction.from.map { AuditPeerID($0.identity) }, to: introduction.to.map { AuditPeerID($0.identity) },
            introServer: introduction.server.map { AuditPeerID($0) },
            transcriptHash: handshakeHash.map { AuditDigest($0) }, sessionID: session.map { AuditDigest($0.bytes) },
            protocolVersion: handshakeHash == nil ? nil : UInt32(UDSHS1.version), durationMicros: durationMicros,
            clean: clean, traffic: traffic)
    }

    /// A legacy channel's record: the claim goes to `claimed_from`, never to `expected` or
    /// `from`, and the record says `authenticated: false`.
    func legacyEvent(_ kind: AuditEventKind, reason: AuditReason? = nil) -> AuditEvent {
        asLegacy(event(kind, reason: reason))
    }

    /// `event` with the claim moved out of the identity fields.
    func asLegacy(_ event: AuditEvent) -> AuditEvent {
        var event = event
        event.expectedPeer = nil
        event.from = nil
        event.provedPeer = nil
        event.claimedFrom = AuditPeerID(expected)
        event.authenticated = false
        return event
    }

    /// What the introduction claimed about a legacy peer.
    var legacyClaim: UnverifiedPeerClaim { UnverifiedPeerClaim(claimedKey: expected) }

    /// Adds these facts to every line the logger writes, when it writes one: StreamLogHandler
    /// renders its stored metadata again on every change, and setting five keys (two of them
    /// fingerprints: BLAKE2b, base32) per socket cost a peer about a tenth of its CPU per
    /// connect, for lines that the default level mostly filters out.
    func annotate(_ logger: inout Logger) {
        logger.handler = ChannelLogHandler(inner: logger.handler, facts: self)
    }

    /// The facts as log metadata, rendered by the handler that writes the line.
    var logMetadata: Logger.Metadata {
        var metadata: Logger.Metadata = [
            "role": "\(role.rawValue)",
            "local": .stringConvertible(FingerprintMetadata(local)),
            "expected": .stringConvertible(FingerprintMetadata(expected)),
            "attempt": .stringConvertible(attempt),
        ]
        if let server = introduction.server { metadata["server"] = .stringConvertible(FingerprintMetadata(server)) }
        return metadata
    }
}

/// A channel's log handler: the facts, and keys set later (the proved peer, the session), are
/// merged into a line only when it is written; the inner handler's own metadata is untouched.
struct ChannelLogHandler: LogHandler {
    private var inner: any LogHandler
    private let facts: ChannelFacts
    private var extra: Logger.Metadata = [:]

    init(inner: any LogHandler, facts: ChannelFacts) {
        self.inner = inner
        self.facts = facts
    }

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }

    var metadata: Logger.Metadata {
        get { inner.metadata.merging(facts.logMetadata) { $1 }.merging(extra) { $1 } }
        set { extra = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { extra[key] ?? facts.logMetadata[key] ?? inner[metadataKey: key] }
        set { extra[key] = newValue }
    }

    func log(event: LogEvent) {
        var event = event
        var metadata = facts.logMetadata.merging(extra) { $1 }
        if let given = event.metadata { metadata.merge(given) { $1 } }
        event.metadata = metadata
        inner.log(event: event)
    }
}

/// A key's fingerprint as log metadata, computed when a log line is written.
struct FingerprintMetadata: CustomStringConvertible, Sendable {
    let key: [UInt8]
    init(_ identity: PublicIdentity) { key = identity.publicKey }
    init(publicKey: [UInt8]) { key = publicKey }
    var description: String { Fingerprint.of(publicKey: key) }
}

/// Lets the netlayer fail a handshake from outside, e.g. when the introduction server it went
/// through disconnects before the handshake finished. Cancelling an established channel does
/// nothing.
final class HandshakeCancellation: @unchecked Sendable {
    private let lock = Mutex<(engine: ChannelEngine?, error: PeerError?)>((nil, nil))

    func attach(_ engine: ChannelEngine) {
        let early = lock.withLock { s -> PeerError? in
            s.engine = engine
            return s.error
        }
        if let early { engine.queue.async { engine.cancelHandshake(early) } }
    }

    /// The engine attached so far (tests: its handshake in progress).
    var attachedEngine: ChannelEngine? { lock.withLock { $0.engine } }

    func cancel(_ error: PeerError) {
        let engine = lock.withLock { s -> ChannelEngine? in
            if s.error == nil { s.error = error }
            return s.engine
        }
        if let engine { engine.queue.async { engine.cancelHandshake(error) } }
    }
}
