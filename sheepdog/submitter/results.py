"""Reading a request back: waiting for its outcomes, collating them, decoding them.

``wait`` never waits without a reason, and never gives up without evidence:
it stops when every task has an outcome, when the request is cancelled, when
it was never fully submitted (its submitter died), or when the caller's
timeout runs out. Meanwhile ``supervise.Watch`` keeps the request going
through lost tasks, retries, a broker that lost it, and outages - which it
reports, and waits out.

Decoding checks signatures: a pickled argument or result is unpickled only
after its signature is checked with the request's key (from credentials.json);
plain values (msgpack) need no key.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from sheepdog.broker import codec, keys
from sheepdog.errors import (
    CredentialsMissing,
    IntegrityError,
    RequestFailed,
    ResultsTimeout,
    SerialisationError,
    SheepdogError,
    TaskFailed,
)
from sheepdog.submitter import repush
from sheepdog.submitter.collator import Collator, StreamNotOurs
from sheepdog.submitter.interpreter import process_start
from sheepdog.submitter.request import FINAL, OpenRequest, job_name, open_request
from sheepdog.submitter.schedulers import job_id_list
from sheepdog.submitter.store import TaskRow
from sheepdog.submitter.supervise import (
    BROKER_DOWN,
    LIVENESS_INTERVAL,
    Watch,
    say_on_stderr,
)

__all__ = ["Outcome", "collect_available", "open_request", "outcomes", "wait"]

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
    attempt: int | None = None


def collect_available(request: OpenRequest) -> None:
    """Move whatever outcomes the broker holds now into the dbfile."""
    if request.done() >= request.row.n_tasks or request.row.status == "incomplete":
        return
    try:
        collator = request.collator()
        while collator.step(block_ms=None):
            pass
    except BROKER_DOWN as exc:
        print(f"sheepdog: {exc}; showing what the dbfile holds", file=sys.stderr)


def _submitter_gone(submitter: str) -> bool | None:
    """Whether the process that submitted is known dead (None: cannot tell from here)."""
    parts = submitter.split()
    if len(parts) != 3 or parts[0] != socket.gethostname() or parts[2] == "-":
        return None
    return process_start(int(parts[1])) != parts[2]


def settle_submission(request: OpenRequest, timeout: float | None) -> None:
    """A request still 'submitting' in the dbfile: finished, still going, or abandoned.

    Returns once it is submitted, or 'incomplete' (its submitter died: its job,
    job files and broker keys are then gone).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while request.row.status == "submitting":
        meta = request.meta()
        if meta and meta.get("status") != "submitting":
            request.update(status="submitted")  # it died after the job was queued: all is well
            return
        if not meta or _submitter_gone(request.row.submitter):
            _abandon(request)
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise ResultsTimeout(request.request_id, 0, request.row.n_tasks, timeout or 0.0)
        time.sleep(LIVENESS_INTERVAL)  # its submitter is still pushing
        request.reload()


def _abandon(request: OpenRequest) -> None:
    """Clean up after a submitter that died mid-submit: none of what it left will be used."""
    row = request.row
    repush.cancel_jobs(request, job_name(row), job_id_list(row.job_ids))
    with contextlib.suppress(*BROKER_DOWN):
        request.connect().delete_request(row.broker_request)
    request.update(status="incomplete")


def all_arguments_stored(request: OpenRequest) -> bool:
    """Whether the dbfile holds every argument of the request. ``n_tasks`` is written
    once the submitter has read them all (0 until then: a generator has no length)."""
    row = request.row
    return row.status != "incomplete" or (
        row.n_tasks > 0 and request.store.stored_tasks(row.request_id) == row.n_tasks)


def incomplete(request: OpenRequest) -> RequestFailed:
    rid = request.request_id
    where = request.row.submitter.split()
    who = f" ({where[0]} pid {where[1]})" if len(where) == 3 else ""
    offer = (f"sheepdog.resubmit({rid}) (or `sheepdog resubmit {rid}`) runs its tasks"
             if all_arguments_stored(request) else
             f"the dbfile holds only {request.store.stored_tasks(rid)} of its arguments (its"
             " submitter stopped while reading them), so it cannot be resubmitted: submit it"
             " again with map")
    return RequestFailed(
        f"request {rid} was never fully submitted: its submitter{who} stopped before its job"
        f" was queued, so none of its tasks runs. {offer}."
    )


