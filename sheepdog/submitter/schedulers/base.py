"""What every scheduler adapter provides: submit an array, cancel it, report its state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sheepdog.submitter.config import Settings
from sheepdog.worker_bootstrap.environment import JobFile


@dataclass(frozen=True)
class ArrayJob:
    """One request's array job, as handed to a scheduler."""

    request_id: int
    n_tasks: int
    name: str  # unique per broker and request, safe in file names
    job_file: JobFile  # what every task needs; the adapter writes it (mode 0600)
    local_dir: Path  # a private directory on this machine for the adapter's files
    settings: Settings


def job_id_list(joined: str) -> list[str]:
    """Job ids as kept in the meta and the dbfile: comma separated, maybe empty."""
    return [job_id for job_id in joined.split(",") if job_id]


@dataclass(frozen=True)
class JobState:
    alive: bool | None  # None: cannot be told from here
    problem: str | None = None  # the job is stuck and will not run: why
    waiting: str | None = None  # the scheduler's word on why nothing runs yet (advisory)


class Scheduler(Protocol):
    name: str

    def prepare(self, settings: Settings) -> None:
        """Check what can be checked before anything is pushed (options, interpreter)."""

    def submit(self, job: ArrayJob) -> list[str]:
        """Start the array job; return its job ids. Raise SubmitError if refused."""

    def cancel(self, job_ids: list[str]) -> None:
        """Stop the array job's running and queued tasks."""

    def state(self, job_ids: list[str]) -> JobState:
        """Whether the job may still produce outcomes, and what blocks it if stuck."""

    def last_words(self, settings: Settings, name: str, job_ids: list[str], index: int) -> str:
        """The end of what task ``index`` wrote to stderr, if the scheduler kept it."""

    def forget(self, settings: Settings, name: str) -> None:
        """Remove the job file (it holds the broker password) once the request is over."""
