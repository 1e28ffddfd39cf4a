"""Worker mode: one array task that runs many of the request's tasks, one after another.

A pilot takes tasks from the head of the request's queue (``CLAIM_NEXT``),
in batches sized so that a batch takes about ``BATCH_SECONDS`` (one task at a
time for slow tasks, up to ``MAX_BATCH`` for tiny ones), runs each under the
same rules as a one-task worker (memory limit, captured output, signed
outcome) and records the outcomes of a batch in one round trip. Every task it
holds has a lease; the keeper thread renews them all with one heartbeat. It
exits when the queue is empty.

A pilot that dies takes nothing with it: the tasks it held run out of lease,
are declared lost, and go back to the head of the queue for the pilots still
running (or for a new job, if none is left).
"""

from __future__ import annotations

import _socket  # gethostname; the socket module imports enum and selectors
import _thread
import os
import time

from sheepdog.broker.tasks import FINAL, RETRIED, Batch, TaskChannel
from sheepdog.broker.urls import redact
from sheepdog.errors import BrokerError, SheepdogError
from sheepdog.worker_bootstrap.capture import Capture
from sheepdog.worker_bootstrap.environment import JobFile
from sheepdog.worker_bootstrap.link import BrokerLink, Keeper, LoginRefused, log
from sheepdog.worker_bootstrap.run import (
    EXIT_BAD_ENVIRONMENT,
    EXIT_NOT_RECORDED,
    EXIT_OK,
    Fields,
    call,
    load_args,
    load_function,
    python_mismatch,
)

TYPE_CHECKING = False  # typing costs a worker's start more than it can spare
if TYPE_CHECKING:
    from typing import Any

#: Seconds of work a batch aims at: long enough that a claim's round trip is
#: nothing next to it, short enough that the last batches spread over the pilots.
BATCH_SECONDS = 0.2

#: Most tasks taken at once (the claim is one Lua call on the broker).
MAX_BATCH = 500

#: Seconds after which finished outcomes are recorded even mid-batch.
RECORD_EVERY = 1.0

Outcome = tuple[int, int, str, str, Fields]  # index, attempt, status, cause, fields


