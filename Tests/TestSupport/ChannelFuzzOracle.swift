// The invariants of the FuzzHandshake and FuzzFrameReceiver fuzz targets (docs/FUZZING.md).
// Compiled here for the regression tests and, through the TestSupport product, into the fuzz package, so
// fuzzers and tests judge an input by the same code. Public API and the `TestVectors` SPI (fixed vector keys given as bytes)
// only: the library hands out no traffic key; K_IR is the vector's, checked by what it seals;
// no test framework.
import Errors
@_spi(TestVectors) import Identity
@_spi(TestVectors) import SecureChannel
@_spi(TestVectors) import SodiumCrypto

/// Fixed identities and ephemeral keys: those of the `alice-to-bob` transcript of
/// Vectors/handshake.json, so the genuine messages are the vector's and seed files are exact.
public enum ChannelFuzzFixture {
    public static func hex(_ text: String) -> [UInt8] { TestHex.decode(text) }

    static func identity(seed: String) -> IdentityKeyPair {
        try! IdentityKeyPair(vectorSeed: hex(seed))
    }

    static let initiator = identity(seed: "e74b38278f1681e79487d639c5b92489b8198b730e38c20d9d768bd2ffa0140f")
    static let responder = identity(seed: "1400cf7d09028c5847cb3188131cac7256deaf64e465db8142696f1b1de06a73")
    static let initiatorEphemeral = hex("781951312a8c442b5c855f21697d17c7616f024a52ba1b432a3ad7369c071b4b")
    static let responderEphemeral = hex("5e94dd85a34bdc44b0315bff0e08b57f8aee2b3a6d63b7283517d7d841c946c0")

    /// Small message limit so `messageTooLarge` is reachable with short inputs; a buffer ceiling
    /// well above one frame plus one read.
    static let configuration = HandshakeConfiguration(
        timeout: .seconds(10),
        channel: ChannelConfiguration(maxMessageSize: 1 << 14, maxFragmentSize: FrameFormat.maxBody, maxBufferedInput: 1 << 18))
    static let keyCache = IdentityKeyCache()
    static let start = ContinuousClock.now

    static func makeInitiator() -> HandshakeInitiator {
        try! HandshakeInitiator(
            identity: initiator, responder: responder.publicIdentity, configuration: configuration, keyCache: keyCache,
            ephemeralKeys: .vector(initiatorEphemeral), now: start)
    }

    static func makeResponder() -> HandshakeResponder {
        HandshakeResponder(
            identity: responder, announcedInitiator: initiator.publicIdentity, configuration: configuration, keyCache: keyCache,
            ephemeralKeys: .vector(responderEphemeral), now: start)
    }

    /// The one transcript these identities and ephemerals produce, and the initiator's
    /// transport key K_IR (what the responder's receiver opens).
    public struct Genuine: Sendable {
        public let msg1: [UInt8]
        public let msg2: [UInt8]
        public let auth: [UInt8]
        public let keyIR: [UInt8]
    }

    public static let genuine: Genuine = {
        let i = makeInitiator()
        let r = makeResponder()
        guard case .send(let msg2)? = try? r.receive(i.initialMessage, now: start),
              case .established(let session, let auth)? = try? i.receive(msg2, now: start) else {
            preconditionFailure("the fixed handshake does not complete")
        }
        // K_IR of the alice-to-bob transcript (Vectors/handshake.json `key_ir`); the session must
        // seal exactly as it does, or every frame the oracle builds would be wrong.
        let keyIR = hex("809c80f68f67cf685d78879242dbf513a5284820851909c3811782a85e4c19b9")
        let probe: [UInt8] = [0x00, 0x2a]
        let sealed = ChaChaPoly.seal(vectorKey: keyIR, nonce: 1, ad: [], plaintext: probe)
        guard (try? session.sender.seal([0x2a])) == [UInt8(sealed.count >> 8), UInt8(sealed.count & 0xff)] + sealed else {
            preconditionFailure("the fixed handshake's K_IR is not the vector's")
        }
        return Genuine(msg1: i.initialMessage, msg2: msg2, auth: auth, keyIR: keyIR)
    }()
}

