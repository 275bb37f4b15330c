// The invariant of the FuzzControlMessages fuzz target (docs/FUZZING.md). Compiled here for the
// regression tests and, through the TestSupport product, into the fuzz package, so both judge an input by the
// same code. Public API of OCapN and Syrup only; no test framework.
import OCapN
import Syrup

/// Drives `ControlStreamReader` the way the runtime does (feed one read, drain `next()`, on error
/// or at the end close what `drainDescriptors()` returns) and checks that
/// * every descriptor handed in comes back exactly once, in an item or from `drainDescriptors()`;
/// * a `uds:new-connection` item carries the descriptor of the read that held its marker;
/// * the items re-encode to exactly the bytes consumed (markers aside), and a clean finish
///   consumed every byte;
/// * `UDSMessage` accepts only schema-valid records (checked by an independent shape test
///   below) and re-encodes each one it accepts byte for byte;
/// * `nextEncoded()`, the server's read, gives the same items (a `uds:new-connection` as its
///   bytes), errors and descriptors as `next()`.
///
/// Input layout: `n = input[0] & 15`, then `n` chunk entries of two bytes (data length,
/// descriptor count `& 3`), then the stream. Chunks take their lengths from the stream in
/// order; whatever the entries leave over is one last read without descriptors.
public enum ControlFuzzOracle {
    /// A stand-in for an owned descriptor: an identity plus the stream range it arrived with.
    final class FakeDescriptor {
        let id: Int
        let range: Range<Int>
        init(id: Int, range: Range<Int>) {
            self.id = id
            self.range = range
        }
    }

    public struct Read {
        public let bytes: [UInt8]
        public let descriptors: Int
    }

    public static func reads(_ input: [UInt8]) -> (reads: [Read], stream: [UInt8]) {
        guard let first = input.first else { return ([], []) }
        let entries = Int(first & 15)
        let planEnd = min(input.count, 1 + 2 * entries)
        let stream = Array(input[planEnd...])
        var reads: [Read] = []
        var offset = 0
        var i = 1
        while i + 1 < planEnd {
            let length = min(Int(input[i]), stream.count - offset)
            reads.append(Read(bytes: Array(stream[offset..<(offset + length)]), descriptors: Int(input[i + 1] & 3)))
            offset += length
            i += 2
        }
        if offset < stream.count { reads.append(Read(bytes: Array(stream[offset...]), descriptors: 0)) }
        return (reads, stream)
    }

    public static func violations(_ input: [UInt8]) -> [String] {
        var out: [String] = []
        let (plan, stream) = reads(input)
        var reader = ControlStreamReader<FakeDescriptor>()
        var handedIn: [Int] = []
        var returned: [Int] = []
        var items: [ControlStreamReader<FakeDescriptor>.Item] = []
        var failure: OCapNError?
        var start = 0
        reading: for read in plan {
            let range = start..<(start + read.bytes.count)
            let descriptors = (0..<read.descriptors).map { _ in FakeDescriptor(id: handedIn.count, range: range) }
            handedIn += descriptors.map(\.id)
            start += read.bytes.count
            do throws(OCapNError) {
                let extras = try reader.receive(read.bytes, descriptors: descriptors)
                // Padding tolerance: only the descriptors after the first of a read come back.
                if extras.map(\.id) != descriptors.dropFirst().map(\.id) {
                    out.append("receive handed back \(extras.map(\.id)) of \(descriptors.map(\.id))")
                }
                returned += extras.map(\.id)
                while let item = try reader.next() { items.append(item) }
            } catch {
                failure = error
                break reading
            }
        }
        if failure == nil {
            do throws(OCapNError) { try reader.finish() } catch { failure = error }
        }
        returned += reader.drainDescriptors().map(\.id)

        // Items re-encode to the consumed bytes; markers claim the descriptor of their read.
        var offset = 0
        for item in items {
            let value: SyrupValue
            switch item {
            case .message(let v):
                value = v
                if v.asRecord?.label == .symbol(UDSNewConnection.label) {
                    out.append("a uds:new-connection came out as a plain message")
                }
            case .newConnection(let v, let d):
                value = v
                returned.append(d.id)
                if v.asRecord?.label != .symbol(UDSNewConnection.label) {
                    out.append("a descriptor came out with a value that is not uds:new-connection")
                }
            }
            let encoded = SyrupEncoder.encode(value)
            guard offset + encoded.count <= stream.count, stream[offset..<(offset + encoded.count)].elementsEqual(encoded) else {
                out.append("item at stream offset \(offset) does not re-encode to the bytes it came from")
                break
            }
            offset += encoded.count
            if case .newConnection(_, let d) = item {
                if !d.range.contains(offset) {
                    out.append("the marker at \(offset) claimed descriptor \(d.id) of read \(d.range)")
                }
                offset += 4
            }
            checkMessage(value, encoded, &out)
        }
        if failure == nil && offset != stream.count {
            out.append("clean finish after consuming \(offset) of \(stream.count) bytes")
        }

        // Descriptor-leak oracle.
        if returned.sorted() != handedIn {
            out.append("descriptors in \(handedIn), out \(returned.sorted()): leaked or returned twice")
        }
        out += encodedReaderViolations(plan, items: items, failure: failure)
        return out
    }

