import Audit
import Foundation
import OCapN
import Runtime
import SecureChannel
import Testing

/// The audit reasons come from typed codes; docs/AUDIT.md is held to exactly those codes.
@Suite struct AuditReasonTests {
    /// The backticked codes of docs/AUDIT.md "Reason codes" (lowerCamelCase words; type names and
    /// dotted or flagged names are not codes), from its list of documented codes to the next section.
    static func documentedCodes() throws -> Set<String> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let document = String(decoding: try Data(contentsOf: root.appendingPathComponent("docs/AUDIT.md")), as: UTF8.self)
        let section = try #require(document.range(of: "## Reason codes")).upperBound
        let list = try #require(document.range(of: "Documented codes", range: section..<document.endIndex)).upperBound
        let end = document.range(of: "\n## ", range: list..<document.endIndex)?.lowerBound ?? document.endIndex
        var codes = Set<String>()
        for (index, part) in document[list..<end].split(separator: "`", omittingEmptySubsequences: false).enumerated()
        where index % 2 == 1 && part.first?.isLowercase == true && part.allSatisfy({ $0.isLetter || $0.isNumber }) {
            codes.insert(String(part))
        }
        return codes
    }

    @Test("Every audit reason the runtime can write is documented in docs/AUDIT.md, and the document lists no other")
    func everyReasonIsDocumented() throws {
        let documented = try Self.documentedCodes()
        let written = Set(AuditReason.runtimeCodes.map(\.rawValue))
        for code in written.sorted() {
            #expect(documented.contains(code), "\(code) can reach the audit log but is not in docs/AUDIT.md")
        }
        for code in documented.subtracting(written).sorted() {
            Issue.record("docs/AUDIT.md documents \(code), which no typed code writes")
        }
        #expect(!documented.contains("frameTooLarge"))
    }

    @Test("The runtime's reason list is the union of the typed codes, sorted, without repeats")
    func reasonsAreTheTypedCodes() {
        let codes = AuditReason.runtimeCodes
        #expect(codes == codes.sorted())
        #expect(Set(codes).count == codes.count)
        for code in HandshakeError.Code.allCases { #expect(codes.contains(.handshake(code))) }
        for code in PeerError.Code.Netlayer.allCases { #expect(codes.contains(.netlayer(code))) }
        for code in RuntimeAuditCode.allCases { #expect(codes.contains(.runtime(code))) }
        for reason in IntroductionServerReason.allCases {
            let code = AuditReason(introductionServer: reason)
            #expect(code.rawValue == reason.rawValue)
            #expect(codes.contains(code))
        }
        #expect(codes.contains(.netlayer(.serverUnreachable)))
        #expect(PeerError(.serverUnreachable, "x").auditReason == .netlayer(.serverUnreachable))
        #expect(PeerError(.nonceExhausted, "x").auditReason == .handshake(.nonceExhausted))
    }

    @Test("A peer error contains its handshake code: every handshake code maps, keeping code and detail")
    func peerErrorsContainHandshakeCodes() {
        for code in HandshakeError.Code.allCases {
            let error = PeerError(HandshakeError(code, "detail \(code)"))
            #expect(error.code == .handshake(code))
            #expect(error.detail == "detail \(code)")
            #expect(error.description == HandshakeError(code, "detail \(code)").description)
            #expect(PeerError.Code(rawValue: code.rawValue) == .handshake(code))
        }
        for code in PeerError.Code.Netlayer.allCases {
            #expect(PeerError.Code(rawValue: code.rawValue) == .netlayer(code))
        }
        // One spelling per code: no netlayer code shadows a handshake code.
        let spellings = PeerError.Code.allCases.map(\.rawValue)
        #expect(Set(spellings).count == spellings.count)
        #expect(PeerError.Code(rawValue: "noSuchCode") == nil)
    }

    @Test("Errors compare by code and detail, whatever their module")
    func equalityIsCodeAndDetail() {
        #expect(HandshakeError(.decryptFailed, "x") == HandshakeError(.decryptFailed, "x"))
        #expect(HandshakeError(.decryptFailed, "x") != HandshakeError(.decryptFailed, "y"))
        #expect(HandshakeError(.decryptFailed, "x") != HandshakeError(.badSignature, "x"))
        #expect(PeerError(.ioError, "x") == PeerError(.ioError, "x"))
        #expect(PeerError(.ioError, "x") != PeerError(.ioError, "y"))
        #expect(OCapNError(.truncated, "x") != OCapNError(.truncated, "y"))
        #expect(PeerError(.truncated, "x").description == "truncated: x")
    }
}
