/// Stable reason code of a failure record (`reason` in the JSON).
///
/// String-backed so other layers can define codes without editing this module
/// (`extension AuditReason { static let myCode: AuditReason = "myCode" }`). A code is 1–64
/// characters of `[A-Za-z0-9._-]`, so it can never smuggle free text (or a secret) into the log.
/// The documented codes are listed in `AuditReason.documented` and in docs/AUDIT.md.
public struct AuditReason: RawRepresentable, Hashable, Sendable, Comparable, ExpressibleByStringLiteral, CustomStringConvertible {
    public static let maxLength = 64
    public let rawValue: String

    /// Validates the spelling; nil when it is not a well-formed code (used when reading logs).
    public init?(rawValue: String) {
        guard Self.isWellFormed(rawValue) else { return nil }
        self.rawValue = rawValue
    }

    /// A code written in our source. A malformed literal is our bug, hence the precondition.
    public init(stringLiteral value: String) {
        precondition(Self.isWellFormed(value), "audit reason codes are 1-64 chars of [A-Za-z0-9._-]")
        rawValue = value
    }

    public var description: String { rawValue }
    public static func < (a: AuditReason, b: AuditReason) -> Bool { a.rawValue < b.rawValue }

    public static func isWellFormed(_ s: String) -> Bool {
        let u = s.utf8
        guard !u.isEmpty, u.count <= maxLength else { return false }
        return u.allSatisfy { c in
            (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39)
                || c == 0x2e || c == 0x5f || c == 0x2d
        }
    }
}

// MARK: - Handshake and channel codes (SecureChannel)
extension AuditReason {
    public static let badMagic: AuditReason = "badMagic"
    public static let unsupportedVersion: AuditReason = "unsupportedVersion"
    public static let unexpectedMessageType: AuditReason = "unexpectedMessageType"
    public static let reservedFlagsSet: AuditReason = "reservedFlagsSet"
    public static let wrongResponder: AuditReason = "wrongResponder"
    public static let identityMismatch: AuditReason = "identityMismatch"
    public static let selfConnection: AuditReason = "selfConnection"
    public static let invalidIdentityKey: AuditReason = "invalidIdentityKey"
    public static let peerNotAllowed: AuditReason = "peerNotAllowed"
    public static let nonCanonicalPoint: AuditReason = "nonCanonicalPoint"
    public static let lowOrderPoint: AuditReason = "lowOrderPoint"
    public static let reflection: AuditReason = "reflection"
    public static let decryptFailed: AuditReason = "decryptFailed"
    public static let badSignature: AuditReason = "badSignature"
    public static let badFrameLength: AuditReason = "badFrameLength"
    public static let unknownFrameType: AuditReason = "unknownFrameType"
    public static let unexpectedAuthFrame: AuditReason = "unexpectedAuthFrame"
    public static let emptyDataFrame: AuditReason = "emptyDataFrame"
    public static let dataAfterClose: AuditReason = "dataAfterClose"
    public static let truncated: AuditReason = "truncated"
    public static let nonceExhausted: AuditReason = "nonceExhausted"
    public static let frameTooLarge: AuditReason = "frameTooLarge"
    public static let timeout: AuditReason = "timeout"
    public static let handshakeLimitExceeded: AuditReason = "handshakeLimitExceeded"
    public static let passedSocketInvalid: AuditReason = "passedSocketInvalid"
    public static let notAddressedToUs: AuditReason = "notAddressedToUs"

    /// Codes the handshake and framed channel report.
    public static let handshakeCodes: [AuditReason] = [
        .badMagic, .unsupportedVersion, .unexpectedMessageType, .reservedFlagsSet, .wrongResponder,
        .identityMismatch, .selfConnection, .invalidIdentityKey, .peerNotAllowed, .nonCanonicalPoint,
        .lowOrderPoint, .reflection, .decryptFailed, .badSignature, .badFrameLength, .unknownFrameType,
        .unexpectedAuthFrame, .emptyDataFrame, .dataAfterClose, .truncated, .nonceExhausted,
        .frameTooLarge, .timeout, .handshakeLimitExceeded, .passedSocketInvalid, .notAddressedToUs,
    ]
}

