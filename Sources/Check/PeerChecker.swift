import Foundation
import Identity
import OCapN
import SecureChannel
import SodiumCrypto
import Synchronization
import Syrup
import Transport

/// Bounds of a `check peer` run.
public struct PeerCheckOptions: Sendable {
    /// How long a probe waits for bytes, a close or an echo (`--timeout-ms`).
    public var timeout: Duration = .milliseconds(2000)
    /// How long F6.handshake-deadline waits for the peer to drop a silent initiator.
    public var deadlineWait: Duration = .seconds(12)

    public init() {}
}

/// `ocapn-uds check peer LOCATOR --server PATH`: registers a fresh identity at PATH, has the server
/// pass the peer one end of a fresh socketpair per probe, and plays a (sometimes hostile)
/// initiator on the other end (docs/CHECK.md).
public final class PeerChecker: Sendable {
    public static let checks: [CheckDefinition] = [
        CheckDefinition("W9.speaks-uds-hs1", "W9.1", .critical, "the peer runs UDS-HS1 on the passed socket, not plaintext CapTP"),
        CheckDefinition("W9.from-checked", "W9.2", .high, "msg1 by another key than the introduction's from"),
        CheckDefinition("HA.wrong-responder", "HA2", .high, "msg1 addressed to another responder key"),
        CheckDefinition("HA.reflected-msg1", "HA2", .high, "msg1 that claims the responder's own key as initiator"),
        CheckDefinition("HA.replayed-msg1", "HA2", .high, "msg1 replayed from an earlier session"),
        CheckDefinition("HA.low-order-ephemeral", "HA2", .high, "msg1 with a low-order ephemeral key"),
        CheckDefinition("P6.forged-frame", "P6", .high, "a frame that does not authenticate, then a valid message"),
        CheckDefinition("P6.oversized-frame", "P6", .medium, "a 65535-byte frame of garbage"),
        CheckDefinition("P6.truncated-frame", "P6", .medium, "half a frame, then end of stream"),
        CheckDefinition("P6.unauthenticated-close", "P6", .medium, "end of stream without a CLOSE frame"),
        CheckDefinition("F6.handshake-deadline", "F6", .medium, "an initiator that never sends msg1"),
        CheckDefinition("I3.reachable-after", "I3", .critical, "the peer still completes a handshake after every probe"),
    ]

    public let target: PeerLocator
    public let serverPath: String
    public let options: PeerCheckOptions

    /// How long to wait for what a working peer does (msg2, an answer, a close); `timeout`
    /// bounds waits for what should not happen.
    var patience: Duration { options.timeout * 3 }
    private let server: ServerChecker
    private let keyCache = IdentityKeyCache(capacity: 16)

    public init(target: PeerLocator, serverPath: String, options: PeerCheckOptions = PeerCheckOptions()) {
        self.target = target
        self.serverPath = serverPath
        self.options = options
        var serverOptions = ServerCheckOptions()
        serverOptions.timeout = options.timeout
        server = ServerChecker(path: serverPath, options: serverOptions)
    }

    /// Runs `selected`. Throws `unreachable` when the server cannot be reached or the peer never
    /// answers a first introduction.
    public func run(_ selected: [CheckDefinition] = PeerChecker.checks) throws(CheckError) -> CheckReport {
        let me: ServerChecker.Client
        do { me = try server.registeredClient() } catch {
            throw CheckError(.unreachable, "cannot register at \(serverPath): \((error as? ProbeSetupFailure)?.detail ?? "\(error)")")
        }
        defer { me.close() }
        // The first handshake tells whether the peer is there at all and what it speaks.
        let first: FirstContact
        do { first = try firstContact(me) } catch {
            throw CheckError(.unreachable, "the peer did not answer an introduction: \((error as? ProbeSetupFailure)?.detail ?? "\(error)")")
        }
        if case .silent = first.kind {
            throw CheckError(.unreachable, "the peer \(target.identity.fingerprint) did not answer an introduction within \(patience.milliseconds) ms (not registered at \(serverPath), or it closes our msg1 without a word)")
        }
        var report = CheckReport(kind: "peer", target: target.uri)
        for check in selected {
            let (status, evidence): (CheckStatus, String)
            do { (status, evidence) = try probe(check.id, me, first) } catch let failure as ProbeSetupFailure {
                (status, evidence) = (.skip, "setup failed: \(failure.detail)")
            } catch {
                (status, evidence) = (.skip, "setup failed: \(error)")
            }
            report.append(CheckRow(id: check.id, catalog: check.catalog, title: check.title, status: status,
                                   severity: check.severity, evidence: evidence))
        }
        return report
    }

    // MARK: - the passed socket

    /// Our end of a socketpair whose other end the server passed to the peer.
    final class Link {
        let fd: FileDescriptor
        init(_ fd: FileDescriptor) { self.fd = fd }
        deinit { fd.close() }

        func send(_ bytes: [UInt8]) -> Bool { sendAll(fd, bytes, passing: [], timeout: .seconds(2)) }

        enum Read { case bytes([UInt8]), closed, timeout }

