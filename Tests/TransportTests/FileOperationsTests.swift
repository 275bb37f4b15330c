import Glibc
import Testing
import Transport

extension TransportTests {
    /// The file half of the system-call layer that Audit and Identity use.
    @Suite struct FileOperations {
        @Test func createWriteReadAndStatusRoundTrip() throws {
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let path = dir.path + "/a"
            let fd = try FileDescriptor.open(path, .readWrite, options: [.create, .exclusive], permissions: 0o600)
            defer { fd.close() }
            try fd.writeAll(Array("hello world".utf8))
            #expect(try fd.read(count: 5, at: 6) == Array("world".utf8))
            #expect(try fd.read(count: 100, at: 6) == Array("world".utf8), "a read past the end returns what there is")
            try fd.setPermissions(0o640)
            let status = try fd.status()
            #expect(status.kind == .regular)
            #expect(status.permissions == 0o640)
            #expect(status.size == 11)
            #expect(status.owner == ProcessIdentity.effectiveUserID)
            let byPath = try #require(try FileSystem.status(ofPath: path))
            #expect(byPath.inode == status.inode && byPath.device == status.device)
            try fd.truncate(to: 5)
            try fd.synchronize(dataOnly: true)
            #expect(try fd.status().size == 5)
            let reader = try FileDescriptor.open(path, .readOnly)
            defer { reader.close() }
            var buffer = [UInt8](repeating: 0, count: 8)
            #expect(try reader.read(into: &buffer, at: 2) == 5)
            #expect(Array(buffer[2..<7]) == Array("hello".utf8))
            #expect(try reader.read(into: &buffer, at: 0) == 0, "end of file")
        }

        @Test func errorsAreTypedWithTheirErrno() throws {
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let missing = dir.path + "/missing"
            #expect(throws: TransportError.self) { try FileDescriptor.open(missing, .readOnly) }
            do {
                _ = try FileDescriptor.open(missing, .readOnly)
            } catch {
                #expect(error.code == .noSuchPath && error.isNoSuchEntry && error.syscall == "open")
                #expect(error.errnoDescription == "No such file or directory")
            }
            #expect(try FileSystem.status(ofPath: missing) == nil)
            let existing = try FileDescriptor.open(dir.path + "/x", .writeOnly, options: [.create, .exclusive])
            existing.close()
            do {
                _ = try FileDescriptor.open(dir.path + "/x", .writeOnly, options: [.create, .exclusive])
                Issue.record("O_EXCL opened an existing file")
            } catch {
                #expect(error.isAlreadyExists)
            }
            try FileSystem.removeIfPresent(missing)  // absent: no error
        }

        @Test func linkRefusesToReplaceAndRenameReplaces() throws {
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            for name in ["a", "b"] {
                let fd = try FileDescriptor.open(dir.path + "/" + name, .writeOnly, options: .create)
                try fd.writeAll(Array(name.utf8))
                try fd.closeReportingError()
                #expect(!fd.isOpen)
            }
            do {
                try FileSystem.link(dir.path + "/a", to: dir.path + "/b")
                Issue.record("link replaced a file")
            } catch {
                #expect(error.isAlreadyExists)
            }
            try FileSystem.rename(dir.path + "/a", to: dir.path + "/b")
            #expect(!FileSystem.exists(dir.path + "/a"))
            let b = try FileDescriptor.open(dir.path + "/b", .readOnly)
            defer { b.close() }
            #expect(try b.read(count: 10, at: 0) == Array("a".utf8))
            try FileSystem.synchronizeDirectory(dir.path)
            #expect(FileSystem.directory(of: dir.path + "/b") == dir.path)
            #expect(FileSystem.directory(of: "b") == ".")
            #expect(FileSystem.directory(of: "/b") == "/")
            let made = try FileSystem.makeTemporaryDirectory(prefix: dir.path + "/t-")
            #expect(made.hasPrefix(dir.path + "/t-") && made.count == dir.path.count + 9)
            let status = try #require(try FileSystem.status(ofPath: made))
            #expect(status.kind == .directory && status.permissions == 0o700)
        }

        @Test func exclusiveLockIsRefusedToASecondOpenFileAndDuplicatesShareIt() throws {
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let path = dir.path + "/lock"
            let first = try FileDescriptor.open(path, .readWrite, options: .create)
            defer { first.close() }
            let second = try FileDescriptor.open(path, .readWrite)
            defer { second.close() }
            #expect(try first.tryLockExclusive())
            #expect(try !second.tryLockExclusive(), "another open file holds the lock")
            let copy = try first.duplicate()
            #expect(try copy.tryLockExclusive(), "a duplicate shares the open file and its lock")
            #expect(try copy.isCloseOnExec())
            copy.close()
            first.close()
            #expect(try second.tryLockExclusive(), "closing every descriptor of the holder releases it")
        }

        @Test func clocksMove() {
            let wall = SystemClock.realtimeMicroseconds()
            #expect(wall > 1_700_000_000_000_000, "after 2023")
            let a = SystemClock.monotonicNanoseconds()
            let b = SystemClock.monotonicNanoseconds()
            #expect(b >= a)
        }
    }
}

extension TransportTests {
    @Suite struct Signals {
        @Test func oneShotResumesEveryWaiterOnceAndLateWaitersAtOnce() async {
            let event = OneShot()
            #expect(!event.fired)
            async let first: Void = event.wait()
            async let second: Void = event.wait()
            event.fire()
            event.fire()
            _ = await (first, second)
            #expect(event.fired)
            await event.wait()  // already fired: returns at once
        }

        // TerminationSignals themselves are exercised by the CLI tests that stop intro-server,
        // peer and demo processes with SIGTERM/SIGINT (a test process's other threads would
        // swallow a signal raised here).
    }
}
