import SodiumCrypto

/// The life of one channel socket as a sans-IO machine: UDS-HS1 (or a legacy probe), the framed
/// channel, and the close in both directions. Events in, actions out; the runtime owns the
/// socket, the clock and the application's waiters.
///
/// States: handshaking → open → closing (ours, theirs or both) → closed. Each case carries its
/// own struct, so what a state may do is what its struct holds: only `open` and `closingTheirs`
/// hold a sender, only `handshaking`, `open` and `closingOurs` a receiver that still accepts
/// frames. Every path ends in `closed` with one `ChannelEnd`, reported once (`.fact(.ended)`)
/// and followed by `.closeDescriptor`; a closed machine ignores every further event.
///
/// Not thread-safe: one owner drives it (the runtime's I/O engine).
public struct ChannelMachine {
    /// Settings the machine needs beyond the handshake's.
    public struct Configuration: Sendable {
        /// How long the peer has to answer our CLOSE (and to read our last bytes).
        public var closeTimeout: Duration
        /// Admit a Goblins peer (first bytes `<16'op:start-session`) as a raw, unauthenticated
        /// channel; otherwise it ends with `.legacyRefused`.
        public var allowLegacyPeers: Bool
        /// Asked when a legacy peer shows up and `allowLegacyPeers` is true; false refuses it
        /// (`.legacyRefused`). The runtime refuses a claimed key that completed UDS-HS1 with it.
        public var legacyCheck: (@Sendable () -> Bool)?
        /// The clock the handshake checks its deadline against when bytes arrive, and the idle
        /// release is timed by (tests inject one).
        public var now: @Sendable () -> ContinuousClock.Instant
        /// How long buffers a burst grew are kept after the traffic stops (`releaseDeadline`):
        /// kept across messages they are reused, not reallocated and wiped per message.
        public var idleRelease: Duration

