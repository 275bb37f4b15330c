import Dispatch
import Foundation
import Glibc
import Testing
import Transport

/// `StreamConnection` and `Listener` on an `EventLoop` (issue #9 item 2): readiness handled on
/// the loop thread, one registration per descriptor, gone before the close.
extension TransportTests {
    @Suite struct ConnectionsOnALoop {
        let marker: [UInt8] = [0x39, 0x30, 0x00, 0x00]

        static func bytes(_ events: [StreamEvent]) -> [UInt8] {
            events.flatMap { event -> [UInt8] in if case .received(let chunk) = event { chunk.bytes } else { [] } }
        }

        @Test func connectionsOfOneLoopShareOneReadBufferEachGetsItsOwnBytesOnTheLoopThread() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-shared-buf")
            defer { loop.shutdown() }  // idempotent; also on a failed expectation
            // Smaller than what each peer sends, so the reads of both take turns in it.
            let buffer = StreamConnection.ReadBuffer(byteCount: 64)
            let (a, aPeer) = try FileDescriptor.socketPair()
            let (b, bPeer) = try FileDescriptor.socketPair()
            oracle.track([a, aPeer, b, bPeer])
            let logA = EventLog<StreamEvent>(), logB = EventLog<StreamEvent>()
            let onLoop = EventLog<Bool>()
            let first = try StreamConnection(descriptor: a, loop: loop, readBuffer: buffer) {
                onLoop.append(loop.inLoopThread)
                logA.append($0)
            }
            let second = try StreamConnection(descriptor: b, loop: loop, readBuffer: buffer) {
                onLoop.append(loop.inLoopThread)
                logB.append($0)
            }
            first.start()
            second.start()
            #expect(loop.registeredCount == 2)
            let payloadA = (0..<3000).map { UInt8(truncatingIfNeeded: $0 % 251) }
            let payloadB = (0..<3000).map { UInt8(truncatingIfNeeded: 200 &- $0 % 199) }
            for start in stride(from: 0, to: 3000, by: 500) {
                try sendAll(aPeer, Array(payloadA[start..<(start + 500)]))
                try sendAll(bPeer, Array(payloadB[start..<(start + 500)]))
            }
            #expect(logA.wait { Self.bytes($0).count == 3000 })
            #expect(logB.wait { Self.bytes($0).count == 3000 })
            #expect(Self.bytes(logA.events) == payloadA)
            #expect(Self.bytes(logB.events) == payloadB)
            #expect(onLoop.events.allSatisfy { $0 }, "handlers run on the loop thread")

            first.close()
            second.close()
            #expect(loop.registeredCount == 0, "each connection unregistered before its close")
            #expect(!a.isOpen && !b.isOpen)
            aPeer.close()
            bPeer.close()
            loop.shutdown()  // its epoll and eventfd are not the test's to count
            await oracle.expectNoLeaks()
        }

