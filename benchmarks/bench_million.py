"""A million tiny tasks end to end on this machine, in worker mode.

``sheepdog.map_async(add, generator, {"workers": 2, "dbfile": ...})`` of N tasks
(``add(a, b)`` over ``((i, 2 * i) for i in range(N))``, default N = 1,000,000),
then ``sheepdog.get_results``; the results are checked. It runs in one or both
of two modes, each in a fresh subprocess with its own embedded broker and
dbfile (so each has its own peak memory):

* ``separate``: after ``map_async`` returns, the broker's own record of the
  request (its meta hash: ``status``, ``n_ok``...; read through
  ``sheepdog.submitter.request.open_request(...).meta()``, as ``get_results``
  does) is polled every 50 ms until the broker says every task is done; only
  then is ``get_results`` called. That separates the three stages: push
  (``map_async``), running (until the broker has every outcome) and collation
  (``get_results``: every outcome from the broker's stream into SQLite, then
  read back and decoded), each with its rate.
* ``overlapped``: ``get_results`` right after ``map_async``, so outcomes are
  collated while the workers run, as ``sheepdog.map`` does: the total is the
  time a user waits from the call to every result.

Before the timed request each subprocess runs one task end to end (imports,
starting the embedded broker), untimed. Memory: the submitting process's
resident memory before ``map_async`` and its peak (``ru_maxrss``) at the end,
which includes the N ``(args, result)`` pairs ``get_results`` returns; and the
embedded valkey-server's peak (VmHWM).

While sheepdog has no ``workers`` setting yet, it runs ``{"local_workers": 2}``
(a fresh process per task: ~20 ms each here) and refuses more than
20,000 tasks.

Run from the repository root (a million tasks takes minutes; try
``--tasks 20000`` first):

    .venv/bin/python benchmarks/bench_million.py [--tasks 1000000] [--modes separate,overlapped]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _bench_tasks import add
from bench_local import processes_mentioning, report_leftovers, wait_until

HERE = Path(__file__).resolve().parent
DEFAULT_TASKS = 1_000_000
MODES = ("separate", "overlapped")
WORKERS = 2
#: Without worker mode, one process per task: refuse more than this many.
PER_TASK_MAX = 20_000
#: Longest one mode may take, in seconds.
RUN_TIMEOUT = 3 * 3600.0
POLL = 0.05


def items(n: int) -> Iterator[tuple[int, int]]:
    return ((i, 2 * i) for i in range(n))


def status_kib(path: Path, field: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def broker_peak_kib(home: Path) -> int:
    """Peak resident memory (VmHWM) of the embedded valkey-server, 0 if not found."""
    try:
        pid = int((home / "broker" / "server.pid").read_text().strip())
    except (OSError, ValueError):
        return 0
    return status_kib(Path(f"/proc/{pid}/status"), "VmHWM")


def worker_mode() -> bool:
    from sheepdog.submitter.config import Settings

    return "workers" in Settings.__dataclass_fields__


def config() -> tuple[dict[str, Any], str]:
    if worker_mode():
        return {"workers": WORKERS}, f"workers={WORKERS}"
    return {"local_workers": WORKERS}, f"local_workers={WORKERS} (no 'workers' setting yet)"


def wait_on_broker(request_id: int, dbfile: str, n: int, timeout: float) -> dict[str, str]:
    """Poll the broker's meta of the request until it has every outcome; the meta."""
    from sheepdog.submitter.request import open_request

    deadline = time.monotonic() + timeout
    with open_request(request_id, dbfile) as request:
        while True:
            meta = request.meta()
            done = sum(int(meta.get(k, 0)) for k in ("n_ok", "n_error", "n_lost"))
            if meta.get("status") in ("done", "cancelled") or done >= n:
                return meta
            if time.monotonic() > deadline:
                raise TimeoutError(f"after {timeout:.0f} s the broker has {done} of {n} outcomes")
            time.sleep(POLL)


def child(mode: str, n: int, work: Path) -> dict[str, Any]:
    import sheepdog

    settings, note = config()
    warm = str(work / "warm.sqlite")
    rid = sheepdog.map_async(add, items(1), dict(settings, dbfile=warm))
    sheepdog.get_results(rid, warm, timeout=120)
    dbfile = str(work / "million.sqlite")
    before = status_kib(Path("/proc/self/status"), "VmRSS")
    t0 = time.perf_counter()
    rid = sheepdog.map_async(add, items(n), dict(settings, dbfile=dbfile))
    t1 = time.perf_counter()
    meta: dict[str, str] = {}
    if mode == "separate":
        meta = wait_on_broker(rid, dbfile, n, RUN_TIMEOUT)
    t2 = time.perf_counter()
    results = sheepdog.get_results(rid, dbfile, timeout=RUN_TIMEOUT)
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wrong = sum(1 for args, value in results if value != args[0] + args[1])
    if len(results) != n or wrong:
        raise RuntimeError(f"{len(results)} results for {n} tasks, {wrong} wrong")
    return {
        "note": note, "push": t1 - t0, "run": t2 - t1 if mode == "separate" else None,
        "collate": t3 - t2, "total": t3 - t0, "rss_before": before, "rss_peak": peak,
        "broker_peak": broker_peak_kib(Path(os.environ["SHEEPDOG_HOME"])),
        "dbfile_bytes": os.path.getsize(dbfile), "broker_status": meta.get("status", ""),
    }


