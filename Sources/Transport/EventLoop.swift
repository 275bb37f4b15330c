#if canImport(Glibc)
import Glibc
#endif
internal import CFDShim
import Synchronization

/// Directions a descriptor's owner wants to hear about.
public struct Interest: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let readable = Interest(rawValue: 1)
    public static let writable = Interest(rawValue: 2)
}

/// What the loop saw on a descriptor. `hangUp` and `error` are reported whatever the interest
/// (the kernel always reports them); a read or write then tells the owner what happened.
public struct Readiness: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let readable = Readiness(rawValue: 1)
    public static let writable = Readiness(rawValue: 2)
    public static let hangUp = Readiness(rawValue: 4)
    public static let error = Readiness(rawValue: 8)
}

/// One epoll loop on a thread of its own: the process's I/O engine (docs/DESIGN.md, "Choosing
/// the I/O engine"). Readiness handlers run on the loop thread, so an owner that handles an
/// event there (read, hand the bytes to its sans-IO machine, write) costs no thread hop.
///
/// How a descriptor owner uses it:
/// 1. `register(descriptor, interest:handler:)` once, from any thread; keep the returned
///    `EventRegistration` next to the descriptor (the loop lends the raw number to epoll only
///    inside the registration; it never leaves Transport).
/// 2. `setInterest` whenever what it waits for changes (level-triggered: the handler is called
///    again while the condition holds, so read until would-block or drop the interest).
///    An empty interest disarms the descriptor, hang-ups included, until interest returns.
/// 3. Before closing the descriptor, `unregister()` exactly once (or `unregisterAndClose()`,
///    which does both in that order). Unregistering a descriptor that was already closed traps:
///    its number may belong to another file by then.
///
/// The handler must not block: every descriptor of the loop waits while it runs. It is never
/// called after `unregister()` returns, except for one call already under way on the loop
/// thread when another thread unregisters; owners make a late call harmless by checking their
/// own state (a closed owner ignores it). Work that must run on the loop thread is sent with
/// `execute`, which wakes the loop through an eventfd.
///
/// Timers (`schedule(at:_:)`) live in the loop too: a heap whose earliest deadline is
/// `epoll_wait`'s timeout, so setting one up or cancelling it is a few instructions under the
/// loop's lock, with no thread of its own; the work runs on the loop thread. Another thread
/// whose timer is due before the loop would next look arms the loop's one timerfd (a system
/// call, no wake-up); later deadlines cost nothing.
public final class EventLoop: Sendable, CustomStringConvertible {
    public typealias Handler = @Sendable (Readiness) -> Void

    private enum Phase {
        case running
        case stopping
        case stopped
    }

    private struct State {
        var handlers: [UInt64: Handler] = [:]
        var nextToken: UInt64 = 1
        var tasks: [@Sendable () -> Void] = []
        var wakePending = false
        var phase = Phase.running
        var timers = TimerQueue()
        /// The deadline `epoll_wait` was last told to wake at (nil: none, it sleeps until an
        /// event), and the one the timerfd is armed for. A timer due no earlier than either
        /// needs nothing: the loop looks at its timers again by then.
        var sleepDeadline: ContinuousClock.Instant?
        var armedDeadline: ContinuousClock.Instant?
    }

    /// The loop owns these numbers itself (they are never lent). Other threads use them only
    /// under `descriptorsOpen`, which shutdown clears when it closes them after the thread
    /// joined; the loop thread uses them freely.
    private let epollFD: Int32
    private let wakeFD: Int32
    private let timerFD: Int32
    private let state = Mutex(State())
    /// A lock of its own for the system calls other threads make on the loop's descriptors
    /// (epoll_ctl, the eventfd write, arming the timerfd), so none of them holds up the loop
    /// thread's handler lookups under `state`. Lock order: this one, then `state`.
    private let descriptorsOpen = Mutex(true)
    private let thread = Mutex<pthread_t?>(nil)
    private let loopThread = Atomic<UInt>(0)
    private let joined = Atomic<Bool>(false)
    public let name: String

    /// The token of the eventfd in epoll's data field; descriptors get tokens from 1 up and
    /// never reuse one, so a stale event for an unregistered descriptor finds no handler.
    private static let wakeToken: UInt64 = 0
    private static let timerToken = UInt64.max
    private static let batch = 64

