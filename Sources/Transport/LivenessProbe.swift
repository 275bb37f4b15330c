#if canImport(Glibc)
import Glibc
#endif

/// What a non-blocking look at a connected stream socket found.
public enum SocketLiveness: Equatable, Sendable {
    /// Open both ways as far as the kernel knows (nothing read, nothing consumed).
    case alive
    /// The peer is gone: hang-up, error, shutdown of its write side, end of stream or reset.
    case hungUp(String)
}

extension FileDescriptor {
    /// `poll(POLLIN | POLLRDHUP, 0)`, then, when something is readable, `recv(MSG_PEEK |
    /// MSG_DONTWAIT)` of one byte: never blocks and never consumes input, so the owner's reader
    /// still sees every byte. A closed descriptor counts as hung up.
    public func probeLiveness() -> SocketLiveness {
        // POLLRDHUP (Linux, 0x2000) is not always imported by Glibc's module map.
        let rdhup: Int16 = 0x2000
        do {
            return try with { fd throws(TransportError) -> SocketLiveness in
                var entry = pollfd(fd: fd, events: Int16(POLLIN) | rdhup, revents: 0)
                guard try systemCallNonBlocking("poll", { poll(&entry, 1, 0) }) > 0 else { return .alive }
                if entry.revents & Int16(POLLHUP) != 0 { return .hungUp("hang-up (POLLHUP)") }
                if entry.revents & Int16(POLLERR) != 0 { return .hungUp("socket error (POLLERR)") }
                if entry.revents & rdhup != 0 { return .hungUp("the peer shut down its side (POLLRDHUP)") }
                guard entry.revents & Int16(POLLIN) != 0 else { return .alive }
                var byte: UInt8 = 0
                do {
                    switch try systemCall("recv", { recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) }) {
                    case .processed(0): return .hungUp("end of stream")
                    case .processed, .wouldBlock: return .alive
                    }
                } catch {
                    return .hungUp("recv failed: \(error)")
                }
            }
        } catch {
            return .hungUp("descriptor closed")
        }
    }
}
