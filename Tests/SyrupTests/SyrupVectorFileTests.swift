import Foundation
import TestSupport
import Testing
@testable import Syrup

/// Runs Vectors/syrup.json through the Syrup API with an interpreter of its notation that is
/// independent of VectorCheck (which SyrupTests cannot import), as described in Vectors/syrup.md.
@Suite("Vectors/syrup.json known answers")
struct SyrupVectorFileTests {
    struct NotationError: Error, CustomStringConvertible { let description: String }

    static func document() throws -> [String: Any] {
        let data = Data(try RepoFiles.bytes("Vectors/syrup.json"))
        guard let doc = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw NotationError(description: "not a JSON object")
        }
        return doc
    }

    static func value(_ json: Any) throws -> SyrupValue {
        guard let o = json as? [String: Any], let type = o["type"] as? String else { throw NotationError(description: "not a value: \(json)") }
        func items(_ key: String) throws -> [SyrupValue] {
            guard let a = o[key] as? [Any] else { throw NotationError(description: "missing \(key)") }
            return try a.map(value)
        }
        func bits(_ n: Int) throws -> UInt64 {
            guard let h = o["bits"] as? String, h.utf8.count == n * 2, let v = UInt64(h, radix: 16) else { throw NotationError(description: "bad bits") }
            return v
        }
        switch type {
        case "bool":
            guard let b = o["value"] as? Bool else { throw NotationError(description: "bad bool") }
            return .bool(b)
        case "int":
            guard let s = o["value"] as? String else { throw NotationError(description: "bad int") }
            let negative = s.hasPrefix("-")
            guard let i = SyrupInteger(isNegative: negative, magnitude: String(s.dropFirst(negative ? 1 : 0))) else { throw NotationError(description: "bad int \(s)") }
            return .integer(i)
        case "float": return .float(Float(bitPattern: UInt32(try bits(4))))
        case "double": return .double(Double(bitPattern: try bits(8)))
        case "bytes":
            guard let h = o["hex"] as? String else { throw NotationError(description: "bad bytes") }
            return .bytes(TestHex.decode(h))
        case "string", "symbol":
            guard let s = o["value"] as? String else { throw NotationError(description: "bad text") }
            return type == "string" ? .string(s) : .symbol(s)
        case "list": return .list(try items("items"))
        case "set":
            let elements = try items("items")
            let set = Set(elements)
            guard set.count == elements.count else { throw NotationError(description: "duplicate set items") }
            return .set(set)
        case "dict":
            guard let entries = o["entries"] as? [[Any]] else { throw NotationError(description: "bad entries") }
            var d: [SyrupValue: SyrupValue] = [:]
            for e in entries {
                guard e.count == 2 else { throw NotationError(description: "entry is not a pair") }
                guard d.updateValue(try value(e[1]), forKey: try value(e[0])) == nil else { throw NotationError(description: "duplicate key") }
            }
            return .dictionary(d)
        case "record":
            guard let label = o["label"] else { throw NotationError(description: "no label") }
            return .record(label: try value(label), fields: try items("fields"))
        default:
            throw NotationError(description: "unknown type \(type)")
        }
    }

    static func limits(_ json: Any?) throws -> SyrupLimits {
        var l = SyrupLimits.default
        guard let json else { return l }
        guard let o = json as? [String: Any] else { throw NotationError(description: "bad limits") }
        for (key, raw) in o {
            guard let n = raw as? Int else { throw NotationError(description: "bad limit \(key)") }
            switch key {
            case "maxDepth": l.maxDepth = n
            case "maxTotalBytes": l.maxTotalBytes = n
            case "maxBytestringLength": l.maxBytestringLength = n
            case "maxStringLength": l.maxStringLength = n
            case "maxSymbolLength": l.maxSymbolLength = n
            case "maxCollectionCount": l.maxCollectionCount = n
            case "maxIntegerDigits": l.maxIntegerDigits = n
            default: throw NotationError(description: "unknown limit \(key)")
            }
        }
        return l
    }

    @Test("The file declares its format and has value and must-reject cases")
    func fileShape() throws {
        let doc = try Self.document()
        #expect(doc["format"] as? String == "ocapn-uds/syrup/v1")
        let cases = try #require(doc["cases"] as? [[String: Any]])
        #expect(cases.filter { $0["error"] != nil }.count >= 30)
        #expect(cases.filter { $0["value"] != nil }.count >= 40)
        let names = cases.compactMap { $0["name"] as? String }
        #expect(Set(names).count == cases.count, "case names are unique")
        // Every error code the decoder can produce is exercised by some case.
        let codes = Set(cases.compactMap { $0["error"] as? String })
        #expect(codes == Set(SyrupError.Code.allCases.map(\.rawValue)))
    }

    @Test("Every case passes: values decode and encode exactly, rejects fail with their code")
    func allCasesPass() throws {
        let cases = try #require(try Self.document()["cases"] as? [[String: Any]])
        for c in cases {
            let name = c["name"] as? String ?? "?"
            let bytes = TestHex.decode(try #require(c["hex"] as? String, "\(name)"))
            let decoder = SyrupDecoder(limits: try Self.limits(c["limits"]))
            if let code = c["error"] as? String {
                switch decodeResult(bytes, limits: decoder.limits) {
                case .success(let v): Issue.record("\(name): accepted as \(v)")
                case .failure(let e): #expect(e.code.rawValue == code, "\(name)")
                }
            } else {
                let expected = try Self.value(try #require(c["value"], "\(name)"))
                #expect(SyrupEncoder.encode(expected) == bytes, "\(name): encoding")
                switch decodeResult(bytes, limits: decoder.limits) {
                case .success(let v): #expect(v == expected, "\(name): decoded value")
                case .failure(let e): Issue.record("\(name): rejected with \(e)")
                }
            }
        }
    }
}
