import Identity
import OCapN
import Syrup
import Testing

/// Must-reject cases: each fails with its stable code.
@Suite struct RejectTests {
    @Test("Each must-reject case of the vector file fails with its code", arguments: Fixtures.rejectNames())
    func vectorReject(name: String) throws {
        let r = Fixtures.reject(name)
        let expected = try #require(OCapNError.Code(rawValue: r["error"] as! String))
        let hex = (r["hex"] as? String).map(Fixtures.hex)
        let actual: OCapNError.Code?
        switch r["type"] as! String {
        case "message":
            actual = code { try UDSMessage(bytes: hex!) }
        case "locator":
            actual = code { try PeerLocator(syrup: Fixtures.decode(hex!)) }
        case "uri":
            actual = code { try PeerLocator(uri: r["value"] as! String) }
        case "captp-public-key":
            actual = code { try PublicIdentity(captpPublicKey: Fixtures.decode(hex!)) }
        case "captp-signature":
            actual = code { try Ed25519Signature(captpSigVal: Fixtures.decode(hex!)) }
        case "client-response":
            let pinned = try (r["pinned_server_hex"] as? String).map { try PublicIdentity(publicKey: Fixtures.hex($0)) }
            var client = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge, expectedServer: pinned, form: .goblins)
            _ = client.start()
            actual = code { try client.receive(Fixtures.decode(hex!)) }
            #expect(client.server == nil)
        case "server-first":
            var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
            actual = code { try server.receive(Fixtures.decode(hex!)) }
        case "server-signature":
            var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
            _ = try server.receive(Fixtures.decode(Fixtures.bytes("msg1_uds_register_A")))
            actual = code { try server.receive(Fixtures.decode(hex!)) }
            #expect(server.peer == nil)
        case "server-introduction":
            var run = try RegistrationTests.register()
            actual = code { try run.server.receive(Fixtures.decode(hex!)) }
        case "client-introduction":
            var run = try RegistrationTests.register()
            actual = code { try run.client.receive(Fixtures.decode(hex!)) }
        case let other:
            Issue.record("unknown reject type \(other)")
            return
        }
        #expect(actual == expected, "\(name)")
    }

    @Test("Every error code used by the vector file is a known code, and the file covers the key ones")
    func rejectCoverage() {
        let used = Set(Fixtures.section("rejects").compactMap { $0["error"] as? String })
        for c in used { #expect(OCapNError.Code(rawValue: c) != nil, "\(c)") }
        let required: [OCapNError.Code] = [
            .malformedMessage, .unknownMessage, .unexpectedMessage, .challengeLength, .challengeMismatch,
            .badSignature, .wrongTransport, .invalidDesignator, .invalidHint, .invalidURI, .serverKeyMismatch,
            .spoofedFrom, .wrongTarget, .invalidSyrup, .invalidPublicKey, .reflectedChallenge,
        ]
        for c in required { #expect(used.contains(c.rawValue), "no reject case for \(c)") }
    }

    /// Each (state, message) pair the machines do not allow is `unexpectedMessage`.
    @Test("The server accepts only register, then signature, then new-connection")
    func serverStateTable() throws {
        let register = Fixtures.bytes("msg1_uds_register_A")
        let response = Fixtures.bytes("msg2_uds_server_response_goblins")
        let signature = Fixtures.bytes("msg3_uds_signature_A_goblins")
        let intro = Fixtures.bytes("msg4_uds_new_connection_A_to_S")
        // Fresh server: everything but register.
        for bytes in [response, signature, intro] {
            var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
            #expect(code { try server.receive(Fixtures.decode(bytes)) } == .unexpectedMessage)
        }
        // After register: everything but signature.
        for bytes in [register, response, intro] {
            var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
            _ = try server.receive(Fixtures.decode(register))
            #expect(code { try server.receive(Fixtures.decode(bytes)) } == .unexpectedMessage)
        }
        // Registered: everything but new-connection.
        for bytes in [register, response, signature] {
            var run = try RegistrationTests.register()
            #expect(code { try run.server.receive(Fixtures.decode(bytes)) } == .unexpectedMessage)
        }
    }

    @Test("The client accepts only server-response, then new-connection")
    func clientStateTable() throws {
        let register = Fixtures.bytes("msg1_uds_register_A")
        let signature = Fixtures.bytes("msg3_uds_signature_A_goblins")
        let intro = Fixtures.bytes("msg5_uds_new_connection_S_to_B")
        for bytes in [register, signature, intro] {
            var client = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge, form: .goblins)
            _ = client.start()
            #expect(code { try client.receive(Fixtures.decode(bytes)) } == .unexpectedMessage)
        }
        for bytes in [register, signature, Fixtures.bytes("msg2_uds_server_response_goblins")] {
            var run = try RegistrationTests.register()
            #expect(code { try run.client.receive(Fixtures.decode(bytes)) } == .unexpectedMessage)
        }
    }

    @Test("A replayed uds:signature from another connection fails against a fresh challenge")
    func replayedSignature() throws {
        var server = RegistrationServer(signer: Fixtures.serverS, challenge: Challenge.random())
        _ = try server.receive(Fixtures.decode(Fixtures.bytes("msg1_uds_register_A")))
        #expect(code { try server.receive(Fixtures.decode(Fixtures.bytes("msg3_uds_signature_A_goblins"))) } == .challengeMismatch)
    }

    @Test("Every single-bit flip of the server's signature is refused", arguments: [0, 31, 32, 63])
    func flippedServerSignature(byte: Int) throws {
        guard case var .serverResponse(r) = try UDSMessage(bytes: Fixtures.bytes("msg2_uds_server_response_goblins")) else {
            Issue.record("not a server response")
            return
        }
        for bit in 0..<8 {
            var sig = r.clientChallengeResponse.signature.bytes
            sig[byte] ^= UInt8(1 << bit)
            r.clientChallengeResponse = .sigVal(try Ed25519Signature(sig))
            var client = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge, form: .goblins)
            _ = client.start()
            #expect(code { try client.receive(.serverResponse(r)) } == .badSignature)
        }
    }

    @Test("Error descriptions never contain a seed")
    func errorsCarryNoSecrets() throws {
        let seeds = ["peer_A_seed_hex", "server_S_seed_hex"].map { Fixtures.hexString(Fixtures.input($0)) }
        var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
        _ = try server.receive(Fixtures.decode(Fixtures.bytes("msg1_uds_register_A")))
        do {
            _ = try server.receive(Fixtures.decode(Fixtures.bytes("msg3_uds_signature_B_goblins")))
            Issue.record("accepted B's signature for A")
        } catch {
            for seed in seeds { #expect(!error.description.contains(seed)) }
            #expect(error.code == .badSignature)
        }
    }
}
