"""What a worker learns from its surroundings: the job file and the task index.

This module is the contract between a scheduler adapter (which writes the job
file and starts the worker) and the worker (which reads both).
"""

from __future__ import annotations

import os
import time

from sheepdog.record import Record

# Not typing, dataclasses, pathlib or json (whose decoder imports re): each would cost
# a worker's start more than it can spare.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

#: The environment variable each scheduler sets to the 1-based array task index.
TASK_INDEX_VARS: Mapping[str, str] = {
    "local": "SHEEPDOG_TASK_ID",
    "gridengine": "SGE_TASK_ID",
    "slurm": "SLURM_ARRAY_TASK_ID",
    "rq": "SHEEPDOG_TASK_ID",  # set by rq_job.run, which rq workers call
}

#: The environment variable each scheduler sets to the job's id.
JOB_ID_VARS: Mapping[str, str] = {
    "local": "SHEEPDOG_JOB_ID",
    "gridengine": "JOB_ID",
    "slurm": "SLURM_ARRAY_JOB_ID",
    "rq": "SHEEPDOG_JOB_ID",
}


class BadEnvironment(Exception):
    """The worker was started without what it needs; the message says what."""


class JobFile(Record):
    """Everything an array task needs besides its index. Written mode 0600, as JSON.

    ``indices`` is None when array task ``i`` runs task ``i``; a retry job
    runs only some tasks, and its array task ``i`` runs ``indices[i - 1]``.
    With ``mode`` 'workers' every array task is a pilot that takes tasks from
    the request's queue until none is left (``indices`` is then None).

    Immutable, compared by value; ``replace`` makes a changed copy (as a frozen
    dataclass would, without importing dataclasses).
    """

    #: The fields, in order.
    _fields = (
        "broker_url", "request_id", "token", "key", "scheduler", "indices", "level",
        "memory_limit", "heartbeat_interval", "lease_timeout", "broker_patience", "max_payload",
        "mode",
    )
    __slots__ = _fields

    broker_url: str  # with a password: this is why the file is private
    request_id: int
    token: str  # the request's token: workers of another request touch nothing
    key: str  # hex HMAC key of this request
    scheduler: str
    indices: list[int] | None
    level: int  # memory level of this job (retries with more memory count up)
    memory_limit: int | None  # bytes of address space (RLIMIT_AS), from mem_grab
    heartbeat_interval: float  # seconds between a running task's heartbeats
    lease_timeout: float  # seconds without a heartbeat after which a task is lost
    broker_patience: float  # seconds a worker retries a broker that is down
    max_payload: int  # bytes the broker takes in one value (proto-max-bulk-len)
    mode: str  # 'tasks': one task per array task; 'workers': pilots

    def __init__(
        self, broker_url: str, request_id: int, token: str, key: str, scheduler: str,
        indices: list[int] | None = None, level: int = 0, memory_limit: int | None = None,
        heartbeat_interval: float = 10.0, lease_timeout: float = 60.0,
        broker_patience: float = 120.0, max_payload: int = 512 * 2**20, mode: str = "tasks",
    ) -> None:
        self._set(broker_url, request_id, token, key, scheduler, indices, level, memory_limit,
                  heartbeat_interval, lease_timeout, broker_patience, max_payload, mode)

    def replace(self, **changes: Any) -> JobFile:
        """A copy with ``changes`` (field=value) made (``dataclasses.replace``)."""
        fields = {name: getattr(self, name) for name in self._fields}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"JobFile has no field(s) {', '.join(sorted(unknown))}")
        return JobFile(**{**fields, **changes})

    def dumps(self) -> str:
        import json  # the submitter writes job files; a worker only reads them

        return json.dumps({name: getattr(self, name) for name in self._fields})

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write it whole or not at all: a worker may be reading the old one."""
        path = os.fspath(path)
        directory, name = os.path.split(path)
        part = os.path.join(directory, f".{name}.{os.getpid()}")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.dumps().encode())
        os.replace(part, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> JobFile:
        try:
            with open(path, "rb") as f:
                data = _json_loads(f.read().decode())
            return cls(**data)
        except OSError as exc:
            raise BadEnvironment(f"cannot read job file {os.fspath(path)}: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise BadEnvironment(
                f"job file {os.fspath(path)} is not a sheepdog job file of this version: {exc}"
            ) from exc

    def task_for(self, array_index: int) -> int:
        """The request's task index that array task ``array_index`` runs."""
        if self.indices is None:
            return array_index
        if not 1 <= array_index <= len(self.indices):
            raise BadEnvironment(
                f"array task {array_index} is outside this job's {len(self.indices)} tasks"
            )
        return self.indices[array_index - 1]


class _JsonOptions:
    """What ``json.loads`` passes its C scanner (the defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


def _json_loads(text: str) -> Any:
    """``json.loads(text)`` by CPython's C scanner alone: the json package imports re,
    which costs a worker more than reading its job file is worth. (An error is still
    json's JSONDecodeError, a ValueError: the scanner imports json to raise it.)"""
    try:
        from _json import make_scanner
    except ImportError:  # not CPython: json itself
        import json

        return json.loads(text)
    body = text.strip(" \t\n\r")
    if body.startswith("\ufeff"):
        raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
    try:
        value, end = make_scanner(_JsonOptions)(body, 0)  # type: ignore[arg-type]
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if end != len(body):
        raise ValueError(f"Extra data: char {end}")
    return value


def task_index(scheduler: str, environ: Mapping[str, str]) -> int:
    """The array task index from the variable ``scheduler`` sets."""
    try:
        var = TASK_INDEX_VARS[scheduler]
    except KeyError:
        raise BadEnvironment(
            f"unknown scheduler {scheduler!r} in the job file; known: {sorted(TASK_INDEX_VARS)}"
        ) from None
    value = environ.get(var)
    if value is None:
        raise BadEnvironment(f"{var} is not set: this worker must run as an array task")
    try:
        return int(value)
    except ValueError:
        raise BadEnvironment(
            f"{var}={value!r} is not a task index; was the job submitted as an array job?"
        ) from None


def process_start(fallback: float) -> float:
    """Unix time this process started, so the interpreter's own start counts (Linux:
    /proc/self/stat's starttime); ``fallback`` where that cannot be read.

    starttime is clock ticks since boot on CLOCK_BOOTTIME; the boot's unix time is
    taken from that clock too, not from /proc/stat's btime, which is whole seconds
    and would put a start up to 1 s early.
    """
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat.rsplit(b")", 1)[1].split()[19])  # field 22; comm may hold spaces
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # no /proc, no CLOCK_BOOTTIME
        return fallback
    return min(time.time() - since_boot, fallback)


def job_reference(scheduler: str, environ: Mapping[str, str], array_index: int) -> str:
    """'<job id>.<array index>', as the scheduler's accounting names this task."""
    job_id = environ.get(JOB_ID_VARS.get(scheduler, ""), "")
    return f"{job_id}.{array_index}" if job_id else f"-.{array_index}"
