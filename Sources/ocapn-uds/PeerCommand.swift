import ArgumentParser
import Audit
import Dispatch
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import SecureChannel
import Synchronization
import Transport

/// Options shared by `peer` and `connect`: identity, servers, handshake, legacy, audit, logs.
struct PeerOptions: ParsableArguments {
    @OptionGroup var key: IdentityOptions

    @Option(help: ArgumentHelp(
        "Introduction server socket (repeatable). PATH=DESIGNATOR pins the server's key; goblins:PATH or draft:PATH registers with a server that does not speak registration v2 (never chosen automatically).", valueName: "path"))
    var server: [String] = []

    @Option(help: ArgumentHelp(
        "Pin the key of the --server at the same position (repeatable, a 52-character designator).", valueName: "designator"))
    var serverKey: [String] = []

    @Option(help: "Handshake deadline, in milliseconds. Keep it above the servers' pending lifetime (intro-server --pending-lifetime-ms, 5000), so a dropped introduction is reported as such.")
    var handshakeTimeoutMs: Int = 10_000

    @Option(help: "Deadline for an introduction server's registration reply, in milliseconds.")
    var registrationTimeoutMs: Int = 5_000

    @Option(help: ArgumentHelp(
        "Admit Goblins peers (no handshake) as UNAUTHENTICATED channels when the server's unverified `from` claims one of these designators (repeatable or comma-separated), or `any`. Off by default. A key that completed UDS-HS1 with this peer is refused as legacy regardless.",
        valueName: "designators|any"))
    var allowLegacyPeers: [String] = []

    /// The legacy allow-list as a policy.
    func legacyPeerPolicy() throws -> LegacyPeerPolicy {
        let items = allowLegacyPeers.flatMap { $0.split(separator: ",").map(String.init) }
        if items.isEmpty { return .refuse }
        if items.contains("any") {
            guard items.count == 1 else { throw ValidationError("--allow-legacy-peers: `any` stands alone, without designators") }
            return .any
        }
        var keys: Set<PublicIdentity> = []
        for item in items {
            do { keys.insert(try PublicIdentity(designator: item)) } catch {
                throw ValidationError("--allow-legacy-peers: \(item) is neither `any` nor a designator (\(error.code.rawValue))")
            }
        }
        return .allow(keys)
    }

    @OptionGroup var audit: AuditLogOptions

    @Option(help: "Log level on stderr: debug, info, notice, warning, error.")
    var logLevel: String = "warning"

    /// The registration form a --server spec names (its `goblins:`/`draft:`/`v2:` mark) and
    /// the rest of the spec.
    static func registrationForm(_ spec: String) -> (form: RegistrationForm, rest: String) {
        for form in RegistrationForm.allCases where spec.hasPrefix("\(form.rawValue):") {
            return (form, String(spec.dropFirst(form.rawValue.count + 1)))
        }
        return (.v2, spec)
    }

    /// The registration form of each --server path that is not v2.
    func registrationForms() throws -> [String: RegistrationForm] {
        var out: [String: RegistrationForm] = [:]
        for ((path, _), spec) in zip(try servers(), server) {
            let form = Self.registrationForm(spec).form
            if let other = out[path], other != form {
                throw ValidationError("--server \(path) is marked with two registration forms")
            }
            if form != .v2 { out[path] = form }
        }
        return out
    }

    /// (path, pinned key) per --server, in order.
    func servers() throws -> [(path: String, key: PublicIdentity?)] {
        var out: [(String, PublicIdentity?)] = []
        for (index, spec) in server.enumerated() {
            let body = Self.registrationForm(spec).rest
            var path = body
            var key: PublicIdentity?
            if let eq = body.lastIndex(of: "="), body[body.index(after: eq)...].count == PublicIdentity.designatorLength {
                path = String(body[..<eq])
                key = try designator(String(body[body.index(after: eq)...]), "--server \(spec)")
            }
            if index < serverKey.count {
                guard key == nil else { throw ValidationError("--server \(spec) is pinned twice (=DESIGNATOR and --server-key)") }
                key = try designator(serverKey[index], "--server-key")
            }
            guard !path.isEmpty else { throw ValidationError("--server must name a socket path") }
            out.append((path, key))
        }
        return out
    }

