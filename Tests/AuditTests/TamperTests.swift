import Dispatch
import Foundation
import Identity
import SodiumCrypto
import Synchronization
import Testing
@testable import Audit

/// The attacks of issue #10 against the library: an editor without the key, a writer swap, a
/// restart on a tampered file, and a thief of the current sealing key.
@Suite struct TamperTests {
    /// Re-chains `records` (bookkeeping dropped) as one run of `writer`, signed or not: what an
    /// editor who can compute BLAKE2b but holds no key can produce.
    static func forgeRun(_ events: [AuditEvent], writer: PublicIdentity, signer: IdentityKeyPair?, nextSeq: UInt64 = 1,
                         head: AuditDigest = AuditRecord.genesis, clock: StepClock = StepClock()) -> [String] {
        var chain = AuditChain(writer: writer, signer: signer, policy: AuditCheckpointPolicy(everyRecords: 5), nextSeq: nextSeq, head: head)
        var lines = [chain.opened(cause: .start, at: clock.read())]
        for e in events {
            lines.append(chain.append(e, at: clock.read()))
            if chain.checkpointDue(at: clock.read()) { lines.append(chain.checkpoint(at: clock.read())) }
        }
        lines.append(chain.closed(cause: .shutdown, at: clock.read()))
        return lines.map { String(decoding: $0, as: UTF8.self) }
    }

    static func events(of path: String) -> [AuditEvent] {
        readLines(path).compactMap { try? AuditRecord.decode(Array($0.utf8)[...]) }.filter { !$0.event.kind.isLogBookkeeping }.map(\.event)
    }

