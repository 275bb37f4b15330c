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
        let targetThread = Thread {
            defer { targetDone.signal() }
            for _ in 0..<count {
                // B checks what arrived against what A sent, byte for byte (the server forwards
                // the sender's record), as cheaply as the raw target takes its marker: a parse
                // here would load the 2-core machine with client work the baseline does not do.
                guard let introduction = try? target.receiveIntroduction() else { return }
                let fd = introduction.descriptor
                if introduction.record != record {
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
            try a.sendAll(record)
            try a.sendAll(UDSNewConnection.fdMarker, passing: [bEnd])
        }
        let elapsed = nowNanos() - t0
        targetDone.wait()
        if mismatch { throw BenchError("the target received another record than the initiator sent") }
        return Double(count) / Double(elapsed) * 1e9
    }

    static func raw(count: Int, window: Int) throws -> Double {
        let (aControl, serverFromA) = try FileDescriptor.socketPair()
        let (serverToB, bControl) = try FileDescriptor.socketPair()
        defer { [aControl, serverFromA, serverToB, bControl].forEach { $0.close() } }
        let (inbound, outbound, target) = (serverFromA, serverToB, bControl)
        let done = DispatchSemaphore(value: 0)
        let relay = Thread {
            defer { done.signal() }
            for _ in 0..<count {
                guard let fd = try? receiveMarker(inbound) else { return }
                _ = try? BlockingIO.sendAll(outbound, UDSNewConnection.fdMarker, passing: [fd])
                fd.close()
            }
        }
        let targetThread = Thread {
            defer { done.signal() }
            for _ in 0..<count {
                guard let fd = try? receiveMarker(target) else { return }
                _ = try? fd.send([0x31])
                fd.close()
            }
        }
        relay.start()
        targetThread.start()
        let t0 = nowNanos()
        try initiate(count: count, window: window) { bEnd in
            try BlockingIO.sendAll(aControl, UDSNewConnection.fdMarker, passing: [bEnd])
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
        while true {
            let result = try buffer.withUnsafeMutableBytes { try fd.receive(into: $0, descriptorCapacity: 1) }
            switch result {
            case let .processed(r):
                if r.isEndOfStream { throw BenchError("relay: end of stream") }
                guard r.descriptors.count == 1 else {
                    r.descriptors.forEach { $0.close() }
                    throw BenchError("relay: expected one descriptor")
                }
                return r.descriptors[0]
            case .wouldBlock:
                try BlockingIO.waitFor(fd, events: .readable)
            }
        }
    }

}
