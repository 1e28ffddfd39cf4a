"""The connections one call needs, opened on first use and closed together.

``map`` submits and then waits through one Session, so the SSH connection to
the head node (qsub, qstat, the broker tunnel) is made once per map and closed
when it returns. ``get_results`` in a later process makes its own, from the
settings the dbfile kept.
"""

from __future__ import annotations

import dataclasses
import sys
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from sheepdog.broker.urls import redact
from sheepdog.errors import ConfigError
from sheepdog.submitter import credentials, ssh
from sheepdog.submitter.config import Settings
from sheepdog.submitter.remote import LocalRemote, Remote, SSHRemote
from sheepdog.submitter.schedulers import Scheduler
from sheepdog.submitter.schedulers.gridengine import GridEngine
from sheepdog.submitter.schedulers.local import LocalScheduler
from sheepdog.submitter.schedulers.slurm import Slurm

#: Head-node schedulers in the order auto-detection prefers them, with the command
#: that gives each away. Grid Engine first: the seed's 'host' alone meant Grid Engine.
DETECTED = (("gridengine", "qsub"), ("slurm", "sbatch"))


class Session:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._remote: Remote | None = None
        self._scheduler: Scheduler | None = None
        self._tunnels: list[ssh.Tunnel] = []

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: tuple[type[BaseException], BaseException, TracebackType]) -> None:
        self.close()

    @property
    def remote(self) -> Remote:
        """The head node: over SSH when 'host' is set, else this machine.

        A connection that broke is replaced by a new one (and the broker
        tunnels through it with it).
        """
        if isinstance(self._remote, SSHRemote) and not self._remote.alive():
            self.close()
        if self._remote is None:
            s = self.settings
            if s.host is None:
                self._remote = LocalRemote()
            else:
                self._remote = SSHRemote.connect(
                    ssh.resolve(s.host, s.ssh_user, s.ssh_port, s.ssh_keyfile)
                )
        return self._remote

    def choose_scheduler(self) -> None:
        """Settle, before a submit keeps the settings, what depends on where it runs.

        With 'host' and no 'scheduler': Grid Engine or Slurm, whichever the head
        node has (Grid Engine when it has both), said on stderr. For rq: the
        Redis of its queue (``rq_url``, by default the broker), whose password
        is kept in credentials.json, as the broker's is.
        """
        settings = self.settings
        if settings.scheduler_name == "rq":
            url = settings.rq_url or settings.broker_url
            if url is not None:
                credentials.remember_url(url, redact(url))
            self.settings = dataclasses.replace(settings, rq_url=url)
        if settings.scheduler is not None or settings.host is None:
            return
        probe = "; ".join(f"command -v {command}" for _, command in DETECTED)
        found = self.remote.run(probe).stdout.split()
        present = [name for name, command in DETECTED
                   if any(path.endswith("/" + command) for path in found)]
        if not present:
            commands = " or ".join(command for _, command in DETECTED)
            raise ConfigError(
                f"{self.remote.where} has no {commands} on the PATH of a non-interactive"
                " login: set 'scheduler' ('gridengine' or 'slurm'), or make the scheduler's"
                " commands reachable there (e.g. in ~/.bashrc before its interactive check)"
            )
        chosen = present[0]
        others = f" (it also has {', '.join(present[1:])}; set 'scheduler' to choose)" \
            if len(present) > 1 else ""
        print(f"sheepdog: {self.settings.host} runs {chosen}: using it{others}",
              file=sys.stderr)
        self.settings = dataclasses.replace(self.settings, scheduler=chosen)
        self._scheduler = None

    def scheduler(self) -> Scheduler:
        """The scheduler adapter, one per session (it keeps what it learnt, e.g. uploads)."""
        if self._scheduler is None:
            name = self.settings.scheduler_name
            if name == "local":
                self._scheduler = LocalScheduler()
            elif name == "rq":
                from sheepdog.submitter.schedulers.rq_workers import RqScheduler

                self._scheduler = RqScheduler(self.settings)
            else:
                self._scheduler = {"gridengine": GridEngine, "slurm": Slurm}[name](
                    lambda: self.remote)
        return self._scheduler

    def reachable_url(self, url: str) -> str:
        """``url``, or the same broker through an SSH tunnel when it must be."""
        parts = urlsplit(url)
        mode = self.settings.ssh_tunnel
        if self.settings.host is None or parts.scheme == "unix" or mode == "never":
            return url
        host, port = parts.hostname or "localhost", parts.port or 6379
        if mode == "auto" and ssh.reachable(host, port):
            return url
        remote = self.remote
        assert isinstance(remote, SSHRemote)
        tunnel = ssh.Tunnel(remote.client, (host, port))
        self._tunnels.append(tunnel)
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{tunnel.port}"))

    def close(self) -> None:
        for tunnel in self._tunnels:
            tunnel.close()
        self._tunnels.clear()
        if self._remote is not None:
            self._remote.close()
            self._remote = None
