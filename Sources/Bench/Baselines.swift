import Foundation
import SodiumCrypto
import Transport

/// Baselines measured in the same run as our figures: what the machine allows.
enum Baselines {
    /// libsodium operations one UDS-HS1 handshake needs, both sides together (PROTOCOL.md §5):
    /// 2 ephemeral keys, 8 X25519 DH, 2 Ed25519 signatures and 2 verifications over 61 bytes,
    /// 6 small ChaCha20-Poly1305 operations, ~14 SHA-256 and ~30 HMAC-SHA-256 (Noise MixHash/HKDF).
    /// The peer's X25519 conversion is cached per peer, so it is not part of a handshake.
    struct CryptoFloor {
        var scalarmultBase: Double
        var scalarmult: Double
        var sign: Double
        var verify: Double
        var aead: Double
        var sha256: Double
        var hmac: Double

        var handshakeNanos: Double {
            2 * scalarmultBase + 8 * scalarmult + 2 * sign + 2 * verify + 6 * aead + 14 * sha256 + 30 * hmac
        }
    }

    static func cryptoFloor(iterations: Int) -> CryptoFloor {
        let (pk, sk, _) = Ed25519.generate()
        let eph = X25519.generate()
        let other = X25519.generate()
        let message = [UInt8](repeating: 7, count: 61)
        let signature = Ed25519.sign(message, secretKey: sk)
        let key = SecretBytes.random(count: 32)
        let small = [UInt8](repeating: 1, count: 64)
        let secret = SecretBytes.random(count: 32)
        var sink = 0
        let base = medianNanosPerCall(iterations: iterations) { sink &+= X25519.publicKey(secret: secret).count }
        let dh = medianNanosPerCall(iterations: iterations) {
            sink &+= (try? X25519.sharedSecret(secret: eph.secret, publicKey: other.publicKey))?.count ?? 0
        }
        let sign = medianNanosPerCall(iterations: iterations) { sink &+= Ed25519.sign(message, secretKey: sk).count }
        let verify = medianNanosPerCall(iterations: iterations) {
            sink &+= Ed25519.verify(signature: signature, message: message, publicKey: pk) ? 1 : 0
        }
        let aead = medianNanosPerCall(iterations: iterations * 10) {
            sink &+= ChaChaPoly.seal(key: key, nonce: 1, ad: small, plaintext: small).count
        }
        let sha = medianNanosPerCall(iterations: iterations * 10) { sink &+= SHA256.hash(small).count }
        let hmac = medianNanosPerCall(iterations: iterations * 10) {
            small.withUnsafeBytes { sink &+= HMACSHA256.mac(key: key, parts: [$0]).count }
        }
        precondition(sink != 0)
        return CryptoFloor(scalarmultBase: base, scalarmult: dh, sign: sign, verify: verify, aead: aead, sha256: sha, hmac: hmac)
    }

    /// Which ChaCha20-Poly1305 a raw AEAD baseline times: libsodium's (the baseline issue #9
    /// set its channel targets against) or BoringSSL's (the one the channel uses since).
    enum AEADImplementation { case libsodium, boringSSL }

    /// Raw ChaCha20-Poly1305, the ceiling of a channel whose sender seals while its receiver
    /// opens on another core: plaintext bytes per second of the slower of seal and open, each
    /// timed alone on one thread.
    static func aeadThroughput(messageSize: Int, totalBytes: Int, implementation: AEADImplementation) -> Double {
        let key = SecretBytes.random(count: 32)
        let plain = [UInt8](repeating: 0x42, count: messageSize)
        var sealed = [UInt8](repeating: 0, count: messageSize + ChaChaPoly.tagLength)
        var opened = [UInt8](repeating: 0, count: messageSize)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        let count = max(1, totalBytes / messageSize)
        let seal = medianNanosPerCall(iterations: count, repetitions: 3) {
            plain.withUnsafeBytes { p in
                sealed.withUnsafeMutableBytes { s in
                    switch implementation {
                    case .libsodium: SodiumChaChaPoly.seal(key: key, nonce: 9, ad: none, plaintext: p, into: s)
                    case .boringSSL: ChaChaPoly.seal(key: key, nonce: 9, ad: none, plaintext: p, into: s)
                    }
                }
            }
        }
        let open = medianNanosPerCall(iterations: count, repetitions: 3) {
            sealed.withUnsafeBytes { s in
                opened.withUnsafeMutableBytes { o in
                    switch implementation {
                    case .libsodium: try? SodiumChaChaPoly.open(key: key, nonce: 9, ad: none, ciphertext: s, into: o)
                    case .boringSSL: try? ChaChaPoly.open(key: key, nonce: 9, ad: none, ciphertext: s, into: o)
                    }
                }
            }
        }
        return Double(messageSize) / max(seal, open) * 1e9
    }

