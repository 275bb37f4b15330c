import OCapN
import Syrup

/// Locator URIs and Syrup locators (issue #12 item 7). Shared by `FuzzLocator` (through the TestSupport product) and
/// the regression tests. Oracle: never a crash; an accepted URI re-prints to a URI that parses
/// to the same locator; an accepted Syrup locator re-encodes to exactly its bytes; no accepted
/// hint value holds NUL (catalog D5).
public enum LocatorFuzzOracle {
    public static func violations(_ input: [UInt8]) -> [String] {
        var out: [String] = []
        let text = String(decoding: input, as: UTF8.self)
        if let locator = try? PeerLocator(uri: text) {
            if (try? PeerLocator(uri: locator.uri)) != locator { out.append("URI does not round-trip: \(locator.uri)") }
            check(locator, &out)
        }
        if let value = try? SyrupDecoder(limits: .controlMessage).decode(input),
           let locator = try? PeerLocator(syrup: value) {
            if SyrupEncoder.encode(locator.syrupValue) != input { out.append("Syrup locator re-encodes to other bytes") }
            check(locator, &out)
        }
        return out
    }

    static func check(_ locator: PeerLocator, _ out: inout [String]) {
        for case let .string(s) in (locator.hints ?? [:]).values where s.utf8.contains(0) {
            out.append("a hint value with NUL was accepted")
        }
    }
}
