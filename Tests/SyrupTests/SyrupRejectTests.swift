import Testing
@testable import Syrup

@Suite("The decoder rejects malformed and non-canonical input with a named code")
struct SyrupRejectTests {
    static let cases: [(input: [UInt8], code: SyrupError.Code, offset: Int)] = [
        (ascii(""), .unexpectedEnd, 0),
        (ascii("3:ca"), .unexpectedEnd, 4),
        (ascii("[1+"), .unexpectedEnd, 3),
        ([0x46, 0, 0], .unexpectedEnd, 3),
        (ascii("tt"), .trailingBytes, 1),
        (ascii("t\n"), .trailingBytes, 1),
        (ascii("01+"), .nonCanonical, 0),
        (ascii("00+"), .nonCanonical, 0),
        (ascii("01:a"), .nonCanonical, 0),
        (ascii("[007-]"), .nonCanonical, 1),
        (ascii("0-"), .nonCanonical, 0),
        (ascii("{2'bb1+1'a2+}"), .nonCanonical, 7),
        (ascii("{2+t10+f}"), .nonCanonical, 4),
        (ascii("#2+1+$"), .nonCanonical, 3),
        (ascii("{1'a1+1'a2+}"), .duplicateKey, 6),
        (ascii("#1+1+$"), .duplicateKey, 3),
        (ascii("#[]1+$"), .nonCanonical, 3),
        (ascii("2\"") + [0xC3, 0x28], .invalidUTF8, 2),
        (ascii("2\"") + [0xC0, 0x80], .invalidUTF8, 2),
        (ascii("3'") + [0xED, 0xA0, 0x80], .invalidUTF8, 2),
        (ascii("4\"") + [0xF4, 0x90, 0x80, 0x80], .invalidUTF8, 2),
        (ascii("2\"a") + [0xE2], .invalidUTF8, 3),
        (ascii("9\"abcdefgh") + [0xFF], .invalidUTF8, 10),
        (ascii("x"), .unexpectedByte, 0),
        (ascii(" t"), .unexpectedByte, 0),
        (ascii("]"), .unexpectedByte, 0),
        (ascii("[}"), .unexpectedByte, 1),
        (ascii("{1+}"), .unexpectedByte, 3),
        (ascii("<>"), .unexpectedByte, 1),
        (ascii("12x"), .unexpectedByte, 2),
        (ascii("+"), .unexpectedByte, 0),
        (ascii("99999999999999999999:"), .limitExceeded, 0),
        (ascii("9223372036854775808\""), .limitExceeded, 0),
    ]

    @Test("Each malformed input fails with its code at its offset", arguments: 0..<cases.count)
    func rejects(index: Int) {
        let c = Self.cases[index]
        switch decodeResult(c.input) {
        case .success(let v): Issue.record("accepted \(v)")
        case .failure(let e):
            #expect(e.code == c.code)
            #expect(e.offset == c.offset)
        }
    }

    @Test("Errors that are certain are raised on the prefix that makes them certain, not later")
    func errorsAreRaisedEarly() {
        // Each input is exactly the bytes needed to be sure; decodePrefix must not ask for more.
        let certain: [([UInt8], SyrupError.Code)] = [
            (ascii("00"), .nonCanonical),
            (ascii("0-"), .nonCanonical),
            (ascii("#1'b1'a"), .nonCanonical),
            (ascii("{1'b1+1'a"), .nonCanonical),
            (ascii("{1'a1+1'a"), .duplicateKey),
            (ascii("99999999999999999999:"), .limitExceeded),
            (ascii("[x"), .unexpectedByte),
            (ascii("9\"ab") + [0xFF], .invalidUTF8),
            (ascii("9\"ab") + [0xE0, 0x80], .invalidUTF8),
            (ascii("9\"ab") + [0xE2, 0x82, 0x41], .invalidUTF8),
        ]
        for (input, code) in certain {
            switch prefixResult(input[...]) {
            case .failure(let e): #expect(e.code == code, "\(input)")
            case .success(let s): Issue.record("\(input): got \(s)")
            }
        }
        // Unordered items in a list are fine, so the same bytes there are a valid prefix.
        #expect(prefixResult(ascii("[1'b1'a")[...]) == .success(.needMoreBytes))
        // A multi-byte sequence cut off by the end of the input may still be completed.
        #expect(prefixResult((ascii("9\"ab") + [0xE2, 0x82])[...]) == .success(.needMoreBytes))
        #expect(prefixResult((ascii("9\"ab") + [0xF0, 0x9F, 0x98])[...]) == .success(.needMoreBytes))
    }