    private func designator(_ text: String, _ what: String) throws -> PublicIdentity {
        do { return try PublicIdentity(designator: text) } catch {
            throw ValidationError("\(what): not a server designator (\(error.code.rawValue))")
        }
    }

    func validateShared() throws {
        guard !server.isEmpty else { throw ValidationError("at least one --server is required") }
        guard serverKey.count <= server.count else { throw ValidationError("more --server-key than --server options") }
        _ = try servers()
        _ = try registrationForms()
        _ = try legacyPeerPolicy()
        guard (1...3_600_000).contains(handshakeTimeoutMs), (1...3_600_000).contains(registrationTimeoutMs) else {
            throw ValidationError("timeouts are 1...3600000 milliseconds")
        }
        guard let level = Logger.Level(rawValue: logLevel), level != .trace, level != .critical else {
            throw ValidationError("--log-level must be debug, info, notice, warning or error")
        }
    }

    /// Loads the key, opens the audit log, builds the netlayer (`adjust` sets command-specific
    /// limits).
    func makeNetlayer(adjust: (inout PeerNetlayer.Configuration) -> Void = { _ in }) throws -> PeerRuntime {
        let pair = try key.loadKeyPair()
        var logger = Logger(label: "ocapn-uds.peer", factory: { label in StreamLogHandler.standardError(label: label) })
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .warning
        let sink = try audit.open(keyPair: pair, logger: logger)
        sink?.record(AuditEvent(.identityLoaded, local: AuditPeerID(pair.publicIdentity), path: AuditPath(key.identity)))
        var configuration = PeerNetlayer.Configuration(registrationTimeout: .milliseconds(registrationTimeoutMs))
        configuration.channel.handshake = HandshakeConfiguration(timeout: .milliseconds(handshakeTimeoutMs))
        configuration.channel.legacyPeers = try legacyPeerPolicy()
        configuration.registrationForms = try registrationForms()
        adjust(&configuration)
        let netlayer: PeerNetlayer
        do throws(PeerError) {
            netlayer = try PeerNetlayer(identity: pair, configuration: configuration, audit: sink, logger: logger)
        } catch {
            throw PeerOutput.failure("configuration", error)
        }
        return PeerRuntime(netlayer: netlayer, audit: sink, logger: logger)
    }
}

/// A netlayer plus what the CLI must close on exit.
struct PeerRuntime {
    let netlayer: PeerNetlayer
    let audit: AuditFileSink?
    let logger: Logger

    func shutdown() async {
        await netlayer.shutdown()
        audit?.close()
    }
}

/// CLI output helpers: stdout lines are unbuffered so a script reading a pipe sees them at once.
enum PeerOutput {
    static func line(_ text: String) { FileHandle.standardOutput.write(Data((text + "\n").utf8)) }
    static func errorLine(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }

    /// The line both commands print per channel: the key the peer proved.
    static func announce(_ channel: PeerChannel, fingerprint: String? = nil) {
        if channel.isAuthenticated {
            errorLine("verified-peer: \(fingerprint ?? channel.peerFingerprint) session: \(channel.sessionID?.description ?? "-")")
        } else {
            errorLine("UNAUTHENTICATED legacy peer (\(channel.legacyClaim?.description ?? "no claim"), nothing proved)")
        }
    }

