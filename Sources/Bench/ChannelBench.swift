import Foundation
import Identity
import Logging
import Runtime
import SecureChannel
import SodiumCrypto
import Synchronization
import Transport

/// Throughput of an established UDS-HS1 channel over a socketpair: a sender thread seals messages
/// and writes them, the receiver reads large chunks and opens every frame.
enum ChannelBench {
    static func throughput(messageSize: Int, totalBytes: Int) throws -> Double {
        var runs = Samples()
        for _ in 0..<3 {
            let (sa, sb) = try FileDescriptor.socketPair()
            defer { sa.close(); sb.close() }
            let (senderSession, receiverSession) = try establish(sa, sb)
            let count = max(1, totalBytes / messageSize)
            let t0 = nowNanos()
            let sender = senderSession.sender
            nonisolated(unsafe) let unsafeSender = sender
            let writer = Thread {
                let message = [UInt8](repeating: 0x5a, count: messageSize)
                var out = [UInt8](repeating: 0, count: unsafeSender.sealedLength(messageLength: messageSize))
                for _ in 0..<count {
                    let n = message.withUnsafeBytes { m in
                        out.withUnsafeMutableBytes { o in (try? unsafeSender.seal(m, into: o)) ?? 0 }
                    }
                    let sent: Bool = out.withUnsafeBytes { o in
                        (try? sa.writeAll(UnsafeRawBufferPointer(rebasing: o[..<n]))) != nil
                    }
                    if !sent { return }
                }
            }
            writer.start()
            let receiver = receiverSession.receiver
            var received = 0
            var messages = 0
            while messages < count {
                var eof = false
                receiver.withInputBuffer(minimumCapacity: 256 << 10) { buf in
                    let n = (try? sb.read(into: buf)) ?? 0
                    if n <= 0 { eof = true; return 0 }
                    return n
                }
                if eof { throw BenchError("channel bench: socket closed early") }
                while true {
                    let r = try receiver.nextMessage { $0.count }
                    guard case let .message(len) = r else { break }
                    received += len
                    messages += 1
                }
            }
            runs.add(Double(received) / Double(nowNanos() - t0) * 1e9)
        }
        return runs.median
    }

    static func establish(_ sa: FileDescriptor, _ sb: FileDescriptor) throws -> (EstablishedSession, EstablishedSession) {
        let idA = IdentityKeyPair.generate()
        let idB = IdentityKeyPair.generate()
        let now = ContinuousClock.now
        let initiator = try HandshakeInitiator(identity: idA, responder: idB.publicIdentity, keyCache: IdentityKeyCache(), now: now)
        let responder = HandshakeResponder(identity: idB, announcedInitiator: idA.publicIdentity, keyCache: IdentityKeyCache(), now: now)
        guard case let .send(msg2) = try responder.receive(initiator.initialMessage, now: now),
              case let .established(sa2, send: auth) = try initiator.receive(msg2, now: now),
              case let .established(sb2, _) = try responder.receive(auth, now: now)
        else { throw BenchError("channel bench: handshake failed") }
        return (sa2, sb2)
    }
}

/// Throughput of the runtime's `PeerChannel` (what applications use): two channels over a
/// socketpair in this process, one task sending `messageSize` messages with `send`, the other
/// channel receiving them either with a `deliver(to:)` handler on its event-loop thread (the
/// fast path, as the round trip and the `peer` echo use it) or with `receive()` in a task.
enum RuntimeChannelBench {
    enum Receiving {
        /// `deliver(to:)`: messages handed to a closure on the loop thread, no continuation.
        case handler
        /// `receive()` awaited in a task, as an application iterating `messages` sees it.
        case asyncReceive
    }

    /// `batch` > 1 sends with `send(contentsOf:)`, that many messages per call (a streaming
    /// application's shape); 1 is one `send` per message.
    static func throughput(messageSize: Int, totalBytes: Int, receiving: Receiving, batch: Int = 1) async throws -> Double {
        var logger = Logger(label: "ocapn-uds.bench")
        logger.logLevel = .critical
        let alice = IdentityKeyPair.generate(), bob = IdentityKeyPair.generate()
        let a = try ChannelEstablishment(identity: alice, logger: logger)
        let b = try ChannelEstablishment(identity: bob, logger: logger)
        var runs = Samples()
        for _ in 0..<3 {
            let (sa, sb) = try FileDescriptor.socketPair()
            async let responder = b.respond(over: sb, expecting: alice.publicIdentity)
            let sender = try await a.initiate(over: sa, to: bob.publicIdentity)
            let receiver = try await responder
            let count = max(1, totalBytes / messageSize)
            let message = [UInt8](repeating: 0x5a, count: messageSize)
            let t0 = nowNanos()
            let sending = Task {
                if batch > 1 {
                    let full = [[UInt8]](repeating: message, count: batch)
                    for start in stride(from: 0, to: count, by: batch) {
                        try await sender.send(contentsOf: start + batch <= count ? full : Array(full[..<(count - start)]))
                    }
                } else {
                    for _ in 0..<count { try await sender.send(message) }
                }
            }
            let received: Int
            switch receiving {
            case .asyncReceive:
                var bytes = 0
                for _ in 0..<count {
                    guard let m = try await receiver.receive() else { throw BenchError("runtime channel closed early") }
                    bytes += m.count
                }
                received = bytes
            case .handler:
                received = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Int, Error>) in
                    let progress = Mutex((bytes: 0, messages: 0, done: false))
                    receiver.deliver { delivery in
                        switch delivery {
                        case .message(let m):
                            let finished = progress.withLock { p -> Int? in
                                p.bytes += m.count
                                p.messages += 1
                                guard p.messages == count, !p.done else { return nil }
                                p.done = true
                                return p.bytes
                            }
                            if let finished { c.resume(returning: finished) }
                        case .ended(let error):
                            let first = progress.withLock { p -> Bool in
                                defer { p.done = true }
                                return !p.done
                            }
                            if first { c.resume(throwing: error ?? BenchError("runtime channel closed early")) }
                        }
                    }
                }
            }
            try await sending.value
            runs.add(Double(received) / Double(nowNanos() - t0) * 1e9)
            async let closing = sender.close()
            _ = await receiver.close()
            _ = await closing
        }
        return runs.median
    }
}
