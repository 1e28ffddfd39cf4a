"""``sheepdog doctor``: a preflight that says what is wrong before a queue slot is wasted.

The checks run in order, each within a time bound, and each ends in one line:
``ok``, ``FAIL`` with the cause and the fix, or ``skip`` when a check it
needs did not pass. Which checks run depends on the scheduler:

    check          runs on              what it does
    config         every scheduler      the settings resolve (``profiles.resolve``)
    broker         every scheduler      connects as ``map`` does (embedded broker started,
                                        SSH tunnel if need be); writes, reads back and
                                        deletes ``keys.doctor``
    ssh            with ``host``        logs in, host key checked
    scheduler      gridengine, slurm    its commands on the head node; a queue or
                                        partition that takes jobs
    rq redis       rq                   the Redis of the rq queue answers
    rq workers     rq                   some rq worker listens on the queue
    probe          every scheduler      one task through ``submit`` and ``results``:
                                        the node's hostname and Python
    complexes      gridengine           ``-l`` names in ge_opts are complexes; FORCED ones
                                        are requested
    partition      slurm                a ``--partition`` in slurm_opts exists
    job directory  all but rq           create and delete a file where job files go

The probe is an ordinary request, kept in the dbfile like any other; its
function is ``sheepdog.submitter.doctor.probe`` (``sheepdog ls`` shows it).

This module runs the checks: which ones, in what order, within what time.
The checks themselves are in

    state    what the checks share: the State, Failed and split_advice
    checks   config, broker, ssh, scheduler, probe, job directory
    sites    one scheduler's site: Grid Engine complexes, Slurm partitions, rq
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sheepdog.errors import SheepdogError
from sheepdog.submitter.config import Settings
from sheepdog.submitter.doctor import checks, sites
from sheepdog.submitter.doctor.checks import COMMANDS
from sheepdog.submitter.doctor.sites import (
    USABLE_NODES,
    complex_problems,
    complexes_of,
    requested_partitions,
    requested_resources,
)
from sheepdog.submitter.doctor.state import (
    COMMAND_TIMEOUT,
    Config,
    Failed,
    State,
    split_advice,
)

__all__ = [
    "CHECK_BOUND",
    "COMMANDS",
    "COMMAND_TIMEOUT",
    "FAIL",
    "OK",
    "PROBE_TIMEOUT",
    "SKIP",
    "USABLE_NODES",
    "Check",
    "Config",
    "Failed",
    "complex_problems",
    "complexes_of",
    "probe",
    "requested_partitions",
    "requested_resources",
    "run_checks",
    "split_advice",
]

OK, FAIL, SKIP = "ok", "FAIL", "skip"

#: Seconds the probe job may take from submit to its outcome (``--probe-timeout``).
PROBE_TIMEOUT = 60.0
#: Seconds any other check may take; the slowest parts (SSH connect 20 s, a broker
#: connect 30 s) have bounds of their own below this.
CHECK_BOUND = 60.0


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``detail`` is what was found (ok), the cause (FAIL), or the
    check it needed (skip)."""

    what: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        if self.status == OK:
            return f"ok   {self.what}: {self.detail}"
        if self.status == SKIP:
            return f"skip {self.what}: needs {self.detail}"
        return f"FAIL {self.what}: {self.detail.rstrip('.')}. Fix: {self.fix}"


def probe() -> tuple[str, str, str]:
    """The probe task: (hostname, Python version, interpreter) of the node that ran it.

    Defined here, so that requests name it ``sheepdog.submitter.doctor.probe``; its
    module travels by value (``checks.check_probe``), as nodes have no sheepdog.submitter.
    """
    import platform  # imported where it runs: it travels by value
    import socket

    return socket.gethostname(), platform.python_version(), sys.executable


# -- the plan --------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    what: str
    run: Callable[[State], str]
    needs: tuple[str, ...]
    fix: str  # for a failure that brings no fix of its own (a time-out, an odd error)
    #: What sheepdog prints on stderr meanwhile (a warning) joins an ok line; False
    #: where the detail says it already.
    notes: bool = True