    /// Starts a loop thread. Throws when the kernel refuses epoll, eventfd, timerfd or a thread.
    public init(name: String = "ocapn-uds.event-loop") throws(TransportError) {
        self.name = name
        epollFD = try systemCallNonBlocking("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        do {
            wakeFD = try systemCallNonBlocking("eventfd") { eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK)) }
        } catch {
            Glibc.close(epollFD)
            throw error
        }
        do {
            timerFD = try systemCallNonBlocking("timerfd_create") {
                timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC) | Int32(TFD_NONBLOCK))
            }
        } catch {
            Glibc.close(wakeFD)
            Glibc.close(epollFD)
            throw error
        }
        do {
            for (fd, token) in [(wakeFD, Self.wakeToken), (timerFD, Self.timerToken)] {
                var event = epoll_event()
                event.events = EPOLLIN.rawValue
                event.data.u64 = token
                _ = try systemCallNonBlocking("epoll_ctl") { epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) }
            }
            try startThread()
        } catch {
            Glibc.close(timerFD)
            Glibc.close(wakeFD)
            Glibc.close(epollFD)
            throw error
        }
    }

    deinit {
        // A loop runs until shut down; its thread holds it, so this runs only after shutdown.
        precondition(joined.load(ordering: .acquiring), "EventLoop released while running")
    }

    public var description: String { "EventLoop(\(name))" }

    /// Whether the caller runs on this loop's thread.
    public var inLoopThread: Bool {
        let id = loopThread.load(ordering: .relaxed)
        return id != 0 && pthread_equal(pthread_self(), pthread_t(id)) != 0
    }

    // MARK: registering

    /// Watches `descriptor` for `interest`, calling `handler` on the loop thread. Each
    /// descriptor is registered at most once. Throws `.closed` for a closed descriptor or a
    /// loop that was shut down, and the kernel's error otherwise (ENOMEM, ENOSPC).
    public func register(
        _ descriptor: FileDescriptor, interest: Interest, handler: @escaping Handler
    ) throws(TransportError) -> EventRegistration {
        // The handler goes in first: an event for the token before it would find none.
        let token = try state.withLock { state throws(TransportError) -> UInt64 in
            guard case .running = state.phase else { throw TransportError(.closed, "event loop shut down") }
            let token = state.nextToken
            state.nextToken += 1
            state.handlers[token] = handler
            return token
        }
        do throws(TransportError) {
            guard try control(EPOLL_CTL_ADD, token, descriptor, interest) else {
                throw TransportError(.closed, "event loop shut down")
            }
        } catch {
            let dropped = state.withLock { $0.handlers.removeValue(forKey: token) }
            _ = dropped
            throw error
        }
        return EventRegistration(loop: self, token: token, descriptor: descriptor, interest: interest)
    }

    /// epoll_ctl MOD; false when the loop was shut down (nothing is watched any more).
    func modify(_ token: UInt64, _ descriptor: FileDescriptor, _ interest: Interest) throws(TransportError) -> Bool {
        try control(EPOLL_CTL_MOD, token, descriptor, interest)
    }

    /// epoll_ctl DEL and forgets the handler. The descriptor must still be open.
    func remove(_ token: UInt64, _ descriptor: FileDescriptor) {
        // The handler (and whatever it holds) is released outside the lock.
        let handler = state.withLock { $0.handlers.removeValue(forKey: token) }
        _ = handler
        do throws(TransportError) {
            _ = try control(EPOLL_CTL_DEL, token, descriptor, [])
        } catch {
            preconditionFailure("unregistering \(descriptor) from \(name) failed (\(error)): closed before unregister?")
        }
    }

    /// One epoll_ctl on a descriptor; false, without a call, once the loop's descriptors closed.
    private func control(_ operation: Int32, _ token: UInt64, _ descriptor: FileDescriptor, _ interest: Interest) throws(TransportError) -> Bool {
        try descriptorsOpen.withLock { open throws(TransportError) -> Bool in
            guard open else { return false }
            var event = epoll_event()
            event.events = Self.epollEvents(interest)
            event.data.u64 = token
            try descriptor.with { (fd) throws(TransportError) in
                _ = try systemCallNonBlocking("epoll_ctl") { epoll_ctl(epollFD, operation, fd, &event) }
            }
            return true
        }
    }

    /// Descriptors registered now (tests: a closed owner leaves nothing behind).
    public var registeredCount: Int { state.withLock { $0.handlers.count } }

    // MARK: work on the loop thread

    /// Runs `work` on the loop thread soon (after the events at hand). Returns false, without
    /// running it, once the loop was shut down.
    @discardableResult
    public func execute(_ work: @escaping @Sendable () -> Void) -> Bool {
        let mustWake = state.withLock { state -> Bool? in
            guard case .running = state.phase else { return nil }
            state.tasks.append(work)
            defer { state.wakePending = true }
            return !state.wakePending
        }
        guard let mustWake else { return false }
        if mustWake { wake() }
        return true
    }

    private func wake() {
        descriptorsOpen.withLock { open in
            guard open else { return }
            var one: UInt64 = 1
            // EAGAIN means the counter is already non-zero: the loop will wake anyway.
            _ = try? systemCall("write") { withUnsafeBytes(of: &one) { Glibc.write(wakeFD, $0.baseAddress, 8) } }
        }
    }

    // MARK: timers

    /// Runs `work` once on the loop thread at `deadline` (ContinuousClock; up to about a
    /// millisecond late, never early), after the readiness events at hand. Returns nil, without
    /// scheduling, once the loop was shut down; timers still pending at shutdown never run.
    /// Any thread; from the loop thread, or for a deadline no earlier than the loop's next
    /// look at its timers, it costs no system call.
    public func schedule(
        at deadline: ContinuousClock.Instant, _ work: @escaping @Sendable () -> Void
    ) -> EventLoopTimer? {
        if inLoopThread {
            // The loop recomputes its timeout before it sleeps again.
            guard let id = state.withLock({ state -> UInt64? in
                guard case .running = state.phase else { return nil }
                return state.timers.add(deadline, work)
            }) else { return nil }
            return EventLoopTimer(loop: self, id: id)
        }
        let id = descriptorsOpen.withLock { open -> UInt64? in
            guard open else { return nil }
            let (id, arm) = state.withLock { state -> (UInt64?, Bool) in
                guard case .running = state.phase else { return (nil, false) }
                let id = state.timers.add(deadline, work)
                // The loop looks at its timers again at the earlier of the deadline it sleeps
                // until and the one the timerfd is armed for (or on any event before).
                let nextLook = [state.sleepDeadline, state.armedDeadline].compactMap { $0 }.min()
                guard !state.wakePending, nextLook.map({ deadline < $0 }) ?? true else { return (id, false) }
                state.armedDeadline = deadline
                return (id, true)
            }
            // Armed under `descriptorsOpen`: two threads arming race in the order they decided.
            if arm, !armTimerDescriptor(deadline) {
                // timerfd_settime failed (it does not for a valid descriptor): wake the loop.
                var one: UInt64 = 1
                _ = try? systemCall("write") { withUnsafeBytes(of: &one) { Glibc.write(wakeFD, $0.baseAddress, 8) } }
            }
            return id
        }
        return id.map { EventLoopTimer(loop: self, id: $0) }
    }

    /// Arms the timerfd to fire once at `deadline` (relative: the clocks may differ).
    private func armTimerDescriptor(_ deadline: ContinuousClock.Instant) -> Bool {
        let (seconds, attoseconds) = ContinuousClock.now.duration(to: deadline).components
        var value = timespec(tv_sec: 0, tv_nsec: 1)  // zero would disarm it
        if seconds > 0 || (seconds == 0 && attoseconds >= 1_000_000_000) {
            value = timespec(tv_sec: Int(seconds), tv_nsec: Int(attoseconds / 1_000_000_000))
        }
        var spec = itimerspec(it_interval: timespec(tv_sec: 0, tv_nsec: 0), it_value: value)
        return (try? systemCallNonBlocking("timerfd_settime") { timerfd_settime(timerFD, 0, &spec, nil) }) != nil
    }

    /// `schedule(at: .now + delay, work)`.
    public func schedule(after delay: Duration, _ work: @escaping @Sendable () -> Void) -> EventLoopTimer? {
        schedule(at: .now + delay, work)
    }

    /// Timers scheduled and neither run nor cancelled (tests: an owner that ended leaves none).
    public var pendingTimerCount: Int { state.withLock { $0.timers.count } }

    /// Removes a pending timer; false when it already ran (or is running) or was cancelled.
    func cancelTimer(_ id: UInt64) -> Bool {
        let work = state.withLock { $0.timers.remove(id) }
        // The work (and whatever it holds) is released outside the lock.
        return work != nil
    }

    func timerIsPending(_ id: UInt64) -> Bool { state.withLock { $0.timers.contains(id) } }

    /// Milliseconds until the earliest timer, rounded up (never early); -1 when there is none.
    private func timeoutMilliseconds() -> Int32 {
        let earliest = state.withLock { state -> ContinuousClock.Instant? in
            state.sleepDeadline = state.timers.earliest
            return state.sleepDeadline
        }
        guard let earliest else { return -1 }
        let (seconds, attoseconds) = ContinuousClock.now.duration(to: earliest).components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        guard seconds < Int64(Int32.max / 1000) - 1 else { return Int32.max }
        let millis = seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(millis)
    }

    /// Runs the timers whose deadline passed, earliest first, one at a time: a timer that
    /// cancels another due in the same pass stops it.
    private func runDueTimers() {
        var now: ContinuousClock.Instant?
        while true {
            let work = state.withLock { state -> (@Sendable () -> Void)? in
                guard let earliest = state.timers.earliest else { return nil }
                let current = now ?? .now
                now = current
                guard earliest <= current else { return nil }
                return state.timers.removeFirstDue(now: current)
            }
            guard let work else { return }
            work()
        }
    }

    // MARK: shutting down

    /// Stops the loop thread and waits for it to end, then closes the loop's own descriptors.
    /// Registrations left over are forgotten (their handlers are released and never called
    /// again); their owners still unregister before closing their descriptors, which is then
    /// a no-op. Must not be called on the loop thread. Idempotent.
    public func shutdown() {
        precondition(!inLoopThread, "EventLoop.shutdown() on its own thread would wait for itself")
        let first = state.withLock { state -> Bool in
            guard case .running = state.phase else { return false }
            state.phase = .stopping
            return true
        }
        guard first else {
            while !joined.load(ordering: .acquiring) { sched_yield() }
            return
        }
        wake()
        if let thread = self.thread.withLock({ $0 }) { pthread_join(thread, nil) }
        descriptorsOpen.withLock { open in
            open = false
            Glibc.close(timerFD)
            Glibc.close(wakeFD)
            Glibc.close(epollFD)
        }
        do {
            // Released outside the lock, and before `joined`: a concurrent shutdown() returns
            // only once nothing of the loop's handlers, tasks or timers is held any more.
            let leftovers = state.withLock { state -> ([UInt64: Handler], [@Sendable () -> Void], TimerQueue) in
                state.phase = .stopped
                defer {
                    state.handlers = [:]
                    state.tasks = []
                    state.timers = TimerQueue()
                }
                return (state.handlers, state.tasks, state.timers)
            }
            _ = leftovers
        }
        joined.store(true, ordering: .releasing)
    }

    // MARK: the loop

    /// The asynchronous signals a loop thread never takes. A process-directed SIGINT or SIGTERM
    /// goes to any thread that does not block it; with `TerminationSignals` the disposition is
    /// SIG_IGN and the signal is read elsewhere, so a loop thread taking it would drop it (seen:
    /// an intro-server that ignored the SIGINT sent while it started).
    static let blockedSignals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]

    private func startThread() throws(TransportError) {
        let box = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        // Blocked around the create, so the thread starts with them blocked (the mask is
        // inherited) and no signal can reach it before it could block them itself.
        var blocked = sigset_t()
        var previous = sigset_t()
        sigemptyset(&blocked)
        for number in Self.blockedSignals { sigaddset(&blocked, number) }
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        let result = pthread_create(&thread, nil, { argument in
            let loop = Unmanaged<EventLoop>.fromOpaque(argument!).takeRetainedValue()
            loop.run()
            return nil
        }, box)
        pthread_sigmask(SIG_SETMASK, &previous, nil)
        guard result == 0 else {
            Unmanaged<EventLoop>.fromOpaque(box).release()
            throw TransportError.system("pthread_create", result)
        }
        self.thread.withLock { $0 = thread }
    }

    private func run() {
        loopThread.store(UInt(pthread_self()), ordering: .relaxed)
        _ = cfd_set_thread_name(String(decoding: name.utf8.prefix(15), as: UTF8.self))
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Self.batch)
        defer { events.deallocate() }
        while true {
            let count: Int32
            do throws(TransportError) {
                let timeout = timeoutMilliseconds()
                switch try systemCall("epoll_wait", { epoll_wait(epollFD, events, Int32(Self.batch), timeout) }) {
                case .processed(let n): count = n
                case .wouldBlock: count = 0
                }
            } catch {
                // ENOMEM and the like: nothing a peer causes; try again rather than spin hot.
                usleep(1000)
                continue
            }
            var woken = false
            var timerFired = false
            for i in 0..<Int(count) {
                let event = events[i]
                let token = event.data.u64
                if token == Self.wakeToken {
                    woken = true
                    continue
                }
                if token == Self.timerToken {
                    timerFired = true
                    continue
                }
                guard let handler = state.withLock({ $0.handlers[token] }) else { continue }
                handler(Self.readiness(event.events))
            }
            if woken {
                var value: UInt64 = 0
                _ = try? systemCall("read") { withUnsafeMutableBytes(of: &value) { Glibc.read(wakeFD, $0.baseAddress, 8) } }
                let (tasks, stop) = state.withLock { state -> ([@Sendable () -> Void], Bool) in
                    state.wakePending = false
                    defer { state.tasks = [] }
                    if case .running = state.phase { return (state.tasks, false) }
                    return (state.tasks, true)
                }
                for task in tasks { task() }
                if stop { return }
            }
            if timerFired {
                var expirations: UInt64 = 0
                _ = try? systemCall("read") { withUnsafeMutableBytes(of: &expirations) { Glibc.read(timerFD, $0.baseAddress, 8) } }
                state.withLock { $0.armedDeadline = nil }
            }
            runDueTimers()
        }
    }

    private static func epollEvents(_ interest: Interest) -> UInt32 {
        // No interest: one-shot with no events, so a hang-up is reported once, then the
        // descriptor stays quiet until interest returns (level-triggered HUP would spin).
        guard !interest.isEmpty else { return EPOLLONESHOT.rawValue }
        var events: UInt32 = 0
        if interest.contains(.readable) { events |= EPOLLIN.rawValue }
        if interest.contains(.writable) { events |= EPOLLOUT.rawValue }
        return events
    }

    private static func readiness(_ events: UInt32) -> Readiness {
        var readiness: Readiness = []
        if events & EPOLLIN.rawValue != 0 { readiness.insert(.readable) }
        if events & EPOLLOUT.rawValue != 0 { readiness.insert(.writable) }
        if events & EPOLLHUP.rawValue != 0 { readiness.insert(.hangUp) }
        if events & EPOLLERR.rawValue != 0 { readiness.insert(.error) }
        return readiness
    }
}

