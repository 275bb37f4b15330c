import Foundation
import Identity
import OCapN
import SecureChannel
import Transport

extension PeerChecker {
    /// Runs the probe of check `id` (docs/CHECK.md describes each).
    func probe(_ id: String, _ me: ServerChecker.Client, _ first: FirstContact) throws -> (CheckStatus, String) {
        if id == "W9.speaks-uds-hs1" { return speaksHS1(first, me) }
        if case .plaintext = first.kind { return (.skip, "the peer does not speak UDS-HS1 (see W9.speaks-uds-hs1)") }
        switch id {
        case "W9.from-checked":
            let other = IdentityKeyPair.generate()
            return try hostileMessage1(me, "msg1 by \(other.publicIdentity.fingerprint), not the introduction's from") {
                try initiator(other, responder: target.identity).initialMessage
            }
        case "HA.wrong-responder":
            let other = IdentityKeyPair.generate()
            return try hostileMessage1(me, "msg1 addressed to \(other.publicIdentity.fingerprint)") {
                try initiator(me.key, responder: other.publicIdentity).initialMessage
            }
        case "HA.reflected-msg1":
            return try hostileMessage1(me, "msg1 naming the peer's own key as initiator") {
                var msg1 = try initiator(me.key, responder: target.identity).initialMessage
                msg1.replaceSubrange(8..<40, with: target.identity.publicKey)
                return msg1
            }
        case "HA.low-order-ephemeral":
            return try hostileMessage1(me, "msg1 with an all-zero (low-order) ephemeral") {
                var msg1 = try initiator(me.key, responder: target.identity).initialMessage
                msg1.replaceSubrange(72..<104, with: [UInt8](repeating: 0, count: 32))
                return msg1
            }
        case "HA.replayed-msg1": return try replayedMessage1(me)
        case "P6.forged-frame":
            return try afterBadFrame(me, "a 17-byte frame that does not authenticate (a forged CLOSE)",
                                     [0x00, 0x11] + RawRecords.randomBytes(17))
        case "P6.oversized-frame":
            return try afterBadFrame(me, "a 65535-byte frame of garbage", [0xff, 0xff] + RawRecords.randomBytes(65535))
        case "P6.truncated-frame":
            return try endsEarly(me, "half a frame, then end of stream") { session in
                let sealed = (try? session.established.sender.seal(Array("truncated".utf8))) ?? []
                return Array(sealed.prefix(sealed.count / 2))
            }
        case "P6.unauthenticated-close":
            return try endsEarly(me, "end of stream without a CLOSE frame") { _ in [] }
        case "F6.handshake-deadline":
            let link = try introduce(me)
            let start = ContinuousClock.now
            if link.closes(within: options.deadlineWait) {
                return (.pass, "dropped an initiator that sent nothing after \(start.duration(to: .now).milliseconds) ms")
            }
            return (.fail, "kept a passed socket with no handshake open for \(options.deadlineWait.milliseconds) ms (no deadline, wire §7)")
        case "I3.reachable-after":
            switch try handshake(me) {
            case let .handshake(session):
                let (answered, _) = answers(session)
                return (.pass, "a fresh UDS-HS1 handshake completed\(answered ? " and it answered a message" : "")")
            case .plaintext: return (.skip, "plaintext peer")
            case let .refused(reason): return (.fail, "the peer no longer completes a handshake: \(reason)")
            case .silent: return (.fail, "the peer no longer answers an introduction")
            }
        default:
            preconditionFailure("no probe for check \(id)")  // the table and this switch go together
        }
    }

    private func speaksHS1(_ first: FirstContact, _ me: ServerChecker.Client) -> (CheckStatus, String) {
        switch first.kind {
        case let .handshake(session):
            let (answered, how) = answers(session)
            return (.pass, "completed UDS-HS1 as \(session.established.peer.fingerprint), session \(session.established.sessionID)"
                + (answered ? "; it answered a message" : "; no answer to a message (\(how))"))
        case let .plaintext(bytes):
            let head = String(decoding: bytes.prefix(24).map { (0x20..<0x7f).contains($0) ? $0 : UInt8(ascii: ".") }, as: UTF8.self)
            return (.fail, "wrote plaintext on the passed socket (\(head)…): CapTP without authentication or encryption (wire §9.1)")
        case let .refused(reason):
            return (.fail, "refused a correct UDS-HS1 handshake: \(reason)")
        case .silent:
            return (.fail, "did not answer msg1")
        }
    }

