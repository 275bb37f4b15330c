import Foundation
import Synchronization
import Glibc
import Testing
import Transport

extension TransportTests {
    @Suite struct EventLoops {
        /// A loop thread never takes SIGINT or SIGTERM meant for the process: with the signals
        /// turned into events (SIG_IGN plus a reader elsewhere) it would drop them.
        @Test func aLoopThreadBlocksTheTerminationSignals() throws {
            // Made from a thread that does not block them (test threads may, and a loop thread
            // would inherit that), which must find its own mask unchanged afterwards.
            let creatorKeptItsMask = EventLog<Bool>()
            let made = EventLog<EventLoop>()
            let creator = Thread {
                var open = sigset_t()
                sigemptyset(&open)
                for n in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&open, n) }
                var saved = sigset_t()
                pthread_sigmask(SIG_UNBLOCK, &open, &saved)
                defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
                guard let loop = try? EventLoop(name: "test-sigmask") else { return }
                var mine = sigset_t()
                pthread_sigmask(SIG_BLOCK, nil, &mine)
                creatorKeptItsMask.append([SIGINT, SIGTERM, SIGHUP].allSatisfy { sigismember(&mine, $0) == 0 })
                made.append(loop)
            }
            creator.start()
            #expect(made.wait { !$0.isEmpty })
            let loop = try #require(made.events.first)
            defer { loop.shutdown() }
            #expect(creatorKeptItsMask.events == [true])
            let blocked = EventLog<[Int32]>()
            #expect(loop.execute {
                var mask = sigset_t()
                pthread_sigmask(SIG_BLOCK, nil, &mask)
                blocked.append([SIGINT, SIGTERM, SIGHUP].filter { sigismember(&mask, $0) == 1 })
            })
            #expect(blocked.wait { !$0.isEmpty })
            #expect(blocked.events.first == [SIGINT, SIGTERM, SIGHUP])
        }



        @Test func readinessIsReportedOnTheLoopThreadAndAnEmptyInterestStopsIt() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-loop")
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track([mine, theirs])
            let log = EventLog<String>()
            let onLoop = EventLog<Bool>()
            let registration = try loop.register(mine, interest: .readable) { readiness in
                onLoop.append(loop.inLoopThread)
                if readiness.contains(.readable) { log.append("readable") }
                if readiness.contains(.writable) { log.append("writable") }
            }
            #expect(loop.registeredCount == 1)
            #expect(!loop.inLoopThread)
            // Nothing to read yet: no call.
            usleep(20_000)
            #expect(log.events.isEmpty)
            try sendAll(theirs, [1, 2, 3])
            #expect(log.wait { $0.contains("readable") })
            // Level-triggered: the unread bytes keep reporting until interest is dropped.
            #expect(log.wait { $0.filter { $0 == "readable" }.count >= 3 })
            try registration.setInterest([])
            usleep(20_000)
            let quiet = log.events.count
            usleep(50_000)
            #expect(log.events.count == quiet)
            try registration.setInterest(.writable)
            #expect(log.wait { $0.contains("writable") })
            try registration.setInterest([])
            #expect(onLoop.events.allSatisfy { $0 })
            registration.unregisterAndClose()
            #expect(!mine.isOpen)
            #expect(loop.registeredCount == 0)
            theirs.close()
            loop.shutdown()
            await oracle.expectNoLeaks()
        }

        @Test func anUnregisteredDescriptorIsNeverReportedAgainEvenWhenItsNumberIsReused() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-loop")
            let log = EventLog<String>()
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track([mine, theirs])
            let oldNumber = try mine.withRawDescriptor { $0 }
            let registration = try loop.register(mine, interest: .readable) { _ in log.append("old") }
            registration.unregister()
            #expect(!registration.isRegistered)
            registration.unregister()  // later calls do nothing
            mine.close()
            // The lowest free number is handed out again: the new socket very likely reuses it.
            let (reused, other) = try FileDescriptor.socketPair()
            oracle.track([reused, other])
            let newNumber = try reused.withRawDescriptor { $0 }
            let second = try loop.register(reused, interest: .readable) { _ in log.append("new") }
            try sendAll(other, [9])
            #expect(log.wait { $0.contains("new") })
            #expect(!log.events.contains("old"))
            if newNumber == oldNumber { #expect(loop.registeredCount == 1) }
            second.unregisterAndClose()
            other.close()
            theirs.close()
            loop.shutdown()
            await oracle.expectNoLeaks()
        }

        @Test func closingBeforeUnregisteringTraps() async throws {
            await #expect(processExitsWith: .failure) {
                let loop = try EventLoop(name: "test-trap")
                let (mine, theirs) = try FileDescriptor.socketPair()
                let registration = try loop.register(mine, interest: .readable) { _ in }
                mine.close()
                theirs.close()
                registration.unregister()
            }
        }

        @Test func aHangUpWithoutInterestIsReportedAtMostOnce() async throws {
            let oracle = await LeakOracle.make()
            let loop = try EventLoop(name: "test-loop")
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track([mine, theirs])
            let log = EventLog<Readiness>()
            let registration = try loop.register(mine, interest: []) { log.append($0) }
            theirs.close()
            usleep(100_000)
            #expect(log.events.count <= 1)
            // Interest returns: the end of stream is readable (level-triggered) again.
            try registration.setInterest(.readable)
            #expect(log.wait { $0.contains { $0.contains(.readable) } })
            registration.unregisterAndClose()
            loop.shutdown()
            await oracle.expectNoLeaks()
        }

        @Test func workSentFromOtherThreadsRunsOnTheLoopThreadInOrderPerSender() async throws {
            let loop = try EventLoop(name: "test-loop")
            let log = EventLog<(Int, Int, Bool)>()
            let senders = 4
            let perSender = 500
            DispatchQueue.concurrentPerform(iterations: senders) { sender in
                for i in 0..<perSender {
                    #expect(loop.execute { log.append((sender, i, loop.inLoopThread)) })
                }
            }
            #expect(log.wait { $0.count == senders * perSender })
            let events = log.events
            #expect(events.allSatisfy { $0.2 })
            for sender in 0..<senders {
                #expect(events.filter { $0.0 == sender }.map(\.1) == Array(0..<perSender))
            }
            loop.shutdown()
        }

        /// Counts the process's open descriptors, so it runs as an exit test: in a child process
        /// of its own, where no test running in parallel opens or closes one meanwhile.
        @Test func shutdownStopsTheThreadForgetsHandlersAndClosesTheLoopsDescriptors() async {
            await #expect(processExitsWith: .success) { try await Self.shutDownALoopAndCountDescriptors() }
        }

        static func shutDownALoopAndCountDescriptors() async throws {
            let oracle = await LeakOracle.make()
            let before = DescriptorCensus.openCount()
            let loop = try EventLoop(name: "test-loop")
            #expect(DescriptorCensus.openCount() == before + 3)  // epoll, eventfd and timerfd
            let (mine, theirs) = try FileDescriptor.socketPair()
            oracle.track([mine, theirs])
            let log = EventLog<String>()
            let registration = try loop.register(mine, interest: .readable) { _ in log.append("ready") }
            loop.shutdown()
            loop.shutdown()  // idempotent
            #expect(loop.registeredCount == 0)
            #expect(!loop.execute { log.append("late work") })
            try sendAll(theirs, [1])
            usleep(50_000)
            #expect(log.events.isEmpty)
            #expect(throws: TransportError.self) { try loop.register(theirs, interest: .readable) { _ in } }
            // The owner still unregisters before closing; after shutdown that only marks it.
            try registration.setInterest(.writable)
            registration.unregisterAndClose()
            theirs.close()
            await oracle.expectNoLeaks()
        }

        // MARK: timers

        /// Something whose release the tests can see (a timer's closure holds it).
        final class Token: Sendable {}

        @Test func aTimerFiresOnceOnTheLoopThreadNotBeforeItsDeadline() throws {
            let loop = try EventLoop(name: "test-timer")
            defer { loop.shutdown() }
            let fired = EventLog<(ContinuousClock.Instant, Bool)>()
            let deadline = ContinuousClock.now + .milliseconds(30)
            let timer = try #require(loop.schedule(at: deadline) { fired.append((.now, loop.inLoopThread)) })
            #expect(loop.pendingTimerCount == 1)
            #expect(fired.wait { !$0.isEmpty })
            usleep(60_000)
            let events = fired.events
            #expect(events.count == 1)
            #expect(events.allSatisfy { $0.0 >= deadline && $0.1 })
            #expect(loop.pendingTimerCount == 0)
            #expect(!timer.isPending)
            #expect(!timer.cancel())  // it already ran
        }

        @Test func anEarlierTimerFromAnotherThreadWakesALoopWaitingForALaterOne() throws {
            let loop = try EventLoop(name: "test-timer")
            defer { loop.shutdown() }
            let fired = EventLog<String>()
            let late = try #require(loop.schedule(after: .seconds(30)) { fired.append("late") })
            usleep(20_000)  // the loop is in epoll_wait with a 30 s timeout now
            let start = ContinuousClock.now
            _ = try #require(loop.schedule(after: .milliseconds(10)) { fired.append("early") })
            #expect(fired.wait(timeout: .seconds(2)) { $0 == ["early"] })
            #expect(ContinuousClock.now - start < .seconds(2))
            #expect(late.cancel())
            #expect(loop.pendingTimerCount == 0)
        }

        @Test func aCancelledTimerNeverFiresAndReleasesItsWork() throws {
            let loop = try EventLoop(name: "test-timer")
            defer { loop.shutdown() }
            let fired = EventLog<String>()
            weak var held: Token?
            let timer: EventLoopTimer = try {
                let token = Token()
                held = token
                return try #require(loop.schedule(after: .milliseconds(40)) { _ = token; fired.append("fired") })
            }()
            #expect(held != nil)
            #expect(timer.isPending)
            #expect(timer.cancel())
            #expect(!timer.isPending)
            #expect(!timer.cancel())  // later calls do nothing
            #expect(held == nil)  // the closure went with the cancel
            #expect(loop.pendingTimerCount == 0)
            usleep(120_000)
            #expect(fired.events.isEmpty)

            // On the loop thread a cancel is exact, even for a timer due in the same pass: the
            // first of two timers with one deadline cancels the second before it can run.
            let deadline = ContinuousClock.now + .milliseconds(20)
            let second = Mutex<EventLoopTimer?>(nil)
            _ = try #require(loop.schedule(at: deadline) {
                fired.append("first")
                fired.append(second.withLock { $0 }?.cancel() == true ? "cancelled" : "too late")
            })
            second.withLock { $0 = loop.schedule(at: deadline) { fired.append("second") } }
            #expect(fired.wait { $0.count >= 2 })
            usleep(40_000)
            #expect(fired.events == ["first", "cancelled"])
        }

        @Test func manyTimersFireInDeadlineOrderAndTheCancelledOnesNever() throws {
            let loop = try EventLoop(name: "test-timer")
            defer { loop.shutdown() }
            let fired = EventLog<Int>()
            let base = ContinuousClock.now + .milliseconds(50)
            var generator = SystemRandomNumberGenerator()
            // 300 timers over 60 ms, scheduled in random order, several sharing a deadline.
            let offsets = (0..<300).map { _ in Int.random(in: 0..<60, using: &generator) }
            var timers: [EventLoopTimer] = []
            for (i, offset) in offsets.enumerated() {
                timers.append(try #require(loop.schedule(at: base + .milliseconds(offset)) { fired.append(i) }))
            }
            let cancelled = Set(stride(from: 0, to: 300, by: 7))
            for i in cancelled { #expect(timers[i].cancel()) }
            let expected = offsets.indices.filter { !cancelled.contains($0) }
                .sorted { (offsets[$0], $0) < (offsets[$1], $1) }
            #expect(fired.wait { $0.count == expected.count })
            usleep(30_000)
            #expect(fired.events == expected)
            #expect(loop.pendingTimerCount == 0)
        }

        @Test func aTimerOnALoopThatIsShuttingDownNeverRunsAndIsReleased() throws {
            let loop = try EventLoop(name: "test-timer")
            let fired = EventLog<String>()
            weak var held: Token?
            do {
                let token = Token()
                held = token
                _ = try #require(loop.schedule(after: .seconds(30)) { _ = token; fired.append("pending") })
            }
            // A task holds the loop thread while another thread starts the shutdown; once the
            // loop is stopping (execute refuses), the task asks for a timer.
            let gate = DispatchSemaphore(value: 0)
            let fromTask = EventLog<Bool>()
            #expect(loop.execute {
                gate.wait()
                fromTask.append(loop.schedule(after: .milliseconds(1)) { fired.append("late") } == nil)
            })
            let stopper = Thread { loop.shutdown() }
            stopper.start()
            let deadline = ContinuousClock.now + .seconds(5)
            while loop.execute({}), ContinuousClock.now < deadline { usleep(1000) }
            gate.signal()
            #expect(fromTask.wait { !$0.isEmpty })
            #expect(fromTask.events == [true])
            loop.shutdown()  // waits for the stopper's shutdown to finish
            #expect(held == nil)  // the pending timer's work was released, never run
            #expect(loop.schedule(after: .milliseconds(1)) { fired.append("after") } == nil)
            #expect(loop.pendingTimerCount == 0)
            usleep(20_000)
            #expect(fired.events.isEmpty)
        }

        @Test func aGroupSpreadsRoundRobinAndKeepsAHintOnOneLoop() throws {
            let group = try EventLoopGroup(loopCount: 3, name: "test-group")
            defer { group.shutdown() }
            #expect(group.loops.count == 3)
            let picked = (0..<6).map { _ in ObjectIdentifier(group.next()) }
            #expect(Set(picked).count == 3)
            #expect(picked[0] == picked[3] && picked[1] == picked[4])
            #expect(group.loop(forHint: 7) === group.loop(forHint: 7))
            #expect(group.loop(forHint: 7) === group.loops[1])
            #expect(EventLoopGroup.shared.loops.count >= 1)
        }
    }
}