    /// `nextEncoded()` (the server's read) agrees with `next()` on the same reads: the same
    /// items, a `uds:new-connection` as the bytes its value encodes to, with the same
    /// descriptor; the same error (code and detail) at the same point; the same descriptors
    /// handed back.
    static func encodedReaderViolations(_ plan: [Read], items: [ControlStreamReader<FakeDescriptor>.Item],
                                        failure: OCapNError?) -> [String] {
        var out: [String] = []
        var reader = ControlStreamReader<FakeDescriptor>()
        var encodedItems: [ControlStreamReader<FakeDescriptor>.EncodedItem] = []
        var encodedFailure: OCapNError?
        var nextID = 0
        reading: for read in plan {
            let descriptors = (0..<read.descriptors).map { _ in
                defer { nextID += 1 }
                return FakeDescriptor(id: nextID, range: 0..<0)
            }
            do throws(OCapNError) {
                _ = try reader.receive(read.bytes, descriptors: descriptors)
                while let item = try reader.nextEncoded() { encodedItems.append(item) }
            } catch {
                encodedFailure = error
                break reading
            }
        }
        if encodedFailure == nil {
            do throws(OCapNError) { try reader.finish() } catch { encodedFailure = error }
        }
        _ = reader.drainDescriptors()
        if encodedFailure?.code != failure?.code || encodedFailure?.detail != failure?.detail {
            out.append("nextEncoded failed with \(String(describing: encodedFailure)), next with \(String(describing: failure))")
        }
        guard encodedItems.count == items.count else {
            out.append("nextEncoded gave \(encodedItems.count) items, next \(items.count)")
            return out
        }
        for (built, encoded) in zip(items, encodedItems) {
            switch (built, encoded) {
            case let (.message(a), .message(b)):
                if a != b { out.append("nextEncoded and next gave different messages") }
            case let (.newConnection(value, a), .newConnection(introduction)):
                if introduction.record != SyrupEncoder.encode(value) {
                    out.append("nextEncoded's record is not the encoding of next's value")
                }
                let b = introduction.descriptor
                if a.id != b.id { out.append("nextEncoded paired descriptor \(b.id) where next paired \(a.id)") }
            default:
                out.append("nextEncoded and next gave items of different kinds")
            }
        }
        return out
    }

    /// `UDSMessage` accepts exactly the schema-valid records and re-encodes them byte for byte.
    static func checkMessage(_ value: SyrupValue, _ encoded: [UInt8], _ out: inout [String]) {
        let parsed = Result { () throws(OCapNError) in try UDSMessage(syrup: value) }
        let shapeOK = Schema.isMessage(value)
        switch parsed {
        case .success(let message):
            if !shapeOK { out.append("UDSMessage accepted a \(message.name) whose shape is not in the schema") }
            if message.encoded != encoded { out.append("\(message.name) re-encodes to other bytes") }
            if (try? UDSMessage(bytes: message.encoded)) != message { out.append("\(message.name) does not round-trip through bytes") }
        case .failure(let error):
            // The shape test knows nothing of key validity, base32 canonicity or hint limits, so
            // only a refusal with a pure shape code contradicts it.
            if shapeOK && (error.code == .unknownMessage || error.code == .challengeLength) {
                out.append("UDSMessage refused a schema-valid record: \(error.code)")
            }
        }
    }

