import Audit
import Dispatch
import Foundation
import Glibc
import Identity
import Logging
import OCapN
@testable import Runtime
import RuntimeTestSupport
import TestSupport
import Testing
import Transport

/// The introduction server runtime in this process: real sockets, a memory audit sink.
@Suite(.serialized, .ownThread) struct IntroductionServerRuntimeTests {
    @Test("Every core record maps to the audit event of the same kind, and refusals carry their reason")
    func recordsMapToEvents() throws {
        let server = IdentityKeyPair.generate().publicIdentity
        let peer = IdentityKeyPair.generate().publicIdentity
        let expected: [IntroductionServerAuditRecord.Kind: AuditEventKind] = [
            .registrationAccepted: .registrationAccepted, .registrationRefused: .registrationRefused,
            .introductionRequested: .introductionRequested, .introductionQueued: .introductionQueued,
            .introductionForwarded: .introductionForwarded, .introductionExpired: .introductionExpired,
            .introductionRefused: .introductionRefused, .extraDescriptorsClosed: .descriptorsClosed,
        ]
        for kind in IntroductionServerAuditRecord.Kind.allCases {
            let record = IntroductionServerAuditRecord(
                kind, reason: kind.isTerminal && kind != .registrationAccepted && kind != .introductionForwarded ? .pendingLimit : nil,
                attempt: 0x0102030405060708, claimed: peer, from: peer, to: peer,
                credentials: .init(pid: 7, uid: 8, gid: 9), durationNanoseconds: 12_345_000)
            let event = AuditEvent(record, server: AuditPeerID(server))
            #expect(event.kind == expected[kind])
            #expect(event.kind.endsAttempt == kind.isTerminal)
            #expect(event.attempt?.hex == "0102030405060708")
            #expect(event.local == AuditPeerID(server) && event.role == .server)
            #expect(event.expectedPeer == AuditPeerID(peer))
            #expect(event.credentials == AuditPeerCredentials(pid: 7, uid: 8, gid: 9))
            #expect(event.durationMicros == 12_345)
            if event.outcome == .failure { #expect(event.reason == AuditReason(introductionServer: .pendingLimit)) }
        }
    }

    @Test("Configuration problems name each bad value; the descriptor budget adds clients, pending and reserve")
    func configurationChecks() {
        var limits = IntroductionServerLimits()
        #expect(limits.problems.isEmpty)
        limits.maxClients = 0
        limits.maxMessageBytes = 10
        limits.introductionBurst = 0
        #expect(limits.problems.count == 4, "\(limits.problems)")  // clients, unauthenticated > clients, bytes, burst
        var configuration = IntroductionServer.Configuration(core: .init(allowedUIDs: [0]))
        #expect(configuration.problems.isEmpty)
        #expect(configuration.requiredDescriptors == UInt64(1024 + 1 + 256 + 16))
        configuration.readBufferBytes = 1
        #expect(configuration.problems.count == 1)
    }

    @Test("The descriptor budget refuses caps the open-file limit cannot hold and names the limits")
    func descriptorBudget() {
        let configuration = IntroductionServer.Configuration(core: .init(allowedUIDs: [0]))
        let needed = configuration.requiredDescriptors
        #expect(IntroductionServerSetup.budgetProblem(configuration, softLimit: needed, hardLimit: needed) == nil)
        let problem = IntroductionServerSetup.budgetProblem(configuration, softLimit: needed - 1, hardLimit: 1024)
        #expect(problem?.contains("\(needed) descriptors") == true)
        #expect(problem?.contains("--max-clients") == true)
    }

    @Test("In process: two peers register, an introduction passes a working socket, the audit trail is complete, stop releases everything")
    func inProcessRoundTrip() async throws {
        let dir = NSTemporaryDirectory() + "ocapn-rt-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/s.sock"
        let key = IdentityKeyPair.generate()
        let sink = AuditMemorySink(writer: key.publicIdentity)
        let core = IntroductionServerConfiguration(allowedUIDs: [getuid()])
        let server = IntroductionServer(
            identity: key, socket: try IntroductionServerSetup.openSocket(path: path, mode: 0o600),
            configuration: .init(core: core), audit: sink,
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        server.start()
        let a = try BlockingPeer(path: path, server: key.publicIdentity)
        defer { a.close() }
        let b = try BlockingPeer(path: path, server: key.publicIdentity)
        defer { b.close() }
        try a.register()
        try b.register()
        let (mine, theirs) = try FileDescriptor.socketPair()
        defer { mine.close(); theirs.close() }
        try a.send(UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: a.identity), to: PeerLocator(identity: b.identity))).encoded)
        try a.send(UDSNewConnection.fdMarker, passing: [theirs])
        theirs.close()
        let received = try b.receiveDescriptor()
        defer { received.close() }
        _ = try mine.send(Array("hi".utf8))
        var buffer = [UInt8](repeating: 0, count: 8)
        #expect(try waitReadable(received, seconds: 10))
        let got = try buffer.withUnsafeMutableBytes { try received.receive(into: $0, descriptorCapacity: 0) }
        if case let .processed(r) = got { #expect(Array(buffer[..<r.byteCount]) == Array("hi".utf8)) }
        received.close()
        mine.close()
        #expect(server.statistics().registered == 2)
        a.close()
        b.close()
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in server.stop { done.resume() } }
        #expect(!FileManager.default.fileExists(atPath: path), "stop unlinks the socket path")
        let kinds = sink.events.map(\.kind)
        #expect(kinds.first == .serverStarted && kinds.last == .serverStopped)
        #expect(kinds.filter { $0 == .registrationAccepted }.count == 2)
        #expect(kinds.contains(.introductionRequested) && kinds.contains(.introductionForwarded))
        #expect(sink.events.first { $0.kind == .registrationAccepted }?.credentials?.pid == getpid())
    }
}

