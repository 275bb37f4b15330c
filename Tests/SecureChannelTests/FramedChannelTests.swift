import Foundation
@testable import SecureChannel
import SodiumCrypto
import Testing

@Suite struct FramedChannelTests {
    /// A sender/receiver pair sharing one direction's key, as after a handshake.
    static func pipe(_ config: ChannelConfiguration = ChannelConfiguration(), nonce: UInt64 = 0) -> (FrameSender, FrameReceiver) {
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        return (FrameSender(key: key, nonce: nonce, configuration: config), FrameReceiver(key: key, nonce: nonce, configuration: config))
    }

    static func drain(_ r: FrameReceiver) throws -> [ChannelEvent] {
        var out: [ChannelEvent] = []
        while let e = try r.next() {
            out.append(e)
            if e == .closed { break }
        }
        return out
    }

    @Test("Messages of every size class survive sealing, splitting and reassembly")
    func roundTripSizes() throws {
        let (s, r) = Self.pipe()
        let sizes = [1, 2, 100, FrameFormat.maxBody - 1, FrameFormat.maxBody, FrameFormat.maxBody + 1, 65536, 3 * FrameFormat.maxBody + 7, 1 << 20]
        for size in sizes {
            let m = RandomBytes.bytes(size)
            let sealed = try s.seal(m)
            #expect(sealed.count == s.sealedLength(messageLength: size))
            #expect(sealed.count == size + s.frameCount(messageLength: size) * FrameFormat.overhead)
            try r.receive(sealed)
            #expect(try r.next() == .message(m), "size \(size)")
            #expect(try r.next() == nil)
        }
    }

    @Test("Small fragment sizes split messages into many frames that reassemble exactly")
    func smallFragments() throws {
        let (s, r) = Self.pipe(ChannelConfiguration(maxFragmentSize: 7))
        let m = Array(0..<UInt8(100))
        let sealed = try s.seal(m)
        #expect(s.frameCount(messageLength: 100) == 15)
        // Frame types: 14 × DATA_MORE then DATA.
        try r.receive(sealed)
        #expect(try r.next() == .message(m))
    }

    @Test("Bytes fed one at a time produce the same messages")
    func byteByByte() throws {
        let (s, r) = Self.pipe(ChannelConfiguration(maxFragmentSize: 10))
        let a = RandomBytes.bytes(33), b = RandomBytes.bytes(5)
        let wire = try s.seal(a) + s.seal(b) + s.close()
        var events: [ChannelEvent] = []
        for byte in wire {
            try r.receive([byte])
            while let e = try r.next() { events.append(e); if e == .closed { break } }
        }
        #expect(events == [.message(a), .message(b), .closed])
    }

    @Test("The zero-copy read lends the message and the pointer API seals into a caller buffer")
    func pointerAPIs() throws {
        let (s, r) = Self.pipe()
        let m = RandomBytes.bytes(70_000)
        var out = [UInt8](repeating: 0, count: s.sealedLength(messageLength: m.count))
        let n = try m.withUnsafeBytes { mb in try out.withUnsafeMutableBytes { ob in try s.seal(mb, into: ob) } }
        #expect(n == out.count)
        r.withInputBuffer(minimumCapacity: out.count) { buf in
            out.withUnsafeBytes { buf.copyMemory(from: $0) }
            return out.count
        }
        guard case .message(let equal) = try r.nextMessage({ $0.elementsEqual(m) }) else { Issue.record("no message"); return }
        #expect(equal)
        guard case .needMoreBytes = try r.nextMessage({ _ in () }) else { Issue.record("phantom message"); return }
    }