/// A descriptor's place in an `EventLoop`: made by `EventLoop.register`, ended by
/// `unregister()` before the descriptor closes. Thread-safe.
public final class EventRegistration: Sendable {
    public let loop: EventLoop
    private let token: UInt64
    private let descriptor: FileDescriptor
    private struct State {
        var interest: Interest
        var registered = true
    }

    private let state: Mutex<State>

    init(loop: EventLoop, token: UInt64, descriptor: FileDescriptor, interest: Interest) {
        self.loop = loop
        self.token = token
        self.descriptor = descriptor
        state = Mutex(State(interest: interest))
    }

    deinit {
        let registered = state.withLock { $0.registered }
        if registered {
            // Like a dropped open FileDescriptor: unregister so release builds stay correct.
            if descriptor.isOpen { loop.remove(token, descriptor) }
            assertionFailure("EventRegistration \(token) of \(descriptor) dropped without unregister()")
        }
    }

    public var isRegistered: Bool { state.withLock { $0.registered } }

    /// The interest set now.
    public var interest: Interest { state.withLock { $0.interest } }

    /// Changes what the handler is called for; a no-op when unchanged or after `unregister()`.
    public func setInterest(_ interest: Interest) throws(TransportError) {
        try state.withLock { state throws(TransportError) in
            guard state.registered, state.interest != interest else { return }
            _ = try loop.modify(token, descriptor, interest)
            state.interest = interest
        }
    }

