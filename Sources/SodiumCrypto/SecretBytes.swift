internal import CSodium

/// Secret key material: zeroed over its whole capacity when dropped, never printed.
///
/// `guarded` storage uses `sodium_malloc` (guard pages, mlock, excluded from core dumps) and
/// suits long-lived identity keys. Standard storage is plain heap memory wiped with
/// `sodium_memzero`; it is cheap enough for per-handshake temporaries, where `sodium_malloc`'s
/// mmap per allocation would dominate the cost of a handshake.
public final class SecretBytes: @unchecked Sendable {
    // Immutable after init (only mutated through `withUnsafeMutableBytes` by the owner that
    // created it, before sharing), hence @unchecked Sendable.
    private let pointer: UnsafeMutableRawPointer
    public let count: Int
    private let guarded: Bool

    /// Zero-filled secret of `count` bytes.
    public init(count: Int, guarded: Bool = false) {
        precondition(count >= 0, "negative secret length")
        Sodium.initialize()
        self.count = count
        self.guarded = guarded
        let allocation = max(count, 1)
        if guarded {
            guard let p = sodium_malloc(allocation) else {
                fatalError("sodium_malloc failed: out of memory")
            }
            pointer = p
        } else {
            pointer = UnsafeMutableRawPointer.allocate(byteCount: allocation, alignment: 16)
        }
        sodium_memzero(pointer, allocation)
    }

    /// Copies `bytes` into secret storage. The caller stays responsible for wiping its copy.
    public convenience init<Bytes: Sequence>(copying bytes: Bytes, guarded: Bool = false) where Bytes.Element == UInt8 {
        let array = Array(bytes)
        self.init(count: array.count, guarded: guarded)
        array.withUnsafeBytes { src in
            if let base = src.baseAddress { pointer.copyMemory(from: base, byteCount: array.count) }
        }
    }

    /// Copies `bytes` and wipes the source array (best effort: Swift arrays may have copies).
    public convenience init(consuming bytes: inout [UInt8], guarded: Bool = false) {
        self.init(copying: bytes, guarded: guarded)
        bytes.withUnsafeMutableBytes { buf in
            if let base = buf.baseAddress { sodium_memzero(base, buf.count) }
        }
        bytes.removeAll()
    }

    /// Fresh random secret from the system CSPRNG.
    public static func random(count: Int, guarded: Bool = false) -> SecretBytes {
        let s = SecretBytes(count: count, guarded: guarded)
        s.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
        return s
    }

    deinit {
        if guarded {
            sodium_free(pointer)  // wipes before unmapping
        } else {
            sodium_memzero(pointer, max(count, 1))
            pointer.deallocate()
        }
    }

    /// Lends the bytes for the duration of `body`; do not let the pointer escape.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// Mutable access for the creator filling the secret (key derivation, decryption).
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }

    /// A copy of bytes `range` as a new secret.
    public func slice(_ range: Range<Int>, guarded: Bool = false) -> SecretBytes {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "secret slice out of range")
        let out = SecretBytes(count: range.count, guarded: guarded)
        out.withUnsafeMutableBytes { dst in
            if range.count > 0 { dst.baseAddress!.copyMemory(from: pointer + range.lowerBound, byteCount: range.count) }
        }
        return out
    }

    /// Constant-time comparison (`sodium_memcmp`); different lengths compare unequal.
    public func constantTimeEquals(_ other: SecretBytes) -> Bool {
        guard count == other.count else { return false }
        return other.withUnsafeBytes { o in sodium_memcmp(pointer, o.baseAddress!, count) == 0 }
    }

    /// Exposes the bytes as an array. Only for values that leave the process by design
    /// (for example a key file being written); the caller must wipe the array.
    public func unsafeCopyToArray() -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}

extension SecretBytes: CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public var description: String { "SecretBytes(\(count) bytes, redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .class) }
}

/// Wipes an array that held secret bytes (best effort; copy-on-write copies are not reached).
public func secureZero(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { buf in
        if let base = buf.baseAddress, buf.count > 0 { sodium_memzero(base, buf.count) }
    }
}

/// Constant-time equality of two byte arrays of the same length.
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    if a.isEmpty { return true }
    return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in sodium_memcmp(pa.baseAddress!, pb.baseAddress!, a.count) == 0 } }
}

/// Wipes raw memory that held secret or private bytes (`sodium_memzero`, never optimised away).
public func secureZero(_ buffer: UnsafeMutableRawBufferPointer) {
    if let base = buffer.baseAddress, buffer.count > 0 { sodium_memzero(base, buffer.count) }
}
