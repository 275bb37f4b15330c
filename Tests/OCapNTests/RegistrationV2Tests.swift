import Identity
import OCapN
import SodiumCrypto
import Syrup
import Testing

/// Registration v2 (PROTOCOL.md §15): what each side signs is bound to its role, both keys and
/// both challenges, so the relay of issue 11 gets nothing it can use, and neither side ever
/// answers the other form.
@Suite struct RegistrationV2Tests {
    struct Run {
        var client: RegistrationClient
        var server: RegistrationServer
        var messages: [UDSMessage]
    }

    /// V (or `peer`) registers with v2 at `server`.
    static func register(_ peer: IdentityKeyPair = Fixtures.peerA, at server: IdentityKeyPair = Fixtures.serverS,
                         pinned: PublicIdentity? = nil) throws -> Run {
        var client = RegistrationClient(signer: peer, challenge: Fixtures.clientChallenge, expectedServer: pinned)
        var machine = RegistrationServer(signer: server, challenge: Fixtures.serverChallenge)
        let msg1 = client.start()
        guard case .registerV2 = msg1 else { throw OCapNError(.unexpectedMessage, "not a v2 register: \(msg1.name)") }
        guard case let .send(msg2)? = try machine.receive(Fixtures.decode(msg1.encoded)).first else {
            throw OCapNError(.unexpectedMessage, "no server response")
        }
        let actions = try client.receive(Fixtures.decode(msg2.encoded))
        guard case let .send(msg3)? = actions.first else { throw OCapNError(.unexpectedMessage, "no client signature") }
        _ = try machine.receive(Fixtures.decode(msg3.encoded))
        return Run(client: client, server: machine, messages: [msg1, msg2, msg3])
    }

    @Test("A v2 registration verifies both sides, and both record the v2 form")
    func roundTrip() throws {
        let run = try Self.register(pinned: Fixtures.serverS.publicIdentity)
        #expect(run.client.server?.identity == Fixtures.serverS.publicIdentity)
        #expect(run.client.server?.form == .v2)
        #expect(run.server.peer?.identity == Fixtures.peerA.publicIdentity)
        #expect(run.server.peer?.form == .v2)
        #expect(run.messages.map(\.name) == ["uds-v2:register", "uds-v2:server-response", "uds-v2:signature"])
    }

    @Test("The transcript is 219 bytes, neither a legacy challenge (64) nor a UDS-HS1 input (61), and the two roles differ")
    func transcriptShape() {
        let a = RegistrationTranscript.bytes(.server, server: Fixtures.serverS.publicIdentity, client: Fixtures.peerA.publicIdentity,
                                             clientChallenge: Fixtures.clientChallenge, serverChallenge: Fixtures.serverChallenge)
        let b = RegistrationTranscript.bytes(.client, server: Fixtures.serverS.publicIdentity, client: Fixtures.peerA.publicIdentity,
                                             clientChallenge: Fixtures.clientChallenge, serverChallenge: Fixtures.serverChallenge)
        #expect(a.count == RegistrationTranscript.length && b.count == RegistrationTranscript.length)
        #expect(a.count != Challenge.length && a.count != 61)
        #expect(a != b && a.dropFirst(27) == b.dropFirst(27))
    }

    /// The relay of issue 11: M opens a v2 registration at S as V, passes S's challenge to V as its
    /// own server challenge and forwards V's signature. V pinned M (it registers with M on purpose).
    @Test("A co-server relaying V's v2 signature to S is refused: the signature names M's key", arguments: [false, true])
    func relayRefused(copyVictimChallenge: Bool) throws {
        let victim = Fixtures.peerA, m = Fixtures.serverS2, s = Fixtures.serverS
        var victimClient = RegistrationClient(signer: victim, challenge: Fixtures.clientChallenge, expectedServer: m.publicIdentity)
        guard case let .registerV2(victimRegister) = victimClient.start() else { throw OCapNError(.unexpectedMessage, "v1") }
        // M → S as V (with its own challenge, or V's).
        var atS = RegistrationServer(signer: s, challenge: Fixtures.serverChallenge)
        let relayChallenge = copyVictimChallenge ? victimRegister.challenge : Challenge.random()
        let toS = UDSMessage.registerV2(UDSRegisterV2(locator: PeerLocator(identity: victim.publicIdentity), challenge: relayChallenge))
        guard case let .send(.serverResponseV2(fromS))? = try atS.receive(toS).first else { throw OCapNError(.unexpectedMessage, "S") }
        // M → V: S's challenge as M's own, signed by M for V.
        let mSignature = m.signRegistration(.server, peer: victim.publicIdentity, clientChallenge: victimRegister.challenge,
                                            serverChallenge: fromS.serverChallenge)
        let toV = UDSServerResponseV2(serverKey: m.publicIdentity, serverChallenge: fromS.serverChallenge, signature: mSignature)
        guard case let .send(.signatureV2(victimSignature))? = try victimClient.receive(.serverResponseV2(toV)).first else {
            throw OCapNError(.unexpectedMessage, "V did not sign")
        }
        // M → S: V's signature. It covers M's key (and V's challenge), not S's.
        #expect(code { try atS.receive(.signatureV2(victimSignature)) } == .badSignature)
        #expect(atS.peer == nil)
    }

