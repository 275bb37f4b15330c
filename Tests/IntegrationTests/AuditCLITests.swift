import Audit
import Foundation
import Glibc
import Identity
import RuntimeTestSupport
import SodiumCrypto
import Testing

/// Issue #10 against the real CLI and real files: strict verification, truncation windows and
/// their exit codes, forward-secure seals, the witness, a restart on a tampered file, --graph.
@Suite(.serialized, .ownThread) struct AuditCLITests {
    private static func lines(_ path: String) -> [String] {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        var l = text.components(separatedBy: "\n")
        if l.last == "" { l.removeLast() }
        return l
    }

    private static func write(_ lines: [String], _ path: String, newline: Bool = true) {
        try! (lines.joined(separator: "\n") + (newline ? "\n" : "")).write(toFile: path, atomically: false, encoding: .utf8)
    }

    /// A closed signed log of 20 events, checkpoints every 5 records, with a witness file.
    private static func signedLog(_ dir: TemporaryDirectory, _ pair: IdentityKeyPair, name: String = "a.jsonl") throws -> (String, String) {
        let path = dir.file(name), witness = dir.file(name + ".witness")
        let sink = try AuditFileSink(AuditFileConfiguration(
            path: path, writer: pair.publicIdentity, signer: pair,
            checkpoints: AuditCheckpointPolicy(everyRecords: 5), fsync: .never, witness: .file(witness)))
        let other = AuditPeerID(IdentityKeyPair.generate().publicIdentity)
        for i in 0..<20 {
            sink.record(AuditEvent(.handshakeSucceeded, attempt: AuditAttemptID(rawValue: UInt64(i)), role: .initiator,
                                   local: AuditPeerID(pair.publicIdentity), expectedPeer: other, provedPeer: other, durationMicros: UInt64(i)))
        }
        sink.close()
        return (path, witness)
    }

    @Test func truncationReorderingAndUnsignedRewritesEachHaveTheirExitCode() throws {
        let dir = try TemporaryDirectory("audit-cli"); defer { dir.remove() }
        let pair = IdentityKeyPair.generate()
        let keyFile = dir.file("writer.key")
        try IdentityKeyFile.write(pair, to: keyFile)
        let (path, witness) = try Self.signedLog(dir, pair)
        let original = Self.lines(path)
        let checkpoints = original.indices.filter { original[$0].contains("\"log.checkpoint\"") }
        let last = try #require(checkpoints.last)
        func verify(_ lines: [String], newline: Bool = true, _ extra: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
            Self.write(lines, path, newline: newline)
            return try runOCapNUDS(["audit", "--verify", path, "--writer", keyFile] + extra)
        }
        let intact = try verify(original)
        #expect(intact.status == 0, "\(intact.stdout)")
        #expect(intact.stdout.contains("last sealed point: seq \(original.count)"))
        #expect(intact.stdout.contains("0 record(s) after it"))
        // Not pinned: says which key signed, and that nothing pinned it.
        let unpinned = try runOCapNUDS(["audit", "--verify", path])
        #expect(unpinned.status == 0)
        #expect(unpinned.stdout.contains("writerNotPinned") && unpinned.stdout.contains(pair.publicIdentity.fingerprint))

        // In the middle of a record: a torn line (5).
        var torn = original
        torn[torn.count - 1] = String(torn[torn.count - 1].prefix(30))
        #expect(try verify(torn, newline: false).status == 5)
        // Records cut out of the middle: a seq gap (4).
        let middle = try verify(Array(original[..<6]) + Array(original[9...]))
        #expect(middle.status == 4 && middle.stdout.contains("seqGap"), "\(middle.stdout)")
        // Exactly at a checkpoint: unsealed (6), nothing after the last sealed point.
        let atCheckpoint = try verify(Array(original[...last]))
        #expect(atCheckpoint.status == 6, "\(atCheckpoint.stdout)")
        #expect(atCheckpoint.stdout.contains("last sealed point: seq \(last + 1)") && atCheckpoint.stdout.contains("0 record(s) after it"))
        // After the last checkpoint: unsealed (6), with the count of unsealed records.
        let after = try verify(Array(original[...(checkpoints[checkpoints.count - 2] + 2)]))
        #expect(after.status == 6)
        #expect(after.stdout.contains("2 record(s) after it"), "\(after.stdout)")
        // The witness turns a cut behind a witnessed checkpoint into a break (4).
        let cut = try verify(Array(original[...checkpoints[1]]), ["--witness", witness])
        #expect(cut.status == 4 && cut.stdout.contains("cutBehindWitness"), "\(cut.stdout)")
        // Reordering (4).
        var swapped = original
        swapped.swapAt(3, 4)
        let reordered = try verify(swapped)
        #expect(reordered.status == 4 && reordered.stdout.contains("seqGap"), "\(reordered.stdout)")

        // An unsigned rewrite: re-chained by hand without any key (7; --allow-unsigned: 0).
        var chain = AuditChain(writer: pair.publicIdentity, signer: nil)
        var forged = [chain.opened(cause: .start, at: .now())]
        for l in original.dropFirst(3) {
            let r = try AuditRecord.decode(Array(l.utf8)[...])
            if !r.event.kind.isLogBookkeeping { forged.append(chain.append(r.event, at: r.timestamp)) }
        }
        forged.append(chain.closed(cause: .shutdown, at: .now()))
        let unsigned = try verify(forged.map { String(decoding: $0, as: UTF8.self) })
        #expect(unsigned.status == 7, "\(unsigned.stdout)")
        #expect(unsigned.stdout.contains("unsignedRun"))
        #expect(try runOCapNUDS(["audit", "--verify", path, "--writer", keyFile, "--allow-unsigned"]).status == 0)
        // An unsigned run spliced after the signed log (7).
        var splice = AuditChain(writer: pair.publicIdentity, signer: nil, nextSeq: UInt64(original.count + 1),
                                head: AuditRecord.chainHash(Array(original.last!.utf8)))
        let tail = [splice.opened(cause: .start, at: .now()), splice.append(AuditEvent(.serverStarted, role: .server), at: .now()),
                    splice.closed(cause: .shutdown, at: .now())].map { String(decoding: $0, as: UTF8.self) }
        #expect(try verify(original + tail).status == 7)
        // A writer swap: another key's signed run after it (4).
        let thief = IdentityKeyPair.generate()
        var swap = AuditChain(writer: thief.publicIdentity, signer: thief,
                              nextSeq: UInt64(original.count + 1), head: AuditRecord.chainHash(Array(original.last!.utf8)))
        let swapTail = [swap.opened(cause: .start, at: .now()), swap.append(AuditEvent(.serverStarted, role: .server), at: .now()),
                        swap.closed(cause: .shutdown, at: .now())].map { String(decoding: $0, as: UTF8.self) }
        let swapped2 = try verify(original + swapTail)
        #expect(swapped2.status == 4 && swapped2.stdout.contains("writerChangeWithoutHandover"), "\(swapped2.stdout)")
    }

