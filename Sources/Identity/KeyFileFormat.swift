import SodiumCrypto

/// Argon2id cost recorded in a passphrase-protected key file.
public struct KDFParameters: Sendable, Equatable {
    /// Argon2id passes (libsodium `opslimit`).
    public var opsLimit: UInt64
    /// Argon2id memory in bytes (libsodium `memlimit`).
    public var memLimit: Int

    public init(opsLimit: UInt64, memLimit: Int) {
        self.opsLimit = opsLimit
        self.memLimit = memLimit
    }

    /// libsodium's MODERATE preset (3 passes, 256 MiB, about a second): the keygen default,
    /// since a key file is decrypted once per daemon start.
    public static var moderate: KDFParameters { .init(opsLimit: Argon2id.opsLimitModerate, memLimit: Argon2id.memLimitModerate) }
    /// libsodium's INTERACTIVE preset (2 passes, 64 MiB).
    public static var interactive: KDFParameters { .init(opsLimit: Argon2id.opsLimitInteractive, memLimit: Argon2id.memLimitInteractive) }
}

/// Bounds applied when reading identity and passphrase files. A hostile or corrupted file must
/// not make us read megabytes or spend gigabytes of memory on Argon2id.
public struct IdentityFileLimits: Sendable, Equatable {
    /// Largest identity file read. A v1 encrypted private file is about 330 bytes.
    public var maxFileBytes: Int
    /// Largest Argon2id pass count accepted from a file (libsodium SENSITIVE uses 4).
    public var maxOpsLimit: UInt64
    /// Largest Argon2id memory accepted from a file (libsodium SENSITIVE uses 1 GiB).
    public var maxMemLimit: Int
    /// Longest passphrase accepted, in bytes.
    public var maxPassphraseBytes: Int
    /// Largest passphrase file read (the passphrase is its first line).
    public var maxPassphraseFileBytes: Int

    public init(
        maxFileBytes: Int = 4096, maxOpsLimit: UInt64 = 16, maxMemLimit: Int = 1 << 30,
        maxPassphraseBytes: Int = 1024, maxPassphraseFileBytes: Int = 64 << 10
    ) {
        self.maxFileBytes = maxFileBytes
        self.maxOpsLimit = maxOpsLimit
        self.maxMemLimit = maxMemLimit
        self.maxPassphraseBytes = maxPassphraseBytes
        self.maxPassphraseFileBytes = maxPassphraseFileBytes
    }

    public static let `default` = IdentityFileLimits()
}

/// How a private key file protects its seed.
package enum KeyFileProtection: Sendable {
    /// The seed is stored in base64; the file's 0600 mode is the only protection.
    case none
    /// Argon2id(passphrase, random salt) keys XChaCha20-Poly1305 over the seed, the header bound
    /// as associated data.
    case passphrase(SecretBytes, KDFParameters)
}

/// The identity file format (`Vectors/identity.md`): private key files and public exports.
///
/// ```
/// ocapn-uds-identity-v1
/// type: ed25519-secret | ed25519-public
/// public: <designator>
/// encryption: none | argon2id-xchacha20poly1305        (private only)
/// kdf-salt: <32 hex> / kdf-opslimit: <n> / kdf-memlimit: <bytes>   (encrypted only)
/// secret: <base64 seed, or of nonce ‖ ciphertext>     (private only)
/// ```
/// Lines are LF-terminated printable ASCII in exactly this order; nothing else is accepted.
/// This type is sans-IO: bytes in, bytes out, randomness injected. `IdentityKeyFile.load`/`write`
/// add the file system.
public enum IdentityKeyFile {
    /// First line of every v1 identity file.
    public static let magic = "ocapn-uds-identity-v1"
    static let magicPrefix = "ocapn-uds-identity-v"
    static let typeSecret = "ed25519-secret"
    static let typePublic = "ed25519-public"
    static let encryptionNone = "none"
    static let encryptionArgon = "argon2id-xchacha20poly1305"

    // MARK: encode

