
/// Where layers send audit events. Implementations are thread-safe and never throw: an audit
/// failure must not take the daemon down, so it is counted and surfaced through `status`.
public protocol AuditSink: Sendable {
    func record(_ event: AuditEvent)
}

/// Counters a sink exposes so a failing audit trail is visible (health checks, metrics).
public struct AuditSinkStatus: Sendable, Equatable {
    public var recordsWritten: UInt64 = 0
    /// Records that could not be written or synced (I/O error, sink closed, record too large).
    public var failures: UInt64 = 0
    public var lastFailure: AuditError?
    public init() {}
}