    @Test("A flipped bit anywhere in a frame is decryptFailed or badFrameLength, never a message")
    func tamperedFrames() throws {
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        let frame = try FrameSender(key: key, nonce: 0, configuration: ChannelConfiguration()).seal(Array("attack at dawn".utf8))
        for bit in 0..<(frame.count * 8) {
            let r = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration())
            let c = code {
                try r.receive(flipped(frame, bit: bit))
                if try r.next() == nil { try r.receiveEOF() }
            }
            #expect(c == .decryptFailed || c == .badFrameLength || c == .truncated, "bit \(bit): \(String(describing: c))")
        }
    }

    @Test("Reordered, dropped and duplicated frames are decryptFailed")
    func reorderDropDuplicate() throws {
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        let s = FrameSender(key: key, nonce: 0, configuration: ChannelConfiguration())
        let f = try (0..<3).map { i in try s.seal([UInt8(i)]) }
        for wire in [f[1] + f[0], f[0] + f[2], f[0] + f[0], f[0] + f[1] + f[1]] {
            let r = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration())
            #expect(code { try r.receive(wire); _ = try Self.drain(r) } == .decryptFailed)
        }
    }

    @Test("EOF without CLOSE is truncated at every offset, and clean right after CLOSE")
    func eofHandling() throws {
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        let sender = FrameSender(key: key, nonce: 0, configuration: ChannelConfiguration())
        let wire = try sender.seal(Array("one".utf8)) + sender.close()
        for n in 0..<wire.count {
            let r = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration())
            try r.receive(Array(wire[..<n]))
            _ = try Self.drain(r)
            #expect(code { try r.receiveEOF() } == .truncated, "offset \(n)")
        }
        let r = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration())
        try r.receive(wire)
        #expect(try Self.drain(r) == [.message(Array("one".utf8)), .closed])
        try r.receiveEOF()
        #expect(r.isClosed)
    }

    @Test("Bytes after CLOSE are dataAfterClose, in the same read or a later one")
    func dataAfterClose() throws {
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        let s = FrameSender(key: key, nonce: 0, configuration: ChannelConfiguration())
        let close = try s.close()
        let r1 = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration())
        #expect(code { try r1.receive(close + [0]); _ = try r1.next() } == .dataAfterClose)
        let r2 = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration())
        try r2.receive(close)
        #expect(try r2.next() == .closed)
        #expect(code { try r2.receive([1, 2, 3]) } == .dataAfterClose)
    }

    @Test("Frame types other than DATA, DATA_MORE and CLOSE are rejected with their codes")
    func frameTypes() throws {
        let cases: [(FrameFormat.FrameType, [UInt8], HandshakeError.Code)] = [
            (.reservedRekey, [], .unknownFrameType),
            (.auth, RandomBytes.bytes(64), .unexpectedAuthFrame),
            (.data, [], .emptyDataFrame),
            (.dataMore, [], .emptyDataFrame),
            (.close, [0], .badFrameLength),
        ]
        for (type, body, expected) in cases {
            let (s, r) = Self.pipe()
            #expect(code { try r.receive(try s.sealControl(type: type, body: body)); _ = try r.next() } == expected, "\(type)")
        }
        // A type byte outside the enum (sealed by hand with the same key).
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        let ct = ChaChaPoly.seal(key: key, nonce: 0, ad: [], plaintext: [0x7f, 1, 2])
        let r = FrameReceiver(key: key, nonce: 0, configuration: ChannelConfiguration())
        #expect(code { try r.receive([0, UInt8(ct.count)] + ct); _ = try r.next() } == .unknownFrameType)
    }

    @Test("CLOSE in the middle of a fragmented message is truncated")
    func closeMidMessage() throws {
        let (s, r) = Self.pipe()
        let more = try s.sealControl(type: .dataMore, body: [1, 2, 3])
        let close = try s.close()
        #expect(code { try r.receive(more + close); _ = try r.next() } == .truncated)
    }

    @Test("A LEN below 17 is rejected as soon as the two length bytes arrive")
    func shortLength() throws {
        for len in [0, 1, 16] {
            let (_, r) = Self.pipe()
            #expect(code { try r.receive([0, UInt8(len)]); _ = try r.next() } == .badFrameLength)
        }
    }

    @Test("A reassembled message over the limit is refused before it is buffered, and sends over it throw")
    func messageLimits() throws {
        let config = ChannelConfiguration(maxMessageSize: 1000, maxFragmentSize: 300)
        let (s, r) = Self.pipe(config)
        #expect(code { _ = try s.seal(RandomBytes.bytes(1001)) } == .messageTooLarge)
        // A peer with a larger limit sends 1200 bytes in 300-byte fragments.
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        let big = FrameSender(key: key, nonce: 0, configuration: ChannelConfiguration(maxFragmentSize: 300))
        let small = FrameReceiver(key: key, nonce: 0, configuration: config)
        #expect(code { try small.receive(try big.seal(RandomBytes.bytes(1200))); _ = try small.next() } == .messageTooLarge)
        let m = RandomBytes.bytes(1000)
        try r.receive(try s.seal(m))
        #expect(try r.next() == .message(m))
    }

    @Test("Nonce exhaustion stops both the sender and the receiver before 2^64−1 is used")
    func nonceExhaustion() throws {
        let (s, r) = Self.pipe()
        s.setNonceForTesting(UInt64.max - 2)
        r.setNonceForTesting(UInt64.max - 2)
        let last = try s.seal([1])  // uses 2^64−3
        let lastTwo = try s.sealControl(type: .data, body: [2])  // 2^64−2, the last usable nonce
        #expect(code { _ = try s.seal([3]) } == .nonceExhausted)
        try r.receive(last + lastTwo)
        #expect(try r.next() == .message([1]))
        #expect(try r.next() == .message([2]))
        // A further frame (its content is irrelevant) cannot be opened.
        try r.receive([0, 17] + [UInt8](repeating: 0, count: 17))
        #expect(code { _ = try r.next() } == .nonceExhausted)
        // A multi-frame message that would cross the limit is refused whole.
        let (s2, _) = Self.pipe(ChannelConfiguration(maxFragmentSize: 10))
        s2.setNonceForTesting(UInt64.max - 2)
        #expect(code { _ = try s2.seal(RandomBytes.bytes(25)) } == .nonceExhausted)
    }

    @Test("A message over the limit leaves the sender usable and the output untouched")
    func failedSealIsClean() throws {
        let (s, r) = Self.pipe(ChannelConfiguration(maxMessageSize: 10))
        var out: [UInt8] = [9, 9]
        #expect(code { try s.seal(RandomBytes.bytes(11), appendingTo: &out) } == .messageTooLarge)
        #expect(out == [9, 9])
        try s.seal([5], appendingTo: &out)
        try r.receive(Array(out[2...]))
        #expect(try r.next() == .message([5]))
    }
}

