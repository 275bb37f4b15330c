// Validation pass of the decoder: walks the bytes of one value, checks syntax, limits and
// canonical form, and finds where the value ends. It builds nothing, so a partial value costs
// no allocation, and it keeps its own explicit stack, so nesting never recurses.
//
// The scanner is resumable: `position` only moves past complete atoms and container brackets.
// An atom cut short leaves `position` at its first byte and the next call re-reads just that
// atom (its header is at most a few dozen digits), so a stream reader pays O(1) per call for
// an unfinished bytestring and never re-validates earlier items.

/// ASCII bytes of the Syrup grammar.
enum SyrupByte {
    static let t: UInt8 = 0x74, f: UInt8 = 0x66
    static let float: UInt8 = 0x46, double: UInt8 = 0x44
    static let plus: UInt8 = 0x2B, minus: UInt8 = 0x2D
    static let colon: UInt8 = 0x3A, quote: UInt8 = 0x22, apostrophe: UInt8 = 0x27
    static let listOpen: UInt8 = 0x5B, listClose: UInt8 = 0x5D
    static let dictOpen: UInt8 = 0x7B, dictClose: UInt8 = 0x7D
    static let setOpen: UInt8 = 0x23, setClose: UInt8 = 0x24
    static let recordOpen: UInt8 = 0x3C, recordClose: UInt8 = 0x3E
    static let zero: UInt8 = 0x30, nine: UInt8 = 0x39
}

struct SyrupScanner: Sendable {
    enum Kind: Sendable { case list, dictionary, set, record }

    struct Frame: Sendable {
        let kind: Kind
        /// Offset of the opening bracket.
        let start: Int
        /// Completed items (list, set), key/value pairs (dictionary) or fields after the label (record).
        var count = 0
        /// Record: the label has been read.
        var hasLabel = false
        /// Dictionary: a key has been read and its value is pending.
        var awaitingValue = false
        /// Byte range of the previous set element or dictionary key, for the order check.
        var previousStart = -1
        var previousEnd = -1

        init(kind: Kind, start: Int) {
            self.kind = kind
            self.start = start
        }
    }

    let limits: SyrupLimits
    /// Offset of the value's first byte.
    let valueStart: Int
    /// The value may not extend to or past this offset (`valueStart + maxTotalBytes`).
    private let limitEnd: Int
    /// Longest digit run that could still end validly: an integer, or a length within a limit.
    private let maxDigitRun: Int
    /// Next unread byte; always just after a complete atom or bracket.
    private(set) var position: Int
    private var frames: [Frame] = []
    /// For a string or symbol cut short at `position`: its body is valid UTF-8 up to `checked`.
    /// Lets a long text arriving in pieces be validated once, and bad bytes fail on arrival.
    private var partialText: (start: Int, checked: Int)?

    init(limits: SyrupLimits, start: Int) {
        self.limits = limits
        valueStart = start
        position = start
        let (end, overflow) = start.addingReportingOverflow(max(0, limits.maxTotalBytes))
        limitEnd = overflow ? Int.max : end
        let longestLength = max(limits.maxBytestringLength, limits.maxStringLength, limits.maxSymbolLength)
        maxDigitRun = max(limits.maxIntegerDigits, Self.decimalDigits(longestLength))
        frames.reserveCapacity(min(max(limits.maxDepth, 0), 64))
    }

