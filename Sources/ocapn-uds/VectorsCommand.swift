import ArgumentParser
import Foundation
import VectorCheck

struct VectorsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vectors",
        abstract: "Known-answer test vectors: ours and other implementations'.",
        subcommands: [VectorsVerifyCommand.self]
    )
}

struct VectorsVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Run every vector file in a directory (or the given files).",
        discussion: """
            Recognised files: our own JSON (`"format": "ocapn-uds/<kind>/v1"`: identity, syrup, \
            ocapn, registration-v2, handshake), Wycheproof Ed25519/X25519 JSON, Noise test-vector \
            JSON, and raw \
            Syrup values (`*.bin`, decoded and re-encoded). Markdown and LICENSE files are skipped.

            Prints one line per file (`PASS`/`FAIL`, format, counts), the failing cases, and a \
            closing line `N passed, M failed` (with `, K skipped` when cases were skipped).

            Exit status: 0 when every case passed; 4 when any case failed or a file was not \
            recognised; 1 when a path cannot be read.
            """
    )

    @Argument(help: "Vector directories or files.")
    var paths: [String] = ["Vectors"]

    @Flag(name: .long, help: "Also list every passing case.")
    var verbose = false

    func run() throws {
        var reports: [VectorFileReport] = []
        for path in paths {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                throw CLIError(.failure, "\(path): no such file or directory")
            }
            reports += isDir.boolValue ? VectorRunner.run(directory: path) : [VectorRunner.run(file: path)]
        }
        var passed = 0, failed = 0, skipped = 0
        for r in reports {
            passed += r.passed
            failed += r.failed
            skipped += r.skipped
            let status = r.failed == 0 ? "PASS" : "FAIL"
            var line = "\(status) \(r.path) [\(r.format ?? "unknown")] \(r.passed) passed, \(r.failed) failed"
            if r.skipped > 0 { line += ", \(r.skipped) skipped" }
            print(line)
            if let e = r.fileError { print("  error: \(e)") }
            for c in r.cases where c.outcome == .failed || verbose {
                print("  \(c.outcome.rawValue): \(c.name)\(c.detail.map { ": \($0)" } ?? "")")
            }
        }
        var closing = "\(passed) passed, \(failed) failed"
        if skipped > 0 { closing += ", \(skipped) skipped" }
        print(closing)
        if failed > 0 || reports.isEmpty { throw ExitCode(CLIExitCode.verificationFailed.rawValue) }
    }
}
