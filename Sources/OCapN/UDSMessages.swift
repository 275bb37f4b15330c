import Identity
import Syrup

// The four control messages of the UDS netlayer (ocapn-uds-wire.md §5, §8, §12). We emit the forms
// Spritely Goblins sends and accept the draft spec's forms of the two signature fields too.

/// A signature as it appears in a message field, keeping its form so re-encoding gives the same
/// bytes.
public indirect enum SignatureField: Equatable, Sendable {
    /// CapTP `[sig-val [eddsa [r …] [s …]]]`: Goblins' form in `uds:server-response`.
    case sigVal(Ed25519Signature)
    /// A 64-byte bytestring (R ‖ S): Goblins' form in `uds:signature`.
    case raw(Ed25519Signature)
    /// The draft spec's `<uds:signature payload signature>` record in `uds:server-response`; its
    /// payload must be the challenge the reader sent.
    case record(UDSSignature)

    public var signature: Ed25519Signature {
        switch self {
        case let .sigVal(s), let .raw(s): return s
        case let .record(r): return r.signature.signature
        }
    }

    var syrupValue: SyrupValue {
        switch self {
        case let .sigVal(s): return s.captpSigVal
        case let .raw(s): return .bytes(s.bytes)
        case let .record(r): return r.syrupValue
        }
    }

    /// A sig-val list or raw bytes; a record too when `allowRecord` (only where the spec puts one).
    static func parse(_ v: SyrupValue, allowRecord: Bool, _ what: String) throws(OCapNError) -> SignatureField {
        switch v {
        case .list:
            return .sigVal(try Ed25519Signature(captpSigVal: v))
        case let .bytes(b):
            do { return .raw(try Ed25519Signature(b)) } catch {
                throw OCapNError.malformed("\(what): a raw signature is 64 bytes, got \(b.count)")
            }
        case let .record(label, fields) where allowRecord && label == .symbol(UDSSignature.label):
            return .record(try UDSSignature(fields: fields, signatureIsNested: true))
        default:
            throw OCapNError.malformed("\(what): expected a sig-val list or 64 raw bytes\(allowRecord ? " or a uds:signature record" : ""), got \(v.kindName)")
        }
    }
}

/// The label that tells the two registration openings apart (`UDSRegister`, `UDSRegisterV2`).
public protocol UDSRegisterForm: Sendable {
    static var label: String { get }
}

/// The legacy (Goblins, draft spec) opening's label.
public enum UDSLegacyRegisterForm: UDSRegisterForm {
    public static let label = "uds:register"
}

/// The v2 opening's label (PROTOCOL.md §15).
public enum UDSV2RegisterForm: UDSRegisterForm {
    public static let label = "uds-v2:register"
}

/// `<uds:register peer-location client-challenge>` or `<uds-v2:register peer-location
/// client-challenge>`: peer → server, opens registration. Both forms carry the same fields; only
/// the label (`Form`) differs, and it decides which answer and signature follow.
public struct UDSRegisterMessage<Form: UDSRegisterForm>: Equatable, Sendable {
    public static var label: String { Form.label }
    /// The peer's locator; Goblins sends hints `f` here. In v2 its key is the one the peer signs as.
    public var locator: PeerLocator
    public var challenge: Challenge

    public init(locator: PeerLocator, challenge: Challenge) {
        self.locator = locator
        self.challenge = challenge
    }

    public var syrupValue: SyrupValue {
        .record(label: .symbol(Self.label), fields: [locator.syrupValue, .bytes(challenge.bytes)])
    }

    init(fields: [SyrupValue], limits: OCapNLimits) throws(OCapNError) {
        guard fields.count == 2 else { throw OCapNError.malformed("\(Self.label): expected 2 fields, got \(fields.count)") }
        locator = try PeerLocator(syrup: fields[0], limits: limits)
        challenge = try Shape.challenge(fields[1], "\(Self.label) client-challenge")
    }
}

/// `<uds:register peer-location client-challenge>`: peer → server, opens registration.
public typealias UDSRegister = UDSRegisterMessage<UDSLegacyRegisterForm>

/// `<uds:server-response server-key server-challenge client-challenge-response>`: server → peer.
public struct UDSServerResponse: Equatable, Sendable {
    public static let label = "uds:server-response"
    /// The server's identity, as a CapTP public-key list on the wire.
    public var serverKey: PublicIdentity
    public var serverChallenge: Challenge
    /// The server's signature over the peer's challenge.
    public var clientChallengeResponse: SignatureField

    public init(serverKey: PublicIdentity, serverChallenge: Challenge, clientChallengeResponse: SignatureField) {
        self.serverKey = serverKey
        self.serverChallenge = serverChallenge
        self.clientChallengeResponse = clientChallengeResponse
    }