def finalise(request: OpenRequest) -> str:
    """The request's final status, kept in the dbfile once known.

    The first time, it is read from the broker, which is then told to expire
    the request (every outcome is in the dbfile), its worker user is deleted
    and its job files removed.
    """
    if request.row.status in FINAL:
        return request.row.status
    broker = request.connect()
    meta = request.meta()
    status = meta.get("status", "")
    if status in FINAL:
        request.update(status=status)
        broker.expire_request(request.row.broker_request, keys.RESULT_TTL)
        if meta.get("worker_user"):
            with contextlib.suppress(*BROKER_DOWN):
                broker.delete_worker_user(meta["worker_user"])
        if request.row.n_tasks:
            with contextlib.suppress(SheepdogError, *BROKER_DOWN):  # rq's Redis, too
                session = request.session
                if session.settings.pilots:  # workers still queued would find no job file
                    session.scheduler().cancel_queued(job_id_list(request.row.job_ids))
                session.scheduler().forget(session.settings, job_name(request.row))
    return status


def _check_resynced(request: OpenRequest) -> None:
    """After reading the whole stream again: every outcome, or say which are gone."""
    done, total = request.done(), request.row.n_tasks
    if done < total:
        rid = request.request_id
        status = request.meta().get("status")
        raise RequestFailed(
            f"request {rid}: the broker says it is {status}, but only {done} of {total}"
            " outcomes are in its results stream; the others were lost from the broker."
            f" get_results({rid}, block=False) returns the rest, and"
            f" sheepdog.resubmit({rid}) runs the missing tasks again."
        )


def _reason(request: OpenRequest) -> str:
    """Why the request was cancelled, from the broker or the lost tasks in the dbfile."""
    with contextlib.suppress(*BROKER_DOWN):
        reason = request.meta().get("reason")
        if reason:
            return reason
    lost = request.store.iter_tasks(request.request_id, statuses=("lost",), values=False)
    return next((t.error for t in lost if t.error), "no reason recorded")


def wait(request: OpenRequest, *, verbose: bool, timeout: float | None) -> None:
    """Collate until every task has an outcome (see the module docstring)."""
    if request.row.status == "submitting":
        settle_submission(request, timeout)
    if request.row.status == "incomplete":
        raise incomplete(request)
    total = request.row.n_tasks
    if request.done() < total:
        _collate_until_done(request, verbose, timeout)
    if finalise(request) == "cancelled":
        rid = request.request_id
        counts = request.store.counts(rid)
        raise RequestFailed(
            f"request {rid} was cancelled ({_reason(request)}); {counts['ok']} of {total}"
            f" tasks had finished. get_results({rid}, block=False) returns those."
        )


