import Audit
import Identity
import Synchronization

/// Holds a registration with one introduction server for as long as the netlayer runs: connects,
/// registers, and after every failure (unreachable, refused, bad server signature, pinned key
/// mismatch, registration lost) retries after the `ReconnectPolicy`'s backoff. One server's
/// failures never affect the others. Every failure is logged (notice; a contested server at
/// warning) and audited by the netlayer. Made by `PeerNetlayer.keepServer(path:expectedKey:)`.
public final class ServerKeeper: Sendable {
    /// What happened to the server, in order, for callers that report it (the `peer` command).
    public enum Event: Sendable {
        /// Registered (again); the handle completes when this registration ends.
        case registered(ServerHandle)
        /// An attempt failed, or a registration ended; the next attempt follows after
        /// `decision.delay`.
        case failed(PeerError, kind: ServerFailureKind, decision: RetryDecision)
        /// Registrations were lost or refused `losses` times in a row: someone else is
        /// registering our key there (issue #11 item 3), or the server keeps refusing us.
        case contested(losses: Int)
    }

    public let path: String
    public let expectedKey: PublicIdentity?
    /// Events, newest kept when nobody reads (bounded).
    public let events: AsyncStream<Event>

    private struct State {
        var first: Result<ServerHandle, PeerError>?
        var firstWaiters: [CheckedContinuation<Result<ServerHandle, PeerError>, Never>] = []
        var current: ServerHandle?
        var task: Task<Void, Never>?
        var stopped = false
    }
    private let state = Mutex(State())
    private let continuation: AsyncStream<Event>.Continuation

    init(path: String, expectedKey: PublicIdentity?) {
        self.path = path
        self.expectedKey = expectedKey
        (events, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(64))
    }

    /// The outcome of the first attempt: its handle, or the error it failed with.
    public func firstOutcome() async -> Result<ServerHandle, PeerError> {
        await withCheckedContinuation { (c: CheckedContinuation<Result<ServerHandle, PeerError>, Never>) in
            let ready = state.withLock { s -> Result<ServerHandle, PeerError>? in
                if let first = s.first { return first }
                s.firstWaiters.append(c)
                return nil
            }
            if let ready { c.resume(returning: ready) }
        }
    }

    /// The live registration, if any.
    public var current: ServerHandle? {
        state.withLock { s in s.current.flatMap { $0.isDisconnected ? nil : $0 } }
    }

    /// Stops retrying (a registration in place stays until the netlayer shuts down).
    public func stop() {
        let task = state.withLock { s -> Task<Void, Never>? in
            s.stopped = true
            return s.task
        }
        task?.cancel()
        finishFirst(.failure(PeerError(.netlayerClosed, "stopped")))
        continuation.finish()
    }

    var isStopped: Bool { state.withLock { $0.stopped } }

    func attach(_ task: Task<Void, Never>) {
        let stopped = state.withLock { s -> Bool in
            s.task = task
            return s.stopped
        }
        if stopped { task.cancel() }
    }

    func registered(_ handle: ServerHandle) {
        state.withLock { $0.current = handle }
        finishFirst(.success(handle))
        continuation.yield(.registered(handle))
    }

    func failed(_ error: PeerError, kind: ServerFailureKind, decision: RetryDecision) {
        finishFirst(.failure(error))
        continuation.yield(.failed(error, kind: kind, decision: decision))
        if decision.becameContested { continuation.yield(.contested(losses: decision.consecutiveLosses)) }
    }

    func ended() {
        finishFirst(.failure(PeerError(.netlayerClosed, "the netlayer was shut down")))
        continuation.finish()
    }

    private func finishFirst(_ outcome: Result<ServerHandle, PeerError>) {
        let waiters = state.withLock { s -> [CheckedContinuation<Result<ServerHandle, PeerError>, Never>] in
            guard s.first == nil else { return [] }
            s.first = outcome
            defer { s.firstWaiters = [] }
            return s.firstWaiters
        }
        for w in waiters { w.resume(returning: outcome) }
    }

    /// How a failed attempt counts for the retry state.
    static func kind(ofAttemptFailure error: PeerError) -> ServerFailureKind {
        switch error.code {
        case .netlayer(.serverUnreachable): return .unreachable
        case .netlayer(.serverDisconnected): return .refused
        default: return .rejectedServer  // registrationFailed (signature, pinned key), registrationTimeout
        }
    }
}
