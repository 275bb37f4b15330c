import ArgumentParser

@main
struct OCapNUDS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ocapn-uds",
        abstract: "OCapN Unix-domain-socket netlayer: identities, introduction server, peers.",
        discussion: """
            Exit status shared by every command (some refine it; see their --help):
              0  success
              1  runtime failure (I/O, peer or server unreachable, internal error)
              2  usage error (unknown option, missing or invalid argument)
              3  refused input or failed security check (malformed, insecure or existing
                 file, wrong passphrase, invalid identity, refused by the peer or server)
              4  verification failed (vectors verify, audit --verify)
            """,
        subcommands: [DemoCommand.self, KeygenCommand.self, IdCommand.self, AuditCommand.self, VectorsCommand.self, BenchCommand.self, IntroServerCommand.self,
                      PeerCommand.self, ConnectCommand.self, CheckCommand.self]
    )
}
