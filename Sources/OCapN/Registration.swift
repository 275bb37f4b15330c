import Identity
import Syrup

// Sans-IO state machines for one control connection (ocapn-uds-wire.md §6): the registration
// handshake, then the `uds:new-connection` traffic that follows it. Values in, actions out; no
// sockets, clocks or logs. Challenges are injected (use `Challenge.random()` in production).
//
// Every thrown error leaves the machine failed: the caller must close the connection (and any
// descriptor that came with the message). Feeding a failed or unstarted machine is a caller bug
// and traps.

/// Which registration messages a peer speaks with one server (PROTOCOL.md §15). A setting per
/// server, never negotiated and never changed after a failure: a relay cannot downgrade two v2
/// sides, because neither answers a legacy record.
public enum RegistrationForm: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Registration v2: each side signs a context, its role, both keys and both challenges.
    case v2
    /// Spritely Goblins' forms (`uds:register`; raw 64-byte signature in `uds:signature`).
    case goblins
    /// The OCapN draft's forms (`uds:register`; CapTP sig-val list in `uds:signature`).
    case draft

    /// Goblins' and the draft's forms: each side signs the other's raw challenge, no context.
    public var isLegacy: Bool { self != .v2 }
    public var description: String { rawValue }
}

/// The registration forms a server answers. The legacy forms (Goblins' and the draft's, which a
/// server reads alike) can be turned off; v2 can be too, for a server that only serves Goblins.
public struct RegistrationForms: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let v2 = RegistrationForms(rawValue: 1)
    public static let legacy = RegistrationForms(rawValue: 2)
    public static let all: RegistrationForms = [.v2, .legacy]

    public var description: String {
        [contains(.v2) ? "v2" : nil, contains(.legacy) ? "legacy" : nil].compactMap { $0 }.joined(separator: ",")
    }
}

/// The server's identity, proven by its signature over our fresh challenge. Only
/// `RegistrationClient` makes one.
public struct VerifiedServer: Equatable, Sendable {
    public let identity: PublicIdentity
    /// `v2`: the signature also covered our key and the server's challenge, so it was made for
    /// this registration. Legacy: it covered only our challenge (a relay can obtain it).
    public let form: RegistrationForm
    fileprivate init(identity: PublicIdentity, form: RegistrationForm) {
        self.identity = identity
        self.form = form
    }
}

/// A peer that proved it holds the key of the designator it registered. Only
/// `RegistrationServer` makes one.
public struct RegisteredPeer: Equatable, Sendable {
    public let identity: PublicIdentity
    /// The form it registered in (`goblins` or `draft` by its `uds:signature`'s signature form).
    public let form: RegistrationForm
    fileprivate init(identity: PublicIdentity, form: RegistrationForm) {
        self.identity = identity
        self.form = form
    }

    /// The locator the server routes to (hints `f`).
    public var locator: PeerLocator { PeerLocator(identity: identity) }
}

/// A `uds:new-connection` whose `from` is the sender's registered identity, ready to forward to
/// `target` (with the descriptor that came with it).
public struct Introduction: Equatable, Sendable {
    public let sender: RegisteredPeer
    public let request: UDSNewConnection
    fileprivate init(sender: RegisteredPeer, request: UDSNewConnection) {
        self.sender = sender
        self.request = request
    }

    /// The peer to deliver to.
    public var target: PublicIdentity { request.to.routingKey }
    /// The message to send the target: the same record, re-serialised (byte-identical, Syrup is
    /// canonical).
    public var forward: UDSMessage { .newConnection(request) }
}

/// A `uds:new-connection` delivered to us. `from` is only the server's claim; the per-socket
/// handshake must prove it (SECURITY.md).
public struct IncomingIntroduction: Equatable, Sendable {
    public let claimedFrom: PeerLocator
    public let to: PeerLocator
}

// MARK: - Peer side

/// The peer's side of one introduction-server connection.
///
/// `start()` gives `uds-v2:register` (or `uds:register` in a legacy form); `receive` of the
/// server's response verifies the server (optionally pinned) and answers with our signature.
/// A response in the other form is `registrationFormRefused`: never answered, never retried.
/// Registered, it accepts only `uds:new-connection` addressed to us.
public struct RegistrationClient: Sendable {
    public enum Action: Equatable, Sendable {
        case send(UDSMessage)
        /// The server proved its key; from here on it may deliver introductions.
        case registered(VerifiedServer)
        /// An introduction for us; take the descriptor that followed it.
        case incoming(IncomingIntroduction)
    }

    private struct Idle: Sendable { let challenge: Challenge }
    private struct AwaitingResponse: Sendable { let challenge: Challenge }
    private struct Registered: Sendable { let server: VerifiedServer }

    private enum State: Sendable {
        case idle(Idle)
        case awaitingResponse(AwaitingResponse)
        case registered(Registered)
        case failed
    }

