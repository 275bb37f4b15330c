import ArgumentParser
import Foundation
import OCapN
import Runtime
import Synchronization
import Transport

/// `ocapn-uds connect`: one authenticated channel to a locator; send, print the replies.
struct ConnectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connect",
        abstract: "Open an authenticated channel to a peer and exchange messages.",
        discussion: """
            Registers with the --server(s), asks one that the target's hints also name to \
            introduce us, and runs the UDS-HS1 handshake. The verified peer fingerprint is \
            printed on stderr (`verified-peer: fp1:…`). With --send, TEXT goes as one message \
            and the reply is printed on stdout; with --stdin, every line read is sent and each \
            reply printed. When the target has not answered after a second, stderr says \
            `waiting for fp1:… to pick up the introduction`.

            On any failure the reason code is printed on stderr with what to check \
            (`ocapn-uds: connect: <code>: <detail> — <hint>`), for example noSharedServer, \
            serverUnreachable, introductionDropped, timeout, truncated (the peer closed during \
            the handshake), wrongResponder, identityMismatch, decryptFailed, channelClosed.

            Exit status:
              0  success
              1  unreachable server, no shared server, timeout, channel closed, interrupted
              2  usage
              3  identity key refused, or the peer failed a security check
              5  introductionDropped: the target never answered the introduction (it is not
                 registered with that server, which dropped it after its pending lifetime, or
                 it refused the introduction)
            """
    )

    @OptionGroup var options: PeerOptions

    @Argument(help: ArgumentHelp("The target's locator URI (ocapn://<designator>.unix-domain-socket?<server>=t).", valueName: "locator"))
    var locator: String

    @Option(help: ArgumentHelp("Send TEXT as one message and print the reply.", valueName: "text"))
    var send: String?

    @Flag(help: "Send each line read from stdin as one message and print each reply.")
    var stdin = false

    @Option(help: "How long to wait for each reply, in milliseconds.")
    var replyTimeoutMs: Int = 10_000

    func validate() throws {
        try options.validateShared()
        guard (send != nil) != stdin else { throw ValidationError("give exactly one of --send TEXT and --stdin") }
        if let send, send.isEmpty { throw ValidationError("--send needs at least one byte (messages are never empty)") }
        guard (1...3_600_000).contains(replyTimeoutMs) else { throw ValidationError("--reply-timeout-ms is 1...3600000") }
        do { _ = try PeerLocator(uri: locator) } catch {
            throw ValidationError("LOCATOR: \(error.code.rawValue): \(error.detail)")
        }
    }

    func run() async throws {
        ProcessSignals.ignoreBrokenPipe()
        let termination = TerminationSignals()
        defer { termination.cancel() }
        let target = try PeerLocator(uri: locator)
        let runtime = try options.makeNetlayer()
        let finished = Mutex(false)
        // SIGINT/SIGTERM: close the servers and the audit log, then leave (stdin reads block).
        let watcher = Task.detached {
            await termination.received.wait()
            guard finished.withLock({ !$0 }) else { return }
            await runtime.shutdown()
            CLI.printError("connect: interrupted")
            Foundation.exit(CLIExitCode.failure.rawValue)
        }
        defer { watcher.cancel() }
        do {
            try await exchange(runtime.netlayer, target)
            finished.withLock { $0 = true }
            termination.received.fire()
            await runtime.shutdown()
        } catch let error as PeerError {
            finished.withLock { $0 = true }
            termination.received.fire()
            await runtime.shutdown()
            throw PeerOutput.failure("connect", error)
        } catch {
            finished.withLock { $0 = true }
            termination.received.fire()
            await runtime.shutdown()
            throw error
        }
    }

    /// Registers, connects, sends and prints the replies, closes.
    private func exchange(_ netlayer: PeerNetlayer, _ target: PeerLocator) async throws {
        guard !target.hintServers.isEmpty else {
            // Nothing to ask: say what to do instead of "none of the target's 0 hinted servers".
            throw CLIError(.failure, "connect: \(PeerError.Code.Netlayer.noSharedServer.rawValue): the locator names no introduction server"
                + " (it has no ?<server>=t hints) — use the full URI the target's `ocapn-uds peer` printed on its first line")
        }
        for (path, key) in try options.servers() {
            _ = try await netlayer.addServer(path: path, expectedKey: key)
        }
        // A target that is slow to answer (or not registered) is announced instead of silence.
        let waiting = Task {
            try await Task.sleep(for: Self.waitingNoticeAfter)
            PeerOutput.errorLine("waiting for \(target.identity.fingerprint) to pick up the introduction")
        }
        let channel: PeerChannel
        do {
            channel = try await netlayer.connect(to: target)
            waiting.cancel()
        } catch {
            waiting.cancel()
            throw error
        }
        PeerOutput.announce(channel)
        if let send {
            try await roundTrip(channel, Array(send.utf8))
        } else {
            while let line = readLine(strippingNewline: true) {
                guard !line.isEmpty else { continue }
                try await roundTrip(channel, Array(line.utf8))
            }
        }
        let summary = await channel.close()
        if !summary.clean, let reason = summary.reason {
            PeerOutput.errorLine("channel closed without the peer's CLOSE: \(reason.code.rawValue)")
        }
    }

    /// How long `connect` is silent before saying it waits for the target.
    static let waitingNoticeAfter = Duration.seconds(1)

    private func roundTrip(_ channel: PeerChannel, _ message: [UInt8]) async throws {
        try await channel.send(message)
        let timeout = Duration.milliseconds(replyTimeoutMs)
        let timedOut = Mutex(false)
        // The reply wait is bounded by aborting the channel, which wakes the receiver.
        let timer = Task {
            try await Task.sleep(for: timeout)
            timedOut.withLock { $0 = true }
            await channel.abort()
        }
        defer { timer.cancel() }
        let reply: [UInt8]?
        do {
            reply = try await channel.receive()
        } catch {
            if timedOut.withLock({ $0 }) { throw PeerError(.timeout, "no reply within \(timeout)") }
            throw error
        }
        guard let reply else { throw PeerError(.channelClosed, "the peer closed the channel before replying") }
        PeerOutput.line(String(decoding: reply, as: UTF8.self))
    }
}
