import SodiumCrypto

/// Limits of the framed channel (PROTOCOL.md §6.4). Every one is enforced before allocating.
public struct ChannelConfiguration: Sendable, Equatable {
    /// Largest reassembled message accepted or sent (default 16 MiB).
    public var maxMessageSize: Int
    /// Largest DATA fragment body this side sends, 1…65518 (the receiver accepts any legal frame).
    public var maxFragmentSize: Int
    /// Ceiling on received-but-unprocessed bytes; the runtime drains events before feeding more.
    public var maxBufferedInput: Int

    public init(maxMessageSize: Int = 16 << 20, maxFragmentSize: Int = FrameFormat.maxBody, maxBufferedInput: Int = 4 << 20) {
        precondition(maxMessageSize >= 1, "maxMessageSize must be positive")
        precondition((1...FrameFormat.maxBody).contains(maxFragmentSize), "maxFragmentSize must be 1...65518")
        precondition(maxBufferedInput >= FrameFormat.maxFrameLength, "maxBufferedInput must hold one whole frame")
        self.maxMessageSize = maxMessageSize
        self.maxFragmentSize = maxFragmentSize
        self.maxBufferedInput = maxBufferedInput
    }
}

/// Transport frame layout (PROTOCOL.md §6.1):
/// `LEN` (u16 big-endian, ciphertext length 17…65535) ‖ ChaCha20-Poly1305(k, n, ad = "", `TYPE` ‖ body).
public enum FrameFormat {
    public static let lengthPrefix = 2
    public static let typeLength = 1
    public static let tagLength = ChaChaPoly.tagLength
    /// Smallest ciphertext: TYPE plus tag.
    public static let minCiphertext = typeLength + tagLength
    public static let maxCiphertext = Int(UInt16.max)
    /// Largest body: 65535 − 16 − 1.
    public static let maxBody = maxCiphertext - tagLength - typeLength
    /// Bytes a frame adds around its body.
    public static let overhead = lengthPrefix + typeLength + tagLength
    public static let maxFrameLength = lengthPrefix + maxCiphertext

    /// Frame types (the first plaintext byte).
    public enum FrameType: UInt8, Sendable {
        /// The last (or only) fragment of a message.
        case data = 0x00
        /// Authenticated end of the stream.
        case close = 0x01
        /// Reserved for a future REKEY; v1 rejects it.
        case reservedRekey = 0x02
        /// The initiator's signature, only as its frame n = 0.
        case auth = 0x03
        /// A fragment with more of the same message to follow.
        case dataMore = 0x04
    }
}

/// The sending half of an established channel: seals messages into frames with its own key
/// and counter nonce. Not thread-safe; one writer owns it.
public final class FrameSender {
    private enum State { case open, closed, failed }

    let key: SecretBytes
    private var nonce: UInt64
    private var state: State = .open
    public let configuration: ChannelConfiguration

    init(key: SecretBytes, nonce: UInt64, configuration: ChannelConfiguration) {
        self.key = key
        self.nonce = nonce
        self.configuration = configuration
    }

    /// Whether CLOSE has been sealed (nothing may follow it).
    public var isClosed: Bool { state == .closed }

    /// Number of frames a message of `length` bytes is split into.
    public func frameCount(messageLength length: Int) -> Int {
        precondition(length >= 1, "messages are at least one byte")
        return (length + configuration.maxFragmentSize - 1) / configuration.maxFragmentSize
    }

    /// Exact number of bytes `seal` writes for a message of `length` bytes.
    public func sealedLength(messageLength length: Int) -> Int {
        length + frameCount(messageLength: length) * FrameFormat.overhead
    }

