import Testing
import SodiumCrypto
import Identity

/// Project Wycheproof's Ed25519 and X25519 files through SodiumCrypto's wrappers
/// (`Vectors/external/wycheproof/`, see its README for provenance).
@Suite struct WycheproofTests {
    @Test func everyEd25519VerdictMatchesWycheproof() throws {
        let doc = try Repo.json("Vectors/external/wycheproof/ed25519_test.json")
        #expect(doc["schema"] as? String == "eddsa_verify_schema_v1.json")
        var total = 0, accepted = 0, refused = 0, wrongLength = 0
        for group in doc["testGroups"] as! [[String: Any]] {
            let publicKey = try unhex((group["publicKey"] as! [String: Any])["pk"] as! String)
            for test in group["tests"] as! [[String: Any]] {
                total += 1
                let signature = try unhex(test["sig"] as! String)
                let ok = Ed25519.verify(signature: signature, message: try unhex(test["msg"] as! String), publicKey: publicKey)
                switch test["result"] as! String {
                case "valid":
                    #expect(ok, "tcId \(test["tcId"]!) must verify")
                    if ok { accepted += 1 }
                case "invalid":
                    #expect(!ok, "tcId \(test["tcId"]!) must be refused")
                    if !ok { refused += 1 }
                    if signature.count != Ed25519.signatureLength { wrongLength += 1 }
                default:
                    Issue.record("unexpected result \(test["result"]!) in tcId \(test["tcId"]!)")
                }
            }
        }
        #expect(total == 151 && total == doc["numberOfTests"] as? Int)
        #expect(accepted == 88)
        #expect(refused == 63)
        // Lengths 0, 32, 62, 63, 65, 66, 96: refused by the length guard, never passed to C.
        #expect(wrongLength == 12)
    }

    @Test func everyX25519ResultMatchesOrIsALowOrderRefusal() throws {
        let doc = try Repo.json("Vectors/external/wycheproof/x25519_test.json")
        #expect(doc["schema"] as? String == "xdh_comp_schema_v1.json")
        var total = 0, matched = 0, lowOrder = 0
        for group in doc["testGroups"] as! [[String: Any]] {
            for test in group["tests"] as! [[String: Any]] {
                total += 1
                let id = test["tcId"]!
                let privateKey = try unhex(test["private"] as! String)
                let expected = test["shared"] as! String
                let result = test["result"] as! String
                #expect(privateKey.count == X25519.keyLength, "tcId \(id)")
                do {
                    let shared = try X25519.sharedSecret(secret: SecretBytes(copying: privateKey), publicKey: try unhex(test["public"] as! String))
                    let got = hexString(shared.withUnsafeBytes { Array($0) })
                    #expect(got == expected, "tcId \(id)")
                    #expect(result == "valid" || result == "acceptable", "tcId \(id)")
                    if got == expected { matched += 1 }
                } catch let error as CryptoError {
                    // Refusing is allowed only for `acceptable` cases whose shared secret is zero.
                    #expect(error.code == .lowOrderPoint, "tcId \(id)")
                    #expect(result == "acceptable" && expected == String(repeating: "0", count: 64), "tcId \(id) was refused")
                    lowOrder += 1
                }
            }
        }
        #expect(total == 518 && total == doc["numberOfTests"] as? Int)
        #expect(lowOrder == 31)
        #expect(matched == 518 - 31)
    }
}
