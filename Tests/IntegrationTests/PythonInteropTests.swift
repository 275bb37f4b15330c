import Foundation
import Glibc
import RuntimeTestSupport
import Testing

/// UDS-HS1 checked by a second implementation written from PROTOCOL.md alone
/// (interop/python: Python with pyca/cryptography). `make test` installs the module through
/// scripts/ensure-deps.sh; without python3 or `cryptography` these tests are skipped, saying so.
@Suite(.enabled(if: PythonInterop.available, PythonInterop.unavailableReason), .ownThread)
struct PythonInteropTests {
    @Test("The Python UDS-HS1 reproduces every transcript and refuses every negative case of Vectors/handshake.json")
    func vectorsReproducedIndependently() throws {
        let run = try PythonInterop.run(["interop/python/check_vectors.py"])
        #expect(run.status == 0, "\(run.output)")
        let json = try JSONSerialization.jsonObject(
            with: Data(contentsOf: TestProcesses.packageRoot.appendingPathComponent("Vectors/handshake.json"))) as! [String: Any]
        let total = (json["transcripts"] as! [Any]).count + (json["negative"] as! [Any]).count
        #expect(total >= 40)
        #expect(run.output.contains("\(total)/\(total) handshake vectors reproduced"), "\(run.output)")
        #expect(!run.output.contains("FAIL"))
    }

    @Test("The Python replay fails on a vector file whose msg2 differs by one bit")
    func vectorCheckerNoticesAChangedByte() throws {
        let dir = try TemporaryDirectory("py-vectors")
        defer { dir.remove() }
        let url = TestProcesses.packageRoot.appendingPathComponent("Vectors/handshake.json")
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        var transcripts = json["transcripts"] as! [[String: Any]]
        var msg2 = Array((transcripts[0]["msg2"] as! String))
        msg2[msg2.count - 1] = msg2.last == "0" ? "1" : "0"
        transcripts[0]["msg2"] = String(msg2)
        json["transcripts"] = transcripts
        let changed = dir.file("handshake.json")
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: changed))
        let run = try PythonInterop.run(["interop/python/check_vectors.py", changed])
        #expect(run.status == 1, "\(run.output)")
        #expect(run.output.contains("FAIL transcript \(transcripts[0]["name"] as! String): msg2"), "\(run.output)")
    }

    @Test("Live: the Python initiator registers (Goblins form), introduces itself and gets its message echoed by ocapn-uds peer over UDS-HS1")
    func liveHandshakeAndEchoWithOcapnUdsPeer() throws {
        let run = try PythonInterop.run(["interop/python/live_echo.py", "--ocapn-uds", TestProcesses.binary, "--timeout", "60"],
                                        timeout: 90)
        #expect(run.status == 0, "\(run.output)")
        #expect(run.output.contains("handshake ok, session "), "\(run.output)")
        #expect(run.output.contains("echo ok: hello from the python initiator"), "\(run.output)")
        #expect(run.output.contains("peer B printed verified-peer: fp1:"), "\(run.output)")
        #expect(run.output.contains("live echo ok: UDS-HS1 from Python to ocapn-uds peer"), "\(run.output)")
    }
}

enum PythonInterop {
    static let available: Bool = (try? run(["-c", "import cryptography"], script: false).status) == 0
    static var unavailableReason: Comment {
        "python3 with the `cryptography` module is not available (make test installs it via scripts/ensure-deps.sh)"
    }

    struct Result { let status: Int32; let output: String }

    /// Runs `python3 ARGS` from the package root, stdout and stderr together, killed after `timeout`.
    static func run(_ arguments: [String], script: Bool = true, timeout: Double = 60) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3"] + arguments
        process.currentDirectoryURL = TestProcesses.packageRoot
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let collected = Collected()
        let reader = Thread { collected.set(pipe.fileHandleForReading.readDataToEndOfFile()) }
        reader.start()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        let output = collected.wait()
        return Result(status: process.terminationStatus, output: String(decoding: output, as: UTF8.self))
    }

    private final class Collected: @unchecked Sendable {
        private let condition = NSCondition()
        private var data: Data?
        func set(_ value: Data) { condition.lock(); data = value; condition.broadcast(); condition.unlock() }
        func wait() -> Data {
            condition.lock(); defer { condition.unlock() }
            while data == nil { condition.wait() }
            return data!
        }
    }
}