    /// Seals `message` (1…maxMessageSize bytes) into `output`, which must hold
    /// `sealedLength(messageLength:)` bytes and not overlap it; returns the bytes written, with
    /// no allocation. Each fragment is copied into its frame and encrypted in place.
    ///
    /// Throws `messageTooLarge` or `nonceExhausted`; in both cases nothing was written and the
    /// sender is unchanged (a too-large message) or dead (an exhausted nonce).
    public func seal(_ message: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws(HandshakeError) -> Int {
        precondition(state == .open, "seal after CLOSE or failure: the runtime must stop sending")
        precondition(message.count >= 1, "empty messages are not sent (PROTOCOL.md §6.2)")
        guard message.count <= configuration.maxMessageSize else {
            throw HandshakeError.make(.messageTooLarge, "message of \(message.count) bytes exceeds maxMessageSize \(configuration.maxMessageSize)")
        }
        let frames = frameCount(messageLength: message.count)
        let total = message.count + frames * FrameFormat.overhead
        precondition(output.count >= total, "output buffer smaller than sealedLength")
        // All nonces this message needs must exist before any frame is written (commit once).
        guard UInt64(frames) <= UInt64.max - nonce else {
            state = .failed
            throw HandshakeError.make(.nonceExhausted, "send nonce would reach 2^64-1")
        }
        let src = message.baseAddress!
        let dst = output.baseAddress!
        precondition(src + message.count <= dst || dst + total <= src, "message and output overlap")
        var offset = 0
        var written = 0
        var n = nonce
        while offset < message.count {
            let body = min(configuration.maxFragmentSize, message.count - offset)
            let type: FrameFormat.FrameType = offset + body == message.count ? .data : .dataMore
            (dst + written + FrameFormat.lengthPrefix + FrameFormat.typeLength).copyMemory(from: src + offset, byteCount: body)
            written += sealFrameInPlace(type: type, bodyLength: body, at: dst + written, nonce: n)
            n += 1
            offset += body
        }
        nonce = n
        return written
    }

    /// Seals `message` into a new array.
    public func seal(_ message: [UInt8]) throws(HandshakeError) -> [UInt8] {
        var out: [UInt8] = []
        try seal(message, appendingTo: &out)
        return out
    }

    /// Seals `message` and appends the frames to `output` (one copy of the body, no temporaries).
    public func seal(_ message: [UInt8], appendingTo output: inout [UInt8]) throws(HandshakeError) {
        precondition(!message.isEmpty, "empty messages are not sent (PROTOCOL.md §6.2)")
        guard message.count <= configuration.maxMessageSize else {
            throw HandshakeError.make(.messageTooLarge, "message of \(message.count) bytes exceeds maxMessageSize \(configuration.maxMessageSize)")
        }
        let start = output.count
        let needed = sealedLength(messageLength: message.count)
        var failure: HandshakeError?
        output.append(contentsOf: repeatElement(0, count: needed))
        message.withUnsafeBytes { m in
            output.withUnsafeMutableBytes { o in
                do throws(HandshakeError) {
                    _ = try seal(m, into: UnsafeMutableRawBufferPointer(rebasing: o[start...]))
                } catch { failure = error }
            }
        }
        if let failure {
            output.removeSubrange(start...)
            throw failure
        }
    }

    /// The authenticated CLOSE frame. After it the sender is finished; the runtime writes the
    /// frame and then shuts down its write side.
    public func close() throws(HandshakeError) -> [UInt8] {
        precondition(state == .open, "close after CLOSE or failure: the runtime must stop sending")
        let frame = try sealControl(type: .close, body: [])
        state = .closed
        return frame
    }

    /// The AUTH frame (the initiator's frame n = 0).
    func sealAuth(signature: [UInt8]) throws(HandshakeError) -> [UInt8] {
        precondition(nonce == 0 && state == .open, "AUTH is only ever frame 0")
        return try sealControl(type: .auth, body: signature)
    }

    /// Seals an arbitrary frame type and body (vector generation and tests of the receiver).
    func sealControl(type: FrameFormat.FrameType, body: [UInt8]) throws(HandshakeError) -> [UInt8] {
        precondition(body.count <= FrameFormat.maxBody, "frame body too large")
        guard nonce < UInt64.max else {
            state = .failed
            throw HandshakeError.make(.nonceExhausted, "send nonce reached 2^64-1")
        }
        var out = [UInt8](repeating: 0, count: body.count + FrameFormat.overhead)
        out.withUnsafeMutableBytes { o in
            body.withUnsafeBytes { b in
                if b.count > 0 { (o.baseAddress! + FrameFormat.lengthPrefix + 1).copyMemory(from: b.baseAddress!, byteCount: b.count) }
            }
            _ = sealFrameInPlace(type: type, bodyLength: body.count, at: o.baseAddress!, nonce: nonce)
        }
        nonce += 1
        return out
    }

    /// Writes LEN and TYPE around a body already at `frame + 3`, then encrypts in place.
    @inline(__always)
    private func sealFrameInPlace(type: FrameFormat.FrameType, bodyLength: Int, at frame: UnsafeMutableRawPointer, nonce n: UInt64) -> Int {
        let plain = FrameFormat.typeLength + bodyLength
        let ciphertext = plain + FrameFormat.tagLength
        frame.storeBytes(of: UInt8(truncatingIfNeeded: ciphertext >> 8), as: UInt8.self)
        (frame + 1).storeBytes(of: UInt8(truncatingIfNeeded: ciphertext), as: UInt8.self)
        (frame + 2).storeBytes(of: type.rawValue, as: UInt8.self)
        let region = frame + FrameFormat.lengthPrefix
        // In place: the AEAD allows output == input exactly.
        ChaChaPoly.seal(
            key: key, nonce: n, ad: UnsafeRawBufferPointer(start: nil, count: 0),
            plaintext: UnsafeRawBufferPointer(start: region, count: plain),
            into: UnsafeMutableRawBufferPointer(start: region, count: ciphertext))
        return FrameFormat.lengthPrefix + ciphertext
    }

    /// Test hook: jump the nonce (Noise §5.1 SetNonce) to reach exhaustion without 2^64 frames.
    func setNonceForTesting(_ n: UInt64) { nonce = n }

    /// Test hook: the traffic key (K_IR or K_RI). Internal on purpose: only `@testable` test
    /// code reaches it, and no public or SPI path of the library returns a traffic key
    /// (`vectors verify` checks keys by what they seal instead).
    var trafficKeyForTesting: [UInt8] { key.withUnsafeBytes { Array($0) } }
}

/// What the receiving half produced.
public enum ChannelEvent: Equatable, Sendable {
    /// A whole reassembled message.
    case message([UInt8])
    /// The peer's authenticated CLOSE: a clean end of stream.
    case closed
}

/// Result of the zero-copy read `FrameReceiver.nextMessage(_:)`.
public enum ChannelRead<R> {
    case message(R)
    case closed
    /// No complete message is buffered yet.
    case needMoreBytes
}

/// The receiving half of an established channel: buffers bytes, opens frames in order,
/// reassembles fragments. Any failure is fatal (no resynchronisation). Not thread-safe.
public final class FrameReceiver {
    private enum State { case open, closed, failed }

