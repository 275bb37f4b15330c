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
/// not yet registered), cleared when full so garbage cannot grow it.
struct IntroductionServerLocatorParser {
    private var pinned: [String: PublicIdentity] = [:]
    private var recent: [String: PublicIdentity] = [:]
    let recentCapacity: Int
    let limits: OCapNLimits

    init(recentCapacity: Int, limits: OCapNLimits = .default) {
        precondition(recentCapacity >= 0, "negative cache capacity")
        self.recentCapacity = recentCapacity
        self.limits = limits
    }

    mutating func pin(_ identity: PublicIdentity) { pinned[identity.designator] = identity }
    mutating func unpin(_ identity: PublicIdentity) { pinned[identity.designator] = nil }
    var pinnedCount: Int { pinned.count }

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
        pinned[designator] ?? recent[designator]
    }

    /// A hint value the full parser accepts as is; nil sends the locator to the full parser,
    /// which reports the precise error.
    private func hintValue(_ v: SyrupValue) -> HintValue? {
        switch v {
        case let .string(s): return s.utf8.count <= limits.maxHintValueLength ? .string(s) : nil
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
        let designator = identity.designator
        guard pinned[designator] == nil, recent[designator] == nil else { return }
        if recent.count >= recentCapacity { recent.removeAll(keepingCapacity: true) }
        recent[designator] = identity
    }
}
