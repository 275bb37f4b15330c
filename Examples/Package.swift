// swift-tools-version:6.1
import PackageDescription

// The code of README.md and docs/PEER.md, compiled: `make test` builds this package and runs
// both programs against a real `ocapn-uds intro-server` (Tests/IntegrationTests/ExamplesTests).
// Your own package depends on ocapn-uds the same way, by path or by its git URL
// (`.package(url: "<repository URL>", branch: "main")`); the package's name is "ocapn-uds".
// A path dependency is known by its directory's name, so here it is named explicitly.
let package = Package(
    name: "ocapn-uds-examples",
    dependencies: [
        .package(name: "ocapn-uds", path: ".."),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),  // PeerNetlayer takes a Logger
    ],
    targets: [
        .executableTarget(name: "Client", dependencies: [
            .product(name: "OCapNUDS", package: "ocapn-uds"),      // Runtime, Audit
            .product(name: "OCapNUDSCore", package: "ocapn-uds"),  // Identity, OCapN, SecureChannel, Syrup
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "EchoPeer", dependencies: [
            .product(name: "OCapNUDS", package: "ocapn-uds"),
            .product(name: "OCapNUDSCore", package: "ocapn-uds"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "KeepServer", dependencies: [
            .product(name: "OCapNUDS", package: "ocapn-uds"),
            .product(name: "OCapNUDSCore", package: "ocapn-uds"),
            .product(name: "Logging", package: "swift-log"),
        ]),
    ]
)
