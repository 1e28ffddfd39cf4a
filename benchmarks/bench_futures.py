"""Futures and streaming: ``sheepdog.Executor`` and ``sheepdog.imap`` next to their peers.

Every row runs N tiny calls (``--tasks``, default 2000) with 2 worker
processes, checks the N results (``add(i, 2 * i) = 3 * i``), and is timed
``--repeats`` times (default 3) after one untimed warm-up of 10 calls
(imports; sheepdog's embedded broker; dask's workers importing the task
module). Rows run one after the other in this process, each its repeats in
turn; the table gives medians, tasks/s, the ratio to the row's floor, and the
median time to the FIRST result (``first s``).

Group "submit + as_completed": ``submit(add, i, b=2 * i)`` for i in range(N)
(one keyword argument, so keywords travel), then
``concurrent.futures.as_completed`` (dask: its own ``as_completed``) until
every result is in hand. Timed: from the first ``submit`` to the last result
(the executor is made just before: no work happens there; ``shutdown`` comes
after the clock).

* ``sheepdog-executor``: ``sheepdog.Executor({"dbfile": <fresh>, "workers":
  2})``: calls queued without a 0.05 s pause go out as one request (array job) on the
  local scheduler through the embedded broker; 2 long-lived workers claim
  tasks in batches; futures resolve as outcomes are collated into SQLite.
* ``sheepdog-map``: reference, not a peer: the same N as one
  ``sheepdog.map(add, [(i, 2 * i)...], {"workers": 2, "dbfile": <fresh>})``
  call (what ``bench_local.py --peers sheepdog`` times); no first result.
* ``procpool`` (the floor): ``concurrent.futures.ProcessPoolExecutor(2)``: two
  forked processes, started by the first ``submit``; no broker, no persistence.
* ``dask``: ``dask.distributed`` ``Client(LocalCluster(n_workers=2,
  threads_per_worker=1, processes=True))`` on 127.0.0.1 without a dashboard,
  started before the timing and kept for every repeat; ``client.submit(...,
  pure=False)`` (so that no repeat gets the last one's results back by key) and
  ``as_completed(futures, with_results=True)``.
* ``submitit``: ``submitit.LocalExecutor.submit`` per call: a controller and a
  task process per job, all N at once (it has no concurrency limit); its 0.2 s
  pause between submissions is turned off, and jobs are polled every 10 ms.
  Left out of the default rows above 200 calls.

Group "streaming": ``f`` over ``range(N)`` with ``f = add_double`` (``add(i,
2 * i)``), results consumed as they arrive. Timed: from the call (making the
pool included) to the last result; ``first s`` to the first.

* ``sheepdog-imap-unordered``: ``sheepdog.imap(f, range(N), {"workers": 2,
  "dbfile": <fresh>}, ordered=False)``: ``(index, result)`` as tasks finish.
* ``pool-imap-unordered`` (its floor): ``multiprocessing.Pool(2).imap_unordered``.
* ``sheepdog-imap``: the same with ``ordered=True``: results in order.
* ``pool-imap`` (its floor): ``multiprocessing.Pool(2).imap``.
  (Pools use the default ``chunksize=1``; sheepdog's workers claim in batches.)

A row that cannot be imported or started prints ``skipped: <reason>``; one
that raises prints ``failed: ...`` and the others still run. The load average
is printed at the start and the end (the machine is shared). Every server,
process and temporary directory is cleaned up at the end.

Run from the repository root:

    .venv/bin/python benchmarks/bench_futures.py [--tasks 2000] [--repeats 3] [--rows ...]

(``.venv/bin/pip install -e '.[bench]'`` installs submitit and dask's ``distributed``.)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import logging
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _bench_tasks import add, add_double
from bench_local import (
    HERE,
    RUN_TIMEOUT,
    WORKERS,
    Outcome,
    SheepdogPeer,
    Skip,
    check_results,
    chosen_rows,
    median_of,
    recorded,
    report_leftovers,
)

DEFAULT_TASKS = 2000
#: submitit starts two processes per call, all at once: left out of default runs above this.
SUBMITIT_UP_TO = 200
#: Calls of the untimed warm-up run of every row.
WARM_UP = 10


@dataclass
class Run:
    results: list[Any]  # in the order of range(N)
    first: float | None  # seconds to the first result (None: the row has no such moment)
    seconds: float  # to the last


class Clock:
    """Started when made; ``tick`` at every result, ``stop`` when all are in hand."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None

    def tick(self) -> None:
        if self.first is None:
            self.first = time.perf_counter() - self.start

    def stop(self, results: list[Any]) -> Run:
        return Run(results, self.first, time.perf_counter() - self.start)


