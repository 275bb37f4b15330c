import Foundation
import RuntimeTestSupport
import Testing

@Suite(.ownThread) struct CLITests {
    @Test func keygenThenVectorsVerifyRunsTheRealBinary() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let key = dir.file("a.key")
        let gen = try runOCapNUDS(["keygen", "--out", key])
        #expect(gen.status == 0, "keygen failed: \(gen.stderr)")
        #expect(gen.stdout.contains("fingerprint: fp1:"))
        var st = stat()
        #expect(stat(key, &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
        let again = try runOCapNUDS(["keygen", "--out", key])
        #expect(again.status == 3, "overwriting without --force must be refused")
    }

    @Test func vectorsVerifyPassesOnTheRepositoryVectors() throws {
        let r = try runOCapNUDS(["vectors", "verify", TestProcesses.packageRoot.appendingPathComponent("Vectors").path])
        let last = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(last.hasSuffix("0 failed") || last.contains(" 0 failed,"), "closing line: \(last)\n\(r.stdout)")
        #expect(r.status == 0)
        #expect(r.stdout.contains("PASS ") && r.stdout.contains("registration-v2.json [registration-v2]"),
                "the registration v2 vectors run: \(r.stdout)")
    }
}

@Suite(.ownThread) struct IdShowTests {
    @Test func idShowPrintsTheSameIdentityForAPrivateKeyAndItsPublicExport() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let key = dir.file("b.key"), pub = dir.file("b.pub")
        let gen = try runOCapNUDS(["keygen", "--out", key, "--public-out", pub])
        #expect(gen.status == 0, "\(gen.stderr)")
        let fromKey = try runOCapNUDS(["id", "show", "--json", key])
        let fromPub = try runOCapNUDS(["id", "show", "--json", pub])
        #expect(fromKey.status == 0 && fromPub.status == 0)
        #expect(fromKey.stdout == fromPub.stdout)
        let object = try JSONSerialization.jsonObject(with: Data(fromKey.stdout.utf8)) as? [String: Any]
        let designator = try #require(object?["designator"] as? String)
        #expect(designator.count == 52)
        #expect(object?["uri"] as? String == "ocapn://\(designator).unix-domain-socket")
        #expect((object?["fingerprint"] as? String)?.hasPrefix("fp1:") == true)
        let captp = try #require(object?["captp_public_key_hex"] as? String)
        #expect(captp.hasPrefix("5b3130277075626c69632d6b6579"))  // "[10'public-key"
        #expect(gen.stdout.contains(designator))
        let text = try runOCapNUDS(["id", "show", key])
        #expect(text.stdout.contains("designator: \(designator)"))
    }

    @Test func idShowRefusesAGroupReadableKeyAndAMissingFile() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let key = dir.file("c.key")
        #expect(try runOCapNUDS(["keygen", "--out", key]).status == 0)
        chmod(key, 0o640)
        let loose = try runOCapNUDS(["id", "show", key])
        #expect(loose.status == 3)
        #expect(loose.stderr.contains("chmod 600"))
        #expect(try runOCapNUDS(["id", "show", dir.file("missing.key")]).status == 3)
    }
}
