import Foundation
import Glibc
import Testing
import Transport

extension TransportTests {
    @Suite struct TerminationSignalsTests {
        /// A SIGINT already pending when the handlers are set up (a process started with it
        /// blocked, as a child of a libdispatch worker is) still stops the process: setting
        /// SIG_IGN would discard it. In a child process of its own, which only raises the
        /// signal at its own thread.
        @Test func aSignalPendingBeforeTheHandlersExistIsNotLost() async {
            await #expect(processExitsWith: .success) {
                var set = sigset_t()
                sigemptyset(&set)
                sigaddset(&set, SIGINT)
                pthread_sigmask(SIG_BLOCK, &set, nil)
                pthread_kill(pthread_self(), SIGINT)
                let signals = TerminationSignals()
                let deadline = Date().addingTimeInterval(5)
                while !signals.received.fired && Date() < deadline { usleep(10_000) }
                if !signals.received.fired { exit(1) }
            }
        }
    }
}
