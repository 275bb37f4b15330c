import Identity
import SodiumCrypto

/// UDS-HS1 wire constants (PROTOCOL.md §3). Changing any of them is a new protocol version.
public enum UDSHS1 {
    /// Protocol label, first in the prologue.
    public static let label: [UInt8] = Array("ocapn-uds-hs/1".utf8)
    /// The Noise protocol name (exactly 32 bytes, so h₀ = ck₀ = the name).
    public static let noiseProtocolName: [UInt8] = Array(NoiseKKHandshake.protocolName.utf8)
    public static let magic: [UInt8] = [0x6f, 0x55, 0x48, 0x53]  // "oUHS"
    public static let version: UInt8 = 1
    public static let msg1Type: UInt8 = 0x01
    public static let msg2Type: UInt8 = 0x02
    public static let msg1Length = 120
    public static let msg2Length = 113
    /// LEN ‖ ciphertext of `03 ‖ SIG_I`.
    public static let authFrameLength = 83
    public static let authCiphertextLength = 81
    /// msg1[0..<72) (MAGIC … IK_R) is in the prologue.
    public static let headerLength = 72
    /// Signed by the responder: `responderContext ‖ h` (29 + 32 = 61 bytes; `SignedMessage`).
    public static let responderContext: [UInt8] = SignedMessage.handshakeResponderContext
    /// Signed by the initiator: `initiatorContext ‖ HH` (29 + 32 = 61 bytes; `SignedMessage`).
    public static let initiatorContext: [UInt8] = SignedMessage.handshakeInitiatorContext
    /// Every context an identity key signs under in UDS-HS1.
    public static let signatureContexts: [[UInt8]] = [responderContext, initiatorContext]
    /// Domain separator for the session id derived from HH.
    public static let sessionIDContext: [UInt8] = Array("ocapn-uds-hs/1 session-id".utf8) + [0]
    /// Default handshake deadline.
    public static let defaultTimeout: Duration = .seconds(10)

    static func prologue(header: ArraySlice<UInt8>) -> [UInt8] { label + [0] + header }

    /// The symmetric state after the prologue and the KK pre-messages (PROTOCOL.md §4.2).
    static func initialState(header: ArraySlice<UInt8>, initiatorX: [UInt8], responderX: [UInt8]) -> NoiseSymmetricState {
        var s = NoiseSymmetricState(protocolName: noiseProtocolName)
        s.mixHash(prologue(header: header))
        s.mixHash(initiatorX)
        s.mixHash(responderX)
        return s
    }
}

/// Handshake settings that are not per-connection inputs.
public struct HandshakeConfiguration: Sendable {
    /// From the machine's creation to the end of the handshake (default 10 s).
    public var timeout: Duration
    /// Limits of the channel the handshake produces.
    public var channel: ChannelConfiguration

    public init(timeout: Duration = UDSHS1.defaultTimeout, channel: ChannelConfiguration = ChannelConfiguration()) {
        precondition(timeout > .zero, "handshake timeout must be positive")
        self.timeout = timeout
        self.channel = channel
    }

    /// The `timeout` both machines throw once `now` has reached `deadline`; nil before it.
    func timeoutError(deadline: ContinuousClock.Instant, now: ContinuousClock.Instant) -> HandshakeError? {
        now < deadline ? nil : HandshakeError.make(.timeout, "handshake not finished within \(timeout)")
    }
}

/// A peer identity proven by a completed handshake: its Ed25519 signature over the transcript
/// verified and its static DH terms matched. Only the handshake machines can create one.
public struct VerifiedPeer: Hashable, Sendable, CustomStringConvertible {
    /// The peer's raw 32-byte Ed25519 public key, exactly as signed and verified.
    public let publicKey: [UInt8]

    fileprivate init(verifiedPublicKey: [UInt8]) { publicKey = verifiedPublicKey }

    public var fingerprint: String { Fingerprint.of(publicKey: publicKey) }
    public var description: String { fingerprint }
}

/// A short public identifier of one session for logs and audit records:
/// the first 16 bytes of SHA-256(`sessionIDContext` ‖ HH). Both peers compute the same value.
public struct SessionID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    init(handshakeHash: [UInt8]) {
        bytes = Array(SHA256.hash(parts: [UDSHS1.sessionIDContext, handshakeHash])[0..<16])
    }

    public var description: String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }
}

