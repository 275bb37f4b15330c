import Audit
import Dispatch
import Foundation
import Glibc
import Identity
import Logging
import OCapN
@testable import Runtime
import RuntimeTestSupport
import TestSupport
import Testing
import Transport

/// The registration relay of issue 11, performed in-suite by a malicious co-server M against a
/// real introduction server S (the runtime, in this process) and a real peer netlayer V that
/// registers with both on purpose, pinning each key. M opens a registration at S *as V*, hands
/// S's challenge to V as its own and forwards V's answer. Against v2 the answer is worthless at
/// S; against a Goblins-form registration it verifies, and S's liveness rule keeps V's live
/// registration. Either way S never displaces V and no introduction meant for V reaches M.
@Suite(.serialized, .ownThread) struct RegistrationRelayTests {
    /// S: the introduction server runtime with a memory audit sink.
    final class Server {
        let key = IdentityKeyPair.generate()
        let directory: String
        let path: String
        let audit: AuditMemorySink
        let server: IntroductionServer

        init() throws {
            directory = NSTemporaryDirectory() + "ocapn-relay-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false,
                                                    attributes: [.posixPermissions: 0o700])
            path = directory + "/s.sock"
            audit = AuditMemorySink(writer: key.publicIdentity)
            server = IntroductionServer(
                identity: key, socket: try IntroductionServerSetup.openSocket(path: path, mode: 0o600),
                configuration: .init(core: IntroductionServerConfiguration(allowedUIDs: [getuid()])), audit: audit,
                logger: Logger(label: "test"))
            server.start()
        }

        var identity: PublicIdentity { key.publicIdentity }

        func events(_ kind: AuditEventKind) -> [AuditEvent] { audit.events.filter { $0.kind == kind } }

        func stop() async {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in server.stop { done.resume() } }
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// One blocking control connection (test side).
    final class Control: @unchecked Sendable {
        let descriptor: FileDescriptor
        private var reader = ControlStreamReader<FileDescriptor>()
        /// Set once the other side closed.
        private(set) var ended = false

        init(_ descriptor: FileDescriptor) { self.descriptor = descriptor }

        func send(_ message: UDSMessage) throws {
            let bytes = message.encoded
            guard case let .processed(n) = try descriptor.send(bytes), n == bytes.count else {
                throw TransportError(.timedOut, "short write in test")
            }
        }

        /// The next item, or nil at end of stream or after `seconds`.
        func next(seconds: Double = 5) throws -> ControlStreamReader<FileDescriptor>.Item? {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let deadline = Date().addingTimeInterval(seconds)
            while true {
                if let item = try reader.next() { return item }
                let left = deadline.timeIntervalSinceNow
                guard left > 0, try waitReadable(descriptor, seconds: left) else { return nil }
                let result = try buffer.withUnsafeMutableBytes { try descriptor.receive(into: $0, descriptorCapacity: 4) }
                guard case let .processed(r) = result else { continue }
                if r.isEndOfStream {
                    ended = true
                    return nil
                }
                for extra in try reader.receive(Array(buffer[..<r.byteCount]), descriptors: r.descriptors) { extra.close() }
            }
        }

        func nextMessage(seconds: Double = 5) throws -> UDSMessage? {
            guard case let .message(value)? = try next(seconds: seconds) else { return nil }
            return try UDSMessage(syrup: value)
        }

        func close() {
            descriptor.close()
            for d in reader.drainDescriptors() { d.close() }
        }
    }

    /// M: a co-server the victim registers with (pinning M's key), which relays every
    /// registration it receives to S as the registering peer.
    final class RelayingCoServer: @unchecked Sendable {
        enum Mode {
            /// Forward the victim's own form.
            case relay
            /// Victim spoke v2: register at S in the legacy form and answer the victim in it.
            case downgrade
            /// Refuse v2 outright: close the victim's connection on `uds-v2:register`.
            case refuseV2
        }

        let key = IdentityKeyPair.generate()
        let path: String
        let target: String
        let mode: Mode
        let queue = DispatchQueue(label: "relaying-co-server")
        private var listener: Listener?
        private let lock = NSLock()
        private var _relays = 0
        private var _misdelivered = 0
        private var _answersAfterDowngrade = 0
        private var _registersSeen: [String] = []
        private var open: [Control] = []
        private let finished = DispatchGroup()

        init(directory: String, relayingTo target: String, mode: Mode = .relay) throws {
            path = directory + "/m.sock"
            self.target = target
            self.mode = mode
            let socket = try ListeningSocket.bind(path: path)
            queue.sync {
                let l = Listener(socket: socket, queue: queue) { [unowned self] event in
                    guard case let .accepted(descriptor, _) = event else { return }
                    let victim = Control(descriptor)
                    lock.lock(); open.append(victim); lock.unlock()
                    finished.enter()
                    Thread.detachNewThread { [self] in
                        relay(victim)
                        finished.leave()
                    }
                }
                listener = l
                l.start()
            }
        }

