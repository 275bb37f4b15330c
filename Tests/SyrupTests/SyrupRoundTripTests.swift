import Testing
import TestSupport
@testable import Syrup

@Suite("Syrup values round-trip through their canonical encoding")
struct SyrupRoundTripTests {
    /// Each value with the only bytes it may encode to (from the draft spec where it has examples).
    static let known: [(SyrupValue, String)] = [
        (.bool(true), "t"),
        (.bool(false), "f"),
        (.int(0), "0+"),
        (.int(72), "72+"),
        (.int(-5), "5-"),
        (.int(Int.min), "9223372036854775808-"),
        (.integer(SyrupInteger(isNegative: false, magnitude: "123456789012345678901234567890")!), "123456789012345678901234567890+"),
        (.bytes([]), "0:"),
        (.bytes(ascii("cat")), "3:cat"),
        (.string("bear"), "4\"bear"),
        (.string("björn"), "6\"björn"),
        (.string("熊"), "3\"熊"),
        (.symbol("fetch"), "5'fetch"),
        (.symbol("hämta"), "6'hämta"),
        (.list([.int(1), .int(2), .int(3)]), "[1+2+3+]"),
        (.set([.int(3), .int(2), .int(1)]), "#1+2+3+$"),
        (.dictionary([.bytes(ascii("name")): .bytes(ascii("Alice")), .bytes(ascii("age")): .int(30),
                      .bytes(ascii("isAlive")): .bool(true)]), "{3:age30+4:name5:Alice7:isAlivet}"),
        (.record(label: .bytes(ascii("person")), fields: [.bytes(ascii("Alice")), .int(30), .bool(true)]),
         "<6:person5:Alice30+t>"),
        (.record(label: .symbol("foo"), fields: []), "<3'foo>"),
        (.list([]), "[]"),
        (.dictionary([:]), "{}"),
        (.set([]), "#$"),
    ]

    @Test("Every known value encodes to its canonical bytes and decodes back", arguments: 0..<known.count)
    func knownValueRoundTrips(index: Int) throws {
        let (value, text) = Self.known[index]
        let bytes = ascii(text)
        #expect(SyrupEncoder.encode(value) == bytes)
        #expect(try SyrupDecoder().decode(bytes) == value)
    }

