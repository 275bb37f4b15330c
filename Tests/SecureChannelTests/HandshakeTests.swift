import Foundation
@testable import Identity
@testable import SecureChannel
import SodiumCrypto
import Testing

@Suite struct HandshakeTests {
    // MARK: Happy paths

    @Test("A full handshake establishes matching sessions with fixed message sizes")
    func happyPath() throws {
        let t = try handshake()
        #expect(t.msg1.count == 120 && t.msg2.count == 113 && t.auth.count == 83)
        #expect(t.initiator.peer.publicKey == Fixture.bob.publicKey)
        #expect(t.responder.peer.publicKey == Fixture.alice.publicKey)
        #expect(t.initiator.handshakeHash == t.responder.handshakeHash)
        #expect(t.initiator.sessionID == t.responder.sessionID)
        #expect(t.initiator.role == .initiator && t.responder.role == .responder)
        #expect(t.initiator.sender.trafficKeyForTesting == t.responder.receiver.trafficKeyForTesting)
        #expect(t.responder.sender.trafficKeyForTesting == t.initiator.receiver.trafficKeyForTesting)
        #expect(t.initiator.sender.trafficKeyForTesting != t.initiator.receiver.trafficKeyForTesting, "each direction has its own key")
    }

    @Test("Messages flow both ways after the handshake and CLOSE ends each direction cleanly")
    func messagesBothWays() throws {
        let t = try handshake(deterministic: false)
        try t.responder.receiver.receive(try t.initiator.sender.seal(Array("hello bob".utf8)))
        #expect(try t.responder.receiver.next() == .message(Array("hello bob".utf8)))
        try t.initiator.receiver.receive(try t.responder.sender.seal(Array("hello alice".utf8)))
        #expect(try t.initiator.receiver.next() == .message(Array("hello alice".utf8)))
        try t.responder.receiver.receive(try t.initiator.sender.close())
        #expect(try t.responder.receiver.next() == .closed)
        try t.responder.receiver.receiveEOF()
        try t.initiator.receiver.receive(try t.responder.sender.close())
        #expect(try t.initiator.receiver.next() == .closed)
    }

    @Test("Two handshakes between the same peers have different hashes, session ids and keys")
    func freshSessions() throws {
        let a = try handshake(deterministic: false), b = try handshake(deterministic: false)
        #expect(a.initiator.handshakeHash != b.initiator.handshakeHash)
        #expect(a.initiator.sessionID != b.initiator.sessionID)
        #expect(a.initiator.sender.trafficKeyForTesting != b.initiator.sender.trafficKeyForTesting)
    }

    @Test("Data pipelined right behind AUTH reaches the responder's channel")
    func pipelinedData() throws {
        let i = try initiator(), r = responder()
        guard case .send(let msg2) = try r.receive(i.initialMessage, now: Fixture.now),
              case .established(let si, let auth) = try i.receive(msg2, now: Fixture.now) else { Issue.record("no progress"); return }
        let data = try si.sender.seal(Array("pipelined".utf8))
        guard case .established(let sr, _) = try r.receive(auth + data, now: Fixture.now) else { Issue.record("not established"); return }
        #expect(try sr.receiver.next() == .message(Array("pipelined".utf8)))
    }

    @Test("Handshake messages fed one byte at a time give the same result")
    func byteByByte() throws {
        let i = try initiator(), r = responder()
        var msg2: [UInt8] = []
        for (n, byte) in i.initialMessage.enumerated() {
            let step = try r.receive([byte], now: Fixture.now)
            if n < 119 {
                guard case .needMoreBytes = step else { Issue.record("early output at \(n)"); return }
            } else if case .send(let m) = step { msg2 = m }
        }
        #expect(msg2.count == 113)
        var auth: [UInt8] = []
        for (n, byte) in msg2.enumerated() {
            let step = try i.receive([byte], now: Fixture.now)
            if n < 112 {
                guard case .needMoreBytes = step else { Issue.record("early output at \(n)"); return }
            } else if case .established(_, let a) = step { auth = a }
        }
        var done = false
        for (n, byte) in auth.enumerated() {
            let step = try r.receive([byte], now: Fixture.now)
            if case .established = step { done = n == 82 }
        }
        #expect(done)
    }

