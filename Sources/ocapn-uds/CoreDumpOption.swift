import ArgumentParser
import Logging
import Transport

/// `--allow-core-dumps` of the commands that hold a private key for long (`intro-server`,
/// `peer`). By default they make themselves non-dumpable before loading the key
/// (SECURITY.md, "Key hygiene").
struct CoreDumpOption: ParsableArguments {
    @Flag(help: """
        Keep this process dumpable, for debugging: core dumps, and ptrace and /proc reads by the same uid. \
        By default it makes itself non-dumpable and sets its core-file limit to 0 before loading its key.
        """)
    var allowCoreDumps = false

    /// Applies the choice, then logs what the kernel reports (debug level).
    func apply(logger: Logger) throws {
        if !allowCoreDumps {
            do {
                try ProcessHardening.disableCoreDumps()
            } catch {
                throw CLIError(.failure, "cannot make the process non-dumpable: \(error.description)")
            }
        }
        if let state = try? ProcessHardening.current() {
            logger.debug("process hardening", metadata: [
                "dumpable": "\(state.dumpable)", "core-limit": "\(state.coreLimit.soft)/\(state.coreLimit.hard)",
            ])
        }
    }
}