/// BoringSSL's ChaCha20-Poly1305 (what `ChaChaPoly` is) against libsodium's, an independent
/// implementation of the same RFC 8439 AEAD: the same bytes for every length up to two
/// fragments, in place or not, and a bad tag leaves zeros, never plaintext.
@Suite struct ChaChaPolyImplementationTests {
    static let lengths = Array(0...200) + [255, 256, 511, 512, 1023, 1024, 4096, 16384, FrameFormat.maxBody, 2 * FrameFormat.maxBody + 1]

    @Test("Sealing gives libsodium's bytes for every length, with and without AD, in place or not")
    func sealMatchesLibsodium() {
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        for length in Self.lengths {
            let plain = RandomBytes.bytes(length)
            let ad = length % 3 == 0 ? [] : RandomBytes.bytes(length % 40)
            let nonce = UInt64(length) << 33 | 7
            var expected = [UInt8](repeating: 0, count: length + ChaChaPoly.tagLength)
            ad.withUnsafeBytes { a in
                plain.withUnsafeBytes { p in
                    expected.withUnsafeMutableBytes { o in SodiumChaChaPoly.seal(key: key, nonce: nonce, ad: a, plaintext: p, into: o) }
                }
            }
            #expect(ChaChaPoly.seal(key: key, nonce: nonce, ad: ad, plaintext: plain) == expected, "length \(length)")
            var inPlace = plain + [UInt8](repeating: 0, count: ChaChaPoly.tagLength)
            ad.withUnsafeBytes { a in
                inPlace.withUnsafeMutableBytes { o in
                    ChaChaPoly.seal(key: key, nonce: nonce, ad: a, plaintext: UnsafeRawBufferPointer(rebasing: o[..<length]), into: o)
                }
            }
            #expect(inPlace == expected, "in place, length \(length)")
        }
    }

