import Foundation
import Identity
import SodiumCrypto
import Synchronization
@testable import Audit

/// A writer identity with its secret key (the key never reaches the log; tests check that).
/// `secretKey` and `seed` are kept beside the key pair so tests can forge what a writer never
/// signs; the chain itself only ever gets the key pair.
struct TestKey: Sendable {
    let identity: PublicIdentity
    let secretKey: SecretBytes
    let seed: SecretBytes
    let signer: IdentityKeyPair

    init() {
        let g = Ed25519.generate()
        identity = try! PublicIdentity(publicKey: g.publicKey)
        secretKey = g.secretKey
        seed = g.seed
        signer = try! IdentityKeyPair(seed: g.seed)
    }
}

/// A clock that advances one millisecond per reading, from a fixed start.
final class StepClock: Sendable {
    private let now = Mutex<Int64>(1_795_000_000_000_000)
    func read() -> AuditTimestamp {
        now.withLock { t in
            t += 1000
            return AuditTimestamp(microsSinceEpoch: t)
        }
    }
    var function: @Sendable () -> AuditTimestamp { { self.read() } }
}

/// A fresh directory under the system temp dir, removed by `cleanup`.
struct TempDir {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "audit-tests-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func file(_ name: String) -> String { path + "/" + name }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

func peer() -> AuditPeerID { AuditPeerID(TestKey().identity) }

/// A varied set of events touching every field.
func sampleEvents(local: AuditPeerID, remote: AuditPeerID, server: AuditPeerID) -> [AuditEvent] {
    let a = AuditAttemptID(rawValue: 0x0123_4567_89ab_cdef)
    return [
        AuditEvent(.identityLoaded, local: local, path: AuditPath("/etc/ocapn/id \"key\"")),
        AuditEvent(.serverStarted, role: .server, local: server, path: AuditPath("/run/ocapn/intro.sock")),
        AuditEvent(.registrationAccepted, role: .server, from: remote, credentials: AuditPeerCredentials(pid: 4242, uid: 1000, gid: 100)),
        AuditEvent(.registrationRefused, reason: .named("badSignature"), role: .server, credentials: AuditPeerCredentials(pid: 77, uid: 1001, gid: 100),
                   durationMicros: 812),
        AuditEvent(.introductionRequested, attempt: a, role: .server, from: local, to: remote),
        AuditEvent(.introductionForwarded, attempt: a, role: .server, from: local, to: remote, durationMicros: 31),
        AuditEvent(.handshakeStarted, attempt: a, role: .initiator, local: local, expectedPeer: remote, introServer: server),
        AuditEvent(.handshakeSucceeded, attempt: a, role: .initiator, local: local, expectedPeer: remote, provedPeer: remote,
                   introServer: server, transcriptHash: AuditDigest([UInt8](repeating: 0xab, count: 32)),
                   sessionID: AuditDigest([UInt8](repeating: 0x11, count: 16)), protocolVersion: 1, durationMicros: 231),
        AuditEvent(.handshakeFailed, reason: .named("identityMismatch"), attempt: AuditAttemptID(rawValue: 9), role: .responder,
                   local: local, expectedPeer: remote, provedPeer: server, durationMicros: 190),
        AuditEvent(.channelClosed, role: .initiator, local: local, provedPeer: remote,
                   sessionID: AuditDigest([UInt8](repeating: 0x11, count: 16)), durationMicros: 5_000_000, clean: true,
                   traffic: AuditTraffic(bytesSent: 1 << 40, bytesReceived: 12, messagesSent: 3, messagesReceived: 4)),
        AuditEvent(.channelClosed, reason: .named("peerReset"), role: .responder, local: local, provedPeer: remote, clean: false,
                   traffic: AuditTraffic(bytesSent: 0, bytesReceived: 0, messagesSent: 0, messagesReceived: 0)),
        AuditEvent(.legacyPeerRefused, reason: .named("legacyPeerRefused"), role: .server, credentials: AuditPeerCredentials(pid: -1, uid: 0, gid: 0)),
        AuditEvent(.serverStopped, reason: .named("serverShutdown"), role: .server, local: server),
    ]
}

/// Lines of a file (without newlines) and a writer for edited copies.
func readLines(_ path: String) -> [String] {
    let text = try! String(contentsOfFile: path, encoding: .utf8)
    var lines = text.components(separatedBy: "\n")
    if lines.last == "" { lines.removeLast() }
    return lines
}

func writeLines(_ lines: [String], to path: String, trailingNewline: Bool = true) {
    let text = lines.joined(separator: "\n") + (trailingNewline ? "\n" : "")
    try! text.write(toFile: path, atomically: false, encoding: .utf8)
}

/// A closed log of `count` handshake events plus the bookkeeping around them.
func makeLog(in dir: TempDir, key: TestKey = TestKey(), count: Int = 20, signed: Bool = true,
             checkpointEvery: Int = 5, name: String = "audit.jsonl") throws -> String {
    let path = dir.file(name)
    let sink = try AuditFileSink(AuditFileConfiguration(
        path: path, writer: key.identity, signer: signed ? key.signer : nil,
        checkpoints: AuditCheckpointPolicy(everyRecords: checkpointEvery), fsync: .never, clock: StepClock().function))
    let local = AuditPeerID(key.identity), remote = peer()
    for i in 0..<count {
        sink.record(AuditEvent(i % 3 == 0 ? .handshakeFailed : .handshakeSucceeded, reason: i % 3 == 0 ? .named("timeout") : nil,
                               attempt: AuditAttemptID(rawValue: UInt64(i)), role: .initiator, local: local,
                               expectedPeer: remote, provedPeer: i % 3 == 0 ? nil : remote, durationMicros: UInt64(100 + i)))
    }
    sink.close()
    return path
}

extension AuditReason {
    /// A reason spelled in a test: the Audit module owns no codes (the layers above it do, as
    /// typed `ErrorCode`s; the runtime's are checked against docs/AUDIT.md in RuntimeTests).
    static func named(_ code: String) -> AuditReason { AuditReason(rawValue: code)! }
}
