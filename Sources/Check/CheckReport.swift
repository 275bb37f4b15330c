import Foundation

/// The outcome of one check.
public enum CheckStatus: String, Codable, Sendable, CaseIterable {
    /// The target behaves as the check requires.
    case pass = "PASS"
    /// Not a proven weakness: the target did something the check cannot judge (for example it
    /// left a connection open without acting on the bad input); docs/CHECK.md says how to read it.
    case warn = "WARN"
    /// The target has the weakness the check looks for.
    case fail = "FAIL"
    /// The check did not run; the evidence says why.
    case skip = "SKIP"
}

/// How bad the weakness is when the check fails (fixed per check, shown on every row).
public enum CheckSeverity: String, Codable, Sendable, CaseIterable {
    case info, low, medium, high, critical
}

/// One row of a report: a check, its result and one line of evidence.
public struct CheckRow: Codable, Equatable, Sendable {
    /// Stable check id: the catalog row it comes from, a dot, a short name (`E2.bad-signature`).
    public let id: String
    /// The reliability-catalog row (or wire-dossier / handshake-anchor section) it comes from.
    public let catalog: String
    public let title: String
    public let status: CheckStatus
    public let severity: CheckSeverity
    /// One line: what was sent and what came back.
    public let evidence: String

    public init(id: String, catalog: String, title: String, status: CheckStatus, severity: CheckSeverity, evidence: String) {
        self.id = id
        self.catalog = catalog
        self.title = title
        self.status = status
        self.severity = severity
        // One line, whatever a probe reported.
        self.evidence = evidence.split(whereSeparator: \.isNewline).joined(separator: " ")
    }
}

/// Everything one `check server` or `check peer` run found.
public struct CheckReport: Codable, Equatable, Sendable {
    /// The JSON schema name; a change that breaks readers gets a new number.
    public static let format = "ocapn-uds-check/1"

    public struct Summary: Codable, Equatable, Sendable {
        public var pass = 0, warn = 0, fail = 0, skip = 0
    }

    public var format = CheckReport.format
    /// `server` or `peer`.
    public let kind: String
    /// The socket path (server) or the locator (peer).
    public let target: String
    public private(set) var rows: [CheckRow]

    public init(kind: String, target: String, rows: [CheckRow] = []) {
        self.kind = kind
        self.target = target
        self.rows = rows
    }

    public mutating func append(_ row: CheckRow) { rows.append(row) }

    public var summary: Summary {
        var s = Summary()
        for row in rows {
            switch row.status {
            case .pass: s.pass += 1
            case .warn: s.warn += 1
            case .fail: s.fail += 1
            case .skip: s.skip += 1
            }
        }
        return s
    }

    /// 0 when nothing failed, 1 otherwise (2 and 3 are the CLI's usage and unreachable).
    public var exitStatus: Int32 { summary.fail == 0 ? 0 : 1 }

    public func row(_ id: String) -> CheckRow? { rows.first { $0.id == id } }

    private enum CodingKeys: String, CodingKey { case format, kind, target, rows, summary, exitStatus = "exit" }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        format = try c.decode(String.self, forKey: .format)
        kind = try c.decode(String.self, forKey: .kind)
        target = try c.decode(String.self, forKey: .target)
        rows = try c.decode([CheckRow].self, forKey: .rows)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(format, forKey: .format)
        try c.encode(kind, forKey: .kind)
        try c.encode(target, forKey: .target)
        try c.encode(rows, forKey: .rows)
        try c.encode(summary, forKey: .summary)
        try c.encode(exitStatus, forKey: .exitStatus)
    }

    /// The documented JSON form (docs/CHECK.md): sorted keys, one object, a final newline.
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        // Encoding plain strings and integers cannot fail.
        let data = try! encoder.encode(self)
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    /// A table (status, severity, id, evidence) and a summary line. `colour` only for a terminal.
    public func table(colour: Bool) -> String {
        let idWidth = max(2, rows.map(\.id.count).max() ?? 2)
        func paint(_ status: CheckStatus) -> String {
            let text = status.rawValue
            guard colour else { return text }
            let code: String
            switch status {
            case .pass: code = "32"
            case .warn: code = "33"
            case .fail: code = "1;31"
            case .skip: code = "2"
            }
            return "\u{1B}[\(code)m\(text)\u{1B}[0m"
        }
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        var out = "ocapn-uds check \(kind) \(target)\n"
        out += "\(pad("STATUS", 6))  \(pad("SEVERITY", 8))  \(pad("ID", idWidth))  EVIDENCE\n"
        for row in rows {
            let status = paint(row.status) + String(repeating: " ", count: 6 - row.status.rawValue.count)
            out += "\(status)  \(pad(row.severity.rawValue, 8))  \(pad(row.id, idWidth))  \(row.title): \(row.evidence)\n"
        }
        let s = summary
        out += "summary: \(rows.count) checks, \(s.pass) pass, \(s.warn) warn, \(s.fail) fail, \(s.skip) skip\n"
        return out
    }
}