    @Test("Opening takes libsodium's ciphertext back, in place or not; a bad tag or nonce leaves zeros")
    func openMatchesLibsodium() throws {
        let key = SecretBytes(copying: RandomBytes.bytes(32))
        for length in Self.lengths {
            let plain = RandomBytes.bytes(length)
            var sealed = [UInt8](repeating: 0, count: length + ChaChaPoly.tagLength)
            plain.withUnsafeBytes { p in
                sealed.withUnsafeMutableBytes { o in
                    SodiumChaChaPoly.seal(key: key, nonce: 3, ad: UnsafeRawBufferPointer(start: nil, count: 0), plaintext: p, into: o)
                }
            }
            #expect(try ChaChaPoly.open(key: key, nonce: 3, ad: [], ciphertext: sealed) == plain, "length \(length)")
            var inPlace = sealed
            try inPlace.withUnsafeMutableBytes { o in
                try ChaChaPoly.open(key: key, nonce: 3, ad: UnsafeRawBufferPointer(start: nil, count: 0), ciphertext: UnsafeRawBufferPointer(o), into: o)
            }
            #expect(Array(inPlace[..<length]) == plain, "in place, length \(length)")
            for position in [0, sealed.count / 2, sealed.count - 1] {
                var bad = sealed
                bad[position] ^= 0x01
                #expect(throws: CryptoError.self) {
                    try bad.withUnsafeMutableBytes { o in
                        try ChaChaPoly.open(key: key, nonce: 3, ad: UnsafeRawBufferPointer(start: nil, count: 0), ciphertext: UnsafeRawBufferPointer(o), into: o)
                    }
                }
                #expect(bad.allSatisfy { $0 == 0 }, "length \(length), flipped byte \(position): the buffer is wiped")
            }
            #expect(throws: CryptoError.self) { try ChaChaPoly.open(key: key, nonce: 4, ad: [], ciphertext: sealed) }
            #expect(throws: CryptoError.self) { try ChaChaPoly.open(key: key, nonce: 3, ad: [1], ciphertext: sealed) }
        }
    }
}

/// The receiver's paths for whole buffered messages (opened straight into their arrays) and
/// for messages still arriving (gathered).
@Suite struct BufferedMessageTests {
    @Test("Fragmented messages come out whole whether all, some or none of their frames are buffered")
    func fragmentedMessagesInEveryArrival() throws {
        for fragment in [7, 100, 1000, 9000] {
            let key = SecretBytes(copying: RandomBytes.bytes(32))
            let configuration = ChannelConfiguration(maxFragmentSize: fragment)
            let s = FrameSender(key: key, nonce: 0, configuration: configuration)
            let messages = [RandomBytes.bytes(1), RandomBytes.bytes(fragment), RandomBytes.bytes(fragment + 1), RandomBytes.bytes(5 * fragment + 3)]
            let wire = try messages.flatMap { try s.seal($0) } + s.close()
            // Every split point: the frames before it are buffered, the rest come later.
            for cut in stride(from: 0, through: wire.count, by: max(1, wire.count / 97)) {
                let r = FrameReceiver(key: key, nonce: 0, configuration: configuration)
                var events: [ChannelEvent] = []
                try r.receive(Array(wire[..<cut]))
                while let e = try r.next() { events.append(e) }
                try r.receive(Array(wire[cut...]))
                while let e = try r.next() { events.append(e); if e == .closed { break } }
                #expect(events == messages.map { .message($0) } + [.closed], "fragment \(fragment), cut \(cut)")
            }
        }
    }

    @Test("A bad frame inside a buffered fragmented message fails the channel and delivers no part", arguments: [100, 9000])
    func badFrameInsideABufferedMessage(fragment: Int) throws {
        let (s, r) = FramedChannelTests.pipe(ChannelConfiguration(maxFragmentSize: fragment))
        var wire = try s.seal(RandomBytes.bytes(4 * fragment + 50))
        // The third frame's ciphertext (frames are fragment + 19 bytes on the wire).
        wire[2 * (fragment + FrameFormat.overhead) + 10] ^= 0x80
        try r.receive(wire)
        do {
            _ = try r.next()
            Issue.record("a message or nothing where decryptFailed was due")
        } catch {
            #expect(error.code == .decryptFailed)
        }
    }

    @Test("CLOSE inside a buffered fragmented message is truncated")
    func closeInsideABufferedMessage() throws {
        let (s, r) = FramedChannelTests.pipe(ChannelConfiguration(maxFragmentSize: 100))
        let whole = try s.seal(RandomBytes.bytes(250))
        // First two frames (DATA_MORE, DATA_MORE), then a CLOSE under the next nonce.
        s.setNonceForTesting(2)
        let close = try s.sealControl(type: .close, body: [])
        try r.receive(Array(whole[..<(2 * 119)]) + close)
        do {
            _ = try r.next()
            Issue.record("a message or nothing where truncated was due")
        } catch {
            #expect(error.code == .truncated)
        }
    }
}
