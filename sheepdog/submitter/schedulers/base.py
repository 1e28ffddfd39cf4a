"""What every scheduler adapter provides: submit an array, cancel it, say if it lives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sheepdog.submitter.config import Settings


@dataclass(frozen=True)
class ArrayJob:
    """One request's array job, as handed to a scheduler."""

    request_id: int
    n_tasks: int
    job_file: Path  # the worker's JobFile (mode 0600)
    job_dir: Path  # where logs of this job go
    settings: Settings


class Scheduler(Protocol):
    name: str

    def submit(self, job: ArrayJob) -> list[str]:
        """Start the array job; return its job ids. Raise SubmitError if refused."""

    def cancel(self, job_ids: list[str]) -> None:
        """Stop the array job's running and queued tasks."""

    def alive(self, job_ids: list[str]) -> bool | None:
        """Whether the job may still produce outcomes; None when it cannot be told."""
