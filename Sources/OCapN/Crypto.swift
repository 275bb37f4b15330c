import Identity
import SodiumCrypto
import Syrup

/// A registration challenge: exactly 64 bytes (ocapn-uds-wire.md §6, §12).
///
/// Registration signs the other side's raw challenge with a long-term identity key and no
/// context, which makes each side a signing oracle (SECURITY.md). Restricting what we sign to
/// values of this type, which only exist at exactly 64 bytes, keeps that oracle away from every
/// other signature this project makes (none of which is 64 bytes long).
public struct Challenge: Hashable, Sendable {
    public static let length = 64

    public let bytes: [UInt8]

    /// Throws `challengeLength` unless `bytes` is exactly 64 bytes.
    public init(_ bytes: [UInt8]) throws(OCapNError) {
        guard bytes.count == Self.length else {
            throw OCapNError(.challengeLength, "a challenge is \(Self.length) bytes, got \(bytes.count)")
        }
        self.bytes = bytes
    }

    /// 64 fresh bytes from the system CSPRNG. Registration needs a new one per connection.
    public static func random() -> Challenge {
        // The length is right by construction.
        try! Challenge(RandomBytes.bytes(length))
    }
}

/// A raw Ed25519 signature, R ‖ S (64 bytes).
public struct Ed25519Signature: Hashable, Sendable {
    public static let length = 64

    public let bytes: [UInt8]

    /// Throws `malformedMessage` unless `bytes` is exactly 64 bytes.
    public init(_ bytes: [UInt8]) throws(OCapNError) {
        guard bytes.count == Self.length else {
            throw OCapNError.malformed("an Ed25519 signature is \(Self.length) bytes, got \(bytes.count)")
        }
        self.bytes = bytes
    }

    /// The first 32 bytes (the curve point R).
    public var r: [UInt8] { Array(bytes[0..<32]) }
    /// The last 32 bytes (the scalar S).
    public var s: [UInt8] { Array(bytes[32..<64]) }

    /// Whether this is `identity`'s signature over `challenge` (strict libsodium verification).
    public func isValid(by identity: PublicIdentity, over challenge: Challenge) -> Bool {
        identity.verify(signature: bytes, message: challenge.bytes)
    }
}

/// Registration's signatures, typed: the identity key signs a `Challenge` (exactly 64 bytes, the
/// Goblins form) or a v2 transcript built from typed values, and nothing else from this module.
extension IdentityKeyPair {
    /// Signs the raw challenge bytes (Goblins' registration signature: no prefix, no hash).
    public func sign(_ challenge: Challenge) -> Ed25519Signature {
        // 64 bytes by construction of `Ed25519Signature`'s producer.
        try! Ed25519Signature(signRegistrationChallenge(challenge.bytes))
    }

    /// Signs a registration v2 transcript in `role`, with this identity in that role's key slot.
    public func signRegistration(_ role: RegistrationTranscript.Role, peer: PublicIdentity,
                                 clientChallenge: Challenge, serverChallenge: Challenge) -> Ed25519Signature {
        try! Ed25519Signature(signRegistrationTranscript(
            role, peer: peer, clientChallenge: clientChallenge.bytes, serverChallenge: serverChallenge.bytes))
    }
}

// MARK: - CapTP crypto lists (ocapn-uds-wire.md §4; CapTP Specification "Public Key", "Signature")

extension PublicIdentity {
    /// `[public-key [ecc [curve Ed25519] [flags eddsa] [q <32 bytes>]]]`, all names symbols.
    public var captpPublicKey: SyrupValue {
        .list([
            .symbol("public-key"),
            .list([
                .symbol("ecc"),
                .list([.symbol("curve"), .symbol("Ed25519")]),
                .list([.symbol("flags"), .symbol("eddsa")]),
                .list([.symbol("q"), .bytes(publicKey)]),
            ]),
        ])
    }

    /// Parses a CapTP public-key list strictly: exactly that shape, those symbols, a 32-byte `q`
    /// that is a valid identity key (`invalidPublicKey` otherwise; `malformedMessage` for shape).
    public init(captpPublicKey value: SyrupValue) throws(OCapNError) {
        let outer = try Shape.list(value, count: 2, "public-key")
        try Shape.symbol(outer[0], "public-key", "public-key")
        let ecc = try Shape.list(outer[1], count: 4, "public-key ecc")
        try Shape.symbol(ecc[0], "ecc", "public-key ecc")
        try Shape.pair(ecc[1], "curve", .symbol("Ed25519"), "public-key curve")
        try Shape.pair(ecc[2], "flags", .symbol("eddsa"), "public-key flags")
        let q = try Shape.taggedBytes(ecc[3], "q", length: 32, "public-key q")
        do { try self.init(publicKey: q) } catch {
            throw OCapNError(.invalidPublicKey, "public-key q is not a valid Ed25519 identity key")
        }
    }
}

extension Ed25519Signature {
    /// `[sig-val [eddsa [r <32 bytes>] [s <32 bytes>]]]`, as Goblins' `sign` returns it.
    public var captpSigVal: SyrupValue {
        .list([
            .symbol("sig-val"),
            .list([
                .symbol("eddsa"),
                .list([.symbol("r"), .bytes(r)]),
                .list([.symbol("s"), .bytes(s)]),
            ]),
        ])
    }