class Pilot:
    def __init__(self, link: BrokerLink, job: JobFile, job_ref: str, booted: float) -> None:
        self.link = link
        self.job = job
        self.job_ref = job_ref
        self.key = bytes.fromhex(job.key)
        self.holder = os.urandom(8).hex()
        self.host = _socket.gethostname()
        self.pid = os.getpid()
        self.booted = f"{booted:.6f}"  # when this process started: see RESULT_FIELDS
        self.function: Any = None
        self.failure = ""  # why no task of this pilot can run (the function did not load)
        self.held: list[int] = []  # claimed, outcome not yet recorded: their leases matter
        self.lock = _thread.allocate_lock()
        self.capture = Capture()
        self.unrecorded = 0

    def run(self) -> int:
        size = 1  # the first task tells how long tasks take
        try:
            with Keeper(self.heartbeat, self.job.heartbeat_interval, self.capture.pump):
                while True:
                    batch = self.claim(size)
                    if batch.kind == "again":
                        continue
                    if batch.kind != "run":
                        return self.finish(batch)
                    began = time.monotonic()
                    self.run_batch(batch)
                    each = (time.monotonic() - began) / len(batch.tasks)
                    size = max(1, min(MAX_BATCH, int(BATCH_SECONDS / max(each, 1e-6))))
        finally:
            self.capture.close()

    def finish(self, batch: Batch) -> int:
        if batch.kind == "gone":
            log(f"request {self.job.request_id} is not on the broker"
                f" {redact(self.job.broker_url)} (expired, deleted, or another broker)")
            return EXIT_BAD_ENVIRONMENT
        if batch.kind == "cancelled":
            log(f"request {self.job.request_id} was cancelled; stopping")
        if batch.kind == "refused":
            log("the broker no longer lets this request's user in (the request is over, or"
                " a restarted broker forgot the user); stopping - tasks left, if any, are"
                " started again by the waiting side")
        return EXIT_NOT_RECORDED if self.unrecorded else EXIT_OK

    def claim(self, size: int) -> Batch:
        job = self.job

        def op(channel: TaskChannel) -> Batch:
            return channel.claim_next(
                job.request_id, job.token, holder=self.holder, level=job.level,
                host=self.host, pid=self.pid, job=self.job_ref, lease=job.lease_timeout,
                count=size, with_function=self.function is None and not self.failure,
            )

        try:  # nothing is held between batches: a refused login need not be waited out
            batch = self.link.call("taking tasks", op, refused_ends=True)
        except LoginRefused:
            return Batch("refused")
        if batch.kind == "run":
            with self.lock:
                self.held = [index for index, _, _ in batch.tasks]
            if self.function is None and not self.failure:
                self.load(batch)
        return batch

    def load(self, batch: Batch) -> None:
        mismatch = python_mismatch(batch.python)
        if mismatch:
            self.failure = f"PythonVersionMismatch: {mismatch}"
            return
        try:
            self.function = load_function(batch.func, self.key)
        except SheepdogError as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            self.failure = f"cannot load the function: {type(exc).__name__}: {exc}"

    def heartbeat(self) -> int:
        with self.lock:
            held = list(self.held)
        if not held:
            return 1
        job = self.job
        found = self.link.call(
            "heartbeat",
            lambda ch: ch.heartbeat_many(job.request_id, job.token, self.holder, held,
                                         job.lease_timeout),
            patience=job.heartbeat_interval,
        )
        return 1 if found == len(held) else 0

    def run_batch(self, batch: Batch) -> None:
        outcomes: list[Outcome] = []
        recorded_at = time.monotonic()
        for index, attempt, args in batch.tasks:
            outcomes.append((index, attempt, *self.execute(index, args)))
            if time.monotonic() - recorded_at >= RECORD_EVERY:
                self.record(outcomes)
                outcomes, recorded_at = [], time.monotonic()
        self.record(outcomes)

    def execute(self, index: int, args_payload: bytes) -> tuple[str, str, Fields]:
        started = time.time()
        fields: Fields
        if self.failure:
            status, cause, fields = "error", "", {"error": self.failure}
        else:
            self.capture.start()
            try:
                status, cause, fields = self._call(index, args_payload)
            finally:
                self.capture.stop()
            if self.capture.stdout:  # empty ones are left out: a million of them add up
                fields["stdout"] = self.capture.stdout
            if self.capture.stderr:
                fields["stderr"] = self.capture.stderr
        fields.update(host=self.host, pid=str(self.pid), job=self.job_ref, booted=self.booted,
                      started=f"{started:.6f}", finished=f"{time.time():.6f}")
        return status, cause, fields

    def _call(self, index: int, args_payload: bytes) -> tuple[str, str, Fields]:
        try:
            args = load_args(args_payload, self.key, index)
        except SheepdogError as exc:
            return "error", "", {"error": f"{type(exc).__name__}: {exc}"}
        return call(self.function, args, self.key, self.job.memory_limit, self.job.max_payload)

    def record(self, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        job = self.job
        replies = self.link.call(
            f"recording {len(outcomes)} outcome(s)",
            lambda ch: ch.record_many(job.request_id, job.token, key=self.key,
                                      holder=self.holder, outcomes=outcomes),
        )
        for outcome, reply in zip(outcomes, replies, strict=True):
            written = self._refused(outcome, reply) if isinstance(reply, Exception) else reply
            if written not in (FINAL, RETRIED):
                index, attempt, status = outcome[:3]
                self.unrecorded += 1
                log(f"task {index} attempt {attempt} ended ({status}) but was not recorded: "
                    + ("this worker no longer held it (it was declared lost, or another"
                       " attempt finished it)" if written == 0 else
                       "the request is gone from the broker or was cancelled"))
        done = {index for index, *_ in outcomes}
        with self.lock:
            self.held = [index for index in self.held if index not in done]

    def _refused(self, outcome: Outcome, error: Exception) -> int:
        """The broker refused to record ``outcome``: if it was a result (too large for
        the broker), record that as the task's error instead."""
        index, attempt, status, _cause, fields = outcome
        if status != "ok":
            raise BrokerError(f"recording task {index}: the broker refused: {error}")
        size = len(fields.pop("payload", b""))
        fields["error"] = (
            f"SerialisationError: the broker refused this result of {size} bytes ({error})."
            " Return less - e.g. write large results to a file on shared storage and return"
            " its path.")
        job = self.job
        return self.link.call(f"recording task {index}", lambda ch: ch.record(
            job.request_id, job.token, index, key=self.key, holder=self.holder,
            attempt=attempt, status="error", cause="", fields=fields))


def run_pilot(link: BrokerLink, job: JobFile, job_ref: str, booted: float) -> int:
    return Pilot(link, job, job_ref, booted).run()
