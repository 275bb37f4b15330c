import Glibc
import Testing
import Transport

extension TransportTests {
    /// Blocking waits, accept and the wrong-kind descriptors the conformance probes pass.
    @Suite struct ProbeDescriptors {
        @Test func waitReportsReadabilityAndTimesOut() throws {
            let (a, b) = try FileDescriptor.socketPair()
            defer { a.close(); b.close() }
            #expect(try !b.wait(for: .readable, timeout: .milliseconds(20)), "nothing sent yet")
            #expect(try a.wait(for: .writable, timeout: .zero))
            _ = try a.send([1])
            #expect(try b.wait(for: .readable, timeout: .seconds(2)))
            try a.shutdownWrite()
            var buffer = [UInt8](repeating: 0, count: 4)
            #expect(try b.read(into: &buffer, at: 0) == 1)
            #expect(try b.read(into: &buffer, at: 0) == 0, "end of stream after shutdownWrite")
        }

        @Test func pipeEndsAreClassifiedAsAPipe() throws {
            let (r, w) = try FileDescriptor.pipe()
            defer { r.close(); w.close() }
            #expect(try r.isCloseOnExec() && w.isCloseOnExec())
            try w.writeAll([7, 8])
            #expect(try r.wait(for: .readable, timeout: .seconds(1)))
            #expect(try r.kind() == .pipe && w.kind() == .pipe)
        }

        @Test func wrongKindsAreWhatTheirNamesSay() throws {
            let listener = try FileDescriptor.autoboundUnixListener()
            defer { listener.close() }
            #expect(try listener.isCloseOnExec())
            #expect(try listener.kind() == .unixStream(listening: true, named: true, connected: false))
            let tcp = try FileDescriptor.unconnectedTCPSocket()
            defer { tcp.close() }
            #expect(try tcp.kind() == .tcp(listening: false))
        }

        @Test func acceptTakesAQueuedConnectionAndOtherwiseWouldBlock() throws {
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let listening = try ListeningSocket.bind(path: dir.path + "/s.sock")
            defer { listening.close() }
            if case .processed(let unexpected) = try listening.descriptor.acceptConnection() {
                unexpected.close()
                Issue.record("accepted a connection nobody made")
            }
            let client = try FileDescriptor.connect(unixPath: dir.path + "/s.sock")
            defer { client.close() }
            #expect(try listening.descriptor.wait(for: .readable, timeout: .seconds(2)))
            guard case .processed(let server) = try listening.descriptor.acceptConnection() else {
                Issue.record("no connection to accept")
                return
            }
            defer { server.close() }
            #expect(try server.isCloseOnExec())
            #expect(try !server.isNonBlocking(), "blocking, like accept(2) gives")
            if case .unixStream(listening: false, named: _, connected: true) = try server.kind() {} else { Issue.record("not a connected unix stream") }
        }
    }
}
