@_spi(TestVectors) import Identity
import OCapN
import Syrup

/// The introduction server core fed whole control streams with descriptors across several
/// connections (issue #12 item 7). Shared by `FuzzServerCore` (through the TestSupport product) and the
/// regression tests. The input is a list of operations on 4 connection slots:
/// `op = b & 7`, `slot = (b >> 3) & 3`, then per op:
/// 0 accept (next byte bit 0: a uid that is not allowed), 1 raw read (length byte, descriptor
/// count byte & 3, bytes), 2 end of stream, 3 clock (+ byte × 50 ms, then tick), 4 transport
/// failure, 5 register properly as identity `slot`, 6 introduce to identity (byte & 3) with
/// (byte & 3) descriptors on the marker, split (byte bit 2) in two reads, 7 hang-up of the
/// oldest held introduction. Forwards succeed unless the byte after the op says otherwise.
///
/// Oracle: never a crash; every descriptor handed in ends exactly once (closed or forwarded)
/// by the end of `shutdown`; a connection is closed at most once and never gets events after;
/// every attempt that started ends exactly once; the counts are back to zero after shutdown;
/// a forwarded record is a canonical `uds:new-connection` naming the forward's keys.
public enum ServerCoreFuzzOracle {
    typealias Core = IntroductionServerCore<Int>
    typealias ID = IntroductionServerConnectionID

    static let signers: [IdentityKeyPair] = (1...4).map {
        try! IdentityKeyPair(vectorSeed: [UInt8](repeating: UInt8($0) &* 37, count: 32))
    }
    static let server = try! IdentityKeyPair(vectorSeed: [UInt8](repeating: 0x5a, count: 32))

