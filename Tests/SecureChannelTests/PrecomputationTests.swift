import Foundation
@testable import Identity
@testable import SecureChannel
@testable import SodiumCrypto
import Testing

/// Issue #16: the static–static secret cache, the merged key cache and the ephemeral pool. The
/// machines take them as inputs, so every transcript below is checked against an uncached run.
@Suite struct StaticSecretCacheTests {
    static func ss(_ a: IdentityKeyPair, _ b: IdentityKeyPair) throws -> SecretBytes {
        try X25519.sharedSecret(secret: a.handshakeSecret, publicKey: b.handshakePublicKey)
    }

    @Test("A cached ss is returned only for its own ordered pair of full keys")
    func neverAnotherPair() throws {
        let cache = StaticSecretCache(capacity: 8)
        let (a, b, c) = (Fixture.alice, Fixture.bob, Fixture.carol)
        let ab = try Self.ss(a, b)
        cache.remember(ab, local: a.publicKey, peer: b.publicKey)
        #expect(cache.secret(local: a.publicKey, peer: b.publicKey)?.constantTimeEquals(ab) == true)
        #expect(cache.secret(local: a.publicKey, peer: c.publicKey) == nil)
        #expect(cache.secret(local: c.publicKey, peer: b.publicKey) == nil)
        #expect(cache.secret(local: b.publicKey, peer: a.publicKey) == nil, "the pair is ordered: (local, peer)")
        // Keys that differ from a cached one in a single bit, anywhere, miss.
        for bit in stride(from: 0, to: 256, by: 7) {
            #expect(cache.secret(local: flipped(a.publicKey, bit: bit), peer: b.publicKey) == nil)
            #expect(cache.secret(local: a.publicKey, peer: flipped(b.publicKey, bit: bit)) == nil)
        }
    }

    /// Runs a handshake a → b through `cache` with fixed ephemerals and returns its transcript.
    func cachedHandshake(_ a: IdentityKeyPair, _ b: IdentityKeyPair, _ cacheA: StaticSecretCache, _ cacheB: StaticSecretCache) throws -> Transcript {
        let i = try HandshakeInitiator(identity: a, responder: b.publicIdentity, keyCache: Fixture.cache, staticSecrets: cacheA,
                                       ephemeralKeys: Fixture.fixedEphemeral(Fixture.ephemeralI), now: Fixture.now)
        let r = HandshakeResponder(identity: b, announcedInitiator: a.publicIdentity, keyCache: Fixture.cache, staticSecrets: cacheB,
                                   ephemeralKeys: Fixture.fixedEphemeral(Fixture.ephemeralR), now: Fixture.now)
        guard case .send(let msg2) = try r.receive(i.initialMessage, now: Fixture.now),
              case .established(let si, let auth) = try i.receive(msg2, now: Fixture.now),
              case .established(let sr, _) = try r.receive(auth, now: Fixture.now) else { throw UnexpectedStep(description: "not established") }
        return Transcript(msg1: i.initialMessage, msg2: msg2, auth: auth, initiator: si, responder: sr)
    }

    @Test("One cache shared by every pair: each handshake, cold or warm, is byte for byte the uncached one")
    func sharedCacheChangesNoByte() throws {
        let people = [Fixture.alice, Fixture.bob, Fixture.carol, Fixture.mallory]
        let shared = StaticSecretCache(capacity: 3)  // smaller than the 12 ordered pairs: evictions too
        for round in 0..<3 {
            for (x, a) in people.enumerated() {
                for (y, b) in people.enumerated() where x != y {
                    let cached = try cachedHandshake(a, b, shared, shared)
                    let plain = try handshake(a, b)
                    #expect(cached.msg1 == plain.msg1 && cached.msg2 == plain.msg2 && cached.auth == plain.auth, "round \(round) \(x)→\(y)")
                    #expect(cached.initiator.handshakeHash == plain.initiator.handshakeHash)
                    #expect(cached.initiator.sender.trafficKeyForTesting == plain.initiator.sender.trafficKeyForTesting)
                    #expect(cached.responder.sender.trafficKeyForTesting == plain.responder.sender.trafficKeyForTesting)
                }
            }
        }
        #expect(shared.count == 3)
    }

    @Test("The machines use the cached secret of their pair and no other: a poisoned entry breaks only its own pair")
    func poisonedEntryStaysWithItsPair() throws {
        let (a, b, c) = (Fixture.alice, Fixture.bob, Fixture.carol)
        let poisoned = StaticSecretCache()
        poisoned.remember(SecretBytes(copying: [UInt8](repeating: 0x55, count: 32)), local: a.publicKey, peer: c.publicKey)
        // a → b does not touch (a, c)'s entry.
        let ok = try cachedHandshake(a, b, poisoned, StaticSecretCache())
        #expect(ok.msg1 == (try handshake(a, b)).msg1)
        // a → c uses it: c (uncached) cannot open msg1.
        let i = try HandshakeInitiator(identity: a, responder: c.publicIdentity, keyCache: Fixture.cache, staticSecrets: poisoned,
                                       ephemeralKeys: Fixture.fixedEphemeral(Fixture.ephemeralI), now: Fixture.now)
        #expect(responderCode(i.initialMessage, responder(c, from: a.publicKey)) == .decryptFailed)
    }

