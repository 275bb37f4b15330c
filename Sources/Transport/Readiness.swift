#if canImport(Glibc)
import Glibc
#endif
internal import CFDShim

extension Readiness {
    /// The `poll(2)` events of `.readable` and `.writable` (the others are always reported).
    var pollEvents: Int16 {
        var events: Int16 = 0
        if contains(.readable) { events |= Int16(POLLIN) }
        if contains(.writable) { events |= Int16(POLLOUT) }
        return events
    }
}

extension FileDescriptor {
    /// Blocks in `poll(2)` until the descriptor is ready for `events` or `timeout` passes; true
    /// when ready. A hang-up or error counts as ready: the next call on the descriptor reports it.
    /// For blocking helpers (tools, probes, tests), never on an event loop thread.
    public func wait(for events: Readiness, timeout: Duration) throws(TransportError) -> Bool {
        try with { (fd) throws(TransportError) -> Bool in try Self.waitReady(fd, events, timeout) }
    }

    /// `accept4(2)` one connection (close-on-exec, blocking like its listener's default);
    /// `.wouldBlock` when none is queued on a non-blocking listener.
    public func acceptConnection() throws(TransportError) -> IOResult<FileDescriptor> {
        let result = try with { (fd) throws(TransportError) in try systemCall("accept4") { cfd_accept4(fd, Int32(SOCK_CLOEXEC.rawValue)) } }
        switch result {
        case .processed(let raw): return .processed(FileDescriptor(adopting: raw))
        case .wouldBlock: return .wouldBlock
        }
    }

    static func waitReady(_ fd: Int32, _ events: Readiness, _ timeout: Duration) throws(TransportError) -> Bool {
        var entry = pollfd(fd: fd, events: events.pollEvents, revents: 0)
        let (seconds, attoseconds) = timeout.components
        let milliseconds = Int32(clamping: max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        let ready = try systemCallNonBlocking("poll") { Glibc.poll(&entry, 1, milliseconds) }
        return ready > 0
    }
}

/// Descriptors this process does not own through a `FileDescriptor` (a Foundation `Pipe`'s or
/// `FileHandle`'s): lent by number for the duration of one call, never closed here.
public enum BorrowedDescriptor {
    /// `FileDescriptor.wait(for:timeout:)` on a descriptor owned elsewhere.
    public static func wait(_ raw: Int32, for events: Readiness, timeout: Duration) throws(TransportError) -> Bool {
        try FileDescriptor.waitReady(raw, events, timeout)
    }
}
