internal import CSodium
import Errors
import Synchronization

/// libsodium initialisation; every entry point calls it, so callers never need to.
public enum Sodium {
    private static let initialized: Bool = {
        // sodium_init is thread-safe and idempotent; a negative result means no usable RNG.
        precondition(sodium_init() >= 0, "sodium_init failed: no usable random source")
        return true
    }()

    public static func initialize() { _ = initialized }

    /// The linked libsodium version string (e.g. "1.0.18").
    public static var versionString: String {
        initialize()
        return String(cString: sodium_version_string())
    }
}

/// Counts the secret-key derivations (`Ed25519.keyPair(seed:)`, `Ed25519.secretKeyToX25519`)
/// made by the current task, so tests can show a key is derived once, when an identity is made,
/// and never again per handshake or per signature. A task-local counter sees only its own
/// task's work, so parallel tests do not disturb it; unset (the default), it costs one load.
package final class SecretDerivationCounter: Sendable {
    @TaskLocal package static var current: SecretDerivationCounter?

    private let value = Mutex(0)

    package init() {}

    package var count: Int { value.withLock { $0 } }

    static func record() { current?.value.withLock { $0 += 1 } }
}

/// The stable codes of `CryptoError`.
public enum CryptoErrorCode: String, ErrorCode {
    case invalidLength
    case invalidPublicKey
    case lowOrderPoint
    case decryptFailed
    case keyDerivationFailed
}

/// Error from a cryptographic primitive. Carries no key material.
public typealias CryptoError = CodedError<CryptoErrorCode>

/// Random bytes from libsodium's CSPRNG.
public enum RandomBytes {
    public static func bytes(_ count: Int) -> [UInt8] {
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: count)
        if count > 0 { out.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, count) } }
        return out
    }

    /// Deterministic bytes from a 32-byte seed (`randombytes_buf_deterministic`), for test vectors.
    public static func deterministic(_ count: Int, seed: [UInt8]) -> [UInt8] {
        precondition(seed.count == Int(randombytes_SEEDBYTES), "deterministic seed must be 32 bytes")
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: count)
        if count > 0 {
            out.withUnsafeMutableBytes { o in
                seed.withUnsafeBytes { s in
                    randombytes_buf_deterministic(o.baseAddress!, count, s.bindMemory(to: UInt8.self).baseAddress!)
                }
            }
        }
        return out
    }
}

// libsodium marks most pointer parameters nonnull, yet an empty Swift buffer has no base address;
// a static byte stands in for it (length 0 means it is never read).
nonisolated(unsafe) private let emptyBytes = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)

@inline(__always)
func u8(_ b: UnsafeRawBufferPointer) -> UnsafePointer<UInt8> {
    b.baseAddress.map { $0.assumingMemoryBound(to: UInt8.self) } ?? UnsafePointer(emptyBytes)
}

@inline(__always)
func mu8(_ b: UnsafeMutableRawBufferPointer) -> UnsafeMutablePointer<UInt8> {
    b.baseAddress.map { $0.assumingMemoryBound(to: UInt8.self) } ?? emptyBytes
}

/// Pure Ed25519 (RFC 8032), libsodium's strict verification.
public enum Ed25519 {
    public static let publicKeyLength = 32
    public static let secretKeyLength = 64
    public static let seedLength = 32
    public static let signatureLength = 64

    /// Derives the key pair of a 32-byte seed. The secret key (seed ‖ public key) is guarded.
    package static func keyPair(seed: SecretBytes) throws -> (publicKey: [UInt8], secretKey: SecretBytes) {
        guard seed.count == seedLength else {
            throw CryptoError(.invalidLength, "Ed25519 seed must be \(seedLength) bytes, got \(seed.count)")
        }
        Sodium.initialize()
        SecretDerivationCounter.record()
        var pk = [UInt8](repeating: 0, count: publicKeyLength)
        let sk = SecretBytes(count: secretKeyLength, guarded: true)
        let rc = seed.withUnsafeBytes { s in
            sk.withUnsafeMutableBytes { k in
                pk.withUnsafeMutableBytes { p in
                    crypto_sign_seed_keypair(mu8(p), mu8(k), u8(s))
                }
            }
        }
        precondition(rc == 0, "crypto_sign_seed_keypair cannot fail")
        return (pk, sk)
    }

