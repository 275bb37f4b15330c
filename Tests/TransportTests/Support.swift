import Dispatch
import Foundation
import Glibc
import RuntimeTestSupport
import Testing
import Transport

/// Every Transport test runs inside this serialized suite: the fd census needs no other
/// Transport test to be opening descriptors meanwhile (the tests that change the open-file
/// limit run as exit tests, in child processes). On threads of their own: several block.
@Suite(.serialized, .ownThread) struct TransportTests {}

/// Leak oracle (I2). Two checks:
///  * every kernel object the test registered (by device and inode, so dups and received
///    copies count too) must be gone from /proc/self/fd at the end; this holds even while
///    other test targets run in parallel in the same process;
///  * when only Transport tests run (`swift test --filter TransportTests`), the open
///    descriptor count must also return to where it started.
final class LeakOracle: @unchecked Sendable {
    private struct Identity: Hashable {
        let device: UInt64
        let inode: UInt64
    }

    private var tracked: Set<Identity> = []
    private let lock = NSLock()
    private let baseline: Int

    private init() {
        _ = Self.warmUp
        baseline = DescriptorCensus.openCount()
    }

    /// An oracle whose baseline is taken now, after the runtime's lazy descriptors exist.
    static func make() async -> LeakOracle {
        // Task.sleep arms a timer on the monotonic clock: its timerfd must predate the baseline.
        try? await Task.sleep(for: .milliseconds(1))
        return LeakOracle()
    }

    /// libdispatch opens its epoll, eventfd and timer descriptors lazily and keeps them; make
    /// sure that happened before any baseline is taken, or the first test would see a "leak".
    private static let warmUp: Void = {
        // The process's event loops (an epoll and an eventfd each) start on first use too.
        _ = EventLoopGroup.shared
        let done = DispatchSemaphore(value: 0)
        let queue = DispatchQueue(label: "leak-oracle-warm-up")
        var fds: [Int32] = [-1, -1]
        precondition(pipe(&fds) == 0)
        let source = DispatchSource.makeReadSource(fileDescriptor: fds[0], queue: queue)
        source.setCancelHandler { done.signal() }
        source.activate()
        source.cancel()
        done.wait()
        close(fds[0])
        close(fds[1])
        for clock in [DispatchTime.now() + .milliseconds(1)] {
            queue.asyncAfter(deadline: clock) { done.signal() }
            done.wait()
        }
        DispatchQueue.global().asyncAfter(wallDeadline: .now() + .milliseconds(1)) { done.signal() }
        done.wait()
    }()

    /// Count-based check only when nothing but this target's tests share the process.
    static let countIsReliable: Bool = {
        let arguments = CommandLine.arguments.joined(separator: " ")
        return arguments.contains("TransportTests")
    }()

    @discardableResult
    func track(_ descriptor: FileDescriptor) -> FileDescriptor {
        if let identity = (try? descriptor.withRawDescriptor({ Self.identity(of: $0) })) ?? nil {
            lock.withLock { _ = tracked.insert(identity) }
        }
        return descriptor
    }

    func track(_ descriptors: [FileDescriptor]) {
        for descriptor in descriptors { track(descriptor) }
    }

    private static func identity(of fd: Int32) -> Identity? {
        var info = stat()
        guard fstat(fd, &info) == 0 else { return nil }
        return Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    private func leakedNow() -> [Int32] {
        let tracked = lock.withLock { self.tracked }
        return DescriptorCensus.openDescriptors().filter { fd in
            var info = stat()
            guard stat("/proc/self/fd/\(fd)", &info) == 0 else { return false }
            return tracked.contains(Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino)))
        }
    }

    /// Waits up to `timeout` (dispatch closes sockets after its sources cancel), then checks.
    func expectNoLeaks(timeout: Duration = .seconds(2), sourceLocation: SourceLocation = #_sourceLocation) async {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var leaked = leakedNow()
        var count = DescriptorCensus.openCount()
        while (!leaked.isEmpty || (Self.countIsReliable && count != baseline)) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
            leaked = leakedNow()
            count = DescriptorCensus.openCount()
        }
        #expect(leaked.isEmpty, "descriptors still open for objects the test created: \(leaked)", sourceLocation: sourceLocation)
        if Self.countIsReliable {
            #expect(count == baseline, "open descriptor count \(count), was \(baseline)", sourceLocation: sourceLocation)
        }
    }
}

/// A fresh 0700 directory under /tmp, removed with everything in it by `remove()`.
struct TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/transport-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw POSIXError(.EIO) }
        path = String(cString: made)
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A pipe as two owned descriptors (read, write), close-on-exec.
func makePipe() throws -> (FileDescriptor, FileDescriptor) {
    var fds: [Int32] = [-1, -1]
    // pipe2 is not imported by Glibc; the tests are single-process, so the race is moot.
    guard pipe(&fds) == 0 else { throw POSIXError(.EIO) }
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return (FileDescriptor(adopting: fds[0]), FileDescriptor(adopting: fds[1]))
}

/// A raw socket wrapped at once (for making the wrong kinds of socket in validation tests).
func makeRawSocket(_ family: Int32, _ type: Int32) throws -> FileDescriptor {
    let raw = socket(family, type | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard raw >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    return FileDescriptor(adopting: raw)
}

/// Waits until `descriptor` is readable or `timeout` passes.
func waitReadable(_ descriptor: FileDescriptor, timeout: Int32 = 2000) throws -> Bool {
    try descriptor.withRawDescriptor { fd in
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, timeout) > 0
    }
}

/// Receives one chunk, waiting for it; nil at end of stream.
func receiveChunk(_ descriptor: FileDescriptor, bufferSize: Int = 65536, capacity: Int = 4) throws -> ([UInt8], [FileDescriptor])? {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)
    defer { buffer.deallocate() }
    while true {
        guard try waitReadable(descriptor) else { throw TransportError(.timedOut, "test receive timed out") }
        switch try descriptor.receive(into: buffer, descriptorCapacity: capacity) {
        case .wouldBlock: continue
        case .processed(let received):
            if received.isEndOfStream { return nil }
            return (Array(buffer[..<received.byteCount]), received.descriptors)
        }
    }
}

/// Sends all of `bytes` on a blocking-or-not socket, waiting for room as needed.
func sendAll(_ descriptor: FileDescriptor, _ bytes: [UInt8]) throws {
    var offset = 0
    while offset < bytes.count {
        switch try descriptor.send(Array(bytes[offset...])) {
        case .processed(let count): offset += count
        case .wouldBlock: usleep(1000)
        }
    }
}

/// Runs `body` on `queue` and returns its result.
func onQueue<T: Sendable>(_ queue: DispatchQueue, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        queue.async { continuation.resume(with: Result { try body() }) }
    }
}
