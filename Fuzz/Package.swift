// swift-tools-version:6.1
import PackageDescription

// libFuzzer harnesses for ocapn-uds, one executable per decoder or state machine. A separate
// package so nothing fuzz-only reaches the product graph. Build and run: docs/FUZZING.md.
//
// Each target holds its `LLVMFuzzerTestOneInput` plus a symlink to the oracle file that the
// main package's regression tests compile too (Tests/*/…FuzzOracle.swift), so a crasher is
// judged by the same code in both places.
let core = Target.Dependency.product(name: "OCapNUDSCore", package: "ocapn-uds")

let package = Package(
    name: "ocapn-uds-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "ocapn-uds", path: ".."),
    ],
    targets: [
        .executableTarget(name: "FuzzSyrupDecode", dependencies: [core]),
        .executableTarget(name: "FuzzControlMessages", dependencies: [core]),
        .executableTarget(name: "FuzzHandshake", dependencies: [core]),
        .executableTarget(name: "FuzzFrameReceiver", dependencies: [core]),
        .executableTarget(name: "FuzzChannelMachines", dependencies: [core]),
        .executableTarget(name: "FuzzServerCore", dependencies: [core]),
        .executableTarget(name: "FuzzLocator", dependencies: [core]),
        .executableTarget(name: "FuzzKeyFile", dependencies: [core]),
        .executableTarget(name: "FuzzAuditRecord", dependencies: [core]),
        .executableTarget(name: "FuzzAuditVerifier", dependencies: [core]),
    ]
)
