/// Why a UDS-HS1 handshake or a framed channel failed (PROTOCOL.md §8).
///
/// One error type for the whole module: the handshake and the channel share codes
/// (`truncated`, `decryptFailed`, …) and a caller matches on `code` alone. `detail` says which
/// field or length was wrong for local logs; it never holds key material or plaintext and is
/// never sent to the peer (v1 sends no error messages at all: on any error the socket is closed).
public struct HandshakeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Stable reason codes. Raw values are printed by the CLI and written to the audit log, so
    /// they never change once released; new codes may be added.
    public enum Code: String, Sendable, CaseIterable {
        // Introduction layer (raised by the runtime before the handshake starts).
        case passedSocketInvalid
        case notAddressedToUs
        case handshakeLimitExceeded
        // Any stage.
        case timeout
        case truncated
        // msg1 header.
        case badMagic
        case unsupportedVersion
        case unexpectedMessageType
        case reservedFlagsSet
        case wrongResponder
        case identityMismatch
        case selfConnection
        case invalidIdentityKey
        case peerNotAllowed
        // Ephemeral keys.
        case nonCanonicalPoint
        case lowOrderPoint
        case reflection
        // Cryptographic verification.
        case decryptFailed
        case badSignature
        // Transport framing.
        case badFrameLength
        case unknownFrameType
        case unexpectedAuthFrame
        case emptyDataFrame
        case dataAfterClose
        case nonceExhausted
        case messageTooLarge
    }

    public let code: Code
    /// Local diagnostics only (which field, which length). Never secrets, never sent on the wire.
    public let detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    public var description: String { "\(code.rawValue): \(detail)" }

    /// Equality is by code: the detail is free text for humans.
    public static func == (lhs: HandshakeError, rhs: HandshakeError) -> Bool { lhs.code == rhs.code }
}

// Small cold constructors keep the hot paths short and the wording consistent.
extension HandshakeError {
    @inline(never)
    static func make(_ code: Code, _ detail: String) -> HandshakeError { HandshakeError(code, detail) }
}