    /// Removes the descriptor from the loop. Call it exactly once, before closing the
    /// descriptor (later calls do nothing). Traps when the descriptor was closed first.
    public func unregister() {
        state.withLock { state in
            guard state.registered else { return }
            state.registered = false
            loop.remove(token, descriptor)
        }
    }

    /// `unregister()`, then closes the descriptor: the order the loop needs.
    public func unregisterAndClose() {
        unregister()
        descriptor.close()
    }
}

/// A timer of an `EventLoop` (made by `schedule(at:_:)`). Dropping it does not cancel it.
public final class EventLoopTimer: Sendable {
    public let loop: EventLoop
    private let id: UInt64

    init(loop: EventLoop, id: UInt64) {
        self.loop = loop
        self.id = id
    }

    /// Stops the timer if it has not run yet, from any thread, with no system call; true when
    /// it was still pending. On the loop thread that is exact; from another thread a cancel can
    /// meet a run already under way (false), which the owner's own state makes harmless, as for
    /// a late readiness call. Later calls return false.
    @discardableResult
    public func cancel() -> Bool { loop.cancelTimer(id) }

    /// Whether it has neither run (nor started to) nor been cancelled.
    public var isPending: Bool { loop.timerIsPending(id) }
}

/// The loop's timers: a binary min-heap of (deadline, id) over a table of the pending work.
/// A cancelled timer leaves the table at once and its heap entry is skipped when it comes up;
/// the heap is rebuilt when such entries make up most of it, so its size stays within twice the
/// pending timers (plus a small floor).
struct TimerQueue {
    private struct Entry {
        let deadline: ContinuousClock.Instant
        let id: UInt64

