#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// An owned file descriptor: closed exactly once, by `close()`, or handed off by `take()`.
///
/// A final class rather than a `~Copyable` struct because descriptors must sit in arrays and
/// output queues and be captured by escaping Dispatch closures, none of which accept
/// non-copyable values today. The class keeps the single-owner discipline at run time
/// instead: the raw number is only lent inside `withRawDescriptor`, every use after `close()`
/// throws `.closed`, and a descriptor dropped while still open is a leak that trips an
/// assertion in debug builds (release builds close it as a last resort).
///
/// The raw number is guarded by a lock held across `withRawDescriptor`, so a concurrent
/// `close()` cannot free the number while a system call is using it (which could otherwise
/// hit an unrelated, newly opened descriptor that reused the number).
public final class FileDescriptor: Sendable, CustomStringConvertible {
    private let state: Mutex<Int32>

    /// Takes ownership of `raw`, which must be open and owned by nobody else.
    public init(adopting raw: Int32) {
        precondition(raw >= 0, "adopting a negative descriptor")
        state = Mutex(raw)
    }

    deinit {
        let raw = state.withLock { $0 }
        if raw >= 0 {
            // Close first so a release build does not leak; the assertion reports the bug.
            Glibc.close(raw)
            assertionFailure("FileDescriptor \(raw) was dropped without close() or take(): leak")
        }
    }

    /// Whether the descriptor is still owned and open.
    public var isOpen: Bool { state.withLock { $0 >= 0 } }

    public var description: String {
        let raw = state.withLock { $0 }
        return raw >= 0 ? "fd(\(raw))" : "fd(closed)"
    }

    /// Lends the raw number for the duration of `body`. Do not let it escape, and do not close
    /// or use this same `FileDescriptor` object from inside `body` (the lock is not reentrant).
    /// Throws `TransportError.closed` if the descriptor was already closed or taken.
    public func withRawDescriptor<R>(_ body: (Int32) throws -> R) throws -> R {
        try state.withLock { raw in
            guard raw >= 0 else { throw TransportError(.closed, "descriptor already closed") }
            return try body(raw)
        }
    }

    /// Closes the descriptor. Idempotent: later calls do nothing.
    ///
    /// `close(2)` is never retried: on Linux the number is released even when it reports
    /// EINTR or EIO, and a retry could close a descriptor another thread just opened.
    public func close() {
        let raw = state.withLock { raw -> Int32 in
            let old = raw
            raw = -1
            return old
        }
        guard raw >= 0 else { return }
        if Glibc.close(raw) == -1 && errno == EBADF {
            preconditionFailure("close(\(raw)) gave EBADF: someone else closed an owned descriptor")
        }
    }

    /// Gives up ownership and returns the raw number; the caller must close it.
    public func take() throws(TransportError) -> Int32 {
        try state.withLock { raw throws(TransportError) -> Int32 in
            guard raw >= 0 else { throw TransportError(.closed, "descriptor already closed") }
            let old = raw
            raw = -1
            return old
        }
    }
}

extension FileDescriptor {
    /// `withRawDescriptor` with a typed error, for this module's system-call wrappers.
    @inline(__always)
    func with<R>(_ body: (Int32) throws(TransportError) -> R) throws(TransportError) -> R {
        try state.withLock { raw throws(TransportError) -> R in
            guard raw >= 0 else { throw TransportError(.closed, "descriptor already closed") }
            return try body(raw)
        }
    }
}