    /// The bytes of a private key file for `keyPair`. They contain the seed (plainly, unless
    /// protected), hence `SecretBytes`. `random(n)` supplies the salt and nonce; tests inject it.
    package static func encode(
        _ keyPair: IdentityKeyPair, protection: KeyFileProtection,
        random: (Int) -> [UInt8] = RandomBytes.bytes
    ) throws(IdentityError) -> SecretBytes {
        // One allocation large enough for any v1 file: growing would leave unwiped copies of
        // the base64 seed in freed memory.
        var text: [UInt8] = []
        text.reserveCapacity(1024)
        text += Array("\(magic)\ntype: \(typeSecret)\npublic: \(keyPair.publicIdentity.designator)\n".utf8)
        switch protection {
        case .none:
            text += Array("encryption: \(encryptionNone)\nsecret: ".utf8)
            var b64 = keyPair.withSeed { Base64.encode($0) }
            text += b64
            secureZero(&b64)
        case let .passphrase(passphrase, kdf):
            try checkPassphrase(passphrase, limit: IdentityFileLimits.default.maxPassphraseBytes)
            let salt = random(Argon2id.saltLength)
            let nonce = random(XChaChaPoly.nonceLength)
            precondition(salt.count == Argon2id.saltLength && nonce.count == XChaChaPoly.nonceLength,
                         "random source returned the wrong number of bytes")
            text += Array("encryption: \(encryptionArgon)\nkdf-salt: \(Hex.encode(salt))\nkdf-opslimit: \(kdf.opsLimit)\nkdf-memlimit: \(kdf.memLimit)\n".utf8)
            let key = try deriveKey(passphrase: passphrase, salt: salt, kdf: kdf)
            let seed = keyPair.withSeed { SecretBytes.copy(of: $0) }
            // The header so far (every line before `secret:`) is the associated data, so
            // changing the public key, the algorithm or the KDF cost breaks decryption.
            let sealed = XChaChaPoly.seal(key: key, nonce: nonce, ad: text, plaintext: seed)
            text += Array("secret: ".utf8)
            text += Base64.encode(nonce + sealed)
        }
        text.append(UInt8(ascii: "\n"))
        return SecretBytes(consuming: &text)
    }

    /// Decodes an unencrypted private key file, encodes its key again and decodes that: the
    /// round trip the key-file fuzzer checks, without the seed-bearing bytes leaving this module.
    @_spi(TestVectors) public static func decodeAndReencode(_ contents: [UInt8]) throws(IdentityError) -> (decoded: IdentityKeyPair, reencoded: IdentityKeyPair) {
        let pair = try decode(contents, passphrase: nil)
        let again = try encode(pair, protection: .none)
        var bytes = again.withUnsafeBytes { Array($0) }
        defer { secureZero(&bytes) }
        return (pair, try decode(bytes, passphrase: nil))
    }

    // MARK: decode

    /// Reads a private key file's bytes. `passphrase` is needed for an encrypted file and
    /// ignored for an unencrypted one.
    package static func decode(
        _ contents: [UInt8], passphrase: SecretBytes?, limits: IdentityFileLimits = .default
    ) throws(IdentityError) -> IdentityKeyPair {
        let parsed = try parse(contents, limits: limits)
        let seed: SecretBytes
        switch parsed.body {
        case .publicOnly:
            throw IdentityError(.keyFileWrongType, "line 2 (type): this is a public identity export (\(typePublic)); it holds no secret key, pass the private key file instead")
        case let .plain(secretLine, line):
            guard var raw = Base64.decode(secretLine) else {
                throw IdentityError(.keyFileMalformed, "line \(line) (secret): not canonical base64; the file is damaged, restore it from a backup")
            }
            defer { secureZero(&raw) }
            guard raw.count == IdentityKeyPair.seedLength else {
                throw IdentityError(.keyFileMalformed, "line \(line) (secret): holds \(raw.count) bytes, a seed is \(IdentityKeyPair.seedLength); the file is damaged, restore it from a backup")
            }
            seed = raw.withUnsafeBytes { SecretBytes.copy(of: $0) }
        case let .encrypted(enc):
            guard let passphrase else {
                throw IdentityError(.passphraseRequired, "the key file is encrypted (\(encryptionArgon)); supply its passphrase (--passphrase-file)")
            }
            try checkPassphrase(passphrase, limit: limits.maxPassphraseBytes)
            guard let payload = Base64.decode(enc.payload) else {
                throw IdentityError(.keyFileMalformed, "line \(enc.payloadLine) (secret): not canonical base64; the file is damaged, restore it from a backup")
            }
            let expected = XChaChaPoly.nonceLength + IdentityKeyPair.seedLength + XChaChaPoly.tagLength
            guard payload.count == expected else {
                throw IdentityError(.keyFileMalformed, "line \(enc.payloadLine) (secret): holds \(payload.count) bytes, expected \(expected) (24-byte nonce, 48-byte ciphertext); the file is damaged")
            }
            let key = try deriveKey(passphrase: passphrase, salt: enc.salt, kdf: enc.kdf)
            do {
                seed = try XChaChaPoly.open(
                    key: key, nonce: Array(payload[0..<XChaChaPoly.nonceLength]), ad: Array(enc.header),
                    ciphertext: Array(payload[XChaChaPoly.nonceLength...]))
            } catch {
                throw IdentityError(.wrongPassphrase, "cannot decrypt the key file: wrong passphrase, or the file was altered (any header line is authenticated)")
            }
        }
        let keyPair = try IdentityKeyPair(seed: seed)
        guard keyPair.publicIdentity == parsed.publicIdentity else {
            throw IdentityError(.keyFileInconsistent, "line \(parsed.publicLine) (public): does not match the public key of the secret; the file was edited or damaged, restore it from a backup (never trust its public line)")
        }
        return keyPair
    }