func waitReadable(_ descriptor: FileDescriptor, seconds: Double) throws -> Bool {
    try descriptor.withRawDescriptor { fd in
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, Int32(seconds * 1000)) > 0
    }
}

/// A minimal blocking control-connection client for in-process runtime tests.
final class BlockingPeer {
    let key = IdentityKeyPair.generate()
    let control: FileDescriptor
    private var client: RegistrationClient
    private var reader = ControlStreamReader<FileDescriptor>(limits: .init(maxDescriptorsPerRead: 1))  // strict: what we send carries one

    init(path: String, server: PublicIdentity) throws {
        control = try FileDescriptor.connect(unixPath: path, timeout: .seconds(2))
        let key = self.key
        client = RegistrationClient(signer: key,
                                    challenge: .random(), expectedServer: server)
    }

    var identity: PublicIdentity { key.publicIdentity }

    func close() {
        control.close()
        for d in reader.drainDescriptors() { d.close() }
    }

    func send(_ bytes: [UInt8], passing descriptors: [FileDescriptor] = []) throws {
        guard case let .processed(n) = try control.send(bytes, passing: descriptors), n == bytes.count else {
            throw TransportError(.timedOut, "short write in test")
        }
    }

    func next() throws -> ControlStreamReader<FileDescriptor>.Item {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            if let item = try reader.next() { return item }
            guard try waitReadable(control, seconds: 10) else { throw TransportError(.timedOut, "no reply in test") }
            let result = try buffer.withUnsafeMutableBytes { try control.receive(into: $0, descriptorCapacity: 4) }
            guard case let .processed(r) = result else { continue }
            if r.isEndOfStream { throw TransportError(.closed, "the server closed the connection") }
            for extra in try reader.receive(Array(buffer[..<r.byteCount]), descriptors: r.descriptors) { extra.close() }
        }
    }

    func register() throws {
        try send(client.start().encoded)
        guard case let .message(value) = try next() else { throw TransportError(.closed, "no response") }
        for case let .send(reply) in try client.receive(value) { try send(reply.encoded) }
    }

    func receiveDescriptor() throws -> FileDescriptor {
        guard case let .newConnection(value, descriptor) = try next() else { throw TransportError(.closed, "no introduction") }
        _ = try client.receive(value)
        return descriptor
    }
}
