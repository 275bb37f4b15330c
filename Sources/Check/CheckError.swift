import Errors

/// The stable codes of `CheckError`.
public enum CheckErrorCode: String, ErrorCode {
    /// Nothing answers at the path, or the peer or server never completed a first exchange.
    case unreachable
    /// An option or argument the checker cannot use.
    case invalidArgument
    /// A local resource the checker needs (socket pair, pipe, file) could not be made.
    case localFailure
}

/// The one error type of the Check module: why a check run could not produce a report.
///
/// Findings about the target are rows of a `CheckReport`, never errors; an error means the run
/// itself could not proceed (the target cannot be reached, the arguments make no sense).
public typealias CheckError = CodedError<CheckErrorCode>