        public init(
            closeTimeout: Duration = .seconds(2), allowLegacyPeers: Bool = false, legacyCheck: (@Sendable () -> Bool)? = nil,
            idleRelease: Duration = .milliseconds(100), now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }
        ) {
            precondition(closeTimeout > .zero, "close timeout must be positive")
            precondition(idleRelease > .zero, "idle release delay must be positive")
            self.closeTimeout = closeTimeout
            self.allowLegacyPeers = allowLegacyPeers
            self.legacyCheck = legacyCheck
            self.idleRelease = idleRelease
            self.now = now
        }
    }

    /// What the machine is fed.
    public enum Event {
        /// Bytes read from the socket.
        case bytes([UInt8])
        /// The socket reported end of file (or a reset: a stream cut without CLOSE either way).
        case endOfStream
        /// The clock, when the runtime's timer for `deadline` or `releaseDeadline` fired (early
        /// is harmless).
        case deadline(ContinuousClock.Instant)
        /// The application closes: seal CLOSE, flush, wait for the peer's (until `now` plus
        /// the close timeout). Repeating it changes nothing.
        case close(now: ContinuousClock.Instant)
        /// The application (or the runtime, for a handshake whose server went away) ends the
        /// channel at once without CLOSE.
        case abort
        /// The socket took the first `n` bytes of `pendingOutput`.
        case wrote(Int)
        /// A read or write failed; `detail` is the runtime's diagnostic.
        case transportFailed(String)
    }

    /// What the runtime must do, in order.
    public enum Action {
        /// `pendingOutput` holds bytes: write them and report `.wrote(n)`.
        case write
        /// Our CLOSE (or, for a legacy channel, our last byte) is written: shut down the write side.
        case shutDownWrite
        /// A whole message for the application.
        case deliver([UInt8])
        /// Something to log and audit.
        case fact(Fact)
        /// The channel is over: stop watching the socket and close it. Always the last action.
        case closeDescriptor
    }

    /// Facts for logs and the audit trail.
    public enum Fact {
        /// The peer proved its key; the channel is open.
        case established(EstablishedSession)
        /// A legacy peer was admitted (its first bytes follow as `.deliver`).
        case legacyAdmitted
        /// The peer's authenticated CLOSE arrived (or, legacy, its end of stream).
        case peerClosed
        /// The channel ended; `wasOpen` is false when the handshake never finished.
        case ended(ChannelEnd, wasOpen: Bool)
    }

    /// Whether an application message was taken.
    public enum SendOutcome: Equatable {
        case queued
        /// Larger than the channel's `maxMessageSize`; the channel is unchanged.
        case tooLarge(limit: Int)
        /// The channel is not open for sending (closing ours or both, closed).
        case notOpen
    }

    // MARK: states

    enum LegacyProbe {
        /// The first bytes so far, until they tell a Goblins peer from UDS-HS1.
        case collecting([UInt8])
        case decided
    }

    enum HandshakeRoleState {
        case initiator(HandshakeInitiator)
        case responder(HandshakeResponder, LegacyProbe)
    }

    enum Framing {
        case authenticated(FrameSender, FrameReceiver)
        /// Raw bytes, no CLOSE: a legacy peer admitted by the opt-in.
        case legacy
    }

    enum WriteSide {
        /// Our last bytes are still in `pendingOutput`.
        case flushing
        /// Written and shut down.
        case shutDown
    }

    struct Handshaking {
        let role: HandshakeRoleState
    }

    struct Open {
        let framing: Framing
    }

    /// Our CLOSE is sealed; the peer may still send messages until its CLOSE.
    struct ClosingOurs {
        let framing: Framing
        let writeSide: WriteSide
        let deadline: ContinuousClock.Instant
    }

    /// The peer's CLOSE arrived; we may still send until we close.
    struct ClosingTheirs {
        let framing: Framing
    }

    /// Both sides are done (both CLOSEs, or a legacy end of stream and our close); our last
    /// bytes are still being written.
    struct ClosingBoth {
        let deadline: ContinuousClock.Instant
        /// `.clean`, or `.legacyEnded` for a legacy channel.
        let endWhenFlushed: ChannelEnd
    }

    struct Closed {
        let end: ChannelEnd
        let wasOpen: Bool
    }

    enum State {
        case handshaking(Handshaking)
        case open(Open)
        case closingOurs(ClosingOurs)
        case closingTheirs(ClosingTheirs)
        case closingBoth(ClosingBoth)
        case closed(Closed)
    }

    /// What a Goblins peer sends first: the start of its `op:start-session` record.
    public static let legacyMarker: [UInt8] = Array("<16'op:start-session".utf8)

    public let configuration: Configuration
    private(set) var state: State
    private let handshakeDeadline: ContinuousClock.Instant
    private let output = ChannelOutput()
    /// Bytes and messages carried, for the close summary and the audit record.
    public private(set) var traffic = ChannelTraffic()
    /// When grown buffers are given back if no byte moved meanwhile (nil: none held).
    public private(set) var releaseDeadline: ContinuousClock.Instant?
    /// Bytes carried when `releaseDeadline` was set.
    private var trafficAtRelease: UInt64 = 0

    /// The initiator's side: msg1 is queued at once (the first actions are `[.write]`).
    public init(initiator: HandshakeInitiator, configuration: Configuration) {
        self.configuration = configuration
        handshakeDeadline = initiator.deadline
        state = .handshaking(Handshaking(role: .initiator(initiator)))
        output.append(initiator.initialMessage)
    }

    /// The responder's side: it waits for msg1 (or a legacy peer's first bytes).
    public init(responder: HandshakeResponder, configuration: Configuration) {
        self.configuration = configuration
        handshakeDeadline = responder.deadline
        state = .handshaking(Handshaking(role: .responder(responder, .collecting([]))))
    }

    // MARK: queries

    /// Bytes waiting for the socket.
    public var pendingOutput: UnsafeRawBufferPointer { output.readable }
    public var pendingOutputCount: Int { output.count }

    /// When the runtime must feed `.deadline`: the handshake's deadline, the close timeout, or
    /// nil when no timer is due.
    public var deadline: ContinuousClock.Instant? {
        switch state {
        case .handshaking: return handshakeDeadline
        case .closingOurs(let s): return s.deadline
        case .closingBoth(let s): return s.deadline
        case .open, .closingTheirs, .closed: return nil
        }
    }

    /// Bytes moved either way (the idle release compares it).
    private var bytesMoved: UInt64 { traffic.bytesSent &+ traffic.bytesReceived }

    /// Whether either buffer is above what an idle channel keeps.
    private var holdsGrownBuffers: Bool {
        if output.capacityBytes > ChannelOutput.retainedCapacity { return true }
        return currentReceiver?.holdsGrownBuffers ?? false
    }

    private var currentReceiver: FrameReceiver? {
        switch state {
        case .open(let s): return s.framing.receiver
        case .closingOurs(let s): return s.framing.receiver
        case .closingTheirs(let s): return s.framing.receiver
        case .handshaking, .closingBoth, .closed: return nil
        }
    }

    /// After a drain (output written, or nothing more to read): grown buffers stay for the
    /// next burst and are given back at `releaseDeadline` unless traffic moved meanwhile.
    private mutating func armRelease() {
        guard releaseDeadline == nil, holdsGrownBuffers else { return }
        releaseDeadline = configuration.now() + configuration.idleRelease
        trafficAtRelease = bytesMoved
    }

    private mutating func releaseIfIdle(_ now: ContinuousClock.Instant) {
        guard let at = releaseDeadline, now >= at else { return }
        releaseDeadline = nil
        if bytesMoved == trafficAtRelease {
            output.releaseIfLarge()
            currentReceiver?.releaseIdleMemory()
        }
        // Still busy (or a buffer is in use): look again one period later.
        armRelease()
    }

    /// Whether bytes from the socket are still meaningful (after the peer's CLOSE they are only
    /// read to catch `dataAfterClose` and the end of stream).
    public var wantsToRead: Bool {
        switch state {
        case .handshaking, .open, .closingOurs, .closingTheirs, .closingBoth: return true
        case .closed: return false
        }
    }

    /// Whether the application may send.
    public var canSend: Bool {
        switch state {
        case .open, .closingTheirs: return true
        case .handshaking, .closingOurs, .closingBoth, .closed: return false
        }
    }

    /// Whether the peer has finished sending (CLOSE, or end of stream of a legacy channel).
    public var peerFinished: Bool {
        switch state {
        case .closingTheirs, .closingBoth: return true
        case .closed(let c): return c.end == .clean
        case .handshaking, .open, .closingOurs: return false
        }
    }

    /// How it ended, once closed.
    public var end: ChannelEnd? {
        if case .closed(let c) = state { return c.end }
        return nil
    }

    /// Bytes of buffer memory the machine holds now (output and the receiver's buffers).
    public var heldBufferBytes: Int {
        output.capacityBytes + (currentReceiver?.heldBytes ?? 0)
    }

    /// Whether the handshake is over (open or later).
    public var isEstablished: Bool {
        switch state {
        case .handshaking: return false
        case .closed(let c): return c.wasOpen
        case .open, .closingOurs, .closingTheirs, .closingBoth: return true
        }
    }

    /// Largest message `send` takes, nil for a legacy channel or before the handshake ended.
    public var maxMessageSize: Int? {
        switch state {
        case .open(let s): return s.framing.sender?.configuration.maxMessageSize
        case .closingTheirs(let s): return s.framing.sender?.configuration.maxMessageSize
        case .handshaking, .closingOurs, .closingBoth, .closed: return nil
        }
    }

    // MARK: events

    /// Feeds one event; the actions it causes are appended to `actions`.
    public mutating func handle(_ event: Event, into actions: inout [Action]) {
        switch event {
        case .bytes(let bytes):
            bytes.withUnsafeBytes { receive($0, into: &actions) }
        case .endOfStream:
            endOfStream(into: &actions)
        case .deadline(let now):
            releaseIfIdle(now)
            deadlinePassed(now, into: &actions)
        case .close(let now):
            close(now: now, into: &actions)
        case .abort:
            end(.aborted, into: &actions)
        case .wrote(let n):
            wrote(n, into: &actions)
        case .transportFailed(let detail):
            end(.transportFailed(detail), into: &actions)
        }
    }

    /// What a read into the machine's buffer returned.
    public enum ReadResult: Equatable {
        case bytes(Int)
        case wouldBlock
        case endOfStream
        case failed(String)
    }

    /// Lends the machine's input buffer to `read` (up to `chunk` bytes: straight into the
    /// channel's receive buffer once open, so a read costs no copy) and handles the result.
    /// Returns it so the runtime knows whether to read again.
    public mutating func read(
        chunk: Int, into actions: inout [Action], _ read: (UnsafeMutableRawBufferPointer) -> ReadResult
    ) -> ReadResult {
        precondition(chunk >= 1, "read chunk must be positive")
        if case .open(let s) = state, case .authenticated(_, let receiver) = s.framing {
            var result = ReadResult.wouldBlock
            receiver.withInputBuffer(minimumCapacity: chunk) { buffer in
                result = read(UnsafeMutableRawBufferPointer(rebasing: buffer.prefix(chunk)))
                if case .bytes(let n) = result { return n }
                return 0
            }
            switch result {
            case .bytes(let n):
                drain(receiver, into: &actions)
                // A short read drained the socket for now, like a would-block.
                if n < chunk { armRelease() }
            case .wouldBlock: armRelease()
            case .endOfStream: endOfStream(into: &actions)
            case .failed(let detail): end(.transportFailed(detail), into: &actions)
            }
            return result
        }
        var scratch = [UInt8](repeating: 0, count: chunk)
        let result = scratch.withUnsafeMutableBytes { read($0) }
        switch result {
        case .bytes(let n): scratch.withUnsafeBytes { receive(UnsafeRawBufferPointer(rebasing: $0.prefix(n)), into: &actions) }
        case .wouldBlock: break
        case .endOfStream: endOfStream(into: &actions)
        case .failed(let detail): end(.transportFailed(detail), into: &actions)
        }
        return result
    }

    /// Seals one application message (1…maxMessageSize bytes) into the output.
    public mutating func send(_ message: UnsafeRawBufferPointer, into actions: inout [Action]) -> SendOutcome {
        precondition(message.count >= 1, "messages are at least one byte (PROTOCOL.md §6.3)")
        let framing: Framing
        switch state {
        case .open(let s): framing = s.framing
        case .closingTheirs(let s): framing = s.framing
        case .handshaking, .closingOurs, .closingBoth, .closed: return .notOpen
        }
        switch framing {
        case .authenticated(let sender, _):
            let limit = sender.configuration.maxMessageSize
            guard message.count <= limit else { return .tooLarge(limit: limit) }
            // Sealed straight into the output: one copy of the body, no allocation once the
            // buffer has grown to the working size.
            let region = output.reserve(sender.sealedLength(messageLength: message.count))
            do throws(HandshakeError) {
                output.commit(try sender.seal(message, into: region))
            } catch {
                // Only an exhausted nonce gets here (the size was checked).
                end(.protocolError(error), into: &actions)
                return .notOpen
            }
        case .legacy:
            output.append(message)
        }
        traffic.bytesSent += UInt64(message.count)
        traffic.messagesSent += 1
        actions.append(.write)
        return .queued
    }

    public mutating func send(_ message: [UInt8], into actions: inout [Action]) -> SendOutcome {
        message.withUnsafeBytes { send($0, into: &actions) }
    }

    // MARK: transitions

    private mutating func receive(_ bytes: UnsafeRawBufferPointer, into actions: inout [Action]) {
        guard bytes.count > 0 else { return }
        switch state {
        case .handshaking(let s):
            feedHandshake(s, bytes, into: &actions)
        case .open(let s):
            receiveWhileReadable(bytes, s.framing, into: &actions)
        case .closingOurs(let s):
            receiveWhileReadable(bytes, s.framing, into: &actions)
        case .closingTheirs(let s):
            switch s.framing {
            case .authenticated(_, let receiver):
                // The receiver saw CLOSE: any byte now is `dataAfterClose`.
                _ = accept(bytes, receiver, into: &actions)
            case .legacy:
                end(.protocolError(HandshakeError(.dataAfterClose, "\(bytes.count) bytes after end of stream")), into: &actions)
            }
        case .closingBoth:
            end(.protocolError(HandshakeError(.dataAfterClose, "\(bytes.count) bytes after CLOSE")), into: &actions)
        case .closed:
            return
        }
    }

    /// Bytes while the peer has not sent CLOSE: frames on an authenticated channel, the stream
    /// itself on a legacy one.
    private mutating func receiveWhileReadable(_ bytes: UnsafeRawBufferPointer, _ framing: Framing, into actions: inout [Action]) {
        switch framing {
        case .authenticated(_, let receiver):
            if accept(bytes, receiver, into: &actions) { drain(receiver, into: &actions) }
        case .legacy:
            deliverLegacy(bytes, into: &actions)
        }
    }

    /// Hands bytes to the receiver; false (and the machine closed) when it refused them.
    private mutating func accept(_ bytes: UnsafeRawBufferPointer, _ receiver: FrameReceiver, into actions: inout [Action]) -> Bool {
        do throws(HandshakeError) {
            try receiver.receive(bytes)
            return true
        } catch {
            end(.protocolError(error), into: &actions)
            return false
        }
    }

    private mutating func deliverLegacy(_ bytes: UnsafeRawBufferPointer, into actions: inout [Action]) {
        traffic.bytesReceived += UInt64(bytes.count)
        traffic.messagesReceived += 1
        actions.append(.deliver(Array(bytes)))
    }

    /// Opens every complete frame the receiver holds.
    private mutating func drain(_ receiver: FrameReceiver, into actions: inout [Action]) {
        while true {
            let read: ChannelRead<[UInt8]>
            do throws(HandshakeError) {
                // Decrypted straight into the message's array when its frames are buffered.
                read = try receiver.nextMessageArray()
            } catch {
                end(.protocolError(error), into: &actions)
                return
            }
            switch read {
            case .message(let message):
                traffic.bytesReceived += UInt64(message.count)
                traffic.messagesReceived += 1
                actions.append(.deliver(message))
            case .closed:
                peerClosed(into: &actions)
                return
            case .needMoreBytes:
                return
            }
        }
    }

    /// The peer's CLOSE (or a legacy end of stream).
    private mutating func peerClosed(into actions: inout [Action]) {
        switch state {
        case .open(let s):
            state = .closingTheirs(ClosingTheirs(framing: s.framing))
            actions.append(.fact(.peerClosed))
        case .closingOurs(let s):
            actions.append(.fact(.peerClosed))
            switch (s.framing, s.writeSide) {
            case (.authenticated, .flushing):
                state = .closingBoth(ClosingBoth(deadline: s.deadline, endWhenFlushed: .clean))
            case (.authenticated, .shutDown):
                end(.clean, into: &actions)
            case (.legacy, _):
                end(.legacyEnded(byPeer: true), into: &actions)
            }
        case .handshaking, .closingTheirs, .closingBoth, .closed:
            preconditionFailure("peer CLOSE outside open or closing-ours: the receiver is only drained there")
        }
    }

    private mutating func feedHandshake(_ s: Handshaking, _ bytes: UnsafeRawBufferPointer, into actions: inout [Action]) {
        do throws(HandshakeError) {
            switch s.role {
            case .initiator(let machine):
                try apply(machine.receive(Array(bytes), now: configuration.now()), into: &actions)
            case .responder(let machine, .collecting(let probe)):
                let collected = probe + bytes
                switch Self.classify(collected) {
                case .undecided:
                    state = .handshaking(Handshaking(role: .responder(machine, .collecting(collected))))
                case .legacy:
                    admitLegacy(collected, into: &actions)
                case .handshake:
                    state = .handshaking(Handshaking(role: .responder(machine, .decided)))
                    try apply(machine.receive(collected, now: configuration.now()), into: &actions)
                }
            case .responder(let machine, .decided):
                try apply(machine.receive(Array(bytes), now: configuration.now()), into: &actions)
            }
        } catch {
            end(.protocolError(error), into: &actions)
        }
    }

    private mutating func apply(_ step: HandshakeStep, into actions: inout [Action]) {
        switch step {
        case .needMoreBytes:
            return
        case .send(let bytes):
            output.append(bytes)
            actions.append(.write)
        case .established(let session, let send):
            output.append(send)
            state = .open(Open(framing: .authenticated(session.sender, session.receiver)))
            actions.append(.fact(.established(session)))
            if output.count > 0 { actions.append(.write) }
            // Bytes that arrived behind the handshake are already in the receiver.
            drain(session.receiver, into: &actions)
        }
    }

    private mutating func admitLegacy(_ firstBytes: [UInt8], into actions: inout [Action]) {
        guard configuration.allowLegacyPeers, configuration.legacyCheck?() ?? true else {
            end(.legacyRefused, into: &actions)
            return
        }
        state = .open(Open(framing: .legacy))
        actions.append(.fact(.legacyAdmitted))
        firstBytes.withUnsafeBytes { deliverLegacy($0, into: &actions) }
    }

    enum ProbeResult { case undecided, legacy, handshake }

    /// UDS-HS1 starts with `o` (MAGIC), a Goblins peer with `<`: the first byte decides, and
    /// the whole 20-byte marker confirms a legacy peer.
    static func classify(_ bytes: [UInt8]) -> ProbeResult {
        guard let first = bytes.first, first == legacyMarker[0] else { return bytes.isEmpty ? .undecided : .handshake }
        let n = min(bytes.count, legacyMarker.count)
        guard bytes[0..<n].elementsEqual(legacyMarker[0..<n]) else { return .handshake }
        return n == legacyMarker.count ? .legacy : .undecided
    }

    private mutating func endOfStream(into actions: inout [Action]) {
        switch state {
        case .handshaking(let s):
            do throws(HandshakeError) {
                switch s.role {
                case .initiator(let machine): try machine.receiveEOF()
                case .responder(let machine, _): try machine.receiveEOF()
                }
            } catch {
                end(.protocolError(error), into: &actions)
            }
        case .open(let s):
            endOfStreamBeforeClose(s.framing, "end of stream without CLOSE", into: &actions)
        case .closingOurs(let s):
            endOfStreamBeforeClose(s.framing, "end of stream without CLOSE after ours", into: &actions)
        case .closingTheirs, .closingBoth, .closed:
            // After the peer's CLOSE an end of stream is what comes next.
            return
        }
    }

    /// EOF while the peer still owes its CLOSE: truncation on an authenticated channel; on a
    /// legacy stream, which has no authenticated end, EOF is all there is.
    private mutating func endOfStreamBeforeClose(_ framing: Framing, _ detail: String, into actions: inout [Action]) {
        switch framing {
        case .authenticated:
            end(.protocolError(HandshakeError(.truncated, detail)), into: &actions)
        case .legacy:
            peerClosed(into: &actions)
        }
    }

    private mutating func deadlinePassed(_ now: ContinuousClock.Instant, into actions: inout [Action]) {
        switch state {
        case .handshaking(let s):
            do throws(HandshakeError) {
                switch s.role {
                case .initiator(let machine): try machine.checkDeadline(now: now)
                case .responder(let machine, _): try machine.checkDeadline(now: now)
                }
            } catch {
                end(.protocolError(error), into: &actions)
            }
        case .closingOurs(let s) where now >= s.deadline:
            end(.protocolError(HandshakeError(.timeout, "peer did not answer CLOSE within \(configuration.closeTimeout)")), into: &actions)
        case .closingBoth(let s) where now >= s.deadline:
            end(.protocolError(HandshakeError(.timeout, "peer did not read our CLOSE within \(configuration.closeTimeout)")), into: &actions)
        case .open, .closingOurs, .closingTheirs, .closingBoth, .closed:
            return
        }
    }

    private mutating func close(now: ContinuousClock.Instant, into actions: inout [Action]) {
        let deadline = now + configuration.closeTimeout
        switch state {
        case .handshaking:
            // The application has no channel before the handshake ends.
            preconditionFailure("close before the channel existed")
        case .open(let s):
            guard sealClose(s.framing, into: &actions) else { return }
            state = .closingOurs(ClosingOurs(framing: s.framing, writeSide: .flushing, deadline: deadline))
            actions.append(.write)
        case .closingTheirs(let s):
            guard sealClose(s.framing, into: &actions) else { return }
            switch s.framing {
            case .authenticated:
                state = .closingBoth(ClosingBoth(deadline: deadline, endWhenFlushed: .clean))
                actions.append(.write)
            case .legacy:
                if output.count == 0 {
                    actions.append(.shutDownWrite)
                    end(.legacyEnded(byPeer: true), into: &actions)
                } else {
                    state = .closingBoth(ClosingBoth(deadline: deadline, endWhenFlushed: .legacyEnded(byPeer: true)))
                    actions.append(.write)
                }
            }
        case .closingOurs, .closingBoth, .closed:
            return
        }
    }

    /// Appends our CLOSE frame (nothing for a legacy channel); false when the machine ended.
    private mutating func sealClose(_ framing: Framing, into actions: inout [Action]) -> Bool {
        guard case .authenticated(let sender, _) = framing else { return true }
        do throws(HandshakeError) {
            output.append(try sender.close())
            return true
        } catch {
            end(.protocolError(error), into: &actions)
            return false
        }
    }

    private mutating func wrote(_ n: Int, into actions: inout [Action]) {
        if case .closed = state { return }
        output.consume(n)
        guard output.count == 0 else { return }
        armRelease()
        switch state {
        case .closingOurs(let s):
            guard case .flushing = s.writeSide else { return }
            actions.append(.shutDownWrite)
            switch s.framing {
            case .authenticated:
                state = .closingOurs(ClosingOurs(framing: s.framing, writeSide: .shutDown, deadline: s.deadline))
            case .legacy:
                // Legacy: there is no CLOSE to wait for.
                end(.legacyEnded(byPeer: false), into: &actions)
            }
        case .closingBoth(let s):
            actions.append(.shutDownWrite)
            end(s.endWhenFlushed, into: &actions)
        case .handshaking, .open, .closingTheirs, .closed:
            return
        }
    }

    /// Enters `closed` once: reports the end, drops unsent output, asks for the close.
    private mutating func end(_ end: ChannelEnd, into actions: inout [Action]) {
        let wasOpen: Bool
        switch state {
        case .closed: return
        case .handshaking: wasOpen = false
        case .open, .closingOurs, .closingTheirs, .closingBoth: wasOpen = true
        }
        state = .closed(Closed(end: end, wasOpen: wasOpen))
        output.clear()
        releaseDeadline = nil
        actions.append(.fact(.ended(end, wasOpen: wasOpen)))
        actions.append(.closeDescriptor)
    }
}

