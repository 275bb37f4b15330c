#if canImport(Glibc)
import Glibc
#endif
internal import CFDShim

/// systemd-style socket activation (C5): `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`.
public enum SocketActivation {
    /// First inherited descriptor number (SD_LISTEN_FDS_START).
    public static let firstDescriptor: Int32 = 3

    /// What the environment announces. Sans-IO: pure parsing, no descriptor is touched.
    public struct Announcement: Equatable, Sendable {
        public let descriptors: Range<Int32>
        /// One name per descriptor ("unknown" where none was given).
        public let names: [String]
    }

    /// Parses the variables. Returns nil when they are absent or meant for another process
    /// (`LISTEN_PID` ≠ `processID`); throws `.invalidEnvironment` when malformed or when the
    /// count exceeds `maximumCount`.
    public static func parse(
        environment: [String: String], processID: Int32, maximumCount: Int = 64
    ) throws(TransportError) -> Announcement? {
        guard let pidText = environment["LISTEN_PID"], let countText = environment["LISTEN_FDS"] else { return nil }
        guard let pid = Int32(pidText), pid > 0 else {
            throw TransportError(.invalidEnvironment, "LISTEN_PID is not a positive integer")
        }
        guard pid == processID else { return nil }
        guard let count = Int(countText), count >= 0, count <= maximumCount else {
            throw TransportError(.invalidEnvironment, "LISTEN_FDS must be an integer in 0...\(maximumCount)")
        }
        var names = Array(repeating: "unknown", count: count)
        if let nameText = environment["LISTEN_FDNAMES"] {
            let given = nameText.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard given.count == count else {
                throw TransportError(.invalidEnvironment, "LISTEN_FDNAMES has \(given.count) names for \(count) fds")
            }
            names = given
        }
        return Announcement(descriptors: firstDescriptor..<(firstDescriptor + Int32(count)), names: names)
    }

    /// Reads the process environment, adopts the announced descriptors (each checked open and
    /// set close-on-exec so children do not inherit them), and by default unsets the variables
    /// so they are not passed on. Returns (descriptor, name) pairs; empty when not activated.
    public static func adoptInherited(
        unsetEnvironment: Bool = true, maximumCount: Int = 64
    ) throws(TransportError) -> [(descriptor: FileDescriptor, name: String)] {
        var environment: [String: String] = [:]
        for key in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            if let value = getenv(key) { environment[key] = String(cString: value) }
        }
        let announcement = try parse(environment: environment, processID: getpid(), maximumCount: maximumCount)
        if unsetEnvironment {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let announcement else { return [] }
        // Check every number before adopting any, so a bad announcement adopts nothing.
        for raw in announcement.descriptors where fcntl(raw, F_GETFD) == -1 {
            throw TransportError(.invalidEnvironment, "LISTEN_FDS names descriptor \(raw), which is not open",
                                 errno: errno, syscall: "fcntl")
        }
        var adopted: [(descriptor: FileDescriptor, name: String)] = []
        for (raw, name) in zip(announcement.descriptors, announcement.names) {
            let descriptor = FileDescriptor(adopting: raw)
            adopted.append((descriptor, name))
            _ = fcntl(raw, F_SETFD, FD_CLOEXEC)
        }
        return adopted
    }
}

/// `sd_notify`: one datagram to `NOTIFY_SOCKET` (a path, or an abstract name written `@name`).
public enum ServiceNotification {
    /// Sends `state` (for example "READY=1") when `socketPath` (default: `NOTIFY_SOCKET`) is
    /// set. Returns false when there is nowhere to send.
    @discardableResult
    public static func notify(_ state: String = "READY=1", socketPath: String? = nil) throws(TransportError) -> Bool {
        let target = socketPath ?? getenv("NOTIFY_SOCKET").map { String(cString: $0) }
        guard let target, !target.isEmpty else { return false }
        guard target.hasPrefix("/") || target.hasPrefix("@") else {
            throw TransportError(.invalidEnvironment, "NOTIFY_SOCKET must be an absolute path or @name")
        }
        let socket = try FileDescriptor.makeSocket(family: AF_UNIX, type: SocketType.datagram, nonBlocking: true)
        defer { socket.close() }
        let bytes = Array(state.utf8)
        let sent = try socket.with { (fd) throws(TransportError) -> IOResult<Int> in
            try UnixAddress.withAddress(target, allowAbstract: true) { (address, length) throws(TransportError) -> IOResult<Int> in
                try systemCall("sendto") {
                    bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, SocketType.noSignal, address, length) }
                }
            }
        }
        guard case .processed(let count) = sent, count == bytes.count else {
            throw TransportError(.systemCallFailed, "notify socket did not take the whole datagram", syscall: "sendto")
        }
        return true
    }
}

