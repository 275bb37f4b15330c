import Foundation
@testable import Identity
@testable import SecureChannel
import SodiumCrypto
import Testing

/// `Vectors/handshake.json` is generated here from fixed seeds; this suite regenerates it and
/// requires the committed file to match byte for byte, so the file cannot drift from the code.
/// Set OCAPN_UDS_REGENERATE_VECTORS=1 to rewrite it after an intentional protocol change (the
/// run that rewrites it fails, so a stale file never passes). The bytes themselves are checked
/// independently by interop/python/check_vectors.py (IntegrationTests `PythonInteropTests`).
@Suite struct HandshakeVectorFileTests {
    static let path = "Vectors/handshake.json"

    @Test("The committed handshake vector file equals a fresh deterministic regeneration")
    func fileMatchesRegeneration() throws {
        let text = try HandshakeVectorGenerator.generate()
        #expect(try HandshakeVectorGenerator.generate() == text, "generation is deterministic")
        let url = Fixture.repositoryRoot.appendingPathComponent(Self.path)
        // Compared before any rewrite: regenerating never makes this test pass by itself.
        let committed = String(decoding: try Data(contentsOf: url), as: UTF8.self)
        guard committed != text else { return }
        if ProcessInfo.processInfo.environment["OCAPN_UDS_REGENERATE_VECTORS"] == "1" {
            try Data(text.utf8).write(to: url)
            Issue.record("Vectors/handshake.json was stale and has been rewritten: review the diff, then rerun without OCAPN_UDS_REGENERATE_VECTORS")
        } else {
            Issue.record("Vectors/handshake.json is stale: rerun with OCAPN_UDS_REGENERATE_VECTORS=1")
        }
    }

    @Test("Every negative vector in the file fails with its expected code when replayed here")
    func negativesReplay() throws {
        let json = try JSONSerialization.jsonObject(with: Fixture.data(Self.path)) as! [String: Any]
        let negatives = json["negative"] as! [[String: Any]]
        #expect(negatives.count >= 30)
        let expected = Set(negatives.map { $0["expect"] as! String })
        // Every rejection expressible on bytes is covered.
        let required: Set<String> = [
            "badMagic", "unsupportedVersion", "unexpectedMessageType", "reservedFlagsSet", "wrongResponder", "identityMismatch",
            "selfConnection", "invalidIdentityKey", "peerNotAllowed", "nonCanonicalPoint", "lowOrderPoint", "reflection",
            "decryptFailed", "badSignature", "badFrameLength", "unknownFrameType", "unexpectedAuthFrame", "emptyDataFrame",
            "dataAfterClose", "truncated",
        ]
        #expect(required.isSubset(of: expected), "missing: \(required.subtracting(expected))")
        for n in negatives {
            let got = try HandshakeVectorGenerator.replayNegative(n)
            let expected = n["expect"] as? String, name = n["name"] as? String ?? "?"
            #expect(got?.rawValue == expected, "\(name)")
        }
    }
}

/// A minimal JSON value with a deterministic, platform-independent printer.
indirect enum JSONValue {
    case string(String)
    case int(Int)
    case array([JSONValue])
    case object([(String, JSONValue)])

    static func hex(_ b: [UInt8]) -> JSONValue { .string(hexEncode(b)) }

    func render(_ indent: String = "") -> String {
        let inner = indent + "  "
        switch self {
        case .string(let s):
            return "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        case .int(let i): return String(i)
        case .array(let items):
            if items.isEmpty { return "[]" }
            return "[\n" + items.map { inner + $0.render(inner) }.joined(separator: ",\n") + "\n" + indent + "]"
        case .object(let fields):
            if fields.isEmpty { return "{}" }
            return "{\n" + fields.map { inner + "\"\($0.0)\": " + $0.1.render(inner) }.joined(separator: ",\n") + "\n" + indent + "}"
        }
    }
}

enum HandshakeVectorGenerator {
    struct Base {
        let name: String
        let initiatorLabel: UInt8, responderLabel: UInt8
        let ephemeralI: [UInt8], ephemeralR: [UInt8]
        let maxFragment: Int
        let messagesI: [[UInt8]], messagesR: [[UInt8]]
    }