    let key: SecretBytes
    private var nonce: UInt64
    private var state: State = .open
    public let configuration: ChannelConfiguration

    // Received bytes: [inputStart, inputEnd) of `input`.
    private var input: UnsafeMutableRawPointer
    private var inputCapacity: Int
    private var inputStart = 0
    private var inputEnd = 0

    // Reassembly of a message whose frames arrive apart (message byte i at message[i]); a
    // message whose frames are all buffered skips it (`nextMessageArray`).
    private var message: UnsafeMutableRawPointer
    private var messageCapacity: Int
    private var messageLength = 0
    private var messageReady = false

    // Small to start: an idle channel holds little; both grow with traffic.
    private static let initialInput = 1024
    private static let initialMessage = 256
    /// Input capacity above this is given back by `releaseIdleMemory()`.
    private static let retainedInputCapacity = 16 << 10
    /// Reassembly memory above this is released after each message.
    private static let retainedMessageCapacity = 256 << 10

    init(key: SecretBytes, nonce: UInt64, configuration: ChannelConfiguration) {
        self.key = key
        self.nonce = nonce
        self.configuration = configuration
        inputCapacity = Self.initialInput
        input = UnsafeMutableRawPointer.allocate(byteCount: inputCapacity, alignment: 16)
        messageCapacity = Self.initialMessage
        message = UnsafeMutableRawPointer.allocate(byteCount: messageCapacity, alignment: 16)
    }

    deinit {
        // Both buffers held plaintext or ciphertext of this session.
        secureZero(UnsafeMutableRawBufferPointer(start: input, count: inputCapacity))
        secureZero(UnsafeMutableRawBufferPointer(start: message, count: messageCapacity))
        input.deallocate()
        message.deallocate()
    }