def run_mode(mode: str, n: int, tmp: Path) -> dict[str, Any]:
    """One mode in a subprocess with its own SHEEPDOG_HOME; its embedded broker is stopped."""
    work = tmp / mode
    work.mkdir()
    home = work / "home"
    env = dict(os.environ, SHEEPDOG_HOME=str(home), PYTHONPATH=os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
               "--tasks", str(n), "--dir", str(work)]
    try:
        proc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT + 600, check=False)
        lines = proc.stdout.strip().splitlines()
        try:
            return dict(json.loads(lines[-1]))
        except (IndexError, ValueError):
            return {"problem": f"exit status {proc.returncode}: {proc.stderr[-1500:]}"}
    except subprocess.TimeoutExpired:
        return {"problem": f"no answer in {RUN_TIMEOUT + 600:.0f} s"}
    finally:
        wait_until(lambda: not processes_mentioning(str(home / "jobs")), 30.0)
        code = "import sys; from pathlib import Path; from sheepdog.broker import embedded;" \
               " embedded.stop(Path(sys.argv[1]))"
        subprocess.run([sys.executable, "-c", code, str(home / "broker")], env=env,
                       check=False, timeout=60, stdin=subprocess.DEVNULL)
        wait_until(lambda: not processes_mentioning(str(home)), 10.0)


def mib(kib: float) -> str:
    return f"{kib / 1024:.0f}"


def report(results: dict[str, dict[str, Any]], n: int) -> None:
    header = (f"{'mode':<11} {'push s':>8} {'push /s':>9} {'run s':>8} {'run /s':>8}"
              f" {'collate s':>10} {'collate /s':>11} {'total s':>8} {'total /s':>9}"
              f" {'RSS before':>11} {'RSS peak':>9} {'broker peak':>12} {'dbfile':>7}")
    print(header)
    print(f"{'':<11} {'':>8} {'':>9} {'':>8} {'':>8} {'':>10} {'':>11} {'':>8} {'':>9}"
          f" {'MiB':>11} {'MiB':>9} {'MiB':>12} {'MiB':>7}")
    print("-" * len(header))
    for mode, r in results.items():
        if "problem" in r:
            print(f"{mode:<11} failed: {r['problem']}")
            continue
        run = f"{r['run']:.2f}" if r["run"] is not None else "-"
        run_rate = f"{n / r['run']:.0f}" if r["run"] else "-"
        collate_rate = f"{n / r['collate']:.0f}" if mode == "separate" else "-"
        print(f"{mode:<11} {r['push']:>8.2f} {n / r['push']:>9.0f} {run:>8} {run_rate:>8}"
              f" {r['collate']:>10.2f} {collate_rate:>11} {r['total']:>8.2f}"
              f" {n / r['total']:>9.0f} {mib(r['rss_before']):>11} {mib(r['rss_peak']):>9}"
              f" {mib(r['broker_peak']):>12} {r['dbfile_bytes'] / 2**20:>7.0f}")
    notes = {r["note"] for r in results.values() if "note" in r}
    print(f"\nsheepdog config: {', '.join(sorted(notes))}")
    print("separate: collate s = get_results after the broker had every outcome;"
          " overlapped: get_results right after map_async (collate s = the wait)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help=f"tasks (default {DEFAULT_TASKS})")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma list, from {','.join(MODES)} (default: both)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        try:
            result = child(args.child, args.tasks, Path(args.dir))
        except Exception as exc:
            result = {"problem": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result))
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: from {', '.join(MODES)}")
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    _, note = config()
    if not worker_mode() and args.tasks > PER_TASK_MAX:
        parser.error(f"this sheepdog has no worker mode: {args.tasks} tasks at a process each"
                     f" would take hours; use --tasks {PER_TASK_MAX} or fewer")

    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}  cores: {os.cpu_count()}"
          f"  python: {platform.python_version()} ({sys.executable})")
    print(f"tasks: {args.tasks}  modes: {', '.join(modes)}  sheepdog: {note}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="sheepdog-bench-million-"))
    results = {}
    try:
        for mode in modes:
            results[mode] = run_mode(mode, args.tasks, tmp)
            r = results[mode]
            said = r.get("problem") or f"total {r['total']:.2f} s"
            print(f"  {mode}: {said}", flush=True)
        print()
        report(results, args.tasks)
    finally:
        report_leftovers(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