        var identity: PublicIdentity { key.publicIdentity }
        private var signer: IdentityKeyPair { key }

        /// Relays completed up to forwarding the victim's signature to S.
        var relays: Int { lock.lock(); defer { lock.unlock() }; return _relays }
        /// Introductions S delivered to M's relayed connection (each one meant for the victim).
        var misdelivered: Int { lock.lock(); defer { lock.unlock() }; return _misdelivered }
        /// Messages the victim sent after a downgraded response (a fallback would send one).
        var answersAfterDowngrade: Int { lock.lock(); defer { lock.unlock() }; return _answersAfterDowngrade }
        /// The label of every first message a victim sent, in order.
        var registersSeen: [String] { lock.lock(); defer { lock.unlock() }; return _registersSeen }

        private var isStopping: Bool { lock.lock(); defer { lock.unlock() }; return _stopping }
        private var _stopping = false

        private func relay(_ victim: Control) {
            defer { victim.close() }
            guard let first = try? victim.nextMessage() else { return }
            lock.lock(); _registersSeen.append(first.name); lock.unlock()
            if mode == .refuseV2, case .registerV2 = first { return }
            let victimChallenge: Challenge
            let locator: PeerLocator
            switch first {
            case let .registerV2(r): (victimChallenge, locator) = (r.challenge, r.locator)
            case let .register(r): (victimChallenge, locator) = (r.challenge, r.locator)
            default: return
            }
            guard let toS = try? FileDescriptor.connect(unixPath: target, timeout: .seconds(2)) else { return }
            let atS = Control(toS)
            lock.lock(); open.append(atS); lock.unlock()
            defer { atS.close() }
            let legacyAtS = mode == .downgrade || first.name == UDSRegister.label
            do {
                try atS.send(legacyAtS ? .register(UDSRegister(locator: locator, challenge: victimChallenge)) : first)
                guard let response = try atS.nextMessage() else { return }
                let serverChallenge: Challenge
                switch response {
                case let .serverResponseV2(r): serverChallenge = r.serverChallenge
                case let .serverResponse(r): serverChallenge = r.serverChallenge
                default: return
                }
                // S's challenge, presented to the victim as M's own.
                if legacyAtS {
                    try victim.send(.serverResponse(UDSServerResponse(
                        serverKey: identity, serverChallenge: serverChallenge,
                        clientChallengeResponse: .sigVal(signer.sign(victimChallenge)))))
                } else {
                    try victim.send(.serverResponseV2(UDSServerResponseV2(
                        serverKey: identity, serverChallenge: serverChallenge,
                        signature: signer.signRegistration(.server, peer: locator.identity, clientChallenge: victimChallenge,
                                                           serverChallenge: serverChallenge))))
                }
                guard let answer = try victim.nextMessage(seconds: 2) else { return }
                if mode == .downgrade {
                    lock.lock(); _answersAfterDowngrade += 1; lock.unlock()
                }
                try atS.send(answer)
                lock.lock(); _relays += 1; lock.unlock()
                victim.close()
                // Whatever S sends now on the relayed registration would be meant for the victim.
                while !atS.ended && !isStopping {
                    if case let .newConnection(_, d)? = try atS.next(seconds: 0.1) {
                        d.close()
                        lock.lock(); _misdelivered += 1; lock.unlock()
                    }
                }
            } catch {
                return
            }
        }

        func stop() {
            queue.sync {
                listener?.close()
                listener = nil
            }
            lock.lock(); _stopping = true; lock.unlock()
            #expect(finished.wait(timeout: .now() + 10) == .success)
            lock.lock(); let all = open; open = []; lock.unlock()
            for c in all { c.close() }
        }
    }