    private let signer: IdentityKeyPair
    private let expectedServer: PublicIdentity?
    /// Fixed for the connection's life: the driver never switches forms after a failure.
    public let form: RegistrationForm
    private let limits: OCapNLimits
    private var state: State

    /// - Parameters:
    ///   - signer: our identity key; it signs the server's challenge (legacy) or the v2
    ///     transcript.
    ///   - challenge: fresh random bytes for this connection.
    ///   - expectedServer: pin the server's key (`serverKeyMismatch` otherwise); nil trusts any
    ///     key that signs our challenge, as Goblins does.
    ///   - form: the forms to speak with this server (v2 unless it is configured as legacy).
    public init(signer: IdentityKeyPair, challenge: Challenge, expectedServer: PublicIdentity? = nil,
                form: RegistrationForm = .v2, limits: OCapNLimits = .default) {
        self.signer = signer
        self.expectedServer = expectedServer
        self.form = form
        self.limits = limits
        state = .idle(Idle(challenge: challenge))
    }

    /// Our locator as registered (hints `f`).
    public var locator: PeerLocator { PeerLocator(identity: signer.publicIdentity) }

    /// The verified server once registered.
    public var server: VerifiedServer? {
        if case let .registered(r) = state { return r.server }
        return nil
    }

    /// The `uds:register` to send first. Call once.
    public mutating func start() -> UDSMessage {
        guard case let .idle(idle) = state else {
            // The driver starts each connection exactly once.
            preconditionFailure("RegistrationClient.start() called twice")
        }
        state = .awaitingResponse(AwaitingResponse(challenge: idle.challenge))
        if form == .v2 { return .registerV2(UDSRegisterV2(locator: locator, challenge: idle.challenge)) }
        return .register(UDSRegister(locator: locator, challenge: idle.challenge))
    }

    /// Feeds one decoded control value.
    public mutating func receive(_ value: SyrupValue) throws(OCapNError) -> [Action] {
        let message: UDSMessage
        do { message = try UDSMessage(syrup: value, limits: limits) } catch {
            state = .failed
            throw error
        }
        return try receive(message)
    }

    /// Feeds one parsed control message.
    public mutating func receive(_ message: UDSMessage) throws(OCapNError) -> [Action] {
        do {
            let (next, actions) = try step(message)
            state = next
            return actions
        } catch {
            state = .failed
            throw error
        }
    }

    /// The request to introduce us (advertised as `own`) to `target`; follow it with the marker
    /// and the descriptor. Only once registered.
    public func introductionRequest(to target: PeerLocator, advertising own: PeerLocator) -> UDSMessage {
        guard case .registered = state else { preconditionFailure("introduction requested before registration") }
        precondition(own.isSamePeer(as: locator), "`own` must be this peer's locator")
        return .newConnection(UDSNewConnection(from: own, to: target))
    }

    /// Checks into locals; the caller commits the returned state only on success.
    private func step(_ message: UDSMessage) throws(OCapNError) -> (State, [Action]) {
        switch state {
        case .idle:
            preconditionFailure("RegistrationClient.receive before start()")
        case .failed:
            preconditionFailure("RegistrationClient used after an error; the connection must be closed")
        case let .awaitingResponse(s):
            switch (form, message) {
            case let (.v2, .serverResponseV2(response)):
                return try registerV2(s, response)
            case let (.goblins, .serverResponse(response)), let (.draft, .serverResponse(response)):
                return try registerLegacy(s, response)
            case (.v2, .serverResponse), (.goblins, .serverResponseV2), (.draft, .serverResponseV2):
                // The one place a relay could try a downgrade (or a misconfiguration shows):
                // refuse, never answer in the other form.
                throw OCapNError(.registrationFormRefused,
                                 "the server answered \(message.name); this server is configured for registration \(form)")
            default:
                throw OCapNError(.unexpectedMessage, "expected a server response, got \(message.name)")
            }
        case let .registered(s):
            guard case let .newConnection(request) = message else {
                throw OCapNError(.unexpectedMessage, "expected uds:new-connection, got \(message.name)")
            }
            guard request.to.isSamePeer(as: locator) else {
                throw OCapNError(.wrongTarget, "uds:new-connection addressed to \(request.to.identity.fingerprint), not us")
            }
            return (.registered(s), [.incoming(IncomingIntroduction(claimedFrom: request.from, to: request.to))])
        }
    }

    private func checkServer(_ key: PublicIdentity, _ serverChallenge: Challenge, _ s: AwaitingResponse) throws(OCapNError) {
        if let expectedServer, key != expectedServer {
            throw OCapNError(.serverKeyMismatch, "server key \(key.fingerprint) is not the pinned \(expectedServer.fingerprint)")
        }
        if serverChallenge == s.challenge {
            throw OCapNError(.reflectedChallenge, "the server's challenge is our own challenge")
        }
    }

