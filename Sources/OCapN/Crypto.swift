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

/// An identity's secret key, able to sign registration challenges (legacy raw 64 bytes, or a v2
/// transcript) and nothing else.
///
/// The key stays in `SecretBytes` (guarded memory) or behind the caller's signing function; this
/// type has no printable form of it.
public struct SigningIdentity: Sendable, CustomStringConvertible {
    /// The public half.
    public let identity: PublicIdentity
    private let signRaw: @Sendable ([UInt8]) -> [UInt8]

    /// Adapts a key held elsewhere (e.g. Identity's key pair): `sign` must return the 64-byte
    /// pure Ed25519 signature of its input by `identity`'s key.
    public init(identity: PublicIdentity, sign: @escaping @Sendable ([UInt8]) -> [UInt8]) {
        self.identity = identity
        signRaw = sign
    }

    /// From a 32-byte Ed25519 seed (RFC 8032 private key).
    public init(seed: SecretBytes) throws(OCapNError) {
        guard seed.count == Ed25519.seedLength else {
            throw OCapNError(.invalidSecretKey, "an Ed25519 seed is \(Ed25519.seedLength) bytes, got \(seed.count)")
        }
        let pair: (publicKey: [UInt8], secretKey: SecretBytes)
        do { pair = try Ed25519.keyPair(seed: seed) } catch {
            throw OCapNError(.invalidSecretKey, "cannot derive an Ed25519 key pair from the seed")
        }
        let identity: PublicIdentity
        do { identity = try PublicIdentity(publicKey: pair.publicKey) } catch {
            throw OCapNError(.invalidPublicKey, "the seed's public key is not a valid identity key: \(error.code.rawValue)")
        }
        let secretKey = pair.secretKey
        self.init(identity: identity) { message in Ed25519.sign(message, secretKey: secretKey) }
    }

    /// From libsodium's 64-byte secret key (seed ‖ public key); the public half is re-derived
    /// and must match, so a corrupted key is refused rather than producing bad signatures.
    public init(secretKey: SecretBytes) throws(OCapNError) {
        guard secretKey.count == Ed25519.secretKeyLength else {
            throw OCapNError(.invalidSecretKey, "an Ed25519 secret key is \(Ed25519.secretKeyLength) bytes, got \(secretKey.count)")
        }
        try self.init(seed: secretKey.slice(0..<Ed25519.seedLength, guarded: true))
        let storedPublic = secretKey.withUnsafeBytes { Array($0[Ed25519.seedLength...]) }
        guard storedPublic == identity.publicKey else {
            throw OCapNError(.invalidSecretKey, "the secret key's public half does not match its seed")
        }
    }

    /// Signs the raw challenge bytes (Goblins' registration signature: no prefix, no hash).
    public func sign(_ challenge: Challenge) -> Ed25519Signature {
        let raw = signRaw(challenge.bytes)
        // A signing function returning anything but 64 bytes is a bug in the adapter given to init.
        precondition(raw.count == Ed25519Signature.length, "signing function returned \(raw.count) bytes")
        return try! Ed25519Signature(raw)
    }

    /// For the v2 transcript only (its fixed 219-byte layout is built in this file).
    fileprivate func signRawBytes(_ message: [UInt8]) -> [UInt8] {
        precondition(message.count == RegistrationTranscript.length, "only registration v2 transcripts are signed here")
        return signRaw(message)
    }

    public var description: String { "SigningIdentity(\(identity.fingerprint))" }
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
    public static let serverContext: [UInt8] = Array("ocapn-uds-reg/2 server-sig".utf8) + [0]
    /// ASCII `ocapn-uds-reg/2 client-sig` ‖ 00: what the registering peer signs.
    public static let clientContext: [UInt8] = Array("ocapn-uds-reg/2 client-sig".utf8) + [0]
    /// 27 + 32 + 32 + 64 + 64: never 64 (a legacy challenge) nor 61 (a UDS-HS1 input).
    public static let length = 219

    public enum Role: Sendable { case server, client }

    /// `context(role) ‖ IK_S ‖ IK_C ‖ client-challenge ‖ server-challenge`.
    public static func bytes(_ role: Role, server: PublicIdentity, client: PublicIdentity,
                             clientChallenge: Challenge, serverChallenge: Challenge) -> [UInt8] {
        var out = role == .server ? serverContext : clientContext
        out.reserveCapacity(length)
        out += server.publicKey
        out += client.publicKey
        out += clientChallenge.bytes
        out += serverChallenge.bytes
        return out
    }
}

extension SigningIdentity {
    /// Signs a registration v2 transcript in `role`, with this identity in that role's key slot.
    public func signRegistration(_ role: RegistrationTranscript.Role, peer: PublicIdentity,
                                 clientChallenge: Challenge, serverChallenge: Challenge) -> Ed25519Signature {
        let message = RegistrationTranscript.bytes(
            role, server: role == .server ? identity : peer, client: role == .client ? identity : peer,
            clientChallenge: clientChallenge, serverChallenge: serverChallenge)
        let raw = signRawBytes(message)
        precondition(raw.count == Ed25519Signature.length, "signing function returned \(raw.count) bytes")
        return try! Ed25519Signature(raw)
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
