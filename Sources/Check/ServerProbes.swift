import Foundation
import Identity
import OCapN
import Syrup
import Transport

extension ServerChecker {
    /// Runs the probe of check `id` (docs/CHECK.md describes each).
    func probe(_ id: String) throws -> (CheckStatus, String) {
        switch id {
        case "E2.register-goblins": return try registerGoblins()
        case "E2.register-draft": return try registerDraft()
        case "E2.worked-example": return try workedExample()
        case "E2.bad-signature":
            return try forgedRegistration("a signature with one bit flipped") { key, challenge in
                var s = key.sign(challenge).bytes
                s[5] ^= 0x01
                return s
            }
        case "E2.wrong-key":
            let other = IdentityKeyPair.generate()
            return try forgedRegistration("a valid signature by another key") { _, challenge in other.sign(challenge).bytes }
        case "E2.replayed-signature": return try replayedSignature()
        case "E2.challenge-length": return try challengeLengths()
        case "E2.registration-relay": return try registrationRelay()
        case "D4.non-canonical-designator": return try nonCanonicalDesignator()
        case "D1.length-prefix":
            return try hostileBytes(Array("<12'uds:register99999999999999:".utf8), "a 14-digit length prefix")
        case "D1.oversized":
            return try hostileBytes(Array("<12'uds:register20000:".utf8) + [UInt8](repeating: 0x41, count: 20000) + Array(">".utf8),
                                    "a 20 KB uds:register")
        case "D2.deep-nesting":
            return try hostileBytes([UInt8](repeating: UInt8(ascii: "["), count: 4096), "4096 nested lists")
        case "D7.trailing-garbage":
            let key = IdentityKeyPair.generate()
            let register = UDSMessage.register(UDSRegister(locator: PeerLocator(identity: key.publicIdentity), challenge: .random())).encoded
            return try hostileBytes(register + [0xff, 0xfe, 0x00, 0x7f] + Array("garbage".utf8), "uds:register followed by non-Syrup bytes")
        case "E1.intro-before-registration": return try introBeforeRegistration()
        case "E1.out-of-order": return try outOfOrder()
        case "E4.from-spoofing": return try fromSpoofing()
        case "A2.no-descriptor": return try noDescriptor()
        case "A1.descriptor-on-register": return try descriptorOnRegister()
        case "A1.descriptor-on-record": return try descriptorOnRecord()
        case "A3.extra-descriptors": return try extraDescriptors()
        case "A8.kind-file": return try wrongKind("a regular file") { try WrongKinds.regularFile() }
        case "A8.kind-pipe":
            return try wrongKind("a pipe") {
                let (r, w) = try WrongKinds.pipeEnds()
                w.close()
                return r
            }
        case "A9.kind-tcp": return try wrongKind("a TCP socket") { try WrongKinds.tcpSocket() }
        case "A9.kind-listening": return try wrongKind("a listening unix socket") { try WrongKinds.listeningUnixSocket() }
        case "A9.kind-own-connection": return try wrongKind("its own control connection", ownConnection: true) { throw ProbeSetupFailure(detail: "unused") }
        case "A10.keeps-descriptor": return try keepsDescriptor()
        case "E3.re-registration": return try reRegistration()
        case "F5.pending-bound": return try pendingBound()
        case "F6.pending-expiry": return try pendingExpiry()
        case "F1.silent-client": return try silentClient()
        case "F1.slow-client": return try slowClient()
        case "I4.close-on-error": return try closeOnError()
        case "I1.alive":
            let (alive, detail) = serverStillServes()
            return (alive ? .pass : .fail, detail)
        default:
            preconditionFailure("no probe for check \(id)")  // the table and this switch go together
        }
    }

    // MARK: registration