    /// Exit status for a peer-side failure: a security check that refused the peer is 3,
    /// everything else (unreachable, timeout, no shared server) is 1.
    static func exitCode(for error: PeerError) -> CLIExitCode {
        switch error.code {
        case .handshake(let code):
            switch code {
            case .badMagic, .unsupportedVersion, .unexpectedMessageType, .reservedFlagsSet, .wrongResponder,
                 .identityMismatch, .selfConnection, .invalidIdentityKey, .peerNotAllowed, .nonCanonicalPoint,
                 .lowOrderPoint, .reflection, .decryptFailed, .badSignature, .badFrameLength, .unknownFrameType,
                 .unexpectedAuthFrame, .emptyDataFrame, .dataAfterClose:
                return .refused
            case .passedSocketInvalid, .notAddressedToUs, .handshakeLimitExceeded, .timeout, .truncated, .nonceExhausted,
                 .messageTooLarge:
                return .failure
            }
        case .netlayer(let code):
            switch code {
            case .legacyPeerRefused, .registrationFailed, .serverNotTrusted:
                return .refused
            case .ioError, .channelClosed, .noSharedServer, .serverDisconnected, .serverUnreachable,
                 .registrationTimeout, .invalidLocator, .netlayerClosed, .invalidConfiguration:
                return .failure
            case .introductionDropped:
                return .introductionDropped
            }
        }
    }

    static func failure(_ what: String, _ error: PeerError) -> CLIError {
        CLIError(exitCode(for: error), "\(what): \(error.code.rawValue): \(error.detail)" + CLI.hint(for: error.code))
    }
}

