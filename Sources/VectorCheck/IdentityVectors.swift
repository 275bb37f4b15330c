import Identity
import OCapN
import SodiumCrypto
import Syrup

/// `ocapn-uds/identity/v1` files (format: `Vectors/identity.md`). Each case is one of:
/// a seed with its public key, designator, fingerprint and optional signature; a designator or
/// public key with the `error` code it must be refused with; or a key file text that must load
/// (to `seed`/`public_key`, and re-encode byte for byte given `random`) or fail with `error`.
/// Unknown fields are ignored, so later layers can add theirs (locator URI, Syrup forms).
public enum IdentityVectors: FormatVectorKind {
    public static let name = "identity"
    public static let format = "ocapn-uds/identity/v1"

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        VectorRunner.eachCase(of: document) { name, c in
            if c["keyfile"] != nil { return try checkKeyFile(name, c) }
            if c["seed"] != nil { return try checkSeed(name, c) }
            if c["error"] != nil { return try checkRejection(name, c) }
            return .failed(name, "case has none of seed, keyfile, error")
        }
    }

    static func checkSeed(_ name: String, _ c: [String: Any]) throws -> VectorCaseResult {
        let pair = try IdentityKeyPair(seed: SecretBytes(copying: try c.hex("seed")))
        let id = pair.publicIdentity
        if Hex.encode(id.publicKey) != (try c.string("public_key")) { return .failed(name, "public key: got \(Hex.encode(id.publicKey))") }
        if id.designator != (try c.string("designator")) { return .failed(name, "designator: got \(id.designator)") }
        if id.fingerprint != (try c.string("fingerprint")) { return .failed(name, "fingerprint: got \(id.fingerprint)") }
        if try PublicIdentity(designator: try c.string("designator")) != id { return .failed(name, "designator does not parse back") }
        // The OCapN forms of the identity, when the case gives them.
        let locator = PeerLocator(identity: id)
        if let uri = c["locator_uri"] as? String {
            if locator.uri != uri { return .failed(name, "locator URI: got \(locator.uri)") }
            if (try? PeerLocator(uri: uri))?.identity != id { return .failed(name, "locator URI does not parse back") }
        }
        if c["locator_syrup"] != nil {
            let bytes = SyrupEncoder.encode(locator.syrupValue)
            if Hex.encode(bytes) != (try c.string("locator_syrup")) { return .failed(name, "locator Syrup: got \(Hex.encode(bytes))") }
        }
        if c["captp_public_key"] != nil {
            let bytes = SyrupEncoder.encode(id.captpPublicKey)
            if Hex.encode(bytes) != (try c.string("captp_public_key")) { return .failed(name, "CapTP public key: got \(Hex.encode(bytes))") }
        }
        if c["signature"] != nil {
            let message = try c.hex("message")
            // A key pair signs only typed messages, so the RFC 8032 cases (any length) check the
            // primitive it signs with, keyed from the same seed; a 64-byte message is also
            // signed through the key pair, as a registration challenge.
            let signature = Ed25519.sign(message, secretKey: try Ed25519.keyPair(seed: SecretBytes(copying: try c.hex("seed"))).secretKey)
            if message.count == Challenge.length, pair.sign(try Challenge(message)).bytes != signature {
                return .failed(name, "the key pair's challenge signature differs from the primitive's")
            }
            if Hex.encode(signature) != (try c.string("signature")) { return .failed(name, "signature: got \(Hex.encode(signature))") }
            if !id.verify(signature: signature, message: message) { return .failed(name, "own signature does not verify") }
        }
        return .passed(name)
    }

    static func checkRejection(_ name: String, _ c: [String: Any]) throws -> VectorCaseResult {
        let expected = try c.string("error")
        do {
            if let designator = c["designator"] as? String {
                _ = try PublicIdentity(designator: designator)
            } else {
                _ = try PublicIdentity(publicKey: try c.hex("public_key"))
            }
            return .failed(name, "accepted; expected \(expected)")
        } catch let error as IdentityError {
            return .expect(name, error.code.rawValue, expected, "error code")
        }
    }

    static func checkKeyFile(_ name: String, _ c: [String: Any]) throws -> VectorCaseResult {
        let text = Array(try c.string("keyfile").utf8)
        let passphrase = (c["passphrase"] as? String).map { SecretBytes(copying: Array($0.utf8), guarded: true) }
        if let expected = c["error"] as? String {
            do {
                _ = try IdentityKeyFile.decode(text, passphrase: passphrase)
                return .failed(name, "loaded; expected \(expected)")
            } catch {
                return .expect(name, error.code.rawValue, expected, "error code")
            }
        }
        guard c["seed"] != nil else {
            let id = try IdentityKeyFile.decodePublic(text)
            if Hex.encode(id.publicKey) != (try c.string("public_key")) { return .failed(name, "public key: got \(Hex.encode(id.publicKey))") }
            if IdentityKeyFile.encodePublic(id) != text { return .failed(name, "re-encoding differs") }
            return .passed(name)
        }
        let pair = try IdentityKeyPair(seed: SecretBytes(copying: try c.hex("seed")))
        let loaded = try IdentityKeyFile.decode(text, passphrase: passphrase)
        if !loaded.hasSameSecret(as: pair) { return .failed(name, "loaded a different key") }
        var random = c["random"] == nil ? [] : try c.hex("random")
        let protection: KeyFileProtection
        if let passphrase {
            protection = .passphrase(passphrase, try kdfParameters(text))
        } else {
            protection = .none
        }
        var exhausted = false
        let encoded = try IdentityKeyFile.encode(pair, protection: protection) { n in
            guard random.count >= n else {
                exhausted = true
                return [UInt8](repeating: 0, count: n)
            }
            defer { random.removeFirst(n) }
            return Array(random.prefix(n))
        }
        if exhausted || !random.isEmpty { return .failed(name, "\"random\" does not hold exactly the salt and nonce") }
        if encoded.withUnsafeBytes({ Array($0) }) != text { return .failed(name, "re-encoding with the recorded randomness differs") }
        return .passed(name)
    }

    /// The KDF cost a key file text records (needed to re-encode it).
    static func kdfParameters(_ text: [UInt8]) throws -> KDFParameters {
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n")
        func value(_ key: String) throws -> UInt64 {
            guard let line = lines.first(where: { $0.hasPrefix("\(key): ") }), let v = UInt64(line.dropFirst(key.count + 2)) else {
                throw VectorDataError("key file has no \(key) line")
            }
            return v
        }
        return KDFParameters(opsLimit: try value("kdf-opslimit"), memLimit: Int(try value("kdf-memlimit")))
    }
}