extension ChannelMachine.Framing {
    var sender: FrameSender? {
        switch self {
        case .authenticated(let sender, _): return sender
        case .legacy: return nil
        }
    }

    var receiver: FrameReceiver? {
        switch self {
        case .authenticated(_, let receiver): return receiver
        case .legacy: return nil
        }
    }
}

/// How a channel ended.
public enum ChannelEnd: Equatable, Sendable {
    /// Both authenticated CLOSEs, ours written.
    case clean
    /// The peer's bytes, the handshake, or a deadline failed (`truncated`, `decryptFailed`,
    /// `timeout`, …).
    case protocolError(HandshakeError)
    /// A read or write on the socket failed.
    case transportFailed(String)
    /// Ended locally without CLOSE.
    case aborted
    /// A legacy channel (no authenticated end) ended; `byPeer` when the peer's end of stream
    /// came first.
    case legacyEnded(byPeer: Bool)
    /// A legacy peer, and legacy peers are not allowed.
    case legacyRefused
}

/// Bytes and messages a channel carried (application bytes, not frame overhead).
public struct ChannelTraffic: Equatable, Sendable {
    public var bytesSent: UInt64 = 0
    public var bytesReceived: UInt64 = 0
    public var messagesSent: UInt64 = 0
    public var messagesReceived: UInt64 = 0

