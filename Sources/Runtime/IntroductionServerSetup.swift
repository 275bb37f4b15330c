import Errors
import Transport

/// The codes of `IntroductionServerError`: why the introduction server cannot start.
public enum IntroductionServerErrorCode: String, ErrorCode {
    /// RLIMIT_NOFILE cannot hold the configured caps (catalog §4 budget rule).
    case descriptorBudget
    /// `LISTEN_FDS` announces something other than one listening unix stream socket.
    case socketActivation
    /// Binding the socket path failed: a live server answers, another instance holds the
    /// lock, something else is at the path, or a system call failed.
    case bind
    /// The configuration breaks a documented range.
    case invalidConfiguration
}

/// Why the introduction server cannot start: the Runtime's error shape (`CodedError`) with the
/// server's start-up codes. For `.bind`, `detail` is the operator's line — the path, the
/// transport code, the errno in words and what to do — so the CLI prints it as it is.
public typealias IntroductionServerError = CodedError<IntroductionServerErrorCode>

/// Start-up steps that touch the process: the descriptor budget and the listening socket.
public enum IntroductionServerSetup {
    /// Raises the soft RLIMIT_NOFILE as far as the configuration needs (never beyond the hard
    /// limit) and throws `.descriptorBudget` when the caps still do not fit. Returns the soft
    /// limit in force.
    @discardableResult
    public static func prepareDescriptorBudget(
        _ configuration: IntroductionServer.Configuration
    ) throws(IntroductionServerError) -> UInt64 {
        let needed = configuration.requiredDescriptors
        let soft: UInt64
        do throws(TransportError) {
            soft = try OpenFileLimit.raiseSoftLimit(toAtMost: needed)
        } catch {
            throw IntroductionServerError(.descriptorBudget, "cannot read or raise RLIMIT_NOFILE: \(error)")
        }
        if let problem = budgetProblem(configuration, softLimit: soft, hardLimit: try? OpenFileLimit.current().hard) {
            throw IntroductionServerError(.descriptorBudget, problem)
        }
        return soft
    }

    /// Why `softLimit` cannot hold the configuration's caps, or nil when it can (pure).
    public static func budgetProblem(
        _ configuration: IntroductionServer.Configuration, softLimit: UInt64, hardLimit: UInt64?
    ) -> String? {
        let needed = configuration.requiredDescriptors
        guard softLimit < needed else { return nil }
        return "the limits need \(needed) descriptors (max clients + 1 + max pending + reserve "
            + "\(configuration.descriptorReserve)) but RLIMIT_NOFILE allows \(softLimit) (hard limit "
            + "\(hardLimit.map { "\($0)" } ?? "unknown")); lower --max-clients or --max-pending, or raise the hard "
            + "limit (systemd: LimitNOFILE=)"
    }

    /// The listening socket: the one inherited through socket activation (`LISTEN_FDS`, exactly
    /// one, a listening unix stream socket) when present, else `path` bound with `mode` (stale
    /// file replaced, live server never stolen, `PATH.lock` held).
    public static func openSocket(path: String?, mode: UInt32, backlog: Int32 = 128) throws(IntroductionServerError) -> ListeningSocket {
        let inherited: [(descriptor: FileDescriptor, name: String)]
        do throws(TransportError) {
            inherited = try SocketActivation.adoptInherited()
        } catch {
            throw IntroductionServerError(.socketActivation, "\(error)")
        }
        if !inherited.isEmpty {
            guard inherited.count == 1 else {
                for entry in inherited { entry.descriptor.close() }
                throw IntroductionServerError(.socketActivation, "LISTEN_FDS passed \(inherited.count) descriptors; exactly one is supported")
            }
            do throws(TransportError) {
                return try ListeningSocket(inherited: inherited[0].descriptor)
            } catch {
                inherited[0].descriptor.close()
                throw IntroductionServerError(.socketActivation, "the inherited descriptor is unusable: \(error)")
            }
        }
        guard let path else {
            throw IntroductionServerError(.invalidConfiguration, "no --socket path and no socket-activation descriptor")
        }
        // B3: an abstract name has no file permissions and can be squatted by anyone (K15);
        // refused rather than silently bound as a relative file named "@name".
        if path.hasPrefix("@") {
            throw IntroductionServerError(.invalidConfiguration, "\(path): abstract socket names (@name) are not supported "
                + "for the introduction server (any process could bind the name first); use a path in a 0700 directory, "
                + "or ./\(path) for a file of that name")
        }
        do throws(TransportError) {
            return try ListeningSocket.bind(path: path, mode: mode, backlog: backlog)
        } catch {
            throw IntroductionServerError(.bind, listenFailure(error, path: path))
        }
    }

    /// One line for a socket that cannot be opened: the path, the reason in words, what to do.
    static func listenFailure(_ error: TransportError, path: String) -> String {
        let hint: String
        switch error.code {
        case .noSuchPath: hint = " — create the directory or choose another --socket"
        case .permissionDenied: hint = " — check the directory's owner and mode, or choose another --socket"
        case .alreadyRunning: hint = " — another intro-server runs on this path; stop it or choose another --socket"
        case .addressInUse: hint = " — a live server answers there; stop it or choose another --socket"
        case .pathOccupied: hint = " — it is never deleted; choose another --socket"
        case .invalidPath: hint = " — see --socket"
        default: hint = ""
        }
        return "cannot listen at \(path): \(error.code.rawValue): \(error.explanation)\(hint)"
    }
}
