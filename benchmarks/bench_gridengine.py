"""Time from ``map`` to results for an array on the test cluster, next to Grid Engine and peers.

Needs the cluster from ``testbed/up`` (root on Debian; Son of Grid Engine, one
node, 8 slots). For each ``--tasks`` N (default 200 and 5000), ``--repeats``
rounds, the rows interleaved (their order rotates every round, so drift and
order hit all alike); the table gives medians and the ratio to the floor. Every
row maps the trivial ``add(a, b)`` over N tuples and checks the N results. A
row that cannot run prints ``skipped: <reason>``; the others still run.

Rows, and what each times:

* ``qsub python`` (the floor; ratios are against it): a bare
  ``qsub -sync y -t 1-N -b y -o /dev/null -e /dev/null /usr/bin/python3 -c pass``
  over the testbed sshd with OpenSSH, as the submit user: an N-task array of a
  no-op job in the Python the workers use. Timed: from starting ssh to its exit
  (``-sync y`` returns once every task has ended).
* ``qsub /bin/true``: the same with ``/bin/true``: the scheduler alone.
* ``sheepdog tasks``: ``sheepdog.map(add, N tuples, config)`` in this process
  with ``workers: 0`` (one array task per item, ``-t 1-N``; the key is passed
  only if this sheepdog has it): SSH with paramiko as the submit user, worker
  Python probed, zipapp checked, N tasks pushed to the testbed Redis, workers
  under the node's bare /usr/bin/python3 from the zipapp, outcomes collated into
  a fresh SQLite dbfile. Timed: from the call to its return.
* ``sheepdog workers=K`` (``--workers``, default 8): the same with
  ``workers: K``: one array job ``-t 1-K`` of K workers that each claim tasks
  from the broker until none are left. Skipped while this sheepdog has no
  ``workers`` config key.
* ``sheepdog 0.2.3``: the ORIGINAL Sheepdog from PyPI (``Sheepdog==0.2.3``, with
  flask, tornado and paramiko as its docs ask), in its own venv and process
  (both packages are imported as ``sheepdog``), run by ``_bench_sheepdog023.py``
  with ``sheepdog.map(add, N tuples, config)``: it starts its HTTP server
  (tornado, in a child process) on this machine, uploads its job file over SFTP
  and runs ``qsub`` over SSH (paramiko, the same sshd and key); every array task
  (``-t 1-N``, ``-S /usr/bin/python3``, its documented default ``-wd/-o/-e`` in
  its remote directory) fetches function and arguments over HTTP and posts its
  result back; ``map`` polls the SQLite file once a second until all N are in.
  Run as published: the driver only makes its server listen on 127.0.0.1
  (0.2.3 listens on every interface), keeps the job id qsub printed, and stops
  the server after ``map`` returns (on Python 3, 0.2.3 would otherwise hang at
  exit). Timed: ``map`` inside the driver (the driver's own start-up, ~0.3 s,
  is not counted).
* ``dask SGECluster``: dask-jobqueue's ``SGECluster`` with K single-core
  workers (``cores=1, processes=1``; dask-jobqueue submits one single job per
  worker, not an array; each runs a nanny and a worker), ``interface='lo'``,
  ``walltime=None``; run by ``_bench_dask.py`` as the submit user (it runs qsub
  on this machine, and the cluster refuses root), in a venv made from the node's
  /usr/bin/python3 that the workers use too. Timed, cold: from ``SGECluster()``
  through ``scale(K)``, ``client.map(add, ..., pure=False)`` (issued at once;
  tasks start as workers join) to ``client.gather``; ``cluster.close()`` and
  the wait for its jobs to leave qstat are not timed.

Columns: median, min and max seconds; the median per item mapped; ``GE tasks``:
array tasks (dask: jobs) the row used - for sheepdog, how many distinct array
tasks reported outcomes in the last round (in worker mode, fewer than K when
the first workers drained the queue before the others started); ``x floor``;
``linger s``: after each timed run the bench waits, untimed, until the row's
jobs have left qstat, so every row starts on a free cluster; this is the
median of that wait (jobs that hold slots after their results are in).

The two peers' venvs are made on first use under ``--peers-dir`` (default
/opt/sheepdog-bench, world-readable: the submit user and the jobs run from
them), with pip from PyPI; delete a venv to have it made again.

``--accounting``: after the runs, ``qacct -j ID`` (over ssh, as the submit user)
for every job the rows submitted, per row: the number of array tasks, and per
array task the median and mean cpu (ru_utime + ru_stime, ms resolution) and
ru_wallclock (whole seconds in SGE 8.1.9: a task under a second shows 0, so
read the mean), cpu summed over all tasks divided by the items mapped (N times
the rounds), and how many tasks ended with ``failed`` or ``exit_status`` not 0.
A task deleted before it started (a pilot not needed any more, a dask job that
``close()`` deleted while pending) has no record. Sheepdog's job ids are read
from its dbfile (``requests.job_ids``, what ``sheepdog status ID`` shows: only the
latest job, if a lost request was pushed again); the floor's from what
``qsub -sync y`` printed.

Run: ``.venv/bin/python benchmarks/bench_gridengine.py [--tasks 200,5000] [--repeats 3]
[--rows ...] [--workers 8] [--accounting]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench_local import chosen_rows

import sheepdog
from sheepdog.submitter.config import Settings
from sheepdog.submitter.store import Store

ENV_FILE = Path("/etc/sheepdog-testbed/env")
HERE = Path(__file__).resolve().parent
PEER_PYTHON = "/usr/bin/python3"  # the node's Python: peers' venvs are made from it
#: venv name -> pip install steps (each one pip command's arguments)
PEER_VENVS = {
    "sheepdog-0.2.3": [["--no-deps", "Sheepdog==0.2.3"], ["flask", "tornado", "paramiko"]],
    "dask": [["dask-jobqueue"]],
}
ROWS = ("qsub python", "qsub /bin/true", "sheepdog tasks", "sheepdog workers",
        "sheepdog 0.2.3", "dask SGECluster")


class Skip(Exception):
    """This row cannot run here: the message says why."""


def add(a: int, b: int) -> int:
    return a + b


def testbed() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def ssh_home(env: dict[str, str], root: Path) -> Path:
    home = root / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    known = Path(env["SHEEPDOG_TESTBED_KNOWN_HOSTS"]).read_text()
    (home / ".ssh" / "known_hosts").write_text(known)
    (home / ".ssh" / "config").write_text(
        f"Host testbed\n  HostName {env['SHEEPDOG_TESTBED_SSH_HOST']}\n"
        f"  Port {env['SHEEPDOG_TESTBED_SSH_PORT']}\n  User {env['SHEEPDOG_TESTBED_SSH_USER']}\n"
        f"  IdentityFile {env['SHEEPDOG_TESTBED_SSH_KEY']}\n"
    )
    return home


def ssh(env: dict[str, str], command: str, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """``command`` on the head node as the submit user, over OpenSSH."""
    argv = [
        "ssh", "-p", env["SHEEPDOG_TESTBED_SSH_PORT"], "-i", env["SHEEPDOG_TESTBED_SSH_KEY"],
        "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={env['SHEEPDOG_TESTBED_KNOWN_HOSTS']}",
        f"{env['SHEEPDOG_TESTBED_SSH_USER']}@{env['SHEEPDOG_TESTBED_SSH_HOST']}", command,
    ]
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=timeout)


def limit(n: int) -> float:
    """Seconds one run of n tasks may take before it is given up (about 4x the floor)."""
    return 120 + 0.5 * n


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def wait_jobs_gone(env: dict[str, str], job_ids: list[str], timeout: float = 300) -> float:
    """Seconds until qstat lists none of ``job_ids`` (the next row needs the slots free)."""
    started = time.monotonic()
    while job_ids and time.monotonic() - started < timeout:
        said = ssh(env, "qstat -u " + shlex.quote(env["SHEEPDOG_TESTBED_SSH_USER"]), check=False)
        listed = {line.split()[0] for line in said.stdout.splitlines()[2:] if line.split()}
        if said.returncode == 0 and not listed & set(job_ids):
            break
        time.sleep(0.5)
    return time.monotonic() - started


# -- peer venvs ---------------------------------------------------------------


def peer_venv(peers_dir: Path, name: str) -> Path:
    """The venv's python, made (once) from the node's Python, readable by everyone."""
    venv = peers_dir / name
    python = venv / "bin" / "python"
    stamp = venv / ".bench-installed"
    steps = PEER_VENVS[name]
    if stamp.exists() and stamp.read_text() == json.dumps(steps):
        return python
    if not Path(PEER_PYTHON).exists():
        raise Skip(f"no {PEER_PYTHON} to make the {name} venv from")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    commands = [[PEER_PYTHON, "-m", "venv", str(venv)]]
    commands += [[str(python), "-m", "pip", "install", "-q", *step] for step in steps]
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            raise Skip(f"could not make the {name} venv: `{shlex.join(command)}` exited"
                       f" {done.returncode}: {said[-1] if said else ''}")
    stamp.write_text(json.dumps(steps))
    subprocess.run(["chmod", "-R", "a+rX", str(peers_dir)], check=True)
    return python


def versions(python: Path, names: list[str]) -> str:
    code = ("import importlib.metadata as m, sys; print(', '.join(n + ' ' + m.version(n)"
            " for n in sys.argv[1:]))")
    done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True,
                          cwd="/")  # not here: /work/main has the project's egg-info
    return done.stdout.strip() or "?"


# -- rows ---------------------------------------------------------------------


@dataclass
class Row:
    name: str
    run: Callable[[int, int], tuple[float, list[str]]]  # (n, round) -> (seconds, job ids)
    prepare: Callable[[], str] = lambda: ""  # -> a note for the header; raises Skip
    times: dict[int, list[float]] = field(default_factory=dict)
    jobs: dict[int, list[str]] = field(default_factory=dict)
    skipped: str = ""
    array_tasks: dict[int, int] = field(default_factory=dict)
    linger: dict[int, list[float]] = field(default_factory=dict)


class Bench:
    #: The ``scheduler`` config key of the sheepdog rows: named, so no row pays for
    #: asking the head node which scheduler it runs (one more SSH command).
    scheduler: str = "gridengine"

    def __init__(self, env: dict[str, str], root: Path, opts: argparse.Namespace) -> None:
        self.env = env
        self.root = root
        self.opts = opts
        self.home = ssh_home(env, root)
        self.remote_home = ""
        self.has_workers = "workers" in Settings.__dataclass_fields__
        self.started = time.time()

    # floor --------------------------------------------------------------------

    def qsub(self, job: str) -> Callable[[int, int], tuple[float, list[str]]]:
        def run(n: int, _round: int) -> tuple[float, list[str]]:
            command = (f"timeout {limit(n):.0f} qsub -sync y -t 1-{n} -b y"
                       f" -o /dev/null -e /dev/null {job}")
            started = time.monotonic()
            done = ssh(self.env, command, timeout=limit(n) + 30)
            elapsed = time.monotonic() - started
            match = re.search(r"Your job(?:-array)? (\d+)", done.stdout)
            return elapsed, [match.group(1)] if match else []
        return run

    # sheepdog (this checkout) ------------------------------------------------

    def sheepdog(self, workers: int) -> Callable[[int, int], tuple[float, list[str]]]:
        def run(n: int, round_: int) -> tuple[float, list[str]]:
            dbfile = self.root / f"sheepdog-w{workers}-n{n}-{round_}.sqlite"
            config: dict[str, object] = {
                "host": "testbed", "broker_url": self.env["SHEEPDOG_TESTBED_BROKER_URL"],
                "shell": self.env["SHEEPDOG_TESTBED_BARE_PYTHON"], "dbfile": str(dbfile)}
            if self.has_workers:
                config["workers"] = workers
            config["scheduler"] = self.scheduler
            args = [(i, 1) for i in range(n)]
            started = time.monotonic()
            try:
                out = sheepdog.map(add, args, config, verbose=False, raise_errors=True,
                                   timeout=limit(n))
            except BaseException:
                with contextlib.suppress(Exception), Store(dbfile, create=False) as store:
                    for request in store.requests():
                        sheepdog.cancel(request.request_id, str(dbfile))
                raise
            elapsed = time.monotonic() - started
            assert out == [i + 1 for i in range(n)], "wrong results"
            return elapsed, self.sheepdog_jobs(dbfile, n, workers)
        return run

    def sheepdog_jobs(self, dbfile: Path, n: int, workers: int) -> list[str]:
        """The request's job ids from the dbfile; checks how many array tasks ran tasks."""
        with Store(dbfile, create=False) as store:
            (request,) = store.requests()
            ran = store._db.execute(
                "SELECT count(DISTINCT job) FROM results WHERE request_id = ?",
                (request.request_id,)).fetchone()[0]
        if workers and ran > workers:
            raise AssertionError(f"workers={workers}, but {ran} array tasks ran tasks: "
                                 "this sheepdog ran one array task per item")
        self.last_array_tasks = ran
        return [j for j in request.job_ids.split(",") if j]

    def prepare_workers(self) -> str:
        if not self.has_workers:
            raise Skip("this sheepdog has no 'workers' config key yet (Settings refuses it)")
        return ""

    # Sheepdog 0.2.3 -----------------------------------------------------------

    def prepare_023(self) -> str:
        self.python_023 = peer_venv(self.opts.peers_dir, "sheepdog-0.2.3")
        if not self.remote_home:
            self.remote_home = ssh(self.env, "echo $HOME").stdout.strip()
        return "sheepdog 0.2.3: " + versions(self.python_023,
                                             ["Sheepdog", "flask", "tornado", "paramiko"])

    def run_023(self, n: int, round_: int) -> tuple[float, list[str]]:
        local = self.root / f"sd023-n{n}-{round_}"
        local.mkdir()
        remote_dir = f"{self.remote_home}/.sheepdog-0.2.3-bench"
        with socket.socket() as s:  # a free port on loopback for its server
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out, jobfile, log = local / "out.json", local / "job", local / "log"
        argv = [str(self.python_023), str(HERE / "_bench_sheepdog023.py"), str(n),
                str(local / "sheepdog.sqlite"), str(port), remote_dir,
                self.env["SHEEPDOG_TESTBED_SSH_KEY"], str(out), str(jobfile)]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8"}
        ssh(self.env, f"rm -rf {shlex.quote(remote_dir)}")
        # its server child keeps stdout/stderr open: send them to a file, not a pipe
        with log.open("w") as sink:
            proc = subprocess.Popen(argv, cwd=local, env=env, stdout=sink, stderr=sink,
                                    start_new_session=True)
            try:
                proc.wait(timeout=limit(n))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        job = jobfile.read_text().strip() if jobfile.exists() else ""
        if not out.exists():
            if job:
                ssh(self.env, f"qdel {job}", check=False)
            tail = log.read_text().strip().splitlines()[-3:]
            raise RuntimeError(f"no result (exit {proc.returncode}): {' | '.join(tail)}")
        result = json.loads(out.read_text())
        if not result["ok"]:
            raise AssertionError(f"wrong results; errors: {result['errors']}")
        ssh(self.env, f"rm -rf {shlex.quote(remote_dir)}")
        return result["elapsed"], [job] if job else []

    # dask-jobqueue ------------------------------------------------------------

    def prepare_dask(self) -> str:
        self.python_dask = peer_venv(self.opts.peers_dir, "dask")
        user = self.env["SHEEPDOG_TESTBED_SSH_USER"]
        if not shutil.which("runuser"):
            raise Skip("no runuser to run dask-jobqueue as the submit user")
        check = subprocess.run(["runuser", "-u", user, "--", str(self.python_dask), "-c",
                                "import dask_jobqueue"], capture_output=True, text=True)
        if check.returncode != 0:
            raise Skip(f"{user} cannot run {self.python_dask}: {check.stderr.strip()[-200:]}")
        if subprocess.run(["runuser", "-u", user, "--", "test", "-r",
                           str(HERE / "_bench_dask.py")]).returncode != 0:
            raise Skip(f"{user} cannot read {HERE / '_bench_dask.py'}")
        return "dask: " + versions(self.python_dask, ["dask-jobqueue", "distributed"])

    def run_dask(self, n: int, round_: int) -> tuple[float, list[str]]:
        user = self.env["SHEEPDOG_TESTBED_SSH_USER"]
        # a directory the submit user owns: jobs start there (-cwd) and log there
        work = Path(tempfile.mkdtemp(prefix=f"sheepdog-bench-dask-n{n}-{round_}-"))
        shutil.chown(work, user)
        out, log = work / "out.json", work / "driver.log"
        argv = ["runuser", "-u", user, "--", "env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin",
                f"HOME={pwd.getpwnam(user).pw_dir}", "LANG=C.UTF-8",
                str(self.python_dask), str(HERE / "_bench_dask.py"), str(n),
                str(self.opts.workers), str(out), str(work / "logs")]
        try:
            with log.open("w") as sink:
                proc = subprocess.Popen(argv, cwd=work, stdout=sink, stderr=sink,
                                        start_new_session=True)
                try:
                    proc.wait(timeout=limit(n))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)  # its cluster.close() never ran
                    proc.wait()
            if not out.exists():
                tail = log.read_text().strip().splitlines()[-3:]
                raise RuntimeError(f"no result (exit {proc.returncode}): {' | '.join(tail)}")
            result = json.loads(out.read_text())
            if not result["ok"]:
                raise AssertionError("wrong results")
            self.dask_detail.setdefault(n, []).append(
                (result["first_worker"], result["all_workers"]))
            return result["elapsed"], result["job_ids"]
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # ---------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        k = self.opts.workers
        python = f"{self.env['SHEEPDOG_TESTBED_BARE_PYTHON']} -c pass"
        self.dask_detail: dict[int, list[tuple[float | None, float | None]]] = {}
        table = {
            "qsub python": Row("qsub python", self.qsub(python)),
            "qsub /bin/true": Row("qsub /bin/true", self.qsub("/bin/true")),
            "sheepdog tasks": Row("sheepdog tasks", self.sheepdog(0)),
            "sheepdog workers": Row(f"sheepdog workers={k}", self.sheepdog(k),
                                    self.prepare_workers),
            "sheepdog 0.2.3": Row("sheepdog 0.2.3", self.run_023, self.prepare_023),
            "dask SGECluster": Row("dask SGECluster", self.run_dask, self.prepare_dask),
        }
        return [table[name] for name in self.opts.rows]

    def array_tasks(self, row: Row, n: int) -> int:
        if row.name.startswith("sheepdog") and row.name != "sheepdog 0.2.3":
            return getattr(self, "last_array_tasks", 0)
        return self.opts.workers if row.name.startswith("dask") else n

    def before_run(self) -> None:
        """Called, untimed, before every timed run."""

    def wait_gone(self, job_ids: list[str]) -> float:
        """Seconds until the scheduler lists none of ``job_ids`` (untimed)."""
        return wait_jobs_gone(self.env, job_ids)


