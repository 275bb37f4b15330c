import SecureChannel
import Identity
import SodiumCrypto

/// `ocapn-uds/handshake/v1` files (Vectors/handshake.md): UDS-HS1 transcripts replayed with
/// injected identity seeds and ephemerals, and negative cases that must fail with their code.
public enum HandshakeVectors: FormatVectorKind {
    public static let name = "handshake"
    public static let format = "ocapn-uds/handshake/v1"

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        var results: [VectorCaseResult] = []
        var transcripts: [String: [String: Any]] = [:]
        for t in (document["transcripts"] as? [[String: Any]]) ?? [] {
            let name = (t["name"] as? String) ?? "?"
            transcripts[name] = t
            do {
                results.append(try checkTranscript(t, name: "transcript \(name)"))
            } catch {
                results.append(.failed("transcript \(name)", "\(error)"))
            }
        }
        for n in (document["negative"] as? [[String: Any]]) ?? [] {
            let name = "negative \((n["name"] as? String) ?? "?")"
            do {
                guard let base = transcripts[try n.string("base")] else { throw VectorDataError("unknown base transcript") }
                let expected = try n.string("expect")
                guard HandshakeError.Code(rawValue: expected) != nil else { throw VectorDataError("unknown error code \(expected)") }
                let got = try replayNegative(n, base: base)
                results.append(.expect(name, got?.rawValue ?? "success", expected, "rejection"))
            } catch {
                results.append(.failed(name, "\(error)"))
            }
        }
        return results
    }

    struct Session {
        let msg1: [UInt8], msg2: [UInt8], auth: [UInt8]
        let initiator: EstablishedSession, responder: EstablishedSession
        let initiatorIdentity: IdentityKeyPair, responderIdentity: IdentityKeyPair
        let initiatorEphemeral: [UInt8], responderEphemeral: [UInt8]
        let configuration: HandshakeConfiguration
    }

    static func identity(seed: [UInt8]) throws -> IdentityKeyPair {
        try IdentityKeyPair(seed: SecretBytes(copying: seed, guarded: true))
    }

    static func fixed(_ key: [UInt8]) -> EphemeralKeySource { EphemeralKeySource { SecretBytes(copying: key) } }

    static func run(_ t: [String: Any]) throws -> Session {
        let a = try identity(seed: t.hex("initiator_seed")), b = try identity(seed: t.hex("responder_seed"))
        let ei = try t.hex("initiator_ephemeral"), er = try t.hex("responder_ephemeral")
        guard ei.count == 32, er.count == 32 else { throw VectorDataError("ephemeral private keys are 32 bytes") }
        guard let fragment = t["max_fragment_size"] as? Int, (1...FrameFormat.maxBody).contains(fragment) else {
            throw VectorDataError("max_fragment_size missing or out of range")
        }
        let cfg = HandshakeConfiguration(channel: ChannelConfiguration(maxFragmentSize: fragment))
        let cache = IdentityKeyCache(capacity: 8), now = ContinuousClock.now
        let i = try HandshakeInitiator(identity: a, responder: b.publicIdentity, configuration: cfg, keyCache: cache, ephemeralKeys: fixed(ei), now: now)
        let r = HandshakeResponder(identity: b, announcedInitiator: a.publicIdentity, configuration: cfg, keyCache: cache, ephemeralKeys: fixed(er), now: now)
        guard case .send(let msg2) = try r.receive(i.initialMessage, now: now) else { throw VectorDataError("responder did not answer msg1") }
        guard case .established(let si, let auth) = try i.receive(msg2, now: now) else { throw VectorDataError("initiator did not finish") }
        guard case .established(let sr, _) = try r.receive(auth, now: now) else { throw VectorDataError("responder did not finish") }
        return Session(msg1: i.initialMessage, msg2: msg2, auth: auth, initiator: si, responder: sr, initiatorIdentity: a,
                       responderIdentity: b, initiatorEphemeral: ei, responderEphemeral: er, configuration: cfg)
    }

    static func checkTranscript(_ t: [String: Any], name: String) throws -> VectorCaseResult {
        let s = try run(t)
        let checks: [(String, [UInt8], [UInt8])] = [
            ("initiator_public", s.initiatorIdentity.publicKey, try t.hex("initiator_public")),
            ("responder_public", s.responderIdentity.publicKey, try t.hex("responder_public")),
            ("msg1", s.msg1, try t.hex("msg1")),
            ("msg2", s.msg2, try t.hex("msg2")),
            ("auth", s.auth, try t.hex("auth")),
            ("handshake_hash", s.initiator.handshakeHash, try t.hex("handshake_hash")),
            ("handshake_hash (responder)", s.responder.handshakeHash, try t.hex("handshake_hash")),
            ("session_id", s.initiator.sessionID.bytes, try t.hex("session_id")),
        ]
        for (field, got, expected) in checks where got != expected {
            return .failed(name, "\(field): got \(Hex.encode(got)), expected \(Hex.encode(expected))")
        }
        // The library never hands out a traffic key, so the keys are checked by what they seal:
        // a probe frame from each side of a fresh run of the same transcript must equal the frame
        // the vector's key seals at the same nonce (1 for the initiator, after AUTH; 0 for the
        // responder).
        let probe = try run(t)
        for (field, sender, nonce) in [("key_ir", probe.initiator.sender, UInt64(1)), ("key_ri", probe.responder.sender, UInt64(0))] {
            let key = try t.hex(field)
            guard key.count == ChaChaPoly.keyLength else { throw VectorDataError("\(field) is not 32 bytes") }
            if try sender.seal(Self.keyProbe) != Self.frame(sealing: Self.keyProbe, key: key, nonce: nonce) {
                return .failed(name, "\(field): the session's key does not seal as the vector's key does")
            }
        }
        for (index, f) in try t.objects("transport").enumerated() {
            let fromInitiator = try f.string("from") == "initiator"
            let (sender, receiver) = fromInitiator ? (s.initiator.sender, s.responder.receiver) : (s.responder.sender, s.initiator.receiver)
            let expected = try f.hex("frames")
            let event: ChannelEvent
            let sealed: [UInt8]
            switch try f.string("type") {
            case "message":
                let m = try f.hex("message")
                sealed = try sender.seal(m)
                event = .message(m)
            case "close":
                sealed = try sender.close()
                event = .closed
            default: throw VectorDataError("transport entry \(index): unknown type")
            }
            guard sealed == expected else { return .failed(name, "transport \(index): got \(Hex.encode(sealed)), expected \(Hex.encode(expected))") }
            try receiver.receive(expected)
            guard try receiver.next() == event, try receiver.next() == (event == .closed ? .closed : nil) else {
                return .failed(name, "transport \(index): the receiver did not reproduce the \(event == .closed ? "CLOSE" : "message")")
            }
        }
        return .passed(name)
    }

    static let keyProbe: [UInt8] = Array("key probe".utf8)

    /// One DATA frame (PROTOCOL.md §6.1) sealed with a known key, without the library's sender.
    static func frame(sealing body: [UInt8], key: [UInt8], nonce: UInt64) -> [UInt8] {
        let sealed = ChaChaPoly.seal(key: SecretBytes(copying: key), nonce: nonce, ad: [], plaintext: [FrameFormat.FrameType.data.rawValue] + body)
        return [UInt8(sealed.count >> 8), UInt8(sealed.count & 0xff)] + sealed
    }

    static func mutate(_ bytes: [UInt8], _ m: [String: Any]) throws -> [UInt8] {
        var out = bytes
        func int(_ key: String) throws -> Int {
            guard let v = m[key] as? Int, v >= 0 else { throw VectorDataError("mutation field \(key) missing or negative") }
            return v
        }
        switch try m.string("kind") {
        case "none": break
        case "xor":
            let offset = try int("offset"), mask = try int("mask")
            guard offset < out.count, mask <= 0xff else { throw VectorDataError("xor out of range") }
            out[offset] ^= UInt8(mask)
        case "replace":
            let offset = try int("offset"), b = try m.hex("bytes")
            guard offset + b.count <= out.count else { throw VectorDataError("replace out of range") }
            out.replaceSubrange(offset..<offset + b.count, with: b)
        case "truncate":
            let length = try int("length")
            guard length <= out.count else { throw VectorDataError("truncate beyond the end") }
            out = Array(out[..<length])
        case "append": out += try m.hex("bytes")
        case "substitute": out = try m.hex("bytes")
        case let other: throw VectorDataError("unknown mutation kind \(other)")
        }
        return out
    }

    /// Returns the code the mutated exchange failed with, or nil if it (wrongly) succeeded.
    static func replayNegative(_ n: [String: Any], base t: [String: Any]) throws -> HandshakeError.Code? {
        let s = try run(t)
        let mutation = n["mutation"] as? [String: Any] ?? [:]
        // Raw: a `from` may be a key no `PublicIdentity` holds (the responder's own refusal).
        let from = try (n["from"] as? String).map { _ in try n.hex("from") } ?? s.initiatorIdentity.publicKey
        var policy: (@Sendable ([UInt8]) -> Bool)? = nil
        if (n["policy"] as? String) == "deny" { policy = { _ in false } }
        let now = ContinuousClock.now, cache = IdentityKeyCache(capacity: 8)
        func responder() -> HandshakeResponder {
            HandshakeResponder(identity: s.responderIdentity, announcedInitiatorKey: from, configuration: s.configuration, policy: policy,
                               keyCache: cache, ephemeralKeys: fixed(s.responderEphemeral), now: now)
        }
        // Other errors (malformed vector data) propagate and fail the case with their text.
        func failure(_ body: () throws -> Void) throws -> HandshakeError.Code? {
            do {
                try body()
                return nil
            } catch let error as HandshakeError {
                return error.code
            }
        }
        switch try n.string("target") {
        case "msg1":
            let bytes = try mutate(s.msg1, mutation), r = responder()
            return try failure { _ = try r.receive(bytes, now: now); try r.receiveEOF() }
        case "msg2":
            let bytes = try mutate(s.msg2, mutation)
            let i = try HandshakeInitiator(identity: s.initiatorIdentity, responder: s.responderIdentity.publicIdentity, configuration: s.configuration,
                                           keyCache: cache, ephemeralKeys: fixed(s.initiatorEphemeral), now: now)
            return try failure { _ = try i.receive(bytes, now: now); try i.receiveEOF() }
        case "auth":
            let bytes = try mutate(s.auth, mutation), r = responder()
            return try failure {
                _ = try r.receive(s.msg1, now: now)
                _ = try r.receive(bytes, now: now)
                try r.receiveEOF()
            }
        case let target where target == "transport-i2r" || target == "transport-r2i":
            let side = target == "transport-i2r" ? "initiator" : "responder"
            let base = try t.objects("transport").filter { try $0.string("from") == side }.flatMap { try $0.hex("frames") }
            let bytes = try mutate(base, mutation)
            let receiver = side == "initiator" ? s.responder.receiver : s.initiator.receiver
            return try failure {
                try receiver.receive(bytes)
                while let e = try receiver.next(), e != .closed {}
                try receiver.receiveEOF()
            }
        case let other:
            throw VectorDataError("unknown target \(other)")
        }
    }
}
