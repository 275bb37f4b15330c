import Foundation
import Identity
import Synchronization
import SecureChannel
import SodiumCrypto
import Transport

/// UDS-HS1 over a real socketpair: both machines in one thread, every message written to one end
/// and read from the other, so the figure is protocol + crypto + the syscalls, with no scheduler
/// wake-ups (those are measured separately by the end-to-end connect figure).
///
/// Three configurations (issue #16), all timed in the same run:
/// * `uncached`: what the handshake cost before the precomputations: fresh key caches, no ss
///   cache, each ephemeral made on the spot, a new initiator key every time.
/// * `cold`: the first handshake between two keys as a long-running peer runs it now: a new
///   initiator key every time (so its X25519 form and ss are computed on both sides), ephemerals
///   from a pool.
/// * `warm`: the same two keys again and again: both conversions and ss cached, pooled ephemerals.
enum HandshakeBench {
    enum Mode: String { case uncached, cold, warm }

    struct Result {
        var latencies: Samples
        var handshakesPerSecond: Double
    }

    /// One side's long-lived state: identity plus the precomputations it keeps between handshakes.
    struct Side {
        let publicKey: [UInt8]
        let identity: IdentityKeyPair
        let keyCache: IdentityKeyCache
        let staticSecrets: StaticSecretCache?
        let ephemeralKeys: EphemeralKeySource

        /// Checks the peer's key as the runtime does before a handshake (`PublicIdentity`):
        /// through the key cache, or, uncached, with a conversion of its own as before #16.
        func validate(_ peer: [UInt8]) -> Bool {
            staticSecrets == nil ? Ed25519.isValidIdentityKey(peer) : keyCache.isValidIdentityKey(peer)
        }

        static func make(keyCache: IdentityKeyCache, staticSecrets: StaticSecretCache?, ephemeralKeys: EphemeralKeySource) throws -> Side {
            let k = IdentityKeyPair.generate()
            return Side(publicKey: k.publicKey, identity: k,
                        keyCache: keyCache, staticSecrets: staticSecrets, ephemeralKeys: ephemeralKeys)
        }
    }

    static func run(count: Int, mode: Mode) throws -> Result {
        let pool = EphemeralKeyPool()
        pool.prefill()
        let ephemerals: EphemeralKeySource = mode == .uncached ? .system : .pool(pool)
        func responderSide() throws -> Side {
            try Side.make(keyCache: IdentityKeyCache(), staticSecrets: mode == .uncached ? nil : StaticSecretCache(), ephemeralKeys: ephemerals)
        }
        var b = try responderSide()
        var a = try Side.make(keyCache: IdentityKeyCache(), staticSecrets: mode == .uncached ? nil : StaticSecretCache(), ephemeralKeys: ephemerals)
        // Let the pool fill before the first timed handshake, as it has in a running peer.
        for _ in 0..<2000 where pool.available < pool.capacity { usleep(500) }
        var latencies = Samples()
        var buffer = [UInt8](repeating: 0, count: 4096)
        var total: UInt64 = 0
        for iteration in 0..<(count + 1) {
            switch mode {
            case .warm: break
            case .cold:
                // A key never seen before, met by a long-running responder (its caches persist).
                a = try Side.make(keyCache: IdentityKeyCache(), staticSecrets: StaticSecretCache(), ephemeralKeys: ephemerals)
            case .uncached:
                a = try Side.make(keyCache: IdentityKeyCache(), staticSecrets: nil, ephemeralKeys: ephemerals)
                b = Side(publicKey: b.publicKey, identity: b.identity, keyCache: IdentityKeyCache(), staticSecrets: nil, ephemeralKeys: ephemerals)
            }
            let (sa, sb) = try FileDescriptor.socketPair()
            defer { sa.close(); sb.close() }
            let t0 = nowNanos()
            try handshake(a, b, sa, sb, &buffer)
            let elapsed = nowNanos() - t0
            // The first warm handshake is the cold one that fills the caches: not a warm sample.
            if iteration > 0 || mode != .warm {
                latencies.add(Double(elapsed))
                total += elapsed
            }
            if mode == .cold && iteration % 8 == 7 {
                // Give the refill its core back as a real peer's idle moments would.
                for _ in 0..<200 where pool.available < pool.capacity / 2 { usleep(100) }
            }
        }
        return Result(latencies: latencies, handshakesPerSecond: Double(latencies.values.count) / Double(total) * 1e9)
    }

