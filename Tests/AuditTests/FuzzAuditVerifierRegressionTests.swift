import Foundation
import Audit
@testable import TestSupport
import Testing

/// Inputs kept by the FuzzAuditVerifier fuzzer (Fuzz/corpus, Fuzz/crashers) replayed through its
/// oracle, so machines without the fuzzing toolchain still cover them.
@Suite struct FuzzAuditVerifierRegressionTests {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func everySeedAndCrasherSatisfiesTheOracle() throws {
        var files: [URL] = []
        for kind in ["corpus", "crashers"] {
            let dir = Self.root.appendingPathComponent("Fuzz/\(kind)/FuzzAuditVerifier")
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
            files += names.filter { !$0.hasPrefix(".") }.sorted().map { dir.appendingPathComponent($0) }
        }
        #expect(files.count >= 8, "the seed corpus is missing")
        for file in files {
            let problems = AuditVerifierFuzzOracle.violations([UInt8](try Data(contentsOf: file)))
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
    }

    /// The whole-file seed is the genuine log byte for byte: the oracle's log (fixed key, fixed
    /// clock) is stable, so a change in record encoding or checkpoint signing shows here.
    @Test func theWholeFileSeedIsTheGenuineLog() throws {
        let seed = [UInt8](try Data(contentsOf: Self.root.appendingPathComponent("Fuzz/corpus/FuzzAuditVerifier/genuine-file")))
        #expect(seed == [1] + AuditVerifierFuzzOracle.genuineFile)
        let sealedSeed = [UInt8](try Data(contentsOf: Self.root.appendingPathComponent("Fuzz/corpus/FuzzAuditVerifier/sealed-file")))
        #expect(sealedSeed == [1] + AuditVerifierFuzzOracle.sealedFile)
    }

    /// The oracle can fail: each kind of edit of the genuine log is reported, the genuine log is
    /// intact, and an edit that changes nothing (a swap of a line with itself) stays intact.
    @Test func editsAreReportedAndTheGenuineLogIsIntact() {
        #expect(AuditVerifierFuzzOracle.file(for: [0]) == AuditVerifierFuzzOracle.genuineFile)
        #expect(AuditVerifierFuzzOracle.file(for: [0, 3, 2, 2]) == AuditVerifierFuzzOracle.genuineFile)
        for edit: [UInt8] in [[0, 0, 3, 40, 1], [0, 1, 5, 0], [0, 2, 4, 9], [0, 3, 2, 3], [0, 4, 1, 0], [0, 6, 3, 2, 0x41, 0x42], [0, 7, 14, 9]] {
            let bytes = AuditVerifierFuzzOracle.file(for: edit)
            #expect(bytes != AuditVerifierFuzzOracle.genuineFile, "\(edit) changes the log")
        }
        #expect(AuditVerifierFuzzOracle.violations([0]).isEmpty)
        #expect(AuditVerifierFuzzOracle.violations([0, 1, 5, 0]).isEmpty)
    }

    /// The sealed form: the genuine sealed log is intact with its verification key and without
    /// it (signatures only), its seals are really checked with the key (another key's log is
    /// refused), and each kind of edit of it is reported with the key.
    @Test func theSealedLogIsSealedAndItsEditsAreReported() throws {
        let sealed = AuditVerifierFuzzOracle.sealedFile
        #expect(AuditVerifierFuzzOracle.file(for: [2]) == sealed)
        #expect(sealed != AuditVerifierFuzzOracle.genuineFile)
        #expect(AuditVerifierFuzzOracle.violations([2]).isEmpty)
        #expect(AuditVerifierFuzzOracle.violations([1] + sealed).isEmpty)
        let text = String(decoding: sealed, as: UTF8.self)
        #expect(text.components(separatedBy: "\"seal\"").count - 1 >= 4, "several epochs' checkpoints are sealed")
        // With the key, the signed (unsealed) log is not intact: the key is really used.
        let key = try #require(AuditVerifierFuzzOracle.sealed.verificationKey)
        var verifier = AuditVerifier(options: AuditVerifyOptions(verificationKey: key))
        verifier.beginFile(AuditVerifierFuzzOracle.file)
        for line in AuditVerifierFuzzOracle.split(AuditVerifierFuzzOracle.genuineFile) { verifier.line(line) }
        #expect(verifier.finish().status != .intact)
        for edit: [UInt8] in [[2, 0, 3, 40, 1], [2, 1, 5, 0], [2, 2, 4, 9], [2, 3, 2, 3], [2, 4, 1, 0], [2, 6, 3, 2, 0x41, 0x42], [2, 7, 14, 9]] {
            #expect(AuditVerifierFuzzOracle.file(for: edit) != sealed, "\(edit) changes the sealed log")
            #expect(AuditVerifierFuzzOracle.violations(edit).isEmpty, "\(edit)")
        }
    }
}