    @Test("The responder sends nothing before msg1 verifies and releases no session before AUTH verifies")
    func responderReleasesNothingEarly() throws {
        let i = try initiator(), r = responder()
        guard case .needMoreBytes = try r.receive(Array(i.initialMessage[..<119]), now: Fixture.now) else {
            Issue.record("responder answered a partial msg1"); return
        }
        guard case .send(let msg2) = try r.receive([i.initialMessage[119]], now: Fixture.now) else { Issue.record("no msg2"); return }
        guard case .established(_, let auth) = try i.receive(msg2, now: Fixture.now) else { Issue.record("initiator not established"); return }
        // All of AUTH but its last byte: still nothing for the application.
        guard case .needMoreBytes = try r.receive(Array(auth.dropLast()), now: Fixture.now) else {
            Issue.record("responder released something before AUTH was complete"); return
        }
        // The last byte forged: refused, no session ever released.
        #expect(code { _ = try r.receive([auth[82] ^ 1], now: Fixture.now) } == .decryptFailed)
        // The same bytes with the genuine last byte (a fresh, identical responder) do establish it,
        // so the refusal above is about the forgery, not about the byte split.
        let r2 = responder()
        guard case .send = try r2.receive(i.initialMessage, now: Fixture.now),
              case .needMoreBytes = try r2.receive(Array(auth.dropLast()), now: Fixture.now) else { Issue.record("no progress"); return }
        guard case .established(let session, _) = try r2.receive([auth[82]], now: Fixture.now) else {
            Issue.record("genuine AUTH not accepted"); return
        }
        #expect(session.peer.publicKey == Fixture.alice.publicKey)
    }

    // MARK: Signing contexts

    @Test("No signed handshake input is 64 bytes, so a raw 64-byte challenge signer cannot produce one")
    func signedInputsAreNever64Bytes() throws {
        for context in UDSHS1.signatureContexts {
            // 61 is what PROTOCOL.md §10 promises; a legacy registration challenge is 64 bytes.
            #expect(context.count + SHA256.outputLength == 61)
            #expect(context.last == 0 && !context.dropLast().contains(0))
        }
        #expect(UDSHS1.responderContext != UDSHS1.initiatorContext)
    }

    // MARK: Rejections, in the order the responder checks

    @Test("Each msg1 header field is checked with its own reason code")
    func msg1HeaderChecks() throws {
        let m = try initiator().initialMessage
        #expect(responderCode(replacing(m, at: 0, with: [0x6f, 0x55, 0x48, 0x54])) == .badMagic)
        #expect(responderCode(replacing(m, at: 4, with: [2])) == .unsupportedVersion)
        #expect(responderCode(replacing(m, at: 4, with: [0])) == .unsupportedVersion)
        #expect(responderCode(replacing(m, at: 5, with: [2])) == .unexpectedMessageType)
        #expect(responderCode(replacing(m, at: 6, with: [0, 1])) == .reservedFlagsSet)
        #expect(responderCode(replacing(m, at: 6, with: [0x80, 0])) == .reservedFlagsSet)
    }

    @Test("A lying from is caught as identityMismatch and a forged header as decryptFailed")
    func lyingFrom() throws {
        let m = try initiator().initialMessage
        #expect(responderCode(m, responder(from: Fixture.carol.publicKey)) == .identityMismatch)
        let forged = replacing(m, at: 8, with: Fixture.carol.publicKey)
        #expect(responderCode(forged, responder(from: Fixture.carol.publicKey)) == .decryptFailed)
    }

    @Test("A msg1 handed to the wrong responder is wrongResponder, and a rewritten IK_R is decryptFailed")
    func swappedRecipient() throws {
        let m = try initiator().initialMessage
        #expect(responderCode(m, responder(Fixture.carol)) == .wrongResponder)
        #expect(responderCode(replacing(m, at: 40, with: Fixture.carol.publicKey), responder(Fixture.carol)) == .decryptFailed)
    }

