import Identity
import OCapN
import Syrup
import Testing

/// Every worked example of Vectors/ocapn-examples.json, byte for byte.
@Suite struct WorkedExampleTests {
    @Test("The vector file holds every worked example of the dossier by name")
    func vectorFileHasAllWorkedExamples() {
        let names = Set(Fixtures.section("examples").compactMap { $0["name"] as? String })
        let expected: Set<String> = [
            "pubkey_A", "designator_A", "pubkey_B", "designator_B", "pubkey_S", "designator_S", "pubkey_S2",
            "designator_S2", "uri_A_no_hints", "uri_A_goblins", "uri_A_spec_value_1", "uri_B_goblins",
            "locator_A_hints_false", "locator_A_goblins_hints", "locator_A_spec_hints_1",
            "locator_A_two_servers_goblins", "msg1_uds_register_A", "sig_S_over_client_challenge",
            "msg2_uds_server_response_goblins", "msg2_uds_server_response_spec_text", "sig_A_over_server_challenge",
            "msg3_uds_signature_A_goblins", "msg3_uds_signature_A_spec_text", "msg1_uds_register_B",
            "msg2_uds_server_response_to_B_goblins", "msg3_uds_signature_B_goblins", "msg4_uds_new_connection_A_to_S",
            "msg4_scm_rights_dummy", "msg5_uds_new_connection_S_to_B", "msg4_uds_new_connection_spec_hint_1",
            "captp_pubkey_S", "captp_sig_S_over_client_challenge", "hints_goblins_first_server",
        ]
        #expect(expected.isSubset(of: names), "missing: \(expected.subtracting(names))")
    }

    @Test("Each seed gives its example public key and designator", arguments: ["A", "B", "S", "S2"])
    func seedGivesKeyAndDesignator(who: String) throws {
        let seed = ["A": "peer_A_seed_hex", "B": "peer_B_seed_hex", "S": "server_S_seed_hex", "S2": "extra_server_S2_seed_hex"][who]!
        let identity = Fixtures.signer(seed).publicIdentity
        #expect(identity.publicKey == Fixtures.bytes("pubkey_\(who)"))
        #expect(identity.designator == Fixtures.value("designator_\(who)"))
        #expect(try PublicIdentity(designator: Fixtures.value("designator_\(who)")) == identity)
    }

    @Test("Each example URI parses to its designator and hints and prints back", arguments: Fixtures.exampleNames(ofType: "uri"))
    func uriExample(name: String) throws {
        let e = Fixtures.example(name)
        let locator = try PeerLocator(uri: e["value"] as! String)
        #expect(locator.designator == e["designator"] as? String)
        #expect(locator.hints == Fixtures.plainHints(e["hints"]))
        #expect(locator.uri == e["emitted"] as? String)
    }

    @Test("Each example locator decodes, re-encodes to the same bytes and prints its URI",
          arguments: Fixtures.exampleNames(ofType: "locator"))
    func locatorExample(name: String) throws {
        let e = Fixtures.example(name)
        let bytes = Fixtures.bytes(name)
        let locator = try PeerLocator(syrup: Fixtures.decode(bytes))
        #expect(locator.designator == e["designator"] as? String)
        #expect(locator.hints == Fixtures.typedHints(e["hints"]))
        #expect(SyrupEncoder.encode(locator.syrupValue) == bytes)
        #expect(locator.uri == e["uri"] as? String)
        // Built from its parts, the locator encodes to the example too.
        let built = PeerLocator(identity: try PublicIdentity(designator: e["designator"] as! String),
                                hints: Fixtures.typedHints(e["hints"]))
        #expect(SyrupEncoder.encode(built.syrupValue) == bytes)
    }

    @Test("Each example message decodes as its label and re-encodes to the same bytes",
          arguments: Fixtures.exampleNames(ofType: "message"))
    func messageExample(name: String) throws {
        let e = Fixtures.example(name)
        let bytes = Fixtures.bytes(name)
        let message = try UDSMessage(bytes: bytes)
        #expect(message.name == e["message"] as? String)
        #expect(message.encoded == bytes)
        if let verify = e["verify"] as? [String: Any] {
            let key = try PublicIdentity(publicKey: Fixtures.hex(verify["public_key_hex"] as! String))
            let signed = try Challenge(Fixtures.hex(verify["message_hex"] as! String))
            let signature: Ed25519Signature
            switch message {
            case let .serverResponse(r): signature = r.clientChallengeResponse.signature
            case let .signature(s):
                #expect(s.payload == signed)
                signature = s.signature.signature
            default:
                Issue.record("verify on \(message.name)")
                return
            }
            #expect(signature.isValid(by: key, over: signed))
        }
    }

    @Test("The deterministic signatures match the examples", arguments: Fixtures.exampleNames(ofType: "signature"))
    func signatureExample(name: String) throws {
        let e = Fixtures.example(name)
        let signer = Fixtures.signer(e["seed"] as! String)
        let signature = signer.sign(try Challenge(Fixtures.hex(e["message_hex"] as! String)))
        #expect(signature.bytes == Fixtures.bytes(name))
    }

    @Test("The CapTP public-key list of S encodes to the example and decodes back")
    func captpPublicKey() throws {
        let bytes = Fixtures.bytes("captp_pubkey_S")
        #expect(bytes.count == 96)
        let s = Fixtures.serverS.publicIdentity
        #expect(SyrupEncoder.encode(s.captpPublicKey) == bytes)
        #expect(try PublicIdentity(captpPublicKey: Fixtures.decode(bytes)) == s)
    }

    @Test("The CapTP sig-val list encodes to the example and decodes back")
    func captpSigVal() throws {
        let bytes = Fixtures.bytes("captp_sig_S_over_client_challenge")
        #expect(bytes.count == 100)
        let signature = try Ed25519Signature(Fixtures.bytes("sig_S_over_client_challenge"))
        #expect(SyrupEncoder.encode(signature.captpSigVal) == bytes)
        #expect(try Ed25519Signature(captpSigVal: Fixtures.decode(bytes)) == signature)
        #expect(signature.r + signature.s == signature.bytes)
    }

    @Test("The first-server hints dictionary encodes to the example")
    func hintsDictionary() {
        let locator = PeerLocator(identity: Fixtures.peerA.publicIdentity, introductionServers: [Fixtures.serverS.publicIdentity])
        guard case let .record(_, fields) = locator.syrupValue else {
            Issue.record("a locator is a record")
            return
        }
        #expect(SyrupEncoder.encode(fields[2]) == Fixtures.bytes("hints_goblins_first_server"))
    }

    @Test("The descriptor marker is Goblins' int32 12345 in host order")
    func fdMarker() {
        #expect(UDSNewConnection.fdMarker.count == 4)
        if Int32(1).littleEndian == 1 {
            #expect(UDSNewConnection.fdMarker == Fixtures.bytes("msg4_scm_rights_dummy"))
        }
    }
}
