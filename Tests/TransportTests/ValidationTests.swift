import Glibc
import Testing
import Transport

extension TransportTests {
    @Suite struct Validation {
        enum Maker: String, CaseIterable, Sendable {
            case regularFile, pipe, tcpListening, tcpConnected, udp, unixDatagram, unixListening, unixConnectedToPath
        }

        /// Builds the descriptor under test plus anything that must stay open while it is checked.
        static func make(_ maker: Maker, in directory: TemporaryDirectory) throws -> (FileDescriptor, [FileDescriptor], ListeningSocket?) {
            switch maker {
            case .regularFile:
                let raw = open(directory.path + "/file", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
                return (FileDescriptor(adopting: raw), [], nil)
            case .pipe:
                let (r, w) = try makePipe()
                return (r, [w], nil)
            case .tcpListening, .tcpConnected:
                let listener = try makeRawSocket(AF_INET, Int32(SOCK_STREAM.rawValue))
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_addr.s_addr = inet_addr("127.0.0.1")
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                try listener.withRawDescriptor { fd in
                    _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
                    _ = listen(fd, 4)
                    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
                }
                if maker == .tcpListening { return (listener, [], nil) }
                let client = try makeRawSocket(AF_INET, Int32(SOCK_STREAM.rawValue))
                let rc = try client.withRawDescriptor { fd in
                    withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) } }
                }
                #expect(rc == 0)
                return (client, [listener], nil)
            case .udp:
                return (try makeRawSocket(AF_INET, Int32(SOCK_DGRAM.rawValue)), [], nil)
            case .unixDatagram:
                return (try makeRawSocket(AF_UNIX, Int32(SOCK_DGRAM.rawValue)), [], nil)
            case .unixListening:
                let socket = try ListeningSocket.bind(path: directory.path + "/l.sock")
                let duplicate = try socket.descriptor.withRawDescriptor { FileDescriptor(adopting: fcntl($0, F_DUPFD_CLOEXEC, 0)) }
                return (duplicate, [], socket)
            case .unixConnectedToPath:
                let socket = try ListeningSocket.bind(path: directory.path + "/c.sock")
                return (try FileDescriptor.connect(unixPath: directory.path + "/c.sock"), [], socket)
            }
        }

        static func expectedKind(_ maker: Maker) -> DescriptorKind {
            switch maker {
            case .regularFile: .regularFile
            case .pipe: .pipe
            case .tcpListening: .tcp(listening: true)
            case .tcpConnected: .tcp(listening: false)
            case .udp: .udp
            case .unixDatagram: .unixDatagram
            case .unixListening: .unixStream(listening: true, named: true, connected: false)
            case .unixConnectedToPath: .unixStream(listening: false, named: true, connected: true)
            }
        }

        @Test(arguments: Maker.allCases)
        func validationRejectsEveryDescriptorThatIsNotASocketPairEnd(_ maker: Maker) async throws {
            let oracle = await LeakOracle.make()
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let (candidate, keep, listening) = try Self.make(maker, in: directory)
            oracle.track(candidate)
            oracle.track(keep)
            #expect {
                try candidate.validateAsConnectedUnixStream()
            } throws: { error in
                let error = error as? TransportError
                return error?.code == .unexpectedDescriptorKind && error?.descriptorKind == Self.expectedKind(maker)
            }
            candidate.close()
            for fd in keep { fd.close() }
            listening?.close()
            await oracle.expectNoLeaks()
        }

        @Test func aSocketPairEndPassesValidation() throws {
            let (a, b) = try FileDescriptor.socketPair()
            defer { a.close(); b.close() }
            try a.validateAsConnectedUnixStream()
            #expect(try a.kind().isUnnamedConnectedUnixStream)
        }

        @Test func aPathConnectedClientPassesOnlyWhenNamesAreAllowed() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let socket = try ListeningSocket.bind(path: directory.path + "/s.sock")
            defer { socket.close() }
            let client = try FileDescriptor.connect(unixPath: directory.path + "/s.sock")
            defer { client.close() }
            try client.validateAsConnectedUnixStream(requireUnnamed: false)
        }
    }
}

@Suite struct ShortKindDescriptionTests {
    @Test("Extra descriptors are named for the audit: pipe, /dev/null, tty, socketpair end, regular file")
    func names() throws {
        let (r, w) = try makePipe()
        defer { r.close(); w.close() }
        #expect(r.shortKindDescription() == "pipe")
        let null = FileDescriptor(adopting: open("/dev/null", O_RDONLY | O_CLOEXEC))
        defer { null.close() }
        #expect(null.shortKindDescription() == "/dev/null")
        let master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        if master >= 0 {
            let tty = FileDescriptor(adopting: master)
            defer { tty.close() }
            #expect(tty.shortKindDescription() == "tty")
        }
        let (a, b) = try FileDescriptor.socketPair()
        defer { a.close(); b.close() }
        #expect(a.shortKindDescription() == "unix stream socket pair end")
        let file = FileDescriptor(adopting: open("/proc/self/status", O_RDONLY | O_CLOEXEC))
        defer { file.close() }
        #expect(file.shortKindDescription() == "regular file")
    }
}
