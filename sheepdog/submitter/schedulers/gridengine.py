"""Grid Engine: one array job per request, submitted with qsub on the head node.

The job script is a Python script (run by ``shell``, passed as ``-S``): its
``#$`` lines carry ``-S``, ``-t 1-N``, ``-N`` and one line per ``ge_opts``
entry; its body starts worker_bootstrap, from the zipapp or from an installed
sheepdog. Paths never go into ``#$`` lines (Grid Engine's quoting there is
not to be relied on): they are Python literals in the body, and shell-quoted
arguments of qsub (``-o``, ``-e``, ``-wd``) unless ``ge_opts`` sets those.

A retry runs some tasks only. qsub takes one ``-t n-m:s`` range, so a retry
job is ``-t 1-K`` over a job file that lists the K tasks (task-list
indirection): array task i runs ``indices[i - 1]``. What is shared with Slurm
(job files, the zipapp, splitting at ``max_aj_tasks``) is in ``batch.py``.

What Grid Engine says, and what sheepdog takes from it (checked on SoGE 8.1.9):
``qstat -j ID`` exits 0 while the job is known; exits 1 with "Following jobs
do not exist" once it is over - the only answer taken as "ended"; and exits 1
with "unable to contact/send message to qmaster" (or anything else) when the
qmaster is down: that is "cannot tell", and the request waits.
"""

from __future__ import annotations

import math
import posixpath
import re
import shlex
from dataclasses import dataclass

from sheepdog.errors import ConfigError, SubmitError
from sheepdog.submitter.config import Settings
from sheepdog.submitter.remote import RemoteUnavailable, run_checked
from sheepdog.submitter.schedulers.base import ArrayJob, JobState
from sheepdog.submitter.schedulers.batch import BatchScheduler

SUBMIT_COMMAND = "qsub"
CANCEL_COMMAND = "qdel"
#: Grid Engine's default max_aj_tasks, used when qconf cannot tell.
DEFAULT_MAX_ARRAY = 75000
#: Options sheepdog always sets itself; refused in ge_opts.
FORCED = {"-t": "the array range is always 1-N", "-S": "set the 'shell' config key instead"}
#: Options sheepdog sets unless ge_opts does.
DEFAULTED = ("-o", "-e", "-wd", "-cwd", "-N", "-j")
#: Resources whose value becomes the worker's address-space limit (RLIMIT_AS).
MEMORY_RESOURCES = ("mem_grab",)
#: Memory resources multiplied for a retry with more memory (retry_memory_factor).
SCALED_RESOURCES = ("mem_grab", "h_vmem", "s_vmem", "h_rss", "s_rss", "mem_free",
                    "virtual_free")
#: What qstat says of a job that is over (finished or deleted).
GONE = "do not exist"
_UNITS = {"": 1, "k": 1000, "K": 1024, "m": 1000**2, "M": 1024**2, "g": 1000**3, "G": 1024**3,
          "t": 1000**4, "T": 1024**4}


@dataclass(frozen=True)
class JobScript:
    """Everything the job script says; ``render`` turns it into text."""

    shell: str
    first: int
    last: int
    name: str
    ge_opts: tuple[str, ...]
    job_file: str  # absolute path on the cluster
    zipapp: str | None  # absolute path of the worker zipapp; None: sheepdog is installed


def render(script: JobScript) -> str:
    lines = [
        f"#!{script.shell}",
        f"#$ -S {script.shell}",
        f"#$ -t {script.first}-{script.last}",
        f"#$ -N {script.name}",
        *(f"#$ {opt}" for opt in script.ge_opts),
        "# sheepdog array job: every task runs worker_bootstrap for its $SGE_TASK_ID.",
        "import os",
        "# Grid Engine starts the -S interpreter as a bare 'python', which hides a venv",
        "# and leaves sys.executable empty: the worker is started again, by full path.",
    ]
    if script.zipapp is not None:
        # The zipapp unpacks itself once and starts from there, bytecode cached.
        worker = [script.shell, script.zipapp, script.job_file]
    else:
        worker = [script.shell, "-m", "sheepdog.worker_bootstrap", script.job_file]
    lines += [f"os.execv({script.shell!r}, {worker!r})", ""]
    return "\n".join(lines)


def qsub_command(script_path: str, job_dir: str, ge_opts: tuple[str, ...]) -> str:
    """The qsub command line: -terse, and defaults for what ge_opts leaves unset."""
    given = {shlex.split(opt)[0] for opt in ge_opts if opt.strip()}
    args = [SUBMIT_COMMAND, "-terse"]
    if "-o" not in given:
        args += ["-o", job_dir + "/"]
    if not given & {"-e", "-j"}:
        args += ["-e", job_dir + "/"]
    if not given & {"-wd", "-cwd"}:
        args += ["-wd", job_dir]
    return " ".join(shlex.quote(a) for a in [*args, script_path])


def parse_job_id(stdout: str) -> str:
    """The job id in qsub -terse output ('123' or, for an array, '123.1-4:1')."""
    match = re.match(r"\s*(\d+)", stdout)
    if not match:
        raise SubmitError(f"qsub printed no job id: {stdout!r}")
    return match.group(1)