    /// The two machines of one handshake a → b, made once each side has checked the other's key
    /// as the runtime does.
    static func machines(_ a: Side, _ b: Side, now: ContinuousClock.Instant) throws -> (HandshakeInitiator, HandshakeResponder) {
        guard a.validate(b.publicKey), b.validate(a.publicKey) else { throw BenchError("identity key refused") }
        let initiator = try HandshakeInitiator(identity: a.identity, responder: b.identity.publicIdentity, keyCache: a.keyCache,
                                               staticSecrets: a.staticSecrets, ephemeralKeys: a.ephemeralKeys, now: now)
        let responder = HandshakeResponder(identity: b.identity, announcedInitiator: a.identity.publicIdentity, keyCache: b.keyCache,
                                           staticSecrets: b.staticSecrets, ephemeralKeys: b.ephemeralKeys, now: now)
        return (initiator, responder)
    }

    /// One handshake a → b over the socketpair (sa: a's end), with the first encrypted frame.
    static func handshake(_ a: Side, _ b: Side, _ sa: FileDescriptor, _ sb: FileDescriptor, _ buffer: inout [UInt8]) throws {
        let now = ContinuousClock.now
        let (initiator, responder) = try machines(a, b, now: now)
        try writeAll(sa, initiator.initialMessage)
        let msg1 = try readSome(sb, &buffer)
        guard case let .send(msg2) = try responder.receive(msg1, now: now) else { throw BenchError("responder did not answer msg1") }
        try writeAll(sb, msg2)
        let got2 = try readSome(sa, &buffer)
        guard case let .established(sessionA, send: auth) = try initiator.receive(got2, now: now) else {
            throw BenchError("initiator did not establish")
        }
        // First encrypted frame pipelined behind AUTH, as the runtime sends it.
        let first = try sessionA.sender.seal([0x68, 0x69])
        try writeAll(sa, auth + first)
        let got3 = try readSome(sb, &buffer)
        guard case let .established(sessionB, _) = try responder.receive(got3, now: now) else {
            throw BenchError("responder did not establish")
        }
        guard case .message? = try sessionB.receiver.next() else { throw BenchError("first frame missing") }
    }

