import Foundation
import Transport

/// Monotonic nanoseconds.
@inline(__always)
func nowNanos() -> UInt64 { SystemClock.monotonicNanoseconds() }

/// Summary statistics of a set of samples (nanoseconds or any unit).
struct Samples {
    private(set) var values: [Double] = []

    mutating func add(_ v: Double) { values.append(v) }

    var sorted: [Double] { values.sorted() }

    func percentile(_ p: Double) -> Double {
        let s = sorted
        guard !s.isEmpty else { return .nan }
        let rank = min(s.count - 1, max(0, Int((p / 100 * Double(s.count - 1)).rounded())))
        return s[rank]
    }

    var median: Double { percentile(50) }
}

/// Times `body` over `iterations` calls, `repetitions` times; returns the median nanoseconds per call.
/// Medians of repeated runs damp the noise of a shared machine.
func medianNanosPerCall(iterations: Int, repetitions: Int = 5, _ body: () throws -> Void) rethrows -> Double {
    var runs = Samples()
    try body()  // warm-up
    for _ in 0..<repetitions {
        let t0 = nowNanos()
        for _ in 0..<iterations { try body() }
        runs.add(Double(nowNanos() - t0) / Double(iterations))
    }
    return runs.median
}

/// Resident set size of a process in bytes (VmRSS), or of this process when `pid` is nil.
func residentBytes(pid: Int32? = nil, field: String = "VmRSS") -> Int? {
    let path = pid.map { "/proc/\($0)/status" } ?? "/proc/self/status"
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
        let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        if parts.count >= 2, let kib = Int(parts[1]) { return kib * 1024 }
    }
    return nil
}
