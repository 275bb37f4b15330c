import Audit
import TestSupport
import Identity
import Logging
@testable import Runtime
import RuntimeTestSupport
import SecureChannel
import Synchronization
import Testing
import Transport

/// The connect path without thread hops (issue #9): introductions handled on the control
/// connection's loop thread, deadlines as event-loop timers that still fire and close.
@Suite(.ownThread) struct ConnectPathTests {
    let alice = IdentityKeyPair.generate()
    let bob = IdentityKeyPair.generate()

    @Test func anIntroductionIsAcceptedOnTheControlLoopThreadWithNoQueueHop() async throws {
        let server = try TestIntroServer()
        defer { server.stop() }
        let a = TestPeer()
        let b = TestPeer()
        _ = try await a.netlayer.addServer(path: server.path, expectedKey: server.publicIdentity)
        _ = try await b.netlayer.addServer(path: server.path, expectedKey: server.publicIdentity)
        for i in 0..<3 {
            async let accepted = b.nextIncoming()
            let ca = try await a.netlayer.connect(to: b.netlayer.locator)
            let cb = try #require(await accepted)
            try await ca.send([UInt8(i)])
            #expect(try await cb.receive() == [UInt8(i)])
            #expect(await PeerTestSupport.closeBoth(ca, cb))
        }
        // Every introduction went from the loop thread's recvmsg to its handshake's start there.
        #expect(b.netlayer.introductionsAcceptedOnLoopThread == 3)
        #expect(a.netlayer.introductionsAcceptedOnLoopThread == 0)
        #expect(await PeerTestSupport.eventually { b.netlayer.inboundOpenChannels == 0 && b.netlayer.inboundHandshakesInProgress == 0 })
        await a.netlayer.shutdown()
        await b.netlayer.shutdown()
    }