    @Test("Floats and doubles keep their exact bit patterns, including NaN payloads and negative zero")
    func floatBitPatternsRoundTrip() throws {
        let floatBits: [UInt32] = [0x3F80_0000, 0x8000_0000, 0x0000_0000, 0x7FC0_0000, 0x7F80_0001, 0xFFFF_FFFF, 0x0000_0001]
        for bits in floatBits {
            let bytes: [UInt8] = [0x46, UInt8(bits >> 24), UInt8(bits >> 16 & 0xFF), UInt8(bits >> 8 & 0xFF), UInt8(bits & 0xFF)]
            let value = try SyrupDecoder().decode(bytes)
            guard case .float(let f) = value else { Issue.record("not a float"); continue }
            #expect(f.bitPattern == bits)
            #expect(SyrupEncoder.encode(value) == bytes)
            #expect(value == .float(Float(bitPattern: bits)))
        }
        let doubleBits: [UInt64] = [0x4004_0000_0000_0000, 0x8000_0000_0000_0000, 0x7FF8_0000_0000_0001, 0xFFF0_0000_0000_0000]
        for bits in doubleBits {
            var bytes: [UInt8] = [0x44]
            for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(bits >> UInt64(shift) & 0xFF)) }
            let value = try SyrupDecoder().decode(bytes)
            guard case .double(let d) = value else { Issue.record("not a double"); continue }
            #expect(d.bitPattern == bits)
            #expect(SyrupEncoder.encode(value) == bytes)
        }
    }

    @Test("Values compare by encoding: -0.0 differs from 0.0 and a NaN equals itself")
    func equalityFollowsEncoding() {
        #expect(SyrupValue.double(0.0) != .double(-0.0))
        #expect(SyrupValue.float(0.0) != .float(-0.0))
        #expect(SyrupValue.double(.nan) == .double(.nan))
        #expect(SyrupValue.float(1) != .double(1))
        let set: Set<SyrupValue> = [.double(0.0), .double(-0.0), .double(.nan), .double(.nan)]
        #expect(set.count == 3)
        #expect(SyrupEncoder.encode(.set(set)).count == 2 + 3 * 9)
    }

    @Test("Canonically equivalent strings with different UTF-8 bytes stay distinct")
    func stringsCompareByBytes() throws {
        let composed = SyrupValue.string("\u{E9}")
        let decomposed = SyrupValue.string("e\u{301}")
        #expect(composed != decomposed)
        #expect(SyrupValue.symbol("\u{E9}") != .symbol("e\u{301}"))
        let set = SyrupValue.set([composed, decomposed])
        let bytes = SyrupEncoder.encode(set)
        #expect(bytes == ascii("#2\"\u{E9}3\"e\u{301}$"))
        #expect(try SyrupDecoder().decode(bytes) == set)
        #expect(SyrupValue.string("a") != .symbol("a"))
    }

    @Test("Dictionary entries and set elements are written sorted by their encoded bytes")
    func canonicalOrderIsBytewise() {
        let dict = SyrupValue.dictionary([.int(2): .string("two"), .int(10): .string("ten"), .bool(true): .int(0),
                                          .string("a"): .int(1), .list([]): .int(2)])
        #expect(SyrupEncoder.encode(dict) == ascii("{1\"a1+10+3\"ten2+3\"two[]2+t0+}"))
        let set = SyrupValue.set([.symbol("b"), .string("b"), .bytes(ascii("b")), .int(5), .bool(false)])
        #expect(SyrupEncoder.encode(set) == ascii("#1\"b1'b1:b5+f$"))
    }

    @Test("Nested dictionaries inside sets are sorted at every level")
    func nestedCanonicalOrder() throws {
        let inner1 = SyrupValue.dictionary([.symbol("b"): .int(1), .symbol("a"): .int(2)])
        let inner2 = SyrupValue.dictionary([.symbol("a"): .int(1)])
        let value = SyrupValue.set([inner1, inner2])
        let bytes = SyrupEncoder.encode(value)
        #expect(bytes == ascii("#{1'a1+}{1'a2+1'b1+}$"))
        #expect(try SyrupDecoder().decode(bytes) == value)
    }

    @Test("Randomly generated values of every type decode to themselves and re-encode identically")
    func randomValuesRoundTrip() throws {
        var rng = SplitMix64(seed: 0x5EED_0001)
        for _ in 0..<500 {
            let value = RandomValues.make(depth: 4, using: &rng)
            let bytes = SyrupEncoder.encode(value)
            let decoded = try SyrupDecoder().decode(bytes)
            #expect(decoded == value)
            #expect(SyrupEncoder.encode(decoded) == bytes)
        }
    }

    @Test("Encoding appends to an existing buffer without disturbing it")
    func encodeIntoAppends() {
        var out = ascii("xy")
        SyrupEncoder.encode(.set([.int(2), .int(1)]), into: &out)
        #expect(out == ascii("xy#1+2+$"))
    }

    @Test("Accessors return the payload of the matching case and nil for others")
    func accessors() {
        let record = SyrupValue.record(label: .symbol("uds:register"), fields: [.bool(false), .bytes([1])])
        #expect(record.recordFields(label: "uds:register")?.count == 2)
        #expect(record.recordFields(label: "uds:register", count: 3) == nil)
        #expect(record.recordFields(label: "uds:signature") == nil)
        #expect(SyrupValue.record(label: .string("uds:register"), fields: []).recordFields(label: "uds:register") == nil)
        #expect(record.asRecord?.label == .symbol("uds:register"))
        #expect(SyrupValue.int(-7).asInt == -7)
        #expect(SyrupValue.integer(SyrupInteger(isNegative: false, magnitude: "99999999999999999999")!).asInt == nil)
        #expect(SyrupValue.symbol("x").asSymbol == "x")
        #expect(SyrupValue.symbol("x").asString == nil)
        #expect(SyrupValue.string("x").asString == "x")
        #expect(SyrupValue.bytes([9]).asBytes == [9])
        #expect(SyrupValue.bool(true).asBool == true)
        #expect(SyrupValue.list([.bool(true)]).asList == [.bool(true)])
        #expect(SyrupValue.set([.bool(true)]).asSet == [.bool(true)])
        #expect(SyrupValue.dictionary([.int(1): .int(2)]).asDictionary?[.int(1)] == .int(2))
        #expect(SyrupValue.int(1).asList == nil)
    }
}

/// Random values covering every case, with awkward strings and float bit patterns.
enum RandomValues {
    static func make(depth: Int, using rng: inout SplitMix64) -> SyrupValue {
        let kind = Int.random(in: 0..<(depth > 0 ? 11 : 7), using: &rng)
        switch kind {
        case 0: return .bool(Bool.random(using: &rng))
        case 1:
            if Bool.random(using: &rng) { return .int(Int.random(in: Int.min...Int.max, using: &rng)) }
            var digits = String(Int.random(in: 1...9, using: &rng))
            for _ in 0..<Int.random(in: 0..<40, using: &rng) { digits += String(Int.random(in: 0...9, using: &rng)) }
            return .integer(SyrupInteger(isNegative: Bool.random(using: &rng), magnitude: digits)!)
        case 2: return .float(Float(bitPattern: UInt32.random(in: 0...UInt32.max, using: &rng)))
        case 3: return .double(Double(bitPattern: rng.next()))
        case 4: return .bytes((0..<Int.random(in: 0..<20, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        case 5: return .string(text(using: &rng))
        case 6: return .symbol(text(using: &rng))
        case 7: return .list((0..<Int.random(in: 0..<4, using: &rng)).map { _ in make(depth: depth - 1, using: &rng) })
        case 8:
            var d: [SyrupValue: SyrupValue] = [:]
            for _ in 0..<Int.random(in: 0..<4, using: &rng) { d[make(depth: depth - 1, using: &rng)] = make(depth: depth - 1, using: &rng) }
            return .dictionary(d)
        case 9: return .set(Set((0..<Int.random(in: 0..<4, using: &rng)).map { _ in make(depth: depth - 1, using: &rng) }))
        default:
            return .record(label: make(depth: depth - 1, using: &rng),
                           fields: (0..<Int.random(in: 0..<3, using: &rng)).map { _ in make(depth: depth - 1, using: &rng) })
        }
    }

    static func text(using rng: inout SplitMix64) -> String {
        let pieces = ["a", "b", "\u{E9}", "e\u{301}", "熊", "\u{1F600}", "\u{0}", "'", "\"", ":", "+"]
        return (0..<Int.random(in: 0..<5, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined()
    }
}