def check_ge_opts(ge_opts: tuple[str, ...], shell: str) -> None:
    if any(c.isspace() for c in shell):
        raise ConfigError(
            f"shell {shell!r} contains white space, which Grid Engine's -S cannot carry;"
            " use a path without spaces (a symlink will do)"
        )
    for opt in ge_opts:
        words = shlex.split(opt)
        if not words or not words[0].startswith("-"):
            raise ConfigError(f"ge_opts entry {opt!r} is not an option (e.g. '-l h_rt=1:00:00')")
        if words[0] in FORCED:
            raise ConfigError(f"ge_opts must not set {words[0]}: {FORCED[words[0]]}")


def parse_memory(value: str) -> int:
    """Bytes in a Grid Engine memory value: 2G, 512M, 1.5g, 1000."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)", value.strip())
    if not match:
        raise ConfigError(f"{value!r} is not a Grid Engine memory value like 2G or 512M")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def memory_limit(options: tuple[str, ...]) -> int | None:
    """The RLIMIT_AS for workers from ``-l mem_grab=...``, if any."""
    for opt in options:
        words = shlex.split(opt)
        if words[:1] != ["-l"]:
            continue
        for resource in ",".join(words[1:]).split(","):
            name, _, value = resource.partition("=")
            if name.strip() in MEMORY_RESOURCES:
                return parse_memory(value)
    return None


def scale_memory(options: tuple[str, ...], factor: float) -> tuple[str, ...]:
    """``options`` (ge_opts) asking for ``factor`` times the memory, in whole MiB."""
    if factor == 1:
        return options
    scaled = []
    for opt in options:
        words = shlex.split(opt)
        if words[:1] != ["-l"]:
            scaled.append(opt)
            continue
        resources = []
        for resource in ",".join(words[1:]).split(","):
            name, eq, value = resource.partition("=")
            if eq and name.strip() in SCALED_RESOURCES:
                mib = math.ceil(parse_memory(value) * factor / 2**20)
                resource = f"{name.strip()}={mib}M"
            resources.append(resource)
        scaled.append("-l " + ",".join(resources))
    return tuple(scaled)


class GridEngine(BatchScheduler):
    name = "gridengine"
    title = "Grid Engine"
    options_key = "ge_opts"
    cancel_command = CANCEL_COMMAND
    gone = GONE
    memory_limit = staticmethod(memory_limit)
    scale_memory = staticmethod(scale_memory)

    def check_options(self, settings: Settings) -> None:
        check_ge_opts(settings.ge_opts, settings.worker_python)

    def array_limit(self) -> int:
        """Grid Engine's max_aj_tasks (0: no limit), or its default if qconf cannot tell."""
        result = self.remote.run("qconf -sconf")
        match = re.search(r"^max_aj_tasks\s+(\d+)", result.stdout, re.MULTILINE)
        return int(match.group(1)) if result.exit_status == 0 and match else DEFAULT_MAX_ARRAY

    def submit_part(self, job: ArrayJob, options: tuple[str, ...], job_dir: str,
                    job_file: str, part: int, size: int, app: str | None) -> str:
        settings = job.settings
        if settings.max_running and not any(o.split()[:1] == ["-tc"] for o in options):
            options = (*options, f"-tc {settings.max_running}")
        script = render(JobScript(settings.worker_python, 1, size,
                                  f"sheepdog-{job.request_id}", options, job_file, app))
        script_path = posixpath.join(job_dir, f"job-{job.label}-{part}.py")
        self.remote.put(script_path, script.encode(), 0o600)
        return parse_job_id(run_checked(self.remote, qsub_command(script_path, job_dir, options)))

    def cancel_queued(self, job_ids: list[str]) -> None:
        # qdel cannot pick the pending tasks of an array in one call; the running
        # workers of a finished request have nothing left to do.
        self.cancel(job_ids)

    def accounting(self, job_id: str, index: str) -> str:
        """Grid Engine's record of how array task ``index`` of ``job_id`` ended, if it ran."""
        result = self.remote.run(f"qacct -j {job_id} -t {index}")
        fields = dict(
            line.split(None, 1) for line in result.stdout.splitlines() if len(line.split()) > 1
        )
        if result.exit_status == 0 and "exit_status" in fields:
            return (f"qacct: exit_status {fields['exit_status'].strip()},"
                    f" failed {fields.get('failed', '?').strip()}")
        return ""

    def state(self, job_ids: list[str]) -> JobState:
        active: set[str] = set()
        ended: set[str] = set()
        unknown = waiting = None
        for job_id in self.checked_job_ids(job_ids):
            try:
                result = self.remote.run(f"qstat -j {job_id}")
            except RemoteUnavailable as exc:
                return JobState(frozenset(active), frozenset(ended), unknown=str(exc))
            said = (result.stderr.strip() or result.stdout.strip())[-300:]
            if result.exit_status != 0:
                if GONE in result.stderr + result.stdout:
                    ended.add(job_id)
                else:
                    unknown = f"qstat -j {job_id} on {self.remote.where}: {said}"
                continue
            active.add(job_id)
            reasons = re.findall(r"^error reason\s+[\d,-]*:?\s*(.+)$", result.stdout, re.MULTILINE)
            if reasons:
                return JobState(frozenset(active), frozenset(ended), unknown, problem=(
                    f"Grid Engine job {job_id} is in error state: {reasons[0]}"))
            info = re.search(r"^scheduling info:\s*(.+)$", result.stdout, re.MULTILINE)
            if info and not re.search(r"^usage\s", result.stdout, re.MULTILINE):
                waiting = f"Grid Engine job {job_id} is waiting: {info.group(1).strip()}"
        return JobState(frozenset(active), frozenset(ended), unknown, waiting=waiting)
