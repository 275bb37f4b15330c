// swift-tools-version:6.1
import PackageDescription

// Layers, dependencies pointing one way:
//   Errors (the one error shape, `CodedError<Code>`) <- every module with coded errors
//   CSodium  <- SodiumCrypto <- Identity <- OCapN (Syrup formats, intro protocol, sans-IO)
//                             <- SecureChannel (UDS-HS1 handshake + framed channel, sans-IO)
//   CFDShim  <- Transport (owned fds, sockets, SCM_RIGHTS)
//   Audit (records, hash chain) <- Identity
//   Runtime  <- OCapN, SecureChannel, Transport, Audit, Logging
//   VectorCheck <- OCapN, SecureChannel, Syrup, Identity, Audit
//   Bench (measurements against in-run baselines) <- Runtime and the layers below
//   Demo (the main job: server and peers as processes, attacks refused) <- Runtime and below
//   Check (ocapn-uds check: conformance and attack probes) <- OCapN, SecureChannel, Transport
//   ocapn-uds (CLI) <- Runtime, VectorCheck, Bench, Demo, Check, ArgumentParser
let package = Package(
    name: "ocapn-uds",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ocapn-uds", targets: ["ocapn-uds"]),
        // Runtime and Audit (an `AuditSink` is part of `PeerNetlayer`'s API).
        .library(name: "OCapNUDS", targets: ["Runtime", "Audit", "Errors"]),
        // The sans-IO layers on their own (the fuzz package in Fuzz/ builds against these).
        .library(name: "OCapNUDSCore", targets: ["Syrup", "OCapN", "SecureChannel", "Identity", "SodiumCrypto", "Audit", "Errors"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        .target(name: "CFDShim"),
        .target(name: "Errors"),
        .target(name: "Syrup"),
        .target(name: "SodiumCrypto", dependencies: ["CSodium", "Errors"]),
        .target(name: "Identity", dependencies: ["SodiumCrypto", "Errors"]),
        .target(name: "OCapN", dependencies: ["Syrup", "Identity", "SodiumCrypto", "Errors"]),
        .target(name: "SecureChannel", dependencies: ["Identity", "SodiumCrypto", "Errors"]),
        .target(name: "Transport", dependencies: ["CFDShim"]),
        .target(name: "Audit", dependencies: ["Identity", "SodiumCrypto", "Errors"]),
        .target(
            name: "Runtime",
            dependencies: [
                "OCapN", "SecureChannel", "Transport", "Audit", "Identity", "Syrup", "Errors",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "VectorCheck", dependencies: ["OCapN", "SecureChannel", "Syrup", "Identity", "SodiumCrypto", "Audit"]),
        .target(
            name: "Bench",
            dependencies: ["Runtime", "SecureChannel", "Transport", "OCapN", "Identity", "SodiumCrypto", "Syrup", "Audit"]
        ),
        .target(
            name: "Demo",
            dependencies: [
                "Runtime", "Audit", "OCapN", "SecureChannel", "Transport", "Identity",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(name: "Check", dependencies: ["OCapN", "SecureChannel", "Transport", "Identity", "Syrup", "SodiumCrypto", "Errors"]),
        .executableTarget(
            name: "ocapn-uds",
            dependencies: [
                "Runtime", "VectorCheck", "Audit", "Identity", "OCapN", "Bench", "Demo", "Check",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Test-only C: a sender whose SCM_RIGHTS control message is padded like Goblins' (issue #17).
        .target(name: "CPaddedSender", path: "Tests/CPaddedSender"),
        .testTarget(name: "SyrupTests", dependencies: ["Syrup"]),
        .testTarget(name: "IdentityTests", dependencies: ["Identity", "SodiumCrypto"]),
        .testTarget(name: "OCapNTests", dependencies: ["OCapN", "Syrup", "Identity", "SodiumCrypto"]),
        .testTarget(name: "SecureChannelTests", dependencies: ["SecureChannel", "Identity", "SodiumCrypto"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport"]),
        .testTarget(name: "AuditTests", dependencies: ["Audit", "Identity", "SodiumCrypto"]),
        .testTarget(
            name: "RuntimeTests",
            dependencies: [
                "Runtime", "Transport", "OCapN", "Audit", "Identity", "Syrup", "SodiumCrypto", "SecureChannel",
                "CPaddedSender", .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "CheckTests",
            // The tests spawn the real intro-server and peer, and weakened ones in-process.
            dependencies: ["Check", "Runtime", "Transport", "OCapN", "SecureChannel", "Identity", "Syrup", "SodiumCrypto", "ocapn-uds"]
        ),
        .testTarget(
            name: "IntegrationTests",
            // Depending on the executable makes `swift test` build it; the tests spawn it.
            dependencies: ["Runtime", "Transport", "OCapN", "Audit", "Identity", "Syrup", "SodiumCrypto", "VectorCheck", "CPaddedSender", "ocapn-uds"]
        ),
    ]
)
