import Identity
import Syrup

/// `ocapn-uds/syrup/v1` files (Vectors/syrup.json; notation in Vectors/syrup.md): each case is
/// a value with its canonical hex, or hex that must be rejected with a named `SyrupError` code.
public enum SyrupVectors: FormatVectorKind {
    public static let name = "syrup"
    public static let format = "ocapn-uds/syrup/v1"

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        VectorRunner.eachCase(of: document, checkCase)
    }

    static func checkCase(_ name: String, _ c: [String: Any]) throws -> VectorCaseResult {
        let bytes = try c.hex("hex")
        let decoder = SyrupDecoder(limits: try limits(c["limits"]))
        let decoded = Result { () throws(SyrupError) in try decoder.decode(bytes) }
        if let code = c["error"] as? String {
            guard SyrupError.Code(rawValue: code) != nil else { throw VectorDataError("unknown error code \"\(code)\"") }
            switch decoded {
            case .success: return .failed(name, "accepted input that must be rejected with \(code)")
            case .failure(let e): return .expect(name, e.code.rawValue, code, "error code")
            }
        }
        guard let json = c["value"] else { throw VectorDataError("case has neither \"value\" nor \"error\"") }
        let expected = try value(json)
        let encoded = SyrupEncoder.encode(expected)
        guard encoded == bytes else {
            return .failed(name, "encoding: got \(Hex.encode(encoded)), expected \(Hex.encode(bytes))")
        }
        switch decoded {
        case .failure(let e): return .failed(name, "rejected canonical bytes: \(e.code.rawValue) at \(e.offset)")
        case .success(let v): return v == expected ? .passed(name) : .failed(name, "decoded value differs from the description")
        }
    }

    /// A JSON value description (see Vectors/syrup.md) as a `SyrupValue`.
    static func value(_ json: Any) throws -> SyrupValue {
        guard let o = json as? [String: Any] else { throw VectorDataError("value is not an object") }
        let type = try o.string("type")
        func items(_ key: String) throws -> [SyrupValue] {
            guard let a = o[key] as? [Any] else { throw VectorDataError("\(type) needs array \"\(key)\"") }
            return try a.map(value)
        }
        func bits(_ hexDigits: Int) throws -> UInt64 {
            let h = try o.string("bits")
            guard h.utf8.count == hexDigits, let v = UInt64(h, radix: 16) else {
                throw VectorDataError("\(type) \"bits\" must be \(hexDigits) hex digits")
            }
            return v
        }
        switch type {
        case "bool":
            guard let b = o["value"] as? Bool else { throw VectorDataError("bool needs a boolean \"value\"") }
            return .bool(b)
        case "int":
            let s = try o.string("value")
            let negative = s.hasPrefix("-")
            guard let i = SyrupInteger(isNegative: negative, magnitude: String(s.dropFirst(negative ? 1 : 0))) else {
                throw VectorDataError("int \"value\" is not a canonical decimal")
            }
            return .integer(i)
        case "float": return .float(Float(bitPattern: UInt32(try bits(8))))
        case "double": return .double(Double(bitPattern: try bits(16)))
        case "bytes": return .bytes(try o.hex("hex"))
        case "string": return .string(try o.string("value"))
        case "symbol": return .symbol(try o.string("value"))
        case "list": return .list(try items("items"))
        case "set":
            let elements = try items("items")
            let set = Set(elements)
            guard set.count == elements.count else { throw VectorDataError("set lists an item twice") }
            return .set(set)
        case "dict":
            guard let entries = o["entries"] as? [Any] else { throw VectorDataError("dict needs array \"entries\"") }
            var d: [SyrupValue: SyrupValue] = [:]
            for entry in entries {
                guard let pair = entry as? [Any], pair.count == 2 else { throw VectorDataError("dict entry is not a [key, value] pair") }
                guard d.updateValue(try value(pair[1]), forKey: try value(pair[0])) == nil else {
                    throw VectorDataError("dict lists a key twice")
                }
            }
            return .dictionary(d)
        case "record":
            guard let label = o["label"] else { throw VectorDataError("record needs \"label\"") }
            return .record(label: try value(label), fields: try items("fields"))
        default:
            throw VectorDataError("unknown value type \"\(type)\"")
        }
    }

    /// `SyrupLimits.default` with the fields named in the case's optional "limits" object replaced.
    static func limits(_ json: Any?) throws -> SyrupLimits {
        var l = SyrupLimits.default
        guard let json else { return l }
        guard let o = json as? [String: Any] else { throw VectorDataError("\"limits\" is not an object") }
        for (key, raw) in o {
            guard let n = raw as? Int else { throw VectorDataError("limit \"\(key)\" is not an integer") }
            switch key {
            case "maxDepth": l.maxDepth = n
            case "maxTotalBytes": l.maxTotalBytes = n
            case "maxBytestringLength": l.maxBytestringLength = n
            case "maxStringLength": l.maxStringLength = n
            case "maxSymbolLength": l.maxSymbolLength = n
            case "maxCollectionCount": l.maxCollectionCount = n
            case "maxIntegerDigits": l.maxIntegerDigits = n
            default: throw VectorDataError("unknown limit \"\(key)\"")
            }
        }
        return l
    }
}
