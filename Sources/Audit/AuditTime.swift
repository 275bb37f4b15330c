import Transport

/// A UTC instant with microsecond precision, written as RFC 3339 `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
///
/// Formatting and parsing are done here rather than with Foundation's formatters: they are
/// exact (no floating point), allocation-light and safe from any thread.
public struct AuditTimestamp: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Microseconds since 1970-01-01T00:00:00Z.
    public let microsSinceEpoch: Int64

    /// Years 0001–9999 are what the four-digit format can express.
    static let minMicros: Int64 = -62_135_596_800_000_000
    static let maxMicros: Int64 = 253_402_300_799_999_999

    public init(microsSinceEpoch: Int64) {
        self.microsSinceEpoch = min(max(microsSinceEpoch, Self.minMicros), Self.maxMicros)
    }

    /// The real-time clock (CLOCK_REALTIME).
    public static func now() -> AuditTimestamp {
        AuditTimestamp(microsSinceEpoch: SystemClock.realtimeMicroseconds())
    }

    public static func < (a: AuditTimestamp, b: AuditTimestamp) -> Bool { a.microsSinceEpoch < b.microsSinceEpoch }

    public var description: String { rfc3339 }

    /// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always 27 characters.
    public var rfc3339: String {
        var out = [UInt8]()
        out.reserveCapacity(27)
        appendRFC3339(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends `rfc3339`'s bytes: records are encoded straight into their line buffer.
    func appendRFC3339(to out: inout [UInt8]) {
        let (days, micros) = floorDivMod(microsSinceEpoch, 86_400_000_000)
        let (y, m, d) = Self.civil(fromDays: days)
        let secs = micros / 1_000_000
        let frac = micros % 1_000_000
        // Fixed-width fields written in place (the year is 1...9999, every field non-negative).
        func put(_ v: Int64, _ width: Int) {
            let start = out.count
            for _ in 0..<width { out.append(0x30) }
            var x = v
            var i = start + width - 1
            while i >= start {
                out[i] = 0x30 + UInt8(x % 10)
                x /= 10
                i -= 1
            }
        }
        put(y, 4); out.append(0x2d); put(m, 2); out.append(0x2d); put(d, 2); out.append(0x54)
        put(secs / 3600, 2); out.append(0x3a); put(secs / 60 % 60, 2); out.append(0x3a); put(secs % 60, 2)
        out.append(0x2e); put(frac, 6); out.append(0x5a)
    }

    /// Parses the strict form written in records (exactly `YYYY-MM-DDTHH:MM:SS.ffffffZ`).
    public init?(recordText text: String) {
        let u = Array(text.utf8)
        guard u.count == 27, u[26] == 0x5a, u[19] == 0x2e else { return nil }
        self.init(rfc3339: text)
    }

    /// Parses RFC 3339: `YYYY-MM-DD(T| )HH:MM:SS[.fraction](Z|±HH:MM)`; the fraction keeps six
    /// digits (more are truncated). Lowercase `t`/`z` are accepted as RFC 3339 allows.
    public init?(rfc3339 text: String) {
        let u = Array(text.utf8)
        guard u.count >= 20, u.count <= 64 else { return nil }
        func num(_ from: Int, _ len: Int) -> Int64? {
            guard from + len <= u.count else { return nil }
            var v: Int64 = 0
            for c in u[from..<(from + len)] {
                guard c >= 0x30 && c <= 0x39 else { return nil }
                v = v * 10 + Int64(c - 0x30)
            }
            return v
        }
        guard let y = num(0, 4), u[4] == 0x2d, let mo = num(5, 2), u[7] == 0x2d, let d = num(8, 2),
              u[10] == 0x54 || u[10] == 0x74 || u[10] == 0x20,
              let h = num(11, 2), u[13] == 0x3a, let mi = num(14, 2), u[16] == 0x3a, let s = num(17, 2)
        else { return nil }
        guard y >= 1, (1...12).contains(mo), d >= 1, d <= Self.daysIn(month: mo, year: y), h <= 23, mi <= 59, s <= 59
        else { return nil }
        var i = 19
        var frac: Int64 = 0
        if i < u.count, u[i] == 0x2e {
            i += 1
            var digits = 0
            while i < u.count, u[i] >= 0x30, u[i] <= 0x39 {
                if digits < 6 { frac = frac * 10 + Int64(u[i] - 0x30) }
                digits += 1
                i += 1
            }
            guard digits >= 1 else { return nil }
            for _ in digits..<max(digits, 6) { frac *= 10 }
        }
        guard i < u.count else { return nil }
        var offsetSeconds: Int64 = 0
        switch u[i] {
        case 0x5a, 0x7a:
            i += 1
        case 0x2b, 0x2d:
            guard let oh = num(i + 1, 2), u.count > i + 3, u[i + 3] == 0x3a, let om = num(i + 4, 2), oh <= 23, om <= 59
            else { return nil }
            offsetSeconds = (oh * 3600 + om * 60) * (u[i] == 0x2d ? -1 : 1)
            i += 6
        default:
            return nil
        }
        guard i == u.count else { return nil }
        let days = Self.days(fromCivil: y, mo, d)
        let seconds = days * 86_400 + h * 3600 + mi * 60 + s - offsetSeconds
        self.init(microsSinceEpoch: seconds * 1_000_000 + frac)
    }

    private static func daysIn(month m: Int64, year y: Int64) -> Int64 {
        switch m {
        case 2: return (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    // Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian).
    static func days(fromCivil y0: Int64, _ m: Int64, _ d: Int64) -> Int64 {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(fromDays z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }
}

@inline(__always)
private func floorDivMod(_ a: Int64, _ b: Int64) -> (Int64, Int64) {
    var q = a / b
    var r = a % b
    if r < 0 { q -= 1; r += b }
    return (q, r)
}

/// Parses an operator's time bound: RFC 3339, or a duration before `now` such as `90s`, `10m`,
/// `2h`, `7d` (integer and unit, units s/m/h/d).
public func parseAuditTimeBound(_ text: String, now: AuditTimestamp) throws(AuditError) -> AuditTimestamp {
    if let t = AuditTimestamp(rfc3339: text) { return t }
    let u = Array(text.utf8)
    guard u.count >= 2, u.count <= 12, let unit = u.last else {
        throw AuditError(.invalidArgument, "time must be RFC 3339 (2026-11-25T17:23:46Z) or relative (10m, 2h, 7d)")
    }
    let scale: Int64
    switch unit {
    case 0x73: scale = 1
    case 0x6d: scale = 60
    case 0x68: scale = 3600
    case 0x64: scale = 86_400
    default: throw AuditError(.invalidArgument, "relative time unit must be s, m, h or d")
    }
    var n: Int64 = 0
    for c in u.dropLast() {
        guard c >= 0x30, c <= 0x39 else { throw AuditError(.invalidArgument, "relative time must be digits then a unit") }
        n = n * 10 + Int64(c - 0x30)
    }
    guard n <= 100 * 365 * 86_400 / scale else { throw AuditError(.invalidArgument, "relative time too large") }
    return AuditTimestamp(microsSinceEpoch: now.microsSinceEpoch - n * scale * 1_000_000)
}
