// libFuzzer entry point for KeyFileFuzzOracle (in TestSupport, Tests/TestSupport/). Built with
// `--sanitize fuzzer` (docs/FUZZING.md); any oracle violation traps so libFuzzer keeps the input.

import TestSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    let problems = KeyFileFuzzOracle.violations(input)
    precondition(problems.isEmpty, "FuzzKeyFile oracle: " + problems.joined(separator: "; "))
    return 0
}
