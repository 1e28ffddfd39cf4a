"""The worker's connection to the broker, which rides out short outages.

A broker that restarts, fails over, or is still loading its data refuses
connections or answers LOADING/BUSY/READONLY for a while. A worker retries
every call with growing pauses for up to ``broker_patience`` seconds, and
says so on stderr once per outage; after that it gives up
(``BrokerUnavailable``), the worker exits non-zero, and its task becomes
lost when its lease runs out - and is retried.

The keeper thread and the main thread share the one connection (a broker
sees one client per running task), so every call holds a lock.

Threads and locks come from ``_thread``, which ``threading`` is built on:
``threading`` costs a worker's start more than the little of it used here.
"""

from __future__ import annotations

import _thread
import sys
import time

from sheepdog.broker import resp
from sheepdog.broker.tasks import TaskChannel
from sheepdog.broker.urls import redact
from sheepdog.errors import BrokerError

TYPE_CHECKING = False  # typing costs a worker's start more than it can spare
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

#: Longest pause between two tries, seconds.
MAX_DELAY = 5.0


class BrokerUnavailable(BrokerError):
    """The broker did not answer within the worker's patience."""


class LoginRefused(BrokerError):
    """The broker refused the request's user (``WRONGPASS``/``NOAUTH``): it was deleted
    because the request is over, or a restarted broker forgot it until the waiting
    side makes it again."""


def _login_refused(exc: BaseException) -> bool:
    return isinstance(exc, resp.RespError) and str(exc).startswith(("WRONGPASS", "NOAUTH"))


def log(message: str) -> None:
    print(f"sheepdog worker: {message}", file=sys.stderr, flush=True)


class BrokerLink:
    def __init__(self, url: str, patience: float) -> None:
        self.url = url
        self.patience = patience
        self._client: resp.RespClient | None = None
        self._lock = _thread.allocate_lock()  # what threading.Lock() is

    def call(self, what: str, op: Callable[[TaskChannel], T],
             patience: float | None = None, *, refused_ends: bool = False) -> T:
        """``op`` over a connected channel, retried while the broker is unavailable.

        ``refused_ends``: a refused login raises LoginRefused at once, for a caller
        that holds nothing a wait could save (a worker between two batches)."""
        patience = self.patience if patience is None else patience
        deadline = time.monotonic() + patience
        delay = 0.2
        said = False
        while True:
            try:
                with self._lock:
                    if self._client is None:
                        self._client = resp.RespClient.from_url(self.url)
                    result = op(TaskChannel(self._client))
                if said:
                    log(f"the broker answers again; {what} done")
                return result
            except (OSError, resp.RespError) as exc:
                self._drop()
                if refused_ends and _login_refused(exc):
                    raise LoginRefused(f"{what}: the broker refused the login ({exc})") from exc
                if not resp.transient(exc):
                    raise BrokerError(f"{what}: the broker refused: {exc}") from exc
                if time.monotonic() + delay > deadline:
                    raise BrokerUnavailable(
                        f"{what}: the broker at {redact(self.url)} did not answer for"
                        f" {patience:g} s ({type(exc).__name__}: {exc})"
                    ) from exc
                if not said:
                    log(f"{what}: the broker is unavailable ({type(exc).__name__}: {exc});"
                        f" retrying for up to {patience:g} s")
                    said = True
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    def _drop(self) -> None:
        with self._lock:
            if self._client is not None:
                try:  # noqa: SIM105 - contextlib.suppress: one import more for a worker
                    self._client.close()
                except OSError:
                    pass
                self._client = None

    def close(self) -> None:
        self._drop()


class Keeper:
    """A thread that, while a task runs, passes its output on and keeps its lease alive."""

    #: Seconds between two passes of the task's output to the scheduler's files.
    PUMP_INTERVAL = 1.0

    def __init__(self, beat: Callable[[], int], interval: float,
                 pump: Callable[[], None]) -> None:
        self._beat = beat
        self._interval = interval
        self._pump = pump
        self._stop = _thread.allocate_lock()  # released when the task ends: the keeper waits
        self._stop.acquire()                  # on it between two passes (an Event, in effect)
        self._running = _thread.allocate_lock()  # held while the keeper runs: join by taking it
        self.lost_lease = False

    def __enter__(self) -> Keeper:
        self._running.acquire()
        try:
            _thread.start_new_thread(self._main, ())  # a daemon: it never holds up an exit
        except BaseException:
            self._running.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.release()
        with self._running:  # the keeper has finished
            pass

    def _main(self) -> None:
        try:
            self._run()
        finally:
            self._running.release()

    def _run(self) -> None:
        next_beat = time.monotonic() + self._interval
        while not self._stop.acquire(timeout=min(self.PUMP_INTERVAL, self._interval)):
            self._pump()
            if time.monotonic() < next_beat:
                continue
            next_beat = time.monotonic() + self._interval
            try:
                held = self._beat()
            except BrokerError as exc:
                log(f"heartbeat failed: {exc}")
                continue
            if held != 1 and not self.lost_lease:
                self.lost_lease = True
                log("this attempt no longer holds its task (its lease ran out and it was"
                    " declared lost, or the request is gone); its outcome will not be recorded")
