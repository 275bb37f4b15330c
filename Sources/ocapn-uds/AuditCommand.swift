import ArgumentParser
import Audit
import Foundation
import Identity

/// `ocapn-uds audit FILE…`: summarise, filter, follow and verify audit logs.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Read, filter, follow and verify the tamper-evident audit log (JSON Lines).",
        discussion: """
        Give every file of a chain (e.g. audit.jsonl*): files are put in chain order by their \
        first record, whatever order they are given in. The record schema is in docs/AUDIT.md.

        Default output: a summary (counts by event and outcome, failures by reason, top peers, \
        time range), then the failures. --list prints the matching records instead; --json makes \
        either machine-readable (summary object, or the records' exact JSON lines).

        Exit status:
          0   success; --verify: intact (and sealed, if signed)
          1   a file could not be read
          2   usage error (bad option, time, fingerprint or event name)
          4   --verify: chain broken (records edited, deleted, inserted,
              reordered; bad signature; malformed line): first at FILE:LINE
          5   --verify: intact but for a torn last line (crash mid-write)
          6   --verify: intact, but a signed log lacks its signed closing
              record (writer running or crashed, or the tail was cut off)
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

    @Flag(help: "Verify the hash chain and checkpoint signatures; report the first broken link.")
    var verify = false

    @Option(help: "With --verify: require every log.opened to name this writer (designator).")
    var writer: String?

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
        if writer != nil && !verify { throw ValidationError("--writer only applies to --verify") }
        if let writer, (try? PublicIdentity(designator: writer)) == nil {
            throw ValidationError("--writer must be a 52-character designator")
        }
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
        var summary = AuditSummary()
        let result: (unreadable: Int, tornTail: AuditLocation?)
        do {
            result = try AuditLog.records(files, maxLineBytes: maxLineBytes) { r in
                summary.read()
                guard q.matches(r.record) else { return }
                if list { print(json ? String(decoding: r.line, as: UTF8.self) : AuditSummary.oneLine(r)) }
                summary.add(r)
            }
        } catch let e as AuditError {
            warn("ocapn-uds audit: \(e)")
            throw ExitCode(CLIExitCode.failure.rawValue)
        }
        if !list { print(json ? summary.renderJSON(topPeerCount: top) : summary.render(topPeerCount: top), terminator: json ? "\n" : "") }
        if result.unreadable > 0 { warn("warning: \(result.unreadable) unreadable line(s) skipped; run with --verify") }
        if let t = result.tornTail { warn("warning: torn last line at \(t) (interrupted write)") }
    }

    private func runVerify() throws {
        let pinned = writer.flatMap { try? PublicIdentity(designator: $0) }
        for f in files where !FileManager.default.isReadableFile(atPath: f) {
            warn("ocapn-uds audit: cannot read \(f)")
            throw ExitCode(CLIExitCode.failure.rawValue)
        }
        let report = AuditVerifier.verify(paths: files, expectedWriter: pinned, maxLineBytes: maxLineBytes)
        if json {
            print(verifyJSON(report))
        } else {
            for f in report.findings { print(f.description) }
            let seqs = report.firstSeq.map { "seq \($0)...\(report.lastSeq ?? $0)" } ?? "no records"
            let writers = report.writers.map(\.fingerprint).joined(separator: ", ")
            print("\(report.status.rawValue): \(report.records) records in \(report.files.count) file(s), \(seqs), "
                  + "\(report.signaturesVerified) signature(s) verified, writer(s): \(writers.isEmpty ? "-" : writers)")
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
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
            "\"signatures_verified\":\(r.signaturesVerified)",
            "\"files\":[\(r.files.map(q).joined(separator: ","))]",
            "\"writers\":[\(r.writers.map { q($0.fingerprint) }.joined(separator: ","))]",
        ]
        if let a = r.firstSeq, let b = r.lastSeq { fields += ["\"first_seq\":\(a)", "\"last_seq\":\(b)"] }
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
            usleep(UInt32(intervalMs) * 1000)
        }
    }

    private func warn(_ s: String) {
        FileHandle.standardError.write(Data((s + "\n").utf8))
    }
}