    /// A fresh random key pair.
    package static func generate() -> (publicKey: [UInt8], secretKey: SecretBytes, seed: SecretBytes) {
        let seed = SecretBytes.random(count: seedLength, guarded: true)
        let pair = try! keyPair(seed: seed)  // length is right by construction
        return (pair.publicKey, pair.secretKey, seed)
    }

    /// Detached signature over `message` (raw bytes, no prehash, no context).
    package static func sign(_ message: UnsafeRawBufferPointer, secretKey: SecretBytes) -> [UInt8] {
        precondition(secretKey.count == secretKeyLength, "Ed25519 secret key must be 64 bytes")
        var sig = [UInt8](repeating: 0, count: signatureLength)
        secretKey.withUnsafeBytes { k in
            sig.withUnsafeMutableBytes { s in
                _ = crypto_sign_detached(mu8(s), nil, u8(message), UInt64(message.count), u8(k))
            }
        }
        return sig
    }

    package static func sign(_ message: [UInt8], secretKey: SecretBytes) -> [UInt8] {
        message.withUnsafeBytes { sign($0, secretKey: secretKey) }
    }

    /// Strict verification. Wrong lengths are simply invalid (checked before the C call).
    public static func verify(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard signature.count == signatureLength, publicKey.count == publicKeyLength else { return false }
        Sodium.initialize()
        return signature.withUnsafeBytes { s in
            message.withUnsafeBytes { m in
                publicKey.withUnsafeBytes { p in
                    crypto_sign_verify_detached(u8(s), u8(m), UInt64(m.count), u8(p)) == 0
                }
            }
        }
    }

    /// Converts an identity public key to its X25519 form. libsodium refuses small-order,
    /// mixed-order and non-canonical keys here, which makes this the identity-key validator.
    public static func publicKeyToX25519(_ publicKey: [UInt8]) throws -> [UInt8] {
        guard publicKey.count == publicKeyLength else {
            throw CryptoError(.invalidLength, "Ed25519 public key must be 32 bytes, got \(publicKey.count)")
        }
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: X25519.keyLength)
        let rc = out.withUnsafeMutableBytes { o in
            publicKey.withUnsafeBytes { p in crypto_sign_ed25519_pk_to_curve25519(mu8(o), u8(p)) }
        }
        guard rc == 0 else {
            throw CryptoError(.invalidPublicKey, "Ed25519 public key is not a valid prime-order point")
        }
        return out
    }

    /// Converts an identity secret key to its X25519 scalar, in a slot of the guarded slab: a
    /// `sodium_malloc` of its own per identity would cost three more memory mappings each, and a
    /// process holding many identities (the 10,000-peer memory bench) ran out of them
    /// (`vm.max_map_count`).
    package static func secretKeyToX25519(_ secretKey: SecretBytes) -> SecretBytes {
        precondition(secretKey.count == secretKeyLength, "Ed25519 secret key must be 64 bytes")
        SecretDerivationCounter.record()
        let out = SecretBytes(count: X25519.keyLength)
        let rc = out.withUnsafeMutableBytes { o in
            secretKey.withUnsafeBytes { k in crypto_sign_ed25519_sk_to_curve25519(mu8(o), u8(k)) }
        }
        precondition(rc == 0, "crypto_sign_ed25519_sk_to_curve25519 cannot fail")
        return out
    }

    /// Whether the y coordinate is encoded canonically (y < p = 2^255 - 19). libsodium 1.0.18's
    /// conversion does not check this itself, and two encodings of one point would give one key
    /// two designators.
    public static func isCanonicalEncoding(_ publicKey: [UInt8]) -> Bool {
        guard publicKey.count == publicKeyLength else { return false }
        if publicKey[31] & 0x7f != 0x7f { return true }
        for i in 1...30 where publicKey[i] != 0xff { return true }
        return publicKey[0] < 0xed
    }

    /// Whether `publicKey` is an acceptable identity key: canonical, and accepted by
    /// `publicKeyToX25519` (prime-order subgroup, not small or mixed order).
    public static func isValidIdentityKey(_ publicKey: [UInt8]) -> Bool {
        isCanonicalEncoding(publicKey) && (try? publicKeyToX25519(publicKey)) != nil
    }
}

/// X25519 Diffie-Hellman.
public enum X25519 {
    public static let keyLength = 32