    @Test func anUnsignedRewriteFailsStrictVerificationWithItsOwnExitCode() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = try makeLog(in: dir, key: key)
        var events = Self.events(of: path)
        events.remove(at: 2)                       // one record deleted
        events[0].expectedPeer = peer()            // another peer renamed
        writeLines(Self.forgeRun(events, writer: key.identity, signer: nil), to: path)
        let strict = AuditVerifier.verify(paths: [path], expectedWriter: key.identity)
        #expect(strict.status == .unsigned)
        #expect(strict.exitCode == 7)
        #expect(strict.signaturesVerified == 0)
        #expect(strict.findings.first?.code == .unsignedRun)
        // The chain alone is perfect: only --allow-unsigned would accept it.
        #expect(AuditVerifier.verify(paths: [path], expectedWriter: key.identity, allowUnsigned: true).status == .intact)
    }

    @Test func anUnsignedRunSplicedIntoASignedLogFails() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = try makeLog(in: dir, key: key)
        let lines = readLines(path)
        let last = try AuditRecord.decode(Array(lines.last!.utf8)[...])
        let spliced = Self.forgeRun(Array(Self.events(of: path).prefix(3)), writer: key.identity, signer: nil,
                                    nextSeq: last.seq + 1, head: AuditRecord.chainHash(Array(lines.last!.utf8)))
        writeLines(lines + spliced, to: path)
        let report = AuditVerifier.verify(paths: [path], expectedWriter: key.identity)
        #expect(report.status == .unsigned)
        #expect(report.exitCode == 7)
        #expect(report.findings.contains { $0.code == .unsignedRun && $0.location.line == lines.count + 1 })
    }

    @Test func aWriterSwapFailsAndASignedHandoverPasses() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let a = TestKey(), b = TestKey()
        let path = try makeLog(in: dir, key: a)
        let lines = readLines(path)
        let last = try AuditRecord.decode(Array(lines.last!.utf8)[...])
        let swapped = Self.forgeRun(Array(Self.events(of: path).prefix(3)), writer: b.identity, signer: b.signer,
                                    nextSeq: last.seq + 1, head: AuditRecord.chainHash(Array(lines.last!.utf8)))
        writeLines(lines + swapped, to: path)
        for pin in [nil, a.identity] {
            let report = AuditVerifier.verify(paths: [path], expectedWriter: pin)
            #expect(report.status == .broken)
            #expect(report.exitCode == 4)
            #expect(report.firstBreak?.code == .writerChangeWithoutHandover)
        }

        // The real hand-over: A signs it, B continues; pinned to A it verifies.
        let other = dir.file("handover.jsonl")
        let clock = StepClock()
        let sinkA = try AuditFileSink(AuditFileConfiguration(path: other, writer: a.identity, signer: a.signer, fsync: .never, clock: clock.function))
        sinkA.record(AuditEvent(.identityLoaded, local: AuditPeerID(a.identity)))
        sinkA.close(handoverTo: b.identity)
        let sinkB = try AuditFileSink(AuditFileConfiguration(path: other, writer: b.identity, signer: b.signer, fsync: .never, clock: clock.function))
        #expect(sinkB.reopenFailure == nil)
        sinkB.record(AuditEvent(.identityLoaded, local: AuditPeerID(b.identity)))
        sinkB.close()
        let report = AuditVerifier.verify(paths: [other], expectedWriter: a.identity)
        #expect(report.status == .intact, "\(report.findings)")
        #expect(report.writers == [a.identity, b.identity])
        #expect(report.findings.contains { $0.code == .handover })
        // Without the hand-over, B refuses to extend A's log and moves it aside.
        let third = try makeLog(in: dir, key: a, name: "third.jsonl")
        let sinkC = try AuditFileSink(AuditFileConfiguration(path: third, writer: b.identity, signer: b.signer, fsync: .never, clock: clock.function))
        sinkC.close()
        #expect(sinkC.reopenFailure?.failure.value.contains("without a hand-over") == true)
    }

    @Test func aRestartOnATamperedFileMovesItAsideAndNamesIt() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = try makeLog(in: dir, key: key)
        // Laundering attempt: rewrite as an unsigned run, then let the writer restart on it.
        writeLines(Self.forgeRun(Array(Self.events(of: path).dropFirst(2)), writer: key.identity, signer: nil), to: path)
        let forged = try #require(FileManager.default.contents(atPath: path))
        let clock = StepClock()
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, signer: key.signer, fsync: .never, clock: clock.function))
        sink.record(AuditEvent(.identityLoaded, local: AuditPeerID(key.identity)))
        sink.close()
        let failure = try #require(sink.reopenFailure)
        let moved = try #require(failure.moved?.value)
        #expect(moved.hasPrefix(path + ".tampered-"))
        #expect(FileManager.default.contents(atPath: moved) == forged, "moved aside untouched")
        #expect(failure.movedHash == AuditDigest(BLAKE2b.hash([UInt8](forged), outputLength: 32)))
        // Shorter than the checkpoint the state file names (and unsigned besides).
        #expect(failure.failure.value.hasPrefix("shorter than the state file says"))
        let first = try AuditRecord.decode(Array(readLines(path)[0].utf8)[...])
        #expect(first.log?.cause == .tampered)
        #expect(first.log?.moved?.value == moved)
        #expect(first.log?.movedHash == failure.movedHash)
        // The new file continues from the last checkpoint the state file remembered.
        let report = AuditVerifier.verify(paths: [path], expectedWriter: key.identity)
        #expect(report.status == .intact, "\(report.findings)")
        #expect(report.findings.contains { $0.code == .fileMovedAside })
        #expect(AuditVerifier.verify(paths: [moved], expectedWriter: key.identity).status == .unsigned)
    }

    @Test func aLogShorterThanTheStateFileIsNotExtended() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = try makeLog(in: dir, key: key)
        let lines = readLines(path)
        // Cut right after a checkpoint: a valid-looking signed log, but shorter than the state says.
        let cut = try #require(lines.lastIndex { $0.contains("log.checkpoint") })
        writeLines(Array(lines[...cut]), to: path)
        #expect(AuditVerifier.verify(paths: [path], expectedWriter: key.identity).status == .unsealed)
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, signer: key.signer, fsync: .never))
        sink.close()
        #expect(sink.reopenFailure?.failure.value.hasPrefix("shorter than the state file says") == true)
        // An edit that keeps the length is caught by the chain.
        let path2 = try makeLog(in: dir, key: key, name: "b.jsonl")
        var lines2 = readLines(path2)
        lines2[3] = lines2[3].replacingOccurrences(of: "\"duration_us\":102", with: "\"duration_us\":999")
        writeLines(lines2, to: path2)
        let sink2 = try AuditFileSink(AuditFileConfiguration(path: path2, writer: key.identity, signer: key.signer, fsync: .never))
        sink2.close()
        #expect(sink2.reopenFailure?.failure.value == "brokenLink at line 5")
        // An intact log is simply continued.
        let path3 = try makeLog(in: dir, key: key, name: "c.jsonl")
        let sink3 = try AuditFileSink(AuditFileConfiguration(path: path3, writer: key.identity, signer: key.signer, fsync: .never))
        sink3.close()
        #expect(sink3.reopenFailure == nil)
        #expect(AuditVerifier.verify(paths: [path3], expectedWriter: key.identity).status == .intact)
    }
}

