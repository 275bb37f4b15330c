import Audit
import Dispatch
import Foundation
import Identity
import Runtime
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
        ChannelEstablishment(identity: pair, configuration: configuration, limiter: limiter, audit: audit, logger: quietLogger)
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

    /// The outcome of an async operation as a PeerError code (nil on success).
    static func code<T>(_ body: () async throws(PeerError) -> T) async -> PeerError.Code? {
        do {
            _ = try await body()
            return nil
        } catch {
            return error.code
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

    /// Waits until this process's descriptor count is back to `baseline` (sockets close on the
    /// channel queue just after the call that ended them returns).
    static func descriptorsReturn(to baseline: Int) async -> Bool {
        await eventually { DescriptorCensus.openCount() <= baseline }
    }

    /// Audit events of `kind`.
    static func events(_ sink: AuditMemorySink, _ kind: AuditEventKind) -> [AuditEvent] {
        sink.events.filter { $0.kind == kind }
    }
}
