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
