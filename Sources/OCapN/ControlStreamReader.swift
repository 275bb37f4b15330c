import Syrup

/// Turns the bytes and descriptors of one control connection (peer ↔ introduction server) into
/// Syrup values, pairing each `uds:new-connection` with the descriptor that follows it.
///
/// The wire has no framing: values are back to back, and after a `uds:new-connection` record the
/// sender does one `sendmsg` with a 4-byte marker and exactly one descriptor (ocapn-uds-wire.md §1,
/// §5). Linux delivers a descriptor with the read that holds the first byte of the segment that
/// carried it, and such a read ends where that segment ends (reliability catalog K5). So each
/// received descriptor is tagged with the stream range of its read; the marker after a
/// `uds:new-connection` claims the descriptor whose range holds the marker's first byte. A
/// descriptor that no marker claims, a marker without one, or a second descriptor in flight is a
/// protocol error. Generic over the descriptor type so it runs without sockets (tests, fuzzers).
///
/// Padding tolerance (issue #17, PROTOCOL.md "Compatibility"): a sender that sizes its control
/// message as a padded C struct (24 bytes, not CMSG_LEN(4) = 20) makes the kernel pass a second
/// descriptor, whatever int sits in the padding (zero: the sender's stdin). A read with up to
/// `maxDescriptorsPerRead` descriptors keeps the first and hands the rest back from `receive`
/// to be closed at once; more than that is `extraFDs`.
///
/// Errors are `OCapNError`s (the stream codes `malformedMessage`, `messageTooLarge`, `fdMissing`,
/// `unexpectedFD`, `extraFDs`, `truncated`). After any error the connection must be closed and
/// `drainDescriptors()` closed by the caller.
public struct ControlStreamReader<Descriptor> {
    public struct Limits: Sendable, Equatable {
        /// Syrup limits for one control message.
        public var syrup: SyrupLimits
        /// Unclaimed descriptors held at once (the protocol needs one).
        public var maxQueuedDescriptors: Int
        /// Descriptors one read may carry: the first is kept, the others are handed back to be
        /// closed. 2 tolerates one padding descriptor (a Goblins-style 24-byte control message);
        /// 1 is strict. More than this is `extraFDs`.
        public var maxDescriptorsPerRead: Int

        public init(syrup: SyrupLimits = .controlMessage, maxQueuedDescriptors: Int = 1, maxDescriptorsPerRead: Int = 2) {
            precondition(maxDescriptorsPerRead >= 1, "a read must be allowed its one descriptor")
            self.syrup = syrup
            self.maxQueuedDescriptors = maxQueuedDescriptors
            self.maxDescriptorsPerRead = maxDescriptorsPerRead
        }
    }

    /// One complete item from the stream.
    public enum Item {
        /// A control message that carries no descriptor.
        case message(SyrupValue)
        /// A `uds:new-connection` record with the descriptor its marker claimed.
        case newConnection(SyrupValue, Descriptor)
    }

    static var markerLength: Int { 4 }
    static var newConnectionLabel: SyrupValue { .symbol("uds:new-connection") }

    public let limits: Limits
    /// Resumable decoder: a value dripped one byte per read costs linear time.
    private var decoder: SyrupStreamDecoder
    /// Unclaimed descriptors with the stream range of the read that delivered them.
    private var queued: [(range: Range<Int>, descriptor: Descriptor)] = []
    /// A `uds:new-connection` value decoded, waiting for its 4-byte marker.
    private var awaitingMarker: SyrupValue?
    private var failed = false

    public init(limits: Limits = Limits()) {
        self.limits = limits
        decoder = SyrupStreamDecoder(limits: limits.syrup)
    }

    /// Bytes not yet consumed (for diagnostics and bounds).
    public var bufferedByteCount: Int { decoder.bufferedCount }

    /// Whether a partial value or a pending marker is buffered (EOF now would be `truncated`).
    public var isMidMessage: Bool { decoder.bufferedCount > 0 || awaitingMarker != nil }

