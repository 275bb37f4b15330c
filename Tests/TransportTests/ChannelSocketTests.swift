import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
import Transport

extension TransportTests {
    @Suite struct ChannelSockets {
        @Test func readinessIsReportedAndAClosedSocketIsNeverWatchedAgain() async throws {
            let oracle = await LeakOracle.make()
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track(mine)
            oracle.track(theirs)
            let queue = DispatchQueue(label: "test.channel-socket")
            let socket = try ChannelSocket(descriptor: mine, queue: queue)
            let log = EventLog<String>()
            try await onQueue(queue) {
                socket.watchReadable { log.append("readable") ; socket.watchReadable(nil) }
            }
            try sendAll(theirs, [1, 2, 3])
            #expect(log.wait { $0.contains("readable") })
            let got = try await onQueue(queue) { () -> [UInt8] in
                var buffer = [UInt8](repeating: 0, count: 16)
                let n = try buffer.withUnsafeMutableBytes { b -> Int in
                    guard case .processed(let n) = try socket.receive(into: b) else { return -1 }
                    return n
                }
                return Array(buffer.prefix(max(n, 0)))
            }
            #expect(got == [1, 2, 3])
            try await onQueue(queue) {
                socket.close()
                // After close, asking to watch changes nothing: the number may be reused.
                socket.watchReadable { log.append("late") }
                socket.watchWritable { log.append("late") }
            }
            #expect(try await onQueue(queue) { socket.isWatching } == false)
            #expect(await waitClosed(mine))
            #expect(!log.events.contains("late"))
            theirs.close()
            await oracle.expectNoLeaks()
        }

        @Test func readinessRunsOnTheLoopThreadUnderTheQueueOnceAskedAndOnAWorkerBefore() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-channel")
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track([mine, theirs])
            let queue = DispatchQueue(label: "test.channel-socket")
            let socket = try ChannelSocket(descriptor: mine, queue: queue, loop: loop)
            #expect(loop.registeredCount == 1)
            let log = EventLog<(Bool, Bool)>()
            let after = EventLog<Bool>()
            socket.setAfterReadiness { after.append(loop.inLoopThread) }
            let drain: @Sendable () -> Void = {
                dispatchPrecondition(condition: .onQueue(queue))
                var buffer = [UInt8](repeating: 0, count: 16)
                _ = try? buffer.withUnsafeMutableBytes { try socket.receive(into: $0) }
            }
            try await onQueue(queue) {
                socket.watchReadable {
                    log.append((loop.inLoopThread, socket.isHandlingOnLoopThread))
                    drain()
                }
            }
            try sendAll(theirs, [1])
            #expect(log.wait { $0.count == 1 })
            #expect(log.events.first.map { !$0.0 && !$0.1 } == true)
            socket.handleReadinessOnLoopThread(true)
            try sendAll(theirs, [2])
            #expect(log.wait { $0.count == 2 })
            #expect(log.events.last.map { $0.0 && $0.1 } == true)
            #expect(after.wait { $0.contains(true) })
            try await onQueue(queue) { socket.close() }
            #expect(loop.registeredCount == 0)
            #expect(!mine.isOpen)
            theirs.close()
            loop.shutdown()
            await oracle.expectNoLeaks()
        }

        @Test func handedOffReadinessGoesToTheOwnersTakerAndToAWorkerWhenItDeclines() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-hand-off")
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track([mine, theirs])
            let queue = DispatchQueue(label: "test.channel-socket")
            let socket = try ChannelSocket(descriptor: mine, queue: queue, loop: loop)
            let handled = EventLog<Bool>()
            let given = EventLog<Int>()
            let work = Mutex<(@Sendable () -> Void)?>(nil)
            let take = Atomic<Bool>(true)
            socket.setHandOff { w in
                guard take.load(ordering: .relaxed) else { return false }
                work.withLock { $0 = w }
                given.append(1)
                return true
            }
            try await onQueue(queue) {
                socket.watchReadable {
                    handled.append(loop.inLoopThread)
                    var buffer = [UInt8](repeating: 0, count: 16)
                    _ = try? buffer.withUnsafeMutableBytes { try socket.receive(into: $0) }
                }
            }
            try sendAll(theirs, [1])
            // The taker holds the event: nothing ran it yet, and the socket is disarmed.
            #expect(given.wait { $0.count == 1 })
            try await Task.sleep(for: .milliseconds(50))
            #expect(handled.events.isEmpty && given.events.count == 1)
            let taken = try #require(work.withLock { $0 })
            taken()
            #expect(handled.events == [false])
            // Re-armed by the work; a taker that declines leaves the next event to a worker.
            take.store(false, ordering: .relaxed)
            try sendAll(theirs, [2])
            #expect(handled.wait { $0.count == 2 })
            #expect(handled.events == [false, false] && given.events.count == 1)
            try await onQueue(queue) { socket.close() }
            #expect(loop.registeredCount == 0)
            theirs.close()
            loop.shutdown()
            await oracle.expectNoLeaks()
        }

        @Test func shuttingDownTheWriteSideGivesThePeerEndOfStreamAfterTheLastByte() async throws {
            let oracle = await LeakOracle.make()
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track(mine)
            oracle.track(theirs)
            let queue = DispatchQueue(label: "test.channel-socket")
            let socket = try ChannelSocket(descriptor: mine, queue: queue)
            try await onQueue(queue) {
                try socket.setSendBufferSize(1 << 20)
                _ = try ([9, 8] as [UInt8]).withUnsafeBytes { try socket.send($0) }
                try socket.shutDownWrite()
            }
            #expect(try receiveChunk(theirs)?.0 == [9, 8])
            #expect(try receiveChunk(theirs) == nil)
            try await onQueue(queue) { socket.close() }
            #expect(await waitClosed(mine))
            theirs.close()
            await oracle.expectNoLeaks()
        }

        @Test func aDescriptorSentOnAChannelSocketIsDiscardedAndReported() async throws {
            let oracle = await LeakOracle.make()
            let (mine, theirs) = try FileDescriptor.socketPair()
            let (extraA, extraB) = try FileDescriptor.socketPair()
            oracle.track([mine, theirs, extraA, extraB])
            let queue = DispatchQueue(label: "test.channel-socket")
            let socket = try ChannelSocket(descriptor: mine, queue: queue)
            _ = try theirs.send([7], passing: [extraA])
            extraA.close()
            let code = try await onQueue(queue) { () -> TransportError.Code? in
                var buffer = [UInt8](repeating: 0, count: 16)
                do {
                    _ = try buffer.withUnsafeMutableBytes { try socket.receive(into: $0) }
                    return nil
                } catch let error as TransportError {
                    return error.code
                }
            }
            #expect(code == .controlTruncated)
            try await onQueue(queue) { socket.close() }
            #expect(await waitClosed(mine))
            theirs.close()
            extraB.close()
            await oracle.expectNoLeaks()
        }

        /// The descriptor closes once the sources finished cancelling (asynchronously).
        func waitClosed(_ descriptor: FileDescriptor) async -> Bool {
            for _ in 0..<200 where descriptor.isOpen { try? await Task.sleep(for: .milliseconds(5)) }
            return !descriptor.isOpen
        }
    }
}
