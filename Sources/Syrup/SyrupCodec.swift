// API contract shared by the layers above. The Syrup work item replaces these bodies.

/// Named limits, each checked before any allocation.
public struct SyrupLimits: Sendable, Equatable {
    public var maxDepth: Int
    public var maxTotalBytes: Int
    public var maxBytestringLength: Int
    public var maxStringLength: Int
    public var maxSymbolLength: Int
    public var maxCollectionCount: Int
    public var maxIntegerDigits: Int

    public init(maxDepth: Int, maxTotalBytes: Int, maxBytestringLength: Int, maxStringLength: Int,
                maxSymbolLength: Int, maxCollectionCount: Int, maxIntegerDigits: Int) {
        self.maxDepth = maxDepth
        self.maxTotalBytes = maxTotalBytes
        self.maxBytestringLength = maxBytestringLength
        self.maxStringLength = maxStringLength
        self.maxSymbolLength = maxSymbolLength
        self.maxCollectionCount = maxCollectionCount
        self.maxIntegerDigits = maxIntegerDigits
    }

    /// General-purpose defaults (1 MiB values, depth 64).
    public static let `default` = SyrupLimits(
        maxDepth: 64, maxTotalBytes: 1 << 20, maxBytestringLength: 1 << 20, maxStringLength: 1 << 20,
        maxSymbolLength: 1 << 10, maxCollectionCount: 1 << 16, maxIntegerDigits: 1 << 10)

    /// Introduction-server control messages (reliability catalog §4: 16 KiB, depth 16).
    public static let controlMessage = SyrupLimits(
        maxDepth: 16, maxTotalBytes: 16 << 10, maxBytestringLength: 4 << 10, maxStringLength: 4 << 10,
        maxSymbolLength: 256, maxCollectionCount: 256, maxIntegerDigits: 20)
}

/// A decoding failure: stable code, byte offset, and a detail for local diagnostics.
public struct SyrupError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable {
        case unexpectedByte
        case nonCanonical
        case limitExceeded
        case invalidUTF8
        case duplicateKey
        case unexpectedEnd
        case trailingBytes
    }
    public let code: Code
    public let offset: Int
    public let detail: String

    public init(_ code: Code, offset: Int, _ detail: String) {
        self.code = code
        self.offset = offset
        self.detail = detail
    }

    public var description: String { "syrup \(code.rawValue) at byte \(offset): \(detail)" }
}

/// Result of decoding from the front of a buffer that may hold a partial value.
public enum SyrupDecodeStep: Equatable, Sendable {
    /// The bytes are a valid prefix of some value; read more and call again.
    case needMoreBytes
    /// A complete value that used the first `consumed` bytes.
    case value(SyrupValue, consumed: Int)
}

public struct SyrupDecoder: Sendable {
    public var limits: SyrupLimits

    public init(limits: SyrupLimits = .default) { self.limits = limits }

    /// Decodes exactly one value spanning all of `bytes` (`unexpectedEnd`, `trailingBytes` otherwise).
    public func decode(_ bytes: [UInt8]) throws(SyrupError) -> SyrupValue {
        fatalError("unimplemented")
    }

    /// Decodes one value from the front of `bytes`, or answers `.needMoreBytes`.
    public func decodePrefix(_ bytes: UnsafeRawBufferPointer) throws(SyrupError) -> SyrupDecodeStep {
        fatalError("unimplemented")
    }
}

public enum SyrupEncoder {
    /// Canonical encoding.
    public static func encode(_ value: SyrupValue) -> [UInt8] {
        var out: [UInt8] = []
        encode(value, into: &out)
        return out
    }

    public static func encode(_ value: SyrupValue, into out: inout [UInt8]) {
        fatalError("unimplemented")
    }
}
