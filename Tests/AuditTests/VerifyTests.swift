import Foundation
import Identity
import Testing
@testable import Audit

@Suite struct VerifyTests {
    @Test func aFreshSignedLogVerifiesIntactAndSealed() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = try makeLog(in: dir, key: key)
        let report = AuditVerifier.verify(paths: [path], expectedWriter: key.identity)
        #expect(report.status == .intact)
        #expect(report.exitCode == 0)
        #expect(report.firstBreak == nil)
        #expect(report.records == readLines(path).count)
        #expect(report.signaturesVerified == 5)  // 4 periodic checkpoints (every 5) + the closing record
        #expect(report.writers == [key.identity])
    }

    @Test func anUnsignedLogFailsStrictVerificationAndPassesWithAllowUnsigned() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir, signed: false)
        let strict = AuditVerifier.verify(paths: [path])
        #expect(strict.status == .unsigned)
        #expect(strict.exitCode == 7)
        #expect(strict.findings.map(\.code) == [.unsignedRun, .unsignedLog])
        let report = AuditVerifier.verify(paths: [path], allowUnsigned: true)
        #expect(report.status == .intact)
        #expect(report.findings.map(\.code) == [.unsignedLog])
        #expect(!readLines(path).contains { $0.contains("log.checkpoint") })
    }

    @Test func anEditedFieldBreaksTheLinkAtTheFollowingLine() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        #expect(lines[3].contains("\"duration_us\":102"))
        lines[3] = lines[3].replacingOccurrences(of: "\"duration_us\":102", with: "\"duration_us\":999")
        writeLines(lines, to: path)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.status == .broken)
        #expect(report.exitCode == 4)
        #expect(report.firstBreak?.code == .brokenLink)
        #expect(report.firstBreak?.location == AuditLocation(file: path, line: 5))
        #expect(report.firstBreak?.message.contains("\(path):4") == true)
    }

    @Test func aDeletedLineIsASeqGapAtTheLineAfterIt() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        lines.remove(at: 6)
        writeLines(lines, to: path)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.firstBreak?.code == .seqGap)
        #expect(report.firstBreak?.location.line == 7)
        #expect(report.firstBreak?.message.contains("1 record(s) missing") == true)
    }

    @Test func swappedLinesAreDetectedAtTheFirstOfThem() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        lines.swapAt(8, 9)
        writeLines(lines, to: path)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.status == .broken)
        #expect(report.firstBreak?.code == .seqGap)
        #expect(report.firstBreak?.location.line == 9)
    }

    @Test func anInsertedLineIsDetectedWhereItSits() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        // A well-formed record with the right seq and a forged prev: only the link gives it away.
        var chain = AuditChain(writer: TestKey().identity, signer: nil, nextSeq: 11)
        let forged = String(decoding: chain.append(AuditEvent(.handshakeSucceeded), at: StepClock().read()), as: UTF8.self)
        lines.insert(forged, at: 10)
        writeLines(lines, to: path)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.firstBreak?.code == .brokenLink)
        #expect(report.firstBreak?.location.line == 11)
    }

    @Test func aTruncatedTailOfASignedLogIsReportedUnsealedAtTheLastLine() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        lines.removeLast(3)
        writeLines(lines, to: path)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.status == .unsealed)
        #expect(report.exitCode == 6)
        let finding = report.findings.first { $0.code == .unsealedTail }
        #expect(finding?.location == AuditLocation(file: path, line: lines.count))
    }

    @Test func aTornLastLineIsReportedDistinctlyFromABreak() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        lines[lines.count - 1] = String(lines[lines.count - 1].prefix(40))
        writeLines(lines, to: path, trailingNewline: false)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.status == .tornTail)
        #expect(report.exitCode == 5)
        let torn = report.findings.first { $0.code == .tornTail }
        #expect(torn?.location.line == lines.count)
    }

    @Test func aForgedClosingRecordFailsItsSignature() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        lines[lines.count - 1] = lines[lines.count - 1].replacingOccurrences(of: "\"cause\":\"shutdown\"", with: "\"cause\":\"rotation\"")
        writeLines(lines, to: path)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.firstBreak?.code == .badSignature)
        #expect(report.firstBreak?.location.line == lines.count)
    }

    @Test func aLogWrittenByAnotherKeyFailsWhenTheWriterIsPinned() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        let report = AuditVerifier.verify(paths: [path], expectedWriter: TestKey().identity)
        #expect(report.firstBreak?.code == .unexpectedWriter)
        #expect(report.firstBreak?.location.line == 1)
    }

    @Test func aFileWhoseHeadWasCutOffIsRejected() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        lines.removeFirst(2)
        writeLines(lines, to: path)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.firstBreak?.code == .badFileStart)
        #expect(report.firstBreak?.location.line == 1)
    }

    @Test func garbageInTheMiddleIsAMalformedRecordAtItsLine() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = try makeLog(in: dir)
        var lines = readLines(path)
        lines[4] = "{\"v\":1,"
        writeLines(lines, to: path)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.firstBreak?.code == .malformedRecord)
        #expect(report.firstBreak?.location.line == 5)
    }
}