    /// Feeds the result of one `recvmsg`: its bytes and the descriptors it delivered.
    /// Descriptors are owned by the reader from here on; on a thrown error they are in
    /// `drainDescriptors()`.
    ///
    /// Returns the extra descriptors of a read that carried more than one but no more than
    /// `limits.maxDescriptorsPerRead`: the caller owns them and closes them at once (and
    /// records that it did). The first one stays queued for its marker as usual.
    public mutating func receive(_ bytes: [UInt8], descriptors: [Descriptor]) throws(OCapNError) -> [Descriptor] {
        precondition(!failed, "ControlStreamReader used after an error")
        let start = decoder.streamOffset + decoder.bufferedCount
        var extras: [Descriptor] = []
        if !descriptors.isEmpty {
            let range = start..<(start + bytes.count)
            // On any error every descriptor of the read stays queued, so `drainDescriptors()`
            // hands all of them back.
            if descriptors.count > limits.maxDescriptorsPerRead {
                for d in descriptors { queued.append((range, d)) }
                throw fail(.extraFDs, "\(descriptors.count) descriptors arrived in one read; "
                    + "at most \(limits.maxDescriptorsPerRead) are accepted (one, plus padding)")
            }
            if queued.count + 1 > limits.maxQueuedDescriptors {
                let unclaimed = queued.count
                for d in descriptors { queued.append((range, d)) }
                throw fail(.extraFDs, "a descriptor arrived with \(unclaimed) still unclaimed (limit \(limits.maxQueuedDescriptors))")
            }
            if bytes.isEmpty {
                for d in descriptors { queued.append((range, d)) }
                throw fail(.unexpectedFD, "a descriptor arrived without any data byte")
            }
            queued.append((range, descriptors[0]))
            extras = Array(descriptors.dropFirst())
        }
        // Callers drain `next()` after every read, so at most one partial value plus one read is
        // buffered; `next()` enforces the size limit on the partial value.
        decoder.append(bytes)
        return extras
    }

    public mutating func receive(_ bytes: UnsafeRawBufferPointer, descriptors: [Descriptor]) throws(OCapNError) -> [Descriptor] {
        try receive([UInt8](bytes), descriptors: descriptors)
    }

    /// Takes the next complete item, or nil when more bytes are needed.
    public mutating func next() throws(OCapNError) -> Item? {
        precondition(!failed, "ControlStreamReader used after an error")
        if let pending = awaitingMarker {
            let markerOffset = decoder.streamOffset
            guard decoder.bufferedCount >= Self.markerLength else { return nil }
            guard let index = queued.firstIndex(where: { $0.range.contains(markerOffset) }) else {
                throw fail(.fdMissing, "the marker after uds:new-connection at byte \(markerOffset) carried no descriptor")
            }
            if index != 0 {
                throw fail(.unexpectedFD, "a descriptor arrived before the marker that should carry it")
            }
            let entry = queued.removeFirst()
            _ = decoder.takeRaw(Self.markerLength)
            awaitingMarker = nil
            return .newConnection(pending, entry.descriptor)
        }
        try checkUnclaimed()
        let decoded: SyrupValue?
        do throws(SyrupError) {
            decoded = try decoder.next()
        } catch {
            let code: OCapNError.Code = error.code == .limitExceeded ? .messageTooLarge : .malformedMessage
            throw fail(code, error.description)
        }
        guard let value = decoded else {
            if decoder.bufferedCount > limits.syrup.maxTotalBytes {
                throw fail(.messageTooLarge, "message exceeds \(limits.syrup.maxTotalBytes) bytes")
            }
            return nil
        }
        if case let .record(label, _) = value, label == Self.newConnectionLabel {
            awaitingMarker = value
            return try next()
        }
        // Bytes of earlier segments may share the descriptor's read (K5: a peer that sends
        // uds:signature and at once an introduction), so a message inside that read is fine;
        // only a read that ends with it leaves the descriptor with no marker to claim it.
        try checkUnclaimed()
        return .message(value)
    }

    /// Reports end of stream: an error if it cut a message or left a descriptor unclaimed.
    public mutating func finish() throws(OCapNError) {
        precondition(!failed, "ControlStreamReader used after an error")
        if awaitingMarker != nil { throw fail(.truncated, "stream ended before the marker and descriptor of uds:new-connection") }
        if decoder.bufferedCount > 0 { throw fail(.truncated, "stream ended inside a message (\(decoder.bufferedCount) bytes buffered)") }
        if !queued.isEmpty { throw fail(.unexpectedFD, "stream ended with an unclaimed descriptor") }
    }

    /// Hands back every descriptor still held (to be closed), e.g. after an error or on close.
    public mutating func drainDescriptors() -> [Descriptor] {
        let out = queued.map(\.descriptor)
        queued.removeAll()
        return out
    }

    private mutating func fail(_ code: OCapNError.Code, _ detail: String) -> OCapNError {
        failed = true
        return OCapNError(code, detail)
    }

    /// A descriptor whose read has been consumed entirely without a marker claiming it.
    private mutating func checkUnclaimed() throws(OCapNError) {
        if let first = queued.first, first.range.upperBound <= decoder.streamOffset {
            throw fail(.unexpectedFD, "a descriptor arrived with bytes that held no marker")
        }
    }
}
