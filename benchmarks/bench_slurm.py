"""Time from ``map`` to results for an array on the test cluster's Slurm, next to Slurm's floor.

Needs the cluster from ``testbed/up`` with Slurm (22.05, one node ``vm``, 8
CPUs, ``sched_interval=1``, MaxArraySize 251: up to 250 tasks fit in one
array). The model is ``bench_gridengine.py``, whose rows, rounds, table and
accounting this reuses: for each ``--tasks`` N (default 200), ``--repeats``
rounds (default 5), the rows interleaved (their order rotates every round);
every row maps the trivial ``add(a, b)`` over N tuples (sheepdog rows check
the N results); the table gives medians and the ratio to the floor. A row that
cannot run prints ``skipped: <reason>``; the others still run.

Rows, and what each times:

* ``sbatch python`` (the floor; ratios are against it): over the testbed sshd
  with OpenSSH, as the submit user, one shell on the head node runs
  ``sbatch --parsable --array=1-N -o /dev/null -e /dev/null noop-python.sh``
  (``#!/bin/sh`` + ``exec /usr/bin/python3 -c pass``: a no-op job in the
  Python the workers use), then polls ``squeue -h -j ID`` every 0.2 s until
  the job is gone (empty output, or "Invalid job id specified" after
  MinJobAge). Timed: from starting ssh to its exit. Not ``sbatch --wait``: it
  polls with growing sleeps (testbed notes, item 14).
* ``sbatch /bin/true``: the same with ``exec /bin/true``: Slurm alone.
* ``sheepdog tasks``: ``sheepdog.map(add, N tuples, config)`` with
  ``scheduler: slurm``, ``workers: 0`` (one array task per item,
  ``--array=1-N``): SSH with paramiko as the submit user, worker Python probed,
  zipapp checked, N tasks pushed to the testbed Redis, workers under the node's
  bare /usr/bin/python3 from the zipapp (sheepdog's job script is a ``/bin/sh``
  that ``exec``s it, as the floor's), outcomes collated into a fresh SQLite
  dbfile. Timed: from the call to its return (``bench_gridengine.Bench.sheepdog``).
* ``sheepdog workers=K`` (``--workers``, default 8): the same with
  ``workers: K``: one array job ``--array=1-K`` of K workers that claim tasks
  from the broker until none are left.
* ``sbatch --wait`` (shown for the testbed note; not a floor): the floor's job
  with ``sbatch --wait`` instead of polling: sbatch returns when the job ends,
  polling the controller with growing sleeps.

Before every timed run the bench waits, untimed, until neither Slurm nor Grid
Engine lists any job of anyone (``squeue -h``, ``qstat -u '*'``; at most
``--idle-wait`` seconds, default 900): the testbed is shared, and a test run
elsewhere would hold the node's CPUs. The header says how many runs started
on a busy cluster anyway. After each timed run it waits, untimed, until the
row's own jobs have left squeue (polled every 0.2 s on the head node): the
``linger s`` column, the median of that wait.

Columns, as bench_gridengine's: median, min and max seconds; the median per
item mapped; ``arr tasks``: array tasks the row used (for sheepdog: how many
distinct array tasks reported outcomes in the last round); ``x floor``;
``linger s``.

``--accounting``: after the runs, ``sacct -P -j IDS`` (over ssh, as the submit
user; the testbed runs slurmdbd) for every job the rows submitted, per row:
the array tasks that ran, jobs, per array task the median and mean TotalCPU
(user + system of the batch step, ms resolution) and ElapsedRaw (whole
seconds: a task under a second shows 0, so read the mean), cpu summed over all
tasks divided by the items mapped (N times the rounds), the median over jobs
of tasks started per second (the tasks over the seconds from the first Start
to the last, both inclusive: Slurm's dispatch rate), tasks that ended other
than COMPLETED 0:0 (``not ok``; their states and exit codes are listed after
the job ids), and array tasks that never started (``not run``: a pilot not
needed any more, cancelled while pending).

Run: ``.venv/bin/python benchmarks/bench_slurm.py [--tasks 200] [--repeats 5]
[--rows ...] [--workers 8] [--accounting]``
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench_gridengine import (
    Bench,
    Row,
    Skip,
    limit,
    print_table,
    run_all,
    ssh,
    testbed,
)
from bench_local import chosen_rows

ROWS = ("sbatch python", "sbatch /bin/true", "sheepdog tasks", "sheepdog workers",
        "sbatch --wait")
#: Directory under the submit user's home for the floor's job scripts (removed at the end).
REMOTE_DIR = ".sheepdog-bench-slurm"
#: sh on the head node: submit, print the job id, poll squeue every 0.2 s until it is gone.
#: Any other squeue failure ("Unable to contact slurm controller") is "cannot tell": poll on.
SUBMIT_AND_POLL = """\
jid=$(sbatch --parsable --array=1-{n} -o /dev/null -e /dev/null {script}) || exit 1
jid=${{jid%%;*}}
echo "$jid"
end=$(( $(date +%s) + {timeout} ))
while [ "$(date +%s)" -lt "$end" ]; do
  out=$(squeue -h -j "$jid" -o %i 2>&1) && [ -z "$out" ] && exit 0
  case "$out" in *"Invalid job id specified"*) exit 0;; esac
  sleep 0.2
