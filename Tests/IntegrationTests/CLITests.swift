import Foundation
import Testing

@Suite struct CLITests {
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
    }
}
