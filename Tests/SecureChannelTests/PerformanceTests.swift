import Foundation
@testable import Identity
@testable import SecureChannel
import SodiumCrypto
import Testing

/// Performance targets, measured against the libsodium operations in the same run. Timing is
/// noisy on shared machines, so these run only with OCAPN_UDS_BENCH=1 (preferably `-c release`).
@Suite(.enabled(if: ProcessInfo.processInfo.environment["OCAPN_UDS_BENCH"] == "1",
                "timing suite: runs with OCAPN_UDS_BENCH=1 (figures come from `ocapn-uds bench`)"), .serialized)
struct PerformanceTests {
    /// Best (minimum) per-iteration time over `rounds` rounds of `iterations` calls.
    static func measure(rounds: Int = 7, iterations: Int, _ body: () throws -> Void) rethrows -> Double {
        var best = Double.infinity
        for _ in 0..<rounds {
            let start = ContinuousClock.now
            for _ in 0..<iterations { try body() }
            let elapsed = ContinuousClock.now - start
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            best = min(best, seconds / Double(iterations))
        }
        return best
    }

    @Test("A full handshake costs at most 1.3 times the libsodium operations it needs")
    func handshakeCost() throws {
        let a = Fixture.alice, b = Fixture.bob
        let msg = [UInt8](repeating: 7, count: 61)
        let sig = Ed25519.sign(msg, secretKey: a.secretKey)
        let peer = X25519.generate().publicKey
        // Per side: one ephemeral key, four DH, one signature, one verification.
        let floor = try Self.measure(iterations: 100) {
            for _ in 0..<2 {
                let e = SecretBytes.random(count: 32)
                _ = X25519.publicKey(secret: e)
                for _ in 0..<4 { _ = try X25519.sharedSecret(secret: e, publicKey: peer) }
                _ = Ed25519.sign(msg, secretKey: a.secretKey)
                _ = Ed25519.verify(signature: sig, message: msg, publicKey: a.publicKey)
            }
        }
        let cache = IdentityKeyCache()
        let now = ContinuousClock.now
        let full = try Self.measure(iterations: 100) {
            let i = try HandshakeInitiator(identity: a, responder: b.publicIdentity, keyCache: cache, now: now)
            let r = HandshakeResponder(identity: b, announcedInitiator: a.publicIdentity, keyCache: cache, now: now)
            guard case .send(let m2) = try r.receive(i.initialMessage, now: now),
                  case .established(_, let auth) = try i.receive(m2, now: now),
                  case .established = try r.receive(auth, now: now) else { throw UnexpectedStep(description: "handshake") }
        }
        let ratio = full / floor
        print(String(format: "handshake: %.1f µs both sides, libsodium floor %.1f µs, ratio %.2f", full * 1e6, floor * 1e6, ratio))
        #expect(ratio <= 1.3)
    }

    @Test("Channel throughput at 64 KiB messages is at least 0.8 times raw ChaCha20-Poly1305")
    func channelThroughput() throws {
        let size = 64 << 10
        let message = RandomBytes.bytes(size)
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        var ct = [UInt8](repeating: 0, count: size + 16)
        var pt = [UInt8](repeating: 0, count: size)
        var n: UInt64 = 0
        let raw = try Self.measure(iterations: 200) {
            try message.withUnsafeBytes { m in
                try ct.withUnsafeMutableBytes { c in
                    ChaChaPoly.seal(key: key, nonce: n, ad: UnsafeRawBufferPointer(start: nil, count: 0), plaintext: m, into: c)
                    try pt.withUnsafeMutableBytes { p in
                        try ChaChaPoly.open(key: key, nonce: n, ad: UnsafeRawBufferPointer(start: nil, count: 0),
                                            ciphertext: UnsafeRawBufferPointer(c), into: p)
                    }
                }
            }
            n += 1
        }
        let sender = FrameSender(key: key, nonce: 0, configuration: ChannelConfiguration())
        let receiver = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration())
        let sealed = sender.sealedLength(messageLength: size)
        let ours = try Self.measure(iterations: 200) {
            // seal straight into the receiver's input buffer, as read(2) would deliver it
            try message.withUnsafeBytes { m in
                try receiver.withInputBuffer(minimumCapacity: sealed) { buf in try sender.seal(m, into: buf) }
            }
            guard case .message(let count) = try receiver.nextMessage({ $0.count }), count == size else {
                throw UnexpectedStep(description: "no message")
            }
        }
        let ratio = raw / ours
        print(String(format: "channel 64 KiB: %.2f GB/s, raw AEAD %.2f GB/s, ratio %.2f",
                     Double(size) / ours / 1e9, Double(size) / raw / 1e9, ratio))
        #expect(ratio >= 0.8)
    }
}
