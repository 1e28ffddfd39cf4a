"""Reading a request back: waiting for its outcomes, collating them, decoding them.

``wait`` never waits without a reason: it stops when every task has an
outcome, when the request is cancelled or gone from the broker, when its job
is known to have died (its remaining tasks are then recorded as lost), or
when the caller's timeout runs out.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from sheepdog.broker import codec
from sheepdog.broker.client import Broker
from sheepdog.errors import BrokerError, RequestFailed, ResultsTimeout, SerialisationError
from sheepdog.submitter import credentials
from sheepdog.submitter.brokers import reconnect
from sheepdog.submitter.collator import Collator
from sheepdog.submitter.config import Settings
from sheepdog.submitter.schedulers import JobState, Scheduler, job_id_list
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import RequestRow, Store, TaskRow

#: Seconds the broker keeps a request once every outcome is in the dbfile.
RESULT_TTL = 7 * 24 * 3600

#: Request statuses after which nothing more will arrive.
FINAL = ("done", "cancelled")

#: Seconds between checks that the request's job is still alive.
LIVENESS_INTERVAL = 2.0

#: Seconds without any outcome after which a verbose wait says why the job waits.
WAITING_HINT_AFTER = 30.0


@dataclass(frozen=True)
class Outcome:
    """One task as the caller sees it."""

    index: int
    args: Any
    status: str | None  # ok | error | lost, or None while it has no outcome
    value: Any
    error: str | None


@dataclass
class OpenRequest:
    store: Store
    row: RequestRow
    session: Session
    broker: Broker | None = None
    key: bytes | None = None

    def connect(self) -> Broker:
        if self.broker is None:
            self.broker, master = reconnect(self.row.broker_id, self.row.location, self.session)
            self.key = credentials.request_key(master, self.row.request_id)
        return self.broker

    def collator(self) -> Collator:
        broker = self.connect()
        assert self.key is not None
        return Collator(broker, self.store, self.row.request_id, self.key)

    def done(self) -> int:
        return sum(self.store.counts(self.row.broker_id, self.row.request_id).values())


@contextlib.contextmanager
def open_request(
    request_id: int, dbfile: str, session: Session | None = None
) -> Iterator[OpenRequest]:
    """The request in ``dbfile``; its broker and head node are connected on first use.

    Without a ``session``, one is made from the settings the dbfile kept, and
    closed at the end.
    """
    with Store(dbfile) as store:
        row = store.request(request_id)
        owned = session is None
        active = Session(Settings.from_public(row.settings)) if session is None else session
        request = OpenRequest(store, row, active)
        try:
            yield request
        finally:
            if request.broker is not None:
                request.broker.close()
            if owned:
                active.close()


def collect_available(request: OpenRequest) -> None:
    """Move whatever outcomes the broker holds now into the dbfile."""
    if request.done() >= request.row.n_tasks:
        return
    try:
        collator = request.collator()
    except BrokerError as exc:
        print(f"sheepdog: {exc}; showing what the dbfile holds", file=sys.stderr)
        return
    while collator.step(block_ms=None):
        pass


def _check_alive(request: OpenRequest) -> JobState | None:
    """Raise RequestFailed, or record lost tasks, if the request cannot progress."""
    broker = request.connect()
    rid = request.row.request_id
    meta = broker.meta(rid)
    if not meta:
        raise RequestFailed(
            f"request {rid} is no longer on the broker (expired or deleted); the outcomes"
            f" already collected can be read with get_results({rid}, block=False)"
        )
    if meta.get("status") in FINAL and request.done() < request.row.n_tasks:
        _resync(request)
        return None
    if meta.get("status") != "queued":
        return None
    job_ids = job_id_list(meta.get("job_ids", ""))
    scheduler = request.session.scheduler()
    state = scheduler.state(job_ids)
    if state.problem:
        scheduler.cancel(job_ids)
        broker.cancel(rid, f"{state.problem}; sheepdog deleted the job")
    elif state.alive is False:
        _job_ended(request, broker, scheduler, job_ids)
    return state


def _job_ended(request: OpenRequest, broker: Broker, scheduler: Scheduler,
               job_ids: list[str]) -> None:
    """The job is gone with tasks left: cancelled, or those tasks died.

    Tasks that never started (no lease) mean the job was deleted: the request
    is cancelled. If every one had started, they died running (killed, out of
    memory, node lost): they are lost and the request is over, like a local
    task whose worker was killed.
    """
    rid = request.row.request_id
    pending = broker.pending_indices(rid)
    if not pending:
        return
    deleted = any(i not in broker.leases(rid) for i in pending)
    job = f"the {request.row.scheduler} job {','.join(job_ids)}"
    if deleted:
        reason = (f"{job} ended before every task had started: it was deleted (e.g. with"
                  " qdel) or killed")
    else:
        reason = f"{job} ended, but this task died before it had an outcome"
    said = scheduler.last_words(request.session.settings, job_name(request.row), job_ids,
                                pending[0])
    if said:
        reason += f"; the scheduler's record of task {pending[0]}:\n{said}"
    broker.cancel(rid, reason, status="cancelled" if deleted else "done")


def job_name(row: RequestRow) -> str:
    return f"{row.broker_id[:8]}-{row.request_id}"


def _finalise(request: OpenRequest) -> str:
    """The request's final status, kept in the dbfile once known.

    The first time, it is read from the broker, which is then told to expire
    the request: every outcome is in the dbfile.
    """
    if request.row.status in FINAL:
        return request.row.status
    broker = request.connect()
    status = broker.meta(request.row.request_id).get("status", "")
    if status in FINAL:
        request.store.set_status(request.row.broker_id, request.row.request_id, status)
        broker.expire_request(request.row.request_id, RESULT_TTL)
        if request.row.n_tasks:
            request.session.scheduler().forget(request.session.settings, job_name(request.row))
    return status


def _resync(request: OpenRequest) -> None:
    """The broker has every outcome but the dbfile does not: read the whole stream again."""
    request.collator().resync()
    done, total = request.done(), request.row.n_tasks
    if done < total:
        rid = request.row.request_id
        raise RequestFailed(
            f"request {rid}: the broker says it is {request.connect().meta(rid).get('status')},"
            f" but only {done} of {total} outcomes are in its results stream; the others"
            f" were lost from the broker. get_results({rid}, block=False) returns the rest."
        )


def _reason(request: OpenRequest) -> str:
    """Why the request was cancelled, from the broker or the lost tasks in the dbfile."""
    with contextlib.suppress(BrokerError):
        reason = request.connect().meta(request.row.request_id).get("reason")
        if reason:
            return reason
    lost = [o.error for o in outcomes(request) if o.status == "lost" and o.error]
    return lost[0] if lost else "no reason recorded"


def wait(request: OpenRequest, *, verbose: bool, timeout: float | None) -> None:
    """Collate until every task has an outcome (see the module docstring)."""
    total = request.row.n_tasks
    done = request.done()
    if done < total:
        _collate_until_done(request, done, verbose, timeout)
    if _finalise(request) == "cancelled":
        rid = request.row.request_id
        counts = request.store.counts(request.row.broker_id, rid)
        raise RequestFailed(
            f"request {rid} was cancelled ({_reason(request)}); {counts['ok']} of {total}"
            f" tasks had finished. get_results({rid}, block=False) returns those."
        )


def _interactive() -> bool:
    """A terminal or a notebook: somewhere a progress bar redraws instead of piling up."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


