import Foundation
import Identity
import SodiumCrypto

/// Repository paths, found from this file so tests never read outside the checkout.
enum Repo {
    static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func json(_ relative: String) throws -> [String: Any] {
        let data = try Data(contentsOf: root.appendingPathComponent(relative))
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TestDataError("\(relative) is not a JSON object")
        }
        return object
    }

    /// The cases of `Vectors/identity.json`.
    static func identityCases() throws -> [[String: Any]] {
        let doc = try json("Vectors/identity.json")
        guard doc["format"] as? String == "ocapn-uds/identity/v1", let cases = doc["cases"] as? [[String: Any]] else {
            throw TestDataError("Vectors/identity.json: wrong format or no cases")
        }
        return cases
    }
}

struct TestDataError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

func unhex(_ s: String) throws -> [UInt8] {
    guard let bytes = Hex.decode(s, allowUppercase: true) else { throw TestDataError("bad hex \(s)") }
    return bytes
}

func hexString(_ bytes: [UInt8]) -> String { Hex.encode(bytes) }

/// A fresh private directory, removed with everything in it when `body` returns.
func withTemporaryDirectory<R>(_ body: (String) throws -> R) throws -> R {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("identity-tests-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

func fileMode(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
}

func setMode(_ path: String, _ mode: Int) throws {
    try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: path)
}

func writeFile(_ path: String, _ bytes: [UInt8], mode: Int = 0o600) throws {
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes), attributes: [.posixPermissions: mode]) else {
        throw TestDataError("cannot create \(path)")
    }
    try setMode(path, mode)
}

func readFile(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

func secret(_ text: String) -> SecretBytes { SecretBytes(copying: Array(text.utf8), guarded: true) }
