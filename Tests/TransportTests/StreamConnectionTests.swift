import Dispatch
import Foundation
import Glibc
import Testing
import Transport

/// Collects events from a connection or listener handler (called on their queue).
final class EventLog<Event: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [Event] = []

    func append(_ event: Event) { lock.withLock { storage.append(event) } }
    var events: [Event] { lock.withLock { storage } }

    /// Polls until `predicate` holds over the events, or `timeout` passes.
    func wait(timeout: Duration = .seconds(3), until predicate: ([Event]) -> Bool) -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if predicate(events) { return true }
            usleep(2000)
        }
        return predicate(events)
    }
}

func setBufferSize(_ descriptor: FileDescriptor, _ option: Int32, _ size: Int32) throws {
    var value = size
    _ = try descriptor.withRawDescriptor { setsockopt($0, SOL_SOCKET, option, &value, socklen_t(4)) }
}

extension TransportTests {
    @Suite struct StreamConnections {
        let marker: [UInt8] = [0x39, 0x30, 0x00, 0x00]

        static func chunks(_ events: [StreamEvent]) -> [StreamChunk] {
            events.compactMap { if case .received(let chunk) = $0 { chunk } else { nil } }
        }

        @Test func aDescriptorIsDeliveredWithTheReadHoldingItsMarker() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            let queue = DispatchQueue(label: "connection")
            let log = EventLog<StreamEvent>()
            let connection = try StreamConnection(descriptor: b, queue: queue) { log.append($0) }
            queue.sync { connection.start() }

            let record = [UInt8](repeating: 0x41, count: 100)
            try sendAll(a, record)
            _ = try a.send(marker, passing: [pipeWrite])
            pipeWrite.close()
            #expect(log.wait { Self.chunks($0).reduce(0) { $0 + $1.bytes.count } == 104 })
            let chunks = Self.chunks(log.events)
            let carrying = chunks.filter { !$0.descriptors.isEmpty }
            #expect(carrying.count == 1)
            #expect(carrying.first.map { $0.descriptors.count == 1 && $0.streamRange.contains(100) } == true)
            #expect(chunks.flatMap(\.bytes) == record + marker)

            a.close()
            #expect(log.wait { $0.contains { if case .endOfStream = $0 { true } else { false } } })
            for chunk in chunks { for fd in chunk.descriptors { fd.close() } }
            queue.sync { connection.close() }
            pipeRead.close()
            await oracle.expectNoLeaks()
        }

