#if canImport(Glibc)
import Glibc
#endif

/// The kernel's clocks, read with `clock_gettime(2)` (which cannot fail for these clocks).
public enum SystemClock {
    /// CLOCK_REALTIME in microseconds since 1970-01-01T00:00:00Z (wall time: may jump).
    public static func realtimeMicroseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
    }

    /// CLOCK_MONOTONIC in nanoseconds since an arbitrary start (for intervals).
    public static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