    /// Continues over `buffer` (which must hold the same bytes as on earlier calls, possibly more).
    /// Returns the offset just past the value once it is complete, or nil when more bytes are needed.
    mutating func scan(_ buffer: UnsafeRawBufferPointer) throws(SyrupError) -> Int? {
        let count = buffer.count
        while true {
            let pos = position
            if pos >= limitEnd { throw Self.error(.limitExceeded, pos, "value longer than maxTotalBytes \(limits.maxTotalBytes)") }
            if pos >= count { return nil }
            let byte = buffer[pos]
            switch byte {
            case SyrupByte.t, SyrupByte.f:
                try beginItem(at: pos)
                if let end = try finishItem(pos, pos + 1, buffer) { return end }
            case SyrupByte.float, SyrupByte.double:
                try beginItem(at: pos)
                let end = pos + (byte == SyrupByte.float ? 5 : 9)
                if end > limitEnd { throw Self.error(.limitExceeded, pos, "value longer than maxTotalBytes \(limits.maxTotalBytes)") }
                if end > count { return nil }
                if let end = try finishItem(pos, end, buffer) { return end }
            case SyrupByte.zero...SyrupByte.nine:
                try beginItem(at: pos)
                guard let end = try scanNumberOrLength(at: pos, buffer) else { return nil }
                if let end = try finishItem(pos, end, buffer) { return end }
            case SyrupByte.listOpen: try open(.list, at: pos)
            case SyrupByte.dictOpen: try open(.dictionary, at: pos)
            case SyrupByte.setOpen: try open(.set, at: pos)
            case SyrupByte.recordOpen: try open(.record, at: pos)
            case SyrupByte.listClose, SyrupByte.dictClose, SyrupByte.setClose, SyrupByte.recordClose:
                guard let top = frames.last, Self.closes(byte, top) else {
                    throw Self.error(.unexpectedByte, pos, "closing bracket does not close the open container")
                }
                frames.removeLast()
                if let end = try finishItem(top.start, pos + 1, buffer) { return end }
            default:
                throw Self.error(.unexpectedByte, pos, "byte cannot start a value")
            }
        }
    }

    /// Whether `byte` validly closes `frame` here (a dictionary must not be mid-pair, a record needs a label).
    private static func closes(_ byte: UInt8, _ frame: Frame) -> Bool {
        switch frame.kind {
        case .list: byte == SyrupByte.listClose
        case .set: byte == SyrupByte.setClose
        case .dictionary: byte == SyrupByte.dictClose && !frame.awaitingValue
        case .record: byte == SyrupByte.recordClose && frame.hasLabel
        }
    }

    private mutating func open(_ kind: Kind, at pos: Int) throws(SyrupError) {
        try beginItem(at: pos)
        guard frames.count < limits.maxDepth else {
            throw Self.error(.limitExceeded, pos, "nesting deeper than maxDepth \(limits.maxDepth)")
        }
        frames.append(Frame(kind: kind, start: pos))
        position = pos + 1
    }

    /// Checks that the innermost container may take one more item (maxCollectionCount).
    private func beginItem(at pos: Int) throws(SyrupError) {
        guard let top = frames.last else { return }
        let full: Bool = switch top.kind {
        case .list, .set: top.count >= limits.maxCollectionCount
        case .dictionary: !top.awaitingValue && top.count >= limits.maxCollectionCount
        case .record: top.hasLabel && top.count >= limits.maxCollectionCount
        }
        if full { throw Self.error(.limitExceeded, pos, "more than maxCollectionCount \(limits.maxCollectionCount) items") }
    }

    /// Records a complete item `[start, end)`; returns `end` when it was the whole value.
    private mutating func finishItem(_ start: Int, _ end: Int, _ buffer: UnsafeRawBufferPointer) throws(SyrupError) -> Int? {
        position = end
        guard !frames.isEmpty else { return end }
        let top = frames.count - 1
        switch frames[top].kind {
        case .list:
            frames[top].count += 1
        case .record:
            if frames[top].hasLabel { frames[top].count += 1 } else { frames[top].hasLabel = true }
        case .set:
            try checkOrder(frames[top], start, end, buffer, what: "set element")
            frames[top].previousStart = start
            frames[top].previousEnd = end
            frames[top].count += 1
        case .dictionary:
            if frames[top].awaitingValue {
                frames[top].awaitingValue = false
                frames[top].count += 1
            } else {
                try checkOrder(frames[top], start, end, buffer, what: "dictionary key")
                frames[top].previousStart = start
                frames[top].previousEnd = end
                frames[top].awaitingValue = true
            }
        }
        return nil
    }