/// FuzzHandshake: fuzz bytes as msg1 (and what follows) to a responder, as AUTH after the genuine
/// msg1, or as msg2 to an initiator, in pieces. Oracle: no crash; every failure is a handshake
/// code that stage can produce; a machine answers or establishes only when the bytes it was fed
/// begin with the genuine message(s) (forging any of them needs a private key), and then with
/// exactly the genuine reply; a deadline that has passed always ends an unfinished handshake.
///
/// Input layout: `input[0] % 3` picks the mode (0 responder msg1, 1 responder AUTH, 2 initiator
/// msg2); bit 7 makes the last piece arrive at the deadline; bit 6 reports EOF after the last
/// piece (always `truncated` for an unfinished handshake). The rest is fed in pieces.
public enum HandshakeFuzzOracle {
    typealias Fixture = ChannelFuzzFixture

    static let responderCodes: Set<HandshakeError.Code> = [
        .timeout, .badMagic, .unsupportedVersion, .unexpectedMessageType, .reservedFlagsSet, .wrongResponder,
        .identityMismatch, .selfConnection, .invalidIdentityKey, .peerNotAllowed, .nonCanonicalPoint, .lowOrderPoint,
        .reflection, .decryptFailed, .badSignature, .badFrameLength,
    ]
    static let initiatorCodes: Set<HandshakeError.Code> = [
        .timeout, .unexpectedMessageType, .nonCanonicalPoint, .lowOrderPoint, .reflection, .decryptFailed, .badSignature,
    ]

    public static func violations(_ input: [UInt8]) -> [String] {
        guard let control = input.first else { return [] }
        let payload = Array(input.dropFirst())
        let late = control & 0x80 != 0
        let eof = control & 0x40 != 0
        var rng = SplitMix64(hashing: input)
        let pieces = rng.pieces(of: payload.count, maxPiece: 160)
        let genuine = Fixture.genuine
        var out: [String] = []

        switch control % 3 {
        case 0, 1:
            let r = Fixture.makeResponder()
            var fed: [UInt8] = []
            if control % 3 == 1 {
                guard case .send(let msg2)? = try? r.receive(genuine.msg1, now: Fixture.start), msg2 == genuine.msg2 else {
                    return ["the genuine msg1 no longer gets the genuine msg2"]
                }
                fed = genuine.msg1
            }
            var answered = control % 3 == 1
            for (index, piece) in pieces.enumerated() {
                let last = index == pieces.count - 1
                let now = late && last ? r.deadline : Fixture.start
                fed += payload[piece]
                do throws(HandshakeError) {
                    switch try r.receive(Array(payload[piece]), now: now) {
                    case .needMoreBytes:
                        if now >= r.deadline { out.append("responder fed at its deadline did not time out") }
                    case .send(let reply):
                        if answered || !fed.starts(with: genuine.msg1) || reply != genuine.msg2 {
                            out.append("responder answered msg1 bytes that are not the genuine msg1, or twice, or wrongly")
                        }
                        answered = true
                    case .established(let session, let reply):
                        if !fed.starts(with: genuine.msg1 + genuine.auth) {
                            out.append("responder established a session from forged bytes")
                        }
                        if session.peer.publicKey != Fixture.initiator.publicKey {
                            out.append("responder established with the wrong peer")
                        }
                        if !(answered ? reply.isEmpty : reply == genuine.msg2) {
                            out.append("responder's final reply is wrong")
                        }
                        drain(session.receiver, rest: Array(payload[piece.upperBound...]), &out)
                        return out
                    }
                } catch {
                    if !responderCodes.contains(error.code) { out.append("responder failed with \(error.code)") }
                    if now >= r.deadline && error.code != .timeout { out.append("responder at its deadline threw \(error.code)") }
                    return out
                }
            }
            if eof { expectTruncated { () throws(HandshakeError) in try r.receiveEOF() } }
        default:
            let i = Fixture.makeInitiator()
            var fed: [UInt8] = []
            for (index, piece) in pieces.enumerated() {
                let last = index == pieces.count - 1
                let now = late && last ? i.deadline : Fixture.start
                fed += payload[piece]
                do throws(HandshakeError) {
                    switch try i.receive(Array(payload[piece]), now: now) {
                    case .needMoreBytes:
                        if now >= i.deadline { out.append("initiator fed at its deadline did not time out") }
                    case .send:
                        out.append("initiator asked to send mid-handshake")
                        return out
                    case .established(let session, let auth):
                        if !fed.starts(with: genuine.msg2) { out.append("initiator established a session from a forged msg2") }
                        if auth != genuine.auth { out.append("initiator's AUTH differs from the genuine one") }
                        if session.peer.publicKey != Fixture.responder.publicKey { out.append("initiator established with the wrong peer") }
                        return out
                    }
                } catch {
                    if !initiatorCodes.contains(error.code) { out.append("initiator failed with \(error.code)") }
                    if now >= i.deadline && error.code != .timeout { out.append("initiator at its deadline threw \(error.code)") }
                    return out
                }
            }
            if eof { expectTruncated { () throws(HandshakeError) in try i.receiveEOF() } }
        }
        return out

        func expectTruncated(_ body: () throws(HandshakeError) -> Never) {
            do throws(HandshakeError) { try body() } catch {
                if error.code != .truncated { out.append("EOF during the handshake gave \(error.code), not truncated") }
            }
        }
    }

