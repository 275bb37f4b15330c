import Transport
import Identity
import SodiumCrypto

/// The forward-secure MAC chain (docs/AUDIT.md, "Forward-secure sealing").
///
/// Epoch keys: `k[i+1] = BLAKE2b-256(evolveContext ‖ k[i])`; a seal is keyed BLAKE2b-256 under
/// `k[epoch]` over `sealContext ‖ record bytes`. The operator keeps `k[0]` (the verification
/// key) off the host; the writer keeps only the current `k[i]` and wipes the previous one, so a
/// thief of the running host cannot compute the key of an epoch that already ended.
public enum AuditSealing {
    public static let evolveContext: [UInt8] = Array("ocapn-uds audit evolve v1".utf8) + [0]
    public static let sealContext: [UInt8] = Array("ocapn-uds audit seal v1".utf8) + [0]
    public static let idContext: [UInt8] = Array("ocapn-uds audit seal id v1".utf8) + [0]
    public static let keyLength = 32
    /// Default epoch length: 15 minutes.
    public static let defaultIntervalMicros: Int64 = 15 * 60 * 1_000_000

    /// One step of the key chain. The caller drops (and so wipes) the old key.
    package static func evolve(_ key: SecretBytes) -> SecretBytes {
        let h = BLAKE2b.Hasher(outputLength: keyLength)
        h.update(evolveContext)
        key.withUnsafeBytes { h.update($0) }
        var next = h.finalize()
        return SecretBytes(consuming: &next)
    }

    /// `k[to]` from `k[from]` (to >= from), wiping every intermediate key.
    package static func evolve(_ key: SecretBytes, from: UInt64, to: UInt64) -> SecretBytes {
        precondition(to >= from, "sealing keys only evolve forward")
        var k = key
        var i = from
        while i < to {
            k = evolve(k)
            i += 1
        }
        return k
    }

    /// The seal of `message` (a record's bytes up to its `,"seal":`) under an epoch key.
    package static func mac(key: SecretBytes, message: [UInt8]) -> AuditDigest {
        let bytes: [UInt8] = key.withUnsafeBytes { k in
            var keyCopy = Array(k)
            defer { for i in keyCopy.indices { keyCopy[i] = 0 } }
            let h = BLAKE2b.Hasher(outputLength: 32, key: keyCopy)
            h.update(sealContext)
            h.update(message)
            return h.finalize()
        }
        return AuditDigest(bytes)
    }

    /// Public name of a key chain: BLAKE2b-128(idContext ‖ k[0] ‖ start ‖ interval), big-endian
    /// 64-bit integers. Lets a log say which verification key checks it without revealing it.
    package static func keyID(k0: SecretBytes, startMicros: Int64, intervalMicros: Int64) -> AuditDigest {
        let h = BLAKE2b.Hasher(outputLength: 16)
        h.update(idContext)
        k0.withUnsafeBytes { h.update($0) }
        h.update(bigEndian(UInt64(bitPattern: startMicros)) + bigEndian(UInt64(bitPattern: intervalMicros)))
        return AuditDigest(h.finalize())
    }

    /// Epoch of a time: `floor((t - start) / interval)`, 0 before the start.
    public static func epoch(of time: AuditTimestamp, startMicros: Int64, intervalMicros: Int64) -> UInt64 {
        let t = time.microsSinceEpoch
        guard t > startMicros else { return 0 }
        return UInt64((t - startMicros) / intervalMicros)
    }

    static func bigEndian(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }
}

/// What the operator keeps elsewhere: `k[0]`, the start time and the epoch length. Whoever holds
/// it can also forge seals (the construction is symmetric), so it must not live on the host.
public struct AuditVerificationKey: Sendable {
    public static let prefix = "ocapn-uds-audit-verify-v1"
    package let k0: SecretBytes
    public let startMicros: Int64
    public let intervalMicros: Int64
    public let id: AuditDigest

    package init(k0: SecretBytes, startMicros: Int64, intervalMicros: Int64) {
        precondition(k0.count == AuditSealing.keyLength && intervalMicros > 0, "bad verification key")
        self.k0 = k0
        self.startMicros = startMicros
        self.intervalMicros = intervalMicros
        id = AuditSealing.keyID(k0: k0, startMicros: startMicros, intervalMicros: intervalMicros)
    }

    /// `ocapn-uds-audit-verify-v1:<k0 hex>:<start µs>:<interval µs>`: one token to write down.
    public var text: String {
        let hex = k0.withUnsafeBytes { Hex.encode(Array($0)) }
        return "\(Self.prefix):\(hex):\(startMicros):\(intervalMicros)"
    }

    public init(text: String) throws(AuditError) {
        let parts = text.trimmingWhitespace().split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == Self.prefix, var k = Hex.decode(String(parts[1])), k.count == AuditSealing.keyLength,
              let start = Int64(parts[2]), start >= 0, let interval = Int64(parts[3]), interval >= 1_000_000
        else { throw AuditError(.invalidArgument, "not a verification key (expected \(Self.prefix):HEX:START:INTERVAL)") }
        self.init(k0: SecretBytes(consuming: &k), startMicros: start, intervalMicros: interval)
    }
}

/// The writer's side: the current epoch key, evolved forward and persisted by `AuditSealingKeyFile`.
public final class AuditSealingKey: @unchecked Sendable {
    // Mutated only under the owning sink's lock.
    public private(set) var epoch: UInt64
    private var key: SecretBytes
    public let startMicros: Int64
    public let intervalMicros: Int64
    public let id: AuditDigest

