import Audit
import Foundation
import Glibc
import Identity
import OCapN
import Runtime
import RuntimeTestSupport
import Testing
import Transport

/// The introduction server is not trusted (SECURITY.md): these tests run real peers over real
/// socketpairs through a test server that misbehaves, and check that each attack ends in its
/// reason code AND an audit record, and that no secret byte leaks.
@Suite(.ownThread) struct PeerAttackTests {
    static let magicHeader: [UInt8] = [0x6f, 0x55, 0x48, 0x53, 0x01, 0x01, 0x00, 0x00]

    /// Registers `peers` with `server`.
    static func register(_ peers: [TestPeer], _ server: TestIntroServer) async throws {
        for p in peers { _ = try await p.netlayer.addServer(path: server.path) }
    }

    static func shutdown(_ peers: [TestPeer]) async {
        for p in peers { await p.netlayer.shutdown() }
    }

    /// A close-on-exec duplicate (the server "keeping a copy" of a passed socket).
    static func duplicate(_ d: FileDescriptor) -> FileDescriptor {
        FileDescriptor(adopting: try! d.withRawDescriptor { fcntl($0, F_DUPFD_CLOEXEC, 0) })
    }

    static func failures(_ peer: TestPeer) -> [AuditReason] { peer.events(.handshakeFailed).compactMap(\.reason) }

    @Test func aServerThatLiesAboutFromIsCaughtAsIdentityMismatch() async throws {
        let claimed = IdentityKeyPair.generate().publicIdentity
        let server = try TestIntroServer { intro, descriptor, forward in
            forward.deliver(UDSNewConnection(from: PeerLocator(identity: claimed), to: intro.request.to), descriptor, to: intro.target)
        }
        defer { server.stop() }
        let a = TestPeer(handshakeTimeout: .seconds(3))
        let b = TestPeer()
        try await Self.register([a, b], server)
        #expect(await PeerTestSupport.code { try await a.netlayer.connect(to: b.netlayer.locator) } == .netlayer(.introductionDropped))
        #expect(await PeerTestSupport.eventually { Self.failures(b) == [.handshake(.identityMismatch)] })
        let record = try #require(b.events(.handshakeFailed).first)
        #expect(record.expectedPeer == AuditPeerID(claimed) && record.from == AuditPeerID(claimed))
        #expect(record.introServer == AuditPeerID(server.publicIdentity))
        #expect(b.events(.handshakeSucceeded).isEmpty)
        await Self.shutdown([a, b])
    }

    @Test func swappedSocketsReachTheWrongResponderAndAreRefused() async throws {
        let pending = PendingIntroductions()
        let server = try TestIntroServer { intro, descriptor, forward in
            guard let first = pending.pairWith(intro, descriptor) else { return }
            // Cross the sockets: each target gets the other introduction's socket.
            forward.deliver(first.0.request, descriptor, to: first.0.target)
            forward.deliver(intro.request, first.1, to: intro.target)
        }
        defer { server.stop() }
        let a = TestPeer(handshakeTimeout: .seconds(5))
        let b = TestPeer(handshakeTimeout: .seconds(5))
        let c = TestPeer(handshakeTimeout: .seconds(5))
        let d = TestPeer(handshakeTimeout: .seconds(5))
        try await Self.register([a, b, c, d], server)
        async let ab = PeerTestSupport.code { try await a.netlayer.connect(to: b.netlayer.locator) }
        async let dc = PeerTestSupport.code { try await d.netlayer.connect(to: c.netlayer.locator) }
        let (codeAB, codeDC) = await (ab, dc)
        #expect(codeAB == .netlayer(.introductionDropped) && codeDC == .netlayer(.introductionDropped), "\(String(describing: codeAB)) \(String(describing: codeDC)) b \(Self.failures(b)) c \(Self.failures(c))")
        #expect(await PeerTestSupport.eventually { Self.failures(b) == [.handshake(.wrongResponder)] && Self.failures(c) == [.handshake(.wrongResponder)] })
        await Self.shutdown([a, b, c, d])
    }

    @Test func twoInitiatorsSplicedTogetherSeeAnUnexpectedMessageType() async throws {
        let pending = PendingIntroductions()
        let relays = Relays()
        let server = try TestIntroServer { intro, descriptor, _ in
            guard let first = pending.pairWith(intro, descriptor) else { return }
            relays.splice(first.1, descriptor)
        }
        defer { server.stop(); relays.stop() }
        let a = TestPeer(handshakeTimeout: .seconds(3))
        let b = TestPeer()
        let c = TestPeer()
        let d = TestPeer(handshakeTimeout: .seconds(3))
        try await Self.register([a, b, c, d], server)
        async let ab = PeerTestSupport.code { try await a.netlayer.connect(to: b.netlayer.locator) }
        async let dc = PeerTestSupport.code { try await d.netlayer.connect(to: c.netlayer.locator) }
        let (codeAB, codeDC) = await (ab, dc)
        #expect(codeAB == .handshake(.unexpectedMessageType) && codeDC == .handshake(.unexpectedMessageType))
        #expect(Self.failures(a) == [.handshake(.unexpectedMessageType)] && Self.failures(d) == [.handshake(.unexpectedMessageType)])
        await Self.shutdown([a, b, c, d])
    }