done
echo "still in squeue after {timeout} s" >&2
exit 3
"""
#: sh on the head node: seconds until squeue lists none of the given array jobs (0.2 s polls).
WAIT_GONE = """\
t0=$(date +%s.%N); end=$(( $(date +%s) + {timeout} ))
while [ "$(date +%s)" -lt "$end" ]; do
  if out=$(squeue -h -u "$USER" -o %i 2>/dev/null); then
    echo "$out" | cut -d_ -f1 | grep -qx {patterns} || break
  fi
  sleep 0.2
done
awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {{ print b - a }}'
"""
#: sh on the head node: "busy" while any job of anyone is in squeue or qstat.
BUSY = ("{ squeue -h -o %i 2>/dev/null; command -v qstat >/dev/null && qstat -u '*'; }"
        " | grep -q . && echo busy || echo idle")


class SlurmBench(Bench):
    scheduler = "slurm"

    def __init__(self, env: dict[str, str], root: Path, opts: argparse.Namespace) -> None:
        super().__init__(env, root, opts)
        self.busy_starts = 0
        self.remote_dir = ""

    def prepare_scripts(self) -> str:
        """The floor's job scripts on the head node (once)."""
        if self.remote_dir:
            return ""
        if self.env.get("SHEEPDOG_TESTBED_SLURM") != "1":
            raise Skip("the testbed has no Slurm (SHEEPDOG_TESTBED_SLURM is not 1)")
        home = ssh(self.env, "echo $HOME").stdout.strip()
        self.remote_dir = f"{home}/{REMOTE_DIR}"
        python = self.env["SHEEPDOG_TESTBED_BARE_PYTHON"]
        for name, command in (("noop-python.sh", f"{shlex.quote(python)} -c pass"),
                              ("noop-true.sh", "/bin/true")):
            text = f"#!/bin/sh\nexec {command}\n"
            path = shlex.quote(f"{self.remote_dir}/{name}")
            ssh(self.env, f"mkdir -p {shlex.quote(self.remote_dir)} && printf %s"
                          f" {shlex.quote(text)} > {path} && chmod 700 {path}")
        version = ssh(self.env, "sbatch --version", check=False).stdout.strip()
        return version

    def sbatch(self, script: str, wait: bool = False
               ) -> Callable[[int, int], tuple[float, list[str]]]:
        def run(n: int, _round: int) -> tuple[float, list[str]]:
            path = shlex.quote(f"{self.remote_dir}/{script}")
            if wait:
                command = (f"timeout {limit(n):.0f} sbatch --parsable --wait --array=1-{n}"
                           f" -o /dev/null -e /dev/null {path}")
            else:
                command = SUBMIT_AND_POLL.format(n=n, script=path, timeout=f"{limit(n):.0f}")
            started = time.monotonic()
            done = ssh(self.env, command, timeout=limit(n) + 30, check=False)
            elapsed = time.monotonic() - started
            match = re.match(r"\s*(\d+)", done.stdout)
            jobs = [match.group(1)] if match else []
            if done.returncode != 0:
                if jobs:
                    ssh(self.env, f"scancel {jobs[0]}", check=False)
                said = (done.stderr.strip() or done.stdout.strip()).splitlines()
                raise RuntimeError(f"exit {done.returncode}: {said[-1] if said else ''}")
            return elapsed, jobs
        return run

    def prepare_sheepdog(self) -> str:
        self.prepare_scripts()
        return ""

    def prepare_workers_slurm(self) -> str:
        self.prepare_scripts()
        return self.prepare_workers()

    def rows(self) -> list[Row]:
        k = self.opts.workers
        table = {
            "sbatch python": Row("sbatch python", self.sbatch("noop-python.sh"),
                                 self.prepare_scripts),
            "sbatch /bin/true": Row("sbatch /bin/true", self.sbatch("noop-true.sh"),
                                    self.prepare_scripts),
            "sheepdog tasks": Row("sheepdog tasks", self.sheepdog(0), self.prepare_sheepdog),
            "sheepdog workers": Row(f"sheepdog workers={k}", self.sheepdog(k),
                                    self.prepare_workers_slurm),
            "sbatch --wait": Row("sbatch --wait", self.sbatch("noop-python.sh", wait=True),
                                 self.prepare_scripts),
        }
        return [table[name] for name in self.opts.rows]

    def before_run(self) -> None:
        """Wait (untimed) for a cluster with no job of anyone on it."""
        started = time.monotonic()
        while time.monotonic() - started < self.opts.idle_wait:
            if ssh(self.env, BUSY, check=False).stdout.strip() == "idle":
                waited = time.monotonic() - started
                if waited > 2:
                    print(f"    (waited {waited:.0f} s for an idle cluster)", file=sys.stderr)
                return
            time.sleep(1)
        self.busy_starts += 1
        print(f"    cluster still busy after {self.opts.idle_wait:.0f} s: running anyway",
              file=sys.stderr)

    def wait_gone(self, job_ids: list[str]) -> float:
        if not job_ids:
            return 0.0
        patterns = " ".join(f"-e {int(j)}" for j in job_ids)
        done = ssh(self.env, WAIT_GONE.format(timeout=300, patterns=patterns), timeout=330,
                   check=False)
        try:
            return float(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return float("nan")

    def cleanup(self) -> None:
        if self.remote_dir:
            ssh(self.env, f"rm -rf {shlex.quote(self.remote_dir)}", check=False)


# -- accounting ---------------------------------------------------------------


def cpu_seconds(value: str) -> float:
    """Seconds in sacct's TotalCPU: [D-][HH:]MM:SS[.mmm]."""
    days, _, clock = value.rpartition("-")
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total + 86400 * int(days or 0)


def stamp(value: str) -> float | None:
    """Epoch seconds of sacct's local time ``2026-11-22T09:36:22`` (None: Unknown/None)."""
    try:
        return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def sacct(env: dict[str, str], job_ids: list[str], since: float) -> list[dict[str, str]]:
    """sacct's allocation record of every array task of ``job_ids`` submitted after ``since``
    (steps skipped: the allocation line carries the batch step's TotalCPU)."""
    fields = ["JobID", "State", "ExitCode", "TotalCPU", "ElapsedRaw", "Submit", "Start"]
    records = []
    for first in range(0, len(job_ids), 50):
        ids = ",".join(str(int(j)) for j in job_ids[first:first + 50])
        said = ssh(env, f"sacct -n -P -j {ids} -o {','.join(fields)}", check=False, timeout=300)
        for line in said.stdout.splitlines():
            record = dict(zip(fields, line.split("|"), strict=False))
            if "." in record["JobID"] or len(record) < len(fields):
                continue
            submitted = stamp(record["Submit"])
            if submitted is not None and submitted >= since - 2:  # ids restart with the db
                records.append(record)
    return records


def settled_sacct(env: dict[str, str], job_ids: list[str], since: float) -> list[dict[str, str]]:
    """``sacct`` once slurmdbd has caught up: asked again every 2 s (for at most 60 s) until
    two answers hold as many records, none of them pending or running."""
    records = sacct(env, job_ids, since)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(2)
        again = sacct(env, job_ids, since)
        if len(again) == len(records) and not any(
                r["State"] in ("PENDING", "RUNNING", "COMPLETING") for r in again):
            return again
        records = again
    return records


def starts_per_second(records: list[dict[str, str]]) -> float | None:
    """Tasks over the whole seconds from the first Start to the last (inclusive)."""
    starts = [s for s in (stamp(r["Start"]) for r in records) if s is not None]
    return len(starts) / (max(starts) - min(starts) + 1) if starts else None


def print_accounting(env: dict[str, str], rows: list[Row], sizes: list[int],
                     since: float) -> None:
    print("\nSlurm accounting (sacct -j), every job of every round; per array task:")
    print(f"{'what':<20} {'tasks':>6} {'jobs':>5} {'med cpu ms':>11} {'mean cpu ms':>12}"
          f" {'med wall s':>11} {'mean wall s':>12} {'cpu ms/item':>12} {'starts/s':>9}"
          f" {'not ok':>7} {'not run':>8}")
    for n in sizes:
        print(f"tasks: {n}")
        for row in rows:
            jobs = row.jobs.get(n, [])
            if not jobs:
                continue
            records = settled_sacct(env, jobs, since)
            ran = [r for r in records if stamp(r["Start"]) is not None]
            if not ran:
                print(f"{row.name:<20} no accounting records for jobs {', '.join(jobs)}")
                continue
            cpu = [cpu_seconds(r["TotalCPU"]) for r in ran]
            wall = [float(r["ElapsedRaw"] or 0) for r in ran]
            rates = [rate for job in jobs if (rate := starts_per_second(
                [r for r in ran if r["JobID"].split("_")[0] == job])) is not None]
            items = n * len(row.times.get(n, []))
            not_ok = Counter(f"{r['State']} {r['ExitCode']}" for r in ran
                             if r["State"] != "COMPLETED" or r["ExitCode"] != "0:0")
            print(f"{row.name:<20} {len(ran):>6} {len(jobs):>5}"
                  f" {1000 * statistics.median(cpu):>11.1f} {1000 * statistics.mean(cpu):>12.1f}"
                  f" {statistics.median(wall):>11.1f} {statistics.mean(wall):>12.2f}"
                  f" {1000 * sum(cpu) / items:>12.2f}"
                  f" {statistics.median(rates) if rates else 0:>9.1f}"
                  f" {sum(not_ok.values()):>7} {len(records) - len(ran):>8}")
            print(f"{'':<20} jobs {' '.join(jobs)}"
                  + "".join(f"; {count} {what}" for what, count in sorted(not_ok.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="200",
                        help="comma-separated array sizes, at most 250 (default: 200)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=8,
                        help="workers for sheepdog's worker mode (default: 8)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated rows to run (default: all: {', '.join(ROWS)})")
    parser.add_argument("--idle-wait", type=float, default=900.0,
                        help="longest untimed wait for an idle cluster before each run")
    parser.add_argument("--accounting", action="store_true",
                        help="print sacct's per-task cpu and elapsed for the rows' jobs")
    opts = parser.parse_args()
    opts.rows = chosen_rows(parser, opts.rows, ROWS)
    sizes = [int(n) for n in opts.tasks.split(",")]
    env = testbed()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}  load at start:"
          f" {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sheepdog-bench-slurm-") as tmp:
        root = Path(tmp)
        bench = SlurmBench(env, root, opts)
        os.environ["HOME"] = str(bench.home)
        os.environ["SHEEPDOG_HOME"] = str(root / "sheepdog-home")
        rows = bench.rows()
        try:
            notes = run_all(bench, rows, sizes, opts.repeats)
        finally:
            bench.cleanup()
    print(f"load at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
          f"  runs started on a busy cluster: {bench.busy_starts}")
    if notes:
        print("slurm: " + "; ".join(notes))
    for n in sizes:
        print_table(rows, n, opts.repeats, floor_name="sbatch python",
                    tasks_label="arr tasks")
    if opts.accounting:
        print_accounting(env, rows, sizes, bench.started)


if __name__ == "__main__":
    main()