    package init(key: SecretBytes, epoch: UInt64, startMicros: Int64, intervalMicros: Int64, id: AuditDigest) {
        precondition(key.count == AuditSealing.keyLength && intervalMicros > 0, "bad sealing key")
        self.key = key
        self.epoch = epoch
        self.startMicros = startMicros
        self.intervalMicros = intervalMicros
        self.id = id
    }

    /// A new key chain starting at `startMicros`: the sealing key (epoch 0) and the operator's key.
    public static func generate(startMicros: Int64, intervalMicros: Int64) -> (AuditSealingKey, AuditVerificationKey) {
        let k0 = SecretBytes.random(count: AuditSealing.keyLength)
        let verify = AuditVerificationKey(k0: k0, startMicros: startMicros, intervalMicros: intervalMicros)
        let copy = k0.withUnsafeBytes { SecretBytes(copying: $0) }
        return (AuditSealingKey(key: copy, epoch: 0, startMicros: startMicros, intervalMicros: intervalMicros, id: verify.id), verify)
    }

    public func epoch(of time: AuditTimestamp) -> UInt64 {
        AuditSealing.epoch(of: time, startMicros: startMicros, intervalMicros: intervalMicros)
    }

    func seal(_ message: [UInt8]) -> AuditDigest { AuditSealing.mac(key: key, message: message) }

    /// Moves to a later epoch; the old key is released and wiped.
    public func advance(to newEpoch: UInt64) {
        guard newEpoch > epoch else { return }
        key = AuditSealing.evolve(key, from: epoch, to: newEpoch)
        epoch = newEpoch
    }

    /// The key bytes for the key file writer only.
    func withKeyBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R { key.withUnsafeBytes(body) }
}

/// The sealing key file: the current epoch key, rewritten atomically (temp file, fsync, rename,
/// directory fsync) each time the key evolves, so the disk never keeps a past epoch's key.
///
///     ocapn-uds audit sealing key v1
///     id=<32 hex>
///     start_us=<µs since 1970>
///     interval_us=<µs>
///     epoch=<n>
///     key=<64 hex>
public enum AuditSealingKeyFile {
    static let header = "ocapn-uds audit sealing key v1"

    public static func load(path: String) throws(AuditError) -> AuditSealingKey {
        let fd = try FileIO.open(path, .readOnly)
        defer { fd.close() }
        let st = try FileIO.status(fd, path: path)
        guard st.permissions & 0o077 == 0 else {
            throw AuditError(.invalidArgument, "sealing key \(path) is readable by others (mode \(String(st.permissions & 0o777, radix: 8))); chmod 600 it")
        }
        var bytes = try FileIO.pread(fd, count: 4096, offset: 0, path: path)
        defer { for i in bytes.indices { bytes[i] = 0 } }
        var fields: [String: String] = [:]
        let lines = bytes.split(separator: 0x0a)
        guard let first = lines.first, String(decoding: first, as: UTF8.self) == header else {
            throw AuditError(.invalidArgument, "\(path) is not an audit sealing key file")
        }
        for line in lines.dropFirst() {
            guard let eq = line.firstIndex(of: UInt8(ascii: "=")) else { continue }
            fields[String(decoding: line[..<eq], as: UTF8.self)] = String(decoding: line[(eq + 1)...], as: UTF8.self)
        }
        guard let idHex = fields["id"], let id = AuditDigest(hex: idHex), id.bytes.count == 16,
              let start = fields["start_us"].flatMap({ Int64($0) }), start >= 0,
              let interval = fields["interval_us"].flatMap({ Int64($0) }), interval >= 1_000_000,
              let epoch = fields["epoch"].flatMap({ UInt64($0) }),
              var key = fields["key"].flatMap({ Hex.decode($0) }), key.count == AuditSealing.keyLength
        else { throw AuditError(.invalidArgument, "\(path): malformed audit sealing key file") }
        fields["key"] = nil
        return AuditSealingKey(key: SecretBytes(consuming: &key), epoch: epoch, startMicros: start, intervalMicros: interval, id: id)
    }

    /// Writes the key's current state atomically and durably.
    public static func store(_ key: AuditSealingKey, path: String) throws(AuditError) {
        var text = Array("\(header)\nid=\(key.id.hex)\nstart_us=\(key.startMicros)\ninterval_us=\(key.intervalMicros)\nepoch=\(key.epoch)\nkey=".utf8)
        key.withKeyBytes { text += Array(Hex.encode(Array($0)).utf8) }
        text.append(0x0a)
        defer { for i in text.indices { text[i] = 0 } }
        try FileIO.writeAtomically(path: path, bytes: text, mode: 0o600)
    }

    /// Writes a small private text file (the verification key) atomically, mode 0600.
    public static func storeText(_ text: String, path: String) throws(AuditError) {
        try FileIO.writeAtomically(path: path, bytes: Array(text.utf8), mode: 0o600)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let a = scalars.firstIndex(where: { $0 != " " && $0 != "\n" && $0 != "\t" && $0 != "\r" }),
              let b = scalars.lastIndex(where: { $0 != " " && $0 != "\n" && $0 != "\t" && $0 != "\r" }) else { return "" }
        return String(scalars[a...b])
    }
}
