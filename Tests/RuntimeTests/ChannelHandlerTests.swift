import Identity
@testable import Runtime
import RuntimeTestSupport
import Synchronization
import Testing
import Transport

/// `PeerChannel.deliver(to:)`: messages handed to a closure on the channel's event-loop thread.
@Suite(.ownThread) struct ChannelHandlerTests {
    let alice = IdentityKeyPair.generate()
    let bob = IdentityKeyPair.generate()

    final class Deliveries: Sendable {
        let items = Mutex<[PeerChannel.Delivery]>([])
        func append(_ d: PeerChannel.Delivery) { items.withLock { $0.append(d) } }
        var messages: [[UInt8]] {
            items.withLock { $0.compactMap { if case .message(let m) = $0 { m } else { nil } } }
        }
        var ends: [PeerError?] {
            items.withLock { $0.compactMap { if case .ended(let e) = $0 { e } else { nil } } }
        }
        var endCount: Int { items.withLock { $0.filter { if case .ended = $0 { true } else { false } }.count } }
    }

    @Test func queuedMessagesComeFirstThenEveryMessageInOrderThenOneCleanEnd() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        for i in 0..<5 { try await ca.send([UInt8(i)]) }
        let engine = cb.engine
        // The first messages wait in the inbound queue before the handler exists.
        #expect(await PeerTestSupport.eventually { engine.queue.sync { engine.isWatchingDescriptor } })
        try await Task.sleep(for: .milliseconds(50))
        let got = Deliveries()
        cb.deliver { got.append($0) }
        for i in 5..<200 { try await ca.send([UInt8(i % 256), 0xEE]) }
        #expect(await PeerTestSupport.eventually { got.messages.count == 200 })
        let expected = (0..<5).map { [UInt8($0)] } + (5..<200).map { [UInt8($0 % 256), 0xEE] }
        #expect(got.messages == expected)
        #expect(got.endCount == 0)
        async let closing = ca.close()
        #expect(await PeerTestSupport.eventually { got.endCount == 1 })
        #expect(got.ends.allSatisfy { $0 == nil })
        await cb.close()
        #expect(await closing.clean)
        #expect(engine.queue.sync { engine.isWatchingDescriptor } == false)
    }

    @Test func aHandlerThatAnswersWithSendNowEchoesEveryMessageAtOnce() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        let offLoop = Mutex(0)
        let engine = cb.engine
        cb.deliver { delivery in
            if !engine.callerIsOnLoopThread { offLoop.withLock { $0 += 1 } }
            if case .message(let m) = delivery { _ = try? cb.sendNow(m.reversed()) }
        }
        for i in 0..<50 {
            let message: [UInt8] = [UInt8(i), 1, 2, 3]
            try await ca.send(message)
            #expect(try await ca.receive() == message.reversed())
        }
        #expect(offLoop.withLock { $0 } == 0)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }

    @Test func anAbortedPeerEndsTheHandlerWithItsError() async throws {
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        let got = Deliveries()
        cb.deliver { got.append($0) }
        try await ca.send([1])
        await ca.abort()
        #expect(await PeerTestSupport.eventually { got.endCount == 1 })
        #expect(got.messages == [[1]])
        #expect(got.ends.first??.code == .handshake(.truncated))
    }

    /// The end of `channel` as `receive()` reports it (nil: a clean end), or `.timeout` when it
    /// has not come within `limit`. The deadline starts here, not when the test started: a
    /// `.timeLimit` trait would also count the wait for an `.ownThread` slot, which in the full
    /// parallel suite takes up to a minute and more (the reason this test, with a one-minute
    /// limit, once failed there as if it hung).
    static func end(of channel: PeerChannel, within limit: Duration) async -> PeerError.Code?? {
        await withTaskGroup(of: PeerError.Code??.self) { group in
            group.addTask {
                do throws(PeerError) {
                    while try await channel.receive() != nil {}
                    return .some(nil)
                } catch {
                    return .some(error.code)
                }
            }
            group.addTask {
                try? await Task.sleep(for: limit)
                return .some(.handshake(.timeout))
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    @Test func aChannelReleasedWithoutCloseIsAbortedAndOneReleasedAfterItsCloseStaysClean() async throws {
        // Released open: the owner's deinit aborts it, so its peer sees the stream end.
        let (ca, released) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        var open: PeerChannel? = released
        _ = consume released
        try await ca.send([7])
        open = nil
        #expect(await Self.end(of: ca, within: .seconds(10)) == .some(.handshake(.truncated)))
        _ = open

        // Released after a clean close (the echo peer's shape): nothing more happens to it;
        // the release of an ended channel costs no hop to its queue.
        let (cc, closedThenReleased) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice), PeerTestSupport.establishment(bob))
        let engine = closedThenReleased.engine
        var closed: PeerChannel? = closedThenReleased
        _ = consume closedThenReleased
        async let peerClosing = cc.close()
        let summary = await closed!.close()
        #expect(summary.clean)
        closed = nil
        _ = closed
        #expect(await peerClosing.clean)
        #expect(engine.queue.sync { engine.closeSummary }?.clean == true)
    }

    @Test func aPeerThatNeverReadsTheAnswersPausesReadingInsteadOfGrowingTheOutboundQueue() async throws {
        var bounded = ChannelRuntimeConfiguration()
        bounded.maxOutboundQueuedBytes = 64 << 10
        bounded.socketSendBufferSize = nil
        // ca's runtime stops reading the echoes after 4 queued messages, as its application
        // reads none.
        bounded.maxInboundQueuedMessages = 4
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, bounded), PeerTestSupport.establishment(bob, bounded))
        let echoed = Mutex(0)
        cb.deliver { delivery in
            if case .message(let m) = delivery {
                _ = try? cb.sendNow(m)
                echoed.withLock { $0 += 1 }
            }
        }
        // ca sends 100 × 32 KiB and reads nothing back: the echoes fill both socket buffers,
        // then cb's outbound queue goes over its bound and cb stops reading.
        let total = 100
        let sender = Task {
            for i in 0..<total { try await ca.send([UInt8](repeating: UInt8(i), count: 32 << 10)) }
        }
        let engine = cb.engine
        #expect(await PeerTestSupport.eventually(timeout: .seconds(5)) {
            engine.queue.sync { engine.isReadingPausedForOutput }
        })
        // Over the bound by at most what one readiness event read before the pause.
        let pending = engine.queue.sync { engine.pendingOutputBytes }
        let slack = bounded.readsPerEvent * bounded.readChunkSize + (33 << 10)
        #expect(pending <= bounded.maxOutboundQueuedBytes + slack, "cb queued \(pending) bytes")
        #expect(echoed.withLock { $0 } < total)
        // Reading the answers lets everything through, in order.
        for i in 0..<total {
            let m = try await ca.receive()
            #expect(m?.count == 32 << 10 && m?.first == UInt8(i))
        }
        try await sender.value
        // The handler counts after its sendNow, so the last echo can arrive before its count.
        #expect(await PeerTestSupport.eventually { echoed.withLock { $0 } == total })
        #expect(engine.queue.sync { engine.isReadingPausedForOutput } == false)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
    }
}