    /// Public key of a 32-byte private scalar.
    package static func publicKey(secret: SecretBytes) -> [UInt8] {
        precondition(secret.count == keyLength, "X25519 secret must be 32 bytes")
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: keyLength)
        let rc = out.withUnsafeMutableBytes { o in
            secret.withUnsafeBytes { s in crypto_scalarmult_curve25519_base(mu8(o), u8(s)) }
        }
        precondition(rc == 0, "crypto_scalarmult_base failed")
        return out
    }

    /// A fresh random key pair (an ephemeral).
    package static func generate() -> (publicKey: [UInt8], secret: SecretBytes) {
        let secret = SecretBytes.random(count: keyLength)
        return (publicKey(secret: secret), secret)
    }

    /// DH(secret, publicKey). Throws `lowOrderPoint` when libsodium refuses (all-zero output).
    package static func sharedSecret(secret: SecretBytes, publicKey: [UInt8]) throws -> SecretBytes {
        guard publicKey.count == keyLength else {
            throw CryptoError(.invalidLength, "X25519 public key must be 32 bytes, got \(publicKey.count)")
        }
        precondition(secret.count == keyLength, "X25519 secret must be 32 bytes")
        Sodium.initialize()
        let out = SecretBytes(count: keyLength)
        let rc = out.withUnsafeMutableBytes { o in
            secret.withUnsafeBytes { s in
                publicKey.withUnsafeBytes { p in crypto_scalarmult_curve25519(mu8(o), u8(s), u8(p)) }
            }
        }
        guard rc == 0 else { throw CryptoError(.lowOrderPoint, "X25519 produced an all-zero shared secret") }
        return out
    }

    /// Canonical encoding check: bit 255 clear and u < p = 2^255 - 19.
    public static func isCanonical(_ u: [UInt8]) -> Bool {
        guard u.count == keyLength else { return false }
        if u[31] & 0x80 != 0 { return false }
        // u >= p iff u[31] == 0x7f, u[1...30] all 0xff and u[0] >= 0xed.
        if u[31] != 0x7f { return true }
        for i in 1...30 where u[i] != 0xff { return true }
        return u[0] < 0xed
    }
}

/// libsodium's ChaCha20-Poly1305 (IETF): the same algorithm as `ChaChaPoly`, kept as the
/// benchmark's "raw AEAD" baseline (the one issue #9 measured the channel against) and as the
/// independent implementation that tests check BoringSSL's output against.
package enum SodiumChaChaPoly {
    /// Encrypts `plaintext` into `output` (plaintext.count + 16 bytes) under the Noise nonce `n`.
    package static func seal(
        key: SecretBytes, nonce n: UInt64, ad: UnsafeRawBufferPointer,
        plaintext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) {
        precondition(key.count == ChaChaPoly.keyLength, "ChaCha20-Poly1305 key must be 32 bytes")
        precondition(output.count >= plaintext.count + ChaChaPoly.tagLength, "output too small for ciphertext")
        Sodium.initialize()
        var clen: UInt64 = 0
        key.withUnsafeBytes { k in
            ChaChaPoly.withNonce(n) { np in
                _ = crypto_aead_chacha20poly1305_ietf_encrypt(
                    mu8(output), &clen, u8(plaintext), UInt64(plaintext.count),
                    u8(ad), UInt64(ad.count), nil, np, u8(k))
            }
        }
    }

    /// Decrypts and authenticates `ciphertext` into `output` (ciphertext.count - 16 bytes).
    package static func open(
        key: SecretBytes, nonce n: UInt64, ad: UnsafeRawBufferPointer,
        ciphertext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) throws {
        precondition(key.count == ChaChaPoly.keyLength, "ChaCha20-Poly1305 key must be 32 bytes")
        guard ciphertext.count >= ChaChaPoly.tagLength else {
            throw CryptoError(.invalidLength, "ciphertext shorter than the 16-byte tag")
        }
        precondition(output.count >= ciphertext.count - ChaChaPoly.tagLength, "output too small for plaintext")
        Sodium.initialize()
        var mlen: UInt64 = 0
        let rc = key.withUnsafeBytes { k in
            ChaChaPoly.withNonce(n) { np in
                crypto_aead_chacha20poly1305_ietf_decrypt(
                    mu8(output), &mlen, nil, u8(ciphertext), UInt64(ciphertext.count),
                    u8(ad), UInt64(ad.count), np, u8(k))
            }
        }
        guard rc == 0 else { throw CryptoError(.decryptFailed, "authentication tag mismatch") }
    }
}

