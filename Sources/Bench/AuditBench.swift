import Audit
import Dispatch
import Foundation
import Identity
import Logging
import OCapN
import Runtime
import Transport
#if canImport(Glibc)
import Glibc
#endif

/// Introductions per second through one server with the audit trail on (default settings: a
/// signed checkpoint every 1000 records or 60 s, fsync at checkpoints, the state file) against
/// the same server with it off, measured in one run: five rounds of the same workload, the
/// order within a round alternating (off-on, on-off, …) so neither side always runs first on a
/// warmer or quieter machine, best of five each.
enum AuditBench {
    static func figure(count: Int, window: Int, directory: String, say: (String) -> Void) throws -> BenchFigure {
        var off: [Double] = [], on: [Double] = []
        let rounds = 5
        for round in 1...rounds {
            let offFirst = round % 2 == 1
            say("audit: round \(round)/\(rounds), \(count) introductions with the audit trail \(offFirst ? "off, then on" : "on, then off")")
            for audit in offFirst ? [false, true] : [true, false] {
                let r = try rate(count: count, window: window, directory: directory, audit: audit)
                if audit { on.append(r) } else { off.append(r) }
            }
        }
        return BenchFigure(group: "audit", name: "introductions with the audit trail on", unit: "intros/s", value: on.max()!,
                           baselineName: "audit trail off", baseline: off.max()!, direction: .higherIsBetter, target: 0.95)
    }

    static func rate(count: Int, window: Int, directory: String, audit: Bool) throws -> Double {
        let serverKey = IdentityKeyPair.generate()
        var limits = IntroductionServerLimits()
        limits.introductionsPerSecond = 0
        limits.maxPendingPerSender = max(window * 2, 8)
        limits.maxPendingPerTarget = max(window * 2, 8)
        limits.maxPendingTotal = max(window * 4, 64)
        // The target reads every descriptor, but on a loaded machine it may lag a whole window
        // behind: the in-flight caps (which drop a target that stops reading) need headroom.
        limits.maxInFlightPerTarget = max(window * 4, 64)
        limits.maxInFlightPerSender = max(window * 4, 64)
        let core = IntroductionServerConfiguration(limits: limits, allowedUIDs: [getuid()])
        let path = (directory as NSString).appendingPathComponent("bench-audit.sock")
        let logPath = (directory as NSString).appendingPathComponent("bench-audit.jsonl")
        for p in [logPath, (directory as NSString).appendingPathComponent(".bench-audit.jsonl.state")] { unlink(p) }
        let socket = try IntroductionServerSetup.openSocket(path: path, mode: 0o600)
        var logger = Logger(label: "ocapn-uds.bench")
        logger.logLevel = .critical
        let sink = audit
            ? try AuditFileSink(AuditFileConfiguration(
                path: logPath, writer: serverKey.publicIdentity,
                signer: AuditSigner(identity: serverKey.publicIdentity, sign: { serverKey.sign($0) }), tick: .seconds(1), asynchronous: true))
            : nil
        let server = IntroductionServer(identity: serverKey, socket: socket, configuration: .init(core: core), audit: sink, logger: logger)
        server.start()
        defer {
            let stopped = DispatchSemaphore(value: 0)
            server.stop { stopped.signal() }
            stopped.wait()
            sink?.close()
            if let sink, sink.status.failures > 0 { FileHandle.standardError.write(Data("audit bench: \(sink.status.failures) audit failures\n".utf8)) }
        }
        let a = try BlockingIntroductionClient(path: path, server: serverKey.publicIdentity)
        let b = try BlockingIntroductionClient(path: path, server: serverKey.publicIdentity)
        defer { a.close(); b.close() }
        try a.register()
        try b.register()
        let record = UDSMessage.newConnection(UDSNewConnection(
            from: PeerLocator(identity: a.identity, introductionServers: [serverKey.publicIdentity]),
            to: PeerLocator(identity: b.identity, introductionServers: [serverKey.publicIdentity]))).encoded
        nonisolated(unsafe) let target = b
        let targetDone = DispatchSemaphore(value: 0)
        let targetThread = Thread {
            defer { targetDone.signal() }
            for _ in 0..<count {
                guard let fd = try? target.receiveDescriptor() else { return }
                _ = try? fd.send([0x31])
                fd.close()
            }
        }
        targetThread.start()
        let t0 = nowNanos()
        var inFlight: [FileDescriptor] = []
        var head = 0
        for _ in 0..<count {
            let (aEnd, bEnd) = try FileDescriptor.socketPair()
            defer { bEnd.close() }
            try a.sendAll(record)
            try a.sendAll(UDSNewConnection.fdMarker, passing: [bEnd])
            inFlight.append(aEnd)
            if inFlight.count - head >= window {
                try IntroductionBench.readOneByte(inFlight[head])
                inFlight[head].close()
                head += 1
            }
        }
        while head < inFlight.count {
            try IntroductionBench.readOneByte(inFlight[head])
            inFlight[head].close()
            head += 1
        }
        let elapsed = nowNanos() - t0
        targetDone.wait()
        return Double(count) / Double(elapsed) * 1e9
    }
}
