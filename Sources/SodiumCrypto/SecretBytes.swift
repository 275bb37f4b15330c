internal import CSodium
import Synchronization

/// Secret key material: zeroed over its whole capacity when dropped, never printed.
///
/// Every secret lives in `sodium_malloc` memory: guard pages on both sides, `mlock`ed (not
/// swapped) and, on Linux, `madvise(MADV_DONTDUMP)` (libsodium 1.0.18's `sodium_mlock` does
/// it), so none of it reaches a core dump. `guarded` secrets get an allocation of their own
/// (identity keys, key files: long-lived, and they may be made read-only). Small secrets of a
/// session (DH outputs, chaining keys, traffic keys: at most `SecretSlab.slotSize` bytes) take
/// a slot of a shared guarded slab instead, because `sodium_malloc`'s mmap, mprotect and mlock
/// per allocation would cost more than the handshake's own cryptography. Larger non-guarded
/// secrets use plain heap memory wiped with `sodium_memzero`.
///
/// `package` access: no code outside this package can name a secret, read it, write it or copy
/// it out. Library users hold secrets only inside the types that use them (`IdentityKeyPair`,
/// key files read from disk), which offer operations, never bytes.
package final class SecretBytes: @unchecked Sendable {
    // Written only by the code that creates it (key derivation, decryption) before it is
    // shared, read-only afterwards: hence @unchecked Sendable.
    private let pointer: UnsafeMutableRawPointer
    package let count: Int
    private let storage: Storage

    enum Storage: Equatable {
        /// Its own `sodium_malloc` allocation.
        case guarded
        /// A slot of a guarded slab.
        case slot(SecretSlab)
        /// Heap memory (secrets larger than a slab slot that did not ask for guarded storage).
        case heap

        static func == (a: Storage, b: Storage) -> Bool {
            switch (a, b) {
            case (.guarded, .guarded), (.heap, .heap): return true
            case (.slot(let x), .slot(let y)): return x === y
            default: return false
            }
        }
    }

    /// Zero-filled secret of `count` bytes.
    package convenience init(count: Int, guarded: Bool = false) {
        self.init(count: count, guarded: guarded, slab: .shared)
    }

    /// `slab`: where small non-guarded secrets go (tests use a private slab to inspect it).
    init(count: Int, guarded: Bool, slab: SecretSlab) {
        precondition(count >= 0, "negative secret length")
        Sodium.initialize()
        self.count = count
        let allocation = max(count, 1)
        if guarded {
            guard let p = sodium_malloc(allocation) else {
                fatalError("sodium_malloc failed: out of memory")
            }
            pointer = p
            storage = .guarded
        } else if allocation <= SecretSlab.slotSize {
            pointer = slab.allocate()
            storage = .slot(slab)
        } else {
            pointer = UnsafeMutableRawPointer.allocate(byteCount: allocation, alignment: 16)
            storage = .heap
        }
        sodium_memzero(pointer, allocation)
    }

    /// Copies `bytes` into secret storage. The caller stays responsible for wiping its copy.
    package convenience init<Bytes: Sequence>(copying bytes: Bytes, guarded: Bool = false) where Bytes.Element == UInt8 {
        let array = Array(bytes)
        self.init(count: array.count, guarded: guarded)
        array.withUnsafeBytes { src in
            if let base = src.baseAddress { pointer.copyMemory(from: base, byteCount: array.count) }
        }
    }

    /// Copies `bytes` and wipes the source array (best effort: Swift arrays may have copies).
    package convenience init(consuming bytes: inout [UInt8], guarded: Bool = false) {
        self.init(copying: bytes, guarded: guarded)
        bytes.withUnsafeMutableBytes { buf in
            if let base = buf.baseAddress { sodium_memzero(base, buf.count) }
        }
        bytes.removeAll()
    }

    /// Fresh random secret from the system CSPRNG.
    package static func random(count: Int, guarded: Bool = false) -> SecretBytes {
        let s = SecretBytes(count: count, guarded: guarded)
        s.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
        return s
    }

    deinit {
        switch storage {
        case .guarded:
            sodium_free(pointer)  // makes the pages writable again, wipes, unlocks, unmaps
        case .slot(let slab):
            slab.release(pointer)  // wipes the whole slot
        case .heap:
            sodium_memzero(pointer, max(count, 1))
            pointer.deallocate()
        }
    }

    /// Makes a `guarded` secret read-only (`sodium_mprotect_readonly`): for keys written once
    /// and then only read, such as an identity's signing key. A later write faults. No effect
    /// on other storage (slab slots share pages with other secrets).
    package func makeReadOnly() {
        guard storage == .guarded else { return }
        precondition(sodium_mprotect_readonly(pointer) == 0, "sodium_mprotect_readonly failed")
    }

    /// Where the bytes live (tests of the storage guarantees).
    var storageForTesting: Storage { storage }
    var addressForTesting: UnsafeMutableRawPointer { pointer }

    /// Lends the bytes for the duration of `body`; do not let the pointer escape.
    package func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    /// Mutable access for the creator filling the secret (key derivation, decryption).
    package func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }

    /// A copy of bytes `range` as a new secret.
    package func slice(_ range: Range<Int>, guarded: Bool = false) -> SecretBytes {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "secret slice out of range")
        let out = SecretBytes(count: range.count, guarded: guarded)
        out.withUnsafeMutableBytes { dst in
            if range.count > 0 { dst.baseAddress!.copyMemory(from: pointer + range.lowerBound, byteCount: range.count) }
        }
        return out
    }

    /// Constant-time comparison (`sodium_memcmp`); different lengths compare unequal.
    package func constantTimeEquals(_ other: SecretBytes) -> Bool {
        guard count == other.count else { return false }
        return other.withUnsafeBytes { o in sodium_memcmp(pointer, o.baseAddress!, count) == 0 }
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

/// Fixed-size slots for small secrets, carved from `sodium_malloc`ed chunks (guard pages,
/// mlock, MADV_DONTDUMP). A released slot is wiped at once and reused; chunks stay mapped for
/// the life of the slab (the process, for `shared`), so memory is the high-water mark of live
/// session secrets: one 64-byte slot each, 64 KiB chunks.
final class SecretSlab: @unchecked Sendable {
    static let slotSize = 64
    static let chunkBytes = 64 << 10
    static let shared = SecretSlab()

    // Addresses as integers: raw pointers are not Sendable, and the mutex's state must be.
    private struct State {
        var free: [UInt] = []
        var chunks: [UInt] = []
    }

    private let state = Mutex(State())

    init() {}

    deinit {
        // Only private slabs of tests end; sodium_free wipes every chunk.
        let chunks = state.withLock { $0.chunks }
        for c in chunks { sodium_free(UnsafeMutableRawPointer(bitPattern: c)) }
    }

    func allocate() -> UnsafeMutableRawPointer {
        let address = state.withLock { s -> UInt in
            if let p = s.free.popLast() { return p }
            Sodium.initialize()
            guard let chunk = sodium_malloc(Self.chunkBytes) else { fatalError("sodium_malloc failed: out of memory") }
            sodium_memzero(chunk, Self.chunkBytes)
            let base = UInt(bitPattern: chunk)
            s.chunks.append(base)
            let slots = Self.chunkBytes / Self.slotSize
            s.free.reserveCapacity(s.free.count + slots)
            // Hand out low addresses first: the stack pops from the end.
            for i in stride(from: slots - 1, through: 1, by: -1) { s.free.append(base + UInt(i * Self.slotSize)) }
            return base
        }
        return UnsafeMutableRawPointer(bitPattern: address)!
    }

    func release(_ slot: UnsafeMutableRawPointer) {
        sodium_memzero(slot, Self.slotSize)
        let address = UInt(bitPattern: slot)
        state.withLock { $0.free.append(address) }
    }

    /// Chunks mapped so far and slots free (tests).
    var chunkCount: Int { state.withLock { $0.chunks.count } }
    var freeCount: Int { state.withLock { $0.free.count } }
}

/// A fixed-size guarded buffer (`sodium_malloc`: guard pages, mlock, MADV_DONTDUMP), wiped when
/// released: for tables of long-lived secrets. It stays writable: flipping it read-only around
/// each write (`sodium_mprotect_*`) would cost every cold handshake two `mprotect` calls, each a
/// TLB shoot-down across the process's CPUs, which on a busy VM took milliseconds. Not
/// thread-safe: the owner serialises access.
package final class GuardedBuffer: @unchecked Sendable {
    package let count: Int
    private let pointer: UnsafeMutableRawPointer

    package init(count: Int) {
        precondition(count >= 1, "a guarded buffer holds at least one byte")
        Sodium.initialize()
        guard let p = sodium_malloc(count) else { fatalError("sodium_malloc failed: out of memory") }
        sodium_memzero(p, count)
        pointer = p
        self.count = count
    }

    deinit { sodium_free(pointer) }  // wiped, unlocked, unmapped

    package func withReadable<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    package func withWritable<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: pointer, count: count))
    }
}
