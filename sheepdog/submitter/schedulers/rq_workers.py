"""rq: a request's array tasks (or its worker-mode workers) as jobs on an rq queue.

Plain ``rq worker`` processes, already running on any machine against the
same Redis (``rq_url``, by default the request's broker), execute them. Each rq
job calls ``sheepdog.worker_bootstrap.rq_job.run`` with the job file's text and
an array index, which starts the same worker a cluster node starts: outcomes
are recorded in the request's broker stream and the dbfile as on Grid Engine,
and rq's own results are not read.

A job id here is ``<prefix>/<N>``: the rq jobs ``<prefix>_1`` .. ``<prefix>_N``
(``prefix`` is ``sheepdog-<job name>-<label>``, unique per broker, request and
job; rq job ids take letters, digits, ``-`` and ``_`` only). A task's job
reference is ``<prefix>.<i>``, as on the other schedulers. What sheepdog takes
from rq:

- a job is active while any of its rq jobs is queued, deferred, scheduled or
  started; ended when every one is failed, stopped, cancelled, or gone (rq
  deletes a finished one at once: ``RESULT_TTL``);
- an rq worker that dies leaves its job "started" until rq's own cleanup: the
  task's lease runs out first, the task is lost and retried as a new rq job
  (``job_end_kills_tasks`` is False);
- cancel deletes queued rq jobs and sends rq's stop-job command for started
  ones (the worker kills its work horse's process group, our worker with it).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import redis
import rq
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from sheepdog.broker.urls import redact
from sheepdog.errors import SubmitError
from sheepdog.submitter import credentials
from sheepdog.submitter.config import Settings
from sheepdog.submitter.schedulers.base import ArrayJob, JobState

#: The function rq workers call, by name: they need sheepdog installed.
FUNCTION = "sheepdog.worker_bootstrap.rq_job.run"
#: rq jobs enqueued per round trip.
ENQUEUE_BATCH = 1000
#: rq deletes a job that finished at once (0): its arguments hold the request's
#: credentials, and a worker still finishing it when the request is over would
#: write it back after ``forget`` deleted it. A failed job stays a day for rq's
#: own tools, unless the request's end deletes it first.
RESULT_TTL = 0
FAILURE_TTL = 24 * 3600
#: rq job states in which it may still run.
ACTIVE = {"queued", "deferred", "scheduled", "started", "created"}


def split_job_id(job_id: str) -> tuple[str, int]:
    """(prefix, N) of ``<prefix>/<N>``."""
    prefix, _, size = job_id.rpartition("/")
    if not prefix.startswith("sheepdog-") or not size.isdigit():
        raise SubmitError(f"{job_id!r} is not a sheepdog rq job id; refusing to use it")
    return prefix, int(size)


def rq_ids(job_id: str) -> list[str]:
    prefix, size = split_job_id(job_id)
    return [rq_id(prefix, i) for i in range(1, size + 1)]


def rq_id(prefix: str, index: int | str) -> str:
    """The rq job id of array task ``index``."""
    return f"{prefix}_{index}"


class RqScheduler:
    name = "rq"
    job_end_kills_tasks = False  # a dead rq worker's job stays 'started' a while
    takes_retries = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._connection: redis.Redis | None = None

    @property
    def url(self) -> str:
        url = self.settings.rq_url or self.settings.broker_url
        if url is None:
            raise SubmitError("rq needs 'rq_url' or 'broker_url': the Redis its workers use")
        return credentials.full_url(url)

    @property
    def connection(self) -> redis.Redis:
        if self._connection is None:
            self._connection = redis.Redis.from_url(self.url)
        return self._connection

    def queue(self) -> rq.Queue:
        return rq.Queue(self.settings.rq_queue, connection=self.connection)

    def _listening(self) -> int:
        return int(rq.Worker.count(connection=self.connection, queue=self.queue()))

    def prepare(self, settings: Settings) -> None:
        try:
            listening = self._listening()
        except redis.RedisError as exc:
            raise SubmitError(
                f"cannot reach the rq Redis at {redact(self.url)} ({type(exc).__name__}:"
                f" {exc}); check 'rq_url' (or 'broker_url', which it defaults to)"
            ) from exc
        if not listening:
            print(f"sheepdog: no rq worker listens on queue {settings.rq_queue!r} at"
                  f" {redact(self.url)}; the tasks wait until one does"
                  f" (e.g. `rq worker --url URL {settings.rq_queue}` where sheepdog is"
                  " installed)", file=sys.stderr)

    def submit(self, job: ArrayJob) -> list[str]:
        prefix = f"sheepdog-{job.name}-{job.label}"
        text = job.job_file.dumps()
        queue = self.queue()
        job_id = f"{prefix}/{job.size}"
        try:
            for first in range(1, job.size + 1, ENQUEUE_BATCH):
                last = min(first + ENQUEUE_BATCH - 1, job.size)
                queue.enqueue_many([
                    rq.Queue.prepare_data(
                        FUNCTION, args=(text, i, prefix), timeout=-1, result_ttl=RESULT_TTL,
                        failure_ttl=FAILURE_TTL, job_id=rq_id(prefix, i),
                        description=f"sheepdog request {job.request_id}, array task {i}",
                    ) for i in range(first, last + 1)
                ])
        except BaseException:
            self._delete(rq_ids(job_id))  # neither tasks nor credentials left behind
            raise
        return [job_id]

    def _statuses(self, ids: list[str]) -> Iterator[tuple[str, str | None]]:
        """(rq job id, its status or None if gone), a pipeline round trip per batch."""
        for start in range(0, len(ids), ENQUEUE_BATCH):
            batch = ids[start:start + ENQUEUE_BATCH]
            pipe = self.connection.pipeline(transaction=False)
            for rq_id in batch:
                pipe.hget(Job.key_for(rq_id), "status")
            for rq_id, status in zip(batch, pipe.execute(), strict=True):
                yield rq_id, status.decode() if status is not None else None

    def state(self, job_ids: list[str]) -> JobState:
        active: set[str] = set()
        ended: set[str] = set()
        try:
            started = False
            for job_id in job_ids:
                statuses = {status for _, status in self._statuses(rq_ids(job_id))}
                (active if statuses & ACTIVE else ended).add(job_id)
                started = started or "started" in statuses
            waiting = None
            if active and not started and not self._listening():
                waiting = (f"no rq worker listens on queue {self.settings.rq_queue!r} at"
                           f" {redact(self.url)}: start one with `rq worker --url URL"
                           f" {self.settings.rq_queue}`")
        except redis.RedisError as exc:
            return JobState(unknown=f"the rq Redis at {redact(self.url)}: {exc}")
        return JobState(frozenset(active), frozenset(ended), waiting=waiting)

    def cancel(self, job_ids: list[str], *, started: bool = True) -> None:
        """Delete queued rq jobs; stop started ones (rq's stop-job command)."""
        for job_id in job_ids:
            for rq_id, status in self._statuses(rq_ids(job_id)):
                if status == "started":
                    if started:
                        with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
                            send_stop_job_command(self.connection, rq_id)  # unless it ended
                elif status in ACTIVE:
                    self._delete([rq_id])

    def cancel_queued(self, job_ids: list[str]) -> None:
        self.cancel(job_ids, started=False)  # running workers end on their own

    def _delete(self, ids: list[str]) -> None:
        """Delete rq jobs. rq's own delete may race with a worker finishing the same job
        (it raises on an execution the worker just removed): the job's hash, which
        holds the credentials, is then deleted directly; rq's registries drop ids
        whose job is gone when they clean up."""
        for rq_id, job in zip(ids, Job.fetch_many(ids, connection=self.connection),
                              strict=True):
            if job is None:
                continue
            try:
                job.delete()
            except (ValueError, InvalidJobOperation, NoSuchJobError, redis.ResponseError):
                self.connection.delete(Job.key_for(rq_id))

    def last_words(self, settings: Settings, name: str, job_ref: str) -> str:
        """rq's record of the task's rq job: status, worker, and its error if it failed."""
        prefix, _, index = job_ref.rpartition(".")
        if not prefix.startswith("sheepdog-") or not index.isdigit():
            return ""
        try:
            job = Job.fetch(rq_id(prefix, index), connection=self.connection)
        except (NoSuchJobError, redis.RedisError):
            return ""
        said = f"rq: job {job.id} {job.get_status()} on worker {job.worker_name or '?'}"
        result = job.latest_result()
        error = getattr(result, "exc_string", None) if result is not None else None
        if error:
            said += "\n" + "\n".join(error.strip().splitlines()[-3:])
        return said

    def forget(self, settings: Settings, name: str) -> None:
        """Delete the request's rq jobs: their arguments hold its broker credentials.

        Not the started ones: their rq worker writes them back when it finishes
        (deleting one under it makes rq fail it); a finished job deletes itself
        (``RESULT_TTL`` 0)."""
        prefix = Job.redis_job_namespace_prefix
        ids = [key.decode()[len(prefix):] for key in
               self.connection.scan_iter(match=f"{prefix}sheepdog-{name}-*", count=1000)]
        ours = [rq_id for rq_id in ids if ":" not in rq_id]
        self._delete([rq_id for rq_id, status in self._statuses(ours) if status != "started"])
