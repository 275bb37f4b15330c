import SodiumCrypto

extension IdentityKeyPair {
    /// libsodium's 64-byte secret key (seed ‖ public key) in fresh guarded storage, for the
    /// handshake layer of this package (`HandshakeIdentity` signs transcripts with it).
    ///
    /// `package` access: code outside this package cannot call it, so the key still has no
    /// readable form for library users. The caller owns the copy; it is wiped on release.
    package func handshakeSecretKey() -> SecretBytes {
        withSeed { seed in
            let seedCopy = SecretBytes.copy(of: seed)
            do {
                return try Ed25519.keyPair(seed: seedCopy).secretKey
            } catch {
                preconditionFailure("a key pair's own seed has the right length")
            }
        }
    }
}
