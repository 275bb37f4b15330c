import Errors

/// The stable codes of `OCapNError`.
public enum OCapNErrorCode: String, ErrorCode {
    /// The bytes are not one canonical Syrup value within the limits.
    case invalidSyrup
    /// A known structure of the wrong shape: label, field count, value types, symbol names,
    /// byte lengths of keys and signatures; on the control stream, bytes that are not canonical
    /// Syrup.
    case malformedMessage
    /// A value that is none of the four `uds:` records.
    case unknownMessage
    /// A valid message that the current state does not allow.
    case unexpectedMessage
    /// A challenge (or signed payload) that is not exactly 64 bytes.
    case challengeLength
    /// A signed payload that is not the challenge we sent.
    case challengeMismatch
    /// The server returned our own challenge as its challenge (a reflection attempt).
    case reflectedChallenge
    /// A signature that does not verify.
    case badSignature
    /// A public key that is not a valid Ed25519 identity key.
    case invalidPublicKey
    /// A locator whose transport is not `unix-domain-socket`.
    case wrongTransport
    /// A designator that is not the canonical base32 of a valid key.
    case invalidDesignator
    /// A hint key that is not a canonical designator, or a hint value of an unsupported type.
    case invalidHint
    /// A URI that is not a strict `ocapn://<designator>.unix-domain-socket[?hints]`.
    case invalidURI
    /// A count or length above its configured limit.
    case limitExceeded
    /// The server's key differs from the pinned one.
    case serverKeyMismatch
    /// A `uds:new-connection` whose `from` is not the sender's registered identity.
    case spoofedFrom
    /// A `uds:new-connection` delivered to a peer that is not its `to`.
    case wrongTarget
    /// A registration message of a form (v2, or the draft's/Goblins' legacy forms) that this
    /// side is not configured to speak with the other: never answered, never retried in
    /// another form (PROTOCOL.md §15).
    case registrationFormRefused

    // The control stream (`ControlStreamReader`).
    /// A control message over the Syrup limits for one message (size, depth, counts).
    case messageTooLarge
    /// `uds:new-connection` and its marker arrived without a descriptor.
    case fdMissing
    /// A descriptor arrived where no marker claims it.
    case unexpectedFD
    /// More descriptors arrived than the protocol allows.
    case extraFDs
    /// The peer closed the stream inside a message or before a marker.
    case truncated
}

/// Why an OCapN value, locator, URI, control message or control stream was refused.
///
/// Callers match on `code`; `detail` names the field and sizes for local logs only and never
/// holds key material or peer-controlled text beyond short public values such as designators.
/// A peer should learn at most the code (better: only that the connection was closed). The
/// control-stream reader throws it too: one vocabulary for the whole module, which
/// `IntroductionServerCore` maps to its `IntroductionServerReason` in one place.
public typealias OCapNError = CodedError<OCapNErrorCode>

/// Bounds on what the OCapN layer accepts, beyond the Syrup decoder's own limits.
public struct OCapNLimits: Sendable, Equatable {
    /// Hint entries in one locator (one per introduction server the peer uses).
    public var maxHints: Int
    /// UTF-8 bytes of one string hint value (after percent-decoding in a URI).
    public var maxHintValueLength: Int
    /// UTF-8 bytes of one `ocapn://` URI.
    public var maxURILength: Int

    public init(maxHints: Int, maxHintValueLength: Int, maxURILength: Int) {
        precondition(maxHints >= 0 && maxHintValueLength >= 0 && maxURILength >= 0, "negative limit")
        self.maxHints = maxHints
        self.maxHintValueLength = maxHintValueLength
        self.maxURILength = maxURILength
    }

    /// 32 hints (far above any real deployment), 256-byte values (Goblins uses "t"), 4 KiB URIs.
    public static let `default` = OCapNLimits(maxHints: 32, maxHintValueLength: 256, maxURILength: 4096)
}

extension OCapNError {
    @inline(never)
    static func malformed(_ detail: String) -> OCapNError { OCapNError(.malformedMessage, detail) }
}
