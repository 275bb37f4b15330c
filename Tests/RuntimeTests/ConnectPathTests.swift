#if canImport(Glibc)
import Glibc
#endif
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
        let sink = AuditMemorySink(writer: alice.publicIdentity)
        let a = PeerTestSupport.establishment(alice, PeerTestSupport.fastConfiguration(timeout: .seconds(30)), audit: sink)
        let b = PeerTestSupport.establishment(bob, PeerTestSupport.fastConfiguration(timeout: .seconds(30)))
        let (ea, eb) = try FileDescriptor.socketPair()
        let cancellation = HandshakeCancellation()
        let initiator = Task {
            try await a.initiate(over: ea, to: bob.publicIdentity, introduction: IntroductionContext(), cancellation: cancellation)
        }
        // msg1 is out and nobody answers yet: the deadline waits on the socket's loop.
        var engine: ChannelEngine?
        #expect(await PeerTestSupport.eventually {
            engine = cancellation.attachedEngine
            return engine.map { e in e.queue.sync { e.deadlineTimer != nil } } ?? false
        })
        let started = try #require(engine)
        let handshakeTimer = try #require(started.queue.sync { started.deadlineTimer })
        #expect(handshakeTimer.isPending)
        let cb = try await b.respond(over: eb, expecting: alice.publicIdentity)
        let ca = try await initiator.value
        #expect(ca.engine === started)
        // The open channel has no deadline: the timer left the loop without running.
        #expect(!handshakeTimer.isPending)
        #expect(ca.engine.queue.sync { ca.engine.deadlineTimer } == nil)
        #expect(cb.engine.queue.sync { cb.engine.deadlineTimer } == nil)
        #expect(PeerTestSupport.events(sink, .handshakeFailed).isEmpty)
        try await ca.send([1, 2, 3])
        #expect(try await cb.receive() == [1, 2, 3])
        #expect(await PeerTestSupport.closeBoth(ca, cb))
        #expect(ca.engine.queue.sync { ca.engine.deadlineTimer } == nil)
    }

    @Test func theInitiatorsLastHandshakeMessageIsOutBeforeTheApplicationHasTheChannel() async throws {
        let a = PeerTestSupport.establishment(alice, PeerTestSupport.fastConfiguration(timeout: .seconds(5)))
        for _ in 0..<20 {
            let (ea, eb) = try FileDescriptor.socketPair()
            defer { eb.close() }
            let responder = HandshakeResponder(identity: bob, announcedInitiator: alice.publicIdentity, now: .now)
            let initiator = Task { try await a.initiate(over: ea, to: bob.publicIdentity) }
            let msg1 = RawSocket.read(eb, atLeast: 120)
            guard case .send(let msg2) = try responder.receive(msg1.bytes, now: .now) else {
                Issue.record("the responder did not answer msg1")
                return
            }
            try RawSocket.write(eb, msg2)
            let ca = try await initiator.value
            // One non-blocking read, no waiting: msg3 was handed to the kernel before the
            // application was told of the channel.
            var buffer = [UInt8](repeating: 0, count: 4096)
            let first = try buffer.withUnsafeMutableBytes { try eb.receive(into: $0, descriptorCapacity: 0) }
            guard case .processed(let read) = first, read.byteCount > 0 else {
                Issue.record("msg3 was not written when initiate returned")
                await ca.abort()
                return
            }
            guard case .established = try responder.receive(Array(buffer[..<read.byteCount]), now: .now) else {
                Issue.record("msg3 did not complete the responder")
                await ca.abort()
                return
            }
            await ca.abort()
        }
    }

    @Test func acceptIncomingHandsEachChannelToItsHandlerAtEstablishmentInsteadOfToTheStream() async throws {
        let server = try TestIntroServer()
        defer { server.stop() }
        let a = TestPeer()
        let b = TestPeer()
        let accepted = Mutex<[PublicIdentity?]>([])
        b.netlayer.acceptIncoming { channel in
            accepted.withLock { $0.append(channel.verifiedPeer.flatMap { try? PublicIdentity(publicKey: $0.publicKey) }) }
            return { delivery in
                switch delivery {
                case .message(let m): _ = try? channel.sendNow(m.reversed())
                case .ended: Task { await channel.close() }
                }
            }
        }
        _ = try await a.netlayer.addServer(path: server.path, expectedKey: server.publicIdentity)
        _ = try await b.netlayer.addServer(path: server.path, expectedKey: server.publicIdentity)
        for i in 0..<3 {
            let ca = try await a.netlayer.connect(to: b.netlayer.locator)
            // Sent at once: it may arrive with msg3, before the responder's handshake ended.
            try await ca.send([UInt8(i), 7])
            #expect(try await ca.receive() == [7, UInt8(i)])
            #expect(await ca.close().clean)
        }
        #expect(accepted.withLock { $0 } == Array(repeating: a.identity, count: 3))
        // None went to the stream, and each one's caps were given back at its end.
        #expect(await b.nextIncoming(timeout: .milliseconds(100)) == nil)
        #expect(await PeerTestSupport.eventually { b.netlayer.inboundOpenChannels == 0 && b.netlayer.inboundHandshakesInProgress == 0 })
        await a.netlayer.shutdown()
        await b.netlayer.shutdown()
    }

    @Test func aHandlerInstalledAtEstablishmentGetsTheMessageThatCameWithMsg3WithoutAHopToTheLoop() async throws {
        let b = PeerTestSupport.establishment(bob)
        let (ea, eb) = try FileDescriptor.socketPair()
        defer { ea.close() }
        // A raw initiator, so that msg3 and the first message go out in one write: the read
        // that finishes the responder's handshake brings the message too.
        var initiator = ChannelMachine(
            initiator: try HandshakeInitiator(identity: alice, responder: bob.publicIdentity, now: .now),
            configuration: ChannelMachine.Configuration())
        var actions: [ChannelMachine.Action] = []
        func writeOut(_ machine: inout ChannelMachine) throws {
            let bytes = Array(machine.pendingOutput)
            try RawSocket.write(ea, bytes)
            machine.handle(.wrote(bytes.count), into: &actions)
        }
        struct Seen: Sendable {
            var messages: [[UInt8]] = []
            var onLoopThread: [Bool] = []
            var ends = 0
        }
        let seen = Mutex(Seen())
        let accepted = Mutex<PeerChannel?>(nil)
        b.respond(over: eb, expecting: alice.publicIdentity, introduction: IntroductionContext()) { outcome in
            guard case .success(let channel) = outcome else { return }
            accepted.withLock { $0 = channel }
            let engine = channel.engine
            // What `PeerNetlayer.acceptIncoming` does, on the channel's queue.
            engine.installHandlerAtEstablishment { delivery in
                let onLoop = engine.callerIsOnLoopThread
                switch delivery {
                case .message(let m):
                    seen.withLock {
                        $0.messages.append(m)
                        $0.onLoopThread.append(onLoop)
                    }
                    _ = try? channel.sendNow(m.reversed())
                case .ended:
                    seen.withLock { $0.ends += 1 }
                }
            }
        }
        try writeOut(&initiator)  // msg1
        let msg2 = RawSocket.read(ea, atLeast: 1)
        initiator.handle(.bytes(msg2.bytes), into: &actions)
        #expect(initiator.isEstablished)
        #expect(initiator.send([1, 2, 3], into: &actions) == .queued)
        try writeOut(&initiator)  // msg3 and the first message together

        // The echo comes back: the handler ran, on the thread that finished the handshake.
        var echoed: [[UInt8]] = []
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while echoed.count < 1, ContinuousClock.now < deadline {
            let got = RawSocket.read(ea, atLeast: 1, timeout: .milliseconds(200))
            guard !got.bytes.isEmpty else { continue }
            actions.removeAll()
            initiator.handle(.bytes(got.bytes), into: &actions)
            for case .deliver(let m) in actions { echoed.append(m) }
        }
        #expect(echoed == [[3, 2, 1]])
        #expect(seen.withLock { $0.messages } == [[1, 2, 3]])
        #expect(seen.withLock { $0.onLoopThread } == [false])

        // A later message is read and delivered on the loop thread, as `deliver(to:)` does.
        actions.removeAll()
        #expect(initiator.send([4], into: &actions) == .queued)
        try writeOut(&initiator)
        #expect(await PeerTestSupport.eventually { seen.withLock { $0.messages.count } == 2 })
        #expect(seen.withLock { $0.onLoopThread } == [false, true])
        let channel = try #require(accepted.withLock { $0 })
        await channel.abort()
        #expect(await PeerTestSupport.eventually { seen.withLock { $0.ends } == 1 })
        accepted.withLock { $0 = nil }
    }

    /// Notes the thread each record was written on.
    final class ThreadRecorder: AuditSink {
        let threads = Mutex<[(AuditEventKind, pthread_t)]>([])
        func record(_ event: AuditEvent) { threads.withLock { $0.append((event.kind, pthread_self())) } }
        func thread(of kind: AuditEventKind) -> pthread_t? { threads.withLock { $0.first { $0.0 == kind }?.1 } }
    }

    @Test func theInitiatorsHandshakeReadinessIsHandledByTheConnectingTaskNotAWorker() async throws {
        // This test's tasks run on its own thread (`.ownThread`), child tasks included.
        let testThread = pthread_self()
        for _ in 0..<5 {
            let recorder = ThreadRecorder()
            let a = try ChannelEstablishment(identity: alice, audit: recorder, logger: PeerTestSupport.quietLogger)
            let (ca, cb) = try await PeerTestSupport.connectedPair(a, PeerTestSupport.establishment(bob))
            // msg2 was read, msg3 sealed and the session recorded by the task that connected:
            // the loop woke it, no worker came in between.
            let established = try #require(recorder.thread(of: .handshakeSucceeded))
            #expect(pthread_equal(established, testThread) != 0)
            #expect(await PeerTestSupport.closeBoth(ca, cb))
        }
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
