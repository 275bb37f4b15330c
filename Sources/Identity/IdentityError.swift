import Errors

/// The stable codes of `IdentityError`.
public enum IdentityErrorCode: String, ErrorCode {
    /// A designator is not the canonical form of some key (case, padding, length, bits).
    case invalidDesignator
    /// A public key has the wrong length or is not a prime-order point.
    case invalidPublicKey
    case invalidFingerprint
    /// A seed is not 32 bytes.
    case invalidSeed
    /// The key file does not exist.
    case keyFileMissing
    /// The output file exists and overwriting was not requested.
    case keyFileExists
    /// A private key file (or passphrase file) is group- or world-accessible, or not ours.
    case keyFileInsecurePermissions
    /// The file is not a well-formed identity file (names the line and field).
    case keyFileMalformed
    /// The file declares a format version this build does not read.
    case keyFileUnsupportedVersion
    /// A public export was given where a private key file is needed, or a type is unknown.
    case keyFileWrongType
    /// The `public:` line does not match the key the secret derives.
    case keyFileInconsistent
    /// The file asks for Argon2id work beyond the configured limits.
    case kdfLimitExceeded
    /// Decryption failed: wrong passphrase, or the encrypted file was altered.
    case wrongPassphrase
    /// The key file is encrypted and no passphrase was given.
    case passphraseRequired
    /// The passphrase is empty or too long.
    case passphraseInvalid
    /// A system call failed (names the call, the path and errno's text).
    case ioError
}

/// Why an identity, key file or passphrase was refused.
///
/// Callers match on `code`; `detail` names the file, line or field and says what to do, for the
/// local operator only. Neither ever contains key material or passphrases.
public typealias IdentityError = CodedError<IdentityErrorCode>
