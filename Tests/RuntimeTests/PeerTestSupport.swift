import Audit
import Dispatch
import Foundation
import Glibc
import Logging
import OCapN
import Identity
import Runtime
import SecureChannel
import TestSupport
import Testing
import Transport

/// Shared helpers for the channel and peer-netlayer tests.
enum PeerTestSupport {
    /// A logger that drops everything (tests assert on errors and audit records instead).
    static var quietLogger: Logger {
        var logger = Logger(label: "ocapn-uds.test", factory: { _ in SwiftLogNoOpLogHandler() })
        logger.logLevel = .critical
        return logger
    }

    static func establishment(
        _ pair: IdentityKeyPair, _ configuration: ChannelRuntimeConfiguration = ChannelRuntimeConfiguration(),
        limiter: HandshakeLimiter = HandshakeLimiter(), audit: AuditMemorySink? = nil
    ) -> ChannelEstablishment {
        // The tests' configurations are valid; a refused one is a bug in the test.
        try! ChannelEstablishment(identity: pair, configuration: configuration, limiter: limiter, audit: audit, logger: quietLogger)
    }

    /// Short deadlines so failing paths finish fast.
    static func fastConfiguration(timeout: Duration = .milliseconds(400), allowLegacy: Bool = false) -> ChannelRuntimeConfiguration {
        ChannelRuntimeConfiguration(
            handshake: HandshakeConfiguration(timeout: timeout), closeTimeout: .milliseconds(400), allowLegacyPeers: allowLegacy)
    }

    /// Runs initiator (a) and responder (b) over a fresh socketpair.
    static func connectedPair(
        _ a: ChannelEstablishment, _ b: ChannelEstablishment
    ) async throws -> (PeerChannel, PeerChannel) {
        let (ea, eb) = try FileDescriptor.socketPair()
        async let initiator = a.initiate(over: ea, to: b.identity)
        async let responder = b.respond(over: eb, expecting: a.identity)
        return try await (initiator, responder)
    }

    /// Closes both channels at once (each waits for the other's CLOSE); true when both are clean.
    static func closeBoth(_ a: PeerChannel, _ b: PeerChannel) async -> Bool {
        async let x = a.close()
        async let y = b.close()
        let (sa, sb) = await (x, y)
        return sa.clean && sb.clean
    }

    /// The outcome of an async operation as a PeerError code (nil on success).
    static func code<T>(_ body: () async throws -> T) async -> PeerError.Code? {
        do {
            _ = try await body()
            return nil
        } catch let error as PeerError {
            return error.code
        } catch {
            Issue.record("unexpected error \(error)")
            return nil
        }
    }

    /// Waits until `condition` holds (polling), at most `timeout`.
    static func eventually(timeout: Duration = .seconds(3), _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return condition()
    }

    /// Audit events of `kind`.
    static func events(_ sink: AuditMemorySink, _ kind: AuditEventKind) -> [AuditEvent] {
        sink.events.filter { $0.kind == kind }
    }
}

/// Raw socket helpers for the test's own end of a socketpair.
enum RawSocket {
    /// What `/proc/self/fd/N` links to (`socket:[inode]`): names the open file itself, so a
    /// leak check on it is immune to other tests reusing descriptor numbers in parallel.
    static func link(of descriptor: FileDescriptor) -> String {
        (try? descriptor.withRawDescriptor { raw in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(raw)")) ?? "?"
        }) ?? "closed"
    }

