#if canImport(Glibc)
import Glibc
#endif

extension FileDescriptor {
    /// Connects a new non-blocking, close-on-exec AF_UNIX stream socket to `path` (`@name` for
    /// an abstract name), waiting at most `timeout` (F11). Blocks the calling thread meanwhile.
    ///
    /// A unix `connect` on a full backlog fails with EAGAIN instead of waiting (K14), so it is
    /// retried with a short, growing pause until the deadline. Throws `.noSuchPath` (no
    /// socket there, or its directory is missing), `.connectionRefused` (a socket file nobody
    /// listens on), `.permissionDenied` or `.timedOut`; the detail names the path.
    public static func connect(
        unixPath path: String, timeout: Duration = .seconds(2)
    ) throws(TransportError) -> FileDescriptor {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        let socket = try makeSocket(family: AF_UNIX, type: SocketType.stream, nonBlocking: true)
        do throws(TransportError) {
            var pause = Duration.milliseconds(1)
            while true {
                let code = try socket.with { (fd) throws(TransportError) -> Int32 in
                    try UnixAddress.withAddress(path, allowAbstract: true) { (address, length) throws(TransportError) -> Int32 in
                        while true {
                            if Glibc.connect(fd, address, length) == 0 { return 0 }
                            let code = errno
                            if code != EINTR { return code }
                        }
                    }
                }
                switch code {
                case 0:
                    return socket
                case EAGAIN:
                    let remaining = ContinuousClock.now.duration(to: deadline)
                    guard remaining > .zero else {
                        throw TransportError(.timedOut, "backlog of \(path) stayed full", errno: EAGAIN, syscall: "connect")
                    }
                    sleepFor(min(pause, remaining))
                    pause = min(pause * 2, .milliseconds(50))
                case EINPROGRESS:
                    try socket.waitWritable(until: deadline, what: path)
                    let pending = try socket.socketError()
                    if pending == 0 { return socket }
                    throw TransportError.system("connect", pending, TransportError.pathProblem(path, errno: pending, socket: true))
                case EBADF, EFAULT:
                    preconditionFailure("connect: descriptor or buffer ownership bug")
                default:
                    throw TransportError.system("connect", code, TransportError.pathProblem(path, errno: code, socket: true))
                }
            }
        } catch {
            socket.close()
            throw error
        }
    }

    func waitWritable(until deadline: ContinuousClock.Instant, what: String) throws(TransportError) {
        try with { (fd) throws(TransportError) in
            while true {
                let remaining = ContinuousClock.now.duration(to: deadline)
                guard remaining > .zero else { throw TransportError(.timedOut, "connect to \(what) timed out") }
                var entry = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let milliseconds = Int32(clamping: remaining.components.seconds * 1000
                    + remaining.components.attoseconds / 1_000_000_000_000_000 + 1)
                if case .processed(let ready) = try systemCall("poll", { poll(&entry, 1, milliseconds) }), ready > 0 {
                    return
                }
            }
        }
    }
}

func sleepFor(_ duration: Duration) {
    let (seconds, attoseconds) = duration.components
    var request = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
    var remaining = timespec()
    while nanosleep(&request, &remaining) == -1 && errno == EINTR { request = remaining }
}
