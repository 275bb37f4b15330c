import Foundation
import Identity
import Runtime
import Testing
import Transport

/// Opt-in (OCAPN_UDS_BENCH=1): channel throughput at 64 KiB messages through the runtime,
/// against a raw socketpair moving the same bytes in the same process. Prints the figures;
/// asserts only the floor (0.8× the raw socketpair), so run it on a quiet machine.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["OCAPN_UDS_BENCH"] == "1"))
struct ChannelPerformanceTests {
    static let messageSize = 64 << 10
    static let count = 1024

    @Test func sixtyFourKiBMessagesFlowAtLeastAtEightTenthsOfARawSocketpair() async throws {
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
        let rawRate = total / seconds(raw)
        print("channel: \(Int(channelRate)) MiB/s, raw socketpair: \(Int(rawRate)) MiB/s, ratio \(channelRate / rawRate)")
        #expect(channelRate >= 0.8 * rawRate)
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
