import Identity

/// Who talked to whom, from audit records: peers and servers as nodes, an edge per
/// (initiator, target, server) with verified handshakes and failures by reason (Graphviz DOT).
///
/// Both ends of a handshake may be in the input (two peers' logs): a verified handshake is
/// counted once per transcript hash.
public struct AuditGraph: Sendable {
    public struct EdgeKey: Hashable, Sendable, Comparable {
        public let initiator: AuditPeerID
        public let target: AuditPeerID
        public let server: AuditPeerID?
        public static func < (a: EdgeKey, b: EdgeKey) -> Bool {
            (a.initiator.fingerprint, a.target.fingerprint, a.server?.fingerprint ?? "")
                < (b.initiator.fingerprint, b.target.fingerprint, b.server?.fingerprint ?? "")
        }
    }

    public struct Counts: Sendable, Equatable {
        public var verified = 0
        public var failures: [AuditReason: Int] = [:]
    }

    public private(set) var edges: [EdgeKey: Counts] = [:]
    public private(set) var servers: Set<AuditPeerID> = []
    public private(set) var peers: Set<AuditPeerID> = []
    /// (peer, server) → accepted registrations, from servers' logs.
    public private(set) var registrations: [EdgeKey: Int] = [:]
    private var transcripts: Set<AuditDigest> = []

    public init() {}

    public mutating func add(_ record: AuditRecord) {
        let e = record.event
        switch e.kind {
        case .handshakeSucceeded, .handshakeFailed:
            let initiator: AuditPeerID?, target: AuditPeerID?
            if e.role == .responder {
                initiator = e.provedPeer ?? e.from ?? e.expectedPeer
                target = e.local
            } else {
                initiator = e.local
                target = e.expectedPeer ?? e.provedPeer ?? e.to
            }
            guard let initiator, let target else { return }
            let key = EdgeKey(initiator: initiator, target: target, server: e.introServer)
            peers.insert(initiator)
            peers.insert(target)
            if let s = e.introServer { servers.insert(s) }
            if e.kind == .handshakeSucceeded {
                if let t = e.transcriptHash {
                    guard transcripts.insert(t).inserted else { return }
                }
                edges[key, default: Counts()].verified += 1
            } else {
                edges[key, default: Counts()].failures[e.reason ?? AuditReason(rawValue: "unknown")!, default: 0] += 1
            }
        case .registrationAccepted:
            guard e.role == .server, let peer = e.from, let server = e.local ?? e.introServer else { return }
            servers.insert(server)
            peers.insert(peer)
            registrations[EdgeKey(initiator: peer, target: server, server: server), default: 0] += 1
        default:
            return
        }
    }

    /// `fp1:abcd-efgh-…` → `abcd-efgh`: enough to tell nodes apart at a glance.
    public static func shortLabel(_ p: AuditPeerID) -> String {
        let body = p.fingerprint.hasPrefix("fp1:") ? String(p.fingerprint.dropFirst(4)) : p.fingerprint
        return body.split(separator: "-").prefix(2).joined(separator: "-")
    }

    /// The DOT text. Node ids are full fingerprints; labels show the short form and the full one.
    public func dot() -> String {
        var out = "digraph \"ocapn-uds audit\" {\n"
        out += "  graph [rankdir=LR, fontname=\"Helvetica\", label=\"ocapn-uds audit: verified handshakes (solid), failures (dashed red), registrations (dotted)\"];\n"
        out += "  node [fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=9];\n"
        for s in servers.sorted() {
            out += "  \"\(s.fingerprint)\" [shape=box, style=rounded, label=\"server \(Self.shortLabel(s))\\n\(s.fingerprint)\"];\n"
        }
        for p in peers.subtracting(servers).sorted() {
            out += "  \"\(p.fingerprint)\" [shape=ellipse, label=\"\(Self.shortLabel(p))\\n\(p.fingerprint)\"];\n"
        }
        for (k, n) in registrations.sorted(by: { $0.key < $1.key }) {
            out += "  \"\(k.initiator.fingerprint)\" -> \"\(k.target.fingerprint)\" [style=dotted, color=gray50, label=\"registered \(n)\"];\n"
        }
        for (k, c) in edges.sorted(by: { $0.key < $1.key }) {
            let via = k.server.map { "via \(Self.shortLabel($0))" } ?? "direct"
            if c.verified > 0 {
                out += "  \"\(k.initiator.fingerprint)\" -> \"\(k.target.fingerprint)\" [color=darkgreen, penwidth=2, label=\"\(c.verified) verified\\n\(via)\"];\n"
            }
            if !c.failures.isEmpty {
                let reasons = c.failures.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue) \($0.value)" }
                out += "  \"\(k.initiator.fingerprint)\" -> \"\(k.target.fingerprint)\" [color=red, fontcolor=red, style=dashed, constraint=false, label=\"failed: \(reasons.joined(separator: ", "))\\n\(via)\"];\n"
            }
        }
        out += "}\n"
        return out
    }
}

/// The sealing state of a log as the summary shows it, from its bookkeeping records alone
/// (nothing verified: `--verify` does that).
public struct AuditSealingSummary: Sendable {
    public private(set) var writer: PublicIdentity?
    public private(set) var signed = false
    public private(set) var sealID: AuditDigest?
    public private(set) var lastCheckpoint: (seq: UInt64, time: AuditTimestamp, epoch: UInt64?)?
    public private(set) var after = 0
    public private(set) var closed = false

    public init() {}

    public mutating func add(_ r: AuditRecord) {
        switch r.event.kind {
        case .logOpened:
            writer = r.log?.writer
            signed = r.log?.signed ?? false
            sealID = r.log?.sealID
            closed = false
            after += 1
        case .logCheckpoint, .logClosed:
            if r.log?.signature != nil {
                lastCheckpoint = (r.seq, r.timestamp, r.log?.epoch)
                after = 0
            } else {
                after += 1
            }
            closed = r.event.kind == .logClosed && r.log?.cause == .shutdown
        default:
            after += 1
        }
    }

    /// `sealing: …` for the text summary.
    public var line: String {
        let mode: String
        if let sealID { mode = "forward-secure seals (key id \(sealID.hex)) and signed checkpoints" }
        else if signed { mode = "signed checkpoints, no forward-secure seals" }
        else { mode = "none (unsigned log: edits by anyone who can write the file are undetectable)" }
        var out = "sealing: \(mode)"
        if let w = writer { out += "; writer \(w.fingerprint)" }
        if let c = lastCheckpoint {
            out += "; last sealed point seq \(c.seq) at \(c.time.rfc3339)" + (c.epoch.map { " (epoch \($0))" } ?? "")
        } else if signed {
            out += "; nothing sealed yet"
        }
        out += "; \(after) record(s) after it" + (closed ? "; closed cleanly" : "; not closed (writer running or stopped uncleanly)")
        return out + " (check with --verify)"
    }

    public var json: String {
        var f = ["\"signed\":\(signed)", "\"records_after\":\(after)", "\"closed\":\(closed)"]
        if let sealID { f.append("\"seal_id\":\"\(sealID.hex)\"") }
        if let w = writer { f.append("\"writer\":\"\(w.fingerprint)\"") }
        if let c = lastCheckpoint {
            f.append("\"last_sealed_seq\":\(c.seq)")
            f.append("\"last_sealed_ts\":\"\(c.time.rfc3339)\"")
            if let e = c.epoch { f.append("\"last_sealed_epoch\":\(e)") }
        }
        return "{\(f.joined(separator: ","))}"
    }
}
