#if canImport(Glibc)
import Glibc
#endif
internal import CFDShim

/// Socket type constants as plain Int32. Glibc imports them as `__socket_type` cases from a
/// header that is only reliably visible here, next to the CFDShim import.
enum SocketType {
    static let stream = Int32(SOCK_STREAM.rawValue)
    static let datagram = Int32(SOCK_DGRAM.rawValue)
    static let seqpacket = Int32(SOCK_SEQPACKET.rawValue)
    static let closeOnExec = Int32(SOCK_CLOEXEC.rawValue)
    static let nonBlocking = Int32(SOCK_NONBLOCK.rawValue)
    static let noSignal = Int32(MSG_NOSIGNAL)
}

/// Kernel cap on descriptors in one SCM_RIGHTS message (K1).
public let maximumDescriptorsPerMessage = 253

/// What one `recvmsg` returned: a byte count and the descriptors that came with those bytes.
///
/// Per K5 the descriptors belong to the segment whose first byte is in this read; the caller
/// owns them and must close or hand each one on.
public struct Received: Sendable {
    /// Bytes written into the caller's buffer; 0 means end of stream.
    public let byteCount: Int
    public let descriptors: [FileDescriptor]
    /// MSG_CTRUNC: descriptors sent with these bytes were dropped by the kernel (only with
    /// `reportingTruncation`; the bytes themselves are intact).
    public var descriptorsLost: Bool = false

    public var isEndOfStream: Bool { byteCount == 0 }
}

extension FileDescriptor {
    // MARK: creation

