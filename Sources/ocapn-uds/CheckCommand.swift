import ArgumentParser
import Check
import Foundation
import Identity
import OCapN
import Transport

/// `ocapn-uds check`: conformance and attack checks against any OCapN unix-socket introduction
/// server or peer (docs/CHECK.md).
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Check an introduction server or a peer for the known weaknesses of the netlayer.",
        discussion: """
            Prints one row per check (status, severity, id, evidence) and a summary line, or with \
            --json one JSON object (format ocapn-uds-check/1, docs/CHECK.md).

            Exit status:
              0  nothing FAILed (PASS, WARN and SKIP rows only)
              1  at least one check FAILed
              2  usage error
              3  the target cannot be reached
            """,
        subcommands: [CheckServerCommand.self, CheckPeerCommand.self]
    )
}

/// Options every check subcommand shares.
struct CheckOutputOptions: ParsableArguments {
    @Flag(help: "Print the report as JSON (format ocapn-uds-check/1) instead of a table.")
    var json = false

    @Option(help: ArgumentHelp(
        "How long a probe waits for what a correct target does not do (forward, answer); waits for what it does end as soon as it happens, at most 3x this. In milliseconds.",
        valueName: "ms"))
    var timeoutMs: Int = 2000

    func validateShared() throws {
        guard (50...60_000).contains(timeoutMs) else { throw ValidationError("--timeout-ms is 50...60000") }
    }

    /// Runs the probes (SIGPIPE ignored: a target closing on us is a finding, not our death),
    /// then prints the report; a run that could not happen is exit 1 or 3.
    func run(_ probes: () throws(CheckError) -> CheckReport) throws {
        ProcessSignals.ignoreBrokenPipe()
        let report: CheckReport
        do { report = try probes() } catch { throw Self.failure(error) }
        try finish(report)
    }

    /// Prints `report` and exits 0 or 1.
    private func finish(_ report: CheckReport) throws {
        if json {
            FileHandle.standardOutput.write(Data(report.json().utf8))
        } else {
            let colour = StandardStreams.outputIsTerminal && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
            FileHandle.standardOutput.write(Data(report.table(colour: colour).utf8))
        }
        if report.exitStatus != 0 { throw ExitCode(report.exitStatus) }
    }

    static func failure(_ error: CheckError) -> CLIError {
        switch error.code {
        case .unreachable: return CLIError(.refused, "target unreachable: \(error.detail)")  // exit 3
        case .invalidArgument: return CLIError(.usage, error.detail)
        case .localFailure: return CLIError(.failure, error.detail)
        }
    }
}

struct CheckServerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Probe the introduction server listening at PATH as clients with fresh identities.",
        discussion: """
            Works against any implementation (ours, Goblins', others). It registers throwaway \
            keys, sends malformed and hostile input, passes descriptors of the wrong kinds and \
            watches what the server forwards, holds and closes. Every probe is bounded in time, \
            descriptors and memory, and closes what it opened. A full run takes about \
            --expiry-wait-ms (the probes that wait for deadlines run beside the others).
            """
    )

    @Argument(help: ArgumentHelp("Socket path of the introduction server.", valueName: "PATH"))
    var path: String

    @OptionGroup var output: CheckOutputOptions

    @Option(help: ArgumentHelp("Run only these checks: ids or catalog rows, comma-separated (e.g. E2,A3.extra-descriptors).", valueName: "IDS"))
    var only: String?

    @Option(help: ArgumentHelp("How long the deadline checks (F1) wait for the server to drop a client, in milliseconds.", valueName: "ms"))
    var deadlineWaitMs: Int = 8000

    @Option(help: ArgumentHelp("How long F6.pending-expiry waits for a held introduction to be dropped, in milliseconds.", valueName: "ms"))
    var expiryWaitMs: Int = 15000

    func validate() throws {
        guard !path.isEmpty else { throw ValidationError("PATH must name a socket") }
        try output.validateShared()
        for (name, value) in [("--deadline-wait-ms", deadlineWaitMs), ("--expiry-wait-ms", expiryWaitMs)] where !(100...600_000).contains(value) {
            throw ValidationError("\(name) is 100...600000")
        }
        if let only { _ = try selection(only) }
    }

    private func selection(_ only: String) throws -> [CheckDefinition] {
        do { return try CheckDefinition.select(only.split(separator: ",").map(String.init), from: ServerChecker.checks) } catch {
            throw ValidationError(error.detail)
        }
    }

    func run() throws {
        var options = ServerCheckOptions()
        options.timeout = .milliseconds(output.timeoutMs)
        options.deadlineWait = .milliseconds(deadlineWaitMs)
        options.expiryWait = .milliseconds(expiryWaitMs)
        let checks = try only.map(selection) ?? ServerChecker.checks
        try output.run { () throws(CheckError) in try ServerChecker(path: path, options: options).run(checks) }
    }
}

struct CheckPeerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer",
        abstract: "Probe the peer at LOCATOR through the introduction server at --server.",
        discussion: """
            Registers a fresh identity at the server and has it pass the peer one end of a fresh \
            socketpair per probe; on the other end it plays a correct or hostile UDS-HS1 \
            initiator: plaintext or UDS-HS1, msg1 by a key other than `from`, addressed to another \
            key, reflected, replayed, with a low-order ephemeral, bad and truncated frames, no \
            handshake at all; then whether the peer is still reachable. LOCATOR is an \
            ocapn://….unix-domain-socket URI or a bare designator.
            """
    )

    @Argument(help: ArgumentHelp("The peer: an ocapn:// URI or a 52-character designator.", valueName: "LOCATOR"))
    var locator: String

    @Option(help: ArgumentHelp("Socket path of an introduction server the peer is registered with.", valueName: "path"))
    var server: String

    @OptionGroup var output: CheckOutputOptions

    @Option(help: ArgumentHelp("Run only these checks: ids or catalog rows, comma-separated.", valueName: "IDS"))
    var only: String?

    @Option(help: ArgumentHelp("How long F6.handshake-deadline waits for the peer to drop a silent initiator, in milliseconds.", valueName: "ms"))
    var deadlineWaitMs: Int = 12000

    func validate() throws {
        guard !server.isEmpty else { throw ValidationError("--server must name a socket path") }
        try output.validateShared()
        guard (100...600_000).contains(deadlineWaitMs) else { throw ValidationError("--deadline-wait-ms is 100...600000") }
        _ = try target()
        if let only { _ = try selection(only) }
    }

    private func target() throws -> PeerLocator {
        if let locator = try? PeerLocator(uri: locator) { return locator }
        if let identity = try? PublicIdentity(designator: locator) { return PeerLocator(identity: identity) }
        throw ValidationError("LOCATOR must be an ocapn://DESIGNATOR.unix-domain-socket URI or a designator")
    }

    private func selection(_ only: String) throws -> [CheckDefinition] {
        do { return try CheckDefinition.select(only.split(separator: ",").map(String.init), from: PeerChecker.checks) } catch {
            throw ValidationError(error.detail)
        }
    }

    func run() throws {
        var options = PeerCheckOptions()
        options.timeout = .milliseconds(output.timeoutMs)
        options.deadlineWait = .milliseconds(deadlineWaitMs)
        let checks = try only.map(selection) ?? PeerChecker.checks
        let checker = PeerChecker(target: try target(), serverPath: server, options: options)
        try output.run { () throws(CheckError) in try checker.run(checks) }
    }
}
