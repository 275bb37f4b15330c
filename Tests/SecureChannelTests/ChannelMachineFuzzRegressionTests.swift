import Foundation
@testable import SecureChannel
import TestSupport
import Testing

/// The FuzzChannelMachines corpus and crashers replayed through the fuzzer's own oracle, and a
/// fixed pseudo-random sweep so machines without the fuzzing toolchain still drive the pair
/// through many interleavings.
@Suite struct ChannelMachineFuzzRegressionTests {
    @Test func everyChannelMachineSeedAndCrasherSatisfiesTheOracle() throws {
        let seeds = ChannelFuzzRegressionTests.files("corpus", "FuzzChannelMachines")
        #expect(seeds.count >= 5, "the seed corpus is missing")
        for file in seeds + ChannelFuzzRegressionTests.files("crashers", "FuzzChannelMachines") {
            let problems = ChannelMachineFuzzOracle.violations([UInt8](try Data(contentsOf: file)))
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
    }

    @Test func aFixedSweepOfInterleavingsSatisfiesTheOracle() {
        var state: UInt64 = 0x9e37_79b9_7f4a_7c15
        func next() -> UInt8 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
        for run in 0..<200 {
            let input = (0..<(8 + run % 64)).map { _ in next() }
            let problems = ChannelMachineFuzzOracle.violations(input)
            #expect(problems.isEmpty, "run \(run) \(input): \(problems)")
        }
    }
}
