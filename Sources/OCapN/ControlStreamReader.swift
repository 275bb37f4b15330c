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

    /// One complete item from `nextEncoded()`: a `uds:new-connection` record comes as its bytes.
    public enum EncodedItem {
        /// A control message that carries no descriptor.
        case message(SyrupValue)
        /// A `uds:new-connection` record as received with the descriptor its marker claimed.
        case newConnection(Introduction)
    }

    /// A `uds:new-connection` as `nextEncoded()` hands it over.
    public struct Introduction {
        /// The record's bytes: validated canonical Syrup whose label is that symbol; its fields
        /// are for the caller to check.
        public let record: [UInt8]
        /// The descriptor its marker claimed; the caller owns it.
        public let descriptor: Descriptor
    }

    static var markerLength: Int { 4 }
    static var newConnectionLabel: SyrupValue { .symbol("uds:new-connection") }

    public let limits: Limits
    /// Resumable decoder: a value dripped one byte per read costs linear time.
    private var decoder: SyrupStreamDecoder
    /// Unclaimed descriptors, and beside each the stream range of the read that delivered it.
    /// Two arrays rather than one of pairs: the ranges, which every step consults, then need
    /// no generic code (the runtime's reader is not specialised across the module boundary).
    private var queuedRanges: [Range<Int>] = []
    private var queuedDescriptors: [Descriptor] = []
    /// A `uds:new-connection` decoded, waiting for its 4-byte marker.
    private var awaitingMarker: ControlStreamPendingRecord?
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
        var extras: [Descriptor] = []
        if !descriptors.isEmpty {
            let start = decoder.streamOffset + decoder.bufferedCount
            let range = start..<(start + bytes.count)
            // On any error every descriptor of the read stays queued, so `drainDescriptors()`
            // hands all of them back.
            if descriptors.count > limits.maxDescriptorsPerRead {
                queue(descriptors, range)
                throw fail(.extraFDs, "\(descriptors.count) descriptors arrived in one read; "
                    + "at most \(limits.maxDescriptorsPerRead) are accepted (one, plus padding)")
            }
            if queuedRanges.count + 1 > limits.maxQueuedDescriptors {
                let unclaimed = queuedRanges.count
                queue(descriptors, range)
                throw fail(.extraFDs, "a descriptor arrived with \(unclaimed) still unclaimed (limit \(limits.maxQueuedDescriptors))")
            }
            if bytes.isEmpty {
                queue(descriptors, range)
                throw fail(.unexpectedFD, "a descriptor arrived without any data byte")
            }
            queuedRanges.append(range)
            queuedDescriptors.append(descriptors[0])
            if descriptors.count > 1 { extras = Array(descriptors.dropFirst()) }
        }
        // Callers drain `next()` after every read, so at most one partial value plus one read is
        // buffered; `next()` enforces the size limit on the partial value.
        decoder.append(bytes)
        return extras
    }

    public mutating func receive(_ bytes: UnsafeRawBufferPointer, descriptors: [Descriptor]) throws(OCapNError) -> [Descriptor] {
        try receive([UInt8](bytes), descriptors: descriptors)
    }

    private mutating func queue(_ descriptors: [Descriptor], _ range: Range<Int>) {
        for d in descriptors {
            queuedRanges.append(range)
            queuedDescriptors.append(d)
        }
    }

    /// Takes the next complete item, or nil when more bytes are needed.
    public mutating func next() throws(OCapNError) -> Item? {
        switch try step(encoded: false) {
        case .needMore:
            return nil
        case let .message(value):
            return .message(value)
        case .introduction(.value(let value)):
            return .newConnection(value, queuedDescriptors.removeFirst())
        case .introduction(.encoded):
            preconditionFailure("a built read yielded an encoded record")
        }
    }

    /// Takes the next complete item like `next()`, with the same checks and errors, but hands
    /// a `uds:new-connection` record over as its bytes instead of building it: for a server
    /// that reads two locators from it and forwards it unchanged (wire §5: the target gets the
    /// same record).
    public mutating func nextEncoded() throws(OCapNError) -> EncodedItem? {
        switch try step(encoded: true) {
        case .needMore:
            return nil
        case let .message(value):
            return .message(value)
        case .introduction(.encoded(let record)):
            return .newConnection(Introduction(record: record, descriptor: queuedDescriptors.removeFirst()))
        case .introduction(.value(let value)):
            // Only if the prefix test and the label test disagreed, which canonical Syrup rules
            // out; the encoding is the answer either way.
            return .newConnection(Introduction(record: SyrupEncoder.encode(value), descriptor: queuedDescriptors.removeFirst()))
        }
    }

    /// Decodes up to the next item. For `.introduction` the marker's descriptor is the first
    /// queued one, its range already removed: the caller takes it.
    private mutating func step(encoded: Bool) throws(OCapNError) -> ControlStreamStep {
        precondition(!failed, "ControlStreamReader used after an error")
        while true {
            if let pending = awaitingMarker {
                let markerOffset = decoder.streamOffset
                guard decoder.bufferedCount >= Self.markerLength else { return .needMore }
                guard let index = queuedRanges.firstIndex(where: { $0.contains(markerOffset) }) else {
                    throw fail(.fdMissing, "the marker after uds:new-connection at byte \(markerOffset) carried no descriptor")
                }
                if index != 0 {
                    throw fail(.unexpectedFD, "a descriptor arrived before the marker that should carry it")
                }
                queuedRanges.removeFirst()
                decoder.skipRaw(Self.markerLength)
                awaitingMarker = nil
                return .introduction(pending)
            }
            try checkUnclaimed()
            let decoded: SyrupStreamDecoder.Decoded?
            do throws(SyrupError) {
                if encoded {
                    decoded = try decoder.next(encodedIfPrefixed: newConnectionPrefix)
                } else {
                    decoded = try decoder.next().map(SyrupStreamDecoder.Decoded.value)
                }
            } catch {
                let code: OCapNError.Code = error.code == .limitExceeded ? .messageTooLarge : .malformedMessage
                throw fail(code, error.description)
            }
            switch decoded {
            case nil:
                if decoder.bufferedCount > limits.syrup.maxTotalBytes {
                    throw fail(.messageTooLarge, "message exceeds \(limits.syrup.maxTotalBytes) bytes")
                }
                return .needMore
            case let .encoded(record)?:
                awaitingMarker = .encoded(record)
            case let .value(value)?:
                if case let .record(label, _) = value, label == Self.newConnectionLabel {
                    awaitingMarker = .value(value)
                    continue
                }
                // Bytes of earlier segments may share the descriptor's read (K5: a peer that sends
                // uds:signature and at once an introduction), so a message inside that read is fine;
                // only a read that ends with it leaves the descriptor with no marker to claim it.
                try checkUnclaimed()
                return .message(value)
            }
        }
    }

    /// Reports end of stream: an error if it cut a message or left a descriptor unclaimed.
    public mutating func finish() throws(OCapNError) {
        precondition(!failed, "ControlStreamReader used after an error")
        if awaitingMarker != nil { throw fail(.truncated, "stream ended before the marker and descriptor of uds:new-connection") }
        if decoder.bufferedCount > 0 { throw fail(.truncated, "stream ended inside a message (\(decoder.bufferedCount) bytes buffered)") }
        if !queuedRanges.isEmpty { throw fail(.unexpectedFD, "stream ended with an unclaimed descriptor") }
    }

    /// Hands back every descriptor still held (to be closed), e.g. after an error or on close.
    public mutating func drainDescriptors() -> [Descriptor] {
        let out = queuedDescriptors
        queuedDescriptors.removeAll()
        queuedRanges.removeAll()
        return out
    }

    private mutating func fail(_ code: OCapNError.Code, _ detail: String) -> OCapNError {
        failed = true
        return OCapNError(code, detail)
    }

    /// A descriptor whose read has been consumed entirely without a marker claiming it.
    private mutating func checkUnclaimed() throws(OCapNError) {
        if let first = queuedRanges.first, first.upperBound <= decoder.streamOffset {
            throw fail(.unexpectedFD, "a descriptor arrived with bytes that held no marker")
        }
    }
}

/// The first bytes of every `uds:new-connection` record: canonical Syrup has one encoding.
/// (A generic type cannot hold a stored static.)
private let newConnectionPrefix: [UInt8] = Array("<18'uds:new-connection".utf8)

/// A `uds:new-connection` read and waiting for its marker: built (`next()`) or as bytes
/// (`nextEncoded()`). Outside the generic reader, so handling it needs no type metadata.
private enum ControlStreamPendingRecord {
    case value(SyrupValue)
    case encoded([UInt8])
}

/// Where `ControlStreamReader.step` stopped.
private enum ControlStreamStep {
    case needMore
    case message(SyrupValue)
    /// A record whose marker claimed the first queued descriptor.
    case introduction(ControlStreamPendingRecord)
}