public enum HandshakeRole: String, Sendable { case initiator, responder }

/// The product of a successful handshake.
public struct EstablishedSession {
    public let role: HandshakeRole
    /// The authenticated remote identity (never the introduction server's claim).
    public let peer: VerifiedPeer
    /// The final Noise handshake hash HH: the channel binding and audit transcript hash.
    public let handshakeHash: [UInt8]
    public let sessionID: SessionID
    /// Seals this side's messages. The initiator's has already used nonce 0 for AUTH.
    public let sender: FrameSender
    /// Opens the peer's frames. Bytes that arrived right behind the handshake are already in it.
    public let receiver: FrameReceiver
}

/// What a handshake machine wants done after consuming input.
public enum HandshakeStep {
    /// Nothing to send; read more.
    case needMoreBytes
    /// Write these bytes, then read more (the responder's msg2).
    case send([UInt8])
    /// Done: write `send` (the initiator's AUTH; empty for the responder), then use the session.
    case established(EstablishedSession, send: [UInt8])
}

/// A DH term with our identity's X25519 key (es/se/ss of UDS-HS1): the key pair computes it, so
/// the handshake never holds the secret itself.
func staticDH(_ identity: IdentityKeyPair, _ publicKey: [UInt8], _ token: StaticString) throws(HandshakeError) -> SecretBytes {
    guard let out = identity.handshakeAgreement(with: publicKey) else {
        throw HandshakeError.make(.lowOrderPoint, "DH \(token) gave an all-zero shared secret")
    }
    return out
}

/// ss between our identity and a peer's: from `cache` when it holds the pair, else computed now
/// and returned as `fresh` too, for the caller to remember once the handshake has verified.
func staticSecret(
    _ identity: IdentityKeyPair, peer peerKey: [UInt8], peerX: [UInt8], cache: StaticSecretCache?
) throws(HandshakeError) -> (ss: SecretBytes, fresh: SecretBytes?) {
    if let cached = cache?.secret(local: identity.publicKey, peer: peerKey) { return (cached, nil) }
    let ss = try staticDH(identity, peerX, "ss")
    return (ss, ss)
}

// MARK: - Initiator

/// The initiator (A) of UDS-HS1: it knows the responder's key from the `to` locator.
/// Sans-IO: bytes and the current time go in, bytes and a session come out. Not thread-safe.
///
/// Any thrown error is final: the machine is dead and the runtime closes the socket.
public final class HandshakeInitiator {
    private struct AwaitingResponse {
        let symmetric: NoiseSymmetricState
        let ephemeralSecret: SecretBytes
        let ephemeralPublic: [UInt8]
        let responderKey: [UInt8]
        /// ss when it was computed for this handshake (not cached): remembered once msg2 verifies.
        let newStaticSecret: SecretBytes?
    }

    private enum State {
        case awaitingResponse(AwaitingResponse)
        case established
        case failed
    }

    /// msg1: write it to the socket right after construction.
    public let initialMessage: [UInt8]
    public let deadline: ContinuousClock.Instant
    private let identity: IdentityKeyPair
    private let configuration: HandshakeConfiguration
    private let staticSecrets: StaticSecretCache?
    private var state: State
    private var buffer: [UInt8] = []