    /// Bytes behind a completed handshake go to the channel; it must judge them without crashing.
    static func drain(_ receiver: FrameReceiver, rest: [UInt8], _ out: inout [String]) {
        do throws(HandshakeError) {
            try receiver.receive(rest)
            while let event = try receiver.next() {
                if event == .closed { break }
            }
        } catch {
            _ = error
        }
    }
}

/// FuzzFrameReceiver: a fresh receiver keyed with the fixed K_IR (reached through the genuine
/// handshake, nonce 1), fed a stream built from the input, in pieces, draining events after each
/// piece as the runtime does. Oracle: no crash; the input buffer never holds a whole frame after
/// draining and messages never exceed `maxMessageSize` (bounded memory); and, when the stream is
/// made of sealed frames only, the events and the error are exactly those of a reference model
/// of PROTOCOL.md §6.
///
/// Input: a sequence of operations. `op & 0xC0`:
/// * `0x00` sealed frame: next byte is TYPE (taken `% 5` unless `op & 0x20`), next two bytes the
///   body length (`% 300` unless `op & 0x10`, then up to the 65518 maximum), body bytes from the
///   input (zero-padded); `op & 0x08` corrupts the tag.
/// * `0x40` raw bytes: next byte is a count, then that many input bytes.
/// * `0x80` a LEN header claiming the next two bytes as its length, with nothing behind it.
/// * `0xC0` end; `op & 1` then reports EOF.
public enum FrameFuzzOracle {
    typealias Fixture = ChannelFuzzFixture

    public struct Frame {
        public let type: UInt8
        public let body: [UInt8]
        public let corrupt: Bool
    }

    public struct Plan {
        public var stream: [UInt8] = []
        /// Nil once the stream holds anything but correctly framed sealed frames.
        public var frames: [Frame]? = []
        public var eof = false
    }

    static let maxBody = FrameFormat.maxBody

    public static func plan(_ input: [UInt8]) -> Plan {
        var plan = Plan()
        let key = Fixture.genuine.keyIR
        var nonce: UInt64 = 1
        var i = 0
        func take(_ n: Int) -> [UInt8] {
            let got = Array(input[min(i, input.count)..<min(i + n, input.count)])
            i += n
            return got + [UInt8](repeating: 0, count: n - got.count)
        }
        while i < input.count {
            let op = input[i]
            i += 1
            switch op & 0xC0 {
            case 0x00:
                let header = take(3)
                let type = op & 0x20 != 0 ? header[0] : header[0] % 5
                let rawLength = Int(header[1]) << 8 | Int(header[2])
                let length = op & 0x10 != 0 ? min(rawLength, maxBody) : rawLength % 300
                let body = take(length)
                var sealed = ChaChaPoly.seal(vectorKey: key, nonce: nonce, ad: [], plaintext: [type] + body)
                let corrupt = op & 0x08 != 0
                if corrupt { sealed[sealed.count - 1 - Int(op & 7)] ^= 0x40 }
                plan.stream += [UInt8(sealed.count >> 8), UInt8(sealed.count & 0xff)] + sealed
                plan.frames?.append(Frame(type: type, body: body, corrupt: corrupt))
                nonce += 1
            case 0x40:
                let count = Int(take(1)[0])
                plan.stream += take(count)
                plan.frames = nil
            case 0x80:
                plan.stream += take(2)
                plan.frames = nil
            default:
                plan.eof = op & 1 != 0
                return plan
            }
        }
        return plan
    }

    public enum Outcome: Equatable {
        case open
        case closed
        case failed(HandshakeError.Code)
    }

