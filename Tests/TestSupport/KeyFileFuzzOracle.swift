@_spi(TestVectors) import Identity

/// Key files (issue #12 item 7). Shared by `FuzzKeyFile` (through the TestSupport product) and the regression tests.
/// No passphrase is given, so an encrypted file stops at `passphraseRequired` before any KDF
/// (the fuzzer must not choose Argon2 costs). Oracle: never a crash; the three readers agree
/// (a file `decode` accepts is one `holdsSecret` says holds a secret and whose public key
/// `decodePublic` reads the same); an accepted file encodes back to a file that decodes to
/// the same key.
public enum KeyFileFuzzOracle {
    public static func violations(_ input: [UInt8]) -> [String] {
        var out: [String] = []
        let roundTrip = try? IdentityKeyFile.decodeAndReencode(input)
        let decoded = roundTrip?.decoded
        let holds = try? IdentityKeyFile.holdsSecret(input)
        let publicOnly = try? IdentityKeyFile.decodePublic(input)
        if let pair = decoded {
            if holds != true { out.append("decode accepted a file holdsSecret does not call secret") }
            if publicOnly != pair.publicIdentity { out.append("decodePublic disagrees with decode") }
            if roundTrip?.reencoded.publicIdentity != pair.publicIdentity { out.append("re-encoded file decodes to another key") }
        }
        return out
    }
}
