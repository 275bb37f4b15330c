import Identity
import SodiumCrypto

/// Wycheproof `EddsaVerify` files (`eddsa_verify_schema_v1.json`): `valid` signatures must
/// verify, `invalid` ones must be refused (wrong lengths by the wrapper's guard, before libsodium).
public enum WycheproofEdDSAVectors: WycheproofVectorKind {
    public static let name = "wycheproof-eddsa"
    public static let schema = "eddsa_verify_schema_v1.json"

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        eachTest(of: document, group: { _, group in
            guard let key = group["publicKey"] as? [String: Any] else { throw VectorDataError("missing publicKey") }
            return try key.hex("pk")
        }) { name, publicKey, test in
            let ok = Ed25519.verify(signature: try test.hex("sig"), message: try test.hex("msg"), publicKey: publicKey)
            switch try test.string("result") {
            case "valid": return ok ? .passed(name) : .failed(name, "valid signature refused")
            case "invalid": return ok ? .failed(name, "invalid signature accepted") : .passed(name)
            case "acceptable": return .passed(name)
            case let other: return .failed(name, "unknown result \(other)")
            }
        }
    }
}

/// Wycheproof `XdhComp` files for curve25519 (`xdh_comp_schema_v1.json`): `valid` cases must give
/// the shared secret; `acceptable` ones may instead be refused as `lowOrderPoint` when the shared
/// secret is all zero (libsodium refuses exactly those); `invalid` ones must be refused.
public enum WycheproofXDHVectors: WycheproofVectorKind {
    public static let name = "wycheproof-xdh"
    public static let schema = "xdh_comp_schema_v1.json"

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        eachTest(of: document, group: { _, group in group["curve"] as? String }) { name, curve, test in
            guard curve == "curve25519" else { return .skipped(name, "curve \(curve ?? "?") not supported") }
            return try checkOne(name, test)
        }
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
