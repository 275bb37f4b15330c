import Foundation
import TestSupport
@testable import Identity
@testable import SecureChannel
import SodiumCrypto
import Testing

/// The Noise core must reproduce the community Noise_KK_25519_ChaChaPoly_SHA256 vectors.
@Suite struct NoiseVectorTests {
    static func vectors(_ file: String) throws -> [[String: Any]] {
        let json = try JSONSerialization.jsonObject(with: Fixture.data("Vectors/external/noise/\(file)")) as! [String: Any]
        return (json["vectors"] as! [[String: Any]]).filter { ($0["protocol_name"] as! String) == NoiseKKHandshake.protocolName }
    }

    static func hex(_ v: Any?) -> [UInt8] { hexDecode(v as! String) }

    @Test("The Noise_KK SHA256 vector replays byte for byte, transport and handshake hash included", arguments: ["cacophony-KK.json", "snow-KK.json"])
    func sha256Vector(file: String) throws {
        let vs = try Self.vectors(file)
        #expect(vs.count == 1)
        for v in vs {
            let i = NoiseKKHandshake(
                role: .initiator, prologue: Self.hex(v["init_prologue"]), staticSecret: SecretBytes(copying: Self.hex(v["init_static"])),
                remoteStatic: Self.hex(v["init_remote_static"]), ephemeralSecret: SecretBytes(copying: Self.hex(v["init_ephemeral"])))
            let r = NoiseKKHandshake(
                role: .responder, prologue: Self.hex(v["resp_prologue"]), staticSecret: SecretBytes(copying: Self.hex(v["resp_static"])),
                remoteStatic: Self.hex(v["resp_remote_static"]), ephemeralSecret: SecretBytes(copying: Self.hex(v["resp_ephemeral"])))
            let messages = v["messages"] as! [[String: Any]]
            var iTransport: (send: NoiseCipherState, receive: NoiseCipherState)?
            var rTransport: (send: NoiseCipherState, receive: NoiseCipherState)?
            for (n, m) in messages.enumerated() {
                let payload = Self.hex(m["payload"]), expected = Self.hex(m["ciphertext"])
                let fromInitiator = n % 2 == 0
                if n < 2 {
                    let (w, rd) = fromInitiator ? (i, r) : (r, i)
                    let ct = try w.writeMessage(payload: payload)
                    #expect(ct == expected, "message \(n)")
                    #expect(try rd.readMessage(ct) == payload, "message \(n) payload")
                    if n == 1 {
                        #expect(i.handshakeHash == r.handshakeHash)
                        if let hh = v["handshake_hash"] { #expect(i.handshakeHash == Self.hex(hh)) }
                        iTransport = i.split()
                        rTransport = r.split()
                    }
                } else if fromInitiator {
                    let ct = try iTransport!.send.encrypt(ad: [], plaintext: payload)
                    #expect(ct == expected, "transport message \(n)")
                    #expect(try rTransport!.receive.decrypt(ad: [], ciphertext: ct) == payload)
                } else {
                    let ct = try rTransport!.send.encrypt(ad: [], plaintext: payload)
                    #expect(ct == expected, "transport message \(n)")
                    #expect(try iTransport!.receive.decrypt(ad: [], ciphertext: ct) == payload)
                }
            }
            #expect(messages.count > 2, "the vector has transport messages")
        }
    }

    @Test("UDS-HS1 is plain Noise KK with its prologue and the signature as msg2 payload")
    func udsHS1IsPlainKK() throws {
        // The same transcript through the generic KK core: msg1 and msg2 (minus the type byte) match.
        let t = try handshake()
        let a = Fixture.alice, b = Fixture.bob
        let prologue = UDSHS1.label + [0] + Array(t.msg1[0..<72])
        let i = NoiseKKHandshake(role: .initiator, prologue: prologue, staticSecret: a.handshakeSecret, remoteStatic: b.handshakePublicKey,
                                 ephemeralSecret: SecretBytes(copying: Fixture.ephemeralI))
        let r = NoiseKKHandshake(role: .responder, prologue: prologue, staticSecret: b.handshakeSecret, remoteStatic: a.handshakePublicKey,
                                 ephemeralSecret: SecretBytes(copying: Fixture.ephemeralR))
        let m1 = try i.writeMessage(payload: [])
        #expect(m1 == Array(t.msg1[72...]))
        _ = try r.readMessage(m1)
        let sig = try i.readMessage(try r.writeMessage(payload: try signatureFromMsg2(t)))
        #expect(i.handshakeHash == t.initiator.handshakeHash)
        let signed = UDSHS1.responderContext + (try hBeforePayload(t))
        #expect(Ed25519.verify(signature: sig, message: signed, publicKey: b.publicKey))
    }

    /// Decrypts SIG_R out of msg2 by replaying the responder's state (white-box).
    func signatureFromMsg2(_ t: Transcript) throws -> [UInt8] {
        var s = try stateBeforePayload(t)
        return try s.decryptAndHash(Array(t.msg2[33...]))
    }

    func hBeforePayload(_ t: Transcript) throws -> [UInt8] { try stateBeforePayload(t).h }

    func stateBeforePayload(_ t: Transcript) throws -> NoiseSymmetricState {
        let a = Fixture.alice, b = Fixture.bob
        var s = UDSHS1.initialState(header: t.msg1[0..<72], initiatorX: a.handshakePublicKey, responderX: b.handshakePublicKey)
        let ei = Array(t.msg1[72..<104]), er = Array(t.msg2[1..<33])
        s.mixHash(ei)
        s.mixKey(try noiseDH(b.handshakeSecret, ei, "es"))
        s.mixKey(try noiseDH(b.handshakeSecret, a.handshakePublicKey, "ss"))
        _ = try s.decryptAndHash(Array(t.msg1[104...]))
        s.mixHash(er)
        let e = SecretBytes(copying: Fixture.ephemeralR)
        s.mixKey(try noiseDH(e, ei, "ee"))
        s.mixKey(try noiseDH(e, a.handshakePublicKey, "se"))
        return s
    }
}

func hexDecode(_ s: String) -> [UInt8] { TestHex.decode(s) }

func hexEncode(_ b: [UInt8]) -> String { TestHex.encode(b) }
