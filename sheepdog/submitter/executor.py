"""``sheepdog.Executor``: ``concurrent.futures`` over array jobs.

``submit`` only queues a call and returns a ``concurrent.futures.Future``. One
thread per executor does everything else, so the broker, the dbfile and the
SSH connection are only ever used from it:

- calls go out together, as one request (one array job, one broker push) per
  function, once none has been queued for ``batch_delay`` - a loop of submits
  is one batch however long it takes - or ``MAX_WAIT`` after the first;
- every open request is followed with ``results.Follower`` - lost tasks are
  retried, outages waited out, exactly as for ``map`` - and each future is
  resolved as its task's outcome reaches the dbfile;
- ``Future.cancel()`` of a call already sent is handed to the thread, which
  gives the task up on the broker only if no attempt of it has started
  (``Broker.cancel_task``), so a cancelled task never runs afterwards.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor as _BaseExecutor
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from sheepdog.broker import codec
from sheepdog.errors import SerialisationError, SheepdogError
from sheepdog.submitter import profiles, results, stream
from sheepdog.submitter.request import OpenRequest, open_request
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import TaskRow
from sheepdog.submitter.submit import submit as submit_request
from sheepdog.submitter.supervise import say_on_stderr

#: Seconds without a new call after which the queued calls go out together.
BATCH_DELAY = 0.05

#: Seconds the first queued call waits at most, however fast calls keep coming.
MAX_WAIT = 2.0

#: Calls sent as one request at most.
MAX_BATCH = 100_000

#: How long ``Future.cancel()`` waits for the executor's thread to answer.
CANCEL_WAIT = 60.0

CANCEL_REASON = "cancelled with Future.cancel() before it started"


class SheepdogFuture(Future[Any]):
    """A ``concurrent.futures.Future`` for one task; ``request_id`` and ``task`` (its
    1-based index in that request) are set once the call has been sent."""

    def __init__(self, executor: Executor) -> None:
        super().__init__()
        self._executor = executor
        self.request_id: int | None = None
        self.task: int | None = None

    def cancel(self) -> bool:
        """Cancel the call if its task has not started: True if it is cancelled now
        (or was before), False if it runs or has finished."""
        if self.cancelled():
            return True
        if self.done():
            return False
        return self._executor._cancel(self)

    def _mark_cancelled(self) -> bool:
        """Cancel as the standard Future does, and tell ``wait``/``as_completed``."""
        if not Future.cancel(self):
            return False
        self.set_running_or_notify_cancel()
        return True


@dataclass
class _Call:
    fn: Callable[..., Any]
    item: object
    future: SheepdogFuture


@dataclass
class _Open:
    """A request the thread follows, with the futures of its unfinished tasks."""

    request: OpenRequest
    stack: contextlib.ExitStack
    follower: results.Follower
    futures: dict[int, SheepdogFuture] = field(default_factory=dict)


def _item(args: tuple[Any, ...], kwargs: dict[str, Any]) -> object:
    """The task item for a call: its positional tuple, or a ``Call`` with keywords."""
    return codec.Call(*args, **kwargs) if kwargs else args


def _unpicklable(item: object) -> SerialisationError | None:
    """Why ``item`` cannot be sent, checked alone so that it fails only its own future
    (encoded as a submit would, under a throwaway key)."""
    try:
        codec.encode(item, b"check", codec.args_context(0),
                     what=lambda: f"arguments ({item!r:.80})")
    except SerialisationError as exc:
        return exc
    return None


class Executor(_BaseExecutor):
    """Run calls as array-job tasks: ``submit(f, *args, **kwargs)`` gives a Future.

    ``config`` and ``ns`` are those of ``sheepdog.map`` (a dict, a profile
    name, or None for the default profile). Calls submitted close together
    (no gap of ``batch_delay`` seconds) go out as one array job per function.
    Futures work with ``concurrent.futures.wait`` and ``as_completed``, and
    with asyncio through ``asyncio.wrap_future``. A failed task's future
    raises ``TaskFailed``, carrying the remote traceback.
    """

    def __init__(self, config: Any = None, ns: Mapping[str, Any] | None = None, *,
                 batch_delay: float = BATCH_DELAY, verbose: bool = False) -> None:
        self.settings = profiles.resolve(config)
        self.ns = dict(ns) if ns is not None else None
        self.batch_delay = batch_delay
        self.verbose = verbose
        self.request_ids: list[int] = []  # every request sent, in order
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queued: list[_Call] = []
        self._queued_at = 0.0  # when the first queued call came
        self._last_at = 0.0  # when the latest did
        self._cancels: list[tuple[SheepdogFuture, threading.Event, list[bool]]] = []
        self._cancel_all = False
        self._closing = False
        self._failure: BaseException | None = None  # what stopped the thread
        self._thread: threading.Thread | None = None
        self._open: dict[int, _Open] = {}  # the thread's own
        _LIVE.add(self)

    # -- the caller's side -------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__} {fn!r}")
        future = SheepdogFuture(self)
        with self._lock:
            self._refuse_when_closed()
            self._last_at = time.monotonic()
            if not self._queued:
                self._queued_at = self._last_at
            self._queued.append(_Call(fn, _item(args, kwargs), future))
            self._start()
            self._wake.notify()
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: one request for every call, now;
        results in order, lazily; a failed call raises ``TaskFailed`` when reached.
        ``chunksize`` is accepted and ignored (workers already take tasks in batches)."""
        with self._lock:
            self._refuse_when_closed()
        found = stream.imap(fn, zip(*iterables, strict=False), self.settings, self.ns,
                            raise_errors=True, verbose=self.verbose, timeout=timeout)
        self.request_ids.append(found.request_id)
        return found

    def _refuse_when_closed(self) -> None:
        """New calls after shutdown, or after the thread stopped, are refused (holding
        the lock)."""
        if self._failure is not None:
            raise RuntimeError(f"the Executor stopped: {self._failure}")
        if self._closing:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closing = True
            if cancel_futures:
                for call in self._queued:
                    call.future._mark_cancelled()
                self._queued.clear()
                self._cancel_all = True
            self._wake.notify()
            thread = self._thread
        if wait and thread is not None:
            thread.join()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sheepdog-executor",
                                            daemon=True)
            self._thread.start()

    def _cancel(self, future: SheepdogFuture) -> bool:
        with self._lock:
            for call in self._queued:
                if call.future is future:
                    self._queued.remove(call)
                    return future._mark_cancelled()
            thread = self._thread
            if thread is None or not thread.is_alive():
                return False
            if threading.current_thread() is not thread:
                answered, answer = threading.Event(), [False]
                self._cancels.append((future, answered, answer))
                self._wake.notify()
        if threading.current_thread() is thread:
            return self._cancel_sent(future)
        answered.wait(CANCEL_WAIT)
        return answer[0]

    # -- the executor's thread ---------------------------------------------------

    def _run(self) -> None:
        session = Session(self.settings)
        try:
            while True:
                calls, cancels, cancel_all, closing = self._take()
                self._send(session, calls)
                for future, answered, answer in cancels:
                    answer[0] = self._cancel_sent(future)
                    answered.set()
                if cancel_all:
                    for future in [f for o in self._open.values() for f in o.futures.values()]:
                        self._cancel_sent(future)
                self._follow()
                if closing and not self._open and not self._has_queued():
                    return
        except BaseException as exc:  # never leave a future waiting for ever
            self._fail_everything(exc)
        finally:
            for found in list(self._open.values()):
                found.stack.close()
            session.close()

    def _has_queued(self) -> bool:
        with self._lock:
            return bool(self._queued)

    def _take(self) -> tuple[list[_Call], list[tuple[SheepdogFuture, threading.Event,
                                                     list[bool]]], bool, bool]:
        """What to do now: calls due to go out, cancels asked for, whether to cancel all
        and whether the executor is closing; waits while there is nothing to do."""
        with self._lock:
            while not (self._open or self._cancels or self._closing or self._due()):
                wait = None
                if self._queued:
                    wait = max(0.0, self._send_at() - time.monotonic())
                self._wake.wait(wait)
            calls: list[_Call] = []
            if self._due() or self._closing:
                calls, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
                self._queued_at = time.monotonic()
            cancels, self._cancels = self._cancels, []
            cancel_all, self._cancel_all = self._cancel_all, False
            return calls, cancels, cancel_all, self._closing

    def _due(self) -> bool:
        return bool(self._queued) and (
            len(self._queued) >= MAX_BATCH
            or time.monotonic() >= self._send_at())

    def _send_at(self) -> float:
        """When the queued calls go out: after a quiet ``batch_delay``, or ``MAX_WAIT``."""
        return min(self._last_at + self.batch_delay, self._queued_at + MAX_WAIT)

    def _send(self, session: Session, calls: list[_Call]) -> None:
        by_function: dict[int, list[_Call]] = {}
        for call in calls:
            by_function.setdefault(id(call.fn), []).append(call)
        for group in by_function.values():
            self._send_group(session, group)

    def _send_group(self, session: Session, group: list[_Call]) -> None:
        """One request for ``group``; calls whose arguments cannot be pickled fail alone
        (looked for only when the submit failed: each is pickled once otherwise)."""
        try:
            request_id = submit_request(group[0].fn, [c.item for c in group], self.ns, session)
        except SerialisationError as exc:
            problems = [_unpicklable(call.item) for call in group]
            if not any(problems):  # the function itself, then
                _fail(group, exc)
                return
            for call, problem in zip(group, problems, strict=True):
                if problem is not None:
                    call.future.set_exception(problem)
            rest = [call for call, problem in zip(group, problems, strict=True) if not problem]
            if rest:
                self._send_group(session, rest)
            return
        except Exception as exc:  # e.g. the scheduler refused the job
            _fail(group, exc)
            return
        self.request_ids.append(request_id)
        self._track(session, request_id, group)

    def _track(self, session: Session, request_id: int, group: list[_Call]) -> None:
        stack = contextlib.ExitStack()
        request = stack.enter_context(open_request(request_id, self.settings.dbfile, session))
        follower = results.Follower(request, say_on_stderr, hint=self.verbose)
        found = _Open(request, stack, follower)
        for index, call in enumerate(group, start=1):
            call.future.request_id, call.future.task = request_id, index
            found.futures[index] = call.future
        self._open[request_id] = found

    def _follow(self) -> None:
        """One round over the open requests: collate, resolve futures, close the done."""
        if not self._open:
            return
        block_ms = 10 if self._has_queued() else max(20, 250 // len(self._open))
        for found in list(self._open.values()):
            try:
                touched = found.follower.step(block_ms)
                self._resolve(found, touched)
            except Exception as exc:  # the request cannot finish (e.g. never submitted)
                self._close(found, exc)
                continue
            if found.follower.finished:  # cancelled tasks too: their outcomes are in
                self._resolve(found, None)
                self._close(found, None)

    def _resolve(self, found: _Open, touched: list[int] | None) -> None:
        indices = list(found.futures) if touched is None else \
            [i for i in touched if i in found.futures]
        request = found.request
        key = results.key_or_none(request)
        for row in request.store.outcomes_of(request.request_id, sorted(indices)):
            future = found.futures.pop(row.idx)
            if not future.done():
                _settle(future, request, row, key)

    def _close(self, found: _Open, error: BaseException | None) -> None:
        request = found.request
        self._open.pop(request.request_id, None)
        for future in found.futures.values():
            if not future.done():
                future.set_exception(error or SheepdogError(
                    f"request {request.request_id} ended without an outcome for task"
                    f" {future.task}"))
        with contextlib.suppress(Exception):  # expiring broker keys can wait for later
            results.finalise(request)
        found.stack.close()

    def _cancel_sent(self, future: SheepdogFuture) -> bool:
        found = self._open.get(future.request_id or 0)
        if found is None or future.done() or future.task not in found.futures:
            return future.cancelled()
        request = found.request
        try:
            cancelled = request.connect().cancel_task(
                request.row.broker_request, request.row.token, future.task, key=request.key,
                reason=CANCEL_REASON)
        except Exception:  # cannot ask the broker now: not evidence that it was cancelled
            return False
        if cancelled:
            found.futures.pop(future.task, None)
            return future._mark_cancelled()
        return False

    def _fail_everything(self, exc: BaseException) -> None:
        with self._lock:
            queued, self._queued = self._queued, []
            self._closing = True
            self._failure = exc
        print(f"sheepdog: the Executor stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        for call in queued:
            call.future.set_exception(exc)
        for found in self._open.values():
            for future in found.futures.values():
                if not future.done():
                    future.set_exception(exc)

    def _at_exit(self) -> None:
        """The program ends without shutdown: send what is queued, and say how to
        collect what is still running (nothing submitted is lost)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                return
            self._closing = True
            self._wake.notify()
        deadline = time.monotonic() + 30
        while self._has_queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        running = [rid for rid, found in list(self._open.items()) if found.futures]
        if running:
            ids = ", ".join(map(str, running))
            print(f"sheepdog: the program ends with request(s) {ids} of an Executor still"
                  f" running; collect them with sheepdog.get_results(ID) or `sheepdog collect"
                  f" ID`", file=sys.stderr)


def _fail(calls: list[_Call], error: BaseException) -> None:
    for call in calls:
        call.future.set_exception(error)


def _settle(future: SheepdogFuture, request: OpenRequest, row: TaskRow,
            key: bytes | None) -> None:
    try:
        value, failure = results.value_or_failure(request, row, key)
    except SheepdogError as exc:
        future.set_exception(exc)
        return
    if failure is None:
        future.set_result(value)
    elif row.cause == "cancelled" and row.error == CANCEL_REASON:
        future._mark_cancelled()
    else:
        future.set_exception(failure)


_LIVE: weakref.WeakSet[Executor] = weakref.WeakSet()


@atexit.register
def _at_exit() -> None:
    for executor in list(_LIVE):
        executor._at_exit()
