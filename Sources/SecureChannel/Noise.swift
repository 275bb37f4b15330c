import SodiumCrypto

// The Noise Protocol Framework (revision 34) objects UDS-HS1 is built from, for the one suite
// it uses: 25519, ChaChaPoly, SHA256. `NoiseKKHandshake` runs the plain KK pattern so the
// community test vectors can check this code; UDS-HS1 (Handshake.swift) drives the same
// `NoiseSymmetricState` token by token because it interleaves its own checks (PROTOCOL.md §5).

/// Noise §5.1 CipherState for ChaChaPoly: a key (absent until the first MixKey) and a counter.
public struct NoiseCipherState {
    // SecretBytes is never mutated after creation here, so copying the struct copies a
    // snapshot: that is what lets the handshake check into a local copy and commit once.
    private(set) var key: SecretBytes?
    /// The next nonce. 2^64−1 is reserved (Noise §5.1) and never used.
    public private(set) var nonce: UInt64

    init(key: SecretBytes?, nonce: UInt64 = 0) {
        precondition(key == nil || key!.count == ChaChaPoly.keyLength, "cipher key must be 32 bytes")
        self.key = key
        self.nonce = nonce
    }

    var hasKey: Bool { key != nil }

    /// ENCRYPT(k, n++, ad, plaintext), or the plaintext itself before any key exists.
    public mutating func encrypt(ad: [UInt8], plaintext: [UInt8]) throws(HandshakeError) -> [UInt8] {
        guard let key else { return plaintext }
        guard nonce < UInt64.max else { throw HandshakeError.make(.nonceExhausted, "cipher nonce reached 2^64-1") }
        let out = ChaChaPoly.seal(key: key, nonce: nonce, ad: ad, plaintext: plaintext)
        nonce += 1
        return out
    }

    /// DECRYPT(k, n++, ad, ciphertext). A failure leaves the nonce unchanged.
    public mutating func decrypt(ad: [UInt8], ciphertext: [UInt8]) throws(HandshakeError) -> [UInt8] {
        guard let key else { return ciphertext }
        guard nonce < UInt64.max else { throw HandshakeError.make(.nonceExhausted, "cipher nonce reached 2^64-1") }
        let out: [UInt8]
        do {
            out = try ChaChaPoly.open(key: key, nonce: nonce, ad: ad, ciphertext: ciphertext)
        } catch {
            throw HandshakeError.make(.decryptFailed, "AEAD authentication failed (\(ciphertext.count) bytes)")
        }
        nonce += 1
        return out
    }

    /// Test hook for nonce-exhaustion paths (Noise §5.1 SetNonce).
    mutating func setNonce(_ n: UInt64) { nonce = n }
}

/// Noise §5.2 SymmetricState with SHA-256 and HKDF over HMAC-SHA-256.
struct NoiseSymmetricState {
    static let hashLength = SHA256.outputLength

    private(set) var chainingKey: SecretBytes
    /// The handshake hash `h`: a transcript digest of public values, not a secret.
    private(set) var h: [UInt8]
    private(set) var cipher: NoiseCipherState

    init(protocolName: [UInt8]) {
        if protocolName.count <= Self.hashLength {
            h = protocolName + [UInt8](repeating: 0, count: Self.hashLength - protocolName.count)
        } else {
            h = SHA256.hash(protocolName)
        }
        chainingKey = SecretBytes(copying: h)
        cipher = NoiseCipherState(key: nil)
    }

    mutating func mixHash(_ data: [UInt8]) {
        h = SHA256.hash(parts: [h, data])
    }

    mutating func mixKey(_ inputKeyMaterial: SecretBytes) {
        let (ck, k) = Self.hkdf2(chainingKey: chainingKey, inputKeyMaterial: inputKeyMaterial)
        chainingKey = ck
        cipher = NoiseCipherState(key: k)
    }

    mutating func encryptAndHash(_ plaintext: [UInt8]) throws(HandshakeError) -> [UInt8] {
        let c = try cipher.encrypt(ad: h, plaintext: plaintext)
        mixHash(c)
        return c
    }

    mutating func decryptAndHash(_ ciphertext: [UInt8]) throws(HandshakeError) -> [UInt8] {
        let p = try cipher.decrypt(ad: h, ciphertext: ciphertext)
        mixHash(ciphertext)
        return p
    }

    /// Split(): the two transport keys, initiator→responder first.
    func split() -> (SecretBytes, SecretBytes) {
        Self.hkdf2(chainingKey: chainingKey, inputKeyMaterial: SecretBytes(count: 0))
    }

    /// Noise §4.3 HKDF with two outputs (each 32 bytes, so no truncation is needed).
    static func hkdf2(chainingKey: SecretBytes, inputKeyMaterial: SecretBytes) -> (SecretBytes, SecretBytes) {
        let temp = inputKeyMaterial.withUnsafeBytes { HMACSHA256.mac(key: chainingKey, parts: [$0]) }
        var one: UInt8 = 1
        let out1 = withUnsafeBytes(of: &one) { HMACSHA256.mac(key: temp, parts: [$0]) }
        var two: UInt8 = 2
        let out2 = out1.withUnsafeBytes { o1 in
            withUnsafeBytes(of: &two) { HMACSHA256.mac(key: temp, parts: [o1, $0]) }
        }
        return (out1, out2)
    }
}

