import Audit
import Foundation
import Glibc
import Identity
import OCapN
@testable import Runtime
import RuntimeTestSupport
import Testing
import Transport

/// The introduction server on one `EventLoop` (issue #9 item 2): the listener and every control
/// connection registered with it, handled on its thread, unregistered before they close.
@Suite struct IntroductionServerLoopTests {
    @Test("The listener and each control connection are registered with the server's loop, an introduction passes there, and stop leaves nothing registered")
    func everyServerDescriptorLivesOnItsLoop() async throws {
        let loop = try EventLoop(name: "test-intro-srv")
        defer { loop.shutdown() }
        let dir = try TemporaryDirectory("ocapn-loop")
        defer { dir.remove() }
        let path = dir.file("s.sock")
        let key = IdentityKeyPair.generate()
        let server = IntroductionServer(
            identity: key, socket: try IntroductionServerSetup.openSocket(path: path, mode: 0o600),
            configuration: .init(core: IntroductionServerConfiguration(allowedUIDs: [getuid()])), audit: nil,
            logger: PeerTestSupport.quietLogger, loop: loop)
        #expect(server.loop === loop)
        server.start()
        #expect(await PeerTestSupport.eventually { loop.registeredCount == 1 }, "the listener")

        let a = try BlockingPeer(path: path, server: key.publicIdentity)
        defer { a.close() }
        let b = try BlockingPeer(path: path, server: key.publicIdentity)
        defer { b.close() }
        try a.register()
        try b.register()
        #expect(await PeerTestSupport.eventually { server.statistics().registered == 2 })
        #expect(loop.registeredCount == 3, "the listener and two control connections")

        let (mine, theirs) = try FileDescriptor.socketPair()
        defer { mine.close(); theirs.close() }
        try a.send(UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: a.identity), to: PeerLocator(identity: b.identity))).encoded)
        try a.send(UDSNewConnection.fdMarker, passing: [theirs])
        theirs.close()
        let received = try b.receiveDescriptor()
        defer { received.close() }
        _ = try mine.send(Array("hi".utf8))
        #expect(try waitReadable(received, seconds: 10))

        a.close()
        #expect(await PeerTestSupport.eventually { loop.registeredCount == 2 }, "a hung-up peer's connection is unregistered")
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in server.stop { done.resume() } }
        #expect(loop.registeredCount == 0, "stop unregisters the listener and every connection")
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("The server's deadlines and periodic checks are timers on its loop: a silent client is dropped at its registration deadline, and stop cancels every timer")
    func deadlinesAndChecksAreLoopTimers() async throws {
        let loop = try EventLoop(name: "test-intro-timers")
        defer { loop.shutdown() }
        let dir = try TemporaryDirectory("ocapn-loop")
        defer { dir.remove() }
        let path = dir.file("s.sock")
        var core = IntroductionServerConfiguration(allowedUIDs: [getuid()])
        core.limits.registrationTimeout = .milliseconds(300)
        var configuration = IntroductionServer.Configuration(core: core)
        configuration.auditCheckpointInterval = .milliseconds(200)
        let log = dir.file("audit.jsonl")
        let key = IdentityKeyPair.generate()
        let sink = try AuditFileSink(AuditFileConfiguration(path: log, writer: key.publicIdentity, signer: key))
        let server = IntroductionServer(
            identity: key, socket: try IntroductionServerSetup.openSocket(path: path, mode: 0o600),
            configuration: configuration, audit: sink, logger: PeerTestSupport.quietLogger, loop: loop)
        server.start()
        #expect(await PeerTestSupport.eventually { loop.registeredCount == 1 }, "the listener")
        // Eventually: while a periodic check runs, its next run is not yet scheduled.
        #expect(await PeerTestSupport.eventually { loop.pendingTimerCount == 3 }, "audit checkpoint, hang-up polling and socket-path watch")

        let silent = try FileDescriptor.connect(unixPath: path)
        defer { silent.close() }
        #expect(await PeerTestSupport.eventually { loop.registeredCount == 2 })
        #expect(await PeerTestSupport.eventually { loop.pendingTimerCount == 4 }, "and the registration deadline")
        // Dropped by the deadline timer on the loop: the server closes its end.
        #expect(try waitReadable(silent, seconds: 10))
        #expect(await PeerTestSupport.eventually { loop.registeredCount == 1 })
        // The periodic checks keep running: each schedules its next run (two of them have run
        // at least once by now).
        try await Task.sleep(for: .milliseconds(450))
        #expect(await PeerTestSupport.eventually { loop.pendingTimerCount == 3 })

        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in server.stop { done.resume() } }
        #expect(loop.pendingTimerCount == 0, "stop cancels the deadline and every periodic check")
        sink.close()
        let records = try String(contentsOfFile: log, encoding: .utf8)
        #expect(records.contains("\"event\":\"registration.refused\""), "the silent client's refusal is audited")
    }
}
