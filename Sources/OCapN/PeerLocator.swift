import Identity
import Syrup

/// The value of one hint entry. Readers ignore it (only the key names an introduction server),
/// but keep it so a re-serialised locator is byte-identical to the one received.
public enum HintValue: Hashable, Sendable {
    /// Goblins' first server (`1"t`) and every value parsed from a URI.
    case string(String)
    /// Goblins' later servers (`t`).
    case bool(Bool)
    /// The draft spec's value (`1+`).
    case integer(SyrupInteger)

    /// What we emit for every server: the string `"t"`, Goblins' form for its first server.
    /// (Goblins' boolean for later servers makes its own URI printer throw, wire §3.)
    public static let emitted = HintValue.string("t")

    var syrupValue: SyrupValue {
        switch self {
        case let .string(s): return .string(s)
        case let .bool(b): return .bool(b)
        case let .integer(i): return .integer(i)
        }
    }
}

/// An OCapN peer locator for the `unix-domain-socket` transport:
/// `<ocapn-peer unix-domain-socket "<designator>" hints>` (ocapn-uds-wire.md §3).
///
/// `==` compares everything, hints included (exact values); route and identify peers with
/// `routingKey` / `isSamePeer(as:)`, which compare transport and key bytes only, as Goblins'
/// `same-peer-location?` and Locators.md require.
public struct PeerLocator: Equatable, Sendable, CustomStringConvertible {
    public static let label = "ocapn-peer"
    public static let transport = "unix-domain-socket"

    /// The peer's identity; its designator is the locator's designator.
    public var identity: PublicIdentity
    /// Introduction servers by their identity. `nil` is `f` on the wire (no server yet; the form
    /// `uds:register` uses); an empty dictionary is `{}`.
    public var hints: [PublicIdentity: HintValue]?

    public init(identity: PublicIdentity, hints: [PublicIdentity: HintValue]? = nil) {
        self.identity = identity
        self.hints = hints
    }

    /// A locator advertising `servers`, each with the value `"t"` (`HintValue.emitted`); no
    /// servers gives hints `f`. The dictionary is unordered: Syrup sorts it canonically and the
    /// URI lists hints sorted by designator, so the output never depends on the order given.
    public init(identity: PublicIdentity, introductionServers servers: [PublicIdentity]) {
        self.identity = identity
        if servers.isEmpty {
            hints = nil
        } else {
            var h: [PublicIdentity: HintValue] = [:]
            for s in servers { h[s] = .emitted }
            hints = h
        }
    }

    public var designator: String { identity.designator }

    /// What routing tables key on: the transport is fixed by this type, so the key alone.
    public var routingKey: PublicIdentity { identity }

    /// Same transport and same key bytes; hints ignored.
    public func isSamePeer(as other: PeerLocator) -> Bool { identity == other.identity }

    /// This locator with hints `f`.
    public var withoutHints: PeerLocator { PeerLocator(identity: identity) }

    /// Hint keys sorted by designator (the order of both the Syrup and the URI encoding).
    public var hintServers: [PublicIdentity] {
        (hints ?? [:]).keys.sorted { $0.designator < $1.designator }
    }

    public var description: String { uri }

    // MARK: Syrup

    public var syrupValue: SyrupValue {
        let hintsValue: SyrupValue
        if let hints {
            var d: [SyrupValue: SyrupValue] = [:]
            for (k, v) in hints { d[.string(k.designator)] = v.syrupValue }
            hintsValue = .dictionary(d)
        } else {
            hintsValue = .bool(false)
        }
        return .record(label: .symbol(Self.label), fields: [.symbol(Self.transport), .string(designator), hintsValue])
    }

    /// Parses a locator strictly: label `ocapn-peer` (symbol), three fields, transport symbol
    /// `unix-domain-socket` (`wrongTransport` for another symbol), a canonical designator string
    /// (`invalidDesignator`), hints `f` or a dictionary keyed by canonical designator strings with
    /// string, boolean or integer values (`invalidHint`), at most `limits.maxHints` entries.
    public init(syrup value: SyrupValue, limits: OCapNLimits = .default) throws(OCapNError) {
        guard case let .record(label, fields) = value else {
            throw OCapNError.malformed("locator: expected an ocapn-peer record, got \(value.kindName)")
        }
        guard label == .symbol(Self.label) else {
            throw OCapNError.malformed("locator: record label is not the symbol 'ocapn-peer'")
        }
        guard fields.count == 3 else {
            throw OCapNError.malformed("locator: expected 3 fields (transport, designator, hints), got \(fields.count)")
        }
        guard case let .symbol(transport) = fields[0] else {
            throw OCapNError.malformed("locator: transport must be a symbol, got \(fields[0].kindName)")
        }
        guard transport == Self.transport else {
            throw OCapNError(.wrongTransport, "locator: transport is not '\(Self.transport)'")
        }
        guard case let .string(designator) = fields[1] else {
            throw OCapNError.malformed("locator: designator must be a string, got \(fields[1].kindName)")
        }
        identity = try Self.parseDesignator(designator, .invalidDesignator, "locator designator")
        switch fields[2] {
        case .bool(false):
            hints = nil
        case let .dictionary(d):
            guard d.count <= limits.maxHints else {
                throw OCapNError(.limitExceeded, "locator: \(d.count) hints (limit \(limits.maxHints))")
            }
            var h: [PublicIdentity: HintValue] = [:]
            for (k, v) in d {
                guard case let .string(keyText) = k else {
                    throw OCapNError(.invalidHint, "locator: a hint key must be a designator string, got \(k.kindName)")
                }
                let key = try Self.parseDesignator(keyText, .invalidHint, "hint key")
                h[key] = try Self.hintValue(v, limits: limits)
            }
            hints = h
        default:
            throw OCapNError.malformed("locator: hints must be a dictionary or false, got \(fields[2].kindName)")
        }
    }

    static func parseDesignator(_ text: String, _ code: OCapNError.Code, _ what: String) throws(OCapNError) -> PublicIdentity {
        do { return try PublicIdentity(designator: text) } catch {
            // The detail comes from Identity and never echoes more than the offending character.
            throw OCapNError(code, "\(what): \(error.detail)")
        }
    }

    private static func hintValue(_ v: SyrupValue, limits: OCapNLimits) throws(OCapNError) -> HintValue {
        switch v {
        case let .string(s):
            guard s.utf8.count <= limits.maxHintValueLength else {
                throw OCapNError(.limitExceeded, "hint value of \(s.utf8.count) bytes (limit \(limits.maxHintValueLength))")
            }
            // D5: a NUL would cut the value short wherever it meets C (paths, logs).
            guard !s.utf8.contains(0) else { throw OCapNError(.invalidHint, "a hint value contains NUL") }
            return .string(s)
        case let .bool(b): return .bool(b)
        case let .integer(i): return .integer(i)
        default:
            throw OCapNError(.invalidHint, "a hint value must be a string, boolean or integer, got \(v.kindName)")
        }
    }
}