_CONFIG = _Step("config", checks.check_config, (), "see docs/configuration.md")
_BROKER = _Step("broker", checks.check_broker, ("config",),
                "check broker_url, and that the server runs")
_SSH = _Step("ssh", checks.check_ssh, ("config",),
             "check 'host', 'ssh_port' and that `ssh HOST true` works")
_RQ_REDIS = _Step("rq redis", sites.check_rq_redis, ("config",),
                  "check 'rq_url' (default: broker_url)")
_RQ_WORKERS = _Step("rq workers", sites.check_rq_workers, ("rq redis",), "check the rq Redis")
_LOCAL_DIR = _Step("job directory", checks.check_local_directory, ("config",),
                   "check SHEEPDOG_HOME")


def _probe_step(*needs: str) -> _Step:
    return _Step("probe", checks.check_probe, needs, checks.PROBE_FIX)


def _plan(settings: Settings | None) -> list[_Step]:
    """The checks for these settings (they change as the scheduler check learns)."""
    name = "local" if settings is None else settings.scheduler_name
    if name == "local":
        return [_CONFIG, _BROKER, _probe_step("broker"), _LOCAL_DIR]
    if name == "rq":
        return [_CONFIG, _BROKER, _RQ_REDIS, _RQ_WORKERS, _probe_step("broker", "rq workers")]
    assert settings is not None
    login = ("ssh",) if settings.host else ("config",)
    options = _Step("complexes", sites.check_complexes, ("scheduler",),
                    "check ge_opts against qconf -sc") if name == "gridengine" \
        else _Step("partition", sites.check_partition, ("scheduler",), "see sinfo")
    return [_CONFIG, _BROKER, *([_SSH] if settings.host else []),
            _Step("scheduler", checks.check_scheduler, login,
                  "check the head node's scheduler commands", notes=False),
            _probe_step("broker", "scheduler"), options,
            _Step("job directory", checks.check_job_directory, login, "check 'ssh_dir'")]


# -- running them ----------------------------------------------------------------


class _Overrun(Exception):
    pass


def _bounded(run: Callable[[], str], seconds: float) -> str:
    """``run()`` in a thread of its own, given up after ``seconds`` (the thread is left)."""
    outcome: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            outcome.append((True, run()))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=target, name="sheepdog-doctor", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise _Overrun
    done, value = outcome[0]
    if not done:
        raise value
    return str(value)


def _check(step: _Step, state: State, done: Mapping[str, Check]) -> Check:
    missing = [name for name in step.needs if name not in done or done[name].status != OK]
    if missing:
        return Check(step.what, SKIP, missing[0])
    bound = state.probe_timeout + CHECK_BOUND if step.what == "probe" else CHECK_BOUND
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):  # one line per check, warnings in it
            detail = _bounded(lambda: step.run(state), bound)
        note = " ".join(said.getvalue().replace("sheepdog: ", "").split())
        if note and step.notes:
            detail += f" (sheepdog said: {note})"
        return Check(step.what, OK, detail)
    except Failed as exc:
        return Check(step.what, FAIL, exc.cause, exc.fix)
    except _Overrun:
        return Check(step.what, FAIL, f"no answer within {bound:g} s", step.fix)
    except SheepdogError as exc:
        cause, fix = split_advice(str(exc))
        return Check(step.what, FAIL, cause, fix or step.fix)
    except Exception as exc:  # a diagnosis must go on: say what it was
        return Check(step.what, FAIL, f"{type(exc).__name__}: {' '.join(str(exc).split())}",
                     step.fix)


def run_checks(config: Config = None, *, dbfile: str | None = None,
               probe_timeout: float = PROBE_TIMEOUT) -> Iterator[Check]:
    """Each check of ``config`` (a dict, Settings, profile name or None), as it is done.

    ``dbfile`` replaces the config's: the probe request is kept there.
    """
    state = State(config, dbfile, probe_timeout)
    done: dict[str, Check] = {}
    try:
        while True:
            step = next((s for s in _plan(state.settings) if s.what not in done), None)
            if step is None:
                return
            done[step.what] = _check(step, state, done)
            yield done[step.what]
    finally:
        if state.session is not None:
            state.session.close()