    /// Whether the peer's CLOSE has been read.
    public var isClosed: Bool { state == .closed }

    /// Bytes received but not yet consumed by `next()`.
    public var bufferedByteCount: Int { inputEnd - inputStart }

    /// Appends bytes read from the socket. Bytes after the peer's CLOSE are `dataAfterClose`.
    public func receive(_ bytes: UnsafeRawBufferPointer) throws(HandshakeError) {
        precondition(state != .failed, "receive after failure: the runtime must drop the channel")
        guard bytes.count > 0 else { return }
        if state == .closed {
            state = .failed
            throw HandshakeError.make(.dataAfterClose, "\(bytes.count) bytes after CLOSE")
        }
        let dst = reserveInput(bytes.count)
        dst.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        inputEnd += bytes.count
    }

    public func receive(_ bytes: [UInt8]) throws(HandshakeError) {
        // withUnsafeBytes rethrows untyped errors, so the typed one is carried out by hand.
        let failure: HandshakeError? = bytes.withUnsafeBytes { b in
            do throws(HandshakeError) { try receive(b); return nil } catch { return error }
        }
        if let failure { throw failure }
    }

    /// Lends free input space of at least `minimumCapacity` bytes so the runtime can `read(2)`
    /// straight into it; `body` returns how many bytes it stored. Use only while open.
    public func withInputBuffer(minimumCapacity: Int, _ body: (UnsafeMutableRawBufferPointer) throws -> Int) rethrows {
        precondition(state == .open, "reading into a channel that is closed or failed")
        precondition(minimumCapacity >= 1, "minimumCapacity must be positive")
        let dst = reserveInput(minimumCapacity)
        let room = inputCapacity - inputEnd
        let stored = try body(UnsafeMutableRawBufferPointer(start: dst, count: room))
        precondition((0...room).contains(stored), "body reported more bytes than it was lent")
        inputEnd += stored
    }

    /// Call when the socket reports end of file. Clean only after the peer's CLOSE; otherwise
    /// the stream was cut short (`truncated`).
    public func receiveEOF() throws(HandshakeError) {
        switch state {
        case .closed: return
        case .open:
            state = .failed
            throw HandshakeError.make(.truncated, "EOF without CLOSE (\(bufferedByteCount) bytes of an unfinished frame)")
        case .failed: preconditionFailure("receiveEOF after failure: the runtime must drop the channel")
        }
    }

    /// The next event, or nil when more bytes are needed. Messages are new arrays
    /// (`nextMessageArray()`); use `nextMessage(_:)` to borrow them instead.
    public func next() throws(HandshakeError) -> ChannelEvent? {
        switch try nextMessageArray() {
        case .message(let m): return .message(m)
        case .closed: return .closed
        case .needMoreBytes: return nil
        }
    }

    /// Opens frames until a message completes, then lends it to `body` without copying. The
    /// bytes are valid only inside `body`; the reassembly buffer is wiped after it.
    public func nextMessage<R>(_ body: (UnsafeRawBufferPointer) -> R) throws(HandshakeError) -> ChannelRead<R> {
        switch state {
        case .closed: return .closed
        case .failed: preconditionFailure("next after failure: the runtime must drop the channel")
        case .open: break
        }
        do throws(HandshakeError) {
            try reassemble()
        } catch {
            state = .failed
            throw error
        }
        if state == .closed { return .closed }
        guard messageReady else { return .needMoreBytes }
        let result = body(UnsafeRawBufferPointer(start: message, count: messageLength))
        secureZero(UnsafeMutableRawBufferPointer(start: message, count: messageLength))
        messageLength = 0
        messageReady = false
        if messageCapacity > Self.retainedMessageCapacity {
            message.deallocate()
            messageCapacity = Self.initialMessage
            message = UnsafeMutableRawPointer.allocate(byteCount: messageCapacity, alignment: 16)
        }
        return .message(result)
    }

