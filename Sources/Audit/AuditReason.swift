import Errors

/// Stable reason code of a failure record (`reason` in the JSON).
///
/// Written only from a typed code (`init(_:)`: a layer's `ErrorCode` enum, whose `allCases` say
/// which reasons it can write) and read back with `init(rawValue:)`. A code is 1–64 characters of
/// `[A-Za-z0-9._-]`, so it can never smuggle free text (or a secret) into the log. The runtime
/// lists every code it can write (`AuditReason.runtimeCodes`); docs/AUDIT.md documents them, and
/// a test holds the two together.
public struct AuditReason: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public static let maxLength = 64
    public let rawValue: String

    /// Validates the spelling; nil when it is not a well-formed code (used when reading logs).
    public init?(rawValue: String) {
        guard Self.isWellFormed(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    /// The reason a typed code is written as: its spelling. Codes are identifiers of our source,
    /// so a malformed one is our bug, hence the precondition.
    public init(_ code: some ErrorCode) {
        precondition(Self.isWellFormed(code.rawValue), "audit reason codes are 1-64 chars of [A-Za-z0-9._-]")
        rawValue = code.rawValue
    }

    public var description: String { rawValue }
    public static func < (a: AuditReason, b: AuditReason) -> Bool { a.rawValue < b.rawValue }

    public static func isWellFormed(_ s: String) -> Bool {
        let u = s.utf8
        guard !u.isEmpty, u.count <= maxLength else { return false }
        return u.allSatisfy { c in
            (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39)
                || c == 0x2e || c == 0x5f || c == 0x2d
        }
    }
}
