import Audit
import Dispatch
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import Transport

/// Introductions per second through one server with the audit trail on (default settings: a
/// signed checkpoint every 1000 records or 60 s, fsync at checkpoints, the state file) against
/// the same server with it off, measured in one run: five rounds of the same workload, the
/// order within a round alternating (off-on, on-off, …) so neither side always runs first on a
/// warmer or quieter machine, best of five each.
enum AuditBench {
    static func figure(count: Int, window: Int, directory: String, say: (String) -> Void) throws -> BenchFigure {
        var off: [Double] = [], on: [Double] = []
        let rounds = 5
        for round in 1...rounds {
            let offFirst = round % 2 == 1
            say("audit: round \(round)/\(rounds), \(count) introductions with the audit trail \(offFirst ? "off, then on" : "on, then off")")
            for audit in offFirst ? [false, true] : [true, false] {
                let r = try rate(count: count, window: window, directory: directory, audit: audit)
                if audit { on.append(r) } else { off.append(r) }
            }
        }
        return BenchFigure(group: "audit", name: "introductions with the audit trail on", unit: "intros/s", value: on.max()!,
                           baselineName: "audit trail off", baseline: off.max()!, direction: .higherIsBetter, target: 0.95)
    }

    /// The introductions bench's server (same workload), with the audit trail on or off.
    static func rate(count: Int, window: Int, directory: String, audit: Bool) throws -> Double {
        let logPath = (directory as NSString).appendingPathComponent("bench-audit.jsonl")
        for p in [logPath, (directory as NSString).appendingPathComponent(".bench-audit.jsonl.state")] { try? FileSystem.removeIfPresent(p) }
        return try IntroductionBench.ours(count: count, window: window, directory: directory, auditLog: audit ? logPath : nil)
    }
}
