import Foundation
import Identity
import OCapN
import SodiumCrypto
import Syrup

/// `ocapn-uds/ocapn/v1`: OCapN UDS wire formats (Vectors/ocapn.md). Every example must decode and
/// re-encode to its exact bytes, every sequence must be reproduced by the state machines, and
/// every reject case must fail with its `OCapNError` code.
public enum OCapNVectors: FormatVectorKind {
    public static let name = "ocapn"
    public static let format = "ocapn-uds/ocapn/v1"

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        let context: Context
        do { context = try Context(document) } catch { return [.failed("file", "\(error)")] }
        var results: [VectorCaseResult] = []
        for (section, run) in [("examples", checkExample), ("sequences", checkSequence), ("rejects", checkReject)]
            as [(String, (Context, [String: Any]) throws -> Void)] {
            let cases = (document[section] as? [[String: Any]]) ?? []
            for c in cases {
                let name = "\(section)/\((c["name"] as? String) ?? "?")"
                do {
                    try run(context, c)
                    results.append(.passed(name))
                } catch let skip as Skip {
                    results.append(.skipped(name, skip.reason))
                } catch {
                    results.append(.failed(name, "\(error)"))
                }
            }
        }
        return results
    }

    struct Skip: Error { let reason: String }

    /// Inputs and examples by name.
    struct Context {
        let inputs: [String: Any]
        let examples: [String: [String: Any]]

        init(_ document: [String: Any]) throws {
            guard let inputs = document["inputs"] as? [String: Any] else { throw VectorDataError("missing object \"inputs\"") }
            self.inputs = inputs
            var byName: [String: [String: Any]] = [:]
            for e in try document.objects("examples") { byName[try e.string("name")] = e }
            examples = byName
        }

        func input(_ name: String) throws -> [UInt8] { try inputs.hex(name) }

        func signer(_ seedInput: String) throws -> IdentityKeyPair {
            try IdentityKeyPair(seed: SecretBytes(copying: try input(seedInput)))
        }

        func exampleHex(_ name: String) throws -> [UInt8] {
            guard let e = examples[name] else { throw VectorDataError("no example named \"\(name)\"") }
            return try e.hex("hex")
        }
    }

    // MARK: examples

    static func checkExample(_ ctx: Context, _ e: [String: Any]) throws {
        let hexField = { () throws -> [UInt8] in try e.hex("hex") }
        switch try e.string("type") {
        case "public-key":
            try require(try ctx.signer(try e.string("seed")).publicIdentity.publicKey == hexField(), "public key from seed")
        case "designator":
            let key = try PublicIdentity(publicKey: try e.hex("public_key_hex"))
            try require(key.designator == (try e.string("value")), "designator of the key")
            try require(try PublicIdentity(designator: try e.string("value")) == key, "key of the designator")
        case "uri":
            let locator = try PeerLocator(uri: try e.string("value"))
            try require(locator.designator == (try e.string("designator")), "designator parsed from the URI")
            try require(locator.hints == (try plainHints(e["hints"])), "hints parsed from the URI")
            try require(locator.uri == (try e.string("emitted")), "URI emitted")
        case "locator":
            let bytes = try hexField()
            let locator = try PeerLocator(syrup: try SyrupDecoder().decode(bytes))
            try require(locator.designator == (try e.string("designator")), "designator")
            try require(locator.hints == (try typedHints(e["hints"])), "hints")
            try require(SyrupEncoder.encode(locator.syrupValue) == bytes, "re-encoded locator bytes")
            try require(locator.uri == (try e.string("uri")), "URI of the locator")
        case "message":
            let bytes = try hexField()
            let message = try UDSMessage(bytes: bytes)
            try require(message.name == (try e.string("message")), "message label")
            try require(message.encoded == bytes, "re-encoded message bytes")
            if let verify = e["verify"] as? [String: Any] {
                let key = try PublicIdentity(publicKey: try verify.hex("public_key_hex"))
                let signed = try Challenge(try verify.hex("message_hex"))
                let signature: Ed25519Signature
                switch message {
                case let .serverResponse(r): signature = r.clientChallengeResponse.signature
                case let .signature(s):
                    try require(s.payload == signed, "uds:signature payload")
                    signature = s.signature.signature
                default: throw VectorDataError("\"verify\" on a message that carries no signature")
                }
                try require(signature.isValid(by: key, over: signed), "signature in the message verifies")
            }
        case "signature":
            let signature = try ctx.signer(try e.string("seed")).sign(try Challenge(try e.hex("message_hex")))
            try require(signature.bytes == hexField(), "deterministic Ed25519 signature")
        case "fd-marker":
            guard Int32(1).littleEndian == 1 else { throw Skip(reason: "the marker is host byte order; the vector is little-endian") }
            try require(UDSNewConnection.fdMarker == hexField(), "descriptor marker bytes")
        case "captp-public-key":
            let key = try PublicIdentity(publicKey: try e.hex("public_key_hex"))
            let bytes = try hexField()
            try require(SyrupEncoder.encode(key.captpPublicKey) == bytes, "CapTP public-key bytes")
            try require(try PublicIdentity(captpPublicKey: try SyrupDecoder().decode(bytes)) == key, "decoded CapTP public key")
        case "captp-signature":
            let signature = try Ed25519Signature(try e.hex("signature_hex"))
            let bytes = try hexField()
            try require(SyrupEncoder.encode(signature.captpSigVal) == bytes, "CapTP sig-val bytes")
            try require(try Ed25519Signature(captpSigVal: try SyrupDecoder().decode(bytes)) == signature, "decoded sig-val")
        case "hints":
            guard let hints = try typedHints(e["hints"]), let anyKey = hints.keys.first else {
                throw VectorDataError("a hints example needs at least one hint")
            }
            guard case let .record(_, fields) = PeerLocator(identity: anyKey, hints: hints).syrupValue else {
                throw VectorDataError("a locator encodes as a record")
            }
            try require(SyrupEncoder.encode(fields[2]) == hexField(), "hints dictionary bytes")
        case let other:
            throw VectorDataError("unknown example type \"\(other)\"")
        }
    }

    // MARK: sequences

    struct Registered {
        var client: RegistrationClient
        var server: RegistrationServer
        var messages: [[UInt8]]
    }

    /// Runs a full registration through both machines, returning the bytes exchanged.
    static func register(_ ctx: Context, client seed: String, server serverSeed: String,
                         clientChallenge: String, serverChallenge: String) throws -> Registered {
        let serverSigner = try ctx.signer(serverSeed)
        // The worked examples are Goblins' forms: the legacy setting, exactly as a peer marks a Goblins server.
        var client = RegistrationClient(signer: try ctx.signer(seed), challenge: try Challenge(try ctx.input(clientChallenge)),
                                        form: .goblins)
        var server = RegistrationServer(signer: serverSigner, challenge: try Challenge(try ctx.input(serverChallenge)))
        let msg1 = client.start().encoded
        let serverActions = try server.receive(try SyrupDecoder().decode(msg1))
        guard serverActions.count == 1, case let .send(response) = serverActions[0] else {
            throw VectorDataError("server did not answer uds:register with one message: \(serverActions)")
        }
        let msg2 = response.encoded
        let clientActions = try client.receive(try SyrupDecoder().decode(msg2))
        guard clientActions.count == 2, case let .send(signature) = clientActions[0],
              case let .registered(verified) = clientActions[1], verified.identity == serverSigner.publicIdentity else {
            throw VectorDataError("client did not register with the server: \(clientActions)")
        }
        let msg3 = signature.encoded
        let finalActions = try server.receive(try SyrupDecoder().decode(msg3))
        guard finalActions.count == 1, case let .registered(peer) = finalActions[0], peer.identity == client.locator.identity else {
            throw VectorDataError("server did not register the peer: \(finalActions)")
        }
        return Registered(client: client, server: server, messages: [msg1, msg2, msg3])
    }

    static func checkSequence(_ ctx: Context, _ s: [String: Any]) throws {
        guard let names = s["messages"] as? [String] else { throw VectorDataError("missing array \"messages\"") }
        let expected = try names.map { try ctx.exampleHex($0) }
        switch try s.string("type") {
        case "registration":
            let run = try register(ctx, client: try s.string("client_seed"), server: try s.string("server_seed"),
                                   clientChallenge: try s.string("client_challenge"), serverChallenge: try s.string("server_challenge"))
            try require(run.messages == expected, "msg1..msg3 bytes")
        case "introduction":
            let server = try s.string("server_seed")
            let chC = try s.string("client_challenge"), chS = try s.string("server_challenge")
            var a = try register(ctx, client: try s.string("initiator_seed"), server: server, clientChallenge: chC, serverChallenge: chS)
            var b = try register(ctx, client: try s.string("target_seed"), server: server, clientChallenge: chC, serverChallenge: chS)
            guard let serverIdentity = a.client.server?.identity else { throw VectorDataError("A not registered") }
            let aLocator = PeerLocator(identity: a.client.locator.identity, introductionServers: [serverIdentity])
            let bLocator = PeerLocator(identity: b.client.locator.identity, introductionServers: [serverIdentity])
            let msg4 = a.client.introductionRequest(to: bLocator, advertising: aLocator).encoded
            let forwarded = try a.server.receive(try SyrupDecoder().decode(msg4))
            guard forwarded.count == 1, case let .forward(intro) = forwarded[0], intro.target == bLocator.identity else {
                throw VectorDataError("server did not forward the introduction to B: \(forwarded)")
            }
            let msg5 = intro.forward.encoded
            try require([msg4, msg5] == expected, "msg4 and msg5 bytes")
            let incoming = try b.client.receive(try SyrupDecoder().decode(msg5))
            guard incoming.count == 1, case let .incoming(i) = incoming[0], i.claimedFrom.isSamePeer(as: aLocator) else {
                throw VectorDataError("B did not accept the introduction from A: \(incoming)")
            }
        case let other:
            throw VectorDataError("unknown sequence type \"\(other)\"")
        }
    }

    // MARK: rejects

    static func checkReject(_ ctx: Context, _ r: [String: Any]) throws {
        let code = try r.string("error")
        guard OCapNError.Code(rawValue: code) != nil else { throw VectorDataError("unknown error code \"\(code)\"") }
        let value = { () throws -> SyrupValue in try SyrupDecoder().decode(try r.hex("hex")) }
        let outcome: Result<Void, any Error>
        func attempt(_ body: () throws -> Void) -> Result<Void, any Error> {
            do { try body(); return .success(()) } catch { return .failure(error) }
        }
        switch try r.string("type") {
        case "message":
            let bytes = try r.hex("hex")
            outcome = attempt { _ = try UDSMessage(bytes: bytes) }
        case "locator":
            let v = try value()
            outcome = attempt { _ = try PeerLocator(syrup: v) }
        case "uri":
            let text = try r.string("value")
            outcome = attempt { _ = try PeerLocator(uri: text) }
        case "captp-public-key":
            let v = try value()
            outcome = attempt { _ = try PublicIdentity(captpPublicKey: v) }
        case "captp-signature":
            let v = try value()
            outcome = attempt { _ = try Ed25519Signature(captpSigVal: v) }
        case "client-response":
            let pinned = try (r["pinned_server_hex"] as? String).map { _ in try PublicIdentity(publicKey: try r.hex("pinned_server_hex")) }
            var client = RegistrationClient(signer: try ctx.signer("peer_A_seed_hex"),
                                            challenge: try Challenge(try ctx.input("client_challenge_hex")), expectedServer: pinned,
                                            form: .goblins)
            _ = client.start()
            let v = try value()
            outcome = attempt { _ = try client.receive(v) }
        case "server-first", "server-signature":
            var server = RegistrationServer(signer: try ctx.signer("server_S_seed_hex"),
                                            challenge: try Challenge(try ctx.input("server_challenge_hex")))
            if try r.string("type") == "server-signature" {
                _ = try server.receive(try SyrupDecoder().decode(try ctx.exampleHex("msg1_uds_register_A")))
            }
            let v = try value()
            outcome = attempt { _ = try server.receive(v) }
        case "server-introduction", "client-introduction":
            var run = try register(ctx, client: "peer_A_seed_hex", server: "server_S_seed_hex",
                                   clientChallenge: "client_challenge_hex", serverChallenge: "server_challenge_hex")
            let v = try value()
            if try r.string("type") == "server-introduction" {
                outcome = attempt { _ = try run.server.receive(v) }
            } else {
                outcome = attempt { _ = try run.client.receive(v) }
            }
        case let other:
            throw VectorDataError("unknown reject type \"\(other)\"")
        }
        switch outcome {
        case .success: throw VectorDataError("accepted; expected \(code)")
        case let .failure(error as OCapNError):
            try require(error.code.rawValue == code, "error code \(error.code.rawValue), expected \(code)")
        case let .failure(error): throw VectorDataError("failed with \(error), expected OCapNError \(code)")
        }
    }

    // MARK: helpers

    static func require(_ condition: @autoclosure () throws -> Bool, _ what: String) throws {
        guard try condition() else { throw VectorDataError("mismatch: \(what)") }
    }

    /// `{"<designator>": "<string>"}` or null (URI hints are always strings).
    static func plainHints(_ any: Any?) throws -> [PublicIdentity: HintValue]? {
        guard let any, !(any is NSNull) else { return nil }
        guard let d = any as? [String: String] else { throw VectorDataError("URI hints must map designators to strings") }
        var out: [PublicIdentity: HintValue] = [:]
        for (k, v) in d { out[try PublicIdentity(designator: k)] = .string(v) }
        return out
    }

    /// `{"<designator>": {"string": "t"} | {"bool": true} | {"integer": "1"}}` or null.
    static func typedHints(_ any: Any?) throws -> [PublicIdentity: HintValue]? {
        guard let any, !(any is NSNull) else { return nil }
        guard let d = any as? [String: [String: Any]] else { throw VectorDataError("hints must map designators to typed values") }
        var out: [PublicIdentity: HintValue] = [:]
        for (k, v) in d {
            let value: HintValue
            if let s = v["string"] as? String {
                value = .string(s)
            } else if let b = v["bool"] as? Bool {
                value = .bool(b)
            } else if let i = v["integer"] as? String {
                let negative = i.hasPrefix("-")
                guard let n = SyrupInteger(isNegative: negative, magnitude: String(i.drop(while: { $0 == "-" }))) else {
                    throw VectorDataError("bad integer hint \"\(i)\"")
                }
                value = .integer(n)
            } else {
                throw VectorDataError("hint value must be {string|bool|integer}")
            }
            out[try PublicIdentity(designator: k)] = value
        }
        return out
    }
}
