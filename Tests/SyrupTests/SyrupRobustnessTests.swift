import Testing
import TestSupport
@testable import Syrup

/// Fuzz-style property tests with a fixed seed: every input gives a value or a `SyrupError`
/// (typed throws rule out anything else; a trap would kill the test run), every accepted input
/// re-encodes to itself, and feeding byte by byte agrees with feeding the whole.
@Suite("Random input never crashes the decoder and accepted input is canonical")
struct SyrupRobustnessTests {
    /// Syrup's structural bytes, weighted so random inputs often get deep into the grammar.
    static let alphabet: [UInt8] = Array("0123456789+-:\"'[]{}#$<>tfFDx \u{7F}".utf8) + [0x00, 0xC3, 0xA9, 0xFF, 0xE2, 0x82]

    static func randomInput(using rng: inout SplitMix64, seeds: [[UInt8]]) -> [UInt8] {
        switch Int.random(in: 0..<4, using: &rng) {
        case 0:
            return (0..<Int.random(in: 0..<48, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 1:
            return (0..<Int.random(in: 0..<48, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }
        default:
            // Mutate a valid encoding: flip, insert, delete or truncate a few bytes.
            var bytes = seeds.randomElement(using: &rng)!
            for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: bytes[i] = alphabet.randomElement(using: &rng)!
                case 1: bytes.insert(alphabet.randomElement(using: &rng)!, at: i)
                case 2: bytes.remove(at: i)
                default: bytes.removeSubrange(i...)
                }
            }
            return bytes
        }
    }

    @Test("Thousands of random inputs, whole and byte by byte, give a value or a SyrupError consistently")
    func randomInputs() throws {
        var rng = SplitMix64(seed: 0xDEC0DE)
        var seeds: [[UInt8]] = (0..<200).map { _ in SyrupEncoder.encode(RandomValues.make(depth: 3, using: &rng)) }
        seeds.append(try RepoFiles.bytes("Vectors/external/syrup/zoo.bin"))
        var limits = SyrupLimits.controlMessage
        limits.maxDepth = 6
        limits.maxCollectionCount = 8
        var accepted = 0, rejected = 0
        for round in 0..<4000 {
            let input = Self.randomInput(using: &rng, seeds: seeds)
            let useLimits = round % 2 == 0 ? SyrupLimits.default : limits
            let whole = prefixResult(input[...], limits: useLimits)
            if case .success(.value(let value, let consumed)) = whole {
                #expect(SyrupEncoder.encode(value) == Array(input[..<consumed]), "accepted non-canonical \(input)")
                accepted += 1
            } else if case .failure = whole {
                rejected += 1
            }
            checkPrefixConsistency(input, whole: whole, limits: useLimits)
            checkStreamAgrees(input, whole: whole, limits: useLimits)
        }
        // The generator must exercise both outcomes, or the test proves little.
        #expect(accepted > 300)
        #expect(rejected > 300)
    }

    /// Growing the input never turns a value or an error into something else, and never
    /// answers needMoreBytes after the whole input has given a definite answer at a shorter length.
    func checkPrefixConsistency(_ input: [UInt8], whole: Result<SyrupDecodeStep, SyrupError>, limits: SyrupLimits) {
        var settled: Result<SyrupDecodeStep, SyrupError>?
        for n in 0...input.count {
            let step = prefixResult(input[..<n], limits: limits)
            if let settled {
                switch (settled, step) {
                case (.success(let a), .success(let b)): #expect(a == b, "value changed with more bytes: \(input)")
                case (.failure(let a), .failure(let b)): #expect(a.code == b.code, "error changed with more bytes: \(input)")
                default: Issue.record("outcome flipped with more bytes: \(input)")
                }
            } else if step != .success(.needMoreBytes) {
                settled = step
            }
        }
        if let settled {
            switch (settled, whole) {
            case (.success(let a), .success(let b)): #expect(a == b)
            case (.failure(let a), .failure(let b)): #expect(a.code == b.code)
            default: Issue.record("prefix and whole disagree: \(input)")
            }
        } else {
            #expect(whole == .success(.needMoreBytes))
        }
    }

    /// Byte-at-a-time through the stream decoder gives the first value or error of the whole.
    func checkStreamAgrees(_ input: [UInt8], whole: Result<SyrupDecodeStep, SyrupError>, limits: SyrupLimits) {
        var reader = SyrupStreamDecoder(limits: limits)
        var outcome: Result<SyrupValue, SyrupError>?
        for byte in input where outcome == nil {
            reader.append([byte])
            do {
                if let value = try reader.next() { outcome = .success(value) }
            } catch {
                outcome = .failure(error)
            }
        }
        switch (outcome, whole) {
        case (nil, .success(.needMoreBytes)): break
        case (.success(let v), .success(.value(let w, let consumed))):
            #expect(v == w)
            #expect(reader.streamOffset == consumed)
        case (.failure(let e), .failure(let f)): #expect(e == f, "stream and whole errors differ: \(input)")
        default: Issue.record("stream and whole disagree on \(input): \(String(describing: outcome)) vs \(whole)")
        }
    }

    @Test("Random byte soup of a few kilobytes decodes or fails without trapping")
    func largeRandomBuffers() {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<300 {
            let input = (0..<Int.random(in: 0..<4096, using: &rng)).map { _ in Self.alphabet.randomElement(using: &rng)! }
            if case .success(let value) = decodeResult(input) {
                #expect(SyrupEncoder.encode(value) == input)
            }
        }
    }
}