    /// Parses a CapTP sig-val list strictly (exact shape and symbols, 32-byte r and s).
    public init(captpSigVal value: SyrupValue) throws(OCapNError) {
        let outer = try Shape.list(value, count: 2, "sig-val")
        try Shape.symbol(outer[0], "sig-val", "sig-val")
        let eddsa = try Shape.list(outer[1], count: 3, "sig-val eddsa")
        try Shape.symbol(eddsa[0], "eddsa", "sig-val eddsa")
        let r = try Shape.taggedBytes(eddsa[1], "r", length: 32, "sig-val r")
        let s = try Shape.taggedBytes(eddsa[2], "s", length: 32, "sig-val s")
        try self.init(r + s)
    }
}

/// Strict shape checks shared by the decoders; each failure is `malformedMessage`.
enum Shape {
    static func list(_ v: SyrupValue, count: Int, _ what: String) throws(OCapNError) -> [SyrupValue] {
        guard case let .list(items) = v else { throw OCapNError.malformed("\(what): expected a list, got \(v.kindName)") }
        guard items.count == count else {
            throw OCapNError.malformed("\(what): expected \(count) items, got \(items.count)")
        }
        return items
    }

    static func symbol(_ v: SyrupValue, _ name: String, _ what: String) throws(OCapNError) {
        guard case let .symbol(s) = v else { throw OCapNError.malformed("\(what): expected symbol '\(name)', got \(v.kindName)") }
        guard s == name else { throw OCapNError.malformed("\(what): expected symbol '\(name)'") }
    }

    /// `[name value]` with `name` a symbol and the value exactly `expected`.
    static func pair(_ v: SyrupValue, _ name: String, _ expected: SyrupValue, _ what: String) throws(OCapNError) {
        let items = try list(v, count: 2, what)
        try symbol(items[0], name, what)
        guard items[1] == expected else { throw OCapNError.malformed("\(what): unexpected value") }
    }

    /// `[name <length bytes>]`.
    static func taggedBytes(_ v: SyrupValue, _ name: String, length: Int, _ what: String) throws(OCapNError) -> [UInt8] {
        let items = try list(v, count: 2, what)
        try symbol(items[0], name, what)
        guard case let .bytes(b) = items[1] else { throw OCapNError.malformed("\(what): expected a bytestring, got \(items[1].kindName)") }
        guard b.count == length else { throw OCapNError.malformed("\(what): expected \(length) bytes, got \(b.count)") }
        return b
    }

    static func bytes(_ v: SyrupValue, _ what: String) throws(OCapNError) -> [UInt8] {
        guard case let .bytes(b) = v else { throw OCapNError.malformed("\(what): expected a bytestring, got \(v.kindName)") }
        return b
    }

    /// A challenge field: a bytestring (`malformedMessage`) of exactly 64 bytes (`challengeLength`).
    static func challenge(_ v: SyrupValue, _ what: String) throws(OCapNError) -> Challenge {
        let b = try bytes(v, what)
        do { return try Challenge(b) } catch {
            throw OCapNError(.challengeLength, "\(what): a challenge is \(Challenge.length) bytes, got \(b.count)")
        }
    }

    /// A v2 signature field: a bytestring of exactly 64 bytes (`malformedMessage` otherwise).
    static func rawSignature(_ v: SyrupValue, _ what: String) throws(OCapNError) -> Ed25519Signature {
        let b = try bytes(v, what)
        do { return try Ed25519Signature(b) } catch {
            throw OCapNError.malformed("\(what): 64 raw bytes, got \(b.count)")
        }
    }
}

extension SyrupValue {
    /// The Syrup type name, for diagnostics.
    var kindName: String {
        switch self {
        case .bool: return "boolean"
        case .integer: return "integer"
        case .float: return "float"
        case .double: return "double"
        case .bytes: return "bytestring"
        case .string: return "string"
        case .symbol: return "symbol"
        case .list: return "list"
        case .dictionary: return "dictionary"
        case .set: return "set"
        case .record: return "record"
        }
    }
}

// MARK: - Registration v2 (PROTOCOL.md §15)

/// The bytes each side signs in registration v2: a role context, both identity keys and both
/// challenges. Bound this way, a signature made for one server (or one connection, or the other
/// role) verifies nowhere else, so a relay gains nothing by forwarding it.
public enum RegistrationTranscript {
    /// ASCII `ocapn-uds-reg/2 server-sig` ‖ 00: what the server signs.
    public static let serverContext: [UInt8] = SignedMessage.registrationServerContext
    /// ASCII `ocapn-uds-reg/2 client-sig` ‖ 00: what the registering peer signs.
    public static let clientContext: [UInt8] = SignedMessage.registrationClientContext
    /// 27 + 32 + 32 + 64 + 64: never 64 (a legacy challenge) nor 61 (a UDS-HS1 input).
    public static let length = SignedMessage.registrationTranscriptLength

    public typealias Role = SignedMessage.RegistrationRole

    /// `context(role) ‖ IK_S ‖ IK_C ‖ client-challenge ‖ server-challenge`.
    public static func bytes(_ role: Role, server: PublicIdentity, client: PublicIdentity,
                             clientChallenge: Challenge, serverChallenge: Challenge) -> [UInt8] {
        SignedMessage.registrationTranscript(
            role, server: server, client: client, clientChallenge: clientChallenge.bytes, serverChallenge: serverChallenge.bytes)
    }
}

extension Ed25519Signature {
    /// Whether this is the `role` side's signature over the v2 transcript of these values.
    public func isValidRegistration(_ role: RegistrationTranscript.Role, server: PublicIdentity, client: PublicIdentity,
                                    clientChallenge: Challenge, serverChallenge: Challenge) -> Bool {
        let signer = role == .server ? server : client
        return signer.verify(signature: bytes, message: RegistrationTranscript.bytes(
            role, server: server, client: client, clientChallenge: clientChallenge, serverChallenge: serverChallenge))
    }
}
