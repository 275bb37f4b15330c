import Audit
import Errors
import Identity
import OCapN
import SecureChannel
import Transport

/// The code of a `PeerError`: a handshake code, or one of the netlayer's own. Its raw value is
/// the inner code's spelling, which is also its audit reason.
public enum PeerErrorCode: ErrorCode, CustomStringConvertible {
    /// A UDS-HS1 handshake or framed-channel failure (PROTOCOL.md §8).
    case handshake(HandshakeError.Code)
    /// A failure of the netlayer or the runtime around the handshake.
    case netlayer(Netlayer)

    /// The peer netlayer's own codes (channel sockets, introduction servers).
    public enum Netlayer: String, ErrorCode {
        // The socket under a handshake or channel.
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

    /// The spelling (`serverDisconnected`, `timeout`), as printed before codes were composed:
    /// programs interpolate the code into their output.
    public var description: String { rawValue }

    public var rawValue: String {
        switch self {
        case .handshake(let code): return code.rawValue
        case .netlayer(let code): return code.rawValue
        }
    }

    public init?(rawValue: String) {
        if let code = HandshakeError.Code(rawValue: rawValue) {
            self = .handshake(code)
        } else if let code = Netlayer(rawValue: rawValue) {
            self = .netlayer(code)
        } else {
            return nil
        }
    }

    public static var allCases: [PeerErrorCode] {
        HandshakeError.Code.allCases.map(Self.handshake) + Netlayer.allCases.map(Self.netlayer)
    }
}

/// Why a channel, a handshake or a peer-netlayer operation failed.
///
/// One error type for the peer side of the runtime. Callers and the CLI match on `code`, whose
/// raw values are stable: a handshake or channel failure *contains* its `HandshakeError.Code`
/// (PROTOCOL.md §8, `.handshake(_)`), the rest belong to the netlayer
/// (`.netlayer(_)`). `detail` is for local logs (which field, which errno); it never holds keys
/// or payload bytes.
public typealias PeerError = CodedError<PeerErrorCode>

extension PeerError {
    /// A netlayer failure (`PeerError(.ioError, "…")`).
    public init(_ code: Code.Netlayer, _ detail: String) { self.init(.netlayer(code), detail) }

    /// A failure the runtime reports in the handshake's own words (`PeerError(.selfConnection, "…")`).
    public init(_ code: HandshakeError.Code, _ detail: String) { self.init(.handshake(code), detail) }

    /// The handshake or channel error, code and detail.
    public init(_ error: HandshakeError) { self.init(.handshake(error.code), error.detail) }

    /// Maps a transport failure on a handshake or channel socket.
    static func transport(_ error: TransportError, _ context: String) -> PeerError {
        switch error.code {
        case .controlTruncated, .unexpectedDescriptors:
            return PeerError(.ioError, "\(context): a descriptor arrived on a channel socket (\(error))")
        default: return PeerError(.ioError, "\(context): \(error)")
        }
    }

    /// An initiator's `truncated` with no byte of msg2 received is a dropped introduction: the
    /// responder never answered (PROTOCOL.md §8 keeps `truncated` on the wire-level machine;
    /// the netlayer, which knows the socket came from an introduction, names it).
    static func initiatorFailure(_ error: PeerError, target: PublicIdentity, server: PublicIdentity?) -> PeerError {
        guard error.code == .handshake(.truncated), error.detail.hasPrefix(Self.noReplyPrefix) else { return error }
        let via = server.map { " via server \($0.fingerprint)" } ?? ""
        return PeerError(
            .introductionDropped,
            "\(target.fingerprint) never answered the introduction\(via): it is not registered there, or it refused")
    }

    /// How HandshakeInitiator.receiveEOF words an EOF before any msg2 byte (pinned by a test).
    static let noReplyPrefix = "EOF after 0 of "

    /// The audit reason for this failure: its code's spelling.
    public var auditReason: AuditReason { AuditReason(code) }
}
