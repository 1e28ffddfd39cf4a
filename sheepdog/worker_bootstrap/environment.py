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


class BadEnvironment(Exception):
    """The worker was started without what it needs; the message says what."""


@dataclass(frozen=True)
class JobFile:
    """Everything an array task needs besides its index. Written mode 0600."""

    broker_url: str  # with the password: this is why the file is private
    request_id: int
    key: str  # hex HMAC key of this request
    scheduler: str
    connect_attempts: int = 5
    connect_retry_delay: float = 2.0
    memory_limit: int | None = None  # bytes of address space (RLIMIT_AS), from mem_grab

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    def dump(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.dumps())

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