    @Test("Connecting to oneself is refused by both roles")
    func selfConnection() throws {
        #expect(code { _ = try initiator(Fixture.alice, to: Fixture.alice) } == .selfConnection)
        let m = replacing(try initiator().initialMessage, at: 8, with: Fixture.bob.publicKey)
        #expect(responderCode(m, responder(from: Fixture.bob.publicKey)) == .selfConnection)
    }

    @Test("The policy hook refuses an initiator before any DH")
    func policyRefuses() throws {
        let m = try initiator().initialMessage
        let seen = LockedBox<[UInt8]>([])
        let r = responder(policy: { key in seen.set(key); return false })
        #expect(responderCode(m, r) == .peerNotAllowed)
        #expect(seen.get() == Fixture.alice.publicKey)
        #expect(responderCode(m, responder(policy: { _ in true })) == nil)
    }

    @Test("Invalid identity keys are refused on both sides and the X25519 cache skips them")
    func invalidIdentityKeys() throws {
        // A small-order Ed25519 point (the identity element, y = 1) and a non-canonical encoding.
        let identityPoint = [UInt8(1)] + [UInt8](repeating: 0, count: 31)
        let nonCanonical = [UInt8](repeating: 0xff, count: 31) + [0x7f]
        for bad in [identityPoint, nonCanonical] {
            // The initiator takes the responder as a `PublicIdentity`: no such key can be named.
            #expect(throws: IdentityError.self) { try PublicIdentity(publicKey: bad) }
            let m = replacing(try initiator().initialMessage, at: 8, with: bad)
            #expect(responderCode(m, responder(from: bad)) == .invalidIdentityKey)
        }
        // A valid key plus a point of order 8 (torsion): mixed order, refused (CVE-2025-69277).
        let torsion: [UInt8] = hexDecode("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
        #expect(IdentityKeyCache().x25519(forIdentity: torsion) == nil)
        #expect(throws: IdentityError.self) { try PublicIdentity(publicKey: torsion) }
        #expect(throws: IdentityError.self) { try PublicIdentity(publicKey: [1, 2, 3]) }
    }

    @Test("A handshake signs and converts with the key pair itself: its X25519 key is derived once, when it is made")
    func handshakeKeyDerivedOnce() throws {
        let counter = SecretDerivationCounter()
        try SecretDerivationCounter.$current.withValue(counter) {
            let a = IdentityKeyPair.generate(), b = IdentityKeyPair.generate()
            // Per key pair: the Ed25519 key from its seed and its X25519 form, nothing more.
            #expect(counter.count == 4)
            for _ in 0..<3 {
                _ = try handshake(a, b, deterministic: false)
                _ = try handshake(b, a, deterministic: false)
            }
            #expect(counter.count == 4, "six handshakes derived no key")
        }
    }

    // MARK: Ephemeral keys

    static func wycheproofX25519(flag: String) throws -> [[UInt8]] {
        let json = try JSONSerialization.jsonObject(with: Fixture.data("Vectors/external/wycheproof/x25519_test.json")) as! [String: Any]
        var seen = Set<[UInt8]>()
        var out: [[UInt8]] = []
        for group in json["testGroups"] as! [[String: Any]] {
            for t in group["tests"] as! [[String: Any]] where (t["flags"] as! [String]).contains(flag) {
                let pk = hexDecode(t["public"] as! String)
                if seen.insert(pk).inserted { out.append(pk) }
            }
        }
        return out
    }

    @Test("Every Wycheproof low-order public key as E_I or E_R is rejected before any secret is used")
    func lowOrderEphemerals() throws {
        let points = try Self.wycheproofX25519(flag: "LowOrderPublic")
        #expect(points.count >= 10)
        let t = try handshake()
        var lowOrder = 0
        for p in points {
            let expected: HandshakeError.Code = X25519.isCanonical(p) ? .lowOrderPoint : .nonCanonicalPoint
            if expected == .lowOrderPoint { lowOrder += 1 }
            #expect(responderCode(replacing(t.msg1, at: 72, with: p)) == expected, "E_I \(hexEncode(p))")
            #expect(initiatorCode(replacing(t.msg2, at: 1, with: p)) == expected, "E_R \(hexEncode(p))")
        }
        #expect(lowOrder >= 5, "canonical low-order points reach the DH check")
    }

    @Test("Non-canonical X25519 encodings (bit 255 set, u ≥ p) are rejected as nonCanonicalPoint")
    func nonCanonicalEphemerals() throws {
        let t = try handshake()
        var points = try Self.wycheproofX25519(flag: "NonCanonicalPublic")
        var highBit = Array(t.msg1[72..<104]); highBit[31] |= 0x80
        points.append(highBit)
        let p = [0xed] + [UInt8](repeating: 0xff, count: 30) + [0x7f]
        points.append(p)
        points.append(replacing(p, at: 0, with: [0xee]))  // p + 1
        for q in points where !X25519.isCanonical(q) {
            #expect(responderCode(replacing(t.msg1, at: 72, with: q)) == .nonCanonicalPoint)
            #expect(initiatorCode(replacing(t.msg2, at: 1, with: q)) == .nonCanonicalPoint)
        }
        #expect(points.filter { !X25519.isCanonical($0) }.count >= 3)
    }

    @Test("A reflected ephemeral is refused by the initiator and never sent by the responder")
    func reflection() throws {
        let t = try handshake()
        #expect(initiatorCode(replacing(t.msg2, at: 1, with: Array(t.msg1[72..<104]))) == .reflection)
        #expect(responderCode(t.msg1, responder(ephemeral: Fixture.ephemeralI)) == .reflection)
    }

    @Test("msg1 echoed back to the initiator is an unexpected message type")
    func echoedMsg1() throws {
        let i = try initiator()
        #expect(code { _ = try i.receive(i.initialMessage, now: Fixture.now) } == .unexpectedMessageType)
    }

    @Test("msg2 type, tag and signature faults get their own codes")
    func msg2Checks() throws {
        let t = try handshake()
        #expect(initiatorCode(replacing(t.msg2, at: 0, with: [1])) == .unexpectedMessageType)
        #expect(initiatorCode(flipped(t.msg2, bit: 112 * 8)) == .decryptFailed)
        #expect(initiatorCode(flipped(t.msg2, bit: 40 * 8)) == .decryptFailed)
        #expect(initiatorCode(try Forge.msg2(signedBy: Fixture.mallory)) == .badSignature)
        #expect(initiatorCode(try Forge.msg2(malleateS: true)) == .badSignature)
        #expect(initiatorCode(try Forge.msg2()) == nil, "the forging helper reproduces a valid msg2")
    }

    @Test("AUTH length, type, tag and signature faults get their own codes")
    func authChecks() throws {
        let t = try handshake()
        #expect(authCode(replacing(t.auth, at: 0, with: [0x00, 0x52]), msg1: t.msg1) == .badFrameLength)
        #expect(authCode(replacing(t.auth, at: 0, with: [0x00, 0x10]), msg1: t.msg1) == .badFrameLength)
        #expect(authCode(flipped(t.auth, bit: 50), msg1: t.msg1) == .decryptFailed)
        #expect(authCode(try Forge.auth(type: 0x00), msg1: t.msg1) == .unexpectedMessageType)
        #expect(authCode(try Forge.auth(signedBy: Fixture.mallory), msg1: t.msg1) == .badSignature)
        #expect(authCode(try Forge.auth(signedContext: UDSHS1.responderContext), msg1: t.msg1) == .badSignature)
        #expect(authCode(try Forge.auth(), msg1: t.msg1) == nil, "the forging helper reproduces a valid AUTH")
    }

    // MARK: Attacks (handshake-anchors §2)

    @Test("A man in the middle with its own keys fails at both victims with decryptFailed")
    func mitmWithOwnKeys() throws {
        let a = Fixture.alice, b = Fixture.bob, m = Fixture.mallory
        // Towards B: a msg1 claiming A, built with M's static key.
        let forged = try forgeMsg1(header: header(initiator: a.publicKey, responder: b.publicKey), staticSecret: m.handshakeSecret,
                                   staticX: a.handshakePublicKey, responderX: b.handshakePublicKey, ephemeral: Fixture.ephemeralI).msg1
        #expect(responderCode(forged) == .decryptFailed)
        // Towards A: a msg2 answering A's msg1 as if M's key were B's.
        #expect(initiatorCode(try Forge.msg2(responderStatic: m)) == .decryptFailed)
    }

    @Test("A raw signing oracle on A's key does not let an attacker impersonate A")
    func signingOracle() throws {
        let a = Fixture.alice, b = Fixture.bob, m = Fixture.mallory
        let oracle = { (x: [UInt8]) in Ed25519.sign(x, secretKey: a.secretKey) }
        // Without A's DH secret the attacker's msg1 (ss from its own key) fails at B.
        let (msg1, _) = try forgeMsg1(header: header(initiator: a.publicKey, responder: b.publicKey), staticSecret: m.handshakeSecret,
                                      staticX: a.handshakePublicKey, responderX: b.handshakePublicKey, ephemeral: Fixture.ephemeralI)
        #expect(responderCode(msg1) == .decryptFailed)
        // Even given B's answer to a genuine msg1 replayed from A, the oracle's signature over the
        // real HH is useless: K_IR needs se = DH(s_A, E_R), which only A can compute.
        let t = try handshake()
        let r = responder(ephemeral: nil)
        guard case .send(let msg2) = try r.receive(t.msg1, now: Fixture.now) else { Issue.record("no msg2"); return }
        // The oracle signs whatever the attacker likes, e.g. the initiator context over its best
        // guess of HH; the key it seals AUTH under is still a guess.
        let sig = oracle(UDSHS1.initiatorContext + SHA256.hash(t.msg1 + msg2))
        let guess = FrameSender(key: SecretBytes(copying: SHA256.hash(msg2)), nonce: 0, configuration: ChannelConfiguration())
        #expect(code { _ = try r.receive(try guess.sealAuth(signature: sig), now: Fixture.now) } == .decryptFailed)
    }

    @Test("Knowing B's static secret lets an attacker pass msg1 but never AUTH (no KCI)")
    func keyCompromiseImpersonation() throws {
        let a = Fixture.alice, b = Fixture.bob, m = Fixture.mallory
        // ss = DH(s_A, PX_B) = DH(s_B, PX_A): computable with B's secret.
        let ss = try noiseDH(b.handshakeSecret, a.handshakePublicKey, "ss")
        var (msg1, s) = try forgeMsg1(header: header(initiator: a.publicKey, responder: b.publicKey), staticSecret: m.handshakeSecret,
                                      staticX: a.handshakePublicKey, responderX: b.handshakePublicKey, ephemeral: Fixture.ephemeralI, ssOverride: ss)
        let r = responder(ephemeral: nil)
        guard case .send(let msg2) = try r.receive(msg1, now: Fixture.now) else { Issue.record("msg1 should pass"); return }
        // The attacker knows e_I, so ee works; se = DH(s_A, E_R) is the term it cannot compute.
        let er = Array(msg2[1..<33])
        let e = SecretBytes(copying: Fixture.ephemeralI)
        s.mixHash(er)
        s.mixKey(try noiseDH(e, er, "ee"))
        s.mixKey(try noiseDH(b.handshakeSecret, er, "se (best guess)"))
        #expect(code { _ = try s.decryptAndHash(Array(msg2[33...])) } == .decryptFailed)
        let (kIR, _) = s.split()
        let auth = try FrameSender(key: kIR, nonce: 0, configuration: ChannelConfiguration())
            .sealAuth(signature: Ed25519.sign(UDSHS1.initiatorContext + s.h, secretKey: m.secretKey))
        #expect(code { _ = try r.receive(auth, now: Fixture.now) } == .decryptFailed)
    }

    @Test("The negated identity key −IK maps to the same X25519 key but is still refused")
    func negatedIdentityKey() throws {
        let a = Fixture.alice, b = Fixture.bob
        var negA = a.publicKey; negA[31] ^= 0x80
        var negB = b.publicKey; negB[31] ^= 0x80
        #expect(Fixture.cache.x25519(forIdentity: negA) == a.handshakePublicKey, "the map uses only y")
        let m = try initiator().initialMessage
        #expect(responderCode(replacing(m, at: 8, with: negA)) == .identityMismatch)
        #expect(responderCode(replacing(m, at: 8, with: negA), responder(from: negA)) == .decryptFailed)
        // A who was told −IK_B addresses a key B does not have.
        let toNegB = try HandshakeInitiator(identity: a, responder: try PublicIdentity(publicKey: negB), keyCache: Fixture.cache,
                                            ephemeralKeys: Fixture.fixedEphemeral(Fixture.ephemeralI), now: Fixture.now)
        #expect(responderCode(toNegB.initialMessage) == .wrongResponder)
    }

    @Test("Replayed msg1, msg2, AUTH and frames from another session all fail")
    func replays() throws {
        let old = try handshake(deterministic: false)
        // msg1 replay: the responder answers (it cannot tell) but the old AUTH does not fit.
        let r = responder(ephemeral: nil)
        guard case .send = try r.receive(old.msg1, now: Fixture.now) else { Issue.record("no msg2"); return }
        #expect(code { _ = try r.receive(old.auth, now: Fixture.now) } == .decryptFailed)
        // msg2 replay to a new initiator.
        let i = try initiator(ephemeral: nil)
        #expect(code { _ = try i.receive(old.msg2, now: Fixture.now) } == .decryptFailed)
        // AUTH replay into a fresh session between the same peers.
        let i2 = try initiator(ephemeral: nil), r2 = responder(ephemeral: nil)
        guard case .send(let msg2) = try r2.receive(i2.initialMessage, now: Fixture.now) else { Issue.record("no msg2"); return }
        _ = try i2.receive(msg2, now: Fixture.now)
        #expect(code { _ = try r2.receive(old.auth, now: Fixture.now) } == .decryptFailed)
        // Transport frame replay into another session.
        let new = try handshake(deterministic: false)
        let frame = try old.initiator.sender.seal([1, 2, 3])
        #expect(code { try new.responder.receiver.receive(frame); _ = try new.responder.receiver.next() } == .decryptFailed)
    }

    @Test("A v2 msg1 is refused as unsupportedVersion and rewriting its version to 1 breaks the tag")
    func versionDowngrade() throws {
        let a = Fixture.alice, b = Fixture.bob
        let v2 = try forgeMsg1(header: header(version: 2, initiator: a.publicKey, responder: b.publicKey), staticSecret: a.handshakeSecret,
                               staticX: a.handshakePublicKey, responderX: b.handshakePublicKey, ephemeral: Fixture.ephemeralI).msg1
        #expect(responderCode(v2) == .unsupportedVersion)
        #expect(responderCode(replacing(v2, at: 4, with: [1])) == .decryptFailed)
        let v1 = try forgeMsg1(header: header(initiator: a.publicKey, responder: b.publicKey), staticSecret: a.handshakeSecret,
                               staticX: a.handshakePublicKey, responderX: b.handshakePublicKey, ephemeral: Fixture.ephemeralI).msg1
        #expect(v1 == (try initiator().initialMessage), "the forging helper matches the real initiator")
    }

    @Test("Two responders given the same socket: at most one finishes")
    func doubleDelivery() throws {
        let i = try initiator(ephemeral: nil)
        let rb = responder(ephemeral: nil), rc = responder(Fixture.carol, ephemeral: nil)
        #expect(responderCode(i.initialMessage, rc) == .wrongResponder)
        guard case .send(let msg2) = try rb.receive(i.initialMessage, now: Fixture.now) else { Issue.record("no msg2"); return }
        guard case .established = try i.receive(msg2, now: Fixture.now) else { Issue.record("not established"); return }
    }

    // MARK: Deadlines and EOF

    @Test("Both roles time out at the deadline and not before")
    func deadlines() throws {
        let cfg = HandshakeConfiguration(timeout: .seconds(5))
        let i = try initiator(configuration: cfg)
        try i.checkDeadline(now: Fixture.now.advanced(by: .seconds(4)))
        #expect(code { try i.checkDeadline(now: Fixture.now.advanced(by: .seconds(5))) } == .timeout)
        let r = responder(configuration: cfg)
        #expect(code { _ = try r.receive(i.initialMessage, now: Fixture.now.advanced(by: .seconds(6))) } == .timeout)
        let r2 = responder(configuration: cfg)
        _ = try r2.receive(i.initialMessage, now: Fixture.now.advanced(by: .seconds(1)))
        #expect(code { try r2.checkDeadline(now: Fixture.now.advanced(by: .seconds(7))) } == .timeout)
        // A timer firing after completion does not undo an established handshake.
        let i3 = try initiator(configuration: cfg), r3 = responder(configuration: cfg)
        guard case .send(let m2) = try r3.receive(i3.initialMessage, now: Fixture.now),
              case .established(_, let auth) = try i3.receive(m2, now: Fixture.now),
              case .established = try r3.receive(auth, now: Fixture.now) else { Issue.record("handshake"); return }
        try i3.checkDeadline(now: Fixture.now.advanced(by: .seconds(60)))
        try r3.checkDeadline(now: Fixture.now.advanced(by: .seconds(60)))
    }

    @Test("EOF at every offset of msg1, msg2 and AUTH is truncated")
    func eofEverywhere() throws {
        let t = try handshake()
        for n in 0..<t.msg1.count {
            let r = responder()
            _ = try r.receive(Array(t.msg1[..<n]), now: Fixture.now)
            #expect(code { try r.receiveEOF() } == .truncated)
        }
        for n in 0..<t.msg2.count {
            let i = try initiator()
            _ = try i.receive(Array(t.msg2[..<n]), now: Fixture.now)
            #expect(code { try i.receiveEOF() } == .truncated)
        }
        for n in 0..<t.auth.count {
            let r = responder()
            _ = try r.receive(t.msg1 + t.auth[..<n], now: Fixture.now)
            #expect(code { try r.receiveEOF() } == .truncated)
        }
    }

    // MARK: Garbage

    @Test("Every single-bit flip of msg1, msg2 and AUTH fails with a named error")
    func exhaustiveBitFlips() throws {
        let t = try handshake()
        var codes: [String: Set<HandshakeError.Code>] = [:]
        for bit in 0..<(t.msg1.count * 8) {
            let c = responderCode(flipped(t.msg1, bit: bit))
            #expect(c != nil, "msg1 bit \(bit) was accepted")
            if let c { codes["msg1", default: []].insert(c) }
        }
        for bit in 0..<(t.msg2.count * 8) {
            let c = initiatorCode(flipped(t.msg2, bit: bit))
            #expect(c != nil, "msg2 bit \(bit) was accepted")
            if let c { codes["msg2", default: []].insert(c) }
        }
        for bit in 0..<(t.auth.count * 8) {
            let c = authCode(flipped(t.auth, bit: bit), msg1: t.msg1)
            #expect(c != nil, "AUTH bit \(bit) was accepted")
            if let c { codes["auth", default: []].insert(c) }
        }
        #expect(codes["msg1"]!.isSuperset(of: [.badMagic, .unsupportedVersion, .unexpectedMessageType, .reservedFlagsSet,
                                                 .identityMismatch, .wrongResponder, .decryptFailed]))
        #expect(codes["msg2"]!.isSuperset(of: [.unexpectedMessageType, .decryptFailed]))
        #expect(codes["auth"]!.isSuperset(of: [.badFrameLength, .decryptFailed]))
    }

    @Test("Random garbage in place of each handshake message is rejected (seeded)")
    func randomGarbage() throws {
        let t = try handshake()
        for seed in UInt8(0)..<16 {
            let g1 = RandomBytes.deterministic(120, seed: [UInt8](repeating: seed, count: 32))
            let g2 = RandomBytes.deterministic(113, seed: [UInt8](repeating: seed &+ 100, count: 32))
            let g3 = [0x00, 0x51] + RandomBytes.deterministic(81, seed: [UInt8](repeating: seed &+ 200, count: 32))
            #expect(responderCode(g1) != nil)
            #expect(initiatorCode(g2) != nil)
            #expect(authCode(g3, msg1: t.msg1) == .decryptFailed)
        }
    }
}

