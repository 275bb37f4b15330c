import ArgumentParser
import Audit
import Foundation
import Identity
import Logging

/// `--writer` of `audit --verify`: a designator, a public key file or a key file (public part).
func resolveAuditWriter(_ text: String) throws -> PublicIdentity {
    if let id = try? PublicIdentity(designator: text) { return id }
    guard FileManager.default.fileExists(atPath: text) else {
        throw CLIError(.usage, "\(text) is neither a 52-character designator nor an existing key file")
    }
    do { return try PublicIdentityFile.load(path: text) } catch { throw CLIError(error) }
}

/// `--verify-key`: the token `audit setup-keys` printed, or a file holding it.
func resolveVerificationKey(_ text: String) throws(AuditError) -> AuditVerificationKey {
    if text.hasPrefix(AuditVerificationKey.prefix) { return try AuditVerificationKey(text: text) }
    guard let data = FileManager.default.contents(atPath: text), data.count <= 4096 else {
        throw AuditError(.invalidArgument, "not a verification key, nor a readable file holding one")
    }
    return try AuditVerificationKey(text: String(decoding: data, as: UTF8.self))
}

/// Parses `900`, `90s`, `15m`, `2h`, `1d` into microseconds.
func parseAuditInterval(_ text: String) -> Int64? {
    let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
    var digits = Substring(text), unit: Int64 = 1
    if let last = text.last, let u = units[last] {
        unit = u
        digits = text.dropLast()
    }
    guard let n = Int64(digits), n > 0, n <= 366 * 86400 / unit else { return nil }
    return n * unit * 1_000_000
}

/// `ocapn-uds audit setup-keys`: a forward-secure sealing key pair (docs/AUDIT.md).
struct AuditSetupKeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "setup-keys",
        abstract: "Create a forward-secure sealing key for a writer and the verification key for the operator.",
        discussion: """
            Writes the sealing key file (mode 0600) that a writer takes with --audit-seal-key; the \
            writer evolves it in place every epoch (a one-way step; the previous key is wiped), so a \
            thief of the running host cannot re-seal records of epochs that already ended. Prints \
            the verification key once (or writes it with --verification-key): keep it OFF this host \
            (it can also forge seals) and check logs with `audit --verify --verify-key KEY`.

            Exit status: 0 created, 1 a file could not be written, 2 usage error, 3 the sealing \
            key file exists (use --force).
            """
    )

    @Option(help: ArgumentHelp("Sealing key file to create (for the writer).", valueName: "file"))
    var sealingKey: String

    @Option(help: ArgumentHelp("Also write the verification key to this file (mode 0600) instead of only printing it.", valueName: "file"))
    var verificationKey: String?

    @Option(help: "Epoch length: seconds, or with s/m/h/d (default 15m; at least 1s).")
    var interval: String = "15m"

    @Flag(help: "Replace an existing sealing key file.")
    var force = false

    func validate() throws {
        guard parseAuditInterval(interval) != nil else { throw ValidationError("--interval must be like 900, 90s, 15m, 2h or 1d") }
    }

    func run() throws {
        if !force && FileManager.default.fileExists(atPath: sealingKey) {
            throw CLIError(.refused, "\(sealingKey) exists; a new key pair would orphan logs sealed with it (use --force)")
        }
        let start = AuditTimestamp.now().microsSinceEpoch
        let (sealing, verify) = AuditSealingKey.generate(startMicros: start, intervalMicros: parseAuditInterval(interval)!)
        do {
            try AuditSealingKeyFile.store(sealing, path: sealingKey)
            if let verificationKey {
                try AuditSealingKeyFile.storeText(verify.text + "\n", path: verificationKey)
            }
        } catch {
            throw CLIError(.failure, error.description)
        }
        print("sealing key: \(sealingKey) (key id \(verify.id.hex), epoch \(interval), for the writer: --audit-seal-key \(sealingKey))")
        print("verification key: \(verify.text)")
        print("Keep the verification key elsewhere (not on this host): it verifies every epoch's seal and could forge them.")
    }
}

