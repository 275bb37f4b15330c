#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Synchronization

/// An event that happens at most once, from any thread; any number of tasks wait for it.
public final class OneShot: Sendable {
    private let state = Mutex<(fired: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    public init() {}

    /// Fires the event and resumes every waiter. Later calls do nothing.
    public func fire() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            guard !s.fired else { return [] }
            s.fired = true
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    public var fired: Bool { state.withLock { $0.fired } }

    /// Returns once the event has fired (at once if it already has).
    public func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.fired { return true }
                s.waiters.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }
}

/// Signal dispositions of the process, and signals to other processes.
public enum ProcessSignals {
    /// The signals this package sends to the processes it starts.
    public enum Signal: Sendable {
        case interrupt, terminate, kill

        var number: Int32 {
            switch self {
            case .interrupt: SIGINT
            case .terminate: SIGTERM
            case .kill: SIGKILL
            }
        }
    }

    /// `kill(2)`: sends `signal` to process `pid` (ESRCH, the process already gone, is an error
    /// the caller may ignore).
    public static func send(_ signal: Signal, to pid: Int32) throws(TransportError) {
        _ = try systemCallNonBlocking("kill") { Glibc.kill(pid, signal.number) }
    }

    /// A peer closing its end must never kill the process: writes then fail with EPIPE instead
    /// of raising SIGPIPE (sends on sockets use MSG_NOSIGNAL as well).
    public static func ignoreBrokenPipe() {
        _ = signal(SIGPIPE, SIG_IGN)
    }
}

/// SIGINT and SIGTERM turned from process-killing signals into events: `received` fires on the
/// first, and `handler` (if any) runs on `queue` for every one, with the signal's number.
///
/// `@unchecked Sendable`: `sources` is immutable after init and dispatch sources are thread-safe.
public final class TerminationSignals: @unchecked Sendable {
    /// Fires on the first SIGINT or SIGTERM (or when the owner fires it to stop waiting).
    public let received = OneShot()
    private let sources: [DispatchSourceSignal]

    public init(queue: DispatchQueue = .global(), handler: (@Sendable (_ signal: Int32) -> Void)? = nil) {
        let received = self.received
        let deliver: @Sendable (Int32) -> Void = { number in
            received.fire()
            handler?(number)
        }
        // A process started with these signals blocked (its parent's thread blocked them, as
        // libdispatch's workers do) may already hold one pending; SIG_IGN below would discard
        // it (POSIX), and the stop it asked for would be lost. Noted here, delivered below.
        var pending = sigset_t()
        sigpending(&pending)
        let alreadyPending = [SIGINT, SIGTERM].filter { sigismember(&pending, $0) == 1 }
        sources = [SIGINT, SIGTERM].map { number in
            _ = signal(number, SIG_IGN)  // delivered through the dispatch source instead
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { deliver(number) }
            source.activate()
            return source
        }
        if let number = alreadyPending.first { queue.async { deliver(number) } }
    }

    /// Stops listening (the dispositions stay ignored, so a late signal does not kill the process).
    public func cancel() { for source in sources { source.cancel() } }

    /// The signal's name, for a log line ("SIGTERM").
    public static func name(of number: Int32) -> String {
        switch number {
        case SIGINT: "SIGINT"
        case SIGTERM: "SIGTERM"
        default: "signal \(number)"
        }
    }
}
