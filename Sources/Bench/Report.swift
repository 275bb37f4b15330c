import Foundation

/// One measured figure, next to the baseline it is judged against.
public struct BenchFigure: Sendable {
    public enum Direction: String, Sendable {
        /// Smaller is better (latency): ratio = value / baseline, target is a maximum.
        case lowerIsBetter = "lower"
        /// Larger is better (rate, throughput): ratio = value / baseline, target is a minimum.
        case higherIsBetter = "higher"
    }

    public let group: String
    public let name: String
    public let unit: String
    public let value: Double
    public let baselineName: String?
    public let baseline: Double?
    public let direction: Direction
    /// Required ratio (maximum for lowerIsBetter, minimum for higherIsBetter), when the issue sets one.
    public let target: Double?

    public init(group: String, name: String, unit: String, value: Double, baselineName: String? = nil,
                baseline: Double? = nil, direction: Direction = .lowerIsBetter, target: Double? = nil) {
        self.group = group
        self.name = name
        self.unit = unit
        self.value = value
        self.baselineName = baselineName
        self.baseline = baseline
        self.direction = direction
        self.target = target
    }

    public var ratio: Double? {
        guard let baseline, baseline > 0 else { return nil }
        return value / baseline
    }

    /// nil when the figure has no target.
    public var meetsTarget: Bool? {
        guard let target else { return nil }
        if let ratio {
            return direction == .lowerIsBetter ? ratio <= target : ratio >= target
        }
        return direction == .lowerIsBetter ? value <= target : value >= target
    }
}

/// Renders figures as a table a person reads, or as JSON.
public enum BenchReport {
    static func format(_ v: Double) -> String {
        if v.isNaN { return "n/a" }
        let a = abs(v)
        if a >= 100_000 { return String(format: "%.0f", v) }
        if a >= 100 { return String(format: "%.1f", v) }
        if a >= 1 { return String(format: "%.2f", v) }
        return String(format: "%.3f", v)
    }

    public static func table(_ figures: [BenchFigure]) -> String {
        var rows: [[String]] = [["figure", "value", "unit", "baseline", "baseline value", "ratio", "target", "ok"]]
        for f in figures {
            let target: String
            if let t = f.target { target = (f.direction == .lowerIsBetter ? "≤ " : "≥ ") + format(t) + (f.ratio == nil ? "" : "×") } else { target = "" }
            let ok: String
            switch f.meetsTarget { case true?: ok = "yes"; case false?: ok = "NO"; case nil: ok = "" }
            rows.append([
                "\(f.group): \(f.name)", format(f.value), f.unit, f.baselineName ?? "",
                f.baseline.map(format) ?? "", f.ratio.map { format($0) + "×" } ?? "", target, ok,
            ])
        }
        var widths = [Int](repeating: 0, count: rows[0].count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        var out = ""
        for (n, r) in rows.enumerated() {
            out += r.enumerated().map { i, c in c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces) + "\n"
            if n == 0 { out += widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") + "\n" }
        }
        return out
    }

    public static func json(_ figures: [BenchFigure], machine: [String: String]) -> String {
        var objects: [[String: Any]] = []
        for f in figures {
            var o: [String: Any] = ["group": f.group, "name": f.name, "unit": f.unit, "value": f.value,
                                    "direction": f.direction.rawValue]
            if let b = f.baselineName { o["baseline_name"] = b }
            if let b = f.baseline { o["baseline"] = b }
            if let r = f.ratio { o["ratio"] = r }
            if let t = f.target { o["target"] = t }
            if let m = f.meetsTarget { o["meets_target"] = m }
            objects.append(o)
        }
        let doc: [String: Any] = ["format": "ocapn-uds/bench/v1", "machine": machine, "figures": objects]
        let data = (try? JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// What machine the figures came from.
    public static func machineDescription() -> [String: String] {
        var info: [String: String] = [:]
        if let cpu = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
           let line = cpu.split(separator: "\n").first(where: { $0.hasPrefix("model name") }) {
            info["cpu"] = line.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) }
        }
        info["cores"] = String(ProcessInfo.processInfo.activeProcessorCount)
        info["memory_gib"] = String(ProcessInfo.processInfo.physicalMemory >> 30)
        info["os"] = ProcessInfo.processInfo.operatingSystemVersionString
        let iso = ISO8601DateFormatter()
        info["date"] = iso.string(from: Date())
        return info
    }
}