    /// Prepares msg1 for a connection to `responder` (the identity of the `to` locator).
    ///
    /// Throws `selfConnection` if `responder` is our own identity. Costs one ephemeral key and
    /// two DH (PROTOCOL.md §5.2); the precomputations come in as inputs: our X25519 key from
    /// `identity` (derived once, when it was made), the responder's X25519 form from `keyCache`,
    /// the ephemeral pair from `ephemeralKeys` (a pool makes it ahead of time) and ss from
    /// `staticSecrets` after the first handshake between the two keys (then one DH).
    public init(
        identity: IdentityKeyPair, responder: PublicIdentity, configuration: HandshakeConfiguration = HandshakeConfiguration(),
        keyCache: IdentityKeyCache = .shared, staticSecrets: StaticSecretCache? = nil, ephemeralKeys: EphemeralKeySource = .system,
        now: ContinuousClock.Instant
    ) throws(HandshakeError) {
        guard responder != identity.publicIdentity else {
            throw HandshakeError.make(.selfConnection, "the responder key is our own key")
        }
        let responderKey = responder.publicKey
        guard let responderX = keyCache.x25519(forIdentity: responderKey) else {
            // Unreachable for a `PublicIdentity` (validated when made); kept as a typed refusal.
            throw HandshakeError.make(.invalidIdentityKey, "responder key is not a valid identity key")
        }
        let ephemeral = ephemeralKeys.next()
        let e = ephemeral.secret, ephemeralPublic = ephemeral.publicKey
        let header = UDSHS1.magic + [UDSHS1.version, UDSHS1.msg1Type, 0, 0] + identity.publicKey + responderKey
        var s = UDSHS1.initialState(header: header[...], initiatorX: identity.handshakePublicKey, responderX: responderX)
        s.mixHash(ephemeralPublic)
        s.mixKey(try noiseDH(e, responderX, "es"))
        let (ss, freshSS) = try staticSecret(identity, peer: responderKey, peerX: responderX, cache: staticSecrets)
        s.mixKey(ss)
        let tag = try s.encryptAndHash([])
        initialMessage = header + ephemeralPublic + tag
        self.identity = identity
        self.configuration = configuration
        self.staticSecrets = staticSecrets
        deadline = now.advanced(by: configuration.timeout)
        state = .awaitingResponse(AwaitingResponse(
            symmetric: s, ephemeralSecret: e, ephemeralPublic: ephemeralPublic, responderKey: responderKey,
            newStaticSecret: freshSS))
    }

    /// Feeds bytes read from the socket.
    public func receive(_ bytes: [UInt8], now: ContinuousClock.Instant) throws(HandshakeError) -> HandshakeStep {
        guard case .awaitingResponse(let waiting) = state else {
            preconditionFailure("initiator fed after the handshake ended: the runtime must stop")
        }
        do throws(HandshakeError) {
            try checkDeadline(now: now)
            buffer += bytes
            guard buffer.count >= UDSHS1.msg2Length else { return .needMoreBytes }
            let step = try processResponse(waiting)
            state = .established
            buffer.removeAll()
            return step
        } catch {
            fail()
            throw error
        }
    }

    /// Call on end of file from the socket: always `truncated` during a handshake.
    public func receiveEOF() throws(HandshakeError) -> Never {
        guard case .awaitingResponse = state else { preconditionFailure("EOF fed after the handshake ended") }
        fail()
        throw HandshakeError.make(.truncated, "EOF after \(buffer.count) of \(UDSHS1.msg2Length) msg2 bytes")
    }

    /// Throws `timeout` once `now` has reached the deadline (call it from the runtime's timer).
    /// A finished handshake never times out, so a timer racing with completion is harmless.
    public func checkDeadline(now: ContinuousClock.Instant) throws(HandshakeError) {
        guard case .awaitingResponse = state, let timeout = configuration.timeoutError(deadline: deadline, now: now) else { return }
        fail()
        throw timeout
    }

    private func fail() {
        state = .failed
        secureZero(&buffer)
    }

