import ArgumentParser
import Audit
import Dispatch
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import Synchronization
import Transport

/// `ocapn-uds intro-server`: the introduction server daemon (docs/INTRO-SERVER.md).
struct IntroServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "intro-server",
        abstract: "Run an introduction server: peers register by key and pass socketpair ends to each other.",
        discussion: """
            Speaks the OCapN unix-domain-socket draft as Spritely Goblins does on the peer <-> \
            server leg (uds:register, uds:server-response, uds:signature, uds:new-connection + \
            one descriptor). Routes introductions by the target's key, refuses a spoofed `from`, \
            holds introductions for targets that have not registered yet for --pending-lifetime-ms, \
            and enforces every limit below. A newer registration of a key replaces the older one.

            On start it prints one line to stdout, then serves until SIGINT or SIGTERM:
              listening: PATH designator: DESIGNATOR fingerprint: FINGERPRINT
            (PATH is `inherited` under socket activation). With systemd it takes the socket from \
            LISTEN_FDS and reports READY=1 through NOTIFY_SOCKET.

            Exit status:
              0   stopped by SIGINT/SIGTERM
              1   could not start (socket in use or locked, descriptor budget, audit log) or the
                  listening socket failed
              2   usage error (bad option or limit)
              3   identity key file refused (missing, insecure, malformed, wrong passphrase)
              6   the socket path was deleted or replaced and not re-created (--on-socket-loss exit,
                  or re-creating failed)
            """
    )

    @OptionGroup var key: IdentityOptions

    @Option(help: ArgumentHelp("Socket path to listen on (optional under socket activation).", valueName: "path"))
    var socket: String?

    @Option(help: ArgumentHelp("When the socket path is deleted or replaced: recreate (default) or exit (status 6).",
                               valueName: "policy"))
    var onSocketLoss: String = "recreate"

    @Option(help: ArgumentHelp("Permission bits of the socket file, octal.", valueName: "mode"))
    var socketMode: String = "0600"

    @Option(help: ArgumentHelp("Also serve connections from this uid (repeatable); our own uid is always allowed.", valueName: "uid"))
    var allowUid: [UInt32] = []

    @OptionGroup var audit: AuditLogOptions

    @Option(help: "Log level on stderr: debug, info, notice, warning, error.")
    var logLevel: String = "info"

    @Option(help: "Connections in any state.")
    var maxClients: Int = IntroductionServerLimits().maxClients

    @Option(help: "Connections that have not completed registration.")
    var maxUnauthenticated: Int = IntroductionServerLimits().maxUnauthenticated

    @Option(help: "Connections of one uid that have not completed registration.")
    var maxUnauthenticatedPerUid: Int = IntroductionServerLimits().maxUnauthenticatedPerUID

    @Option(help: "Descriptors forwarded to one target and not yet read; reaching it drops that target.")
    var maxInFlightPerTarget: Int = IntroductionServerLimits().maxInFlightPerTarget

    @Option(help: "Introductions of one sender forwarded and not yet read by their targets.")
    var maxInFlightPerSender: Int = IntroductionServerLimits().maxInFlightPerSender

    @Option(help: "Absolute deadline from accept to a verified registration, in milliseconds.")
    var registrationTimeoutMs: Int = 5000

    @Option(help: "Registration deadline while half the unauthenticated slots are taken, in milliseconds.")
    var pressureRegistrationTimeoutMs: Int = 1000

    @Option(help: "Deadline for a registered peer to finish a message it started, in milliseconds.")
    var partialMessageTimeoutMs: Int = 5000

    @Option(help: "Largest Syrup control message, in bytes.")
    var maxMessageBytes: Int = IntroductionServerLimits().maxMessageBytes

    @Option(help: "Deepest nesting of a Syrup control message.")
    var maxMessageDepth: Int = IntroductionServerLimits().maxMessageDepth

    @Option(help: "Introductions held for one target that has not registered yet.")
    var maxPendingPerTarget: Int = IntroductionServerLimits().maxPendingPerTarget

    @Option(help: "Introductions held on behalf of one sender.")
    var maxPendingPerSender: Int = IntroductionServerLimits().maxPendingPerSender

    @Option(help: "Introductions held in total.")
    var maxPending: Int = IntroductionServerLimits().maxPendingTotal

    @Option(help: "How long an introduction waits for its target to register, in milliseconds (0: refuse at once). Keep it below the peers' --handshake-timeout-ms (10000), so a caller learns of the drop before its own deadline.")
    var pendingLifetimeMs: Int = Int(IntroductionServerLimits().pendingLifetime.components.seconds * 1000)

    @Option(help: "Sustained introductions per second per peer (0: unlimited).")
    var maxIntrosPerSecond: Int = IntroductionServerLimits().introductionsPerSecond

    @Option(help: "Introductions a peer may send in a burst.")
    var introBurst: Int = IntroductionServerLimits().introductionBurst

    @Option(help: "Unsent bytes queued for one peer before it is dropped as not reading.")
    var outputQueueBytes: Int = 64 * 1024

    @Option(help: "Bytes per read on a control connection (one buffer shared by all connections).")
    var readBufferBytes: Int = 4096

    @Option(help: ArgumentHelp(
        "Registration forms answered: v2, legacy (Goblins' and the draft's), or v2,legacy. A key that registered with v2 is always refused in a legacy form afterwards.",
        valueName: "forms"))
    var registrationForms: String = "v2,legacy"

    @Flag(help: "Refuse a marker that carries a second descriptor (extraFds) instead of closing the padding descriptor a Goblins-style 24-byte control message adds (PROTOCOL.md §16).")
    var strictDescriptorCount = false

    @Flag(help: "Let a registration take over a live earlier connection of its key when both have the same uid (SO_PEERCRED). Without it a live registration is never displaced.")
    var replaceSameUid = false

    @OptionGroup var coreDumps: CoreDumpOption

    func validate() throws {
        if let socket, socket.isEmpty { throw ValidationError("--socket must name a path") }
        guard IntroductionServer.SocketLossPolicy(rawValue: onSocketLoss) != nil else {
            throw ValidationError("--on-socket-loss must be recreate or exit")
        }
        guard parsedMode() != nil else { throw ValidationError("--socket-mode must be octal permission bits, e.g. 0600 or 0660") }
        guard Logger.Level(rawValue: logLevel) != nil, logLevel != "trace", logLevel != "critical" else {
            throw ValidationError("--log-level must be debug, info, notice, warning or error")
        }
        for ms in [registrationTimeoutMs, partialMessageTimeoutMs, pendingLifetimeMs] where ms < 0 || ms > 3_600_000 {
            throw ValidationError("timeouts are 0...3600000 milliseconds")
        }
        guard parsedForms() != nil else {
            throw ValidationError("--registration-forms must be v2, legacy or v2,legacy")
        }
        let problems = serverConfiguration(ownUID: 0).problems
        if !problems.isEmpty { throw ValidationError(problems.joined(separator: "; ")) }
    }

    private func parsedMode() -> mode_t? {
        var text = Substring(socketMode)
        if text.hasPrefix("0o") { text = text.dropFirst(2) }
        guard !text.isEmpty, text.count <= 4, let value = mode_t(text, radix: 8), value & ~0o777 == 0 else { return nil }
        return value
    }

    private func parsedForms() -> RegistrationForms? {
        var forms: RegistrationForms = []
        for part in registrationForms.split(separator: ",", omittingEmptySubsequences: false) {
            switch part {
            case "v2": forms.insert(.v2)
            case "legacy": forms.insert(.legacy)
            default: return nil
            }
        }
        return forms.isEmpty ? nil : forms
    }

    private func serverConfiguration(ownUID: UInt32) -> IntroductionServer.Configuration {
        var limits = IntroductionServerLimits()
        limits.maxClients = maxClients
        limits.maxUnauthenticated = maxUnauthenticated
        limits.maxUnauthenticatedPerUID = maxUnauthenticatedPerUid
        limits.maxInFlightPerTarget = maxInFlightPerTarget
        limits.maxInFlightPerSender = maxInFlightPerSender
        limits.pressureRegistrationTimeout = .milliseconds(pressureRegistrationTimeoutMs)
        limits.registrationTimeout = .milliseconds(registrationTimeoutMs)
        limits.partialMessageTimeout = .milliseconds(partialMessageTimeoutMs)
        limits.maxMessageBytes = maxMessageBytes
        limits.maxMessageDepth = maxMessageDepth
        limits.maxPendingPerTarget = maxPendingPerTarget
        limits.maxPendingPerSender = maxPendingPerSender
        limits.maxPendingTotal = maxPending
        limits.pendingLifetime = .milliseconds(pendingLifetimeMs)
        limits.introductionsPerSecond = maxIntrosPerSecond
        limits.introductionBurst = introBurst
        let level = Logger.Level(rawValue: logLevel) ?? .info
        var configuration = IntroductionServer.Configuration(core: IntroductionServerConfiguration(
            limits: limits, allowedUIDs: Set(allowUid + [ownUID]), debugLogging: level <= .debug,
            registrationForms: parsedForms() ?? .all, replaceSameUID: replaceSameUid))
        configuration.core.toleratePaddingDescriptor = !strictDescriptorCount
        configuration.outputQueueBytes = outputQueueBytes
        configuration.onSocketLoss = IntroductionServer.SocketLossPolicy(rawValue: onSocketLoss) ?? .recreate
        configuration.readBufferBytes = readBufferBytes
        return configuration
    }

    mutating func run() async throws {
        // A peer closing its end must never kill the daemon (K12); sends use MSG_NOSIGNAL too.
        ProcessSignals.ignoreBrokenPipe()
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "ocapn-uds.intro-server")
        logger.logLevel = level
        try coreDumps.apply(logger: logger)

        let keyPair = try key.loadKeyPair()
        let configuration = serverConfiguration(ownUID: ProcessIdentity.realUserID)
        do {
            try IntroductionServerSetup.prepareDescriptorBudget(configuration)
        } catch {
            throw CLIError(.failure, error.detail)
        }
        let listening: ListeningSocket
        do {
            listening = try IntroductionServerSetup.openSocket(path: socket, mode: parsedMode() ?? 0o600)
        } catch {
            throw CLIError(.failure, error.code == .bind ? "intro-server: \(error.detail)" : error.description)
        }
        let auditSink: AuditFileSink?
        do { auditSink = try audit.open(keyPair: keyPair, logger: logger) } catch {
            listening.close()
            throw error
        }
        let server = IntroductionServer(identity: keyPair, socket: listening, configuration: configuration,
                                        audit: auditSink, logger: logger)
        let stopped = OneShot()
        let signalLogger = logger
        let signals = TerminationSignals(queue: DispatchQueue(label: "ocapn-uds.intro-server.signals")) { number in
            signalLogger.info("signal received, shutting down", metadata: ["signal": "\(number)"])
            _ = try? ServiceNotification.notify("STOPPING=1")
            server.stop()
        }
        server.whenStopped { stopped.fire() }
        server.start()
        // Unbuffered: a script waits for this line on a pipe.
        let ready = "listening: \(listening.path ?? "inherited") designator: \(keyPair.publicIdentity.designator) "
            + "fingerprint: \(keyPair.publicIdentity.fingerprint)\n"
        FileHandle.standardOutput.write(Data(ready.utf8))
        do {
            try ServiceNotification.notify("READY=1")
        } catch {
            logger.warning("sd_notify failed", metadata: ["error": "\(error)"])
        }
        await stopped.wait()
        signals.cancel()
        auditSink?.close()
        if server.socketLost { throw CLIError(.socketLost, "the socket path was deleted or replaced") }
        if server.listenerFailed { throw CLIError(.failure, "the listening socket failed") }
    }
}