    public static func violations(_ input: [UInt8]) -> [String] {
        var out: [String] = []
        var limits = IntroductionServerLimits()
        limits.maxUnauthenticated = 3
        limits.maxUnauthenticatedPerUID = 2
        limits.maxClients = 4
        limits.maxPendingPerTarget = 2
        limits.maxPendingTotal = 3
        limits.maxInFlightPerTarget = 3
        limits.maxInFlightPerSender = 5
        limits.introductionBurst = 6
        var challengeCounter: UInt8 = 0
        let core = Core(
            signer: server, configuration: IntroductionServerConfiguration(limits: limits, allowedUIDs: [1000]),
            attemptIDBase: 1 << 32,
            makeChallenge: {
                challengeCounter &+= 1
                return try! Challenge([UInt8](repeating: challengeCounter, count: 64))
            },
            checkDescriptor: { $0 % 5 == 4 ? .refused(description: "pipe") : .acceptable },
            describeDescriptor: { _ in "pipe" },
            targetHasReadEverything: { $0.rawValue % 2 == 0 })
        var now: UInt64 = 1_000_000_000
        var nextID: UInt64 = 1
        var open: [Int: ID] = [:]          // slot -> live connection
        var closed: Set<ID> = []
        var handedIn: [Int] = []
        var ended: [Int: Int] = [:]
        var nextFD = 10
        var starts: Set<UInt64> = []
        var ends: [UInt64: Int] = [:]
        var failNextForward = false
        var sent: [ID: [UInt8]] = [:]

        func apply(_ actions: [Core.Action]) {
            for action in actions {
                switch action {
                case let .send(id, bytes):
                    if closed.contains(id) { out.append("send on closed \(id)") }
                    sent[id, default: []] += bytes
                case let .forward(f):
                    // The forwarded record is the sender's canonical bytes: a uds:new-connection
                    // that re-encodes to itself, naming the forward's two keys.
                    if let message = try? UDSMessage(bytes: f.record), case let .newConnection(request) = message {
                        if message.encoded != f.record { out.append("forwarded record is not canonical") }
                        if request.from.identity != f.from || request.to.identity != f.to {
                            out.append("forwarded record names other keys than the forward")
                        }
                    } else {
                        out.append("forwarded record is not a uds:new-connection")
                    }
                    if closed.contains(f.target) || failNextForward {
                        ended[f.descriptor, default: 0] += 1
                        apply(core.forwardFailed(f, reason: .outputOverflow, detail: "fuzz", now: now))
                    } else {
                        ended[f.descriptor, default: 0] += 1
                        apply(core.forwardSucceeded(f, now: now))
                    }
                case let .closeDescriptor(fd):
                    ended[fd, default: 0] += 1
                case let .close(id):
                    if closed.contains(id) { out.append("\(id) closed twice") }
                    closed.insert(id)
                    for (slot, live) in open where live == id { open[slot] = nil }
                case let .audit(record):
                    if record.kind.isTerminal { ends[record.attempt, default: 0] += 1 }
                    else if record.kind != .extraDescriptorsClosed { starts.insert(record.attempt) }
                case .log:
                    break
                }
            }
        }
        func descriptors(_ n: Int) -> [Int] {
            (0..<n).map { _ in nextFD += 1; handedIn.append(nextFD); return nextFD }
        }

        var i = 0
        func byte() -> UInt8? {
            guard i < input.count else { return nil }
            defer { i += 1 }
            return input[i]
        }
        while let b = byte() {
            let op = Int(b & 7), slot = Int((b >> 3) & 3)
            failNextForward = b & 0x80 != 0
            switch op {
            case 0:
                guard open[slot] == nil else { continue }
                let id = ID(nextID)
                nextID += 1
                let uid: UInt32 = (byte() ?? 0) & 1 == 1 ? 2000 : 1000
                open[slot] = id
                apply(core.connectionAccepted(id, credentials: .init(pid: 1, uid: uid, gid: 1), now: now))
            case 1:
                guard let id = open[slot] else { continue }
                let length = Int(byte() ?? 0)
                let count = Int((byte() ?? 0) & 3)
                let end = min(input.count, i + length)
                let bytes = Array(input[i..<end])
                i = end
                if bytes.isEmpty && count > 0 { continue }  // the kernel never delivers that
                apply(core.received(id, bytes: bytes, descriptors: descriptors(count), now: now))
            case 2:
                guard let id = open[slot] else { continue }
                apply(core.endOfStream(id, now: now))
            case 3:
                now += UInt64(byte() ?? 0) * 50_000_000
                apply(core.tick(now: now))
            case 4:
                guard let id = open[slot] else { continue }
                apply(core.connectionFailed(id, reason: .ioError, detail: "fuzz", now: now))
            case 5:
                guard let id = open[slot] else { continue }
                var client = RegistrationClient(signer: signers[slot], challenge: try! Challenge([UInt8](repeating: 0xc0 &+ UInt8(slot), count: 64)),
                                                expectedServer: server.publicIdentity)
                sent[id] = []
                apply(core.received(id, bytes: client.start().encoded, descriptors: [], now: now))
                guard open[slot] == id, let response = sent[id], !response.isEmpty,
                      let value = try? SyrupDecoder(limits: .controlMessage).decode(response),
                      let actions = try? client.receive(value),
                      case let .send(reply)? = actions.first else { continue }
                apply(core.received(id, bytes: reply.encoded, descriptors: [], now: now))
            case 6:
                guard let id = open[slot] else { continue }
                let arg = byte() ?? 0
                let record = UDSMessage.newConnection(UDSNewConnection(
                    from: PeerLocator(identity: signers[slot].publicIdentity),
                    to: PeerLocator(identity: signers[Int(arg & 3)].publicIdentity))).encoded
                let count = Int((arg >> 2) & 3)
                if arg & 0x10 != 0 {
                    apply(core.received(id, bytes: record, descriptors: [], now: now))
                    guard open[slot] == id else { continue }
                    apply(core.received(id, bytes: UDSNewConnection.fdMarker, descriptors: descriptors(count), now: now))
                } else {
                    apply(core.received(id, bytes: record + UDSNewConnection.fdMarker, descriptors: descriptors(count), now: now))
                }
            default:
                if let first = core.pendingDescriptors.map(\.attempt).min() {
                    apply(core.pendingHungUp([first], now: now))
                }
            }
        }
        apply(core.shutdown(now: now))
        if core.connectionCount != 0 || core.pendingCount != 0 || core.registeredCount != 0 || core.unauthenticatedCount != 0 {
            out.append("counts not zero after shutdown")
        }
        for fd in handedIn where ended[fd] != 1 { out.append("descriptor \(fd) ended \(ended[fd] ?? 0) times") }
        if Set(ended.keys) != Set(handedIn) { out.append("unknown descriptors ended") }
        for (attempt, n) in ends where n != 1 { out.append("attempt \(attempt) ended \(n) times") }
        for attempt in starts where ends[attempt] != 1 { out.append("attempt \(attempt) never ended") }
        return out
    }
}