    /// Raw socketpair: a writer thread sends `totalBytes` in `messageSize` writes; the reader reads
    /// in large chunks. Bytes per second.
    static func socketpairThroughput(messageSize: Int, totalBytes: Int) throws -> Double {
        var runs = Samples()
        for _ in 0..<3 {
            let (a, b) = try FileDescriptor.socketPair()
            defer { a.close(); b.close() }
            let total = (totalBytes / messageSize) * messageSize
            let t0 = nowNanos()
            let writer = Thread {
                let buf = [UInt8](repeating: 1, count: messageSize)
                var sent = 0
                while sent < total {
                    guard let n = try? a.write(buf), n > 0 else { break }
                    sent += n
                }
            }
            writer.start()
            var received = 0
            var rbuf = [UInt8](repeating: 0, count: 256 << 10)
            while received < total {
                guard let n = try? b.read(into: &rbuf, at: 0), n > 0 else { break }
                received += n
            }
            runs.add(Double(received) / Double(nowNanos() - t0) * 1e9)
        }
        return runs.median
    }

    /// Raw socketpair ping-pong: one thread writes `messageSize` bytes, an echo thread reads and
    /// writes them back with blocking calls. Round-trip nanoseconds, one sample per exchange.
    static func socketpairPingPong(messageSize: Int, count: Int) throws -> Samples {
        let (a, b) = try FileDescriptor.socketPair()
        defer { a.close(); b.close() }
        let rounds = count + 100
        let echo = Thread {
            var buf = [UInt8](repeating: 0, count: messageSize)
            for _ in 0..<rounds {
                var got = 0
                while got < messageSize {
                    guard let n = try? b.read(into: &buf, at: got), n > 0 else { return }
                    got += n
                }
                guard (try? b.writeAll(buf)) != nil else { return }
            }
        }
        echo.start()
        var samples = Samples()
        var buf = [UInt8](repeating: 7, count: messageSize)
        for i in 0..<rounds {
            let t0 = nowNanos()
            try a.writeAll(buf)
            var got = 0
            while got < messageSize {
                let n = try a.read(into: &buf, at: got)
                if n == 0 { throw BenchError("ping-pong peer ended") }
                got += n
            }
            if i >= 100 { samples.add(Double(nowNanos() - t0)) }
        }
        return samples
    }

    /// Nanoseconds of one seal plus one open of a DATA frame carrying `messageSize` bytes (TYPE
    /// byte, body, tag), as ChaCha20-Poly1305 does them for a channel message.
    static func sealAndOpenNanos(messageSize: Int, iterations: Int) -> Double {
        let key = SecretBytes.random(count: 32)
        let plain = [UInt8](repeating: 0x42, count: messageSize + 1)
        var sealed = [UInt8](repeating: 0, count: plain.count + ChaChaPoly.tagLength)
        var opened = [UInt8](repeating: 0, count: plain.count)
        let none = UnsafeRawBufferPointer(start: nil, count: 0)
        var nonce: UInt64 = 0
        return medianNanosPerCall(iterations: iterations) {
            nonce &+= 1
            plain.withUnsafeBytes { p in
                sealed.withUnsafeMutableBytes { s in ChaChaPoly.seal(key: key, nonce: nonce, ad: none, plaintext: p, into: s) }
            }
            sealed.withUnsafeBytes { s in
                opened.withUnsafeMutableBytes { o in try? ChaChaPoly.open(key: key, nonce: nonce, ad: none, ciphertext: s, into: o) }
            }
        }
    }
}
