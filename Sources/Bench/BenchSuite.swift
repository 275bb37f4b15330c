import Foundation

/// Every figure of issue #6, each next to its baseline measured in the same run.
public struct BenchSuite {
    public struct Options: Sendable {
        /// Fewer iterations: proves every figure is produced (CI), numbers are rough.
        public var quick: Bool
        /// Only these groups (handshake, introductions, connect, channel, memory); empty: all.
        public var only: Set<String>
        public var progress: (@Sendable (String) -> Void)?

        public init(quick: Bool = false, only: Set<String> = [], progress: (@Sendable (String) -> Void)? = nil) {
            self.quick = quick
            self.only = only
            self.progress = progress
        }
    }

    public let options: Options

    public init(options: Options) { self.options = options }

    /// The figure groups, in the order they run.
    public static let groups = ["handshake", "introductions", "connect", "channel", "roundtrip", "memory", "audit"]

    private func say(_ s: String) { options.progress?(s) }

    public func run() async throws -> [BenchFigure] {
        var figures: [BenchFigure] = []
        let directory = try makeDirectory()
        defer { if ProcessInfo.processInfo.environment["OCAPN_BENCH_KEEP"] == nil { try? FileManager.default.removeItem(atPath: directory) } }
        func wanted(_ group: String) -> Bool { options.only.isEmpty || options.only.contains(group) }
        if wanted("handshake") { figures += try handshake() }
        if wanted("introductions") { figures += try introductions(directory: directory) }
        if wanted("connect") { figures += try await connect(directory: directory) }
        if wanted("channel") { figures += try await channelThroughput() }
        if wanted("roundtrip") { figures += try await roundTrip(directory: directory) }
        if wanted("memory") {
            figures += try serverMemory(directory: directory)
            figures += try await peerMemory(directory: directory)
        }
        if wanted("audit") {
            figures.append(try AuditBench.figure(count: options.quick ? 500 : 20_000, window: 32, directory: directory, say: say))
        }
        return figures
    }