    /// Opens frames until a message completes and returns it as a new array. A message whose
    /// frames are all buffered (the usual case) goes straight into its array: each fragment is
    /// opened in place in the input and copied there (no reassembly buffer). A message still
    /// arriving is gathered in the reassembly buffer and copied out once whole (as
    /// `nextMessage(_:)` does).
    public func nextMessageArray() throws(HandshakeError) -> ChannelRead<[UInt8]> {
        switch state {
        case .closed: return .closed
        case .failed: preconditionFailure("next after failure: the runtime must drop the channel")
        case .open: break
        }
        // A message begun in the reassembly buffer is finished there.
        guard messageLength == 0 else { return try nextMessage { Array($0) } }
        var opened: [UInt8]?
        var failure: HandshakeError?
        do throws(HandshakeError) {
            guard let length = try frameLength(at: inputStart) else { return .needMoreBytes }
            let type = try openFrame(length: length) { type, body, _, writeBody in
                if type == .data {
                    opened = [UInt8](unsafeUninitializedCapacity: body) { buffer, count in
                        writeBody(buffer.baseAddress!)
                        count = body
                    }
                    return
                }
                // DATA_MORE: the complete frames behind it bound the message's size.
                let bound = min(configuration.maxMessageSize, body + bodiesBuffered(from: inputStart))
                guard bound > body else {
                    // Nothing behind it yet: gather the message in the reassembly buffer.
                    reserveMessage(body, keeping: 0)
                    writeBody(message)
                    return
                }
                let array = [UInt8](unsafeUninitializedCapacity: bound) { buffer, count in
                    let base = buffer.baseAddress!
                    writeBody(base)
                    count = gatherBuffered(into: base, capacity: bound, first: body, failure: &failure)
                }
                if !array.isEmpty { opened = array }
            }
            if let failure { throw failure }
            if type == .close { return .closed }
        } catch {
            state = .failed
            throw error
        }
        if let opened {
            messageLength = 0
            return .message(opened)
        }
        // The message is (now) in the reassembly buffer.
        return try nextMessage { Array($0) }
    }

    /// Inside `nextMessageArray`, the first fragment's `first` bytes at `base`: opens the
    /// buffered frames that follow into `base` until the DATA frame ends the message and
    /// returns its length. Returns 0 (the array is left empty and wiped) when the buffered
    /// frames ran out first, the part moved to the reassembly buffer, or on an error, left in
    /// `failure`.
    private func gatherBuffered(
        into base: UnsafeMutablePointer<UInt8>, capacity: Int, first: Int, failure: inout HandshakeError?
    ) -> Int {
        var filled = first
        var done = false
        do throws(HandshakeError) {
            while !done, let length = try frameLength(at: inputStart) {
                let body = length - FrameFormat.tagLength - FrameFormat.typeLength
                // Bodies past the bound are not this message's (or it is too large: openFrame says).
                guard filled + body <= capacity else { break }
                _ = try openFrame(length: length) { type, body, _, writeBody in
                    writeBody(base + filled)
                    filled += body
                    done = type == .data
                }
            }
        } catch {
            failure = error
        }
        if done && failure == nil { return filled }
        if failure == nil {
            // Ran out of buffered frames: the part so far waits in the reassembly buffer.
            reserveMessage(filled, keeping: 0)
            message.copyMemory(from: base, byteCount: filled)
        }
        secureZero(UnsafeMutableRawBufferPointer(start: base, count: filled))
        return 0
    }

    /// Sum of the bodies of the complete frames in the input from `offset` (at most a bounded
    /// number of them: it only sizes an array).
    private func bodiesBuffered(from offset: Int) -> Int {
        var total = 0
        var at = offset
        for _ in 0..<64 {
            guard inputEnd - at >= FrameFormat.lengthPrefix else { break }
            let length = Int((input + at).load(as: UInt8.self)) << 8 | Int((input + at + 1).load(as: UInt8.self))
            guard length >= FrameFormat.minCiphertext, inputEnd - at >= FrameFormat.lengthPrefix + length else { break }
            total += length - FrameFormat.tagLength - FrameFormat.typeLength
            at += FrameFormat.lengthPrefix + length
            if total >= configuration.maxMessageSize { break }
        }
        return total
    }

