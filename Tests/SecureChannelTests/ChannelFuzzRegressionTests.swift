import Foundation
@testable import SecureChannel
import SodiumCrypto
import TestSupport
import Testing

/// Inputs kept by the FuzzHandshake and FuzzFrameReceiver fuzzers (Fuzz/corpus, Fuzz/crashers)
/// replayed through the fuzzers' own oracles, so machines without the fuzzing toolchain still
/// cover them.
@Suite struct ChannelFuzzRegressionTests {
    static func files(_ kind: String, _ target: String) -> [URL] {
        let dir = Fixture.repositoryRoot.appendingPathComponent("Fuzz/\(kind)/\(target)")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { dir.appendingPathComponent($0) }
    }

    @Test func theFuzzFixtureReproducesTheAliceToBobVector() throws {
        let doc = try JSONSerialization.jsonObject(with: Fixture.data("Vectors/handshake.json")) as! [String: Any]
        let t = (doc["transcripts"] as! [[String: Any]]).first { $0["name"] as? String == "alice-to-bob" }!
        let genuine = ChannelFuzzFixture.genuine
        #expect(genuine.msg1 == ChannelFuzzFixture.hex(t["msg1"] as! String))
        #expect(genuine.msg2 == ChannelFuzzFixture.hex(t["msg2"] as! String))
        #expect(genuine.auth == ChannelFuzzFixture.hex(t["auth"] as! String))
        #expect(genuine.keyIR == ChannelFuzzFixture.hex(t["key_ir"] as! String))
    }

    @Test func everyHandshakeSeedAndCrasherSatisfiesTheOracle() throws {
        let seeds = Self.files("corpus", "FuzzHandshake")
        #expect(seeds.count >= 3, "the seed corpus is missing")
        for file in seeds + Self.files("crashers", "FuzzHandshake") {
            let problems = HandshakeFuzzOracle.violations([UInt8](try Data(contentsOf: file)))
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
    }

    @Test func everyFrameSeedAndCrasherSatisfiesTheOracle() throws {
        let seeds = Self.files("corpus", "FuzzFrameReceiver")
        #expect(seeds.count >= 3, "the seed corpus is missing")
        for file in seeds + Self.files("crashers", "FuzzFrameReceiver") {
            let problems = FrameFuzzOracle.violations([UInt8](try Data(contentsOf: file)))
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
    }

    @Test func theGenuineMessagesEstablishInEveryMode() {
        let g = ChannelFuzzFixture.genuine
        for input in [[0] + g.msg1 + g.auth, [1] + g.auth, [2] + g.msg2, [0x80] + g.msg1, [0x82] + g.msg2] {
            #expect(HandshakeFuzzOracle.violations(input).isEmpty)
        }
    }

    @Test func anEndOfFileInsideAnyGenuineMessageSatisfiesTheOracle() {
        let g = ChannelFuzzFixture.genuine
        for (mode, message) in [(UInt8(0x40), g.msg1), (0x41, g.auth), (0x42, g.msg2)] {
            for cut in [0, 1, message.count / 2, message.count - 1] {
                #expect(HandshakeFuzzOracle.violations([mode] + message[..<cut]).isEmpty, "mode \(mode) cut \(cut)")
            }
        }
    }

    @Test func aFlippedBitInAnyGenuineMessageFailsWithoutViolatingTheOracle() {
        let g = ChannelFuzzFixture.genuine
        for (mode, message) in [(UInt8(0), g.msg1), (1, g.auth), (2, g.msg2)] {
            for bit in stride(from: 0, to: message.count * 8, by: 37) {
                #expect(HandshakeFuzzOracle.violations([mode] + flipped(message, bit: bit)).isEmpty, "mode \(mode) bit \(bit)")
            }
        }
    }

    @Test func theFrameModelAgreesOnFragmentsCloseAndEveryRejectedFrameKind() {
        // data-more "ab", data "c", close; then each error kind on its own.
        let good: [UInt8] = [0x00, 4, 0, 2, 0x61, 0x62] + [0x00, 0, 0, 1, 0x63] + [0x00, 1, 0, 0]
        let plan = FrameFuzzOracle.plan(good)
        #expect(FrameFuzzOracle.model(plan.frames!, eof: true, maxMessageSize: 100).messages == [Array("abc".utf8)])
        #expect(FrameFuzzOracle.model(plan.frames!, eof: true, maxMessageSize: 100).outcome == .closed)
        #expect(FrameFuzzOracle.violations(good + [0xC1]).isEmpty)
        for bad: [UInt8] in [[0x00, 0, 0, 0], [0x08, 0, 0, 1, 0x61], [0x00, 3, 0, 1, 0x61], [0x20, 9, 0, 0], [0x00, 1, 0, 1, 0],
                             [0x00, 4, 0, 1, 0x61, 0x00, 1, 0, 0], [0x00, 1, 0, 0, 0x00, 0, 0, 1, 0x61], [0x50, 0xff, 0xff],
                             [0x40, 3, 0, 5, 1], [0x80, 0, 16], [0xC1]] {
            #expect(FrameFuzzOracle.violations(bad).isEmpty, "\(bad)")
        }
    }

    @Test func theFrameModelNamesTheErrorOfEachRejectedFrameKind() {
        func outcome(_ input: [UInt8]) -> FrameFuzzOracle.Outcome {
            let plan = FrameFuzzOracle.plan(input)
            return FrameFuzzOracle.model(plan.frames!, eof: plan.eof, maxMessageSize: 1 << 14).outcome
        }
        #expect(outcome([0x00, 0, 0, 0]) == .failed(.emptyDataFrame))
        #expect(outcome([0x08, 0, 0, 1, 0x61]) == .failed(.decryptFailed))
        #expect(outcome([0x00, 3, 0, 1, 0x61]) == .failed(.unexpectedAuthFrame))
        #expect(outcome([0x20, 9, 0, 0]) == .failed(.unknownFrameType))
        #expect(outcome([0x00, 1, 0, 1, 0]) == .failed(.badFrameLength))
        #expect(outcome([0x10, 4, 0x7f, 0xff]) == .failed(.messageTooLarge))
        #expect(outcome([0x00, 0, 0, 1, 0x61, 0xC1]) == .failed(.truncated))
    }
}