    /// A private scratch directory for sockets and keys (short path: sun_path is 108 bytes).
    private func makeDirectory() throws -> String {
        var template = Array("/tmp/ocapn-bench-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw BenchError("cannot create a temporary directory") }
        return String(cString: p)
    }

    /// 2. Introductions per second through one server against raw descriptor passing.
    func introductions(directory: String) throws -> [BenchFigure] {
        let count = options.quick ? 500 : 20_000
        let window = Int(ProcessInfo.processInfo.environment["OCAPN_BENCH_WINDOW"] ?? "") ?? 32
        say("introductions: raw descriptor passing (\(count), \(window) in flight)")
        let raw = try IntroductionBench.raw(count: count, window: window)
        say("introductions: through the introduction server")
        let ours = try IntroductionBench.ours(count: count, window: window, directory: directory)
        say("introductions: raw descriptor passing with the record")
        let rawRecord = try IntroductionBench.raw(count: count, window: window, record: IntroductionBench.sampleRecord())
        return [
            BenchFigure(group: "introductions", name: "rate through one server", unit: "intros/s", value: ours,
                        baselineName: "raw fd passing", baseline: raw, direction: .higherIsBetter, target: 0.8),
            // The same, against a relay that moves the record too (A writes it, the relay reads
            // and writes it, the target reads it): the bytes an introduction needs, without
            // Syrup or checks. Informational: the target is against the marker alone.
            BenchFigure(group: "introductions", name: "rate through one server vs record relay", unit: "intros/s", value: ours,
                        baselineName: "raw fd passing + record", baseline: rawRecord, direction: .higherIsBetter),
        ]
    }

    /// 3. Connect latency, end to end through real processes, against what its parts cost on
    /// this machine: one raw introduction round trip plus the handshake's crypto floor.
    func connect(directory: String) async throws -> [BenchFigure] {
        let count = options.quick ? 30 : 1000
        say("connect: raw introduction round trip and crypto floor (the baseline)")
        let rawRate = try IntroductionBench.raw(count: options.quick ? 200 : 2000, window: 1)
        let floor = Baselines.cryptoFloor(iterations: options.quick ? 50 : 400)
        let baselineMicros = 1e6 / rawRate + floor.handshakeNanos / 1000
        say("connect: \(count) sequential connects to an echo peer process, through an intro-server process")
        let bench = PeerBench(directory: directory, executable: Self.executablePath)
        defer { bench.stop() }
        try bench.start()
        let samples = try await bench.connectLatencies(count: count)
        return [
            BenchFigure(group: "connect", name: "connect to first echo p50", unit: "µs", value: samples.median / 1000,
                        baselineName: "raw intro RTT + crypto floor", baseline: baselineMicros, direction: .lowerIsBetter,
                        target: 1.5),
            BenchFigure(group: "connect", name: "connect to first echo p99", unit: "µs", value: samples.percentile(99) / 1000,
                        baselineName: "raw intro RTT + crypto floor", baseline: baselineMicros, direction: .lowerIsBetter),
        ]
    }

    /// The soak (`bench --soak SECONDS`): channels opened, used and closed at rate with fresh
    /// registrations, for `seconds`; descriptors and RSS of the server and the echo peer after
    /// the first tenth (warm-up) against the end.
    public func soak(seconds: Int) async throws -> [BenchFigure] {
        let directory = try makeDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let r = try await SoakBench.run(seconds: seconds, directory: directory, executable: Self.executablePath) { say($0) }
        guard let last = r.samples.last, r.samples.count >= 3 else { throw BenchError("soak too short to sample") }
        let warm = r.samples.first { $0.seconds >= Double(seconds) / 10 } ?? r.samples[1]
        let mib = 1_048_576.0
        return [
            BenchFigure(group: "soak", name: "channels opened and closed", unit: "channels/s", value: Double(r.channels) / r.elapsed),
            BenchFigure(group: "soak", name: "registrations", unit: "count", value: Double(r.registrations)),
            BenchFigure(group: "soak", name: "duration", unit: "s", value: r.elapsed),
            BenchFigure(group: "soak", name: "server descriptors at end", unit: "fds", value: Double(last.serverDescriptors),
                        baselineName: "after warm-up", baseline: Double(warm.serverDescriptors), direction: .lowerIsBetter, target: 1.0),
            BenchFigure(group: "soak", name: "peer descriptors at end", unit: "fds", value: Double(last.peerDescriptors),
                        baselineName: "after warm-up", baseline: Double(warm.peerDescriptors), direction: .lowerIsBetter, target: 1.0),
            BenchFigure(group: "soak", name: "server RSS at end", unit: "MiB", value: Double(last.serverRSS) / mib,
                        baselineName: "after warm-up", baseline: Double(warm.serverRSS) / mib, direction: .lowerIsBetter, target: 1.1),
            BenchFigure(group: "soak", name: "peer RSS at end", unit: "MiB", value: Double(last.peerRSS) / mib,
                        baselineName: "after warm-up", baseline: Double(warm.peerRSS) / mib, direction: .lowerIsBetter, target: 1.1),
        ]
    }

    /// 6. A 64-byte message round trip over an open channel between this process and the echo
    /// peer process, against what its parts cost here: a raw socketpair ping-pong plus the two
    /// seals and two opens the round trip needs.
    func roundTrip(directory: String) async throws -> [BenchFigure] {
        let count = options.quick ? 200 : 20_000
        let size = 64
        say("roundtrip: raw socketpair ping-pong and seal/open cost (the baseline)")
        let raw = try Baselines.socketpairPingPong(messageSize: size, count: count)
        let crypto = Baselines.sealAndOpenNanos(messageSize: size, iterations: options.quick ? 1000 : 20_000)
        let baselineMicros = (raw.median + 2 * crypto) / 1000
        say("roundtrip: \(count) sequential 64-byte round trips to an echo peer process")
        let bench = PeerBench(directory: directory, executable: Self.executablePath)
        defer { bench.stop() }
        try bench.start()
        let samples = try await bench.roundTrips(size: size, count: count)
        say("roundtrip: the same through send and receive() (a continuation per message)")
        let asyncSamples = try await bench.asyncRoundTrips(size: size, count: count)
        return [
            BenchFigure(group: "roundtrip", name: "64-byte round trip p50", unit: "µs", value: samples.median / 1000,
                        baselineName: "raw ping-pong + 2 seals + 2 opens", baseline: baselineMicros, direction: .lowerIsBetter,
                        target: 2),
            BenchFigure(group: "roundtrip", name: "64-byte round trip p99", unit: "µs", value: samples.percentile(99) / 1000,
                        baselineName: "raw ping-pong + 2 seals + 2 opens", baseline: baselineMicros, direction: .lowerIsBetter),
            BenchFigure(group: "roundtrip", name: "64-byte round trip p50, async receive()", unit: "µs", value: asyncSamples.median / 1000,
                        baselineName: "raw ping-pong + 2 seals + 2 opens", baseline: baselineMicros, direction: .lowerIsBetter),
            BenchFigure(group: "roundtrip", name: "raw socketpair ping-pong p50", unit: "µs", value: raw.median / 1000),
            BenchFigure(group: "roundtrip", name: "seal + open of one 64-byte frame", unit: "µs", value: crypto / 1000),
        ]
    }

    /// 5b. Peak memory of a peer process holding open channels.
    func peerMemory(directory: String) async throws -> [BenchFigure] {
        let channels = options.quick ? 100 : 1000
        say("memory: a peer process holding \(channels) open channels")
        let bench = PeerBench(directory: directory, executable: Self.executablePath)
        defer { bench.stop() }
        try bench.start()
        let r = try await bench.peerMemory(channels: channels)
        return [
            BenchFigure(group: "memory", name: "peer peak RSS, \(channels) open channels", unit: "MiB",
                        value: Double(r.peak) / 1_048_576, baselineName: "peer RSS, no channel",
                        baseline: Double(r.before) / 1_048_576, direction: .lowerIsBetter),
            BenchFigure(group: "memory", name: "peer bytes per open channel", unit: "KiB",
                        value: Double(r.holding - r.before) / Double(channels) / 1024, direction: .lowerIsBetter,
                        target: 12),
        ]
    }

    /// 5a. Server memory per registered peer.
    func serverMemory(directory: String) throws -> [BenchFigure] {
        let counts = options.quick ? [100, 1000] : [1000, 10_000]
        say("memory: registering \(counts.map(String.init).joined(separator: " then ")) peers with an intro-server process")
        let r = try MemoryBench.serverRSS(counts: counts, directory: directory, executable: Self.executablePath)
        var out: [BenchFigure] = []
        for (peers, rss) in r.points {
            let perPeer = Double(rss - r.baselineRSS) / Double(peers)
            out.append(BenchFigure(group: "memory", name: "server RSS, \(peers) peers", unit: "MiB",
                                   value: Double(rss) / 1_048_576, baselineName: "server RSS, 0 peers",
                                   baseline: Double(r.baselineRSS) / 1_048_576, direction: .lowerIsBetter))
            out.append(BenchFigure(group: "memory", name: "server bytes per peer (\(peers) peers)", unit: "KiB",
                                   value: perPeer / 1024, direction: .lowerIsBetter,
                                   target: peers >= 10_000 ? 6.5 : nil))
        }
        return out
    }

    /// This executable (the benchmark spawns it as `intro-server` and `peer`).
    static var executablePath: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }

    /// 1. Handshake latency (cold, warm, and uncached as before the precomputations) against the
    /// uncached UDS-HS1 crypto floor and a SIGMA-like floor, and handshakes per second on one
    /// core and on all cores for a peer receiving many (issue #16).
    func handshake() throws -> [BenchFigure] {
        say("handshake: timing the libsodium operations of one handshake (uncached and SIGMA-like floors)")
        let floors = HandshakeBench.floors(runs: options.quick ? 20 : 200)
        let count = options.quick ? 50 : 2000
        say("handshake: UDS-HS1 over a socketpair, warm (same two keys), cold (new key each time), uncached")
        let warm = try HandshakeBench.run(count: count, mode: .warm)
        let cold = try HandshakeBench.run(count: count / 2, mode: .cold)
        let uncached = try HandshakeBench.run(count: count / 2, mode: .uncached)
        let floor = floors.uncached / 1000, sigma = floors.sigma / 1000
        let cores = max(1, ProcessInfo.processInfo.activeProcessorCount)
        let seconds = options.quick ? 0.3 : 3.0
        say("handshake: a peer receiving many, 1 thread and \(cores) threads, alternating")
        let (responder, initiators) = try HandshakeBench.peerReceivingMany(initiators: 64)
        // Other tenants come and go: alternate the two configurations and keep the best of each,
        // with the host's X25519 parallelism measured the same way beside them.
        var one = 0.0, all = 0.0, dhOne = 0.0, dhAll = 0.0
        for _ in 0..<(options.quick ? 1 : 3) {
            dhOne = max(dhOne, HandshakeBench.dhRate(threads: 1, seconds: seconds / 6))
            dhAll = max(dhAll, HandshakeBench.dhRate(threads: cores, seconds: seconds / 6))
            one = max(one, try HandshakeBench.rate(threads: 1, seconds: seconds / 3, responder: responder, initiators: initiators))
            all = max(all, try HandshakeBench.rate(threads: cores, seconds: seconds / 3, responder: responder, initiators: initiators))
        }
        let parallelDH = dhAll / dhOne
        let µs = { (s: Samples, p: Double) in s.percentile(p) / 1000 }
        return [
            BenchFigure(group: "handshake", name: "latency p50 warm", unit: "µs", value: µs(warm.latencies, 50),
                        baselineName: "uncached UDS-HS1 floor", baseline: floor, direction: .lowerIsBetter, target: 0.75),
            BenchFigure(group: "handshake", name: "latency p99 warm", unit: "µs", value: µs(warm.latencies, 99),
                        baselineName: "uncached UDS-HS1 floor", baseline: floor, direction: .lowerIsBetter),
            BenchFigure(group: "handshake", name: "latency p50 cold", unit: "µs", value: µs(cold.latencies, 50),
                        baselineName: "uncached handshake p50", baseline: µs(uncached.latencies, 50), direction: .lowerIsBetter, target: 1.0),
            BenchFigure(group: "handshake", name: "latency p99 cold", unit: "µs", value: µs(cold.latencies, 99),
                        baselineName: "uncached handshake p99", baseline: µs(uncached.latencies, 99), direction: .lowerIsBetter),
            BenchFigure(group: "handshake", name: "latency p50 uncached (before #16)", unit: "µs", value: µs(uncached.latencies, 50),
                        baselineName: "uncached UDS-HS1 floor", baseline: floor, direction: .lowerIsBetter),
            BenchFigure(group: "handshake", name: "latency p50 warm vs SIGMA-like", unit: "µs", value: µs(warm.latencies, 50),
                        baselineName: "SIGMA-like floor", baseline: sigma, direction: .lowerIsBetter),
            BenchFigure(group: "handshake", name: "uncached UDS-HS1 floor", unit: "µs", value: floor),
            BenchFigure(group: "handshake", name: "SIGMA-like floor", unit: "µs", value: sigma),
            BenchFigure(group: "handshake", name: "rate, peer receiving many, 1 core", unit: "handshakes/s", value: one,
                        baselineName: "uncached floor", baseline: 1e9 / floors.uncached, direction: .higherIsBetter),
            BenchFigure(group: "handshake", name: "rate, peer receiving many, \(cores) cores", unit: "handshakes/s", value: all,
                        baselineName: "same, 1 core", baseline: one, direction: .higherIsBetter, target: cores >= 2 ? 1.7 : nil),
            BenchFigure(group: "handshake", name: "host parallelism now (X25519, \(cores) threads / 1)", unit: "×", value: parallelDH),
            // 1.0: the handshakes scale exactly as far as the host lets raw X25519 scale (no
            // serialisation of ours); below: something of ours serialises them.
            BenchFigure(group: "handshake", name: "rate scaling / host parallelism", unit: "×", value: (all / one) / parallelDH),
        ]
    }

