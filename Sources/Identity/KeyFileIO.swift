import SodiumCrypto
import Transport

extension IdentityKeyFile {
    /// Mode of private key files: owner read/write only.
    public static let privateFileMode: UInt32 = 0o600
    /// Mode of public export files.
    public static let publicFileMode: UInt32 = 0o644

    /// Writes `keyPair` to `path` atomically with mode 0600: a temporary file in the same
    /// directory is written and fsynced, then moved into place and the directory fsynced, so a
    /// crash leaves the old file or the new one, never a partial key. Without `force` an existing
    /// file is never replaced (checked atomically: the temporary file is hard-linked into place).
    /// With a passphrase the seed is encrypted (Argon2id with `kdf`, XChaCha20-Poly1305).
    package static func write(
        _ keyPair: IdentityKeyPair, to path: String, passphrase: SecretBytes?,
        force: Bool = false, kdf: KDFParameters = .moderate
    ) throws(IdentityError) {
        // Refuse early, before spending a second on Argon2id; the link below re-checks atomically.
        if !force { try SecureFile.refuseExisting(path) }
        let contents = try encode(keyPair, protection: passphrase.map { .passphrase($0, kdf) } ?? .none)
        // withUnsafeBytes rethrows untyped errors; carry the typed one out in a Result.
        let written: Result<Void, IdentityError> = contents.withUnsafeBytes { bytes in
            Result { () throws(IdentityError) in
                try SecureFile.writeAtomically(path: path, contents: bytes, mode: privateFileMode, force: force)
            }
        }
        try written.get()
    }

    /// Throws `keyFileExists` when anything (even a dangling symlink) is at `path`, so a command
    /// writing several files can refuse before writing any.
    public static func ensureAbsent(_ path: String) throws(IdentityError) {
        try SecureFile.refuseExisting(path)
    }

    /// Loads a private key file. Refuses a missing file, one that is not a regular file, one
    /// group- or world-accessible or owned by another user (like OpenSSH), and any malformed,
    /// inconsistent or undecryptable file.
    package static func load(
        path: String, passphrase: SecretBytes?, limits: IdentityFileLimits = .default
    ) throws(IdentityError) -> IdentityKeyPair {
        var contents = try SecureFile.read(path: path, limit: limits.maxFileBytes, requirePrivate: true)
        defer { secureZero(&contents) }
        do {
            return try decode(contents, passphrase: passphrase, limits: limits)
        } catch {
            throw IdentityError(error.code, "\(path): \(error.detail)")
        }
    }

    /// Whether the private key file at `path` is passphrase-protected (reads the header only).
    public static func isEncrypted(path: String, limits: IdentityFileLimits = .default) throws(IdentityError) -> Bool {
        var contents = try SecureFile.read(path: path, limit: limits.maxFileBytes, requirePrivate: false)
        defer { secureZero(&contents) }
        do {
            return try isEncrypted(contents, limits: limits)
        } catch {
            throw IdentityError(error.code, "\(path): \(error.detail)")
        }
    }
}

/// Public identity files: accepts a public export (`type: ed25519-public`) or a private key file
/// (only its public part is used, so no passphrase or permission check is needed).
public enum PublicIdentityFile {
    /// Loads the public identity recorded in either kind of identity file. A private key file
    /// must still be private (mode 0600 or stricter): a readable one is refused here too, so the
    /// user learns of the exposure whichever command touches the file first.
    public static func load(path: String, limits: IdentityFileLimits = .default) throws(IdentityError) -> PublicIdentity {
        var contents = try SecureFile.read(path: path, limit: limits.maxFileBytes, requirePrivate: false)
        defer { secureZero(&contents) }
        let holdsSecret: Bool
        do {
            holdsSecret = try IdentityKeyFile.holdsSecret(contents, limits: limits)
        } catch {
            throw IdentityError(error.code, "\(path): \(error.detail)")
        }
        if holdsSecret {
            var checked = try SecureFile.read(path: path, limit: limits.maxFileBytes, requirePrivate: true)
            secureZero(&checked)
        }
        do {
            return try IdentityKeyFile.decodePublic(contents, limits: limits)
        } catch {
            throw IdentityError(error.code, "\(path): \(error.detail)")
        }
    }