/// Builds protocol-valid messages with chosen faults (white-box, for the negative tests and the
/// vector file). Everything is derived from the fixed test keys and ephemerals.
enum Forge {
    /// msg2 answering the deterministic msg1, signed by `signedBy` over `CTX_R ‖ h`.
    static func msg2(responderStatic: IdentityKeyPair = Fixture.bob, signedBy: IdentityKeyPair = Fixture.bob,
                     malleateS: Bool = false) throws -> [UInt8] {
        let a = Fixture.alice, b = Fixture.bob
        let msg1 = try initiator().initialMessage
        let ei = Array(msg1[72..<104])
        var s = UDSHS1.initialState(header: msg1[0..<72], initiatorX: a.handshakePublicKey, responderX: b.handshakePublicKey)
        s.mixHash(ei)
        s.mixKey(try noiseDH(responderStatic.handshakeSecret, ei, "es"))
        s.mixKey(try noiseDH(responderStatic.handshakeSecret, a.handshakePublicKey, "ss"))
        s.mixHash(Array(msg1[104...]))  // what DecryptAndHash of the empty payload hashes
        let e = SecretBytes(copying: Fixture.ephemeralR)
        let er = X25519.publicKey(secret: e)
        s.mixHash(er)
        s.mixKey(try noiseDH(e, ei, "ee"))
        s.mixKey(try noiseDH(e, a.handshakePublicKey, "se"))
        var sig = Ed25519.sign(UDSHS1.responderContext + s.h, secretKey: signedBy.secretKey)
        if malleateS { sig = addL(toS: sig) }
        return [UDSHS1.msg2Type] + er + (try s.encryptAndHash(sig))
    }

