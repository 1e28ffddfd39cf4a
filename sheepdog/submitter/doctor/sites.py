"""What the doctor checks of one scheduler's site: its queues, and the options asked of it.

    Grid Engine   the cluster queues that take jobs (``qstat -g c``); the ``-l``
                  names of ge_opts against the complexes (``qconf -sc``)
    Slurm         the partitions that take jobs (``sinfo``); a ``--partition`` of
                  slurm_opts among them
    rq            the rq Redis answers; some rq worker listens on the queue

The queue listings are part of the scheduler check (``checks``); the rest are
checks of their own. Each check takes the ``State`` and returns its ok line's
detail, or raises ``Failed``.
"""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import redis

from sheepdog.broker.urls import redact
from sheepdog.submitter.doctor.state import Failed, State

if TYPE_CHECKING:  # rq is imported only when rq is the scheduler
    from sheepdog.submitter.schedulers.rq_workers import RqScheduler

#: Slurm node states (``sinfo %t``, without the flag characters) that take new jobs.
USABLE_NODES = ("idle", "mix", "alloc", "comp", "resv", "plnd")


# -- Grid Engine -------------------------------------------------------------------


def gridengine_queues(state: State) -> str:
    """The cluster queues with slots that take jobs (``qstat -g c``)."""
    usable: list[str] = []
    unusable: list[str] = []
    for line in state.run("qstat -g c").splitlines()[2:]:
        words = line.split()  # CLUSTER QUEUE CQLOAD USED [RES] AVAIL TOTAL aoACDS cdsuE
        if len(words) < 7 or not words[-3].isdigit():
            continue
        total, broken = int(words[-3]), int(words[-1])
        entry = f"{words[0]} ({total - broken} of {total} slots usable)"
        (usable if total > broken else unusable).append(entry)
    if not usable:
        raise Failed("no queue takes jobs: " + (", ".join(unusable) or "qstat -g c lists none")
                     + " - disabled, suspended, unknown or in error", "ask your cluster's"
                     " admins; `qstat -f -explain aAcE` says why each queue instance is out")
    return "queues taking jobs: " + ", ".join(usable)


def requested_resources(ge_opts: tuple[str, ...]) -> list[str]:
    """Names of the resources every ``-l`` in ``ge_opts`` requests, as written."""
    names = []
    for opt in ge_opts:
        words = shlex.split(opt)
        for flag, value in itertools.pairwise(words):
            if flag == "-l":
                names += [r.partition("=")[0].strip() for r in value.split(",") if r.strip()]
    return names


def complexes_of(table: str) -> dict[str, tuple[str, str]]:
    """name -> (shortcut, requestable: YES, NO or FORCED), from ``qconf -sc``."""
    found = {}
    for line in table.splitlines():
        words = line.split()
        if len(words) >= 5 and not line.startswith("#"):
            found[words[0]] = (words[1], words[4])
    return found


def complex_problems(table: str, ge_opts: tuple[str, ...]) -> list[tuple[str, str]]:
    """(cause, fix) of each ``-l`` in ``ge_opts`` that ``qconf -sc``'s ``table`` does not
    allow, and of each FORCED complex it leaves out."""
    defined = complexes_of(table)
    full = {short: name for name, (short, _) in defined.items()} | {n: n for n in defined}
    asked = requested_resources(ge_opts)
    problems = [(f"'{n}' is not a complex of this cluster (qconf -sc)", _unknown_fix(n, full))
                for n in asked if n not in full]
    problems += [(f"'{n}' is not requestable here", f"remove '-l {n}=...' from ge_opts")
                 for n in asked if n in full and defined[full[n]][1] == "NO"]
    wanted = {full.get(n, n) for n in asked}
    problems += [(f"the cluster marks '{n}' FORCED: every job must request it",
                  f"add '-l {n}=VALUE' to ge_opts (ask your admins for the value)")
                 for n, (_, requestable) in defined.items()
                 if requestable == "FORCED" and n not in wanted]
    return problems


def check_complexes(state: State) -> str:
    settings = state.ready[0]
    table = state.run("qconf -sc")
    problems = complex_problems(table, settings.ge_opts)
    if problems:
        raise Failed("; ".join(cause for cause, _ in problems),
                     "; ".join(fix for _, fix in problems))
    defined = complexes_of(table)
    by_shortcut = {short: name for name, (short, _) in defined.items()}
    asked = [by_shortcut.get(n, n) for n in requested_resources(settings.ge_opts)]
    note = ("; -l mem_grab=SIZE would also cap each task's memory (docs/gridengine.md)"
            if "mem_grab" in defined and "mem_grab" not in asked else "")
    return (f"ge_opts requests {', '.join(asked) or 'no resources'}: all defined, none"
            f" missing FORCED{note}")


