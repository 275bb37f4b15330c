/// The one error type of the Check module: why a check run could not produce a report.
///
/// Findings about the target are rows of a `CheckReport`, never errors; an error means the run
/// itself could not proceed (the target cannot be reached, the arguments make no sense).
public struct CheckError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// Nothing answers at the path, or the peer or server never completed a first exchange.
        case unreachable
        /// An option or argument the checker cannot use.
        case invalidArgument
        /// A local resource the checker needs (socket pair, pipe, file) could not be made.
        case localFailure
    }

    public let code: Code
    public let detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code.rawValue): \(detail)" }
}
