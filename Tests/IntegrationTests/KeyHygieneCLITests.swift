import Foundation
import Glibc
import RuntimeTestSupport
import Testing

/// Issue #11 item 5, seen from outside the process: `intro-server` and `peer` make themselves
/// non-dumpable unless `--allow-core-dumps`, and no public or SPI API returns a traffic key.
@Suite(.serialized, .ownThread) struct KeyHygieneCLITests {
    static let nobody: uid_t = 65534

    /// Runs as `nobody` when we are root (so that "/proc/PID is root-owned" means
    /// "non-dumpable"), as ourselves otherwise.
    static var launcher: [String]? {
        if getuid() != 0 { return [] }
        for path in ["/usr/bin/setpriv", "/bin/setpriv"] where FileManager.default.isExecutableFile(atPath: path) {
            return [path, "--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups"]
        }
        return nil
    }

    /// A process with stdout in a file; `firstLine` waits for its first line.
    final class Spawned {
        let process = Process()
        let output: String

        init(_ launcher: [String], _ arguments: [String], output: String) throws {
            self.output = output
            _ = FileManager.default.createFile(atPath: output, contents: nil)
            let command = launcher + [TestProcesses.binary] + arguments
            process.executableURL = URL(fileURLWithPath: command[0])
            process.arguments = Array(command.dropFirst())
            process.standardOutput = FileHandle(forWritingAtPath: output)
            process.standardError = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }

        func firstLine(timeout: Double = 15) -> String? {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline, process.isRunning {
                if let text = try? String(contentsOfFile: output, encoding: .utf8), let line = text.split(separator: "\n").first {
                    return String(line)
                }
                usleep(20_000)
            }
            return nil
        }

        func stop() {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
        }
    }

    /// Owner uid of /proc/PID/status and the hard RLIMIT_CORE from /proc/PID/limits.
    static func observe(_ pid: Int32) throws -> (owner: uid_t, coreHard: String) {
        var st = stat()
        guard stat("/proc/\(pid)/status", &st) == 0 else { throw POSIXError(.ESRCH) }
        let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
        let line = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") } ?? ""
        let fields = line.dropFirst("Max core file size".count).split(separator: " ")
        return (st.st_uid, fields.count >= 2 ? String(fields[1]) : "?")
    }

    @Test func introServerAndPeerAreNonDumpableUnlessAllowed() throws {
        guard let launcher = Self.launcher else {
            Issue.record("running as root without setpriv: cannot observe dumpability from outside")
            return
        }
        let runAs = getuid() == 0 ? Self.nobody : getuid()
        let dir = try TemporaryDirectory("hygiene")
        defer { dir.remove() }
        let key = dir.file("id.key")
        guard try runOCapNUDS(["keygen", "--out", key]).status == 0 else { Issue.record("keygen failed"); return }
        if getuid() == 0 {
            // The unprivileged children must read their key and create their socket here.
            #expect(chown(dir.path, runAs, runAs) == 0 && chown(key, runAs, runAs) == 0)
        }
        for allow in [false, true] {
            let extra = allow ? ["--allow-core-dumps"] : []
            let socket = dir.file(allow ? "s-allow" : "s-deny")
            let server = try Spawned(launcher, ["intro-server", "--identity", key, "--socket", socket] + extra,
                                     output: dir.file("server-\(allow).out"))
            defer { server.stop() }
            #expect(server.firstLine()?.hasPrefix("listening: ") == true)
            let peer = try Spawned(launcher, ["peer", "--identity", key, "--server", socket] + extra, output: dir.file("peer-\(allow).out"))
            defer { peer.stop() }
            #expect(peer.firstLine()?.hasPrefix("ocapn://") == true)
            for (name, child) in [("intro-server", server), ("peer", peer)] {
                let seen = try Self.observe(child.process.processIdentifier)
                if allow {
                    #expect(seen.owner == runAs, "\(name) --allow-core-dumps stays dumpable: /proc/PID is its own")
                } else {
                    #expect(seen.owner == 0, "\(name) is non-dumpable: the kernel made /proc/PID root's")
                    #expect(seen.coreHard == "0", "\(name) lowered RLIMIT_CORE to 0")
                }
            }
        }
    }

