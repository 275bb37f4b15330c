import Errors

/// Stable reason codes of PROTOCOL.md §8. Raw values are printed by the CLI and written to the
/// audit log, so they never change once released; new codes may be added.
public enum HandshakeErrorCode: String, ErrorCode {
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

/// Why a UDS-HS1 handshake or a framed channel failed (PROTOCOL.md §8).
///
/// One error type for the whole module: the handshake and the channel share codes
/// (`truncated`, `decryptFailed`, …) and a caller matches on `code` alone. `detail` says which
/// field or length was wrong for local logs; it never holds key material or plaintext and is
/// never sent to the peer (v1 sends no error messages at all: on any error the socket is closed).
public typealias HandshakeError = CodedError<HandshakeErrorCode>

// Small cold constructors keep the hot paths short and the wording consistent.
extension HandshakeError {
    @inline(never)
    static func make(_ code: Code, _ detail: String) -> HandshakeError { HandshakeError(code, detail) }
}