    /// Shape of the seven records, written independently of `UDSMessage` (ocapn-uds-wire.md §5,
    /// PROTOCOL.md §15).
    public enum Schema {
        public static func isMessage(_ v: SyrupValue) -> Bool {
            guard case let .record(label, f) = v else { return false }
            if label == .symbol("uds:register") { return f.count == 2 && isLocator(f[0]) && isBytes(f[1], 64) }
            if label == .symbol("uds:server-response") {
                return f.count == 3 && isPublicKey(f[0]) && isBytes(f[1], 64) && isSignature(f[2], allowRecord: true)
            }
            if label == .symbol("uds:signature") { return isSignatureRecord(f) }
            if label == .symbol("uds:new-connection") { return f.count == 2 && isLocator(f[0]) && isLocator(f[1]) }
            // Registration v2 (PROTOCOL.md §15): raw 64-byte signatures only.
            if label == .symbol("uds-v2:register") { return f.count == 2 && isLocator(f[0]) && isBytes(f[1], 64) }
            if label == .symbol("uds-v2:server-response") {
                return f.count == 3 && isPublicKey(f[0]) && isBytes(f[1], 64) && isBytes(f[2], 64)
            }
            if label == .symbol("uds-v2:signature") { return f.count == 1 && isBytes(f[0], 64) }
            return false
        }

        static func isBytes(_ v: SyrupValue, _ n: Int) -> Bool { v.asBytes?.count == n }

        static func isSignatureRecord(_ f: [SyrupValue]) -> Bool {
            f.count == 2 && isBytes(f[0], 64) && isSignature(f[1], allowRecord: false)
        }

        static func isSignature(_ v: SyrupValue, allowRecord: Bool) -> Bool {
            if isBytes(v, 64) { return true }
            if allowRecord, case let .record(label, f) = v, label == .symbol("uds:signature") { return isSignatureRecord(f) }
            guard let outer = v.asList, outer.count == 2, outer[0] == .symbol("sig-val"),
                  let eddsa = outer[1].asList, eddsa.count == 3, eddsa[0] == .symbol("eddsa") else { return false }
            return isTagged(eddsa[1], "r", 32) && isTagged(eddsa[2], "s", 32)
        }

        static func isTagged(_ v: SyrupValue, _ name: String, _ n: Int) -> Bool {
            guard let pair = v.asList, pair.count == 2, pair[0] == .symbol(name) else { return false }
            return isBytes(pair[1], n)
        }

        static func isPublicKey(_ v: SyrupValue) -> Bool {
            guard let outer = v.asList, outer.count == 2, outer[0] == .symbol("public-key"),
                  let ecc = outer[1].asList, ecc.count == 4, ecc[0] == .symbol("ecc") else { return false }
            return ecc[1] == .list([.symbol("curve"), .symbol("Ed25519")])
                && ecc[2] == .list([.symbol("flags"), .symbol("eddsa")]) && isTagged(ecc[3], "q", 32)
        }

        static func isLocator(_ v: SyrupValue) -> Bool {
            guard case let .record(label, f) = v, label == .symbol("ocapn-peer"), f.count == 3,
                  f[0] == .symbol("unix-domain-socket"), case .string = f[1] else { return false }
            switch f[2] {
            case .bool(false): return true
            case .dictionary(let hints):
                return hints.allSatisfy { key, value in
                    guard case .string = key else { return false }
                    switch value {
                    case .string, .bool, .integer: return true
                    default: return false
                    }
                }
            default: return false
            }
        }
    }
}
