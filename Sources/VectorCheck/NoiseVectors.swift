import Identity
import SecureChannel
import SodiumCrypto

/// Noise test-vector files (`{"vectors": [...]}`, the cacophony/snow format of the Noise wiki).
/// Entries for `Noise_KK_25519_ChaChaPoly_SHA256` are replayed through the SecureChannel Noise
/// core; every other protocol name is reported as skipped with the reason.
public enum NoiseVectors: VectorKind {
    public static let name = "noise"

    public static func recognizes(_ document: [String: Any]) -> Bool {
        guard let vectors = document["vectors"] as? [[String: Any]], let first = vectors.first else { return false }
        return first["protocol_name"] is String
    }

    public static func check(_ document: [String: Any]) -> [VectorCaseResult] {
        guard let vectors = document["vectors"] as? [[String: Any]] else { return [.failed("vectors", "missing vectors array")] }
        return vectors.enumerated().map { index, v in
            let protocolName = (v["protocol_name"] as? String) ?? "?"
            let name = "\(index):\(protocolName)"
            guard protocolName == NoiseKKHandshake.protocolName else {
                let why = protocolName.hasPrefix("Noise_KK_25519_ChaChaPoly_")
                    ? "hash suite not implemented (UDS-HS1 uses SHA256 only)"
                    : "pattern or cipher suite not used by UDS-HS1"
                return .skipped(name, why)
            }
            do {
                return try replay(v, name: name)
            } catch {
                return .failed(name, "\(error)")
            }
        }
    }

    static func replay(_ v: [String: Any], name: String) throws -> VectorCaseResult {
        if let psks = v["init_psks"] as? [Any], !psks.isEmpty { return .skipped(name, "PSK vectors are not used by UDS-HS1") }
        for key in ["init_static", "init_ephemeral", "init_remote_static", "resp_static", "resp_ephemeral", "resp_remote_static"] {
            guard try v.hex(key).count == 32 else { throw VectorDataError("\(key) is not a 32-byte X25519 key") }
        }
        let i = NoiseKKHandshake(
            role: .initiator, prologue: try v.hex("init_prologue"), staticSecret: SecretBytes(copying: try v.hex("init_static")),
            remoteStatic: try v.hex("init_remote_static"), ephemeralSecret: SecretBytes(copying: try v.hex("init_ephemeral")))
        let r = NoiseKKHandshake(
            role: .responder, prologue: try v.hex("resp_prologue"), staticSecret: SecretBytes(copying: try v.hex("resp_static")),
            remoteStatic: try v.hex("resp_remote_static"), ephemeralSecret: SecretBytes(copying: try v.hex("resp_ephemeral")))
        let messages = try v.objects("messages")
        guard messages.count >= 2 else { throw VectorDataError("a KK vector needs at least the two handshake messages") }
        var iSend = NoiseCipherState?.none, iReceive = NoiseCipherState?.none
        var rSend = NoiseCipherState?.none, rReceive = NoiseCipherState?.none
        for (n, m) in messages.enumerated() {
            let payload = try m.hex("payload"), expected = try m.hex("ciphertext")
            let fromInitiator = n % 2 == 0
            let ciphertext: [UInt8]
            let opened: [UInt8]
            if n < 2 {
                let (writer, reader) = fromInitiator ? (i, r) : (r, i)
                ciphertext = try writer.writeMessage(payload: payload)
                opened = try reader.readMessage(ciphertext)
                if n == 1 {
                    guard i.handshakeHash == r.handshakeHash else { return .failed(name, "the two sides' handshake hashes differ") }
                    if let hh = v["handshake_hash"] as? String, Hex.decode(hh) != i.handshakeHash {
                        return .failed(name, "handshake_hash: got \(Hex.encode(i.handshakeHash)), expected \(hh)")
                    }
                    (iSend, iReceive) = i.split()
                    (rSend, rReceive) = r.split()
                }
            } else if fromInitiator {
                ciphertext = try iSend!.encrypt(ad: [], plaintext: payload)
                opened = try rReceive!.decrypt(ad: [], ciphertext: ciphertext)
            } else {
                ciphertext = try rSend!.encrypt(ad: [], plaintext: payload)
                opened = try iReceive!.decrypt(ad: [], ciphertext: ciphertext)
            }
            guard ciphertext == expected else {
                return .failed(name, "message \(n): got \(Hex.encode(ciphertext)), expected \(Hex.encode(expected))")
            }
            guard opened == payload else { return .failed(name, "message \(n): payload did not round-trip") }
        }
        return .passed(name)
    }
}
