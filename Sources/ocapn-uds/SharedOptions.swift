import ArgumentParser
import Audit
import Identity
import Logging

/// `--identity` and `--passphrase-file` of every command that acts as a key (`intro-server`,
/// `peer`, `connect`, `audit handover`): one way to name and load the key.
struct IdentityOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Private key file of the identity to act as.", valueName: "file"))
    var identity: String

    @Option(help: ArgumentHelp("Passphrase file for an encrypted key (first line).", valueName: "file"))
    var passphraseFile: String?

    func validate() throws {
        guard !identity.isEmpty else { throw ValidationError("--identity must name a key file") }
    }

    /// Loads the key (decrypting it with the passphrase file's first line when one is given);
    /// a refused file is exit status 3 with the reason and what to do.
    func loadKeyPair() throws(CLIError) -> IdentityKeyPair {
        do throws(IdentityError) {
            let passphrase = try passphraseFile.map { path throws(IdentityError) in try IdentityPassphrase.read(fromFile: path) }
            return try IdentityKeyFile.load(path: identity, passphrase: passphrase)
        } catch {
            throw CLIError(error)
        }
    }
}

/// `--audit-log` and the writer options that go with it (`intro-server`, `peer`, `connect`).
struct AuditLogOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Append the tamper-evident audit log to this file (signed checkpoints).", valueName: "file"))
    var auditLog: String?

    @OptionGroup var writer: AuditWriterOptions

    func validate() throws { try writer.validate(auditLog: auditLog) }

    /// Opens the log when `--audit-log` was given (nil otherwise); a log that cannot be opened
    /// is exit status 1 naming the file.
    func open(keyPair: IdentityKeyPair, logger: Logger) throws(CLIError) -> AuditFileSink? {
        guard let auditLog else { return nil }
        do {
            return try writer.openSink(path: auditLog, keyPair: keyPair, logger: logger)
        } catch {
            throw CLIError(.failure, "audit log \(auditLog): \(error)")
        }
    }
}