    /// Reads the public identity of either file type. For an unencrypted private file it also
    /// checks the `public:` line against the seed; an encrypted file's line is authenticated
    /// only when the file is decrypted.
    public static func decodePublic(_ contents: [UInt8], limits: IdentityFileLimits = .default) throws(IdentityError) -> PublicIdentity {
        let parsed = try parse(contents, limits: limits)
        switch parsed.body {
        case .publicOnly, .encrypted:
            return parsed.publicIdentity
        case .plain:
            return try decode(contents, passphrase: nil, limits: limits).publicIdentity
        }
    }

    /// Whether the file holds a secret key (plain or encrypted), as opposed to a public export.
    public static func holdsSecret(_ contents: [UInt8], limits: IdentityFileLimits = .default) throws(IdentityError) -> Bool {
        if case .publicOnly = try parse(contents, limits: limits).body { return false }
        return true
    }

    /// Whether the file's header declares passphrase encryption (no secret is touched).
    public static func isEncrypted(_ contents: [UInt8], limits: IdentityFileLimits = .default) throws(IdentityError) -> Bool {
        if case .encrypted = try parse(contents, limits: limits).body { return true }
        return false
    }

    /// The bytes of a public export file.
    public static func encodePublic(_ identity: PublicIdentity) -> [UInt8] {
        Array("\(magic)\ntype: \(typePublic)\npublic: \(identity.designator)\n".utf8)
    }

    // MARK: parsing

    struct EncryptedBody {
        let salt: [UInt8]
        let kdf: KDFParameters
        let header: ArraySlice<UInt8>
        let payload: ArraySlice<UInt8>
        let payloadLine: Int
    }

    enum Body {
        case publicOnly
        case plain(secret: ArraySlice<UInt8>, line: Int)
        case encrypted(EncryptedBody)
    }

    struct Parsed {
        let publicIdentity: PublicIdentity
        let publicLine: Int
        let body: Body
    }

