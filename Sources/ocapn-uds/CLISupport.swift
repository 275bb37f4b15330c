import ArgumentParser
import Foundation
import Identity
import Runtime

/// Exit codes shared by every `ocapn-uds` command. Stable: scripts and service managers match on
/// them.
///
/// | code | meaning |
/// |------|---------|
/// | 0 | success |
/// | 1 | runtime failure: I/O error, peer or server unreachable, internal error |
/// | 2 | usage: unknown option, missing or invalid argument |
/// | 3 | refused input or failed security check: malformed, insecure or existing file, wrong or missing passphrase, invalid identity |
/// | 4 | verification failed: a check ran and found mismatches (e.g. `vectors verify`) |
/// | 5 | `connect` only: the introduction was dropped (target not registered, or it refused) |
///
/// `audit --verify` refines 4–6 its own way (torn tail 5, unsealed 6); see its `--help`.
enum CLIExitCode: Int32, Sendable {
    case ok = 0
    case failure = 1
    case usage = 2
    case refused = 3
    case verificationFailed = 4
    case introductionDropped = 5
    /// intro-server: the socket path was deleted or replaced (with --on-socket-loss exit).
    case socketLost = 6
}

/// A failure a command reports: printed to stderr as `ocapn-uds: <message>`, then exits with `code`.
struct CLIError: Error, CustomStringConvertible {
    let code: CLIExitCode
    let message: String

    init(_ code: CLIExitCode, _ message: String) {
        self.code = code
        self.message = message
    }

    /// Identity errors: problems the user must fix in their input are `refused`; system call
    /// failures are `failure`. The detail never contains key material, so it can be shown.
    init(_ error: IdentityError) {
        switch error.code {
        case .ioError:
            self.init(.failure, error.detail)
        case .invalidDesignator, .invalidPublicKey, .invalidFingerprint, .invalidSeed,
             .keyFileMissing, .keyFileExists, .keyFileInsecurePermissions, .keyFileMalformed,
             .keyFileUnsupportedVersion, .keyFileWrongType, .keyFileInconsistent, .kdfLimitExceeded,
             .wrongPassphrase, .passphraseRequired, .passphraseInvalid:
            self.init(.refused, "\(error.detail) [\(error.code.rawValue)]")
        }
    }

    var description: String { message }
}

enum CLI {
    static let programName = "ocapn-uds"

    /// What to check next for a peer-side failure, appended to its one-line message
    /// (" — is the intro-server running? see --server"); empty when the code says it all.
    static func hint(for code: PeerError.Code) -> String {
        switch code {
        case .netlayer(.serverUnreachable):
            return " — is the intro-server running? see --server"
        case .netlayer(.introductionDropped):
            return " — is the target's `ocapn-uds peer` running and registered with that server?"
                + " (the server drops an introduction its target does not pick up within --pending-lifetime-ms)"
        case .netlayer(.noSharedServer):
            return " — pass the full URI the target printed (its ?<server>=t hints name its servers), and a --server it uses"
        case .netlayer(.registrationTimeout):
            return " — the server accepted the connection but did not answer; is it overloaded? see --registration-timeout-ms"
        case .netlayer(.registrationFailed):
            return " — does --server PATH=DESIGNATOR name the key that server prints on its `listening:` line?"
        case .handshake(.timeout):
            return " — the target did not finish the handshake in time; see --handshake-timeout-ms"
        case .handshake(.identityMismatch), .handshake(.wrongResponder):
            return " — the socket was not answered by the key in the locator: the server or the peer is not who it claims"
        default:
            return ""
        }
    }

    /// Writes one line to stderr.
    static func printError(_ message: String) {
        FileHandle.standardError.write(Data("\(programName): \(message)\n".utf8))
    }

    /// Prints `error` to stderr and exits with its code. Argument-parser usage errors exit 2
    /// (instead of its default 64) so every command shares the table in `CLIExitCode`.
    static func exit(with error: Error) -> Never {
        switch error {
        case let error as CLIError:
            printError(error.message)
            Foundation.exit(error.code.rawValue)
        case let error as IdentityError:
            exit(with: CLIError(error))
        default:
            let code = OCapNUDS.exitCode(for: error)
            if code == .validationFailure {
                FileHandle.standardError.write(Data((OCapNUDS.fullMessage(for: error) + "\n").utf8))
                Foundation.exit(CLIExitCode.usage.rawValue)
            }
            // Help, version and explicit ExitCode values keep argument-parser's handling.
            OCapNUDS.exit(withError: error)
        }
    }
}

extension OCapNUDS {
    /// Entry point: parse, run (sync or async subcommands), map errors to `CLIExitCode`.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            CLI.exit(with: error)
        }
    }
}
