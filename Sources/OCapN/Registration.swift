import Identity
import Syrup

// Sans-IO state machines for one control connection (ocapn-uds-wire.md §6): the registration
// handshake, then the `uds:new-connection` traffic that follows it. Values in, actions out; no
// sockets, clocks or logs. Challenges are injected (use `Challenge.random()` in production).
//
// Every thrown error leaves the machine failed: the caller must close the connection (and any
// descriptor that came with the message). Feeding a failed or unstarted machine is a caller bug
// and traps.

/// The server's identity, proven by its signature over our fresh challenge. Only
/// `RegistrationClient` makes one.
public struct VerifiedServer: Equatable, Sendable {
    public let identity: PublicIdentity
    fileprivate init(identity: PublicIdentity) { self.identity = identity }
}

/// A peer that proved it holds the key of the designator it registered. Only
/// `RegistrationServer` makes one.
public struct RegisteredPeer: Equatable, Sendable {
    public let identity: PublicIdentity
    fileprivate init(identity: PublicIdentity) { self.identity = identity }

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
/// `start()` gives `uds:register`; `receive` of the `uds:server-response` verifies the server
/// (optionally pinned) over our challenge and answers `uds:signature`. Registered, it accepts
/// only `uds:new-connection` addressed to us.
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

    private let signer: SigningIdentity
    private let expectedServer: PublicIdentity?
    private let limits: OCapNLimits
    private var state: State

    /// - Parameters:
    ///   - signer: our identity key; it signs the server's challenge.
    ///   - challenge: fresh random bytes for this connection.
    ///   - expectedServer: pin the server's key (`serverKeyMismatch` otherwise); nil trusts any
    ///     key that signs our challenge, as Goblins does.
    public init(signer: SigningIdentity, challenge: Challenge, expectedServer: PublicIdentity? = nil,
                limits: OCapNLimits = .default) {
        self.signer = signer
        self.expectedServer = expectedServer
        self.limits = limits
        state = .idle(Idle(challenge: challenge))
    }

    /// Our locator as registered (hints `f`).
    public var locator: PeerLocator { PeerLocator(identity: signer.identity) }

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
            guard case let .serverResponse(response) = message else {
                throw OCapNError(.unexpectedMessage, "expected uds:server-response, got \(message.name)")
            }
            if let expectedServer, response.serverKey != expectedServer {
                throw OCapNError(.serverKeyMismatch, "server key \(response.serverKey.fingerprint) is not the pinned \(expectedServer.fingerprint)")
            }
            if case let .record(inner) = response.clientChallengeResponse, inner.payload != s.challenge {
                throw OCapNError(.challengeMismatch, "uds:server-response signs a payload that is not our challenge")
            }
            if response.serverChallenge == s.challenge {
                throw OCapNError(.reflectedChallenge, "the server's challenge is our own challenge")
            }
            guard response.clientChallengeResponse.signature.isValid(by: response.serverKey, over: s.challenge) else {
                throw OCapNError(.badSignature, "server signature over our challenge does not verify")
            }
            let server = VerifiedServer(identity: response.serverKey)
            let reply = UDSSignature(payload: response.serverChallenge, signature: .raw(signer.sign(response.serverChallenge)))
            return (.registered(Registered(server: server)), [.send(.signature(reply)), .registered(server)])
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
}

// MARK: - Server side

/// The introduction server's side of one peer connection.
///
/// Receives `uds:register`, answers `uds:server-response` (its signature over the peer's
/// challenge, which is exactly 64 bytes by type), verifies the peer's `uds:signature` over its
/// own challenge with the key of the registered designator. Registered, it accepts only
/// `uds:new-connection` whose `from` is that peer (`spoofedFrom` otherwise).
public struct RegistrationServer: Sendable {
    public enum Action: Equatable, Sendable {
        case send(UDSMessage)
        /// The peer proved its key; route introductions for it here.
        case registered(RegisteredPeer)
        /// A checked introduction to forward with the descriptor that followed it.
        case forward(Introduction)
    }

    private struct AwaitingRegister: Sendable { let challenge: Challenge }
    private struct AwaitingSignature: Sendable { let challenge: Challenge; let peer: PublicIdentity }
    private struct Registered: Sendable { let peer: RegisteredPeer }

    private enum State: Sendable {
        case awaitingRegister(AwaitingRegister)
        case awaitingSignature(AwaitingSignature)
        case registered(Registered)
        case failed
    }

    private let signer: SigningIdentity
    private let limits: OCapNLimits
    private var state: State

    /// - Parameters:
    ///   - signer: the server's identity key; it signs each peer's challenge.
    ///   - challenge: fresh random bytes for this connection.
    public init(signer: SigningIdentity, challenge: Challenge, limits: OCapNLimits = .default) {
        self.signer = signer
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

    private func step(_ message: UDSMessage) throws(OCapNError) -> (State, [Action]) {
        switch state {
        case .failed:
            preconditionFailure("RegistrationServer used after an error; the connection must be closed")
        case let .awaitingRegister(s):
            guard case let .register(register) = message else {
                throw OCapNError(.unexpectedMessage, "expected uds:register, got \(message.name)")
            }
            // Transport and designator were checked by the parser; hints are ignored (routing
            // ignores them, Goblins sends `f`).
            let response = UDSServerResponse(
                serverKey: signer.identity, serverChallenge: s.challenge,
                clientChallengeResponse: .sigVal(signer.sign(register.challenge)))
            let next = AwaitingSignature(challenge: s.challenge, peer: register.locator.identity)
            return (.awaitingSignature(next), [.send(.serverResponse(response))])
        case let .awaitingSignature(s):
            guard case let .signature(signature) = message else {
                throw OCapNError(.unexpectedMessage, "expected uds:signature, got \(message.name)")
            }
            guard signature.payload == s.challenge else {
                throw OCapNError(.challengeMismatch, "uds:signature payload is not our challenge")
            }
            guard signature.signature.signature.isValid(by: s.peer, over: s.challenge) else {
                throw OCapNError(.badSignature, "peer signature over our challenge does not verify for \(s.peer.fingerprint)")
            }
            let peer = RegisteredPeer(identity: s.peer)
            return (.registered(Registered(peer: peer)), [.registered(peer)])
        case let .registered(s):
            guard case let .newConnection(request) = message else {
                throw OCapNError(.unexpectedMessage, "expected uds:new-connection, got \(message.name)")
            }
            guard request.from.routingKey == s.peer.identity else {
                throw OCapNError(.spoofedFrom, "uds:new-connection from \(request.from.identity.fingerprint) on the connection of \(s.peer.identity.fingerprint)")
            }
            return (.registered(s), [.forward(Introduction(sender: s.peer, request: request))])
        }
    }
}
