import Identity
@testable import OCapN
import Syrup
import Testing

/// The server's cached locator parser must accept and refuse exactly what `PeerLocator(syrup:)`
/// does, with the same codes, whether its cache is cold or warm.
@Suite struct IntroductionServerLocatorParserTests {
    /// Every locator value in the vector file (examples and the locator fields of rejects), plus
    /// variants built around cached keys.
    static func corpus() -> [SyrupValue] {
        var values: [SyrupValue] = []
        for e in Fixtures.section("examples") + Fixtures.section("rejects") {
            guard let hex = e["hex"] as? String, let v = try? SyrupDecoder().decode(Fixtures.hex(hex)) else { continue }
            values.append(v)
            if case let .record(_, fields) = v { values += fields }
        }
        let a = Fixtures.peerA.publicIdentity, s = Fixtures.serverS.publicIdentity
        func locator(_ label: SyrupValue = .symbol("ocapn-peer"), transport: SyrupValue = .symbol("unix-domain-socket"),
                     designator: SyrupValue = .string(Fixtures.peerA.publicIdentity.designator),
                     hints: SyrupValue = .bool(false), extra: [SyrupValue] = []) -> SyrupValue {
            .record(label: label, fields: [transport, designator, hints] + extra)
        }
        values += [
            locator(),
            locator(.string("ocapn-peer")),
            locator(.symbol("ocapn-peers")),
            locator(transport: .symbol("tcp")),
            locator(transport: .string("unix-domain-socket")),
            locator(designator: .symbol(a.designator)),
            locator(designator: .string(a.designator.uppercased())),
            locator(designator: .string(String(a.designator.dropLast()))),
            locator(hints: .bool(true)),
            locator(hints: .list([])),
            locator(hints: .dictionary([:])),
            locator(hints: .dictionary([.string(s.designator): .string("t")])),
            locator(hints: .dictionary([.string(s.designator): .bool(true)])),
            locator(hints: .dictionary([.string(s.designator): .integer(SyrupInteger(1))])),
            locator(hints: .dictionary([.string(s.designator): .bytes([1])])),
            locator(hints: .dictionary([.string(s.designator): .double(1)])),
            locator(hints: .dictionary([.string(s.designator): .string(String(repeating: "x", count: 257))])),
            locator(hints: .dictionary([.string(s.designator): .string(String(repeating: "x", count: 256))])),
            locator(hints: .dictionary([.string(s.designator): .string("a\u{0}b")])),
            locator(hints: .dictionary([.string(s.designator): .integer(SyrupInteger(-12345))])),
            locator(hints: .dictionary([.string(s.designator): .string(""), .string(a.designator): .bool(false)])),
            locator(hints: .dictionary([.symbol(s.designator): .string("t")])),
            locator(hints: .dictionary([.string(s.designator.uppercased()): .string("t")])),
            locator(hints: .dictionary(Dictionary(uniqueKeysWithValues: (1...33).map {
                (SyrupValue.string(Peers.signer(UInt8($0)).publicIdentity.designator), SyrupValue.string("t"))
            }))),
            locator(extra: [.bool(false)]),
            .record(label: .symbol("ocapn-peer"), fields: [.symbol("unix-domain-socket"), .string(a.designator)]),
            .string(a.designator),
        ]
        return values
    }

    enum Outcome: Equatable {
        case parsed(PeerLocator)
        case refused(OCapNError.Code)
    }

    static func outcome(_ body: () throws(OCapNError) -> PeerLocator) -> Outcome {
        do throws(OCapNError) { return .parsed(try body()) } catch { return .refused(error.code) }
    }

    @Test("The cached parser gives PeerLocator's result or error code for every corpus value, cold and warm")
    func agreesWithPeerLocator() {
        let corpus = Self.corpus()
        var warm = IntroductionServerLocatorParser(recentCapacity: 64)
        warm.pin(Fixtures.peerA.publicIdentity)
        for v in corpus { _ = try? warm.locator(v) }  // fills the cache with every valid key
        for v in corpus {
            let expected = Self.outcome { () throws(OCapNError) in try PeerLocator(syrup: v) }
            var cold = IntroductionServerLocatorParser(recentCapacity: 0)
            #expect(Self.outcome { () throws(OCapNError) in try cold.locator(v) } == expected, "cold: \(v)")
            #expect(Self.outcome { () throws(OCapNError) in try warm.locator(v) } == expected, "warm: \(v)")
        }
    }

