// libFuzzer entry point: the introduction server core driven with whole control streams and
// descriptors across several connections (ServerCoreFuzzOracle). Built with `--sanitize fuzzer`
// (docs/FUZZING.md); any oracle violation traps so libFuzzer keeps the input.

import TestSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    let problems = ServerCoreFuzzOracle.violations(input)
    precondition(problems.isEmpty, "FuzzServerCore oracle: " + problems.joined(separator: "; "))
    return 0
}
