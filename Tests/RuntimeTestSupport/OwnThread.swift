import Foundation
import Synchronization
import Testing

/// Runs each test it is applied to on a thread of its own, at most `OwnThreadTrait.limit` at a
/// time (a suite trait applies to every test inside it).
///
/// Why: Swift Testing runs every test, synchronous ones included, on the Swift concurrency pool,
/// which has one thread per core (two on our machines). A test that blocks (waits for a child
/// process, polls a socket, sleeps between probes) holds one of them for seconds, and two such
/// tests side by side stall every other test in the process: the runtime's 200 ms deadlines then
/// fire after 10 s. So every suite that blocks carries `.ownThread`, and the pool stays free for
/// the tests that only await.
public struct OwnThreadTrait: SuiteTrait, TestTrait, TestScoping {
    /// Blocking tests running at once, across every suite with the trait: enough to overlap one
    /// test's waiting with another's work, few enough that the spawned processes' deadlines hold
    /// on two cores.
    public static let limit = 2

    private static let slots = Slots(limit)

    public var isRecursive: Bool { true }

    public func scopeProvider(for test: Test, testCase: Test.Case?) -> Self? {
        testCase == nil ? nil : self  // each test case on its own thread, not the suite as a whole
    }

    public func provideScope(for test: Test, testCase: Test.Case?,
                             performing function: @Sendable () async throws -> Void) async throws {
        await Self.slots.acquire()
        let executor = ThreadExecutor(name: test.name)
        defer {
            executor.stop()
            Self.slots.release()
        }
        try await withTaskExecutorPreference(executor) { try await function() }
    }
}

extension Trait where Self == OwnThreadTrait {
    /// The test, or every test of the suite, runs on a thread of its own (see `OwnThreadTrait`).
    public static var ownThread: Self { Self() }
}

/// A counting semaphore whose waiters suspend instead of blocking a thread.
private final class Slots: Sendable {
    private struct State {
        var free: Int
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    private let state: Mutex<State>

    init(_ count: Int) { state = Mutex(State(free: count)) }

    func acquire() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { s in
                guard s.free > 0 else {
                    s.waiters.append(waiter)
                    return false
                }
                s.free -= 1
                return true
            }
            if granted { waiter.resume() }
        }
    }

    func release() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.waiters.isEmpty {
                s.free += 1
                return nil
            }
            return s.waiters.removeFirst()
        }
        next?.resume()
    }
}

/// A task executor with one thread. Jobs that arrive after `stop()` (an unstructured task the
/// test started and left running) go to the global executor instead of being lost.
private final class ThreadExecutor: TaskExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopped = false

    init(name: String) {
        let thread = Thread { [self] in run() }
        thread.name = "test: \(name.prefix(40))"
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        guard !stopped else {
            condition.unlock()
            globalConcurrentExecutor.enqueue(ExecutorJob(job))
            return
        }
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    func stop() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopped { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