    private func processResponse(_ w: AwaitingResponse) throws(HandshakeError) -> HandshakeStep {
        let msg2 = buffer[0..<UDSHS1.msg2Length]
        // Cheap checks first (PROTOCOL.md §5.3).
        guard msg2[0] == UDSHS1.msg2Type else {
            throw HandshakeError.make(.unexpectedMessageType, "msg2 type byte 0x\(String(msg2[0], radix: 16))")
        }
        let er = Array(msg2[1..<33])
        guard X25519.isCanonical(er) else { throw HandshakeError.make(.nonCanonicalPoint, "E_R is not a canonical X25519 encoding") }
        guard er != w.ephemeralPublic else { throw HandshakeError.make(.reflection, "E_R equals our own ephemeral") }
        var s = w.symmetric
        s.mixHash(er)
        s.mixKey(try noiseDH(w.ephemeralSecret, er, "ee"))
        s.mixKey(try staticDH(identity, er, "se"))
        let signedHash = s.h
        let signature = try s.decryptAndHash(Array(msg2[33...]))
        // Verify only after the AEAD passed: a forged msg2 costs us no signature check.
        guard Ed25519.verify(signature: signature, message: SignedMessage.handshakeTranscript(.responder, hash: signedHash),
                             publicKey: w.responderKey) else {
            throw HandshakeError.make(.badSignature, "responder signature does not verify")
        }
        let hh = s.h
        let (kIR, kRI) = s.split()
        let sender = FrameSender(key: kIR, nonce: 0, configuration: configuration.channel)
        let auth = try sender.sealAuth(signature: identity.signHandshakeTranscript(.initiator, hash: hh))
        let receiver = FrameReceiver(key: kRI, nonce: 0, configuration: configuration.channel)
        // Anything behind msg2 in this read belongs to the transport; the receiver judges it.
        try receiver.receive(Array(buffer[UDSHS1.msg2Length...]))
        // The responder proved its key over a transcript that used ss: worth remembering.
        if let ss = w.newStaticSecret { staticSecrets?.remember(ss, local: identity.publicKey, peer: w.responderKey) }
        let session = EstablishedSession(
            role: .initiator, peer: VerifiedPeer(verifiedPublicKey: w.responderKey), handshakeHash: hh,
            sessionID: SessionID(handshakeHash: hh), sender: sender, receiver: receiver)
        return .established(session, send: auth)
    }
}

// MARK: - Responder

/// The responder (B) of UDS-HS1: it learned the initiator's claimed key from the introduction
/// (`from`) and proves nothing, and releases nothing, before the initiator's AUTH verifies.
/// Sans-IO; not thread-safe. Any thrown error is final.
public final class HandshakeResponder {
    private struct AwaitingHello {}

    private struct AwaitingAuth {
        let initiatorKey: [UInt8]
        let handshakeHash: [UInt8]
        let receiveKey: SecretBytes  // K_IR
        let sendKey: SecretBytes  // K_RI
        /// ss when it was computed for this handshake: remembered once AUTH verifies.
        let newStaticSecret: SecretBytes?
    }

    private enum State {
        case awaitingHello(AwaitingHello)
        case awaitingAuth(AwaitingAuth)
        case established
        case failed
    }

    public let deadline: ContinuousClock.Instant
    private let identity: IdentityKeyPair
    private let announcedInitiator: [UInt8]
    private let configuration: HandshakeConfiguration
    private let policy: (@Sendable ([UInt8]) -> Bool)?
    private let keyCache: IdentityKeyCache
    private let staticSecrets: StaticSecretCache?
    private let ephemeralKeys: EphemeralKeySource
    private var state: State = .awaitingHello(AwaitingHello())
    private var buffer: [UInt8] = []

    /// - Parameters:
    ///   - announcedInitiator: the identity of the introduction's `from` (a claim to be checked).
    ///   - policy: asked about the initiator key after the header checks; false → `peerNotAllowed`.
    ///   - keyCache, staticSecrets, ephemeralKeys: the precomputations, as for the initiator.
    public convenience init(
        identity: IdentityKeyPair, announcedInitiator: PublicIdentity, configuration: HandshakeConfiguration = HandshakeConfiguration(),
        policy: (@Sendable (_ initiatorKey: [UInt8]) -> Bool)? = nil,
        keyCache: IdentityKeyCache = .shared, staticSecrets: StaticSecretCache? = nil, ephemeralKeys: EphemeralKeySource = .system,
        now: ContinuousClock.Instant
    ) {
        self.init(identity: identity, announcedInitiatorKey: announcedInitiator.publicKey, configuration: configuration, policy: policy,
                  keyCache: keyCache, staticSecrets: staticSecrets, ephemeralKeys: ephemeralKeys, now: now)
    }

