import Errors
import Foundation
import Identity
import OCapN
@testable import Runtime
import RuntimeTestSupport
import Testing
import Transport

/// Issue #14: the Runtime's errors are coded errors of the layers they come from — no
/// description-only error types.
@Suite(.ownThread) struct RuntimeErrorTests {
    @Test("A socket that never becomes ready: BlockingIO throws TransportError .timedOut")
    func blockingWaitTimesOut() throws {
        let (a, b) = try FileDescriptor.socketPair()
        defer { a.close(); b.close() }
        let error = #expect(throws: TransportError.self) { try BlockingIO.waitFor(a, events: .readable, seconds: 0.05) }
        #expect(error?.code == .timedOut)
    }

    @Test("A server that closes during registration: BlockingIntroductionClient throws PeerError .serverDisconnected")
    func blockingClientSeesTheServerLeave() throws {
        let dir = try TemporaryDirectory("ocapn-err")
        defer { dir.remove() }
        let path = dir.file("s.sock")
        let listening = try IntroductionServerSetup.openSocket(path: path, mode: 0o600)
        defer { listening.close() }
        // The server reads the registration request, then hangs up without answering.
        let server = Thread {
            guard (try? listening.descriptor.wait(for: .readable, timeout: .seconds(5))) == true,
                  case let .processed(accepted)? = try? listening.descriptor.acceptConnection() else { return }
            defer { accepted.close() }
            var buffer = [UInt8](repeating: 0, count: 4096)
            _ = try? accepted.wait(for: .readable, timeout: .seconds(5))
            _ = try? buffer.withUnsafeMutableBytes { try accepted.receive(into: $0, descriptorCapacity: 0) }
        }
        server.start()
        let client = try BlockingIntroductionClient(path: path, server: nil)
        defer { client.close() }
        let error = #expect(throws: PeerError.self) { try client.register() }
        #expect(error?.code == .netlayer(.serverDisconnected))
    }

    @Test("A path whose directory is missing: IntroductionServerError .bind, the operator's line names the path, the code and what to do")
    func bindFailureLine() throws {
        let dir = try TemporaryDirectory("ocapn-err")
        defer { dir.remove() }
        let path = dir.file("gone/s.sock")
        let error = #expect(throws: IntroductionServerError.self) {
            _ = try IntroductionServerSetup.openSocket(path: path, mode: 0o600)
        }
        #expect(error?.code == .bind)
        #expect(error?.detail == "cannot listen at \(path): noSuchPath: directory \(dir.file("gone")) does not exist (No such file or directory)"
            + " — create the directory or choose another --socket")
        #expect(IntroductionServerError.Code.allCases.map(\.rawValue)
            == ["descriptorBudget", "socketActivation", "bind", "invalidConfiguration"])
    }
}