    /// Structural parse: every line checked, nothing decrypted.
    static func parse(_ contents: [UInt8], limits: IdentityFileLimits) throws(IdentityError) -> Parsed {
        var lines = try LineReader(contents, limit: limits.maxFileBytes)

        let (version, _) = try lines.next(what: "the format line '\(magic)'")
        guard version.elementsEqual(magic.utf8) else {
            let shown = printable(version)
            if version.starts(with: magicPrefix.utf8) {
                throw IdentityError(.keyFileUnsupportedVersion, "line 1: format '\(shown)' is not supported by this build, which reads '\(magic)'; use the ocapn-uds release that wrote the file")
            }
            throw IdentityError(.keyFileMalformed, "line 1: not an ocapn-uds identity file (expected '\(magic)', found '\(shown)')")
        }

        let (type, typeLine) = try lines.field("type")
        let isSecret: Bool
        if type.elementsEqual(typeSecret.utf8) {
            isSecret = true
        } else if type.elementsEqual(typePublic.utf8) {
            isSecret = false
        } else {
            throw IdentityError(.keyFileWrongType, "line \(typeLine) (type): unknown key type '\(printable(type))' (expected \(typeSecret) or \(typePublic))")
        }

        let (designator, publicLine) = try lines.field("public")
        let identity: PublicIdentity
        do {
            identity = try PublicIdentity(designator: String(decoding: designator, as: UTF8.self))
        } catch {
            throw IdentityError(.keyFileMalformed, "line \(publicLine) (public): \(error.detail); the file is damaged, restore it from a backup")
        }

        guard isSecret else {
            try lines.end()
            return Parsed(publicIdentity: identity, publicLine: publicLine, body: .publicOnly)
        }

        let (encryption, encryptionLine) = try lines.field("encryption")
        if encryption.elementsEqual(encryptionNone.utf8) {
            let (secret, secretLine) = try lines.field("secret")
            try lines.end()
            return Parsed(publicIdentity: identity, publicLine: publicLine, body: .plain(secret: secret, line: secretLine))
        }
        guard encryption.elementsEqual(encryptionArgon.utf8) else {
            throw IdentityError(.keyFileMalformed, "line \(encryptionLine) (encryption): unknown method '\(printable(encryption))' (expected \(encryptionNone) or \(encryptionArgon))")
        }

        let (saltText, saltLine) = try lines.field("kdf-salt")
        guard saltText.count == 2 * Argon2id.saltLength, let salt = Hex.decode(saltText) else {
            throw IdentityError(.keyFileMalformed, "line \(saltLine) (kdf-salt): expected \(2 * Argon2id.saltLength) lowercase hex digits")
        }
        let (opsText, opsLine) = try lines.field("kdf-opslimit")
        guard let ops = decimal(opsText) else {
            throw IdentityError(.keyFileMalformed, "line \(opsLine) (kdf-opslimit): expected a decimal number without leading zeros")
        }
        guard ops >= Argon2id.opsLimitMin else {
            throw IdentityError(.keyFileMalformed, "line \(opsLine) (kdf-opslimit): \(ops) is below Argon2id's minimum \(Argon2id.opsLimitMin)")
        }
        guard ops <= limits.maxOpsLimit else {
            throw IdentityError(.kdfLimitExceeded, "line \(opsLine) (kdf-opslimit): \(ops) passes exceed the configured limit \(limits.maxOpsLimit)")
        }
        let (memText, memLine) = try lines.field("kdf-memlimit")
        guard let mem = decimal(memText) else {
            throw IdentityError(.keyFileMalformed, "line \(memLine) (kdf-memlimit): expected a decimal number of bytes without leading zeros")
        }
        guard mem >= UInt64(Argon2id.memLimitMin) else {
            throw IdentityError(.keyFileMalformed, "line \(memLine) (kdf-memlimit): \(mem) bytes is below Argon2id's minimum \(Argon2id.memLimitMin)")
        }
        guard mem <= UInt64(min(limits.maxMemLimit, Argon2id.memLimitCap)) else {
            throw IdentityError(.kdfLimitExceeded, "line \(memLine) (kdf-memlimit): \(mem) bytes exceed the configured limit \(min(limits.maxMemLimit, Argon2id.memLimitCap))")
        }
        let headerEnd = lines.offset
        let (payload, payloadLine) = try lines.field("secret")
        try lines.end()
        let body = EncryptedBody(
            salt: salt, kdf: KDFParameters(opsLimit: ops, memLimit: Int(mem)),
            header: contents[0..<headerEnd], payload: payload, payloadLine: payloadLine)
        return Parsed(publicIdentity: identity, publicLine: publicLine, body: .encrypted(body))
    }

    // MARK: helpers

    static func checkPassphrase(_ passphrase: SecretBytes, limit: Int) throws(IdentityError) {
        guard passphrase.count > 0 else {
            throw IdentityError(.passphraseInvalid, "the passphrase is empty")
        }
        guard passphrase.count <= limit else {
            throw IdentityError(.passphraseInvalid, "the passphrase is \(passphrase.count) bytes, over the limit of \(limit)")
        }
    }

