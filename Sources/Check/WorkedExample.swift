import Identity

/// The draft's worked example `msg1_uds_register_A` (Vectors/ocapn-examples.json, from
/// ocapn-uds-wire.md): peer A's `uds:register` with the challenge 00 01 … 3f. Public test data:
/// A's seed is in the vector file, so registering it proves nothing; the check only asks the
/// server to answer these exact bytes.
enum WorkedExample {
    static let registerHex =
        "3c3132277564733a72656769737465723c3130276f6361706e2d70656572313827756e69782d646f6d61696e2d736f636b6574"
        + "35322232356e6a71616d637765666c70766b6c37336a34737a61686869686f63347874336b7463676a6e7061696e67723579686b656e61"
        + "663e36343a000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f"
        + "303132333435363738393a3b3c3d3e3f3e"

    static var register: [UInt8] {
        // A constant in this file; a bad digit is our bug.
        guard let bytes = Hex.decode(registerHex) else { preconditionFailure("WorkedExample.registerHex is not hex") }
        return bytes
    }

    static let challenge: [UInt8] = Array(0..<64)
}