    /// The thief of the running host: holds the identity key and the current sealing key,
    /// rewrites an early record and re-signs and re-seals everything.
    private static func rewriteWithCurrentKeys(_ path: String, identity: IdentityKeyPair, sealing: AuditSealingKey) throws {
        var out: [String] = []
        var prev = AuditRecord.genesis
        for (i, l) in lines(path).enumerated() {
            let r = try AuditRecord.decode(Array(l.utf8)[...])
            var event = r.event
            if i == 1 { event.path = AuditPath("/somewhere/else") }
            var meta = r.log
            if var m = meta, m.signature != nil {
                m.signature = nil
                m.seal = nil
                m.epoch = sealing.epoch
                let unsealed = AuditRecord(seq: r.seq, prev: prev, timestamp: r.timestamp, event: event, log: m)
                m.seal = AuditSealing.mac(key: try sealingKeyBytes(sealing), message: unsealed.sealedMessage())
                let resigned = AuditRecord(seq: r.seq, prev: prev, timestamp: r.timestamp, event: event, log: m).signedMessage()
                m.signature = identity.signAuditCheckpoint(recordLine: resigned.dropFirst(AuditRecord.checkpointContext.count))
                meta = m
            }
            let line = AuditRecord(seq: r.seq, prev: prev, timestamp: r.timestamp, event: event, log: meta).encode()
            prev = AuditRecord.chainHash(line)
            out.append(String(decoding: line, as: UTF8.self))
        }
        write(out, path)
    }

