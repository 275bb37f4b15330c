import Foundation
@testable import Identity
@testable import SecureChannel
import SodiumCrypto
import Testing

@Suite struct RobustnessTests {
    /// Deterministic chunk sizes 1…max from a seed.
    static func chunks(_ bytes: [UInt8], seed: UInt8, max: Int) -> [[UInt8]] {
        let sizes = RandomBytes.deterministic(bytes.count, seed: [UInt8](repeating: seed, count: 32))
        var out: [[UInt8]] = []
        var i = 0, k = 0
        while i < bytes.count {
            let n = min(bytes.count - i, 1 + Int(sizes[k]) % max)
            out.append(Array(bytes[i..<i + n]))
            i += n
            k += 1
        }
        return out
    }

    @Test("Random bytes in random chunks give events or our error from the frame receiver, never a crash")
    func frameReceiverGarbage() throws {
        for seed in UInt8(0)..<40 {
            let key = SecretBytes(copying: RandomBytes.bytes(32))
            let r = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration(maxMessageSize: 4096))
            let garbage = RandomBytes.deterministic(3000, seed: [UInt8](repeating: seed, count: 32))
            let outcome = code {
                for c in Self.chunks(garbage, seed: seed &+ 1, max: 300) {
                    try r.receive(c)
                    while let e = try r.next(), e != .closed {}
                }
                try r.receiveEOF()
            }
            #expect(outcome != nil, "seed \(seed): random bytes were accepted as a clean stream")
        }
    }

    @Test("A valid stream split at random points always yields the same messages")
    func validStreamRandomSplits() throws {
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        let config = ChannelConfiguration(maxFragmentSize: 100)
        let s = FrameSender(key: key, nonce: 0, configuration: config)
        let messages = (1...20).map { RandomBytes.bytes($0 * 37) }
        let wire = try messages.flatMap { try s.seal($0) } + s.close()
        for seed in UInt8(0)..<10 {
            let r = FrameReceiver(key: key, nonce: 0, configuration: config)
            var got: [ChannelEvent] = []
            for c in Self.chunks(wire, seed: seed, max: 257) {
                try r.receive(c)
                while let e = try r.next() { got.append(e); if e == .closed { break } }
            }
            try r.receiveEOF()
            #expect(got == messages.map { .message($0) } + [.closed], "seed \(seed)")
        }
    }

    @Test("Random handshake bytes in random chunks end in our error for both roles")
    func handshakeGarbage() throws {
        for seed in UInt8(0)..<20 {
            let garbage = RandomBytes.deterministic(400, seed: [UInt8](repeating: seed, count: 32))
            let r = responder(ephemeral: nil)
            let i = try initiator(ephemeral: nil)
            for machine in 0..<2 {
                let outcome = code {
                    for c in Self.chunks(garbage, seed: seed, max: 64) {
                        if machine == 0 { _ = try r.receive(c, now: Fixture.now) } else { _ = try i.receive(c, now: Fixture.now) }
                    }
                    if machine == 0 { try r.receiveEOF() } else { try i.receiveEOF() }
                }
                #expect(outcome != nil)
            }
        }
    }

    @Test("Header, address and identity checks run before the policy hook and any key conversion")
    func checkOrder() throws {
        let m = try initiator().initialMessage
        let calls = LockedBox(0)
        let hook: @Sendable ([UInt8]) -> Bool = { _ in calls.set(calls.get() + 1); return true }
        let early: [([UInt8], PublicIdentity)] = [
            (replacing(m, at: 0, with: [0]), Fixture.alice.publicIdentity),  // badMagic
            (replacing(m, at: 4, with: [9]), Fixture.alice.publicIdentity),  // unsupportedVersion
            (replacing(m, at: 40, with: Fixture.carol.publicKey), Fixture.alice.publicIdentity),  // wrongResponder
            (m, Fixture.carol.publicIdentity),  // identityMismatch
        ]
        for (bytes, from) in early {
            let cache = IdentityKeyCache()
            let r = HandshakeResponder(identity: Fixture.bob, announcedInitiator: from, policy: hook, keyCache: cache, now: Fixture.now)
            #expect(code { _ = try r.receive(bytes, now: Fixture.now) } != nil)
            #expect(cache.count == 0, "no key conversion before the cheap checks")
        }
        #expect(calls.get() == 0, "the policy hook is not consulted for rejected headers")
        let cache = IdentityKeyCache()
        let r = HandshakeResponder(identity: Fixture.bob, announcedInitiator: Fixture.alice.publicIdentity, policy: { _ in false }, keyCache: cache, now: Fixture.now)
        #expect(code { _ = try r.receive(m, now: Fixture.now) } == .peerNotAllowed)
        #expect(cache.count == 0, "a refused peer costs no key conversion")
    }
}
