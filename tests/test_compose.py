"""docker-compose.yml: no Docker engine runs here, so check what can be checked for real:
the file parses, and a real redis-server accepts the arguments it gives."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path

import redis
import yaml

from sheepdog.broker import embedded

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"


def _service() -> dict[str, object]:
    data = yaml.safe_load(COMPOSE.read_text())
    service: dict[str, object] = data["services"]["broker"]
    return service


def _expand(value: str, password: str) -> str:
    # Compose's ${VAR:?message} substitution, for the one variable the file uses.
    return re.sub(r"\$\{SHEEPDOG_REDIS_PASSWORD:\?[^}]*\}", password, value)


def test_compose_file_has_what_a_production_broker_needs() -> None:
    service = _service()
    command = [str(a) for a in service["command"]]  # type: ignore[attr-defined]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--requirepass"].startswith("${SHEEPDOG_REDIS_PASSWORD:?")
    assert options["--maxmemory-policy"] == "noeviction"  # never drop tasks or results
    assert service["ports"] == ["6379:6379"]
    assert "redis-cli" in service["healthcheck"]["test"]  # type: ignore[index]
    assert service["environment"]["REDISCLI_AUTH"] == options["--requirepass"]  # type: ignore[index]


def _server_binary() -> str:
    # The image runs redis-server; use Debian's where the testbed installed it.
    return "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else str(
        embedded.server_binary()
    )


def test_a_real_server_accepts_the_compose_arguments(tmp_path: Path) -> None:
    password = secrets.token_hex(12)
    command = [_expand(str(a), password) for a in _service()["command"]]  # type: ignore[attr-defined]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [_server_binary(), *command[1:], "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(tmp_path), "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, password=password)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, log.read_text() if log.exists() else "no log"
                assert time.monotonic() < deadline
                time.sleep(0.05)
        config = client.config_get("appendonly")
        assert config == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)
