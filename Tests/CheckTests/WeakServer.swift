import Check
import Foundation
import Glibc
@testable import Identity
import OCapN
import SodiumCrypto
import Syrup
import Transport

/// One weakness of the introduction servers found in the wild (wire dossier §7, §9), switched on
/// in `WeakServer`. Each names the checks that must FAIL because of it, and only those.
enum ServerWeakness: String, CaseIterable, Sendable, CustomStringConvertible {
    case signsAnyChallengeLength
    case skipsSignatureCheck
    case verifiesSentPayload
    case lenientDesignator
    case forwardsBeforeRegistration
    case answersSecondRegister
    case ignoresFrom
    case forwardsOwnDescriptorWithoutOne
    case takesDescriptorsAnywhere
    case forwardsExtraDescriptors
    case noDescriptorChecks
    case keepsDescriptors
    case staleRoutes
    case displacesLiveRegistration
    case unboundedPending
    case neverExpiresPending
    case noRegistrationDeadline
    case leavesOpenOnError

    var description: String { rawValue }

    /// The rows meant for this weakness.
    var failingChecks: Set<String> {
        switch self {
        case .signsAnyChallengeLength: return ["E2.challenge-length"]
        case .skipsSignatureCheck: return ["E2.bad-signature", "E2.wrong-key"]
        case .verifiesSentPayload: return ["E2.replayed-signature"]
        case .lenientDesignator: return ["D4.non-canonical-designator"]
        case .forwardsBeforeRegistration: return ["E1.intro-before-registration"]
        case .answersSecondRegister: return ["E1.out-of-order"]
        case .ignoresFrom: return ["E4.from-spoofing"]
        case .forwardsOwnDescriptorWithoutOne: return ["A2.no-descriptor"]
        case .takesDescriptorsAnywhere: return ["A1.descriptor-on-register", "A1.descriptor-on-record"]
        case .forwardsExtraDescriptors: return ["A3.extra-descriptors"]
        case .noDescriptorChecks: return ["A8.kind-file", "A8.kind-pipe", "A9.kind-tcp", "A9.kind-listening", "A9.kind-own-connection"]
        case .keepsDescriptors: return ["A10.keeps-descriptor"]
        case .staleRoutes: return ["E3.re-registration"]
        case .displacesLiveRegistration: return []  // E2.registration-relay WARNs: see `warningChecks`
        case .unboundedPending: return ["F5.pending-bound"]
        case .neverExpiresPending: return ["F6.pending-expiry"]
        case .noRegistrationDeadline: return ["F1.silent-client", "F1.slow-client"]
        case .leavesOpenOnError: return ["I4.close-on-error"]
        }
    }
}

/// A small introduction server over a real unix socket, one thread per connection, that behaves
/// as ours does (reference behaviour: every check passes) except for the weaknesses given.
/// Everything it opens is closed by `stop()`.
final class WeakServer: @unchecked Sendable {
    let path: String
    let weaknesses: Set<ServerWeakness>
    let key = IdentityKeyPair.generate()
    let registrationTimeout: Duration
    let pendingLifetime: Duration
    let maxPendingPerSender = 8

    private let listener: ListeningSocket
    private let lock = NSLock()
    private var stopping = false
    private var connections: [ObjectIdentifier: Connection] = [:]
    private var routes: [PublicIdentity: Connection] = [:]
    private var pending: [Pending] = []
    private var keptDescriptors: [FileDescriptor] = []
    private let threads = DispatchGroup()

    struct Pending {
        let target: PublicIdentity
        let sender: ObjectIdentifier
        let record: [UInt8]
        let descriptors: [FileDescriptor]
        let expires: ContinuousClock.Instant?
    }

    final class Connection: @unchecked Sendable {
        let probe: ProbeConnection
        let sendLock = NSLock()
        var alive = true
        init(_ probe: ProbeConnection) { self.probe = probe }

        func deliver(_ record: [UInt8], _ descriptors: [FileDescriptor]) -> Bool {
            sendLock.lock()
            defer { sendLock.unlock() }
            return probe.send(record) && probe.sendMarker(passing: descriptors)
        }
    }

    init(path: String, _ weaknesses: Set<ServerWeakness> = [], registrationTimeout: Duration = .milliseconds(300),
         pendingLifetime: Duration = .milliseconds(1000)) throws {
        self.path = path
        self.weaknesses = weaknesses
        self.registrationTimeout = registrationTimeout
        self.pendingLifetime = pendingLifetime
        listener = try ListeningSocket.bind(path: path)
        threads.enter()
        Thread { [self] in acceptLoop(); threads.leave() }.start()
    }