        @Test func aLargeDescriptorSegmentCarriesItsDescriptorOnTheFirstChunkOnly() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            try setBufferSize(a, SO_SNDBUF, 4096)
            try setBufferSize(b, SO_RCVBUF, 4096)
            let queue = DispatchQueue(label: "sender")
            var configuration = StreamConnection.Configuration()
            configuration.maximumQueuedBytes = 1 << 20
            let log = EventLog<StreamEvent>()
            let sender = try StreamConnection(descriptor: a, queue: queue, configuration: configuration) { log.append($0) }
            let plain = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
            let carried = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 241) }
            let flushed = EventLog<Bool>()
            try queue.sync {
                sender.start()
                try sender.send(plain)
                try sender.send(carried, passing: pipeWrite)
                #expect(sender.pendingOutputBytes > 0, "the socket buffer cannot take 300 KB at once")
                sender.whenFlushed { flushed.append($0 == nil) }
            }

            var received: [UInt8] = []
            var descriptorReads: [(range: Range<Int>, descriptors: [FileDescriptor])] = []
            while received.count < plain.count + carried.count {
                let (bytes, descriptors) = try #require(try receiveChunk(b, bufferSize: 16384))
                if !descriptors.isEmpty {
                    descriptorReads.append((received.count..<(received.count + bytes.count), descriptors))
                }
                received += bytes
            }
            #expect(received == plain + carried)
            #expect(descriptorReads.count == 1)
            #expect(descriptorReads.first?.descriptors.count == 1)
            #expect(descriptorReads.first?.range.contains(plain.count) == true)
            #expect(flushed.wait { $0 == [true] })
            #expect(!pipeWrite.isOpen, "the connection closes its copy once the kernel has it")

            let passed = try #require(descriptorReads.first?.descriptors.first)
            #expect(try passed.withRawDescriptor { write($0, "ok", 2) } == 2)
            passed.close()
            queue.sync { sender.close() }
            b.close()
            pipeRead.close()
            #expect(log.events.isEmpty)
            await oracle.expectNoLeaks()
        }

        @Test func overflowingTheOutputCapClosesTheConnectionAndItsQueuedDescriptors() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            let queue = DispatchQueue(label: "overflow")
            var configuration = StreamConnection.Configuration()
            configuration.maximumQueuedBytes = 8192
            let connection = try StreamConnection(descriptor: a, queue: queue, configuration: configuration) { _ in }
            try queue.sync {
                // Not started, so nothing is flushed and the accounting is exact.
                try connection.send([UInt8](repeating: 1, count: 5000))
                try connection.send(marker, passing: pipeWrite)
                #expect(connection.pendingOutputBytes == 5004)
                #expect {
                    try connection.send([UInt8](repeating: 2, count: 4000))
                } throws: { ($0 as? TransportError)?.code == .outputQueueFull }
                #expect(connection.isClosed)
                #expect { try connection.send([1]) } throws: { ($0 as? TransportError)?.code == .closed }
            }
            #expect(!pipeWrite.isOpen)
            b.close()
            pipeRead.close()
            await oracle.expectNoLeaks()
        }

        @Test func closingARunningConnectionClosesDescriptorsStillQueued() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            try setBufferSize(a, SO_SNDBUF, 4096)
            let queue = DispatchQueue(label: "close-queued")
            var configuration = StreamConnection.Configuration()
            configuration.maximumQueuedBytes = 1 << 20
            let connection = try StreamConnection(descriptor: a, queue: queue, configuration: configuration) { _ in }
            let flushResult = EventLog<TransportError.Code?>()
            try queue.sync {
                connection.start()
                try connection.send([UInt8](repeating: 7, count: 300_000))  // the peer never reads
                try connection.send(marker, passing: pipeWrite)
                connection.whenFlushed { flushResult.append($0?.code) }
                connection.close()
                connection.close()
            }
            #expect(!pipeWrite.isOpen)
            #expect(flushResult.events == [.closed])
            b.close()
            pipeRead.close()
            await oracle.expectNoLeaks()
        }

        @Test func aPeerThatIsGoneMakesTheNextWriteFail() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            oracle.track([a, b])
            b.close()
            let queue = DispatchQueue(label: "epipe")
            let log = EventLog<StreamEvent>()
            let connection = try StreamConnection(descriptor: a, queue: queue) { log.append($0) }
            try queue.sync {
                connection.start()
                try connection.send([1, 2, 3])
            }
            #expect(log.wait { events in
                events.contains { if case .failed(let error) = $0 { error.code == .connectionReset } else { false } }
            })
            #expect(queue.sync { connection.isClosed })
            await oracle.expectNoLeaks()
        }

        @Test func suspendedReadingDeliversNothingUntilResumed() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            oracle.track([a, b])
            let queue = DispatchQueue(label: "backpressure")
            let log = EventLog<StreamEvent>()
            let connection = try StreamConnection(descriptor: b, queue: queue) { log.append($0) }
            queue.sync {
                connection.suspendReading()
                connection.start()
            }
            try sendAll(a, [1, 2, 3])
            #expect(!log.wait(timeout: .milliseconds(100)) { !$0.isEmpty })
            queue.sync { connection.resumeReading() }
            #expect(log.wait { Self.chunks($0).flatMap(\.bytes) == [1, 2, 3] })
            queue.sync {
                connection.suspendReading()
                connection.close()  // close while suspended must still release the socket
            }
            a.close()
            await oracle.expectNoLeaks()
        }
    }
}