def _unknown_fix(name: str, defined: Mapping[str, str]) -> str:
    if name == "mem_grab":
        other = "h_vmem" if "h_vmem" in defined else "the cluster's memory complex"
        return (f"remove '-l mem_grab=...' from ge_opts: this cluster has no mem_grab complex"
                f" (sheepdog also uses it as each task's memory limit); ask for memory with"
                f" {other}")
    return f"remove '-l {name}=...' from ge_opts, or use a name `qconf -sc` lists"


# -- Slurm ---------------------------------------------------------------------------


def sinfo(state: State) -> dict[str, tuple[bool, int, bool]]:
    """partition -> (up, nodes that take jobs, is the default), from ``sinfo``."""
    partitions: dict[str, tuple[bool, int, bool]] = {}
    for line in state.run("sinfo -h -o '%P|%a|%t|%D'").splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[3].isdigit():
            continue
        name, avail, node_state, count = parts
        up, usable, default = partitions.get(name.rstrip("*"), (False, 0, False))
        takes = node_state.rstrip("*~#!%$@^-+") in USABLE_NODES and avail == "up"
        partitions[name.rstrip("*")] = (up or avail == "up",
                                        usable + (int(count) if takes else 0),
                                        default or name.endswith("*"))
    return partitions


def slurm_partitions(state: State) -> str:
    """The partitions with nodes that take jobs."""
    partitions = sinfo(state)
    usable = [f"{name}{' (default)' if default else ''}: {nodes} node(s)"
              for name, (up, nodes, default) in partitions.items() if up and nodes]
    if not usable:
        raise Failed("no partition takes jobs: " + (", ".join(partitions) or "sinfo lists none")
                     + " - down, or their nodes down or drained", "ask your cluster's admins;"
                     " `sinfo -R` says why nodes are down or drained")
    return "partitions taking jobs: " + ", ".join(usable)


def requested_partitions(slurm_opts: tuple[str, ...]) -> list[str]:
    """Partitions named by ``--partition``/``-p`` in ``slurm_opts``."""
    names: list[str] = []
    for opt in slurm_opts:
        words = shlex.split(opt)
        first = words[0] if words else ""
        if first.startswith("--partition="):
            value = first.split("=", 1)[1]
        elif first in ("--partition", "-p") and len(words) > 1:
            value = words[1]
        elif first.startswith("-p") and len(first) > 2:
            value = first[2:]
        else:
            continue
        names += [name for name in value.split(",") if name]
    return names


def check_partition(state: State) -> str:
    settings = state.ready[0]
    partitions = sinfo(state)
    default = next((name for name, (_, _, d) in partitions.items() if d), "none")
    asked = requested_partitions(settings.slurm_opts)
    if not asked:
        return f"slurm_opts names none: jobs go to the default partition, {default}"
    unknown = [name for name in asked if name not in partitions]
    if unknown:
        raise Failed(f"slurm_opts asks for partition {', '.join(unknown)}, which this cluster"
                     f" does not have (sinfo: {', '.join(partitions) or 'none'})",
                     f"set --partition to one of {', '.join(partitions)}, or leave it out for"
                     f" the default ({default})")
    down = [name for name in asked if not partitions[name][0]]
    if down:
        raise Failed(f"partition {', '.join(down)} is not up (sinfo)", "ask your admins, or"
                     " choose another partition")
    return f"partition {', '.join(asked)} exists and is up"


# -- rq ------------------------------------------------------------------------------


def _rq_scheduler(state: State) -> RqScheduler:
    from sheepdog.submitter.schedulers.rq_workers import RqScheduler

    scheduler = state.ready[1].scheduler()
    assert isinstance(scheduler, RqScheduler)
    return scheduler


def check_rq_redis(state: State) -> str:
    session = state.ready[1]
    session.choose_scheduler()  # rq_url: the broker's by default, its password kept
    state.settings = session.settings
    scheduler = _rq_scheduler(state)
    try:
        scheduler.connection.ping()
    except (redis.RedisError, OSError) as exc:
        raise Failed(f"cannot reach the rq Redis at {redact(scheduler.url)}: {exc}",
                     "check 'rq_url' (or 'broker_url', which it defaults to)") from exc
    return f"{redact(scheduler.url)} answers"


def check_rq_workers(state: State) -> str:
    import rq

    scheduler = _rq_scheduler(state)
    queue = scheduler.queue()
    workers = rq.Worker.all(connection=scheduler.connection, queue=queue)
    if not workers:
        raise Failed(f"no rq worker listens on queue {queue.name!r} at"
                     f" {redact(scheduler.url)}", "start one where sheepdog is installed:"
                     f" `rq worker --url URL {queue.name}`")
    hosts = sorted({worker.hostname or "?" for worker in workers})
    return f"{len(workers)} on queue {queue.name!r}, on {', '.join(hosts)}"
