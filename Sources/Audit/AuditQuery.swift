/// Record filters (`--peer`, `--since`, `--until`, `--event`, `--failures`); all must match.
public struct AuditQuery: Sendable {
    /// Records naming this fingerprint in any peer field.
    public var peer: AuditPeerID?
    /// Inclusive lower and exclusive upper time bounds.
    public var since: AuditTimestamp?
    public var until: AuditTimestamp?
    /// Event names (`handshake.failed`) or families (`handshake` matches `handshake.*`).
    public var events: [String]
    public var failuresOnly: Bool
    /// Whether log.* bookkeeping records match (off by default: they are not events).
    public var includeBookkeeping: Bool

    public init(peer: AuditPeerID? = nil, since: AuditTimestamp? = nil, until: AuditTimestamp? = nil,
                events: [String] = [], failuresOnly: Bool = false, includeBookkeeping: Bool = false) {
        self.peer = peer
        self.since = since
        self.until = until
        self.events = events
        self.failuresOnly = failuresOnly
        self.includeBookkeeping = includeBookkeeping
    }

    /// Whether an event filter names a known event or family (for argument validation).
    public static func isKnownEventFilter(_ text: String) -> Bool {
        AuditEventKind.allCases.contains { $0.rawValue == text || $0.rawValue.hasPrefix(text + ".") }
    }

    public func matches(_ r: AuditRecord) -> Bool {
        let e = r.event
        if !includeBookkeeping && e.kind.isLogBookkeeping { return false }
        if failuresOnly && e.outcome != .failure { return false }
        if let since, r.timestamp < since { return false }
        if let until, !(r.timestamp < until) { return false }
        if let peer, !e.peers.contains(peer) && r.log?.writer.map({ AuditPeerID($0) }) != peer { return false }
        if !events.isEmpty {
            let name = e.kind.rawValue
            guard events.contains(where: { name == $0 || name.hasPrefix($0 + ".") }) else { return false }
        }
        return true
    }
}

/// Counts for the at-a-glance summary, built one record at a time.
public struct AuditSummary: Sendable {
    /// At most this many failures are kept for listing (all are counted).
    public let maxListedFailures: Int
    /// At most this many attempt ids are tracked for the open/duplicate-terminal checks.
    public let maxTrackedAttempts: Int

    public private(set) var records = 0
    /// Every record read, matching or not (log.* bookkeeping included): what `--verify` counts.
    public private(set) var recordsRead = 0
    public private(set) var byEvent: [AuditEventKind: [AuditOutcome: Int]] = [:]
    public private(set) var failuresByReason: [AuditReason: Int] = [:]
    public private(set) var peerCounts: [AuditPeerID: Int] = [:]
    public private(set) var first: AuditTimestamp?
    public private(set) var last: AuditTimestamp?
    public private(set) var failures: [AuditLocatedRecord] = []
    public private(set) var failureCount = 0
    /// Attempts that ended more than once (a writer bug or tampering).
    public private(set) var repeatedTerminals = 0
    public private(set) var attemptsUntracked = false
    private var openAttempts: Set<UInt64> = []
    private var endedAttempts: Set<UInt64> = []
    private var localPeers: Set<AuditPeerID> = []

    public init(maxListedFailures: Int = 1000, maxTrackedAttempts: Int = 1_000_000) {
        self.maxListedFailures = maxListedFailures
        self.maxTrackedAttempts = maxTrackedAttempts
    }

    /// Attempts with a pending record and no terminal record (yet).
    public var unterminatedAttempts: Int { openAttempts.count }

    /// Remote peers by how many records name them, most first (ties by fingerprint).
    public func topPeers(_ n: Int) -> [(peer: AuditPeerID, count: Int)] {
        peerCounts.filter { !localPeers.contains($0.key) }
            .sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .prefix(n).map { ($0.key, $0.value) }
    }

    public func count(_ kind: AuditEventKind, _ outcome: AuditOutcome? = nil) -> Int {
        guard let row = byEvent[kind] else { return 0 }
        if let outcome { return row[outcome] ?? 0 }
        return row.values.reduce(0, +)
    }

    /// Counts a record read from the files, before filtering.
    public mutating func read() { recordsRead += 1 }

    public mutating func add(_ r: AuditLocatedRecord) {
        let e = r.record.event
        records += 1
        byEvent[e.kind, default: [:]][e.outcome, default: 0] += 1
        let t = r.record.timestamp
        if first.map({ t < $0 }) ?? true { first = t }
        if last.map({ $0 < t }) ?? true { last = t }
        if let l = e.local { localPeers.insert(l) }
        for p in Set([e.expectedPeer, e.provedPeer, e.from, e.to].compactMap { $0 }) { peerCounts[p, default: 0] += 1 }
        if e.outcome == .failure {
            failureCount += 1
            if let reason = e.reason { failuresByReason[reason, default: 0] += 1 }
            if failures.count < maxListedFailures { failures.append(r) }
        }
        if let a = e.attempt?.rawValue, !attemptsUntracked {
            if e.kind.endsAttempt {
                if !endedAttempts.insert(a).inserted { repeatedTerminals += 1 }
                openAttempts.remove(a)
            } else if e.outcome == .pending, !endedAttempts.contains(a) {
                openAttempts.insert(a)
            }
            if openAttempts.count + endedAttempts.count > maxTrackedAttempts {
                attemptsUntracked = true
                openAttempts = []
                endedAttempts = []
            }
        }
    }