    private func registerGoblins() throws -> (CheckStatus, String) {
        let a = try connect(), b = try connect()
        defer { a.close(); b.close() }
        let ka = IdentityKeyPair.generate(), kb = IdentityKeyPair.generate()
        let (ra, why) = startRegistration(a, ka)
        guard let ra else { return (.fail, "uds:register: \(why)") }
        guard let rb = startRegistration(b, kb).0 else { return (.fail, "second uds:register failed") }
        guard ra.serverChallenge.count == Challenge.length else {
            return (.fail, "the server's challenge is \(ra.serverChallenge.count) bytes, not 64")
        }
        a.send(try signature(ka, over: ra.serverChallenge, form: .raw))
        b.send(try signature(kb, over: rb.serverChallenge, form: .raw))
        let (mine, theirs) = try socketPair()
        defer { mine.close() }
        // `to` carries a hint, as a sturdyref's locator does; routing must ignore it (wire §5).
        let request = UDSNewConnection(from: PeerLocator(identity: ka.publicIdentity),
                                       to: PeerLocator(identity: kb.publicIdentity, introductionServers: [ra.serverKey]))
        a.send(.newConnection(request))
        a.sendMarker(passing: [theirs])
        theirs.close()
        guard let (forwarded, got) = awaitIntroductionRecord(b, timeout: patience) else {
            return (.fail, "registered with a raw signature, but the introduction was not delivered")
        }
        defer { for d in got { d.close() } }
        guard forwarded == UDSMessage.newConnection(request).syrupValue else {
            return (.fail, "the forwarded uds:new-connection differs from the one sent (the draft forwards the same record)")
        }
        guard got.count == 1 else { return (.fail, "the introduction arrived with \(got.count) descriptors") }
        guard isOtherEnd(got[0], of: mine, timeout: patience) else { return (.fail, "the delivered descriptor is not the other end of the pair we passed") }
        return (.pass, "server \(ra.serverKey.fingerprint) answered in the \(ra.form) form, took raw signatures, forwarded the record unchanged and delivered the pair end")
    }

    private func registerDraft() throws -> (CheckStatus, String) {
        let target = try connect()
        defer { target.close() }
        let key = IdentityKeyPair.generate()
        guard let response = startRegistration(target, key).0 else { return (.skip, "the server does not answer uds:register (see E2.register-goblins)") }
        target.send(try signature(key, over: response.serverChallenge, form: .sigVal))
        if try receivesIntroductions(target, for: key.publicIdentity, expected: true) {
            return (.pass, "a uds:signature carrying a sig-val list registered the peer")
        }
        return (.warn, "a uds:signature carrying a sig-val list (the draft's text) did not register the peer; only Goblins' raw form works")
    }

    /// The draft's worked example (Vectors/ocapn-examples.json `register`): its exact bytes, and
    /// the server must sign that challenge.
    private func workedExample() throws -> (CheckStatus, String) {
        let x = try connect()
        defer { x.close() }
        let bytes = WorkedExample.register
        x.send(bytes)
        guard case let .value(value) = x.next(timeout: patience), let response = ServerResponse(value) else {
            return (.fail, "no uds:server-response to the worked example's uds:register")
        }
        guard response.signs(WorkedExample.challenge) else { return (.fail, "the answer's signature does not verify over the example's challenge") }
        return (.pass, "answered the example's \(bytes.count)-byte uds:register with a valid \(response.form) signature")
    }

    /// Registration with a forged uds:signature must not route introductions to the connection.
    private func forgedRegistration(_ what: String, _ sign: (IdentityKeyPair, Challenge) -> [UInt8]) throws -> (CheckStatus, String) {
        let x = try connect()
        defer { x.close() }
        let key = IdentityKeyPair.generate()
        guard let response = startRegistration(x, key).0 else { return (.skip, "the server does not answer uds:register") }
        let forged = try Ed25519Signature(sign(key, try Challenge(response.serverChallenge)))
        x.send(.signature(UDSSignature(payload: try Challenge(response.serverChallenge), signature: .raw(forged))))
        if try receivesIntroductions(x, for: key.publicIdentity, expected: false) {
            return (.fail, "registered with \(what): introductions for the key were delivered to us")
        }
        return (.pass, "\(what) was not accepted")
    }

    private func replayedSignature() throws -> (CheckStatus, String) {
        let key = IdentityKeyPair.generate()
        let first = try connect()
        guard let r1 = startRegistration(first, key).0 else {
            first.close()
            return (.skip, "the server does not answer uds:register")
        }
        let recorded = try signature(key, over: r1.serverChallenge, form: .raw)
        first.send(recorded)
        first.close()
        Thread.sleep(forTimeInterval: 0.05)  // let the server see the first connection go
        let second = try connect()
        defer { second.close() }
        guard let r2 = startRegistration(second, key).0 else { return (.skip, "the server did not answer the second uds:register") }
        if r2.serverChallenge == r1.serverChallenge { return (.fail, "the server reused its challenge on a new connection") }
        second.send(recorded)
        if try receivesIntroductions(second, for: key.publicIdentity, expected: false) {
            return (.fail, "a uds:signature recorded on an earlier connection registered the key again")
        }
        return (.pass, "the replayed uds:signature (old challenge and signature) was not accepted")
    }

