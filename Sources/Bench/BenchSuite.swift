import Foundation

/// Every figure of issue #6, each next to its baseline measured in the same run.
public struct BenchSuite {
    public struct Options: Sendable {
        /// Fewer iterations: proves every figure is produced (CI), numbers are rough.
        public var quick: Bool
        public var progress: (@Sendable (String) -> Void)?

        public init(quick: Bool = false, progress: (@Sendable (String) -> Void)? = nil) {
            self.quick = quick
            self.progress = progress
        }
    }

    public let options: Options

    public init(options: Options) { self.options = options }

    private func say(_ s: String) { options.progress?(s) }

    public func run() throws -> [BenchFigure] {
        var figures: [BenchFigure] = []
        figures += try handshake()
        figures += try channelThroughput()
        return figures
    }

    /// 1. Handshake latency and rate against the crypto floor.
    func handshake() throws -> [BenchFigure] {
        say("handshake: timing the libsodium operations of one handshake (crypto floor)")
        let floor = Baselines.cryptoFloor(iterations: options.quick ? 50 : 400)
        say("handshake: UDS-HS1 over a socketpair")
        let r = try HandshakeBench.run(count: options.quick ? 50 : 2000)
        let floorMicros = floor.handshakeNanos / 1000
        return [
            BenchFigure(group: "handshake", name: "latency p50", unit: "µs", value: r.latencies.median / 1000,
                        baselineName: "crypto floor", baseline: floorMicros, direction: .lowerIsBetter, target: 1.3),
            BenchFigure(group: "handshake", name: "latency p99", unit: "µs", value: r.latencies.percentile(99) / 1000,
                        baselineName: "crypto floor", baseline: floorMicros, direction: .lowerIsBetter),
            BenchFigure(group: "handshake", name: "rate", unit: "handshakes/s", value: r.handshakesPerSecond,
                        baselineName: "crypto floor", baseline: 1e9 / floor.handshakeNanos, direction: .higherIsBetter),
        ]
    }

    /// 4. Channel throughput at 1, 16 and 64 KiB against a raw socketpair and raw ChaCha20-Poly1305.
    func channelThroughput() throws -> [BenchFigure] {
        var out: [BenchFigure] = []
        let total = options.quick ? 8 << 20 : 256 << 20
        for size in [1 << 10, 16 << 10, 64 << 10] {
            let label = "\(size >> 10) KiB"
            say("channel: \(label) messages")
            let raw = try Baselines.socketpairThroughput(messageSize: size, totalBytes: total)
            let aead = Baselines.aeadThroughput(messageSize: size, totalBytes: total / 4)
            let ours = try ChannelBench.throughput(messageSize: size, totalBytes: total)
            let slower = min(raw, aead)
            let gb = 1e9
            out.append(BenchFigure(group: "channel", name: "throughput \(label)", unit: "GB/s", value: ours / gb,
                                   baselineName: raw < aead ? "raw socketpair" : "raw ChaCha20-Poly1305",
                                   baseline: slower / gb, direction: .higherIsBetter, target: size == 64 << 10 ? 0.8 : nil))
            out.append(BenchFigure(group: "channel", name: "raw socketpair \(label)", unit: "GB/s", value: raw / gb))
            out.append(BenchFigure(group: "channel", name: "raw ChaCha20-Poly1305 \(label)", unit: "GB/s", value: aead / gb))
        }
        return out
    }
}
