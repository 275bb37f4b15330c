import ArgumentParser
import Audit
import Dispatch
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import Synchronization

/// Options shared by `peer` and `connect`: identity, servers, handshake, legacy, audit, logs.
struct PeerOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Private key file of this peer's identity.", valueName: "file"))
    var identity: String

    @Option(help: ArgumentHelp("Passphrase file for an encrypted key (first line).", valueName: "file"))
    var passphraseFile: String?

    @Option(help: ArgumentHelp(
        "Introduction server socket (repeatable). PATH=DESIGNATOR pins the server's key.", valueName: "path"))
    var server: [String] = []

    @Option(help: ArgumentHelp(
        "Pin the key of the --server at the same position (repeatable, a 52-character designator).", valueName: "designator"))
    var serverKey: [String] = []

    @Option(help: "Handshake deadline, in milliseconds.")
    var handshakeTimeoutMs: Int = 10_000

    @Option(help: "Deadline for an introduction server's registration reply, in milliseconds.")
    var registrationTimeoutMs: Int = 5_000

    @Flag(help: "Admit Goblins peers (no handshake) as UNAUTHENTICATED channels. Off by default: they are refused.")
    var allowLegacyPeers = false

    @Option(help: ArgumentHelp("Append the tamper-evident audit log to this file (signed checkpoints).", valueName: "file"))
    var auditLog: String?

    @Option(help: "Log level on stderr: debug, info, notice, warning, error.")
    var logLevel: String = "warning"

    /// (path, pinned key) per --server, in order.
    func servers() throws -> [(path: String, key: PublicIdentity?)] {
        var out: [(String, PublicIdentity?)] = []
        for (index, spec) in server.enumerated() {
            var path = spec
            var key: PublicIdentity?
            if let eq = spec.lastIndex(of: "="), spec[spec.index(after: eq)...].count == PublicIdentity.designatorLength {
                path = String(spec[..<eq])
                key = try designator(String(spec[spec.index(after: eq)...]), "--server \(spec)")
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
        guard !identity.isEmpty else { throw ValidationError("--identity must name a key file") }
        guard !server.isEmpty else { throw ValidationError("at least one --server is required") }
        guard serverKey.count <= server.count else { throw ValidationError("more --server-key than --server options") }
        _ = try servers()
        guard (1...3_600_000).contains(handshakeTimeoutMs), (1...3_600_000).contains(registrationTimeoutMs) else {
            throw ValidationError("timeouts are 1...3600000 milliseconds")
        }
        guard let level = Logger.Level(rawValue: logLevel), level != .trace, level != .critical else {
            throw ValidationError("--log-level must be debug, info, notice, warning or error")
        }
    }

    private func loadIdentity() throws(CLIError) -> IdentityKeyPair {
        do throws(IdentityError) {
            let passphrase = try passphraseFile.map { path throws(IdentityError) in try IdentityPassphrase.read(fromFile: path) }
            return try IdentityKeyFile.load(path: identity, passphrase: passphrase)
        } catch {
            throw CLIError(error)
        }
    }

    /// Loads the key, opens the audit log, builds the netlayer.
    func makeNetlayer() throws -> PeerRuntime {
        let pair = try loadIdentity()
        var logger = Logger(label: "ocapn-uds.peer", factory: { label in StreamLogHandler.standardError(label: label) })
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .warning
        var sink: AuditFileSink?
        if let auditLog {
            do {
                sink = try AuditFileSink(AuditFileConfiguration(
                    path: auditLog, writer: pair.publicIdentity,
                    signer: AuditSigner(identity: pair.publicIdentity, sign: { pair.sign($0) })))
            } catch {
                throw CLIError(.failure, "audit log \(auditLog): \(error)")
            }
            sink?.record(AuditEvent(.identityLoaded, local: AuditPeerID(pair.publicIdentity), path: AuditPath(identity)))
        }
        var configuration = PeerNetlayer.Configuration(registrationTimeout: .milliseconds(registrationTimeoutMs))
        configuration.channel.handshake = HandshakeConfiguration(timeout: .milliseconds(handshakeTimeoutMs))
        configuration.channel.allowLegacyPeers = allowLegacyPeers
        let netlayer = PeerNetlayer(identity: pair, configuration: configuration, audit: sink, logger: logger)
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
    static func announce(_ channel: PeerChannel) {
        if channel.isAuthenticated {
            errorLine("verified-peer: \(channel.peerFingerprint) session: \(channel.sessionID?.description ?? "-")")
        } else {
            errorLine("UNAUTHENTICATED legacy peer (claimed \(channel.expectedPeer.fingerprint))")
        }
    }

    /// Exit status for a peer-side failure: a security check that refused the peer is 3,
    /// everything else (unreachable, timeout, no shared server) is 1.
    static func exitCode(for error: PeerError) -> CLIExitCode {
        switch error.code {
        case .badMagic, .unsupportedVersion, .unexpectedMessageType, .reservedFlagsSet, .wrongResponder,
             .identityMismatch, .selfConnection, .invalidIdentityKey, .peerNotAllowed, .nonCanonicalPoint,
             .lowOrderPoint, .reflection, .decryptFailed, .badSignature, .badFrameLength, .unknownFrameType,
             .unexpectedAuthFrame, .emptyDataFrame, .dataAfterClose, .legacyPeerRefused, .registrationFailed,
             .serverNotTrusted:
            return .refused
        case .passedSocketInvalid, .notAddressedToUs, .handshakeLimitExceeded, .timeout, .truncated, .nonceExhausted,
             .messageTooLarge, .ioError, .channelClosed, .noSharedServer, .serverDisconnected, .serverUnreachable,
             .registrationTimeout, .invalidLocator, .netlayerClosed:
            return .failure
        }
    }

    static func failure(_ what: String, _ error: PeerError) -> CLIError {
        CLIError(exitCode(for: error), "\(what): \(error.code.rawValue): \(error.detail)")
    }
}

/// Fires once on SIGINT or SIGTERM (or `fire()`).
///
/// `@unchecked Sendable`: `sources` is immutable after init and dispatch sources are
/// thread-safe; the rest is behind the mutex.
final class TerminationSignal: @unchecked Sendable {
    private let state = Mutex<(fired: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))
    private var sources: [DispatchSourceSignal] = []

    init() {
        var made: [DispatchSourceSignal] = []
        for number in [SIGINT, SIGTERM] {
            signal(number, SIG_IGN)  // delivered through the dispatch source instead
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [weak self] in self?.fire() }
            source.activate()
            made.append(source)
        }
        sources = made
    }

    func fire() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            guard !s.fired else { return [] }
            s.fired = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume() }
    }

    var fired: Bool { state.withLock { $0.fired } }

    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.fired { return true }
                s.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    func cancel() { for source in sources { source.cancel() } }
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
            each channel on stderr (`verified-peer: fp1:…`) and echoes every message back. A \
            server that goes away is dropped from the hints and reconnected with backoff \
            (100 ms doubling to 5 s); the current locator is printed on stderr on every change.

            Exit status: 0 stopped by SIGINT/SIGTERM; 1 a server could not be reached or \
            registered at start; 2 usage; 3 identity key file refused or a pinned server key \
            did not match.
            """
    )

    @OptionGroup var options: PeerOptions

    func validate() throws { try options.validateShared() }

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let termination = TerminationSignal()
        let runtime = try options.makeNetlayer()
        let netlayer = runtime.netlayer
        let servers = try options.servers()
        var handles: [ServerHandle] = []
        for (path, key) in servers {
            do {
                handles.append(try await netlayer.addServer(path: path, expectedKey: key))
            } catch {
                await runtime.shutdown()
                throw PeerOutput.failure("server \(path)", error)
            }
        }
        PeerOutput.line(netlayer.locator.uri)

        let echo = Task {
            await withDiscardingTaskGroup { group in
                for await channel in netlayer.incoming {
                    group.addTask { await Self.echo(channel) }
                }
            }
        }
        let legacyEcho = Task {
            await withDiscardingTaskGroup { group in
                for await channel in netlayer.legacyIncoming {
                    group.addTask { await Self.echo(channel) }
                }
            }
        }
        var keepers: [Task<Void, Never>] = []
        for ((path, key), handle) in zip(servers, handles) {
            keepers.append(Task { await Self.keep(path: path, key: key, first: handle, netlayer: netlayer, termination: termination) })
        }
        await termination.wait()
        for keeper in keepers { keeper.cancel() }
        await runtime.shutdown()
        echo.cancel()
        legacyEcho.cancel()
        termination.cancel()
    }

    /// Echoes every message of `channel` back until the peer closes, then closes.
    static func echo(_ channel: PeerChannel) async {
        PeerOutput.announce(channel)
        do {
            for try await message in channel.messages {
                try await channel.send(message)
            }
            await channel.close()
        } catch {
            PeerOutput.errorLine("channel \(channel.peerFingerprint) ended: \(error.code.rawValue)")
            await channel.abort()
        }
    }

    /// Re-registers with one server whenever its connection ends, with backoff.
    static func keep(path: String, key: PublicIdentity?, first: ServerHandle, netlayer: PeerNetlayer, termination: TerminationSignal) async {
        var handle: ServerHandle? = first
        var pause = Duration.milliseconds(100)
        while !termination.fired && !Task.isCancelled {
            if let current = handle {
                let reason = await current.disconnected()
                if reason.code == .netlayerClosed || termination.fired { return }
                PeerOutput.errorLine("server \(path) disconnected: \(reason.code.rawValue); locator: \(netlayer.locator.uri)")
                handle = nil
                pause = .milliseconds(100)
            }
            try? await Task.sleep(for: pause)
            if termination.fired || Task.isCancelled { return }
            do {
                handle = try await netlayer.addServer(path: path, expectedKey: key)
                PeerOutput.errorLine("server \(path) registered; locator: \(netlayer.locator.uri)")
            } catch {
                if error.code == .netlayerClosed { return }
                pause = min(pause * 2, .seconds(5))
            }
        }
    }
}
