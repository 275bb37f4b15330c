import Audit
import Identity
import OCapN
import SecureChannel
import Transport

/// Why a channel, a handshake or a peer-netlayer operation failed.
///
/// One error type for the peer side of the runtime. Callers and the CLI match on `code`, whose
/// raw values are stable: the handshake and channel codes are exactly those of PROTOCOL.md §8
/// (`HandshakeError.Code`), the rest belong to the runtime and the netlayer. `detail` is for
/// local logs (which field, which errno); it never holds keys or payload bytes.
public struct PeerError: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, CaseIterable {
        // PROTOCOL.md §8, one for one with `HandshakeError.Code`.
        case passedSocketInvalid
        case notAddressedToUs
        case handshakeLimitExceeded
        case timeout
        case truncated
        case badMagic
        case unsupportedVersion
        case unexpectedMessageType
        case reservedFlagsSet
        case wrongResponder
        case identityMismatch
        case selfConnection
        case invalidIdentityKey
        case peerNotAllowed
        case nonCanonicalPoint
        case lowOrderPoint
        case reflection
        case decryptFailed
        case badSignature
        case badFrameLength
        case unknownFrameType
        case unexpectedAuthFrame
        case emptyDataFrame
        case dataAfterClose
        case nonceExhausted
        case messageTooLarge
        // Runtime: the socket under a handshake or channel.
        /// A Goblins peer (first bytes `<16'op:start-session`) and legacy peers are not allowed.
        case legacyPeerRefused
        /// A system call on the socket failed, or a descriptor arrived on a channel.
        case ioError
        /// The channel was closed or aborted locally; nothing more can be sent or received.
        case channelClosed
        /// A configuration whose settings do not work together, refused when it is built.
        case invalidConfiguration
        // Netlayer: introduction servers.
        /// No live, registered introduction server appears in the target's hints.
        case noSharedServer
        /// The introduction server's connection ended (EOF, reset, protocol error).
        case serverDisconnected
        /// The introduction server could not be reached (nothing listening, connect timeout).
        case serverUnreachable
        /// The socket's listener runs as another non-root uid (SO_PEERCRED) and the server's key
        /// is not pinned (`PeerNetlayer.Configuration.serverUIDPolicy`).
        case serverNotTrusted
        /// Registration with the introduction server failed (bad signature, pinned key mismatch,
        /// malformed reply, deadline); `detail` names the OCapN reason.
        case registrationFailed
        /// The introduction server did not finish registration within the deadline.
        case registrationTimeout
        /// The introduction was dropped: our end of the passed socket reached EOF before any byte
        /// of the target's reply. The target is not registered with that server (the server
        /// dropped the introduction when its pending lifetime ran out) or it refused the
        /// introduction (a refusing peer closes without a byte).
        case introductionDropped
        /// The locator is not usable for a connection (another transport, our own key).
        case invalidLocator
        /// The netlayer was shut down.
        case netlayerClosed
    }

    public let code: Code
    /// Local diagnostics only. Never secrets, never peer payload.
    public let detail: String

    public init(_ code: Code, _ detail: String) {
        self.code = code
        self.detail = detail
    }

    /// The same code as the handshake or channel error.
    public init(_ error: HandshakeError) {
        guard let code = Code(rawValue: error.code.rawValue) else {
            preconditionFailure("PeerError.Code lacks handshake code \(error.code.rawValue)")
        }
        self.init(code, error.detail)
    }

    /// Maps a transport failure on a handshake or channel socket.
    static func transport(_ error: TransportError, _ context: String) -> PeerError {
        switch error.code {
        case .controlTruncated, .unexpectedDescriptors:
            return PeerError(.ioError, "\(context): a descriptor arrived on a channel socket (\(error))")
        default: return PeerError(.ioError, "\(context): \(error)")
        }
    }

    public var description: String { "\(code.rawValue): \(detail)" }

    /// An initiator's `truncated` with no byte of msg2 received is a dropped introduction: the
    /// responder never answered (PROTOCOL.md §8 keeps `truncated` on the wire-level machine;
    /// the netlayer, which knows the socket came from an introduction, names it).
    static func initiatorFailure(_ error: PeerError, target: PublicIdentity, server: PublicIdentity?) -> PeerError {
        guard error.code == .truncated, error.detail.hasPrefix(Self.noReplyPrefix) else { return error }
        let via = server.map { " via server \($0.fingerprint)" } ?? ""
        return PeerError(
            .introductionDropped,
            "\(target.fingerprint) never answered the introduction\(via): it is not registered there, or it refused")
    }

    /// How HandshakeInitiator.receiveEOF words an EOF before any msg2 byte (pinned by a test).
    static let noReplyPrefix = "EOF after 0 of "

    /// Equality is by code; the detail is free text for humans.
    public static func == (lhs: PeerError, rhs: PeerError) -> Bool { lhs.code == rhs.code }

    /// The audit reason for this failure: the code itself (all codes are well-formed reasons).
    public var auditReason: AuditReason {
        guard let reason = AuditReason(rawValue: code.rawValue) else {
            preconditionFailure("reason code \(code.rawValue) is not a well-formed audit reason")
        }
        return reason
    }
}

// Reason codes the peer netlayer adds to the audit trail (listed in docs/AUDIT.md).
extension AuditReason {
    public static let registrationFailed: AuditReason = "registrationFailed"
    public static let serverDisconnected: AuditReason = "serverDisconnected"
    public static let netlayerClosed: AuditReason = "netlayerClosed"
    /// A server's socket could not be reached (registration.refused, role client).
    public static let serverUnreachable: AuditReason = "serverUnreachable"
    /// A registration the server had accepted ended on the server's side: displaced by
    /// another connection for our key, or the server went away (registration.refused).
    public static let registrationLost: AuditReason = "registrationLost"
    /// Registrations lost or refused `ReconnectPolicy.contestedAfter` times in a row
    /// (registration.refused; the peer keeps retrying with backoff).
    public static let serverContested: AuditReason = "serverContested"

    /// The server's listener runs as another non-root uid and its key is not pinned.
    public static let serverNotTrusted: AuditReason = "serverNotTrusted"

    /// Codes the peer netlayer writes beyond the handshake and channel codes.
    public static let peerNetlayerCodes: [AuditReason] = [
        .registrationFailed, .serverDisconnected, .netlayerClosed, .serverUnreachable, .registrationLost, .serverContested,
        .registrationTimeout, .peerHandshakeLimit, .channelLimit, .peerChannelLimit, .descriptorReserve,
        .passedDescriptorLost, .serverNotTrusted,
    ]
}
