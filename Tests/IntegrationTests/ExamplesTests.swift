import Foundation
import Glibc
import Identity
import OCapN
import RuntimeTestSupport
import Testing

/// The README's and docs/PEER.md's code is the Examples/ package: the snippets are its code,
/// and its two programs work against the real introduction server.
@Suite(.ownThread) struct ExampleSnippetTests {
    /// Each line trimmed, blank lines dropped: the snippets are indented differently in Markdown.
    static func normalized(_ text: String) -> [String] {
        text.split(separator: "\n", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    static func swiftBlocks(in markdown: String) -> [String] {
        var blocks: [String] = [], current: [String]? = nil
        for line in markdown.split(separator: "\n", omittingEmptySubsequences: false) {
            if current == nil, line.hasPrefix("```swift") { current = [] }
            else if current != nil, line.hasPrefix("```") { blocks.append(current!.joined(separator: "\n")); current = nil }
            else if current != nil { current!.append(String(line)) }
        }
        return blocks
    }

    /// `lines` occur in `file` one after another.
    static func contains(_ file: [String], _ lines: [String]) -> Bool {
        guard file.count >= lines.count else { return false }
        for start in 0...(file.count - lines.count) where Array(file[start..<(start + lines.count)]) == lines { return true }
        return false
    }

    @Test(arguments: ["README.md", "docs/PEER.md"])
    func everySwiftSnippetIsCodeOfTheExamplesPackage(_ document: String) throws {
        let root = TestProcesses.packageRoot
        let markdown = try String(contentsOf: root.appendingPathComponent(document), encoding: .utf8)
        let examples = ["Examples/Package.swift", "Examples/Sources/Client/main.swift", "Examples/Sources/EchoPeer/main.swift",
                        "Examples/Sources/KeepServer/main.swift"]
        let files = try examples.map { Self.normalized(try String(contentsOf: root.appendingPathComponent($0), encoding: .utf8)) }
        let blocks = Self.swiftBlocks(in: markdown)
        #expect(!blocks.isEmpty)
        for block in blocks {
            let lines = Self.normalized(block)
            let found = files.contains { Self.contains($0, lines) }
            #expect(found, "\(document): this snippet is not code of Examples/:\n\(block)")
        }
    }
}

/// `make test` builds Examples/ first and sets OCAPN_UDS_EXAMPLES=required, so there a missing
/// build fails; a plain `swift test` skips this suite and says why.
enum ExamplesBuild {
    static var products: URL { TestProcesses.packageRoot.appendingPathComponent("Examples/.build/debug") }
    static var built: Bool {
        ["Client", "EchoPeer", "KeepServer"].allSatisfy { FileManager.default.isExecutableFile(atPath: products.appendingPathComponent($0).path) }
    }
    static var required: Bool { ProcessInfo.processInfo.environment["OCAPN_UDS_EXAMPLES"] == "required" }
}

@Suite(.enabled(if: ExamplesBuild.built || ExamplesBuild.required,
                "Examples/ is not built: run `make test` (or `swift build --package-path Examples`)"), .ownThread)
struct ExamplesTests {
    static var products: URL { ExamplesBuild.products }
    static var built: Bool { ExamplesBuild.built }

    @Test func theClientExampleTalksToTheEchoPeerExampleThroughTheRealIntroServer() throws {
        try #require(Self.built, "Examples/ must be built by make test")
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let (keyA, idA) = try PeerCLITests.keygen(dir, "a.key")
        let (keyB, idB) = try PeerCLITests.keygen(dir, "b.key")
        let (keyS, _) = try PeerCLITests.keygen(dir, "s.key")
        let socket = dir.file("s.sock")
        let (server, serverID) = try PeerCLITests.startIntroServer(keyS, socket: socket)
        defer { server.stop() }

        let audit = dir.file("echo.audit.jsonl")
        let echo = try ChildProcess([keyB, socket, serverID.designator, audit],
                                    executable: Self.products.appendingPathComponent("EchoPeer").path)
        defer { echo.stop() }
        // Its stdout is a pipe (block-buffered): its audit log says when it registered.
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline, !((try? String(contentsOfFile: audit, encoding: .utf8)) ?? "").contains("registration.accepted") {
            usleep(50_000)
        }
        let uri = PeerLocator(identity: idB, introductionServers: [serverID]).uri

        let client = try ChildProcess([keyA, socket, serverID.designator, uri],
                                      executable: Self.products.appendingPathComponent("Client").path)
        let status = client.waitForExit(timeout: 30)
        #expect(status == 0, "\(client.errorOutput)")
        #expect(client.output == [PeerLocator(identity: idA, introductionServers: [serverID]).uri, "hello"],
                "the client prints its own locator, then the echoed message")

        // The echo peer ends when its server goes away, having sealed its audit log.
        #expect(server.stop() == 0)
        #expect(echo.waitForExit(timeout: 20) == 0, "\(echo.errorOutput)")
        #expect(echo.output.first == uri, "the echo peer printed its own locator")
        #expect(echo.output.contains { $0.hasPrefix(idA.fingerprint + " ") }, "it saw the client's verified key: \(echo.output)")
        #expect(echo.output.last == "server gone: serverDisconnected", "\(echo.output)")
        let verify = try runOCapNUDS(["audit", "--verify", audit])
        #expect(verify.status == 0, "\(verify.stdout) \(verify.stderr)")
    }
}