    @Test("A 20-digit length prefix fails at once, before any body byte, with either limit set")
    func hugeLengthPrefixFailsFast() {
        for limits in [SyrupLimits.default, .controlMessage] {
            let input = ascii("99999999999999999999:")
            switch prefixResult(input[...], limits: limits) {
            case .failure(let e): #expect(e.code == .limitExceeded)
            case .success(let s): Issue.record("got \(s)")
            }
        }
        // Control limits: the 21st digit is already impossible (neither an integer nor a length).
        switch prefixResult(ascii("999999999999999999999")[...], limits: .controlMessage) {
        case .failure(let e): #expect(e.code == .limitExceeded)
        case .success(let s): Issue.record("got \(s)")
        }
        // A length just above the control limit, with no body: refused without waiting.
        switch prefixResult(ascii("4097:")[...], limits: .controlMessage) {
        case .failure(let e): #expect(e.code == .limitExceeded && e.offset == 0)
        case .success(let s): Issue.record("got \(s)")
        }
        // At the limit with no body: a valid prefix.
        #expect(prefixResult(ascii("4096:")[...], limits: .controlMessage) == .success(.needMoreBytes))
    }

    @Test("Every limit is inclusive: at the limit passes, one past it fails")
    func limitsAreInclusive() {
        func limits(_ change: (inout SyrupLimits) -> Void) -> SyrupLimits {
            var l = SyrupLimits.default
            change(&l)
            return l
        }
        let pairs: [(SyrupLimits, String, String)] = [
            (limits { $0.maxDepth = 2 }, "[[]]", "[[[]]]"),
            (limits { $0.maxDepth = 1 }, "<1'a>", "<1'a<1'a>>"),
            (limits { $0.maxDepth = 0 }, "t", "[]"),
            (limits { $0.maxTotalBytes = 6 }, "[1+2+]", "[1+22+]"),
            (limits { $0.maxBytestringLength = 3 }, "3:abc", "4:abcd"),
            (limits { $0.maxStringLength = 3 }, "3\"abc", "4\"abcd"),
            (limits { $0.maxSymbolLength = 3 }, "3'abc", "4'abcd"),
            (limits { $0.maxCollectionCount = 2 }, "[1+2+]", "[1+2+3+]"),
            (limits { $0.maxCollectionCount = 2 }, "#1+2+$", "#1+2+3+$"),
            (limits { $0.maxCollectionCount = 1 }, "{1+t}", "{1+t2+t}"),
            (limits { $0.maxCollectionCount = 1 }, "<1'at>", "<1'att>"),
            (limits { $0.maxIntegerDigits = 3 }, "999+", "1000+"),
            (limits { $0.maxIntegerDigits = 3 }, "999-", "1000-"),
        ]
        for (l, ok, bad) in pairs {
            if case .failure(let e) = decodeResult(ascii(ok), limits: l) { Issue.record("\(ok) rejected: \(e)") }
            switch decodeResult(ascii(bad), limits: l) {
            case .failure(let e): #expect(e.code == .limitExceeded, "\(bad)")
            case .success: Issue.record("\(bad) accepted")
            }
        }
    }