/// Diffie-Hellman as Noise uses it, with libsodium's refusal of all-zero outputs mapped to
/// `lowOrderPoint` (the caller names which token failed).
func noiseDH(_ secret: SecretBytes, _ publicKey: [UInt8], _ token: StaticString) throws(HandshakeError) -> SecretBytes {
    do {
        return try X25519.sharedSecret(secret: secret, publicKey: publicKey)
    } catch {
        throw HandshakeError.make(.lowOrderPoint, "DH \(token) gave an all-zero shared secret")
    }
}

/// The plain Noise KK pattern, `Noise_KK_25519_ChaChaPoly_SHA256` only, with injected static
/// and ephemeral keys. It exists so the community vectors can check the Noise core; peers use
/// `HandshakeInitiator` / `HandshakeResponder`, which add UDS-HS1's checks and signatures.
///
///     KK:  -> s   <- s   ...   -> e, es, ss   <- e, ee, se
public final class NoiseKKHandshake {
    public enum Role: Sendable { case initiator, responder }

    /// The only protocol name this implementation speaks.
    public static let protocolName = "Noise_KK_25519_ChaChaPoly_SHA256"

    private let role: Role
    private var symmetric: NoiseSymmetricState
    private let staticSecret: SecretBytes
    private let remoteStatic: [UInt8]
    private let ephemeralSecret: SecretBytes
    private let ephemeralPublic: [UInt8]
    private var remoteEphemeral: [UInt8]?
    private var messageIndex = 0

    /// - Parameters: X25519 keys as raw 32-byte values; `remoteStatic` is the peer's public key.
    package init(role: Role, prologue: [UInt8], staticSecret: SecretBytes, remoteStatic: [UInt8], ephemeralSecret: SecretBytes) {
        precondition(staticSecret.count == 32 && ephemeralSecret.count == 32 && remoteStatic.count == 32, "X25519 keys are 32 bytes")
        self.role = role
        self.staticSecret = staticSecret
        self.remoteStatic = remoteStatic
        self.ephemeralSecret = ephemeralSecret
        self.ephemeralPublic = X25519.publicKey(secret: ephemeralSecret)
        symmetric = NoiseSymmetricState(protocolName: Array(Self.protocolName.utf8))
        symmetric.mixHash(prologue)
        let localStatic = X25519.publicKey(secret: staticSecret)
        // Pre-messages: the initiator's static first, then the responder's (Noise §7.1).
        switch role {
        case .initiator:
            symmetric.mixHash(localStatic)
            symmetric.mixHash(remoteStatic)
        case .responder:
            symmetric.mixHash(remoteStatic)
            symmetric.mixHash(localStatic)
        }
    }

    /// True once both handshake messages have been processed.
    public var isComplete: Bool { messageIndex >= 2 }

    /// The handshake hash `h` (final once `isComplete`).
    public var handshakeHash: [UInt8] { symmetric.h }

    /// Writes the next handshake message carrying `payload`.
    public func writeMessage(payload: [UInt8]) throws(HandshakeError) -> [UInt8] {
        let writer: Role = messageIndex == 0 ? .initiator : .responder
        precondition(messageIndex < 2 && writer == role, "writeMessage out of turn")
        var s = symmetric
        var out = ephemeralPublic
        s.mixHash(ephemeralPublic)
        if messageIndex == 0 {
            s.mixKey(try noiseDH(ephemeralSecret, remoteStatic, "es"))
            s.mixKey(try noiseDH(staticSecret, remoteStatic, "ss"))
        } else {
            let re = remoteEphemeral!
            s.mixKey(try noiseDH(ephemeralSecret, re, "ee"))
            s.mixKey(try noiseDH(ephemeralSecret, remoteStatic, "se"))
        }
        out += try s.encryptAndHash(payload)
        symmetric = s
        messageIndex += 1
        return out
    }

    /// Reads the next handshake message and returns its payload.
    public func readMessage(_ message: [UInt8]) throws(HandshakeError) -> [UInt8] {
        let writer: Role = messageIndex == 0 ? .initiator : .responder
        precondition(messageIndex < 2 && writer != role, "readMessage out of turn")
        guard message.count >= 32 + ChaChaPoly.tagLength else {
            throw HandshakeError.make(.truncated, "Noise message of \(message.count) bytes is shorter than e + tag")
        }
        var s = symmetric
        let re = Array(message[0..<32])
        s.mixHash(re)
        if messageIndex == 0 {
            s.mixKey(try noiseDH(staticSecret, re, "es"))
            s.mixKey(try noiseDH(staticSecret, remoteStatic, "ss"))
        } else {
            s.mixKey(try noiseDH(ephemeralSecret, re, "ee"))
            s.mixKey(try noiseDH(staticSecret, re, "se"))
        }
        let payload = try s.decryptAndHash(Array(message[32...]))
        symmetric = s
        remoteEphemeral = re
        messageIndex += 1
        return payload
    }

    /// The transport cipher states after the handshake: (send, receive) for this role.
    public func split() -> (send: NoiseCipherState, receive: NoiseCipherState) {
        precondition(isComplete, "split before the handshake completed")
        let (k1, k2) = symmetric.split()
        switch role {
        case .initiator: return (NoiseCipherState(key: k1), NoiseCipherState(key: k2))
        case .responder: return (NoiseCipherState(key: k2), NoiseCipherState(key: k1))
        }
    }
}
