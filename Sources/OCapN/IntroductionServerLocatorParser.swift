import Identity
import Syrup

/// Parses the locators of `uds:new-connection` on the server's hot path, with the same checks
/// and error codes as `PeerLocator(syrup:limits:)`, but without re-validating keys it has
/// already validated.
///
/// Validating a designator (`PublicIdentity(designator:)`) costs a curve check of tens of
/// microseconds, and every introduction names two or more (from, to, hint keys): that would
/// dominate forwarding. A designator maps to exactly one key and back (canonical base32), so a
/// designator that validated once validates forever: a cache hit is as good as a check. Two
/// tiers keep registered peers warm: `pinned` holds the designators of registered peers (the
/// server adds and removes them), `recent` is a small cache of any others (hint keys, targets
/// not yet registered), cleared when full so garbage cannot grow it. Both are keyed by the
/// designator's 52 bytes, so a lookup straight from the received record allocates nothing.
///
/// `newConnection(record:)` reads the two locators out of the record's canonical bytes: the
/// common shape (cached designators, hints `f` or a dictionary of string, boolean or integer
/// values) is matched byte by byte; anything else, including every input that is refused, goes
/// to the value parser (`newConnection(fields:)`), so results and errors are those of
/// `PeerLocator(syrup:)` by construction.
struct IntroductionServerLocatorParser {
    private var pinned: [DesignatorKey: PublicIdentity] = [:]
    private var recent: [DesignatorKey: PublicIdentity] = [:]
    let recentCapacity: Int
    let limits: OCapNLimits
    /// The limits the record's bytes were validated under, to build it on the slow path.
    let syrupLimits: SyrupLimits
    /// Records that took the slow path (built as values): for tests of the fast path.
    private(set) var recordsBuilt = 0

    init(recentCapacity: Int, limits: OCapNLimits = .default, syrupLimits: SyrupLimits = .controlMessage) {
        precondition(recentCapacity >= 0, "negative cache capacity")
        self.recentCapacity = recentCapacity
        self.limits = limits
        self.syrupLimits = syrupLimits
    }

    mutating func pin(_ identity: PublicIdentity) { pinned[DesignatorKey(identity)] = identity }
    mutating func unpin(_ identity: PublicIdentity) { pinned[DesignatorKey(identity)] = nil }
    var pinnedCount: Int { pinned.count }

    /// The sender's and the target's keys from a `uds:new-connection` record: canonical Syrup
    /// whose label is that symbol (`ControlStreamReader.nextEncoded()`). Same result and same
    /// errors as building the record and calling `newConnection(fields:)`.
    mutating func newConnection(record: [UInt8]) throws(OCapNError) -> (from: PublicIdentity, to: PublicIdentity) {
        if let parsed = record.withUnsafeBytes({ scanNewConnection($0) }) { return parsed }
        recordsBuilt += 1
        let value: SyrupValue
        do { value = try SyrupDecoder(limits: syrupLimits).decode(record) } catch {
            // Not reached for a record the stream reader validated with the same limits.
            throw OCapNError.malformed("uds:new-connection: \(error.description)")
        }
        guard case let .record(label, fields) = value, label == .symbol(UDSNewConnection.label) else {
            throw OCapNError.malformed("uds:new-connection: not a uds:new-connection record")
        }
        let request = try newConnection(fields: fields)
        return (request.from.identity, request.to.identity)
    }

    /// The two fields of a `uds:new-connection` record as a typed request.
    mutating func newConnection(fields: [SyrupValue]) throws(OCapNError) -> UDSNewConnection {
        guard fields.count == 2 else {
            throw OCapNError.malformed("uds:new-connection: expected 2 fields, got \(fields.count)")
        }
        let from = try locator(fields[0])
        let to = try locator(fields[1])
        return UDSNewConnection(from: from, to: to)
    }

    /// `PeerLocator(syrup:limits:)`, checked field by field in the same order with the same
    /// codes; any designator not in the cache goes through the full parser, whose result then
    /// fills the cache.
    mutating func locator(_ value: SyrupValue) throws(OCapNError) -> PeerLocator {
        guard case let .record(label, fields) = value, label == .symbol(PeerLocator.label), fields.count == 3,
              case let .symbol(transport) = fields[0], transport == PeerLocator.transport,
              case let .string(designator) = fields[1], let identity = cached(designator) else {
            return try fullParse(value)
        }
        switch fields[2] {
        case .bool(false):
            return PeerLocator(identity: identity)
        case let .dictionary(d):
            guard d.count <= limits.maxHints else { return try fullParse(value) }
            var hints: [PublicIdentity: HintValue] = [:]
            hints.reserveCapacity(d.count)
            for (k, v) in d {
                guard case let .string(keyText) = k, let key = cached(keyText), let hint = hintValue(v) else {
                    return try fullParse(value)
                }
                hints[key] = hint
            }
            return PeerLocator(identity: identity, hints: hints)
        default:
            return try fullParse(value)
        }
    }

    private func cached(_ designator: String) -> PublicIdentity? {
        guard let key = DesignatorKey(designator) else { return nil }
        return cached(key)
    }

    private func cached(_ key: DesignatorKey) -> PublicIdentity? {
        pinned[key] ?? recent[key]
    }

    /// A hint value the full parser accepts as is; nil sends the locator to the full parser,
    /// which reports the precise error.
    private func hintValue(_ v: SyrupValue) -> HintValue? {
        switch v {
        case let .string(s): return s.utf8.count <= limits.maxHintValueLength && !s.utf8.contains(0) ? .string(s) : nil
        case let .bool(b): return .bool(b)
        case let .integer(i): return .integer(i)
        default: return nil
        }
    }

