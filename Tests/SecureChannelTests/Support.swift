import Foundation
@testable import Identity
@testable import SecureChannel
import SodiumCrypto

/// Deterministic keys and in-memory plumbing shared by the tests.
enum Fixture {
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func data(_ relative: String) throws -> Data {
        try Data(contentsOf: repositoryRoot.appendingPathComponent(relative))
    }

    /// An identity from a one-byte seed label (randombytes_buf_deterministic of 32 × label).
    static func identity(_ label: UInt8) -> IdentityKeyPair {
        let seed = SecretBytes(copying: RandomBytes.deterministic(32, seed: [UInt8](repeating: label, count: 32)), guarded: true)
        return try! IdentityKeyPair(seed: seed)
    }

    static let alice = identity(0xA1)
    static let bob = identity(0xB0)
    static let carol = identity(0xC0)
    static let mallory = identity(0x3A)

    /// A source that hands out the given key every time (deterministic transcripts).
    static func fixedEphemeral(_ secret: [UInt8]) -> EphemeralKeySource {
        EphemeralKeySource { SecretBytes(copying: secret) }
    }

    static let ephemeralI = RandomBytes.deterministic(32, seed: [UInt8](repeating: 0xE1, count: 32))
    static let ephemeralR = RandomBytes.deterministic(32, seed: [UInt8](repeating: 0xE2, count: 32))

    static let now = ContinuousClock.now
    static let cache = IdentityKeyCache()
}

/// A handshake driven by hand, keeping every message for tampering.
struct Transcript {
    let msg1: [UInt8]
    let msg2: [UInt8]
    let auth: [UInt8]
    let initiator: EstablishedSession
    let responder: EstablishedSession
}

func initiator(
    _ me: IdentityKeyPair = Fixture.alice, to peer: IdentityKeyPair = Fixture.bob,
    ephemeral: [UInt8]? = Fixture.ephemeralI, configuration: HandshakeConfiguration = HandshakeConfiguration()
) throws(HandshakeError) -> HandshakeInitiator {
    try HandshakeInitiator(
        identity: me, responder: peer.publicIdentity, configuration: configuration, keyCache: Fixture.cache,
        ephemeralKeys: ephemeral.map(Fixture.fixedEphemeral) ?? .system, now: Fixture.now)
}

func responder(
    _ me: IdentityKeyPair = Fixture.bob, from claimed: [UInt8] = Fixture.alice.publicKey,
    ephemeral: [UInt8]? = Fixture.ephemeralR, configuration: HandshakeConfiguration = HandshakeConfiguration(),
    policy: (@Sendable ([UInt8]) -> Bool)? = nil
) -> HandshakeResponder {
    HandshakeResponder(
        identity: me, announcedInitiatorKey: claimed, configuration: configuration, policy: policy, keyCache: Fixture.cache,
        ephemeralKeys: ephemeral.map(Fixture.fixedEphemeral) ?? .system, now: Fixture.now)
}

struct UnexpectedStep: Error, CustomStringConvertible {
    let description: String
}

/// Runs a full handshake in memory between fresh machines.
func handshake(
    _ a: IdentityKeyPair = Fixture.alice, _ b: IdentityKeyPair = Fixture.bob,
    deterministic: Bool = true, configuration: HandshakeConfiguration = HandshakeConfiguration()
) throws -> Transcript {
    let i = try initiator(a, to: b, ephemeral: deterministic ? Fixture.ephemeralI : nil, configuration: configuration)
    let r = responder(b, from: a.publicKey, ephemeral: deterministic ? Fixture.ephemeralR : nil, configuration: configuration)
    guard case .send(let msg2) = try r.receive(i.initialMessage, now: Fixture.now) else { throw UnexpectedStep(description: "no msg2") }
    guard case .established(let si, let auth) = try i.receive(msg2, now: Fixture.now) else { throw UnexpectedStep(description: "initiator not established") }
    guard case .established(let sr, let extra) = try r.receive(auth, now: Fixture.now), extra.isEmpty else {
        throw UnexpectedStep(description: "responder not established")
    }
    return Transcript(msg1: i.initialMessage, msg2: msg2, auth: auth, initiator: si, responder: sr)
}

/// Runs `body` and returns the HandshakeError code it threw, or nil if it did not throw.
func code(_ body: () throws -> Void) -> HandshakeError.Code? {
    do {
        try body()
        return nil
    } catch let error as HandshakeError {
        return error.code
    } catch {
        return nil
    }
}

/// Feeds msg1 to a fresh responder; returns the code it failed with (nil: it answered).
func responderCode(_ msg1: [UInt8], _ r: HandshakeResponder = responder()) -> HandshakeError.Code? {
    code { _ = try r.receive(msg1, now: Fixture.now) }
}

/// Feeds msg2 to a fresh deterministic initiator; returns the failure code (nil: established).
func initiatorCode(_ msg2: [UInt8]) -> HandshakeError.Code? {
    code { _ = try initiator().receive(msg2, now: Fixture.now) }
}

/// Feeds the genuine msg1, then `auth`, to a fresh responder; returns the failure code.
func authCode(_ auth: [UInt8], msg1: [UInt8]) -> HandshakeError.Code? {
    let r = responder()
    return code {
        _ = try r.receive(msg1, now: Fixture.now)
        _ = try r.receive(auth, now: Fixture.now)
    }
}

func flipped(_ bytes: [UInt8], bit: Int) -> [UInt8] {
    var out = bytes
    out[bit / 8] ^= UInt8(1) << UInt8(bit % 8)
    return out
}

func replacing(_ bytes: [UInt8], at offset: Int, with new: [UInt8]) -> [UInt8] {
    var out = bytes
    out.replaceSubrange(offset..<offset + new.count, with: new)
    return out
}

/// Builds msg1 bytes by the protocol rules from arbitrary parts: what an attacker who holds
/// `staticSecret` (but claims any header keys) can produce.
func forgeMsg1(
    header: [UInt8], staticSecret: SecretBytes, staticX: [UInt8], responderX: [UInt8], ephemeral: [UInt8],
    ssOverride: SecretBytes? = nil
) throws -> (msg1: [UInt8], state: NoiseSymmetricState) {
    let e = SecretBytes(copying: ephemeral)
    let ei = X25519.publicKey(secret: e)
    var s = UDSHS1.initialState(header: header[...], initiatorX: staticX, responderX: responderX)
    s.mixHash(ei)
    s.mixKey(try noiseDH(e, responderX, "es"))
    s.mixKey(try ssOverride ?? noiseDH(staticSecret, responderX, "ss"))
    let tag = try s.encryptAndHash([])
    return (header + ei + tag, s)
}

func header(version: UInt8 = 1, initiator: [UInt8], responder: [UInt8]) -> [UInt8] {
    UDSHS1.magic + [version, UDSHS1.msg1Type, 0, 0] + initiator + responder
}
