import Identity
import OCapN
import Syrup
import Testing

/// The sans-IO introduction server, driven in memory (no sockets, injected clock and challenges).
@Suite struct IntroductionServerCoreTests {
    // MARK: worked examples

    @Test("Registration answers the worked example byte for byte and accepts the peer")
    func registrationIsByteExact() {
        let h = CoreHarness(challenges: [Fixtures.serverChallenge])
        let a = h.accept()
        h.feed(a, Fixtures.bytes("msg1_uds_register_A"))
        #expect(h.takeSent(a) == Fixtures.bytes("msg2_uds_server_response_goblins"))
        #expect(h.audits.isEmpty, "nothing is decided before the signature")
        h.feed(a, Fixtures.bytes("msg3_uds_signature_A_goblins"))
        #expect(h.takeSent(a).isEmpty, "the server sends nothing after a verified signature")
        let accepted = h.audits(.registrationAccepted)
        #expect(accepted.count == 1)
        #expect(accepted.first?.proved == Fixtures.peerA.publicIdentity)
        #expect(accepted.first?.credentials == h.credentials)
        #expect(h.core.route(for: Fixtures.peerA.publicIdentity) == a)
        h.finish()
    }

    @Test("An introduction from A to registered B forwards the identical record with the same descriptor")
    func introductionIsForwardedByteExact() {
        let h = CoreHarness(challenges: [Fixtures.serverChallenge, Fixtures.serverChallenge])
        let a = h.accept()
        h.feed(a, Fixtures.bytes("msg1_uds_register_A"))
        h.feed(a, Fixtures.bytes("msg3_uds_signature_A_goblins"))
        let b = h.accept()
        h.feed(b, Fixtures.bytes("msg1_uds_register_B"))
        #expect(h.takeSent(b) == Fixtures.bytes("msg2_uds_server_response_to_B_goblins"))
        h.feed(b, Fixtures.bytes("msg3_uds_signature_B_goblins"))
        let fd = h.descriptor()
        h.feed(a, Fixtures.bytes("msg4_uds_new_connection_A_to_S"))
        #expect(h.forwards.isEmpty, "nothing moves before the marker and its descriptor")
        h.feed(a, Fixtures.bytes("msg4_scm_rights_dummy"), descriptors: [fd])
        #expect(h.forwards.count == 1)
        #expect(h.forwards.first?.target == b)
        #expect(h.forwards.first?.descriptor == fd)
        #expect(h.forwards.first?.record == Fixtures.bytes("msg5_uds_new_connection_S_to_B"))
        #expect(h.reasons(.introductionRequested) == [nil])
        let forwarded = h.audits(.introductionForwarded)
        #expect(forwarded.count == 1)
        #expect(forwarded.first?.from == Fixtures.peerA.publicIdentity && forwarded.first?.to == Fixtures.peerB.publicIdentity)
        #expect(forwarded.first?.attempt == h.audits(.introductionRequested).first?.attempt)
        h.finish()
    }

    @Test("The worked examples dripped one byte per read, with the descriptor on the marker's first byte, give the same result")
    func drippedBytesGiveTheSameResult() {
        let h = CoreHarness(challenges: [Fixtures.serverChallenge, Fixtures.serverChallenge])
        func drip(_ id: IntroductionServerConnectionID, _ bytes: [UInt8], fd: Int? = nil) {
            for (i, byte) in bytes.enumerated() {
                h.feed(id, [byte], descriptors: i == 0 ? fd.map { [$0] } ?? [] : [])
            }
        }
        let a = h.accept()
        drip(a, Fixtures.bytes("msg1_uds_register_A"))
        #expect(h.takeSent(a) == Fixtures.bytes("msg2_uds_server_response_goblins"))
        drip(a, Fixtures.bytes("msg3_uds_signature_A_goblins"))
        let b = h.accept()
        drip(b, Fixtures.bytes("msg1_uds_register_B") + Fixtures.bytes("msg3_uds_signature_B_goblins"))
        #expect(h.core.registeredCount == 2)
        let fd = h.descriptor()
        drip(a, Fixtures.bytes("msg4_uds_new_connection_A_to_S"))
        drip(a, UDSNewConnection.fdMarker, fd: fd)
        #expect(h.forwards.map(\.record) == [Fixtures.bytes("msg5_uds_new_connection_S_to_B")])
        h.finish()
    }

