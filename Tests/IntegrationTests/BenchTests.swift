import Foundation
import RuntimeTestSupport
import Testing

/// The benchmark's numbers are not judged here (a shared machine makes timed tests meaningless);
/// this checks that `bench --quick` runs and produces every figure of issue #6 with its ratio.
@Suite(.ownThread) struct BenchTests {
    @Test func benchQuickProducesEveryFigureWithItsBaselineAndRatio() throws {
        let run = try runOCapNUDS(["bench", "--quick", "--json"], timeout: 300)
        #expect(run.status == 0, "\(run.stderr)")
        let document = try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]
        #expect(document?["format"] as? String == "ocapn-uds/bench/v1")
        let figures = try #require(document?["figures"] as? [[String: Any]])
        func figure(_ group: String, _ prefix: String) -> [String: Any]? {
            figures.first { $0["group"] as? String == group && ($0["name"] as? String)?.hasPrefix(prefix) == true }
        }
        // Every figure the issue names, and the ones with a target carry baseline, ratio and verdict.
        for (group, name) in [
            ("handshake", "latency p50"), ("handshake", "latency p99"), ("handshake", "rate"),
            ("handshake", "latency p50 cold"), ("handshake", "latency p99 cold"), ("handshake", "latency p50 uncached"),
            ("handshake", "uncached UDS-HS1 floor"), ("handshake", "SIGMA-like floor"),
            ("handshake", "rate, peer receiving many, 1 core"), ("handshake", "host parallelism now"),
            ("introductions", "rate through one server"), ("connect", "connect to first echo p50"),
            ("channel", "throughput 1 KiB"), ("channel", "throughput 16 KiB"), ("channel", "throughput 64 KiB"),
            ("roundtrip", "64-byte round trip p50"), ("roundtrip", "raw socketpair ping-pong p50"),
            ("memory", "server bytes per peer"), ("memory", "peer peak RSS"), ("memory", "peer bytes per open channel"),
        ] {
            let f = try #require(figure(group, name), "missing \(group): \(name)")
            #expect((f["value"] as? Double).map { $0 > 0 } == true, "\(group): \(name)")
        }
        for (group, name) in [
            ("handshake", "latency p50 warm"), ("handshake", "latency p50 cold"), ("introductions", "rate"),
            ("connect", "connect to first echo p50"), ("channel", "throughput 64 KiB"), ("channel", "throughput 1 KiB"),
            ("roundtrip", "64-byte round trip p50"),
        ] {
            let f = try #require(figure(group, name))
            #expect(f["baseline"] is Double && f["ratio"] is Double && f["target"] is Double && f["meets_target"] is Bool,
                    "\(group): \(name) lacks its baseline, ratio or target")
        }
        // On a machine with several cores the all-cores rate is judged against the one-core rate.
        if ProcessInfo.processInfo.activeProcessorCount >= 2 {
            let f = try #require(figures.first { ($0["name"] as? String)?.hasPrefix("rate, peer receiving many, \(ProcessInfo.processInfo.activeProcessorCount) cores") == true })
            #expect(f["baseline"] is Double)
            #expect(f["target"] as? Double == 1.7)
        }
    }
}