/// RLIMIT_NOFILE handling (§4 budget rule).
public enum OpenFileLimit {
    /// Current (soft, hard) limits.
    public static func current() throws(TransportError) -> (soft: UInt64, hard: UInt64) {
        var limit = rlimit()
        _ = try systemCallNonBlocking("getrlimit") { getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
        return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }

    /// Raises the soft limit towards the hard limit (or `target`, if lower). Never lowers it.
    /// Returns the soft limit in force afterwards.
    @discardableResult
    public static func raiseSoftLimit(toAtMost target: UInt64? = nil) throws(TransportError) -> UInt64 {
        var limit = rlimit()
        _ = try systemCallNonBlocking("getrlimit") { getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
        // An infinite hard limit is not accepted as a soft NOFILE value; fs.nr_open defaults to 2^20.
        let ceiling = limit.rlim_max == rlim_t.max ? rlim_t(1 << 20) : limit.rlim_max
        let wanted = min(ceiling, target.map { rlim_t($0) } ?? ceiling)
        guard wanted > limit.rlim_cur else { return UInt64(limit.rlim_cur) }
        limit.rlim_cur = wanted
        _ = try systemCallNonBlocking("setrlimit") { setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
        return UInt64(wanted)
    }

    /// Sets the soft limit exactly (tests, and operators who want a lower cap).
    public static func setSoftLimit(_ value: UInt64) throws(TransportError) {
        var limit = rlimit()
        _ = try systemCallNonBlocking("getrlimit") { getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
        limit.rlim_cur = rlim_t(value)
        _ = try systemCallNonBlocking("setrlimit") { setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) }
    }
}

/// Open-descriptor census from `/proc/self/fd`, for leak checks (I2).
public enum DescriptorCensus {
    /// Numbers of this process's open descriptors, excluding the one used to list them.
    public static func openDescriptors() -> [Int32] {
        guard let directory = opendir("/proc/self/fd") else { return [] }
        defer { closedir(directory) }
        let own = dirfd(directory)
        var result: [Int32] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let number = Int32(name), number != own { result.append(number) }
        }
        return result.sorted()
    }

    /// How many descriptors this process has open.
    public static func openCount() -> Int { openDescriptors().count }
}

/// Keeps a process holding private keys out of core dumps and away from debuggers of the same
/// uid (SECURITY.md, "Key hygiene"): `prctl(PR_SET_DUMPABLE, 0)` (no core dump, no ptrace
/// attach or /proc/PID/mem, environ, maps reads without CAP_SYS_PTRACE; /proc/PID becomes
/// root-owned) and RLIMIT_CORE 0 (soft and hard), for kernels whose `fs.suid_dumpable` would
/// still dump a non-dumpable process. Secrets also sit in MADV_DONTDUMP pages, so even a dump
/// made anyway leaves them out.
public enum ProcessHardening {
    /// What the kernel says now.
    public struct State: Equatable, Sendable {
        /// PR_GET_DUMPABLE ≠ 0.
        public let dumpable: Bool
        /// RLIMIT_CORE (soft, hard) in bytes.
        public let coreLimit: (soft: UInt64, hard: UInt64)

        public static func == (a: State, b: State) -> Bool {
            a.dumpable == b.dumpable && a.coreLimit == b.coreLimit
        }
    }

    /// Makes this process non-dumpable and sets its core-file limit to 0. Call it before
    /// loading a key; it cannot be undone (the hard limit is lowered too).
    public static func disableCoreDumps() throws(TransportError) {
        _ = try systemCallNonBlocking("prctl") { cfd_set_dumpable(0) }
        var limit = rlimit(rlim_cur: 0, rlim_max: 0)
        _ = try systemCallNonBlocking("setrlimit") { setrlimit(Int32(RLIMIT_CORE.rawValue), &limit) }
    }

    public static func current() throws(TransportError) -> State {
        let dumpable = try systemCallNonBlocking("prctl") { cfd_get_dumpable() }
        var limit = rlimit()
        _ = try systemCallNonBlocking("getrlimit") { getrlimit(Int32(RLIMIT_CORE.rawValue), &limit) }
        return State(dumpable: dumpable != 0, coreLimit: (UInt64(limit.rlim_cur), UInt64(limit.rlim_max)))
    }
}
