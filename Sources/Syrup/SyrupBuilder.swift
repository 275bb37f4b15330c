// Construction pass of the decoder: turns bytes that `SyrupScanner` has already accepted into a
// `SyrupValue`. Every check was made by the scanner, so anything unexpected here is our bug
// (precondition), not the peer's. Iterative, like the scanner, so depth costs heap, not stack.

enum SyrupBuilder {
    private struct Frame {
        let kind: SyrupScanner.Kind
        var label: SyrupValue?
        /// Items in wire order; for a dictionary, keys and values alternate.
        var items: [SyrupValue] = []

        func make() -> SyrupValue {
            switch kind {
            case .list:
                return .list(items)
            case .record:
                guard let label else { preconditionFailure("scanner accepted a record without a label") }
                return .record(label: label, fields: items)
            case .set:
                var set = Set<SyrupValue>(minimumCapacity: items.count)
                for item in items {
                    // Distinct canonical encodings are distinct values (see SyrupValue equality).
                    precondition(set.insert(item).inserted, "scanner accepted a duplicate set element")
                }
                return .set(set)
            case .dictionary:
                var dict = [SyrupValue: SyrupValue](minimumCapacity: items.count / 2)
                var i = 0
                while i + 1 < items.count {
                    precondition(dict.updateValue(items[i + 1], forKey: items[i]) == nil,
                                 "scanner accepted a duplicate dictionary key")
                    i += 2
                }
                return .dictionary(dict)
            }
        }
    }

    /// Builds the value that starts at `start` in bytes already accepted by the scanner.
    static func build(_ buffer: UnsafeRawBufferPointer, from start: Int) -> SyrupValue {
        var stack: [Frame] = []
        var i = start
        while true {
            let byte = buffer[i]
            let produced: SyrupValue
            switch byte {
            case SyrupByte.t:
                produced = .bool(true); i += 1
            case SyrupByte.f:
                produced = .bool(false); i += 1
            case SyrupByte.float:
                produced = .float(Float(bitPattern: readBigEndian(buffer, i + 1, as: UInt32.self))); i += 5
            case SyrupByte.double:
                produced = .double(Double(bitPattern: readBigEndian(buffer, i + 1, as: UInt64.self))); i += 9
            case SyrupByte.zero...SyrupByte.nine:
                var j = i
                var length = 0
                while buffer[j] >= SyrupByte.zero && buffer[j] <= SyrupByte.nine {
                    // Only lengths use this sum and they were checked against their limits;
                    // for long integers it may wrap harmlessly, so use wrapping arithmetic.
                    length = length &* 10 &+ Int(buffer[j] - SyrupByte.zero)
                    j += 1
                }
                let digits = UnsafeRawBufferPointer(rebasing: buffer[i..<j])
                let body = j + 1
                switch buffer[j] {
                case SyrupByte.plus, SyrupByte.minus:
                    produced = .integer(SyrupInteger(validatedNegative: buffer[j] == SyrupByte.minus,
                                                     magnitude: String(decoding: digits, as: UTF8.self)))
                    i = body
                case SyrupByte.colon:
                    produced = .bytes(Array(UnsafeRawBufferPointer(rebasing: buffer[body..<body + length])))
                    i = body + length
                case SyrupByte.quote:
                    produced = .string(String(decoding: UnsafeRawBufferPointer(rebasing: buffer[body..<body + length]), as: UTF8.self))
                    i = body + length
                case SyrupByte.apostrophe:
                    produced = .symbol(String(decoding: UnsafeRawBufferPointer(rebasing: buffer[body..<body + length]), as: UTF8.self))
                    i = body + length
                default:
                    preconditionFailure("scanner accepted digits without a terminator")
                }
            case SyrupByte.listOpen:
                stack.append(Frame(kind: .list)); i += 1; continue
            case SyrupByte.dictOpen:
                stack.append(Frame(kind: .dictionary)); i += 1; continue
            case SyrupByte.setOpen:
                stack.append(Frame(kind: .set)); i += 1; continue
            case SyrupByte.recordOpen:
                stack.append(Frame(kind: .record)); i += 1; continue
            case SyrupByte.listClose, SyrupByte.dictClose, SyrupByte.setClose, SyrupByte.recordClose:
                guard let frame = stack.popLast() else { preconditionFailure("scanner accepted an unmatched close") }
                produced = frame.make()
                i += 1
            default:
                preconditionFailure("scanner accepted an invalid byte")
            }
            guard !stack.isEmpty else { return produced }
            let top = stack.count - 1
            if stack[top].kind == .record && stack[top].label == nil {
                stack[top].label = produced
            } else {
                stack[top].items.append(produced)
            }
        }
    }

    private static func readBigEndian<T: FixedWidthInteger>(_ buffer: UnsafeRawBufferPointer, _ offset: Int, as: T.Type) -> T {
        T(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}
