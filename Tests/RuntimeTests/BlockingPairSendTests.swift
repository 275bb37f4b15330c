import Dispatch
import Foundation
import Glibc
import OCapN
import Runtime
import Testing
import Transport

/// `BlockingIO.sendAll(_:_:then:passing:)`: an introduction's record and marker in one
/// `sendmmsg`, or in pieces when the socket is full; the reader sees the same bytes and the
/// descriptor on the marker either way.
@Suite(.ownThread) struct BlockingPairSendTests {
    /// Reads until `count` bytes arrived; returns them and the stream ranges of the reads that
    /// carried descriptors.
    static func readAll(_ fd: FileDescriptor, count: Int) throws -> (bytes: [UInt8], carrying: [(range: Range<Int>, descriptors: [FileDescriptor])]) {
        var buffer = [UInt8](repeating: 0, count: 8192)
        var bytes: [UInt8] = []
        var carrying: [(range: Range<Int>, descriptors: [FileDescriptor])] = []
        while bytes.count < count {
            let result = try buffer.withUnsafeMutableBytes { try fd.receive(into: $0, descriptorCapacity: 4) }
            switch result {
            case let .processed(r):
                if r.isEndOfStream { return (bytes, carrying) }
                if !r.descriptors.isEmpty { carrying.append((bytes.count..<(bytes.count + r.byteCount), r.descriptors)) }
                bytes += buffer[..<r.byteCount]
            case .wouldBlock:
                try BlockingIO.waitFor(fd, events: .readable, seconds: 5)
            }
        }
        return (bytes, carrying)
    }

    @Test("A record and marker on an empty socket arrive as the record, then the marker with the descriptor",
          arguments: [200, 300_000])
    func recordThenMarker(recordSize: Int) throws {
        let (a, b) = try FileDescriptor.socketPair()
        let (passed, kept) = try FileDescriptor.socketPair()
        defer { [a, b, kept].forEach { $0.close() } }
        try a.setNonBlocking()
        let record = (0..<recordSize).map { UInt8(truncatingIfNeeded: $0 % 253) }
        let marker = UDSNewConnection.fdMarker
        // 300 KB does not fit the socket buffer: the sender waits for room while this reads.
        nonisolated(unsafe) var received: (bytes: [UInt8], carrying: [(range: Range<Int>, descriptors: [FileDescriptor])])?
        let done = DispatchSemaphore(value: 0)
        let reader = Thread {
            received = try? Self.readAll(b, count: record.count + marker.count)
            done.signal()
        }
        reader.start()
        try BlockingIO.sendAll(a, record, then: marker, passing: passed)
        passed.close()
        #expect(done.wait(timeout: .now() + 10) == .success)
        let got = try #require(received)
        #expect(got.bytes == record + marker)
        #expect(got.carrying.count == 1)
        // K5: the descriptor comes with the read holding the marker's first byte, which ends the
        // stream here.
        #expect(got.carrying.first.map { $0.range.contains(record.count) && $0.descriptors.count == 1 } == true)
        for entry in got.carrying { for fd in entry.descriptors { fd.close() } }
    }
}