    /// `uds:new-connection` records around the corpus: every locator as `from` and as `to`
    /// beside a plain one, and records of the wrong arity or label.
    static func records() -> [[UInt8]] {
        let plain = PeerLocator(identity: Fixtures.peerA.publicIdentity).syrupValue
        func record(_ fields: [SyrupValue]) -> [UInt8] {
            SyrupEncoder.encode(.record(label: .symbol(UDSNewConnection.label), fields: fields))
        }
        var out: [[UInt8]] = []
        for v in corpus() {
            out.append(record([v, plain]))
            out.append(record([plain, v]))
        }
        out += [record([]), record([plain]), record([plain, plain, plain]), record([plain, .bool(false)])]
        return out
    }

    enum RecordOutcome: Equatable {
        case parsed(PublicIdentity, PublicIdentity)
        case refused(OCapNError.Code, String)
    }

    static func recordOutcome(_ body: () throws(OCapNError) -> (PublicIdentity, PublicIdentity)) -> RecordOutcome {
        do throws(OCapNError) {
            let (from, to) = try body()
            return .parsed(from, to)
        } catch {
            return .refused(error.code, error.detail)
        }
    }

    @Test("Reading the keys from a record's bytes gives what building it and parsing its locators gives, errors included, cold and warm")
    func recordBytesAgreeWithTheValueParser() throws {
        var warm = IntroductionServerLocatorParser(recentCapacity: 64)
        warm.pin(Fixtures.peerA.publicIdentity)
        for v in Self.corpus() { _ = try? warm.locator(v) }
        for bytes in Self.records() {
            let value = try SyrupDecoder(limits: .controlMessage).decode(bytes)
            guard case let .record(_, fields) = value else { Issue.record("not a record"); continue }
            var reference = IntroductionServerLocatorParser(recentCapacity: 0)
            let expected = Self.recordOutcome { () throws(OCapNError) in
                let request = try reference.newConnection(fields: fields)
                return (request.from.identity, request.to.identity)
            }
            var cold = IntroductionServerLocatorParser(recentCapacity: 0)
            #expect(Self.recordOutcome { () throws(OCapNError) in try cold.newConnection(record: bytes) } == expected, "cold: \(value)")
            #expect(Self.recordOutcome { () throws(OCapNError) in try warm.newConnection(record: bytes) } == expected, "warm: \(value)")
        }
    }

    @Test("With its keys cached, a usual record is read from its bytes without building it")
    func warmRecordsTakeTheFastPath() throws {
        let a = Fixtures.peerA.publicIdentity, s = Fixtures.serverS.publicIdentity
        var parser = IntroductionServerLocatorParser(recentCapacity: 64)
        parser.pin(a)
        let records: [UDSNewConnection] = [
            UDSNewConnection(from: PeerLocator(identity: a), to: PeerLocator(identity: a)),
            UDSNewConnection(from: PeerLocator(identity: a, introductionServers: [s]), to: PeerLocator(identity: a, hints: [:])),
            UDSNewConnection(from: PeerLocator(identity: a, hints: [s: .bool(true)]),
                             to: PeerLocator(identity: a, hints: [s: .integer(SyrupInteger(7)), a: .string("x")])),
        ]
        // The first sight of the hint key `s` builds its record and caches the key.
        for request in records {
            let (from, to) = try parser.newConnection(record: UDSMessage.newConnection(request).encoded)
            #expect(from == request.from.identity && to == request.to.identity)
        }
        let built = parser.recordsBuilt
        #expect(built == 1)
        for request in records {
            let (from, to) = try parser.newConnection(record: UDSMessage.newConnection(request).encoded)
            #expect(from == request.from.identity && to == request.to.identity)
        }
        #expect(parser.recordsBuilt == built)
        // A hint value with NUL is refused as the value parser refuses it, warm or not (D5).
        let nul = UDSNewConnection(from: PeerLocator(identity: a, hints: [s: .string("a\u{0}")]), to: PeerLocator(identity: a))
        #expect(throws: OCapNError.self) { try parser.newConnection(record: UDSMessage.newConnection(nul).encoded) }
    }

    @Test("The recent cache is bounded: it empties when full instead of growing")
    func recentCacheIsBounded() throws {
        var parser = IntroductionServerLocatorParser(recentCapacity: 4)
        for n in 1...20 {
            _ = try parser.locator(PeerLocator(identity: Peers.signer(UInt8(n)).publicIdentity).syrupValue)
        }
        #expect(parser.pinnedCount == 0)
        // Pinned keys survive any amount of churn in the recent tier.
        parser.pin(Peers.signer(1).publicIdentity)
        for n in 21...40 {
            _ = try parser.locator(PeerLocator(identity: Peers.signer(UInt8(n)).publicIdentity).syrupValue)
        }
        #expect(parser.pinnedCount == 1)
        parser.unpin(Peers.signer(1).publicIdentity)
        #expect(parser.pinnedCount == 0)
    }
}
