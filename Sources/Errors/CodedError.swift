/// A module's stable error codes: a string-spelled enum whose raw values are printed by the CLI,
/// written to local logs and (where a layer audits them) to the audit log, so they never change
/// once released. `CaseIterable` lets a layer list every code it can report (docs/AUDIT.md is
/// checked against those lists, not against hand-kept ones).
public protocol ErrorCode: RawRepresentable<String>, Hashable, Sendable, CaseIterable {}

/// The one error shape of the modules that need no more than a code (STYLE.md habit 6): a module
/// declares its `ErrorCode` enum and `public typealias MyError = CodedError<MyErrorCode>`.
///
/// Callers match on `code`. `detail` says which field, length or errno for local diagnostics; it
/// never holds key material, plaintext or peer payload and is never sent to a peer.
///
/// Equality is memberwise (code and detail), as for every error type of the package: two errors
/// are equal when they would print the same. Match on `code` to ask "the same kind of failure?".
public struct CodedError<C: ErrorCode>: Error, Hashable, Sendable, CustomStringConvertible {
    public typealias Code = C

    public let code: Code
    /// Local diagnostics only (which field, which length). Never secrets, never sent on the wire.
    public let detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    /// `code: detail`, the form every log line and CLI message uses.
    public var description: String { "\(code.rawValue): \(detail)" }
}
