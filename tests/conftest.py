"""Fixtures: real Redis-protocol servers, never a mock.

- ``sheepdog_home``: one private ``SHEEPDOG_HOME`` for the session, so the
  embedded default broker is started once by the code under test and stopped
  at the end.
- ``no_user_config``: ``SHEEPDOG_CONFIG`` points at a file that does not exist
  and ``SHEEPDOG_<KEY>`` variables are removed, so a developer's own profiles
  and overrides never reach the suite.
- ``server_url``: a separate valkey-server (or ``$SHEEPDOG_TEST_SERVER``,
  e.g. Debian's /usr/bin/redis-server) on a loopback TCP port with a password,
  standing for a shared broker; flushed before every test that uses it.
- ``testbed``, ``ssh_home``, ``broker``, ``config``: the project's test
  cluster (testbed/up: Son of Grid Engine, sshd, Redis). Without it these
  skip, except under CI, where they fail: CI must bring the cluster up.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sheepdog.broker import embedded
from sheepdog.submitter import profiles

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session", autouse=True)
def sheepdog_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("sheepdog-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SHEEPDOG_HOME", str(home))
        yield home
    embedded.stop(home / "broker")


@pytest.fixture(scope="session", autouse=True)
def no_user_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(profiles.CONFIG_ENV, str(tmp_path_factory.mktemp("config") / "absent.toml"))
        for name in profiles.env_names():
            mp.delenv(name, raising=False)
        yield


def wait_until_answering(proc: subprocess.Popen[bytes], client: redis.Redis,
                         log: Path | None = None) -> None:
    """Until a server we just started answers PING (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                said = log.read_text() if log is not None and log.exists() else ""
                raise RuntimeError(f"the server did not start: {said}") from None
            time.sleep(0.05)


class Server:
    """A real valkey-server on a loopback port with a password, which a test may kill."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        """Start it - empty: no persistence, as an admin's restart without it."""
        binary = os.environ.get("SHEEPDOG_TEST_SERVER") or str(embedded.server_binary())
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--requirepass", self.password, "--dir", str(self.workdir), "--save", "",
             "--appendonly", "no", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        client = self.client()
        try:
            wait_until_answering(self.proc, client)
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9: everything it held in memory is gone."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


class Trap:
    """Unpickling this runs a command: it must never happen to a payload we did not sign."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="session")
def _server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = Server(tmp_path_factory.mktemp("server"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def server_url(_server: str) -> str:
    client = redis.Redis.from_url(_server)
    client.flushdb()
    client.close()
    return _server


@pytest.fixture
def raw(server_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server_url)
    yield client
    client.close()


@pytest.fixture
def dbfile(tmp_path: Path) -> str:
    return str(tmp_path / "results.sqlite")


def run_python(code: str, *, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as the ``__main__`` script of a fresh interpreter."""
    script = cwd / f"script_{secrets.token_hex(4)}.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


# -- the test cluster (testbed/up) ------------------------------------------------

ENV_FILE = Path(os.environ.get("SHEEPDOG_TESTBED_ENV", "/etc/sheepdog-testbed/env"))


def _testbed() -> dict[str, str]:
    if not ENV_FILE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{ENV_FILE} is missing: CI must bring the test cluster up (testbed/up)")
        pytest.skip("no test cluster: run testbed/up as root to bring one up")
    pairs = (line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def testbed() -> dict[str, str]:
    found = _testbed()
    client = redis.Redis.from_url(found["SHEEPDOG_TESTBED_BROKER_URL"])
    client.flushall()  # the testbed's own broker: start from an empty one
    client.close()
    return found


@pytest.fixture
def ssh_home(testbed: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME whose ~/.ssh/config names the head node 'testbed', with its host keys known."""
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    (ssh_dir / "known_hosts").write_text(Path(testbed["SHEEPDOG_TESTBED_KNOWN_HOSTS"]).read_text())
    (ssh_dir / "config").write_text(
        "Host testbed\n"
        f"  HostName {testbed['SHEEPDOG_TESTBED_SSH_HOST']}\n"
        f"  Port {testbed['SHEEPDOG_TESTBED_SSH_PORT']}\n"
        f"  User {testbed['SHEEPDOG_TESTBED_SSH_USER']}\n"
        f"  IdentityFile {testbed['SHEEPDOG_TESTBED_SSH_KEY']}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


@pytest.fixture
def broker(testbed: dict[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(testbed["SHEEPDOG_TESTBED_BROKER_URL"])
    yield client
    client.close()


@pytest.fixture
def config(testbed: dict[str, str], ssh_home: Path, tmp_path: Path) -> dict[str, object]:
    return {
        "host": "testbed",
        "broker_url": testbed["SHEEPDOG_TESTBED_BROKER_URL"],
        "shell": testbed["SHEEPDOG_TESTBED_BARE_PYTHON"],
        "dbfile": str(tmp_path / "results.sqlite"),
    }


def testbed_ssh(testbed: dict[str, str], command: str) -> subprocess.CompletedProcess[str]:
    """A command on the head node as the submit user, through OpenSSH (not sheepdog)."""
    return subprocess.run(
        ["ssh", "-p", testbed["SHEEPDOG_TESTBED_SSH_PORT"], "-i",
         testbed["SHEEPDOG_TESTBED_SSH_KEY"], "-o", "BatchMode=yes",
         "-o", f"UserKnownHostsFile={testbed['SHEEPDOG_TESTBED_KNOWN_HOSTS']}",
         "-o", "StrictHostKeyChecking=yes",
         f"{testbed['SHEEPDOG_TESTBED_SSH_USER']}@{testbed['SHEEPDOG_TESTBED_SSH_HOST']}",
         command],
        capture_output=True, text=True, timeout=60, check=False,
    )