/// `ocapn-uds audit handover`: the current writer signs over a log to a new identity.
struct AuditHandoverCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "handover",
        abstract: "Close an audit log with a record, signed by its current writer, naming the next writer.",
        discussion: """
            Run with the writer stopped: the log is verified as on any reopen, then closed with \
            log.closed (cause handover, next_writer). Without it, a log continued by another \
            identity fails `audit --verify` (writerChangeWithoutHandover) and is moved aside by \
            the new writer. Exit status: 0 handed over, 1 the log could not be opened or written, \
            2 usage error, 3 key file refused.
            """
    )

    @Argument(help: "The live audit log file.")
    var file: String

    /// The current writer's key.
    @OptionGroup var key: IdentityOptions

    @Option(help: ArgumentHelp("The next writer (designator, public key file or key file).", valueName: "key"))
    var to: String

    @Option(help: ArgumentHelp("The writer's sealing key file, if the log is sealed.", valueName: "file"))
    var auditSealKey: String?

    func run() throws {
        let next = try resolveAuditWriter(to)
        let pair = try key.loadKeyPair()
        let sink: AuditFileSink
        do {
            sink = try AuditFileSink(AuditFileConfiguration(
                path: file, writer: pair.publicIdentity,
                signer: pair, sealingKeyPath: auditSealKey))
        } catch {
            throw CLIError(.failure, "audit log \(file): \(error)")
        }
        if let f = sink.reopenFailure {
            FileHandle.standardError.write(Data("ocapn-uds audit: \(file) failed verification (\(f.failure)); moved aside to \(f.moved?.value ?? "-")\n".utf8))
        }
        sink.close(handoverTo: next)
        if let e = sink.status.lastFailure { throw CLIError(.failure, "audit log \(file): \(e)") }
        print("handed over: \(file) from \(pair.publicIdentity.fingerprint) to \(next.fingerprint)")
    }
}

/// Writer-side audit options shared by `intro-server` and `peer`.
struct AuditWriterOptions: ParsableArguments {
    @Option(help: ArgumentHelp("With --audit-log: forward-secure sealing key file from `audit setup-keys` (evolved in place each epoch).", valueName: "file"))
    var auditSealKey: String?

    @Option(help: ArgumentHelp("With --audit-log: append each checkpoint's seq and hash to this file (`-` for stderr), for `audit --verify --witness`.", valueName: "file"))
    var witness: String?

    @Option(help: "With --audit-log: a signed checkpoint at least every this many records.")
    var auditCheckpointRecords: Int = 1000

    @Option(help: "With --audit-log: a signed checkpoint at least every this many seconds.")
    var auditCheckpointSeconds: Int = 60

    func validate(auditLog: String?) throws {
        if auditLog == nil && (auditSealKey != nil || witness != nil) {
            throw ValidationError("--audit-seal-key and --witness need --audit-log")
        }
        guard (1...1_000_000).contains(auditCheckpointRecords) else { throw ValidationError("--audit-checkpoint-records must be 1...1000000") }
        guard (1...86_400).contains(auditCheckpointSeconds) else { throw ValidationError("--audit-checkpoint-seconds must be 1...86400") }
    }

    /// Opens the log (verified reopen); a file moved aside is logged at error level.
    func openSink(path: String, keyPair: IdentityKeyPair, logger: Logger) throws(AuditError) -> AuditFileSink {
        let witnessTarget: AuditWitnessTarget? = witness.map { $0 == "-" || $0 == "stderr" ? .standardError : .file($0) }
        let sink = try AuditFileSink(AuditFileConfiguration(
            path: path, writer: keyPair.publicIdentity,
            signer: keyPair,
            checkpoints: AuditCheckpointPolicy(everyRecords: auditCheckpointRecords, intervalMicros: Int64(auditCheckpointSeconds) * 1_000_000),
            sealingKeyPath: auditSealKey, witness: witnessTarget, tick: .seconds(1), asynchronous: true))
        if let f = sink.reopenFailure {
            logger.error("audit log failed verification on reopen and was not extended; moved aside, new file started", metadata: [
                "path": "\(path)", "moved": "\(f.moved?.value ?? "(missing)")", "moved_hash": "\(f.movedHash?.hex ?? "-")",
                "failure": "\(f.failure.value)",
            ])
        }
        return sink
    }
}
