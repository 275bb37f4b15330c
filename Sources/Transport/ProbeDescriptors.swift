#if canImport(Glibc)
import Glibc
#endif
internal import CFDShim

/// Descriptors of the kinds a server must refuse to pass on (A8, A9) and the half-close a
/// conformance probe needs: made here so probes and tools need no system call of their own.
extension FileDescriptor {
    /// A close-on-exec pipe: (read end, write end).
    public static func pipe() throws(TransportError) -> (read: FileDescriptor, write: FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        _ = try systemCallNonBlocking("pipe2") { cfd_pipe_cloexec(&fds) }
        return (FileDescriptor(adopting: fds[0]), FileDescriptor(adopting: fds[1]))
    }

    /// An unconnected close-on-exec TCP (AF_INET stream) socket.
    public static func unconnectedTCPSocket() throws(TransportError) -> FileDescriptor {
        try makeSocket(family: AF_INET, type: Int32(SOCK_STREAM.rawValue), nonBlocking: false)
    }

    /// A listening unix stream socket under a kernel-chosen abstract name (autobind): no file
    /// to clean up.
    public static func autoboundUnixListener(backlog: Int32 = 1) throws(TransportError) -> FileDescriptor {
        let socket = try makeSocket(family: AF_UNIX, type: Int32(SOCK_STREAM.rawValue), nonBlocking: false)
        do {
            _ = try socket.with { (fd) throws(TransportError) in try systemCallNonBlocking("bind") { cfd_unix_autobind(fd) } }
            _ = try socket.with { (fd) throws(TransportError) in try systemCallNonBlocking("listen") { listen(fd, backlog) } }
        } catch {
            socket.close()
            throw error
        }
        return socket
    }

    /// `shutdown(SHUT_WR)`: the peer reads end of stream after the bytes already sent.
    public func shutdownWrite() throws(TransportError) {
        _ = try with { (fd) throws(TransportError) in try systemCallNonBlocking("shutdown") { Glibc.shutdown(fd, Int32(SHUT_WR)) } }
    }
}