class Row:
    name = ""
    group = ""
    floor = ""  # the row this one is compared with
    note = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.count = 0

    def setup(self) -> None:
        """Import and start what the row needs; raise Skip if it cannot."""

    def run(self, n: int) -> Run:
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever setup started."""


FUTURES = "submit + as_completed"
STREAMING = "streaming"


def gather_completed(futures: list[cf.Future[Any]], clock: Clock) -> list[Any]:
    """Every result, taken as its future completes, in submission order."""
    index = {future: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    for future in cf.as_completed(futures, timeout=RUN_TIMEOUT):
        results[index[future]] = future.result()
        clock.tick()
    return results


class SheepdogRow(Row):
    """A row on sheepdog's local scheduler; bench_local's peer starts and stops it."""

    def setup(self) -> None:
        self.peer = SheepdogPeer(self.tmp)
        self.peer.setup()  # Skip without worker mode; its close() stops the broker

    def config(self) -> dict[str, Any]:
        self.count += 1
        return dict(self.peer.settings, dbfile=str(self.tmp / f"{self.name}-{self.count}.db"))

    def close(self) -> None:
        if hasattr(self, "peer"):
            self.peer.close()


class SheepdogExecutorRow(SheepdogRow):
    name = "sheepdog-executor"
    group, floor = FUTURES, "procpool"
    note = "Executor({workers: 2}): submits without a 0.05 s pause = one array job"

    def run(self, n: int) -> Run:
        import sheepdog

        executor = sheepdog.Executor(self.config())
        try:
            clock = Clock()
            futures = [executor.submit(add, i, b=2 * i) for i in range(n)]
            return clock.stop(gather_completed(futures, clock))
        finally:
            executor.shutdown(cancel_futures=True)
            self.note = f"{type(self).note}; requests: {len(executor.request_ids)}"


class SheepdogMapRow(SheepdogRow):
    name = "sheepdog-map"
    group, floor = FUTURES, "procpool"
    note = "reference: one sheepdog.map({workers: 2}) call of the same N"

    def run(self, n: int) -> Run:
        import sheepdog

        items = [(i, 2 * i) for i in range(n)]
        clock = Clock()
        return clock.stop(sheepdog.map(add, items, self.config(), verbose=False,
                                       raise_errors=True, timeout=RUN_TIMEOUT))


class ProcPoolRow(Row):
    name = "procpool"
    group, floor = FUTURES, "procpool"
    note = f"floor: ProcessPoolExecutor(2), {multiprocessing.get_start_method()}ed"

    def run(self, n: int) -> Run:
        executor = cf.ProcessPoolExecutor(WORKERS)
        try:
            clock = Clock()
            futures = [executor.submit(add, i, b=2 * i) for i in range(n)]
            return clock.stop(gather_completed(futures, clock))
        finally:
            executor.shutdown(cancel_futures=True)


class DaskRow(Row):
    name = "dask"
    group, floor = FUTURES, "procpool"
    note = "LocalCluster(2 worker processes x 1 thread), started untimed"

    def setup(self) -> None:
        try:
            from distributed import Client, LocalCluster, as_completed
        except ImportError as exc:
            raise Skip(f"cannot import dask.distributed ({exc}); pip install dask distributed"
                       ) from exc
        self.note = f"{self.note}; distributed {version('distributed')}"
        self.as_completed = as_completed
        self.cluster = LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, local_directory=str(self.tmp / "dask"),
            silence_logs=logging.ERROR)
        self.client = Client(self.cluster)

    def run(self, n: int) -> Run:
        clock = Clock()
        # pure=False: a fresh key per call. With the default (pure=True) a repeat's calls
        # get the keys of the last repeat's, and dask hands back results it still holds.
        futures = [self.client.submit(add, i, b=2 * i, pure=False) for i in range(n)]
        index = {future.key: i for i, future in enumerate(futures)}
        results: list[Any] = [None] * n
        for future, value in self.as_completed(futures, with_results=True,
                                               timeout=RUN_TIMEOUT):
            results[index[future.key]] = value
            clock.tick()
        return clock.stop(results)

    def close(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        if hasattr(self, "cluster"):
            self.cluster.close()


class SubmititRow(Row):
    name = "submitit"
    group, floor = FUTURES, "procpool"
    note = "LocalExecutor.submit per call: 2 processes per call, all at once"

    def setup(self) -> None:
        try:
            import submitit
        except ImportError as exc:
            raise Skip(f"cannot import submitit ({exc}); pip install submitit") from exc
        self.executor_class = submitit.LocalExecutor

    def run(self, n: int) -> Run:
        self.count += 1
        executor = self.executor_class(folder=self.tmp / "submitit" / str(self.count))
        executor.update_parameters(timeout_min=RUN_TIMEOUT / 60)
        executor._throttling = 0.0  # its default pause of 0.2 s between submissions
        clock = Clock()
        jobs = [executor.submit(add, i, b=2 * i) for i in range(n)]
        results: list[Any] = [None] * n
        pending = dict(enumerate(jobs))
        deadline = time.monotonic() + RUN_TIMEOUT
        while pending:  # job.result() polls once a second; poll faster
            for i in [i for i, job in pending.items() if job.done()]:
                results[i] = pending.pop(i).result()
                clock.tick()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} submitit jobs still running")
            time.sleep(0.01)
        return clock.stop(results)


class SheepdogImapRow(SheepdogRow):
    name = "sheepdog-imap"
    group, floor = STREAMING, "pool-imap"
    note = "imap(f, range(N), {workers: 2}): in order"
    ordered = True

    def run(self, n: int) -> Run:
        import sheepdog

        clock = Clock()
        found = sheepdog.imap(add_double, range(n), self.config(), ordered=self.ordered,
                              verbose=False, raise_errors=True, timeout=RUN_TIMEOUT)
        pairs = found if not self.ordered else enumerate(found)
        return clock.stop(placed(pairs, n, clock))


class SheepdogImapUnorderedRow(SheepdogImapRow):
    name = "sheepdog-imap-unordered"
    floor = "pool-imap-unordered"
    note = "imap(..., ordered=False): (index, result) as tasks finish"
    ordered = False


def placed(pairs: Iterable[tuple[int, Any]], n: int, clock: Clock) -> list[Any]:
    """The results of ``(index, result)`` pairs, in index order, ticking at each."""
    results: list[Any] = [None] * n
    for i, value in pairs:
        results[i] = value
        clock.tick()
    return results


class PoolImapRow(Row):
    name = "pool-imap"
    group, floor = STREAMING, "pool-imap"
    note = "floor: multiprocessing.Pool(2).imap, chunksize 1"
    ordered = True

    def run(self, n: int) -> Run:
        clock = Clock()
        pool = multiprocessing.Pool(WORKERS)
        try:
            if self.ordered:
                return clock.stop(list(ticked(pool.imap(add_double, range(n)), clock)))
            # no index comes back: sorted, the check still sees every value exactly once
            return clock.stop(sorted(ticked(pool.imap_unordered(add_double, range(n)), clock)))
        finally:
            pool.close()
            pool.join()


class PoolImapUnorderedRow(PoolImapRow):
    name = "pool-imap-unordered"
    floor = "pool-imap-unordered"
    note = "floor: multiprocessing.Pool(2).imap_unordered, chunksize 1"
    ordered = False


def ticked(values: Iterable[Any], clock: Clock) -> Iterator[Any]:
    for value in values:
        clock.tick()
        yield value


ROWS: dict[str, type[Row]] = {
    row.name: row
    for row in (SheepdogExecutorRow, SheepdogMapRow, ProcPoolRow, DaskRow, SubmititRow,
                SheepdogImapUnorderedRow, PoolImapUnorderedRow, SheepdogImapRow, PoolImapRow)
}


@dataclass
class Timed(Outcome):
    firsts: list[float] = field(default_factory=list)


def measure_row(row: Row, n: int, repeats: int) -> Timed:
    """Set the row up, warm it up untimed, then time ``repeats`` runs of ``n`` calls."""
    outcome = Timed(row.name, row.note)
    expected = [add_double(i) for i in range(n)]
    with recorded(outcome, row.close):
        row.setup()
        row.run(min(n, WARM_UP))
        for repeat in range(1, repeats + 1):
            run = row.run(n)
            check_results(run.results, expected)
            outcome.times.append(run.seconds)
            if run.first is not None:
                outcome.firsts.append(run.first)
            print(f"  {row.name}: repeat {repeat}/{repeats}: {run.seconds:.2f} s", flush=True)
    outcome.note = row.note  # a run may say more about what it did
    return outcome


def print_table(outcomes: list[Timed], n: int) -> None:
    header = (f"{'row':<24} {'median s':>9} {'min s':>7} {'max s':>7} {'tasks/s':>8}"
              f" {'x floor':>8} {'first s':>8}  note")
    for group, timed in ((FUTURES, "first submit -> every result"),
                         (STREAMING, "the call -> the last result")):
        rows = sorted((o for o in outcomes if ROWS[o.name].group == group),
                      key=lambda o: list(ROWS).index(o.name))
        if not rows:
            continue
        print(f"\n{group}: {n} calls, {WORKERS} worker processes; timed: {timed}")
        print(header)
        print("-" * len(header))
        for o in rows:
            print(table_line(o, outcomes, n))


def table_line(o: Timed, outcomes: list[Timed], n: int) -> str:
    if o.problem or not o.times:
        return f"{o.name:<24} {o.problem.splitlines()[0] if o.problem else 'no runs'}"
    median = statistics.median(o.times)
    floor = median_of(list(outcomes), ROWS[o.name].floor)
    ratio = f"{median / floor:.2f}" if floor else "-"
    first = f"{statistics.median(o.firsts):.3f}" if o.firsts else "-"
    return (f"{o.name:<24} {median:>9.3f} {min(o.times):>7.3f} {max(o.times):>7.3f}"
            f" {n / median:>8.0f} {ratio:>8} {first:>8}  {o.note}")


def load() -> str:
    return Path("/proc/loadavg").read_text().strip()


def choose_rows(parser: argparse.ArgumentParser, text: str | None, n: int
                ) -> tuple[list[str], list[str]]:
    """(rows to run, default rows left out because they are slow at n calls)."""
    if text is not None:
        return chosen_rows(parser, text, tuple(ROWS)), []
    if n <= SUBMITIT_UP_TO:
        return list(ROWS), []
    return [r for r in ROWS if r != "submitit"], ["submitit"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help=f"calls N (default {DEFAULT_TASKS})")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (default 3)")
    parser.add_argument("--rows", default=None,
                        help=f"comma list, from {','.join(ROWS)} (default: all; submitit only"
                             f" up to {SUBMITIT_UP_TO} calls)")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeats < 1:
        parser.error("--tasks and --repeats must be at least 1")
    names, left_out = choose_rows(parser, args.rows, args.tasks)
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}  cores: {os.cpu_count()}"
          f"  python: {platform.python_version()}  load at start: {load()}")
    print(f"tasks: {args.tasks}  repeats: {args.repeats}  worker processes: {WORKERS}",
          flush=True)
    if left_out:
        print(f"left out at {args.tasks} calls (slow; name them in --rows):"
              f" {', '.join(left_out)}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="sheepdog-bench-futures-"))
    os.environ["SHEEPDOG_HOME"] = str(tmp / "sheepdog-home")
    # Every row's worker processes must import _bench_tasks.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
    try:
        outcomes = [measure_row(ROWS[name](tmp), args.tasks, args.repeats) for name in names]
        print(f"\nload at end: {load()}")
        print_table(outcomes, args.tasks)
    finally:
        report_leftovers(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