    /// PROTOCOL.md §6 as a plain loop over whole frames, in the receiver's check order.
    public static func model(_ frames: [Frame], eof: Bool, maxMessageSize: Int) -> (messages: [[UInt8]], outcome: Outcome) {
        var messages: [[UInt8]] = []
        var partial: [UInt8] = []
        for (index, frame) in frames.enumerated() {
            if partial.count + frame.body.count > maxMessageSize { return (messages, .failed(.messageTooLarge)) }
            if frame.corrupt { return (messages, .failed(.decryptFailed)) }
            switch frame.type {
            case 0x00, 0x04:
                if frame.body.isEmpty { return (messages, .failed(.emptyDataFrame)) }
                partial += frame.body
                if frame.type == 0x00 {
                    messages.append(partial)
                    partial = []
                }
            case 0x01:
                if !frame.body.isEmpty { return (messages, .failed(.badFrameLength)) }
                if !partial.isEmpty { return (messages, .failed(.truncated)) }
                if index != frames.count - 1 { return (messages, .failed(.dataAfterClose)) }
                return (messages, .closed)
            case 0x03: return (messages, .failed(.unexpectedAuthFrame))
            default: return (messages, .failed(.unknownFrameType))
            }
        }
        return (messages, eof ? .failed(.truncated) : .open)
    }

    static let codes: Set<HandshakeError.Code> = [
        .badFrameLength, .decryptFailed, .unknownFrameType, .unexpectedAuthFrame, .emptyDataFrame, .dataAfterClose,
        .messageTooLarge, .truncated,
    ]

    public static func violations(_ input: [UInt8]) -> [String] {
        var out: [String] = []
        let plan = plan(input)
        let genuine = Fixture.genuine
        var rng = SplitMix64(hashing: input)
        let pieces = rng.pieces(of: plan.stream.count, maxPiece: 4096)
        // The first piece may ride along with AUTH, as bytes behind it in one read do.
        let withAuth = input.first.map { $0 & 1 == 1 } ?? false

        let r = Fixture.makeResponder()
        guard case .send? = try? r.receive(genuine.msg1, now: Fixture.start) else { return ["genuine msg1 refused"] }
        let first = withAuth ? pieces.first : nil
        let authRead = genuine.auth + (first.map { Array(plan.stream[$0]) } ?? [])
        guard case .established(let session, _)? = try? r.receive(authRead, now: Fixture.start) else {
            return ["genuine AUTH refused"]
        }
        let receiver = session.receiver
        let maxMessage = receiver.configuration.maxMessageSize
        var messages: [[UInt8]] = []
        var outcome = Outcome.open
        var useBorrow = false

        func drainEvents() throws(HandshakeError) {
            while true {
                useBorrow.toggle()
                if useBorrow {
                    switch try receiver.nextMessage({ Array($0) }) {
                    case .message(let m): messages.append(m)
                    case .closed: outcome = .closed; return
                    case .needMoreBytes: return
                    }
                } else {
                    switch try receiver.next() {
                    case .message(let m)?: messages.append(m)
                    case .closed?: outcome = .closed; return
                    case nil: return
                    }
                }
            }
        }

        do throws(HandshakeError) {
            if first != nil { try drainEvents() }
            for piece in pieces.dropFirst(first == nil ? 0 : 1) {
                if receiver.isClosed || rng.next() % 2 == 0 {
                    try receiver.receive(Array(plan.stream[piece]))
                } else {
                    // The runtime's zero-copy path: read(2) straight into the lent space.
                    plan.stream.withUnsafeBytes { src in
                        receiver.withInputBuffer(minimumCapacity: piece.count) { dst in
                            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[piece]))
                            return piece.count
                        }
                    }
                }
                try drainEvents()
                if outcome == .open && receiver.bufferedByteCount >= FrameFormat.maxFrameLength {
                    out.append("\(receiver.bufferedByteCount) bytes buffered after draining: more than one frame")
                }
            }
            if plan.eof { try receiver.receiveEOF() }
        } catch {
            outcome = .failed(error.code)
            if !codes.contains(error.code) { out.append("receiver failed with \(error.code)") }
        }
        if let m = messages.first(where: { $0.count > maxMessage || $0.isEmpty }) {
            out.append("a \(m.count)-byte message came out (limit \(maxMessage))")
        }
        if let frames = plan.frames {
            let expected = model(frames, eof: plan.eof, maxMessageSize: maxMessage)
            if expected.messages != messages || expected.outcome != outcome {
                out.append("receiver gave \(messages.count) messages and \(outcome); the model \(expected.messages.count) and \(expected.outcome)")
            }
        }
        return out
    }
}
