// The invariants of the FuzzChannelMachines fuzz target (docs/FUZZING.md): two ChannelMachines
// joined in memory, driven by interleaved events that the input chooses. Compiled here for the
// regression tests and, through the TestSupport product, into the fuzz package (with ChannelFuzzOracle.swift
// for the fixed identities). Public API of SecureChannel only; no test framework.
import SecureChannel

public enum ChannelMachineFuzzOracle {
    /// One side of the pair, as the runtime would see it.
    struct Side {
        var machine: ChannelMachine
        var sent: [[UInt8]] = []
        var delivered: [[UInt8]] = []
        var inbox: [UInt8] = []
        var endReports = 0
        var descriptorCloses = 0
        var actionsAfterClose = 0
        var shutDown = false
        var endOfStreamFed = false
        var closeRequested = false
        var peerClosedFacts = 0
        var established = 0
        var latestDeadlineFed: ContinuousClock.Instant?
    }

    /// Inputs: a list of operations, each `op = b & 15` with the next byte as its argument.
    /// 0/1 send (A/B, length from the argument), 2/3 close, 4/5 write some (chunk from the
    /// argument), 6/7 read some, 8/9 abort, 10 flip a bit in transit, 11/12 deadline after the
    /// argument's seconds, 13 transport failure, 14 pump everything, 15 spurious end of stream.
    /// After the operations, everything is pumped and both sides close.
    public static func violations(_ input: [UInt8]) -> [String] {
        var problems: [String] = []
        let config = ChannelMachine.Configuration(closeTimeout: .seconds(2), now: { ChannelFuzzFixture.start })
        var sides = [
            Side(machine: ChannelMachine(initiator: ChannelFuzzFixture.makeInitiator(), configuration: config)),
            Side(machine: ChannelMachine(responder: ChannelFuzzFixture.makeResponder(), configuration: config)),
        ]
        var faults = false
        var tampered = false

        func perform(_ i: Int, _ actions: [ChannelMachine.Action]) {
            for action in actions {
                if sides[i].descriptorCloses > 0 { sides[i].actionsAfterClose += 1 }
                switch action {
                case .write: break
                case .shutDownWrite:
                    if sides[i].shutDown { problems.append("side \(i) shut down twice") }
                    sides[i].shutDown = true
                case .deliver(let m): sides[i].delivered.append(m)
                case .closeDescriptor: sides[i].descriptorCloses += 1
                case .fact(let fact):
                    switch fact {
                    case .established: sides[i].established += 1
                    case .legacyAdmitted: problems.append("side \(i) admitted a legacy peer")
                    case .peerClosed: sides[i].peerClosedFacts += 1
                    case .ended: sides[i].endReports += 1
                    }
                }
            }
        }
        func feed(_ i: Int, _ event: ChannelMachine.Event) {
            var actions: [ChannelMachine.Action] = []
            sides[i].machine.handle(event, into: &actions)
            perform(i, actions)
        }
        func send(_ i: Int, _ length: Int) {
            let message = (0..<length).map { UInt8(truncatingIfNeeded: $0 &+ sides[i].sent.count &* 31) }
            var actions: [ChannelMachine.Action] = []
            let canSend = sides[i].machine.canSend
            let outcome = sides[i].machine.send(message, into: &actions)
            perform(i, actions)
            switch outcome {
            case .queued:
                if !canSend { problems.append("side \(i) queued a message while it could not send") }
                sides[i].sent.append(message)
            case .tooLarge(let limit):
                if length <= limit { problems.append("side \(i) refused \(length) bytes under its limit \(limit)") }
            case .notOpen:
                if canSend { problems.append("side \(i) refused a message while it could send") }
            }
        }
        func write(_ i: Int, _ chunk: Int) -> Bool {
            guard sides[i].descriptorCloses == 0, sides[i].machine.pendingOutputCount > 0 else { return false }
            let n = min(chunk, sides[i].machine.pendingOutputCount)
            let bytes = Array(sides[i].machine.pendingOutput.prefix(n))
            feed(i, .wrote(n))
            if sides[1 - i].descriptorCloses == 0 { sides[1 - i].inbox += bytes }
            return true
        }
        func read(_ i: Int, _ chunk: Int) -> Bool {
            guard sides[i].descriptorCloses == 0 else { return false }
            if !sides[i].inbox.isEmpty {
                let n = min(chunk, sides[i].inbox.count)
                let bytes = Array(sides[i].inbox.prefix(n))
                sides[i].inbox.removeFirst(n)
                feed(i, .bytes(bytes))
                return true
            }
            let o = 1 - i
            if !sides[i].endOfStreamFed, sides[o].descriptorCloses > 0 || (sides[o].shutDown && sides[o].machine.pendingOutputCount == 0) {
                sides[i].endOfStreamFed = true
                feed(i, .endOfStream)
                return true
            }
            return false
        }
        func pump() {
            var moved = true
            var rounds = 0
            while moved {
                moved = false
                rounds += 1
                if rounds > 100_000 { problems.append("pump did not settle"); return }
                for i in 0...1 {
                    while write(i, .max) { moved = true }
                    while read(i, .max) { moved = true }
                }
            }
        }

        var k = 0
        while k + 1 < input.count && problems.isEmpty {
            let op = input[k] & 15
            let arg = Int(input[k + 1])
            let side = Int(input[k] >> 4) & 1
            k += 2
            switch op {
            case 0, 1: send(Int(op), arg * 67 + 1)
            case 2, 3:
                if sides[Int(op) - 2].machine.isEstablished && sides[Int(op) - 2].machine.end == nil {
                    sides[Int(op) - 2].closeRequested = true
                    feed(Int(op) - 2, .close(now: ChannelFuzzFixture.start))
                }
            case 4, 5: _ = write(Int(op) - 4, arg + 1)
            case 6, 7: _ = read(Int(op) - 6, arg + 1)
            case 8, 9:
                faults = true
                feed(Int(op) - 8, .abort)
            case 10:
                let i = side
                if !sides[i].inbox.isEmpty {
                    tampered = true
                    sides[i].inbox[arg % sides[i].inbox.count] ^= UInt8(1) << (input[k - 2] >> 5)
                }
            case 11, 12:
                let i = Int(op) - 11
                let when = ChannelFuzzFixture.start + .seconds(arg)
                if let deadline = sides[i].machine.deadline, when >= deadline { faults = true }
                sides[i].latestDeadlineFed = max(sides[i].latestDeadlineFed ?? when, when)
                feed(i, .deadline(when))
            case 13:
                faults = true
                feed(side, .transportFailed("fuzz"))
            case 14: pump()
            default:
                faults = true
                if !sides[side].endOfStreamFed {
                    sides[side].endOfStreamFed = true
                    feed(side, .endOfStream)
                }
            }
        }
        pump()
        for i in 0...1 where sides[i].machine.isEstablished && sides[i].machine.end == nil {
            sides[i].closeRequested = true
            feed(i, .close(now: ChannelFuzzFixture.start))
            pump()
        }
        pump()

        for i in 0...1 {
            let s = sides[i]
            let peer = sides[1 - i]
            // Ends are reported once, followed by exactly one descriptor close, then nothing.
            if let end = s.machine.end {
                if s.endReports != 1 || s.descriptorCloses != 1 { problems.append("side \(i) ended with \(s.endReports) reports, \(s.descriptorCloses) closes") }
                if s.actionsAfterClose != 0 { problems.append("side \(i) acted after closing its descriptor") }
                if s.machine.pendingOutputCount != 0 { problems.append("side \(i) kept output after its end") }
                if end == .clean && (!s.closeRequested || s.peerClosedFacts != 1 || !peer.closeRequested) {
                    problems.append("side \(i) ended clean without both CLOSEs")
                }
                if case .protocolError(let e) = end, e.code == .timeout, s.latestDeadlineFed == nil {
                    problems.append("side \(i) timed out without a deadline event")
                }
            } else if s.endReports != 0 || s.descriptorCloses != 0 {
                problems.append("side \(i) reported an end it does not have")
            }
            if s.established > 1 { problems.append("side \(i) established twice") }
            // What arrived is what the peer sent, in order, never more: AEAD lets nothing forged through.
            if s.delivered.count > peer.sent.count || !zip(s.delivered, peer.sent).allSatisfy({ $0 == $1 }) {
                problems.append("side \(i) delivered messages the peer did not send in that order")
            }
            if s.machine.end == .clean && s.delivered != peer.sent {
                problems.append("side \(i) ended clean without every message")
            }
        }
        // Without faults or tampering, the final closes end both sides cleanly.
        if !faults && !tampered && problems.isEmpty {
            for i in 0...1 where sides[i].machine.end != .clean {
                problems.append("side \(i) ended \(String(describing: sides[i].machine.end)) on a fault-free run")
            }
        }
        return problems
    }
}
