import Foundation
import Identity
import Runtime
import Transport

/// Resident memory of a real `ocapn-uds intro-server` process as peers register with it.
enum MemoryBench {
    struct ServerResult {
        /// (registered peers, resident bytes)
        var points: [(peers: Int, rss: Int)]
        var baselineRSS: Int
    }

    /// Starts the server binary (this executable), registers peers up to each count in
    /// `counts`, and reads the server's VmRSS at each step.
    static func serverRSS(counts: [Int], directory: String, executable: String) throws -> ServerResult {
        let maximum = counts.max() ?? 0
        _ = try? OpenFileLimit.raiseSoftLimit(toAtMost: UInt64(maximum + 256))
        let keyPath = (directory as NSString).appendingPathComponent("bench-server.key")
        let serverKey = IdentityKeyPair.generate()
        try IdentityKeyFile.write(serverKey, to: keyPath, force: true)
        let socketPath = (directory as NSString).appendingPathComponent("bench-mem.sock")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = [
            "intro-server", "--identity", keyPath, "--socket", socketPath, "--log-level", "error",
            "--max-clients", String(maximum + 64), "--max-unauthenticated", "64",
            "--registration-timeout-ms", "60000",
        ]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { try? ProcessSignals.send(.terminate, to: process.processIdentifier) }
            process.waitUntilExit()
        }
        // Wait for the ready line.
        let ready = out.fileHandleForReading.availableData
        guard String(decoding: ready, as: UTF8.self).hasPrefix("listening:") else {
            throw BenchError("intro-server did not start: \(String(decoding: ready, as: UTF8.self))")
        }
        let pid = process.processIdentifier
        Thread.sleep(forTimeInterval: 0.1)
        guard let baseline = residentBytes(pid: pid) else { throw BenchError("cannot read the server's VmRSS") }
        var peers: [BlockingIntroductionClient] = []
        peers.reserveCapacity(maximum)
        defer { peers.forEach { $0.close() } }
        var points: [(Int, Int)] = []
        for target in counts.sorted() {
            while peers.count < target {
                let p = try BlockingIntroductionClient(path: socketPath, server: serverKey.publicIdentity)
                try p.register()
                peers.append(p)
            }
            // Let the server process the last signatures before reading its memory.
            Thread.sleep(forTimeInterval: 0.3)
            guard let rss = residentBytes(pid: pid) else { throw BenchError("cannot read the server's VmRSS") }
            points.append((target, rss))
        }
        return ServerResult(points: points, baselineRSS: baseline)
    }
}
