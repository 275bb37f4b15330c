import Dispatch
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import Syrup
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// Introductions per second through one server, against raw descriptor passing.
///
/// Both runs have the same shape: initiator A on the calling thread makes a socketpair, sends one
/// end to the server, closes its copy and keeps `window` introductions in flight, reading one byte
/// from the oldest end; target B on a second thread takes each descriptor, writes one byte into it
/// and closes it. "Ours" is the real `IntroductionServer` (registration, Syrup records, routing,
/// validation) on its own queue; "raw" is a thread that only relays marker + descriptor with
/// `recvmsg`/`sendmsg`: the same syscalls with no crypto and no Syrup.
enum IntroductionBench {
    static func ours(count: Int, window: Int, directory: String) throws -> Double {
        let serverKey = IdentityKeyPair.generate()
        var limits = IntroductionServerLimits()
        limits.introductionsPerSecond = 0
        limits.maxPendingPerSender = max(window * 2, 8)
        limits.maxPendingPerTarget = max(window * 2, 8)
        limits.maxPendingTotal = max(window * 4, 64)
        let core = IntroductionServerConfiguration(limits: limits, allowedUIDs: [getuid()])
        let path = (directory as NSString).appendingPathComponent("bench-intro.sock")
        let socket = try IntroductionServerSetup.openSocket(path: path, mode: 0o600)
        var logger = Logger(label: "ocapn-uds.bench")
        logger.logLevel = .critical
        let server = IntroductionServer(identity: serverKey, socket: socket, configuration: .init(core: core), audit: nil, logger: logger)
        server.start()
        defer {
            let stopped = DispatchSemaphore(value: 0)
            server.stop { stopped.signal() }
            stopped.wait()
        }
        let a = try BlockingPeer(path: path, server: serverKey.publicIdentity)
        let b = try BlockingPeer(path: path, server: serverKey.publicIdentity)
        defer { a.close(); b.close() }
        try a.register()
        try b.register()
        let record = UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: a.identity, introductionServers: [serverKey.publicIdentity]),
            to: PeerLocator(identity: b.identity, introductionServers: [serverKey.publicIdentity]))).encoded
        nonisolated(unsafe) let target = b
        let targetDone = DispatchSemaphore(value: 0)
        let targetThread = Thread {
            defer { targetDone.signal() }
            for _ in 0..<count {
                guard let fd = try? target.receiveDescriptor() else { return }
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
        return Double(count) / Double(elapsed) * 1e9
    }

    static func raw(count: Int, window: Int) throws -> Double {
        let (aControl, serverFromA) = try FileDescriptor.socketPair()
        let (serverToB, bControl) = try FileDescriptor.socketPair()
        defer { [aControl, serverFromA, serverToB, bControl].forEach { $0.close() } }
        nonisolated(unsafe) let (inbound, outbound, target) = (serverFromA, serverToB, bControl)
        let done = DispatchSemaphore(value: 0)
        let relay = Thread {
            defer { done.signal() }
            for _ in 0..<count {
                guard let fd = try? receiveMarker(inbound) else { return }
                _ = try? sendAll(outbound, UDSNewConnection.fdMarker, passing: [fd])
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
            try sendAll(aControl, UDSNewConnection.fdMarker, passing: [bEnd])
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
        var byte: UInt8 = 0
        let n = try fd.withRawDescriptor { raw in
            withUnsafeMutableBytes(of: &byte) { Glibc.read(raw, $0.baseAddress, 1) }
        }
        if n != 1 { throw BenchError("introduction did not complete (read returned \(n))") }
    }

    /// Blocking send of all bytes; `passing` goes with the first chunk only.
    static func sendAll(_ fd: FileDescriptor, _ bytes: [UInt8], passing: [FileDescriptor] = []) throws {
        var offset = 0
        var descriptors = passing
        while offset < bytes.count {
            let chunk = offset == 0 ? bytes : Array(bytes[offset...])
            switch try fd.send(chunk, passing: descriptors) {
            case let .processed(n):
                offset += n
                descriptors = []
            case .wouldBlock:
                try waitFor(fd, events: Int16(POLLOUT))
            }
        }
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
                try waitFor(fd, events: Int16(POLLIN))
            }
        }
    }

    static func waitFor(_ fd: FileDescriptor, events: Int16, seconds: Double = 10) throws {
        let ready = try fd.withRawDescriptor { raw -> Int32 in
            var entry = pollfd(fd: raw, events: events, revents: 0)
            return poll(&entry, 1, Int32(seconds * 1000))
        }
        if ready <= 0 { throw BenchError("timed out waiting on a socket") }
    }
}

/// A control-connection client with blocking semantics, for the benchmark's peers.
final class BlockingPeer {
    let key = IdentityKeyPair.generate()
    let control: FileDescriptor
    private var client: RegistrationClient
    private var reader = ControlStreamReader<FileDescriptor>()
    private var buffer = [UInt8](repeating: 0, count: 16 << 10)

    init(path: String, server: PublicIdentity?) throws {
        control = try FileDescriptor.connect(unixPath: path, timeout: .seconds(5))
        let key = self.key
        client = RegistrationClient(signer: SigningIdentity(identity: key.publicIdentity) { key.sign($0) },
                                    challenge: .random(), expectedServer: server)
    }

    var identity: PublicIdentity { key.publicIdentity }

    func close() {
        control.close()
        for d in reader.drainDescriptors() { d.close() }
    }

    func sendAll(_ bytes: [UInt8], passing: [FileDescriptor] = []) throws {
        try IntroductionBench.sendAll(control, bytes, passing: passing)
    }

    func next() throws -> ControlStreamReader<FileDescriptor>.Item {
        while true {
            if let item = try reader.next() { return item }
            let result = try buffer.withUnsafeMutableBytes { try control.receive(into: $0, descriptorCapacity: 4) }
            switch result {
            case let .processed(r):
                if r.isEndOfStream { throw BenchError("server closed the control connection") }
                try reader.receive(Array(buffer[..<r.byteCount]), descriptors: r.descriptors)
            case .wouldBlock:
                try IntroductionBench.waitFor(control, events: Int16(POLLIN))
            }
        }
    }

    func register() throws {
        try sendAll(client.start().encoded)
        guard case let .message(value) = try next() else { throw BenchError("no server response") }
        for case let .send(reply) in try client.receive(value) { try sendAll(reply.encoded) }
    }

    func receiveDescriptor() throws -> FileDescriptor {
        guard case let .newConnection(value, descriptor) = try next() else { throw BenchError("expected an introduction") }
        do {
            _ = try client.receive(value)
        } catch {
            descriptor.close()
            throw error
        }
        return descriptor
    }
}
