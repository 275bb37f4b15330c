import ArgumentParser
import Identity
import SodiumCrypto

/// `ocapn-uds keygen`: creates a new identity key file.
struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Create a new Ed25519 identity key file.",
        discussion: """
            Writes a new private key file with mode 0600, atomically (temporary file, fsync, \
            rename), and prints the identity's designator and fingerprint. An existing file is \
            never replaced unless --force is given.

            With --passphrase-file, the key is encrypted: Argon2id (libsodium MODERATE cost, \
            256 MiB) derives an XChaCha20-Poly1305 key from the first line of that file. Loading \
            such a key then needs the same passphrase.

            The file format is described in Vectors/identity.md.
            """
    )

    @Option(help: ArgumentHelp("Private key file to create.", valueName: "file"))
    var out: String

    @Flag(help: "Replace existing output files. The old private key is lost.")
    var force = false

    @Option(help: ArgumentHelp("Encrypt the key with the passphrase on the first line of this file (mode 0600, or a pipe).", valueName: "file"))
    var passphraseFile: String?

    @Option(help: ArgumentHelp("Also write the public identity (type ed25519-public) to this file.", valueName: "file"))
    var publicOut: String?

    func validate() throws {
        guard !out.isEmpty else { throw ValidationError("--out must name a file") }
        if let publicOut {
            guard !publicOut.isEmpty else { throw ValidationError("--public-out must name a file") }
            guard publicOut != out else { throw ValidationError("--public-out must differ from --out") }
        }
    }

    func run() throws {
        do {
            if !force {
                // Refuse before reading the passphrase or writing anything: no half-done keygen.
                try IdentityKeyFile.ensureAbsent(out)
                if let publicOut { try IdentityKeyFile.ensureAbsent(publicOut) }
            }
            let passphrase = try passphraseFile.map { path throws(IdentityError) in try IdentityPassphrase.read(fromFile: path) }
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: out, passphrase: passphrase, force: force)
            if let publicOut {
                try PublicIdentityFile.write(pair.publicIdentity, to: publicOut, force: force)
            }
            print("key-file: \(out) (mode 0600, \(passphrase == nil ? "unencrypted" : "passphrase-encrypted"))")
            if let publicOut { print("public-file: \(publicOut)") }
            print("designator: \(pair.publicIdentity.designator)")
            print("fingerprint: \(pair.publicIdentity.fingerprint)")
        } catch {
            throw CLIError(error)
        }
    }
}