    @Test func oneSocketDeliveredToTwoPeersLetsAtMostOneFinish() async throws {
        let c = TestPeer(handshakeTimeout: .milliseconds(500))
        let server = try TestIntroServer { intro, descriptor, forward in
            let copy = Self.duplicate(descriptor)
            forward.deliver(UDSNewConnection(from: intro.request.from, to: PeerLocator(identity: c.identity)), copy, to: c.identity)
            forward.deliver(intro.request, descriptor, to: intro.target)
        }
        defer { server.stop() }
        let a = TestPeer(handshakeTimeout: .milliseconds(800))
        let b = TestPeer(handshakeTimeout: .milliseconds(500))
        try await Self.register([a, b, c], server)
        let channel = try? await a.netlayer.connect(to: b.netlayer.locator)
        if let channel { #expect(channel.verifiedPeer?.publicKey == b.identity.publicKey, "only B can finish as B") }
        #expect(await PeerTestSupport.eventually { Self.failures(c).count == 1 })
        let cReason = try #require(Self.failures(c).first)
        #expect([.handshake(.wrongResponder), .handshake(.timeout), .handshake(.truncated)].contains(cReason))
        #expect(c.events(.handshakeSucceeded).isEmpty)
        #expect(b.events(.handshakeSucceeded).count + Self.failures(b).count <= 1)
        if let channel { await channel.abort() }
        await Self.shutdown([a, b, c])
    }

    @Test func aServerReadingAKeptCopySeesNoPlaintextAndBreaksOnlyTheChannel() async throws {
        let spy = Spy()
        let server = try TestIntroServer { intro, descriptor, forward in
            spy.watch(Self.duplicate(descriptor))
            forward.deliver(intro.request, descriptor, to: intro.target)
        }
        defer { server.stop(); spy.stop() }
        let a = TestPeer()
        let b = TestPeer()
        try await Self.register([a, b], server)
        async let accepted = b.nextIncoming()
        // The spy starts stealing only after the handshake, so the channel itself is attacked.
        let ca = try await a.netlayer.connect(to: b.netlayer.locator)
        let cb = try #require(await accepted)
        spy.start()
        let secret = Array("attack at dawn: the capability is 0xC0FFEE".utf8)
        // The spy and the victim's reader race for every segment; keep sending until the spy
        // has won at least once, so the assertions below are never vacuous (bounded in time).
        let giveUp = ContinuousClock.now + .seconds(10)
        repeat {
            for _ in 0..<16 { try? await ca.send(secret) }
            try? await Task.sleep(for: .milliseconds(2))
        } while spy.stolenCount == 0 && ContinuousClock.now < giveUp
        // If the spy took the tail of the stream, the victim would wait for bytes that never
        // come; closing the sender makes that an end of stream (truncated) instead of a hang.
        await ca.abort()
        var received: [[UInt8]] = []
        var failure: PeerError.Code?
        do {
            while let m = try await cb.receive() { received.append(m) }
        } catch {
            failure = error.code
        }
        let stolen = spy.stop()
        #expect(!stolen.isEmpty, "the kept copy did read bytes")
        #expect(!contains(stolen, secret), "the kept copy saw no plaintext")
        #expect(received.allSatisfy { $0 == secret }, "the victim only ever gets authentic messages")
        #expect(failure.map { [.handshake(.decryptFailed), .handshake(.badFrameLength), .handshake(.truncated), .handshake(.unknownFrameType)].contains($0) } ?? true)
        if failure != nil {
            #expect(await PeerTestSupport.eventually { b.events(.channelClosed).first?.clean == false })
        }
        await ca.abort()
        await cb.abort()
        await Self.shutdown([a, b])
    }

    @Test func bytesWrittenIntoAKeptCopyAreDetectedAsDecryptFailed() async throws {
        let kept = KeptCopies()
        let server = try TestIntroServer { intro, descriptor, forward in
            kept.keep(Self.duplicate(descriptor))
            forward.deliver(intro.request, descriptor, to: intro.target)
        }
        defer { server.stop(); kept.closeAll() }
        let a = TestPeer()
        let b = TestPeer()
        try await Self.register([a, b], server)
        async let accepted = b.nextIncoming()
        let ca = try await a.netlayer.connect(to: b.netlayer.locator)
        let cb = try #require(await accepted)
        // The kept copy is B's end, so what the server writes reaches A: a well-formed length
        // and 40 bytes of forgery.
        try RawSocket.write(try #require(kept.first), [0x00, 0x28] + [UInt8](repeating: 0xa5, count: 40))
        #expect(await PeerTestSupport.code { try await ca.receive() } == .handshake(.decryptFailed))
        #expect(await PeerTestSupport.eventually { a.events(.channelClosed).first?.reason == .handshake(.decryptFailed) })
        #expect(a.events(.channelClosed).first?.clean == false)
        await cb.abort()
        await Self.shutdown([a, b])
    }

    @Test func aReplayedMsg1FromAnotherSessionGetsNoChannel() async throws {
        let captured = Captured()
        let server = try TestIntroServer { intro, descriptor, forward in
            let copy = Self.duplicate(descriptor)
            Thread.detachNewThread {
                captured.set(RawSocket.peek(copy, count: 120))
                copy.close()
                forward.deliver(intro.request, descriptor, to: intro.target)
            }
        }
        defer { server.stop() }
        let a = TestPeer()
        let b = TestPeer(handshakeTimeout: .seconds(3))
        try await Self.register([a, b], server)
        async let accepted = b.nextIncoming()
        let first = try await a.netlayer.connect(to: b.netlayer.locator)
        let firstB = try #require(await accepted)
        let msg1 = try #require(captured.value)
        #expect(msg1.count == 120)

        // The server replays msg1 on a fresh socket with an honest-looking introduction.
        let (attacker, victimEnd) = try FileDescriptor.socketPair()
        defer { attacker.close() }
        TestIntroServer.Forwarder(server: server).deliver(
            UDSNewConnection(from: a.netlayer.locator, to: b.netlayer.locator), victimEnd, to: b.identity)
        try RawSocket.write(attacker, msg1)
        let msg2 = RawSocket.read(attacker, atLeast: 113).bytes
        #expect(msg2.count == 113, "B answers a valid msg1, but…")
        try RawSocket.write(attacker, [0x00, 0x51] + [UInt8](repeating: 0x33, count: 81))
        #expect(await PeerTestSupport.eventually { Self.failures(b) == [.handshake(.decryptFailed)] }, "…no AUTH can follow without A's keys")
        #expect(b.events(.handshakeSucceeded).count == 1, "only the genuine session")
        #expect(await b.nextIncoming(timeout: .milliseconds(200)) == nil)
        #expect(await PeerTestSupport.closeBoth(first, firstB))
        await Self.shutdown([a, b])
    }

    @Test func aServerThatReflectsMsg1BackMakesTheInitiatorFail() async throws {
        let kept = KeptCopies()
        let server = try TestIntroServer { _, descriptor, _ in
            kept.keep(descriptor)
            Thread.detachNewThread {
                let msg1 = RawSocket.read(descriptor, atLeast: 120).bytes
                try? RawSocket.write(descriptor, msg1)
            }
        }
        defer { server.stop(); kept.closeAll() }
        let a = TestPeer()
        let b = TestPeer()
        try await Self.register([a, b], server)
        #expect(await PeerTestSupport.code { try await a.netlayer.connect(to: b.netlayer.locator) } == .handshake(.unexpectedMessageType))
        #expect(Self.failures(a) == [.handshake(.unexpectedMessageType)])
        await Self.shutdown([a, b])
    }

    @Test func lowOrderEphemeralsAreRefusedByBothRoles() async throws {
        let kept = KeptCopies()
        let server = try TestIntroServer { _, descriptor, _ in
            // Answer msg1 as a fake responder whose ephemeral is the all-zero point.
            kept.keep(descriptor)
            Thread.detachNewThread {
                _ = RawSocket.read(descriptor, atLeast: 120)
                try? RawSocket.write(descriptor, [0x02] + [UInt8](repeating: 0, count: 32) + [UInt8](repeating: 0x11, count: 80))
            }
        }
        defer { server.stop(); kept.closeAll() }
        let a = TestPeer()
        let b = TestPeer()
        try await Self.register([a, b], server)
        #expect(await PeerTestSupport.code { try await a.netlayer.connect(to: b.netlayer.locator) } == .handshake(.lowOrderPoint))
        #expect(Self.failures(a) == [.handshake(.lowOrderPoint)])

        // And as a fake initiator towards B.
        let (attacker, victimEnd) = try FileDescriptor.socketPair()
        defer { attacker.close() }
        TestIntroServer.Forwarder(server: server).deliver(
            UDSNewConnection(from: a.netlayer.locator, to: b.netlayer.locator), victimEnd, to: b.identity)
        let msg1 = Self.magicHeader + a.identity.publicKey + b.identity.publicKey
            + [UInt8](repeating: 0, count: 32) + [UInt8](repeating: 0x22, count: 16)
        try RawSocket.write(attacker, msg1)
        #expect(await PeerTestSupport.eventually { Self.failures(b) == [.handshake(.lowOrderPoint)] })
        #expect(RawSocket.read(attacker).bytes.isEmpty, "nothing is sent in reply to a bad msg1")
        await Self.shutdown([a, b])
    }
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard needle.count <= haystack.count else { return false }
    return (0...(haystack.count - needle.count)).contains { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
}

/// Holds the first introduction until a second one arrives.
final class PendingIntroductions: @unchecked Sendable {
    private let lock = NSLock()
    private var first: (Introduction, FileDescriptor)?
    func pairWith(_ intro: Introduction, _ d: FileDescriptor) -> (Introduction, FileDescriptor)? {
        lock.lock(); defer { lock.unlock() }
        guard let f = first else { first = (intro, d); return nil }
        first = nil
        return f
    }
}

final class KeptCopies: @unchecked Sendable {
    private let lock = NSLock()
    private var kept: [FileDescriptor] = []
    func keep(_ d: FileDescriptor) { lock.lock(); kept.append(d); lock.unlock() }
    var first: FileDescriptor? { lock.lock(); defer { lock.unlock() }; return kept.first }
    func closeAll() { lock.lock(); for d in kept { d.close() }; kept = []; lock.unlock() }
}

final class Captured: @unchecked Sendable {
    private let lock = NSLock()
    private var bytes: [UInt8]?
    func set(_ b: [UInt8]) { lock.lock(); bytes = b; lock.unlock() }
    var value: [UInt8]? { lock.lock(); defer { lock.unlock() }; return bytes }
}

/// Relays bytes between two sockets both ways (a splicing server).
final class Relays: @unchecked Sendable {
    private let lock = NSLock()
    private var pairs: [(FileDescriptor, FileDescriptor)] = []
    private var running = true

    func splice(_ x: FileDescriptor, _ y: FileDescriptor) {
        lock.lock(); pairs.append((x, y)); lock.unlock()
        for (from, to) in [(x, y), (y, x)] {
            Thread.detachNewThread { [self] in
                while isRunning {
                    let got = RawSocket.read(from, atLeast: 1, timeout: .milliseconds(50))
                    if !got.bytes.isEmpty { try? RawSocket.write(to, got.bytes) }
                    if got.eof { return }
                }
            }
        }
    }

    private var isRunning: Bool { lock.lock(); defer { lock.unlock() }; return running }

    func stop() {
        lock.lock()
        running = false
        let all = pairs
        pairs = []
        lock.unlock()
        usleep(120_000)  // let the relay threads see the flag
        for (x, y) in all { x.close(); y.close() }
    }
}

/// Reads a kept copy of a socket on its own thread (competing with the victim's reader for
/// every segment), recording everything it steals.
final class Spy: @unchecked Sendable {
    private let lock = NSLock()
    private var descriptor: FileDescriptor?
    private var stolen: [UInt8] = []
    private var running = false
    private var thread: Thread?

    func watch(_ d: FileDescriptor) { lock.lock(); descriptor = d; lock.unlock() }

    var stolenCount: Int { lock.lock(); defer { lock.unlock() }; return stolen.count }

    func start() {
        lock.lock()
        guard let d = descriptor else { lock.unlock(); return }
        running = true
        lock.unlock()
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                lock.lock(); let go = running; lock.unlock()
                guard go else { return }
                // poll wakes this thread together with the victim's reader; whoever reads first
                // takes the bytes. A bounded poll keeps the thread stoppable.
                let n = (try? d.withRawDescriptor { raw -> Int in
                    var entry = pollfd(fd: raw, events: Int16(POLLIN), revents: 0)
                    guard poll(&entry, 1, 20) > 0 else { return -1 }
                    return buffer.withUnsafeMutableBytes { recv(raw, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                }) ?? -1
                if n > 0 { lock.lock(); stolen += buffer[0..<n]; lock.unlock() }
                if n == 0 { return }
            }
        }
    }

    @discardableResult
    func stop() -> [UInt8] {
        lock.lock()
        running = false
        let d = descriptor
        descriptor = nil
        lock.unlock()
        usleep(100_000)
        d?.close()
        lock.lock(); defer { lock.unlock() }
        return stolen
    }
}