    /// V registers with S (in `formAtS`) and, `rounds` times, with M (in `formAtM`); M relays
    /// each one. Then A connects to V through S `connects` times.
    static func attack(formAtS: RegistrationForm, formAtM: RegistrationForm, rounds: Int = 3, connects: Int = 4)
        async throws -> (s: Server, m: RelayingCoServer, delivered: Int) {
        let s = try Server()
        let m = try RelayingCoServer(directory: s.directory, relayingTo: s.path)
        let v = TestPeer(), a = TestPeer()
        do {
            _ = try await v.netlayer.addServer(path: s.path, expectedKey: s.identity, form: formAtS)
            _ = try await a.netlayer.addServer(path: s.path, expectedKey: s.identity)
        } catch {
            await v.netlayer.shutdown()
            await a.netlayer.shutdown()
            throw error
        }
        for round in 0..<rounds {
            // M closes V's connection once it has V's answer (or S refused to answer), so V
            // registers with M afresh each round, as a peer that reconnects would.
            _ = try? await v.netlayer.addServer(path: m.path, expectedKey: m.identity, form: formAtM)
            #expect(await PeerTestSupport.eventually(timeout: .seconds(5)) {
                s.audit.events.filter { $0.kind == .registrationRefused || $0.kind == .registrationAccepted }.count
                    >= 3 + round
            }, "S decided on relay \(round + 1)")
        }
        var delivered = 0
        for _ in 0..<connects {
            async let incoming = v.nextIncoming(timeout: .seconds(3))
            let mine = try? await a.netlayer.connect(to: v.netlayer.locator)
            if let theirs = await incoming {
                delivered += 1
                await theirs.abort()
            }
            await mine?.abort()
        }
        await v.netlayer.shutdown()
        await a.netlayer.shutdown()
        return (s, m, delivered)
    }

    @Test("A co-server relaying a v2 peer's registration to S: every relay refused as badSignature, zero displacements, zero introductions misdelivered")
    func relayAgainstV2() async throws {
        let (s, m, delivered) = try await Self.attack(formAtS: .v2, formAtM: .v2)
        #expect(m.relays == 3)
        #expect(s.events(.registrationRefused).map(\.reason) == Array(repeating: AuditReason(introductionServer: .badSignature), count: 3))
        #expect(s.events(.registrationAccepted).count == 2, "only V's and A's own registrations")
        #expect(s.events(.registrationAccepted).allSatisfy { $0.reason == nil }, "no displacement")
        #expect(delivered == 4 && m.misdelivered == 0)
        m.stop()
        await s.stop()
    }

    @Test("A co-server relaying a Goblins-form registration to S: the signature verifies, the liveness rule keeps V's live registration")
    func relayAgainstGoblinsForm() async throws {
        let (s, m, delivered) = try await Self.attack(formAtS: .goblins, formAtM: .goblins)
        #expect(m.relays == 3)
        let refused = s.events(.registrationRefused)
        #expect(refused.map(\.reason) == Array(repeating: AuditReason(introductionServer: .liveRegistrationKept), count: 3))
        #expect(refused.allSatisfy { $0.credentials != nil && $0.incumbentCredentials != nil })
        #expect(s.events(.registrationAccepted).count == 2 && s.events(.registrationAccepted).allSatisfy { $0.reason == nil })
        #expect(delivered == 4 && m.misdelivered == 0)
        m.stop()
        await s.stop()
    }

    @Test("A legacy relay of a key that registered with v2 at S is refused before S signs anything")
    func legacyRelayOfV2Key() async throws {
        let (s, m, delivered) = try await Self.attack(formAtS: .v2, formAtM: .goblins, rounds: 1, connects: 1)
        #expect(s.events(.registrationRefused).map(\.reason) == [AuditReason(introductionServer: .registrationFormRefused)])
        #expect(m.relays == 0, "S answered nothing M could show the victim")
        #expect(delivered == 1 && m.misdelivered == 0)
        m.stop()
        await s.stop()
    }

    @Test("A relay that answers a v2 peer in the legacy form makes registration fail; the peer never falls back")
    func downgradeFails() async throws {
        let s = try Server()
        let m = try RelayingCoServer(directory: s.directory, relayingTo: s.path, mode: .downgrade)
        let v = TestPeer()
        let error = await PeerTestSupport.code { try await v.netlayer.addServer(path: m.path, expectedKey: m.identity) }
        #expect(error == .netlayer(.registrationFailed))
        let record = v.events(.registrationRefused).first
        #expect(record != nil)
        try? await Task.sleep(for: .milliseconds(300))
        #expect(m.answersAfterDowngrade == 0, "the peer answered a downgraded response")
        #expect(s.events(.registrationAccepted).isEmpty)
        #expect(v.netlayer.liveServers.isEmpty)
        await v.netlayer.shutdown()
        m.stop()
        await s.stop()
    }

    @Test("A relay that refuses v2 outright makes registration fail, again on every retry; the peer never offers a legacy form")
    func refusedV2IsNotRetriedInLegacy() async throws {
        let s = try Server()
        let m = try RelayingCoServer(directory: s.directory, relayingTo: s.path, mode: .refuseV2)
        let v = TestPeer()
        for _ in 0..<2 {
            let error = await PeerTestSupport.code { try await v.netlayer.addServer(path: m.path, expectedKey: m.identity) }
            #expect(error == .netlayer(.registrationFailed) || error == .netlayer(.serverDisconnected))
        }
        #expect(m.registersSeen == [UDSRegisterV2.label, UDSRegisterV2.label])
        await v.netlayer.shutdown()
        m.stop()
        await s.stop()
    }
}