def _interactive() -> bool:
    """A terminal or a notebook: somewhere a progress bar redraws instead of piling up."""
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class _Waiter:
    """Collating one request and surviving outages: the inner part of ``Follower``."""

    def __init__(self, request: OpenRequest, say: Callable[[str], None]) -> None:
        self.request = request
        self.watch = Watch(request, say)
        self._collator: Collator | None = None
        self._counted = False  # whether done() has counted since the collator was made
        self._dropped = False  # a collator was dropped: what it saved last is not known

    def collator(self) -> Collator:
        row = self.request.row
        if self._collator is None or self._collator.stream != row.broker_request \
                or self._collator.broker is not self.request.connect():
            self._drop()
            self._collator = self.request.collator()
            self._counted = False
        return self._collator

    def _drop(self) -> None:
        if self._collator is not None:
            self._dropped = True
        self._collator = None

    def done(self, before: int, idle: bool) -> int:
        """Tasks with a final outcome in the dbfile: ``before`` plus what this waiter's
        collator added, or counted again when that is not known - or when idle, in case
        another process collates into the same dbfile."""
        gained = self._collator.take_gained() if self._collator is not None else None
        if gained is None or not self._counted or idle:
            self._counted = self._collator is not None
            return self.request.done()
        return before + gained

    def touched(self) -> list[int] | None:
        """Indices whose final outcome was saved since the last call (None: not known)."""
        touched = self._collator.take_touched() if self._collator is not None else []
        if self._dropped:
            self._dropped = False
            return None
        return touched

    def collate(self, block_ms: int) -> int | None:
        """Collate one batch: its size, or None (after a pause) if the broker or the
        dbfile cannot be used right now."""
        return self._tolerating(lambda: self.collator().step(block_ms=block_ms))

    def resync(self) -> None:
        """Read the whole stream again: the broker has outcomes the dbfile never got."""
        if self._tolerating(lambda: self.collator().resync()) is not None:
            _check_resynced(self.request)

    def _tolerating(self, step: Callable[[], int]) -> int | None:
        try:
            done = step()
        except StreamNotOurs:
            self._drop()  # the next check finds the request gone and pushes it again
            return 0
        except CredentialsMissing:
            raise  # not an outage: waiting would never end
        except BROKER_DOWN as exc:
            self.request.disconnect()
            self._drop()
            self.watch.unreachable("the broker", f"{type(exc).__name__}: {exc}")
        except sqlite3.OperationalError as exc:  # locked beyond the busy timeout
            self.watch.unreachable(f"the dbfile {self.request.store.path}", str(exc))
        else:
            self.watch.reachable(f"the dbfile {self.request.store.path}")
            return done
        time.sleep(1.0)
        return None


def over_on_broker(request: OpenRequest) -> bool:
    """The broker says the request is over (False if it cannot be asked now)."""
    with contextlib.suppress(*BROKER_DOWN):
        return request.meta().get("status") in FINAL
    return False


class Follower:
    """Follows one request as its outcomes arrive: collates a batch at a time, checks
    on its jobs now and then (lost tasks, retries, a broker that lost the request) and
    waits out outages. ``wait``, ``imap`` and the Executor all go through it."""

    def __init__(self, request: OpenRequest, say: Callable[[str], None], *,
                 hint: bool = False) -> None:
        self.request = request
        self.say = say
        self.waiter = _Waiter(request, say)
        self.done = self.initial = request.done()
        self.next_check = time.monotonic() + LIVENESS_INTERVAL
        self.hint_at = time.monotonic() + WAITING_HINT_AFTER if hint else None

    @property
    def finished(self) -> bool:
        """Every task has a final outcome in the dbfile."""
        return self.done >= self.request.row.n_tasks

    def step(self, block_ms: int = 250) -> list[int] | None:
        """One round: collate what arrives within ``block_ms``, and check on the jobs
        when that is due. Returns the indices that got a final outcome in this round,
        or None when that is not known (read them back from the dbfile)."""
        collated = self.waiter.collate(block_ms)
        touched = self.waiter.touched()
        now_done = self.waiter.done(self.done, idle=not collated)
        if touched is not None and now_done - self.done > len(touched):
            touched = None  # more arrived than this collator saved: another process collates
        self.done = now_done
        if self.finished or time.monotonic() < self.next_check:
            return touched
        if collated == 0 and over_on_broker(self.request):  # the dbfile lacks outcomes
            self.waiter.resync()
            self.done = self.request.done()
            return None
        state = self.waiter.watch.check()
        self.next_check = time.monotonic() + LIVENESS_INTERVAL
        if self.hint_at and time.monotonic() >= self.hint_at and self.done == self.initial \
                and state and state.waiting:
            self.say(f"sheepdog: nothing has run yet. {state.waiting}")
            self.hint_at = None
        return touched