    @Test("Deep nesting is refused at maxDepth without recursion, even for a megabyte of brackets")
    func deepNestingIsBounded() {
        let input = [UInt8](repeating: 0x5B, count: 1 << 20)
        for limits in [SyrupLimits.default, .controlMessage] {
            switch prefixResult(input[...], limits: limits) {
            case .failure(let e):
                #expect(e.code == .limitExceeded)
                #expect(e.offset == limits.maxDepth)
            case .success(let s): Issue.record("got \(s)")
            }
        }
        // Depth is counted across all container kinds.
        switch prefixResult(ascii("[{#<[")[...], limits: { var l = SyrupLimits.default; l.maxDepth = 4; return l }()) {
        case .failure(let e): #expect(e.code == .limitExceeded && e.offset == 4)
        case .success(let s): Issue.record("got \(s)")
        }
    }

    @Test("A value larger than maxTotalBytes fails once the budget is spent, not at the end")
    func totalBytesBudget() {
        var l = SyrupLimits.controlMessage
        l.maxTotalBytes = 100
        let longList = [UInt8](ascii("[")) + [UInt8](repeating: 0x74, count: 200)
        switch prefixResult(longList[...], limits: l) {
        case .failure(let e): #expect(e.code == .limitExceeded && e.offset == 100)
        case .success(let s): Issue.record("got \(s)")
        }
        // A bytestring header whose body would cross the budget fails before the body arrives.
        switch prefixResult(ascii("[97:")[...], limits: l) {
        case .failure(let e): #expect(e.code == .limitExceeded)
        case .success(let s): Issue.record("got \(s)")
        }
        #expect(prefixResult(ascii("[95:")[...], limits: l) == .success(.needMoreBytes))
    }

    @Test("Error descriptions carry code and offset but never the input's content")
    func errorDescriptionIsContentFree() {
        let secret = "hunter2-secret"
        let input = ascii("\(secret.utf8.count)\"\(secret)") + [0xFF]
        guard case .failure(let e) = decodeResult(input) else { Issue.record("accepted"); return }
        #expect(e.code == .trailingBytes)
        #expect(!e.description.contains(secret))
        let bad = ascii("15\"\(secret)") + [0xFF]
        guard case .failure(let e2) = decodeResult(bad) else { Issue.record("accepted"); return }
        #expect(e2.code == .invalidUTF8)
        #expect(!e2.description.contains(secret))
        #expect(e2.description.contains("invalidUTF8"))
        // Not even the single offending byte is quoted.
        guard case .failure(let e3) = decodeResult(ascii("[Q")) else { Issue.record("accepted"); return }
        #expect(e3.code == .unexpectedByte && e3.offset == 1)
        #expect(!e3.description.contains("Q"))
    }

    @Test("Lengths and digit runs near Int.max fail with limitExceeded even when limits are unbounded")
    func overflowingLengthsAreLimitErrors() {
        let unbounded = SyrupLimits(maxDepth: 8, maxTotalBytes: .max, maxBytestringLength: .max, maxStringLength: .max,
                                    maxSymbolLength: .max, maxCollectionCount: .max, maxIntegerDigits: 40)
        let inputs = [
            "9223372036854775807:",          // Int.max: start + length overflows
            "9223372036854775806\"",         // just below, still past the end of memory
            "9223372036854775808:",          // 2^63: the digits overflow Int
            "999999999999999999999999999999'", // 30 digits
            "[9223372036854775800:",         // nested: the offset pushes it over
        ]
        for text in inputs {
            switch prefixResult(ascii(text)[...], limits: unbounded) {
            case .failure(let e): #expect(e.code == .limitExceeded, "\(text)")
            case .success(let s): Issue.record("\(text): \(s)")
            }
        }
        // An integer of that size is fine, since integers are not lengths.
        #expect(prefixResult(ascii("9223372036854775808+")[...], limits: unbounded)
                == .success(.value(.integer(SyrupInteger(isNegative: false, magnitude: "9223372036854775808")!), consumed: 20)))
        // Length at exactly Int.max - header: still rejected by the budget, never allocated.
        switch prefixResult(ascii("1000000000000:")[...], limits: .default) {
        case .failure(let e): #expect(e.code == .limitExceeded && e.offset == 0)
        case .success(let s): Issue.record("got \(s)")
        }
    }
}
