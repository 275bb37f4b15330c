import Dispatch
import Foundation
import Glibc
import Testing
import Transport

extension TransportTests {
    @Suite struct Listeners {
        static func accepted(_ events: [ListenerEvent]) -> [(FileDescriptor, PeerCredentials)] {
            events.compactMap { if case .accepted(let fd, let credentials) = $0 { (fd, credentials) } else { nil } }
        }

        @Test func theListenerAcceptsWithCredentialsAndPausesAtItsCap() async throws {
            let oracle = await LeakOracle.make()
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/cap.sock"
            let queue = DispatchQueue(label: "listener-cap")
            var configuration = Listener.Configuration()
            configuration.maximumConnections = 1
            let log = EventLog<ListenerEvent>()
            let listener = Listener(socket: try ListeningSocket.bind(path: path), queue: queue, configuration: configuration) {
                log.append($0)
            }
            queue.sync { listener.start() }
            let first = try FileDescriptor.connect(unixPath: path)
            let second = try FileDescriptor.connect(unixPath: path)
            oracle.track([first, second])

            #expect(log.wait { Self.accepted($0).count == 1 })
            let (accepted, credentials) = try #require(Self.accepted(log.events).first)
            oracle.track(accepted)
            #expect(credentials == PeerCredentials(pid: getpid(), uid: getuid(), gid: getgid()))
            #expect(try accepted.isCloseOnExec() && accepted.isNonBlocking())
            #expect(!log.wait(timeout: .milliseconds(100)) { Self.accepted($0).count > 1 })
            #expect(log.events.contains { if case .pausedAtCapacity = $0 { true } else { false } })

            queue.sync {
                accepted.close()
                listener.connectionClosed()
            }
            #expect(log.wait { Self.accepted($0).count == 2 })
            for (fd, _) in Self.accepted(log.events) {
                oracle.track(fd)
                fd.close()
            }
            queue.sync {
                listener.connectionClosed()
                listener.close()
            }
            first.close()
            second.close()
            await oracle.expectNoLeaks()
            #expect(access(path, F_OK) != 0, "closing the listener unlinks its socket file")
        }

        /// EMFILE with the connection still queued leaves the socket readable (K13); the
        /// listener must pause for its backoff instead of calling accept in a loop.
        /// Lowers the process's open-file limit, so it runs as an exit test: in a child process of
        /// its own, where no other test can meet the EMFILE meant for this listener.
        @Test func descriptorExhaustionPausesAcceptingForTheBackoff() async {
            await #expect(processExitsWith: .success) { try await Self.exhaustDescriptorsBeforeAnAccept() }
        }

        static func exhaustDescriptorsBeforeAnAccept() async throws {
            let oracle = await LeakOracle.make()
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let path = directory.path + "/emfile.sock"
            let queue = DispatchQueue(label: "listener-emfile")
            var configuration = Listener.Configuration()
            configuration.resourceBackoff = .milliseconds(300)
            let original = try OpenFileLimit.current().soft
            let log = EventLog<ListenerEvent>()
            let listener = Listener(socket: try ListeningSocket.bind(path: path), queue: queue, configuration: configuration) {
                event in
                if case .pausedForResources = event {
                    // Restore at once: the lowered limit must not outlive the one accept it targets.
                    try? OpenFileLimit.setSoftLimit(original)
                }
                log.append(event)
            }
            let client = try FileDescriptor.connect(unixPath: path)  // waits in the backlog
            oracle.track(client)
            defer { try? OpenFileLimit.setSoftLimit(original) }

            // The lowest free descriptor number becomes the limit, so the next one fails.
            let lowestFree = try client.withRawDescriptor { fcntl($0, F_DUPFD_CLOEXEC, 0) }
            close(lowestFree)
            try OpenFileLimit.setSoftLimit(UInt64(lowestFree))
            queue.sync { listener.start() }

            #expect(log.wait { $0.contains { if case .pausedForResources(let error) = $0 { error.errno == EMFILE } else { false } } })
            #expect(try OpenFileLimit.current().soft == original)
            usleep(100_000)
            // No spinning while backing off. (Not "exactly one": the limit is restored as the pause
            // begins, so a second attempt may legitimately succeed early; a loop would make thousands.)
            #expect(queue.sync { listener.acceptAttempts } <= 2, "no accept loop while backing off")
            #expect(log.wait { Self.accepted($0).count == 1 })
            #expect(queue.sync { listener.acceptAttempts } <= 4)

            for (fd, _) in Self.accepted(log.events) {
                oracle.track(fd)
                fd.close()
            }
            queue.sync {
                listener.connectionClosed()
                listener.close()
            }
            client.close()
            await oracle.expectNoLeaks()
        }
    }
}
