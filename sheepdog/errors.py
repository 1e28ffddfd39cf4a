"""Every exception sheepdog raises on purpose.

    SheepdogError
    ├── ConfigError            a config key or value is wrong; names the fix
    ├── BrokerError            the broker cannot be reached or refused us
    │   └── EmbeddedBrokerError  the private server could not be started
    ├── SerialisationError     a function, argument or result cannot be pickled
    ├── IntegrityError         a payload failed its HMAC check (not from us)
    ├── SubmitError            the scheduler refused the array job
    │   └── RemoteCommandError   a command on the head node failed (exit status, output)
    ├── SSHError               cannot connect, unknown or changed host key, auth failed
    ├── RequestNotFound        no such request id in the dbfile
    ├── RequestFailed          the request cannot finish (cancelled, runner died)
    ├── TaskErrors             map(..., raise_errors=True) and some tasks failed
    └── ResultsTimeout         get_results(timeout=...) ran out (also a TimeoutError)

Each exception keeps its context as attributes and survives pickling,
because some of them are raised on a node and reported on the laptop.

Every array task imports this module: it imports nothing (not even
dataclasses, which costs a worker more than its whole start is allowed).
"""

from __future__ import annotations


class SheepdogError(Exception):
    """Root of every error sheepdog raises on purpose."""


class ConfigError(SheepdogError, ValueError):
    """A config key or value is wrong."""


class BrokerError(SheepdogError):
    """The broker cannot be reached, or it refused a command."""


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


class TaskFailure:
    """One failed task: its 1-based index, its arguments, the remote error and its attempt.

    Immutable, compared and hashed by its fields (as a frozen dataclass would be).
    """

    __slots__ = ("args", "attempt", "error", "index")
    index: int
    args: object
    error: str
    attempt: int

    def __init__(self, index: int, args: object, error: str, attempt: int = 1) -> None:
        for name, value in (("index", index), ("args", args), ("error", error),
                            ("attempt", attempt)):
            object.__setattr__(self, name, value)

    def _fields(self) -> tuple[int, object, str, int]:
        return (self.index, self.args, self.error, self.attempt)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: a TaskFailure is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: a TaskFailure is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskFailure) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"TaskFailure(index={self.index!r}, args={self.args!r}, error={self.error!r},"
                f" attempt={self.attempt!r})")

    def __reduce__(self) -> tuple[type[TaskFailure], tuple[int, object, str, int]]:
        return (TaskFailure, self._fields())


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
