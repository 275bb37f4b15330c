internal import CCryptoBoringSSL
internal import CSodium
import Errors

/// ChaCha20-Poly1305 (IETF, RFC 8439, 96-bit nonce) as Noise uses it: nonce = 4 zero bytes ‖
/// LE64(n).
///
/// The one primitive not taken from libsodium: BoringSSL's, as swift-crypto builds it, whose
/// x86-64 assembly computes the key stream and the MAC in one pass. On these machines it seals
/// and opens a 64 KiB frame about 1.7× as fast as libsodium 1.0.18's AEAD and a 1 KiB frame
/// about 1.3× (docs/BENCHMARKS.md, "BoringSSL's ChaCha20-Poly1305"); the bytes are the same,
/// which `ChaChaPolyImplementationTests` checks against libsodium on every length up to two
/// fragments. The key is copied into a context on the stack for the length of one call and
/// wiped when it returns; between calls it lives only in its `SecretBytes`.
public enum ChaChaPoly {
    public static let keyLength = 32
    public static let tagLength = 16
    static let nonceLength = 12

    /// Lends the 12-byte Noise nonce (4 zero bytes, then the counter little-endian) from the stack.
    @inline(__always)
    static func withNonce<R>(_ n: UInt64, _ body: (UnsafePointer<UInt8>) -> R) -> R {
        var nonce: (UInt32, UInt32, UInt32) = (0, UInt32(truncatingIfNeeded: n).littleEndian, UInt32(truncatingIfNeeded: n >> 32).littleEndian)
        return withUnsafeBytes(of: &nonce) { body($0.bindMemory(to: UInt8.self).baseAddress!) }
    }

    /// Runs `body` with an AEAD context keyed by `key`, wiped afterwards.
    @inline(__always)
    private static func withContext<R>(_ key: SecretBytes, _ body: (UnsafePointer<EVP_AEAD_CTX>) -> R) -> R {
        precondition(key.count == keyLength, "ChaCha20-Poly1305 key must be 32 bytes")
        return withUnsafeTemporaryAllocation(of: EVP_AEAD_CTX.self, capacity: 1) { slot in
            let context = slot.baseAddress!
            let keyed = key.withUnsafeBytes { k in
                CCryptoBoringSSL_EVP_AEAD_CTX_init(
                    context, CCryptoBoringSSL_EVP_aead_chacha20_poly1305(), u8(k), keyLength, tagLength, nil)
            }
            // Only a wrong key or tag length fails, both constants here.
            precondition(keyed == 1, "EVP_AEAD_CTX_init refused a 32-byte ChaCha20-Poly1305 key")
            defer {
                CCryptoBoringSSL_EVP_AEAD_CTX_cleanup(context)
                sodium_memzero(context, MemoryLayout<EVP_AEAD_CTX>.size)
            }
            return body(context)
        }
    }

    /// Encrypts `plaintext` into `output` (which must hold plaintext.count + 16 bytes). The two
    /// may be the same bytes (in-place encryption: `output` starts where `plaintext` does);
    /// they must not overlap otherwise.
    package static func seal(
        key: SecretBytes, nonce n: UInt64, ad: UnsafeRawBufferPointer,
        plaintext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) {
        precondition(output.count >= plaintext.count + tagLength, "output too small for ciphertext")
        let sealed = withContext(key) { context in
            withNonce(n) { np in
                var written = 0
                let ok = CCryptoBoringSSL_EVP_AEAD_CTX_seal(
                    context, mu8(output), &written, output.count, np, nonceLength,
                    u8(plaintext), plaintext.count, u8(ad), ad.count)
                return ok == 1 && written == plaintext.count + tagLength
            }
        }
        // Fails only on lengths this function already checked (or > 2^38 bytes of plaintext).
        precondition(sealed, "EVP_AEAD_CTX_seal failed")
    }

    /// Seals under a key given as bytes: for published vector keys only (the fuzz package, a
    /// separate package, replays the handshake vector's K_IR with it).
    @_spi(TestVectors) public static func seal(vectorKey: [UInt8], nonce n: UInt64, ad: [UInt8], plaintext: [UInt8]) -> [UInt8] {
        seal(key: SecretBytes(copying: vectorKey), nonce: n, ad: ad, plaintext: plaintext)
    }

    package static func seal(key: SecretBytes, nonce n: UInt64, ad: [UInt8], plaintext: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plaintext.count + tagLength)
        ad.withUnsafeBytes { a in
            plaintext.withUnsafeBytes { p in
                out.withUnsafeMutableBytes { o in seal(key: key, nonce: n, ad: a, plaintext: p, into: o) }
            }
        }
        return out
    }

    /// Decrypts and authenticates `ciphertext` into `output` (ciphertext.count - 16 bytes),
    /// in place when `output` starts where `ciphertext` does. On a bad tag it throws
    /// `decryptFailed` and `output` holds zeros, never unauthenticated plaintext.
    package static func open(
        key: SecretBytes, nonce n: UInt64, ad: UnsafeRawBufferPointer,
        ciphertext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) throws {
        guard ciphertext.count >= tagLength else {
            throw CryptoError(.invalidLength, "ciphertext shorter than the 16-byte tag")
        }
        precondition(output.count >= ciphertext.count - tagLength, "output too small for plaintext")
        let authentic = withContext(key) { context in
            withNonce(n) { np in
                var written = 0
                return CCryptoBoringSSL_EVP_AEAD_CTX_open(
                    context, mu8(output), &written, output.count, np, nonceLength,
                    u8(ciphertext), ciphertext.count, u8(ad), ad.count) == 1
            }
        }
        guard authentic else {
            // The failure left an entry on this thread's BoringSSL error queue; nothing reads it.
            CCryptoBoringSSL_ERR_clear_error()
            throw CryptoError(.decryptFailed, "authentication tag mismatch")
        }
    }

    package static func open(key: SecretBytes, nonce n: UInt64, ad: [UInt8], ciphertext: [UInt8]) throws -> [UInt8] {
        guard ciphertext.count >= tagLength else {
            throw CryptoError(.invalidLength, "ciphertext shorter than the 16-byte tag")
        }
        var out = [UInt8](repeating: 0, count: ciphertext.count - tagLength)
        try ad.withUnsafeBytes { a in
            try ciphertext.withUnsafeBytes { c in
                try out.withUnsafeMutableBytes { o in try open(key: key, nonce: n, ad: a, ciphertext: c, into: o) }
            }
        }
        return out
    }
}