    private func challengeLengths() throws -> (CheckStatus, String) {
        var signed: [Int] = [], refused: [String] = []
        for length in [0, 32, 63, 65, 128] {
            let x = try connect()
            defer { x.close() }
            let key = IdentityKeyPair.generate()
            let challenge = RawRecords.randomBytes(length)
            x.send(RawRecords.register(designator: key.publicIdentity.designator, challenge: challenge))
            switch reaction(x) {
            case let .answered(value):
                if let r = ServerResponse(value), r.signs(challenge) { signed.append(length) } else { refused.append("\(length): odd answer") }
            case .closed: refused.append("\(length): closed")
            case .silent: refused.append("\(length): no answer")
            case let .other(reason): refused.append("\(length): \(reason)")
            }
        }
        if !signed.isEmpty {
            return (.fail, "signed client challenges of \(signed.map(String.init).joined(separator: ", ")) bytes: a signing oracle (wire §9.3)")
        }
        return (.pass, "signed no challenge of 0, 32, 63, 65 or 128 bytes (\(refused.joined(separator: "; ")))")
    }

    /// A relay registers as a live peer with that peer's signature (issue #11); the lever is a
    /// server that lets a second registration displace a live one.
    private func registrationRelay() throws -> (CheckStatus, String) {
        let key = IdentityKeyPair.generate()
        let live = try connect(), second = try connect()
        defer { live.close(); second.close() }
        guard let r1 = startRegistration(live, key).0, let r2 = startRegistration(second, key).0 else {
            return (.skip, "the server does not answer uds:register twice")
        }
        let witness = try registeredClient()
        defer { witness.close() }
        // A registration ends with our signature and no answer: only an introduction shows that it
        // took effect. Without that proof a loaded server could complete the second registration
        // first, and the "live" one would then be the displacing one.
        live.send(try signature(key, over: r1.serverChallenge, form: .raw))
        guard let first = introduceAndAwait(from: witness, to: key, on: live) else {
            return (.warn, "the first registration of the key never received an introduction")
        }
        for d in first { d.close() }
        second.send(try signature(key, over: r2.serverChallenge, form: .raw))
        // Nothing shows when the second registration took effect either: introduce twice, the
        // second time well after it, so an introduction that overtook it does not pass the server.
        for pause in [0.05, 0.3] {
            Thread.sleep(forTimeInterval: pause)
            if let got = introduceAndAwait(from: witness, to: key, on: live) {
                for d in got { d.close() }
                continue
            }
            if let got = awaitIntroduction(second, timeout: .milliseconds(200)) {
                for d in got { d.close() }
                return (.warn, "a second registration displaced the live one: a relay of the peer's signature can take its introductions (issue #11)")
            }
            return (.warn, "neither registration of the key received the introduction")
        }
        return (.pass, "the live registration kept its introductions; the second registration did not displace it")
    }

    /// Introduces a fresh socket from `witness` to `key` and waits for it on `connection`.
    private func introduceAndAwait(from witness: Client, to key: IdentityKeyPair,
                                   on connection: ProbeConnection) -> [FileDescriptor]? {
        guard let (mine, theirs) = try? socketPair() else { return nil }
        defer { mine.close() }
        introduce(witness.connection, from: witness.locator, to: key.publicIdentity, passing: [theirs])
        theirs.close()
        return awaitIntroduction(connection, timeout: patience)
    }

    private func nonCanonicalDesignator() throws -> (CheckStatus, String) {
        let key = IdentityKeyPair.generate()
        let canonical = key.publicIdentity.designator
        var answered: [String] = []
        for (name, designator) in [("upper case", canonical.uppercased()), ("padded with =", canonical + "====")] {
            let x = try connect()
            defer { x.close() }
            x.send(RawRecords.register(designator: designator, challenge: Challenge.random().bytes))
            if case let .answered(value) = reaction(x), ServerResponse(value) != nil { answered.append(name) }
        }
        if !answered.isEmpty {
            return (.fail, "began registration for a designator \(answered.joined(separator: " and ")): one key, several identities (wire §9.11)")
        }
        return (.pass, "refused designators in upper case and padded with =")
    }