/// Forward-secure sealing: the construction, and a thief of the current key.
@Suite struct SealingTests {
    /// A sealed log spanning several 1-second epochs (the clock steps 0.3 s per reading).
    static func sealedLog(in dir: TempDir, key: TestKey, records: Int = 30) throws -> (path: String, sealKey: String, verify: AuditVerificationKey) {
        let clock = StepClockWith(step: 300_000)
        let (sealing, verify) = AuditSealingKey.generate(startMicros: clock.start, intervalMicros: 1_000_000)
        let sealPath = dir.file("seal.key")
        try AuditSealingKeyFile.store(sealing, path: sealPath)
        let path = dir.file("sealed.jsonl")
        let sink = try AuditFileSink(AuditFileConfiguration(
            path: path, writer: key.identity, signer: key.signer, checkpoints: AuditCheckpointPolicy(everyRecords: 4),
            fsync: .never, clock: clock.function, sealingKeyPath: sealPath))
        for i in 0..<records {
            sink.record(AuditEvent(.handshakeSucceeded, attempt: AuditAttemptID(rawValue: UInt64(i)), role: .initiator,
                                   local: AuditPeerID(key.identity), expectedPeer: peer(), durationMicros: UInt64(i)))
        }
        sink.close()
        return (path, sealPath, verify)
    }

    @Test func evolutionIsOneWayAndSealsNameTheirEpoch() throws {
        let k0 = SecretBytes(copying: [UInt8](repeating: 7, count: 32))
        let k3 = AuditSealing.evolve(k0, from: 0, to: 3)
        let step = AuditSealing.evolve(AuditSealing.evolve(AuditSealing.evolve(k0)))
        #expect(k3.constantTimeEquals(step))
        #expect(!k3.constantTimeEquals(k0))
        #expect(AuditSealing.mac(key: k0, message: [1, 2]) != AuditSealing.mac(key: k3, message: [1, 2]))
        #expect(AuditSealing.epoch(of: AuditTimestamp(microsSinceEpoch: 10_500_000), startMicros: 1_000_000, intervalMicros: 2_000_000) == 4)
    }