    /// AUTH for the deterministic session with a chosen type byte, signer or context.
    static func auth(type: UInt8 = 0x03, signedBy: IdentityKeyPair = Fixture.alice,
                     signedContext: [UInt8] = UDSHS1.initiatorContext) throws -> [UInt8] {
        let t = try handshake()
        let sig = Ed25519.sign(signedContext + t.initiator.handshakeHash, secretKey: signedBy.secretKey)
        let sender = FrameSender(key: SecretBytes(copying: t.initiator.sender.trafficKeyForTesting), nonce: 0, configuration: ChannelConfiguration())
        let frame = try sender.sealControl(type: FrameFormat.FrameType(rawValue: type) ?? .data, body: sig)
        return frame
    }

    /// S + L: the same signature in a non-canonical (malleated) form; strict verify refuses it.
    static func addL(toS sig: [UInt8]) -> [UInt8] {
        let l: [UInt8] = hexDecode("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010")
        var out = sig
        var carry = 0
        for i in 0..<32 {
            let v = Int(out[32 + i]) + Int(l[i]) + carry
            out[32 + i] = UInt8(v & 0xff)
            carry = v >> 8
        }
        return out
    }
}

/// A tiny lock-protected box for values captured by @Sendable hooks.
final class LockedBox<T: Sendable>: @unchecked Sendable {
    private var value: T
    private let lock = NSLock()
    init(_ value: T) { self.value = value }
    func set(_ v: T) { lock.lock(); value = v; lock.unlock() }
    func get() -> T { lock.lock(); defer { lock.unlock() }; return value }
}
