"""Slurm: one array job per request (several past MaxArraySize), with sbatch on the head node.

The job script is a two-line ``/bin/sh`` script that ``exec``s the worker's
Python on the zipapp (or ``-m sheepdog.worker_bootstrap``): one interpreter
start per task. Every option goes on sbatch's command line, each word
shell-quoted: ``--parsable``, ``--array=1-N`` (``%K`` with ``max_running``),
``--job-name``, and ``--output``/``--error``/``--chdir`` in the job directory
unless ``slurm_opts`` sets them.

What Slurm says, and what sheepdog takes from it (checked on Slurm 22.05,
shared/testbed-notes.md item 14):

- ``squeue -h -j ID`` lists a job while it is pending or running. For a job
  that is over it prints nothing (exit 0) until MinJobAge, then exits 1 with
  "Invalid job id specified": both are the answer "ended". Anything else
  ("Unable to contact slurm controller") is "cannot tell", and the request
  waits.
- ``scancel ID`` of a finished job is not an error; sheepdog only ever
  cancels whole array jobs by the array job's id (``scancel 12_3`` of a job
  id that is not an array task exits 0 and does nothing).
- ``sacct`` tells how a task ended. Without slurmdbd it says "Slurm
  accounting storage is disabled": the fallback is ``scontrol show job``,
  which knows a finished job for MinJobAge, and the task's stderr file.
- ``--mem`` is a scheduling hint unless the site runs the cgroup plugin: the
  worker applies it itself as the task's address-space limit, as ``mem_grab``
  on Grid Engine.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex

from sheepdog.errors import ConfigError, SubmitError
from sheepdog.submitter.config import Settings
from sheepdog.submitter.remote import RemoteUnavailable, run_checked
from sheepdog.submitter.schedulers.base import ArrayJob, JobState
from sheepdog.submitter.schedulers.batch import BatchScheduler

SUBMIT_COMMAND = "sbatch"
CANCEL_COMMAND = "scancel"
#: Slurm's default MaxArraySize is 1001: indices 0..1000.
DEFAULT_MAX_ARRAY = 1000
#: Options sheepdog sets itself, with what to do instead; refused in slurm_opts.
FORCED = {
    "--array": "the array range is always 1-N (set 'max_running' for a % throttle)",
    "-a": "the array range is always 1-N (set 'max_running' for a % throttle)",
    "--parsable": "sheepdog reads the job id itself",
    "--wrap": "sheepdog writes the job script",
    "--wait": "sbatch would not return until the job ends; sheepdog waits itself",
    "-W": "sbatch would not return until the job ends; sheepdog waits itself",
}
#: Options sheepdog sets unless slurm_opts does: (long, short) forms.
DEFAULTED = {"output": ("--output", "-o"), "error": ("--error", "-e"),
             "chdir": ("--chdir", "-D"), "job-name": ("--job-name", "-J")}
#: What squeue/scancel say of a job id the controller no longer knows.
GONE = "Invalid job id specified"
#: What sacct says when the site runs no slurmdbd.
NO_ACCOUNTING = "accounting storage is disabled"
#: A job that will not run until someone acts (the Grid Engine Eqw of Slurm).
STUCK_REASONS = ("launch failed requeued held", "JobHeldAdmin")
#: Slurm memory units; a number without one is MiB.
_UNITS = {"": 2**20, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def render(python: str, zipapp: str | None, job_file: str) -> str:
    """The job script: ``/bin/sh`` exec'ing the worker, paths shell-quoted."""
    if zipapp is not None:  # unpacked once next to itself, bytecode cached
        worker = [python, zipapp, job_file]
    else:
        worker = [python, "-m", "sheepdog.worker_bootstrap", job_file]
    return "\n".join([
        "#!/bin/sh",
        "# sheepdog array job: every task runs worker_bootstrap for its $SLURM_ARRAY_TASK_ID.",
        "exec " + " ".join(shlex.quote(word) for word in worker),
        "",
    ])


