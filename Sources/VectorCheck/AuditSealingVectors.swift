import Audit
import Identity
import SodiumCrypto

/// `ocapn-uds/audit-sealing/v1` (Vectors/audit-sealing.md): the forward-secure MAC chain's key
/// evolution, key id, epochs and seals, and whole sealed logs with the verifier's verdict.
public enum AuditSealingVectors: FormatVectorKind {
    public static let name = "ocapn-uds/audit-sealing/v1"
    public static var format: String { name }

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        VectorRunner.eachCase(of: document) { name, c in
            switch try c.string("kind") {
            case "evolve":
                var k = SecretBytes(copying: try c.hex("k0"))
                guard let keys = c["keys"] as? [String] else { throw VectorDataError("missing keys") }
                for (i, want) in keys.enumerated() {
                    k = AuditSealing.evolve(k)
                    let got = k.withUnsafeBytes { Hex.encode(Array($0)) }
                    if got != want { return .failed(name, "k\(i + 1) is \(got), expected \(want)") }
                }
                return .passed(name)
            case "key-id":
                let id = AuditSealing.keyID(k0: SecretBytes(copying: try c.hex("k0")), startMicros: try c.int("start_us"),
                                            intervalMicros: try c.int("interval_us"))
                return .expect(name, id.hex, try c.string("id"), "key id")
            case "epoch":
                let e = AuditSealing.epoch(of: AuditTimestamp(microsSinceEpoch: try c.int("time_us")),
                                           startMicros: try c.int("start_us"), intervalMicros: try c.int("interval_us"))
                return .expect(name, Int64(e), try c.int("epoch"), "epoch")
            case "seal":
                let line = Array(try c.string("line").utf8)
                let record: AuditRecord
                do { record = try AuditRecord.decode(line[...]) } catch { return .failed(name, "line does not decode: \(error)") }
                let sealed = AuditSealing.sealContext + record.sealedMessage()
                if Hex.encode(sealed) != (try c.string("sealed_bytes_hex")) { return .failed(name, "sealed bytes differ") }
                let seal = AuditSealing.mac(key: SecretBytes(copying: try c.hex("epoch_key")), message: record.sealedMessage())
                return .expect(name, seal.hex, record.log?.seal?.hex ?? "-", "seal")
            case "log":
                let key: AuditVerificationKey
                do { key = try AuditVerificationKey(text: try c.string("verification_key")) } catch { throw VectorDataError("\(error)") }
                guard let lines = c["lines"] as? [String] else { throw VectorDataError("missing lines") }
                var v = AuditVerifier(options: AuditVerifyOptions(verificationKey: key))
                v.beginFile(name)
                for (i, l) in lines.enumerated() { v.line(AuditRawLine(number: i + 1, bytes: Array(l.utf8), complete: true)) }
                let report = v.finish()
                if report.status.rawValue != (try c.string("status")) {
                    return .failed(name, "status \(report.status.rawValue), expected \(try c.string("status")): \(report.findings)")
                }
                if let finding = c["finding"] as? String, report.firstBreak?.code.rawValue != finding {
                    return .failed(name, "first break \(report.firstBreak?.code.rawValue ?? "none"), expected \(finding)")
                }
                return .passed(name)
            case let other:
                return .skipped(name, "unknown kind \(other)")
            }
        }
    }
}

extension Dictionary where Key == String, Value == Any {
    func int(_ key: String) throws -> Int64 {
        if let v = self[key] as? Int64 { return v }
        if let v = self[key] as? Int { return Int64(v) }
        if let v = self[key] as? Double, v == v.rounded(), abs(v) < 9.0e15 { return Int64(v) }
        throw VectorDataError("missing integer field \"\(key)\"")
    }
}
