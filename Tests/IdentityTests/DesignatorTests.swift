import Testing
import Identity

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