def run_all(bench: Bench, rows: list[Row], sizes: list[int], repeats: int) -> list[str]:
    notes = []
    for row in rows:
        try:
            note = row.prepare()
        except Skip as why:
            row.skipped = str(why)
            continue
        if note:
            notes.append(note)
    for n in sizes:
        for round_ in range(repeats):
            live = [r for r in rows if not r.skipped]
            shift = round_ % max(len(live), 1)
            for row in live[shift:] + live[:shift]:  # order rotates every round
                if row.skipped:
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] n={n} round {round_ + 1}: {row.name}",
                      file=sys.stderr, flush=True)
                bench.before_run()
                try:
                    elapsed, jobs = row.run(n, round_)
                except Exception as error:
                    row.skipped = f"failed at n={n}, round {round_ + 1}: {first_line(error)}"
                    print(f"    {row.skipped}", file=sys.stderr, flush=True)
                    continue
                row.times.setdefault(n, []).append(elapsed)
                row.jobs.setdefault(n, []).extend(jobs)
                row.array_tasks[n] = bench.array_tasks(row, n)
                linger = bench.wait_gone(jobs)  # not timed
                row.linger.setdefault(n, []).append(linger)
                print(f"    {elapsed:.2f} s; jobs {','.join(jobs)} gone {linger:.1f} s later",
                      file=sys.stderr, flush=True)
    return notes


