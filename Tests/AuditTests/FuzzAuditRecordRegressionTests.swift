import Foundation
import TestSupport
import Testing

/// Inputs kept by the FuzzAuditRecord fuzzer (Fuzz/corpus, Fuzz/crashers) replayed through its oracle, so
/// machines without the fuzzing toolchain still cover them.
@Suite struct FuzzAuditRecordRegressionTests {
    @Test func everySeedAndCrasherSatisfiesTheOracle() throws {
        let root = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        var files: [URL] = []
        for kind in ["corpus", "crashers"] {
            let dir = root.appendingPathComponent("Fuzz/\(kind)/FuzzAuditRecord")
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
            files += names.filter { !$0.hasPrefix(".") }.sorted().map { dir.appendingPathComponent($0) }
        }
        #expect(files.count >= 3, "the seed corpus is missing")
        for file in files {
            let problems = AuditRecordFuzzOracle.violations([UInt8](try Data(contentsOf: file)))
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
    }
}