    /// The thief reads the key file as the writer would.
    private static func sealingKeyBytes(_ key: AuditSealingKey) throws -> SecretBytes {
        let tmp = NSTemporaryDirectory() + "thief-\(UUID().uuidString).key"
        defer { unlink(tmp) }
        try AuditSealingKeyFile.store(key, path: tmp)
        let text = try String(contentsOfFile: tmp, encoding: .utf8)
        let hex = try #require(text.split(separator: "\n").first { $0.hasPrefix("key=") }).dropFirst(4)
        return SecretBytes(copying: try #require(Hex.decode(String(hex))))
    }

    @Test func forwardSecureSealsWitnessAndARestartOnATamperedFileWithTheRealServer() throws {
        let dir = try TemporaryDirectory("audit-seal"); defer { dir.remove() }
        let seal = dir.file("seal.key"), verifyKey = dir.file("verify.key"), witness = dir.file("witness.txt")
        let setup = try runOCapNUDS(["audit", "setup-keys", "--sealing-key", seal, "--verification-key", verifyKey, "--interval", "1s"])
        #expect(setup.status == 0, "\(setup.stderr)")
        #expect(setup.stdout.contains("verification key: ocapn-uds-audit-verify-v1:"))
        #expect(try runOCapNUDS(["audit", "setup-keys", "--sealing-key", seal]).status == 3, "never overwrites a key silently")

        var server: IntroServerProcess? = try IntroServerProcess(["--audit-seal-key", seal, "--witness", witness], dir: dir)
        Thread.sleep(forTimeInterval: 3.5)
        #expect(server!.child.stop(signal: SIGINT) == 0)
        let path = server!.auditPath, keyFile = server!.keyPath
        server = nil

        let summary = try runOCapNUDS(["audit", path])
        #expect(summary.status == 0)
        #expect(summary.stdout.contains("sealing: forward-secure seals (key id"), "\(summary.stdout)")
        #expect(summary.stdout.contains("closed cleanly"))
        let good = try runOCapNUDS(["audit", "--verify", path, "--writer", keyFile, "--verify-key", verifyKey, "--witness", witness])
        #expect(good.status == 0, "\(good.stdout)")
        #expect(good.stdout.contains("seals: ") && good.stdout.contains("witness: "))
        let epochs = Set(Self.lines(path).compactMap { try? AuditRecord.decode(Array($0.utf8)[...]) }.compactMap { $0.log?.epoch })
        #expect(epochs.count >= 3, "a seal per 1 s epoch: \(epochs.sorted())")

        // The thief's rewrite of a sealed epoch: signatures cannot tell, the verification key can.
        let identity = try IdentityKeyFile.load(path: keyFile)
        try Self.rewriteWithCurrentKeys(path, identity: identity, sealing: try AuditSealingKeyFile.load(path: seal))
        #expect(try runOCapNUDS(["audit", "--verify", path, "--writer", keyFile]).status == 0)
        let caught = try runOCapNUDS(["audit", "--verify", path, "--writer", keyFile, "--verify-key", verifyKey])
        #expect(caught.status == 4 && caught.stdout.contains("recordOutsideEpoch"), "\(caught.stdout)")
        let witnessed = try runOCapNUDS(["audit", "--verify", path, "--writer", keyFile, "--witness", witness])
        #expect(witnessed.status == 4 && witnessed.stdout.contains("witnessMismatch"), "\(witnessed.stdout)")

        // The writer restarts on the tampered file: refuses it, moves it aside, says so at error level.
        let restarted = try IntroServerProcess(["--audit-seal-key", seal], dir: dir)
        let error = restarted.child.waitForLine(onStderr: true, timeout: 5) { $0.contains("error") && $0.contains("moved aside") }
        #expect(restarted.child.stop(signal: SIGINT) == 0)
        #expect(error != nil, "\(restarted.child.errorOutput)")
        let moved = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix("audit.jsonl.tampered-") }
        #expect(moved.count == 1)
        let first = try AuditRecord.decode(Array(try #require(Self.lines(path).first).utf8)[...])
        #expect(first.log?.cause == .tampered)
        #expect(first.log?.moved?.value == dir.file(try #require(moved.first)))
        #expect(first.log?.failure != nil)
        let fresh = try runOCapNUDS(["audit", "--verify", path, dir.file(moved[0]), "--writer", keyFile, "--verify-key", verifyKey])
        #expect(fresh.status == 0, "\(fresh.stdout + fresh.stderr)")
        #expect(fresh.stderr.contains("skipping") && fresh.stdout.contains("fileMovedAside"))
    }

    @Test func theSealingVectorsRunUnderVectorsVerify() throws {
        let path = TestProcesses.packageRoot.appendingPathComponent("Vectors/audit-sealing.json").path
        let r = try runOCapNUDS(["vectors", "verify", path])
        #expect(r.status == 0)
        #expect(r.stdout.contains("PASS") && r.stdout.contains("[ocapn-uds/audit-sealing/v1] 10 passed, 0 failed"), "\(r.stdout)")
    }

    @Test func graphOfARealTrailParsesAndNamesEveryVerifiedPair() throws {
        let demo = try ChildProcess(["demo", "--peers", "3", "--connections", "4", "--messages", "1"])
        let status = demo.waitForExit(timeout: 120)
        let dirLine = demo.output.first { $0.hasPrefix("demo: working directory ") }
        let dir = try #require(dirLine.map { String($0.dropFirst("demo: working directory ".count).split(separator: " ").first ?? "") })
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(status == 0)
        let trails = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".audit.jsonl") }.map { dir + "/" + $0 }
        #expect(!trails.isEmpty)
        let graph = try runOCapNUDS(["audit", "--graph"] + trails)
        #expect(graph.status == 0, "\(graph.stderr)")
        let dot = try DotGraph(graph.stdout)
        var pairs: Set<[String]> = []
        for t in trails {
            for l in Self.lines(t) {
                guard let r = try? AuditRecord.decode(Array(l.utf8)[...]), r.event.kind == .handshakeSucceeded,
                      r.event.role == .initiator, let a = r.event.local, let b = r.event.expectedPeer else { continue }
                pairs.insert([a.fingerprint, b.fingerprint])
            }
        }
        #expect(!pairs.isEmpty)
        for p in pairs {
            #expect(dot.nodes.contains(p[0]) && dot.nodes.contains(p[1]))
            #expect(dot.edges.contains { $0.from == p[0] && $0.to == p[1] && $0.label.contains("verified") }, "\(p) in \(graph.stdout)")
        }
        // Failures are drawn apart (dashed red), never on a verified edge.
        for e in dot.edges where e.label.hasPrefix("failed") { #expect(e.attributes["style"] == "dashed") }

        let noDot = try ChildProcess(["audit", "--graph", "--graph-format", "svg"] + trails, environment: ["PATH": "/nonexistent"])
        #expect(noDot.waitForExit(timeout: 30) == 1)
        #expect(noDot.errorOutput.joined().contains("apt-get install graphviz"))
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/dot") {
            let svg = try runOCapNUDS(["audit", "--graph", "--graph-format", "svg"] + trails)
            #expect(svg.status == 0 && svg.stdout.contains("<svg"), "\(svg.stderr)")
        }
    }
}

