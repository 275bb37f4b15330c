import Foundation
@testable import Identity
@testable import SecureChannel
import SodiumCrypto
import Testing

@Suite struct KeysAndCodesTests {
    @Test("The X25519 key cache stays within its capacity and keeps answering correctly")
    func cacheIsBounded() throws {
        let cache = IdentityKeyCache(capacity: 2)
        let keys = (0..<5).map { _ in Ed25519.generate().publicKey }
        for k in keys { #expect(cache.x25519(forIdentity: k) == (try Ed25519.publicKeyToX25519(k))) }
        #expect(cache.count == 2)
        for k in keys.reversed() { #expect(cache.x25519(forIdentity: k) == (try Ed25519.publicKeyToX25519(k))) }
        #expect(cache.count == 2)
        #expect(cache.x25519(forIdentity: [1] + [UInt8](repeating: 0, count: 31)) == nil, "invalid keys are refused")
        #expect(cache.x25519(forIdentity: [1, 2]) == nil)
        #expect(cache.count == 2, "refusals are not cached")
    }

    @Test("The reason codes documented in PROTOCOL.md §8 are exactly the HandshakeError codes")
    func documentedCodesMatch() throws {
        let text = String(decoding: try Fixture.data("PROTOCOL.md"), as: UTF8.self)
        guard let start = text.range(of: "## 8. Reason codes"), let end = text.range(of: "## 9.", range: start.upperBound..<text.endIndex) else {
            Issue.record("PROTOCOL.md has no §8"); return
        }
        var documented = Set<String>()
        for line in text[start.upperBound..<end.lowerBound].split(separator: "\n") where line.hasPrefix("| `") {
            let name = line.dropFirst(3).prefix { $0 != "`" }
            documented.insert(String(name))
        }
        #expect(documented == Set(HandshakeError.Code.allCases.map(\.rawValue)))
        for c in HandshakeError.Code.allCases { #expect(c.rawValue == "\(c)", "raw value of \(c) is its name") }
    }

    @Test("Errors compare by code and detail and never print secret material")
    func errorShape() throws {
        let t = try handshake()
        let e = HandshakeError(.decryptFailed, "x")
        #expect(e == HandshakeError(.decryptFailed, "x"))
        #expect(e != HandshakeError(.decryptFailed, "y"))
        #expect(e != HandshakeError(.badSignature, "x"))
        #expect(e.description == "decryptFailed: x")
        // A failing receiver's error text mentions no key bytes.
        let key = hexEncode(t.responder.receiver.trafficKeyForTesting)
        do {
            try t.responder.receiver.receive([0, 17] + [UInt8](repeating: 0, count: 17))
            _ = try t.responder.receiver.next()
            Issue.record("garbage frame accepted")
        } catch {
            #expect(!"\(error)".contains(key.prefix(16)))
        }
        #expect("\(Fixture.alice.secretKey)".contains("redacted"))
    }
}