    /// The same with the claim as raw bytes, not yet validated: for the handshake vectors and
    /// tests, which pin the responder's own refusal of an invalid key (PROTOCOL.md §5.3 step 7)
    /// that the runtime never reaches, its introductions' `from` being a `PublicIdentity`.
    package init(
        identity: IdentityKeyPair, announcedInitiatorKey: [UInt8], configuration: HandshakeConfiguration = HandshakeConfiguration(),
        policy: (@Sendable (_ initiatorKey: [UInt8]) -> Bool)? = nil,
        keyCache: IdentityKeyCache = .shared, staticSecrets: StaticSecretCache? = nil, ephemeralKeys: EphemeralKeySource = .system,
        now: ContinuousClock.Instant
    ) {
        self.identity = identity
        self.announcedInitiator = announcedInitiatorKey
        self.configuration = configuration
        self.policy = policy
        self.keyCache = keyCache
        self.staticSecrets = staticSecrets
        self.ephemeralKeys = ephemeralKeys
        deadline = now.advanced(by: configuration.timeout)
    }

    /// Feeds bytes read from the socket.
    public func receive(_ bytes: [UInt8], now: ContinuousClock.Instant) throws(HandshakeError) -> HandshakeStep {
        switch state {
        case .awaitingHello, .awaitingAuth: break
        case .established, .failed: preconditionFailure("responder fed after the handshake ended: the runtime must stop")
        }
        do throws(HandshakeError) {
            try checkDeadline(now: now)
            buffer += bytes
            return try advance()
        } catch {
            fail()
            throw error
        }
    }

    /// Call on end of file from the socket: always `truncated` during a handshake.
    public func receiveEOF() throws(HandshakeError) -> Never {
        switch state {
        case .awaitingHello, .awaitingAuth: break
        case .established, .failed: preconditionFailure("EOF fed after the handshake ended")
        }
        fail()
        throw HandshakeError.make(.truncated, "EOF with \(buffer.count) bytes of an unfinished handshake message")
    }

    /// Throws `timeout` once `now` has reached the deadline. A finished handshake never times out.
    public func checkDeadline(now: ContinuousClock.Instant) throws(HandshakeError) {
        switch state {
        case .awaitingHello, .awaitingAuth: break
        case .established, .failed: return
        }
        guard let timeout = configuration.timeoutError(deadline: deadline, now: now) else { return }
        fail()
        throw timeout
    }

    private func fail() {
        state = .failed
        secureZero(&buffer)
    }

    /// Processes every complete message in the buffer. A legitimate initiator never sends AUTH
    /// before it has msg2, so bytes behind msg1 are simply the start of (a doomed) AUTH.
    private func advance() throws(HandshakeError) -> HandshakeStep {
        var output: [UInt8] = []
        while true {
            switch state {
            case .awaitingHello:
                guard buffer.count >= UDSHS1.msg1Length else { return output.isEmpty ? .needMoreBytes : .send(output) }
                let (next, msg2) = try processHello(Array(buffer[0..<UDSHS1.msg1Length]))
                buffer.removeFirst(UDSHS1.msg1Length)
                state = .awaitingAuth(next)
                output += msg2
            case .awaitingAuth(let waiting):
                if buffer.count >= 2 {
                    let length = Int(buffer[0]) << 8 | Int(buffer[1])
                    guard length == UDSHS1.authCiphertextLength else {
                        throw HandshakeError.make(.badFrameLength, "AUTH LEN \(length), expected 81")
                    }
                }
                guard buffer.count >= UDSHS1.authFrameLength else { return output.isEmpty ? .needMoreBytes : .send(output) }
                let session = try processAuth(waiting)
                state = .established
                buffer.removeAll()
                return .established(session, send: output)
            case .established, .failed:
                preconditionFailure("advance in a final state")
            }
        }
    }