    /// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`: both ends close-on-exec, blocking.
    public static func socketPair() throws(TransportError) -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        _ = try systemCallNonBlocking("socketpair") {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds)
        }
        return (FileDescriptor(adopting: fds[0]), FileDescriptor(adopting: fds[1]))
    }

    /// A new close-on-exec socket.
    static func makeSocket(family: Int32, type: Int32, nonBlocking: Bool) throws(TransportError) -> FileDescriptor {
        var flags = type | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { flags |= Int32(SOCK_NONBLOCK.rawValue) }
        let raw = try systemCallNonBlocking("socket") { socket(family, flags, 0) }
        return FileDescriptor(adopting: raw)
    }

    // MARK: flags

    /// Sets or clears O_NONBLOCK. Never use this on a descriptor received from a peer: the flag
    /// lives on the open file description shared with the sender (A8).
    public func setNonBlocking(_ enabled: Bool = true) throws(TransportError) {
        try with { (fd) throws(TransportError) in
            let flags = try systemCallNonBlocking("fcntl") { fcntl(fd, F_GETFL) }
            let wanted = enabled ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
            if wanted != flags { _ = try systemCallNonBlocking("fcntl") { fcntl(fd, F_SETFL, wanted) } }
        }
    }

    /// Whether FD_CLOEXEC is set (I5).
    public func isCloseOnExec() throws(TransportError) -> Bool {
        try with { (fd) throws(TransportError) in
            try systemCallNonBlocking("fcntl") { fcntl(fd, F_GETFD) } & FD_CLOEXEC != 0
        }
    }

    /// Whether O_NONBLOCK is set.
    public func isNonBlocking() throws(TransportError) -> Bool {
        try with { (fd) throws(TransportError) in
            try systemCallNonBlocking("fcntl") { fcntl(fd, F_GETFL) } & O_NONBLOCK != 0
        }
    }

    // MARK: sending

    /// One `sendmsg(MSG_NOSIGNAL | MSG_DONTWAIT)` of `bytes`, with `descriptors` attached as one
    /// SCM_RIGHTS message when not empty.
    ///
    /// Returns how many bytes went out. With descriptors: `.wouldBlock` means nothing was sent,
    /// descriptors included; any byte count > 0 means they all went with the first byte, so the
    /// rest must be sent without them (K6). The caller keeps ownership of `descriptors` and
    /// should close its copies once they are sent (A10). A closed peer gives
    /// `.connectionReset` (EPIPE), never SIGPIPE (K12).
    public func send(
        _ bytes: UnsafeRawBufferPointer, passing descriptors: [FileDescriptor] = []
    ) throws(TransportError) -> IOResult<Int> {
        precondition(descriptors.isEmpty || bytes.count > 0, "descriptors need at least one byte to ride on")
        guard descriptors.count <= maximumDescriptorsPerMessage else {
            throw TransportError(.limitExceeded, "\(descriptors.count) descriptors in one message (max 253)")
        }
        let flags = Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)
        return try with { (fd) throws(TransportError) -> IOResult<Int> in
            var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
            if descriptors.isEmpty {
                var message = msghdr()
                return try withUnsafeMutablePointer(to: &iov) { (iovPointer) throws(TransportError) -> IOResult<Int> in
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    return try systemCall("sendmsg") { sendmsg(fd, &message, flags) }
                }
            }
            return try withRawDescriptors(descriptors[...]) { (raws) throws(TransportError) -> IOResult<Int> in
                let payload = raws.count * MemoryLayout<Int32>.size
                let space = cfd_cmsg_space(payload)
                let control = UnsafeMutableRawBufferPointer.allocate(
                    byteCount: space, alignment: cfd_cmsghdr_alignment())
                defer { control.deallocate() }
                control.initializeMemory(as: UInt8.self, repeating: 0)
                var message = msghdr()
                return try withUnsafeMutablePointer(to: &iov) { (iovPointer) throws(TransportError) -> IOResult<Int> in
                    message.msg_iov = iovPointer
                    message.msg_iovlen = 1
                    Self.attachRights(raws, to: &message, control: control)
                    return try systemCall("sendmsg") { sendmsg(fd, &message, flags) }
                }
            }
        }
    }

    /// Points `message` at `control` (zeroed, `cfd_cmsg_space` of the descriptors' bytes) and
    /// writes one SCM_RIGHTS control message there carrying `raws`.
    private static func attachRights(
        _ raws: some Collection<Int32>, to message: inout msghdr, control: UnsafeMutableRawBufferPointer
    ) {
        let payload = raws.count * MemoryLayout<Int32>.size
        message.msg_control = control.baseAddress
        // CMSG_LEN, not CMSG_SPACE: padding must never be read as an extra fd (A3).
        message.msg_controllen = cfd_cmsg_len(payload)
        guard let header = cfd_cmsg_firsthdr(&message) else {
            preconditionFailure("control buffer smaller than one cmsghdr")
        }
        header.pointee.cmsg_len = cfd_cmsg_len(payload)
        header.pointee.cmsg_level = SOL_SOCKET
        header.pointee.cmsg_type = Int32(SCM_RIGHTS)
        let data = UnsafeMutableRawPointer(cfd_cmsg_data(header))
        for (index, raw) in raws.enumerated() {
            data.storeBytes(of: raw, toByteOffset: index * MemoryLayout<Int32>.size, as: Int32.self)
        }
    }

    /// One `sendmmsg(MSG_NOSIGNAL | MSG_DONTWAIT)` of two messages: `first` as plain bytes, then
    /// `second` (at least one byte) carrying `descriptor` in its own SCM_RIGHTS message. The peer
    /// sees exactly what `send(first)` then `send(second, passing: [descriptor])` give (two
    /// segments, the descriptor on the second's first byte, K5), for one system call.
    ///
    /// Returns the bytes the kernel took of each; `.wouldBlock` when it took nothing. The kernel
    /// stops at the first message it could not take whole, so `second` went entirely, with the
    /// descriptor, or not at all (0): after a partial `first`, or when `second` would block or
    /// failed (`sendmmsg` reports no error once a message went; sending `second` again with
    /// `send` does). The caller keeps ownership of `descriptor` (A10). A closed peer gives
    /// `.connectionReset`, never SIGPIPE (K12).
    public func send(
        _ first: UnsafeRawBufferPointer, then second: UnsafeRawBufferPointer, passing descriptor: FileDescriptor
    ) throws(TransportError) -> IOResult<(first: Int, second: Int)> {
        precondition(first.count > 0 && second.count > 0, "two non-empty messages, the descriptor riding on the second")
        let flags = Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)
        let payload = MemoryLayout<Int32>.size
        let control = UnsafeMutableRawBufferPointer.allocate(
            byteCount: cfd_cmsg_space(payload), alignment: cfd_cmsghdr_alignment())
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0)
        var firstIov = iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count)
        var secondIov = iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress), iov_len: second.count)
        var lengths: [UInt32] = [0, 0]
        let result = try with { (fd) throws(TransportError) -> IOResult<Int32> in
            try descriptor.with { (passed) throws(TransportError) -> IOResult<Int32> in
                var firstMessage = msghdr()
                var secondMessage = msghdr()
                secondMessage.msg_iovlen = 1
                Self.attachRights(CollectionOfOne(passed), to: &secondMessage, control: control)
                return try withUnsafeMutablePointer(to: &firstIov) { (firstPointer) throws(TransportError) -> IOResult<Int32> in
                    try withUnsafeMutablePointer(to: &secondIov) { (secondPointer) throws(TransportError) -> IOResult<Int32> in
                        firstMessage.msg_iov = firstPointer
                        firstMessage.msg_iovlen = 1
                        secondMessage.msg_iov = secondPointer
                        return try systemCall("sendmmsg") { cfd_sendmmsg_pair(fd, &firstMessage, &secondMessage, &lengths, flags) }
                    }
                }
            }
        }
        guard case .processed(let messages) = result else { return .wouldBlock }
        let sent = (first: Int(lengths[0]), second: messages == 2 ? Int(lengths[1]) : 0)
        guard sent.second == 0 || sent.first == first.count else {
            // The kernel never goes on after a short message (net/socket.c stops at
            // msg_data_left); were it to, the peer would read the marker inside the record.
            throw TransportError(.systemCallFailed, "sendmmsg sent the second message after a partial first",
                                 syscall: "sendmmsg")
        }
        return .processed(sent)
    }

    /// `send` for an array of bytes.
    public func send(_ bytes: [UInt8], passing descriptors: [FileDescriptor] = []) throws(TransportError) -> IOResult<Int> {
        try typed { try bytes.withUnsafeBytes { buffer in try send(buffer, passing: descriptors) } }
    }

    // MARK: receiving

    /// One `recvmsg(MSG_CMSG_CLOEXEC | MSG_DONTWAIT)` into `buffer`, with room for
    /// `descriptorCapacity` descriptors (A5).
    ///
    /// Each received descriptor is wrapped at once, close-on-exec. Descriptors in control
    /// messages other than SOL_SOCKET/SCM_RIGHTS cannot exist; other control messages (such as
    /// credentials) are ignored. MSG_CTRUNC closes whatever did arrive and throws
    /// `.controlTruncated` (A4): the stream has lost descriptors and cannot be trusted.
    /// With `reportingTruncation` it returns the bytes and what did arrive instead, with
    /// `descriptorsLost` set: for a reader that knows where each descriptor belongs and can
    /// drop just the one that was lost (a descriptor the kernel could not install at
    /// EMFILE/ENFILE must not cost a peer its server connection).
    public func receive(
        into buffer: UnsafeMutableRawBufferPointer, descriptorCapacity: Int = 4, reportingTruncation: Bool = false
    ) throws(TransportError) -> IOResult<Received> {
        precondition(buffer.count > 0, "receive needs a non-empty buffer")
        precondition((0...maximumDescriptorsPerMessage).contains(descriptorCapacity), "descriptor capacity out of range")
        let space = descriptorCapacity == 0 ? 0 : cfd_cmsg_space(descriptorCapacity * MemoryLayout<Int32>.size)
        let control = UnsafeMutableRawBufferPointer.allocate(byteCount: max(space, 1), alignment: cfd_cmsghdr_alignment())
        defer { control.deallocate() }
        control.initializeMemory(as: UInt8.self, repeating: 0)
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        var message = msghdr()
        let flags = Int32(MSG_CMSG_CLOEXEC) | Int32(MSG_DONTWAIT)
        let result = try with { (fd) throws(TransportError) -> IOResult<Int> in
            try withUnsafeMutablePointer(to: &iov) { (iovPointer) throws(TransportError) -> IOResult<Int> in
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                message.msg_control = space == 0 ? nil : control.baseAddress
                message.msg_controllen = space
                return try systemCall("recvmsg") { recvmsg(fd, &message, flags) }
            }
        }
        guard case .processed(let count) = result else { return .wouldBlock }
        var descriptors: [FileDescriptor] = []
        if space > 0 && message.msg_controllen > 0 {
            var header = cfd_cmsg_firsthdr(&message)
            while let current = header {
                if current.pointee.cmsg_level == SOL_SOCKET && current.pointee.cmsg_type == Int32(SCM_RIGHTS) {
                    let headerLength = cfd_cmsg_len(0)
                    let dataLength = Int(current.pointee.cmsg_len) - headerLength
                    let fdCount = max(dataLength, 0) / MemoryLayout<Int32>.size
                    let data = UnsafeRawPointer(cfd_cmsg_data(current))
                    for index in 0..<fdCount {
                        let raw = data.loadUnaligned(fromByteOffset: index * MemoryLayout<Int32>.size, as: Int32.self)
                        descriptors.append(FileDescriptor(adopting: raw))
                    }
                }
                header = cfd_cmsg_nxthdr(&message, current)
            }
        }
        if message.msg_flags & Int32(MSG_CTRUNC) != 0 && reportingTruncation && count > 0 {
            return .processed(Received(byteCount: count, descriptors: descriptors, descriptorsLost: true))
        }
        if message.msg_flags & Int32(MSG_CTRUNC) != 0 {
            for descriptor in descriptors { descriptor.close() }
            throw TransportError(
                .controlTruncated, "MSG_CTRUNC after \(count) bytes; \(descriptors.count) descriptors closed",
                syscall: "recvmsg")
        }
        if count == 0 && !descriptors.isEmpty {
            // Cannot happen on a stream socket (descriptors ride on bytes); close rather than leak.
            for descriptor in descriptors { descriptor.close() }
            throw TransportError(.unexpectedDescriptors, "descriptors with end of stream", syscall: "recvmsg")
        }
        return .processed(Received(byteCount: count, descriptors: descriptors))
    }

    /// One `recvmsg(MSG_DONTWAIT)` into `buffer` with no room for descriptors, for sockets
    /// that must never carry one (a channel): no control buffer is allocated. A descriptor
    /// sent anyway is discarded by the kernel (MSG_CTRUNC) and reported as `.controlTruncated`.
    /// `.processed(0)` is end of stream.
    public func receiveBytes(into buffer: UnsafeMutableRawBufferPointer) throws(TransportError) -> IOResult<Int> {
        precondition(buffer.count > 0, "receive needs a non-empty buffer")
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        var message = msghdr()
        let result = try with { (fd) throws(TransportError) -> IOResult<Int> in
            try withUnsafeMutablePointer(to: &iov) { (iovPointer) throws(TransportError) -> IOResult<Int> in
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                return try systemCall("recvmsg") { recvmsg(fd, &message, Int32(MSG_CMSG_CLOEXEC) | Int32(MSG_DONTWAIT)) }
            }
        }
        if case .processed(let count) = result, message.msg_flags & Int32(MSG_CTRUNC) != 0 {
            throw TransportError(.controlTruncated, "a descriptor arrived after \(count) bytes and was discarded", syscall: "recvmsg")
        }
        return result
    }

    // MARK: inspection

    /// SO_PEERCRED of a unix socket: the peer's pid, uid and gid as of connect/socketpair (K9).
    public func peerCredentials() throws(TransportError) -> PeerCredentials {
        try with { (fd) throws(TransportError) -> PeerCredentials in
            var pid: pid_t = 0
            var uid: uid_t = 0
            var gid: gid_t = 0
            _ = try systemCallNonBlocking("getsockopt(SO_PEERCRED)") { cfd_get_peer_credentials(fd, &pid, &uid, &gid) }
            return PeerCredentials(pid: pid, uid: uid, gid: gid)
        }
    }

    /// Pending socket error (SO_ERROR), cleared by reading it.
    func socketError() throws(TransportError) -> Int32 {
        try with { (fd) throws(TransportError) -> Int32 in try Self.intOption(fd, SO_ERROR, "getsockopt(SO_ERROR)") }
    }

    /// Classifies the descriptor with `fstat` and `getsockopt`/`getsockname`/`getpeername`
    /// only; it never changes the descriptor's flags (A8).
    public func kind() throws(TransportError) -> DescriptorKind {
        try with { (fd) throws(TransportError) -> DescriptorKind in
            var info = stat()
            _ = try systemCallNonBlocking("fstat") { fstat(fd, &info) }
            switch info.st_mode & S_IFMT {
            case S_IFREG: return .regularFile
            case S_IFDIR: return .directory
            case S_IFIFO: return .pipe
            case S_IFCHR: return .characterDevice
            case S_IFBLK: return .blockDevice
            case S_IFLNK: return .symbolicLink
            case S_IFSOCK: break
            default: return .otherNonSocket
            }
            let family = try Self.intOption(fd, SO_DOMAIN, "getsockopt(SO_DOMAIN)")
            let type = try Self.intOption(fd, SO_TYPE, "getsockopt(SO_TYPE)")
            let listening = try Self.intOption(fd, SO_ACCEPTCONN, "getsockopt(SO_ACCEPTCONN)") != 0
            switch (family, type) {
            case (AF_UNIX, Int32(SOCK_STREAM.rawValue)):
                let local = try Self.unixAddressLength(fd, peer: false)
                let peer = try Self.unixAddressLength(fd, peer: true)
                let unnamed = unixAddressUnnamedLength
                return .unixStream(
                    listening: listening, named: local.map { $0 > unnamed } == true || peer.map { $0 > unnamed } == true,
                    connected: peer != nil)
            case (AF_UNIX, Int32(SOCK_DGRAM.rawValue)): return .unixDatagram
            case (AF_UNIX, Int32(SOCK_SEQPACKET.rawValue)): return .unixSeqpacket
            case (AF_INET, Int32(SOCK_STREAM.rawValue)), (AF_INET6, Int32(SOCK_STREAM.rawValue)):
                return .tcp(listening: listening)
            case (AF_INET, Int32(SOCK_DGRAM.rawValue)), (AF_INET6, Int32(SOCK_DGRAM.rawValue)): return .udp
            default: return .otherSocket(family: family, type: type)
            }
        }
    }

    /// Accepts only what a socketpair end looks like: a socket, AF_UNIX, SOCK_STREAM, not
    /// listening, connected, and (with `requireUnnamed`) with no address on either side (K10,
    /// A9). The address test rejects, for example, a client's own connection to the daemon.
    /// Throws `.unexpectedDescriptorKind` naming what it was.
    public func validateAsConnectedUnixStream(requireUnnamed: Bool = true) throws(TransportError) {
        // The server checks every passed descriptor: three calls settle the expected case;
        // anything else takes the full classification, which names what it was.
        if (try? with(Self.isConnectedUnixStream(requireUnnamed: requireUnnamed))) == true { return }
        let found = try kind()
        if case .unixStream(listening: false, let named, connected: true) = found, !(requireUnnamed && named) {
            return
        }
        throw TransportError(.unexpectedDescriptorKind, "expected a connected unix stream socket, got \(found)",
                             descriptorKind: found)
    }

    // MARK: helpers

    /// getsockname (AF_UNIX, no name), SO_TYPE (stream) and getpeername (connected, no name):
    /// what `kind()` concludes from six calls for a socketpair end. A listening socket has no
    /// peer, so it fails the last test.
    static func isConnectedUnixStream(requireUnnamed: Bool) -> (Int32) throws(TransportError) -> Bool {
        { (fd) throws(TransportError) -> Bool in
            guard let local = unixAddress(fd, peer: false), local.family == AF_UNIX,
                  !(requireUnnamed && local.length > unixAddressUnnamedLength) else { return false }
            guard try intOption(fd, SO_TYPE, "getsockopt(SO_TYPE)") == Int32(SOCK_STREAM.rawValue) else { return false }
            guard let peer = unixAddress(fd, peer: true) else { return false }
            return !(requireUnnamed && peer.length > unixAddressUnnamedLength)
        }
    }

    /// Family and length of the socket's own or peer address; nil when the call fails.
    static func unixAddress(_ fd: Int32, peer: Bool) -> (family: Int32, length: Int)? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let result = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                peer ? getpeername(fd, generic, &length) : getsockname(fd, generic, &length)
            }
        }
        guard result == 0 else { return nil }
        return (Int32(address.sun_family), Int(length))
    }

    static func intOption(_ fd: Int32, _ option: Int32, _ name: StaticString) throws(TransportError) -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        _ = try systemCallNonBlocking(name) { getsockopt(fd, SOL_SOCKET, option, &value, &length) }
        return value
    }

    /// Length of the socket's own or peer address; nil when it has no peer (ENOTCONN).
    static func unixAddressLength(_ fd: Int32, peer: Bool) throws(TransportError) -> Int? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let result = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
                peer ? getpeername(fd, generic, &length) : getsockname(fd, generic, &length)
            }
        }
        if result == 0 { return Int(length) }
        let code = errno
        if peer && code == ENOTCONN { return nil }
        if code == EBADF || code == EFAULT { preconditionFailure("getsockname/getpeername: ownership bug") }
        throw TransportError.system(peer ? "getpeername" : "getsockname", code)
    }

    /// Lends the raw numbers of several descriptors at once.
    func withRawDescriptors<R>(
        _ rest: ArraySlice<FileDescriptor>, _ collected: [Int32] = [],
        _ body: ([Int32]) throws(TransportError) -> R
    ) throws(TransportError) -> R {
        guard let first = rest.first else { return try body(collected) }
        return try first.with { (raw) throws(TransportError) -> R in
            try withRawDescriptors(rest.dropFirst(), collected + [raw], body)
        }
    }
}

