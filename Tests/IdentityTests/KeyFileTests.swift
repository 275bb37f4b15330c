import Foundation
import Testing
import SodiumCrypto
import Identity

/// Cheap Argon2id so tests stay fast; the format records the cost, so loading needs nothing else.
private let fastKDF = KDFParameters(opsLimit: 1, memLimit: 64 << 10)

/// Key files on disk: round trips, atomic writes, and every refusal.
@Suite struct KeyFileTests {
    @Test func aGeneratedKeyRoundTripsThroughAnUnencryptedFileWithMode0600() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: path)
            #expect(try fileMode(path) == 0o600)
            let loaded = try IdentityKeyFile.load(path: path)
            #expect(loaded.hasSameSecret(as: pair))
            #expect(loaded.publicIdentity == pair.publicIdentity)
            #expect(try !IdentityKeyFile.isEncrypted(path: path))
            let hash = [UInt8](repeating: 7, count: 32)
            #expect(pair.publicIdentity.verify(signature: loaded.signHandshakeTranscript(.initiator, hash: hash),
                                               message: SignedMessage.handshakeTranscript(.initiator, hash: hash)))
        }
    }

    @Test func aLibraryUserWritesAndLoadsAnEncryptedFileThroughPassphraseFiles() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key", good = dir + "/pass", bad = dir + "/wrong"
            for (file, text) in [(good, "hunter2 but longer\n"), (bad, "hunter3 but longer\n")] {
                #expect(FileManager.default.createFile(atPath: file, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]))
            }
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: path, passphraseFile: good, kdf: fastKDF)
            #expect(try IdentityKeyFile.isEncrypted(path: path))
            #expect(try IdentityKeyFile.load(path: path, passphraseFile: good).hasSameSecret(as: pair))
            let wrong = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: path, passphraseFile: bad) }
            #expect(wrong?.code == .wrongPassphrase)
            let missing = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: path) }
            #expect(missing?.code == .passphraseRequired)
        }
    }

    @Test func aPassphraseProtectedFileLoadsOnlyWithItsPassphrase() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: path, passphrase: secret("hunter2 but longer"), kdf: fastKDF)
            #expect(try IdentityKeyFile.isEncrypted(path: path))
            #expect(try IdentityKeyFile.load(path: path, passphrase: secret("hunter2 but longer")).hasSameSecret(as: pair))

            let wrong = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: path, passphrase: secret("hunter3 but longer")) }
            #expect(wrong?.code == .wrongPassphrase)
            let missing = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: path) }
            #expect(missing?.code == .passphraseRequired)
            // The public part needs no passphrase.
            #expect(try PublicIdentityFile.load(path: path) == pair.publicIdentity)
        }
    }

    @Test func theFileNeverContainsTheSeedWhenEncryptedAndAlwaysNamesThePublicKey() throws {
        try withTemporaryDirectory { dir in
            let pair = try IdentityKeyPair(seed: SecretBytes(copying: try unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")))
            try IdentityKeyFile.write(pair, to: dir + "/enc.key", passphrase: secret("pass phrase"), kdf: fastKDF)
            try IdentityKeyFile.write(pair, to: dir + "/plain.key")
            let encrypted = String(decoding: try readFile(dir + "/enc.key"), as: UTF8.self)
            let plain = String(decoding: try readFile(dir + "/plain.key"), as: UTF8.self)
            let seedBase64 = Data(try unhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")).base64EncodedString()
            #expect(plain.contains("secret: \(seedBase64)\n"))
            #expect(!encrypted.contains(seedBase64))
            #expect(!encrypted.contains("9d61b19d"))
            for text in [plain, encrypted] {
                #expect(text.hasPrefix("ocapn-uds-identity-v1\ntype: ed25519-secret\npublic: 25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena\n"))
            }
            // Fresh salt and nonce per write: the same key and passphrase give different files.
            try IdentityKeyFile.write(pair, to: dir + "/enc2.key", passphrase: secret("pass phrase"), kdf: fastKDF)
            #expect(try readFile(dir + "/enc2.key") != readFile(dir + "/enc.key"))
        }
    }

    @Test func anExistingFileIsNotOverwrittenWithoutForce() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            let first = IdentityKeyPair.generate()
            try IdentityKeyFile.write(first, to: path)
            let before = try readFile(path)
            let refused = #expect(throws: IdentityError.self) { try IdentityKeyFile.write(IdentityKeyPair.generate(), to: path) }
            #expect(refused?.code == .keyFileExists)
            #expect(refused?.detail.contains("--force") == true)
            #expect(try readFile(path) == before)

            let second = IdentityKeyPair.generate()
            try IdentityKeyFile.write(second, to: path, force: true)
            #expect(try IdentityKeyFile.load(path: path).hasSameSecret(as: second))
            #expect(try fileMode(path) == 0o600)
        }
    }

    @Test func aDanglingSymlinkCountsAsAnExistingFile() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: dir + "/elsewhere")
            let refused = #expect(throws: IdentityError.self) { try IdentityKeyFile.write(IdentityKeyPair.generate(), to: path) }
            #expect(refused?.code == .keyFileExists)
            #expect(!FileManager.default.fileExists(atPath: dir + "/elsewhere"))
        }
    }

    @Test func aFailedWriteLeavesNoTemporaryFileBehind() throws {
        try withTemporaryDirectory { dir in
            // Replacing a non-empty directory fails at rename, after the temporary file exists.
            let path = dir + "/occupied"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            try writeFile(path + "/inside", [1])
            let failed = #expect(throws: IdentityError.self) { try IdentityKeyFile.write(IdentityKeyPair.generate(), to: path, force: true) }
            #expect(failed?.code == .ioError)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["occupied"])

            // A file appearing between the early check and the link is refused, temp file removed.
            let publicPath = dir + "/id.pub"
            try writeFile(publicPath, Array("taken".utf8), mode: 0o644)
            let refused = #expect(throws: IdentityError.self) { try PublicIdentityFile.write(IdentityKeyPair.generate().publicIdentity, to: publicPath) }
            #expect(refused?.code == .keyFileExists)
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["id.pub", "occupied"])
            #expect(try readFile(publicPath) == Array("taken".utf8))
        }
    }

    @Test func writingIntoAMissingDirectoryIsAnIOError() throws {
        try withTemporaryDirectory { dir in
            let failed = #expect(throws: IdentityError.self) { try IdentityKeyFile.write(IdentityKeyPair.generate(), to: dir + "/no/such/id.key") }
            #expect(failed?.code == .ioError)
        }
    }

    @Test(arguments: [0o644, 0o640, 0o604, 0o660, 0o606, 0o610, 0o601])
    func aPrivateKeyFileAccessibleToGroupOrOthersIsRefused(mode: Int) throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            try IdentityKeyFile.write(IdentityKeyPair.generate(), to: path)
            try setMode(path, mode)
            let refused = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: path) }
            #expect(refused?.code == .keyFileInsecurePermissions)
            #expect(refused?.detail.contains("chmod 600 \(path)") == true)
        }
    }

    @Test(arguments: [0o400, 0o700])
    func aPrivateKeyFileOnlyTheOwnerCanUseLoads(mode: Int) throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: path)
            try setMode(path, mode)
            #expect(try IdentityKeyFile.load(path: path).hasSameSecret(as: pair))
        }
    }

    @Test func aMissingFileSaysHowToCreateOne() throws {
        try withTemporaryDirectory { dir in
            let refused = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: dir + "/nope.key") }
            #expect(refused?.code == .keyFileMissing)
            #expect(refused?.detail.contains("ocapn-uds keygen") == true)
            let publicRefused = #expect(throws: IdentityError.self) { try PublicIdentityFile.load(path: dir + "/nope.pub") }
            #expect(publicRefused?.code == .keyFileMissing)
        }
    }

    @Test func aDirectoryOrAnOversizedFileIsRefusedBeforeParsing() throws {
        try withTemporaryDirectory { dir in
            let notFile = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: dir) }
            #expect(notFile?.code == .keyFileMalformed)
            let big = dir + "/big.key"
            try writeFile(big, [UInt8](repeating: UInt8(ascii: "a"), count: 5000))
            let tooBig = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: big) }
            #expect(tooBig?.code == .keyFileMalformed)
            #expect(tooBig?.detail.contains("4096") == true)
        }
    }

    /// Each damaged variant of a good file, with the code and the line it must name.
    @Test func damagedFilesAreRefusedNamingTheLine() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: path)
            let good = String(decoding: try readFile(path), as: UTF8.self)
            let other = IdentityKeyPair.generate().publicIdentity.designator
            let secretLine = good.split(separator: "\n")[4]
            let variants: [(String, String, IdentityError.Code, String)] = [
                ("truncated mid-secret", String(good.prefix(good.count - 10)), .keyFileMalformed, "line 5"),
                ("truncated after the header", good.split(separator: "\n").prefix(3).joined(separator: "\n") + "\n", .keyFileMalformed, "line 4"),
                ("empty", "", .keyFileMalformed, "empty"),
                ("tampered public line", good.replacingOccurrences(of: pair.publicIdentity.designator, with: other), .keyFileInconsistent, "line 3"),
                ("public line not a designator", good.replacingOccurrences(of: pair.publicIdentity.designator, with: "not-a-designator"), .keyFileMalformed, "line 3"),
                ("bad base64", good.replacingOccurrences(of: secretLine, with: "secret: @@@@" + secretLine.dropFirst(12)), .keyFileMalformed, "line 5"),
                ("base64 of 33 bytes", good.replacingOccurrences(of: secretLine, with: "secret: " + Data(repeating: 7, count: 33).base64EncodedString()), .keyFileMalformed, "line 5"),
                ("unknown version", good.replacingOccurrences(of: "identity-v1", with: "identity-v9"), .keyFileUnsupportedVersion, "line 1"),
                ("misspelled field", good.replacingOccurrences(of: "encryption:", with: "encrypton:"), .keyFileMalformed, "line 4"),
            ]
            for (name, text, code, mention) in variants {
                try writeFile(path, Array(text.utf8))
                let refused = #expect(throws: IdentityError.self, "\(name)") { try IdentityKeyFile.load(path: path) }
                #expect(refused?.code == code, "\(name)")
                #expect(refused?.detail.contains(mention) == true, "\(name): \(refused?.detail ?? "")")
                #expect(refused?.detail.contains(path) == true, "\(name)")
            }
        }
    }

    @Test func errorMessagesNeverQuoteTheSecret() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: path)
            let good = String(decoding: try readFile(path), as: UTF8.self)
            let secretValue = String(good.split(separator: "\n")[4].dropFirst("secret: ".count))
            // Put the secret where a field name is expected, and break the line order around it.
            let moved = good.replacingOccurrences(of: "secret: ", with: "")
            try writeFile(path, Array(moved.utf8))
            let refused = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: path) }
            #expect(refused.map { !String(describing: $0).contains(secretValue.prefix(8)) } == true)
            #expect(!String(describing: pair).contains(secretValue.prefix(8)))
            #expect(String(describing: pair).contains(pair.publicIdentity.fingerprint))
        }
    }

    @Test func publicExportsRoundTripAndAreAcceptedWhereverAPublicIdentityIs() throws {
        try withTemporaryDirectory { dir in
            let pair = IdentityKeyPair.generate()
            try PublicIdentityFile.write(pair.publicIdentity, to: dir + "/id.pub")
            #expect(try fileMode(dir + "/id.pub") == 0o644)
            #expect(try PublicIdentityFile.load(path: dir + "/id.pub") == pair.publicIdentity)
            // A world-readable public export is fine; a private key file loads its public part too.
            try IdentityKeyFile.write(pair, to: dir + "/id.key")
            #expect(try PublicIdentityFile.load(path: dir + "/id.key") == pair.publicIdentity)
            // But an export is not a private key.
            let refused = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: dir + "/id.pub") }
            #expect(refused?.code == .keyFileInsecurePermissions)
            try setMode(dir + "/id.pub", 0o600)
            let wrongType = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: dir + "/id.pub") }
            #expect(wrongType?.code == .keyFileWrongType)
        }
    }

    @Test func aTamperedPublicLineInAnUnencryptedFileIsCaughtEvenWhenOnlyThePublicPartIsRead() throws {
        try withTemporaryDirectory { dir in
            let pair = IdentityKeyPair.generate()
            try IdentityKeyFile.write(pair, to: dir + "/id.key")
            let text = String(decoding: try readFile(dir + "/id.key"), as: UTF8.self)
                .replacingOccurrences(of: pair.publicIdentity.designator, with: IdentityKeyPair.generate().publicIdentity.designator)
            try writeFile(dir + "/id.key", Array(text.utf8))
            let refused = #expect(throws: IdentityError.self) { try PublicIdentityFile.load(path: dir + "/id.key") }
            #expect(refused?.code == .keyFileInconsistent)
        }
    }

    @Test func argon2CostAboveTheConfiguredLimitIsRefusedBeforeDeriving() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/id.key"
            try IdentityKeyFile.write(IdentityKeyPair.generate(), to: path, passphrase: secret("pw"), kdf: fastKDF)
            var limits = IdentityFileLimits()
            limits.maxMemLimit = 32 << 10
            let refused = #expect(throws: IdentityError.self) { try IdentityKeyFile.load(path: path, passphrase: secret("pw"), limits: limits) }
            #expect(refused?.code == .kdfLimitExceeded)
        }
    }
}