    private func registerV2(_ s: AwaitingResponse, _ response: UDSServerResponseV2) throws(OCapNError) -> (State, [Action]) {
        try checkServer(response.serverKey, response.serverChallenge, s)
        guard response.signature.isValidRegistration(
            .server, server: response.serverKey, client: signer.publicIdentity, clientChallenge: s.challenge,
            serverChallenge: response.serverChallenge) else {
            throw OCapNError(.badSignature, "server signature over the v2 transcript does not verify")
        }
        let server = VerifiedServer(identity: response.serverKey, form: .v2)
        let reply = UDSSignatureV2(signature: signer.signRegistration(
            .client, peer: response.serverKey, clientChallenge: s.challenge, serverChallenge: response.serverChallenge))
        return (.registered(Registered(server: server)), [.send(.signatureV2(reply)), .registered(server)])
    }

    private func registerLegacy(_ s: AwaitingResponse, _ response: UDSServerResponse) throws(OCapNError) -> (State, [Action]) {
        try checkServer(response.serverKey, response.serverChallenge, s)
        if case let .record(inner) = response.clientChallengeResponse, inner.payload != s.challenge {
            throw OCapNError(.challengeMismatch, "uds:server-response signs a payload that is not our challenge")
        }
        guard response.clientChallengeResponse.signature.isValid(by: response.serverKey, over: s.challenge) else {
            throw OCapNError(.badSignature, "server signature over our challenge does not verify")
        }
        let server = VerifiedServer(identity: response.serverKey, form: form)
        let signature = signer.sign(response.serverChallenge)
        let reply = UDSSignature(payload: response.serverChallenge, signature: form == .draft ? .sigVal(signature) : .raw(signature))
        return (.registered(Registered(server: server)), [.send(.signature(reply)), .registered(server)])
    }
}

// MARK: - Server side

/// The introduction server's side of one peer connection.
///
/// Receives `uds-v2:register` (answering with its signature over the v2 transcript, which binds
/// the claimed peer key and both challenges) or, when legacy forms are accepted, `uds:register`
/// (answering with its signature over the peer's challenge, exactly 64 bytes by type); then
/// verifies the peer's signature in the same form with the key of the registered designator.
/// A form not accepted is `registrationFormRefused` before anything is signed. Registered, it
/// accepts only `uds:new-connection` whose `from` is that peer (`spoofedFrom` otherwise).
public struct RegistrationServer: Sendable {
    public enum Action: Equatable, Sendable {
        case send(UDSMessage)
        /// The peer proved its key; route introductions for it here.
        case registered(RegisteredPeer)
        /// A checked introduction to forward with the descriptor that followed it.
        case forward(Introduction)
    }

    private struct AwaitingRegister: Sendable { let challenge: Challenge }
    private struct AwaitingLegacySignature: Sendable { let challenge: Challenge; let peer: PublicIdentity }
    private struct AwaitingV2Signature: Sendable {
        let challenge: Challenge
        let clientChallenge: Challenge
        let peer: PublicIdentity
    }
    private struct Registered: Sendable { let peer: RegisteredPeer }

    private enum State: Sendable {
        case awaitingRegister(AwaitingRegister)
        case awaitingLegacySignature(AwaitingLegacySignature)
        case awaitingV2Signature(AwaitingV2Signature)
        case registered(Registered)
        case failed
    }

    private let signer: IdentityKeyPair
    /// The forms this server answers.
    public let accepting: RegistrationForms
    private let limits: OCapNLimits
    private var state: State

    /// - Parameters:
    ///   - signer: the server's identity key; it signs each peer's challenge or v2 transcript.
    ///   - challenge: fresh random bytes for this connection.
    ///   - accepting: the registration forms answered (both by default, so Goblins peers work).
    public init(signer: IdentityKeyPair, challenge: Challenge, accepting: RegistrationForms = .all,
                limits: OCapNLimits = .default) {
        precondition(!accepting.isEmpty, "a server must accept at least one registration form")
        self.signer = signer
        self.accepting = accepting
        self.limits = limits
        state = .awaitingRegister(AwaitingRegister(challenge: challenge))
    }

    /// The verified peer once registered.
    public var peer: RegisteredPeer? {
        if case let .registered(r) = state { return r.peer }
        return nil
    }

    /// Feeds one decoded control value.
    public mutating func receive(_ value: SyrupValue) throws(OCapNError) -> [Action] {
        let message: UDSMessage
        do { message = try UDSMessage(syrup: value, limits: limits) } catch {
            state = .failed
            throw error
        }
        return try receive(message)
    }

