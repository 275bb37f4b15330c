import Identity
import Logging
@testable import Runtime
import RuntimeTestSupport
import SecureChannel
import Testing
import Transport

/// The channel runtime's own bookkeeping after a channel ends: what it still watches, which
/// configurations it accepts.
@Suite(.ownThread) struct ChannelLifecycleTests {
    let alice = IdentityKeyPair.generate()
    let bob = IdentityKeyPair.generate()

    @Test func aFinishedChannelDrainedThroughReceiveNeverWatchesItsOldDescriptorAgain() async throws {
        var paused = ChannelRuntimeConfiguration()
        paused.maxInboundQueuedMessages = 2
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, paused), PeerTestSupport.establishment(bob, paused))
        for i in 0..<6 { try await ca.send([UInt8(i)]) }
        // Wait until the receiver has stopped reading: its inbound queue is over the bound.
        let engine = cb.engine
        #expect(await PeerTestSupport.eventually { engine.queue.sync { engine.isReadingPaused } })
        await cb.abort()
        #expect(engine.queue.sync { engine.isWatchingDescriptor } == false)
        // Draining below the bound would resume reading on a live channel; on a finished one
        // it must not watch the (closed, possibly reused) descriptor number again.
        var delivered: [[UInt8]] = []
        while true {
            do {
                guard let message = try await cb.receive() else { break }
                delivered.append(message)
            } catch {
                #expect(error.code == .netlayer(.channelClosed))
                break
            }
            #expect(engine.queue.sync { engine.isWatchingDescriptor } == false)
        }
        #expect(delivered.count >= 2)
        #expect(engine.queue.sync { engine.isWatchingDescriptor } == false)
        await ca.abort()
    }

    /// A receiver whose runtime stops reading after a few queued messages, so the socket fills.
    static func backPressured() -> ChannelRuntimeConfiguration {
        var config = ChannelRuntimeConfiguration()
        config.socketSendBufferSize = nil
        config.maxOutboundQueuedBytes = 256 << 10
        config.maxInboundQueuedMessages = 4
        return config
    }

    static func numbered(_ i: Int, size: Int) -> [UInt8] {
        (0..<size).map { UInt8(truncatingIfNeeded: i &* 31 &+ $0 &* 7) }
    }

    @Test func framesSealedWhileTheSocketIsFullLeaveTogetherAndArriveInOrderAndIntact() async throws {
        let config = Self.backPressured()
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, config), PeerTestSupport.establishment(bob, config))
        let total = 1000, size = 4096
        let sent = Counter()
        let sender = Task {
            for i in 0..<total {
                try await ca.send(Self.numbered(i, size: size))
                sent.increment()
            }
        }
        let engine = ca.engine
        // The socket fills (the receiver reads nothing yet), then the sender queues up to its
        // bound and waits.
        // Generous: under a parallel run the sending task may wait long for a pool thread.
        #expect(await PeerTestSupport.eventually(timeout: .seconds(60)) {
            engine.queue.sync { engine.isWriteBlocked && engine.pendingOutputBytes > config.maxOutboundQueuedBytes }
        })
        let (callsWhenBlocked, pending) = engine.queue.sync { (engine.writeCalls, engine.pendingOutputBytes) }
        // The cap holds: over it by at most the one message that crossed it.
        #expect(pending <= config.maxOutboundQueuedBytes + size + FrameFormat.overhead)
        let queuedWhileBlocked = pending / (size + FrameFormat.overhead)
        #expect(queuedWhileBlocked >= 20)
        try await Task.sleep(for: .milliseconds(50))
        // Sends made while the socket was full cost no sendmsg each.
        #expect(engine.queue.sync { engine.writeCalls } == callsWhenBlocked)
        var wrong = 0
        for i in 0..<total {
            let message = try await cb.receive()
            if message != Self.numbered(i, size: size) { wrong += 1 }
        }
        #expect(wrong == 0, "every message arrives in order and intact")
        try await sender.value
        #expect(sent.current == total)
        // What queued while blocked left in a few large writes, not one write per message.
        let calls = engine.queue.sync { engine.writeCalls }
        #expect(calls < total - queuedWhileBlocked / 2, "\(calls) sendmsg calls for \(total) messages")
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func aMessageThatArrivesAloneIsReadWithOneRecvmsgAndDeliveredAtOnce() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        let received = AsyncStream<[UInt8]>.makeStream()
        cb.deliver { delivery in
            if case .message(let m) = delivery { received.continuation.yield(m) }
        }
        var arrivals = received.stream.makeAsyncIterator()
        let engine = cb.engine
        let total = 50
        let before = engine.queue.sync { engine.readCalls }
        for i in 0..<total {
            try await ca.send(Self.numbered(i, size: 100))
            #expect(await arrivals.next() == Self.numbered(i, size: 100))
        }
        // One message at a time, each read whole by a short read: before, every message cost a
        // second recvmsg that only said EAGAIN before its handler ran.
        let reads = engine.queue.sync { engine.readCalls } - before
        #expect(reads >= total && reads <= total + total / 10, "\(reads) recvmsg calls for \(total) lone messages")
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func aBatchLeavesInOneWriteAndArrivesAsTheSameMessagesInOrder() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        let engine = ca.engine
        let sizes = [1, 1024, 3, 70_000, 512, 1024]
        let before = engine.queue.sync { engine.writeCalls }
        try await ca.send(contentsOf: sizes.enumerated().map { Self.numbered($0.offset, size: $0.element) })
        // One sendmsg for the whole batch (the socket's 1 MiB buffer takes it at once).
        #expect(engine.queue.sync { engine.writeCalls } - before == 1)
        for (i, size) in sizes.enumerated() {
            #expect(try await cb.receive() == Self.numbered(i, size: size), "message \(i)")
        }
        // One too large: nothing of the batch is sent and the channel stays usable.
        let tooLarge = [UInt8](repeating: 1, count: ChannelConfiguration().maxMessageSize + 1)
        await #expect(throws: PeerError.self) { try await ca.send(contentsOf: [[7], tooLarge]) }
        try await ca.send(contentsOf: [[8]])
        #expect(try await cb.receive() == [8])
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func aChannelThatEndsWhileItsWritesWaitForTheSocketNeverWatchesItsDescriptorAgain() async throws {
        let config = Self.backPressured()
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, config), PeerTestSupport.establishment(bob, config))
        let big = [UInt8](repeating: 0x77, count: 64 << 10)
        let sender = Task { for _ in 0..<1000 { try await ca.send(big) } }
        let engine = ca.engine
        // Generous: under a parallel run the sending task may wait long for a pool thread.
        #expect(await PeerTestSupport.eventually(timeout: .seconds(60)) {
            engine.queue.sync { engine.isWriteBlocked && engine.pendingOutputBytes > config.maxOutboundQueuedBytes }
        })
        await ca.abort()
        #expect(engine.queue.sync { engine.isWatchingDescriptor } == false)
        #expect(engine.queue.sync { engine.pendingOutputBytes } == 0)
        // The send waiting for space learns that the channel ended.
        switch await sender.result {
        case .success: Issue.record("sends after abort succeeded")
        case .failure(let error): #expect((error as? PeerError)?.code == .netlayer(.channelClosed))
        }
        // The peer sees a truncated stream once it reads on, and our side never reacts.
        let got = await PeerTestSupport.code { while try await cb.receive() != nil {} }
        #expect(got == .handshake(.truncated))
        #expect(engine.queue.sync { engine.isWatchingDescriptor } == false)
    }

    @Test func aBurstGrowsTheBuffersAndAnIdleChannelGivesThemBackAndReadsSmallAgain() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        let big = [UInt8](repeating: 9, count: 256 << 10)
        let sender = Task { for _ in 0..<8 { try await ca.send(big) } }
        for _ in 0..<8 { #expect(try await cb.receive() == big) }
        try await sender.value
        // Once the traffic stopped, both ends go back to their starting buffers within the
        // machine's idle release period, and the receiver's next read asks for little again.
        let sending = ca.engine, receiving = cb.engine
        #expect(await PeerTestSupport.eventually { sending.queue.sync { sending.heldBufferBytes } <= 2048 })
        #expect(await PeerTestSupport.eventually {
            receiving.queue.sync { receiving.heldBufferBytes <= 2048 && receiving.currentReadChunk == ChannelEngine.initialReadChunk }
        })
        // And the channel carries on as before.
        try await ca.send([1, 2, 3])
        #expect(try await cb.receive() == [1, 2, 3])
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func theIdleBufferReleaseIsTheConfigurationsOne() async throws {
        // A long idleBufferRelease keeps a burst's buffers well past the default 100 ms.
        var keeping = ChannelRuntimeConfiguration()
        keeping.idleBufferRelease = .seconds(60)
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, keeping), PeerTestSupport.establishment(bob, keeping))
        let big = [UInt8](repeating: 9, count: 256 << 10)
        let sender = Task { for _ in 0..<4 { try await ca.send(big) } }
        for _ in 0..<4 { #expect(try await cb.receive() == big) }
        try await sender.value
        try await Task.sleep(for: .milliseconds(500))
        let receiving = cb.engine
        #expect(receiving.queue.sync { receiving.heldBufferBytes } > 2048, "still held 0.5 s after the burst")
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func aReceiverWaitingBeforeABurstGetsEveryMessageInOrder() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        let engine = cb.engine
        let first = Task { try await cb.receive() }
        #expect(await PeerTestSupport.eventually { engine.queue.sync { engine.waitingReceivers } == 1 })
        for i in 0..<50 { try await ca.send(Self.numbered(i, size: 300)) }
        #expect(try await first.value == Self.numbered(0, size: 300))
        for i in 1..<50 { #expect(try await cb.receive() == Self.numbered(i, size: 300)) }
        #expect(engine.queue.sync { engine.waitingReceivers } == 0)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func aReadChunkThatCannotFitBehindAnUnfinishedFrameIsRefusedWhenTheEstablishmentIsBuilt() throws {
        var tooLarge = ChannelRuntimeConfiguration()
        tooLarge.handshake = HandshakeConfiguration(channel: ChannelConfiguration(maxBufferedInput: 256 << 10))
        tooLarge.readChunkSize = 256 << 10
        let establishment = #expect(throws: PeerError.self) {
            try ChannelEstablishment(identity: alice, configuration: tooLarge, logger: PeerTestSupport.quietLogger)
        }
        #expect(establishment?.code == .netlayer(.invalidConfiguration))
        // One byte over the room left behind an unfinished frame is refused too.
        tooLarge.readChunkSize = (256 << 10) - FrameFormat.maxFrameLength + 2
        #expect((#expect(throws: PeerError.self) { try tooLarge.validate() })?.code == .netlayer(.invalidConfiguration))
        var netlayer = PeerNetlayer.Configuration()
        netlayer.channel = tooLarge
        let netlayerError = #expect(throws: PeerError.self) {
            try PeerNetlayer(identity: alice, configuration: netlayer, logger: PeerTestSupport.quietLogger)
        }
        #expect(netlayerError?.code == .netlayer(.invalidConfiguration))
        #expect(throws: Never.self) { try ChannelRuntimeConfiguration().validate() }
    }

    @Test func theLargestAcceptedReadChunkCarriesFragmentedMessagesWithoutTrapping() async throws {
        var edge = ChannelRuntimeConfiguration()
        edge.handshake = HandshakeConfiguration(channel: ChannelConfiguration(maxBufferedInput: 256 << 10))
        edge.readChunkSize = (256 << 10) - FrameFormat.maxFrameLength + 1
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, edge), PeerTestSupport.establishment(bob, edge))
        // Messages of many frames: reads end inside frames, so the receiver holds unfinished
        // frames while the next chunk lands behind them.
        let messages = [1 << 20, 3 * 65_518 + 5, 70_001].map { n in (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ n) } }
        async let sending: Void = { for m in messages { try await ca.send(m) } }()
        for m in messages { #expect(try await cb.receive() == m) }
        try await sending
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }
}
