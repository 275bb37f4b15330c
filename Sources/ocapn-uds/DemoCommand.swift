import ArgumentParser
import Demo
import Dispatch
import Foundation
import Transport

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the whole product once: an introduction server, echo peers, handshakes, and two refused attacks.",
        discussion: """
            Everything happens in a new temporary directory (mode 0700): fresh identities, an \
            `ocapn-uds intro-server` process, --peers `ocapn-uds peer` processes, and this process \
            as a client peer that opens --connections channels through the server (handshake, \
            --messages echoed messages, authenticated close). Then a registered peer lies about \
            `from` (the server refuses it) and a lying introduction server hands a peer a socket \
            it holds itself (the peer's handshake refuses it). Prints progress, a summary with \
            latencies and reason codes, and the audit summary. Processes, sockets and key files \
            are removed at the end; the logs and audit trails stay in the directory for \
            `ocapn-uds audit`, and the last line names it. Ctrl-C stops the connections at once, \
            stops the server and peers, seals every audit log and prints one line naming the \
            directory (exit 130).

            With large --peers/--connections it doubles as a load generator.

            Exit status: 0 every connection worked and both attacks were refused; 1 otherwise.
            """
    )

    @Option(help: "Echo peers to start (separate processes).")
    var peers = 4

    @Option(help: "Connections to open from the client, round-robin over the peers.")
    var connections = 12

    @Option(help: "Messages echoed on each connection.")
    var messages = 5

    @Option(help: "Connections in flight at once.")
    var concurrency = 4

    @Flag(help: "Keep the generated key files in the directory too.")
    var keepKeys = false

    func validate() throws {
        guard (2...1000).contains(peers) else { throw ValidationError("--peers must be 2...1000") }
        guard (1...1_000_000).contains(connections) else { throw ValidationError("--connections must be 1...1000000") }
        guard (1...100_000).contains(messages) else { throw ValidationError("--messages must be 1...100000") }
        guard (1...1000).contains(concurrency) else { throw ValidationError("--concurrency must be 1...1000") }
    }

    func run() async throws {
        ProcessSignals.ignoreBrokenPipe()
        var options = Demo.Options(executable: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        options.peers = peers
        options.connections = connections
        options.messages = messages
        options.concurrency = concurrency
        options.keepKeys = keepKeys
        // Each progress line goes out as it happens, also into a pipe.
        let demo = Demo(options: options) { print("demo: \($0)"); fflush(nil) }
        // Ctrl-C / SIGTERM: the notice, then quiet: stop the loops and the children, seal every
        // audit log, remove keys and sockets, one line naming the logs, exit 130.
        let signals = TerminationSignals { _ in
            guard !demo.isStopping else { return }
            let directory = demo.interrupt {
                print("demo: interrupted; stopping the connections, the server and the peers")
                fflush(nil)
            }
            print(directory.isEmpty ? "demo: stopped before creating its directory"
                  : "demo: stopped; logs and sealed audit trails are in \(directory)")
            fflush(nil)
            Foundation.exit(130)
        }
        defer { signals.cancel() }
        let summary: Demo.Summary
        do {
            summary = try await demo.run()
        } catch {
            if demo.isStopping { await waitForever() }  // the signal handler ends the process
            throw CLIError(.failure, "demo failed: \(error)")
        }
        if demo.isStopping { await waitForever() }
        report(summary)
        if !summary.succeeded { throw ExitCode(CLIExitCode.failure.rawValue) }
    }

    /// Parks the main task while the signal handler finishes the interrupted run.
    private func waitForever() async -> Never {
        while true { try? await Task.sleep(for: .seconds(3600)) }
    }

    private func report(_ s: Demo.Summary) {
        let sorted = s.latenciesMicros.sorted()
        func pct(_ p: Double) -> String {
            guard !sorted.isEmpty else { return "n/a" }
            let i = min(sorted.count - 1, Int((p / 100 * Double(sorted.count - 1)).rounded()))
            return String(format: "%.0f µs", sorted[i])
        }
        print("")
        print("summary")
        print("  peers:            \(s.peers) echo peers + 1 client, 1 introduction server")
        let failed = s.handshakesFailed.values.reduce(0, +)
        let failText = failed == 0 ? "" : " (" + s.handshakesFailed.map { "\($0.key) ×\($0.value)" }.sorted().joined(separator: ", ") + ")"
        print("  handshakes:       \(s.handshakesSucceeded) succeeded, \(failed) failed\(failText)")
        print("  latency:          p50 \(pct(50)), p99 \(pct(99)) (connect to first echoed message)")
        print("  messages:         \(s.messagesEchoed) of \(s.messagesExpected) echoed")
        for r in s.refusals {
            print("  attack:           \(r.attack): \(r.refused ? "refused" : "NOT REFUSED")\(r.reason.map { " (\($0))" } ?? "")")
        }
        print("  elapsed:          \(String(format: "%.1f", s.elapsedSeconds)) s")
        let intact = s.auditVerification.filter { $0.status == "intact" }.count
        print("  audit chains:     \(intact) of \(s.auditVerification.count) intact and sealed (hash chain + signed checkpoints)")
        for v in s.auditVerification where v.status != "intact" { print("                    \(v.path): \(v.status)") }
        print("")
        print("audit summary of the introduction server (ocapn-uds audit \(s.auditLogs[0])):")
        print("(\"started\" counts attempts begun; names of the fingerprints are at the top)")
        let audit = Process()
        audit.executableURL = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        audit.arguments = ["audit", s.auditLogs[0]]
        fflush(nil)  // every stdio stream: our buffered lines go out before the child writes
        try? audit.run()
        audit.waitUntilExit()
        print("")
        print("demo: \(s.succeeded ? "OK" : "FAILED"); logs and audit trails are in \(s.directory)"
              + " (each log is a chain of its own: ocapn-uds audit --verify \(s.auditLogs[0]))")
    }
}
