/// Key files as a library user reaches them: by path, with the passphrase (if any) in a file of
/// its own, so no passphrase or seed passes through the caller's memory. (`SecretBytes` is not
/// public; the `passphrase:` forms are the package's own.)
extension IdentityKeyFile {
    /// Writes `keyPair` unencrypted (mode 0600; see `write(_:to:passphrase:force:kdf:)`).
    public static func write(_ keyPair: IdentityKeyPair, to path: String, force: Bool = false) throws(IdentityError) {
        try write(keyPair, to: path, passphrase: nil, force: force)
    }

    /// Writes `keyPair` encrypted under the passphrase on the first line of `passphraseFile`.
    public static func write(
        _ keyPair: IdentityKeyPair, to path: String, passphraseFile: String, force: Bool = false, kdf: KDFParameters = .moderate
    ) throws(IdentityError) {
        let passphrase = try IdentityPassphrase.read(fromFile: passphraseFile)
        try write(keyPair, to: path, passphrase: passphrase, force: force, kdf: kdf)
    }

    /// Loads an unencrypted private key file (an encrypted one throws `passphraseRequired`).
    public static func load(path: String, limits: IdentityFileLimits = .default) throws(IdentityError) -> IdentityKeyPair {
        try load(path: path, passphrase: nil, limits: limits)
    }

    /// Loads a private key file, decrypting it with the passphrase on the first line of
    /// `passphraseFile` when it is encrypted.
    public static func load(path: String, passphraseFile: String, limits: IdentityFileLimits = .default) throws(IdentityError) -> IdentityKeyPair {
        let passphrase = try IdentityPassphrase.read(fromFile: passphraseFile, limits: limits)
        return try load(path: path, passphrase: passphrase, limits: limits)
    }
}
