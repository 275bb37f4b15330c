import Glibc
import Testing
import Transport

extension TransportTests {
    @Suite struct ListeningSockets {
        /// A socket bound and listening at `path` by plain syscalls, without our lock: what a
        /// crashed daemon or a foreign server (Goblins) leaves behind.
        static func foreignListener(at path: String) throws -> FileDescriptor {
            let socket = try makeRawSocket(AF_UNIX, Int32(SOCK_STREAM.rawValue))
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
            let rc = try socket.withRawDescriptor { fd in
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                } == 0 && listen(fd, 4) == 0
            }
            #expect(rc)
            return socket
        }

        static func mode(of path: String) -> mode_t? {
            var info = stat()
            return lstat(path, &info) == 0 ? info.st_mode : nil
        }

        @Test(arguments: [0o600 as mode_t, 0o660])
        func theSocketFileGetsExactlyTheRequestedMode(_ mode: mode_t) async throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/m.sock"
            let socket = try ListeningSocket.bind(path: path, mode: mode)
            #expect(Self.mode(of: path).map { $0 & 0o7777 } == mode)
            #expect(Self.mode(of: path).map { $0 & S_IFMT } == S_IFSOCK)
            #expect(try socket.descriptor.isCloseOnExec() && socket.descriptor.isNonBlocking())
            socket.close()
            #expect(Self.mode(of: path) == nil, "close unlinks the socket file")
        }

        @Test func aStaleSocketFileIsReplaced() async throws {
            let oracle = await LeakOracle.make()
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/stale.sock"
            let crashed = try Self.foreignListener(at: path)
            crashed.close()  // the file stays: connect now gives ECONNREFUSED (K15)
            #expect(Self.mode(of: path) != nil)

            let socket = try ListeningSocket.bind(path: path)
            oracle.track(socket.descriptor)
            let client = try FileDescriptor.connect(unixPath: path)
            oracle.track(client)
            client.close()
            socket.close()
            await oracle.expectNoLeaks()
        }

        @Test func aLiveForeignServerIsNeverStolen() async throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/live.sock"
            let live = try Self.foreignListener(at: path)
            defer { live.close() }
            #expect {
                try ListeningSocket.bind(path: path)
            } throws: { ($0 as? TransportError)?.code == .addressInUse }
            let client = try FileDescriptor.connect(unixPath: path)
            client.close()
        }

        @Test func aSecondInstanceIsRefusedWhileTheFirstHoldsTheLock() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/locked.sock"
            let first = try ListeningSocket.bind(path: path)
            #expect {
                try ListeningSocket.bind(path: path)
            } throws: { ($0 as? TransportError)?.code == .alreadyRunning }
            first.close()
            let second = try ListeningSocket.bind(path: path)
            second.close()
        }

        @Test func aNonSocketAtThePathIsLeftAlone() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/file.sock"
            close(open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600))
            #expect {
                try ListeningSocket.bind(path: path)
            } throws: { ($0 as? TransportError)?.code == .pathOccupied }
            #expect(Self.mode(of: path).map { $0 & S_IFMT } == S_IFREG)
        }

        @Test func closeDoesNotUnlinkASuccessorsSocket() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/succ.sock"
            let first = try ListeningSocket.bind(path: path)
            unlink(path)
            let successor = try Self.foreignListener(at: path)
            defer { successor.close() }
            first.close()
            #expect(Self.mode(of: path) != nil)
        }

        @Test func tooLongAPathIsRefused() {
            let path = "/tmp/" + String(repeating: "x", count: 120)
            #expect {
                try ListeningSocket.bind(path: path)
            } throws: { ($0 as? TransportError)?.code == .invalidPath }
        }

        @Test func connectingWhereNoSocketIsSaysSoAndNamesThePath() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/none.sock"
            let error = try #require(throws: TransportError.self) { try FileDescriptor.connect(unixPath: path) }
            #expect(error.code == .noSuchPath, "ENOENT is not a refusal")
            #expect(error.explanation == "no socket at \(path) (No such file or directory)")
        }

        @Test func connectingIntoAMissingDirectoryNamesTheDirectory() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let error = try #require(throws: TransportError.self) {
                try FileDescriptor.connect(unixPath: directory.path + "/gone/s.sock")
            }
            #expect(error.code == .noSuchPath)
            #expect(error.detail == "directory \(directory.path)/gone does not exist")
        }

        @Test func connectingToAStaleSocketFileIsRefused() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/stale.sock"
            let stale = try ListeningSocket.bind(path: path)
            stale.descriptor.close()  // the file stays, nobody listens
            defer { unlink(path); stale.close() }
            let error = try #require(throws: TransportError.self) { try FileDescriptor.connect(unixPath: path) }
            #expect(error.code == .connectionRefused)
            #expect(error.detail.hasPrefix("nothing is listening at \(path)"))
        }

        @Test func bindingInAMissingDirectoryNamesTheDirectory() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let error = try #require(throws: TransportError.self) {
                try ListeningSocket.bind(path: directory.path + "/gone/s.sock")
            }
            #expect(error.code == .noSuchPath)
            #expect(error.explanation == "directory \(directory.path)/gone does not exist (No such file or directory)")
        }

        @Test func connectGivesUpAtTheDeadlineWhenTheBacklogIsFull() throws {
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/full.sock"
            let server = try Self.foreignListener(at: path)  // backlog 4, never accepts
            defer { server.close() }
            var clients: [FileDescriptor] = []
            defer { for client in clients { client.close() } }
            let start = ContinuousClock.now
            var timedOut = false
            for _ in 0..<16 {
                do {
                    clients.append(try FileDescriptor.connect(unixPath: path, timeout: .milliseconds(100)))
                } catch {
                    #expect(error.code == .timedOut)
                    timedOut = true
                    break
                }
            }
            #expect(timedOut)
            #expect(ContinuousClock.now - start < .seconds(1))
        }
    }
}