    static let bases: [Base] = [
        Base(name: "alice-to-bob", initiatorLabel: 0xA1, responderLabel: 0xB0, ephemeralI: Fixture.ephemeralI, ephemeralR: Fixture.ephemeralR,
             maxFragment: FrameFormat.maxBody, messagesI: [Array("hello from the initiator".utf8)], messagesR: [Array("hello from the responder".utf8)]),
        Base(name: "carol-to-alice-fragmented", initiatorLabel: 0xC0, responderLabel: 0xA1,
             ephemeralI: RandomBytes.deterministic(32, seed: [UInt8](repeating: 0xE3, count: 32)),
             ephemeralR: RandomBytes.deterministic(32, seed: [UInt8](repeating: 0xE4, count: 32)),
             maxFragment: 16, messagesI: [Array(0..<UInt8(40)), [0x2a]], messagesR: [Array(repeating: 0x55, count: 33)]),
    ]

    static func seed(_ label: UInt8) -> [UInt8] { RandomBytes.deterministic(32, seed: [UInt8](repeating: label, count: 32)) }

    struct Run {
        let msg1: [UInt8], msg2: [UInt8], auth: [UInt8]
        let i: EstablishedSession, r: EstablishedSession
        let a: IdentityKeyPair, b: IdentityKeyPair
    }

    static func perform(_ base: Base) throws -> Run {
        let a = Fixture.identity(base.initiatorLabel), b = Fixture.identity(base.responderLabel)
        let cfg = HandshakeConfiguration(channel: ChannelConfiguration(maxFragmentSize: base.maxFragment))
        let i = try HandshakeInitiator(identity: a, responder: b.publicIdentity, configuration: cfg, keyCache: Fixture.cache,
                                       ephemeralKeys: Fixture.fixedEphemeral(base.ephemeralI), now: Fixture.now)
        let r = HandshakeResponder(identity: b, announcedInitiator: a.publicIdentity, configuration: cfg, keyCache: Fixture.cache,
                                   ephemeralKeys: Fixture.fixedEphemeral(base.ephemeralR), now: Fixture.now)
        guard case .send(let msg2) = try r.receive(i.initialMessage, now: Fixture.now),
              case .established(let si, let auth) = try i.receive(msg2, now: Fixture.now),
              case .established(let sr, _) = try r.receive(auth, now: Fixture.now) else { throw UnexpectedStep(description: "handshake") }
        return Run(msg1: i.initialMessage, msg2: msg2, auth: auth, i: si, r: sr, a: a, b: b)
    }

    static func generate() throws -> String {
        var transcripts: [JSONValue] = []
        var runs: [String: Run] = [:]
        for base in bases {
            let run = try perform(base)
            runs[base.name] = run
            var frames: [JSONValue] = []
            func frame(_ from: String, _ type: String, _ message: [UInt8]?, _ bytes: [UInt8]) {
                var f: [(String, JSONValue)] = [("from", .string(from)), ("type", .string(type))]
                if let message { f.append(("message", .hex(message))) }
                f.append(("frames", .hex(bytes)))
                frames.append(.object(f))
            }
            for m in base.messagesI { frame("initiator", "message", m, try run.i.sender.seal(m)) }
            for m in base.messagesR { frame("responder", "message", m, try run.r.sender.seal(m)) }
            frame("initiator", "close", nil, try run.i.sender.close())
            frame("responder", "close", nil, try run.r.sender.close())
            transcripts.append(.object([
                ("name", .string(base.name)),
                ("initiator_seed", .hex(seed(base.initiatorLabel))),
                ("responder_seed", .hex(seed(base.responderLabel))),
                ("initiator_public", .hex(run.a.publicKey)),
                ("responder_public", .hex(run.b.publicKey)),
                ("initiator_ephemeral", .hex(base.ephemeralI)),
                ("responder_ephemeral", .hex(base.ephemeralR)),
                ("max_fragment_size", .int(base.maxFragment)),
                ("msg1", .hex(run.msg1)),
                ("msg2", .hex(run.msg2)),
                ("auth", .hex(run.auth)),
                ("handshake_hash", .hex(run.i.handshakeHash)),
                ("session_id", .hex(run.i.sessionID.bytes)),
                ("key_ir", .hex(run.i.sender.trafficKeyForTesting)),
                ("key_ri", .hex(run.r.sender.trafficKeyForTesting)),
                ("transport", .array(frames)),
            ]))
        }
        let negatives = try negativeCases(runs["alice-to-bob"]!)
        let doc = JSONValue.object([
            ("format", .string("ocapn-uds/handshake/v1")),
            ("description", .string("UDS-HS1 known-answer transcripts and rejection cases; see Vectors/handshake.md and PROTOCOL.md.")),
            ("transcripts", .array(transcripts)),
            ("negative", .array(negatives.map { n in
                var f: [(String, JSONValue)] = [("name", .string(n.name)), ("base", .string("alice-to-bob")), ("target", .string(n.target))]
                f.append(("mutation", .object(n.mutation)))
                if let from = n.from { f.append(("from", .hex(from))) }
                if n.denyPolicy { f.append(("policy", .string("deny"))) }
                f.append(("expect", .string(n.expect.rawValue)))
                return .object(f)
            })),
        ])
        return doc.render() + "\n"
    }