def _collate_until_done(
    request: OpenRequest, done: int, verbose: bool, timeout: float | None
) -> None:
    total = request.row.n_tasks
    collator = request.collator()
    deadline = None if timeout is None else time.monotonic() + timeout
    next_check = time.monotonic() + LIVENESS_INTERVAL
    hint_at = time.monotonic() + WAITING_HINT_AFTER if verbose else None
    initial = done
    with tqdm(total=total, initial=done, disable=not (verbose and _interactive()),
              unit="task", desc=f"request {request.row.request_id}", file=sys.stderr) as bar:
        while done < total:
            collator.step(block_ms=250)
            now_done = request.done()
            bar.update(now_done - done)
            done = now_done
            if done >= total:
                break
            if time.monotonic() >= next_check:
                state = _check_alive(request)
                next_check = time.monotonic() + LIVENESS_INTERVAL
                if hint_at and time.monotonic() >= hint_at and done == initial and state \
                        and state.waiting:
                    bar.write(f"sheepdog: nothing has run yet. {state.waiting}", file=sys.stderr)
                    hint_at = None
            if deadline is not None and time.monotonic() >= deadline:
                raise ResultsTimeout(request.row.request_id, done, total, timeout or 0.0)


def _decode(row: TaskRow, request_id: int) -> Outcome:
    try:
        args = codec.decode_trusted(row.args)
        value = codec.decode_trusted(row.value) if row.value is not None else None
    except SerialisationError as exc:
        raise SerialisationError(f"request {request_id}, task {row.idx}: {exc}") from exc
    return Outcome(row.idx, args, row.status, value, row.error)


def outcomes(request: OpenRequest) -> list[Outcome]:
    rows = request.store.tasks(request.row.broker_id, request.row.request_id)
    return [_decode(row, request.row.request_id) for row in rows]


def incidents(request: OpenRequest) -> list[str]:
    return request.store.incidents(request.row.broker_id, request.row.request_id)