    private func processHello(_ msg1: [UInt8]) throws(HandshakeError) -> (AwaitingAuth, [UInt8]) {
        // PROTOCOL.md §5.3: header and identity checks (no crypto) before anything else.
        guard msg1[0..<4].elementsEqual(UDSHS1.magic) else { throw HandshakeError.make(.badMagic, "msg1 MAGIC mismatch") }
        guard msg1[4] == UDSHS1.version else { throw HandshakeError.make(.unsupportedVersion, "msg1 VERSION \(msg1[4])") }
        guard msg1[5] == UDSHS1.msg1Type else {
            throw HandshakeError.make(.unexpectedMessageType, "msg1 type byte 0x\(String(msg1[5], radix: 16))")
        }
        guard msg1[6] == 0, msg1[7] == 0 else { throw HandshakeError.make(.reservedFlagsSet, "msg1 FLAGS \(msg1[6]) \(msg1[7])") }
        let initiatorKey = Array(msg1[8..<40])
        guard msg1[40..<72].elementsEqual(identity.publicKey) else {
            throw HandshakeError.make(.wrongResponder, "msg1 is addressed to another responder key")
        }
        guard initiatorKey == announcedInitiator else {
            throw HandshakeError.make(.identityMismatch, "msg1 initiator key differs from the introduction's from")
        }
        guard initiatorKey != identity.publicKey else {
            throw HandshakeError.make(.selfConnection, "msg1 initiator key is our own key")
        }
        if let policy, !policy(initiatorKey) {
            throw HandshakeError.make(.peerNotAllowed, "policy refused the initiator")
        }
        guard let initiatorX = keyCache.x25519(forIdentity: initiatorKey) else {
            throw HandshakeError.make(.invalidIdentityKey, "initiator key is not a valid identity key")
        }
        let ei = Array(msg1[72..<104])
        guard X25519.isCanonical(ei) else { throw HandshakeError.make(.nonCanonicalPoint, "E_I is not a canonical X25519 encoding") }
        var s = UDSHS1.initialState(header: msg1[0..<UDSHS1.headerLength], initiatorX: initiatorX, responderX: identity.handshakePublicKey)
        s.mixHash(ei)
        s.mixKey(try staticDH(identity, ei, "es"))
        let (ss, freshSS) = try staticSecret(identity, peer: initiatorKey, peerX: initiatorX, cache: staticSecrets)
        s.mixKey(ss)
        _ = try s.decryptAndHash(Array(msg1[104..<120]))

        // msg1 verified: only now spend an ephemeral key and a signature.
        let ephemeral = ephemeralKeys.next()
        let e = ephemeral.secret, er = ephemeral.publicKey
        guard er != ei else { throw HandshakeError.make(.reflection, "our ephemeral equals the initiator's") }
        s.mixHash(er)
        s.mixKey(try noiseDH(e, ei, "ee"))
        s.mixKey(try noiseDH(e, initiatorX, "se"))
        let signature = identity.signHandshakeTranscript(.responder, hash: s.h)
        let sealed = try s.encryptAndHash(signature)
        let (kIR, kRI) = s.split()
        let next = AwaitingAuth(
            initiatorKey: initiatorKey, handshakeHash: s.h, receiveKey: kIR, sendKey: kRI, newStaticSecret: freshSS)
        return (next, [UDSHS1.msg2Type] + er + sealed)
    }

    private func processAuth(_ w: AwaitingAuth) throws(HandshakeError) -> EstablishedSession {
        var cipher = NoiseCipherState(key: w.receiveKey)
        let plain = try cipher.decrypt(ad: [], ciphertext: Array(buffer[2..<UDSHS1.authFrameLength]))
        guard plain[0] == FrameFormat.FrameType.auth.rawValue else {
            throw HandshakeError.make(.unexpectedMessageType, "first initiator frame has type 0x\(String(plain[0], radix: 16)), expected AUTH")
        }
        guard Ed25519.verify(signature: Array(plain[1...]), message: SignedMessage.handshakeTranscript(.initiator, hash: w.handshakeHash),
                             publicKey: w.initiatorKey) else {
            throw HandshakeError.make(.badSignature, "initiator signature does not verify")
        }
        let receiver = FrameReceiver(key: w.receiveKey, nonce: 1, configuration: configuration.channel)
        try receiver.receive(Array(buffer[UDSHS1.authFrameLength...]))
        // The initiator proved its key over a transcript that used ss: worth remembering.
        if let ss = w.newStaticSecret { staticSecrets?.remember(ss, local: identity.publicKey, peer: w.initiatorKey) }
        let sender = FrameSender(key: w.sendKey, nonce: 0, configuration: configuration.channel)
        return EstablishedSession(
            role: .responder, peer: VerifiedPeer(verifiedPublicKey: w.initiatorKey), handshakeHash: w.handshakeHash,
            sessionID: SessionID(handshakeHash: w.handshakeHash), sender: sender, receiver: receiver)
    }
}