    static func deriveKey(passphrase: SecretBytes, salt: [UInt8], kdf: KDFParameters) throws(IdentityError) -> SecretBytes {
        do {
            return try Argon2id.deriveKey(
                length: XChaChaPoly.keyLength, passphrase: passphrase, salt: salt,
                opsLimit: kdf.opsLimit, memLimit: kdf.memLimit)
        } catch {
            throw IdentityError(.kdfLimitExceeded, "Argon2id refused (ops \(kdf.opsLimit), mem \(kdf.memLimit) bytes): parameters out of range or not enough memory")
        }
    }

    /// A short printable rendering of a non-secret header value for error messages.
    static func printable(_ bytes: ArraySlice<UInt8>) -> String {
        let shown = bytes.prefix(40).map { (0x20...0x7e).contains($0) ? Character(Unicode.Scalar($0)) : "?" }
        return String(shown) + (bytes.count > 40 ? "…" : "")
    }



    /// Canonical unsigned decimal: digits only, no sign, no leading zero, fits in UInt64.
    static func decimal(_ text: ArraySlice<UInt8>) -> UInt64? {
        guard !text.isEmpty, text.count <= 20, text.first != UInt8(ascii: "0") || text.count == 1 else { return nil }
        var value: UInt64 = 0
        for c in text {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) else { return nil }
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(c - UInt8(ascii: "0")))
            guard !o1, !o2 else { return nil }
            value = s
        }
        return value
    }
}

/// Walks the LF-terminated lines of an identity file, checking each is printable ASCII.
struct LineReader {
    private let bytes: [UInt8]
    private(set) var offset = 0
    private(set) var lineNumber = 0

    init(_ bytes: [UInt8], limit: Int) throws(IdentityError) {
        guard !bytes.isEmpty else {
            throw IdentityError(.keyFileMalformed, "the file is empty; restore it from a backup or create one with `ocapn-uds keygen`")
        }
        guard bytes.count <= limit else {
            throw IdentityError(.keyFileMalformed, "the file is \(bytes.count) bytes, over the \(limit)-byte limit for identity files; is this the right file?")
        }
        self.bytes = bytes
    }

    /// The next line without its newline.
    mutating func next(what: String) throws(IdentityError) -> (ArraySlice<UInt8>, Int) {
        let number = lineNumber + 1
        guard offset < bytes.count else {
            throw IdentityError(.keyFileMalformed, "truncated: line \(number) (\(what)) is missing; restore the file from a backup")
        }
        var end = offset
        while end < bytes.count, bytes[end] != UInt8(ascii: "\n") {
            let c = bytes[end]
            if c == UInt8(ascii: "\r") {
                throw IdentityError(.keyFileMalformed, "line \(number): carriage return found; identity files use LF line endings (convert with dos2unix)")
            }
            guard (0x20...0x7e).contains(c) else {
                throw IdentityError(.keyFileMalformed, "line \(number): byte \(end - offset + 1) is not printable ASCII; the file is damaged")
            }
            end += 1
        }
        guard end < bytes.count else {
            throw IdentityError(.keyFileMalformed, "truncated: line \(number) (\(what)) has no final newline; the file is incomplete, restore it from a backup")
        }
        let line = bytes[offset..<end]
        offset = end + 1
        lineNumber = number
        return (line, number)
    }

    /// The value of the next line, which must read `<key>: <value>`.
    mutating func field(_ key: String) throws(IdentityError) -> (ArraySlice<UInt8>, Int) {
        let (line, number) = try next(what: "\(key): …")
        let prefix = Array("\(key): ".utf8)
        guard line.starts(with: prefix) else {
            // Name what was found by its key only: the value may be secret.
            let foundKey = line.firstIndex(of: UInt8(ascii: ":")).map { IdentityKeyFile.printable(line[line.startIndex..<$0]) } ?? "no 'key:' field"
            throw IdentityError(.keyFileMalformed, "line \(number): expected '\(key): …', found '\(foundKey)'; the file is damaged or was edited")
        }
        return (line[(line.startIndex + prefix.count)...], number)
    }

    /// Requires that no line follows.
    func end() throws(IdentityError) {
        guard offset == bytes.count else {
            throw IdentityError(.keyFileMalformed, "line \(lineNumber + 1): unexpected content after the last field; the file was edited or damaged")
        }
    }
}