    @Test("A record, its marker and descriptor, and a second introduction in one read are all forwarded in order")
    func mergedReadsKeepOrder() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let b = h.register(Peers.signer(2))
        let record = UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: Peers.signer(1).publicIdentity), to: PeerLocator(identity: Peers.signer(2).publicIdentity))).encoded
        let first = h.descriptor(), second = h.descriptor()
        // K5: a read ends with the segment that carried a descriptor; earlier bytes can merge in.
        h.feed(a, record + UDSNewConnection.fdMarker, descriptors: [first])
        h.feed(a, record + UDSNewConnection.fdMarker, descriptors: [second])
        #expect(h.forwards.map(\.descriptor) == [first, second])
        #expect(h.forwards.allSatisfy { $0.target == b && $0.record == record })
        h.finish()
    }

    @Test("A uds:signature, a uds:new-connection and its marker merged into the descriptor's read register and forward")
    func pipelinedSignatureAndIntroduction() {
        // K5: earlier plain segments may share the read that carries the descriptor.
        let h = CoreHarness(challenges: [Fixtures.serverChallenge, Fixtures.serverChallenge])
        let b = h.accept()
        h.feed(b, Fixtures.bytes("msg1_uds_register_B") + Fixtures.bytes("msg3_uds_signature_B_goblins"))
        let a = h.accept()
        h.feed(a, Fixtures.bytes("msg1_uds_register_A"))
        let fd = h.descriptor()
        h.feed(a, Fixtures.bytes("msg3_uds_signature_A_goblins") + Fixtures.bytes("msg4_uds_new_connection_A_to_S")
               + UDSNewConnection.fdMarker, descriptors: [fd])
        #expect(h.reasons(.registrationAccepted) == [nil, nil])
        #expect(h.forwards.map(\.descriptor) == [fd])
        #expect(h.forwards.first?.target == b)
        h.finish()
    }

    @Test("A descriptor on the last message of a read, with no marker after it, is refused")
    func descriptorEndingOnPlainMessageIsRefused() {
        let h = CoreHarness(challenges: [Fixtures.serverChallenge])
        let a = h.accept()
        h.feed(a, Fixtures.bytes("msg1_uds_register_A"))
        let fd = h.descriptor()
        h.feed(a, Fixtures.bytes("msg3_uds_signature_A_goblins"), descriptors: [fd])
        #expect(h.reasons(.registrationRefused) == [.extraFds])
        #expect(h.closedDescriptors == [fd])
        h.finish()
    }

    // MARK: registration failures

    @Test("A signature that does not verify refuses the registration and closes the connection")
    func badSignatureIsRefused() {
        let h = CoreHarness(challenges: [Fixtures.serverChallenge])
        let a = h.accept()
        h.feed(a, Fixtures.bytes("msg1_uds_register_A"))
        var signature = Fixtures.bytes("msg3_uds_signature_A_goblins")
        signature[signature.count - 3] ^= 0x01  // inside the raw signature
        h.feed(a, signature)
        #expect(h.reasons(.registrationRefused) == [.badSignature])
        #expect(h.audits(.registrationRefused).first?.claimed == Fixtures.peerA.publicIdentity)
        #expect(h.closedConnections == [a])
        #expect(h.core.route(for: Fixtures.peerA.publicIdentity) == nil)
        h.finish()
    }

    @Test("A signature replayed from another connection's challenge is refused")
    func replayedSignatureIsRefused() {
        // The example signature signs the example challenge; this connection got another one.
        let h = CoreHarness()
        let a = h.accept()
        h.feed(a, Fixtures.bytes("msg1_uds_register_A"))
        h.feed(a, Fixtures.bytes("msg3_uds_signature_A_goblins"))
        #expect(h.reasons(.registrationRefused) == [.badSignature])
        h.finish()
    }

    @Test("A client challenge that is not 64 bytes is refused before anything is signed", arguments: [0, 63, 65, 128])
    func shortChallengeIsNeverSigned(length: Int) {
        let h = CoreHarness()
        let a = h.accept()
        let register = SyrupValue.record(label: .symbol("uds:register"), fields: [
            PeerLocator(identity: Fixtures.peerA.publicIdentity).syrupValue, .bytes([UInt8](repeating: 7, count: length)),
        ])
        h.feed(a, SyrupEncoder.encode(register))
        #expect(h.takeSent(a).isEmpty, "no signature leaves the server")
        #expect(h.reasons(.registrationRefused) == [.challengeLength])
        h.finish()
    }

    @Test("A registration that is not complete by the absolute deadline is refused, even while bytes keep arriving")
    func registrationDeadlineIsAbsolute() {
        var limits = IntroductionServerLimits()
        limits.registrationTimeout = .milliseconds(300)
        let h = CoreHarness(limits: limits)
        let a = h.accept()
        let register = Fixtures.bytes("msg1_uds_register_A")
        for byte in register.prefix(20) {
            h.feed(a, [byte])
            h.advance(.milliseconds(10))
        }
        #expect(h.closedConnections.isEmpty)
        #expect(h.core.nextDeadline != nil)
        h.advance(.milliseconds(150))
        #expect(h.reasons(.registrationRefused) == [.registrationTimeout])
        #expect(h.closedConnections == [a])
        h.finish()
    }

    @Test("Messages out of order before registration close the connection", arguments: [
        "msg3_uds_signature_A_goblins", "msg2_uds_server_response_goblins", "msg4_uds_new_connection_A_to_S",
    ])
    func outOfOrderMessageIsRefused(name: String) {
        let h = CoreHarness()
        let a = h.accept()
        h.feed(a, Fixtures.bytes(name))
        if name.hasPrefix("msg4") {
            #expect(h.closedConnections.isEmpty, "the record waits for its marker")
            h.feed(a, UDSNewConnection.fdMarker, descriptors: [h.descriptor()])
        }
        #expect(h.reasons(.registrationRefused) == [.malformedMessage])
        #expect(h.closedConnections == [a])
        h.finish()
    }

    @Test("A second uds:register after registration drops the peer with malformedMessage")
    func secondRegisterIsRefused() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        h.feed(a, UDSMessage.register(UDSRegister(locator: PeerLocator(identity: Peers.signer(1).publicIdentity),
                                                  challenge: .random())).encoded)
        #expect(h.reasons(.introductionRefused) == [.malformedMessage])
        #expect(h.core.route(for: Peers.signer(1).publicIdentity) == nil)
        h.finish()
    }

    // MARK: bad input on the stream

    @Test("Garbage, a huge length prefix, deep nesting and oversized messages close the connection with their reason",
          arguments: [
              ("garbage", Array("hello world\n".utf8), IntroductionServerReason.malformedMessage),
              ("length prefix", Array("99999999999999999999:".utf8), .messageTooLarge),
              ("overflowing length", Array("999999999999999999999999999999:".utf8), .messageTooLarge),
              ("deep nesting", [UInt8](repeating: UInt8(ascii: "["), count: 100), .messageTooLarge),
              ("oversized string", Array("20000\"".utf8) + [UInt8](repeating: 0x61, count: 100), .messageTooLarge),
              ("unknown record", SyrupEncoder.encode(.record(label: .symbol("uds:hello"), fields: [])), .malformedMessage),
              ("non-canonical", Array("01+".utf8), .malformedMessage),
          ])
    func badBytesAreRefused(name: String, bytes: [UInt8], reason: IntroductionServerReason) {
        for registered in [false, true] {
            let h = CoreHarness()
            let id = registered ? h.register(Peers.signer(1)) : h.accept()
            h.feed(id, bytes)
            let kind: IntroductionServerAuditRecord.Kind = registered ? .introductionRefused : .registrationRefused
            #expect(h.reasons(kind) == [reason], "\(name), registered: \(registered)")
            #expect(h.closedConnections == [id], "\(name)")
            h.finish()
        }
    }

    @Test("A descriptor sent with uds:register is closed and closes the connection")
    func descriptorDuringRegistrationIsRefused() {
        let h = CoreHarness()
        let a = h.accept()
        let fd = h.descriptor()
        h.feed(a, Fixtures.bytes("msg1_uds_register_A"), descriptors: [fd])
        #expect(h.reasons(.registrationRefused) == [.extraFds])
        #expect(h.closedDescriptors == [fd])
        h.finish()
    }

    @Test("A marker without a descriptor, two descriptors, or a descriptor on the record close the connection")
    func descriptorPlacementErrors() {
        let record = UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: Peers.signer(1).publicIdentity), to: PeerLocator(identity: Peers.signer(2).publicIdentity))).encoded
        do {
            let h = CoreHarness()
            let a = h.register(Peers.signer(1))
            h.feed(a, record)
            h.feed(a, UDSNewConnection.fdMarker)
            #expect(h.reasons(.introductionRefused) == [.fdMissing])
            h.finish()
        }
        do {
            // Three descriptors on one marker: more than padding explains.
            let h = CoreHarness()
            let a = h.register(Peers.signer(1))
            h.feed(a, record)
            h.feed(a, UDSNewConnection.fdMarker, descriptors: [h.descriptor(), h.descriptor(), h.descriptor()])
            #expect(h.reasons(.introductionRefused) == [.extraFds])
            #expect(h.closedDescriptors.count == 3)
            #expect(h.closedConnections == [a])
            h.finish()
        }
        do {
            // Strict configuration: a second descriptor is already too many.
            let h = CoreHarness(toleratePadding: false)
            let a = h.register(Peers.signer(1))
            h.feed(a, record)
            h.feed(a, UDSNewConnection.fdMarker, descriptors: [h.descriptor(), h.descriptor()])
            #expect(h.reasons(.introductionRefused) == [.extraFds])
            #expect(h.closedDescriptors.count == 2)
            h.finish()
        }
        do {
            let h = CoreHarness()
            let a = h.register(Peers.signer(1))
            let stray = h.descriptor()
            h.feed(a, record, descriptors: [stray])
            h.feed(a, UDSNewConnection.fdMarker)
            // The descriptor rode on the record, so the marker's read carried none.
            #expect(h.reasons(.introductionRefused) == [.fdMissing])
            #expect(h.closedDescriptors == [stray])
            h.finish()
        }
    }

    @Test("Issue #17: a marker with the padding descriptor forwards the first, closes the extra first and audits its kind; the sender stays")
    func paddedMarkerForwardsTheFirst() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let b = h.register(Peers.signer(2))
        let record = UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: Peers.signer(1).publicIdentity), to: PeerLocator(identity: Peers.signer(2).publicIdentity))).encoded
        let socket = h.descriptor(), stdin = h.descriptor()
        h.feed(a, record)
        h.feed(a, UDSNewConnection.fdMarker, descriptors: [socket, stdin])
        #expect(h.closedDescriptors == [stdin])
        #expect(h.forwards.map(\.descriptor) == [socket])
        #expect(h.forwards.first?.target == b)
        let notice = h.audits(.extraDescriptorsClosed)
        #expect(notice.count == 1)
        #expect(notice.first?.reason == .extraDescriptorsClosed)
        #expect(notice.first?.descriptorKinds == ["fake-\(stdin)"])
        #expect(notice.first?.from == Peers.signer(1).publicIdentity)
        #expect(h.closedConnections.isEmpty)
        // A non-socket in first place stays refused (fdInvalid), its extra closed all the same.
        let file = h.descriptor(), stdin2 = h.descriptor()
        h.invalidDescriptors.insert(file)
        h.feed(a, record)
        h.feed(a, UDSNewConnection.fdMarker, descriptors: [file, stdin2])
        #expect(h.reasons(.introductionRefused) == [.fdInvalid])
        #expect(h.closedDescriptors == [stdin, stdin2, file])
        #expect(h.closedConnections.isEmpty)
        h.finish()
    }

    @Test("F6: a held introduction reported hung up is closed and ends as expired/abandoned; the others stay held")
    func pendingHangUp() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let gone = h.descriptor(), kept = h.descriptor()
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: gone)
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(3).publicIdentity, fd: kept)
        #expect(h.core.pendingCount == 2)
        let attempt = h.core.pendingDescriptors.first { $0.descriptor == gone }!.attempt
        h.apply(h.core.pendingHungUp([attempt, attempt &+ 999], now: h.now))
        #expect(h.closedDescriptors == [gone])
        #expect(h.reasons(.introductionExpired) == [.abandoned])
        #expect(h.core.pendingCount == 1)
        h.finish()
    }

    @Test("A12: the target that leaves its in-flight cap unread is dropped (targetNotReading), not the sender nor other targets; a target that reads is never dropped")
    func inFlightBudgetDropsTheNonReader() {
        var limits = IntroductionServerLimits()
        limits.maxInFlightPerTarget = 3
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        let stalled = h.register(Peers.signer(2))
        let reader = h.register(Peers.signer(3))
        h.drained = [reader]
        for _ in 0..<3 { h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor()) }
        for _ in 0..<10 { h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(3).publicIdentity, fd: h.descriptor()) }
        #expect(h.core.inFlightCount(stalled) == 3)
        #expect(h.core.inFlightCount(reader) <= 3, "reset whenever the kernel says it read everything")
        #expect(h.closedConnections.isEmpty)
        let fourth = h.descriptor()
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: fourth)
        #expect(h.closedConnections == [stalled])
        #expect(h.reasons(.introductionRefused).filter { $0 == .targetNotReading }.count >= 1)
        #expect(h.closedDescriptors.contains(fourth))
        #expect(h.core.route(for: Peers.signer(1).publicIdentity) == a, "the sender stays")
        #expect(h.core.route(for: Peers.signer(3).publicIdentity) == reader, "the reading target stays")
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(3).publicIdentity, fd: h.descriptor())
        #expect(h.forwards.last?.target == reader)
        h.finish()
    }

    @Test("Item 3: a sender's introductions in flight to registered targets are capped (inFlightLimit); the sender stays")
    func inFlightPerSender() {
        var limits = IntroductionServerLimits()
        limits.maxInFlightPerSender = 4
        limits.maxInFlightPerTarget = 100
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        let targets = (2...4).map { h.register(Peers.signer(UInt8($0))) }
        for i in 0..<4 {
            h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(UInt8(2 + i % 3)).publicIdentity, fd: h.descriptor())
        }
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.reasons(.introductionRefused) == [.inFlightLimit])
        #expect(h.closedConnections.isEmpty)
        // Once the targets have read, the sender may go on.
        h.drained = Set(targets)
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.forwards.count == 5)
        h.finish()
    }

    @Test("End of stream inside a message or before the marker is truncated; a clean end unregisters quietly")
    func endOfStream() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let record = UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: Peers.signer(1).publicIdentity), to: PeerLocator(identity: Peers.signer(2).publicIdentity))).encoded
        h.feed(a, record)
        h.eof(a)
        #expect(h.reasons(.introductionRefused) == [.truncated])
        let b = h.register(Peers.signer(2))
        h.eof(b)
        #expect(h.reasons(.introductionRefused) == [.truncated], "a clean disconnect is no refusal")
        #expect(h.core.registeredCount == 0)
        let c = h.accept()
        h.eof(c)
        #expect(h.reasons(.registrationRefused) == [.peerReset])
        h.finish()
    }

    @Test("A registered peer that leaves a message incomplete past the partial-message deadline is dropped")
    func partialMessageTimesOut() {
        var limits = IntroductionServerLimits()
        limits.partialMessageTimeout = .milliseconds(200)
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        h.feed(a, Array("<18'uds:new-conn".utf8))
        h.advance(.milliseconds(150))
        #expect(h.closedConnections.isEmpty)
        h.advance(.milliseconds(100))
        #expect(h.reasons(.introductionRefused) == [.timeout])
        #expect(h.closedConnections == [a])
        h.finish()
    }

    @Test("A peer whose every record arrives apart from its marker holds one partial-message deadline, not one per message")
    func splitMessagesHoldOneDeadline() {
        var limits = IntroductionServerLimits()
        limits.introductionsPerSecond = 0
        limits.partialMessageTimeout = .milliseconds(200)
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        let b = h.register(Peers.signer(2))
        h.drained.insert(b)
        for _ in 0..<500 {
            // `introduce` feeds the record, then the marker: a message in progress between them.
            h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
            h.advance(.microseconds(100))
        }
        #expect(h.forwards.count == 500 && h.forwards.allSatisfy { $0.target == b })
        #expect(h.core.partialDeadlineCount <= 1)
        // The deadline still holds for a message left incomplete after the burst: its own
        // 200 ms, measured from when it began, not from the first message of the burst.
        h.feed(a, Array("<18'uds:new-conn".utf8))
        h.advance(.milliseconds(150))
        #expect(h.closedConnections.isEmpty)
        #expect(h.core.partialDeadlineCount == 1)
        h.advance(.milliseconds(100))
        #expect(h.reasons(.introductionRefused) == [.timeout])
        #expect(h.closedConnections == [a])
        h.finish()
    }

    @Test("Introductions delivered when their targets register leave no pile of expiry deadlines behind")
    func deliveredPendingIntroductionsDoNotPileUpExpiries() {
        var limits = IntroductionServerLimits()
        limits.introductionsPerSecond = 0
        limits.maxPendingPerTarget = 100
        limits.maxPendingPerSender = 100
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        for _ in 0..<30 {
            for _ in 0..<100 {
                h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
            }
            #expect(h.core.pendingCount == 100)
            let b = h.register(Peers.signer(2))
            #expect(h.core.pendingCount == 0, "delivered when the target registered")
            h.eof(b)
            h.advance(.milliseconds(1))
        }
        #expect(h.forwards.count == 3000)
        #expect(h.core.expiryDeadlineCount <= 1024 + 200, "3000 delivered introductions, \(h.core.expiryDeadlineCount) expiries kept")
        // What is still pending expires on time after a rebuild.
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(3).publicIdentity, fd: h.descriptor())
        h.advance(.seconds(3600))
        #expect(h.core.pendingCount == 0)
        #expect(h.audits(.introductionExpired).count == 1)
        h.finish()
    }

    // MARK: routing

    @Test("A uds:new-connection whose from is not the sender is refused as spoofedFrom and closes the sender")
    func spoofedFromIsRefused() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        h.register(Peers.signer(2))
        let fd = h.descriptor()
        h.introduce(on: a, from: Peers.signer(3).publicIdentity, to: Peers.signer(2).publicIdentity, fd: fd)
        #expect(h.forwards.isEmpty)
        #expect(h.closedDescriptors == [fd])
        let refused = h.audits(.introductionRefused)
        #expect(refused.map(\.reason) == [.spoofedFrom])
        #expect(refused.first?.from == Peers.signer(1).publicIdentity, "the record names the real sender")
        #expect(h.closedConnections == [a])
        #expect(h.core.route(for: Peers.signer(1).publicIdentity) == nil)
        h.finish()
    }

    @Test("Hints do not affect routing: the target is found by its key alone")
    func hintsAreIgnoredForRouting() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let b = h.register(Peers.signer(2))
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor(),
                    hints: [Peers.signer(9).publicIdentity, Peers.signer(8).publicIdentity])
        #expect(h.forwards.map(\.target) == [b])
        h.finish()
    }

    @Test("An introduction to a target that registers later waits and is then forwarded")
    func pendingIsDeliveredOnRegistration() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let fd = h.descriptor()
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: fd)
        #expect(h.forwards.isEmpty)
        #expect(h.core.pendingCount == 1)
        #expect(h.audits(.introductionQueued).count == 1)
        h.advance(.seconds(3))
        let b = h.register(Peers.signer(2))
        #expect(h.forwards.map(\.target) == [b])
        #expect(h.forwards.map(\.descriptor) == [fd])
        #expect(h.core.pendingCount == 0)
        #expect(h.audits(.introductionForwarded).first?.durationNanoseconds == 3_000_000_000)
        h.finish()
    }

    @Test("A pending introduction expires: its descriptor is closed and the attempt ends as expired")
    func pendingExpires() {
        var limits = IntroductionServerLimits()
        limits.pendingLifetime = .milliseconds(400)
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        let fd = h.descriptor()
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: fd)
        h.advance(.milliseconds(399))
        #expect(h.closedDescriptors.isEmpty)
        h.advance(.milliseconds(1))
        #expect(h.closedDescriptors == [fd])
        #expect(h.reasons(.introductionExpired) == [.targetUnknownExpired])
        #expect(h.closedConnections.isEmpty, "the sender stays connected")
        h.register(Peers.signer(2))
        #expect(h.forwards.isEmpty, "an expired introduction is never delivered")
        h.finish()
    }

    @Test("With no pending lifetime an introduction to an unknown target is refused at once")
    func zeroLifetimeRefusesAtOnce() {
        var limits = IntroductionServerLimits()
        limits.pendingLifetime = .zero
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.reasons(.introductionRefused) == [.targetUnknownExpired])
        #expect(h.core.pendingCount == 0)
        h.finish()
    }

    @Test("Pending caps per target, per sender and in total refuse with pendingLimit and keep the sender connected")
    func pendingCaps() {
        var limits = IntroductionServerLimits()
        limits.maxPendingPerTarget = 2
        limits.maxPendingPerSender = 3
        limits.maxPendingTotal = 4
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        let c = h.register(Peers.signer(3))
        let one = Peers.signer(1).publicIdentity, three = Peers.signer(3).publicIdentity
        let targetX = Peers.signer(10).publicIdentity, targetY = Peers.signer(11).publicIdentity, targetZ = Peers.signer(12).publicIdentity
        h.introduce(on: a, from: one, to: targetX, fd: h.descriptor())
        h.introduce(on: a, from: one, to: targetX, fd: h.descriptor())
        h.introduce(on: a, from: one, to: targetX, fd: h.descriptor())  // per target
        #expect(h.reasons(.introductionRefused) == [.pendingLimit])
        h.introduce(on: a, from: one, to: targetY, fd: h.descriptor())
        h.introduce(on: a, from: one, to: targetZ, fd: h.descriptor())  // per sender
        #expect(h.reasons(.introductionRefused) == [.pendingLimit, .pendingLimit])
        h.introduce(on: c, from: three, to: targetY, fd: h.descriptor())
        h.introduce(on: c, from: three, to: targetZ, fd: h.descriptor())  // total
        #expect(h.reasons(.introductionRefused) == [.pendingLimit, .pendingLimit, .pendingLimit])
        #expect(h.core.pendingCount == 4)
        #expect(h.closedConnections.isEmpty)
        h.finish()
    }

    @Test("The rate limit refuses introductions beyond the burst and grants them again as tokens refill")
    func rateLimit() {
        var limits = IntroductionServerLimits()
        limits.introductionsPerSecond = 10
        limits.introductionBurst = 3
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        h.register(Peers.signer(2))
        for _ in 0..<5 {
            h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        }
        #expect(h.forwards.count == 3)
        #expect(h.reasons(.introductionRefused) == [.rateLimited, .rateLimited])
        h.advance(.milliseconds(100))
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.forwards.count == 4)
        #expect(h.closedConnections.isEmpty)
        h.finish()
    }

    @Test("A passed descriptor that is not a socketpair end is closed and refused as fdInvalid; the sender stays")
    func invalidDescriptorIsRefused() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        h.register(Peers.signer(2))
        let bad = h.descriptor()
        h.invalidDescriptors = [bad]
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: bad)
        #expect(h.reasons(.introductionRefused) == [.fdInvalid])
        #expect(h.closedDescriptors == [bad])
        #expect(h.logs.contains { $0.reason == .fdInvalid && $0.detail == "regular file" })
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.forwards.count == 1, "the connection keeps working")
        h.finish()
    }

    @Test("An introduction of a peer to itself is refused")
    func selfIntroductionIsRefused() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(1).publicIdentity, fd: h.descriptor())
        #expect(h.reasons(.introductionRefused) == [.selfConnection])
        h.finish()
    }

    @Test("A target whose output queue is full is dropped and that introduction refused with outputOverflow")
    func outputOverflowDropsTarget() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let b = h.register(Peers.signer(2))
        h.notReading = [b]
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.reasons(.introductionRefused) == [.outputOverflow, .outputOverflow])
        #expect(h.audits(.introductionRefused).first?.to == Peers.signer(2).publicIdentity)
        #expect(h.closedConnections == [b])
        #expect(h.core.route(for: Peers.signer(2).publicIdentity) == nil)
        h.finish()
    }

    // MARK: re-registration and disconnects

    @Test("A registration of a key whose earlier connection is alive is refused; the live one keeps its route")
    func liveRegistrationIsKept() {
        let h = CoreHarness()
        let old = h.register(Peers.signer(2))
        let new = h.attemptRegistration(Peers.signer(2))
        #expect(h.probed == [old])
        #expect(h.closedConnections == [new])
        #expect(h.core.route(for: Peers.signer(2).publicIdentity) == old)
        #expect(h.reasons(.registrationRefused) == [.liveRegistrationKept])
        let refused = h.audits(.registrationRefused)[0]
        #expect(refused.claimed == Peers.signer(2).publicIdentity && refused.proved == nil)
        #expect(refused.credentials == h.credentials && refused.incumbentCredentials == h.credentials)
        let a = h.register(Peers.signer(1))
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.forwards.map(\.target) == [old])
        h.finish()
    }

    @Test("A registration replaces an earlier connection of its key that the probe finds hung up")
    func deadRegistrationIsReplaced() {
        let h = CoreHarness()
        let old = h.register(Peers.signer(2))
        h.deadConnections = [old]
        let new = h.register(Peers.signer(2), uid: 1000)
        #expect(h.closedConnections == [old])
        #expect(h.core.route(for: Peers.signer(2).publicIdentity) == new)
        #expect(h.reasons(.registrationAccepted) == [nil, .replacedDeadConnection])
        #expect(h.audits(.registrationAccepted)[1].incumbentCredentials == h.credentials)
        let a = h.register(Peers.signer(1))
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.forwards.map(\.target) == [new])
        h.finish()
    }

    @Test("With replaceSameUID a live connection is replaced by the same uid only")
    func sameUIDReplacesLive() {
        let h = CoreHarness(allowedUIDs: [1000, 1001], replaceSameUID: true)
        let old = h.register(Peers.signer(2), uid: 1000)
        let other = h.attemptRegistration(Peers.signer(2), uid: 1001)
        #expect(h.closedConnections == [other])
        #expect(h.reasons(.registrationRefused) == [.liveRegistrationKept])
        #expect(h.audits(.registrationRefused)[0].credentials?.uid == 1001)
        #expect(h.audits(.registrationRefused)[0].incumbentCredentials?.uid == 1000)
        let same = h.register(Peers.signer(2), uid: 1000)
        #expect(h.closedConnections == [other, old])
        #expect(h.core.route(for: Peers.signer(2).publicIdentity) == same)
        #expect(h.reasons(.registrationAccepted) == [nil, .replacedSameUID])
        h.finish()
    }

    @Test("A key that registered with v2 is refused in a legacy form afterwards, before the server signs")
    func v2KeyRefusedAsLegacy() {
        let h = CoreHarness()
        let legacyFirst = h.register(Peers.signer(3), form: .goblins)
        #expect(!h.core.remembersV2(Peers.signer(3).publicIdentity))
        h.deadConnections = [legacyFirst]
        let v2 = h.register(Peers.signer(3), form: .v2)
        #expect(h.core.remembersV2(Peers.signer(3).publicIdentity))
        h.deadConnections = [v2]
        let id = h.accept()
        h.feed(id, UDSMessage.register(UDSRegister(locator: PeerLocator(identity: Peers.signer(3).publicIdentity),
                                                   challenge: Challenge.random())).encoded)
        #expect(h.takeSent(id).isEmpty, "nothing signed for a refused legacy registration")
        #expect(h.closedConnections.last == id)
        #expect(h.reasons(.registrationRefused) == [.registrationFormRefused])
        #expect(h.core.route(for: Peers.signer(3).publicIdentity) == v2)
        h.finish()
    }

    @Test("A server configured for one form refuses the other before signing")
    func configuredFormsOnly() {
        for (forms, refused) in [(RegistrationForms.v2, RegistrationForm.goblins), (.legacy, .v2)] {
            let h = CoreHarness(registrationForms: forms)
            let id = h.attemptRegistration(Peers.signer(4), form: refused)
            #expect(h.closedConnections == [id])
            #expect(h.reasons(.registrationRefused) == [.registrationFormRefused])
            h.register(Peers.signer(5), form: refused == .v2 ? .goblins : .v2)
            h.finish()
        }
    }

    @Test("A peer that disconnects is unrouted, its introductions wait again, and it can register anew")
    func disconnectAndReRegister() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let b = h.register(Peers.signer(2))
        h.eof(b)
        #expect(h.core.route(for: Peers.signer(2).publicIdentity) == nil)
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.core.pendingCount == 1)
        let again = h.register(Peers.signer(2))
        #expect(h.forwards.map(\.target) == [again])
        h.finish()
    }

    // MARK: admission

    @Test("Connections from a uid that is not allowed are refused with uidNotAllowed and credentials")
    func foreignUIDIsRefused() {
        let h = CoreHarness(allowedUIDs: [1000, 1001])
        let stranger = h.accept(uid: 2000)
        h.accept(uid: 1001)
        #expect(h.closedConnections == [stranger])
        #expect(h.reasons(.registrationRefused) == [.uidNotAllowed])
        #expect(h.audits(.registrationRefused).first?.credentials?.uid == 2000)
        h.finish()
    }

    @Test("F2: full unauthenticated slots evict the oldest unauthenticated connection; registered peers are never evicted and fill the cap to tooManyClients")
    func connectionCaps() {
        var limits = IntroductionServerLimits()
        limits.maxClients = 4
        limits.maxUnauthenticated = 2
        let h = CoreHarness(limits: limits)
        let a = h.register(Peers.signer(1))
        let b = h.register(Peers.signer(2))
        let first = h.accept()
        let second = h.accept()
        let third = h.accept()
        // The client cap is full, but an unauthenticated connection makes room, never a registered one.
        #expect(h.reasons(.registrationRefused) == [.unauthenticatedEvicted])
        #expect(h.closedConnections == [first])
        #expect(h.core.registeredCount == 2 && h.core.unauthenticatedCount == 2)
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(2).publicIdentity, fd: h.descriptor())
        #expect(h.forwards.map(\.target) == [b])
        _ = (second, third)
        h.finish()

        // Every slot registered: a newcomer is refused, nobody is evicted.
        var small = IntroductionServerLimits()
        small.maxClients = 2
        small.maxUnauthenticated = 2
        let h2 = CoreHarness(limits: small)
        _ = h2.register(Peers.signer(1))
        _ = h2.register(Peers.signer(2))
        let late = h2.accept()
        #expect(h2.reasons(.registrationRefused) == [.tooManyClients])
        #expect(h2.closedConnections == [late])
        #expect(h2.core.registeredCount == 2)
        h2.finish()
    }

    @Test("F2: the per-uid cap evicts that uid's oldest; under pressure the registration deadline is the short one")
    func perUIDCapAndPressureDeadline() {
        var limits = IntroductionServerLimits()
        limits.maxUnauthenticated = 6
        limits.maxUnauthenticatedPerUID = 2
        limits.registrationTimeout = .seconds(5)
        limits.pressureRegistrationTimeout = .milliseconds(300)
        let h = CoreHarness(limits: limits, allowedUIDs: [1000, 2000])
        let other = h.accept(uid: 2000)
        let x1 = h.accept()
        _ = h.accept()
        _ = h.accept()  // uid 1000 over its 2: its oldest goes, uid 2000's stays
        #expect(h.closedConnections == [x1])
        #expect(h.reasons(.registrationRefused) == [.unauthenticatedEvicted])
        #expect(h.core.unauthenticatedCount == 3)
        // Three unauthenticated of six: pressure; the next one gets 300 ms, not 5 s.
        let pressured = h.accept(uid: 2000)
        h.advance(.milliseconds(400))
        #expect(h.closedConnections.contains(pressured))
        #expect(!h.closedConnections.contains(other), "accepted before the pressure: 5 s")
        // A real peer still registers at once.
        let peer = h.register(Peers.signer(3))
        #expect(h.core.route(for: Peers.signer(3).publicIdentity) == peer)
        h.finish()
    }

    @Test("Shutdown closes every connection and held descriptor and ends every open attempt")
    func shutdownReleasesEverything() {
        let h = CoreHarness()
        let a = h.register(Peers.signer(1))
        let half = h.accept()
        h.feed(half, Array(Fixtures.bytes("msg1_uds_register_A").prefix(30)))
        h.introduce(on: a, from: Peers.signer(1).publicIdentity, to: Peers.signer(7).publicIdentity, fd: h.descriptor())
        h.feed(a, UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: Peers.signer(1).publicIdentity), to: PeerLocator(identity: Peers.signer(2).publicIdentity))).encoded)
        h.feed(a, Array(UDSNewConnection.fdMarker.prefix(2)), descriptors: [h.descriptor()])
        h.finish()
        #expect(h.reasons(.registrationRefused) == [.serverShutdown])
        #expect(h.reasons(.introductionRefused) == [.serverShutdown])
        #expect(Set(h.closedConnections) == [a, half])
    }
}
