// libFuzzer entry point for AuditVerifierFuzzOracle (the oracle file is a symlink into Tests/). Built with
// `--sanitize fuzzer` (docs/FUZZING.md); any oracle violation traps so libFuzzer keeps the input.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    let problems = AuditVerifierFuzzOracle.violations(input)
    precondition(problems.isEmpty, "FuzzAuditVerifier oracle: " + problems.joined(separator: "; "))
    return 0
}