    func has(_ w: ServerWeakness) -> Bool { weaknesses.contains(w) }

    var isStopping: Bool { lock.withLock { stopping } }

    func stop() {
        lock.withLock { stopping = true }
        threads.wait()
        lock.withLock {
            for p in pending { for d in p.descriptors { d.close() } }
            pending.removeAll()
            for d in keptDescriptors { d.close() }
            keptDescriptors.removeAll()
            routes.removeAll()
        }
        listener.unlinkPath()
        listener.close()
    }

    // MARK: accept loop and expiry

    private func acceptLoop() {
        while !isStopping {
            expirePending()
            let raw = (try? listener.descriptor.withRawDescriptor { fd -> Int32 in
                var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&entry, 1, 20) > 0 else { return -1 }
                let accepted = accept(fd, nil, nil)
                if accepted >= 0 { _ = fcntl(accepted, F_SETFD, FD_CLOEXEC) }
                return accepted
            }) ?? -1
            guard raw >= 0 else { continue }
            let connection = Connection(ProbeConnection(adopting: FileDescriptor(adopting: raw),
                                                        keepingStrayDescriptors: has(.takesDescriptorsAnywhere)))
            lock.withLock { connections[ObjectIdentifier(connection)] = connection }
            threads.enter()
            let thread = Thread { [self] in serve(connection); threads.leave() }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    private func expirePending() {
        let now = ContinuousClock.now
        lock.withLock {
            pending.removeAll { p in
                guard let expires = p.expires, expires <= now else { return false }
                for d in p.descriptors { d.close() }
                return true
            }
        }
    }

    // MARK: one connection

    private enum State {
        case awaitingRegister
        case awaitingSignature(key: PublicIdentity, challenge: [UInt8])
        case registered(PublicIdentity)
    }

    private struct Refusal: Error { let reason: String }

    private func serve(_ connection: Connection) {
        let id = ObjectIdentifier(connection)
        let probe = connection.probe
        let deadline = ContinuousClock.now.advanced(by: registrationTimeout)
        var state = State.awaitingRegister
        defer {
            lock.withLock {
                connection.alive = false
                connections[id] = nil
                if case let .registered(key) = state, routes[key] === connection, !has(.staleRoutes) { routes[key] = nil }
                // Introductions this sender queued stay queued (their receivers may still come).
            }
            connection.sendLock.withLock { probe.close() }
        }
        do {
            while !isStopping {
                if case .registered = state {} else if !has(.noRegistrationDeadline), ContinuousClock.now >= deadline { return }
                switch probe.next(timeout: .milliseconds(20)) {
                case .timeout: continue
                case .closed: return
                case let .malformed(reason): throw Refusal(reason: reason)
                case let .value(value): state = try handle(value, state, connection)
                case let .introduction(value, descriptors):
                    try introduce(value, descriptors, state, connection)
                }
            }
        } catch {
            guard has(.leavesOpenOnError) else { return }
            // Goblins: the handler raised; nothing reads or closes the socket any more.
            while !isStopping { usleep(20_000) }
        }
    }

    private func handle(_ value: SyrupValue, _ state: State, _ connection: Connection) throws -> State {
        switch state {
        case .awaitingRegister:
            return try register(value, connection)
        case let .awaitingSignature(peer, challenge):
            guard case let .signature(signature)? = try? UDSMessage(syrup: value) else { throw Refusal(reason: "expected uds:signature") }
            let signed = has(.verifiesSentPayload) ? signature.payload.bytes : challenge
            guard has(.verifiesSentPayload) || signature.payload.bytes == challenge else { throw Refusal(reason: "payload") }
            guard has(.skipsSignatureCheck) || peer.verify(signature: signature.signature.signature.bytes, message: signed) else {
                throw Refusal(reason: "badSignature")
            }
            let deliveries: [Pending] = try lock.withLock {
                if let old = routes[peer], old !== connection {
                    if has(.staleRoutes) { throw Refusal(reason: "existing route") }  // Goblins: no clause matches
                    if old.alive && !has(.displacesLiveRegistration) { throw Refusal(reason: "live registration kept") }
                }
                routes[peer] = connection
                let mine = pending.filter { $0.target == peer }
                pending.removeAll { $0.target == peer }
                return mine
            }
            for p in deliveries { forward(p.record, p.descriptors, to: connection) }
            return .registered(peer)
        case let .registered(current):
            if has(.answersSecondRegister), case .record(.symbol(UDSRegister.label), _) = value {
                _ = try register(value, connection)
                return .registered(current)
            }
            throw Refusal(reason: "unexpected message")
        }
    }

    private func register(_ value: SyrupValue, _ connection: Connection) throws -> State {
        guard case let .record(.symbol(UDSRegister.label), fields) = value, fields.count == 2,
              case let .record(.symbol(PeerLocator.label), locator) = fields[0], locator.count == 3,
              case let .string(designator) = locator[1], case let .bytes(challenge) = fields[1] else {
            throw Refusal(reason: "expected uds:register")
        }
        var peer = try? PublicIdentity(designator: designator)
        if peer == nil, has(.lenientDesignator) {
            peer = try? PublicIdentity(designator: designator.lowercased().replacingOccurrences(of: "=", with: ""))
        }
        guard let peer else { throw Refusal(reason: "designator") }
        guard challenge.count == Challenge.length || has(.signsAnyChallengeLength) else { throw Refusal(reason: "challengeLength") }
        let mine = Challenge.random().bytes
        // A weak server may sign a challenge of any length: the raw primitive, not the key
        // pair's typed operation (which takes only a 64-byte `Challenge`).
        let signature = try Ed25519Signature(Ed25519.sign(challenge, secretKey: key.secretKey))
        let response = SyrupValue.record(label: .symbol(UDSServerResponse.label),
                                         fields: [key.publicIdentity.captpPublicKey, .bytes(mine), signature.captpSigVal])
        guard connection.probe.send(SyrupEncoder.encode(response)) else { throw Refusal(reason: "send") }
        return .awaitingSignature(key: peer, challenge: mine)
    }

    private func introduce(_ value: SyrupValue, _ received: [FileDescriptor], _ state: State, _ connection: Connection) throws {
        var descriptors = received
        if has(.takesDescriptorsAnywhere) { descriptors = connection.probe.takeStrayDescriptors() + descriptors }
        let sender: PublicIdentity?
        if case let .registered(key) = state { sender = key } else { sender = nil }
        guard sender != nil || has(.forwardsBeforeRegistration) else {
            for d in descriptors { d.close() }
            throw Refusal(reason: "not registered")
        }
        guard case let .newConnection(request)? = try? UDSMessage(syrup: value) else {
            for d in descriptors { d.close() }
            throw Refusal(reason: "malformed uds:new-connection")
        }
        guard has(.ignoresFrom) || sender == nil || request.from.identity == sender else {
            for d in descriptors { d.close() }
            throw Refusal(reason: "spoofedFrom")
        }
        let substituted = descriptors.isEmpty
        if substituted {
            guard has(.forwardsOwnDescriptorWithoutOne) else { throw Refusal(reason: "fdMissing") }
            // Goblins reads the zeroed fd slot as 0 and forwards its own stdin; /dev/null stands in.
            descriptors = [FileDescriptor(adopting: open("/dev/null", O_RDWR | O_CLOEXEC))]
        }
        if descriptors.count > 1 && !has(.forwardsExtraDescriptors) {
            for d in descriptors.dropFirst() { d.close() }  // issue #17: keep the first, close the rest
            descriptors = [descriptors[0]]
        }
        if !has(.noDescriptorChecks), !substituted, (try? descriptors[0].validateAsConnectedUnixStream()) == nil {
            for d in descriptors { d.close() }
            return  // semantic error: the descriptor goes, the connection stays
        }
        let target = request.to.identity
        let record = UDSMessage.newConnection(request).encoded
        let route: Connection? = lock.withLock {
            if let r = routes[target], r.alive { return r }
            if routes[target] != nil { return nil }  // a stale route: Goblins hands it to a halted actor
            let held = pending.filter { $0.sender == ObjectIdentifier(connection) }.count
            if held >= maxPendingPerSender && !has(.unboundedPending) {
                for d in descriptors { d.close() }
                return nil
            }
            pending.append(Pending(target: target, sender: ObjectIdentifier(connection), record: record, descriptors: descriptors,
                                   expires: has(.neverExpiresPending) ? nil : ContinuousClock.now.advanced(by: pendingLifetime)))
            return nil
        }
        if let route { forward(record, descriptors, to: route) } else if lock.withLock({ routes[target] != nil && routes[target]?.alive == false }) {
            lock.withLock { keptDescriptors += descriptors }
        }
    }

    private func forward(_ record: [UInt8], _ descriptors: [FileDescriptor], to target: Connection) {
        _ = target.deliver(record, descriptors)
        if has(.keepsDescriptors) {
            lock.withLock { keptDescriptors += descriptors }
        } else {
            for d in descriptors { d.close() }
        }
    }
}