    /// 4. Channel throughput at 1, 16 and 64 KiB against a raw socketpair and raw ChaCha20-Poly1305.
    /// The target applies to the runtime channel (`PeerChannel`, what applications use) with
    /// the receiver on the fast path (`deliver(to:)`); the same through `receive()` is the
    /// second figure. The sans-IO framing driven by two plain threads is shown too, to separate
    /// protocol cost from the runtime's scheduling.
    func channelThroughput() async throws -> [BenchFigure] {
        if let part = ProcessInfo.processInfo.environment["OCAPN_BENCH_CHANNEL_PROFILE"] {
            return try await channelPartForProfiling(part)
        }
        var out: [BenchFigure] = []
        let total = options.quick ? 8 << 20 : 256 << 20
        for size in [1 << 10, 16 << 10, 64 << 10] {
            let label = "\(size >> 10) KiB"
            say("channel: \(label) messages")
            let raw = try Baselines.socketpairThroughput(messageSize: size, totalBytes: total)
            // The targets stay against libsodium's AEAD, the baseline issue #9 set them on; the
            // channel seals with BoringSSL's since, whose raw figure is shown beside it.
            let aead = Baselines.aeadThroughput(messageSize: size, totalBytes: total / 4, implementation: .libsodium)
            let channelAEAD = Baselines.aeadThroughput(messageSize: size, totalBytes: total / 4, implementation: .boringSSL)
            let runtime = try await RuntimeChannelBench.throughput(messageSize: size, totalBytes: total, receiving: .handler)
            let runtimeAsync = try await RuntimeChannelBench.throughput(messageSize: size, totalBytes: total, receiving: .asyncReceive)
            let framing = try ChannelBench.throughput(messageSize: size, totalBytes: total)
            // The 64 KiB target is set against the raw AEAD (issue #9): a raw socketpair run
            // that came out slow (it has, at 0.8 GB/s against its usual 4-5) must not stand in.
            let againstAEAD = size == 64 << 10 || aead < raw
            let slower = againstAEAD ? aead : raw
            let slowerName = againstAEAD ? "raw ChaCha20-Poly1305 (libsodium)" : "raw socketpair"
            let gb = 1e9
            out.append(BenchFigure(group: "channel", name: "throughput \(label)", unit: "GB/s", value: runtime / gb,
                                   baselineName: slowerName, baseline: slower / gb, direction: .higherIsBetter,
                                   target: size == 64 << 10 ? 0.9 : size == 1 << 10 ? 0.6 : nil))
            if size >= 16 << 10 {
                out.append(BenchFigure(group: "channel", name: "throughput \(label) against the channel's AEAD", unit: "GB/s", value: runtime / gb,
                                       baselineName: "raw ChaCha20-Poly1305 (BoringSSL)", baseline: channelAEAD / gb, direction: .higherIsBetter))
            }
            out.append(BenchFigure(group: "channel", name: "throughput \(label), async receive()", unit: "GB/s", value: runtimeAsync / gb,
                                   baselineName: slowerName, baseline: slower / gb, direction: .higherIsBetter))
            if size == 1 << 10 {
                let batched = try await RuntimeChannelBench.throughput(
                    messageSize: size, totalBytes: total, receiving: .handler, batch: Self.streamingBatch)
                out.append(BenchFigure(group: "channel", name: "throughput \(label), send(contentsOf:) \(Self.streamingBatch) at a time",
                                       unit: "GB/s", value: batched / gb, baselineName: slowerName, baseline: slower / gb,
                                       direction: .higherIsBetter))
            }
            out.append(BenchFigure(group: "channel", name: "framing only, 2 threads \(label)", unit: "GB/s", value: framing / gb,
                                   baselineName: slowerName, baseline: slower / gb, direction: .higherIsBetter))
            out.append(BenchFigure(group: "channel", name: "raw socketpair \(label)", unit: "GB/s", value: raw / gb))
            out.append(BenchFigure(group: "channel", name: "raw ChaCha20-Poly1305 (libsodium) \(label)", unit: "GB/s", value: aead / gb))
            out.append(BenchFigure(group: "channel", name: "raw ChaCha20-Poly1305 (BoringSSL) \(label)", unit: "GB/s", value: channelAEAD / gb))
        }
        return out
    }

