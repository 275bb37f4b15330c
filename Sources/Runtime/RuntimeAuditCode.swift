import Audit
import Errors
import OCapN
import SecureChannel

/// Audit reasons the runtime writes that are neither a `PeerError` code nor an
/// `IntroductionServerReason` (docs/AUDIT.md "Reason codes").
public enum RuntimeAuditCode: String, ErrorCode {
    // Channel end (channel.closed).
    /// A legacy (unframed) channel ended by the peer's EOF.
    case peerReset
    /// We closed the connection on purpose (shutdown, caller request) without a clean close.
    case localAbort
    /// A legacy (Goblins) channel refused because the key it claims completed UDS-HS1 with us
    /// before: that key is never admitted unauthenticated afterwards (legacy.refused).
    case legacyKeyProvedBefore
    // Registration with a server (registration.refused, role client).
    /// A registration the server had accepted ended on the server's side: displaced by another
    /// connection for our key, or the server went away.
    case registrationLost
    /// Registrations lost or refused `ReconnectPolicy.contestedAfter` times in a row (the peer
    /// keeps retrying with backoff).
    case serverContested
    // Introductions to us refused before their handshake (handshake.failed, role responder).
    /// The claimed `from` already has `maxHandshakesPerPeer` handshakes in progress with us.
    case peerHandshakeLimit
    /// `maxChannels` channels are open (or being opened) already.
    case channelLimit
    /// The claimed key already holds `maxChannelsPerPeer` open channels with us.
    case peerChannelLimit
    /// Accepting would eat into the descriptor reserve below RLIMIT_NOFILE.
    case descriptorReserve
    /// The kernel dropped the passed descriptor (MSG_CTRUNC, at the descriptor limit); only that
    /// introduction is lost, the server connection stays.
    case passedDescriptorLost
    /// Not a failure: descriptors beyond a marker's one were closed (descriptors.closed).
    case extraDescriptorsClosed
}

extension AuditReason {
    /// A runtime reason that is not an error code.
    public static func runtime(_ code: RuntimeAuditCode) -> AuditReason { AuditReason(code) }

    /// The reason of a handshake or channel failure: its PROTOCOL.md §8 code.
    public static func handshake(_ code: HandshakeError.Code) -> AuditReason { AuditReason(code) }

    /// The reason of a peer netlayer failure (`PeerError.Code.netlayer`).
    public static func netlayer(_ code: PeerError.Code.Netlayer) -> AuditReason { AuditReason(code) }

    /// The audit code of an introduction-server core reason: the same spelling.
    public init(introductionServer reason: IntroductionServerReason) { self.init(reason) }

    /// Every reason code the runtime can write into an audit record, sorted: the spellings of
    /// `PeerError.Code` (handshake codes included), `IntroductionServerReason` and
    /// `RuntimeAuditCode`, the only types the runtime makes an `AuditReason` from. docs/AUDIT.md
    /// names each of them (RuntimeTests "Every audit reason the runtime can write is documented").
    public static let runtimeCodes: [AuditReason] = Array(Set(
        PeerError.Code.allCases.map(AuditReason.init) + IntroductionServerReason.allCases.map(AuditReason.init)
            + RuntimeAuditCode.allCases.map(AuditReason.init))).sorted()
}