    private mutating func fullParse(_ value: SyrupValue) throws(OCapNError) -> PeerLocator {
        let locator = try PeerLocator(syrup: value, limits: limits)
        remember(locator.identity)
        for key in (locator.hints ?? [:]).keys { remember(key) }
        return locator
    }

    private mutating func remember(_ identity: PublicIdentity) {
        guard recentCapacity > 0 else { return }
        let key = DesignatorKey(identity)
        guard pinned[key] == nil, recent[key] == nil else { return }
        if recent.count >= recentCapacity { recent.removeAll(keepingCapacity: true) }
        recent[key] = identity
    }

    // MARK: the byte-level path

    /// `<18'uds:new-connection`, then each locator's fixed opening up to its designator's bytes.
    private static let recordOpening = Array("<18'uds:new-connection".utf8)
    private static let locatorOpening = Array("<10'ocapn-peer18'unix-domain-socket52\"".utf8)
    private static let hintKeyOpening = Array("52\"".utf8)

    /// Both keys when the record has the common shape and every designator in it is cached;
    /// nil for anything else (the value parser then decides, errors included).
    private func scanNewConnection(_ raw: UnsafeRawBufferPointer) -> (from: PublicIdentity, to: PublicIdentity)? {
        var position = 0
        guard Self.match(Self.recordOpening, raw, &position),
              let from = scanLocator(raw, &position),
              let to = scanLocator(raw, &position),
              position + 1 == raw.count, raw[position] == UInt8(ascii: ">") else { return nil }
        return (from, to)
    }

    private func scanLocator(_ raw: UnsafeRawBufferPointer, _ position: inout Int) -> PublicIdentity? {
        guard Self.match(Self.locatorOpening, raw, &position),
              let identity = scanDesignator(raw, &position), position < raw.count else { return nil }
        switch raw[position] {
        case UInt8(ascii: "f"):
            position += 1
        case UInt8(ascii: "{"):
            position += 1
            var entries = 0
            while position < raw.count, raw[position] != UInt8(ascii: "}") {
                entries += 1
                guard entries <= limits.maxHints, Self.match(Self.hintKeyOpening, raw, &position),
                      scanDesignator(raw, &position) != nil, scanHintValue(raw, &position) else { return nil }
            }
            guard position < raw.count else { return nil }
            position += 1
        default:
            return nil
        }
        guard position < raw.count, raw[position] == UInt8(ascii: ">") else { return nil }
        position += 1
        return identity
    }

    /// The cached identity of the 52 designator bytes at `position`.
    private func scanDesignator(_ raw: UnsafeRawBufferPointer, _ position: inout Int) -> PublicIdentity? {
        guard raw.count - position >= DesignatorKey.length,
              let identity = cached(DesignatorKey(raw, at: position)) else { return nil }
        position += DesignatorKey.length
        return identity
    }

    /// A hint value the value parser accepts: `t`, `f`, an integer, or a string within
    /// `maxHintValueLength` bytes without NUL. The bytes are canonical Syrup already checked
    /// by the stream reader, so digits and lengths are well formed.
    private func scanHintValue(_ raw: UnsafeRawBufferPointer, _ position: inout Int) -> Bool {
        guard position < raw.count else { return false }
        let first = raw[position]
        if first == UInt8(ascii: "t") || first == UInt8(ascii: "f") {
            position += 1
            return true
        }
        var length = 0
        var i = position
        while i < raw.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(raw[i]) {
            guard length <= limits.maxHintValueLength else { return false }  // also keeps `length` small
            length = length * 10 + Int(raw[i] - UInt8(ascii: "0"))
            i += 1
        }
        guard i > position, i < raw.count else { return false }
        switch raw[i] {
        case UInt8(ascii: "+"), UInt8(ascii: "-"):
            position = i + 1
            return true
        case UInt8(ascii: "\""):
            let start = i + 1
            guard length <= limits.maxHintValueLength, raw.count - start >= length else { return false }
            for j in start..<(start + length) where raw[j] == 0 { return false }
            position = start + length
            return true
        default:
            return false
        }
    }

    private static func match(_ expected: [UInt8], _ raw: UnsafeRawBufferPointer, _ position: inout Int) -> Bool {
        guard raw.count - position >= expected.count else { return false }
        var i = position
        for byte in expected {
            if raw[i] != byte { return false }
            i += 1
        }
        position = i
        return true
    }
}

/// The 52 bytes of a designator as a fixed-size key: hashed and compared without a String.
struct DesignatorKey: Hashable {
    static let length = PublicIdentity.designatorLength
    // 52 bytes in seven words, the last one's high four bytes zero.
    private var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0
    private var w4: UInt64 = 0, w5: UInt64 = 0, w6: UInt64 = 0

    init(_ raw: UnsafeRawBufferPointer, at offset: Int) {
        precondition(raw.count - offset >= Self.length, "a designator is 52 bytes")
        func word(_ i: Int) -> UInt64 { raw.loadUnaligned(fromByteOffset: offset + 8 * i, as: UInt64.self) }
        w0 = word(0); w1 = word(1); w2 = word(2); w3 = word(3); w4 = word(4); w5 = word(5)
        w6 = UInt64(raw.loadUnaligned(fromByteOffset: offset + 48, as: UInt32.self))
    }

    /// nil unless `text` is 52 bytes of UTF-8 (anything else is no designator).
    init?(_ text: String) {
        guard text.utf8.count == Self.length else { return nil }
        var copy = text
        self = copy.withUTF8 { DesignatorKey(UnsafeRawBufferPointer($0), at: 0) }
    }

    init(_ identity: PublicIdentity) {
        // A PublicIdentity's designator is always 52 base32 characters.
        self.init(identity.designator)!
    }
}
