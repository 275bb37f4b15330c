import Identity
import OCapN
import SodiumCrypto
import Syrup
import Testing

/// The two registration machines back to back, in memory.
@Suite struct RegistrationTests {
    /// Runs A (or `peer`) against S with the fixed challenges; returns both machines and the bytes.
    static func register(_ peer: IdentityKeyPair = Fixtures.peerA, pinned: PublicIdentity? = nil,
                         form: RegistrationForm = .goblins)
        throws -> (client: RegistrationClient, server: RegistrationServer, messages: [[UInt8]]) {
        var client = RegistrationClient(signer: peer, challenge: Fixtures.clientChallenge, expectedServer: pinned, form: form)
        var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
        let msg1 = client.start().encoded
        let serverActions = try server.receive(Fixtures.decode(msg1))
        guard case let .send(response)? = serverActions.first, serverActions.count == 1 else {
            Issue.record("server answer: \(serverActions)")
            return (client, server, [])
        }
        let msg2 = response.encoded
        let clientActions = try client.receive(Fixtures.decode(msg2))
        guard clientActions.count == 2, case let .send(signature) = clientActions[0],
              case let .registered(verified) = clientActions[1] else {
            Issue.record("client answer: \(clientActions)")
            return (client, server, [])
        }
        #expect(verified.identity == Fixtures.serverS.publicIdentity)
        let msg3 = signature.encoded
        let final = try server.receive(Fixtures.decode(msg3))
        guard final.count == 1, case let .registered(registered) = final[0] else {
            Issue.record("server final: \(final)")
            return (client, server, [])
        }
        #expect(registered.identity == peer.publicIdentity)
        #expect(registered.locator == PeerLocator(identity: peer.publicIdentity))
        return (client, server, [msg1, msg2, msg3])
    }

