import Audit
import Identity
import Synchronization

/// Keeps events and their chained lines in memory, for tests.
public final class AuditMemorySink: AuditSink {
    private struct State {
        var chain: AuditChain
        var events: [AuditEvent] = []
        var lines: [[UInt8]] = []
    }
    private let state: Mutex<State>
    private let clock: @Sendable () -> AuditTimestamp

    public init(writer: PublicIdentity, signer: IdentityKeyPair? = nil, policy: AuditCheckpointPolicy = .init(),
                clock: @escaping @Sendable () -> AuditTimestamp = AuditTimestamp.now) {
        var chain = AuditChain(writer: writer, signer: signer, policy: policy)
        let first = chain.opened(cause: .start, at: clock())
        state = Mutex(State(chain: chain, lines: [first]))
        self.clock = clock
    }

    public func record(_ event: AuditEvent) {
        state.withLock { s in
            let now = clock()
            s.events.append(event)
            s.lines.append(s.chain.append(event, at: now))
            if s.chain.checkpointDue(at: now) { s.lines.append(s.chain.checkpoint(at: now)) }
        }
    }

    /// The events recorded, in order.
    public var events: [AuditEvent] { state.withLock { $0.events } }
    /// Every line of the chain so far, bookkeeping included.
    public var lines: [[UInt8]] { state.withLock { $0.lines } }
    /// The log as it would be on disk (each line followed by a newline).
    public var text: String {
        state.withLock { s in String(decoding: s.lines.flatMap { $0 + [0x0a] }, as: UTF8.self) }
    }
}
