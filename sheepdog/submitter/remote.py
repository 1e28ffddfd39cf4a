"""Running commands and writing files on the head node: over SSH, or right here.

``Remote`` is what a cluster scheduler adapter needs of the head node. Every
command's exit status and stderr are checked by ``check``; nothing is run and
forgotten. A connection that breaks (the laptop slept, the network dropped)
raises ``RemoteUnavailable``: the caller cannot tell anything from it, and the
session connects again for the next command.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paramiko

from sheepdog.errors import RemoteCommandError, SSHError
from sheepdog.submitter import ssh

#: Seconds a head-node command may take (qsub, qstat, qdel are quick).
COMMAND_TIMEOUT = 120.0


class RemoteUnavailable(SSHError):
    """The head node could not be asked (connection lost or timed out): nothing is known."""


@dataclass(frozen=True)
class Completed:
    command: str
    exit_status: int
    stdout: str
    stderr: str


class Remote(Protocol):
    where: str  # for messages: "sgeuser@head:22" or "this machine"

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> Completed: ...

    def put(self, path: str, data: bytes, mode: int) -> None:
        """Write ``data`` to ``path`` atomically, created with ``mode``."""

    def exists(self, path: str) -> bool: ...

    def remove(self, path: str) -> None: ...

    def list(self, directory: str) -> list[str]:
        """File names in ``directory``; empty if it does not exist."""

    def home(self) -> str: ...

    def close(self) -> None: ...


def check(remote: Remote, result: Completed) -> Completed:
    if result.exit_status != 0:
        raise RemoteCommandError(
            remote.where, result.command, result.exit_status, result.stdout, result.stderr
        )
    return result


def run_checked(remote: Remote, command: str) -> str:
    return check(remote, remote.run(command)).stdout


class LocalRemote:
    """The head node is this machine: qsub and friends run here, without SSH."""

    where = "this machine"

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> Completed:
        try:
            proc = subprocess.run(
                ["/bin/sh", "-c", command], capture_output=True, text=True, timeout=timeout,
                check=False, stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise RemoteUnavailable(f"`{command}` took more than {timeout:g} s") from exc
        return Completed(command, proc.returncode, proc.stdout, proc.stderr)

    def put(self, path: str, data: bytes, mode: int) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(temp, target)

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)

    def list(self, directory: str) -> list[str]:
        try:
            return sorted(os.listdir(directory))
        except FileNotFoundError:
            return []

    def home(self) -> str:
        return str(Path.home())

    def close(self) -> None:
        pass


class SSHRemote:
    """The head node over one SSH connection (commands and SFTP share it)."""

    def __init__(self, client: paramiko.SSHClient, target: ssh.Target,
                 close: ssh.Closer) -> None:
        self.client = client
        self.target = target
        self._close = close
        self.where = f"{target.user}@{target.alias}"
        self._sftp: paramiko.SFTPClient | None = None
        self.broken = False

    @classmethod
    def connect(cls, target: ssh.Target) -> SSHRemote:
        client, close = ssh.connect(target)
        return cls(client, target, close)

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        return self._sftp

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> Completed:
        try:
            _stdin, stdout, stderr = self.client.exec_command(command, timeout=timeout)
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except (paramiko.SSHException, EOFError, OSError) as exc:  # socket.timeout included
            self.broken = True
            raise RemoteUnavailable(
                f"lost the SSH connection to {self.where} running `{command}`:"
                f" {type(exc).__name__}: {exc}"
            ) from exc
        return Completed(command, status, out, err)

    def _mkdirs(self, directory: str) -> None:
        missing = []
        while directory not in ("", "/") and not self.exists(directory):
            missing.append(directory)
            directory = posixpath.dirname(directory)
        for path in reversed(missing):
            self.sftp.mkdir(path, mode=0o700)

    def put(self, path: str, data: bytes, mode: int) -> None:
        self._mkdirs(posixpath.dirname(path))
        temp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.part")
        with self.sftp.open(temp, "wb") as f:
            f.chmod(mode)  # before any byte is written: credentials never sit world-readable
            f.write(data)
        self.sftp.posix_rename(temp, path)

    def exists(self, path: str) -> bool:
        try:
            self.sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.sftp.remove(path)

    def list(self, directory: str) -> list[str]:
        try:
            return sorted(self.sftp.listdir(directory))
        except FileNotFoundError:
            return []

    def home(self) -> str:
        return self.sftp.normalize(".")

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return not self.broken and transport is not None and transport.is_active()

    def close(self) -> None:
        if self._sftp is not None:
            with contextlib.suppress(Exception):
                self._sftp.close()
        self._close()