def _words(options: tuple[str, ...]) -> list[list[str]]:
    return [shlex.split(opt) for opt in options]


def _name(words: list[str]) -> str:
    """'--mem' of ['--mem=2G'] or ['--mem', '2G']; '-p' of ['-p', 'short']."""
    return words[0].split("=", 1)[0] if words else ""


def _value(words: list[str]) -> str:
    first = words[0]
    if first.startswith("--") and "=" in first:
        return first.split("=", 1)[1]
    if not first.startswith("--") and len(first) > 2:  # '-pshort'
        return first[2:]
    return " ".join(words[1:])


def check_slurm_opts(options: tuple[str, ...]) -> None:
    for opt, words in zip(options, _words(options), strict=True):
        if not words or not words[0].startswith("-"):
            raise ConfigError(f"slurm_opts entry {opt!r} is not an option (e.g. '--time=1:00:00')")
        if _name(words) in FORCED:
            raise ConfigError(f"slurm_opts must not set {_name(words)}: {FORCED[_name(words)]}")
    memory_limit(options)


def parse_memory(value: str) -> int:
    """Bytes in a Slurm --mem value: 2G, 512M, 4096 (MiB), 1.5G."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", value.strip(), re.IGNORECASE)
    if not match:
        raise ConfigError(f"{value!r} is not a Slurm memory size like 2G or 4096M (--mem)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def memory_limit(options: tuple[str, ...]) -> int | None:
    """The RLIMIT_AS for workers from ``--mem`` (0, Slurm's "all of the node": none)."""
    for words in _words(options):
        if _name(words) == "--mem":
            limit = parse_memory(_value(words))
            return limit or None
    return None


def scale_memory(options: tuple[str, ...], factor: float) -> tuple[str, ...]:
    """``options`` with ``--mem`` times ``factor``, in whole MiB."""
    if factor == 1:
        return options
    scaled = []
    for opt, words in zip(options, _words(options), strict=True):
        if _name(words) == "--mem" and parse_memory(_value(words)):
            opt = f"--mem={math.ceil(parse_memory(_value(words)) * factor / 2**20)}M"
        scaled.append(opt)
    return tuple(scaled)


def sbatch_command(script_path: str, job_dir: str, name: str, size: int,
                   options: tuple[str, ...], max_running: int | None) -> str:
    """The sbatch command line, every word quoted: what sheepdog sets, then slurm_opts."""
    given = {_name(words) for words in _words(options)}
    array = f"1-{size}" + (f"%{max_running}" if max_running else "")
    args = [SUBMIT_COMMAND, "--parsable", f"--array={array}"]
    files = {"output": f"{job_dir}/%x.o%A.%a", "error": f"{job_dir}/%x.e%A.%a",
             "chdir": job_dir, "job-name": name}
    for key, forms in DEFAULTED.items():
        if not given & set(forms):
            args.append(f"--{key}={files[key]}")
    args += [word for words in _words(options) for word in words]
    return " ".join(shlex.quote(a) for a in [*args, script_path])


def parse_job_id(stdout: str) -> str:
    """The job id in sbatch --parsable output ('123' or '123;cluster')."""
    match = re.match(r"\s*(\d+)(;\S+)?\s*$", stdout)
    if not match:
        raise SubmitError(f"sbatch printed no job id: {stdout!r}")
    return match.group(1)


def array_limit_of(config: str) -> int:
    """Most tasks per array job, from ``scontrol show config``: indices stay below
    MaxArraySize, and SchedulerParameters' max_array_tasks caps the count."""
    size = re.search(r"^MaxArraySize\s*=\s*(\d+)", config, re.MULTILINE)
    limit = int(size.group(1)) - 1 if size else DEFAULT_MAX_ARRAY
    tasks = re.search(r"max_array_tasks=(\d+)", config)
    return min(limit, int(tasks.group(1))) if tasks else limit


def job_lines(stdout: str) -> list[tuple[str, str, str]]:
    """(job id, state, reason) per line of ``squeue -o '%i|%T|%r'``."""
    lines = []
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            lines.append((parts[0], parts[1], parts[2]))
    return lines


class Slurm(BatchScheduler):
    name = "slurm"
    title = "Slurm"
    options_key = "slurm_opts"
    cancel_command = CANCEL_COMMAND
    gone = GONE
    memory_limit = staticmethod(memory_limit)
    scale_memory = staticmethod(scale_memory)

    def check_options(self, settings: Settings) -> None:
        check_slurm_opts(settings.slurm_opts)

    def array_limit(self) -> int:
        result = self.remote.run("scontrol show config")
        return array_limit_of(result.stdout) if result.exit_status == 0 else DEFAULT_MAX_ARRAY

    def submit_part(self, job: ArrayJob, options: tuple[str, ...], job_dir: str,
                    job_file: str, part: int, size: int, app: str | None) -> str:
        settings = job.settings
        script_path = posixpath.join(job_dir, f"job-{job.label}-{part}.sh")
        self.remote.put(script_path, render(settings.worker_python, app, job_file).encode(),
                        0o700)
        command = sbatch_command(script_path, job_dir, f"sheepdog-{job.request_id}", size,
                                 options, settings.max_running)
        return parse_job_id(run_checked(self.remote, command))

    def cancel_queued(self, job_ids: list[str]) -> None:
        self.cancel(job_ids, "--state=PENDING")  # running workers end on their own

    def accounting(self, job_id: str, index: str) -> str:
        """sacct's record of task ``job_id``_``index``; else the controller's (scontrol),
        on a site without accounting, or before an array task's record has landed
        in slurmdbd (0.1-5 s after the task ended, on the testbed)."""
        result = self.remote.run(
            f"sacct -n -P -X -j {job_id}_{index} -o State,ExitCode,Elapsed,NodeList")
        line = result.stdout.strip().splitlines()[:1]
        if result.exit_status == 0 and line:
            state, code, elapsed, nodes = (line[0].split("|") + ["?"] * 4)[:4]
            return f"sacct: {state}, exit code {code}, ran {elapsed} on {nodes}"
        disabled = NO_ACCOUNTING in result.stderr + result.stdout
        if result.exit_status != 0 and not disabled:
            return ""
        shown = self.remote.run(f"scontrol -o show job {job_id}_{index}")
        fields = dict(word.split("=", 1) for word in shown.stdout.split() if "=" in word)
        if shown.exit_status != 0 or "JobState" not in fields:
            return ""
        source = "no Slurm accounting" if disabled else "not in sacct yet"
        return (f"scontrol ({source}): {fields['JobState']}, exit code"
                f" {fields.get('ExitCode', '?')}, reason {fields.get('Reason', '?')}")

    def state(self, job_ids: list[str]) -> JobState:
        active: set[str] = set()
        ended: set[str] = set()
        unknown = waiting = None
        for job_id in self.checked_job_ids(job_ids):
            try:
                result = self.remote.run(f"squeue -h -j {job_id} -o '%i|%T|%r'")
            except RemoteUnavailable as exc:
                return JobState(frozenset(active), frozenset(ended), unknown=str(exc))
            lines = job_lines(result.stdout)
            if result.exit_status != 0:
                if GONE in result.stderr + result.stdout:
                    ended.add(job_id)
                else:
                    said = (result.stderr.strip() or result.stdout.strip())[-300:]
                    unknown = f"squeue -j {job_id} on {self.remote.where}: {said}"
                continue
            if not lines:
                ended.add(job_id)
                continue
            active.add(job_id)
            for task, job_state, reason in lines:
                if any(stuck in reason for stuck in STUCK_REASONS):
                    return JobState(frozenset(active), frozenset(ended), unknown, problem=(
                        f"Slurm job {task} is {job_state.lower()}: {reason}"))
            if not any(s in ("RUNNING", "COMPLETING") for _, s, _ in lines):
                waiting = f"Slurm job {job_id} is waiting: {lines[0][2]}"
        return JobState(frozenset(active), frozenset(ended), unknown, waiting=waiting)