    /// The text a person reads: totals, time range, counts by event and outcome, failures by
    /// reason, top peers, then the listed failures.
    public func render(topPeerCount: Int = 10) -> String {
        var out: [String] = []
        let range = first.map { "\($0.rfc3339) .. \(last!.rfc3339)" } ?? "-"
        // The same total as --verify, then how many of them are counted below.
        let read = max(recordsRead, records)
        let shown = read == records ? "" : " (\(records) shown; the rest are log.* bookkeeping or filtered out)"
        out.append("records: \(read)\(shown)   failures: \(failureCount)   time: \(range)")
        if unterminatedAttempts > 0 || repeatedTerminals > 0 {
            out.append("attempts without an end: \(unterminatedAttempts)   attempts ended twice: \(repeatedTerminals)")
        }
        out.append("")
        // Start records (introduction.requested, handshake.started) open an attempt; whether one
        // is still open is the "attempts without an end" line, so the column is not "pending".
        out.append(pad("event", 24) + pad("success", 9) + pad("failure", 9) + pad("started", 9) + "info")
        for kind in AuditEventKind.allCases {
            guard let row = byEvent[kind] else { continue }
            out.append(pad(kind.rawValue, 24) + pad("\(row[.success] ?? 0)", 9) + pad("\(row[.failure] ?? 0)", 9)
                       + pad("\(row[.pending] ?? 0)", 9) + "\(row[.info] ?? 0)")
        }
        if !failuresByReason.isEmpty {
            out.append("")
            out.append("failures by reason:")
            for (reason, n) in failuresByReason.sorted(by: { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }) {
                out.append("  " + pad("\(n)", 8) + reason.rawValue)
            }
        }
        let top = topPeers(topPeerCount)
        if !top.isEmpty {
            out.append("")
            out.append("top peers:")
            for (p, n) in top { out.append("  " + pad("\(n)", 8) + p.fingerprint) }
        }
        if !failures.isEmpty {
            out.append("")
            out.append(failureCount > failures.count ? "failures (first \(failures.count) of \(failureCount)):" : "failures:")
            for f in failures { out.append("  " + Self.oneLine(f)) }
        }
        return out.joined(separator: "\n") + "\n"
    }

    /// `TIME EVENT reason=… peer=… FILE:LINE` for listings.
    public static func oneLine(_ r: AuditLocatedRecord) -> String {
        let e = r.record.event
        var parts = [r.record.timestamp.rfc3339, e.kind.rawValue]
        if let reason = e.reason { parts.append("reason=\(reason)") }
        if let role = e.role { parts.append("role=\(role.rawValue)") }
        if let p = e.remotePeer { parts.append("peer=\(p)") }
        // An introduction's parties, so a listed failure says whom it was for.
        if let f = e.from, f != e.remotePeer { parts.append("from=\(f)") }
        if let t = e.to, t != e.remotePeer { parts.append("to=\(t)") }
        if let s = e.introServer { parts.append("server=\(s)") }
        if let c = e.credentials { parts.append("pid=\(c.pid) uid=\(c.uid)") }
        if let d = e.durationMicros { parts.append("duration_us=\(d)") }
        parts.append("(\(r.location))")
        return parts.joined(separator: " ")
    }

    private func pad(_ s: String, _ width: Int) -> String {
        s.count >= width ? s + " " : s + String(repeating: " ", count: width - s.count)
    }

    /// The summary as one JSON object (for `--json`).
    public func renderJSON(topPeerCount: Int = 10) -> String {
        func q(_ s: String) -> String {
            var b: [UInt8] = []
            JSONLineWriter.appendQuoted(s, to: &b)
            return String(decoding: b, as: UTF8.self)
        }
        var events: [String] = []
        for kind in AuditEventKind.allCases {
            guard let row = byEvent[kind] else { continue }
            let cells = AuditOutcome.allCases.compactMap { o in row[o].map { "\(q(o.rawValue)):\($0)" } }
            events.append("\(q(kind.rawValue)):{\(cells.joined(separator: ","))}")
        }
        let reasons = failuresByReason.sorted { $0.key < $1.key }.map { "\(q($0.key.rawValue)):\($0.value)" }
        let peers = topPeers(topPeerCount).map { "{\"peer\":\(q($0.peer.fingerprint)),\"records\":\($0.count)}" }
        var fields = ["\"records\":\(records)", "\"failures\":\(failureCount)"]
        if let first, let last { fields += ["\"first\":\(q(first.rfc3339))", "\"last\":\(q(last.rfc3339))"] }
        fields += [
            "\"events\":{\(events.joined(separator: ","))}",
            "\"failures_by_reason\":{\(reasons.joined(separator: ","))}",
            "\"top_peers\":[\(peers.joined(separator: ","))]",
            "\"unterminated_attempts\":\(unterminatedAttempts)",
            "\"repeated_terminals\":\(repeatedTerminals)",
        ]
        return "{\(fields.joined(separator: ","))}"
    }
}