    /// Canonical order: each key/element's encoding sorts strictly after the previous one
    /// (bytewise, a proper prefix first). Equal encodings are equal values, hence duplicates.
    private func checkOrder(_ frame: Frame, _ start: Int, _ end: Int, _ buffer: UnsafeRawBufferPointer, what: String) throws(SyrupError) {
        guard frame.previousStart >= 0 else { return }
        switch Self.compare(buffer, frame.previousStart, frame.previousEnd, start, end) {
        case .less: return
        case .equal: throw Self.error(.duplicateKey, start, "duplicate \(what)")
        case .greater: throw Self.error(.nonCanonical, start, "\(what) out of canonical order")
        }
    }

    enum Order { case less, equal, greater }

    static func compare(_ buffer: UnsafeRawBufferPointer, _ aStart: Int, _ aEnd: Int, _ bStart: Int, _ bEnd: Int) -> Order {
        let aCount = aEnd - aStart, bCount = bEnd - bStart
        var i = 0
        let common = min(aCount, bCount)
        while i < common {
            let x = buffer[aStart + i], y = buffer[bStart + i]
            if x != y { return x < y ? .less : .greater }
            i += 1
        }
        return aCount == bCount ? .equal : (aCount < bCount ? .less : .greater)
    }

    /// An integer (`digits+`, `digits-`) or a length-prefixed atom (`len:`, `len"`, `len'`) at `pos`.
    /// Returns the offset past it, or nil when more bytes are needed.
    private mutating func scanNumberOrLength(at pos: Int, _ buffer: UnsafeRawBufferPointer) throws(SyrupError) -> Int? {
        let count = buffer.count
        var i = pos
        var digits = 0
        var value = 0
        var overflow = false
        var terminator: UInt8 = 0
        while true {
            if i >= limitEnd { throw Self.error(.limitExceeded, pos, "value longer than maxTotalBytes \(limits.maxTotalBytes)") }
            if i >= count { return nil }
            let c = buffer[i]
            guard c >= SyrupByte.zero && c <= SyrupByte.nine else { terminator = c; break }
            // A second digit after a leading zero is non-canonical whatever the terminator turns out to be.
            if digits == 1 && buffer[pos] == SyrupByte.zero {
                throw Self.error(.nonCanonical, pos, "leading zero")
            }
            digits += 1
            if digits > maxDigitRun {
                throw Self.error(.limitExceeded, pos, "more than \(maxDigitRun) digits")
            }
            if !overflow {
                let (m, o1) = value.multipliedReportingOverflow(by: 10)
                let (s, o2) = m.addingReportingOverflow(Int(c - SyrupByte.zero))
                overflow = o1 || o2
                value = s
            }
            i += 1
        }
        switch terminator {
        case SyrupByte.plus, SyrupByte.minus:
            if terminator == SyrupByte.minus && digits == 1 && buffer[pos] == SyrupByte.zero {
                throw Self.error(.nonCanonical, pos, "negative zero")
            }
            guard digits <= limits.maxIntegerDigits else {
                throw Self.error(.limitExceeded, pos, "integer longer than maxIntegerDigits \(limits.maxIntegerDigits)")
            }
            return i + 1
        case SyrupByte.colon:
            return try scanAtom(at: pos, dataStart: i + 1, length: overflow ? nil : value,
                                limit: limits.maxBytestringLength, what: "bytestring", utf8: false, buffer)
        case SyrupByte.quote:
            return try scanAtom(at: pos, dataStart: i + 1, length: overflow ? nil : value,
                                limit: limits.maxStringLength, what: "string", utf8: true, buffer)
        case SyrupByte.apostrophe:
            return try scanAtom(at: pos, dataStart: i + 1, length: overflow ? nil : value,
                                limit: limits.maxSymbolLength, what: "symbol", utf8: true, buffer)
        default:
            throw Self.error(.unexpectedByte, i, "digits not followed by + - : \" or '")
        }
    }