    @Test func theHandshakeDeadlineIsALoopTimerCancelledNotRunWhenTheHandshakeSucceeds() async throws {
        let sink = AuditMemorySink(writer: bob.publicIdentity)
        let a = PeerTestSupport.establishment(alice, PeerTestSupport.fastConfiguration(timeout: .seconds(30)))
        let b = PeerTestSupport.establishment(bob, PeerTestSupport.fastConfiguration(timeout: .seconds(30)), audit: sink)
        let (ea, eb) = try FileDescriptor.socketPair()
        let seen = Mutex<(timer: EventLoopTimer?, pending: Bool, onQueue: Bool)>((nil, false, false))
        async let initiator = a.initiate(over: ea, to: bob.publicIdentity)
        let responder = try await PeerError.catching {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<PeerChannel, Error>) in
                b.respond(over: eb, expecting: alice.publicIdentity, introduction: IntroductionContext()) { outcome in
                    if case .success(let channel) = outcome {
                        // Called on the channel's queue before the engine brings its timer in
                        // line with the open channel: the handshake's deadline is still pending.
                        let timer = channel.engine.deadlineTimer
                        seen.withLock { $0 = (timer, timer?.isPending ?? false, true) }
                    }
                    c.resume(with: outcome)
                }
            }
        }
        let ca = try await initiator
        let (timer, pendingDuringHandshake, _) = seen.withLock { $0 }
        let handshakeTimer = try #require(timer)
        #expect(pendingDuringHandshake)
        // The open channel has no deadline: the timer left the loop without running.
        #expect(await PeerTestSupport.eventually { !handshakeTimer.isPending })
        #expect(responder.engine.queue.sync { responder.engine.deadlineTimer } == nil)
        #expect(ca.engine.queue.sync { ca.engine.deadlineTimer } == nil)
        #expect(PeerTestSupport.events(sink, .handshakeFailed).isEmpty)
        try await ca.send([1, 2, 3])
        #expect(try await responder.receive() == [1, 2, 3])
        #expect(await PeerTestSupport.closeBoth(ca, responder))
        #expect(ca.engine.queue.sync { ca.engine.deadlineTimer } == nil)
    }

    @Test func aCloseThatIsNeverAnsweredEndsAtItsLoopTimerAndClosesTheSocket() async throws {
        var quick = PeerTestSupport.fastConfiguration(timeout: .seconds(5))
        quick.closeTimeout = .milliseconds(200)
        // The responder stops reading once one message waits: it never sees our CLOSE.
        var stalled = PeerTestSupport.fastConfiguration(timeout: .seconds(5))
        stalled.maxInboundQueuedMessages = 1
        let (ca, cb) = try await PeerTestSupport.connectedPair(
            PeerTestSupport.establishment(alice, quick), PeerTestSupport.establishment(bob, stalled))
        for i in 0..<3 { try await ca.send([UInt8(i)]) }
        #expect(await PeerTestSupport.eventually { cb.engine.queue.sync { cb.engine.isReadingPaused } })
        let started = ContinuousClock.now
        let summary = await ca.close()
        let waited = started.duration(to: .now)
        #expect(!summary.clean)
        #expect(summary.reason?.code == .handshake(.timeout))
        #expect(waited >= .milliseconds(200) && waited < .seconds(5), "ends at its own close deadline")
        #expect(ca.engine.queue.sync { ca.engine.isWatchingDescriptor } == false)
        #expect(ca.engine.queue.sync { ca.engine.deadlineTimer } == nil)
        // The other side sees the end once it reads again.
        await cb.abort()
    }

    @Test func aChannelsLogLinesCarryItsFactsAddedWhenWrittenNotWhenTheChannelIsMade() async throws {
        let lines = CapturedLines()
        var logger = Logger(label: "test") { _ in CapturingLogHandler(lines: lines) }
        logger.logLevel = .info
        logger[metadataKey: "process"] = "kept"
        let a = try ChannelEstablishment(identity: alice, configuration: PeerTestSupport.fastConfiguration(timeout: .seconds(5)),
                                         logger: logger)
        let b = PeerTestSupport.establishment(bob, PeerTestSupport.fastConfiguration(timeout: .seconds(5)))
        let (ca, cb) = try await PeerTestSupport.connectedPair(a, b)
        #expect(await PeerTestSupport.closeBoth(ca, cb))
        let succeeded = try #require(lines.all.first { $0.message == "handshake succeeded" })
        #expect(succeeded.metadata["role"] == "initiator")
        #expect(succeeded.metadata["local"] == alice.publicIdentity.fingerprint)
        #expect(succeeded.metadata["expected"] == bob.publicIdentity.fingerprint)
        #expect(succeeded.metadata["peer"] == bob.publicIdentity.fingerprint)
        #expect(succeeded.metadata["session"] == ca.sessionID?.description)
        #expect(succeeded.metadata["attempt"]?.count == 16)
        #expect(succeeded.metadata["process"] == "kept")
        // The debug line of the start was filtered out: nothing of it was written.
        #expect(!lines.all.contains { $0.message == "handshake started" })
        let closed = try #require(lines.all.first { $0.message == "channel closed cleanly" })
        #expect(closed.metadata["attempt"] == succeeded.metadata["attempt"])
        // The logger handed in keeps only its own metadata.
        #expect(logger[metadataKey: "role"] == nil && logger[metadataKey: "process"] == "kept")
    }
}

/// Log lines as written: message and metadata rendered to strings.
final class CapturedLines: Sendable {
    struct Line: Sendable {
        let message: String
        let metadata: [String: String]
    }

    private let lines = Mutex<[Line]>([])
    func append(_ line: Line) { lines.withLock { $0.append(line) } }
    var all: [Line] { lines.withLock { $0 } }
}

struct CapturingLogHandler: LogHandler {
    let lines: CapturedLines
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        lines.append(CapturedLines.Line(message: event.message.description, metadata: all.mapValues { "\($0)" }))
    }
}