// MARK: - Introduction-server codes (OCapN / Runtime)
extension AuditReason {
    // `badSignature` is shared with the handshake list: a registration signature that fails.
    public static let challengeLength: AuditReason = "challengeLength"
    public static let malformedMessage: AuditReason = "malformedMessage"
    public static let messageTooLarge: AuditReason = "messageTooLarge"
    public static let spoofedFrom: AuditReason = "spoofedFrom"
    public static let fdMissing: AuditReason = "fdMissing"
    public static let fdInvalid: AuditReason = "fdInvalid"
    public static let extraFds: AuditReason = "extraFds"
    public static let registrationTimeout: AuditReason = "registrationTimeout"
    public static let tooManyClients: AuditReason = "tooManyClients"
    public static let tooManyUnauthenticated: AuditReason = "tooManyUnauthenticated"
    public static let unauthenticatedEvicted: AuditReason = "unauthenticatedEvicted"
    public static let abandoned: AuditReason = "abandoned"
    public static let targetNotReading: AuditReason = "targetNotReading"
    public static let inFlightLimit: AuditReason = "inFlightLimit"
    public static let pendingLimit: AuditReason = "pendingLimit"
    public static let rateLimited: AuditReason = "rateLimited"
    public static let targetUnknownExpired: AuditReason = "targetUnknownExpired"
    public static let uidNotAllowed: AuditReason = "uidNotAllowed"
    public static let outputOverflow: AuditReason = "outputOverflow"
    public static let replacedDeadConnection: AuditReason = "replacedDeadConnection"
    public static let replacedSameUID: AuditReason = "replacedSameUID"
    public static let liveRegistrationKept: AuditReason = "liveRegistrationKept"
    public static let registrationFormRefused: AuditReason = "registrationFormRefused"
    public static let serverShutdown: AuditReason = "serverShutdown"
    public static let legacyPeerRefused: AuditReason = "legacyPeerRefused"
    /// Not a failure: descriptors beyond a marker's one were closed (descriptors.closed).
    public static let extraDescriptorsClosed: AuditReason = "extraDescriptorsClosed"

    /// Codes the introduction server reports.
    public static let introServerCodes: [AuditReason] = [
        .badSignature, .challengeLength, .malformedMessage, .messageTooLarge, .spoofedFrom, .fdMissing,
        .fdInvalid, .extraFds, .registrationTimeout, .tooManyClients, .tooManyUnauthenticated, .unauthenticatedEvicted,
        .pendingLimit, .rateLimited, .targetUnknownExpired, .abandoned, .targetNotReading, .inFlightLimit,
        .uidNotAllowed, .outputOverflow,
        .replacedDeadConnection, .replacedSameUID, .liveRegistrationKept, .registrationFormRefused,
        .serverShutdown, .legacyPeerRefused, .extraDescriptorsClosed,
    ]
}

// MARK: - Channel-close and local codes (Runtime)
extension AuditReason {
    /// The peer closed the socket without a close frame.
    public static let peerReset: AuditReason = "peerReset"
    /// A local I/O error ended the connection.
    public static let ioError: AuditReason = "ioError"
    /// We closed the connection on purpose (shutdown, caller request) without a clean close.
    public static let localAbort: AuditReason = "localAbort"

    /// A legacy (Goblins) channel refused because the key it claims completed UDS-HS1 with us
    /// before: that key is never admitted unauthenticated afterwards.
    public static let legacyKeyProvedBefore: AuditReason = "legacyKeyProvedBefore"

    public static let channelCodes: [AuditReason] = [.peerReset, .ioError, .localAbort, .legacyKeyProvedBefore]

    /// Every code documented in docs/AUDIT.md, without duplicates, sorted.
    public static let documented: [AuditReason] = Array(Set(handshakeCodes + introServerCodes + channelCodes)).sorted()
}
