import Foundation
import OCapN
import Syrup
import Transport

/// What a probe saw next on a control connection.
public enum ProbeEvent {
    /// A complete Syrup value other than `uds:new-connection`.
    case value(SyrupValue)
    /// A `uds:new-connection` and every descriptor that arrived with its 4-byte marker (zero,
    /// one or more: the checker counts them instead of refusing, so it can report what the other
    /// side sent). The receiver owns them.
    case introduction(SyrupValue, descriptors: [FileDescriptor])
    /// End of stream or a reset.
    case closed
    /// Nothing complete arrived before the deadline.
    case timeout
    /// Bytes that are not canonical Syrup within the control-message limits, or descriptors
    /// lost to MSG_CTRUNC.
    case malformed(String)
}

/// A blocking client end of one control connection for probes: raw sends (with any descriptors),
/// reads with a deadline, and bookkeeping that closes every descriptor it ever received.
///
/// Not a protocol implementation: it reports what came back and lets the check judge it. Memory
/// is bounded by the control-message Syrup limits (16 KiB per value) and 8 descriptors per read.
public final class ProbeConnection {
    public static let descriptorsPerRead = 8

    public let descriptor: FileDescriptor
    private var decoder = SyrupStreamDecoder(limits: .controlMessage)
    /// Descriptors that arrived, with the stream range of their read (catalog K5).
    private var arrived: [(range: Range<Int>, descriptors: [FileDescriptor])] = []
    private var pendingIntroduction: SyrupValue?
    private var buffer = [UInt8](repeating: 0, count: 16 << 10)
    private var ended = false
    /// Descriptors that arrived where no marker claimed them (closed, unless kept).
    public private(set) var strayDescriptors = 0
    /// Keep stray descriptors for `takeStrayDescriptors()` instead of closing them (for test
    /// servers that model a receiver taking descriptors from a FIFO, as Goblins does).
    private let keepsStrays: Bool
    private var kept: [FileDescriptor] = []

    public init(adopting descriptor: FileDescriptor, keepingStrayDescriptors: Bool = false) {
        self.descriptor = descriptor
        keepsStrays = keepingStrayDescriptors
    }

    /// The stray descriptors kept so far (the caller owns them).
    public func takeStrayDescriptors() -> [FileDescriptor] {
        defer { kept = [] }
        return kept
    }

    /// Connects to the unix socket at `path` within `timeout`.
    public static func connect(path: String, timeout: Duration) throws(TransportError) -> ProbeConnection {
        ProbeConnection(adopting: try FileDescriptor.connect(unixPath: path, timeout: timeout))
    }

    /// Closes the connection and every descriptor still held.
    public func close() {
        descriptor.close()
        for entry in arrived { for d in entry.descriptors { d.close() } }
        arrived.removeAll()
        for d in kept { d.close() }
        kept.removeAll()
    }

    deinit { close() }

    // MARK: sending

    /// Sends all of `bytes` (descriptors ride on the first chunk) within `timeout`; false when the
    /// other side is gone or stopped reading.
    @discardableResult
    public func send(_ bytes: [UInt8], passing descriptors: [FileDescriptor] = [], timeout: Duration = .seconds(2)) -> Bool {
        sendAll(descriptor, bytes, passing: descriptors, timeout: timeout)
    }

    /// The 4-byte marker with `descriptors` (what follows a `uds:new-connection`).
    @discardableResult
    public func sendMarker(passing descriptors: [FileDescriptor], timeout: Duration = .seconds(2)) -> Bool {
        send(UDSNewConnection.fdMarker, passing: descriptors, timeout: timeout)
    }

    @discardableResult
    public func send(_ message: UDSMessage, timeout: Duration = .seconds(2)) -> Bool { send(message.encoded, timeout: timeout) }

    // MARK: receiving