    @Test func aSealedLogVerifiesWithTheVerificationKeyAndTheKeyFileOnlyHoldsTheCurrentEpoch() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let (path, sealPath, verify) = try Self.sealedLog(in: dir, key: key)
        let report = AuditVerifier.verify(paths: [path], options: AuditVerifyOptions(verificationKey: verify))
        #expect(report.status == .intact, "\(report.findings)")
        #expect(report.sealsVerified >= 8)
        let epochs = Set(readLines(path).compactMap { try? AuditRecord.decode(Array($0.utf8)[...]) }.compactMap { $0.log?.epoch })
        #expect(epochs.count >= 8, "an epoch-end seal in every epoch: \(epochs.sorted())")
        let onDisk = try AuditSealingKeyFile.load(path: sealPath)
        #expect(onDisk.epoch == epochs.max())
        let k0Hex = verify.k0.withUnsafeBytes { Hex.encode(Array($0)) }
        let fileText = try String(contentsOfFile: sealPath, encoding: .utf8)
        #expect(!fileText.contains(k0Hex), "the first key is gone from the writer's disk")
        // A wrong verification key is a mismatch, not a pass.
        let other = AuditSealingKey.generate(startMicros: verify.startMicros, intervalMicros: verify.intervalMicros).1
        #expect(AuditVerifier.verify(paths: [path], options: AuditVerifyOptions(verificationKey: other)).firstBreak?.code == .sealKeyMismatch)
    }

    /// The thief holds the identity key and the current sealing key: re-signs and re-seals
    /// everything after editing a record of epoch 0.
    static func rewriteWithCurrentKey(path: String, key: TestKey, current: AuditSealingKey, keepEpochs: Bool) throws {
        var lines = readLines(path)
        var prev = AuditRecord.genesis
        for i in lines.indices {
            var r = try AuditRecord.decode(Array(lines[i].utf8)[...])
            var event = r.event
            if i == 2 { event.durationMicros = 999_999 }
            var meta = r.log
            if var m = meta, m.signature != nil {
                m.signature = nil
                m.seal = nil
                if !keepEpochs { m.epoch = current.epoch }
                let unsealed = AuditRecord(seq: r.seq, prev: prev, timestamp: r.timestamp, event: event, log: m)
                m.seal = current.seal(unsealed.sealedMessage())
                let unsigned = AuditRecord(seq: r.seq, prev: prev, timestamp: r.timestamp, event: event, log: m)
                m.signature = Ed25519.sign(unsigned.signedMessage(), secretKey: key.secretKey)
                meta = m
            }
            r = AuditRecord(seq: r.seq, prev: prev, timestamp: r.timestamp, event: event, log: meta)
            let line = r.encode()
            prev = AuditRecord.chainHash(line)
            lines[i] = String(decoding: line, as: UTF8.self)
        }
        writeLines(lines, to: path)
    }

    @Test func aRewriteOfASealedEpochWithTheCurrentKeyIsCaughtByTheVerificationKey() throws {
        for keepEpochs in [false, true] {
            let dir = TempDir(); defer { dir.cleanup() }
            let key = TestKey()
            let (path, sealPath, verify) = try Self.sealedLog(in: dir, key: key)
            let current = try AuditSealingKeyFile.load(path: sealPath)
            #expect(current.epoch > 0)
            try Self.rewriteWithCurrentKey(path: path, key: key, current: current, keepEpochs: keepEpochs)
            // Signatures alone cannot tell: the thief holds the identity key too.
            #expect(AuditVerifier.verify(paths: [path], expectedWriter: key.identity).status == .intact)
            let report = AuditVerifier.verify(paths: [path], options: AuditVerifyOptions(expectedWriter: key.identity, verificationKey: verify))
            #expect(report.status == .broken)
            #expect(report.exitCode == 4)
            // Re-sealed under the current epoch: records of epoch 0 covered by a later seal
            // (the CVE-2023-31439 lesson); claiming the old epochs: the seal does not verify.
            #expect(report.firstBreak?.code == (keepEpochs ? .badSeal : .recordOutsideEpoch), "\(report.findings)")
        }
    }
}

/// A clock stepping a fixed number of microseconds per reading.
final class StepClockWith: Sendable {
    let start: Int64 = 1_795_000_000_000_000
    private let now: Mutex<Int64>
    private let step: Int64
    init(step: Int64) {
        self.step = step
        now = Mutex(start)
    }
    func read() -> AuditTimestamp {
        now.withLock { t in
            t += step
            return AuditTimestamp(microsSinceEpoch: t)
        }
    }
    var function: @Sendable () -> AuditTimestamp { { self.read() } }
}

/// The asynchronous writer the CLI uses: callers never wait on the disk, order and chain hold.
@Suite struct AsynchronousSinkTests {
    @Test func queuedRecordsFromManyThreadsLandInOrderAndCloseDrainsThem() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let witness = dir.file("witness")
        let sink = try AuditFileSink(AuditFileConfiguration(
            path: path, writer: key.identity, signer: key.signer, checkpoints: AuditCheckpointPolicy(everyRecords: 100),
            witness: .file(witness), asynchronous: true))
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for i in 0..<2000 {
                sink.record(AuditEvent(.introductionForwarded, attempt: AuditAttemptID(rawValue: UInt64(t * 100_000 + i)), role: .server))
            }
        }
        sink.flush()
        #expect(readLines(path).count >= 8001)
        sink.close()
        #expect(sink.status.failures == 0)
        let entries = try AuditWitnessEntry.read(path: witness)
        let report = AuditVerifier.verify(paths: [path], options: AuditVerifyOptions(expectedWriter: key.identity, witness: entries))
        #expect(report.status == .intact, "\(report.findings)")
        #expect(report.witnessMatched == entries.count && entries.count >= 80)
        var times: [AuditTimestamp] = []
        _ = try AuditLog.records([path]) { times.append($0.record.timestamp) }
        #expect(times == times.sorted(), "file order is call order")
        // The state file names the closing record once close returns.
        let state = try #require(try AuditWriterState.read(path: dir.file(".audit.jsonl.state")))
        #expect(state.seq == UInt64(readLines(path).count))
    }
}