        /// What the introduction server does: a read on one connection is forwarded, with its
        /// descriptor, on another connection of the same loop from inside the handler, and the
        /// `sendmsg` happens right there (the flush completes before the handler returns).
        @Test func aDescriptorReadOnOneConnectionIsForwardedOnAnotherWithinTheSameLoopTurn() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-forward")
            defer { loop.shutdown() }  // idempotent; also on a failed expectation
            let (inbound, sender) = try FileDescriptor.socketPair()
            let (outbound, target) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([inbound, sender, outbound, target, pipeRead, pipeWrite])
            let forwardedInline = EventLog<Bool>()
            let out = try StreamConnection(descriptor: outbound, loop: loop) { _ in }
            let marker = self.marker
            let into = try StreamConnection(descriptor: inbound, loop: loop) { event in
                guard case .received(let chunk) = event, let passed = chunk.descriptors.first else { return }
                var flushed = false
                do {
                    try out.send(marker, passing: passed)
                } catch {
                    Issue.record("forward failed: \(error)")
                }
                out.whenFlushed { error in flushed = error == nil }
                forwardedInline.append(flushed && loop.inLoopThread)
            }
            out.start()
            into.start()
            _ = try sender.send(marker, passing: [pipeWrite])
            pipeWrite.close()
            #expect(forwardedInline.wait { $0 == [true] })
            let (bytes, descriptors) = try #require(try receiveChunk(target))
            #expect(bytes == marker)
            #expect(descriptors.count == 1)
            #expect(try descriptors.first.map { try $0.withRawDescriptor { write($0, "ok", 2) } } == 2)
            descriptors.forEach { $0.close() }
            into.close()
            out.close()
            #expect(loop.registeredCount == 0)
            sender.close()
            target.close()
            pipeRead.close()
            loop.shutdown()  // its epoll and eventfd are not the test's to count
            await oracle.expectNoLeaks()
        }

        /// An owner on a delivery queue that does not keep up holds back the peer, not memory:
        /// the loop stops reading after `deliveryWindow` reads it has not taken.
        @Test func aBusyDeliveryQueueStopsTheLoopReadingAfterItsWindow() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-window")
            defer { loop.shutdown() }  // idempotent; also on a failed expectation
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track([mine, theirs])
            let queue = DispatchQueue(label: "busy-owner")
            let log = EventLog<StreamEvent>()
            let connection = try StreamConnection(descriptor: mine, queue: queue, loop: loop) { log.append($0) }
            connection.start()
            let release = DispatchSemaphore(value: 0)
            queue.async { release.wait() }  // the owner is busy: nothing is taken off its queue
            let count = StreamConnection.deliveryWindow + 8
            var pipes: [(FileDescriptor, FileDescriptor)] = []
            for _ in 0..<count {
                let pipe = try makePipe()
                oracle.track([pipe.0, pipe.1])
                pipes.append(pipe)
                // One descriptor per segment: every read ends with it (K5), one read each.
                _ = try theirs.send(marker, passing: [pipe.1])
                pipe.1.close()
            }
            usleep(200_000)
            #expect(try theirs.unreadOutput() > 0, "the loop left the reads beyond its window in the kernel")
            #expect(log.events.isEmpty)
            release.signal()
            #expect(log.wait { Self.bytes($0).count == count * 4 })
            let received = log.events.flatMap { event -> [FileDescriptor] in
                if case .received(let chunk) = event { chunk.descriptors } else { [] }
            }
            #expect(received.count == count)
            received.forEach { $0.close() }
            queue.sync { connection.close() }
            #expect(loop.registeredCount == 0)
            theirs.close()
            for (read, _) in pipes { read.close() }
            loop.shutdown()  // its epoll and eventfd are not the test's to count
            await oracle.expectNoLeaks()
        }

        @Test func aListenerOnALoopAcceptsOnTheLoopThreadAndUnregistersBeforeItsClose() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-listener")
            defer { loop.shutdown() }  // idempotent; also on a failed expectation
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/loop.sock"
            let log = EventLog<ListenerEvent>()
            let onLoop = EventLog<Bool>()
            let listener = Listener(socket: try ListeningSocket.bind(path: path), loop: loop) {
                onLoop.append(loop.inLoopThread)
                log.append($0)
            }
            listener.start()
            #expect(loop.registeredCount == 1)
            let client = try FileDescriptor.connect(unixPath: path)
            oracle.track(client)
            #expect(log.wait { $0.contains { if case .accepted = $0 { true } else { false } } })
            #expect(onLoop.events.allSatisfy { $0 })
            for case .accepted(let connection, _) in log.events {
                oracle.track(connection)
                connection.close()
                listener.connectionClosed()
            }
            #expect(listener.connectionCount == 0)
            listener.close()
            #expect(loop.registeredCount == 0)
            #expect(!listener.socket.descriptor.isOpen, "closed at once, after unregistering")
            #expect(access(path, F_OK) != 0)
            client.close()
            loop.shutdown()  // its epoll and eventfd are not the test's to count
            await oracle.expectNoLeaks()
        }
    }
}