    @Test("Only a handshake whose peer proved its key leaves ss in the cache")
    func rememberedOnlyAfterProof() throws {
        let cacheB = StaticSecretCache()
        let r = HandshakeResponder(identity: Fixture.bob, announcedInitiator: Fixture.alice.publicIdentity, keyCache: Fixture.cache,
                                   staticSecrets: cacheB, ephemeralKeys: Fixture.fixedEphemeral(Fixture.ephemeralR), now: Fixture.now)
        let t = try handshake()
        guard case .send = try r.receive(t.msg1, now: Fixture.now) else { Issue.record("no msg2"); return }
        #expect(cacheB.count == 0, "msg1 alone proves nothing")
        #expect(code { _ = try r.receive(flipped(t.auth, bit: 100), now: Fixture.now) } == .decryptFailed)
        #expect(cacheB.count == 0, "a failed AUTH leaves nothing")
        let cacheA = StaticSecretCache()
        _ = try cachedHandshake(Fixture.alice, Fixture.bob, cacheA, cacheB)
        #expect(cacheA.count == 1 && cacheB.count == 1)
        #expect(cacheA.secret(local: Fixture.alice.publicKey, peer: Fixture.bob.publicKey)?.constantTimeEquals(try Self.ss(Fixture.alice, Fixture.bob)) == true)
    }

    @Test("Eviction wipes the evicted secret and removeAll wipes every slot")
    func evictionWipes() throws {
        let cache = StaticSecretCache(capacity: 2)
        let keys = (0..<3).map { _ in Ed25519.generate().publicKey }
        let secrets = (0..<3).map { _ in RandomBytes.bytes(32) }
        for (k, s) in zip(keys, secrets) { cache.remember(SecretBytes(copying: s), local: Fixture.alice.publicKey, peer: k) }
        #expect(cache.count == 2)
        #expect(cache.secret(local: Fixture.alice.publicKey, peer: keys[0]) == nil)
        let table = cache.tableForTesting()
        func holds(_ s: [UInt8]) -> Bool { (0...(table.count - 32)).contains { Array(table[$0..<$0 + 32]) == s } }
        #expect(!holds(secrets[0]), "the evicted secret is gone from guarded memory")
        #expect(holds(secrets[1]) && holds(secrets[2]))
        cache.removeAll()
        #expect(cache.count == 0)
        #expect(cache.tableForTesting().allSatisfy { $0 == 0 })
        #expect(cache.secret(local: Fixture.alice.publicKey, peer: keys[2]) == nil)
    }
}

@Suite struct EphemeralKeyPoolTests {
    static func waitFor(_ condition: () -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .seconds(20)
        while !condition() {
            if ContinuousClock.now > deadline { return false }
            usleep(1000)
        }
        return true
    }

    @Test("The pool hands out distinct, correct key pairs, refills in the background and never blocks when empty")
    func poolRefills() throws {
        let pool = EphemeralKeyPool(capacity: 4)
        #expect(pool.available == 0)
        pool.prefill()
        #expect(Self.waitFor { pool.available == 4 })
        var publics = Set<[UInt8]>()
        for _ in 0..<12 {  // more than the pool holds: some are made on the spot
            let pair = EphemeralKeySource.pool(pool).next()
            #expect(pair.publicKey == X25519.publicKey(secret: pair.secret))
            publics.insert(pair.publicKey)
        }
        #expect(publics.count == 12)
        // A background refill may have finished mid-loop and left the pool above half; take
        // until it is below half, so the last take is one that must schedule (or find) a refill.
        while pool.available >= 2 { _ = EphemeralKeySource.pool(pool).next() }
        #expect(Self.waitFor { pool.available == 4 }, "taking below half schedules a refill")
        pool.removeAll()
        #expect(pool.available == 0)
    }

    @Test("A handshake with pooled ephemerals and a warm cache completes and keys agree")
    func pooledHandshake() throws {
        let pool = EphemeralKeyPool(capacity: 4)
        let (ca, cb) = (StaticSecretCache(), StaticSecretCache())
        for _ in 0..<3 {
            let i = try HandshakeInitiator(identity: Fixture.alice, responder: Fixture.bob.publicIdentity, keyCache: Fixture.cache,
                                           staticSecrets: ca, ephemeralKeys: .pool(pool), now: Fixture.now)
            let r = HandshakeResponder(identity: Fixture.bob, announcedInitiator: Fixture.alice.publicIdentity, keyCache: Fixture.cache,
                                       staticSecrets: cb, ephemeralKeys: .pool(pool), now: Fixture.now)
            guard case .send(let msg2) = try r.receive(i.initialMessage, now: Fixture.now),
                  case .established(let si, let auth) = try i.receive(msg2, now: Fixture.now),
                  case .established(let sr, _) = try r.receive(auth, now: Fixture.now) else { Issue.record("not established"); return }
            #expect(si.sender.trafficKeyForTesting == sr.receiver.trafficKeyForTesting)
            #expect(si.handshakeHash == sr.handshakeHash)
        }
    }
}

