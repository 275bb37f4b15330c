import Errors
import Transport

/// The stable codes of `AuditError`.
public enum AuditErrorCode: String, ErrorCode {
    /// A line is not a well-formed schema-v1 record (bad JSON, unknown or duplicate field,
    /// wrong type, value out of range).
    case malformedRecord
    /// The record's `v` is not a schema version this build reads.
    case unsupportedVersion
    /// A line or record exceeds its configured byte limit.
    case recordTooLarge
    /// The existing log cannot be continued (its last record is unreadable or not ours).
    case cannotContinueLog
    /// Another process holds the log's write lock.
    case logInUse
    /// A file system call failed (open, write, fsync, rename, read).
    case ioError
    /// A command-line argument (time, duration, fingerprint) is not valid.
    case invalidArgument
}

/// Why an audit operation failed: a bad record, a broken file, an I/O error.
///
/// Callers match on `code`; `detail` names the field, length or errno for local diagnostics and
/// never carries key material or record payloads beyond field names.
public typealias AuditError = CodedError<AuditErrorCode>

extension AuditError {
    @inline(never)
    static func malformed(_ detail: String) -> AuditError { AuditError(.malformedRecord, detail) }

    @inline(never)
    static func io(_ call: String, _ path: String, _ error: TransportError) -> AuditError {
        // The errno in words and what to check: "open(x.jsonl): No such file or directory (errno 2)".
        guard let errno = error.errno else { return AuditError(.ioError, "\(call)(\(path)): \(error.detail)") }
        var detail = "\(call)(\(path)): \(error.errnoDescription) (errno \(errno))"
        if call == "open", error.code == .noSuchPath {
            let directory = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
            if !directory.isEmpty, (try? FileSystem.status(ofPath: directory)) == nil {
                detail += " — directory \(directory) does not exist"
            } else {
                detail += " — check the path"
            }
        }
        return AuditError(.ioError, detail)
    }
}
