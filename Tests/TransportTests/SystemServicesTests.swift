import Glibc
import Testing
import Transport

extension TransportTests {
    @Suite struct SystemServices {
        @Test func socketActivationIsParsedForThisProcessOnly() throws {
            let environment = ["LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "control:admin"]
            let announcement = try #require(try SocketActivation.parse(environment: environment, processID: 42))
            #expect(announcement.descriptors == 3..<5)
            #expect(announcement.names == ["control", "admin"])
            #expect(try SocketActivation.parse(environment: environment, processID: 43) == nil)
            #expect(try SocketActivation.parse(environment: [:], processID: 42) == nil)
            let unnamed = try #require(try SocketActivation.parse(environment: ["LISTEN_PID": "7", "LISTEN_FDS": "1"], processID: 7))
            #expect(unnamed.names == ["unknown"])
        }

        @Test(arguments: [
            ["LISTEN_PID": "x", "LISTEN_FDS": "1"],
            ["LISTEN_PID": "42", "LISTEN_FDS": "-1"],
            ["LISTEN_PID": "42", "LISTEN_FDS": "65"],
            ["LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "one"],
        ])
        func malformedActivationVariablesAreRejected(_ environment: [String: String]) {
            #expect {
                try SocketActivation.parse(environment: environment, processID: 42)
            } throws: { ($0 as? TransportError)?.code == .invalidEnvironment }
        }

        @Test(arguments: ["path", "abstract"])
        func readinessReachesTheNotifySocket(_ flavour: String) async throws {
            let oracle = await LeakOracle.make()
            let directory = try TemporaryDirectory()
            defer { directory.remove() }
            let name = flavour == "path" ? directory.path + "/notify" : "@ocapn-uds-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let receiver = try makeRawSocket(AF_UNIX, Int32(SOCK_DGRAM.rawValue))
            oracle.track(receiver)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            var bytes = Array(name.utf8)
            if flavour == "abstract" { bytes[0] = 0 }
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
            let length = socklen_t(2 + bytes.count + (flavour == "path" ? 1 : 0))
            let bound = try receiver.withRawDescriptor { fd in
                withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
            }
            #expect(bound == 0)

            #expect(try ServiceNotification.notify("READY=1", socketPath: name))
            var buffer = [UInt8](repeating: 0, count: 64)
            let count = try receiver.withRawDescriptor { recv($0, &buffer, 64, Int32(MSG_DONTWAIT)) }
            #expect(count == 7 && Array(buffer[..<7]) == Array("READY=1".utf8))
            receiver.close()
            await oracle.expectNoLeaks()
        }

        @Test func notifyWithoutASocketDoesNothing() throws {
            #expect(try ServiceNotification.notify("READY=1", socketPath: "") == false)
            #expect {
                try ServiceNotification.notify("READY=1", socketPath: "relative/path")
            } throws: { ($0 as? TransportError)?.code == .invalidEnvironment }
        }

        /// Changes the process's open-file limit: an exit test, in a child process of its own.
        @Test func theSoftOpenFileLimitIsRaisedTowardsTheHardLimit() async {
            await #expect(processExitsWith: .success) {
                let before = try OpenFileLimit.current()
                let after = try OpenFileLimit.raiseSoftLimit()
                #expect(after >= before.soft && after <= before.hard)
                #expect(try OpenFileLimit.current().soft == after)
            }
        }

        @Test func theCensusSeesNewDescriptors() throws {
            let before = DescriptorCensus.openDescriptors()
            let (r, w) = try makePipe()
            let during = DescriptorCensus.openDescriptors()
            let raws = try [r.withRawDescriptor { $0 }, w.withRawDescriptor { $0 }]
            #expect(raws.allSatisfy { during.contains($0) })
            r.close()
            w.close()
            #expect(!raws.contains { before.contains($0) })
        }
    }
}