/// XChaCha20-Poly1305 (IETF, 192-bit random nonce), used for encrypted key files.
public enum XChaChaPoly {
    public static let keyLength = 32
    public static let nonceLength = 24
    public static let tagLength = 16

    package static func seal(key: SecretBytes, nonce: [UInt8], ad: [UInt8], plaintext: SecretBytes) -> [UInt8] {
        precondition(key.count == keyLength && nonce.count == nonceLength, "XChaCha20-Poly1305 key/nonce size")
        var out = [UInt8](repeating: 0, count: plaintext.count + tagLength)
        var clen: UInt64 = 0
        key.withUnsafeBytes { k in
            plaintext.withUnsafeBytes { p in
                ad.withUnsafeBytes { a in
                    nonce.withUnsafeBytes { n in
                        out.withUnsafeMutableBytes { o in
                            _ = crypto_aead_xchacha20poly1305_ietf_encrypt(
                                mu8(o), &clen, u8(p), UInt64(p.count), u8(a), UInt64(a.count), nil, u8(n), u8(k))
                        }
                    }
                }
            }
        }
        return out
    }

    package static func open(key: SecretBytes, nonce: [UInt8], ad: [UInt8], ciphertext: [UInt8]) throws -> SecretBytes {
        precondition(key.count == keyLength, "XChaCha20-Poly1305 key size")
        guard nonce.count == nonceLength else { throw CryptoError(.invalidLength, "XChaCha20 nonce must be 24 bytes") }
        guard ciphertext.count >= tagLength else { throw CryptoError(.invalidLength, "ciphertext shorter than the tag") }
        let out = SecretBytes(count: ciphertext.count - tagLength, guarded: true)
        var mlen: UInt64 = 0
        let rc = key.withUnsafeBytes { k in
            ciphertext.withUnsafeBytes { c in
                ad.withUnsafeBytes { a in
                    nonce.withUnsafeBytes { n in
                        out.withUnsafeMutableBytes { o in
                            crypto_aead_xchacha20poly1305_ietf_decrypt(
                                mu8(o), &mlen, nil, u8(c), UInt64(c.count), u8(a), UInt64(a.count), u8(n), u8(k))
                        }
                    }
                }
            }
        }
        guard rc == 0 else { throw CryptoError(.decryptFailed, "authentication tag mismatch") }
        return out
    }
}

/// SHA-256.
public enum SHA256 {
    public static let outputLength = 32

    public static func hash(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: outputLength)
        out.withUnsafeMutableBytes { o in _ = crypto_hash_sha256(mu8(o), u8(data), UInt64(data.count)) }
        return out
    }

    public static func hash(_ data: [UInt8]) -> [UInt8] { data.withUnsafeBytes { hash($0) } }

    /// SHA-256 over the concatenation of `parts` without building it.
    public static func hash(parts: [[UInt8]]) -> [UInt8] {
        Sodium.initialize()
        var st = crypto_hash_sha256_state()
        crypto_hash_sha256_init(&st)
        for p in parts { p.withUnsafeBytes { _ = crypto_hash_sha256_update(&st, u8($0), UInt64($0.count)) } }
        var out = [UInt8](repeating: 0, count: outputLength)
        out.withUnsafeMutableBytes { _ = crypto_hash_sha256_final(&st, mu8($0)) }
        return out
    }
}

/// HMAC-SHA-256 with a key of any length (libsodium hashes keys over 64 bytes, per RFC 2104).
public enum HMACSHA256 {
    public static let outputLength = 32

    /// MAC of the concatenation of `parts` under `key`; the result is secret (it keys Noise's HKDF).
    package static func mac(key: SecretBytes, parts: [UnsafeRawBufferPointer]) -> SecretBytes {
        Sodium.initialize()
        var st = crypto_auth_hmacsha256_state()
        key.withUnsafeBytes { k in _ = crypto_auth_hmacsha256_init(&st, u8(k), k.count) }
        for p in parts { _ = crypto_auth_hmacsha256_update(&st, u8(p), UInt64(p.count)) }
        let out = SecretBytes(count: outputLength)
        out.withUnsafeMutableBytes { o in _ = crypto_auth_hmacsha256_final(&st, mu8(o)) }
        withUnsafeMutableBytes(of: &st) { sodium_memzero($0.baseAddress!, $0.count) }
        return out
    }
}

