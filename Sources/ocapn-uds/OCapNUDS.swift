import ArgumentParser

@main
struct OCapNUDS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ocapn-uds",
        abstract: "OCapN Unix-domain-socket netlayer: identities, introduction server, peers.",
        subcommands: [KeygenCommand.self, IdCommand.self, AuditCommand.self, VectorsCommand.self, BenchCommand.self]
    )
}
