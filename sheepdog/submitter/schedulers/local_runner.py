"""The process that runs a local array job (started by ``LocalScheduler.submit``).

``python -m sheepdog.submitter.schedulers.local_runner
--detach JOB_FILE TASKS_FILE WORKERS PYTHON LOG``

With ``--detach`` it prints the job id of a daemon that does the work and
exits at once, so the runner belongs to no one's process tree (its process
group id is its pid, for ``cancel``) and its output goes to LOG.

It runs the tasks listed in TASKS_FILE (a JSON list of indices) that still
have no outcome, at most WORKERS at a time; then it takes the tasks waiting
for a retry, until none is left. A worker that exits without an outcome
(killed, crashed, could not start) has its attempt recorded as lost, with the
exit status and the tail of its output: it is retried if attempts are left,
else final. The runner speaks to the broker as the workers do, with the
request's own credentials.
"""

from __future__ import annotations

import json
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

from sheepdog.broker import keys, resp, scripts
from sheepdog.broker.tasks import TaskChannel, signed_fields
from sheepdog.submitter.schedulers.local import job_id_for
from sheepdog.worker_bootstrap.capture import tail
from sheepdog.worker_bootstrap.environment import JOB_ID_VARS, TASK_INDEX_VARS, JobFile


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
    def __init__(self, job_file: Path, indices: list[int], workers: int, python: str) -> None:
        self.job_file = job_file
        self.job = JobFile.load(job_file)
        self.indices = indices
        self.workers = workers
        self.python = python
        self.client = resp.connect(self.job.broker_url, patience=self.job.broker_patience)
        self.channel = TaskChannel(self.client)
        self.key = bytes.fromhex(self.job.key)
        self.host = socket.gethostname()

    def _start(self, index: int) -> Running | None:
        env = dict(os.environ, **{TASK_INDEX_VARS["local"]: str(index),
                                  JOB_ID_VARS["local"]: str(os.getpid())})
        output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in _finished
        command = [self.python, "-m", "sheepdog.worker_bootstrap", str(self.job_file)]
        try:
            proc = subprocess.Popen(
                command, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
            )
        except OSError as exc:
            output.close()
            self._lost(index, None, f"cannot start the worker with {self.python!r}: {exc}."
                       " Check the 'shell' config key.", "")
            return None
        return Running(index, proc, output)

    def _lost(self, index: int, pid: int | None, reason: str, output: str) -> None:
        """Record the attempt of ``index`` that worker ``pid`` was running as lost."""
        claim = self.channel.claim_of(self.job.request_id, index)
        if claim is not None and claim.holder != "-":
            if pid is None or claim.pid != str(pid):
                return  # another worker holds it: not ours to judge
            holder, attempt = claim.holder, claim.attempt
        else:  # the worker died before it claimed the task: this was its next attempt
            holder, attempt = "-", (claim.attempt if claim else 0) + 1
        fields = signed_fields(
            self.key, self.job.token, index, attempt, "lost", "",
            {"error": reason, "stderr": output, "host": self.host, "pid": str(pid or ""),
             "job": f"{os.getpid()}.{index}"},
        )
        self.channel.record(self.job.request_id, self.job.token, index, holder=holder,
                            attempt=attempt, status="lost", cause="", fields=fields)

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
        self._lost(run.index, run.proc.pid, reason, said)

    def _todo(self, *, listed: bool = True) -> Iterator[int]:
        """Listed tasks without an outcome, then retries as they come, until none is left."""
        if listed:
            pending = {int(i) for i in self.client.execute_command(
                "HKEYS", keys.tasks(self.job.request_id))}
            yield from (i for i in self.indices if i in pending)
        while True:
            flat = self.channel.eval_script(scripts.TAKE_RETRIES, self.job.request_id,
                                            [self.job.token])
            if not flat:
                return
            yield from sorted(int(flat[i]) for i in range(0, len(flat), 2))

    def run(self) -> None:
        todo = self._todo()
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
                if self._retries_waiting():
                    todo = self._todo(listed=False)
                    continue
                return
            pid, status = os.wait()
            run = running.pop(pid, None)
            if run is not None:
                run.proc.returncode = os.waitstatus_to_exitcode(status)
                self._finished(run)

    def _retries_waiting(self) -> bool:
        return bool(self.client.execute_command("HLEN", keys.retry(self.job.request_id)))


def _detach(log: str) -> None:
    """Double fork: the caller gets the daemon's job id on stdout and returns at once."""
    if os.fork():
        os._exit(0)  # first child: its exit orphans the daemon to init
    os.setsid()
    pid = os.fork()
    if pid:
        print(job_id_for(pid), flush=True)
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
        job_file, tasks_file, workers, python, log = args[1:]
        _detach(log)
    else:
        job_file, tasks_file, workers, python = args
    indices = json.loads(Path(tasks_file).read_text())
    runner = LocalRunner(Path(job_file), indices, int(workers), python)
    try:
        runner.run()
    finally:
        runner.client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