def print_table(rows: list[Row], n: int, repeats: int, floor_name: str = "qsub python",
                tasks_label: str = "GE tasks") -> None:
    floor_row = next((r for r in rows if r.name == floor_name and r.times.get(n)), None)
    floor = statistics.median(floor_row.times[n]) if floor_row else None
    print(f"\ncores: {os.cpu_count()}  tasks: {n}  repeats: {repeats}  (8 slots)")
    print(f"{'what':<20} {'median s':>9} {'min s':>8} {'max s':>8} {'per item ms':>12}"
          f" {tasks_label:>9} {'x floor':>8} {'linger s':>9}")
    for row in rows:
        times = row.times.get(n)
        if not times:
            print(f"{row.name:<20} skipped: {row.skipped or 'no run'}")
            continue
        median = statistics.median(times)
        ratio = f"{median / floor:>8.2f}" if floor else f"{'-':>8}"
        print(f"{row.name:<20} {median:>9.2f} {min(times):>8.2f} {max(times):>8.2f}"
              f" {1000 * median / n:>12.2f} {row.array_tasks.get(n, 0):>9} {ratio}"
              f" {statistics.median(row.linger.get(n) or [0]):>9.1f}"
              + (f"  ({len(times)} of {repeats} runs; then {row.skipped})"
                 if row.skipped and len(times) < repeats else ""))


