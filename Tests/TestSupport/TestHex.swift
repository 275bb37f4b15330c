import Identity

/// Hex for literals in tests: Identity's `Hex` (the package's one codec), trapping on a bad
/// literal because a bad literal is a bug in the test.
public enum TestHex {
    public static func decode(_ text: String) -> [UInt8] {
        guard let bytes = Hex.decode(text, allowUppercase: true) else { preconditionFailure("bad hex literal in a test") }
        return bytes
    }

    public static func encode(_ bytes: [UInt8]) -> String { Hex.encode(bytes) }
}
