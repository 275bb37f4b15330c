import Identity

// The URI form of a locator (Goblins `ocapn-id->uri`, ocapn-uds-wire.md §3):
//
//     ocapn://<designator>.unix-domain-socket[?<server designator>=<value>&…]
//
// Emitting: hints sorted by designator (the same order as the canonical Syrup dictionary), so the
// text never depends on dictionary order; keys raw (designators need no escaping); values
// percent-encoded except RFC 3986 unreserved characters, with uppercase hex. A boolean value is
// written `t`/`f` and an integer in decimal: the value carries no meaning, and Goblins' own
// printer throws on booleans. Parsing gives every value as a string, so a locator with
// non-string values does not survive a URI round trip byte for byte; routing is unaffected.

extension PeerLocator {
    public static let uriScheme = "ocapn://"

    /// The locator as an `ocapn://` URI (without a query when hints are `f` or empty).
    public var uri: String {
        var out = Self.uriScheme + designator + "." + Self.transport
        let servers = hintServers
        if !servers.isEmpty, let hints {
            out += "?"
            out += servers.map { key in
                let text: String
                switch hints[key]! {
                case let .string(s): text = Self.percentEncode(s)
                case let .bool(b): text = b ? "t" : "f"
                case let .integer(i): text = i.description
                }
                return key.designator + "=" + text
            }.joined(separator: "&")
        }
        return out
    }

    /// Parses a URI strictly. Refused: another scheme (or spelling), userinfo, a port, a path, a
    /// fragment, another transport (`wrongTransport`), a non-canonical designator
    /// (`invalidDesignator`) or hint key (`invalidHint`), an empty query or pair, a pair without
    /// `=`, a duplicate key, a bad percent escape, non-ASCII or control characters, a value that is
    /// not UTF-8 once decoded (`invalidURI`), and anything over `limits` (`limitExceeded`).
    /// Hint values become strings; no query gives hints `f`.
    public init(uri: String, limits: OCapNLimits = .default) throws(OCapNError) {
        let u = Array(uri.utf8)
        guard u.count <= limits.maxURILength else {
            throw OCapNError(.limitExceeded, "URI of \(u.count) bytes (limit \(limits.maxURILength))")
        }
        let scheme = Array(Self.uriScheme.utf8)
        guard u.count >= scheme.count, Array(u[0..<scheme.count]) == scheme else {
            throw OCapNError(.invalidURI, "URI must start with '\(Self.uriScheme)' (lowercase)")
        }
        for b in u where b <= 0x20 || b >= 0x7f {
            throw OCapNError(.invalidURI, "URI holds a space, control or non-ASCII byte (0x\(String(b, radix: 16)))")
        }
        if u.contains(UInt8(ascii: "#")) { throw OCapNError(.invalidURI, "URI has a fragment") }
        let rest = u[scheme.count...]
        let queryStart = rest.firstIndex(of: UInt8(ascii: "?"))
        let authority = rest[..<(queryStart ?? rest.endIndex)]
        if authority.contains(UInt8(ascii: "/")) { throw OCapNError(.invalidURI, "URI has a path") }
        if authority.contains(UInt8(ascii: "@")) { throw OCapNError(.invalidURI, "URI has userinfo") }
        if authority.contains(UInt8(ascii: ":")) { throw OCapNError(.invalidURI, "URI has a port") }
        guard let dot = authority.firstIndex(of: UInt8(ascii: ".")) else {
            throw OCapNError(.invalidURI, "URI host must be <designator>.<transport>")
        }
        let designatorText = String(decoding: authority[..<dot], as: UTF8.self)
        let transportText = String(decoding: authority[(dot + 1)...], as: UTF8.self)
        guard !designatorText.isEmpty, !transportText.isEmpty else {
            throw OCapNError(.invalidURI, "URI host must be <designator>.<transport>")
        }
        guard transportText == Self.transport else {
            throw OCapNError(.wrongTransport, "URI transport is not '\(Self.transport)'")
        }
        identity = try Self.parseDesignator(designatorText, .invalidDesignator, "URI designator")
        guard let queryStart else {
            hints = nil
            return
        }
        let query = rest[(queryStart + 1)...]
        guard !query.isEmpty else { throw OCapNError(.invalidURI, "URI has an empty query") }
        let pairs = query.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: false)
        guard pairs.count <= limits.maxHints else {
            throw OCapNError(.limitExceeded, "URI has \(pairs.count) hints (limit \(limits.maxHints))")
        }
        var h: [PublicIdentity: HintValue] = [:]
        for pair in pairs {
            guard let eq = pair.firstIndex(of: UInt8(ascii: "=")) else {
                throw OCapNError(.invalidURI, "URI hint without '='")
            }
            let keyText = String(decoding: pair[..<eq], as: UTF8.self)
            let key = try Self.parseDesignator(keyText, .invalidHint, "URI hint key")
            guard h[key] == nil else { throw OCapNError(.invalidURI, "URI repeats hint key \(keyText)") }
            let value = try Self.percentDecode(pair[(eq + 1)...], limits: limits)
            guard !value.utf8.contains(0) else { throw OCapNError(.invalidHint, "URI hint value contains NUL (%00)") }
            h[key] = .string(value)
        }
        hints = h
    }

    private static func isUnreserved(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
             UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    /// Raw characters allowed in a value: RFC 3986 query characters except the `&` and `=`
    /// that delimit pairs.
    private static func isRawValueByte(_ b: UInt8) -> Bool {
        if isUnreserved(b) { return true }
        return Array("!$'()*+,;:@/?".utf8).contains(b)
    }

    static func percentEncode(_ s: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for b in s.utf8 {
            if isUnreserved(b) {
                out.append(b)
            } else {
                out += [UInt8(ascii: "%"), hex[Int(b >> 4)], hex[Int(b & 0x0f)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func percentDecode(_ text: ArraySlice<UInt8>, limits: OCapNLimits) throws(OCapNError) -> String {
        var out: [UInt8] = []
        var i = text.startIndex
        while i < text.endIndex {
            let b = text[i]
            if b == UInt8(ascii: "%") {
                guard text.endIndex - i >= 3,
                      let hi = Hex.value(ofDigit: text[i + 1], allowUppercase: true), let lo = Hex.value(ofDigit: text[i + 2], allowUppercase: true) else {
                    throw OCapNError(.invalidURI, "URI hint value has a bad percent escape")
                }
                out.append(hi << 4 | lo)
                i += 3
            } else {
                guard isRawValueByte(b) else {
                    throw OCapNError(.invalidURI, "URI hint value holds '\(Character(Unicode.Scalar(b)))' unescaped")
                }
                out.append(b)
                i += 1
            }
            guard out.count <= limits.maxHintValueLength else {
                throw OCapNError(.limitExceeded, "URI hint value over \(limits.maxHintValueLength) bytes")
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else {
            throw OCapNError(.invalidURI, "URI hint value is not UTF-8 once decoded")
        }
        return s
    }
}