def _collate_until_done(request: OpenRequest, verbose: bool, timeout: float | None) -> None:
    total = request.row.n_tasks
    deadline = None if timeout is None else time.monotonic() + timeout
    with tqdm(total=total, initial=request.done(), disable=not (verbose and _interactive()),
              unit="task", desc=f"request {request.request_id}", file=sys.stderr) as bar:
        def say(message: str) -> None:
            bar.write(message, file=sys.stderr)

        follower = Follower(request, say if verbose else say_on_stderr, hint=verbose)
        while not follower.finished:
            before = follower.done
            follower.step()
            bar.update(follower.done - before)
            if not follower.finished and deadline is not None \
                    and time.monotonic() >= deadline:
                raise ResultsTimeout(request.request_id, follower.done, total, timeout or 0.0)


# -- decoding ------------------------------------------------------------------


def key_or_none(request: OpenRequest) -> bytes | None:
    """The request's key, or None if this machine has none (plain values need none)."""
    try:
        return request.key
    except SheepdogError:
        return None


def decode_args(data: bytes, key: bytes | None, index: int) -> Any:
    """Task ``index``'s arguments; a pickled payload only with ``key`` to check it."""
    if key is None:
        if codec.is_plain(data):
            return codec.decode_checked(data)
        raise SerialisationError(_no_key(index))
    return codec.decode(data, key, codec.args_context(index))


def _decode_value(row: TaskRow, key: bytes | None, token: str) -> Any:
    if row.value is None:
        return None
    if key is None:
        if codec.is_plain(row.value):
            return codec.decode_checked(row.value)
        raise SerialisationError(_no_key(row.idx))
    valid = codec.check_outcome_mac(row.mac or "", key, token, row.idx, row.attempt or 0,
                                    row.status or "", row.cause or "", row.value,
                                    row.error or "")
    if not valid:
        raise IntegrityError(
            f"the result of task {row.idx} in the dbfile does not carry this request's"
            " signature (the dbfile was changed by someone else); it is not unpickled"
        )
    return codec.decode_checked(row.value)


def _no_key(index: int) -> str:
    return (f"task {index} holds a pickled value, and this machine has no key to check its"
            " signature (credentials.json of the machine that submitted the request); it is"
            " not unpickled")


def outcomes(request: OpenRequest, *, statuses: tuple[str, ...] | None = None,
             values: bool = True) -> list[Outcome]:
    """Tasks in order (those with an outcome in ``statuses``, if given), decoded."""
    return list(iter_outcomes(request, statuses=statuses, values=values))


def iter_outcomes(request: OpenRequest, *, statuses: tuple[str, ...] | None = None,
                  values: bool = True, args: Callable[[str | None], bool] = lambda _: True,
                  ) -> Iterator[Outcome]:
    """``outcomes`` one at a time, read from the dbfile as they are used; ``args`` says,
    by status, whether a task's arguments are wanted (else they are None)."""
    key = key_or_none(request)
    for row in request.store.iter_tasks(request.request_id, statuses=statuses, values=values):
        yield decoded(request, row, key, args=args(row.status), value=values)


def decoded(request: OpenRequest, row: TaskRow, key: bytes | None, *, args: bool,
            value: bool = True) -> Outcome:
    """One task read from the dbfile as the caller sees it (``key``: the request's, if
    this machine has it); ``args``/``value`` say whether to decode those."""
    try:
        item = decode_args(row.args, key, row.idx) if args else None
        result = _decode_value(row, key, request.row.token) if value else None
    except SerialisationError as exc:
        raise SerialisationError(f"request {request.request_id}, task {row.idx}: {exc}"
                                 ) from exc
    except IntegrityError as exc:
        raise IntegrityError(f"request {request.request_id}: {exc}") from exc
    return Outcome(row.idx, item, row.status, result, row.error, row.attempt)


def value_or_failure(request: OpenRequest, row: TaskRow, key: bytes | None
                     ) -> tuple[Any, TaskFailed | None]:
    """A finished task's result, or the ``TaskFailed`` it stands for (a future's
    exception, what ``imap(raise_errors=True)`` raises)."""
    outcome = decoded(request, row, key, args=False, value=row.status == "ok")
    if outcome.status == "ok":
        return outcome.value, None
    return None, TaskFailed(request.request_id, row.idx, row.status or "lost",
                            row.error or "", row.attempt or 0)


def incidents(request: OpenRequest) -> list[str]:
    return request.store.incidents(request.request_id)

