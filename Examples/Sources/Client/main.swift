// The client of README.md ("Library") and docs/PEER.md ("Outgoing"): registers with an
// introduction server, connects to a peer's locator, sends one message, prints the reply.
//
//   Client KEY SOCKET SERVER-DESIGNATOR PEER-URI
#if canImport(Glibc)
import Glibc
#endif
let arguments = CommandLine.arguments
guard arguments.count == 5 else {
    print("usage: Client KEY SOCKET SERVER-DESIGNATOR PEER-URI")
    exit(2)
}
let (keyPath, socketPath, serverDesignator, bobURI) = (arguments[1], arguments[2], arguments[3], arguments[4])

// README.md, "Library" (docs/PEER.md shows the part from "Outgoing"):
import Identity
import Logging   // swift-log: PeerNetlayer takes a Logger
import OCapN
import Runtime

var logger = Logger(label: "client")
logger.logLevel = .warning
let me = try IdentityKeyFile.load(path: keyPath)
let serverKey = try PublicIdentity(designator: serverDesignator)  // from the server's `listening:` line
let netlayer = try PeerNetlayer(identity: me, logger: logger)
_ = try await netlayer.addServer(path: socketPath, expectedKey: serverKey)
print(netlayer.locator.uri)   // our own locator: one ?<server>=t hint per registered server

// Outgoing: only returns once the target proved the key in its locator.
let channel = try await netlayer.connect(to: try PeerLocator(uri: bobURI))
try await channel.send(Array("hello".utf8))
if let reply = try await channel.receive() {   // nil after the peer's authenticated CLOSE
    print(String(decoding: reply, as: UTF8.self))
}
await channel.close()                           // sends CLOSE, waits for the peer's
await netlayer.shutdown()
