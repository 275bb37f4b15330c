import Identity
@testable import Runtime
import RuntimeTestSupport
import SecureChannel
import Testing
import Transport

/// Issue #16 through the runtime: its defaults use the shared key cache, an ss cache per
/// identity and the shared ephemeral pool, and a repeated handshake takes the warm path.
@Suite(.ownThread) struct PrecomputationRuntimeTests {
    @Test func aSecondHandshakeBetweenTheSameKeysReusesSsAndBothSidesStillProveTheirKeys() async throws {
        let alice = IdentityKeyPair.generate(), bob = IdentityKeyPair.generate(), carol = IdentityKeyPair.generate()
        let a = PeerTestSupport.establishment(alice), b = PeerTestSupport.establishment(bob), c = PeerTestSupport.establishment(carol)
        #expect(a.keyCache === IdentityKeyCache.shared, "one key cache: the one identity validation fills")
        #expect(IdentityKeyCache.shared.x25519(forIdentity: bob.publicKey) != nil)
        for round in 0..<2 {
            let (x, y) = try await PeerTestSupport.connectedPair(a, b)
            #expect(x.verifiedPeer?.publicKey == bob.publicKey && y.verifiedPeer?.publicKey == alice.publicKey, "round \(round)")
            try await x.send([UInt8(round)])
            #expect(try await y.receive() == [UInt8(round)])
            #expect(await PeerTestSupport.closeBoth(x, y))
            #expect(a.staticSecrets.count == 1 && b.staticSecrets.count == 1, "one ss per pair, kept after the first handshake")
        }
        // Another pair gets its own entry; a's cache never answers for it with (a, b)'s secret.
        let (x, y) = try await PeerTestSupport.connectedPair(c, b)
        #expect(y.verifiedPeer?.publicKey == carol.publicKey)
        #expect(await PeerTestSupport.closeBoth(x, y))
        #expect(b.staticSecrets.count == 2 && c.staticSecrets.count == 1 && a.staticSecrets.count == 1)
        // The default ephemeral source is the shared pool, refilled in the background.
        #expect(await PeerTestSupport.eventually(timeout: .seconds(10)) { EphemeralKeyPool.shared.available > 0 })
    }
}
