@testable import SecureChannel

/// Two channel machines joined by an in-memory stream: what one writes, the other reads, in
/// order; a write-side shutdown or a close becomes the other side's end of stream once it has
/// read everything before it. `chunk` cuts writes and reads into pieces (the fuzz target varies it).
struct MachinePair {
    enum Side: Int { case a = 0, b = 1 }

    var machines: [ChannelMachine]
    var delivered: [[[UInt8]]] = [[], []]
    var facts: [[String]] = [[], []]
    var ends: [ChannelEnd?] = [nil, nil]
    /// `.fact(.ended)` count per side (must end at exactly 1).
    var endReports = [0, 0]
    var established: [EstablishedSession?] = [nil, nil]
    /// `.closeDescriptor` count per side (must end at exactly 1, last).
    var descriptorCloses = [0, 0]
    var actionsAfterClose = [0, 0]
    var writeShutDown = [false, false]
    var inbox: [[UInt8]] = [[], []]
    var endOfStreamSent = [false, false]
    var chunk: Int = .max

    /// Initiator `a` (alice) to responder `b` (bob).
    init(
        configuration: ChannelMachine.Configuration = ChannelMachine.Configuration(now: { Fixture.now }),
        handshake: HandshakeConfiguration = HandshakeConfiguration()
    ) throws {
        let i = try initiator(configuration: handshake)
        let r = responder(configuration: handshake)
        machines = [
            ChannelMachine(initiator: i, configuration: configuration),
            ChannelMachine(responder: r, configuration: configuration),
        ]
    }

    func other(_ side: Side) -> Side { side == .a ? .b : .a }

    var isQuiet: Bool {
        (0...1).allSatisfy { i in
            (machines[i].pendingOutputCount == 0 || descriptorCloses[i] > 0) && inbox[1 - i].isEmpty
        }
    }

    /// Feeds one event to one side and carries out its actions.
    mutating func feed(_ side: Side, _ event: ChannelMachine.Event) {
        var actions: [ChannelMachine.Action] = []
        machines[side.rawValue].handle(event, into: &actions)
        perform(side, actions)
    }

    mutating func send(_ side: Side, _ message: [UInt8]) -> ChannelMachine.SendOutcome {
        var actions: [ChannelMachine.Action] = []
        let outcome = machines[side.rawValue].send(message, into: &actions)
        perform(side, actions)
        return outcome
    }

    mutating func perform(_ side: Side, _ actions: [ChannelMachine.Action]) {
        let i = side.rawValue
        for action in actions {
            if descriptorCloses[i] > 0 { actionsAfterClose[i] += 1 }
            switch action {
            case .write: break  // pump() writes whatever is pending
            case .shutDownWrite: writeShutDown[i] = true
            case .deliver(let m): delivered[i].append(m)
            case .closeDescriptor: descriptorCloses[i] += 1
            case .fact(let fact):
                switch fact {
                case .established(let s): established[i] = s; facts[i].append("established")
                case .legacyAdmitted: facts[i].append("legacyAdmitted")
                case .peerClosed: facts[i].append("peerClosed")
                case .ended(let end, let wasOpen):
                    endReports[i] += 1
                    ends[i] = end
                    facts[i].append(wasOpen ? "ended" : "handshakeEnded")
                }
            }
        }
    }

    /// Writes at most `chunk` pending bytes of `side` into the other side's inbox.
    mutating func writeSome(_ side: Side) -> Bool {
        let i = side.rawValue
        guard descriptorCloses[i] == 0, machines[i].pendingOutputCount > 0 else { return false }
        let n = min(chunk, machines[i].pendingOutputCount)
        let bytes = Array(machines[i].pendingOutput.prefix(n))
        feed(side, .wrote(n))
        if descriptorCloses[1 - i] == 0 { inbox[1 - i] += bytes }
        return true
    }

    /// Delivers at most `chunk` bytes of `side`'s inbox, or its end of stream once the other
    /// side shut down or closed and everything before it was read.
    mutating func readSome(_ side: Side) -> Bool {
        let i = side.rawValue
        guard descriptorCloses[i] == 0 else { inbox[i] = []; return false }
        if !inbox[i].isEmpty {
            let n = min(chunk, inbox[i].count)
            let bytes = Array(inbox[i].prefix(n))
            inbox[i].removeFirst(n)
            feed(side, .bytes(bytes))
            return true
        }
        let o = 1 - i
        if !endOfStreamSent[i], writeShutDown[o] || descriptorCloses[o] > 0,
           machines[o].pendingOutputCount == 0 || descriptorCloses[o] > 0 {
            endOfStreamSent[i] = true
            feed(side, .endOfStream)
            return true
        }
        return false
    }

    /// Moves bytes both ways until nothing changes.
    mutating func pump() {
        var moved = true
        while moved {
            moved = false
            for side in [Side.a, .b] {
                while writeSome(side) { moved = true }
                while readSome(side) { moved = true }
            }
        }
    }

    /// Every side that ended reported it once, and closed its descriptor once, last.
    var endsAreWellFormed: Bool {
        (0...1).allSatisfy { i in
            ends[i] == nil ? (endReports[i] == 0 && descriptorCloses[i] == 0)
                : (endReports[i] == 1 && descriptorCloses[i] == 1 && actionsAfterClose[i] == 0)
        }
    }

    /// The handshake, run to the end.
    static func open(
        configuration: ChannelMachine.Configuration = ChannelMachine.Configuration(now: { Fixture.now })
    ) throws -> MachinePair {
        var pair = try MachinePair(configuration: configuration)
        pair.pump()
        return pair
    }
}

