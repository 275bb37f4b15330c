import Audit
import CPaddedSender
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

/// Issue #17: a sender that sizes its SCM_RIGHTS control message as a padded 24-byte C struct
/// (Goblins) passes a second descriptor, its fd 0. Our server and our peer use the first,
/// close the extra at once, audit it, and the introduction completes. The test's "fd 0" is a
/// pipe passed explicitly, so the runner's own stdin is never involved, and the pipe's inode
/// makes every copy of it countable in /proc/self/fd.
@Suite(.serialized, .ownThread) struct PaddedControlMessageTests {
    /// A pipe standing for the sender's stdin; `links` counts the open descriptors of this
    /// process that refer to it (ours included).
    struct StandInStdin {
        let read: FileDescriptor
        let write: FileDescriptor
        let inode: UInt64

        init() throws {
            var fds: [Int32] = [-1, -1]
            guard pipe(&fds) == 0 else { throw POSIXError(.EMFILE) }
            for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            read = FileDescriptor(adopting: fds[0])
            write = FileDescriptor(adopting: fds[1])
            var info = stat()
            _ = try read.withRawDescriptor { fstat($0, &info) }
            inode = UInt64(info.st_ino)
        }

        var links: Int { descriptorsLinking(to: "pipe:[\(inode)]") }

        func close() {
            read.close()
            write.close()
        }
    }

    @Test("The padded control message is 24 bytes, not CMSG_LEN(4)")
    func paddedLength() {
        #expect(cps_padded_control_length() == 24)
    }

    @Test("Through our server to our peer: the padding descriptor is closed at once and audited, the handshake completes and echoes")
    func throughOurServer() async throws {
        let dir = NSTemporaryDirectory() + "ocapn-pad-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false,
                                                attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/s.sock"
        let key = IdentityKeyPair.generate()
        let sink = AuditMemorySink(writer: key.publicIdentity)
        let server = IntroductionServer(
            identity: key, socket: try IntroductionServerSetup.openSocket(path: path, mode: 0o600),
            configuration: .init(core: IntroductionServerConfiguration(allowedUIDs: [getuid()])), audit: sink,
            logger: PeerTestSupport.quietLogger)
        server.start()
        defer { server.stop() }

        let b = TestPeer()
        _ = try await b.netlayer.addServer(path: path, expectedKey: key.publicIdentity)
        let a = try BlockingPeer(path: path, server: key.publicIdentity)
        defer { a.close() }
        try a.register()

        let stdin = try StandInStdin()
        defer { stdin.close() }
        let (mine, theirs) = try FileDescriptor.socketPair()
        try a.send(UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: a.identity), to: PeerLocator(identity: b.identity))).encoded)
        let sent = try a.control.withRawDescriptor { socket in
            try theirs.withRawDescriptor { fd in
                try stdin.read.withRawDescriptor { pad in
                    UDSNewConnection.fdMarker.withUnsafeBytes { cps_send_padded(socket, $0.baseAddress!, $0.count, fd, pad) }
                }
            }
        }
        #expect(sent == 4)
        theirs.close()
        stdin.read.close()

        async let accepted = b.nextIncoming()
        let ca = try await PeerTestSupport.establishment(a.key).initiate(over: mine, to: b.identity)
        let cb = try #require(await accepted)
        try await ca.send(Array("ping".utf8))
        let got = try #require(try await cb.receive())
        try await cb.send(got)
        #expect(try await ca.receive() == Array("ping".utf8))
        #expect(await PeerTestSupport.closeBoth(ca, cb))

        // The server closed its copy of the stand-in stdin: only our write end refers to it.
        #expect(await PeerTestSupport.eventually { stdin.links == 1 }, "links: \(stdin.links)")
        let closed = sink.events.filter { $0.kind == .descriptorsClosed }
        #expect(closed.count == 1)
        #expect(closed.first?.reason == AuditReason(introductionServer: .extraDescriptorsClosed))
        #expect(closed.first?.descriptorKinds?.names == ["pipe"])
        #expect(closed.first?.from == AuditPeerID(a.identity))
        #expect(sink.events.filter { $0.kind == .introductionForwarded }.count == 1)
        // What the server forwarded carried exactly one descriptor: the peer closed none.
        #expect(b.events(.descriptorsClosed).isEmpty)
        #expect(b.events(.handshakeSucceeded).count == 1)
        await b.netlayer.shutdown()
    }

    @Test("From a server that pads its markers to our peer: the peer closes the extra at once, audits it, and the handshake completes and echoes")
    func fromAPaddingServer() async throws {
        let stdin = try StandInStdin()
        defer { stdin.close() }
        let server = try TestIntroServer(padMarkersWith: stdin.read)
        defer { server.stop() }
        let a = TestPeer()
        let b = TestPeer()
        _ = try await a.netlayer.addServer(path: server.path, expectedKey: server.publicIdentity)
        _ = try await b.netlayer.addServer(path: server.path, expectedKey: server.publicIdentity)
        let before = stdin.links

        async let accepted = b.nextIncoming()
        let ca = try await a.netlayer.connect(to: b.netlayer.locator)
        let cb = try #require(await accepted)
        try await ca.send(Array("ping".utf8))
        let got = try #require(try await cb.receive())
        try await cb.send(got)
        #expect(try await ca.receive() == Array("ping".utf8))
        #expect(await PeerTestSupport.closeBoth(ca, cb))

        // The copy the peer received is gone: back to the server's (the test's) two ends.
        #expect(stdin.links == before, "links: \(stdin.links), before: \(before)")
        let closed = b.events(.descriptorsClosed)
        #expect(closed.count == 1)
        #expect(closed.first?.reason == .runtime(.extraDescriptorsClosed))
        #expect(closed.first?.descriptorKinds?.names == ["pipe"])
        #expect(closed.first?.introServer == AuditPeerID(server.publicIdentity))
        #expect(a.events(.descriptorsClosed).isEmpty)
        await a.netlayer.shutdown()
        await b.netlayer.shutdown()
    }
}

/// Open descriptors of this process whose /proc/self/fd link reads `target`.
func descriptorsLinking(to target: String) -> Int {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return entries.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) == target }.count
}
