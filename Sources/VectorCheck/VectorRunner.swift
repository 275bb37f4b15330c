import Foundation
import Identity
import Syrup

/// Outcome of one known-answer case.
public struct VectorCaseResult: Sendable, Equatable {
    public enum Outcome: String, Sendable { case passed, failed, skipped }
    public let name: String
    public let outcome: Outcome
    /// Why it failed or was skipped; nil when it passed.
    public let detail: String?

    public static func passed(_ name: String) -> VectorCaseResult { .init(name: name, outcome: .passed, detail: nil) }
    public static func failed(_ name: String, _ why: String) -> VectorCaseResult { .init(name: name, outcome: .failed, detail: why) }
    public static func skipped(_ name: String, _ why: String) -> VectorCaseResult { .init(name: name, outcome: .skipped, detail: why) }

    /// Passes when `actual == expected`, otherwise fails naming both.
    public static func expect<T: Equatable>(_ name: String, _ actual: T, _ expected: T, _ what: String) -> VectorCaseResult {
        actual == expected ? .passed(name) : .failed(name, "\(what): got \(actual), expected \(expected)")
    }
}

/// The report for one file.
public struct VectorFileReport: Sendable {
    public let path: String
    /// The recognised format, or nil when the file was not recognised.
    public let format: String?
    public let cases: [VectorCaseResult]
    /// A whole-file problem: unreadable, not JSON, unknown format.
    public let fileError: String?

    public var passed: Int { cases.filter { $0.outcome == .passed }.count }
    public var failed: Int { cases.filter { $0.outcome == .failed }.count + (fileError == nil ? 0 : 1) }
    public var skipped: Int { cases.filter { $0.outcome == .skipped }.count }
}

/// A family of vector files: recognises its files and checks every case in them.
public protocol VectorKind: SendableMetatype {
    /// Short stable name printed in reports (e.g. "syrup", "wycheproof-eddsa").
    static var name: String { get }
    /// Whether a parsed JSON document belongs to this kind.
    static func recognizes(_ document: [String: Any]) -> Bool
    /// Runs every case of the document.
    static func check(_ document: [String: Any]) -> [VectorCaseResult]
}

/// A kind of our own files, recognised by their `format` field (`ocapn-uds/<kind>/v1`).
public protocol FormatVectorKind: VectorKind {
    static var format: String { get }
}

extension FormatVectorKind {
    public static func recognizes(_ document: [String: Any]) -> Bool {
        document["format"] as? String == format
    }
}

/// A kind of Wycheproof files, recognised by their `schema` field; cases sit in `testGroups`.
public protocol WycheproofVectorKind: VectorKind {
    static var schema: String { get }
}

extension WycheproofVectorKind {
    public static func recognizes(_ document: [String: Any]) -> Bool {
        document["schema"] as? String == schema
    }

    /// Runs `check` on every test of every group, named by `tcId`; a thrown error is that test's
    /// failure as bad vector data. `prepare` reads what a group shares (nil: the group is reported
    /// as failed, its tests not run).
    static func eachTest<Group>(
        of document: [String: Any],
        group prepare: (_ index: Int, _ group: [String: Any]) throws -> Group,
        _ check: (_ name: String, _ group: Group, _ test: [String: Any]) throws -> VectorCaseResult
    ) -> [VectorCaseResult] {
        guard let groups = try? document.objects("testGroups") else { return [.failed("testGroups", "missing")] }
        var results: [VectorCaseResult] = []
        for (g, group) in groups.enumerated() {
            let shared: Group
            do { shared = try prepare(g, group) } catch {
                results.append(.failed("group \(g)", "bad vector data: \(error)"))
                continue
            }
            for test in (group["tests"] as? [[String: Any]]) ?? [] {
                let name = "tcId \(test["tcId"] ?? "?")"
                do { results.append(try check(name, shared, test)) } catch {
                    results.append(.failed(name, "bad vector data: \(error)"))
                }
            }
        }
        return results
    }
}

/// Malformed vector data (a field missing or of the wrong type).
public struct VectorDataError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Runs vector files: our own `ocapn-uds/<kind>/v1` JSON, Wycheproof, Noise, and raw Syrup `.bin`.
public enum VectorRunner {
    /// Every JSON kind known to this build, in the order they are tried.
    public static let kinds: [any VectorKind.Type] = [
        IdentityVectors.self,
        WycheproofEdDSAVectors.self,
        WycheproofXDHVectors.self,
        SyrupVectors.self,
        OCapNVectors.self,
        RegistrationV2Vectors.self,
        HandshakeVectors.self,
        NoiseVectors.self,
        AuditSealingVectors.self,
    ]

