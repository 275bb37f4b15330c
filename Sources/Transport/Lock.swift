#if canImport(Glibc)
import Glibc
#endif

/// A plain mutex for a class whose own fields it guards. `Mutex` wants the guarded state
/// inside it and `sending` results, which the handlers and effects a connection hands out of
/// its critical sections are not.
final class Lock: @unchecked Sendable {
    // @unchecked: the pthread mutex is the synchronisation itself; it never moves.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        precondition(pthread_mutex_init(mutex, nil) == 0, "pthread_mutex_init failed")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` holding the lock (not reentrant: `body` must not take it again).
    @inline(__always)
    func withLock<Result, Failure: Error>(_ body: () throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }
}
