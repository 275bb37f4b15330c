import Foundation
@testable import Identity
@testable import SodiumCrypto
import Testing

/// Issue #14: one identity type, one operation per thing the key signs, each over exactly the
/// bytes its verifier rebuilds from `SignedMessage` (the wire bytes are pinned by the vectors).
@Suite struct SigningPurposeTests {
    static let pair = IdentityKeyPair.generate()
    static let peer = IdentityKeyPair.generate().publicIdentity
    static func bytes(_ n: Int, _ fill: UInt8) -> [UInt8] { [UInt8](repeating: fill, count: n) }

    @Test("A registration challenge is signed raw, exactly the 64 bytes, as Goblins does")
    func registrationChallenge() {
        let challenge = Self.bytes(64, 0x11)
        let signature = Self.pair.signRegistrationChallenge(challenge)
        #expect(Self.pair.publicIdentity.verify(signature: signature, message: challenge))
        #expect(signature == Ed25519.sign(challenge, secretKey: Self.pair.secretKey))
    }

    @Test("A registration v2 transcript puts this key in its own role's slot and the role's context first")
    func registrationTranscript() {
        let cc = Self.bytes(64, 0xcc), sc = Self.bytes(64, 0x5c)
        for role in [SignedMessage.RegistrationRole.server, .client] {
            let signature = Self.pair.signRegistrationTranscript(role, peer: Self.peer, clientChallenge: cc, serverChallenge: sc)
            let (server, client) = role == .server ? (Self.pair.publicIdentity, Self.peer) : (Self.peer, Self.pair.publicIdentity)
            let message = SignedMessage.registrationTranscript(role, server: server, client: client, clientChallenge: cc, serverChallenge: sc)
            #expect(message.count == SignedMessage.registrationTranscriptLength)
            #expect(message.starts(with: SignedMessage.registrationContext(role)))
            #expect(Self.pair.publicIdentity.verify(signature: signature, message: message))
            // The other role's transcript of the same values does not verify.
            let other: SignedMessage.RegistrationRole = role == .server ? .client : .server
            let swapped = SignedMessage.registrationTranscript(other, server: server, client: client, clientChallenge: cc, serverChallenge: sc)
            #expect(!Self.pair.publicIdentity.verify(signature: signature, message: swapped))
        }
    }

    @Test("A handshake transcript is the role's context and the 32-byte hash: 61 bytes")
    func handshakeTranscript() {
        let h = Self.bytes(32, 0x42)
        for role in [SignedMessage.HandshakeRole.initiator, .responder] {
            let message = SignedMessage.handshakeTranscript(role, hash: h)
            #expect(message.count == 61)
            #expect(message == SignedMessage.handshakeContext(role) + h)
            #expect(Self.pair.publicIdentity.verify(signature: Self.pair.signHandshakeTranscript(role, hash: h), message: message))
        }
        #expect(!Self.pair.publicIdentity.verify(signature: Self.pair.signHandshakeTranscript(.initiator, hash: h),
                                                 message: SignedMessage.handshakeTranscript(.responder, hash: h)))
    }

    @Test("An audit checkpoint is the audit context and the record line")
    func auditCheckpoint() {
        let line = Array(#"{"v":1,"seq":7,"prev":"00000000000000000000000000000000000000000000000000000000000000000","kind":"log.checkpoint"}"#.utf8)
        let message = SignedMessage.auditCheckpoint(recordLine: line)
        #expect(message == SignedMessage.auditCheckpointContext + line)
        #expect(Self.pair.publicIdentity.verify(signature: Self.pair.signAuditCheckpoint(recordLine: line[...]), message: message))
        #expect(!Self.pair.publicIdentity.verify(signature: Self.pair.signAuditCheckpoint(recordLine: line), message: line))
    }

    @Test("The contexts are distinct, none a prefix of another, and no contextual message is 64 bytes long")
    func domainsAreSeparate() {
        let contexts = SignedMessage.contexts
        #expect(Set(contexts).count == contexts.count)
        for a in contexts {
            #expect(a.last == 0, "each context ends with its NUL")
            for b in contexts where a != b { #expect(!b.starts(with: a)) }
        }
        #expect(SignedMessage.registrationTranscriptLength != SignedMessage.challengeLength)
        #expect(SignedMessage.handshakeResponderContext.count + SignedMessage.handshakeHashLength != SignedMessage.challengeLength)
        #expect(SignedMessage.handshakeInitiatorContext.count + SignedMessage.handshakeHashLength != SignedMessage.challengeLength)
    }

    @Test("The X25519 key is derived once, when the key pair is made, and agrees with a DH on the public side")
    func handshakeKeyDerivedOnce() throws {
        let counter = SecretDerivationCounter()
        try SecretDerivationCounter.$current.withValue(counter) {
            let a = IdentityKeyPair.generate(), b = IdentityKeyPair.generate()
            #expect(counter.count == 4, "per key pair: the Ed25519 key from its seed and its X25519 form")
            let ab = try #require(a.handshakeAgreement(with: b.handshakePublicKey))
            let ba = try #require(b.handshakeAgreement(with: a.handshakePublicKey))
            #expect(ab.constantTimeEquals(ba))
            _ = a.signHandshakeTranscript(.initiator, hash: Self.bytes(32, 1))
            _ = a.signRegistrationChallenge(Self.bytes(64, 2))
            #expect(counter.count == 4, "signing and agreeing derived nothing")
            #expect(a.handshakePublicKey == (try Ed25519.publicKeyToX25519(a.publicKey)))
        }
        // A low-order peer point is refused, not turned into an all-zero secret.
        #expect(IdentityKeyPair.generate().handshakeAgreement(with: Self.bytes(32, 0)) == nil)
    }

    @Test("The secret sits in guarded, read-only memory and its X25519 form in the guarded slab; printing shows neither")
    func secretsAreGuarded() {
        let pair = IdentityKeyPair.generate()
        #expect(pair.secretKey.storageForTesting == .guarded)
        guard case .slot = pair.handshakeSecret.storageForTesting else {
            Issue.record("the X25519 form is not in the guarded slab")
            return
        }
        #expect("\(pair)".contains("redacted"))
        #expect(!"\(pair)".contains(Hex.encode(pair.publicKey)))
    }
}
