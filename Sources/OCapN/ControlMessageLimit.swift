import Syrup

/// The one message limit of the peer ↔ introduction-server leg (issue #9 item 6).
///
/// A peer reads its control connection with `SyrupLimits.controlMessage`; a record it cannot
/// read ends that connection, and with it the peer's registration. So the server must never
/// forward a record larger or deeper than this: `IntroductionServerLimits` refuses a
/// configuration above it, and the core refuses (`messageTooLarge`) an introduction whose
/// forwarded record would exceed it, which costs only its sender. Documented in docs/PEER.md
/// and docs/INTRO-SERVER.md.
public enum ControlMessageLimit {
    /// Bytes of one control record (16 KiB, reliability catalog §4).
    public static let maxBytes = SyrupLimits.controlMessage.maxTotalBytes
    /// Nesting depth of one control record.
    public static let maxDepth = SyrupLimits.controlMessage.maxDepth
}
