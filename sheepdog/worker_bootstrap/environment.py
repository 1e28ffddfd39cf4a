"""What a worker learns from its surroundings: the job file and the task index.

This module is the contract between a scheduler adapter (which writes the job
file and starts the worker) and the worker (which reads both).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

#: The environment variable each scheduler sets to the 1-based array task index.
TASK_INDEX_VARS: Mapping[str, str] = {
    "local": "SHEEPDOG_TASK_ID",
    "gridengine": "SGE_TASK_ID",
    "slurm": "SLURM_ARRAY_TASK_ID",
}

#: The environment variable each scheduler sets to the job's id.
JOB_ID_VARS: Mapping[str, str] = {
    "local": "SHEEPDOG_JOB_ID",
    "gridengine": "JOB_ID",
    "slurm": "SLURM_ARRAY_JOB_ID",
}


class BadEnvironment(Exception):
    """The worker was started without what it needs; the message says what."""


@dataclass(frozen=True)
class JobFile:
    """Everything an array task needs besides its index. Written mode 0600.

    ``indices`` is None when array task ``i`` runs task ``i``; a retry job
    runs only some tasks, and its array task ``i`` runs ``indices[i - 1]``.
    With ``mode`` 'workers' every array task is a pilot that takes tasks from
    the request's queue until none is left (``indices`` is then None).
    """

    broker_url: str  # with a password: this is why the file is private
    request_id: int
    token: str  # the request's token: workers of another request touch nothing
    key: str  # hex HMAC key of this request
    scheduler: str
    indices: list[int] | None = None
    level: int = 0  # memory level of this job (retries with more memory count up)
    memory_limit: int | None = None  # bytes of address space (RLIMIT_AS), from mem_grab
    heartbeat_interval: float = 10.0  # seconds between a running task's heartbeats
    lease_timeout: float = 60.0  # seconds without a heartbeat after which a task is lost
    broker_patience: float = 120.0  # seconds a worker retries a broker that is down
    max_payload: int = 512 * 2**20  # bytes the broker takes in one value (proto-max-bulk-len)
    mode: str = "tasks"  # 'tasks': one task per array task; 'workers': pilots

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    def dump(self, path: Path) -> None:
        """Write it whole or not at all: a worker may be reading the old one."""
        part = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.dumps())
        os.replace(part, path)

    @classmethod
    def load(cls, path: Path) -> JobFile:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except OSError as exc:
            raise BadEnvironment(f"cannot read job file {path}: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise BadEnvironment(
                f"job file {path} is not a sheepdog job file of this version: {exc}"
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


def job_reference(scheduler: str, environ: Mapping[str, str], array_index: int) -> str:
    """'<job id>.<array index>', as the scheduler's accounting names this task."""
    job_id = environ.get(JOB_ID_VARS.get(scheduler, ""), "")
    return f"{job_id}.{array_index}" if job_id else f"-.{array_index}"
