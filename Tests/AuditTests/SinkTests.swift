import Foundation
import Identity
import TestSupport
import Testing
@testable import Audit

@Suite struct SinkTests {
    @Test func writtenEventsReadBackEqualAndInOrder() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, signer: key.signer,
                                                            fsync: .everyRecord, clock: StepClock().function))
        let events = sampleEvents(local: AuditPeerID(key.identity), remote: peer(), server: peer())
        for e in events { sink.record(e) }
        sink.close()
        #expect(sink.status.failures == 0)
        #expect(sink.status.recordsWritten == UInt64(events.count + 2))
        var back: [AuditRecord] = []
        let r = try AuditLog.records([path]) { back.append($0.record) }
        #expect(r.unreadable == 0 && r.tornTail == nil)
        #expect(back.map(\.event).filter { !$0.kind.isLogBookkeeping } == events)
        #expect(back.first?.event.kind == .logOpened)
        #expect(back.first?.log?.writer == key.identity)
        #expect(readLines(path).first?.contains(key.identity.designator) == true)
        #expect(back.map(\.seq) == Array(1...UInt64(back.count)))
        #expect(AuditVerifier.verify(paths: [path]).status == .intact)
    }

    @Test func reopeningAClosedLogContinuesTheChain() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = try makeLog(in: dir, key: key, count: 4)
        let before = readLines(path).count
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, signer: key.signer, fsync: .never))
        sink.record(AuditEvent(.serverStarted))
        sink.close()
        let lines = readLines(path)
        #expect(lines.count == before + 3)
        #expect(lines[before].contains("\"cause\":\"start\""))
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.status == .intact)
        #expect(!report.findings.contains { $0.code == .restartAfterCrash })
    }

    @Test func aCrashTornTailIsCutAndDescribedWhenTheWriterRestarts() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = try makeLog(in: dir, key: key, count: 6)
        var lines = readLines(path)
        lines.removeLast()  // the crash happened before close…
        writeLines(lines, to: path)
        // …so the state file still names the last checkpoint, not the closing record.
        let checkpoint = try #require(lines.last { $0.contains("log.checkpoint") })
        let record = try AuditRecord.decode(Array(checkpoint.utf8)[...])
        try AuditWriterState.write(AuditWitnessEntry(seq: record.seq, hash: AuditRecord.chainHash(Array(checkpoint.utf8))),
                                   path: dir.file(".audit.jsonl.state"))
        let handle = FileHandle(forWritingAtPath: path)!
        handle.seekToEndOfFile()
        handle.write(Data("{\"v\":1,\"seq\":99,\"pr".utf8))  // …in the middle of a write
        handle.closeFile()
        #expect(AuditVerifier.verify(paths: [path]).status == .tornTail)

        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, signer: key.signer, fsync: .never))
        sink.record(AuditEvent(.serverStarted))
        sink.close()
        let opened = try AuditRecord.decode(Array(readLines(path)[lines.count].utf8)[...])
        #expect(opened.log?.cause == .recovery)
        #expect(opened.log?.tornBytes == 19)
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.status == .intact)
        #expect(report.findings.contains { $0.code == .restartAfterCrash && $0.location.line == lines.count + 1 })
    }

    @Test func rotationContinuesTheChainAndVerifySpansTheFilesInAnyOrder() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, signer: key.signer,
                                                            fsync: .onCheckpoint, maxFileBytes: 4096, clock: StepClock().function))
        for i in 0..<60 {
            sink.record(AuditEvent(.handshakeSucceeded, attempt: AuditAttemptID(rawValue: UInt64(i)), provedPeer: peer()))
        }
        sink.close()
        let files = AuditLog.rotationSet(of: path)
        #expect(files.count >= 3)
        #expect(files.last == path)
        for f in files.dropLast() {
            #expect(readLines(f).last?.contains("\"cause\":\"rotation\"") == true)
        }
        #expect(readLines(path).first?.contains("\"cause\":\"rotation\"") == true)
        let report = AuditVerifier.verify(paths: files.reversed())
        #expect(report.status == .intact)
        #expect(report.files == files)
        var count = 0
        _ = try AuditLog.records(files.shuffled()) { if $0.record.event.kind == .handshakeSucceeded { count += 1 } }
        #expect(count == 60)

        // Emptying the live file leaves the chain ending on a rotation close: unsealed.
        let live = try String(contentsOfFile: path, encoding: .utf8)
        try "".write(toFile: path, atomically: false, encoding: .utf8)
        let emptied = AuditVerifier.verify(paths: files)
        #expect(emptied.status == .unsealed)
        #expect(emptied.findings.last?.location.file == files[files.count - 2])
        try live.write(toFile: path, atomically: false, encoding: .utf8)

        // Removing a middle file is a gap at the first line of the next one.
        try FileManager.default.removeItem(atPath: files[1])
        let gap = AuditVerifier.verify(paths: [files[0]] + Array(files.dropFirst(2)))
        #expect(gap.firstBreak?.code == .seqGap)
        #expect(gap.firstBreak?.location == AuditLocation(file: files[2], line: 1))
    }

    @Test func rotationKeepsOnlyTheConfiguredNumberOfOldFiles() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, fsync: .never,
                                                            maxFileBytes: 4096, maxRotatedFiles: 2))
        for _ in 0..<100 { sink.record(AuditEvent(.handshakeSucceeded, provedPeer: peer())) }
        sink.close()
        #expect(FileManager.default.fileExists(atPath: path + ".2"))
        #expect(!FileManager.default.fileExists(atPath: path + ".3"))
        let report = AuditVerifier.verify(paths: AuditLog.rotationSet(of: path), allowUnsigned: true)
        #expect(report.status == .intact)
        #expect(report.findings.contains { $0.code == .earlierFilesMissing })
    }

    @Test func concurrentWritersOnManyThreadsKeepOneValidChain() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, signer: key.signer,
                                                            checkpoints: AuditCheckpointPolicy(everyRecords: 50), fsync: .never))
        let threads = 8, each = 250
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for i in 0..<each {
                sink.record(AuditEvent(.introductionForwarded, attempt: AuditAttemptID(rawValue: UInt64(t * 10_000 + i)), role: .server))
            }
        }
        sink.close()
        let report = AuditVerifier.verify(paths: [path])
        #expect(report.status == .intact)
        var attempts = Set<UInt64>()
        _ = try AuditLog.records([path]) { if let a = $0.record.event.attempt { attempts.insert(a.rawValue) } }
        #expect(attempts.count == threads * each)
        #expect(sink.status.failures == 0)
    }

    @Test func aSecondWriterOnTheSameFileIsRefused() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let first = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, fsync: .never))
        do {
            _ = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, fsync: .never))
            Issue.record("second writer accepted")
        } catch { #expect(error.code == .logInUse) }
        first.close()
    }

    @Test func writeFailuresAreCountedNotFatal() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let sink = try AuditFileSink(AuditFileConfiguration(path: dir.file("audit.jsonl"), writer: key.identity, fsync: .never))
        sink.close()
        sink.record(AuditEvent(.serverStarted))
        #expect(sink.status.failures == 1)
        #expect(sink.status.lastFailure?.code == .ioError)
        do {
            _ = try AuditFileSink(AuditFileConfiguration(path: "/dev/full", writer: key.identity, fsync: .never))
            Issue.record("writing to /dev/full succeeded")
        } catch { #expect(error.code == .ioError || error.code == .logInUse) }
    }

    @Test func aLogWhoseLastRecordIsNotOursIsNotContinued() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = dir.file("audit.jsonl")
        writeLines(["not a record"], to: path)
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: TestKey().identity, fsync: .never))
        sink.close()
        // Moved aside, never extended.
        #expect(sink.reopenFailure?.failure.value == "malformedRecord at line 1")
        let moved = try #require(sink.reopenFailure?.moved?.value)
        #expect(readLines(moved) == ["not a record"])
        #expect(try AuditRecord.decode(Array(readLines(path)[0].utf8)[...]).log?.cause == .tampered)
    }

    @Test func theMemorySinkChainsLikeTheFileSink() throws {
        let key = TestKey()
        let sink = AuditMemorySink(writer: key.identity, signer: key.signer, policy: AuditCheckpointPolicy(everyRecords: 2))
        for e in sampleEvents(local: peer(), remote: peer(), server: peer()) { sink.record(e) }
        #expect(sink.events.count == 13)
        var v = AuditVerifier()
        v.beginFile("memory")
        for (i, l) in sink.lines.enumerated() { v.line(AuditRawLine(number: i + 1, bytes: l, complete: true)) }
        let report = v.finish()
        #expect(report.status == .unsealed)  // never closed
        #expect(report.signaturesVerified == 6)
    }

    @Test func theFollowerSeesNewRecordsAcrossARotation() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, fsync: .never, maxFileBytes: 4096))
        sink.record(AuditEvent(.serverStarted))
        let follower = try AuditFollower(path: path)
        #expect(try follower.poll().records.isEmpty)
        var seen: [UInt64] = []
        for i in 0..<40 {
            sink.record(AuditEvent(.handshakeSucceeded, attempt: AuditAttemptID(rawValue: UInt64(i))))
            if i % 7 == 0 { seen += try follower.poll().records.compactMap { $0.record.event.attempt?.rawValue } }
        }
        seen += try follower.poll().records.compactMap { $0.record.event.attempt?.rawValue }
        sink.close()
        #expect(FileManager.default.fileExists(atPath: path + ".1"))
        #expect(seen == Array(0..<40))
    }
}

