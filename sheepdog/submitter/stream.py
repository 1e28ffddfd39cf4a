"""Results as they arrive: ``imap`` and its asyncio form ``aimap``.

The request is submitted at once (``map_async``); the results are then read
back from the dbfile as ``Follower`` collates them, a batch at a time, so a
million results pass through without being held: in order, the next
contiguous run of finished tasks is read by index range; in completion order,
the indices the collator just saved are read, and a bitmap (one byte per task)
says which were given out already.

Faults are the ``Follower``'s, as for ``map``: lost tasks are retried, outages
waited out, and the request is never given up without evidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from sheepdog.errors import RequestFailed, ResultsTimeout, TaskFailed
from sheepdog.submitter import profiles, results
from sheepdog.submitter.request import OpenRequest, open_request
from sheepdog.submitter.session import Session
from sheepdog.submitter.store import TaskRow
from sheepdog.submitter.submit import submit
from sheepdog.submitter.supervise import say_on_stderr

#: Tasks read from the dbfile at a time.
READ_BATCH = 1000


class Results(Iterator[Any]):
    """The results of one request, as they arrive. ``request_id`` names it (collect it
    later with ``get_results``); ``close()`` stops reading - the request keeps running."""

    def __init__(self, request_id: int, batches: Iterator[list[Any]]) -> None:
        self.request_id = request_id
        self._batches = batches
        self._batch: Iterator[Any] = iter(())

    def __next__(self) -> Any:
        while True:
            item = next(self._batch, _END)
            if type(item) is _Raise:
                raise item.error
            if item is not _END:
                return item
            self._batch = iter(next(self._batches))  # StopIteration ends us too

    def next_batch(self) -> list[Any]:
        """What has arrived, at least one result (for ``aimap``: one thread hop per batch)."""
        rest = list(self._batch)
        self._batch = iter(())
        return rest or next(self._batches)

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


_END = object()


class _Raise:
    """Stands in a batch where a failed task is, to be raised when it is reached
    (raising while reading would lose the results before it in the batch)."""

    def __init__(self, error: TaskFailed) -> None:
        self.error = error


class _Reader:
    """Reads finished tasks back from the dbfile and turns them into what is yielded."""

    def __init__(self, request: OpenRequest, *, ordered: bool, raise_errors: bool) -> None:
        self.request = request
        self.key = results.key_or_none(request)
        self.ordered = ordered
        self.raise_errors = raise_errors
        self.failures = 0
        self.given = bytearray(request.row.n_tasks + 1)  # unordered: 1 once given out
        self.next_index = 1  # ordered: the next task to give out

    def item(self, row: TaskRow) -> Any:
        value, failure = results.value_or_failure(self.request, row, self.key)
        if failure is not None:
            self.failures += 1
            if self.raise_errors:
                return _Raise(failure)
        return value if self.ordered else (row.idx - 1, value)

    def in_order(self) -> list[Any]:
        """The finished tasks from ``next_index`` on, up to the first unfinished one."""
        found: list[Any] = []
        store, rid = self.request.store, self.request.request_id
        while True:
            start = self.next_index
            for row in store.iter_tasks(rid, start=start, stop=start + READ_BATCH):
                if row.status is None:
                    return found
                found.append(self.item(row))
                self.next_index = row.idx + 1
            if self.next_index == start or self.next_index > self.request.row.n_tasks:
                return found

    def among(self, touched: list[int] | None) -> list[Any]:
        """The finished tasks among ``touched`` not given out yet (None: look at all)."""
        store, rid = self.request.store, self.request.request_id
        if touched is None:
            rows = store.iter_tasks(rid, statuses=("ok", "error", "lost"), values=False)
            touched = [row.idx for row in rows if not self.given[row.idx]]
        fresh = sorted({i for i in touched if not self.given[i]})
        found: list[Any] = []
        for row in store.outcomes_of(rid, fresh):
            self.given[row.idx] = 1
            found.append(self.item(row))
        return found

    @property
    def complete(self) -> bool:
        total = self.request.row.n_tasks
        return self.next_index > total if self.ordered else self.given.count(1) >= total


def follow(request: OpenRequest, *, ordered: bool, raise_errors: bool, verbose: bool,
           timeout: float | None, started: float) -> Iterator[list[Any]]:
    """Batches of results of an open request as they arrive (see the module docstring);
    ``timeout`` counts from ``started`` (monotonic)."""
    deadline = None if timeout is None else started + timeout
    if request.row.status == "submitting":
        results.settle_submission(request, timeout)
    if request.row.status == "incomplete":
        raise results.incomplete(request)
    reader = _Reader(request, ordered=ordered, raise_errors=raise_errors)
    follower = results.Follower(request, say_on_stderr, hint=verbose)
    touched: list[int] | None = None  # what happened before we looked: not known
    while True:
        batch = reader.in_order() if ordered else reader.among(touched)
        if batch:
            yield batch
        if reader.complete:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise ResultsTimeout(request.request_id, follower.done, request.row.n_tasks,
                                 timeout or 0.0)
        touched = follower.step()
    _finish(request, reader, verbose)


def _finish(request: OpenRequest, reader: _Reader, verbose: bool) -> None:
    rid = request.request_id
    if results.finalise(request) == "cancelled":
        raise RequestFailed(f"request {rid} was cancelled; its unfinished tasks were given"
                            " out as failed. get_errors shows why.")
    if reader.failures and verbose:
        print(f"sheepdog: {reader.failures} of {request.row.n_tasks} tasks of request {rid}"
              f" failed (None in their places); see sheepdog.get_errors({rid}) or"
              f" `sheepdog errors {rid}`", file=sys.stderr)


def stream(
    request_id: int, dbfile: str, session: Session, *, ordered: bool, raise_errors: bool,
    verbose: bool, timeout: float | None, started: float,
) -> Iterator[list[Any]]:
    """``follow`` of a request in ``dbfile``, closing ``session`` when done or dropped."""
    with session, open_request(request_id, dbfile, session) as request:
        yield from follow(request, ordered=ordered, raise_errors=raise_errors,
                          verbose=verbose, timeout=timeout, started=started)


def imap(
    f: Callable[..., Any], args: Iterable[Any], config: Any = None,
    ns: Mapping[str, Any] | None = None, ordered: bool = True, *, verbose: bool = True,
    raise_errors: bool = False, timeout: float | None = None,
) -> Results:
    """Start ``f`` over ``args`` now, and return an iterator over its results as they arrive.

    In order by default; with ``ordered=False``, ``(index, result)`` pairs
    (index 0-based, as in ``args``) in the order tasks finish. A failed task
    gives None (and a line on stderr at the end), or with ``raise_errors=True``
    raises ``TaskFailed`` with its remote traceback when reached. Memory stays
    bounded whatever the number of tasks. ``timeout`` bounds the whole wait
    (``ResultsTimeout``). Stopping early leaves the request running: its
    ``request_id`` is on the returned iterator.
    """
    started = time.monotonic()
    settings = profiles.resolve(config)
    session = Session(settings)
    try:
        request_id = submit(f, args, ns, session)
    except BaseException:
        session.close()
        raise
    return Results(request_id, stream(request_id, settings.dbfile, session, ordered=ordered,
                                      raise_errors=raise_errors, verbose=verbose,
                                      timeout=timeout, started=started))


class _Handoff:
    """A thread that runs ``imap`` and hands its batches over a small queue."""

    def __init__(self, start: Callable[[], Results]) -> None:
        self.queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.start = start
        threading.Thread(target=self._produce, name="sheepdog-aimap", daemon=True).start()

    def _offer(self, kind: str, value: Any) -> bool:
        while not self.stop.is_set():
            with contextlib.suppress(queue.Full):
                self.queue.put((kind, value), timeout=0.2)
                return True
        return False

    def _produce(self) -> None:
        try:
            with contextlib.closing(self.start()) as found:
                while self._offer("batch", found.next_batch()):
                    pass
        except StopIteration:
            self._offer("end", None)
        except BaseException as exc:
            self._offer("error", exc)


async def aimap(
    f: Callable[..., Any], args: Iterable[Any], config: Any = None,
    ns: Mapping[str, Any] | None = None, ordered: bool = True, *, verbose: bool = True,
    raise_errors: bool = False, timeout: float | None = None,
) -> AsyncIterator[Any]:
    """``imap`` for asyncio: ``async for result in sheepdog.aimap(f, args): ...``.

    Submitting and waiting run in a thread of their own (the dbfile and the
    broker connection stay in it), handing results over a batch at a time, so
    the event loop is never blocked.
    """
    handoff = _Handoff(lambda: imap(f, args, config, ns, ordered, verbose=verbose,
                                    raise_errors=raise_errors, timeout=timeout))
    try:
        while True:
            kind, value = await asyncio.to_thread(handoff.queue.get)
            if kind == "end":
                return
            if kind == "error":
                raise value
            for item in value:
                if type(item) is _Raise:
                    raise item.error
                yield item
    finally:
        handoff.stop.set()
