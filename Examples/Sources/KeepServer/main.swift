// docs/PEER.md's kept server: registered for the life of the netlayer, retried with backoff
// after every failure; prints each change until interrupted.
//
//   KeepServer KEY SOCKET
#if canImport(Glibc)
import Glibc
#endif
import Identity
import Logging
import Runtime

let arguments = CommandLine.arguments
guard arguments.count == 3 else {
    print("usage: KeepServer KEY SOCKET")
    exit(2)
}
let (keyPath, socketPath) = (arguments[1], arguments[2])
let netlayer = try PeerNetlayer(identity: IdentityKeyFile.load(path: keyPath), logger: Logger(label: "keep-server"))

// docs/PEER.md, "Library":
let kept = netlayer.keepServer(path: socketPath)
if case .failure(let why) = await kept.firstOutcome() { print("not yet: \(why)") }
for await event in kept.events { print(event) }   // .registered / .failed(…, retry delay) / .contested