/// BLAKE2b (libsodium generichash): 16 to 64 output bytes, optional key.
public enum BLAKE2b {
    public static func hash(_ data: [UInt8], outputLength: Int = 32, key: [UInt8] = []) -> [UInt8] {
        let h = Hasher(outputLength: outputLength, key: key)
        h.update(data)
        return h.finalize()
    }

    /// Incremental BLAKE2b. libsodium's state is a 64-byte-aligned struct that Swift sees as
    /// opaque, so it lives in aligned heap memory owned by this object.
    public final class Hasher {
        private let state: OpaquePointer
        private let raw: UnsafeMutableRawPointer
        private let stateSize: Int
        private let outputLength: Int
        private var finished = false

        public init(outputLength: Int = 32, key: [UInt8] = []) {
            precondition((16...64).contains(outputLength), "BLAKE2b output must be 16...64 bytes")
            precondition(key.count <= 64, "BLAKE2b key must be at most 64 bytes")
            Sodium.initialize()
            self.outputLength = outputLength
            stateSize = crypto_generichash_statebytes()
            raw = UnsafeMutableRawPointer.allocate(byteCount: stateSize, alignment: 64)
            state = OpaquePointer(raw)
            key.withUnsafeBytes { k in
                _ = crypto_generichash_init(state, key.isEmpty ? nil : u8(k), key.count, outputLength)
            }
        }

        deinit {
            sodium_memzero(raw, stateSize)
            raw.deallocate()
        }

        public func update(_ data: [UInt8]) {
            data.withUnsafeBytes { update($0) }
        }

        public func update(_ data: UnsafeRawBufferPointer) {
            precondition(!finished, "BLAKE2b hasher used after finalize")
            _ = crypto_generichash_update(state, u8(data), UInt64(data.count))
        }

        public func finalize() -> [UInt8] {
            precondition(!finished, "BLAKE2b hasher finalized twice")
            finished = true
            var out = [UInt8](repeating: 0, count: outputLength)
            out.withUnsafeMutableBytes { o in _ = crypto_generichash_final(state, mu8(o), outputLength) }
            return out
        }
    }
}

/// Argon2id password hashing (`crypto_pwhash`), for passphrase-protected key files.
public enum Argon2id {
    public static let saltLength = Int(crypto_pwhash_SALTBYTES)
    public static var opsLimitModerate: UInt64 { UInt64(crypto_pwhash_OPSLIMIT_MODERATE) }
    public static var memLimitModerate: Int { Int(crypto_pwhash_MEMLIMIT_MODERATE) }
    public static var opsLimitInteractive: UInt64 { UInt64(crypto_pwhash_OPSLIMIT_INTERACTIVE) }
    public static var memLimitInteractive: Int { Int(crypto_pwhash_MEMLIMIT_INTERACTIVE) }
    public static var opsLimitMin: UInt64 { UInt64(crypto_pwhash_OPSLIMIT_MIN) }
    public static var memLimitMin: Int { Int(crypto_pwhash_MEMLIMIT_MIN) }
    public static var opsLimitMax: UInt64 { UInt64(crypto_pwhash_OPSLIMIT_MAX) }
    /// A cap well under the library maximum so a hostile key file cannot demand terabytes.
    public static let memLimitCap = 4 << 30

    package static func deriveKey(
        length: Int, passphrase: SecretBytes, salt: [UInt8], opsLimit: UInt64, memLimit: Int
    ) throws -> SecretBytes {
        guard salt.count == saltLength else {
            throw CryptoError(.invalidLength, "Argon2id salt must be \(saltLength) bytes, got \(salt.count)")
        }
        guard opsLimit >= opsLimitMin, opsLimit <= opsLimitMax, memLimit >= memLimitMin, memLimit <= memLimitCap else {
            throw CryptoError(.keyDerivationFailed, "Argon2id parameters out of range (ops \(opsLimit), mem \(memLimit))")
        }
        Sodium.initialize()
        let out = SecretBytes(count: length, guarded: true)
        let rc = out.withUnsafeMutableBytes { o in
            passphrase.withUnsafeBytes { p in
                salt.withUnsafeBytes { s in
                    crypto_pwhash(
                        mu8(o), UInt64(length), UnsafeRawPointer(u8(p)).assumingMemoryBound(to: CChar.self), UInt64(p.count),
                        u8(s), opsLimit, memLimit, crypto_pwhash_ALG_ARGON2ID13)
                }
            }
        }
        guard rc == 0 else { throw CryptoError(.keyDerivationFailed, "Argon2id failed (out of memory?)") }
        return out
    }
}