    public init() {}
}

/// The sealed bytes waiting for the socket: one contiguous buffer reused across messages, so
/// frames are sealed in place and leave together in one write. It starts empty and grows with
/// traffic; capacity a burst grew is given back once it drains.
final class ChannelOutput {
    private var storage: UnsafeMutableRawPointer?
    private var capacity = 0
    private var head = 0
    private var tail = 0
    /// First allocation: enough for a handshake message or a few small frames.
    static let initialCapacity = 512
    /// Capacity above this is given back once the buffer drains.
    static let retainedCapacity = 16 << 10

    init() {}

    deinit {
        if let storage {
            // Sealed bytes are ciphertext, but a legacy channel queues plaintext here.
            secureZero(UnsafeMutableRawBufferPointer(start: storage, count: capacity))
            storage.deallocate()
        }
    }

    var count: Int { tail - head }

    var capacityBytes: Int { capacity }

    var readable: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: storage.map { $0 + head }, count: tail - head) }

    /// Free space of at least `n` bytes after the queued ones (compacting or growing).
    func reserve(_ n: Int) -> UnsafeMutableRawBufferPointer {
        if capacity - tail < n {
            let live = tail - head
            if let storage, head > 0, capacity - live >= n {
                if live > 0 { storage.copyMemory(from: storage + head, byteCount: live) }
            } else {
                var grown = max(capacity, Self.initialCapacity)
                while grown - live < n { grown *= 2 }
                let fresh = UnsafeMutableRawPointer.allocate(byteCount: grown, alignment: 16)
                if let storage {
                    if live > 0 { fresh.copyMemory(from: storage + head, byteCount: live) }
                    secureZero(UnsafeMutableRawBufferPointer(start: storage, count: capacity))
                    storage.deallocate()
                }
                storage = fresh
                capacity = grown
            }
            head = 0
            tail = live
        }
        return UnsafeMutableRawBufferPointer(start: storage! + tail, count: n)
    }

    func commit(_ n: Int) {
        precondition(n >= 0 && tail + n <= capacity, "committed more than reserved")
        tail += n
    }

    func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        let region = reserve(bytes.count)
        region.copyMemory(from: bytes)
        commit(bytes.count)
    }

    func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    func consume(_ n: Int) {
        precondition(n >= 0 && n <= count, "consumed more than queued")
        head += n
        if head == tail {
            head = 0
            tail = 0
        }
    }

    /// Gives back memory a burst grew, once empty.
    func releaseIfLarge() {
        guard count == 0, capacity > Self.retainedCapacity, let storage else { return }
        secureZero(UnsafeMutableRawBufferPointer(start: storage, count: capacity))
        storage.deallocate()
        self.storage = nil
        capacity = 0
    }

    /// Drops everything queued and gives the memory back (the channel ended).
    func clear() {
        head = 0
        tail = 0
        if let storage {
            secureZero(UnsafeMutableRawBufferPointer(start: storage, count: capacity))
            storage.deallocate()
        }
        storage = nil
        capacity = 0
    }
}
