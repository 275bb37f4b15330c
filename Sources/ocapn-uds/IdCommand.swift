import ArgumentParser
import Foundation
import Identity
import OCapN
import Syrup
import VectorCheck

/// `ocapn-uds id …`: inspect identities.
struct IdCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "id",
        abstract: "Inspect identities.",
        subcommands: [Show.self]
    )

    /// `ocapn-uds id show FILE [--json]`.
    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "show",
            abstract: "Show the public identity in a key file or public export.",
            discussion: """
                Reads a private key file (only its public part; no passphrase is needed) or a \
                public export, and prints:

                  designator        lowercase RFC 4648 base32 of the raw Ed25519 key (52 chars)
                  fingerprint       fp1:xxxx-xxxx-xxxx-xxxx-xxxx-xxxx (SECURITY.md)
                  uri               ocapn://<designator>.unix-domain-socket (no hints)
                  captp-public-key  hex of the CapTP public-key list in Syrup (96 bytes)

                With --json, one JSON object on one line with these stable fields: \
                "designator", "fingerprint", "uri", "captp_public_key_hex", "public_key_hex" \
                (the raw 32-byte key in hex).
                """
        )

        @Argument(help: ArgumentHelp("Private key file or public export.", valueName: "file"))
        var file: String

        @Flag(help: "Print one JSON object instead of lines of text.")
        var json = false

        func validate() throws {
            guard !file.isEmpty else { throw ValidationError("FILE must name a file") }
        }

        func run() throws {
            let identity: PublicIdentity
            do { identity = try PublicIdentityFile.load(path: file) } catch { throw CLIError(error) }
            print(IdentityReport(identity).render(json: json))
        }
    }
}

/// What `id show` prints for one identity.
struct IdentityReport {
    let designator: String
    let fingerprint: String
    let uri: String
    let captpPublicKeyHex: String
    let publicKeyHex: String

    init(_ identity: PublicIdentity) {
        designator = identity.designator
        fingerprint = identity.fingerprint
        uri = PeerLocator(identity: identity).uri
        captpPublicKeyHex = Hex.encode(SyrupEncoder.encode(identity.captpPublicKey))
        publicKeyHex = Hex.encode(identity.publicKey)
    }

    func render(json: Bool) -> String {
        guard json else {
            return """
                designator: \(designator)
                fingerprint: \(fingerprint)
                uri: \(uri)
                captp-public-key: \(captpPublicKeyHex)
                """
        }
        let object: [String: String] = [
            "designator": designator,
            "fingerprint": fingerprint,
            "uri": uri,
            "captp_public_key_hex": captpPublicKeyHex,
            "public_key_hex": publicKeyHex,
        ]
        // All values are ASCII we produced; serialisation cannot fail.
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }
}
