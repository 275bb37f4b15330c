/// The exact bytes an identity key signs, one builder per purpose: the one place the package's
/// signature domains are defined, used alike by the signer (`IdentityKeyPair`) and by every
/// verifier.
///
/// The key signs four kinds of message and nothing else:
///
/// | purpose                        | bytes                                              | length |
/// |--------------------------------|----------------------------------------------------|--------|
/// | registration (Goblins form)    | the other side's raw challenge                     | 64     |
/// | registration v2 (PROTOCOL §15) | `ocapn-uds-reg/2 {server,client}-sig` 00 ‖ IK_S ‖ IK_C ‖ cc ‖ sc | 219 |
/// | UDS-HS1 (PROTOCOL §4.4)        | `ocapn-uds-hs/1 {responder,initiator}-sig` 00 ‖ h  | 61     |
/// | audit checkpoint (docs/AUDIT)  | `ocapn-uds audit checkpoint v1` 00 ‖ record line   | > 64   |
///
/// The raw challenge is unavoidable (Goblins signs it that way), which makes it a signing
/// oracle for whoever sends one; every other message starts with its own NUL-terminated
/// context and none is 64 bytes long, so no signature made for one purpose verifies for another.
public enum SignedMessage {
    /// Length of a registration challenge (the Goblins form signs it raw).
    public static let challengeLength = 64
    /// Length of a Noise handshake hash (SHA-256).
    public static let handshakeHashLength = 32

    /// The side whose signature a registration v2 transcript carries.
    public enum RegistrationRole: Sendable, Hashable { case server, client }
    /// The side whose signature a UDS-HS1 transcript carries.
    public enum HandshakeRole: Sendable, Hashable { case initiator, responder }

    /// ASCII `ocapn-uds-reg/2 server-sig` ‖ 00.
    public static let registrationServerContext: [UInt8] = Array("ocapn-uds-reg/2 server-sig".utf8) + [0]
    /// ASCII `ocapn-uds-reg/2 client-sig` ‖ 00.
    public static let registrationClientContext: [UInt8] = Array("ocapn-uds-reg/2 client-sig".utf8) + [0]
    /// 27 + 32 + 32 + 64 + 64.
    public static let registrationTranscriptLength = 219
    /// ASCII `ocapn-uds-hs/1 responder-sig` ‖ 00.
    public static let handshakeResponderContext: [UInt8] = Array("ocapn-uds-hs/1 responder-sig".utf8) + [0]
    /// ASCII `ocapn-uds-hs/1 initiator-sig` ‖ 00.
    public static let handshakeInitiatorContext: [UInt8] = Array("ocapn-uds-hs/1 initiator-sig".utf8) + [0]
    /// ASCII `ocapn-uds audit checkpoint v1` ‖ 00.
    public static let auditCheckpointContext: [UInt8] = Array("ocapn-uds audit checkpoint v1".utf8) + [0]

    /// Every context the key signs under (the raw challenge has none).
    public static let contexts: [[UInt8]] = [
        registrationServerContext, registrationClientContext, handshakeResponderContext, handshakeInitiatorContext,
        auditCheckpointContext,
    ]

    public static func registrationContext(_ role: RegistrationRole) -> [UInt8] {
        role == .server ? registrationServerContext : registrationClientContext
    }

    public static func handshakeContext(_ role: HandshakeRole) -> [UInt8] {
        role == .responder ? handshakeResponderContext : handshakeInitiatorContext
    }

    /// `context(role) ‖ IK_S ‖ IK_C ‖ client-challenge ‖ server-challenge`.
    public static func registrationTranscript(
        _ role: RegistrationRole, server: PublicIdentity, client: PublicIdentity,
        clientChallenge: [UInt8], serverChallenge: [UInt8]
    ) -> [UInt8] {
        precondition(clientChallenge.count == challengeLength && serverChallenge.count == challengeLength,
                     "registration challenges are 64 bytes")
        var out = registrationContext(role)
        out.reserveCapacity(registrationTranscriptLength)
        out += server.publicKey
        out += client.publicKey
        out += clientChallenge
        out += serverChallenge
        return out
    }

    /// `context(role) ‖ h`, h the 32-byte handshake hash the role signs.
    public static func handshakeTranscript(_ role: HandshakeRole, hash: [UInt8]) -> [UInt8] {
        precondition(hash.count == handshakeHashLength, "a handshake hash is 32 bytes")
        return handshakeContext(role) + hash
    }

    /// `context ‖ line`, the checkpoint record's line without its signature and newline.
    public static func auditCheckpoint<Line: Collection<UInt8>>(recordLine: Line) -> [UInt8] {
        var out = auditCheckpointContext
        out += recordLine
        // A record line is a JSON object with a 64-digit hash in it: never this short.
        precondition(out.count > challengeLength, "an audit checkpoint message is longer than a challenge")
        return out
    }
}
