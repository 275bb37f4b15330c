import Audit
import Dispatch
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import Syrup
import Transport

/// Introductions per second through one server, against raw descriptor passing.
///
/// Both runs have the same shape: initiator A on the calling thread makes a socketpair, sends one
/// end to the server, closes its copy and keeps `window` introductions in flight, reading one byte
/// from the oldest end; target B on a second thread takes each descriptor, writes one byte into it
/// and closes it (ours: after checking the forwarded record is A's, byte for byte). "Ours" is the real `IntroductionServer` (registration, Syrup records, routing,
/// validation) on its own queue; "raw" is a thread that only relays marker + descriptor with
/// `recvmsg`/`sendmsg`: the same syscalls with no crypto and no Syrup.
enum IntroductionBench {
    /// `auditLog`: where the server writes its audit trail with the CLI's writer settings
    /// (asynchronous, signed checkpoints); nil runs it without one.
    static func ours(count: Int, window: Int, directory: String, auditLog: String? = nil) throws -> Double {
        let serverKey = IdentityKeyPair.generate()
        var limits = IntroductionServerLimits()
        limits.introductionsPerSecond = 0
        limits.maxPendingPerSender = max(window * 2, 8)
        limits.maxPendingPerTarget = max(window * 2, 8)
        limits.maxPendingTotal = max(window * 4, 64)
        // B reads every descriptor, but on a loaded machine it may lag a whole window behind;
        // the in-flight caps (issue #12) would then drop it as a target that does not read.
        limits.maxInFlightPerTarget = max(window * 4, 64)
        limits.maxInFlightPerSender = max(window * 4, 64)
        let core = IntroductionServerConfiguration(limits: limits, allowedUIDs: [getuid()])
        let path = (directory as NSString).appendingPathComponent("bench-intro.sock")
        let socket = try IntroductionServerSetup.openSocket(path: path, mode: 0o600)
        var logger = Logger(label: "ocapn-uds.bench")
        logger.logLevel = .critical
        let sink = try auditLog.map { logPath in
            try AuditFileSink(AuditFileConfiguration(
                path: logPath, writer: serverKey.publicIdentity,
                signer: serverKey, tick: .seconds(1), asynchronous: true))
        }
        let server = IntroductionServer(identity: serverKey, socket: socket, configuration: .init(core: core), audit: sink, logger: logger)
        server.start()
        defer {
            let stopped = DispatchSemaphore(value: 0)
            server.stop { stopped.signal() }
            stopped.wait()
            sink?.close()
            if let sink, sink.status.failures > 0 { FileHandle.standardError.write(Data("bench: \(sink.status.failures) audit failures\n".utf8)) }
        }
        let a = try BlockingIntroductionClient(path: path, server: serverKey.publicIdentity)
        let b = try BlockingIntroductionClient(path: path, server: serverKey.publicIdentity)
        defer { a.close(); b.close() }
        try a.register()
        try b.register()
        let record = UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: a.identity, introductionServers: [serverKey.publicIdentity]),
            to: PeerLocator(identity: b.identity, introductionServers: [serverKey.publicIdentity]))).encoded
        nonisolated(unsafe) let target = b
        nonisolated(unsafe) var mismatch = false
        let targetDone = DispatchSemaphore(value: 0)
        let expected = record + UDSNewConnection.fdMarker
        let targetThread = Thread {
            defer { targetDone.signal() }
            // B reads each record and its marker as the raw target reads its bytes and checks
            // them against what A sent, byte for byte (the server forwards the sender's record):
            // a parse here would load the 2-core machine with client work the baseline's
            // target does not do. Registration left nothing buffered (the server answers
            // nothing after uds:signature).
            var buffer = [UInt8](repeating: 0, count: expected.count)
            for _ in 0..<count {
                guard let fd = try? receiveMarker(target.control, into: &buffer) else { return }
                if buffer != expected {
                    mismatch = true
                    fd.close()  // A's read then sees end of stream and the run fails
                    return
                }
                _ = try? fd.send([0x31])
                fd.close()
            }
        }
        targetThread.start()
        let t0 = nowNanos()
        try initiate(count: count, window: window) { bEnd in
            // As PeerNetlayer sends an introduction: record and marker in one sendmmsg.
            try a.sendAll(record, then: UDSNewConnection.fdMarker, passing: bEnd)
        }
        let elapsed = nowNanos() - t0
        targetDone.wait()
        if mismatch { throw BenchError("the target received another record than the initiator sent") }
        return Double(count) / Double(elapsed) * 1e9
    }

    /// The record `ours` sends (the same bytes whoever its keys belong to), for `raw(record:)`.
    static func sampleRecord() -> [UInt8] {
        let server = IdentityKeyPair.generate().publicIdentity
        return UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: IdentityKeyPair.generate().publicIdentity, introductionServers: [server]),
            to: PeerLocator(identity: IdentityKeyPair.generate().publicIdentity, introductionServers: [server]))).encoded
    }

    /// `record`: when given, A writes it before each marker, the relay reads it and writes it on
    /// before the marker (record and marker in one `sendmmsg`, as the server and our peers send
    /// them), and the target reads it with the marker: the bytes an introduction moves, still
    /// without Syrup or checks. Nil: the marker alone.
    static func raw(count: Int, window: Int, record: [UInt8]? = nil) throws -> Double {
        let (aControl, serverFromA) = try FileDescriptor.socketPair()
        let (serverToB, bControl) = try FileDescriptor.socketPair()
        defer { [aControl, serverFromA, serverToB, bControl].forEach { $0.close() } }
        let (inbound, outbound, target) = (serverFromA, serverToB, bControl)
        let done = DispatchSemaphore(value: 0)
        let length = (record?.count ?? 0) + UDSNewConnection.fdMarker.count
        let relay = Thread {
            defer { done.signal() }
            var buffer = [UInt8](repeating: 0, count: length)
            for _ in 0..<count {
                guard let fd = try? receiveMarker(inbound, into: &buffer) else { return }
                if let record {
                    _ = try? BlockingIO.sendAll(outbound, Array(buffer[..<record.count]), then: UDSNewConnection.fdMarker, passing: fd)
                } else {
                    _ = try? BlockingIO.sendAll(outbound, UDSNewConnection.fdMarker, passing: [fd])
                }
                fd.close()
            }
        }
        let targetThread = Thread {
            defer { done.signal() }
            var buffer = [UInt8](repeating: 0, count: length)
            for _ in 0..<count {
                guard let fd = try? receiveMarker(target, into: &buffer) else { return }
                _ = try? fd.send([0x31])
                fd.close()
            }
        }
        relay.start()
        targetThread.start()
        let t0 = nowNanos()
        try initiate(count: count, window: window) { bEnd in
            if let record {
                try BlockingIO.sendAll(aControl, record, then: UDSNewConnection.fdMarker, passing: bEnd)
            } else {
                try BlockingIO.sendAll(aControl, UDSNewConnection.fdMarker, passing: [bEnd])
            }
        }
        let elapsed = nowNanos() - t0
        done.wait()
        done.wait()
        return Double(count) / Double(elapsed) * 1e9
    }

    /// A's loop: keeps `window` introductions in flight; each completes when B's byte arrives.
    private static func initiate(count: Int, window: Int, send: (FileDescriptor) throws -> Void) throws {
        var inFlight: [FileDescriptor] = []
        inFlight.reserveCapacity(window)
        var head = 0
        func completeOldest() throws {
            let end = inFlight[head]
            head += 1
            try readOneByte(end)
            end.close()
        }
        for _ in 0..<count {
            let (aEnd, bEnd) = try FileDescriptor.socketPair()
            do {
                try send(bEnd)
            } catch {
                aEnd.close()
                bEnd.close()
                throw error
            }
            bEnd.close()
            inFlight.append(aEnd)
            if inFlight.count - head >= window { try completeOldest() }
            if head > 1024 { inFlight.removeFirst(head); head = 0 }
        }
        while head < inFlight.count { try completeOldest() }
    }

    static func readOneByte(_ fd: FileDescriptor) throws {
        var byte: [UInt8] = [0]
        let n = try fd.read(into: &byte, at: 0)
        if n != 1 { throw BenchError("introduction did not complete (read returned \(n))") }
    }

    /// Receives a 4-byte marker with its descriptor (the raw relay's whole protocol).
    static func receiveMarker(_ fd: FileDescriptor) throws -> FileDescriptor {
        var buffer = [UInt8](repeating: 0, count: 4)
        return try receiveMarker(fd, into: &buffer)
    }

    /// Fills `buffer` (a record, if any, then the 4-byte marker) and returns the one descriptor
    /// that came with it.
    static func receiveMarker(_ fd: FileDescriptor, into buffer: inout [UInt8]) throws -> FileDescriptor {
        var filled = 0
        var passed: [FileDescriptor] = []
        while filled < buffer.count {
            let result = try buffer.withUnsafeMutableBytes {
                try fd.receive(into: UnsafeMutableRawBufferPointer(rebasing: $0[filled...]), descriptorCapacity: 1)
            }
            switch result {
            case let .processed(r):
                if r.isEndOfStream { throw BenchError("relay: end of stream") }
                filled += r.byteCount
                passed += r.descriptors
            case .wouldBlock:
                try BlockingIO.waitFor(fd, events: .readable)
            }
        }
        guard passed.count == 1 else {
            passed.forEach { $0.close() }
            throw BenchError("relay: expected one descriptor")
        }
        return passed[0]
    }

}