    /// Feeds one parsed control message.
    public mutating func receive(_ message: UDSMessage) throws(OCapNError) -> [Action] {
        do {
            let (next, actions) = try step(message)
            state = next
            return actions
        } catch {
            state = .failed
            throw error
        }
    }

    /// A `uds:new-connection` whose locators the caller parsed itself (the server reads them
    /// from the record's bytes and forwards those): the check `receive(.newConnection(_))`
    /// makes, without building the request. Returns the registered sender; throws
    /// `spoofedFrom` when `from` is not its key, and what `receive` throws before registration.
    public mutating func receiveIntroduction(from: PublicIdentity, to: PublicIdentity) throws(OCapNError) -> RegisteredPeer {
        guard case let .registered(s) = state else {
            let request = UDSNewConnection(from: PeerLocator(identity: from), to: PeerLocator(identity: to))
            _ = try receive(.newConnection(request))
            preconditionFailure("an unregistered RegistrationServer accepted uds:new-connection")
        }
        guard from == s.peer.identity else {
            state = .failed
            throw Self.spoofed(from, s.peer)
        }
        return s.peer
    }

    private static func spoofed(_ from: PublicIdentity, _ peer: RegisteredPeer) -> OCapNError {
        OCapNError(.spoofedFrom, "uds:new-connection from \(from.fingerprint) on the connection of \(peer.identity.fingerprint)")
    }

    private func step(_ message: UDSMessage) throws(OCapNError) -> (State, [Action]) {
        switch state {
        case .failed:
            preconditionFailure("RegistrationServer used after an error; the connection must be closed")
        case let .awaitingRegister(s):
            switch message {
            case let .registerV2(register):
                guard accepting.contains(.v2) else {
                    throw OCapNError(.registrationFormRefused, "uds-v2:register, and this server does not accept registration v2")
                }
                let peer = register.locator.identity
                let signature = signer.signRegistration(.server, peer: peer, clientChallenge: register.challenge,
                                                        serverChallenge: s.challenge)
                let response = UDSServerResponseV2(serverKey: signer.publicIdentity, serverChallenge: s.challenge, signature: signature)
                let next = AwaitingV2Signature(challenge: s.challenge, clientChallenge: register.challenge, peer: peer)
                return (.awaitingV2Signature(next), [.send(.serverResponseV2(response))])
            case let .register(register):
                guard accepting.contains(.legacy) else {
                    throw OCapNError(.registrationFormRefused, "uds:register, and this server accepts only registration v2")
                }
                // Transport and designator were checked by the parser; hints are ignored (routing
                // ignores them, Goblins sends `f`).
                let response = UDSServerResponse(
                    serverKey: signer.publicIdentity, serverChallenge: s.challenge,
                    clientChallengeResponse: .sigVal(signer.sign(register.challenge)))
                let next = AwaitingLegacySignature(challenge: s.challenge, peer: register.locator.identity)
                return (.awaitingLegacySignature(next), [.send(.serverResponse(response))])
            default:
                throw OCapNError(.unexpectedMessage, "expected uds-v2:register or uds:register, got \(message.name)")
            }
        case let .awaitingLegacySignature(s):
            guard case let .signature(signature) = message else {
                throw OCapNError(.unexpectedMessage, "expected uds:signature, got \(message.name)")
            }
            guard signature.payload == s.challenge else {
                throw OCapNError(.challengeMismatch, "uds:signature payload is not our challenge")
            }
            guard signature.signature.signature.isValid(by: s.peer, over: s.challenge) else {
                throw OCapNError(.badSignature, "peer signature over our challenge does not verify for \(s.peer.fingerprint)")
            }
            let form: RegistrationForm
            if case .sigVal = signature.signature { form = .draft } else { form = .goblins }
            let peer = RegisteredPeer(identity: s.peer, form: form)
            return (.registered(Registered(peer: peer)), [.registered(peer)])
        case let .awaitingV2Signature(s):
            guard case let .signatureV2(signature) = message else {
                throw OCapNError(.unexpectedMessage, "expected uds-v2:signature, got \(message.name)")
            }
            guard signature.signature.isValidRegistration(
                .client, server: signer.publicIdentity, client: s.peer, clientChallenge: s.clientChallenge,
                serverChallenge: s.challenge) else {
                throw OCapNError(.badSignature, "peer signature over the v2 transcript does not verify for \(s.peer.fingerprint)")
            }
            let peer = RegisteredPeer(identity: s.peer, form: .v2)
            return (.registered(Registered(peer: peer)), [.registered(peer)])
        case let .registered(s):
            guard case let .newConnection(request) = message else {
                throw OCapNError(.unexpectedMessage, "expected uds:new-connection, got \(message.name)")
            }
            guard request.from.routingKey == s.peer.identity else { throw Self.spoofed(request.from.identity, s.peer) }
            return (.registered(s), [.forward(Introduction(sender: s.peer, request: request))])
        }
    }
}
