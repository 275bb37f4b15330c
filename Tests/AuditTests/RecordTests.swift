import Foundation
import Identity
import Testing
@testable import Audit

@Suite struct RecordTests {
    @Test func everyEventSurvivesEncodeThenDecodeUnchanged() throws {
        var chain = AuditChain(writer: TestKey().identity, signer: nil)
        let clock = StepClock()
        _ = chain.opened(cause: .start, at: clock.read())
        for e in sampleEvents(local: peer(), remote: peer(), server: peer()) {
            let line = chain.append(e, at: clock.read())
            let back = try AuditRecord.decode(line[...])
            #expect(back.event == e)
            #expect(back.encode() == line)
            #expect(!line.contains(0x0a))
        }
    }

    @Test func aRecordWithExtraSpacingIsRejectedAsNonCanonical() throws {
        var chain = AuditChain(writer: TestKey().identity, signer: nil)
        let line = String(decoding: chain.opened(cause: .start, at: StepClock().read()), as: UTF8.self)
        let spaced = line.replacingOccurrences(of: "\"seq\":1,", with: "\"seq\": 1,")
        #expect(spaced != line)
        #expect(throws: AuditError.self) { try AuditRecord.decode(Array(spaced.utf8)[...]) }
    }

    @Test func aDuplicatedFieldIsRejected() throws {
        var chain = AuditChain(writer: TestKey().identity, signer: nil)
        let line = String(decoding: chain.append(AuditEvent(.handshakeFailed, reason: .named("timeout")), at: StepClock().read()), as: UTF8.self)
        let dup = String(line.dropLast()) + ",\"reason\":\"badMagic\"}"
        do {
            _ = try AuditRecord.decode(Array(dup.utf8)[...])
            Issue.record("duplicate accepted")
        } catch {
            #expect(error.code == .malformedRecord)
            #expect(error.detail.contains("duplicate"))
        }
    }