        /// Reads until `count` bytes are in, the peer closes, or `timeout` passes.
        func read(_ count: Int, timeout: Duration) -> (bytes: [UInt8], end: Read) {
            let deadline = ContinuousClock.now.advanced(by: timeout)
            var out: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while out.count < count {
                let result = try? buffer.withUnsafeMutableBytes { try fd.receive(into: $0, descriptorCapacity: 1) }
                switch result {
                case let .processed(r)?:
                    for d in r.descriptors { d.close() }
                    if r.isEndOfStream { return (out, .closed) }
                    out += buffer[..<r.byteCount]
                case .wouldBlock?:
                    let remaining = ContinuousClock.now.duration(to: deadline)
                    if remaining <= .zero { return (out, .timeout) }
                    _ = try? fd.wait(for: .readable, timeout: remaining + .milliseconds(1))
                case nil:
                    return (out, .closed)
                }
            }
            return (out, .bytes(out))
        }

        /// True if the peer closes within `timeout` (anything it sends meanwhile is discarded).
        func closes(within timeout: Duration) -> Bool {
            if case .closed = read(1 << 20, timeout: timeout).end { return true }
            return false
        }

        func shutdownWrite() { try? fd.shutdownWrite() }
    }

    /// A fresh introduction of `me` to the peer; `from` defaults to our registered locator.
    func introduce(_ me: ServerChecker.Client) throws -> Link {
        let (mine, theirs) = try server.socketPair()
        let sent = server.introduce(me.connection, from: me.locator, to: target.identity, passing: [theirs])
        theirs.close()
        guard sent else {
            mine.close()
            throw ProbeSetupFailure(detail: "the server connection is gone")
        }
        return Link(mine)
    }

    func initiator(_ key: IdentityKeyPair, responder: PublicIdentity) throws -> HandshakeInitiator {
        do {
            return try HandshakeInitiator(identity: key, responder: responder,
                                          configuration: HandshakeConfiguration(timeout: options.timeout * 4),
                                          keyCache: keyCache, now: .now)
        } catch {
            throw ProbeSetupFailure(detail: "initiator: \(error)")
        }
    }

    struct Session {
        let link: Link
        let established: EstablishedSession
        let msg1: [UInt8]
        let msg2: [UInt8]
    }

    enum ContactKind { case handshake(Session), plaintext([UInt8]), refused(String), silent }

    struct FirstContact { let kind: ContactKind }

    /// A full UDS-HS1 handshake as `me`; what the peer answered.
    func handshake(_ me: ServerChecker.Client) throws -> ContactKind {
        let link = try introduce(me)
        let machine = try initiator(me.key, responder: target.identity)
        guard link.send(machine.initialMessage) else { return .refused("could not write msg1") }
        let (bytes, end) = link.read(UDSHS1.msg2Length, timeout: patience)
        if bytes.first == UInt8(ascii: "<") { return .plaintext(bytes) }
        switch end {
        case .closed:
            // Not a byte back: the socket never reached a peer (unknown, or the server dropped the
            // introduction), or the peer refuses us before msg2; either way nothing answered.
            return bytes.isEmpty ? .silent : .refused("closed after \(bytes.count) bytes of msg2")
        case .timeout: return bytes.isEmpty ? .silent : .refused("sent \(bytes.count) bytes, not a msg2")
        case .bytes: break
        }
        do {
            guard case let .established(session, send: auth) = try machine.receive(bytes, now: .now) else {
                return .refused("msg2 did not complete the handshake")
            }
            guard link.send(auth) else { return .refused("closed before AUTH") }
            return .handshake(Session(link: link, established: session, msg1: machine.initialMessage, msg2: Array(bytes.prefix(UDSHS1.msg2Length))))
        } catch {
            return .refused("msg2 refused: \(error.code.rawValue)")
        }
    }

    func firstContact(_ me: ServerChecker.Client) throws -> FirstContact { FirstContact(kind: try handshake(me)) }

    /// Sends `message` on an established session and waits for the same bytes back (an echo)
    /// or any message: true if the peer answered, false if it closed or stayed silent.
    func answers(_ session: Session, after extra: [UInt8] = [], message: [UInt8] = Array("ocapn-uds check".utf8)) -> (Bool, String) {
        guard let sealed = try? session.established.sender.seal(message) else { return (false, "could not seal") }
        guard session.link.send(extra + sealed) else { return (false, "the peer closed before our message") }
        let deadline = ContinuousClock.now.advanced(by: patience)
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .zero else { return (false, "no answer within \(patience.milliseconds) ms") }
            let (bytes, end) = session.link.read(1, timeout: remaining)
            do {
                if !bytes.isEmpty { try session.established.receiver.receive(bytes) }
                if case .message = try session.established.receiver.next() { return (true, "answered") }
            } catch {
                return (false, "sent a frame that does not authenticate: \(error.code.rawValue)")
            }
            switch end {
            case .closed: return (false, "closed")
            case .timeout: return (false, "no answer within \(patience.milliseconds) ms")
            case .bytes: continue
            }
        }
    }
}
