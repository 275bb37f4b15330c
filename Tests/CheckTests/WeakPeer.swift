import Foundation
import Glibc
import Identity
import OCapN
import Runtime
import SecureChannel
import SodiumCrypto
import Syrup
import Transport

/// One weakness of peers found in the wild (wire dossier §6, §7, §9), switched on in `WeakPeer`.
enum PeerWeakness: String, CaseIterable, Sendable, CustomStringConvertible {
    /// Goblins: CapTP in plaintext on the passed socket, no handshake.
    case plaintextCapTP
    /// Goblins: `from` ignored; any initiator key is accepted.
    case ignoresFrom
    /// The same ephemeral key in every handshake.
    case fixedEphemeral
    /// Errors on an established channel stop processing but leave the socket open (wire §9.9).
    case leavesChannelOpenOnError
    /// No deadline on a passed socket that never starts a handshake (wire §7).
    case noHandshakeDeadline
    /// Answers a refused handshake with an error message before closing (an unauthenticated
    /// oracle; PROTOCOL.md §5.4 sends nothing).
    case repliesToRefusedHandshake

    var description: String { rawValue }

    var failingChecks: Set<String> {
        switch self {
        case .plaintextCapTP: return ["W9.speaks-uds-hs1"]
        case .ignoresFrom: return ["W9.from-checked"]
        case .fixedEphemeral: return ["HA.replayed-msg1"]
        case .leavesChannelOpenOnError: return ["P6.forged-frame", "P6.oversized-frame", "P6.truncated-frame", "P6.unauthenticated-close"]
        case .noHandshakeDeadline: return ["F6.handshake-deadline"]
        case .repliesToRefusedHandshake:
            return ["W9.from-checked", "HA.wrong-responder", "HA.reflected-msg1", "HA.low-order-ephemeral"]
        }
    }
}

/// A peer registered at a server that answers introductions with UDS-HS1 and echoes every
/// message, like ours (reference behaviour: every check passes), except for its weakness.
/// One thread per passed socket; `stop()` closes everything.
final class WeakPeer: @unchecked Sendable {
    let weakness: PeerWeakness?
    let key = IdentityKeyPair.generate()
    let handshakeTimeout: Duration
    private let client: BlockingIntroductionClient
    private let lock = NSLock()
    private var stopping = false
    private let threads = DispatchGroup()
    private let keyCache = IdentityKeyCache(capacity: 16)
    private let fixedEphemeral = SecretBytes.random(count: 32)

    var locator: PeerLocator { PeerLocator(identity: key.publicIdentity) }

    init(serverPath: String, _ weakness: PeerWeakness?, handshakeTimeout: Duration = .milliseconds(800)) throws {
        self.weakness = weakness
        self.handshakeTimeout = handshakeTimeout
        client = try BlockingIntroductionClient(path: serverPath, server: nil, key: key)
        try client.register()
        threads.enter()
        Thread { [self] in acceptLoop(); threads.leave() }.start()
    }

    var isStopping: Bool { lock.withLock { stopping } }

    func stop() {
        lock.withLock { stopping = true }
        threads.wait()
        client.close()
    }

