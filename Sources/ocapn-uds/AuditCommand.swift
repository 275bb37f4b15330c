import ArgumentParser
import Audit
import Foundation
import Identity

/// `ocapn-uds audit`: reading (the default) and the key subcommands.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: AuditReadCommand.configuration.abstract,
        discussion: AuditReadCommand.configuration.discussion + """


        Run `ocapn-uds audit read --help` for every reading option (`audit FILE…` is `audit read FILE…`).
        """,
        subcommands: [AuditReadCommand.self, AuditSetupKeysCommand.self, AuditHandoverCommand.self],
        defaultSubcommand: AuditReadCommand.self
    )
}

/// `ocapn-uds audit [read] FILE…`: summarise, filter, follow, graph and verify audit logs.
struct AuditReadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "read",
        abstract: "Read, filter, follow and verify the tamper-evident audit log (JSON Lines).",
        discussion: """
        Give every file of a chain (e.g. audit.jsonl*): files are put in chain order by their \
        first record, whatever order they are given in. Files a writer moved aside \
        (NAME.tampered-TIMESTAMP) are skipped when given with others; verify them alone. The \
        record schema and the threat model are in docs/AUDIT.md.

        Default output: a summary (counts by event and outcome, failures by reason, top peers, \
        time range, sealing state), then the failures. --list prints the matching records \
        instead; --json makes either machine-readable. --graph writes Graphviz DOT of who \
        talked to whom (--graph-format svg renders it with `dot`).

        --verify is strict: every record must be covered by a checkpoint signed by the expected \
        writer (--writer) or sealed under the operator's key (--verify-key, from `audit \
        setup-keys`); a change of writer needs a hand-over signed by the previous one (`audit \
        handover`). --witness FILE checks the checkpoints a writer's --witness recorded.

        Exit status:
          0   success; --verify: intact and sealed
          1   a file could not be read (or `dot` is missing for --graph-format svg)
          2   usage error (bad option, time, fingerprint, key or event name)
          4   --verify: chain broken (records edited, deleted, inserted,
              reordered; bad signature or seal; writer changed without a
              hand-over; a rewrite or cut behind a witnessed checkpoint)
          5   --verify: intact but for a torn last line (crash mid-write)
          6   --verify: intact, but records follow the last sealed point or
              the signed closing record is missing (writer running or
              crashed, or the tail was cut off): the count is printed
          7   --verify: unsigned: an unsigned log, or an unsigned (or, with
              --verify-key, unsealed) run inside a signed log; new in this
              version (was 0); --allow-unsigned accepts it
        """
    )

    @Argument(help: "Audit log files (the live file and its rotated files).")
    var files: [String]

    @Option(help: "Only records naming this peer fingerprint (fp1:…).")
    var peer: String?

    @Option(help: "Only records at or after this time: RFC 3339 or relative (90s, 10m, 2h, 7d).")
    var since: String?

    @Option(help: "Only records before this time: RFC 3339 or relative.")
    var until: String?

    @Option(help: "Only these events or families (handshake.failed, handshake); repeatable.")
    var event: [String] = []

    @Flag(help: "Only failures.")
    var failures = false

    @Flag(help: "Machine-readable output.")
    var json = false

    @Flag(help: "List every matching record instead of the summary.")
    var list = false

    @Flag(help: "Tail one live log (poll; follows rotation), printing matching records as they arrive.")
    var follow = false

    @Option(help: "Polling interval for --follow, in milliseconds.")
    var intervalMs: Int = 500

    @Flag(help: "Verify the hash chain, checkpoint signatures and seals; report the first broken link.")
    var verify = false

    @Option(help: ArgumentHelp("With --verify: the writer that opened the oldest file (designator, public key file or key file).", valueName: "key"))
    var writer: String?

    @Option(help: ArgumentHelp("With --verify: the operator's verification key (or a file holding it) from `audit setup-keys`.", valueName: "key"))
    var verifyKey: String?

    @Flag(help: "With --verify: accept unsigned logs and unsigned runs (exit 0 instead of 7).")
    var allowUnsigned = false

    @Option(help: ArgumentHelp("With --verify: a witness file the writer's --witness filled; a rewrite or cut behind one of its checkpoints fails.", valueName: "file"))
    var witness: String?

    @Flag(help: "Write a Graphviz DOT graph of peers and servers (edges: verified handshakes and failures by reason).")
    var graph = false

    @Option(help: "With --graph: dot (text) or svg (rendered with Graphviz's `dot`).")
    var graphFormat: String = "dot"

    @Option(help: "How many peers the summary lists.")
    var top: Int = 10

    @Option(help: "Longest line read, in bytes.")
    var maxLineBytes: Int = AuditLineReader.defaultMaxLineBytes

    func validate() throws {
        guard !files.isEmpty else { throw ValidationError("give at least one audit file") }
        if let peer, AuditPeerID(fingerprint: peer) == nil {
            throw ValidationError("--peer must be a fingerprint like fp1:abcd-efgh-ijkl-mnop-qrst-uvwx")
        }
        for e in event where !AuditQuery.isKnownEventFilter(e) {
            let known = AuditEventKind.allCases.map(\.rawValue).joined(separator: ", ")
            throw ValidationError("unknown event '\(e)'; events are: \(known)")
        }
        if follow && files.count != 1 { throw ValidationError("--follow takes exactly one file (the live log)") }
        if follow && verify { throw ValidationError("--follow and --verify cannot be combined") }
        if (writer != nil || verifyKey != nil || witness != nil || allowUnsigned) && !verify {
            throw ValidationError("--writer, --verify-key, --witness and --allow-unsigned only apply to --verify")
        }
        if graph && (verify || follow || list) { throw ValidationError("--graph cannot be combined with --verify, --follow or --list") }
        guard ["dot", "svg"].contains(graphFormat) else { throw ValidationError("--graph-format must be dot or svg") }
        if graphFormat != "dot" && !graph { throw ValidationError("--graph-format only applies to --graph") }
        guard (1...3_600_000).contains(intervalMs) else { throw ValidationError("--interval-ms must be 1...3600000") }
        guard (0...10_000).contains(top) else { throw ValidationError("--top must be 0...10000") }
        guard (1024...(16 << 20)).contains(maxLineBytes) else { throw ValidationError("--max-line-bytes must be 1 KiB...16 MiB") }
        _ = try query()
    }

    private func query() throws -> AuditQuery {
        let now = AuditTimestamp.now()
        do {
            return AuditQuery(
                peer: peer.flatMap { AuditPeerID(fingerprint: $0) },
                since: try since.map { s throws(AuditError) in try parseAuditTimeBound(s, now: now) },
                until: try until.map { s throws(AuditError) in try parseAuditTimeBound(s, now: now) },
                events: event, failuresOnly: failures)
        } catch {
            throw ValidationError("--since/--until: \(error.detail)")
        }
    }

    func run() throws {
        if verify { return try runVerify() }
        let q = try query()
        if follow { return try runFollow(q) }
        if graph { return try runGraph(q) }
        var summary = AuditSummary()
        var sealing = AuditSealingSummary()
        let result: (unreadable: Int, tornTail: AuditLocation?)
        do {
            result = try AuditLog.records(files, maxLineBytes: maxLineBytes) { r in
                sealing.add(r.record)
                summary.read()
                guard q.matches(r.record) else { return }
                if list { print(json ? String(decoding: r.line, as: UTF8.self) : AuditSummary.oneLine(r)) }
                summary.add(r)
            }
        } catch let e as AuditError {
            warn("ocapn-uds audit: \(e)")
            throw ExitCode(CLIExitCode.failure.rawValue)
        }
        if !list {
            if json {
                let obj = summary.renderJSON(topPeerCount: top)
                print(String(obj.dropLast()) + ",\"sealing\":\(sealing.json)}")
            } else {
                print(summary.render(topPeerCount: top), terminator: "")
                print(sealing.line)
            }
        }
        if result.unreadable > 0 { warn("warning: \(result.unreadable) unreadable line(s) skipped; run with --verify") }
        if let t = result.tornTail { warn("warning: torn last line at \(t) (interrupted write)") }
    }

    /// Files to verify: those a writer moved aside are evidence of their own, skipped in a set.
    private var chainFiles: [String] {
        guard files.count > 1 else { return files }
        return files.filter { !(($0 as NSString).lastPathComponent.contains(".tampered-")) }
    }

    private func runVerify() throws {
        var options = AuditVerifyOptions(allowUnsigned: allowUnsigned)
        if let writer {
            do { options.expectedWriter = try resolveAuditWriter(writer) } catch {
                warn("ocapn-uds audit: --writer: \(error)")
                throw ExitCode(CLIExitCode.usage.rawValue)
            }
        }
        if let verifyKey {
            do { options.verificationKey = try resolveVerificationKey(verifyKey) } catch {
                warn("ocapn-uds audit: --verify-key: \(error.detail)")
                throw ExitCode(CLIExitCode.usage.rawValue)
            }
        }
        if let witness {
            do { options.witness = try AuditWitnessEntry.read(path: witness) } catch {
                warn("ocapn-uds audit: --witness: \(error.detail)")
                throw ExitCode(error.code == .ioError ? CLIExitCode.failure.rawValue : CLIExitCode.usage.rawValue)
            }
        }
        for f in files where !FileManager.default.isReadableFile(atPath: f) {
            warn("ocapn-uds audit: cannot read \(f)")
            throw ExitCode(CLIExitCode.failure.rawValue)
        }
        let chosen = chainFiles
        for skipped in files where !chosen.contains(skipped) {
            warn("ocapn-uds audit: skipping \(skipped): moved aside by the writer after it failed verification; verify it alone")
        }
        let report = AuditVerifier.verify(paths: chosen, options: options, maxLineBytes: maxLineBytes)
        if json {
            print(verifyJSON(report))
        } else {
            // The verdict first (scripts read its count), then what was found, then the sealing state.
            let seqs = report.firstSeq.map { "seq \($0)...\(report.lastSeq ?? $0)" } ?? "no records"
            let writers = report.writers.map(\.fingerprint).joined(separator: ", ")
            print("\(report.status.rawValue): \(report.records) records in \(report.files.count) file(s), \(seqs), "
                  + "\(report.signaturesVerified) signature(s) verified, writer(s): \(writers.isEmpty ? "-" : writers)"
                  + (report.pinned ? "" : " (not pinned)"))
            for f in report.findings { print(f.description) }
            if options.verificationKey != nil || report.sealID != nil {
                print("seals: \(report.sealsVerified) verified" + (report.sealID.map { ", key id \($0.hex)" } ?? "")
                      + (options.verificationKey == nil ? " (not checked: pass --verify-key)" : ""))
            }
            if let p = report.lastSealed {
                print("last sealed point: seq \(p.seq) at \(p.location) (\(p.timestamp.rfc3339)\(p.epoch.map { ", epoch \($0)" } ?? "")); "
                      + "\(report.recordsAfterSeal) record(s) after it")
            } else {
                print("last sealed point: none; \(report.recordsAfterSeal) record(s) unsealed")
            }
            if !options.witness.isEmpty { print("witness: \(report.witnessMatched) of \(options.witness.count) checkpoint(s) matched") }
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }

    private func runGraph(_ q: AuditQuery) throws {
        var g = AuditGraph()
        do {
            _ = try AuditLog.records(chainFiles, maxLineBytes: maxLineBytes) { r in
                guard q.matches(r.record) else { return }
                g.add(r.record)
            }
        } catch {
            warn("ocapn-uds audit: \(error)")
            throw ExitCode(CLIExitCode.failure.rawValue)
        }
        let dot = g.dot()
        guard graphFormat == "svg" else {
            print(dot, terminator: "")
            return
        }
        guard let dotPath = findExecutable("dot") else {
            warn("ocapn-uds audit: --graph-format svg needs Graphviz's `dot`, which is not installed; "
                 + "install it (Debian/Ubuntu: apt-get install graphviz) or use --graph-format dot and render elsewhere")
            throw ExitCode(CLIExitCode.failure.rawValue)
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: dotPath)
        p.arguments = ["-Tsvg"]
        let input = Pipe(), output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        try p.run()
        input.fileHandleForWriting.write(Data(dot.utf8))
        try input.fileHandleForWriting.close()
        let svg = output.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            warn("ocapn-uds audit: dot -Tsvg failed with status \(p.terminationStatus)")
            throw ExitCode(CLIExitCode.failure.rawValue)
        }
        FileHandle.standardOutput.write(svg)
    }

    private func findExecutable(_ name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    private func verifyJSON(_ r: AuditVerifyReport) -> String {
        func q(_ s: String) -> String {
            let data = try! JSONSerialization.data(withJSONObject: [s], options: [.withoutEscapingSlashes])
            return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
        }
        let findings = r.findings.map {
            "{\"code\":\(q($0.code.rawValue)),\"file\":\(q($0.location.file)),\"line\":\($0.location.line),\"break\":\($0.isBreak),\"message\":\(q($0.message))}"
        }
        var fields = [
            "\"status\":\(q(r.status.rawValue))", "\"exit\":\(r.exitCode)", "\"records\":\(r.records)",
            "\"signatures_verified\":\(r.signaturesVerified)", "\"seals_verified\":\(r.sealsVerified)",
            "\"pinned\":\(r.pinned)", "\"records_after_seal\":\(r.recordsAfterSeal)",
            "\"files\":[\(r.files.map(q).joined(separator: ","))]",
            "\"writers\":[\(r.writers.map { q($0.fingerprint) }.joined(separator: ","))]",
        ]
        if let a = r.firstSeq, let b = r.lastSeq { fields += ["\"first_seq\":\(a)", "\"last_seq\":\(b)"] }
        if let p = r.lastSealed { fields += ["\"last_sealed_seq\":\(p.seq)", "\"last_sealed_at\":\(q(p.location.description))"] }
        fields.append("\"findings\":[\(findings.joined(separator: ","))]")
        return "{\(fields.joined(separator: ","))}"
    }

    private func runFollow(_ q: AuditQuery) throws {
        let follower: AuditFollower
        do { follower = try AuditFollower(path: files[0], maxLineBytes: maxLineBytes) } catch {
            warn("ocapn-uds audit: \(error)")
            throw ExitCode(CLIExitCode.failure.rawValue)
        }
        while true {
            do {
                let batch = try follower.poll()
                for r in batch.records where q.matches(r.record) {
                    // Unbuffered, so a pipe sees each record as it arrives.
                    let text = json ? String(decoding: r.line, as: UTF8.self) : AuditSummary.oneLine(r)
                    FileHandle.standardOutput.write(Data((text + "\n").utf8))
                }
                for loc in batch.unreadable { warn("warning: unreadable record at \(loc)") }
            } catch {
                warn("ocapn-uds audit: \(error)")
                throw ExitCode(CLIExitCode.failure.rawValue)
            }
            Thread.sleep(forTimeInterval: Double(intervalMs) / 1000)
        }
    }

    private func warn(_ s: String) {
        FileHandle.standardError.write(Data((s + "\n").utf8))
    }
}
