// The echo peer of README.md and docs/PEER.md ("Incoming"): registers with an introduction
// server, prints its own locator, echoes every message of every authenticated channel, and
// exits when the server goes away.
//
//   EchoPeer KEY SOCKET SERVER-DESIGNATOR AUDIT-LOG
#if canImport(Glibc)
import Glibc
#endif
let arguments = CommandLine.arguments
guard arguments.count == 5 else {
    print("usage: EchoPeer KEY SOCKET SERVER-DESIGNATOR AUDIT-LOG")
    exit(2)
}
let (keyPath, socketPath, serverDesignator, auditPath) = (arguments[1], arguments[2], arguments[3], arguments[4])

// docs/PEER.md, "Library" (README.md shows the part from "Incoming"):
import Audit
import Identity
import Logging   // swift-log: PeerNetlayer takes a Logger
import OCapN
import Runtime
import SecureChannel   // VerifiedPeer: who an incoming channel proved to be

var logger = Logger(label: "echo-peer")
logger.logLevel = .warning
let me = try IdentityKeyFile.load(path: keyPath)
let auditSink = try AuditFileSink(AuditFileConfiguration(
    path: auditPath, writer: me.publicIdentity,
    signer: me))   // the key pair signs its checkpoints; nothing else reads the key
let netlayer = try PeerNetlayer(identity: me, audit: auditSink, logger: logger)

// Register with one or more introduction servers (optionally pinning a server's key).
let pinnedKey = try PublicIdentity(designator: serverDesignator)
let server = try await netlayer.addServer(path: socketPath, expectedKey: pinnedKey)
print(netlayer.locator.uri)          // ocapn://<me>.unix-domain-socket?<server>=t

// Incoming: authenticated channels only, with from/to, the server, and the verified key.
let echo = Task {
    for await incoming in netlayer.incoming {
        print(incoming.verifiedPeer!.fingerprint, incoming.introduction.from!.uri)
        for try await message in incoming.messages { try await incoming.send(message) }
        await incoming.close()
    }
}

let why = await server.disconnected()       // completes when that server goes away
print("server gone: \(why.code.rawValue)")
echo.cancel()
await netlayer.shutdown()
auditSink.close()