@Suite struct PassphraseTests {
    @Test func thePassphraseIsTheFirstLineWithoutItsNewline() throws {
        for (contents, expected) in [("open sesame\n", "open sesame"), ("open sesame", "open sesame"),
                                     ("open sesame\r\n", "open sesame"), ("first\nsecond\n", "first"),
                                     (" spaced out \n", " spaced out ")] {
            let phrase = try IdentityPassphrase.fromFileContents(Array(contents.utf8))
            #expect(phrase.withUnsafeBytes { Array($0) } == Array(expected.utf8))
        }
    }

    @Test(arguments: ["", "\n", "\r\n", "\nsecond line\n"])
    func anEmptyPassphraseIsRefused(contents: String) {
        let refused = #expect(throws: IdentityError.self) { try IdentityPassphrase.fromFileContents(Array(contents.utf8)) }
        #expect(refused?.code == .passphraseInvalid)
    }

    @Test func anOverlongPassphraseIsRefused() {
        let refused = #expect(throws: IdentityError.self) {
            try IdentityPassphrase.fromFileContents([UInt8](repeating: UInt8(ascii: "x"), count: 1025))
        }
        #expect(refused?.code == .passphraseInvalid)
    }

    @Test func aPassphraseFileMustBePrivate() throws {
        try withTemporaryDirectory { dir in
            let path = dir + "/pass"
            try writeFile(path, Array("s3cret\n".utf8), mode: 0o644)
            let refused = #expect(throws: IdentityError.self) { try IdentityPassphrase.read(fromFile: path) }
            #expect(refused?.code == .keyFileInsecurePermissions)
            try setMode(path, 0o600)
            #expect(try IdentityPassphrase.read(fromFile: path).withUnsafeBytes { Array($0) } == Array("s3cret".utf8))
        }
    }

    @Test func anEmptyPassphraseIsRefusedWhenWritingAnEncryptedFile() throws {
        try withTemporaryDirectory { dir in
            let refused = #expect(throws: IdentityError.self) {
                try IdentityKeyFile.write(IdentityKeyPair.generate(), to: dir + "/id.key", passphrase: SecretBytes(count: 0), kdf: fastKDF)
            }
            #expect(refused?.code == .passphraseInvalid)
            let left = try FileManager.default.contentsOfDirectory(atPath: dir)
            #expect(left.isEmpty)
        }
    }
}