    private func acceptLoop() {
        while !isStopping {
            let item: ControlStreamReader<FileDescriptor>.Item
            do { item = try client.next(timeout: 0.05) } catch {
                if (error as? TransportError)?.code == .timedOut { continue }
                return
            }
            guard case let .newConnection(value, fd) = item else { continue }
            guard case let .newConnection(request)? = try? UDSMessage(syrup: value) else {
                fd.close()
                continue
            }
            threads.enter()
            let thread = Thread { [self] in
                serve(fd, from: request.from.identity)
                fd.close()
                threads.leave()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    // MARK: one passed socket

    /// Reads what is available within `timeout`: bytes, [] on timeout, nil on end of stream.
    private func read(_ fd: FileDescriptor, timeout: Int32 = 20) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 70_000)
        let ready = (try? fd.withRawDescriptor { raw -> Int32 in
            var entry = pollfd(fd: raw, events: Int16(POLLIN), revents: 0)
            return poll(&entry, 1, timeout)
        }) ?? -1
        guard ready > 0 else { return ready < 0 ? nil : [] }
        switch try? buffer.withUnsafeMutableBytes({ try fd.receive(into: $0, descriptorCapacity: 0) }) {
        case let .processed(r)?: return r.isEndOfStream ? nil : Array(buffer[..<r.byteCount])
        case .wouldBlock?: return []
        case nil: return nil
        }
    }

    private func write(_ fd: FileDescriptor, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count, !isStopping {
            switch try? fd.send(Array(bytes[offset...])) {
            case let .processed(n)?: offset += n
            case .wouldBlock?: usleep(1000)
            case nil: return
            }
        }
    }

    /// Parks a socket the weak peer no longer reads but does not close.
    private func park() { while !isStopping { usleep(20_000) } }

    private func serve(_ fd: FileDescriptor, from: PublicIdentity) {
        if weakness == .plaintextCapTP {
            // Goblins' CapTP starts at once with op:start-session, in the clear.
            write(fd, SyrupEncoder.encode(.record(label: .symbol("op:start-session"), fields: [.string("0.1"), .bool(false)])))
            while !isStopping, read(fd) != nil {}
            return
        }
        let start = ContinuousClock.now
        var input: [UInt8] = []
        // The header names the initiator; a peer that ignores `from` believes it.
        while weakness == .ignoresFrom && input.count < 40 && !isStopping {
            guard let bytes = read(fd) else { return }
            input += bytes
            if ContinuousClock.now - start > handshakeTimeout { return }
        }
        let announced = weakness == .ignoresFrom ? Array(input[8..<40]) : from.publicKey
        let fixed = fixedEphemeral
        let responder = HandshakeResponder(
            identity: key, announcedInitiatorKey: announced,
            configuration: HandshakeConfiguration(timeout: weakness == .noHandshakeDeadline ? .seconds(3600) : handshakeTimeout),
            keyCache: keyCache,
            ephemeralKeys: weakness == .fixedEphemeral ? EphemeralKeySource { fixed.slice(0..<32) } : .system,
            now: .now)
        var session: EstablishedSession?
        do {
            if !input.isEmpty { session = try step(responder, input, fd) }
            while session == nil && !isStopping {
                try responder.checkDeadline(now: .now)
                guard let bytes = read(fd) else { return }
                if !bytes.isEmpty { session = try step(responder, bytes, fd) }
            }
        } catch let error as HandshakeError {
            if weakness == .repliesToRefusedHandshake, error.code != .timeout {
                write(fd, Array("error: handshake refused (\(error.code.rawValue))\n".utf8))
            }
            return  // a refused handshake closes the socket
        } catch {
            return
        }
        guard let session else { return }
        echo(session, fd)
    }

    private func step(_ responder: HandshakeResponder, _ bytes: [UInt8], _ fd: FileDescriptor) throws -> EstablishedSession? {
        switch try responder.receive(bytes, now: .now) {
        case .needMoreBytes: return nil
        case let .send(out):
            write(fd, out)
            return nil
        case let .established(session, send: out):
            write(fd, out)
            return session
        }
    }

    private func echo(_ session: EstablishedSession, _ fd: FileDescriptor) {
        do {
            while !isStopping {
                guard let bytes = read(fd) else {
                    try session.receiver.receiveEOF()
                    return
                }
                try session.receiver.receive(bytes)
                while let event = try session.receiver.next() {
                    switch event {
                    case let .message(m): write(fd, try session.sender.seal(m))
                    case .closed:
                        write(fd, try session.sender.close())
                        return
                    }
                }
            }
        } catch {
            if weakness == .leavesChannelOpenOnError { park() }
        }
    }
}