        /// Earlier deadline first; the same deadline in the order scheduled.
        func precedes(_ other: Entry) -> Bool {
            deadline < other.deadline || (deadline == other.deadline && id < other.id)
        }
    }

    private var heap: [Entry] = []
    private var work: [UInt64: @Sendable () -> Void] = [:]
    private var nextID: UInt64 = 1

    var count: Int { work.count }

    func contains(_ id: UInt64) -> Bool { work[id] != nil }

    /// The earliest pending deadline.
    var earliest: ContinuousClock.Instant? {
        mutating get {
            dropCancelledHead()
            return heap.first?.deadline
        }
    }

    mutating func add(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () -> Void) -> UInt64 {
        let id = nextID
        nextID += 1
        work[id] = body
        heap.append(Entry(deadline: deadline, id: id))
        siftUp(heap.count - 1)
        return id
    }

    mutating func remove(_ id: UInt64) -> (@Sendable () -> Void)? {
        let body = work.removeValue(forKey: id)
        if body != nil, heap.count > 64, heap.count > 2 * work.count {
            heap.removeAll { self.work[$0.id] == nil }
            for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
        }
        return body
    }

    /// Takes the work of the earliest timer due at `now`, if any.
    mutating func removeFirstDue(now: ContinuousClock.Instant) -> (@Sendable () -> Void)? {
        while let head = heap.first, head.deadline <= now {
            popHead()
            if let body = work.removeValue(forKey: head.id) { return body }
        }
        return nil
    }

