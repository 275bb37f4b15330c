import Testing
import TestSupport
@testable import Syrup

@Suite("Incremental decoding: prefixes, back-to-back values, the zoo and the OCapN examples")
struct SyrupIncrementalTests {
    static func zoo() throws -> [UInt8] { try RepoFiles.bytes("Vectors/external/syrup/zoo.bin") }

    /// Every strict prefix needs more bytes; the whole reports its length.
    static func expectPrefixesNeedMore(_ bytes: [UInt8], limits: SyrupLimits = .default) {
        for n in 0..<bytes.count {
            let step = prefixResult(bytes[..<n], limits: limits)
            #expect(step == .success(.needMoreBytes), "prefix of \(n) bytes gave \(step)")
        }
        guard case .success(.value(_, let consumed)) = prefixResult(bytes[...], limits: limits) else {
            Issue.record("complete value not decoded")
            return
        }
        #expect(consumed == bytes.count)
    }

    @Test("zoo.bin decodes as one record using all 290 bytes and re-encodes identically")
    func zooRoundTrips() throws {
        let bytes = try Self.zoo()
        #expect(bytes.count == 290)
        let value = try SyrupDecoder().decode(bytes)
        #expect(SyrupEncoder.encode(value) == bytes)
        guard case .record(let label, let fields) = value else { Issue.record("not a record"); return }
        #expect(label == .bytes(ascii("zoo")))
        #expect(fields.first == .string("The Grand Menagerie"))
        let animals = fields.last?.asList ?? []
        #expect(animals.count == 3)
        let names = animals.compactMap { $0.asDictionary?[.symbol("name")]?.asString }
        #expect(names == ["Tabatha", "George", "Casper"])
        #expect(animals.first?.asDictionary?[.symbol("age")] == .int(12))
        #expect(animals.last?.asDictionary?[.symbol("age")] == .int(-12))
        #expect(animals.first?.asDictionary?[.symbol("weight")] == .double(8.2))
        #expect(animals.first?.asDictionary?[.symbol("eats")]?.asSet?.count == 3)
        #expect(animals.last?.asDictionary?[.symbol("eats")] == .set([]))
    }

    @Test("zoo.bin also decodes under the control-message limits")
    func zooFitsControlLimits() throws {
        let bytes = try Self.zoo()
        #expect(try SyrupDecoder(limits: .controlMessage).decode(bytes) == SyrupDecoder().decode(bytes))
    }

    @Test("Every strict prefix of zoo.bin needs more bytes")
    func zooPrefixes() throws {
        Self.expectPrefixesNeedMore(try Self.zoo())
    }

    @Test("Every strict prefix of each OCapN worked example needs more bytes", arguments: 0..<OCapNExamples.all.count)
    func examplePrefixes(index: Int) throws {
        let example = OCapNExamples.all[index]
        #expect(example.bytes.count == example.length)
        Self.expectPrefixesNeedMore(example.bytes, limits: .controlMessage)
        let value = try SyrupDecoder(limits: .controlMessage).decode(example.bytes)
        #expect(SyrupEncoder.encode(value) == example.bytes, "\(example.name) is canonical")
    }

    @Test("The OCapN register message has the documented shape")
    func registerShape() throws {
        let value = try SyrupDecoder(limits: .controlMessage).decode(TestHex.decode(OCapNExamples.register))
        let fields = try #require(value.recordFields(label: "uds:register", count: 2))
        let locator = try #require(fields[0].recordFields(label: "ocapn-peer", count: 3))
        #expect(locator[0] == .symbol("unix-domain-socket"))
        #expect(locator[1] == .string("25njqamcweflpvkl73j4szahhihoc4xt3ktcgjnpaingr5yhkena"))
        #expect(locator[2] == .bool(false))
        #expect(fields[1].asBytes == Array(0..<64))
    }

