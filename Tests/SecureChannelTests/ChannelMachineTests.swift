@_spi(TestVectors) @testable import SecureChannel
import SodiumCrypto
import Testing

/// The channel machine in pairs, in memory: every close ordering and error path.
@Suite struct ChannelMachineTests {
    @Test func aHandshakeInMemoryOpensBothMachinesWithTheVerifiedPeers() throws {
        let pair = try MachinePair.open()
        #expect(pair.facts[0] == ["established"] && pair.facts[1] == ["established"])
        #expect(pair.established[0]?.peer.publicKey == Fixture.bob.publicKey)
        #expect(pair.established[1]?.peer.publicKey == Fixture.alice.publicKey)
        #expect(pair.machines[0].canSend && pair.machines[1].canSend)
        #expect(pair.machines[0].deadline == nil && pair.machines[1].deadline == nil)
    }

    @Test func messagesFlowBothWaysInOrderAcrossFrameBoundaries() throws {
        var pair = try MachinePair.open()
        pair.chunk = 7
        let big = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }
        #expect(pair.send(.a, [1]) == .queued)
        #expect(pair.send(.a, big) == .queued)
        #expect(pair.send(.b, [2, 3]) == .queued)
        pair.pump()
        #expect(pair.delivered[1] == [[1], big])
        #expect(pair.delivered[0] == [[2, 3]])
        #expect(pair.machines[0].traffic.messagesSent == 2 && pair.machines[1].traffic.bytesReceived == UInt64(1 + big.count))
    }

    @Test func closingFirstThenThePeerClosingEndsBothCleanly() throws {
        var pair = try MachinePair.open()
        _ = pair.send(.a, [9])
        pair.feed(.a, .close(now: Fixture.now))
        #expect(pair.machines[0].canSend == false)
        #expect(pair.send(.a, [1]) == .notOpen)
        pair.pump()
        // B saw the message, then A's CLOSE; it may still send before closing.
        #expect(pair.delivered[1] == [[9]] && pair.facts[1].last == "peerClosed")
        #expect(pair.machines[1].canSend && pair.machines[1].peerFinished)
        #expect(pair.send(.b, [7]) == .queued)
        pair.pump()
        #expect(pair.delivered[0] == [[7]])
        #expect(pair.ends == [nil, nil])
        pair.feed(.b, .close(now: Fixture.now))
        pair.pump()
        #expect(pair.ends == [.clean, .clean])
        #expect(pair.endsAreWellFormed)
    }

    @Test func bothClosingBeforeEitherCloseArrivesEndsBothCleanly() throws {
        var pair = try MachinePair.open()
        pair.feed(.a, .close(now: Fixture.now))
        pair.feed(.b, .close(now: Fixture.now))
        pair.pump()
        #expect(pair.ends == [.clean, .clean])
        #expect(pair.endsAreWellFormed)
    }

    @Test func thePeersCloseArrivingBeforeOursIsWrittenWaitsInClosingBothUntilFlushed() throws {
        var pair = try MachinePair.open()
        pair.feed(.b, .close(now: Fixture.now))
        _ = pair.writeSome(.b)
        pair.feed(.a, .close(now: Fixture.now))
        // A sealed CLOSE but nothing was written yet; B's CLOSE arrives now.
        _ = pair.readSome(.a)
        #expect(pair.ends[0] == nil)
        #expect(pair.machines[0].deadline != nil)
        pair.pump()
        #expect(pair.ends == [.clean, .clean])
        #expect(pair.writeShutDown == [true, true])
        #expect(pair.endsAreWellFormed)
    }

    @Test func anEndOfStreamWithoutCloseOnAnOpenChannelIsTruncated() throws {
        var pair = try MachinePair.open()
        pair.feed(.a, .endOfStream)
        #expect(pair.ends[0]?.errorCode == .truncated)
        #expect(pair.facts[0].last == "ended")
        #expect(pair.endsAreWellFormed)
    }

    @Test func anEndOfStreamAfterOurCloseButBeforeTheirsIsTruncated() throws {
        var pair = try MachinePair.open()
        pair.feed(.a, .close(now: Fixture.now))
        _ = pair.writeSome(.a)
        pair.feed(.a, .endOfStream)
        #expect(pair.ends[0]?.errorCode == .truncated)
        #expect(pair.endsAreWellFormed)
    }

    @Test func anAbortEndsAtOnceWithoutCloseAndThePeerSeesTruncated() throws {
        var pair = try MachinePair.open()
        _ = pair.send(.a, [1, 2])
        pair.feed(.a, .abort)
        #expect(pair.ends[0] == .aborted)
        #expect(pair.machines[0].pendingOutputCount == 0)
        pair.pump()
        #expect(pair.delivered[1].isEmpty)
        #expect(pair.ends[1]?.errorCode == .truncated)
        #expect(pair.endsAreWellFormed)
    }

    @Test func bytesAfterThePeersCloseAreDataAfterClose() throws {
        var pair = try MachinePair.open()
        pair.feed(.a, .close(now: Fixture.now))
        pair.pump()
        #expect(pair.facts[1].last == "peerClosed")
        pair.feed(.b, .bytes([0, 17] + [UInt8](repeating: 0, count: 17)))
        #expect(pair.ends[1]?.errorCode == .dataAfterClose)
        #expect(pair.endsAreWellFormed)
    }

    @Test func anEndOfStreamAfterThePeersCloseIsNotAnError() throws {
        var pair = try MachinePair.open()
        pair.feed(.a, .close(now: Fixture.now))
        pair.pump()
        pair.feed(.b, .endOfStream)
        #expect(pair.ends[1] == nil && pair.machines[1].canSend)
    }

    @Test func aPeerThatNeverAnswersCloseTimesOutAtTheCloseDeadlineAndNotBefore() throws {
        var pair = try MachinePair.open(configuration: ChannelMachine.Configuration(closeTimeout: .seconds(2), now: { Fixture.now }))
        pair.feed(.a, .close(now: Fixture.now))
        pair.pump()
        #expect(pair.machines[0].deadline == Fixture.now + .seconds(2))
        pair.feed(.a, .deadline(Fixture.now + .seconds(1)))
        #expect(pair.ends[0] == nil)
        pair.feed(.a, .deadline(Fixture.now + .seconds(2)))
        #expect(pair.ends[0]?.errorCode == .timeout)
        #expect(pair.endsAreWellFormed)
    }

    @Test func aHandshakeThatDoesNotFinishByItsDeadlineTimesOut() throws {
        var pair = try MachinePair()
        #expect(pair.machines[1].deadline == Fixture.now + UDSHS1.defaultTimeout)
        pair.feed(.b, .deadline(Fixture.now + .seconds(3)))
        #expect(pair.ends[1] == nil)
        pair.feed(.b, .deadline(Fixture.now + UDSHS1.defaultTimeout))
        #expect(pair.ends[1]?.errorCode == .timeout)
        #expect(pair.facts[1] == ["handshakeEnded"])
        #expect(pair.endsAreWellFormed)
    }

    @Test func anEndOfStreamDuringTheHandshakeFailsItAsTruncated() throws {
        var pair = try MachinePair()
        _ = pair.writeSome(.a)
        pair.feed(.a, .endOfStream)
        #expect(pair.ends[0]?.errorCode == .truncated)
        #expect(pair.machines[0].isEstablished == false)
        #expect(pair.endsAreWellFormed)
    }

    @Test func aTamperedFrameEndsTheReceiverWithDecryptFailed() throws {
        var pair = try MachinePair.open()
        _ = pair.send(.a, [1, 2, 3])
        _ = pair.writeSome(.a)
        pair.inbox[1][5] ^= 0x40
        pair.pump()
        #expect(pair.ends[1]?.errorCode == .decryptFailed)
        #expect(pair.delivered[1].isEmpty)
        // A sees B's descriptor close as an end of stream without CLOSE.
        #expect(pair.ends[0]?.errorCode == .truncated)
        #expect(pair.endsAreWellFormed)
    }

    @Test func aTamperedHandshakeMessageFailsTheHandshakeOnly() throws {
        var pair = try MachinePair()
        _ = pair.writeSome(.a)
        pair.inbox[1][100] ^= 1
        pair.pump()
        #expect(pair.ends[1]?.errorCode == .decryptFailed)
        #expect(pair.facts[1] == ["handshakeEnded"])
        #expect(pair.endsAreWellFormed)
    }

    @Test func aTransportFailureEndsTheChannelAndDropsUnsentOutput() throws {
        var pair = try MachinePair.open()
        _ = pair.send(.a, [5])
        pair.feed(.a, .transportFailed("EPIPE"))
        #expect(pair.ends[0] == .transportFailed("EPIPE"))
        #expect(pair.machines[0].pendingOutputCount == 0)
        #expect(pair.endsAreWellFormed)
    }

    @Test func aMessageOverTheLimitIsRefusedAndTheChannelStaysOpen() throws {
        // Small limit on both sides.
        var pair = try MachinePair(handshake: HandshakeConfiguration(channel: ChannelConfiguration(maxMessageSize: 100)))
        pair.pump()
        #expect(pair.machines[0].maxMessageSize == 100)
        #expect(pair.send(.a, [UInt8](repeating: 1, count: 101)) == .tooLarge(limit: 100))
        #expect(pair.machines[0].pendingOutputCount == 0)
        #expect(pair.send(.a, [UInt8](repeating: 1, count: 100)) == .queued)
        pair.pump()
        #expect(pair.delivered[1] == [[UInt8](repeating: 1, count: 100)])
    }

    @Test func aClosedMachineIgnoresEveryFurtherEvent() throws {
        var pair = try MachinePair.open()
        pair.feed(.a, .abort)
        for event: ChannelMachine.Event in [.bytes([1, 2, 3]), .endOfStream, .deadline(Fixture.now + .seconds(60)),
                                             .close(now: Fixture.now), .abort, .transportFailed("x")] {
            var actions: [ChannelMachine.Action] = []
            pair.machines[0].handle(event, into: &actions)
            #expect(actions.isEmpty)
        }
        #expect(pair.send(.a, [1]) == .notOpen)
        #expect(pair.ends[0] == .aborted && pair.endsAreWellFormed)
    }

    @Test func readingThroughTheLentBufferDeliversWhatBytesEventsDeliver() throws {
        var pair = try MachinePair.open()
        let message = (0..<70_000).map { UInt8(truncatingIfNeeded: $0) }
        _ = pair.send(.a, message)
        _ = pair.send(.a, [42])
        var wire = Array(pair.machines[0].pendingOutput)
        pair.feed(.a, .wrote(wire.count))
        var actions: [ChannelMachine.Action] = []
        var results: [ChannelMachine.ReadResult] = []
        while true {
            let result = pair.machines[1].read(chunk: 4096, into: &actions) { buffer in
                guard !wire.isEmpty else { return .wouldBlock }
                let n = min(buffer.count, wire.count)
                buffer.copyBytes(from: wire.prefix(n))
                wire.removeFirst(n)
                return .bytes(n)
            }
            results.append(result)
            if result == .wouldBlock { break }
        }
        // Every read but the last filled its chunk (4096 bytes, the last one the remainder).
        #expect(results.last == .wouldBlock)
        #expect(results.dropLast().dropLast().allSatisfy { $0 == .bytes(4096) })
        pair.perform(.b, actions)
        #expect(pair.delivered[1] == [message, [42]])
    }

    @Test func aLegacyPeerIsRefusedByDefault() throws {
        var machine = ChannelMachine(responder: responder(), configuration: ChannelMachine.Configuration(now: { Fixture.now }))
        var actions: [ChannelMachine.Action] = []
        machine.handle(.bytes(Array(ChannelMachine.legacyMarker.prefix(5))), into: &actions)
        #expect(actions.isEmpty && machine.end == nil)
        machine.handle(.bytes(Array(ChannelMachine.legacyMarker.dropFirst(5)) + [1]), into: &actions)
        #expect(machine.end == .legacyRefused)
        #expect(machine.isEstablished == false)
    }

    @Test func aLegacyPeerAdmittedByTheOptInGetsRawBytesAndEndsWithoutClose() throws {
        let config = ChannelMachine.Configuration(allowLegacyPeers: true, now: { Fixture.now })
        var machine = ChannelMachine(responder: responder(), configuration: config)
        var actions: [ChannelMachine.Action] = []
        machine.handle(.bytes(ChannelMachine.legacyMarker + [0x21]), into: &actions)
        var delivered: [[UInt8]] = []
        for case .deliver(let m) in actions { delivered.append(m) }
        #expect(delivered == [ChannelMachine.legacyMarker + [0x21]])
        #expect(machine.isEstablished && machine.maxMessageSize == nil)
        actions = []
        #expect(machine.send([1, 2], into: &actions) == .queued)
        #expect(Array(machine.pendingOutput) == [1, 2])
        machine.handle(.close(now: Fixture.now), into: &actions)
        machine.handle(.wrote(2), into: &actions)
        #expect(machine.end == .legacyEnded(byPeer: false))
        // The peer's end of stream first, then ours.
        var second = ChannelMachine(responder: responder(), configuration: config)
        second.handle(.bytes(ChannelMachine.legacyMarker), into: &actions)
        second.handle(.endOfStream, into: &actions)
        #expect(second.peerFinished && second.end == nil)
        second.handle(.close(now: Fixture.now), into: &actions)
        #expect(second.end == .legacyEnded(byPeer: true))
    }

    @Test func aLegacyPeerAllowedByPolicyIsStillRefusedWhenTheCheckAtArrivalSaysNo() {
        let config = ChannelMachine.Configuration(allowLegacyPeers: true, legacyCheck: { false }, now: { Fixture.now })
        var machine = ChannelMachine(responder: responder(), configuration: config)
        var actions: [ChannelMachine.Action] = []
        machine.handle(.bytes(ChannelMachine.legacyMarker), into: &actions)
        #expect(machine.end == .legacyRefused)
        #expect(!actions.contains { if case .deliver = $0 { return true } else { return false } })
    }

    @Test func aUDSHS1ResponderDecidesOnTheFirstByte() {
        #expect(ChannelMachine.classify([]) == .undecided)
        #expect(ChannelMachine.classify(UDSHS1.magic) == .handshake)
        #expect(ChannelMachine.classify(Array("<16'op:".utf8)) == .undecided)
        #expect(ChannelMachine.classify(Array("<17".utf8)) == .handshake)
        #expect(ChannelMachine.classify(ChannelMachine.legacyMarker) == .legacy)
    }

    @Test func buffersStartSmallGrowWithABurstAndAreGivenBackOnceTheTrafficStopped() throws {
        var pair = try MachinePair.open()
        _ = pair.send(.a, [1])
        pair.pump()
        // An idle open channel: the receiver's starting buffers and a small output buffer, and
        // no timer wanted for them.
        #expect(pair.machines[1].heldBufferBytes <= 2048)
        #expect(pair.machines[0].heldBufferBytes <= 2048)
        #expect(pair.machines[0].releaseDeadline == nil && pair.machines[1].releaseDeadline == nil)
        let burst = [UInt8](repeating: 3, count: 200_000)
        _ = pair.send(.a, burst)
        var wire = Array(pair.machines[0].pendingOutput)
        pair.feed(.a, .wrote(wire.count))
        // Drained, but kept for the next burst (no reallocation and wipe per message)...
        #expect(pair.machines[0].heldBufferBytes > 64 << 10, "the sender keeps its burst buffer while traffic may follow")
        let senderRelease = try #require(pair.machines[0].releaseDeadline)
        #expect(senderRelease == Fixture.now + ChannelMachine.Configuration().idleRelease)
        // ...and traffic before the release deadline keeps it one more period.
        _ = pair.send(.a, [7, 7])
        wire += Array(pair.machines[0].pendingOutput)
        pair.feed(.a, .wrote(pair.machines[0].pendingOutputCount))
        pair.feed(.a, .deadline(senderRelease))
        #expect(pair.machines[0].heldBufferBytes > 64 << 10, "a byte moved since the deadline was set")
        #expect(pair.machines[0].releaseDeadline != nil)
        pair.feed(.a, .deadline(try #require(pair.machines[0].releaseDeadline)))
        #expect(pair.machines[0].heldBufferBytes <= 2048, "the sender gave its burst memory back once idle")
        #expect(pair.machines[0].releaseDeadline == nil)

        var actions: [ChannelMachine.Action] = []
        var grew = 0
        while true {
            let result = pair.machines[1].read(chunk: 64 << 10, into: &actions) { buffer in
                guard !wire.isEmpty else { return .wouldBlock }
                let n = min(buffer.count, wire.count)
                buffer.copyBytes(from: wire.prefix(n))
                wire.removeFirst(n)
                return .bytes(n)
            }
            grew = max(grew, pair.machines[1].heldBufferBytes)
            if result == .wouldBlock { break }
        }
        pair.perform(.b, actions)
        #expect(pair.delivered[1].suffix(2) == [burst, [7, 7]])
        #expect(grew >= 64 << 10)
        let receiverRelease = try #require(pair.machines[1].releaseDeadline, "the socket went quiet with grown buffers")
        // Early timer events change nothing.
        pair.feed(.b, .deadline(receiverRelease - .milliseconds(1)))
        #expect(pair.machines[1].heldBufferBytes >= 64 << 10)
        pair.feed(.b, .deadline(receiverRelease))
        #expect(pair.machines[1].heldBufferBytes <= 2048, "the receiver shrank once the traffic stopped")
        #expect(pair.machines[1].releaseDeadline == nil)
        // The protocol deadlines are untouched by all this.
        #expect(pair.machines[0].deadline == nil && pair.machines[1].deadline == nil)
    }

    @Test func aShortReadCountsAsTheSocketGoingQuiet() throws {
        var pair = try MachinePair.open()
        _ = pair.send(.a, [UInt8](repeating: 5, count: 100_000))
        let wire = Array(pair.machines[0].pendingOutput)
        pair.feed(.a, .wrote(wire.count))
        var actions: [ChannelMachine.Action] = []
        var offset = 0
        // Full reads first (the socket may hold more), then one short read: no would-block read
        // is needed to arm the release.
        while offset < wire.count {
            let result = pair.machines[1].read(chunk: 48 << 10, into: &actions) { buffer in
                let n = min(buffer.count, wire.count - offset)
                buffer.copyBytes(from: wire[offset..<(offset + n)])
                offset += n
                return .bytes(n)
            }
            if case .bytes(let n) = result, n == 48 << 10 { #expect(pair.machines[1].releaseDeadline == nil) }
        }
        pair.perform(.b, actions)
        #expect(pair.delivered[1].last?.count == 100_000)
        #expect(pair.machines[1].releaseDeadline != nil)
    }
}

extension ChannelEnd {
    /// The code of a `protocolError` end (errors compare by code and detail; these tests by code).
    var errorCode: HandshakeError.Code? {
        if case .protocolError(let error) = self { return error.code }
        return nil
    }
}
