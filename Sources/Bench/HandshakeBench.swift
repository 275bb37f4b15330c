import Foundation
import SecureChannel
import SodiumCrypto
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// UDS-HS1 over a real socketpair: both machines in one thread, every message written to one end
/// and read from the other, so the figure is protocol + crypto + the syscalls, with no scheduler
/// wake-ups (those are measured separately by the end-to-end connect figure).
enum HandshakeBench {
    struct Result {
        var latencies: Samples
        var handshakesPerSecond: Double
    }

    static func run(count: Int) throws -> Result {
        let a = Ed25519.generate()
        let b = Ed25519.generate()
        let idA = try HandshakeIdentity(publicKey: a.publicKey, secretKey: a.secretKey)
        let idB = try HandshakeIdentity(publicKey: b.publicKey, secretKey: b.secretKey)
        let cacheA = X25519KeyCache()
        let cacheB = X25519KeyCache()
        var latencies = Samples()
        var buffer = [UInt8](repeating: 0, count: 4096)
        // Warm the per-peer conversion caches, as a long-running peer has them.
        _ = cacheA.x25519(forIdentity: b.publicKey)
        _ = cacheB.x25519(forIdentity: a.publicKey)
        let start = nowNanos()
        for _ in 0..<(count + 1) {
            let (sa, sb) = try FileDescriptor.socketPair()
            defer { sa.close(); sb.close() }
            let t0 = nowNanos()
            let now = ContinuousClock.now
            let initiator = try HandshakeInitiator(identity: idA, responder: b.publicKey, keyCache: cacheA, now: now)
            let responder = HandshakeResponder(identity: idB, announcedInitiator: a.publicKey, keyCache: cacheB, now: now)
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
            latencies.add(Double(nowNanos() - t0))
        }
        let total = Double(nowNanos() - start)
        // Drop the first (cold) sample from the latency set.
        var trimmed = Samples()
        for v in latencies.values.dropFirst() { trimmed.add(v) }
        return Result(latencies: trimmed, handshakesPerSecond: Double(count + 1) / total * 1e9)
    }

    static func writeAll(_ fd: FileDescriptor, _ bytes: [UInt8]) throws {
        try fd.withRawDescriptor { raw in
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.send(raw, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
                if n > 0 { off += n } else if errno != EINTR { throw BenchError("write failed: errno \(errno)") }
            }
        }
    }

    static func readSome(_ fd: FileDescriptor, _ buffer: inout [UInt8]) throws -> [UInt8] {
        try fd.withRawDescriptor { raw in
            while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(raw, $0.baseAddress, $0.count) }
                if n > 0 { return Array(buffer[0..<n]) }
                if n == 0 { throw BenchError("unexpected EOF") }
                if errno != EINTR { throw BenchError("read failed: errno \(errno)") }
            }
        }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
