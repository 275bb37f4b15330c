// swift-tools-version:6.1
import PackageDescription

// Layers, dependencies pointing one way:
//   Errors (the one error shape, `CodedError<Code>`) <- every module with coded errors
//   CFDShim  <- Transport (the one system-call layer: owned fds, files, sockets, SCM_RIGHTS)
//   CSodium  <- SodiumCrypto <- Identity (key files through Transport) <- OCapN (Syrup formats, intro protocol, sans-IO)
//                             <- SecureChannel (UDS-HS1 handshake + framed channel, sans-IO)
//   Audit (records, hash chain; files through Transport) <- Identity, Transport
//   Runtime  <- OCapN, SecureChannel, Transport, Audit, Logging
//   VectorCheck <- OCapN, SecureChannel, Syrup, Identity, Audit
//   Bench (measurements against in-run baselines) <- Runtime and the layers below
//   Demo (the main job: server and peers as processes, attacks refused) <- Runtime and below
//   Check (ocapn-uds check: conformance and attack probes) <- OCapN, SecureChannel, Transport
//   ocapn-uds (CLI) <- Runtime, VectorCheck, Bench, Demo, Check, ArgumentParser
// Test-only code lives under Tests/, never in a product module:
//   TestSupport (fuzz oracles, in-memory audit sink, secret scanner) <- the sans-IO layers, Audit;
//     Fuzz/ builds against it too (product OCapNUDSTestSupport), so it stays off Runtime
//   RuntimeTestSupport (spawning the CLI, a scriptable introduction server) <- Runtime, Transport
//
// Linux only: Transport and the C shim use Linux interfaces (SO_PEERCRED, accept4, MSG_CMSG_CLOEXEC,
// /proc/self/fd, prctl), and the suite is built and run on Linux; so no other platform is claimed.
let package = Package(
    name: "ocapn-uds",
    products: [
        .executable(name: "ocapn-uds", targets: ["ocapn-uds"]),
        // Runtime and Audit (an `AuditSink` is part of `PeerNetlayer`'s API).
        .library(name: "OCapNUDS", targets: ["Runtime", "Audit", "Errors"]),
        // The sans-IO layers on their own (the fuzz package in Fuzz/ builds against these).
        .library(name: "OCapNUDSCore", targets: ["Syrup", "OCapN", "SecureChannel", "Identity", "SodiumCrypto", "Audit", "Errors"]),
        // Not API: the fuzz oracles and test helpers, for this package's tests and for Fuzz/.
        .library(name: "OCapNUDSTestSupport", targets: ["TestSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // BoringSSL's ChaCha20-Poly1305 (SodiumCrypto/ChaChaPoly.swift); 3.x: the module it is
        // reached through is swift-crypto's, not its API, so a major version is not taken blindly.
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"4.0.0"),
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
        .target(name: "SodiumCrypto", dependencies: ["CSodium", "Errors", .product(name: "Crypto", package: "swift-crypto")]),
        .target(name: "Identity", dependencies: ["SodiumCrypto", "Errors", "Transport"]),
        .target(name: "OCapN", dependencies: ["Syrup", "Identity", "SodiumCrypto", "Errors"]),
        .target(name: "SecureChannel", dependencies: ["Identity", "SodiumCrypto", "Errors"]),
        .target(name: "Transport", dependencies: ["CFDShim"]),
        .target(name: "Audit", dependencies: ["Identity", "SodiumCrypto", "Errors", "Transport"]),
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
            dependencies: [
                "Runtime", "SecureChannel", "Transport", "OCapN", "Identity", "SodiumCrypto", "Syrup", "Audit",
                .product(name: "Logging", package: "swift-log"),
            ]
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
                "Runtime", "VectorCheck", "Audit", "Identity", "OCapN", "SecureChannel", "Transport", "SodiumCrypto", "Syrup",
                "Bench", "Demo", "Check",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Test-only C: a sender whose SCM_RIGHTS control message is padded like Goblins' (issue #17).
        .target(name: "CPaddedSender", path: "Tests/CPaddedSender"),
        .target(
            name: "TestSupport",
            dependencies: ["Syrup", "OCapN", "SecureChannel", "Identity", "SodiumCrypto", "Audit", "Errors"],
            path: "Tests/TestSupport"
        ),
        .target(
            name: "RuntimeTestSupport",
            dependencies: ["Runtime", "Transport", "OCapN", "Identity", "Syrup", "CPaddedSender"],
            path: "Tests/RuntimeTestSupport"
        ),
        .testTarget(name: "SyrupTests", dependencies: ["Syrup", "TestSupport"]),
        .testTarget(name: "IdentityTests", dependencies: ["Identity", "SodiumCrypto", "TestSupport"]),
        .testTarget(name: "OCapNTests", dependencies: ["OCapN", "Syrup", "Identity", "SodiumCrypto", "TestSupport"]),
        .testTarget(name: "SecureChannelTests", dependencies: ["SecureChannel", "Identity", "SodiumCrypto", "TestSupport"]),
        .testTarget(name: "TransportTests", dependencies: ["Transport", "RuntimeTestSupport"]),
        .testTarget(name: "AuditTests", dependencies: ["Audit", "Identity", "SodiumCrypto", "TestSupport"]),
        .testTarget(
            name: "RuntimeTests",
            dependencies: [
                "Runtime", "Transport", "OCapN", "Audit", "Identity", "Syrup", "SodiumCrypto", "SecureChannel",
                "CPaddedSender", "TestSupport", "RuntimeTestSupport", .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(
            name: "CheckTests",
            // The tests spawn the real intro-server and peer, and weakened ones in-process.
            dependencies: ["Check", "Runtime", "Transport", "OCapN", "SecureChannel", "Identity", "Syrup", "SodiumCrypto", "RuntimeTestSupport", "ocapn-uds"]
        ),
        .testTarget(
            name: "IntegrationTests",
            // Depending on the executable makes `swift test` build it; the tests spawn it.
            dependencies: [
                "Runtime", "Transport", "OCapN", "Audit", "Identity", "Syrup", "SodiumCrypto", "SecureChannel", "VectorCheck",
                "CPaddedSender", "TestSupport", "RuntimeTestSupport", "ocapn-uds", .product(name: "Logging", package: "swift-log"),
            ]
        ),
    ]
)
