// The invariant of the FuzzSyrupDecode fuzz target (docs/FUZZING.md). This one file is compiled
// twice: here, so the regression tests replay crashers through it on any machine, and in the
// fuzz package through the TestSupport product (Fuzz/Sources/FuzzSyrupDecode/), so fuzzer and tests judge an
// input by the same code. It uses only Syrup's public API and no test framework.
import Syrup

/// Checks one input against the canonical-codec contract under the control-message and the
/// default limits. Returns the violations found (empty: the input is handled correctly); a
/// crash or hang inside the decoder is a violation the caller sees directly.
public enum SyrupFuzzOracle {
    static let limitSets: [(name: String, limits: SyrupLimits)] = [
        ("controlMessage", .controlMessage), ("default", .default),
    ]

    public static func violations(_ input: [UInt8]) -> [String] {
        var out: [String] = []
        for set in limitSets {
            checkWhole(input, set.limits, set.name, &out)
            checkStream(input, set.limits, set.name, &out)
        }
        return out
    }

    /// `decode` and `decodePrefix` agree, and whatever is accepted re-encodes to its own bytes.
    static func checkWhole(_ input: [UInt8], _ limits: SyrupLimits, _ name: String, _ out: inout [String]) {
        let decoder = SyrupDecoder(limits: limits)
        let whole = Result { () throws(SyrupError) in try decoder.decode(input) }
        let prefix = Result { () throws(SyrupError) in try decoder.decodePrefix(input) }
        switch (whole, prefix) {
        case (.success(let value), .success(.value(let v2, let consumed))):
            if consumed != input.count || v2 != value {
                out.append("\(name): decodePrefix consumed \(consumed) of \(input.count) or gave another value than decode")
            }
            checkAccepted(value, input[...], limits, name, &out)
        case (.failure(let e), .success(.needMoreBytes)) where e.code == .unexpectedEnd:
            break
        case (.failure(let e), .success(.value(let v, let consumed))) where e.code == .trailingBytes:
            if consumed != e.offset || consumed >= input.count {
                out.append("\(name): trailingBytes at \(e.offset) but decodePrefix consumed \(consumed)")
            } else if (try? decoder.decode(Array(input[..<consumed]))) != v {
                out.append("\(name): the prefix decodePrefix accepted does not decode alone to the same value")
            } else {
                checkAccepted(v, input[..<consumed], limits, name, &out)
            }
        case (.failure(let e), .failure(let e2)):
            if e.code == .unexpectedEnd || e.code == .trailingBytes {
                out.append("\(name): decode said \(e.code) but decodePrefix threw \(e2)")
            } else if e.code != e2.code || e.offset != e2.offset {
                out.append("\(name): decode threw \(e) but decodePrefix threw \(e2)")
            }
        case (.success, _), (.failure, _):
            out.append("\(name): decode gave \(whole) but decodePrefix gave \(prefix)")
        }
    }

    /// An accepted value is canonical (encodes to exactly the bytes it came from) and within
    /// every limit (reliability catalog D1–D4).
    public static func checkAccepted(_ value: SyrupValue, _ bytes: ArraySlice<UInt8>, _ limits: SyrupLimits, _ name: String, _ out: inout [String]) {
        if !SyrupEncoder.encode(value).elementsEqual(bytes) {
            out.append("\(name): accepted a non-canonical encoding (re-encoding differs)")
        }
        if bytes.count > limits.maxTotalBytes {
            out.append("\(name): accepted \(bytes.count) bytes over maxTotalBytes")
        }
        if let broken = limitViolation(value, limits, depth: 0) {
            out.append("\(name): accepted a value over a limit: \(broken)")
        }
    }

    /// The first limit `value` breaks, or nil. Recursion is bounded by the depth check itself.
    public static func limitViolation(_ value: SyrupValue, _ limits: SyrupLimits, depth: Int) -> String? {
        func children(_ items: some Collection<SyrupValue>, count: Int) -> String? {
            if depth + 1 > limits.maxDepth { return "depth \(depth + 1)" }
            if count > limits.maxCollectionCount { return "\(count) items" }
            for item in items {
                if let v = limitViolation(item, limits, depth: depth + 1) { return v }
            }
            return nil
        }
        switch value {
        case .bool, .float, .double: return nil
        case .integer(let i): return i.magnitude.utf8.count > limits.maxIntegerDigits ? "\(i.magnitude.utf8.count) digits" : nil
        case .bytes(let b): return b.count > limits.maxBytestringLength ? "bytestring of \(b.count)" : nil
        case .string(let s): return s.utf8.count > limits.maxStringLength ? "string of \(s.utf8.count)" : nil
        case .symbol(let s): return s.utf8.count > limits.maxSymbolLength ? "symbol of \(s.utf8.count)" : nil
        case .list(let items): return children(items, count: items.count)
        case .set(let items): return children(Array(items), count: items.count)
        case .dictionary(let d): return children(Array(d.keys) + Array(d.values), count: d.count)
        case .record(let label, let fields): return children([label] + fields, count: fields.count)
        }
    }

    /// The stream decoder fed in pseudo-random pieces (split points derived from the input, so a
    /// replay is exact) yields the same values, error and leftover as `decodePrefix` applied
    /// value after value to the whole input.
    static func checkStream(_ input: [UInt8], _ limits: SyrupLimits, _ name: String, _ out: inout [String]) {
        // Expected: back-to-back values from the whole buffer.
        var expectedValues: [SyrupValue] = []
        var expectedError: SyrupError?
        var offset = 0
        let decoder = SyrupDecoder(limits: limits)
        scanning: while offset < input.count {
            do throws(SyrupError) {
                switch try decoder.decodePrefix(input[offset...]) {
                case .needMoreBytes: break scanning
                case .value(let v, let consumed):
                    if consumed <= 0 {
                        out.append("\(name): decodePrefix consumed \(consumed) bytes for a value")
                        return
                    }
                    expectedValues.append(v)
                    offset += consumed
                }
            } catch {
                expectedError = SyrupError(error.code, offset: offset + error.offset, error.detail)
                break scanning
            }
        }

        var stream = SyrupStreamDecoder(limits: limits)
        var got: [SyrupValue] = []
        var gotError: SyrupError?
        var rng = SplitMix64(hashing: input)
        var fed = 0
        feeding: while fed < input.count {
            let piece = min(input.count - fed, 1 + Int(rng.next() % UInt64(rng.next() % 2 == 0 ? 4 : 97)))
            stream.append(Array(input[fed..<(fed + piece)]))
            fed += piece
            do throws(SyrupError) {
                while let v = try stream.next() { got.append(v) }
            } catch {
                gotError = error
                break feeding
            }
        }
        if got != expectedValues {
            out.append("\(name): stream decoder gave \(got.count) values, decodePrefix \(expectedValues.count) (or they differ)")
        }
        switch (gotError, expectedError) {
        case (nil, nil):
            if stream.bufferedCount != input.count - offset {
                out.append("\(name): stream decoder holds \(stream.bufferedCount) bytes, expected \(input.count - offset)")
            }
        case (let g?, let e?):
            if g.code != e.code || g.offset != e.offset {
                out.append("\(name): stream decoder threw \(g), decodePrefix \(e)")
            }
        case (let g, let e):
            out.append("\(name): stream decoder error \(String(describing: g)), decodePrefix error \(String(describing: e))")
        }
    }
}
