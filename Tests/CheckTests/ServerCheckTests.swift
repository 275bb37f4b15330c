import Check
import Foundation
import Glibc
import RuntimeTestSupport
import Testing

/// Short bounds: the servers under test run with 300 ms registration deadlines and 1 s pending
/// lifetimes. Probes that expect nothing to happen only get faster with a short timeout; those
/// that expect a delivery are in-process or on loopback and answer in milliseconds.
func testOptions() -> ServerCheckOptions {
    var options = ServerCheckOptions()
    options.timeout = .milliseconds(600)
    options.deadlineWait = .milliseconds(1500)
    options.expiryWait = .milliseconds(3000)
    options.parallelism = 8
    return options
}

func describe(_ report: CheckReport) -> String {
    report.rows.filter { $0.status != .pass }.map { "\($0.id) \($0.status.rawValue): \($0.evidence)" }.joined(separator: "\n")
}

/// One parent so that no two check suites run at once: they count descriptors and time probes.
@Suite(.serialized, .ownThread) struct CheckSuites {}

extension CheckSuites {
@Suite struct WeakServerCheckTests {
    @Test("the reference behaviour of the test server passes every check")
    func referencePasses() throws {
        let dir = try TemporaryDirectory("chk-ref")
        defer { dir.remove() }
        let server = try WeakServer(path: dir.file("s.sock"))
        defer { server.stop() }
        let report = try ServerChecker(path: server.path, options: testOptions()).run()
        #expect(report.rows.count == ServerChecker.checks.count)
        #expect(report.rows.allSatisfy { $0.status == .pass }, "\(describe(report))")
        #expect(report.exitStatus == 0)
    }

    @Test("a Goblins-like server (wire dossier §7, §9) fails exactly the rows of its weaknesses")
    func goblinsProfile() throws {
        let goblins: Set<ServerWeakness> = [
            .signsAnyChallengeLength, .lenientDesignator, .forwardsOwnDescriptorWithoutOne, .noDescriptorChecks,
            .keepsDescriptors, .staleRoutes, .unboundedPending, .neverExpiresPending, .noRegistrationDeadline,
            .leavesOpenOnError, .forwardsExtraDescriptors,
        ]
        let dir = try TemporaryDirectory("chk-gob")
        defer { dir.remove() }
        let server = try WeakServer(path: dir.file("s.sock"), goblins)
        defer { server.stop() }
        let report = try ServerChecker(path: server.path, options: testOptions()).run()
        let failed = Set(report.rows.filter { $0.status == .fail }.map(\.id))
        #expect(failed == goblins.reduce(into: Set<String>()) { $0.formUnion($1.failingChecks) }, "\(describe(report))")
        #expect(report.row("I1.alive")?.status == .pass)
    }

    /// Counts the process's descriptors, so it runs as an exit test: in a child process of its
    /// own, where no other test opens or closes any meanwhile.
    @Test("a run closes every descriptor the checker opened or received")
    func checkerCleansUp() async {
        await #expect(processExitsWith: .success) { try Self.runTheCheckerAndCountDescriptors() }
    }

    static func runTheCheckerAndCountDescriptors() throws {
        let dir = try TemporaryDirectory("chk-fds")
        defer { dir.remove() }
        // A first run creates what the process keeps for its lifetime (the event loops' epoll and
        // eventfd descriptors, made on first use): count from after it.
        do {
            let warm = try WeakServer(path: dir.file("w.sock"))
            _ = try ServerChecker(path: warm.path, options: testOptions()).run()
            warm.stop()
        }
        let before = openDescriptors()
        do {
            // Weaknesses that make the server hand us descriptors and hold ours.
            let server = try WeakServer(path: dir.file("s.sock"), [.forwardsExtraDescriptors, .noDescriptorChecks, .keepsDescriptors])
            let report = try ServerChecker(path: server.path, options: testOptions()).run()
            #expect(report.summary.fail > 0)
            server.stop()
        }
        var after = openDescriptors()
        for _ in 0..<40 where after != before {
            usleep(50_000)
            after = openDescriptors()
        }
        #expect(after == before, "descriptors: \(before) before the run, \(after) after")
    }

    @Test("each weakness is reported as FAIL by the rows meant for it and by no other row",
          arguments: ServerWeakness.allCases)
    func weaknessIsolated(weakness: ServerWeakness) throws {
        let dir = try TemporaryDirectory("chk-weak")
        defer { dir.remove() }
        let server = try WeakServer(path: dir.file("s.sock"), [weakness])
        defer { server.stop() }
        let report = try ServerChecker(path: server.path, options: testOptions()).run()
        let failed = Set(report.rows.filter { $0.status == .fail }.map(\.id))
        #expect(failed == weakness.failingChecks, "\(weakness): \(describe(report))")
        #expect(report.rows.allSatisfy { $0.status != .skip }, "\(describe(report))")
        if weakness == .displacesLiveRegistration {
            #expect(report.row("E2.registration-relay")?.status == .warn)
        }
        #expect(report.exitStatus == (weakness.failingChecks.isEmpty ? 0 : 1))
    }
}
}

func openDescriptors() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1 }
