#if canImport(Glibc)
import Glibc
#endif

/// Result of a non-blocking system call: would-block is an expected outcome, not an error.
public enum IOResult<Value: Sendable>: Sendable {
    case processed(Value)
    case wouldBlock
}

extension IOResult: Equatable where Value: Equatable {}

/// The one system-call helper (STYLE habit 11).
///
/// Loops on EINTR, returns EAGAIN/EWOULDBLOCK as `.wouldBlock`, traps on EBADF/EFAULT (a
/// descriptor-ownership or pointer bug in this process, never something a peer can cause) and
/// throws a typed `TransportError` for every other errno. `close` must not go through here:
/// it is never retried (see `FileDescriptor.close()`).
@inline(__always)
func systemCall<T: FixedWidthInteger & Sendable>(
    _ name: StaticString, _ body: () -> T
) throws(TransportError) -> IOResult<T> {
    while true {
        let result = body()
        if result != -1 { return .processed(result) }
        let code = errno
        switch code {
        case EINTR:
            continue
        case EAGAIN, EWOULDBLOCK:
            return .wouldBlock
        case EBADF, EFAULT:
            preconditionFailure("\(name) failed with errno \(code): descriptor or buffer ownership bug")
        default:
            throw TransportError.system(name, code)
        }
    }
}

/// `systemCall` for calls that cannot block (or run on blocking descriptors): would-block is
/// then an error like any other.
@inline(__always)
func systemCallNonBlocking<T: FixedWidthInteger & Sendable>(
    _ name: StaticString, _ body: () -> T
) throws(TransportError) -> T {
    switch try systemCall(name, body) {
    case .processed(let value): return value
    case .wouldBlock: throw TransportError.system(name, EAGAIN)
    }
}

/// Re-throws the `TransportError` from a body that calls untyped-throwing standard library
/// helpers (`withUnsafeBytes`) around typed-throwing code.
@inline(__always)
func typed<R>(_ body: () throws -> R) throws(TransportError) -> R {
    do {
        return try body()
    } catch let error as TransportError {
        throw error
    } catch {
        preconditionFailure("unexpected error type \(type(of: error))")
    }
}