    @Test("A co-server cannot pass S's v2 response to V as its own: V pinned M, and S's signature names S")
    func serverSignatureNotReusable() throws {
        let victim = Fixtures.peerA, m = Fixtures.serverS2, s = Fixtures.serverS
        var victimClient = RegistrationClient(signer: victim, challenge: Fixtures.clientChallenge, expectedServer: m.publicIdentity)
        guard case let .registerV2(reg) = victimClient.start() else { throw OCapNError(.unexpectedMessage, "v1") }
        var atS = RegistrationServer(signer: s, challenge: Fixtures.serverChallenge)
        guard case let .send(.serverResponseV2(fromS))? = try atS.receive(.registerV2(reg)).first else {
            throw OCapNError(.unexpectedMessage, "S")
        }
        // Presented under S's key: the pin refuses it.
        #expect(code { try victimClient.receive(.serverResponseV2(fromS)) } == .serverKeyMismatch)
        // Relabelled with M's key: S's signature does not verify for M.
        var again = RegistrationClient(signer: victim, challenge: Fixtures.clientChallenge, expectedServer: m.publicIdentity)
        _ = again.start()
        var relabelled = fromS
        relabelled.serverKey = m.publicIdentity
        #expect(code { try again.receive(.serverResponseV2(relabelled)) } == .badSignature)
    }

    @Test("A relay answering a v2 peer in the legacy form is refused, never answered (no downgrade)")
    func downgradeRefused() throws {
        var client = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge)
        _ = client.start()
        let legacy = Fixtures.bytes("msg2_uds_server_response_goblins")
        #expect(code { try client.receive(Fixtures.decode(legacy)) } == .registrationFormRefused)
        #expect(client.server == nil)
    }

    @Test("A peer configured for a Goblins server refuses a v2 response, and the draft form answers with a sig-val list")
    func legacyClientForms() throws {
        var goblins = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge, form: .goblins)
        _ = goblins.start()
        let v2 = try Self.register().messages[1]
        #expect(code { try goblins.receive(v2) } == .registrationFormRefused)
        let run = try RegistrationTests.register(form: .draft)
        let msg3 = try UDSMessage(bytes: run.messages[2])
        guard case let .signature(sig) = msg3, case .sigVal = sig.signature else {
            Issue.record("draft form must send a sig-val list: \(msg3)")
            return
        }
        #expect(run.server.peer?.form == .draft)
        #expect(run.messages[0] == Fixtures.bytes("msg1_uds_register_A"))
    }

    @Test("The server never mixes forms: a legacy uds:signature after uds-v2:register, and the other way round, are refused")
    func serverDoesNotMixForms() throws {
        var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
        var client = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge)
        _ = try server.receive(client.start())
        let legacy = UDSMessage.signature(UDSSignature(payload: Fixtures.serverChallenge,
                                                       signature: .raw(Fixtures.peerA.sign(Fixtures.serverChallenge))))
        #expect(code { try server.receive(legacy) } == .unexpectedMessage)
        var legacyServer = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
        _ = try legacyServer.receive(Fixtures.decode(Fixtures.bytes("msg1_uds_register_A")))
        let v2 = UDSMessage.signatureV2(UDSSignatureV2(signature: Fixtures.peerA.signRegistration(
            .client, peer: Fixtures.serverS.publicIdentity, clientChallenge: Fixtures.clientChallenge,
            serverChallenge: Fixtures.serverChallenge)))
        #expect(code { try legacyServer.receive(v2) } == .unexpectedMessage)
    }

    @Test("A server signature reflected back as the client's is refused: the role is in the context")
    func roleReflectionRefused() throws {
        // A peer whose key is the server's own cannot reuse the server's signature as its own.
        var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
        let reg = UDSRegisterV2(locator: PeerLocator(identity: Fixtures.serverS.publicIdentity), challenge: Fixtures.clientChallenge)
        guard case let .send(.serverResponseV2(response))? = try server.receive(.registerV2(reg)).first else {
            throw OCapNError(.unexpectedMessage, "no response")
        }
        #expect(code { try server.receive(.signatureV2(UDSSignatureV2(signature: response.signature))) } == .badSignature)
    }

    @Test("A server accepting only v2 refuses uds:register before signing; one accepting only legacy refuses uds-v2:register")
    func acceptedForms() throws {
        var v2Only = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge, accepting: .v2)
        #expect(code { try v2Only.receive(Fixtures.decode(Fixtures.bytes("msg1_uds_register_A"))) } == .registrationFormRefused)
        var legacyOnly = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge, accepting: .legacy)
        var client = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge)
        #expect(code { try legacyOnly.receive(client.start()) } == .registrationFormRefused)
    }
}
