import Testing
import Syrup
@testable import OCapN

/// Stand-in descriptor: an integer token, so the reader runs without sockets.
private typealias Reader = ControlStreamReader<Int>

private let register = Array("<12'uds:register3:abc>".utf8)
private let newConnection = Array("<18'uds:new-connection1:a1:b>".utf8)
private let marker: [UInt8] = [0x39, 0x30, 0x00, 0x00]

@Suite struct ControlStreamReaderTests {
    @Test func aMessageSplitAcrossReadsIsReturnedOnceComplete() throws {
        var r = Reader()
        for b in register.dropLast() {
            _ = try r.receive([b], descriptors: [])
            #expect(try r.next() == nil)
        }
        _ = try r.receive([register.last!], descriptors: [])
        guard case let .message(v)? = try r.next() else { Issue.record("no message"); return }
        #expect(SyrupEncoder.encode(v) == register)
        try r.finish()
    }

    @Test func backToBackMessagesInOneReadAreAllReturned() throws {
        var r = Reader()
        _ = try r.receive(register + register + register, descriptors: [])
        var n = 0
        while let item = try r.next() {
            if case .message = item { n += 1 }
        }
        #expect(n == 3)
    }

    @Test func theMarkerClaimsTheDescriptorDeliveredWithIt() throws {
        var r = Reader()
        _ = try r.receive(newConnection, descriptors: [])
        #expect(try r.next() == nil)
        _ = try r.receive(marker, descriptors: [7])
        guard case let .newConnection(v, fd)? = try r.next() else { Issue.record("no intro"); return }
        #expect(fd == 7)
        #expect(SyrupEncoder.encode(v) == newConnection)
        try r.finish()
    }

    @Test func nextEncodedHandsTheRecordOverAsItsBytesAndOtherMessagesBuilt() throws {
        var r = Reader()
        _ = try r.receive(register + newConnection, descriptors: [])
        guard case let .message(v)? = try r.nextEncoded() else { Issue.record("no message"); return }
        #expect(SyrupEncoder.encode(v) == register)
        #expect(try r.nextEncoded() == nil)
        _ = try r.receive(marker + newConnection + marker, descriptors: [7])
        guard case let .newConnection(introduction)? = try r.nextEncoded() else { Issue.record("no intro"); return }
        #expect(introduction.record == newConnection)
        #expect(introduction.descriptor == 7)
        // The second marker's read carried no descriptor of its own.
        let e = #expect(throws: OCapNError.self) { try r.nextEncoded() }
        #expect(e?.code == .fdMissing)
    }

    @Test func recordBytesMergedIntoTheDescriptorReadStillPair() throws {
        // K5: earlier plain bytes may share the read that carries the descriptor.
        var r = Reader()
        _ = try r.receive(newConnection + marker, descriptors: [3])
        guard case let .newConnection(_, fd)? = try r.next() else { Issue.record("no intro"); return }
        #expect(fd == 3)
    }

    @Test func aMarkerWithoutADescriptorIsFdMissing() throws {
        var r = Reader()
        _ = try r.receive(newConnection + marker, descriptors: [])
        let e = #expect(throws: OCapNError.self) { try r.next() }
        #expect(e?.code == .fdMissing)
        #expect(r.drainDescriptors().isEmpty)
    }

    @Test func aDescriptorWithAnOrdinaryMessageIsUnexpected() throws {
        var r = Reader()
        _ = try r.receive(register, descriptors: [9])
        let e = #expect(throws: OCapNError.self) { try r.next() }
        #expect(e?.code == .unexpectedFD)
        #expect(r.drainDescriptors() == [9])
    }

    @Test func aPaddingDescriptorIsHandedBackAndTheFirstGoesToTheMarker() throws {
        var r = Reader()
        let extras = try r.receive(newConnection + marker, descriptors: [4, 5])
        #expect(extras == [5])
        guard case .newConnection(_, let fd)? = try r.next() else { Issue.record("no introduction"); return }
        #expect(fd == 4)
        #expect(r.drainDescriptors().isEmpty)
    }

    @Test func threeDescriptorsInOneReadAreExtra() throws {
        var r = Reader()
        let e = #expect(throws: OCapNError.self) { try r.receive(newConnection + marker, descriptors: [4, 5, 6]) }
        #expect(e?.code == .extraFDs)
        #expect(r.drainDescriptors() == [4, 5, 6])
    }

    @Test func strictLimitsRefuseASecondDescriptor() throws {
        var r = Reader(limits: .init(maxDescriptorsPerRead: 1))
        let e = #expect(throws: OCapNError.self) { try r.receive(newConnection + marker, descriptors: [4, 5]) }
        #expect(e?.code == .extraFDs)
        #expect(r.drainDescriptors() == [4, 5])
    }

    @Test func aPaddedDescriptorPairOnARecordStillFailsAndReturnsBoth() throws {
        var r = Reader()
        let extras = try r.receive(register, descriptors: [8, 9])
        let e = #expect(throws: OCapNError.self) { try r.next() }
        #expect(e?.code == .unexpectedFD)
        #expect(extras + r.drainDescriptors() == [9, 8])
    }

    @Test func eofInsideAMessageIsTruncated() throws {
        var r = Reader()
        _ = try r.receive(Array(register.prefix(5)), descriptors: [])
        #expect(try r.next() == nil)
        let e = #expect(throws: OCapNError.self) { try r.finish() }
        #expect(e?.code == .truncated)
    }

    @Test func eofBeforeTheMarkerIsTruncated() throws {
        var r = Reader()
        _ = try r.receive(newConnection, descriptors: [])
        #expect(try r.next() == nil)
        let e = #expect(throws: OCapNError.self) { try r.finish() }
        #expect(e?.code == .truncated)
    }

    @Test func garbageIsAMalformedMessage() throws {
        var r = Reader()
        _ = try r.receive(Array("zzz".utf8), descriptors: [])
        let e = #expect(throws: OCapNError.self) { try r.next() }
        #expect(e?.code == .malformedMessage)
    }

    @Test func aHugeLengthPrefixIsRefusedWithoutWaiting() throws {
        var r = Reader()
        _ = try r.receive(Array("99999999999999999999:".utf8), descriptors: [])
        let e = #expect(throws: OCapNError.self) { try r.next() }
        #expect(e?.code == .messageTooLarge || e?.code == .malformedMessage)
    }

    @Test func anOversizedMessageIsRefused() throws {
        var r = Reader(limits: .init(syrup: .controlMessage))
        let big = Array("<3'foo\(SyrupLimits.controlMessage.maxTotalBytes + 10):".utf8)
        _ = try r.receive(big, descriptors: [])
        let e = #expect(throws: OCapNError.self) {
            _ = try r.next()
            _ = try r.receive([UInt8](repeating: 0x41, count: SyrupLimits.controlMessage.maxTotalBytes + 10), descriptors: [])
            _ = try r.next()
        }
        #expect(e?.code == .messageTooLarge)
    }
}

extension ControlStreamReader.Item: Equatable where Descriptor: Equatable {
    public static func == (a: Self, b: Self) -> Bool {
        switch (a, b) {
        case let (.message(x), .message(y)): return x == y
        case let (.newConnection(x, d), .newConnection(y, e)): return x == y && d == e
        default: return false
        }
    }
}