    // MARK: state machine

    private func introBeforeRegistration() throws -> (CheckStatus, String) {
        let target = try registeredClient()
        defer { target.close() }
        let x = try connect()
        defer { x.close() }
        let (mine, theirs) = try socketPair()
        defer { mine.close() }
        introduce(x, from: PeerLocator(identity: IdentityKeyPair.generate().publicIdentity), to: target.identity, passing: [theirs])
        theirs.close()
        if let got = awaitIntroduction(target.connection) {
            for d in got { d.close() }
            return (.fail, "forwarded an introduction from a connection that never registered")
        }
        return (.pass, "an introduction sent before registration was not forwarded")
    }

    private func outOfOrder() throws -> (CheckStatus, String) {
        var findings: [String] = []
        do {
            let x = try connect()
            defer { x.close() }
            x.send(.signature(UDSSignature(payload: .random(), signature: .raw(try Ed25519Signature(RawRecords.randomBytes(64))))))
            if case let .answered(v) = reaction(x) { findings.append("answered a uds:signature sent first (\(SyrupEncoder.encode(v).count) bytes)") }
        }
        do {
            let client = try registeredClient()
            defer { client.close() }
            client.connection.send(.register(UDSRegister(locator: PeerLocator(identity: IdentityKeyPair.generate().publicIdentity), challenge: .random())))
            if case let .answered(v) = reaction(client.connection), ServerResponse(v) != nil {
                findings.append("answered a second uds:register on a registered connection (signs again, may rebind it)")
            }
        }
        if !findings.isEmpty { return (.fail, findings.joined(separator: "; ")) }
        return (.pass, "neither a uds:signature first nor a second uds:register was answered")
    }

    private func fromSpoofing() throws -> (CheckStatus, String) {
        let sender = try registeredClient(), target = try registeredClient()
        defer { sender.close(); target.close() }
        let (mine, theirs) = try socketPair()
        defer { mine.close() }
        let victim = PeerLocator(identity: IdentityKeyPair.generate().publicIdentity)
        introduce(sender.connection, from: victim, to: target.identity, passing: [theirs])
        theirs.close()
        if let got = awaitIntroduction(target.connection) {
            for d in got { d.close() }
            return (.fail, "forwarded an introduction whose from is not the sender's registered key")
        }
        return (.pass, "an introduction with a spoofed from was not forwarded")
    }

    // MARK: descriptors

    private func noDescriptor() throws -> (CheckStatus, String) {
        let sender = try registeredClient(), target = try registeredClient()
        defer { sender.close(); target.close() }
        introduce(sender.connection, from: sender.locator, to: target.identity, passing: [])
        if let got = awaitIntroduction(target.connection) {
            defer { for d in got { d.close() } }
            let kinds = got.map(kindName).joined(separator: ", ")
            return (.fail, "forwarded an introduction that carried no descriptor, with \(got.count) descriptor(s) of its own\(got.isEmpty ? "" : " (\(kinds))")")
        }
        return (.pass, "an introduction whose marker carried no descriptor was not forwarded")
    }

    private func descriptorOnRegister() throws -> (CheckStatus, String) {
        let x = try connect()
        defer { x.close() }
        let (mine, theirs) = try socketPair()
        defer { mine.close() }
        let key = IdentityKeyPair.generate()
        let challenge = Challenge.random()
        x.send(UDSMessage.register(UDSRegister(locator: PeerLocator(identity: key.publicIdentity), challenge: challenge)).encoded, passing: [theirs])
        theirs.close()
        // Finish registering and keep the connection open: a server that queued the descriptor
        // holds it for as long as the connection lives, past any registration deadline.
        if case let .value(value) = x.next(timeout: patience), let response = ServerResponse(value), response.signs(challenge.bytes) {
            x.send(try signature(key, over: response.serverChallenge, form: .raw))
        }
        if seesEndOfStream(mine, timeout: patience) {
            return (.pass, "the descriptor sent with uds:register was closed")
        }
        return (.fail, "the server still holds a descriptor that arrived with uds:register")
    }

