import Foundation
import TestSupport
import Testing
@testable import Syrup

/// Inputs kept by the FuzzSyrupDecode fuzzer (Fuzz/corpus, Fuzz/crashers) replayed through the
/// fuzzer's own oracle, so machines without the fuzzing toolchain still cover them.
@Suite struct SyrupFuzzRegressionTests {
    static func files(_ kind: String) -> [URL] {
        let dir = RepoFiles.root.appendingPathComponent("Fuzz/\(kind)/FuzzSyrupDecode")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { dir.appendingPathComponent($0) }
    }

    @Test func everySeedAndCrasherSatisfiesTheOracle() throws {
        let seeds = Self.files("corpus")
        #expect(seeds.count >= 20, "the seed corpus is missing")
        for file in seeds + Self.files("crashers") {
            let problems = SyrupFuzzOracle.violations([UInt8](try Data(contentsOf: file)))
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
    }

    @Test func theOracleFlagsANonCanonicalEncodingAsAccepted() {
        var out: [String] = []
        SyrupFuzzOracle.checkAccepted(.int(5), Array("05+".utf8)[...], .default, "default", &out)
        #expect(out.count == 1)
    }

    @Test func theOracleFlagsAValueOverTheDepthLimit() {
        let deep = SyrupValue.list([.list([.list([])])])
        var limits = SyrupLimits.controlMessage
        limits.maxDepth = 2
        #expect(SyrupFuzzOracle.limitViolation(deep, limits, depth: 0) == "depth 3")
        #expect(SyrupFuzzOracle.limitViolation(deep, .controlMessage, depth: 0) == nil)
    }

    @Test func backToBackValuesWithJunkAfterThemSatisfyTheOracle() {
        #expect(SyrupFuzzOracle.violations(Array("[1+2+]3\"abc{}#$<1'a>x".utf8)).isEmpty)
    }
}
