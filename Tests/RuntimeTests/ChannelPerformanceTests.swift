import Foundation
import Identity
import Runtime
import SodiumCrypto
import Testing
import Transport

/// Opt-in (OCAPN_UDS_BENCH=1, best with `-c release` on a quiet machine): channel throughput
/// at 64 KiB messages through the runtime against the ceiling, the slower of a raw
/// socketpair and raw ChaCha20-Poly1305 (seal and open each timed alone), measured in the same
/// run. Prints the figures and asserts the floor of 0.8×.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["OCAPN_UDS_BENCH"] == "1",
                "timing suite: runs with OCAPN_UDS_BENCH=1 (figures come from `ocapn-uds bench`)"))
struct ChannelPerformanceTests {
    static let messageSize = 64 << 10
    static let count = 4096

    @Test func sixtyFourKiBMessagesFlowAtLeastAtEightTenthsOfTheRawCeiling() async throws {
        let a = PeerTestSupport.establishment(IdentityKeyPair.generate())
        let b = PeerTestSupport.establishment(IdentityKeyPair.generate())
        let (ca, cb) = try await PeerTestSupport.connectedPair(a, b)
        let message = [UInt8](repeating: 0x5a, count: Self.messageSize)
        let started = ContinuousClock.now
        async let sending: Void = { for _ in 0..<Self.count { try await ca.send(message) } }()
        var received = 0
        while received < Self.count, let m = try await cb.receive() { received += m.count > 0 ? 1 : 0 }
        try await sending
        let channelTime = started.duration(to: .now)
        _ = await PeerTestSupport.closeBoth(ca, cb)

        let raw = try rawSocketpairTime()
        let total = Double(Self.count * Self.messageSize) / 1_048_576
        let channelRate = total / seconds(channelTime)
        let socketRate = total / seconds(raw)
        let aeadRate = aeadThroughput() / 1_048_576
        let ceiling = min(socketRate, aeadRate)
        print("channel: \(Int(channelRate)) MiB/s; raw socketpair \(Int(socketRate)) MiB/s; raw AEAD \(Int(aeadRate)) MiB/s; ratio \(channelRate / ceiling)")
        #expect(channelRate >= 0.8 * ceiling)
    }

    /// Plaintext bytes per second of the slower of seal and open on one thread each.
    func aeadThroughput() -> Double {
        let key = SecretBytes.random(count: 32)
        let plain = [UInt8](repeating: 0x42, count: Self.messageSize)
        var sealed = [UInt8](repeating: 0, count: Self.messageSize + ChaChaPoly.tagLength)
        var opened = [UInt8](repeating: 0, count: Self.messageSize)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        let rounds = 512
        var start = ContinuousClock.now
        for _ in 0..<rounds {
            plain.withUnsafeBytes { p in
                sealed.withUnsafeMutableBytes { s in ChaChaPoly.seal(key: key, nonce: 9, ad: none, plaintext: p, into: s) }
            }
        }
        let seal = seconds(start.duration(to: .now))
        start = ContinuousClock.now
        for _ in 0..<rounds {
            sealed.withUnsafeBytes { s in
                opened.withUnsafeMutableBytes { o in _ = try? ChaChaPoly.open(key: key, nonce: 9, ad: none, ciphertext: s, into: o) }
            }
        }
        let open = seconds(start.duration(to: .now))
        return Double(rounds * Self.messageSize) / max(seal, open)
    }

    func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    /// The same bytes through a socketpair with plain send/recv on two threads.
    func rawSocketpairTime() throws -> Duration {
        let (x, y) = try FileDescriptor.socketPair()
        defer { x.close(); y.close() }
        let total = Self.count * Self.messageSize
        let started = ContinuousClock.now
        let writer = Thread {
            let chunk = [UInt8](repeating: 0x5a, count: Self.messageSize)
            for _ in 0..<Self.count {
                var off = 0
                while off < chunk.count {
                    let n = (try? x.withRawDescriptor { raw in chunk[off...].withUnsafeBytes { send(raw, $0.baseAddress, $0.count, 0) } }) ?? -1
                    if n > 0 { off += n }
                }
            }
        }
        writer.start()
        var got = 0
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while got < total {
            let n = try y.withRawDescriptor { raw in buffer.withUnsafeMutableBytes { recv(raw, $0.baseAddress, $0.count, 0) } }
            if n > 0 { got += n }
        }
        return started.duration(to: .now)
    }
}