    /// File names that are documentation, never vectors.
    static func isIgnored(_ name: String) -> Bool {
        let lower = name.lowercased()
        return lower.hasSuffix(".md") || lower.hasPrefix("license") || lower.hasPrefix(".")
    }

    /// Runs every vector file under `directory` (recursively, sorted by path).
    public static func run(directory: String) -> [VectorFileReport] {
        let fm = FileManager.default
        guard let walker = fm.enumerator(atPath: directory) else {
            return [VectorFileReport(path: directory, format: nil, cases: [], fileError: "cannot read directory")]
        }
        var files: [String] = []
        while let rel = walker.nextObject() as? String {
            let full = (directory as NSString).appendingPathComponent(rel)
            var isDir: ObjCBool = false
            if fm.fileExists(atPath: full, isDirectory: &isDir), !isDir.boolValue,
               !isIgnored((rel as NSString).lastPathComponent) {
                files.append(full)
            }
        }
        return files.sorted().map(run(file:))
    }

    /// Runs one file.
    public static func run(file path: String) -> VectorFileReport {
        guard let data = FileManager.default.contents(atPath: path) else {
            return VectorFileReport(path: path, format: nil, cases: [], fileError: "cannot read file")
        }
        if path.hasSuffix(".bin") {
            return VectorFileReport(path: path, format: SyrupBinaryVectors.name, cases: SyrupBinaryVectors.check(bytes: [UInt8](data)), fileError: nil)
        }
        guard let json = try? JSONSerialization.jsonObject(with: data), let document = json as? [String: Any] else {
            return VectorFileReport(path: path, format: nil, cases: [], fileError: "not a JSON object")
        }
        for kind in kinds where kind.recognizes(document) {
            let cases = kind.check(document)
            let err = cases.isEmpty ? "no cases in file" : nil
            return VectorFileReport(path: path, format: kind.name, cases: cases, fileError: err)
        }
        let declared = (document["format"] as? String).map { " (format \"\($0)\")" } ?? ""
        return VectorFileReport(path: path, format: nil, cases: [], fileError: "unknown vector file format\(declared)")
    }
}

/// Raw Syrup files (`*.bin`, like ocapn/syrup's zoo.bin): one canonical value, decoded and
/// re-encoded to the identical bytes.
public enum SyrupBinaryVectors {
    public static let name = "syrup-binary"

    public static func check(bytes: [UInt8]) -> [VectorCaseResult] {
        switch Result(catching: { () throws(SyrupError) in try SyrupDecoder().decode(bytes) }) {
        case .failure(let e):
            return [.failed("round-trip", "decode: \(e.code.rawValue) at byte \(e.offset) of \(bytes.count)")]
        case .success(let value):
            let encoded = SyrupEncoder.encode(value)
            guard encoded != bytes else { return [.passed("round-trip")] }
            let common = min(encoded.count, bytes.count)
            let firstDifference = (0..<common).first { encoded[$0] != bytes[$0] } ?? common
            return [.failed("round-trip", "re-encoding differs at byte \(firstDifference) (\(encoded.count) vs \(bytes.count) bytes)")]
        }
    }
}

// MARK: - JSON helpers shared by the kinds

extension VectorRunner {
    /// Runs `check` on every object of the document's `cases` array, naming each case by its
    /// `name` field (or its index), and turns a thrown error into that case's failure.
    public static func eachCase(
        of document: [String: Any], _ check: (_ name: String, _ fields: [String: Any]) throws -> VectorCaseResult
    ) -> [VectorCaseResult] {
        guard let cases = try? document.objects("cases") else {
            return [.failed("cases", "missing array field \"cases\"")]
        }
        return cases.enumerated().map { index, c in
            let name = (c["name"] as? String) ?? "case \(index)"
            do {
                return try check(name, c)
            } catch let error as VectorDataError {
                return .failed(name, "bad vector data: \(error)")
            } catch {
                return .failed(name, "unexpected error: \(error)")
            }
        }
    }
}

extension Dictionary where Key == String, Value == Any {
    /// A required string field.
    public func string(_ key: String) throws -> String {
        guard let v = self[key] as? String else { throw VectorDataError("missing string field \"\(key)\"") }
        return v
    }

    /// A required hex field, decoded.
    public func hex(_ key: String) throws -> [UInt8] {
        let s = try string(key)
        guard let b = Hex.decode(s, allowUppercase: true) else { throw VectorDataError("field \"\(key)\" is not hex") }
        return b
    }

    /// A required array of objects.
    public func objects(_ key: String) throws -> [[String: Any]] {
        guard let v = self[key] as? [[String: Any]] else { throw VectorDataError("missing array field \"\(key)\"") }
        return v
    }
}
