"""The process that runs a local array job (started by ``LocalScheduler.submit``).

``python -m sheepdog.submitter.schedulers.local_runner
--detach JOB_FILE N_TASKS WORKERS PYTHON LOG``

With ``--detach`` it prints the pid of a daemon that does the work and exits
at once, so the runner belongs to no one's process tree (its process group id
is that pid, for ``cancel``) and its output goes to LOG.

It runs every index that still has no outcome, at most WORKERS at a time. A
worker that exits without recording an outcome (killed, crashed, could not
start) gets its task recorded as lost, with the exit status and the tail of
its output, so nothing waits for it for ever.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sheepdog.broker.client import Broker
from sheepdog.worker_bootstrap.capture import tail
from sheepdog.worker_bootstrap.environment import TASK_INDEX_VARS, JobFile


@dataclass
class Running:
    index: int
    proc: subprocess.Popen[bytes]
    output: IO[bytes]


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class LocalRunner:
    def __init__(self, job_file: Path, n_tasks: int, workers: int, python: str) -> None:
        self.job_file = job_file
        self.job = JobFile.load(job_file)
        self.n_tasks = n_tasks
        self.workers = workers
        self.python = python
        self.broker = Broker.from_url(self.job.broker_url, attempts=self.job.connect_attempts)
        self.env_var = TASK_INDEX_VARS["local"]

    def _start(self, index: int) -> Running | None:
        env = dict(os.environ, **{self.env_var: str(index)})
        output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _finished
        command = [self.python, "-m", "sheepdog.worker_bootstrap", str(self.job_file)]
        try:
            proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        except OSError as exc:
            output.close()
            self._lost(index, f"cannot start the worker with {self.python!r}: {exc}."
                       " Check the 'shell' config key.", "", None)
            return None
        return Running(index, proc, output)

    def _lost(self, index: int, reason: str, output: str, pid: int | None) -> None:
        self.broker.record(
            self.job.request_id, index, "lost",
            {"error": reason, "stderr": output, "host": socket.gethostname(),
             "pid": str(pid or "")},
        )

    def _finished(self, run: Running) -> None:
        code = run.proc.returncode
        said = tail(run.output)
        run.output.close()
        if code == 0:
            return
        hint = ""
        if "No module named" in said:
            hint = f" Is sheepdog installed for {self.python}? (the 'shell' config key)"
        reason = (
            f"worker process for task {run.index} {exit_reason(code)} without an outcome.{hint}"
        )
        self._lost(run.index, reason, said, run.proc.pid)

    def _indices(self) -> Iterator[int]:
        pending = set(self.broker.pending_indices(self.job.request_id))
        yield from (i for i in range(1, self.n_tasks + 1) if i in pending)

    def run(self) -> None:
        self.broker.set_meta(self.job.request_id, runner=f"{socket.gethostname()} {os.getpid()}")
        todo = self._indices()
        running: dict[int, Running] = {}
        while True:
            while len(running) < self.workers:
                index = next(todo, None)
                if index is None:
                    break
                run = self._start(index)
                if run is not None:
                    running[run.proc.pid] = run
            if not running:
                return
            pid, status = os.wait()
            run = running.pop(pid, None)
            if run is not None:
                run.proc.returncode = os.waitstatus_to_exitcode(status)
                self._finished(run)


def _detach(log: str) -> None:
    """Double fork: the caller gets the daemon's pid on stdout and returns at once."""
    if os.fork():
        os._exit(0)  # first child: its exit orphans the daemon to init
    os.setsid()
    pid = os.fork()
    if pid:
        print(pid, flush=True)
        os._exit(0)
    os.setpgid(0, 0)  # its own process group, which cancel kills with every worker in it
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--detach":
        job_file, n_tasks, workers, python, log = args[1:]
        _detach(log)
    else:
        job_file, n_tasks, workers, python = args
    runner = LocalRunner(Path(job_file), int(n_tasks), int(workers), python)
    try:
        runner.run()
    finally:
        runner.broker.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