    private func descriptorOnRecord() throws -> (CheckStatus, String) {
        let sender = try registeredClient(), target = try registeredClient()
        defer { sender.close(); target.close() }
        let (mine, theirs) = try socketPair()
        defer { mine.close() }
        sender.connection.send(UDSMessage.newConnection(UDSNewConnection(from: sender.locator, to: target.locator)).encoded, passing: [theirs])
        theirs.close()
        Thread.sleep(forTimeInterval: 0.02)  // keep the marker out of the record's read
        sender.connection.sendMarker(passing: [])
        if let got = awaitIntroduction(target.connection) {
            defer { for d in got { d.close() } }
            if got.contains(where: { isOtherEnd($0, of: mine, timeout: options.timeout) }) {
                return (.fail, "forwarded an introduction whose descriptor rode on the record, not on the marker")
            }
            return (.pass, "the record's descriptor was not forwarded (the introduction went on with \(got.count) other descriptor(s): see A2)")
        }
        return (.pass, "a descriptor on the record instead of the marker was not forwarded")
    }

    private func extraDescriptors() throws -> (CheckStatus, String) {
        let sender = try registeredClient(), target = try registeredClient()
        defer { sender.close(); target.close() }
        let (mine, theirs) = try socketPair()
        let (extraMine, extraTheirs) = try socketPair()
        defer { mine.close(); extraMine.close() }
        introduce(sender.connection, from: sender.locator, to: target.identity, passing: [theirs, extraTheirs])
        theirs.close()
        extraTheirs.close()
        let got = awaitIntroduction(target.connection)
        let count = got?.count ?? 0
        for d in got ?? [] { d.close() }
        if count > 1 { return (.fail, "forwarded \(count) descriptors for one introduction (the protocol passes one)") }
        if !seesEndOfStream(extraMine, timeout: patience) {
            return (.fail, "the extra descriptor was neither forwarded nor closed: the server holds it")
        }
        return (.pass, got == nil ? "refused the introduction and closed both descriptors" : "forwarded one descriptor and closed the extra one")
    }

    private func wrongKind(_ what: String, ownConnection: Bool = false, _ make: () throws -> FileDescriptor) throws -> (CheckStatus, String) {
        let sender = try registeredClient(), target = try registeredClient()
        defer { sender.close(); target.close() }
        let passed = ownConnection ? try WrongKinds.duplicate(sender.connection.descriptor) : try make()
        introduce(sender.connection, from: sender.locator, to: target.identity, passing: [passed])
        passed.close()
        if let got = awaitIntroduction(target.connection) {
            defer { for d in got { d.close() } }
            return (.fail, "forwarded \(what) as an introduced socket (arrived as \(got.map(kindName).joined(separator: ", ")))")
        }
        return (.pass, "\(what) was not forwarded")
    }

    private func keepsDescriptor() throws -> (CheckStatus, String) {
        let sender = try registeredClient(), target = try registeredClient()
        defer { sender.close(); target.close() }
        let (mine, theirs) = try socketPair()
        defer { mine.close() }
        introduce(sender.connection, from: sender.locator, to: target.identity, passing: [theirs])
        theirs.close()
        guard let got = awaitIntroduction(target.connection, timeout: patience) else {
            return (.skip, "the introduction was not delivered (see E2.register-goblins)")
        }
        for d in got { d.close() }
        if seesEndOfStream(mine, timeout: patience) {
            return (.pass, "once the target closed the delivered end, ours saw EOF: the server kept no copy")
        }
        return (.fail, "the target closed the delivered end but ours never saw EOF: another copy is open in the server (K8, wire §9.1)")
    }

    // MARK: routing, pending introductions, deadlines

    private func reRegistration() throws -> (CheckStatus, String) {
        let key = IdentityKeyPair.generate()
        let first = try connect()
        guard let r1 = startRegistration(first, key).0 else {
            first.close()
            return (.skip, "the server does not answer uds:register")
        }
        first.send(try signature(key, over: r1.serverChallenge, form: .raw))
        Thread.sleep(forTimeInterval: 0.05)
        first.close()
        Thread.sleep(forTimeInterval: 0.05)
        let second = try connect()
        defer { second.close() }
        guard let r2 = startRegistration(second, key).0 else {
            return (.fail, "the server refused to start a registration for a key whose connection has gone")
        }
        second.send(try signature(key, over: r2.serverChallenge, form: .raw))
        if try receivesIntroductions(second, for: key.publicIdentity, expected: true) {
            return (.pass, "a peer that disconnected and registered again was routed to on its new connection")
        }
        return (.fail, "a peer that disconnected and registered again receives no introductions (stale route, wire §7)")
    }