/// `ocapn-uds peer`: registers with every server, prints its locator, echoes every message.
struct PeerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer",
        abstract: "Run a peer: register with introduction servers and echo every message received.",
        discussion: """
            Registers with every --server and prints this peer's full locator URI (one hint per \
            registered server) as the first line on stdout. Then it accepts introductions, runs \
            the UDS-HS1 handshake on every passed socket, prints the verified peer fingerprint of \
            each channel on stderr (`verified-peer: fp1:…`) and echoes every message back, \
            showing the first \(echoesShownPerChannel) of each channel on stderr and the count \
            when it closes.

            Servers are independent: one that is unreachable, refuses us, fails its signature or \
            its pinned key is reported on stderr (`server PATH failed: …`) and retried with capped \
            exponential backoff and jitter while the others keep serving; the current locator is \
            printed on stderr on every change. A server that keeps displacing or refusing our \
            registration is reported as contested. Introductions over the per-peer and total caps, \
            or that would eat into the descriptor reserve, are refused and logged.

            Exit status: 0 stopped by SIGINT/SIGTERM; 1 no server registered at start (with \
            --require-all-servers: any server failed at start); 2 usage; 3 identity key file \
            refused, or every failure at start was a server refused by our checks (pinned key, \
            signature).
            """
    )

    @OptionGroup var options: PeerOptions
    @OptionGroup var coreDumps: CoreDumpOption

    @Flag(help: "Exit at start when any --server fails instead of serving through the others.")
    var requireAllServers = false

    @Option(help: "Handshakes in progress at once, in total.")
    var maxHandshakes: Int = HandshakeLimiter.defaultLimit

    @Option(help: "Handshakes in progress for one claimed initiator key.")
    var maxHandshakesPerPeer: Int = PeerResourceLimits().maxHandshakesPerPeer

    @Option(help: "Open channels introduced to this peer, in total.")
    var maxChannels: Int = PeerResourceLimits().maxChannels

    @Option(help: "Open channels introduced to this peer by one verified key.")
    var maxChannelsPerPeer: Int = PeerResourceLimits().maxChannelsPerPeer

    @Option(help: "Descriptors kept free below RLIMIT_NOFILE for server connections; introductions are refused first.")
    var descriptorReserve: Int = PeerResourceLimits().descriptorReserve

    @Option(help: "Longest wait between reconnection attempts to a failed server, in milliseconds.")
    var reconnectMaxMs: Int = 30_000

    func validate() throws {
        try options.validateShared()
        for (name, value) in [("--max-handshakes", maxHandshakes), ("--max-handshakes-per-peer", maxHandshakesPerPeer),
                              ("--max-channels", maxChannels), ("--max-channels-per-peer", maxChannelsPerPeer)] {
            guard (1...1_000_000).contains(value) else { throw ValidationError("\(name) must be 1...1000000") }
        }
        guard maxHandshakesPerPeer <= maxHandshakes else { throw ValidationError("--max-handshakes-per-peer must not exceed --max-handshakes") }
        guard maxChannelsPerPeer <= maxChannels else { throw ValidationError("--max-channels-per-peer must not exceed --max-channels") }
        guard (4...100_000).contains(descriptorReserve) else { throw ValidationError("--descriptor-reserve must be 4...100000") }
        guard (100...3_600_000).contains(reconnectMaxMs) else { throw ValidationError("--reconnect-max-ms must be 100...3600000") }
    }

    func run() async throws {
        ProcessSignals.ignoreBrokenPipe()
        var hardeningLog = Logger(label: "ocapn-uds.peer", factory: { StreamLogHandler.standardError(label: $0) })
        hardeningLog.logLevel = Logger.Level(rawValue: options.logLevel) ?? .warning
        try coreDumps.apply(logger: hardeningLog)
        let termination = TerminationSignals()
        let runtime = try options.makeNetlayer { configuration in
            configuration.maxConcurrentHandshakes = maxHandshakes
            configuration.resources = PeerResourceLimits(
                maxHandshakesPerPeer: maxHandshakesPerPeer, maxChannels: maxChannels, maxChannelsPerPeer: maxChannelsPerPeer,
                descriptorReserve: descriptorReserve)
            configuration.reconnect.maximumDelay = .milliseconds(reconnectMaxMs)
        }
        // Room for the caps: every channel and handshake holds one descriptor, plus the reserve
        // and the process's own (stdio, audit log, libdispatch). Never beyond the hard limit;
        // below it, the descriptor reserve refuses introductions first.
        _ = try? OpenFileLimit.raiseSoftLimit(toAtMost: UInt64(maxChannels + maxHandshakes + descriptorReserve + 64))
        let netlayer = runtime.netlayer
        // Each channel's echo is installed as its handshake completes: no task, no hop before
        // its first message.
        netlayer.acceptIncoming { channel in Self.echo(channel) }
        let servers = try options.servers()
        let keepers = servers.map { netlayer.keepServer(path: $0.path, expectedKey: $0.key) }
        var failures: [(path: String, error: PeerError)] = []
        var registeredAtStart: [Bool] = []
        for keeper in keepers {
            let outcome = await keeper.firstOutcome()
            registeredAtStart.append((try? outcome.get()) != nil)
            if case .failure(let error) = outcome {
                if requireAllServers {
                    await runtime.shutdown()
                    throw PeerOutput.failure("server \(keeper.path)", error)
                }
                failures.append((keeper.path, error))
            }
        }
        if failures.count == keepers.count {
            await runtime.shutdown()
            let refusedOnly = failures.allSatisfy { PeerOutput.exitCode(for: $0.error) == .refused }
            for failure in failures.dropLast() {
                PeerOutput.errorLine("ocapn-uds: server \(failure.path): \(failure.error.code.rawValue): \(failure.error.detail)")
            }
            let last = failures[failures.count - 1]
            throw CLIError(
                refusedOnly ? .refused : .failure,
                "server \(last.path): \(last.error.code.rawValue): \(last.error.detail) (no server registered)")
        }
        PeerOutput.line(netlayer.locator.uri)
        let reporters = zip(keepers, registeredAtStart).map { keeper, registered in
            Task { await Self.report(keeper, netlayer: netlayer, registeredAtStart: registered) }
        }

        let legacyEcho = Task {
            for await channel in netlayer.legacyIncoming { channel.deliver(to: Self.echo(channel)) }
        }
        await termination.received.wait()
        await runtime.shutdown()
        for reporter in reporters { reporter.cancel() }
        legacyEcho.cancel()
        termination.cancel()
    }

    /// The delivery handler that echoes every message of `channel` back until the peer closes,
    /// then closes. It runs where the channel delivers (`deliver(to:)`, `acceptIncoming`): no
    /// continuation per message; the end (closing, the last line) runs there too, in a task
    /// that suspends only if the close has to wait for the peer.
    static func echo(_ channel: PeerChannel) -> @Sendable (PeerChannel.Delivery) -> Void {
        // Rendered once per channel (a BLAKE2b and base32), not once per line.
        let fingerprint = channel.peerFingerprint
        PeerOutput.announce(channel, fingerprint: fingerprint)
        let tally = Mutex((count: 0, bytes: 0))
        return { delivery in
            switch delivery {
            case .message(let message):
                // A failed send ends the channel: its end is the next delivery.
                _ = try? channel.sendNow(message)
                let count = tally.withLock { tally -> Int in
                    tally.count += 1
                    tally.bytes += message.count
                    return tally.count
                }
                // Briefly: the first messages of a channel, then only the count at its end.
                if count <= Self.echoesShownPerChannel {
                    PeerOutput.errorLine("echoed to \(fingerprint): \(Self.preview(message))")
                }
            case .ended(let end):
                let (count, bytes) = tally.withLock { ($0.count, $0.bytes) }
                // Immediate: the close (usually answering the peer's CLOSE, no wait) runs on
                // this thread instead of waking a worker for it.
                Task.immediate { await Self.finishEcho(channel, fingerprint: fingerprint, end: end, count: count, bytes: bytes) }
            }
        }
    }

    private static func finishEcho(_ channel: PeerChannel, fingerprint: String, end: PeerError?, count: Int, bytes: Int) async {
        if let end {
            PeerOutput.errorLine("channel \(fingerprint) ended: \(end.code.rawValue)")
            await channel.abort()
        } else {
            await channel.close()
            PeerOutput.errorLine("channel \(fingerprint) closed: \(count) message\(count == 1 ? "" : "s") (\(bytes) bytes) echoed")
        }
    }

    /// Messages of one channel shown by `echo` before it only counts them.
    static let echoesShownPerChannel = 3

    /// A message as a person reads it: at most 60 characters, quoted, non-printables escaped.
    static func preview(_ message: [UInt8]) -> String {
        let text = String(decoding: message.prefix(60), as: UTF8.self)
        var escaped = ""
        for scalar in text.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7f { escaped += scalar.escaped(asASCII: true) } else { escaped.unicodeScalars.append(scalar) }
        }
        return "\"\(escaped)\"" + (message.count > 60 ? "… (\(message.count) bytes)" : " (\(message.count) bytes)")
    }

    /// Prints one line on stderr per change of one server: lost, failed (with the retry
    /// delay), registered (again), contested. A registration at start is in the stdout locator.
    static func report(_ keeper: ServerKeeper, netlayer: PeerNetlayer, registeredAtStart: Bool) async {
        var skipFirstRegistration = registeredAtStart
        for await event in keeper.events {
            switch event {
            case .registered:
                if !skipFirstRegistration {
                    PeerOutput.errorLine("server \(keeper.path) registered; locator: \(netlayer.locator.uri)")
                }
                skipFirstRegistration = false
            case .failed(let error, let kind, let decision):
                if kind == .lost {
                    PeerOutput.errorLine(
                        "server \(keeper.path) disconnected: \(error.code.rawValue); locator: \(netlayer.locator.uri); "
                            + "retry in \(decision.delayMilliseconds) ms")
                    continue
                }
                PeerOutput.errorLine(
                    "server \(keeper.path) failed: \(error.code.rawValue): \(error.detail); "
                        + "retry \(decision.consecutiveFailures) in \(decision.delayMilliseconds) ms")
            case .contested(let losses):
                PeerOutput.errorLine(
                    "server \(keeper.path) contested: our registration was lost or refused \(losses) times in a row "
                        + "(another connection may be registering our key); backing off")
            }
        }
    }
}
