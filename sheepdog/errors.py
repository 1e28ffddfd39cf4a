"""Every exception sheepdog raises on purpose.

    SheepdogError
    ├── ConfigError            a config key or value is wrong; names the fix
    ├── BrokerError            the broker cannot be reached or refused us
    │   ├── EmbeddedBrokerError  the private server could not be started
    │   └── CredentialsMissing   no credentials here for the request's broker
    ├── SerialisationError     a function, argument or result cannot be pickled
    ├── IntegrityError         a payload failed its HMAC check (not from us)
    ├── SubmitError            the scheduler refused the array job
    │   └── RemoteCommandError   a command on the head node failed (exit status, output)
    ├── SSHError               cannot connect, unknown or changed host key, auth failed
    ├── RequestNotFound        no such request id in the dbfile
    ├── RequestFailed          the request cannot finish (cancelled, runner died)
    ├── TransferError          an export file cannot be written or imported
    ├── MissingExtra           an optional part needs a package: names the pip extra
    ├── TaskErrors             map(..., raise_errors=True) and some tasks failed
    ├── TaskFailed             one task failed: a future's exception, imap(raise_errors=True)
    └── ResultsTimeout         get_results(timeout=...) ran out (also a TimeoutError)

Each exception keeps its context as attributes and survives pickling,
because some of them are raised on a node and reported on the laptop.

Every array task imports this module: it imports nothing (not even
dataclasses, which costs a worker more than its whole start is allowed).
"""

from __future__ import annotations

from sheepdog.record import Record


class SheepdogError(Exception):
    """Root of every error sheepdog raises on purpose."""


class ConfigError(SheepdogError, ValueError):
    """A config key or value is wrong."""


class BrokerError(SheepdogError):
    """The broker cannot be reached, or it refused a command."""


class CredentialsMissing(BrokerError):
    """This machine holds no credentials for a request's broker: no wait will help."""


class EmbeddedBrokerError(BrokerError):
    """The embedded (private) Redis-protocol server could not be started."""


class SerialisationError(SheepdogError):
    """Something could not be serialised or deserialised."""


class IntegrityError(SheepdogError):
    """A payload's HMAC did not match: it was not written by this request."""


class SubmitError(SheepdogError):
    """The scheduler refused to start the array job."""


class RemoteCommandError(SubmitError):
    """A command run on the head node failed; carries what it printed."""

    def __init__(self, where: str, command: str, exit_status: int, stdout: str, stderr: str
                 ) -> None:
        self.where = where
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr
        said = (stderr.strip() or stdout.strip() or "(no output)")[-2000:]
        super().__init__(f"`{command}` on {where} exited with status {exit_status}: {said}")

    def __reduce__(self) -> tuple[type[RemoteCommandError], tuple[str, str, int, str, str]]:
        return (RemoteCommandError,
                (self.where, self.command, self.exit_status, self.stdout, self.stderr))


class SSHError(SheepdogError):
    """The SSH connection to the head node could not be made or trusted."""


class RequestNotFound(SheepdogError, LookupError):
    """The request id is not in the dbfile."""


class RequestFailed(SheepdogError):
    """The request can no longer finish: cancelled, or its runner is gone."""


class TransferError(SheepdogError):
    """``sheepdog export`` or ``import`` cannot be done (file exists, is no export, ...)."""


class MissingExtra(SheepdogError):
    """An optional part of sheepdog needs a package that is not installed."""

    def __init__(self, what: str, package: str, extra: str) -> None:
        self.what = what
        self.package = package
        self.extra = extra
        super().__init__(f"{what} needs {package}: pip install 'sheepdog[{extra}]'")

    def __reduce__(self) -> tuple[type[MissingExtra], tuple[str, str, str]]:
        return (MissingExtra, (self.what, self.package, self.extra))


class TaskFailure(Record):
    """One failed task: its 1-based index, its arguments, the remote error and its attempt.

    Immutable, compared and hashed by its fields (as a frozen dataclass would be).
    """

    _fields = ("index", "args", "error", "attempt")
    __slots__ = _fields
    index: int
    args: object
    error: str
    attempt: int

    def __init__(self, index: int, args: object, error: str, attempt: int = 1) -> None:
        self._set(index, args, error, attempt)


class TaskErrors(SheepdogError):
    """Raised by ``map(..., raise_errors=True)`` when any task failed."""

    def __init__(self, request_id: int, failures: list[TaskFailure]) -> None:
        self.request_id = request_id
        self.failures = failures
        first = failures[0] if failures else None
        detail = f"\nfirst failure (task {first.index}):\n{first.error}" if first else ""
        super().__init__(
            f"{len(failures)} task(s) of request {request_id} failed{detail}"
        )

    def __reduce__(self) -> tuple[type[TaskErrors], tuple[int, list[TaskFailure]]]:
        return (TaskErrors, (self.request_id, self.failures))


class TaskFailed(SheepdogError):
    """One task failed - its function raised, or it was lost - as a future or ``imap``
    reports it; ``remote_traceback`` is the traceback (or the reason) from the worker."""

    def __init__(self, request_id: int, index: int, status: str, remote_traceback: str,
                 attempt: int = 1) -> None:
        self.request_id = request_id
        self.index = index
        self.status = status
        self.remote_traceback = remote_traceback
        self.attempt = attempt
        how = "raised" if status == "error" else "was lost"
        super().__init__(f"task {index} of request {request_id} {how} (attempt {attempt}):\n"
                         f"{remote_traceback.rstrip()}")

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[int, int, str, str, int]]:
        return (TaskFailed, (self.request_id, self.index, self.status, self.remote_traceback,
                             self.attempt))


class ResultsTimeout(SheepdogError, TimeoutError):
    """``get_results(timeout=...)`` ran out before every task had an outcome."""

    def __init__(self, request_id: int, done: int, total: int, timeout: float) -> None:
        self.request_id = request_id
        self.done = done
        self.total = total
        self.timeout = timeout
        super().__init__(
            f"request {request_id}: {done} of {total} tasks done after {timeout:g} s; "
            f"call get_results({request_id}) again later to keep waiting"
        )

    def __reduce__(self) -> tuple[type[ResultsTimeout], tuple[int, int, int, float]]:
        return (ResultsTimeout, (self.request_id, self.done, self.total, self.timeout))