    /// Handshakes per second for a peer receiving many: `threads` threads each run complete
    /// handshakes from `initiators.count` known initiators to one responder identity sharing one
    /// key cache and one ss cache (both warm, as for peers that come back), in memory so only
    /// the crypto and the protocol count. Ephemerals are made on the spot (`system`), so one
    /// thread really uses one core (a pool's refill would run on the other).
    static func rate(threads: Int, seconds: Double, responder: Side, initiators: [Side]) throws -> Double {
        let counts = Mutex([Int](repeating: 0, count: threads))
        let failure = Mutex<String?>(nil)
        let start = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        let deadline = Mutex<UInt64>(0)
        for t in 0..<threads {
            done.enter()
            let thread = Thread {
                defer { done.leave() }
                start.wait()
                let end = deadline.withLock { $0 }
                var n = 0
                var i = t
                while nowNanos() < end {
                    do {
                        try memoryHandshake(initiators[i % initiators.count], responder)
                    } catch {
                        failure.withLock { $0 = "\(error)" }
                        return
                    }
                    n += 1
                    i += threads
                }
                counts.withLock { $0[t] = n }
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        let t0 = nowNanos()
        deadline.withLock { $0 = t0 + UInt64(seconds * 1e9) }
        for _ in 0..<threads { start.signal() }
        done.wait()
        let elapsed = Double(nowNanos() - t0)
        if let f = failure.withLock({ $0 }) { throw BenchError("handshake failed in the rate run: \(f)") }
        return Double(counts.withLock { $0.reduce(0, +) }) / elapsed * 1e9
    }

    /// One responder and `initiators` peers that have each met it once (warm caches on both sides).
    static func peerReceivingMany(initiators: Int) throws -> (responder: Side, initiators: [Side]) {
        let responder = try Side.make(keyCache: IdentityKeyCache(), staticSecrets: StaticSecretCache(), ephemeralKeys: .system)
        let peers = try (0..<initiators).map { _ in
            try Side.make(keyCache: IdentityKeyCache(), staticSecrets: StaticSecretCache(), ephemeralKeys: .system)
        }
        for p in peers { try memoryHandshake(p, responder) }
        return (responder, peers)
    }

    /// A complete handshake between two sans-IO machines with no socket in between.
    static func memoryHandshake(_ a: Side, _ b: Side) throws {
        let now = ContinuousClock.now
        let (initiator, responder) = try machines(a, b, now: now)
        guard case let .send(msg2) = try responder.receive(initiator.initialMessage, now: now),
              case let .established(_, send: auth) = try initiator.receive(msg2, now: now),
              case .established = try responder.receive(auth, now: now) else { throw BenchError("in-memory handshake did not establish") }
    }

    /// Crypto floors from libsodium operations timed alone in this run (nanoseconds, both sides;
    /// each operation the fastest of many short runs):
    /// `uncached` is UDS-HS1 with nothing precomputed, per side two Ed25519→X25519 conversions
    /// of the peer's key (identity validation and the handshake's own), one ephemeral key
    /// generation, four X25519 (es, ss, ee, se), one signature and one verification, plus the
    /// Noise key schedule and AEADs; `sigma` is a SIGMA-like signed handshake, per side one key
    /// generation, one DH, one signature and one verification.
    struct Floors {
        var uncached: Double
        var sigma: Double
    }

    static func floors(runs: Int) -> Floors {
        let (pk, sk, _) = Ed25519.generate()
        let eph = X25519.generate(), other = X25519.generate()
        let message = [UInt8](repeating: 7, count: 61)
        let signature = Ed25519.sign(message, secretKey: sk)
        let key = SecretBytes.random(count: 32)
        let small = [UInt8](repeating: 1, count: 64)
        var sink = 0
        let convert = fastestNanosPerCall(calls: 8, runs: runs) { sink &+= (try? Ed25519.publicKeyToX25519(pk))?.count ?? 0 }
        let keygen = fastestNanosPerCall(calls: 8, runs: runs) { sink &+= X25519.generate().publicKey.count }
        let dh = fastestNanosPerCall(calls: 8, runs: runs) {
            sink &+= (try? X25519.sharedSecret(secret: eph.secret, publicKey: other.publicKey))?.count ?? 0
        }
        let sign = fastestNanosPerCall(calls: 8, runs: runs) { sink &+= Ed25519.sign(message, secretKey: sk).count }
        let verify = fastestNanosPerCall(calls: 8, runs: runs) {
            sink &+= Ed25519.verify(signature: signature, message: message, publicKey: pk) ? 1 : 0
        }
        let aead = fastestNanosPerCall(calls: 200, runs: runs) { sink &+= ChaChaPoly.seal(key: key, nonce: 1, ad: small, plaintext: small).count }
        let sha = fastestNanosPerCall(calls: 200, runs: runs) { sink &+= SHA256.hash(small).count }
        let hmac = fastestNanosPerCall(calls: 200, runs: runs) { small.withUnsafeBytes { sink &+= HMACSHA256.mac(key: key, parts: [$0]).count } }
        precondition(sink != 0)
        let symmetric = 6 * aead + 14 * sha + 30 * hmac
        return Floors(uncached: 4 * convert + 2 * keygen + 8 * dh + 2 * sign + 2 * verify + symmetric,
                      sigma: 2 * (keygen + dh + sign + verify))
    }

    /// A floor is what the operation costs when nothing disturbs it: the fastest of `runs` short
    /// runs of `calls` calls each (≈ 0.1–0.3 ms, well inside one scheduler time slice). A median,
    /// or long runs, would count the other tenants of a shared machine into the floor, and the
    /// floor would come out above a whole measured handshake.
    static func fastestNanosPerCall(calls: Int, runs: Int, _ body: () -> Void) -> Double {
        body()
        var best = Double.infinity
        for _ in 0..<runs {
            let t0 = nowNanos()
            for _ in 0..<calls { body() }
            best = min(best, Double(nowNanos() - t0) / Double(calls))
        }
        return best
    }

    /// X25519 operations per second on `threads` threads: how many cores the host gives us now.
    static func dhRate(threads: Int, seconds: Double) -> Double {
        let counts = Mutex([Int](repeating: 0, count: threads))
        let done = DispatchGroup()
        let t0 = nowNanos()
        let end = t0 + UInt64(seconds * 1e9)
        for t in 0..<threads {
            done.enter()
            Thread {
                let e = X25519.generate(), other = X25519.generate()
                var n = 0
                while nowNanos() < end {
                    for _ in 0..<16 { _ = try? X25519.sharedSecret(secret: e.secret, publicKey: other.publicKey) }
                    n += 16
                }
                counts.withLock { $0[t] = n }
                done.leave()
            }.start()
        }
        done.wait()
        return Double(counts.withLock { $0.reduce(0, +) }) / Double(nowNanos() - t0) * 1e9
    }

    static func writeAll(_ fd: FileDescriptor, _ bytes: [UInt8]) throws {
        try fd.writeAll(bytes)
    }

    static func readSome(_ fd: FileDescriptor, _ buffer: inout [UInt8]) throws -> [UInt8] {
        let n = try fd.read(into: &buffer, at: 0)
        if n == 0 { throw BenchError("unexpected EOF") }
        return Array(buffer[0..<n])
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
