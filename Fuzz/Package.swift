// swift-tools-version:6.1
import PackageDescription

// libFuzzer harnesses for ocapn-uds, one executable per decoder or state machine. A separate
// package so nothing fuzz-only reaches the product graph. Build and run: docs/FUZZING.md.
//
// Each target holds only its `LLVMFuzzerTestOneInput`; the oracle that judges an input is in the
// main package's TestSupport target (Tests/TestSupport/…FuzzOracle.swift), which its regression
// tests use too, so a crasher is judged by the same code in both places.
let oracles = Target.Dependency.product(name: "OCapNUDSTestSupport", package: "ocapn-uds")

let package = Package(
    name: "ocapn-uds-fuzz",
    dependencies: [
        .package(name: "ocapn-uds", path: ".."),
    ],
    targets: [
        .executableTarget(name: "FuzzSyrupDecode", dependencies: [oracles]),
        .executableTarget(name: "FuzzControlMessages", dependencies: [oracles]),
        .executableTarget(name: "FuzzHandshake", dependencies: [oracles]),
        .executableTarget(name: "FuzzFrameReceiver", dependencies: [oracles]),
        .executableTarget(name: "FuzzChannelMachines", dependencies: [oracles]),
        .executableTarget(name: "FuzzServerCore", dependencies: [oracles]),
        .executableTarget(name: "FuzzLocator", dependencies: [oracles]),
        .executableTarget(name: "FuzzKeyFile", dependencies: [oracles]),
        .executableTarget(name: "FuzzAuditRecord", dependencies: [oracles]),
        .executableTarget(name: "FuzzAuditVerifier", dependencies: [oracles]),
    ]
)
