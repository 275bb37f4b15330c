#if canImport(Glibc)
import Glibc
#endif
import RuntimeTestSupport
import Testing
import Transport

/// The introduction server's probe of a registered connection (issue 11: a live registration
/// is not displaced): non-blocking, consumes nothing, and tells a live peer from one that left.
@Suite(.ownThread) struct LivenessProbeTests {
    @Test("An idle connected socket is alive; after the peer closes it is hung up")
    func closeIsHangUp() throws {
        let (mine, theirs) = try FileDescriptor.socketPair()
        defer { mine.close(); theirs.close() }
        #expect(mine.probeLiveness() == .alive)
        theirs.close()
        guard case .hungUp = mine.probeLiveness() else {
            Issue.record("a closed peer must read as hung up")
            return
        }
    }

    @Test("Unread data keeps a peer alive and is still there after the probe")
    func pendingDataIsNotConsumed() throws {
        let (mine, theirs) = try FileDescriptor.socketPair()
        defer { mine.close(); theirs.close() }
        _ = try theirs.send([1, 2, 3], passing: [])
        #expect(mine.probeLiveness() == .alive)
        #expect(mine.probeLiveness() == .alive)
        var buffer = [UInt8](repeating: 0, count: 8)
        let got = try buffer.withUnsafeMutableBytes { try mine.receive(into: $0, descriptorCapacity: 0) }
        guard case let .processed(r) = got else {
            Issue.record("data vanished")
            return
        }
        #expect(r.byteCount == 3)
    }

    @Test("A peer that shut down its write side is hung up even with data still unread")
    func shutdownIsHangUp() throws {
        let (mine, theirs) = try FileDescriptor.socketPair()
        defer { mine.close(); theirs.close() }
        _ = try theirs.send([9], passing: [])
        _ = try theirs.withRawDescriptor { shutdown($0, Int32(SHUT_WR)) }
        guard case .hungUp = mine.probeLiveness() else {
            Issue.record("a peer that shut down its side must read as hung up")
            return
        }
    }

    @Test("A closed descriptor of our own reads as hung up")
    func closedDescriptor() throws {
        let (mine, theirs) = try FileDescriptor.socketPair()
        defer { theirs.close() }
        mine.close()
        #expect(mine.probeLiveness() == .hungUp("descriptor closed"))
    }
}