# -- accounting ---------------------------------------------------------------


def qacct(env: dict[str, str], job_id: str, since: float) -> list[dict[str, str]]:
    """The accounting records of ``job_id`` (one per array task) submitted after ``since``."""
    said = ssh(env, f"qacct -j {int(job_id)}", check=False, timeout=300)
    records = []
    for block in re.split(r"^=+$", said.stdout, flags=re.MULTILINE):
        fields = dict(
            (parts[0], parts[1].strip()) for parts in
            (line.split(None, 1) for line in block.strip().splitlines()) if len(parts) == 2
        )
        if fields.get("jobnumber") != str(job_id) or "qsub_time" not in fields:
            continue
        submitted = time.mktime(time.strptime(fields["qsub_time"], "%a %b %d %H:%M:%S %Y"))
        if submitted >= since - 2:  # job numbers restart when the cell is made again
            records.append(fields)
    return records


def seconds(value: str) -> float:
    return float(value.rstrip("s"))


def print_accounting(env: dict[str, str], rows: list[Row], sizes: list[int],
                     since: float) -> None:
    print("\nGrid Engine accounting (qacct -j), every job of every round; per array task:")
    print(f"{'what':<20} {'tasks':>6} {'jobs':>5} {'med cpu ms':>11} {'mean cpu ms':>12}"
          f" {'med wall s':>11} {'mean wall s':>12} {'cpu ms/item':>12} {'exit!=0':>8}")
    for n in sizes:
        print(f"tasks: {n}")
        for row in rows:
            jobs = row.jobs.get(n, [])
            if not jobs:
                continue
            records = [r for job in jobs for r in qacct(env, job, since)]
            if not records:
                print(f"{row.name:<20} no accounting records for jobs {', '.join(jobs)}")
                continue
            cpu = [seconds(r["cpu"]) for r in records]
            wall = [seconds(r["ru_wallclock"]) for r in records]
            items = n * len(row.times.get(n, []))
            nonzero = sum(r.get("failed", "0").split()[0] != "0" or r.get("exit_status") != "0"
                          for r in records)
            print(f"{row.name:<20} {len(records):>6} {len(jobs):>5}"
                  f" {1000 * statistics.median(cpu):>11.1f} {1000 * statistics.mean(cpu):>12.1f}"
                  f" {statistics.median(wall):>11.1f} {statistics.mean(wall):>12.2f}"
                  f" {1000 * sum(cpu) / items:>12.2f} {nonzero:>8}")
            print(f"{'':<20} jobs {' '.join(jobs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="200,5000",
                        help="comma-separated array sizes (default: 200,5000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8,
                        help="workers for sheepdog's worker mode and for dask (default: 8)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows to run (default: all: {', '.join(ROWS)})")
    parser.add_argument("--peers-dir", type=Path, default=Path("/opt/sheepdog-bench"),
                        help="where the peers' venvs are made (world-readable)")
    parser.add_argument("--accounting", action="store_true",
                        help="print qacct's per-task cpu and wallclock for the rows' jobs")
    opts = parser.parse_args()
    opts.rows = chosen_rows(parser, opts.rows, ROWS)
    sizes = [int(n) for n in opts.tasks.split(",")]
    env = testbed()
    with tempfile.TemporaryDirectory(prefix="sheepdog-bench-ge-") as tmp:
        root = Path(tmp)
        bench = Bench(env, root, opts)
        os.environ["HOME"] = str(bench.home)
        os.environ["SHEEPDOG_HOME"] = str(root / "sheepdog-home")
        rows = bench.rows()
        notes = run_all(bench, rows, sizes, opts.repeats)
    if notes:
        print("peers: " + "; ".join(notes))
    for n in sizes:
        print_table(rows, n, opts.repeats)
    for row in rows:
        if row.name.startswith("dask") and bench.dask_detail:
            for n, detail in bench.dask_detail.items():
                firsts = [f for f, _ in detail if f is not None]
                alls = [a for _, a in detail if a is not None]
                if firsts and alls:
                    print(f"dask n={n}: first worker joined after"
                          f" {statistics.median(firsts):.2f} s, all {opts.workers} after"
                          f" {statistics.median(alls):.2f} s (medians)")
    if opts.accounting:
        print_accounting(env, rows, sizes, bench.started)


if __name__ == "__main__":
    main()
