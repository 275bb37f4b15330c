import Foundation
import Identity
import TestSupport
import Testing
@testable import Audit

@Suite struct QueryTests {
    private func records(_ events: [AuditEvent]) -> [AuditLocatedRecord] {
        var chain = AuditChain(writer: TestKey().identity, signer: nil)
        let clock = StepClock()
        var out: [AuditLocatedRecord] = []
        let first = chain.opened(cause: .start, at: clock.read())
        out.append(AuditLocatedRecord(location: AuditLocation(file: "m", line: 1), record: try! AuditRecord.decode(first[...]), line: first))
        for (i, e) in events.enumerated() {
            let l = chain.append(e, at: clock.read())
            out.append(AuditLocatedRecord(location: AuditLocation(file: "m", line: i + 2), record: try! AuditRecord.decode(l[...]), line: l))
        }
        return out
    }

    @Test func theSummaryCountsEventsOutcomesReasonsAndPeers() throws {
        let local = peer(), a = peer(), b = peer()
        let events = [
            AuditEvent(.handshakeStarted, attempt: .init(rawValue: 1), local: local, expectedPeer: a),
            AuditEvent(.handshakeSucceeded, attempt: .init(rawValue: 1), local: local, expectedPeer: a, provedPeer: a),
            AuditEvent(.handshakeStarted, attempt: .init(rawValue: 2), local: local, expectedPeer: b),
            AuditEvent(.handshakeFailed, reason: .named("badSignature"), attempt: .init(rawValue: 2), local: local, expectedPeer: b),
            AuditEvent(.handshakeFailed, reason: .named("badSignature"), attempt: .init(rawValue: 3), local: local, expectedPeer: b),
            AuditEvent(.handshakeFailed, reason: .named("timeout"), attempt: .init(rawValue: 3), local: local, expectedPeer: b),
            AuditEvent(.handshakeStarted, attempt: .init(rawValue: 4), local: local, expectedPeer: a),
            AuditEvent(.channelClosed, local: local, provedPeer: a, clean: true),
        ]
        var s = AuditSummary()
        for r in records(events) { s.add(r) }
        #expect(s.records == 9)
        #expect(s.count(.handshakeStarted) == 3)
        #expect(s.count(.handshakeFailed, .failure) == 3)
        #expect(s.count(.handshakeSucceeded, .success) == 1)
        #expect(s.count(.logOpened, .info) == 1)
        #expect(s.failuresByReason == [.named("badSignature"): 2, .named("timeout"): 1])
        #expect(s.failureCount == 3 && s.failures.count == 3)
        #expect(s.topPeers(5).map(\.peer) == [a, b].sorted())
        #expect(s.topPeers(5).map(\.count) == [4, 4])
        #expect(!s.topPeers(5).contains { $0.peer == local })
        #expect(s.unterminatedAttempts == 1)
        #expect(s.repeatedTerminals == 1)
        let text = s.render()
        #expect(text.contains("records: 9   failures: 3"))
        #expect(text.contains("badSignature"))
        #expect(text.contains("(m:5)"))
        let json = s.renderJSON()
        #expect(json.contains("\"failures_by_reason\":{\"badSignature\":2,\"timeout\":1}"))
        #expect(try JSONSerialization.jsonObject(with: Data(json.utf8)) is [String: Any])
    }

    @Test func filtersSelectByPeerTimeEventAndFailure() {
        let a = peer(), b = peer()
        let rs = records([
            AuditEvent(.handshakeSucceeded, provedPeer: a),
            AuditEvent(.handshakeFailed, reason: .named("timeout"), expectedPeer: b),
            AuditEvent(.introductionForwarded, from: a, to: b),
            AuditEvent(.registrationRefused, reason: .named("uidNotAllowed")),
        ])
        func run(_ q: AuditQuery) -> [Int] { rs.filter { q.matches($0.record) }.map(\.location.line) }
        #expect(run(AuditQuery()) == [2, 3, 4, 5])
        #expect(run(AuditQuery(includeBookkeeping: true)) == [1, 2, 3, 4, 5])
        #expect(run(AuditQuery(peer: a)) == [2, 4])
        #expect(run(AuditQuery(peer: b)) == [3, 4])
        #expect(run(AuditQuery(events: ["handshake"])) == [2, 3])
        #expect(run(AuditQuery(events: ["handshake.failed", "registration"])) == [3, 5])
        #expect(run(AuditQuery(failuresOnly: true)) == [3, 5])
        let t3 = rs[2].record.timestamp, t4 = rs[3].record.timestamp
        #expect(run(AuditQuery(since: t3)) == [3, 4, 5])
        #expect(run(AuditQuery(since: t3, until: t4)) == [3])
        #expect(AuditQuery.isKnownEventFilter("handshake"))
        #expect(AuditQuery.isKnownEventFilter("legacy.admitted"))
        #expect(!AuditQuery.isKnownEventFilter("hand"))
    }
}

@Suite struct SecretScanTests {
    @Test func noRecordEverContainsTheWritersKeyMaterial() throws {
        let dir = TempDir(); defer { dir.cleanup() }
        let key = TestKey()
        let path = dir.file("audit.jsonl")
        let sink = try AuditFileSink(AuditFileConfiguration(path: path, writer: key.identity, signer: key.signer,
                                                            checkpoints: AuditCheckpointPolicy(everyRecords: 3), fsync: .never))
        for e in sampleEvents(local: AuditPeerID(key.identity), remote: peer(), server: peer()) { sink.record(e) }
        sink.close()
        let scanner = AuditSecretScanner(secrets: [key.secretKey, key.seed])
        #expect(try scanner.scan(files: [path]).isEmpty)
    }

    @Test func theScannerFindsASecretInEveryEncodingAndAlignment() {
        let secret = (0..<32).map { UInt8($0 * 7 + 3) }
        let scanner = AuditSecretScanner(secrets: [secret])
        let b64 = Data(secret).base64EncodedString()
        #expect(scanner.scan(text: "{\"x\":\"\(b64)\"}").contains { $0.encoding == "base64" })
        let shifted = Data([9] + secret).base64EncodedString()
        #expect(scanner.scan(text: shifted).contains { $0.encoding == "base64" })
        let url = Data([1, 2] + secret).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
        #expect(!scanner.scan(text: url).isEmpty)
        let hex = secret.map { String(format: "%02X", $0) }.joined()
        #expect(scanner.scan(text: hex).contains { $0.encoding == "HEX" })
        #expect(scanner.scan(text: String(hex.lowercased().prefix(40))).contains { $0.encoding == "hex-window" })
        #expect(scanner.scan(text: "prefix" + Base32.encode([7, 7, 7] + secret)).contains { $0.encoding == "base32" })
        #expect(scanner.scan(secret).contains { $0.encoding == "raw" })
        #expect(scanner.scan(text: Data((0..<32).map { UInt8($0) }).base64EncodedString()).isEmpty)
    }
}