    private mutating func dropCancelledHead() {
        while let head = heap.first, work[head.id] == nil { popHead() }
    }

    private mutating func popHead() {
        let last = heap.removeLast()
        guard !heap.isEmpty else { return }
        heap[0] = last
        siftDown(0)
    }

    private mutating func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[i].precedes(heap[parent]) else { return }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        while true {
            let left = 2 * i + 1
            guard left < heap.count else { return }
            var child = left
            if left + 1 < heap.count, heap[left + 1].precedes(heap[left]) { child = left + 1 }
            guard heap[child].precedes(heap[i]) else { return }
            heap.swapAt(i, child)
            i = child
        }
    }
}

extension EventLoop {
    /// The number of online processors (at least 1).
    static var onlineProcessors: Int {
        max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }
}

/// A few event loops, one per core: descriptors are spread over them round-robin or kept
/// together by a hint. Thread-safe.
public final class EventLoopGroup: Sendable {
    public let loops: [EventLoop]
    private let cursor = Atomic<Int>(0)

    /// Starts `loopCount` loops (default: one per online core).
    public init(loopCount: Int? = nil, name: String = "ocapn-uds.loop") throws(TransportError) {
        let count = max(1, loopCount ?? EventLoop.onlineProcessors)
        var loops: [EventLoop] = []
        do throws(TransportError) {
            for i in 0..<count { loops.append(try EventLoop(name: "\(name)-\(i)")) }
        } catch {
            for loop in loops { loop.shutdown() }
            throw error
        }
        self.loops = loops
    }

    /// The process's loops, started on first use and kept for the life of the process.
    /// A process that cannot create them (no descriptors or threads left at start) traps:
    /// it could do no I/O at all.
    public static let shared: EventLoopGroup = {
        do {
            return try EventLoopGroup()
        } catch {
            preconditionFailure("cannot start the event loops: \(error)")
        }
    }()

    /// The next loop, round-robin.
    public func next() -> EventLoop {
        let i = cursor.wrappingAdd(1, ordering: .relaxed).oldValue
        return loops[Int(UInt(bitPattern: i) % UInt(loops.count))]
    }

    /// The loop for `hint` (the same hint always gives the same loop).
    public func loop(forHint hint: Int) -> EventLoop {
        loops[Int(UInt(bitPattern: hint) % UInt(loops.count))]
    }

    /// Shuts every loop down (see `EventLoop.shutdown()`).
    public func shutdown() {
        for loop in loops { loop.shutdown() }
    }
}