    public var syrupValue: SyrupValue {
        .record(label: .symbol(Self.label), fields: [
            serverKey.captpPublicKey, .bytes(serverChallenge.bytes), clientChallengeResponse.syrupValue,
        ])
    }

    init(fields: [SyrupValue]) throws(OCapNError) {
        guard fields.count == 3 else { throw OCapNError.malformed("uds:server-response: expected 3 fields, got \(fields.count)") }
        serverKey = try PublicIdentity(captpPublicKey: fields[0])
        serverChallenge = try Shape.challenge(fields[1], "uds:server-response server-challenge")
        clientChallengeResponse = try SignatureField.parse(fields[2], allowRecord: true, "uds:server-response client-challenge-response")
    }
}

/// `<uds:signature payload signature>`: peer → server, the peer's signature over the server's
/// challenge. Also the draft spec's form of `uds:server-response`'s third field.
public struct UDSSignature: Equatable, Sendable {
    public static let label = "uds:signature"
    /// The challenge that was signed.
    public var payload: Challenge
    /// Raw (Goblins) or sig-val (draft spec); never a nested record.
    public var signature: SignatureField

    public init(payload: Challenge, signature: SignatureField) {
        if case .record = signature { preconditionFailure("a uds:signature cannot nest another uds:signature") }
        self.payload = payload
        self.signature = signature
    }

    public var syrupValue: SyrupValue {
        .record(label: .symbol(Self.label), fields: [.bytes(payload.bytes), signature.syrupValue])
    }

    init(fields: [SyrupValue], signatureIsNested: Bool = false) throws(OCapNError) {
        let what = signatureIsNested ? "uds:server-response uds:signature" : "uds:signature"
        guard fields.count == 2 else { throw OCapNError.malformed("\(what): expected 2 fields, got \(fields.count)") }
        payload = try Shape.challenge(fields[0], "\(what) payload")
        signature = try SignatureField.parse(fields[1], allowRecord: false, "\(what) signature")
    }
}

/// `<uds:new-connection from to>`: initiator → server, then server → target, each followed by a
/// separate `sendmsg` of `fdMarker` with one descriptor (handled by the transport layer).
public struct UDSNewConnection: Equatable, Sendable {
    public static let label = "uds:new-connection"
    /// The 4 data bytes sent with the descriptor: Goblins' int32 12345 in host byte order
    /// (`39 30 00 00` on little-endian hosts). Receivers ignore their value.
    public static let fdMarker: [UInt8] = withUnsafeBytes(of: Int32(12345)) { Array($0) }

    /// The initiator's locator (with its hints).
    public var from: PeerLocator
    /// The target's locator, as found in the sturdyref being enlivened.
    public var to: PeerLocator

    public init(from: PeerLocator, to: PeerLocator) {
        self.from = from
        self.to = to
    }

    public var syrupValue: SyrupValue {
        .record(label: .symbol(Self.label), fields: [from.syrupValue, to.syrupValue])
    }

    init(fields: [SyrupValue], limits: OCapNLimits) throws(OCapNError) {
        guard fields.count == 2 else { throw OCapNError.malformed("uds:new-connection: expected 2 fields, got \(fields.count)") }
        from = try PeerLocator(syrup: fields[0], limits: limits)
        to = try PeerLocator(syrup: fields[1], limits: limits)
    }
}

// MARK: - Registration v2 (PROTOCOL.md §15)
//
// Spoken only between implementations of this project. New labels, so a Goblins server or peer
// refuses them outright (no silent misreading), and a v2 side never answers a legacy record (no
// downgrade): which form to speak with a server is a per-server setting, never negotiated.

/// `<uds-v2:register peer-location client-challenge>`: peer → server, opens a v2 registration.
public typealias UDSRegisterV2 = UDSRegisterMessage<UDSV2RegisterForm>

/// `<uds-v2:server-response server-key server-challenge signature>`: server → peer. The signature
/// (raw 64 bytes) is the server's over the server-role transcript (`RegistrationTranscript`).
public struct UDSServerResponseV2: Equatable, Sendable {
    public static let label = "uds-v2:server-response"
    public var serverKey: PublicIdentity
    public var serverChallenge: Challenge
    public var signature: Ed25519Signature

    public init(serverKey: PublicIdentity, serverChallenge: Challenge, signature: Ed25519Signature) {
        self.serverKey = serverKey
        self.serverChallenge = serverChallenge
        self.signature = signature
    }

    public var syrupValue: SyrupValue {
        .record(label: .symbol(Self.label), fields: [serverKey.captpPublicKey, .bytes(serverChallenge.bytes), .bytes(signature.bytes)])
    }

