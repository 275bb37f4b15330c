import ArgumentParser
import Bench
import Foundation
import Transport

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure handshakes, introductions, connects, channel throughput and memory against in-run baselines.",
        discussion: """
            Every figure is printed next to the baseline measured in the same run (the libsodium \
            operations a handshake needs, raw fd passing, a raw socketpair, raw ChaCha20-Poly1305) \
            and the ratio between them; figures with a target say whether it is met. Build in \
            release mode for meaningful numbers (`make bench`). On a shared machine compare ratios, \
            not absolute times.

            Exit status: 0 when every figure was produced (targets missed are reported, not fatal), \
            1 when a measurement could not run.
            """
    )

    @Flag(help: "Few iterations: checks that every figure is produced (used by CI).")
    var quick = false

    @Flag(help: "Print one JSON object with every figure and ratio instead of the table.")
    var json = false

    @Option(name: .long, parsing: .upToNextOption, help: "Only these figure groups: \(BenchSuite.groups.joined(separator: ", ")).")
    var only: [String] = []

    @Option(help: "Run the soak instead: channels and registrations at rate for SECONDS, descriptors and RSS sampled.")
    var soak: Int?

    func validate() throws {
        if let soak, !(10...86_400).contains(soak) { throw ValidationError("--soak takes 10...86400 seconds") }
        for g in only where !BenchSuite.groups.contains(g) {
            throw ValidationError("unknown figure group '\(g)'; groups are: \(BenchSuite.groups.joined(separator: ", "))")
        }
    }

    func run() async throws {
        // The baselines write to sockets with plain write(2): a reader that ends early must cost
        // an EPIPE, not the process.
        ProcessSignals.ignoreBrokenPipe()
        let suite = BenchSuite(options: .init(quick: quick, only: Set(only), progress: { line in
            FileHandle.standardError.write(Data("bench: \(line)\n".utf8))
        }))
        let figures: [BenchFigure]
        do {
            if let soak {
                figures = try await suite.soak(seconds: soak)
            } else {
                figures = try await suite.run()
            }
        } catch {
            throw CLIError(.failure, "benchmark failed: \(error)")
        }
        let machine = BenchReport.machineDescription()
        if json {
            print(BenchReport.json(figures, machine: machine))
        } else {
            print("machine: \(machine["cpu"] ?? "?"), \(machine["cores"] ?? "?") cores, \(machine["memory_gib"] ?? "?") GiB; \(machine["date"] ?? "")")
            print(BenchReport.table(figures), terminator: "")
        }
    }
}
