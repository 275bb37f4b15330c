import Identity
import OCapN
import Syrup
import Testing

@Suite struct LocatorTests {
    let a = Fixtures.peerA.publicIdentity
    let b = Fixtures.peerB.publicIdentity
    let s = Fixtures.serverS.publicIdentity
    let s2 = Fixtures.serverS2.publicIdentity

    @Test("A locator without servers has hints false and is what uds:register carries")
    func noServersMeansFalse() {
        let locator = PeerLocator(identity: a, introductionServers: [])
        #expect(locator.hints == nil)
        #expect(SyrupEncoder.encode(locator.syrupValue) == Fixtures.bytes("locator_A_hints_false"))
        #expect(locator.uri == Fixtures.value("uri_A_no_hints"))
    }

    @Test("Several servers are emitted as \"t\" each, in the same order whatever order they are given")
    func severalServersAreDeterministic() {
        let one = PeerLocator(identity: a, introductionServers: [s, s2])
        let other = PeerLocator(identity: a, introductionServers: [s2, s])
        #expect(SyrupEncoder.encode(one.syrupValue) == SyrupEncoder.encode(other.syrupValue))
        #expect(one.uri == other.uri)
        #expect(one.uri == "ocapn://\(a.designator).unix-domain-socket?\(s.designator)=t&\(s2.designator)=t")
        #expect(one.hints?.values.allSatisfy { $0 == .string("t") } == true)
    }

    @Test("Routing equality ignores hints and compares keys")
    func routingIgnoresHints() throws {
        let plain = try PeerLocator(syrup: Fixtures.decode(Fixtures.bytes("locator_A_hints_false")))
        let hinted = try PeerLocator(syrup: Fixtures.decode(Fixtures.bytes("locator_A_two_servers_goblins")))
        #expect(plain.isSamePeer(as: hinted))
        #expect(plain.routingKey == hinted.routingKey)
        #expect(plain != hinted)  // `==` is exact
        #expect(!plain.isSamePeer(as: PeerLocator(identity: b)))
    }

    @Test("A URI with two servers parses both hints as strings and prints them sorted")
    func uriWithTwoServers() throws {
        let text = "ocapn://\(a.designator).unix-domain-socket?\(s2.designator)=t&\(s.designator)=yes%20please"
        let locator = try PeerLocator(uri: text)
        #expect(locator.hints == [s: .string("yes please"), s2: .string("t")])
        #expect(locator.uri == "ocapn://\(a.designator).unix-domain-socket?\(s.designator)=yes%20please&\(s2.designator)=t")
        #expect(try PeerLocator(uri: locator.uri) == locator)
    }

    @Test("Non-string hint values print in a URI as t, f and decimal")
    func nonStringValuesInURI() {
        let locator = PeerLocator(identity: a, hints: [s: .bool(true), s2: .integer(SyrupInteger(1))])
        #expect(locator.uri == "ocapn://\(a.designator).unix-domain-socket?\(s.designator)=t&\(s2.designator)=1")
        #expect(PeerLocator(identity: a, hints: [s: .bool(false)]).uri.hasSuffix("=f"))
    }

    @Test("Percent-encoding keeps unreserved characters and escapes the rest in uppercase hex")
    func percentEncoding() throws {
        let locator = PeerLocator(identity: a, hints: [s: .string("a-b_c.d~e&f=g h/é")])
        #expect(locator.uri.hasSuffix("=a-b_c.d~e%26f%3Dg%20h%2F%C3%A9"))
        #expect(try PeerLocator(uri: locator.uri).hints == [s: .string("a-b_c.d~e&f=g h/é")])
    }

    @Test("An empty hints dictionary is kept distinct from false and prints without a query")
    func emptyHintsDictionary() throws {
        let bytes = Array("<10'ocapn-peer18'unix-domain-socket52\"\(a.designator){}>".utf8)
        let locator = try PeerLocator(syrup: Fixtures.decode(bytes))
        #expect(locator.hints == [:])
        #expect(SyrupEncoder.encode(locator.syrupValue) == bytes)
        #expect(locator.uri == Fixtures.value("uri_A_no_hints"))
    }

    @Test("A URI over the length limit is refused before parsing")
    func uriLengthLimit() {
        let limits = OCapNLimits(maxHints: 4, maxHintValueLength: 8, maxURILength: 100)
        #expect(code { try PeerLocator(uri: Fixtures.value("uri_A_goblins"), limits: limits) } == .limitExceeded)
        #expect(code { try PeerLocator(uri: Fixtures.value("uri_A_no_hints"), limits: limits) } == nil)
    }

    @Test("Hint counts and value lengths over their limits are refused in URIs and in Syrup")
    func hintLimits() throws {
        let limits = OCapNLimits(maxHints: 1, maxHintValueLength: 3, maxURILength: 4096)
        let two = PeerLocator(identity: a, hints: [s: .string("t"), s2: .string("t")])
        #expect(code { try PeerLocator(uri: two.uri, limits: limits) } == .limitExceeded)
        #expect(code { try PeerLocator(syrup: two.syrupValue, limits: limits) } == .limitExceeded)
        let long = PeerLocator(identity: a, hints: [s: .string("four")])
        #expect(code { try PeerLocator(uri: long.uri, limits: limits) } == .limitExceeded)
        #expect(code { try PeerLocator(syrup: long.syrupValue, limits: limits) } == .limitExceeded)
        let fits = PeerLocator(identity: a, hints: [s: .string("abc")])
        #expect(try PeerLocator(syrup: fits.syrupValue, limits: limits) == fits)
    }
}

/// The code of the error `body` throws, or nil if it succeeds.
func code(_ body: () throws -> Any) -> OCapNError.Code? {
    do {
        _ = try body()
        return nil
    } catch let error as OCapNError {
        return error.code
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

@Suite struct HintNULTests {
    @Test("D5: a NUL inside a hint value is refused as invalidHint, in Syrup and in a URI (%00)")
    func nulInHintValues() throws {
        let a = Peers.signer(1).publicIdentity, s = Peers.signer(2).publicIdentity
        let record = SyrupValue.record(label: .symbol("ocapn-peer"), fields: [
            .symbol("unix-domain-socket"), .string(a.designator),
            .dictionary([.string(s.designator): .string("t\u{0}x")]),
        ])
        let e = #expect(throws: OCapNError.self) { try PeerLocator(syrup: record) }
        #expect(e?.code == .invalidHint)
        let uri = "ocapn://\(a.designator).unix-domain-socket?\(s.designator)=t%00x"
        let u = #expect(throws: OCapNError.self) { try PeerLocator(uri: uri) }
        #expect(u?.code == .invalidHint)
        // Without the NUL both parse.
        #expect((try? PeerLocator(uri: "ocapn://\(a.designator).unix-domain-socket?\(s.designator)=t%01x")) != nil)
    }
}