    /// Whether any descriptor of this process still refers to `link`.
    static func isOpen(_ link: String) -> Bool {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return entries.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) == link }
    }

    /// Waits until nothing in this process refers to `link` any more.
    static func becomesClosed(_ link: String, timeout: Duration = .seconds(3)) async -> Bool {
        await PeerTestSupport.eventually(timeout: timeout) { !isOpen(link) }
    }

    static func write(_ descriptor: FileDescriptor, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            switch try descriptor.send(Array(bytes[offset...])) {
            case .processed(let n): offset += n
            case .wouldBlock: usleep(1000)
            }
        }
    }

    /// Reads until `count` bytes, EOF or the timeout; returns what arrived and whether EOF came.
    static func read(_ descriptor: FileDescriptor, atLeast count: Int = Int.max, timeout: Duration = .seconds(2)) -> (bytes: [UInt8], eof: Bool) {
        var out: [UInt8] = []
        let deadline = ContinuousClock.now.advanced(by: timeout)
        var buffer = [UInt8](repeating: 0, count: 65536)
        while out.count < count && ContinuousClock.now < deadline {
            let result = try? buffer.withUnsafeMutableBytes { try descriptor.receive(into: $0, descriptorCapacity: 0) }
            switch result {
            case .processed(let r)?:
                if r.isEndOfStream { return (out, true) }
                out += buffer[0..<r.byteCount]
            case .wouldBlock?:
                usleep(1000)
            case nil:
                return (out, true)
            }
        }
        return (out, false)
    }

    /// Looks at the first `count` bytes without consuming them (MSG_PEEK), waiting for them.
    static func peek(_ descriptor: FileDescriptor, count: Int, timeout: Duration = .seconds(2)) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while ContinuousClock.now < deadline {
            let n = (try? descriptor.withRawDescriptor { raw in
                buffer.withUnsafeMutableBytes { recv(raw, $0.baseAddress, count, Int32(MSG_PEEK) | Int32(MSG_DONTWAIT)) }
            }) ?? -1
            if n == count { return buffer }
            if n == 0 { break }
            usleep(500)
        }
        return []
    }

    /// A pipe's read end (not a socket), for descriptor-kind checks.
    static func pipeEnds() -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [-1, -1]
        precondition(pipe(&fds) == 0, "pipe failed")
        return (FileDescriptor(adopting: fds[0]), FileDescriptor(adopting: fds[1]))
    }
}

/// A counter tests share with tasks.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func increment() { lock.lock(); value += 1; lock.unlock() }
    var current: Int { lock.lock(); defer { lock.unlock() }; return value }
}

/// A peer netlayer for tests with short deadlines and an audit sink.
struct TestPeer {
    let pair: IdentityKeyPair
    let netlayer: PeerNetlayer
    let audit: AuditMemorySink

    init(
        pair: IdentityKeyPair = IdentityKeyPair.generate(), handshakeTimeout: Duration = .seconds(2),
        registrationTimeout: Duration = .seconds(2), allowLegacy: Bool = false,
        maxHandshakes: Int = HandshakeLimiter.defaultLimit, resources: PeerResourceLimits = PeerResourceLimits(),
        reconnect: ReconnectPolicy = ReconnectPolicy()
    ) {
        self.pair = pair
        audit = AuditMemorySink(writer: pair.publicIdentity)
        var configuration = PeerNetlayer.Configuration(registrationTimeout: registrationTimeout, connectTimeout: .milliseconds(500))
        configuration.channel = PeerTestSupport.fastConfiguration(timeout: handshakeTimeout, allowLegacy: allowLegacy)
        configuration.maxConcurrentHandshakes = maxHandshakes
        configuration.resources = resources
        configuration.reconnect = reconnect
        netlayer = try! PeerNetlayer(identity: pair, configuration: configuration, audit: audit, logger: PeerTestSupport.quietLogger)
    }

    var identity: PublicIdentity { pair.publicIdentity }

    /// The next incoming channel, or nil after `timeout`.
    func nextIncoming(timeout: Duration = .seconds(3)) async -> PeerChannel? {
        let stream = netlayer.incoming
        return await withTaskGroup(of: PeerChannel?.self) { group in
            group.addTask {
                var iterator = stream.makeAsyncIterator()
                return await iterator.next()
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    func events(_ kind: AuditEventKind) -> [AuditEvent] { PeerTestSupport.events(audit, kind) }
}
