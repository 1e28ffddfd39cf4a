"""Time from ``map`` to results for an array on the test cluster, next to Grid Engine's floor.

Needs the cluster from ``testbed/up`` (root on Debian). Side by side, in one run:

* ``sheepdog``: ``sheepdog.map(add, N tuples)`` through sshd with paramiko as the
  submit user, workers under the node's bare /usr/bin/python3 from the zipapp,
  outcomes collected into SQLite: from the call to the last result.
* ``qsub python``: a bare ``qsub -sync y -t 1-N -b y /usr/bin/python3 -c pass``
  over the same sshd with OpenSSH: the honest floor - an N-task array of a
  no-op job in the same Python the workers use. The ratios are against it.
* ``qsub /bin/true``: the same with ``/bin/true``: the scheduler alone, no Python.

Run: ``.venv/bin/python benchmarks/bench_gridengine.py [--tasks 200] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import sheepdog

ENV_FILE = Path("/etc/sheepdog-testbed/env")


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


def time_sheepdog(env: dict[str, str], root: Path, n: int, run: int) -> float:
    config = {"host": "testbed", "broker_url": env["SHEEPDOG_TESTBED_BROKER_URL"],
              "shell": env["SHEEPDOG_TESTBED_BARE_PYTHON"], "dbfile": str(root / f"{run}.sqlite")}
    args = [(i, 1) for i in range(n)]
    started = time.monotonic()
    out = sheepdog.map(add, args, config, verbose=False, raise_errors=True)
    elapsed = time.monotonic() - started
    assert out == [i + 1 for i in range(n)]
    return elapsed


def time_qsub(env: dict[str, str], n: int, job: str) -> float:
    command = [
        "ssh", "-p", env["SHEEPDOG_TESTBED_SSH_PORT"], "-i", env["SHEEPDOG_TESTBED_SSH_KEY"],
        "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={env['SHEEPDOG_TESTBED_KNOWN_HOSTS']}",
        f"{env['SHEEPDOG_TESTBED_SSH_USER']}@{env['SHEEPDOG_TESTBED_SSH_HOST']}",
        f"timeout 300 qsub -sync y -t 1-{n} -b y -o /dev/null -e /dev/null {job}",
    ]
    started = time.monotonic()
    subprocess.run(command, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    env = testbed()
    with tempfile.TemporaryDirectory(prefix="sheepdog-bench-ge-") as tmp:
        root = Path(tmp)
        os.environ["HOME"] = str(ssh_home(env, root))
        os.environ["SHEEPDOG_HOME"] = str(root / "sheepdog-home")
        python = f"{env['SHEEPDOG_TESTBED_BARE_PYTHON']} -c pass"
        rows: dict[str, list[float]] = {"sheepdog.map": [], "qsub python": [],
                                        "qsub /bin/true": []}
        for run in range(opts.repeats):  # interleaved, so drift hits all alike
            rows["qsub python"].append(time_qsub(env, opts.tasks, python))
            rows["qsub /bin/true"].append(time_qsub(env, opts.tasks, "/bin/true"))
            rows["sheepdog.map"].append(time_sheepdog(env, root, opts.tasks, run))
    floor = statistics.median(rows["qsub python"])
    print(f"cores: {os.cpu_count()}  tasks: {opts.tasks}  repeats: {opts.repeats}  (8 slots)")
    print(f"{'what':<15} {'median s':>9} {'min s':>7} {'max s':>7} {'x floor':>8}")
    for name, times in rows.items():
        median = statistics.median(times)
        print(f"{name:<15} {median:>9.2f} {min(times):>7.2f} {max(times):>7.2f}"
              f" {median / floor:>8.2f}")


if __name__ == "__main__":
    main()
