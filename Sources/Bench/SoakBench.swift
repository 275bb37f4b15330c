import Foundation
import Identity
import Logging
import Runtime

/// The soak: an intro-server and an echo peer as processes, and this process opening, using
/// and closing channels through them at rate, with a fresh registration every few channels,
/// for a given time. Descriptors and resident memory of both processes are sampled at quiet
/// points; after a warm-up they must stay flat.
enum SoakBench {
    struct Sample {
        let seconds: Double
        let serverDescriptors: Int
        let peerDescriptors: Int
        let serverRSS: Int
        let peerRSS: Int
    }

    struct Result {
        var samples: [Sample] = []
        var channels = 0
        var registrations = 0
        var elapsed: Double = 0
    }

    static func descriptorCount(pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    static func run(seconds: Int, directory: String, executable: String, progress: (String) -> Void) async throws -> Result {
        let bench = PeerBench(directory: directory, executable: executable)
        defer { bench.stop() }
        try bench.start()
        guard let target = bench.peerLocator else { throw BenchError("peer not started") }
        var result = Result()
        let t0 = nowNanos()
        var nextSample = 0.0
        var netlayer = try await bench.client()
        result.registrations += 1
        let message = [UInt8](repeating: 0x73, count: 256)
        while true {
            let elapsed = Double(nowNanos() - t0) / 1e9
            if elapsed >= nextSample || elapsed >= Double(seconds) {
                // Quiet point: no channel of ours is open.
                try? await Task.sleep(for: .milliseconds(50))
                let sample = Sample(
                    seconds: elapsed, serverDescriptors: descriptorCount(pid: bench.serverPID),
                    peerDescriptors: descriptorCount(pid: bench.peerPID),
                    serverRSS: residentBytes(pid: bench.serverPID) ?? -1, peerRSS: residentBytes(pid: bench.peerPID) ?? -1)
                result.samples.append(sample)
                progress(String(format: "soak %4.0f s: %d channels, %d registrations; server %d fds %.1f MiB; peer %d fds %.1f MiB",
                                elapsed, result.channels, result.registrations, sample.serverDescriptors,
                                Double(sample.serverRSS) / 1_048_576, sample.peerDescriptors, Double(sample.peerRSS) / 1_048_576))
                nextSample += max(5, Double(seconds) / 60)
            }
            if elapsed >= Double(seconds) { break }
            // A few channels at once, each with a few messages, then all closed.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 {
                    group.addTask { [netlayer] in
                        let channel = try await netlayer.connect(to: target)
                        for _ in 0..<4 {
                            try await channel.send(message)
                            guard try await channel.receive() == message else { throw BenchError("soak echo mismatch") }
                        }
                        _ = await channel.close()
                    }
                }
                try await group.waitForAll()
            }
            result.channels += 4
            if result.channels % 200 == 0 {
                // A fresh registration: the old client leaves, a new identity registers.
                await netlayer.shutdown()
                netlayer = try await bench.client()
                result.registrations += 1
            }
        }
        await netlayer.shutdown()
        result.elapsed = Double(nowNanos() - t0) / 1e9
        return result
    }
}
