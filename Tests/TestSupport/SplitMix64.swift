/// SplitMix64: the one small deterministic generator of the tests and fuzz oracles, so random
/// tests are reproducible and an oracle's choices (split points) are a function of its input.
public struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// Seeded from the FNV-1a hash of `bytes`.
    public init(hashing bytes: [UInt8]) {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        state = h
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform number in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) / Double(1 << 53) }

    /// `0..<count` cut into consecutive pieces of 1 to `maxPiece` bytes (a third of them at most 8).
    public mutating func pieces(of count: Int, maxPiece: Int) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var at = 0
        while at < count {
            let limit = next() % 3 == 0 ? 8 : maxPiece
            let n = min(count - at, 1 + Int(next() % UInt64(limit)))
            out.append(at..<(at + n))
            at += n
        }
        return out
    }
}