    /// Writes a public export file atomically (mode 0644); refuses to replace a file unless `force`.
    public static func write(_ identity: PublicIdentity, to path: String, force: Bool = false) throws(IdentityError) {
        let contents = IdentityKeyFile.encodePublic(identity)
        let written: Result<Void, IdentityError> = contents.withUnsafeBytes { bytes in
            Result { () throws(IdentityError) in
                try SecureFile.writeAtomically(path: path, contents: bytes, mode: IdentityKeyFile.publicFileMode, force: force)
            }
        }
        try written.get()
    }
}

/// Passphrases for key files.
public enum IdentityPassphrase {
    /// The passphrase in a passphrase file's bytes: the first line, its `\n` (or `\r\n`)
    /// stripped. Refuses an empty or over-long passphrase. Sans-IO; the caller wipes `contents`.
    package static func fromFileContents(_ contents: [UInt8], limits: IdentityFileLimits = .default) throws(IdentityError) -> SecretBytes {
        var end = contents.firstIndex(of: UInt8(ascii: "\n")) ?? contents.count
        if end > 0, contents[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        guard end > 0 else {
            throw IdentityError(.passphraseInvalid, "the passphrase (first line of the file) is empty; write the passphrase on the first line")
        }
        guard end <= limits.maxPassphraseBytes else {
            throw IdentityError(.passphraseInvalid, "the passphrase (first line) is \(end) bytes, over the limit of \(limits.maxPassphraseBytes)")
        }
        return contents.withUnsafeBytes { SecretBytes.copy(of: UnsafeRawBufferPointer(rebasing: $0[0..<end])) }
    }

    /// Reads a passphrase file. A regular file must not be group- or world-accessible; a pipe
    /// (`--passphrase-file /dev/stdin`, `<(…)`) is accepted as is.
    package static func read(fromFile path: String, limits: IdentityFileLimits = .default) throws(IdentityError) -> SecretBytes {
        var contents = try SecureFile.read(path: path, limit: limits.maxPassphraseFileBytes, requirePrivate: true, allowPipes: true, what: "passphrase file")
        defer { secureZero(&contents) }
        do {
            return try fromFileContents(contents, limits: limits)
        } catch {
            throw IdentityError(error.code, "\(path): \(error.detail)")
        }
    }
}

/// The file-system operations key files need, on Transport's system-call layer, with its
/// errors turned into `IdentityError`s that name the path.
enum SecureFile {
    static func ioError(_ call: String, _ path: String, _ error: TransportError) -> IdentityError {
        IdentityError(.ioError, "\(call) \(path): \(error.errno == nil ? error.detail : error.errnoDescription)")
    }

    /// Reads a whole small file through one descriptor: the checks apply to what is read.
    static func read(
        path: String, limit: Int, requirePrivate: Bool, allowPipes: Bool = false, what: String = "key file"
    ) throws(IdentityError) -> [UInt8] {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(path, .readOnly, options: .noControllingTerminal)
        } catch where error.isNoSuchEntry {
            let hint = what == "key file" ? "; create one with `ocapn-uds keygen --out \(path)`" : ""
            throw IdentityError(.keyFileMissing, "\(path): no such \(what)\(hint)")
        } catch {
            throw ioError("cannot open", path, error)
        }
        defer { fd.close() }
        let st: FileStatus
        do { st = try fd.status() } catch { throw ioError("cannot stat", path, error) }
        let isPipe = st.kind == .fifo || st.kind == .socket || st.kind == .characterDevice
        guard st.kind == .regular || (allowPipes && isPipe) else {
            throw IdentityError(.keyFileMalformed, "\(path): not a regular file")
        }
        if requirePrivate && st.kind == .regular {
            let mode = st.permissions & 0o777
            if mode & 0o077 != 0 {
                throw IdentityError(.keyFileInsecurePermissions, "\(path): permissions \(octal(mode)) let group or others access this \(what); run: chmod 600 \(path)")
            }
            let me = ProcessIdentity.effectiveUserID
            if st.owner != me && st.owner != 0 {
                throw IdentityError(.keyFileInsecurePermissions, "\(path): owned by uid \(st.owner), not by this user (uid \(me)); the owner must be you or root")
            }
        }
        if st.kind == .regular && st.size > Int64(limit) {
            throw IdentityError(.keyFileMalformed, "\(path): \(st.size) bytes, over the \(limit)-byte limit for a \(what); is this the right file?")
        }
        // Read one byte past the limit so growth after fstat (or a pipe) is still caught.
        var buffer = [UInt8](repeating: 0, count: limit + 1)
        var filled = 0
        while filled < buffer.count {
            let n: Int
            do { n = try fd.read(into: &buffer, at: filled) } catch {
                secureZero(&buffer)
                throw ioError("cannot read", path, error)
            }
            if n == 0 { break }
            filled += n
        }
        guard filled <= limit else {
            secureZero(&buffer)
            throw IdentityError(.keyFileMalformed, "\(path): over the \(limit)-byte limit for a \(what); is this the right file?")
        }
        let contents = Array(buffer[0..<filled])
        secureZero(&buffer)
        return contents
    }

