import Foundation
import TestSupport
import Identity
import OCapN
import SodiumCrypto
import Syrup

/// The vector file `Vectors/ocapn-examples.json`, found relative to this source file.
enum Fixtures {
    static let path: String = {
        let here = URL(fileURLWithPath: #filePath)
        return here.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Vectors/ocapn-examples.json").path
    }()

    /// Parsed fresh on each call: `[String: Any]` is not Sendable, and the file is small.
    static func document() -> [String: Any] {
        guard let data = FileManager.default.contents(atPath: path),
              let doc = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            fatalError("cannot read \(path)")
        }
        return doc
    }

    static func section(_ name: String) -> [[String: Any]] {
        (document()[name] as? [[String: Any]]) ?? []
    }

    static func example(_ name: String) -> [String: Any] {
        guard let e = section("examples").first(where: { $0["name"] as? String == name }) else {
            fatalError("no example \(name)")
        }
        return e
    }

    static func exampleNames(ofType type: String) -> [String] {
        section("examples").filter { $0["type"] as? String == type }.compactMap { $0["name"] as? String }
    }

    static func rejectNames() -> [String] { section("rejects").compactMap { $0["name"] as? String } }

    static func reject(_ name: String) -> [String: Any] {
        section("rejects").first(where: { $0["name"] as? String == name })!
    }

    static func hex(_ text: String) -> [UInt8] { TestHex.decode(text) }

    static func hexString(_ bytes: [UInt8]) -> String { TestHex.encode(bytes) }

    /// The `hex` of an example.
    static func bytes(_ name: String) -> [UInt8] { hex(example(name)["hex"] as! String) }
    static func value(_ name: String) -> String { example(name)["value"] as! String }
    static func input(_ name: String) -> [UInt8] { hex((document()["inputs"] as! [String: Any])[name] as! String) }

    static func signer(_ seedInput: String) -> IdentityKeyPair {
        try! IdentityKeyPair(seed: SecretBytes(copying: input(seedInput)))
    }

    static var peerA: IdentityKeyPair { signer("peer_A_seed_hex") }
    static var peerB: IdentityKeyPair { signer("peer_B_seed_hex") }
    static var serverS: IdentityKeyPair { signer("server_S_seed_hex") }
    static var serverS2: IdentityKeyPair { signer("extra_server_S2_seed_hex") }
    static var clientChallenge: Challenge { try! Challenge(input("client_challenge_hex")) }
    static var serverChallenge: Challenge { try! Challenge(input("server_challenge_hex")) }

    static func decode(_ bytes: [UInt8]) -> SyrupValue { try! SyrupDecoder().decode(bytes) }

    /// Typed hints as the vector file writes them (`null` is hints `f`).
    static func typedHints(_ any: Any?) -> [PublicIdentity: HintValue]? {
        guard let any, !(any is NSNull) else { return nil }
        var out: [PublicIdentity: HintValue] = [:]
        for (k, v) in any as! [String: [String: Any]] {
            let key = try! PublicIdentity(designator: k)
            if let s = v["string"] as? String { out[key] = .string(s) }
            else if let b = v["bool"] as? Bool { out[key] = .bool(b) }
            else { out[key] = .integer(SyrupInteger(isNegative: false, magnitude: v["integer"] as! String)!) }
        }
        return out
    }

    /// URI hints (values are strings).
    static func plainHints(_ any: Any?) -> [PublicIdentity: HintValue]? {
        guard let any, !(any is NSNull) else { return nil }
        var out: [PublicIdentity: HintValue] = [:]
        for (k, v) in any as! [String: String] { out[try! PublicIdentity(designator: k)] = .string(v) }
        return out
    }
}