    /// The body of a length-prefixed atom. The declared length is checked against its limit
    /// and the value budget before waiting for (or touching) the body bytes.
    private mutating func scanAtom(at pos: Int, dataStart: Int, length: Int?, limit: Int, what: String, utf8: Bool,
                          _ buffer: UnsafeRawBufferPointer) throws(SyrupError) -> Int? {
        guard let length, length <= limit else {
            throw Self.error(.limitExceeded, pos, "\(what) length above limit \(limit)")
        }
        let (end, overflow) = dataStart.addingReportingOverflow(length)
        if overflow || end > limitEnd {
            throw Self.error(.limitExceeded, pos, "\(what) of \(length) bytes exceeds maxTotalBytes \(limits.maxTotalBytes)")
        }
        guard utf8 else { return end > buffer.count ? nil : end }
        let available = min(end, buffer.count)
        var from = dataStart
        if let partial = partialText, partial.start == pos { from = partial.checked }
        switch UTF8Check.validate(buffer, from, available, complete: available == end) {
        case .invalid(let bad):
            throw Self.error(.invalidUTF8, bad, "\(what) is not valid UTF-8")
        case .validUpTo(let checked):
            if available < end {
                partialText = (pos, checked)
                return nil
            }
            partialText = nil
            return end
        }
    }

    private static func decimalDigits(_ n: Int) -> Int {
        var n = max(n, 0), d = 1
        while n >= 10 { n /= 10; d += 1 }
        return d
    }

    /// Kept out of line so the hot loop stays small (errors are rare). Details name the
    /// structure and offset only, never input bytes: decoded data may be private.
    @inline(never)
    static func error(_ code: SyrupError.Code, _ offset: Int, _ detail: @autoclosure () -> String) -> SyrupError {
        SyrupError(code, offset: offset, detail())
    }
}

/// UTF-8 validation per RFC 3629 (no overlongs, no surrogates, nothing above U+10FFFF).
enum UTF8Check {
    enum Outcome: Equatable {
        /// The first byte of the first invalid sequence.
        case invalid(Int)
        /// Valid up to this offset; when not complete, a sequence cut off by the end starts here.
        case validUpTo(Int)
    }

    /// Validates `buffer[start..<end]`. When `complete` is false more bytes will follow, so a
    /// sequence cut off by `end` is not an error as long as what is there can still be valid.
    static func validate(_ buffer: UnsafeRawBufferPointer, _ start: Int, _ end: Int, complete: Bool) -> Outcome {
        var i = start
        while i < end {
            // ASCII fast path, eight bytes at a time.
            while i + 8 <= end,
                  buffer.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                i += 8
            }
            guard i < end else { break }
            let b0 = buffer[i]
            if b0 < 0x80 { i += 1; continue }
            var low: UInt8 = 0x80, high: UInt8 = 0xBF
            let length: Int
            switch b0 {
            case 0xC2...0xDF: length = 2
            case 0xE0: length = 3; low = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: length = 3
            case 0xED: length = 3; high = 0x9F
            case 0xF0: length = 4; low = 0x90
            case 0xF1...0xF3: length = 4
            case 0xF4: length = 4; high = 0x8F
            default: return .invalid(i)
            }
            let present = min(length, end - i)
            if present >= 2 {
                let b1 = buffer[i + 1]
                guard b1 >= low && b1 <= high else { return .invalid(i) }
            }
            var k = 2
            while k < present {
                guard buffer[i + k] & 0xC0 == 0x80 else { return .invalid(i) }
                k += 1
            }
            if present < length { return complete ? .invalid(i) : .validUpTo(i) }
            i += length
        }
        return .validUpTo(end)
    }
}