    private func pendingBound() throws -> (CheckStatus, String) {
        let sender = try registeredClient(), witness = try registeredClient()
        defer { sender.close(); witness.close() }
        var ends: [FileDescriptor] = []
        defer { for e in ends { e.close() } }
        for _ in 0..<options.pendingProbes {
            let (mine, theirs) = try socketPair()
            ends.append(mine)
            let ok = introduce(sender.connection, from: sender.locator, to: IdentityKeyPair.generate().publicIdentity, passing: [theirs])
            theirs.close()
            if !ok { break }
        }
        // A server handles one connection's requests in order: once an introduction sent after
        // the burst is delivered, every refusal in the burst has happened. Expiry (F6) is slower.
        let (syncMine, syncTheirs) = try socketPair()
        defer { syncMine.close() }
        introduce(sender.connection, from: sender.locator, to: witness.identity, passing: [syncTheirs])
        syncTheirs.close()
        let synced = awaitIntroduction(witness.connection, timeout: patience)
        for d in synced ?? [] { d.close() }
        if synced == nil { Thread.sleep(forTimeInterval: 0.3) }
        let refused = ends.filter { seesEndOfStream($0, timeout: .milliseconds(1)) }.count
        if refused == 0 {
            return (.fail, "held all \(ends.count) introductions for unknown targets from one sender (no bound, wire §9.8)")
        }
        return (.pass, "of \(ends.count) introductions for unknown targets from one sender it held \(ends.count - refused) and closed the rest")
    }

    private func pendingExpiry() throws -> (CheckStatus, String) {
        let sender = try registeredClient()
        defer { sender.close() }
        let (mine, theirs) = try socketPair()
        defer { mine.close() }
        introduce(sender.connection, from: sender.locator, to: IdentityKeyPair.generate().publicIdentity, passing: [theirs])
        theirs.close()
        let start = ContinuousClock.now
        if seesEndOfStream(mine, timeout: options.expiryWait) {
            return (.pass, "the introduction for an unknown target was dropped after \(start.duration(to: .now).milliseconds) ms")
        }
        return (.fail, "an introduction for an unknown target was still held after \(options.expiryWait.milliseconds) ms")
    }

    private func silentClient() throws -> (CheckStatus, String) {
        let x = try connect()
        defer { x.close() }
        let start = ContinuousClock.now
        if x.waitForClose(timeout: options.deadlineWait) {
            return (.pass, "a silent client was dropped after \(start.duration(to: .now).milliseconds) ms")
        }
        return (.fail, "a silent client was still connected after \(options.deadlineWait.milliseconds) ms")
    }

    private func slowClient() throws -> (CheckStatus, String) {
        let x = try connect()
        defer { x.close() }
        let key = IdentityKeyPair.generate()
        let bytes = UDSMessage.register(UDSRegister(locator: PeerLocator(identity: key.publicIdentity), challenge: .random())).encoded
        let pause = options.deadlineWait / bytes.count
        let start = ContinuousClock.now
        for byte in bytes {
            if !x.send([byte], timeout: .milliseconds(200)) { break }
            if x.waitForClose(timeout: pause) {
                return (.pass, "a client dripping uds:register was dropped after \(start.duration(to: .now).milliseconds) ms")
            }
        }
        if x.waitForClose(timeout: .milliseconds(100)) {
            return (.pass, "a client dripping uds:register was dropped after \(start.duration(to: .now).milliseconds) ms")
        }
        return (.fail, "a client that dripped uds:register over \(start.duration(to: .now).milliseconds) ms was never dropped (no absolute deadline)")
    }

    private func closeOnError() throws -> (CheckStatus, String) {
        var open: [String] = []
        do {
            let x = try connect()
            defer { x.close() }
            x.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
            if !x.waitForClose(timeout: patience) { open.append("garbage before registration") }
        }
        do {
            let client = try registeredClient()
            defer { client.close() }
            client.connection.send(SyrupEncoder.encode(.record(label: .symbol("uds:unknown"), fields: [])))
            if !client.connection.waitForClose(timeout: patience) { open.append("an unknown record after registration") }
        }
        if !open.isEmpty { return (.fail, "the connection stayed open after \(open.joined(separator: " and ")) (wire §9.9)") }
        return (.pass, "closed the connection after garbage and after an unknown record")
    }
}
