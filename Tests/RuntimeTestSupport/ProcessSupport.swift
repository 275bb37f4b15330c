import Foundation
import Glibc
import Testing

/// Helpers for tests that run the real `ocapn-uds` binary as separate processes.
public enum TestProcesses {
    /// The `ocapn-uds` built alongside the test bundle (same products directory).
    public static var binary: String {
        let products = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let candidates = [
            products.appendingPathComponent("ocapn-uds").path,
            products.deletingLastPathComponent().appendingPathComponent("ocapn-uds").path,
        ]
        for c in candidates where FileManager.default.isExecutableFile(atPath: c) { return c }
        // `swift test` runs the bundle from .build/<triple>/debug; fall back to the package layout.
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/ocapn-uds").path
    }

    /// Root of the package (for Vectors/ and the like).
    public static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
}

/// A private temporary directory (mode 0700), removed with everything in it by `remove()`.
public final class TemporaryDirectory: @unchecked Sendable {
    public let path: String

    public init(_ prefix: String = "ocapn-uds-test") throws {
        // Short paths: sun_path holds 108 bytes.
        var template = Array("/tmp/\(prefix.prefix(12))-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        path = String(cString: p)
    }

    public func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }

    public func remove() { try? FileManager.default.removeItem(atPath: path) }

    deinit { remove() }
}

/// A spawned child process with line-oriented access to its stdout and stderr.
public final class ChildProcess: @unchecked Sendable {
    public let process = Process()
    private let stdoutPipe = Pipe()
    private let stderrPipe = Pipe()
    private let lock = NSCondition()
    private var stdoutLines: [String] = []
    private var stderrLines: [String] = []
    private var stdoutPartial = Data()
    private var stderrPartial = Data()
    private var stdoutClosed = false
    private var stderrClosed = false

    /// Starts `ocapn-uds` (or `executable`) with `arguments`; with `launcher`, runs
    /// `launcher + [executable] + arguments` instead (e.g. a shell that lowers a limit before exec).
    public init(_ arguments: [String], environment: [String: String]? = nil, launcher: [String]? = nil,
         executable: String = TestProcesses.binary) throws {
        if let launcher, let first = launcher.first {
            process.executableURL = URL(fileURLWithPath: first)
            process.arguments = Array(launcher.dropFirst()) + [executable] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
        }
        if let environment {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        process.standardInput = FileHandle.nullDevice
        stdoutPipe.fileHandleForReading.readabilityHandler = { [weak self] h in self?.consume(h, stdout: true) }
        stderrPipe.fileHandleForReading.readabilityHandler = { [weak self] h in self?.consume(h, stdout: false) }
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }

    private func consume(_ handle: FileHandle, stdout: Bool) {
        let data = handle.availableData
        lock.lock()
        defer { lock.broadcast(); lock.unlock() }
        if data.isEmpty {
            handle.readabilityHandler = nil
            if stdout { stdoutClosed = true } else { stderrClosed = true }
            // Flush a last line without newline.
            let rest = stdout ? stdoutPartial : stderrPartial
            if !rest.isEmpty {
                let line = String(decoding: rest, as: UTF8.self)
                if stdout { stdoutLines.append(line); stdoutPartial = Data() } else { stderrLines.append(line); stderrPartial = Data() }
            }
            return
        }
        var buffer = (stdout ? stdoutPartial : stderrPartial) + data
        while let nl = buffer.firstIndex(of: 0x0a) {
            let line = String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self)
            if stdout { stdoutLines.append(line) } else { stderrLines.append(line) }
            buffer = Data(buffer[(nl + 1)...])
        }
        if stdout { stdoutPartial = buffer } else { stderrPartial = buffer }
    }

    /// Lines printed so far.
    public var output: [String] { lock.lock(); defer { lock.unlock() }; return stdoutLines }
    public var errorOutput: [String] { lock.lock(); defer { lock.unlock() }; return stderrLines }

    /// Waits until a stdout (or stderr) line satisfies `match`; returns it, or nil on timeout/exit.
    public func waitForLine(onStderr: Bool = false, timeout: Double = 10, _ match: (String) -> Bool) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        var seen = 0
        while true {
            let lines = onStderr ? stderrLines : stdoutLines
            for line in lines[seen...] where match(line) { return line }
            seen = lines.count
            if (onStderr ? stderrClosed : stdoutClosed) { return nil }
            if !lock.wait(until: deadline) { return nil }
        }
    }

    /// Sends `signal` and waits for exit (SIGKILL after `grace` seconds). Returns the exit status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, grace: Double = 5) -> Int32 {
        if process.isRunning { kill(pid, signal) }
        let deadline = Date().addingTimeInterval(grace)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
        waitForOutputToEnd(timeout: 2)
        return process.terminationStatus
    }

    /// Waits for the process to exit by itself (killing it after `timeout`).
    @discardableResult
    public func waitForExit(timeout: Double = 10) -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
        waitForOutputToEnd()
        return process.terminationStatus
    }

    /// Waits until the pipe handlers read both outputs to their end, so `output` and
    /// `errorOutput` hold everything the process wrote (on a loaded machine the handlers can run
    /// well after the exit).
    public func waitForOutputToEnd(timeout: Double = 10) {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while !(stdoutClosed && stderrClosed) && lock.wait(until: deadline) {}
    }

    /// Number of open descriptors of the child (from /proc), for leak checks.
    public var openDescriptorCount: Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    deinit {
        if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() }
        stdoutPipe.fileHandleForReading.readabilityHandler = nil
        stderrPipe.fileHandleForReading.readabilityHandler = nil
    }
}

/// Runs `ocapn-uds` to completion and returns (status, stdout, stderr).
public func runOCapNUDS(_ arguments: [String], timeout: Double = 30) throws -> (status: Int32, stdout: String, stderr: String) {
    let child = try ChildProcess(arguments)
    let status = child.waitForExit(timeout: timeout)
    // On a loaded machine the pipe handlers can lag the exit by more than waitForExit's 10 s
    // (seen once: `bench --quick --json` read cut short with exit status 0). Nothing else
    // holds these pipes, so this returns as soon as the handlers reach the end.
    child.waitForOutputToEnd(timeout: 60)
    return (status, child.output.joined(separator: "\n"), child.errorOutput.joined(separator: "\n"))
}
