/// Reads back-to-back Syrup values from a byte stream that arrives in arbitrary pieces.
///
/// Unlike calling `SyrupDecoder.decodePrefix` on a growing buffer, it remembers how far the
/// current value has been validated, so a value delivered one byte per read costs linear, not
/// quadratic, time. After any error the reader is dead: every later `next()` throws the same
/// error (a stream cannot be resynchronised after malformed input; reliability catalog D7).
///
/// Error offsets and `streamOffset` count bytes from the start of the stream.
public struct SyrupStreamDecoder: Sendable {
    public let limits: SyrupLimits
    private var storage: [UInt8] = []
    /// Index in `storage` of the first byte not yet handed out.
    private var readIndex = 0
    /// Stream offset of `storage[0]`.
    private var storageOffset = 0
    /// Validation progress for the value starting at `readIndex`, if one has begun.
    private var scanner: SyrupScanner?
    private var failure: SyrupError?

    public init(limits: SyrupLimits = .default) { self.limits = limits }

    /// Stream offset of the next unconsumed byte (bytes taken by `next` and `takeRaw` so far).
    public var streamOffset: Int { storageOffset + readIndex }

    /// Bytes received but not yet consumed.
    public var bufferedCount: Int { storage.count - readIndex }

    /// Whether a value has begun but is not complete.
    public var isMidValue: Bool { scanner != nil && bufferedCount > 0 }

    /// Appends received bytes.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compactIfIdle()
        storage.append(contentsOf: bytes)
    }

    /// Appends received bytes.
    public mutating func append(_ bytes: [UInt8]) {
        compactIfIdle()
        storage.append(contentsOf: bytes)
    }

    /// One complete value from `next(encodedIfPrefixed:)`.
    public enum Decoded: Sendable, Equatable {
        /// The value, built.
        case value(SyrupValue)
        /// The value's bytes, validated exactly as `next()` validates them (so canonical) and not
        /// built: for a reader that only needs a few fields of it, or forwards it unchanged.
        case encoded([UInt8])
    }

    /// The next complete value, or nil when more bytes are needed (including when none are buffered).
    public mutating func next() throws(SyrupError) -> SyrupValue? {
        guard let end = try scanNext() else { return nil }
        let value = storage.withUnsafeBytes { SyrupBuilder.build($0, from: readIndex) }
        consume(upTo: end)
        return value
    }

    /// The next complete value like `next()`, with the same checks and errors, except that a value
    /// whose encoding begins with `prefix` comes back as its bytes, unbuilt. Canonical encoding
    /// has one form, so a prefix such as `<18'uds:new-connection` picks out exactly the records
    /// with that label.
    public mutating func next(encodedIfPrefixed prefix: [UInt8]) throws(SyrupError) -> Decoded? {
        guard let end = try scanNext() else { return nil }
        let start = readIndex
        let decoded: Decoded = storage.withUnsafeBytes { raw in
            if end - start >= prefix.count, Self.hasPrefix(raw, at: start, prefix) {
                return .encoded(Array(UnsafeRawBufferPointer(rebasing: raw[start..<end])))
            }
            return .value(SyrupBuilder.build(raw, from: start))
        }
        consume(upTo: end)
        return decoded
    }

    /// Validates the value at `readIndex`: the offset just past it once complete, nil when more
    /// bytes are needed. Consumes nothing.
    private mutating func scanNext() throws(SyrupError) -> Int? {
        if let failure { throw failure }
        guard readIndex < storage.count else { return nil }
        var scan = scanner ?? SyrupScanner(limits: limits, start: readIndex)
        let outcome = storage.withUnsafeBytes { raw in
            Result { () throws(SyrupError) -> Int? in try scan.scan(raw) }
        }
        switch outcome {
        case .failure(let error):
            let rebased = SyrupError(error.code, offset: storageOffset + error.offset, error.detail)
            failure = rebased
            scanner = nil
            throw rebased
        case .success(nil):
            scanner = scan
            return nil
        case .success(let end?):
            return end
        }
    }

    private static func hasPrefix(_ raw: UnsafeRawBufferPointer, at start: Int, _ prefix: [UInt8]) -> Bool {
        var i = 0
        for byte in prefix {
            if raw[start + i] != byte { return false }
            i += 1
        }
        return true
    }

    private mutating func consume(upTo end: Int) {
        scanner = nil
        readIndex = end
        // Compact here as well as in `append`: if every read ends mid-value, `append` never
        // sees an idle reader and the consumed prefix would grow without bound.
        compactIfIdle()
    }

    /// Takes exactly `count` raw bytes that follow the last value (e.g. the 4-byte marker after
    /// `uds:new-connection`), or nil if fewer are buffered. Any partial validation of bytes at
    /// this point is discarded (it only read, never consumed). Call it *instead of* `next()`
    /// where raw bytes are due: `next()` would read them as Syrup and fail.
    public mutating func takeRaw(_ count: Int) -> [UInt8]? {
        precondition(count >= 0, "negative byte count")
        if failure != nil { return nil }
        guard storage.count - readIndex >= count else { return nil }
        let bytes = Array(storage[readIndex..<(readIndex + count)])
        readIndex += count
        scanner = nil
        return bytes
    }

    /// `takeRaw` without the copy: skips exactly `count` raw bytes that follow the last value;
    /// false (nothing skipped) if fewer are buffered or the decoder failed.
    @discardableResult
    public mutating func skipRaw(_ count: Int) -> Bool {
        precondition(count >= 0, "negative byte count")
        if failure != nil { return false }
        guard storage.count - readIndex >= count else { return false }
        readIndex += count
        scanner = nil
        return true
    }

    /// Bytes held in memory, consumed or not (for tests of the compaction bound).
    var storedByteCount: Int { storage.count }

    /// Drops consumed bytes once they dominate the buffer; only between values, because the
    /// scanner's offsets index into `storage`.
    private mutating func compactIfIdle() {
        guard scanner == nil, readIndex > 0, readIndex >= 4096 || readIndex == storage.count else { return }
        guard readIndex * 2 >= storage.count else { return }
        storage.removeSubrange(0..<readIndex)
        storageOffset += readIndex
        readIndex = 0
    }
}