    /// Opens frames into the reassembly buffer until a message is ready, CLOSE arrived, or
    /// more input is needed.
    private func reassemble() throws(HandshakeError) {
        while !messageReady, state == .open, let length = try frameLength(at: inputStart) {
            let type = try openFrame(length: length) { _, body, offset, writeBody in
                reserveMessage(offset + body, keeping: offset)
                writeBody(message + offset)
            }
            if type == .data { messageReady = true }
        }
    }

    /// The ciphertext length of the frame at `offset` once it is complete, nil before. LEN is
    /// checked as soon as it arrives, before waiting for or allocating the body.
    private func frameLength(at offset: Int) throws(HandshakeError) -> Int? {
        let available = inputEnd - offset
        guard available >= FrameFormat.lengthPrefix else { return nil }
        let head = input + offset
        let length = Int(head.load(as: UInt8.self)) << 8 | Int((head + 1).load(as: UInt8.self))
        guard length >= FrameFormat.minCiphertext else {
            throw HandshakeError.make(.badFrameLength, "frame LEN \(length) is below the minimum 17")
        }
        return available >= FrameFormat.lengthPrefix + length ? length : nil
    }

    /// Opens the complete frame at `inputStart` (ciphertext `length`): checks the nonce and the
    /// message size, authenticates it, checks its type, and consumes it. A DATA or DATA_MORE
    /// frame's body (at `offset` of the message, `messageLength` already counting it) is handed
    /// to `place` with a function that copies the decrypted body to an address (called at most once); the frame is
    /// already consumed then, so `place` may open the frames behind it. Any throw is fatal to
    /// the channel.
    private func openFrame(
        length: Int,
        place: (_ type: FrameFormat.FrameType, _ body: Int, _ offset: Int, _ writeBody: (UnsafeMutableRawPointer) -> Void) -> Void
    ) throws(HandshakeError) -> FrameFormat.FrameType {
        guard nonce < UInt64.max else {
            throw HandshakeError.make(.nonceExhausted, "receive nonce reached 2^64-1")
        }
        let body = length - FrameFormat.tagLength - FrameFormat.typeLength
        guard messageLength + body <= configuration.maxMessageSize else {
            throw HandshakeError.make(.messageTooLarge, "message would exceed maxMessageSize \(configuration.maxMessageSize)")
        }
        let frameNonce = nonce
        var refusal: HandshakeError?
        var opened = FrameFormat.FrameType.data
        /// After authentication: consumes the frame, checks its type, places a DATA body.
        func consume(_ typeByte: UInt8, _ writeBody: (UnsafeMutableRawPointer) -> Void) {
            // Consumed before `place` runs (which may open the next frames); the input is not
            // moved while frames are opened, so the ciphertext stays valid.
            nonce = frameNonce + 1
            inputStart += FrameFormat.lengthPrefix + length
            if inputStart == inputEnd { inputStart = 0; inputEnd = 0 }
            guard let type = FrameFormat.FrameType(rawValue: typeByte) else {
                refusal = HandshakeError.make(.unknownFrameType, "frame type 0x\(String(typeByte, radix: 16))")
                return
            }
            opened = type
            switch type {
            case .data, .dataMore:
                guard body > 0 else {
                    refusal = HandshakeError.make(.emptyDataFrame, "DATA frame with an empty body")
                    return
                }
                let offset = messageLength
                messageLength += body
                withoutActuallyEscaping(writeBody) { place(type, body, offset, $0) }
            case .close:
                if body != 0 {
                    refusal = HandshakeError.make(.badFrameLength, "CLOSE frame with a \(body)-byte body")
                } else if messageLength != 0 {
                    refusal = HandshakeError.make(.truncated, "CLOSE in the middle of a \(messageLength)-byte message")
                } else if inputEnd != inputStart {
                    refusal = HandshakeError.make(.dataAfterClose, "\(inputEnd - inputStart) bytes after CLOSE")
                } else {
                    state = .closed
                }
            case .auth:
                refusal = HandshakeError.make(.unexpectedAuthFrame, "AUTH frame at transport nonce \(frameNonce)")
            case .reservedRekey:
                refusal = HandshakeError.make(.unknownFrameType, "REKEY (0x02) is reserved and not supported in v1")
            }
        }
        let frame = UnsafeMutableRawBufferPointer(start: input + inputStart + FrameFormat.lengthPrefix, count: length)
        do {
            // One AEAD call in place in the input, the body copied where it goes, then wiped.
            try ChaChaPoly.open(
                key: key, nonce: frameNonce, ad: UnsafeRawBufferPointer(start: nil, count: 0),
                ciphertext: UnsafeRawBufferPointer(frame), into: frame)
            let plain = frame.baseAddress!
            consume(plain.load(as: UInt8.self)) { target in target.copyMemory(from: plain + 1, byteCount: body) }
            secureZero(UnsafeMutableRawBufferPointer(start: plain, count: length - FrameFormat.tagLength))
        } catch {
            throw HandshakeError.make(.decryptFailed, "frame \(frameNonce) failed authentication")
        }
        if let refusal { throw refusal }
        return opened
    }

