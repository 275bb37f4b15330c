// libFuzzer entry point: reads with fake descriptors into ControlStreamReader and UDSMessage (ControlFuzzOracle).
// Built with `--sanitize fuzzer` (docs/FUZZING.md); any oracle violation traps so libFuzzer
// keeps the input.

import TestSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    let problems = ControlFuzzOracle.violations(input)
    precondition(problems.isEmpty, "FuzzControlMessages oracle: " + problems.joined(separator: "; "))
    return 0
}
