"""One contract for the task-side operations, run over both clients on a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sheepdog.broker import codec, embedded, keys, resp
from sheepdog.broker.client import Broker
from sheepdog.broker.tasks import TaskChannel
from sheepdog.errors import BrokerError
from sheepdog.submitter import paths

KEY = b"c" * 32


@pytest.fixture(params=["resp", "redis-py"])
def channel(request: pytest.FixtureRequest, server_url: str) -> Iterator[TaskChannel]:
    if request.param == "resp":
        conn: resp.RespClient | redis.Redis = resp.connect(server_url)
    else:
        conn = redis.Redis.from_url(server_url)
    yield TaskChannel(conn)
    conn.close()


@pytest.fixture
def request_id(server_url: str) -> Iterator[int]:
    broker = Broker.from_url(server_url)
    rid = broker.new_request_id()
    meta = {"status": "queued", "n_tasks": 2, "python": "3.11.0", "n_ok": 0}
    broker.create_request(rid, meta, codec.encode(abs, KEY), [b"one", b"two"])
    yield rid
    broker.close()


def test_meta_is_plain_text_and_empty_for_unknown(channel: TaskChannel, request_id: int) -> None:
    assert channel.meta(request_id) == {
        "status": "queued", "n_tasks": "2", "python": "3.11.0", "n_ok": "0",
    }
    assert channel.meta(request_id + 100) == {}


def test_fetch_and_lease(channel: TaskChannel, request_id: int, raw: redis.Redis) -> None:
    func, args = channel.fetch(request_id, 2)
    assert args == b"two" and codec.decode(func or b"", KEY) is abs
    assert channel.fetch(request_id, 3) == (None, None)
    channel.take_lease(request_id, 2, "node1 42 1.0")
    assert raw.hget(keys.leases(request_id), "2") == b"node1 42 1.0"


def test_record_is_once_only_and_clears_task_and_lease(
    channel: TaskChannel, request_id: int, raw: redis.Redis
) -> None:
    channel.take_lease(request_id, 1, "h 1 0")
    assert channel.record(request_id, 1, "ok", {"payload": b"\x00\xff", "host": "h"})
    assert not channel.record(request_id, 1, "error", {"error": "second"})
    assert raw.hkeys(keys.tasks(request_id)) == [b"2"]
    assert raw.hlen(keys.leases(request_id)) == 0
    [(_id, fields)] = raw.xrange(keys.results(request_id))
    assert fields == {b"index": b"1", b"status": b"ok", b"payload": b"\x00\xff", b"host": b"h"}
    assert channel.meta(request_id)["n_ok"] == "1"
    assert channel.record(request_id, 2, "lost", {"error": "gone"})
    assert channel.meta(request_id)["status"] == "done"
    with pytest.raises(ValueError, match="unknown status"):
        channel.record(request_id, 2, "maybe", {})


def test_reject_only_for_a_known_request(channel: TaskChannel, request_id: int) -> None:
    assert channel.reject(request_id, 7, "no such index", "h", 1)
    assert not channel.reject(request_id + 100, 7, "no such index", "h", 1)
    assert channel.meta(request_id)["n_rejected"] == "1"


def test_resp_client_errors_match_the_submitter_side(server_url: str) -> None:
    wrong = server_url.replace("://:", "://:wrong", 1)
    with pytest.raises(BrokerError, match="refused the password"):
        resp.connect(wrong)
    no_password = "redis://127.0.0.1:" + server_url.rsplit(":", 1)[1]
    with pytest.raises(BrokerError, match="needs a password"):
        resp.connect(no_password)
    with pytest.raises(BrokerError, match=r"cannot reach the broker at redis://:\*\*\*@127.0.0.1:1"):
        resp.connect("redis://:pw@127.0.0.1:1/0", attempts=2, retry_delay=0.01)


def test_resp_client_selects_the_database(server_url: str, raw: redis.Redis) -> None:
    other_db = server_url.rsplit("/", 1)[0] + "/3"
    client = resp.connect(other_db)
    client.execute_command("SET", "sheepdog:test", "in db 3")
    client.close()
    assert raw.get("sheepdog:test") is None
    check = redis.Redis.from_url(other_db)
    assert check.getdel("sheepdog:test") == b"in db 3"
    check.close()


def test_resp_client_over_the_embedded_unix_socket(tmp_path: Path) -> None:
    url = embedded.ensure_running(paths.embedded_broker_dir())
    assert url.startswith("unix://")
    client = resp.connect(url)
    assert client.execute_command("PING") == b"PONG"
    assert client.execute_command("ECHO", "é") == "é".encode()
    assert client.execute_command("HMGET", "sheepdog:nothing", "a", "b") == [None, None]
    client.close()
