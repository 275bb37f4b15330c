import Foundation
import Synchronization
import Identity
import Logging
import OCapN
import Runtime
import Transport

/// End-to-end figures through real processes: an `ocapn-uds intro-server` and an
/// `ocapn-uds peer` (echo), with this process as the connecting peer.
final class PeerBench {
    let directory: String
    let executable: String
    private var processes: [Process] = []
    let serverKey = IdentityKeyPair.generate()
    let peerKey = IdentityKeyPair.generate()
    private(set) var socketPath = ""
    private(set) var peerPID: Int32 = 0
    private(set) var serverPID: Int32 = 0
    private(set) var peerLocator: PeerLocator?

    init(directory: String, executable: String) {
        self.directory = directory
        self.executable = executable
    }

    private func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }

    /// Starts the server and the echo peer; returns once the peer printed its locator.
    func start() throws {
        try IdentityKeyFile.write(serverKey, to: path("pb-server.key"), force: true)
        try IdentityKeyFile.write(peerKey, to: path("pb-peer.key"), force: true)
        socketPath = path("pb.sock")
        let server = try launch(["intro-server", "--identity", path("pb-server.key"), "--socket", socketPath,
                                 "--log-level", "info", "--max-intros-per-second", "0", "--max-clients", "4096"])
        _ = try firstLine(server)
        serverPID = processes.last!.processIdentifier
        // The memory figure holds up to 1000 channels from this one process: lift the per-peer cap.
        let peer = try launch([
            "peer", "--identity", path("pb-peer.key"), "--server", socketPath, "--log-level", "error",
            "--max-channels", "100000", "--max-channels-per-peer", "100000",
        ])
        peerLocator = try PeerLocator(uri: try firstLine(peer))
        peerPID = processes.last!.processIdentifier
    }

    func stop() {
        for p in processes where p.isRunning { try? ProcessSignals.send(.terminate, to: p.processIdentifier) }
        for p in processes { p.waitUntilExit() }
        processes.removeAll()
    }

    private func launch(_ arguments: [String]) throws -> FileHandle {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        let log = path("pb-\(processes.count).log")
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        p.standardError = FileHandle(forWritingAtPath: log)
        try p.run()
        processes.append(p)
        return out.fileHandleForReading
    }

    private func firstLine(_ handle: FileHandle) throws -> String {
        var data = Data()
        while !data.contains(0x0a) {
            let chunk = handle.availableData
            if chunk.isEmpty { throw BenchError("a benchmark process exited before its first line") }
            data.append(chunk)
        }
        return String(decoding: data.prefix { $0 != 0x0a }, as: UTF8.self)
    }

    /// A connecting peer in this process, registered with the server.
    func client() async throws -> PeerNetlayer {
        var logger = Logger(label: "ocapn-uds.bench")
        logger.logLevel = .critical
        let netlayer = try PeerNetlayer(identity: .generate(), logger: logger)
        _ = try await netlayer.addServer(path: socketPath, expectedKey: serverKey.publicIdentity)
        return netlayer
    }

    /// 3. `connect(to:)` → first echoed message, sequentially, `count` times (nanoseconds).
    func connectLatencies(count: Int) async throws -> Samples {
        let netlayer = try await client()
        guard let target = peerLocator else { throw BenchError("peer not started") }
        var samples = Samples()
        let message: [UInt8] = Array("ping".utf8)
        for i in 0..<(count + 5) {
            let t0 = nowNanos()
            let channel = try await netlayer.connect(to: target)
            try await channel.send(message)
            guard try await channel.receive() == message else { throw BenchError("echo mismatch") }
            let elapsed = nowNanos() - t0
            _ = await channel.close()
            if i >= 5 { samples.add(Double(elapsed)) }  // the first few warm caches and queues
        }
        await netlayer.shutdown()
        return samples
    }

    /// 6. Sequential round trips of `size`-byte messages over one open channel to the echo
    /// peer process (nanoseconds each), sent and received on the channel's event-loop thread
    /// (`deliver(to:)` and `sendNow`), the shape the echo peer uses on its side.
    func roundTrips(size: Int, count: Int) async throws -> Samples {
        let netlayer = try await client()
        guard let target = peerLocator else { throw BenchError("peer not started") }
        let channel = try await netlayer.connect(to: target)
        let message = [UInt8](repeating: 0x61, count: size)
        struct Run {
            var samples = Samples()
            var done = 0
            var t0: UInt64 = 0
            var finished = false
        }
        let run = Mutex(Run())
        let outcome = await withCheckedContinuation { (c: CheckedContinuation<Result<Samples, BenchError>, Never>) in
            channel.deliver { delivery in
                let result = run.withLock { run -> Result<Samples, BenchError>? in
                    guard !run.finished else { return nil }
                    switch delivery {
                    case .message(let echoed):
                        guard echoed.count == size else {
                            run.finished = true
                            return .failure(BenchError("echo mismatch"))
                        }
                        if run.done >= 100 { run.samples.add(Double(nowNanos() - run.t0)) }
                        run.done += 1
                        if run.done == count + 100 {
                            run.finished = true
                            return .success(run.samples)
                        }
                        run.t0 = nowNanos()
                        return nil
                    case .ended:
                        run.finished = true
                        return .failure(BenchError("channel ended during the round trips"))
                    }
                }
                if let result {
                    c.resume(returning: result)
                } else if case .message = delivery {
                    _ = try? channel.sendNow(message)
                }
            }
            run.withLock { $0.t0 = nowNanos() }
            _ = try? channel.sendNow(message)
        }
        _ = await channel.close()
        await netlayer.shutdown()
        return try outcome.get()
    }

    /// 6b. The same round trips through `send` and `receive()` (a continuation per message).
    func asyncRoundTrips(size: Int, count: Int) async throws -> Samples {
        let netlayer = try await client()
        guard let target = peerLocator else { throw BenchError("peer not started") }
        let channel = try await netlayer.connect(to: target)
        let message = [UInt8](repeating: 0x61, count: size)
        var samples = Samples()
        for i in 0..<(count + 100) {
            let t0 = nowNanos()
            try await channel.send(message)
            guard let echoed = try await channel.receive(), echoed.count == size else { throw BenchError("echo mismatch") }
            if i >= 100 { samples.add(Double(nowNanos() - t0)) }
        }
        _ = await channel.close()
        await netlayer.shutdown()
        return samples
    }

    /// 5b. Resident memory of the echo peer before and while it holds `count` open channels.
    func peerMemory(channels count: Int) async throws -> (before: Int, peak: Int, holding: Int) {
        _ = try? OpenFileLimit.raiseSoftLimit(toAtMost: UInt64(count + 512))
        let netlayer = try await client()
        guard let target = peerLocator else { throw BenchError("peer not started") }
        try? await Task.sleep(for: .milliseconds(200))
        guard let before = residentBytes(pid: peerPID) else { throw BenchError("cannot read the peer's VmRSS") }
        var open: [PeerChannel] = []
        open.reserveCapacity(count)
        let message: [UInt8] = Array("hold".utf8)
        for _ in 0..<count {
            let channel = try await netlayer.connect(to: target)
            // One echo each, so the peer really has the channel up and its buffers in use.
            try await channel.send(message)
            _ = try await channel.receive()
            open.append(channel)
        }
        try? await Task.sleep(for: .milliseconds(200))
        guard let holding = residentBytes(pid: peerPID), let peak = residentBytes(pid: peerPID, field: "VmHWM") else {
            throw BenchError("cannot read the peer's memory")
        }
        for channel in open { _ = await channel.close() }
        await netlayer.shutdown()
        return (before, peak, holding)
    }
}