/// A small parser of the DOT subset `audit --graph` writes (statements one per line), strict
/// enough to fail on unbalanced quotes, braces or attribute lists.
struct DotGraph {
    struct Edge { let from: String; let to: String; let label: String; let attributes: [String: String] }
    var nodes: Set<String> = []
    var edges: [Edge] = []

    enum ParseError: Error { case syntax(String) }

    init(_ text: String) throws {
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        guard lines.first?.hasPrefix("digraph ") == true, lines.first?.hasSuffix("{") == true, lines.last == "}" else {
            throw ParseError.syntax("not a digraph block")
        }
        for line in lines.dropFirst().dropLast() {
            guard line.hasSuffix(";") else { throw ParseError.syntax("statement without ';': \(line)") }
            var s = Substring(line.dropLast())
            func quoted() throws -> String {
                guard s.first == "\"" else { throw ParseError.syntax("expected a quoted id: \(line)") }
                s = s.dropFirst()
                var out = ""
                while let c = s.first, c != "\"" {
                    if c == "\\" { s = s.dropFirst(); out.append("\\") }
                    guard let d = s.first else { break }
                    out.append(d)
                    s = s.dropFirst()
                }
                guard s.first == "\"" else { throw ParseError.syntax("unterminated string: \(line)") }
                s = s.dropFirst()
                return out
            }
            func attributes() throws -> [String: String] {
                s = s.drop { $0 == " " }
                guard s.first == "[", s.last == "]" else { throw ParseError.syntax("bad attribute list: \(line)") }
                s = s.dropFirst().dropLast()
                var attrs: [String: String] = [:]
                while !s.isEmpty {
                    s = s.drop { $0 == " " || $0 == "," }
                    let key = String(s.prefix { $0 != "=" })
                    s = s.dropFirst(key.count + 1)
                    if s.first == "\"" { attrs[key] = try quoted() } else {
                        let v = s.prefix { $0 != "," }
                        attrs[key] = String(v)
                        s = s.dropFirst(v.count)
                    }
                }
                return attrs
            }
            if s.hasPrefix("graph ") || s.hasPrefix("node ") || s.hasPrefix("edge ") {
                s = s.drop { $0 != " " }
                _ = try attributes()
                continue
            }
            let a = try quoted()
            s = s.drop { $0 == " " }
            if s.hasPrefix("->") {
                s = s.dropFirst(2).drop { $0 == " " }
                let b = try quoted()
                let attrs = try attributes()
                edges.append(Edge(from: a, to: b, label: attrs["label"] ?? "", attributes: attrs))
            } else {
                _ = try attributes()
                nodes.insert(a)
            }
        }
        for e in edges where !nodes.contains(e.from) || !nodes.contains(e.to) { throw ParseError.syntax("edge to an undeclared node") }
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/dot") {
            // Graphviz itself must accept it too.
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/dot")
            p.arguments = ["-Tcanon"]
            let input = Pipe()
            p.standardInput = input
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            input.fileHandleForWriting.write(Data(text.utf8))
            try input.fileHandleForWriting.close()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw ParseError.syntax("dot -Tcanon rejected it") }
        }
    }
}