    struct Negative {
        let name: String, target: String
        let mutation: [(String, JSONValue)]
        var from: [UInt8]? = nil
        var denyPolicy = false
        let expect: HandshakeError.Code
    }

    static func xor(_ offset: Int, _ mask: Int) -> [(String, JSONValue)] { [("kind", .string("xor")), ("offset", .int(offset)), ("mask", .int(mask))] }
    static func replace(_ offset: Int, _ bytes: [UInt8]) -> [(String, JSONValue)] { [("kind", .string("replace")), ("offset", .int(offset)), ("bytes", .hex(bytes))] }
    static func truncate(_ length: Int) -> [(String, JSONValue)] { [("kind", .string("truncate")), ("length", .int(length))] }
    static func append(_ bytes: [UInt8]) -> [(String, JSONValue)] { [("kind", .string("append")), ("bytes", .hex(bytes))] }
    static func substitute(_ bytes: [UInt8]) -> [(String, JSONValue)] { [("kind", .string("substitute")), ("bytes", .hex(bytes))] }

    static func negativeCases(_ run: Run) throws -> [Negative] {
        let carol = Fixture.carol.publicKey, bob = run.b.publicKey
        let smallOrderEd = [UInt8(1)] + [UInt8](repeating: 0, count: 31)
        let zeroU = [UInt8](repeating: 0, count: 32)
        let ei = Array(run.msg1[72..<104])
        // Transport streams crafted with the real K_IR at the nonces that follow AUTH.
        let kIR = SecretBytes(copying: run.i.sender.trafficKeyForTesting)
        func i2r(_ frames: [(FrameFormat.FrameType, [UInt8])]) throws -> [UInt8] {
            let s = FrameSender(key: kIR, nonce: 1, configuration: ChannelConfiguration())
            return try frames.flatMap { try s.sealControl(type: $0.0, body: $0.1) }
        }
        let good = try i2r([(.data, [1, 2, 3]), (.close, [])])
        return [
            Negative(name: "msg1 bad magic", target: "msg1", mutation: xor(0, 0x01), expect: .badMagic),
            Negative(name: "msg1 version 2", target: "msg1", mutation: replace(4, [2]), expect: .unsupportedVersion),
            Negative(name: "msg1 type 2", target: "msg1", mutation: replace(5, [2]), expect: .unexpectedMessageType),
            Negative(name: "msg1 reserved flag", target: "msg1", mutation: xor(7, 0x01), expect: .reservedFlagsSet),
            Negative(name: "msg1 addressed to carol", target: "msg1", mutation: replace(40, carol), expect: .wrongResponder),
            Negative(name: "msg1 header claims carol, from says alice", target: "msg1", mutation: replace(8, carol), expect: .identityMismatch),
            Negative(name: "introduction lies: from is carol", target: "msg1", mutation: [("kind", .string("none"))], from: carol, expect: .identityMismatch),
            Negative(name: "forged header and from both claim carol", target: "msg1", mutation: replace(8, carol), from: carol, expect: .decryptFailed),
            Negative(name: "initiator claims the responder's own key", target: "msg1", mutation: replace(8, bob), from: bob, expect: .selfConnection),
            Negative(name: "policy refuses the initiator", target: "msg1", mutation: [("kind", .string("none"))], denyPolicy: true, expect: .peerNotAllowed),
            Negative(name: "small-order initiator identity", target: "msg1", mutation: replace(8, smallOrderEd), from: smallOrderEd, expect: .invalidIdentityKey),
            Negative(name: "E_I with bit 255 set", target: "msg1", mutation: xor(103, 0x80), expect: .nonCanonicalPoint),
            Negative(name: "E_I = 2^255-19 (u = p)", target: "msg1",
                     mutation: replace(72, [0xed] + [UInt8](repeating: 0xff, count: 30) + [0x7f]), expect: .nonCanonicalPoint),
            Negative(name: "E_I = 0 (low order)", target: "msg1", mutation: replace(72, zeroU), expect: .lowOrderPoint),
            Negative(name: "E_I = 1 (low order)", target: "msg1", mutation: replace(72, [1] + zeroU.dropFirst()), expect: .lowOrderPoint),
            Negative(name: "msg1 tag flipped", target: "msg1", mutation: xor(119, 0x80), expect: .decryptFailed),
            Negative(name: "msg1 E_I flipped", target: "msg1", mutation: xor(80, 0x04), expect: .decryptFailed),
            Negative(name: "msg1 cut at 119 bytes", target: "msg1", mutation: truncate(119), expect: .truncated),
            Negative(name: "msg1 empty", target: "msg1", mutation: truncate(0), expect: .truncated),
            Negative(name: "msg2 type 1", target: "msg2", mutation: replace(0, [1]), expect: .unexpectedMessageType),
            Negative(name: "msg1 echoed back as msg2", target: "msg2", mutation: substitute(run.msg1), expect: .unexpectedMessageType),
            Negative(name: "E_R with bit 255 set", target: "msg2", mutation: xor(32, 0x80), expect: .nonCanonicalPoint),
            Negative(name: "E_R reflects E_I", target: "msg2", mutation: replace(1, ei), expect: .reflection),
            Negative(name: "E_R = 0 (low order)", target: "msg2", mutation: replace(1, zeroU), expect: .lowOrderPoint),
            Negative(name: "msg2 ciphertext flipped", target: "msg2", mutation: xor(60, 0x10), expect: .decryptFailed),
            Negative(name: "msg2 signed by another key", target: "msg2", mutation: substitute(try Forge.msg2(signedBy: Fixture.mallory)), expect: .badSignature),
            Negative(name: "msg2 signature with S + L", target: "msg2", mutation: substitute(try Forge.msg2(malleateS: true)), expect: .badSignature),
            Negative(name: "msg2 from a MITM's own static key", target: "msg2", mutation: substitute(try Forge.msg2(responderStatic: Fixture.mallory)), expect: .decryptFailed),
            Negative(name: "msg2 cut at 112 bytes", target: "msg2", mutation: truncate(112), expect: .truncated),
            Negative(name: "AUTH LEN 82", target: "auth", mutation: replace(0, [0x00, 0x52]), expect: .badFrameLength),
            Negative(name: "AUTH ciphertext flipped", target: "auth", mutation: xor(30, 0x01), expect: .decryptFailed),
            Negative(name: "AUTH with frame type DATA", target: "auth", mutation: substitute(try Forge.auth(type: 0x00)), expect: .unexpectedMessageType),
            Negative(name: "AUTH signed by another key", target: "auth", mutation: substitute(try Forge.auth(signedBy: Fixture.mallory)), expect: .badSignature),
            Negative(name: "AUTH signed under the responder context", target: "auth",
                     mutation: substitute(try Forge.auth(signedContext: UDSHS1.responderContext)), expect: .badSignature),
            Negative(name: "AUTH cut at 82 bytes", target: "auth", mutation: truncate(82), expect: .truncated),
            Negative(name: "transport frame flipped", target: "transport-i2r", mutation: xor(5, 0x01), expect: .decryptFailed),
            Negative(name: "transport frames reordered", target: "transport-i2r",
                     mutation: substitute(Array(good[22...]) + Array(good[..<22])), expect: .decryptFailed),
            Negative(name: "transport frame duplicated", target: "transport-i2r",
                     mutation: substitute(Array(good[..<22]) + Array(good[..<22])), expect: .decryptFailed),
            Negative(name: "transport stream without CLOSE", target: "transport-i2r",
                     mutation: truncate(bases[0].messagesI[0].count + FrameFormat.overhead), expect: .truncated),
            Negative(name: "transport stream cut inside a frame", target: "transport-i2r", mutation: truncate(10), expect: .truncated),
            Negative(name: "byte after CLOSE", target: "transport-i2r", mutation: append([0]), expect: .dataAfterClose),
            Negative(name: "frame LEN 16", target: "transport-i2r", mutation: replace(0, [0x00, 0x10]), expect: .badFrameLength),
            Negative(name: "REKEY frame (reserved)", target: "transport-i2r", mutation: substitute(try i2r([(.reservedRekey, [])])), expect: .unknownFrameType),
            Negative(name: "AUTH frame after AUTH", target: "transport-i2r",
                     mutation: substitute(try i2r([(.auth, [UInt8](repeating: 7, count: 64))])), expect: .unexpectedAuthFrame),
            Negative(name: "empty DATA frame", target: "transport-i2r", mutation: substitute(try i2r([(.data, [])])), expect: .emptyDataFrame),
            Negative(name: "CLOSE with a body", target: "transport-i2r", mutation: substitute(try i2r([(.close, [0])])), expect: .badFrameLength),
            Negative(name: "CLOSE inside a fragmented message", target: "transport-i2r",
                     mutation: substitute(try i2r([(.dataMore, [1]), (.close, [])])), expect: .truncated),
            Negative(name: "responder frame flipped", target: "transport-r2i", mutation: xor(20, 0x40), expect: .decryptFailed),
        ]
    }

