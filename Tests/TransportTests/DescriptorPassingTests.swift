import Glibc
import Testing
import Transport

extension TransportTests {
    @Suite struct DescriptorPassing {
        let marker: [UInt8] = [0x39, 0x30, 0x00, 0x00]

        @Test func aPassedDescriptorArrivesWithTheMarkerAndStillWorks() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (pipeRead, pipeWrite) = try makePipe()
            oracle.track([a, b, pipeRead, pipeWrite])

            #expect(try a.send(marker, passing: [pipeWrite]) == .processed(4))
            pipeWrite.close()  // the sender's copy goes once sent (A10)
            let (bytes, descriptors) = try #require(try receiveChunk(b))
            #expect(bytes == marker)
            let single = try takeSingleDescriptor(descriptors)
            #expect(single.closedExtras == 0)
            #expect(try single.descriptor.isCloseOnExec())

            let written = try single.descriptor.withRawDescriptor { write($0, "hi", 2) }
            #expect(written == 2)
            var buffer = [UInt8](repeating: 0, count: 2)
            let read = try pipeRead.withRawDescriptor { Glibc.read($0, &buffer, 2) }
            #expect(read == 2 && buffer == Array("hi".utf8))

            single.descriptor.close()
            for fd in [a, b, pipeRead] { fd.close() }
            await oracle.expectNoLeaks()
        }

        @Test func twoDescriptorsOnOneMarkerAreReportedAndTheExtraClosed() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            let (r1, w1) = try makePipe()
            let (r2, w2) = try makePipe()
            oracle.track([a, b, r1, w1, r2, w2])
            _ = try a.send(marker, passing: [w1, w2])
            w1.close()
            w2.close()

            let (_, descriptors) = try #require(try receiveChunk(b))
            #expect(descriptors.count == 2)
            let kept = try takeSingleDescriptor(descriptors, policy: .keepFirst)
            #expect(kept.closedExtras == 1)
            kept.descriptor.close()

            _ = try a.send(marker, passing: [r1, r2])
            let (_, again) = try #require(try receiveChunk(b))
            #expect {
                try takeSingleDescriptor(again, policy: .reject)
            } throws: { ($0 as? TransportError)?.code == .unexpectedDescriptors }
            #expect(again.allSatisfy { !$0.isOpen })

            for fd in [a, b, r1, r2] { fd.close() }
            await oracle.expectNoLeaks()
        }

        @Test func aMarkerWithoutADescriptorIsADescriptorExpectedError() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            oracle.track([a, b])
            _ = try a.send(marker)
            let (bytes, descriptors) = try #require(try receiveChunk(b))
            #expect(bytes == marker)
            #expect {
                try takeSingleDescriptor(descriptors)
            } throws: { ($0 as? TransportError)?.code == .descriptorExpected }
            a.close()
            b.close()
            await oracle.expectNoLeaks()
        }

        @Test func controlTruncationClosesWhatArrivedAndThrows() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            oracle.track([a, b])
            var pipes: [FileDescriptor] = []
            for _ in 0..<3 {
                let (r, w) = try makePipe()
                oracle.track([r, w])
                pipes += [r, w]
            }
            _ = try a.send(marker, passing: pipes)
            for fd in pipes { fd.close() }

            #expect(try waitReadable(b))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
            defer { buffer.deallocate() }
            #expect {
                try b.receive(into: buffer, descriptorCapacity: 1)
            } throws: { ($0 as? TransportError)?.code == .controlTruncated }
            a.close()
            b.close()
            await oracle.expectNoLeaks()
        }

        @Test func controlTruncationCanBeReportedWithTheBytesIntactAndWhatArrivedHandedOver() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            oracle.track([a, b])
            var pipes: [FileDescriptor] = []
            for _ in 0..<3 {
                let (r, w) = try makePipe()
                oracle.track([r, w])
                pipes += [r, w]
            }
            _ = try a.send(marker, passing: pipes)
            for fd in pipes { fd.close() }
            #expect(try waitReadable(b))
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
            defer { buffer.deallocate() }
            let result = try b.receive(into: buffer, descriptorCapacity: 1, reportingTruncation: true)
            guard case .processed(let received) = result else {
                Issue.record("the read returned")
                return
            }
            #expect(received.descriptorsLost)
            #expect(received.byteCount == marker.count)
            #expect(Array(UnsafeRawBufferPointer(rebasing: buffer[..<received.byteCount])) == marker)
            // The control buffer for one descriptor is padded to room for two on 64-bit Linux.
            #expect((1..<6).contains(received.descriptors.count), "what fitted is handed over, the rest dropped")
            for d in received.descriptors { d.close() }
            a.close()
            b.close()
            await oracle.expectNoLeaks()
        }

        @Test func moreThanTheKernelLimitOfDescriptorsIsRefusedBeforeSending() throws {
            let (a, b) = try FileDescriptor.socketPair()
            defer { a.close(); b.close() }
            let many = Array(repeating: a, count: maximumDescriptorsPerMessage + 1)
            #expect {
                try a.send(marker, passing: many)
            } throws: { ($0 as? TransportError)?.code == .limitExceeded }
        }

        @Test func socketPairEndsAreCloseOnExecAndBlocking() throws {
            let (a, b) = try FileDescriptor.socketPair()
            defer { a.close(); b.close() }
            #expect(try a.isCloseOnExec() && b.isCloseOnExec())
            #expect(try !a.isNonBlocking())
            try a.setNonBlocking()
            #expect(try a.isNonBlocking())
        }

        @Test func peerCredentialsNameThisProcess() throws {
            let (a, b) = try FileDescriptor.socketPair()
            defer { a.close(); b.close() }
            let credentials = try b.peerCredentials()
            #expect(credentials == PeerCredentials(pid: getpid(), uid: getuid(), gid: getgid()))
        }

        @Test func sendingToAClosedPeerIsAnErrorNotSIGPIPE() async throws {
            let oracle = await LeakOracle.make()
            let (a, b) = try FileDescriptor.socketPair()
            oracle.track([a, b])
            b.close()
            #expect {
                try a.send([1, 2, 3])
            } throws: { error in
                let error = error as? TransportError
                return error?.code == .connectionReset && error?.errno == EPIPE && error?.syscall == "sendmsg"
            }
            a.close()
            await oracle.expectNoLeaks()
        }

        @Test func usingAClosedDescriptorThrowsClosed() throws {
            let (a, b) = try FileDescriptor.socketPair()
            b.close()
            a.close()
            a.close()  // idempotent
            #expect { try a.send([1]) } throws: { ($0 as? TransportError)?.code == .closed }
            #expect(!a.isOpen)
        }
    }
}