    init(fields: [SyrupValue]) throws(OCapNError) {
        guard fields.count == 3 else { throw OCapNError.malformed("uds-v2:server-response: expected 3 fields, got \(fields.count)") }
        serverKey = try PublicIdentity(captpPublicKey: fields[0])
        serverChallenge = try Shape.challenge(fields[1], "uds-v2:server-response server-challenge")
        signature = try Shape.rawSignature(fields[2], "uds-v2:server-response signature")
    }
}

/// `<uds-v2:signature signature>`: peer → server, the peer's signature (raw 64 bytes) over the
/// client-role transcript.
public struct UDSSignatureV2: Equatable, Sendable {
    public static let label = "uds-v2:signature"
    public var signature: Ed25519Signature

    public init(signature: Ed25519Signature) { self.signature = signature }

    public var syrupValue: SyrupValue { .record(label: .symbol(Self.label), fields: [.bytes(signature.bytes)]) }

    init(fields: [SyrupValue]) throws(OCapNError) {
        guard fields.count == 1 else { throw OCapNError.malformed("uds-v2:signature: expected 1 field, got \(fields.count)") }
        signature = try Shape.rawSignature(fields[0], "uds-v2:signature signature")
    }
}

/// One control message between a peer and an introduction server.
public enum UDSMessage: Equatable, Sendable {
    case register(UDSRegister)
    case serverResponse(UDSServerResponse)
    case signature(UDSSignature)
    case newConnection(UDSNewConnection)
    case registerV2(UDSRegisterV2)
    case serverResponseV2(UDSServerResponseV2)
    case signatureV2(UDSSignatureV2)

    /// The record label, for logs.
    public var name: String {
        switch self {
        case .register: return UDSRegister.label
        case .serverResponse: return UDSServerResponse.label
        case .signature: return UDSSignature.label
        case .newConnection: return UDSNewConnection.label
        case .registerV2: return UDSRegisterV2.label
        case .serverResponseV2: return UDSServerResponseV2.label
        case .signatureV2: return UDSSignatureV2.label
        }
    }

    public var syrupValue: SyrupValue {
        switch self {
        case let .register(m): return m.syrupValue
        case let .serverResponse(m): return m.syrupValue
        case let .signature(m): return m.syrupValue
        case let .newConnection(m): return m.syrupValue
        case let .registerV2(m): return m.syrupValue
        case let .serverResponseV2(m): return m.syrupValue
        case let .signatureV2(m): return m.syrupValue
        }
    }

    /// The canonical Syrup bytes to write (no framing: the record delimits itself).
    public var encoded: [UInt8] { SyrupEncoder.encode(syrupValue) }

    /// Parses a decoded Syrup value strictly: a record whose label is one of the seven symbols
    /// (`unknownMessage` otherwise), with exactly its fields of exactly their types.
    public init(syrup value: SyrupValue, limits: OCapNLimits = .default) throws(OCapNError) {
        guard case let .record(label, fields) = value else {
            throw OCapNError(.unknownMessage, "control message: expected a record, got \(value.kindName)")
        }
        guard case let .symbol(name) = label else {
            throw OCapNError(.unknownMessage, "control message: record label is a \(label.kindName), not a symbol")
        }
        switch name {
        case UDSRegister.label: self = .register(try UDSRegister(fields: fields, limits: limits))
        case UDSServerResponse.label: self = .serverResponse(try UDSServerResponse(fields: fields))
        case UDSSignature.label: self = .signature(try UDSSignature(fields: fields))
        case UDSNewConnection.label: self = .newConnection(try UDSNewConnection(fields: fields, limits: limits))
        case UDSRegisterV2.label: self = .registerV2(try UDSRegisterV2(fields: fields, limits: limits))
        case UDSServerResponseV2.label: self = .serverResponseV2(try UDSServerResponseV2(fields: fields))
        case UDSSignatureV2.label: self = .signatureV2(try UDSSignatureV2(fields: fields))
        default:
            throw OCapNError(.unknownMessage, "control message: unknown record label (\(name.utf8.count) bytes)")
        }
    }

    /// Decodes exactly one canonical Syrup value (`invalidSyrup` otherwise), then parses it.
    public init(bytes: [UInt8], syrupLimits: SyrupLimits = .controlMessage, limits: OCapNLimits = .default) throws(OCapNError) {
        let value: SyrupValue
        do { value = try SyrupDecoder(limits: syrupLimits).decode(bytes) } catch {
            throw OCapNError(.invalidSyrup, error.description)
        }
        try self.init(syrup: value, limits: limits)
    }
}