/// Issue #11 item 5: where session secrets live.
@Suite struct KeyHygieneTests {
    /// The /proc/self/smaps entry (range, permissions, VmFlags) of the mapping holding `address`.
    struct Mapping { let start: UInt, end: UInt, permissions: String, flags: [String] }

    static func mappings() throws -> [Mapping] {
        // Read to the end: a single read of a /proc file returns only its first page or so.
        guard let handle = FileHandle(forReadingAtPath: "/proc/self/smaps") else { throw CocoaError(.fileReadNoPermission) }
        defer { try? handle.close() }
        let text = String(decoding: handle.readDataToEndOfFile(), as: UTF8.self)
        var out: [Mapping] = []
        var current: (UInt, UInt, String)?
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if let first = fields.first, first.contains("-"), fields.count >= 2, !first.hasSuffix(":") {
                let bounds = first.split(separator: "-")
                if bounds.count == 2, let s = UInt(bounds[0], radix: 16), let e = UInt(bounds[1], radix: 16) {
                    current = (s, e, String(fields[1]))
                    continue
                }
            }
            if line.hasPrefix("VmFlags:"), let c = current {
                out.append(Mapping(start: c.0, end: c.1, permissions: c.2, flags: fields.dropFirst().map(String.init)))
                current = nil
            }
        }
        return out
    }

    static func mapping(of address: UnsafeMutableRawPointer) throws -> Mapping? {
        let a = UInt(bitPattern: address)
        return try mappings().first { $0.start <= a && a < $0.end }
    }

    @Test("Session secrets (DH outputs, chaining key, traffic keys) live in guarded slab slots")
    func sessionSecretsAreGuarded() throws {
        let t = try handshake()
        for key in [t.initiator.sender.key, t.initiator.receiver.key, t.responder.sender.key, t.responder.receiver.key] {
            #expect(key.storageForTesting == .slot(SecretSlab.shared))
        }
        let dh = try X25519.sharedSecret(secret: Fixture.alice.handshakeSecret, publicKey: Fixture.bob.handshakePublicKey)
        #expect(dh.storageForTesting == .slot(SecretSlab.shared))
        var s = NoiseSymmetricState(protocolName: UDSHS1.noiseProtocolName)
        s.mixKey(dh)
        #expect(s.chainingKey.storageForTesting == .slot(SecretSlab.shared))
        // Identity keys: their own guarded allocation, read-only once made.
        #expect(Fixture.alice.secretKey.storageForTesting == .guarded)
        let m = try #require(try Self.mapping(of: Fixture.alice.secretKey.addressForTesting))
        #expect(m.permissions.hasPrefix("r--"), "identity key pages are read-only: \(m.permissions)")
    }

    @Test("Slab memory is excluded from core dumps, fenced by guard pages, and a released slot is wiped")
    func slabIsGuardedAndWiped() throws {
        let slab = SecretSlab()  // private: no other test takes the released slot
        let secret = SecretBytes(count: 32, guarded: false, slab: slab)
        secret.withUnsafeMutableBytes { randombytes_buf_for_tests($0) }
        let address = secret.addressForTesting
        #expect(secret.withUnsafeBytes { $0.contains { $0 != 0 } })
        let m = try #require(try Self.mapping(of: address))
        #expect(m.flags.contains("dd"), "MADV_DONTDUMP (libsodium 1.0.18 sodium_mlock): \(m.flags)")
        #expect(m.permissions.hasPrefix("rw"))
        let after = try Self.mappings().first { $0.start == m.end }
        #expect(after?.permissions.hasPrefix("---") == true, "a guard page follows the chunk")
        let before = try Self.mappings().first { $0.end == m.start }
        #expect(before?.permissions.hasPrefix("---") == true, "a guard page precedes the chunk")
        _ = consume secret  // released here: the slot is wiped before reuse
        let bytes = UnsafeRawBufferPointer(start: address, count: SecretSlab.slotSize)
        #expect(bytes.allSatisfy { $0 == 0 })
        #expect(slab.freeCount == 1024)
    }

    @Test("Guarded buffers are fenced by guard pages, excluded from core dumps, and wiped by their owner")
    func guardedBufferProtection() throws {
        let buffer = GuardedBuffer(count: 64)
        let address = buffer.withReadable { UnsafeMutableRawPointer(mutating: $0.baseAddress!) }
        let m = try #require(try Self.mapping(of: address))
        #expect(m.flags.contains("dd") && m.permissions.hasPrefix("rw"))
        #expect(try Self.mappings().first { $0.start == m.end }?.permissions.hasPrefix("---") == true)
    }
}

private func randombytes_buf_for_tests(_ b: UnsafeMutableRawBufferPointer) {
    let r = RandomBytes.bytes(b.count)
    b.copyBytes(from: r)
}