    /// Ensures `count` free bytes after `inputEnd`, compacting or growing within the limit.
    private func reserveInput(_ count: Int) -> UnsafeMutableRawPointer {
        if inputCapacity - inputEnd >= count { return input + inputEnd }
        let live = inputEnd - inputStart
        precondition(live + count <= configuration.maxBufferedInput,
                     "more than maxBufferedInput bytes buffered: the runtime must drain events before feeding more")
        if inputStart > 0 {
            if live > 0 { input.copyMemory(from: input + inputStart, byteCount: live) }
            inputStart = 0
            inputEnd = live
            if inputCapacity - inputEnd >= count { return input + inputEnd }
        }
        var capacity = inputCapacity
        while capacity - live < count { capacity *= 2 }
        capacity = min(capacity, max(configuration.maxBufferedInput, live + count))
        let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        if live > 0 { grown.copyMemory(from: input, byteCount: live) }
        secureZero(UnsafeMutableRawBufferPointer(start: input, count: inputCapacity))
        input.deallocate()
        input = grown
        inputCapacity = capacity
        return input + inputEnd
    }

    /// Ensures the reassembly buffer holds `count` bytes, keeping its
    /// first `keeping` bytes when it grows.
    private func reserveMessage(_ count: Int, keeping: Int) {
        guard count > messageCapacity else { return }
        var capacity = messageCapacity
        while capacity < count { capacity *= 2 }
        let grown = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        grown.copyMemory(from: message, byteCount: keeping)
        secureZero(UnsafeMutableRawBufferPointer(start: message, count: messageCapacity))
        message.deallocate()
        message = grown
        messageCapacity = capacity
    }

    /// Gives back memory a burst grew, when nothing is buffered (the channel machine calls it
    /// once the traffic stopped), so an idle channel shrinks to its starting size.
    public func releaseIdleMemory() {
        if inputEnd == inputStart, inputCapacity > Self.retainedInputCapacity {
            secureZero(UnsafeMutableRawBufferPointer(start: input, count: inputCapacity))
            input.deallocate()
            inputCapacity = Self.initialInput
            input = UnsafeMutableRawPointer.allocate(byteCount: inputCapacity, alignment: 16)
            inputStart = 0
            inputEnd = 0
        }
        if messageLength == 0, !messageReady, messageCapacity > Self.retainedInputCapacity {
            message.deallocate()
            messageCapacity = Self.initialMessage
            message = UnsafeMutableRawPointer.allocate(byteCount: messageCapacity, alignment: 16)
        }
    }

    /// Whether a buffer is above what an idle channel keeps (`releaseIdleMemory` would shrink it).
    public var holdsGrownBuffers: Bool {
        inputCapacity > Self.retainedInputCapacity || messageCapacity > Self.retainedInputCapacity
    }

    /// Bytes of memory this receiver holds (tests: memory follows use).
    public var heldBytes: Int { inputCapacity + messageCapacity }

    /// Test hook: jump the nonce to reach exhaustion without 2^64 frames.
    func setNonceForTesting(_ n: UInt64) { nonce = n }

    /// Test hook: the traffic key (internal; see `FrameSender.trafficKeyForTesting`).
    var trafficKeyForTesting: [UInt8] { key.withUnsafeBytes { Array($0) } }
}