    @Test("A full registration of A against S reproduces msg1, msg2 and msg3 exactly")
    func registrationOfA() throws {
        let run = try Self.register()
        #expect(run.messages == [
            Fixtures.bytes("msg1_uds_register_A"),
            Fixtures.bytes("msg2_uds_server_response_goblins"),
            Fixtures.bytes("msg3_uds_signature_A_goblins"),
        ])
        #expect(run.client.server?.identity == Fixtures.serverS.publicIdentity)
        #expect(run.server.peer?.identity == Fixtures.peerA.publicIdentity)
    }

    @Test("A full registration of B against S reproduces B's three messages exactly")
    func registrationOfB() throws {
        let run = try Self.register(Fixtures.peerB)
        #expect(run.messages == [
            Fixtures.bytes("msg1_uds_register_B"),
            Fixtures.bytes("msg2_uds_server_response_to_B_goblins"),
            Fixtures.bytes("msg3_uds_signature_B_goblins"),
        ])
    }

    @Test("Registration succeeds with the server's key pinned")
    func pinnedServer() throws {
        let run = try Self.register(pinned: Fixtures.serverS.publicIdentity)
        #expect(run.messages.count == 3)
    }

    @Test("An introduction from A to B through S reproduces msg4 and msg5 and reaches B")
    func introductionAToB() throws {
        var a = try Self.register(Fixtures.peerA)
        var b = try Self.register(Fixtures.peerB)
        let s = Fixtures.serverS.publicIdentity
        let aLocator = PeerLocator(identity: Fixtures.peerA.publicIdentity, introductionServers: [s])
        let bLocator = PeerLocator(identity: Fixtures.peerB.publicIdentity, introductionServers: [s])
        let msg4 = a.client.introductionRequest(to: bLocator, advertising: aLocator).encoded
        #expect(msg4 == Fixtures.bytes("msg4_uds_new_connection_A_to_S"))
        let actions = try a.server.receive(Fixtures.decode(msg4))
        guard actions.count == 1, case let .forward(intro) = actions[0] else {
            Issue.record("server did not forward: \(actions)")
            return
        }
        #expect(intro.target == Fixtures.peerB.publicIdentity)
        #expect(intro.sender.identity == Fixtures.peerA.publicIdentity)
        #expect(intro.forward.encoded == Fixtures.bytes("msg5_uds_new_connection_S_to_B"))
        let incoming = try b.client.receive(Fixtures.decode(intro.forward.encoded))
        guard incoming.count == 1, case let .incoming(i) = incoming[0] else {
            Issue.record("B did not accept: \(incoming)")
            return
        }
        #expect(i.claimedFrom == aLocator)
        #expect(i.to == bLocator)
    }

    @Test("The server accepts the draft spec's sig-val list in uds:signature")
    func serverAcceptsSpecSignature() throws {
        var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
        _ = try server.receive(Fixtures.decode(Fixtures.bytes("msg1_uds_register_A")))
        let actions = try server.receive(Fixtures.decode(Fixtures.bytes("msg3_uds_signature_A_spec_text")))
        guard case let .registered(peer)? = actions.first else {
            Issue.record("not registered: \(actions)")
            return
        }
        #expect(peer.identity == Fixtures.peerA.publicIdentity)
    }

    @Test("The client accepts the draft spec's uds:signature record and a raw signature in uds:server-response")
    func clientAcceptsSpecResponses() throws {
        let spec = Fixtures.bytes("msg2_uds_server_response_spec_text")
        let goblins = try UDSMessage(bytes: Fixtures.bytes("msg2_uds_server_response_goblins"))
        guard case var .serverResponse(raw) = goblins else {
            Issue.record("not a server response")
            return
        }
        raw.clientChallengeResponse = .raw(raw.clientChallengeResponse.signature)
        for response in [spec, UDSMessage.serverResponse(raw).encoded] {
            var client = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge, form: .goblins)
            _ = client.start()
            let actions = try client.receive(Fixtures.decode(response))
            #expect(actions.first == .send(try UDSMessage(bytes: Fixtures.bytes("msg3_uds_signature_A_goblins"))))
            #expect(client.server?.identity == Fixtures.serverS.publicIdentity)
        }
    }

    @Test("A fresh random challenge is 64 bytes and differs each time")
    func randomChallenges() {
        let one = Challenge.random(), two = Challenge.random()
        #expect(one.bytes.count == 64)
        #expect(one != two)
    }

    @Test("Challenges of 63 and 65 bytes cannot exist, so they can never be signed", arguments: [0, 32, 63, 65, 128])
    func challengeLengths(count: Int) {
        #expect(code { try Challenge([UInt8](repeating: 7, count: count)) } == .challengeLength)
    }

    @Test("The server refuses to answer a 63-byte client challenge and sends nothing")
    func serverRefusesShortChallenge() {
        var server = RegistrationServer(signer: Fixtures.serverS, challenge: Fixtures.serverChallenge)
        let short = Fixtures.hex(Fixtures.reject("register_challenge_63_bytes")["hex"] as! String)
        #expect(code { try server.receive(Fixtures.decode(short)) } == .challengeLength)
    }

    @Test("The client refuses to sign a 65-byte server challenge")
    func clientRefusesLongChallenge() {
        var client = RegistrationClient(signer: Fixtures.peerA, challenge: Fixtures.clientChallenge, form: .goblins)
        _ = client.start()
        let long = Fixtures.hex(Fixtures.reject("server_response_challenge_65_bytes")["hex"] as! String)
        #expect(code { try client.receive(Fixtures.decode(long)) } == .challengeLength)
        #expect(client.server == nil)
    }

    @Test("A key pair from a seed signs challenges deterministically, and a short seed is refused")
    func keyPairFromSeed() throws {
        let seed = Fixtures.input("peer_A_seed_hex")
        let again = try IdentityKeyPair(seed: SecretBytes(copying: seed))
        #expect(again.publicIdentity == Fixtures.peerA.publicIdentity)
        #expect(again.sign(Fixtures.serverChallenge) == Fixtures.peerA.sign(Fixtures.serverChallenge))
        #expect(Fixtures.peerA.sign(Fixtures.serverChallenge).isValid(by: again.publicIdentity, over: Fixtures.serverChallenge))
        #expect(throws: IdentityError.self) { try IdentityKeyPair(seed: SecretBytes(copying: Array(seed.prefix(31)))) }
        #expect(!"\(again)".contains(Fixtures.hexString(seed)))
    }
}
