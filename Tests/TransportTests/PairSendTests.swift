import Dispatch
import Glibc
import Testing
import Transport

extension TransportTests {
    /// `send(_:then:passing:)`: a record and the marker carrying a descriptor in one `sendmmsg`,
    /// which the peer must not be able to tell from two `sendmsg` calls (wire §5: Goblins reads
    /// the record with plain reads, the marker with `recvmsg`).
    @Suite struct PairSend {
        let marker: [UInt8] = [0x39, 0x30, 0x00, 0x00]
        let record = (0..<200).map { UInt8(truncatingIfNeeded: $0 &* 7) }

        func sendPair(_ socket: FileDescriptor, _ first: [UInt8], _ descriptor: FileDescriptor) throws -> IOResult<(first: Int, second: Int)> {
            try first.withUnsafeBytes { firstBytes in
                try marker.withUnsafeBytes { markerBytes in
                    try socket.send(firstBytes, then: markerBytes, passing: descriptor)
                }
            }
        }

        /// Reads exactly `count` bytes with no room for a descriptor, as Goblins reads a record.
        func plainRead(_ socket: FileDescriptor, _ count: Int) throws -> [UInt8] {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
            defer { buffer.deallocate() }
            var filled = 0
            while filled < count {
                #expect(try waitReadable(socket))
                if case .processed(let n) = try socket.receiveBytes(into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])) {
                    #expect(n > 0)
                    filled += n
                }
            }
            return Array(buffer)
        }

        @Test func aRecordReadWithPlainReadsLeavesTheDescriptorOnTheMarker() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])

            let result = try sendPair(a, record, pipeWrite)
            guard case .processed(let sent) = result else { Issue.record("nothing sent"); return }
            #expect(sent.first == record.count && sent.second == marker.count)
            pipeWrite.close()  // A10: the sender's copy goes once the kernel has it

            // A read with no room for a descriptor that stopped inside the marker's segment
            // would throw controlTruncated (the kernel would have dropped the descriptor).
            #expect(try plainRead(b, record.count) == record)
            let (bytes, descriptors) = try #require(try receiveChunk(b))
            #expect(bytes == marker)
            #expect(descriptors.count == 1)
            let passed = try takeSingleDescriptor(descriptors).descriptor
            #expect(try passed.withRawDescriptor { write($0, "ok", 2) } == 2)
            passed.close()
            for fd in [a, b, pipeRead] { fd.close() }
            await oracle.expectNoLeaks()
        }

        @Test func oneLargeReadStopsRightAfterTheMarkerAndItsDescriptor() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            _ = try sendPair(a, record, pipeWrite)
            pipeWrite.close()
            try sendAll(a, [0x42])  // what follows must come in a later read (K5)

            let (bytes, descriptors) = try #require(try receiveChunk(b))
            #expect(bytes == record + marker)
            #expect(descriptors.count == 1)
            let (next, none) = try #require(try receiveChunk(b))
            #expect(next == [0x42] && none.isEmpty)
            for fd in descriptors + [a, b, pipeRead] { fd.close() }
            await oracle.expectNoLeaks()
        }

        @Test func aFullSocketTakesNeitherMessage() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            try setBufferSize(a, SO_SNDBUF, 4096)
            var filled = 0
            while case .processed(let n) = try a.send([UInt8](repeating: 1, count: 100)) { filled += n }

            let result = try sendPair(a, record, pipeWrite)
            if case .processed = result { Issue.record("a full socket took part of the pair") }
            #expect(pipeWrite.isOpen, "the caller still owns the descriptor")

            // Nothing of the pair, and no descriptor, reached the peer.
            var drained = 0
            while drained < filled {
                let (bytes, descriptors) = try #require(try receiveChunk(b))
                #expect(descriptors.isEmpty)
                #expect(bytes.allSatisfy { $0 == 1 })
                drained += bytes.count
            }
            #expect(drained == filled)
            for fd in [a, b, pipeRead, pipeWrite] { fd.close() }
            await oracle.expectNoLeaks()
        }

        /// The kernel stops at a message it could not take whole: after a partial record the
        /// marker and its descriptor are never sent (else the peer would read the marker inside
        /// the record). A small send buffer and a record larger than half of it make partial
        /// records at some fill levels; every fill level must give one of the allowed shapes.
        @Test func aPartlySentRecordIsNeverFollowedByTheMarker() async throws {
            let oracle = await LeakOracle.make()
            let big = [UInt8](repeating: 0x52, count: 7000)
            var partials = 0
            for prefill in 0..<40 {
                let (a, b) = try FileDescriptor.socketPair()
                let (pipeRead, pipeWrite) = try makePipe()
                oracle.track([a, b, pipeRead, pipeWrite])
                try setBufferSize(a, SO_SNDBUF, 4608)
                for _ in 0..<prefill { _ = try a.send([UInt8](repeating: 1, count: 50)) }
                switch try sendPair(a, big, pipeWrite) {
                case .wouldBlock:
                    break
                case .processed(let sent) where sent.first == big.count:
                    #expect(sent.second == 0 || sent.second == marker.count)
                case .processed(let sent):
                    #expect(sent.first > 0 && sent.second == 0, "prefill \(prefill): \(sent)")
                    partials += 1
                }
                for fd in [a, b, pipeRead, pipeWrite] { fd.close() }
            }
            #expect(partials > 0, "no fill level gave a partial record: the case was not exercised")
            await oracle.expectNoLeaks()
        }

        @Test func aConnectionWritesARecordAndMarkerQueuedTogetherAsTwoSegments() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            let queue = DispatchQueue(label: "pair")
            let connection = try StreamConnection(descriptor: a, queue: queue) { _ in }
            try queue.sync {
                connection.start()
                try connection.send(record, then: marker, passing: pipeWrite)
                #expect(connection.pendingOutputBytes == 0, "an empty socket takes both at once")
            }
            #expect(!pipeWrite.isOpen, "the connection closes its copy once the kernel has it")
            #expect(try plainRead(b, record.count) == record)
            let (bytes, descriptors) = try #require(try receiveChunk(b))
            #expect(bytes == marker && descriptors.count == 1)
            for fd in descriptors { fd.close() }
            queue.sync { connection.close() }
            b.close()
            pipeRead.close()
            await oracle.expectNoLeaks()
        }

        /// Behind a full socket the pair waits in the queue and goes out on writable events, in
        /// pieces: the descriptor must still arrive once, on the marker's first byte.
        @Test func aQueuedPairFlushedInPiecesCarriesItsDescriptorOnTheMarkerOnly() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            try setBufferSize(a, SO_SNDBUF, 4096)
            try setBufferSize(b, SO_RCVBUF, 4096)
            let queue = DispatchQueue(label: "pair-queued")
            var configuration = StreamConnection.Configuration()
            configuration.maximumQueuedBytes = 1 << 20
            let connection = try StreamConnection(descriptor: a, queue: queue, configuration: configuration) { _ in }
            let plain = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 % 251) }
            let longRecord = (0..<30_000).map { UInt8(truncatingIfNeeded: $0 % 241) }
            let flushed = EventLog<Bool>()
            try queue.sync {
                connection.start()
                try connection.send(plain)
                try connection.send(longRecord, then: marker, passing: pipeWrite)
                #expect(connection.pendingOutputBytes > 0, "the socket buffer cannot take 130 KB at once")
                connection.whenFlushed { flushed.append($0 == nil) }
            }
            var received: [UInt8] = []
            var carrying: [(range: Range<Int>, descriptors: [FileDescriptor])] = []
            let total = plain.count + longRecord.count + marker.count
            while received.count < total {
                let (bytes, descriptors) = try #require(try receiveChunk(b, bufferSize: 16384))
                if !descriptors.isEmpty { carrying.append((received.count..<(received.count + bytes.count), descriptors)) }
                received += bytes
            }
            #expect(received == plain + longRecord + marker)
            #expect(carrying.count == 1)
            #expect(carrying.first?.descriptors.count == 1)
            // The read that brought the descriptor ends with the marker, and holds its first byte.
            #expect(carrying.first?.range.upperBound == total)
            #expect(carrying.first?.range.contains(plain.count + longRecord.count) == true)
            #expect(flushed.wait { $0 == [true] })
            #expect(!pipeWrite.isOpen)
            for entry in carrying { for fd in entry.descriptors { fd.close() } }
            queue.sync { connection.close() }
            b.close()
            pipeRead.close()
            await oracle.expectNoLeaks()
        }

        @Test func aPairThatOverflowsTheQueueClosesTheConnectionAndTheDescriptor() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])
            let queue = DispatchQueue(label: "pair-overflow")
            var configuration = StreamConnection.Configuration()
            configuration.maximumQueuedBytes = 4096
            let connection = try StreamConnection(descriptor: a, queue: queue, configuration: configuration) { _ in }
            queue.sync {
                // Not started: nothing is flushed, so the cap is met by the queue alone.
                #expect {
                    try connection.send([UInt8](repeating: 3, count: 4093), then: marker, passing: pipeWrite)
                } throws: { ($0 as? TransportError)?.code == .outputQueueFull }
                #expect(connection.isClosed)
            }
            #expect(!pipeWrite.isOpen)
            b.close()
            pipeRead.close()
            await oracle.expectNoLeaks()
        }
    }
}