    // MARK: Replay (mirrors VectorCheck's runner; keeps the file honest from this side too)

    static func mutate(_ bytes: [UInt8], _ m: [String: Any]) throws -> [UInt8] {
        var out = bytes
        switch m["kind"] as! String {
        case "none": break
        case "xor": out[m["offset"] as! Int] ^= UInt8(m["mask"] as! Int)
        case "replace":
            let b = hexDecode(m["bytes"] as! String), o = m["offset"] as! Int
            out.replaceSubrange(o..<o + b.count, with: b)
        case "truncate": out = Array(out[..<(m["length"] as! Int)])
        case "append": out += hexDecode(m["bytes"] as! String)
        case "substitute": out = hexDecode(m["bytes"] as! String)
        default: throw UnexpectedStep(description: "unknown mutation")
        }
        return out
    }

    static func replayNegative(_ n: [String: Any]) throws -> HandshakeError.Code? {
        let run = try perform(bases[0])
        let m = n["mutation"] as! [String: Any]
        let from = (n["from"] as? String).map(hexDecode) ?? run.a.publicKey
        var deny: (@Sendable ([UInt8]) -> Bool)? = nil
        if (n["policy"] as? String) == "deny" { deny = { _ in false } }
        func resp() -> HandshakeResponder { responder(run.b, from: from, policy: deny) }
        switch n["target"] as! String {
        case "msg1":
            let r = resp()
            return code { _ = try r.receive(try mutate(run.msg1, m), now: Fixture.now); try r.receiveEOF() }
        case "msg2":
            let i = try initiator()
            return code { _ = try i.receive(try mutate(run.msg2, m), now: Fixture.now); try i.receiveEOF() }
        case "auth":
            let r = resp()
            return code {
                _ = try r.receive(run.msg1, now: Fixture.now)
                _ = try r.receive(try mutate(run.auth, m), now: Fixture.now)
                try r.receiveEOF()
            }
        case "transport-i2r", "transport-r2i":
            let fresh = try perform(bases[0])
            let toResponder = n["target"] as! String == "transport-i2r"
            let (sender, receiver) = toResponder ? (fresh.i.sender, fresh.r.receiver) : (fresh.r.sender, fresh.i.receiver)
            // The base stream is that side's transcript frames: its messages, then CLOSE.
            let messages = toResponder ? bases[0].messagesI : bases[0].messagesR
            let stream = try messages.flatMap { try sender.seal($0) } + sender.close()
            return code {
                try receiver.receive(try mutate(stream, m))
                while let e = try receiver.next(), e != .closed {}
                try receiver.receiveEOF()
            }
        default:
            throw UnexpectedStep(description: "unknown target")
        }
    }
}
