#if canImport(Glibc)
import Glibc
#endif
internal import CFDShim

extension FileDescriptor {
    /// Which of `descriptors` report hang-up now (POLLHUP, POLLRDHUP or POLLERR; the peer end
    /// of a socketpair closed). One non-blocking `poll`; never reads, so bytes a sender already
    /// wrote (an initiator's first handshake message) stay for whoever receives the socket.
    /// A descriptor already closed counts as not hung up.
    public static func hungUp(_ descriptors: [FileDescriptor]) -> [Bool] {
        guard !descriptors.isEmpty else { return [] }
        // POLLRDHUP needs _GNU_SOURCE, so Glibc does not import it; the value is Linux's.
        let rdhup: Int16 = 0x2000
        var entries = descriptors.map { d in
            pollfd(fd: (try? d.withRawDescriptor { $0 }) ?? -1, events: rdhup, revents: 0)
        }
        var result: Int32
        repeat { result = poll(&entries, nfds_t(entries.count), 0) } while result < 0 && errno == EINTR
        guard result > 0 else { return descriptors.map { _ in false } }
        let hangUp = Int16(POLLHUP) | Int16(POLLERR) | rdhup
        return entries.map { $0.fd >= 0 && $0.revents & hangUp != 0 }
    }
}

extension FileDescriptor {
    /// SIOCOUTQ: memory of what this socket sent that its peer has not read yet; 0 means the
    /// peer took everything, descriptors included (the in-flight budget's "drained" signal).
    public func unreadOutput() throws(TransportError) -> Int {
        try with { (fd) throws(TransportError) -> Int in
            var bytes: Int32 = 0
            _ = try systemCallNonBlocking("ioctl(SIOCOUTQ)") { cfd_socket_unread_output(fd, &bytes) }
            return Int(bytes)
        }
    }
}