@Suite struct LimitTests {
    @Test func aRecordOverTheSizeLimitIsRefusedAndCounted() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let path = dir.file("audit.jsonl")
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: TestKey().identity, fsync: .never, maxRecordBytes: 1024))
        sink.record(AuditEvent(.serverStarted, path: AuditPath("/" + String(repeating: "a", count: 1000))))
        sink.record(AuditEvent(.serverStarted, path: AuditPath("/short")))
        sink.close()
        #expect(sink.status.failures == 1)
        #expect(sink.status.lastFailure?.code == .recordTooLarge)
        #expect(AuditVerifier.verify(paths: [path], allowUnsigned: true).status == .intact)
        #expect(readLines(path).count == 3)
    }

    @Test func anIdleSignedLogGetsACheckpointOnceTheIntervalPasses() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let clock = StepClock()  // 1 ms per reading
        let sink = try AuditFileSink(AuditFileConfiguration(
            path: path, writer: key.identity, signer: key.signer,
            checkpoints: AuditCheckpointPolicy(everyRecords: 1000, intervalMicros: 10_000), fsync: .never, clock: clock.function))
        sink.record(AuditEvent(.serverStarted))
        sink.checkpointIfDue()
        #expect(!readLines(path).contains { $0.contains("log.checkpoint") })
        for _ in 0..<10 { _ = clock.read() }
        sink.checkpointIfDue()
        #expect(readLines(path).last?.contains("log.checkpoint") == true)
        sink.checkpointIfDue()  // nothing new since: no second checkpoint
        #expect(readLines(path).filter { $0.contains("log.checkpoint") }.count == 1)
        sink.close()
        #expect(AuditVerifier.verify(paths: [path]).status == .intact)
    }

    @Test func mutatedLinesDecodeToOurErrorOrToTheSameBytes() throws {
        var chain = AuditChain(writer: TestKey().identity, signer: nil)
        let clock = StepClock()
        var lines = [chain.opened(cause: .start, at: clock.read())]
        for e in sampleEvents(local: peer(), remote: peer(), server: peer()) { lines.append(chain.append(e, at: clock.read())) }
        var rng = SystemRandomNumberGenerator()
        var accepted = 0
        for _ in 0..<3000 {
            var l = lines.randomElement(using: &rng)!
            switch Int.random(in: 0..<3, using: &rng) {
            case 0: l[Int.random(in: 0..<l.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            case 1: l.remove(at: Int.random(in: 0..<l.count, using: &rng))
            default: l.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...l.count, using: &rng))
            }
            if let r = try? AuditRecord.decode(l[...]) {
                accepted += 1
                #expect(r.encode() == l)
            }
        }
        #expect(accepted < 3000)
    }
}
