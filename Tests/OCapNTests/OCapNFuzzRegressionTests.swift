import Foundation
import OCapN
import Syrup
import TestSupport
import Testing

/// Inputs kept by the FuzzControlMessages fuzzer (Fuzz/corpus, Fuzz/crashers) replayed through
/// the fuzzer's own oracle, so machines without the fuzzing toolchain still cover them.
@Suite struct OCapNFuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func files(_ kind: String) -> [URL] {
        let dir = root.appendingPathComponent("Fuzz/\(kind)/FuzzControlMessages")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { dir.appendingPathComponent($0) }
    }

    /// A fuzz input from reads (bytes, descriptor count); reads without descriptors are cut to
    /// the 255 bytes one chunk entry can describe.
    static func input(_ reads: [([UInt8], Int)]) -> [UInt8] {
        var entries: [UInt8] = []
        for (bytes, descriptors) in reads {
            if descriptors > 0 || bytes.isEmpty {
                precondition(bytes.count <= 255, "a read with descriptors is one chunk entry")
                entries += [UInt8(bytes.count), UInt8(descriptors)]
            } else {
                for start in stride(from: 0, to: bytes.count, by: 255) {
                    entries += [UInt8(min(255, bytes.count - start)), 0]
                }
            }
        }
        precondition(entries.count <= 30, "at most 15 chunk entries")
        return [UInt8(entries.count / 2)] + entries + reads.flatMap(\.0)
    }

    @Test func everySeedAndCrasherSatisfiesTheOracle() throws {
        let seeds = Self.files("corpus")
        #expect(seeds.count >= 10, "the seed corpus is missing")
        for file in seeds + Self.files("crashers") {
            let problems = ControlFuzzOracle.violations([UInt8](try Data(contentsOf: file)))
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
    }

    @Test func registrationV2MessagesAreInTheOracleSchemaAndRoundTrip() throws {
        let run = try RegistrationV2Tests.register()
        for message in run.messages {
            let input = Self.input([(message.encoded, 0)])
            #expect(ControlFuzzOracle.violations(input).isEmpty, "\(message.name)")
        }
    }

    @Test func anIntroductionWithItsDescriptorOnTheMarkerReadIsAcceptedWhole() {
        let record = Fixtures.bytes("msg4_uds_new_connection_A_to_S")
        let input = Self.input([(record, 0), (UDSNewConnection.fdMarker, 1)])
        let (plan, stream) = ControlFuzzOracle.reads(input)
        #expect(plan.last?.descriptors == 1 && plan.last?.bytes == UDSNewConnection.fdMarker)
        #expect(stream == record + UDSNewConnection.fdMarker)
        #expect(ControlFuzzOracle.violations(input).isEmpty)
    }

    @Test func descriptorsOnTheWrongReadOrTooManyAreRefusedWithoutLeaking() {
        let record = Fixtures.bytes("msg4_uds_new_connection_A_to_S")
        let head = Array(record[..<100]), tail = Array(record[100...])
        let marker = UDSNewConnection.fdMarker
        let cases: [[([UInt8], Int)]] = [
            [(head, 1), (tail, 0), (marker, 0)],
            [(record, 0), (marker, 3)],
            [([], 1), (record, 0), (marker, 1)],
            [(record, 0), (marker, 1), (marker, 1)],
            [(Fixtures.bytes("msg1_uds_register_A"), 0), (marker, 1)],
        ]
        for reads in cases {
            #expect(ControlFuzzOracle.violations(Self.input(reads)).isEmpty)
        }
    }

    @Test func theSchemaCheckRejectsWhatUDSMessageMustRefuse() throws {
        for name in ["register_challenge_63_bytes", "register_extra_field", "unknown_label", "locator_hints_true",
                     "server_response_sig_r_31_bytes", "signature_nested_record"] {
            let value = try SyrupDecoder(limits: .controlMessage).decode(Fixtures.hex(Fixtures.reject(name)["hex"] as! String))
            #expect(!ControlFuzzOracle.Schema.isMessage(value), "\(name)")
        }
        for name in ["msg1_uds_register_A", "msg2_uds_server_response_goblins", "msg2_uds_server_response_spec_text",
                     "msg3_uds_signature_A_goblins", "msg3_uds_signature_A_spec_text", "msg5_uds_new_connection_S_to_B"] {
            let value = try SyrupDecoder(limits: .controlMessage).decode(Fixtures.bytes(name))
            #expect(ControlFuzzOracle.Schema.isMessage(value), "\(name)")
        }
    }
}

/// Inputs kept by the FuzzServerCore fuzzer, replayed through its oracle.
@Suite struct ServerCoreFuzzRegressionTests {
    @Test func everySeedAndCrasherSatisfiesTheOracle() throws {
        var files: [URL] = []
        for kind in ["corpus", "crashers"] {
            let dir = OCapNFuzzRegressionTests.root.appendingPathComponent("Fuzz/\(kind)/FuzzServerCore")
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
            files += names.filter { !$0.hasPrefix(".") }.sorted().map { dir.appendingPathComponent($0) }
        }
        #expect(files.count >= 10, "the seed corpus is missing")
        for file in files {
            let problems = ServerCoreFuzzOracle.violations([UInt8](try Data(contentsOf: file)))
            #expect(problems.isEmpty, "\(file.lastPathComponent): \(problems)")
        }
    }
}
