"""What every scheduler adapter provides: submit an array, cancel it, report its state.

``state`` separates what the scheduler *says* from what it could not say: a
job counts as ended only when the scheduler answered that it is over, never
because a status command failed or timed out (the request then waits, and the
wait says why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sheepdog.submitter.config import Settings
from sheepdog.worker_bootstrap.environment import JobFile


@dataclass(frozen=True)
class ArrayJob:
    """One array job of a request, as handed to a scheduler.

    The first job of a submission runs every task (``job_file.indices`` is
    None); a retry job runs the tasks in ``job_file.indices``.
    """

    request_id: int  # the request's id on its broker
    size: int  # array tasks 1..size
    name: str  # unique per broker and request, safe in file names
    label: str  # names this job's files: 'main' for the first, 'retry-N' after
    job_file: JobFile  # what every task needs; the adapter writes it (mode 0600)
    local_dir: Path  # a private directory on this machine for the adapter's files
    settings: Settings
    memory_factor: float = 1.0  # multiply the memory the job asks for (memory retries)


def job_id_list(joined: str) -> list[str]:
    """Job ids as kept in the meta and the dbfile: comma separated, maybe empty."""
    return [job_id for job_id in joined.split(",") if job_id]


@dataclass(frozen=True)
class JobState:
    active: frozenset[str] = field(default_factory=frozenset)  # queued or running
    ended: frozenset[str] = field(default_factory=frozenset)  # the scheduler says: over
    unknown: str | None = None  # why the state of some jobs could not be told
    problem: str | None = None  # a job is stuck and will not run: why
    waiting: str | None = None  # the scheduler's word on why nothing runs yet (advisory)

    def all_ended(self, job_ids: list[str]) -> bool:
        return bool(job_ids) and all(j in self.ended for j in job_ids)


def job_of(job_ref: str) -> str:
    """The job id in a task's job reference ('<job id>.<array index>')."""
    return job_ref.rsplit(".", 1)[0]


class Scheduler(Protocol):
    name: str
    #: A job that ended took every process of its tasks with it (Grid Engine
    #: kills a task's whole process tree), so tasks it held are lost at once.
    job_end_kills_tasks: bool
    #: The scheduler's running jobs start the request's retries themselves.
    takes_retries: bool

    def prepare(self, settings: Settings) -> None:
        """Check what can be checked before anything is pushed (options, interpreter)."""

    def submit(self, job: ArrayJob) -> list[str]:
        """Start the array job; return its job ids. Raise SubmitError if refused."""

    def cancel(self, job_ids: list[str]) -> None:
        """Stop the array job's running and queued tasks."""

    def cancel_queued(self, job_ids: list[str]) -> None:
        """Remove the tasks that have not started (the workers of a finished request
        that would start to find no work); running ones may be left to end."""

    def state(self, job_ids: list[str]) -> JobState:
        """Which jobs may still produce outcomes, which are over, and what blocks them."""

    def last_words(self, settings: Settings, name: str, job_ref: str) -> str:
        """What the scheduler kept of how task ``job_ref`` ('<job id>.<array index>') ended."""

    def forget(self, settings: Settings, name: str) -> None:
        """Remove the job files (they hold the broker password) once the request is over."""
