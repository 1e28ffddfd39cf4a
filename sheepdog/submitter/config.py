"""The config dict, turned into one typed, checked ``Settings`` object.

The original Sheepdog's keys are accepted as they were; every default lives
here, and docs/configuration.md is the reference for users. A key that is not
known is refused with the list of valid keys, so a typo cannot pass silently.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sheepdog.broker.urls import check_url, redact
from sheepdog.errors import BrokerError, ConfigError

SCHEDULERS = ("local", "gridengine", "slurm", "rq")
#: Schedulers whose jobs run on other machines: they need a broker_url those reach.
CLUSTER_SCHEDULERS = ("gridengine", "slurm", "rq")
#: Keys that hold a list of scheduler options.
OPTION_KEYS = ("ge_opts", "slurm_opts")
TUNNEL_MODES = ("auto", "always", "never")

#: How messages name each scheduler.
SCHEDULER_TITLES = {"local": "local", "gridengine": "Grid Engine", "slurm": "Slurm", "rq": "rq"}

#: Keys of the original Sheepdog that no longer mean anything, with why.
RETIRED_KEYS = {
    "port": "the workers no longer connect to an HTTP server on this machine; they talk to"
    " the Redis broker. Remove 'port' and, if the nodes need a broker they can reach, set"
    " 'broker_url' (e.g. 'redis://:PASSWORD@broker-host:6379/0').",
    "localhost": "the workers no longer connect back to this machine; they talk to the"
    " Redis broker. Remove 'localhost' and set 'broker_url' to an address the nodes can reach.",
}


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class Settings:
    """Everything a request needs to know about where and how to run."""

    host: str | None = field(
        default=None, metadata=_doc("head node to submit to over SSH; none means this machine")
    )
    ssh_port: int | None = field(
        default=None, metadata=_doc("SSH port of host; default: ~/.ssh/config, else 22")
    )
    ssh_user: str | None = field(
        default=None, metadata=_doc("SSH user; default: ~/.ssh/config, else the current user")
    )
    ssh_keyfile: str | None = field(
        default=None, metadata=_doc("private key file; default: the SSH agent and ~/.ssh keys")
    )
    ssh_dir: str = field(
        default=".sheepdog", metadata=_doc("remote directory for job files, relative to $HOME")
    )
    dbfile: str = field(
        default="./sheepdog.sqlite", metadata=_doc("SQLite file that keeps requests and results")
    )
    shell: str | None = field(
        default=None,
        metadata=_doc("Python interpreter that runs the workers; default: this interpreter"
                      " (local), /usr/bin/python3 (cluster)"),
    )
    ge_opts: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Grid Engine options, one string per option, e.g. '-l h_rt=1:0:0'"),
    )
    slurm_opts: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Slurm sbatch options, one string per option, e.g. '--time=1:00:00',"
                      " '--mem=2G', '--partition=short'"),
    )
    max_running: int | None = field(
        default=None,
        metadata=_doc("at most this many array tasks of a job run at once (Slurm's --array"
                      " %N, Grid Engine's -tc); default: as many as the scheduler gives"),
    )
    rq_queue: str = field(
        default="sheepdog", metadata=_doc("rq: the rq queue the tasks are enqueued on")
    )
    rq_url: str | None = field(
        default=None,
        metadata=_doc("rq: redis:// URL of the Redis the rq workers listen on; default:"
                      " broker_url"),
    )
    broker_url: str | None = field(
        default=None,
        metadata=_doc("redis://, rediss:// or unix:// URL of the broker; none starts a private"
                      " embedded one"),
    )
    scheduler: str | None = field(
        default=None,
        metadata=_doc("local, gridengine, slurm or rq; default: local without host; with host,"
                      " gridengine or slurm, whichever the head node has (gridengine if both)"),
    )
    local_workers: int | None = field(
        default=None,
        metadata=_doc("local scheduler: how many tasks run at once; default: the number of CPUs"),
    )
    workers: int | None = field(
        default=None,
        metadata=_doc("worker mode: this many workers each run tasks one after another"
                      " until none are left; 0: one array task per task; default: local_workers"
                      " workers on the local scheduler, one array task per task on a cluster"),
    )
    ship_worker: bool = field(
        default=True,
        metadata=_doc("cluster: upload the worker as a zipapp (nodes need only Python); False:"
                      " the nodes' shell has sheepdog installed"),
    )
    ssh_tunnel: str = field(
        default="auto",
        metadata=_doc("reach broker_url through the SSH connection: auto (when it cannot be"
                      " reached directly), always, never"),
    )
    retries: int = field(
        default=1,
        metadata=_doc("times a lost task (worker killed, node lost) is run again, on the same"
                      " scheduler; 0: never"),
    )
    retry_errors: bool = field(
        default=False,
        metadata=_doc("also retry a task whose function raised (normally final: it would"
                      " raise again)"),
    )
    retry_memory_factor: float | None = field(
        default=None,
        metadata=_doc("retry a task that went over its mem_grab limit with the limit times"
                      " this (e.g. 2.0); None: do not"),
    )
    heartbeat_interval: float = field(
        default=10.0, metadata=_doc("seconds between the heartbeats of a running task")
    )
    lease_timeout: float = field(
        default=60.0,
        metadata=_doc("seconds without a heartbeat after which a running task is declared"
                      " lost (at least twice heartbeat_interval)"),
    )
    broker_patience: float = field(
        default=120.0,
        metadata=_doc("seconds a worker keeps retrying a broker that is down or loading"
                      " before its task is given up as lost"),
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Settings | None) -> Settings:
        if isinstance(config, Settings):
            return config
        config = dict(config or {})
        refuse_unknown(config)
        values = {name: coerce(name, value) for name, value in config.items()}
        settings = cls(**values)
        settings.check()
        return settings

    def check(self, *, need_broker_url: bool = True) -> None:
        """Raise ConfigError for values that are wrong together.

        ``need_broker_url`` is False for settings read back from a dbfile,
        which keeps no broker_url (the password is in credentials.json).
        """
        for url in (self.broker_url, self.rq_url):
            if url is not None:
                try:
                    check_url(url)
                except BrokerError as exc:
                    raise ConfigError(str(exc)) from None
        name = self.scheduler_name
        if name not in SCHEDULERS:
            raise ConfigError(f"scheduler {name!r} is not one of {', '.join(SCHEDULERS)}")
        if name in CLUSTER_SCHEDULERS and self.broker_url is None and need_broker_url:
            title = SCHEDULER_TITLES[name] if self.scheduler is not None else "Cluster"
            raise ConfigError(
                f"{title} workers run on other machines and need a broker"
                " they can reach: set 'broker_url' to a Redis/Valkey server on the head node"
                " or a service node, e.g. 'redis://:PASSWORD@headnode:6379/0'"
                f" (see docs/{name}.md)"
            )
        self._check_rq()
        if self.ssh_tunnel not in TUNNEL_MODES:
            raise ConfigError(f"ssh_tunnel must be one of {', '.join(TUNNEL_MODES)}")
        if name == "local" and self.host is not None:
            raise ConfigError(
                f"host {self.host!r} is set but scheduler is 'local', which runs on this"
                " machine; remove 'host' or choose a cluster scheduler"
            )
        if self.lease_timeout < 2 * self.heartbeat_interval:
            raise ConfigError(
                f"lease_timeout ({self.lease_timeout:g} s) must be at least twice"
                f" heartbeat_interval ({self.heartbeat_interval:g} s), or a task that is"
                " merely slow to send a heartbeat would be declared lost"
            )
        if self.retry_memory_factor is not None and self.retry_memory_factor <= 1:
            raise ConfigError(
                f"retry_memory_factor must be more than 1 (e.g. 2.0), got"
                f" {self.retry_memory_factor!r}"
            )

    def _check_rq(self) -> None:
        if self.scheduler_name == "rq" and self.host is not None:
            raise ConfigError(
                f"host {self.host!r} is set but scheduler is 'rq', whose workers take jobs"
                " from Redis, not from a head node; remove 'host'"
            )
        if not self.rq_queue or any(c.isspace() for c in self.rq_queue):
            raise ConfigError(f"rq_queue must be a queue name without spaces, got"
                              f" {self.rq_queue!r}")

    @property
    def scheduler_name(self) -> str:
        """The scheduler; with only 'host' set, Grid Engine until ``Session.choose_scheduler``
        has asked the head node (the seed's 'host' alone meant Grid Engine)."""
        if self.scheduler is not None:
            return self.scheduler
        return "local" if self.host is None else "gridengine"

    @property
    def worker_python(self) -> str:
        if self.shell is not None:
            return self.shell
        return sys.executable if self.scheduler_name == "local" else "/usr/bin/python3"

    @property
    def local_slots(self) -> int:
        """Local scheduler: how many worker processes run at once."""
        return self.local_workers or os.cpu_count() or 1

    @property
    def pilots(self) -> int:
        """Workers of a request in worker mode; 0 for one array task per task."""
        if self.workers is not None:
            return self.workers
        return self.local_slots if self.scheduler_name == "local" else 0

    @classmethod
    def from_public(cls, text: str) -> Settings:
        """Settings kept in the dbfile by ``public``; broker_url comes from credentials."""
        values = json.loads(text)
        for key in OPTION_KEYS:
            values[key] = tuple(values.get(key, ()))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def public(self) -> dict[str, Any]:
        """The settings without broker_url (which may hold a password), for the dbfile."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "broker_url"}
        for key in OPTION_KEYS:
            values[key] = list(values[key])
        if self.rq_url is not None:  # its password is kept in credentials.json
            values["rq_url"] = redact(self.rq_url)
        return values


def describe() -> str:
    """The valid keys with their defaults and meaning, one per line."""
    lines = []
    for f in fields(Settings):
        lines.append(f"  {f.name} = {f.default!r}: {f.metadata['doc']}")
    return "\n".join(lines)


def refuse_unknown(config: Mapping[str, Any]) -> None:
    known = {f.name for f in fields(Settings)}
    for key in config:
        if key in RETIRED_KEYS:
            raise ConfigError(f"config key {key!r} is no longer used: {RETIRED_KEYS[key]}")
    unknown = [key for key in config if key not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(
        f"unknown config key(s): {', '.join(hints)}. Valid keys, with their defaults:\n"
        + describe()
    )


#: Keys that take a number of seconds (more than 0).
_SECONDS = ("heartbeat_interval", "lease_timeout", "broker_patience")


def coerce(name: str, value: Any) -> Any:
    """``value`` as the type of key ``name``, or a ConfigError saying what was expected."""
    if name in OPTION_KEYS:
        return _options(name, value)
    if name in ("ship_worker", "retry_errors"):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")
        return value
    if name in ("ssh_port", "local_workers", "retries", "workers", "max_running"):
        return _whole(name, value)
    if name in _SECONDS or name == "retry_memory_factor":
        return _seconds(name, value)
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a string, got {type(value).__name__} {value!r}")
    return os.fspath(value) if value is not None else None


_OPTION_EXAMPLES = {"ge_opts": "['-l h_rt=1:00:00', '-r y']",
                    "slurm_opts": "['--time=1:00:00', '--mem=2G']"}


def _options(name: str, value: Any) -> tuple[str, ...]:
    if value is None:  # the original Sheepdog's default
        return ()
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{name} must be a list of strings, one per option, e.g."
            f" {_OPTION_EXAMPLES[name]}; got {value!r}"
        )
    return tuple(value)


def _whole(name: str, value: Any) -> int | None:
    if value is None and name != "retries":
        return None
    lowest = 0 if name in ("retries", "workers") else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        what = "a whole number, 0 or more" if lowest == 0 else "a positive whole number"
        raise ConfigError(f"{name} must be {what}, got {value!r}")
    return value


def _seconds(name: str, value: Any) -> float | None:
    if value is None and name == "retry_memory_factor":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{name} must be a number more than 0, got {value!r}")
    return float(value)
