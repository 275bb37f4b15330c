import Testing
@testable import Identity
import SodiumCrypto

@Suite struct DesignatorTests {
    @Test func workedExampleDesignatorRoundTrips() throws {
        let pk: [UInt8] = try unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        let id = try PublicIdentity(publicKey: pk)
        #expect(id.designator == "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena")
        #expect(try PublicIdentity(designator: id.designator) == id)
        #expect(Fingerprint.isWellFormed(id.fingerprint))
    }

    @Test(arguments: [
        "25NJQAMCWEFLPVKL73J4SZAHHIHOC4XT3KTCGJNPAINGR5YHKENA",
        "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena====",
        "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkenb",
        "25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhken",
        "25njqamcwefl-vkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena",
    ])
    func nonCanonicalDesignatorsAreRefused(_ text: String) {
        #expect(throws: IdentityError.self) { try PublicIdentity(designator: text) }
    }
}


@Suite struct CanonicalKeyEncodingTests {
    @Test(arguments: [0xed, 0xee, 0xf0, 0xff] as [UInt8])
    func encodingsOfYAtOrAbovePAreRefused(_ low: UInt8) {
        // y = p + k for small k: the low 255 bits are 2^255 - 19 + k.
        var key = [UInt8](repeating: 0xff, count: 32)
        key[0] = low
        key[31] = 0x7f
        #expect(!Ed25519.isCanonicalEncoding(key))
        key[31] = 0xff  // the sign bit does not make it canonical
        #expect(!Ed25519.isCanonicalEncoding(key))
        #expect(throws: IdentityError.self) { try PublicIdentity(publicKey: key) }
    }

    @Test func theLargestCanonicalYIsAccepted() {
        var key = [UInt8](repeating: 0xff, count: 32)
        key[0] = 0xec
        key[31] = 0x7f
        #expect(Ed25519.isCanonicalEncoding(key))
    }
}

@Suite struct IdentityKeyCacheTests {
    @Test func theCacheKeepsAtMostItsCapacityAndForgetsTheOldestFirst() {
        let cache = IdentityKeyCache(capacity: 3)
        let keys = (0..<5).map { _ in Ed25519.generate().publicKey }
        for k in keys { #expect(cache.x25519(forIdentity: k) == (try? Ed25519.publicKeyToX25519(k))) }
        #expect(cache.count == 3)
        #expect(!cache.contains(keys[0]) && !cache.contains(keys[1]))
        #expect(cache.contains(keys[2]) && cache.contains(keys[3]) && cache.contains(keys[4]))
    }

    @Test func anInvalidKeyIsRefusedEveryTimeAndNeverCached() {
        var small = [UInt8](repeating: 0, count: 32)
        small[0] = 1  // the identity point: small order
        for _ in 0..<2 {
            #expect(throws: IdentityError.self) { try PublicIdentity(publicKey: small) }
        }
        #expect(!IdentityKeyCache.shared.contains(small))
        // A non-canonical encoding of a valid point is refused by the cache itself.
        var nonCanonical = [UInt8](repeating: 0xff, count: 32)
        nonCanonical[0] = 0xee; nonCanonical[31] = 0x7f
        #expect(IdentityKeyCache.shared.x25519(forIdentity: nonCanonical) == nil)
    }

    @Test func aValidatedIdentityIsAlreadyConvertedForTheHandshake() throws {
        let key = Ed25519.generate().publicKey
        #expect(!IdentityKeyCache.shared.contains(key))
        _ = try PublicIdentity(publicKey: key)
        #expect(IdentityKeyCache.shared.contains(key), "one cache: validation stored the X25519 form")
        #expect(IdentityKeyCache.shared.x25519(forIdentity: key) == (try Ed25519.publicKeyToX25519(key)))
    }
}
