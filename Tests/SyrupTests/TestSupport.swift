import Foundation
import TestSupport
@testable import Syrup


/// Files of the repository, located from this source file (never from outside the repository).
enum RepoFiles {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func bytes(_ relative: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: root.appendingPathComponent(relative)))
    }
}

/// Small deterministic generator (SplitMix64) so random tests are reproducible.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The ASCII bytes of a string literal.
func ascii(_ s: String) -> [UInt8] { Array(s.utf8) }

/// Decodes `bytes` with `limits`, returning the error instead of throwing.
func decodeResult(_ bytes: [UInt8], limits: SyrupLimits = .default) -> Result<SyrupValue, SyrupError> {
    Result { () throws(SyrupError) in try SyrupDecoder(limits: limits).decode(bytes) }
}

/// Decodes a prefix, returning the error instead of throwing.
func prefixResult(_ bytes: ArraySlice<UInt8>, limits: SyrupLimits = .default) -> Result<SyrupDecodeStep, SyrupError> {
    Result { () throws(SyrupError) in try SyrupDecoder(limits: limits).decodePrefix(bytes) }
}

/// Worked examples from ocapn-uds-examples.json (hex copied verbatim).
enum OCapNExamples {
    static let locatorTwoServers = "3c3130276f6361706e2d70656572313827756e69782d646f6d61696e2d736f636b657435322232356e6a71616d637765666c70766b6c37336a34737a61686869686f63347874336b7463676a6e7061696e67723579686b656e617b35322237726934336474636463713268646e6570336961656d68716c6165626e33697478697a71686c6335356f69726b7365717161737131227435322265366172703761756a727a646964336832647a64633375647133687037707a6c6571756d747269373535366673377935696a7861747d3e"
    static let register = "3c3132277564733a72656769737465723c3130276f6361706e2d70656572313827756e69782d646f6d61696e2d736f636b657435322232356e6a71616d637765666c70766b6c37336a34737a61686869686f63347874336b7463676a6e7061696e67723579686b656e61663e36343a000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f3e"
    static let serverResponse = "3c3139277564733a7365727665722d726573706f6e73655b3130277075626c69632d6b65795b33276563635b352763757276653727456432353531395d5b3527666c616773352765646473615d5b31277133323afc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb9115489080255d5d5d36343a404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f5b37277369672d76616c5b352765646473615b31277233323ac7e0ff26d1d24bb61a5ce86aeb8a12438f2332e388842db63cccf86d6e3341145d5b31277333323ad2ad120d14f47f7afe3110e8c9ba00d79ba40cfcf6b4741c212ecdb3874440065d5d5d3e"
    static let signature = "3c3133277564733a7369676e617475726536343a404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f36343afb3480feb3be6161b04c8bb06dfd3719584e71f5291c6b677fb63d481da328ec028e6c05d17c53a4d50831bc42a740d754a44d8c4fc051e69d88e90e086e8a053e"
    static let newConnection = "3c3138277564733a6e65772d636f6e6e656374696f6e3c3130276f6361706e2d70656572313827756e69782d646f6d61696e2d736f636b657435322232356e6a71616d637765666c70766b6c37336a34737a61686869686f63347874336b7463676a6e7061696e67723579686b656e617b35322237726934336474636463713268646e6570336961656d68716c6165626e33697478697a71686c6335356f69726b736571716173713122747d3e3c3130276f6361706e2d70656572313827756e69782d646f6d61696e2d736f636b65743532226876616270713769696f657676657678626b74753267333678736f6a716c67706633636a6e6467617a766b37636b78756d7967617b35322237726934336474636463713268646e6570336961656d68716c6165626e33697478697a71686c6335356f69726b736571716173713122747d3e3e"

    static let all: [(name: String, bytes: [UInt8], length: Int)] = [
        ("locator_A_two_servers_goblins", TestHex.decode(locatorTwoServers), 207),
        ("msg1_uds_register_A", TestHex.decode(register), 176),
        ("msg2_uds_server_response_goblins", TestHex.decode(serverResponse), 287),
        ("msg3_uds_signature_A_goblins", TestHex.decode(signature), 152),
        ("msg4_uds_new_connection_A_to_S", TestHex.decode(newConnection), 325),
    ]
}