    /// Throws `keyFileExists` when something (even a dangling symlink) is at `path`.
    static func refuseExisting(_ path: String) throws(IdentityError) {
        let existing: FileStatus?
        do { existing = try FileSystem.status(ofPath: path, followLinks: false) } catch {
            throw ioError("cannot check", path, error)
        }
        if existing != nil {
            throw IdentityError(.keyFileExists, "\(path) already exists; refusing to overwrite it (pass --force to replace it; a replaced private key is lost)")
        }
    }

    /// Temporary file in the target's directory → write → fsync → close → link (no replace) or
    /// rename (replace) → fsync the directory. The temporary file is removed on every failure.
    static func writeAtomically(path: String, contents: UnsafeRawBufferPointer, mode: UInt32, force: Bool) throws(IdentityError) {
        let (directory, name) = split(path)
        guard !name.isEmpty, name != ".", name != ".." else {
            throw IdentityError(.ioError, "\(path): not a file name")
        }
        let suffix = Hex.encode(RandomBytes.bytes(6))
        let temporary = (directory == "." && !path.hasPrefix("./") ? "" : directory + "/") + ".\(name).tmp-\(suffix)"

        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(temporary, .writeOnly, options: [.create, .exclusive, .noFollow], permissions: mode)
        } catch {
            throw ioError("cannot create a temporary file in \(directory) for", path, error)
        }
        do throws(IdentityError) {
            // umask may have removed bits (0644 → 0640): set the exact mode explicitly.
            do { try fd.setPermissions(mode) } catch { throw ioError("cannot chmod", temporary, error) }
            do { try fd.writeAll(contents) } catch { throw ioError("cannot write", temporary, error) }
            do { try fd.synchronize() } catch { throw ioError("cannot fsync", temporary, error) }
            // close after fsync can still report a deferred write error (NFS); treat it as failure.
            do { try fd.closeReportingError() } catch { throw ioError("cannot close", temporary, error) }
        } catch {
            fd.close()
            try? FileSystem.removeIfPresent(temporary)
            throw error
        }
        if force {
            do { try FileSystem.rename(temporary, to: path) } catch {
                try? FileSystem.removeIfPresent(temporary)
                throw ioError("cannot move into place", path, error)
            }
        } else {
            // link(2) fails with EEXIST instead of replacing: no window in which a file created
            // by someone else after our check is silently overwritten.
            do { try FileSystem.link(temporary, to: path) } catch {
                try? FileSystem.removeIfPresent(temporary)
                if error.isAlreadyExists {
                    throw IdentityError(.keyFileExists, "\(path) already exists; refusing to overwrite it (pass --force to replace it; a replaced private key is lost)")
                }
                throw ioError("cannot link into place", path, error)
            }
            try? FileSystem.removeIfPresent(temporary)
        }
        do { try FileSystem.synchronizeDirectory(directory) } catch {
            throw ioError(error.syscall == "open" ? "cannot open directory" : "cannot fsync directory", directory, error)
        }
    }

    /// Directory and last component of `path` ("." for a bare name).
    static func split(_ path: String) -> (String, String) {
        guard let slash = path.lastIndex(of: "/") else { return (".", path) }
        let directory = String(path[..<slash])
        return (directory.isEmpty ? "/" : directory, String(path[path.index(after: slash)...]))
    }

    static func octal(_ mode: UInt32) -> String {
        let digits = String(mode, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}
