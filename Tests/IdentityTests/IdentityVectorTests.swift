import Testing
import SodiumCrypto
@testable import Identity

/// `Vectors/identity.json`, checked through the public API (the CLI's `vectors verify` runs the
/// same file through VectorCheck).
@Suite struct IdentityVectorTests {
    @Test func everyKnownSeedDerivesItsPublicKeyDesignatorAndFingerprint() throws {
        let cases = try Repo.identityCases().filter { $0["seed"] != nil && $0["keyfile"] == nil }
        #expect(cases.count >= 7)
        for c in cases {
            let name = c["name"] as? String ?? "?"
            let pair = try IdentityKeyPair(seed: SecretBytes(copying: try unhex(c["seed"] as! String)))
            #expect(hexString(pair.publicKey) == c["public_key"] as? String, "\(name)")
            #expect(pair.publicIdentity.designator == c["designator"] as? String, "\(name)")
            #expect(pair.publicIdentity.fingerprint == c["fingerprint"] as? String, "\(name)")
            #expect(try PublicIdentity(designator: c["designator"] as! String) == pair.publicIdentity, "\(name)")
        }
    }

    @Test func rfc8032Tests1To3And1024SignDeterministicallyToTheExactSignature() throws {
        let names = ["rfc8032-test-1", "rfc8032-test-2", "rfc8032-test-3", "rfc8032-test-1024"]
        let cases = try Repo.identityCases().filter { names.contains($0["name"] as? String ?? "") }
        #expect(cases.count == 4)
        for c in cases {
            let pair = try IdentityKeyPair(seed: SecretBytes(copying: try unhex(c["seed"] as! String)))
            let message = try unhex(c["message"] as! String)
            let expected = c["signature"] as! String
            // The key pair signs only its purposes' messages; the RFC cases check the key it holds.
            #expect(hexString(Ed25519.sign(message, secretKey: pair.secretKey)) == expected, "\(c["name"]!)")
            // Deterministic: the same bytes again, through the borrowed-buffer entry point too.
            #expect(hexString(message.withUnsafeBytes { Ed25519.sign($0, secretKey: pair.secretKey) }) == expected)
            #expect(pair.publicIdentity.verify(signature: try unhex(expected), message: message))
            var flipped = try unhex(expected)
            flipped[0] ^= 1
            #expect(!pair.publicIdentity.verify(signature: flipped, message: message))
        }
        #expect(try unhex(cases.first { $0["name"] as? String == "rfc8032-test-1024" }!["message"] as! String).count == 1023)
    }

    @Test func mustRejectDesignatorsAndKeysFailWithTheirErrorCode() throws {
        let cases = try Repo.identityCases().filter { $0["error"] != nil && $0["keyfile"] == nil }
        #expect(cases.count >= 10)
        for c in cases {
            let expected = c["error"] as! String
            let thrown: IdentityError?
            if let designator = c["designator"] as? String {
                thrown = #expect(throws: IdentityError.self) { try PublicIdentity(designator: designator) }
            } else {
                let key = try unhex(c["public_key"] as! String)
                thrown = #expect(throws: IdentityError.self) { try PublicIdentity(publicKey: key) }
            }
            #expect(thrown?.code.rawValue == expected, "\(c["name"]!)")
        }
    }

    @Test func keyFileTextsLoadToTheirKeyAndEncodeToTheSameBytes() throws {
        let cases = try Repo.identityCases().filter { $0["keyfile"] != nil && $0["error"] == nil }
        #expect(cases.count == 3)
        for c in cases {
            let text = Array((c["keyfile"] as! String).utf8)
            if let seedHex = c["seed"] as? String {
                let pair = try IdentityKeyPair(seed: SecretBytes(copying: try unhex(seedHex)))
                let passphrase = (c["passphrase"] as? String).map(secret)
                let loaded = try IdentityKeyFile.decode(text, passphrase: passphrase)
                #expect(loaded.hasSameSecret(as: pair), "\(c["name"]!)")
                #expect(loaded.publicIdentity == pair.publicIdentity)
                // Encoding with the recorded randomness reproduces the file byte for byte.
                let protection: KeyFileProtection
                var random = try unhex(c["random"] as? String ?? "")
                if let passphrase {
                    protection = .passphrase(passphrase, try kdf(ofFile: c["keyfile"] as! String))
                } else {
                    protection = .none
                }
                let encoded = try IdentityKeyFile.encode(pair, protection: protection) { n in
                    defer { random.removeFirst(n) }
                    return Array(random.prefix(n))
                }
                #expect(encoded.withUnsafeBytes { Array($0) } == text, "\(c["name"]!)")
                #expect(random.isEmpty)
            } else {
                let identity = try IdentityKeyFile.decodePublic(text)
                #expect(hexString(identity.publicKey) == c["public_key"] as? String)
                #expect(IdentityKeyFile.encodePublic(identity) == text)
            }
        }
    }

    @Test func mustRejectKeyFileTextsFailWithTheirErrorCode() throws {
        let cases = try Repo.identityCases().filter { $0["keyfile"] != nil && $0["error"] != nil }
        #expect(cases.count >= 15)
        for c in cases {
            let text = Array((c["keyfile"] as! String).utf8)
            let passphrase = (c["passphrase"] as? String).map(secret)
            let thrown = #expect(throws: IdentityError.self) { try IdentityKeyFile.decode(text, passphrase: passphrase) }
            #expect(thrown?.code.rawValue == c["error"] as? String, "\(c["name"]!): \(thrown.map(String.init(describing:)) ?? "no error")")
        }
    }

    private func kdf(ofFile text: String) throws -> KDFParameters {
        func value(_ key: String) throws -> UInt64 {
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("\(key): ") }),
                  let v = UInt64(line.dropFirst(key.count + 2)) else { throw TestDataError("no \(key) line") }
            return v
        }
        return KDFParameters(opsLimit: try value("kdf-opslimit"), memLimit: Int(try value("kdf-memlimit")))
    }
}