    @Test func anUnknownFieldOrVersionIsRejected() throws {
        var chain = AuditChain(writer: TestKey().identity, signer: nil)
        let line = String(decoding: chain.append(AuditEvent(.serverStarted), at: StepClock().read()), as: UTF8.self)
        let extra = String(line.dropLast()) + ",\"secret\":\"x\"}"
        #expect(throws: AuditError.self) { try AuditRecord.decode(Array(extra.utf8)[...]) }
        let v2 = line.replacingOccurrences(of: "{\"v\":1,", with: "{\"v\":2,")
        do {
            _ = try AuditRecord.decode(Array(v2.utf8)[...])
            Issue.record("v2 accepted")
        } catch { #expect(error.code == .unsupportedVersion) }
    }

    @Test func anOutcomeThatContradictsTheEventIsRejected() throws {
        var chain = AuditChain(writer: TestKey().identity, signer: nil)
        let line = String(decoding: chain.append(AuditEvent(.handshakeFailed, reason: .named("timeout")), at: StepClock().read()), as: UTF8.self)
        let forged = line.replacingOccurrences(of: "\"outcome\":\"failure\"", with: "\"outcome\":\"success\"")
        #expect(forged != line)
        #expect(throws: AuditError.self) { try AuditRecord.decode(Array(forged.utf8)[...]) }
    }

    @Test func controlCharactersInAPathAreRefusedAndQuotesAreEscaped() throws {
        #expect(AuditPath("/tmp/a\nb") == nil)
        var chain = AuditChain(writer: TestKey().identity, signer: nil)
        let line = chain.append(AuditEvent(.serverStarted, path: AuditPath("/tmp/\"q\"\\x")), at: StepClock().read())
        #expect(String(decoding: line, as: UTF8.self).contains(#""path":"/tmp/\"q\"\\x""#))
        #expect(try AuditRecord.decode(line[...]).event.path?.value == "/tmp/\"q\"\\x")
    }

    /// The line writer encodes digests, ids, times and integers in place; its bytes must be the
    /// String spellings the record format was defined with, or every chain hash would change.
    @Test func theInPlaceLineEncoderWritesTheSameBytesAsTheStringSpellings() {
        func line(_ fill: (inout JSONLineWriter) -> Void) -> String {
            var w = JSONLineWriter()
            fill(&w)
            return String(decoding: w.finish(), as: UTF8.self)
        }
        for v: UInt64 in [0, 7, 9, 10, 99, 100, 1_000_000, UInt64(Int64.max), .max] {
            #expect(line { $0.uint("n", v) } == "{\"n\":\(v)}")
        }
        for v: Int64 in [0, -1, -10, 42, .max, .min] {
            #expect(line { $0.int("n", v) } == "{\"n\":\(v)}")
        }
        for bytes in [[UInt8](repeating: 0, count: 8), (0..<32).map { UInt8($0 * 8) }, [UInt8](repeating: 0xff, count: 64)] {
            #expect(line { $0.hex("h", bytes) } == "{\"h\":\"\(Hex.encode(bytes))\"}")
        }
        for raw: UInt64 in [0, 1, 0x0123_4567_89ab_cdef, .max] {
            #expect(line { $0.hex64("a", raw) } == "{\"a\":\"\(AuditAttemptID(rawValue: raw).hex)\"}")
        }
        for micros: Int64 in [0, -1, 951_782_400_000_001, AuditTimestamp.minMicros, AuditTimestamp.maxMicros] {
            let t = AuditTimestamp(microsSinceEpoch: micros)
            #expect(line { $0.timestamp("ts", t) } == "{\"ts\":\"\(t.rfc3339)\"}")
        }
        #expect(line { $0.bool("a", true); $0.bool("b", false); $0.uint("c", nil); $0.hex("d", nil) } == #"{"a":true,"b":false}"#)
        // The copy-through fast path and the escaping path give the spellings of `appendQuoted`.
        #expect(line { $0.string("s", "fp1:abc/é✓") } == "{\"s\":\"fp1:abc/é✓\"}")
        #expect(line { $0.string("s", "a\"b\\c\nd\u{7f}\u{1}é") } == #"{"s":"a\"b\\c\nd\u007f\u0001é"}"#)
    }

    @Test func reasonCodesAreStringBackedAndRestrictedToACodeAlphabet() {
        #expect(AuditReason(rawValue: "customLayerCode") != nil)
        #expect(AuditReason(rawValue: "a.b_c-9")?.rawValue == "a.b_c-9")
        #expect(AuditReason(rawValue: "has space") == nil)
        #expect(AuditReason(rawValue: "") == nil)
        #expect(AuditReason(rawValue: String(repeating: "a", count: 64)) != nil)
        #expect(AuditReason(rawValue: String(repeating: "a", count: 65)) == nil)
    }

    @Test func outcomesFollowFromTheEventKind() {
        #expect(AuditEvent(.handshakeSucceeded).outcome == .success)
        #expect(AuditEvent(.introductionQueued).outcome == .pending)
        #expect(AuditEvent(.introductionExpired, reason: .named("targetUnknownExpired")).outcome == .failure)
        #expect(AuditEvent(.channelClosed, clean: true).outcome == .success)
        #expect(AuditEvent(.channelClosed, reason: .named("peerReset"), clean: false).outcome == .failure)
        #expect(AuditEvent(.handshakeFailed).invariantViolation != nil)
        #expect(AuditEvent(.channelClosed).invariantViolation != nil)
    }

    @Test func checkpointSignaturesCoverAContextPrefixNeverARaw64ByteMessage() throws {
        let key = TestKey()
        var chain = AuditChain(writer: key.identity, signer: key.signer)
        let clock = StepClock()
        _ = chain.opened(cause: .start, at: clock.read())
        _ = chain.append(AuditEvent(.serverStarted), at: clock.read())
        let line = chain.checkpoint(at: clock.read())
        let rec = try AuditRecord.decode(line[...])
        let message = rec.signedMessage()
        #expect(message.starts(with: AuditRecord.checkpointContext))
        #expect(message.count != 64)
        #expect(key.identity.verify(signature: rec.log!.signature!, message: message))
        #expect(!key.identity.verify(signature: rec.log!.signature!, message: Array(message.dropFirst(AuditRecord.checkpointContext.count))))
    }
}

@Suite struct TimeTests {
    @Test func timestampsAreRFC3339UTCWithMicroseconds() {
        #expect(AuditTimestamp(microsSinceEpoch: 0).rfc3339 == "1970-01-01T00:00:00.000000Z")
        #expect(AuditTimestamp(microsSinceEpoch: 1_764_091_426_123_456).rfc3339 == "2025-11-25T17:23:46.123456Z")
        #expect(AuditTimestamp(microsSinceEpoch: 951_782_400_000_001).rfc3339 == "2000-02-29T00:00:00.000001Z")
        #expect(AuditTimestamp(microsSinceEpoch: -1).rfc3339 == "1969-12-31T23:59:59.999999Z")
    }

    @Test func parsingInvertsFormattingAndHonoursOffsets() {
        for m: Int64 in [0, 1, 951_782_400_000_001, 1_764_091_426_123_456, 4_102_444_799_999_999, -86_400_000_001] {
            let t = AuditTimestamp(microsSinceEpoch: m)
            #expect(AuditTimestamp(recordText: t.rfc3339) == t)
        }
        #expect(AuditTimestamp(rfc3339: "2025-11-25T18:23:46+01:00")?.microsSinceEpoch == 1_764_091_426_000_000)
        #expect(AuditTimestamp(rfc3339: "2025-11-25T17:23:46.5Z")?.microsSinceEpoch == 1_764_091_426_500_000)
        #expect(AuditTimestamp(rfc3339: "2025-02-29T00:00:00Z") == nil)
        #expect(AuditTimestamp(rfc3339: "2025-11-25T17:23:46") == nil)
        #expect(AuditTimestamp(recordText: "2025-11-25T17:23:46Z") == nil)
    }

    @Test func relativeBoundsCountBackFromNow() throws {
        let now = AuditTimestamp(microsSinceEpoch: 10_000_000_000)
        #expect(try parseAuditTimeBound("10m", now: now).microsSinceEpoch == 10_000_000_000 - 600_000_000)
        #expect(try parseAuditTimeBound("2h", now: now).microsSinceEpoch == 10_000_000_000 - 7_200_000_000)
        #expect(throws: AuditError.self) { try parseAuditTimeBound("10y", now: now) }
        #expect(throws: AuditError.self) { try parseAuditTimeBound("m", now: now) }
    }
}
