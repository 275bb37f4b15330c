// The I/O-engine prototype of docs/DESIGN.md: 64-byte round trips to an echo thread with
// four client-side wake-up paths. Build and run (not part of the package):
//   cd scripts/io-prototype && swiftc -O -import-objc-header shim.h main.swift -o /tmp/io-proto && /tmp/io-proto

import Glibc
import Dispatch
import Foundation

func now() -> UInt64 { var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts); return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec) }
let N = 20000, size = 64

func pair() -> (Int32, Int32) { var fds: [Int32] = [0, 0]; socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds); return (fds[0], fds[1]) }
func startEcho(_ fd: Int32, rounds: Int) {
    let t = Thread {
        var buf = [UInt8](repeating: 0, count: size)
        for _ in 0..<rounds {
            var got = 0
            while got < size { let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, size - got) }; if n <= 0 { return }; got += n }
            _ = buf.withUnsafeBytes { write(fd, $0.baseAddress, size) }
        }
    }
    t.start()
}
func median(_ v: [UInt64]) -> Double { let s = v.sorted(); return Double(s[s.count / 2]) / 1000 }

// 1. blocking thread
func blocking() -> Double {
    let (a, b) = pair(); startEcho(b, rounds: N)
    var buf = [UInt8](repeating: 1, count: size); var samples: [UInt64] = []
    for _ in 0..<N {
        let t0 = now()
        _ = buf.withUnsafeBytes { write(a, $0.baseAddress, size) }
        var got = 0
        while got < size { got += buf.withUnsafeMutableBytes { read(a, $0.baseAddress! + got, size - got) } }
        samples.append(now() - t0)
    }
    close(a); return median(samples)
}

final class Box: @unchecked Sendable { var c: CheckedContinuation<Void, Never>?; var pending = 0; let lock = NSLock() }

// 2. dispatch read source + continuation
func dispatchVariant() async -> Double {
    let (a, b) = pair(); startEcho(b, rounds: N)
    let flags = fcntl(a, F_GETFL); _ = fcntl(a, F_SETFL, flags | O_NONBLOCK)
    let q = DispatchQueue(label: "x")
    let box = Box()
    let src = DispatchSource.makeReadSource(fileDescriptor: a, queue: q)
    var rbuf = [UInt8](repeating: 0, count: 4096)
    src.setEventHandler {
        let n = rbuf.withUnsafeMutableBytes { read(a, $0.baseAddress, 4096) }
        if n > 0 { box.pending += n; if box.pending >= size, let c = box.c { box.pending -= size; box.c = nil; c.resume() } }
    }
    src.activate()
    var samples: [UInt64] = []
    let msg = [UInt8](repeating: 1, count: size)
    for _ in 0..<N {
        let t0 = now()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            q.sync {
                _ = msg.withUnsafeBytes { write(a, $0.baseAddress, size) }
                if box.pending >= size { box.pending -= size; c.resume() } else { box.c = c }
            }
        }
        samples.append(now() - t0)
    }
    src.cancel(); return median(samples)
}

// 3. epoll thread + continuation
func epollVariant(direct: Bool) async -> Double {
    let (a, b) = pair(); startEcho(b, rounds: N)
    let flags = fcntl(a, F_GETFL); _ = fcntl(a, F_SETFL, flags | O_NONBLOCK)
    let ep = epoll_create1(Int32(EPOLL_CLOEXEC))
    var ev = epoll_event(); ev.events = EPOLLIN.rawValue; ev.data.fd = a
    epoll_ctl(ep, EPOLL_CTL_ADD, a, &ev)
    let box = Box()
    var samples: [UInt64] = []
    let msg = [UInt8](repeating: 1, count: size)
    if direct {
        // The application's handler runs on the loop thread: read, then the next ping at once.
        var t0 = now()
        _ = msg.withUnsafeBytes { write(a, $0.baseAddress, size) }
        var rbuf = [UInt8](repeating: 0, count: 4096); var pending = 0
        var events = [epoll_event](repeating: epoll_event(), count: 8)
        while samples.count < N {
            let n = epoll_wait(ep, &events, 8, -1)
            if n <= 0 { continue }
            let r = rbuf.withUnsafeMutableBytes { read(a, $0.baseAddress, 4096) }
            if r > 0 { pending += r }
            while pending >= size { pending -= size; samples.append(now() - t0); t0 = now(); _ = msg.withUnsafeBytes { write(a, $0.baseAddress, size) } }
        }
        close(ep); return median(samples)
    }
    let loop = Thread {
        var rbuf = [UInt8](repeating: 0, count: 4096)
        var events = [epoll_event](repeating: epoll_event(), count: 8)
        while true {
            let n = epoll_wait(ep, &events, 8, 1000)
            if n <= 0 { if box.pending < 0 { return }; continue }
            let r = rbuf.withUnsafeMutableBytes { read(a, $0.baseAddress, 4096) }
            if r <= 0 { continue }
            box.lock.lock(); box.pending += r
            var c: CheckedContinuation<Void, Never>? = nil
            if box.pending >= size, let w = box.c { box.pending -= size; box.c = nil; c = w }
            box.lock.unlock(); c?.resume()
        }
    }
    loop.start()
    for _ in 0..<N {
        let t0 = now()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            box.lock.lock()
            _ = msg.withUnsafeBytes { write(a, $0.baseAddress, size) }
            if box.pending >= size { box.pending -= size; box.lock.unlock(); c.resume() } else { box.c = c; box.lock.unlock() }
        }
        samples.append(now() - t0)
    }
    box.pending = -1_000_000
    return median(samples)
}

print("blocking threads p50 µs:", blocking())
print("dispatch source + continuation p50 µs:", await dispatchVariant())
print("epoll thread + continuation p50 µs:", await epollVariant(direct: false))
print("epoll thread, handler on loop p50 µs:", await epollVariant(direct: true))
print("blocking threads p50 µs:", blocking())