    @Test("Values back to back are taken one at a time with the right lengths")
    func backToBack() throws {
        let messages = OCapNExamples.all.map(\.bytes)
        let stream = messages.flatMap { $0 } + ascii("t0+")
        var offset = 0
        let decoder = SyrupDecoder(limits: .controlMessage)
        var decoded: [SyrupValue] = []
        while offset < stream.count {
            guard case .value(let value, let consumed) = try decoder.decodePrefix(stream[offset...]) else {
                Issue.record("stalled at \(offset)")
                return
            }
            decoded.append(value)
            offset += consumed
        }
        #expect(decoded.count == messages.count + 2)
        #expect(decoded.suffix(2) == [.bool(true), .int(0)])
        for (value, bytes) in zip(decoded, messages) { #expect(SyrupEncoder.encode(value) == bytes) }
    }

    @Test("The stream decoder yields the same values for every chunking of a stream")
    func streamChunkings() throws {
        let messages = OCapNExamples.all.map(\.bytes) + [try Self.zoo()]
        let stream = messages.flatMap { $0 }
        let expected = try messages.map { try SyrupDecoder().decode($0) }
        for chunk in [1, 2, 3, 7, 64, 1000, stream.count] {
            var reader = SyrupStreamDecoder()
            var got: [SyrupValue] = []
            var i = 0
            while i < stream.count {
                reader.append(Array(stream[i..<min(i + chunk, stream.count)]))
                i += chunk
                while let value = try reader.next() { got.append(value) }
            }
            #expect(got == expected, "chunk size \(chunk)")
            #expect(reader.bufferedCount == 0)
            #expect(reader.streamOffset == stream.count)
            #expect(!reader.isMidValue)
        }
    }

    @Test("The stream decoder hands over raw marker bytes between values")
    func streamRawBytes() throws {
        let record = TestHex.decode(OCapNExamples.newConnection)
        let marker: [UInt8] = [0x39, 0x30, 0x00, 0x00]
        let stream = record + marker + ascii("t")
        var reader = SyrupStreamDecoder(limits: .controlMessage)
        reader.append(Array(stream.prefix(record.count + 2)))
        let first = try #require(try reader.next())
        #expect(first.recordFields(label: "uds:new-connection", count: 2) != nil)
        #expect(reader.takeRaw(4) == nil)
        reader.append(Array(stream.suffix(from: record.count + 2)))
        #expect(reader.takeRaw(4) == marker)
        #expect(try reader.next() == .bool(true))
        #expect(reader.streamOffset == stream.count)
    }

    @Test("A value with the given prefix comes back as its bytes, others built, byte by byte too; skipRaw skips the marker")
    func streamEncodedIfPrefixed() throws {
        let record = TestHex.decode(OCapNExamples.newConnection)
        let marker: [UInt8] = [0x39, 0x30, 0x00, 0x00]
        let stream = ascii("t") + record + marker + ascii("3'abc") + record + marker
        let prefix = Array("<18'uds:new-connection".utf8)
        for chunk in [1, 7, stream.count] {
            var reader = SyrupStreamDecoder(limits: .controlMessage)
            var got: [SyrupStreamDecoder.Decoded] = []
            var i = 0
            while i < stream.count {
                reader.append(Array(stream[i..<min(i + chunk, stream.count)]))
                i += chunk
                while true {
                    if case .encoded? = got.last, reader.skipRaw(4) {
                        got.append(.value(.symbol("marker")))
                        continue
                    }
                    if case .encoded? = got.last { break }
                    guard let next = try reader.next(encodedIfPrefixed: prefix) else { break }
                    got.append(next)
                }
            }
            #expect(got == [.value(.bool(true)), .encoded(record), .value(.symbol("marker")), .value(.symbol("abc")),
                            .encoded(record), .value(.symbol("marker"))], "chunk size \(chunk)")
            #expect(reader.streamOffset == stream.count)
        }
    }

    @Test("next(encodedIfPrefixed:) validates like next(): a record with the prefix but bad bytes fails with the same error")
    func streamEncodedIfPrefixedValidates() throws {
        let prefix = Array("<18'uds:new-connection".utf8)
        for bad in [prefix + ascii("{1\"b0+1\"a0+}>"), prefix + ascii("01+>"), prefix + [0x31, 0x22, 0xff] + ascii(">")] {
            var built = SyrupStreamDecoder(limits: .controlMessage)
            var encoded = SyrupStreamDecoder(limits: .controlMessage)
            built.append(bad)
            encoded.append(bad)
            var a: SyrupError?, b: SyrupError?
            do { _ = try built.next() } catch { a = error }
            do { _ = try encoded.next(encodedIfPrefixed: prefix) } catch { b = error }
            #expect(a != nil)
            #expect(a == b)
        }
    }

    @Test("After an error the stream decoder keeps failing with the same error at a stream offset")
    func streamErrorIsSticky() throws {
        var reader = SyrupStreamDecoder()
        reader.append(ascii("t[1+"))
        #expect(try reader.next() == .bool(true))
        #expect(try reader.next() == nil)
        reader.append(ascii("x"))
        var first: SyrupError?
        do { _ = try reader.next() } catch { first = error }
        #expect(first?.code == .unexpectedByte)
        #expect(first?.offset == 4)
        reader.append(ascii("]"))
        do { _ = try reader.next(); Issue.record("recovered") } catch { #expect(error == first) }
        #expect(reader.takeRaw(0) == nil)
    }

    @Test("A long string arriving one byte at a time is validated once and rejected on its first bad byte")
    func streamLongStringIncremental() throws {
        var reader = SyrupStreamDecoder()
        let body = [UInt8](repeating: 0x61, count: 5000)
        reader.append(ascii("6000\""))
        for byte in body {
            reader.append([byte])
            #expect(try reader.next() == nil)
        }
        reader.append([0xC3])
        #expect(try reader.next() == nil)
        reader.append([0x41])
        do { _ = try reader.next(); Issue.record("accepted") } catch {
            #expect(error.code == .invalidUTF8)
            #expect(error.offset == 5 + 5000)
        }
    }

    @Test("Compaction between values keeps stream offsets and later values intact")
    func streamCompaction() throws {
        var reader = SyrupStreamDecoder()
        let value = SyrupValue.bytes([UInt8](repeating: 7, count: 3000))
        let one = SyrupEncoder.encode(value)
        for _ in 0..<20 {
            reader.append(one + one.prefix(10))
            #expect(try reader.next() == value)
            #expect(try reader.next() == nil)
            reader.append(Array(one.dropFirst(10)))
            #expect(try reader.next() == value)
        }
        #expect(reader.streamOffset == 40 * one.count)
        #expect(reader.bufferedCount == 0)
    }

    @Test("A long stream whose reads always end mid-value keeps its buffer bounded")
    func streamBufferStaysBounded() throws {
        var reader = SyrupStreamDecoder(limits: .controlMessage)
        let one = TestHex.decode(OCapNExamples.register)
        let stream = [UInt8]((0..<2000).map { _ in one }.joined())
        var taken = 0
        var i = 0
        var peak = 0
        while i < stream.count {
            // 301 bytes: never a multiple of the 176-byte message, so most reads end mid-value.
            reader.append(Array(stream[i..<min(i + 301, stream.count)]))
            i += 301
            while try reader.next() != nil { taken += 1 }
            peak = max(peak, reader.storedByteCount)
        }
        #expect(taken == 2000)
        #expect(peak < 3 * 4096)
    }
}