    /// Sends a msg1 the peer must refuse: PASS when no msg2 comes back.
    private func hostileMessage1(_ me: ServerChecker.Client, _ what: String, _ make: () throws -> [UInt8]) throws -> (CheckStatus, String) {
        let link = try introduce(me)
        guard link.send(try make()) else { return (.pass, "\(what): the peer closed before it arrived") }
        // A correct peer closes at once, so waiting longer costs nothing and catches slow replies.
        let (bytes, end) = link.read(UDSHS1.msg2Length, timeout: patience)
        switch end {
        case .bytes: return (.fail, "\(what): the peer answered with a \(bytes.count)-byte msg2")
        case .closed, .timeout:
            // Any reply to a refused msg1 is unauthenticated: a free oracle (PROTOCOL.md §5.4).
            if !bytes.isEmpty { return (.fail, "\(what): the peer answered \(bytes.count) bytes instead of closing silently") }
            if case .closed = end { return (.pass, "\(what): closed without answering") }
            return (.pass, "\(what): no answer")
        }
    }

    private func replayedMessage1(_ me: ServerChecker.Client) throws -> (CheckStatus, String) {
        guard case let .handshake(original) = try handshake(me) else { return (.skip, "a first handshake did not complete") }
        _ = try? original.established.sender.close()
        let link = try introduce(me)
        guard link.send(original.msg1) else { return (.pass, "closed before the replayed msg1 arrived") }
        let (bytes, end) = link.read(UDSHS1.msg2Length, timeout: patience)
        guard case .bytes = end else { return (.pass, "the replayed msg1 got no msg2") }
        if bytes == original.msg2 {
            return (.fail, "answered a replayed msg1 with the very same msg2: no fresh ephemeral, the session keys repeat")
        }
        // Without the initiator's ephemeral secret an attacker can only forge AUTH.
        guard link.send([0x00, UInt8(UDSHS1.authCiphertextLength)] + RawRecords.randomBytes(UDSHS1.authCiphertextLength)) else {
            return (.pass, "a fresh msg2, then closed")
        }
        if link.closes(within: patience) {
            return (.pass, "answered the replay with a fresh msg2 and closed on the forged AUTH")
        }
        return (.fail, "kept the replayed session open after a forged AUTH")
    }

    /// After `bad` on an established channel, a valid message must get no answer.
    private func afterBadFrame(_ me: ServerChecker.Client, _ what: String, _ bad: [UInt8]) throws -> (CheckStatus, String) {
        guard case let .handshake(session) = try handshake(me) else { return (.skip, "the handshake did not complete") }
        let (answered, how) = answers(session, after: bad)
        if answered { return (.fail, "after \(what) the peer still answered a valid message: a bad frame is not fatal") }
        if how == "closed" || session.link.closes(within: .milliseconds(100)) {
            return (.pass, "after \(what) the peer closed the channel")
        }
        return (.fail, "after \(what) the peer neither answered nor closed (\(how)): a failed channel is left open (wire §9.9)")
    }

    /// The channel ends without CLOSE (after `tail`): the peer must close its side too.
    private func endsEarly(_ me: ServerChecker.Client, _ what: String, _ tail: (Session) -> [UInt8]) throws -> (CheckStatus, String) {
        guard case let .handshake(session) = try handshake(me) else { return (.skip, "the handshake did not complete") }
        let bytes = tail(session)
        if !bytes.isEmpty { _ = session.link.send(bytes) }
        session.link.shutdownWrite()
        if session.link.closes(within: patience) { return (.pass, "\(what): the peer closed the channel") }
        return (.fail, "\(what): the peer kept the channel open for \(patience.milliseconds) ms")
    }
}
