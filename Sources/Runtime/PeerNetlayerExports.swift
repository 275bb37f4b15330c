// The peer-side API speaks in SecureChannel's verified types (VerifiedPeer, SessionID,
// HandshakeRole, HandshakeConfiguration) and takes a swift-log Logger, so users of the Runtime
// library get both modules with it.
@_exported import Logging
@_exported import SecureChannel