    /// Messages per `send(contentsOf:)` in the streaming figure: 16 KiB of 1 KiB messages, what
    /// a stream writer collecting for a moment would hand over.
    static let streamingBatch = 16

    /// A profiling aid, not a figure of the report: `OCAPN_BENCH_CHANNEL_PROFILE=PART:KIB`
    /// (PART `runtime`, `async`, `framing` or `batch`) runs only that part of the channel group at that
    /// message size, so `perf stat` / `perf record` of the process see it alone.
    private func channelPartForProfiling(_ spec: String) async throws -> [BenchFigure] {
        let fields = spec.split(separator: ":")
        guard fields.count == 2, let kib = Int(fields[1]), kib > 0 else {
            throw BenchError("OCAPN_BENCH_CHANNEL_PROFILE must be runtime|async|framing|batch:KIB")
        }
        let size = kib << 10, total = options.quick ? 8 << 20 : 256 << 20
        let value: Double
        switch fields[0] {
        case "runtime": value = try await RuntimeChannelBench.throughput(messageSize: size, totalBytes: total, receiving: .handler)
        case "async": value = try await RuntimeChannelBench.throughput(messageSize: size, totalBytes: total, receiving: .asyncReceive)
        case "framing": value = try ChannelBench.throughput(messageSize: size, totalBytes: total)
        case "batch":
            value = try await RuntimeChannelBench.throughput(messageSize: size, totalBytes: total, receiving: .handler, batch: Self.streamingBatch)
        default: throw BenchError("OCAPN_BENCH_CHANNEL_PROFILE must be runtime|async|framing|batch:KIB")
        }
        return [BenchFigure(group: "channel", name: "profiling only: \(fields[0]) \(kib) KiB", unit: "GB/s", value: value / 1e9)]
    }
}