    /// The next event, waiting at most `timeout`.
    public func next(timeout: Duration) -> ProbeEvent {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            switch decodeBuffered() {
            case let .some(event): return event
            case .none: break
            }
            if ended { return .closed }
            switch readOnce(until: deadline) {
            case .data: continue
            case .timeout: return .timeout
            case .closed:
                ended = true
                return decodeBuffered() ?? .closed
            case let .failed(reason): return .malformed(reason)
            }
        }
    }

    /// Reads and discards until the other side closes; true if it did within `timeout`.
    public func waitForClose(timeout: Duration) -> Bool {
        let deadline = ContinuousClock.now.advanced(by: timeout)
        while true {
            let remaining = ContinuousClock.now.duration(to: deadline)
            if remaining <= .zero { return false }
            switch next(timeout: remaining) {
            case .closed: return true
            case .timeout: return false
            case let .introduction(_, descriptors): for d in descriptors { d.close() }
            case .value: continue
            case .malformed:
                // The stream is unusable; keep draining raw bytes until EOF.
                return drainUntilEOF(deadline: deadline)
            }
        }
    }

    private func drainUntilEOF(deadline: ContinuousClock.Instant) -> Bool {
        while true {
            switch readOnce(until: deadline) {
            case .data: decoder = SyrupStreamDecoder(limits: .controlMessage)
            case .closed: return true
            case .timeout: return false
            case .failed: continue
            }
        }
    }

    private enum ReadOutcome { case data, closed, timeout, failed(String) }

    private func readOnce(until deadline: ContinuousClock.Instant) -> ReadOutcome {
        while true {
            let result: IOResult<Received>
            do {
                result = try buffer.withUnsafeMutableBytes { try descriptor.receive(into: $0, descriptorCapacity: Self.descriptorsPerRead) }
            } catch let error as TransportError {
                switch error.code {
                case .connectionReset, .closed: return .closed
                case .controlTruncated: return .failed("more than \(Self.descriptorsPerRead) descriptors in one read (MSG_CTRUNC)")
                default:
                    return .failed(error.description)
                }
            } catch {
                return .failed("\(error)")
            }
            switch result {
            case let .processed(r):
                if r.isEndOfStream { return .closed }
                let start = decoder.streamOffset + decoder.bufferedCount
                if !r.descriptors.isEmpty { arrived.append((start..<(start + r.byteCount), r.descriptors)) }
                decoder.append(Array(buffer[..<r.byteCount]))
                return .data
            case .wouldBlock:
                guard wait(events: .readable, until: deadline) else { return .timeout }
            }
        }
    }

    /// One complete event from what is buffered, or nil.
    private func decodeBuffered() -> ProbeEvent? {
        if let pending = pendingIntroduction {
            let markerOffset = decoder.streamOffset
            guard decoder.takeRaw(UDSNewConnection.fdMarker.count) != nil else { return nil }
            pendingIntroduction = nil
            var claimed: [FileDescriptor] = []
            arrived.removeAll { entry in
                guard entry.range.contains(markerOffset) else { return false }
                claimed += entry.descriptors
                return true
            }
            dropConsumedDescriptors()
            return .introduction(pending, descriptors: claimed)
        }
        let value: SyrupValue?
        do { value = try decoder.next() } catch { return .malformed(error.description) }
        guard let value else {
            if decoder.bufferedCount > SyrupLimits.controlMessage.maxTotalBytes { return .malformed("message over 16 KiB") }
            return nil
        }
        if case let .record(label, _) = value, label == .symbol(UDSNewConnection.label) {
            pendingIntroduction = value
            return decodeBuffered()  // nil until the marker is in
        }
        dropConsumedDescriptors()
        return .value(value)
    }

    /// Closes descriptors whose read has been consumed without a marker claiming them.
    private func dropConsumedDescriptors() {
        arrived.removeAll { entry in
            guard entry.range.upperBound <= decoder.streamOffset else { return false }
            strayDescriptors += entry.descriptors.count
            if keepsStrays { kept += entry.descriptors } else { for d in entry.descriptors { d.close() } }
            return true
        }
    }

    private func wait(events: Readiness, until deadline: ContinuousClock.Instant) -> Bool {
        waitFor(descriptor, events: events, until: deadline)
    }
}

/// Polls `fd` for `events` until `deadline`; false on timeout.
func waitFor(_ fd: FileDescriptor, events: Readiness, until deadline: ContinuousClock.Instant) -> Bool {
    let remaining = ContinuousClock.now.duration(to: deadline)
    guard remaining > .zero else { return false }
    return (try? fd.wait(for: events, timeout: remaining + .milliseconds(1))) ?? false
}

/// Sends all of `bytes` within `timeout` (descriptors ride on the first chunk, K6); false when
/// the other side is gone or stopped reading.
func sendAll(_ fd: FileDescriptor, _ bytes: [UInt8], passing descriptors: [FileDescriptor], timeout: Duration) -> Bool {
    let deadline = ContinuousClock.now.advanced(by: timeout)
    var offset = 0
    var pass = descriptors
    while offset < bytes.count {
        let chunk = offset == 0 ? bytes : Array(bytes[offset...])
        do {
            switch try fd.send(chunk, passing: pass) {
            case let .processed(n):
                offset += n
                pass = []
            case .wouldBlock:
                guard waitFor(fd, events: .writable, until: deadline) else { return false }
            }
        } catch {
            return false
        }
    }
    return true
}

extension Duration {
    /// Milliseconds, for evidence lines.
    var milliseconds: Int { Int(components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000) }
}