/// Address length of an unnamed unix socket: just the family field.
let unixAddressUnnamedLength = Int(cfd_sockaddr_un_path_offset())

/// What to do when a read that should carry one descriptor carries several (A3).
public enum ExtraDescriptorPolicy: Sendable {
    /// Close them all and throw `.unexpectedDescriptors` (strict mode).
    case reject
    /// Keep the first, close the rest (interop with a sender whose padding adds one).
    case keepFirst
}

/// The descriptor that `takeSingleDescriptor` kept, and how many extras it closed.
public struct SingleDescriptor: Sendable {
    public let descriptor: FileDescriptor
    public let closedExtras: Int
}

/// Takes ownership of `descriptors`, which must hold exactly one (the marker's fd).
/// None: `.descriptorExpected` (A2, never fall back to a default number). Several: per
/// `policy`; every descriptor not returned is closed before returning or throwing.
public func takeSingleDescriptor(
    _ descriptors: [FileDescriptor], policy: ExtraDescriptorPolicy = .reject
) throws(TransportError) -> SingleDescriptor {
    guard let first = descriptors.first else {
        throw TransportError(.descriptorExpected, "no descriptor arrived where one was expected")
    }
    let extras = descriptors.dropFirst()
    for extra in extras { extra.close() }
    guard extras.isEmpty || policy == .keepFirst else {
        first.close()
        throw TransportError(.unexpectedDescriptors, "\(descriptors.count) descriptors where one was expected; all closed")
    }
    return SingleDescriptor(descriptor: first, closedExtras: extras.count)
}
