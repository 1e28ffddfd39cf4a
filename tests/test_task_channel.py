"""One contract for the task-side operations, run over both clients on a real server.

Claims, leases, fencing and the retry decision are the broker half of fault
tolerance: a worker presumed dead that comes back late must not overwrite a
retry's result, and an outcome is final exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from sheepdog.broker import codec, embedded, keys, resp
from sheepdog.broker.client import Broker
from sheepdog.broker.tasks import (
    FINAL,
    GONE,
    NOT_HOLDER,
    RETRIED,
    ClaimReply,
    TaskChannel,
)
from sheepdog.errors import BrokerError
from sheepdog.submitter import paths

KEY = b"c" * 32
TOKEN = "t" * 32


@pytest.fixture(params=["resp", "redis-py"])
def channel(request: pytest.FixtureRequest, server_url: str) -> Iterator[TaskChannel]:
    if request.param == "resp":
        conn: resp.RespClient | redis.Redis = resp.connect(server_url)
    else:
        conn = redis.Redis.from_url(server_url)
    yield TaskChannel(conn)
    conn.close()


def _request(server_url: str, n: int = 2, **meta: str | int) -> int:
    broker = Broker.from_url(server_url)
    rid = broker.new_request_id(1)
    fields = {"token": TOKEN, "status": "queued", "n_tasks": n, "python": "3.11.0",
              "max_attempts": 2, "retry_errors": 0, "retry_memory": 0, **meta}
    broker.push_request(rid, fields, codec.encode(abs, KEY, codec.FUNC_CONTEXT),
                        [(i, f"args{i}".encode()) for i in range(1, n + 1)])
    broker.queued(rid, "")
    broker.close()
    return rid


@pytest.fixture
def request_id(server_url: str) -> int:
    return _request(server_url)


def _claim(channel: TaskChannel, rid: int, index: int, holder: str, lease: float = 30.0,
           token: str = TOKEN) -> ClaimReply:
    return channel.claim(rid, token, index, holder=holder, level=0, host="node1", pid=42,
                         job="7.1", lease=lease)


def _record(channel: TaskChannel, rid: int, index: int, holder: str, attempt: int,
            status: str = "ok", cause: str = "", check: str = "") -> int:
    fields: dict[str, str | bytes] = {"payload": b"v"} if status == "ok" else {"error": "boom"}
    return channel.record(rid, TOKEN, index, key=KEY, holder=holder, attempt=attempt,
                          status=status, cause=cause, fields=fields, check=check)


def test_meta_is_plain_text_and_empty_for_unknown(channel: TaskChannel, request_id: int) -> None:
    meta = channel.meta(request_id)
    assert meta["token"] == TOKEN and meta["n_tasks"] == "2" and meta["status"] == "queued"
    assert channel.meta(request_id + 100) == {}


def test_claim_returns_function_and_arguments_in_one_round_trip(
    channel: TaskChannel, request_id: int, raw: redis.Redis
) -> None:
    reply = _claim(channel, request_id, 2, "h1")
    assert (reply.kind, reply.attempt, reply.args, reply.python) == ("run", 1, b"args2", "3.11.0")
    assert codec.decode(reply.func, KEY, codec.FUNC_CONTEXT) is abs
    claim = raw.hget(keys.claims(request_id), "2").decode().split()
    assert claim[:4] == ["1", "1", "0", "h1"] and claim[5:] == ["node1", "42", "7.1"]
    deadline = raw.zscore(keys.leases(request_id), "2")
    assert deadline is not None and abs(deadline - (time.time() + 30)) < 5  # broker time


def test_claim_refuses_what_it_must(channel: TaskChannel, request_id: int,
                                    server_url: str) -> None:
    assert _claim(channel, request_id, 3, "h1").kind == "outside"
    assert _claim(channel, request_id, 1, "h1", token="x" * 32).kind == "gone"
    assert _claim(channel, request_id + 100, 1, "h1").kind == "gone"
    assert _claim(channel, request_id, 1, "h1").kind == "run"
    busy = _claim(channel, request_id, 1, "h2")
    assert busy.kind == "busy" and " h1 " in busy.detail  # one holder at a time
    assert _record(channel, request_id, 1, "h1", 1) == FINAL
    assert _claim(channel, request_id, 1, "h3").kind == "done"


def test_record_is_final_once_and_fenced_by_holder(
    channel: TaskChannel, request_id: int, raw: redis.Redis
) -> None:
    _claim(channel, request_id, 1, "h1")
    assert _record(channel, request_id, 1, "intruder", 1) == NOT_HOLDER
    assert _record(channel, request_id, 1, "h1", 2) == NOT_HOLDER  # not its attempt
    assert _record(channel, request_id, 1, "h1", 1) == FINAL
    assert _record(channel, request_id, 1, "h1", 1) == NOT_HOLDER  # once only
    assert raw.hkeys(keys.tasks(request_id)) == [b"2"]
    assert raw.hexists(keys.claims(request_id), "1") == 0
    assert raw.zscore(keys.leases(request_id), "1") is None
    [(_id, fields)] = raw.xrange(keys.results(request_id))
    assert fields[b"index"] == b"1" and fields[b"attempt"] == b"1" and b"mac" in fields
    assert b"next" not in fields
    assert channel.meta(request_id)["n_ok"] == "1"
    _claim(channel, request_id, 2, "h2")
    assert _record(channel, request_id, 2, "h2", 1, "error") == FINAL  # f raised: final
    assert channel.meta(request_id)["status"] == "done"


def test_a_lost_attempt_is_retried_once_and_the_late_worker_is_fenced(
    channel: TaskChannel, request_id: int, raw: redis.Redis
) -> None:
    _claim(channel, request_id, 1, "h1", lease=0.05)
    time.sleep(0.1)
    assert channel.heartbeat(request_id, TOKEN, 1, "intruder", 30) == 0
    # The reaper: its lease ran out, so attempt 1 is lost and waits for a retry.
    assert _record(channel, request_id, 1, "h1", 1, "lost", check="expired") == RETRIED
    assert raw.hgetall(keys.retry(request_id)) == {b"1": b"0"}
    assert channel.heartbeat(request_id, TOKEN, 1, "h1", 30) == 0  # h1 holds nothing now
    retry = _claim(channel, request_id, 1, "h2")
    assert (retry.kind, retry.attempt) == ("run", 2)
    assert raw.hlen(keys.retry(request_id)) == 0
    assert _record(channel, request_id, 1, "h1", 1) == NOT_HOLDER  # h1 came back late
    assert _record(channel, request_id, 1, "h2", 2, "lost", check="expired") == NOT_HOLDER
    assert _record(channel, request_id, 1, "h2", 2, "lost") == FINAL  # no attempts left
    statuses = [(f[b"attempt"], f[b"status"], f.get(b"next"))
                for _, f in raw.xrange(keys.results(request_id))]
    assert statuses == [(b"1", b"lost", b"retry"), (b"2", b"lost", None)]
    assert channel.meta(request_id)["n_retried"] == "1"
    assert channel.meta(request_id)["n_lost"] == "1"


def test_a_heartbeat_keeps_a_lease_from_being_reaped(
    channel: TaskChannel, request_id: int
) -> None:
    _claim(channel, request_id, 1, "h1", lease=0.05)
    time.sleep(0.1)
    assert channel.heartbeat(request_id, TOKEN, 1, "h1", 30) == 1
    assert _record(channel, request_id, 1, "h1", 1, "lost", check="expired") == NOT_HOLDER


def test_a_worker_that_never_claimed_is_lost_as_its_next_attempt(
    channel: TaskChannel, request_id: int
) -> None:
    assert _record(channel, request_id, 2, "-", 2, "lost") == NOT_HOLDER  # not attempt 1
    assert _record(channel, request_id, 2, "-", 1, "lost") == RETRIED
    assert _claim(channel, request_id, 2, "h1").attempt == 2


def test_errors_are_retried_only_when_asked(channel: TaskChannel, server_url: str) -> None:
    rid = _request(server_url, retry_errors=1, retry_memory=1, max_attempts=3)
    _claim(channel, rid, 1, "h1")
    assert _record(channel, rid, 1, "h1", 1, "error") == RETRIED
    _claim(channel, rid, 1, "h2")
    assert _record(channel, rid, 1, "h2", 2, "error", cause="memory") == RETRIED
    assert channel.claim_of(rid, 1) is not None
    claim = channel.claim_of(rid, 1)
    assert claim is not None and claim.level == 1  # next time with more memory
    _claim(channel, rid, 1, "h3")
    assert _record(channel, rid, 1, "h3", 3, "error") == FINAL  # 3 attempts were allowed


def test_a_request_whose_id_was_reused_is_not_touched(
    channel: TaskChannel, request_id: int, raw: redis.Redis
) -> None:
    _claim(channel, request_id, 1, "h1")
    raw.hset(keys.meta(request_id), "token", "another request")  # e.g. after a flush
    assert _record(channel, request_id, 1, "h1", 1) == GONE
    assert raw.hlen(keys.tasks(request_id)) == 2


def test_reject_only_for_a_known_request(channel: TaskChannel, request_id: int) -> None:
    fields: dict[str, str | bytes] = {"index": "7", "error": "no"}
    assert channel.reject(request_id, TOKEN, 7, key=KEY, fields=fields)
    assert not channel.reject(request_id + 100, TOKEN, 7, key=KEY, fields=fields)
    assert channel.meta(request_id)["n_rejected"] == "1"


def test_resp_client_errors_match_the_submitter_side(server_url: str) -> None:
    wrong = server_url.replace("://:", "://:wrong", 1)
    with pytest.raises(BrokerError, match="refused the password"):
        resp.connect(wrong)
    no_password = "redis://127.0.0.1:" + server_url.rsplit(":", 1)[1]
    with pytest.raises(BrokerError, match="needs a password"):
        resp.connect(no_password)
    with pytest.raises(BrokerError, match=r"cannot reach the broker at redis://:\*\*\*@127.0.0.1:1"):
        resp.connect("redis://:pw@127.0.0.1:1/0", patience=0.3, retry_delay=0.05)


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
