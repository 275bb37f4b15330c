import Identity
import SodiumCrypto

/// Wycheproof `EddsaVerify` files (`eddsa_verify_schema_v1.json`): `valid` signatures must
/// verify, `invalid` ones must be refused (wrong lengths by the wrapper's guard, before libsodium).
public enum WycheproofEdDSAVectors: VectorKind {
    public static let name = "wycheproof-eddsa"

    public static func recognizes(_ document: [String: Any]) -> Bool {
        document["schema"] as? String == "eddsa_verify_schema_v1.json"
    }

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        guard let groups = try? document.objects("testGroups") else { return [.failed("testGroups", "missing")] }
        var results: [VectorCaseResult] = []
        for (g, group) in groups.enumerated() {
            let publicKey: [UInt8]
            do {
                guard let key = group["publicKey"] as? [String: Any] else { throw VectorDataError("missing publicKey") }
                publicKey = try key.hex("pk")
            } catch {
                results.append(.failed("group \(g)", "bad vector data: \(error)"))
                continue
            }
            for test in (group["tests"] as? [[String: Any]]) ?? [] {
                let name = "tcId \(test["tcId"] ?? "?")"
                do {
                    let ok = Ed25519.verify(signature: try test.hex("sig"), message: try test.hex("msg"), publicKey: publicKey)
                    switch try test.string("result") {
                    case "valid": results.append(ok ? .passed(name) : .failed(name, "valid signature refused"))
                    case "invalid": results.append(ok ? .failed(name, "invalid signature accepted") : .passed(name))
                    case "acceptable": results.append(.passed(name))
                    case let other: results.append(.failed(name, "unknown result \(other)"))
                    }
                } catch {
                    results.append(.failed(name, "bad vector data: \(error)"))
                }
            }
        }
        return results
    }
}

/// Wycheproof `XdhComp` files for curve25519 (`xdh_comp_schema_v1.json`): `valid` cases must give
/// the shared secret; `acceptable` ones may instead be refused as `lowOrderPoint` when the shared
/// secret is all zero (libsodium refuses exactly those); `invalid` ones must be refused.
public enum WycheproofXDHVectors: VectorKind {
    public static let name = "wycheproof-xdh"

    public static func recognizes(_ document: [String: Any]) -> Bool {
        document["schema"] as? String == "xdh_comp_schema_v1.json"
    }

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        guard let groups = try? document.objects("testGroups") else { return [.failed("testGroups", "missing")] }
        var results: [VectorCaseResult] = []
        for group in groups {
            let curve = group["curve"] as? String
            for test in (group["tests"] as? [[String: Any]]) ?? [] {
                let name = "tcId \(test["tcId"] ?? "?")"
                guard curve == "curve25519" else {
                    results.append(.skipped(name, "curve \(curve ?? "?") not supported"))
                    continue
                }
                do {
                    results.append(try checkOne(name, test))
                } catch {
                    results.append(.failed(name, "bad vector data: \(error)"))
                }
            }
        }
        return results
    }

    static func checkOne(_ name: String, _ test: [String: Any]) throws -> VectorCaseResult {
        let privateKey = try test.hex("private")
        let expected = try test.string("shared").lowercased()
        let result = try test.string("result")
        let zero = String(repeating: "0", count: 2 * X25519.keyLength)
        // The wrapper traps on a wrong-length private key (our own bug there); data can't trigger it.
        let computed: Result<String, CryptoError>
        if privateKey.count != X25519.keyLength {
            computed = .failure(CryptoError(.invalidLength, "private key of \(privateKey.count) bytes"))
        } else {
            do {
                let shared = try X25519.sharedSecret(secret: SecretBytes(copying: privateKey), publicKey: try test.hex("public"))
                computed = .success(shared.withUnsafeBytes { Hex.encode(Array($0)) })
            } catch let error as CryptoError {
                computed = .failure(error)
            }
        }
        switch (result, computed) {
        case let ("valid", .success(got)), let ("acceptable", .success(got)):
            return got == expected ? .passed(name) : .failed(name, "shared secret \(got), expected \(expected)")
        case let ("acceptable", .failure(error)):
            return error.code == .lowOrderPoint && expected == zero ? .passed(name) : .failed(name, "refused (\(error.code)) a case with a non-zero shared secret")
        case let ("valid", .failure(error)):
            return .failed(name, "valid case refused: \(error.code)")
        case ("invalid", .success):
            return .failed(name, "invalid case accepted")
        case ("invalid", .failure):
            return .passed(name)
        default:
            return .failed(name, "unknown result \(result)")
        }
    }
}
