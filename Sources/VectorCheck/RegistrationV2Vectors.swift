import Foundation
import Identity
import OCapN
import SodiumCrypto
import Syrup

/// `ocapn-uds/registration-v2/v1`: registration v2 (PROTOCOL.md §15; Vectors/registration-v2.md).
/// Transcripts and signatures must be reproduced from the seeds, the machines must exchange the
/// sequence's exact bytes, and every reject case must fail with its `OCapNError` code.
public enum RegistrationV2Vectors: FormatVectorKind {
    public static let name = "registration-v2"
    public static let format = "ocapn-uds/registration-v2/v1"

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        guard let inputs = document["inputs"] as? [String: Any] else { return [.failed("file", "missing object \"inputs\"")] }
        var results: [VectorCaseResult] = []
        let contexts = document["contexts"] as? [String: Any] ?? [:]
        results.append(run("contexts") {
            try require(try contexts.hex("server_hex") == RegistrationTranscript.serverContext, "server context")
            try require(try contexts.hex("client_hex") == RegistrationTranscript.clientContext, "client context")
        })
        for (section, body) in [("transcripts", checkTranscript), ("sequences", checkSequence), ("rejects", checkReject)]
            as [(String, ([String: Any], [String: Any]) throws -> Void)] {
            for c in (document[section] as? [[String: Any]]) ?? [] {
                results.append(run("\(section)/\((c["name"] as? String) ?? "?")") { try body(inputs, c) })
            }
        }
        return results
    }

    static func run(_ name: String, _ body: () throws -> Void) -> VectorCaseResult {
        do {
            try body()
            return .passed(name)
        } catch {
            return .failed(name, "\(error)")
        }
    }

    static func signer(_ inputs: [String: Any], _ name: String) throws -> IdentityKeyPair {
        try IdentityKeyPair(seed: SecretBytes(copying: try inputs.hex(name)))
    }

    static func challenge(_ inputs: [String: Any], _ name: String) throws -> Challenge {
        try Challenge(try inputs.hex(name))
    }

    static func checkTranscript(_ inputs: [String: Any], _ t: [String: Any]) throws {
        let server = try signer(inputs, try t.string("server_seed"))
        let client = try signer(inputs, try t.string("client_seed"))
        let chC = try challenge(inputs, "client_challenge_hex"), chS = try challenge(inputs, "server_challenge_hex")
        let role: RegistrationTranscript.Role
        switch try t.string("role") {
        case "server": role = .server
        case "client": role = .client
        case let other: throw VectorDataError("unknown role \"\(other)\"")
        }
        let bytes = RegistrationTranscript.bytes(role, server: server.publicIdentity, client: client.publicIdentity,
                                                 clientChallenge: chC, serverChallenge: chS)
        try require(bytes == (try t.hex("hex")), "transcript bytes")
        let signature = role == .server
            ? server.signRegistration(.server, peer: client.publicIdentity, clientChallenge: chC, serverChallenge: chS)
            : client.signRegistration(.client, peer: server.publicIdentity, clientChallenge: chC, serverChallenge: chS)
        try require(signature.bytes == (try t.hex("signature_hex")), "deterministic signature")
        try require(signature.isValidRegistration(role, server: server.publicIdentity, client: client.publicIdentity,
                                                  clientChallenge: chC, serverChallenge: chS), "signature verifies")
    }

    static func checkSequence(_ inputs: [String: Any], _ s: [String: Any]) throws {
        guard let expected = s["messages"] as? [String], expected.count == 3 else {
            throw VectorDataError("\"messages\" must hold three hex strings")
        }
        let serverSigner = try signer(inputs, try s.string("server_seed"))
        var client = RegistrationClient(signer: try signer(inputs, try s.string("client_seed")),
                                        challenge: try challenge(inputs, try s.string("client_challenge")),
                                        expectedServer: serverSigner.publicIdentity, form: .v2)
        var server = RegistrationServer(signer: serverSigner, challenge: try challenge(inputs, try s.string("server_challenge")),
                                        accepting: .v2)
        let msg1 = client.start().encoded
        guard case let .send(response)? = try server.receive(try SyrupDecoder().decode(msg1)).first else {
            throw VectorDataError("server did not answer uds-v2:register")
        }
        let msg2 = response.encoded
        let actions = try client.receive(try SyrupDecoder().decode(msg2))
        guard case let .send(reply)? = actions.first, client.server?.form == .v2 else {
            throw VectorDataError("client did not register: \(actions)")
        }
        let msg3 = reply.encoded
        let final = try server.receive(try SyrupDecoder().decode(msg3))
        guard case let .registered(peer)? = final.first, peer.form == .v2, peer.identity == client.locator.identity else {
            throw VectorDataError("server did not register the peer: \(final)")
        }
        try require([msg1, msg2, msg3].map(Hex.encode) == expected, "msg1..msg3 bytes")
    }

    static func checkReject(_ inputs: [String: Any], _ r: [String: Any]) throws {
        let code = try r.string("error")
        guard OCapNError.Code(rawValue: code) != nil else { throw VectorDataError("unknown error code \"\(code)\"") }
        let value = try SyrupDecoder().decode(try r.hex("hex"))
        let chC = try challenge(inputs, "client_challenge_hex"), chS = try challenge(inputs, "server_challenge_hex")
        let serverSigner = try signer(inputs, "server_S_seed_hex")
        var outcome: OCapNError?
        func attempt(_ body: () throws(OCapNError) -> Void) {
            do throws(OCapNError) { try body() } catch { outcome = error }
        }
        switch try r.string("type") {
        case "client-response":
            let pinned = try (r["pinned_server_hex"] as? String).map { _ in try PublicIdentity(publicKey: try r.hex("pinned_server_hex")) }
            var client = RegistrationClient(signer: try signer(inputs, "peer_A_seed_hex"), challenge: chC,
                                            expectedServer: pinned, form: .v2)
            _ = client.start()
            attempt { () throws(OCapNError) in _ = try client.receive(value) }
            if outcome != nil, client.server != nil { throw VectorDataError("the client registered anyway") }
        case "server-signature":
            var server = RegistrationServer(signer: serverSigner, challenge: chS)
            let register = UDSMessage.registerV2(UDSRegisterV2(
                locator: PeerLocator(identity: try signer(inputs, "peer_A_seed_hex").publicIdentity), challenge: chC))
            _ = try server.receive(register)
            attempt { () throws(OCapNError) in _ = try server.receive(value) }
            if outcome != nil, server.peer != nil { throw VectorDataError("the server registered the peer anyway") }
        case "server-first":
            var forms: RegistrationForms = []
            for part in try r.string("accepting").split(separator: ",") {
                switch part {
                case "v2": forms.insert(.v2)
                case "legacy": forms.insert(.legacy)
                default: throw VectorDataError("unknown form \"\(part)\"")
                }
            }
            var server = RegistrationServer(signer: serverSigner, challenge: chS, accepting: forms)
            attempt { () throws(OCapNError) in
                let actions = try server.receive(value)
                if !actions.isEmpty { outcome = nil }
            }
        case let other:
            throw VectorDataError("unknown reject type \"\(other)\"")
        }
        guard let outcome else { throw VectorDataError("accepted; expected \(code)") }
        try require(outcome.code.rawValue == code, "error code \(outcome.code.rawValue), expected \(code)")
    }

    static func require(_ condition: @autoclosure () throws -> Bool, _ what: String) throws {
        guard try condition() else { throw VectorDataError("mismatch: \(what)") }
    }
}