    /// Type-checks code outside the package against the built modules, as a library user would.
    static func typecheck(_ source: String) throws -> (ok: Bool, errors: String) {
        let dir = try TemporaryDirectory("apicheck")
        defer { dir.remove() }
        let file = dir.file("probe.swift")
        try source.write(toFile: file, atomically: true, encoding: .utf8)
        let modules = URL(fileURLWithPath: TestProcesses.binary).deletingLastPathComponent().appendingPathComponent("Modules").path
        let swiftc = ["/opt/swift/usr/bin/swiftc", "/usr/bin/swiftc"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "swiftc"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // The C modules the package's targets import (Identity and Audit sit on Transport's shim).
        let build = URL(fileURLWithPath: TestProcesses.binary).deletingLastPathComponent()
        let shim = build.appendingPathComponent("CFDShim.build/module.modulemap").path
        // SodiumCrypto's BoringSSL (SwiftPM hands a package user this map by itself).
        let boringSSL = build.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("checkouts/swift-crypto/Sources/CCryptoBoringSSL/include/module.modulemap").path
        p.arguments = [swiftc, "-typecheck", "-I", modules, "-Xcc",
                       "-fmodule-map-file=\(TestProcesses.packageRoot.appendingPathComponent("Sources/CSodium/module.modulemap").path)",
                       "-Xcc", "-fmodule-map-file=\(shim)", "-Xcc", "-fmodule-map-file=\(boringSSL)", file]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let data = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus == 0, String(decoding: data, as: UTF8.self))
    }

    @Test func theIdentityKeySignsNoArbitraryBytesAndNoSecretIsReachableFromOutsideThePackage() throws {
        // The control: typed operations compile for a library user.
        let control = try Self.typecheck("""
            import Identity
            import OCapN
            func f(_ k: IdentityKeyPair, _ c: Challenge, _ p: PublicIdentity) -> [Ed25519Signature] {
                [k.sign(c), k.signRegistration(.client, peer: p, clientChallenge: c, serverChallenge: c)]
            }
            func g() throws -> [IdentityKeyPair] {
                try IdentityKeyFile.write(.generate(), to: "/k", passphraseFile: "/p")
                return [try IdentityKeyFile.load(path: "/k"), try IdentityKeyFile.load(path: "/k", passphraseFile: "/p")]
            }
            """)
        #expect(control.ok, "the probe set-up is broken: \(control.errors)")
        let probes = [
            // No general-purpose signature, and no per-purpose primitive that takes raw bytes.
            "import Identity\nfunc f(_ k: IdentityKeyPair) { _ = k.sign([UInt8](repeating: 0, count: 61)) }",
            "import Identity\nfunc f(_ k: IdentityKeyPair) { _ = k.signHandshakeTranscript(.initiator, hash: []) }",
            "import Identity\nfunc f(_ k: IdentityKeyPair) { _ = k.signAuditCheckpoint(recordLine: [UInt8]()) }",
            "import Identity\nfunc f(_ k: IdentityKeyPair) { _ = k.signRegistrationChallenge([]) }",
            "import Identity\nfunc f(_ k: IdentityKeyPair) { _ = k.handshakeAgreement(with: []) }",
            "import Identity\nfunc f(_ k: IdentityKeyPair) { _ = k.secretKey }",
            "@_spi(TestVectors) import Identity\nfunc f(_ k: IdentityKeyPair) { _ = k.handshakeSecret }",
            // Secret storage is not a type a library user can name, fill or copy out.
            "import SodiumCrypto\nfunc f(_ s: SecretBytes) {}",
            "import SodiumCrypto\nlet s = SecretBytes(count: 32)",
            "@_spi(TestVectors) import SodiumCrypto\nfunc f(_ s: SecretBytes) {}",
        ]
        for source in probes {
            let probe = try Self.typecheck(source)
            #expect(!probe.ok, "reachable from outside the package: \(source)")
            #expect(probe.errors.contains("inaccessible") || probe.errors.contains("has no member")
                    || probe.errors.contains("cannot find"), "\(probe.errors)")
        }
    }

    @Test func noPublicOrSPIPathReturnsATrafficKey() throws {
        // The control: the same set-up compiles public API, so a failure below is access control.
        let control = try Self.typecheck("""
            import SecureChannel
            func f(_ s: FrameSender, _ r: FrameReceiver) -> Bool { s.isClosed || r.isClosed }
            """)
        #expect(control.ok, "the probe set-up is broken: \(control.errors)")
        for member in ["trafficKeyForTesting", "key", "trafficKeyForVectors"] {
            for imp in ["import SecureChannel", "@_spi(TestVectors) import SecureChannel"] {
                let probe = try Self.typecheck("""
                    \(imp)
                    func f(_ s: FrameSender, _ r: FrameReceiver) { _ = s.\(member); _ = r.\(member) }
                    """)
                #expect(!probe.ok, "\(imp): FrameSender.\(member) is reachable from outside the package")
                #expect(probe.errors.contains("inaccessible") || probe.errors.contains("has no member"), "\(probe.errors)")
            }
        }
    }
}
