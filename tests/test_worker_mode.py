"""Worker mode on the local scheduler and on the broker: pilots that take tasks from a queue.

The broker-level tests drive the Lua scripts over a real valkey-server; the
request-level ones run real local pilots (worker processes) end to end.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import sheepdog
from sheepdog.broker import codec, keys
from sheepdog.broker.client import Broker, ranges
from sheepdog.submitter import submit
from sheepdog.submitter.store import Store

from .faults.conftest import FAST_LEASES, history, rows, wait_for

KEY = b"k" * 32
TOKEN = "t" * 32


def _queued_request(url: str, n: int, *, max_attempts: int = 2) -> tuple[Broker, int]:
    broker = Broker.from_url(url)
    rid = broker.new_request_id(1)
    meta = {"token": TOKEN, "status": "queued", "n_tasks": n, "python": "3.11.0",
            "max_attempts": max_attempts, "mode": "workers"}
    broker.push_request(rid, meta, codec.encode((abs, {}), KEY, codec.FUNC_CONTEXT),
                        [(i, codec.encode((i,), KEY, codec.args_context(i)))
                         for i in range(1, n + 1)])
    broker.queued(rid, "")
    return broker, rid


def _take(broker: Broker, rid: int, count: int, *, holder: str = "h1", level: int = 0
          ) -> list[int]:
    batch = broker.tasks.claim_next(rid, TOKEN, holder=holder, level=level, host="node",
                                    pid=1, job="1.1", lease=30, count=count,
                                    with_function=False)
    return [index for index, _, _ in batch.tasks]


def test_ranges_compress_runs_of_indices() -> None:
    assert ranges([1, 2, 3, 7, 9, 10]) == ["1-3", "7-7", "9-10"]
    assert ranges([]) == []


def test_a_million_tasks_are_a_few_queue_entries(server_url: str, raw: redis.Redis) -> None:
    _broker, rid = _queued_request(server_url, 5000)
    assert raw.llen(keys.queue(rid)) == 3  # one range per push batch of 2000
    assert raw.lrange(keys.queue(rid), 0, -1) == [b"1-2000", b"2001-4000", b"4001-5000"]


def test_pilots_take_disjoint_batches_in_order_until_empty(server_url: str) -> None:
    broker, rid = _queued_request(server_url, 10)
    first = broker.tasks.claim_next(rid, TOKEN, holder="h1", level=0, host="node", pid=1,
                                    job="1.1", lease=30, count=4, with_function=True)
    assert first.kind == "run" and first.python == "3.11.0"
    assert codec.decode(first.func, KEY, codec.FUNC_CONTEXT) == (abs, {})
    assert [(i, a) for i, a, _ in first.tasks] == [(1, 1), (2, 1), (3, 1), (4, 1)]
    assert _take(broker, rid, 4, holder="h2") == [5, 6, 7, 8]
    assert _take(broker, rid, 4, holder="h3") == [9, 10]
    empty = broker.tasks.claim_next(rid, TOKEN, holder="h3", level=0, host="node", pid=1,
                                    job="1.1", lease=30, count=4, with_function=False)
    assert empty.kind == "empty"
    claims = broker.claims(rid)
    assert {claims[i].holder for i in (1, 2, 3, 4)} == {"h1"}
    assert set(broker.leases(rid)) == set(range(1, 11))  # every held task has a lease


def test_one_heartbeat_renews_every_lease_a_pilot_holds(server_url: str) -> None:
    broker, rid = _queued_request(server_url, 3)
    _take(broker, rid, 3)
    before = broker.leases(rid)
    assert broker.tasks.heartbeat_many(rid, TOKEN, "h1", [1, 2, 3], 300) == 3
    after = broker.leases(rid)
    assert all(after[i] > before[i] + 200 for i in (1, 2, 3))
    assert broker.tasks.heartbeat_many(rid, TOKEN, "intruder", [1, 2], 300) == 0
    assert broker.tasks.heartbeat_many(rid, "wrong token", "h1", [1], 300) == -1


def test_a_lost_task_goes_back_to_the_head_of_the_queue(server_url: str) -> None:
    broker, rid = _queued_request(server_url, 6)
    assert _take(broker, rid, 2) == [1, 2]
    claim = broker.claims(rid)[2]
    assert broker.tasks.record(rid, TOKEN, 2, key=KEY, holder="h1", attempt=1, status="lost",
                               cause="", fields={"error": "killed"}) == 2  # retried
    again = broker.tasks.claim_next(rid, TOKEN, holder="h2", level=0, host="node", pid=2,
                                    job="1.2", lease=30, count=2, with_function=False)
    assert [(i, a) for i, a, _ in again.tasks] == [(2, 2), (3, 1)]  # the retry first
    assert broker.claims(rid)[2].first == claim.first


def test_a_task_needing_more_memory_is_parked_for_a_bigger_job(server_url: str) -> None:
    broker, rid = _queued_request(server_url, 3)
    broker.set_meta(rid, retry_memory=1)
    assert _take(broker, rid, 1) == [1]
    assert broker.tasks.record(rid, TOKEN, 1, key=KEY, holder="h1", attempt=1, status="error",
                               cause="memory", fields={"error": "MemoryError"}) == 2
    assert _take(broker, rid, 5, holder="h2") == [2, 3]  # level 0: task 1 is not for it
    assert broker.waiting_retries(rid) == {1: 1}
    assert broker.tasks.requeue(rid, TOKEN) == (1, True)
    assert _take(broker, rid, 5, holder="h3", level=1) == [1]


def test_finished_tasks_in_a_range_are_skipped(server_url: str) -> None:
    broker, rid = _queued_request(server_url, 4)
    assert _take(broker, rid, 2) == [1, 2]
    for index in (1, 2):
        broker.tasks.record(rid, TOKEN, index, key=KEY, holder="h1", attempt=1, status="ok",
                            cause="", fields={"payload": b"x"})
    broker.client.lpush(keys.queue(rid), "1-4")  # e.g. a range pushed again
    assert _take(broker, rid, 10, holder="h2") == [3, 4]


# -- requests end to end -----------------------------------------------------------


def noisy_square(x: int) -> int:
    print(f"task says {x}")
    if x == 13:
        raise ValueError("thirteen")
    return x * x


def _pids(dbfile: str, rid: int) -> set[int]:
    with sqlite3.connect(dbfile) as db:
        return {r[0] for r in db.execute("SELECT pid FROM results WHERE request_id = ?", (rid,))}


def test_local_default_is_worker_mode_with_per_task_outcomes(dbfile: str) -> None:
    config = {"dbfile": dbfile, "local_workers": 2}
    values = sheepdog.map(noisy_square, range(300), config, verbose=False)
    assert values == [None if x == 13 else x * x for x in range(300)]
    rid = Store(dbfile).requests()[-1].request_id
    assert len(_pids(dbfile, rid)) <= 2  # two processes ran all 300 tasks
    [(args, error)] = sheepdog.get_errors(rid, dbfile)
    assert args == 13 and "ValueError: thirteen" in error and "noisy_square" in error
    with Store(dbfile) as found:
        detail = found.outcome_detail(rid, 8)
    assert detail is not None and detail["stdout"] == "task says 7\n"  # its own output only


def test_one_process_per_task_with_workers_0(dbfile: str) -> None:
    config = {"dbfile": dbfile, "local_workers": 2, "workers": 0}
    assert sheepdog.map(noisy_square, range(6), config, verbose=False)[:3] == [0, 1, 4]
    rid = Store(dbfile).requests()[-1].request_id
    assert len(_pids(dbfile, rid)) == 6


def slow_square(x: int) -> int:
    import time

    time.sleep(0.3)
    return x * x


def test_a_pilot_killed_mid_batch_its_tasks_finish_elsewhere(dbfile: str) -> None:
    config = {"dbfile": dbfile, "workers": 2, **FAST_LEASES}
    rid = sheepdog.map_async(slow_square, range(40), config)

    def claims() -> dict[int, object]:
        from sheepdog.submitter import results

        with results.open_request(rid, dbfile) as request:
            return dict(request.connect().claims(request.row.broker_request))

    wait_for(lambda: len(claims()) >= 2, what="both pilots to hold tasks")
    held = claims()
    victim = int(next(iter(held.values())).pid)  # type: ignore[attr-defined]
    batch = sorted(i for i, c in held.items() if int(c.pid) == victim)  # type: ignore[attr-defined]
    os.kill(victim, signal.SIGKILL)
    assert sheepdog.get_results(rid, dbfile, timeout=90) == [(x, x * x) for x in range(40)]
    assert [r[0] for r in rows(dbfile, rid)] == list(range(1, 41))  # one row per task
    lost = [(i, a, s) for i, a, s in history(dbfile, rid)]
    assert lost and all(s == "lost" and a == 1 for _, a, s in lost)
    assert {i for i, _, _ in lost} >= set(batch)
    assert victim not in _pids(dbfile, rid)  # it recorded nothing of its batch


def test_cancel_stops_the_pilots(dbfile: str) -> None:
    rid = sheepdog.map_async(slow_square, range(200), {"dbfile": dbfile, "workers": 2})
    wait_for(lambda: len(sheepdog.get_results(rid, dbfile, block=False)) == 200
             and any(v is not None for _, v in sheepdog.get_results(rid, dbfile, block=False)),
             what="a first result")
    assert 0 < sheepdog.cancel(rid, dbfile) < 200
    with pytest.raises(sheepdog.RequestFailed, match="cancelled"):
        sheepdog.get_results(rid, dbfile, timeout=30)


# -- streaming submit ------------------------------------------------------------------


def _generated(n: int) -> Iterator[tuple[int, int]]:
    yield from ((i, 1) for i in range(n))


def add(a: int, b: int) -> int:
    return a + b


def test_a_generator_is_submitted_in_batches(dbfile: str, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setattr(submit, "SUBMIT_BATCH", 7)
    assert sheepdog.map(add, _generated(50), {"dbfile": dbfile}) == list(range(1, 51))
    row = Store(dbfile).requests()[-1]
    assert row.n_tasks == 50


class Unpicklable:
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("not this one")


def test_a_bad_argument_late_in_a_generator_leaves_nothing(
    dbfile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit, "SUBMIT_BATCH", 5)
    items = itertools.chain(range(12), [Unpicklable()], range(5))
    with pytest.raises(sheepdog.SerialisationError, match="arguments of task 13"):
        sheepdog.map_async(abs, items, {"dbfile": dbfile})
    with Store(dbfile) as found:  # two batches were stored and pushed, then undone
        assert found.requests() == []
    assert not list(Path(dbfile).parent.glob("**/job.json"))


def test_pilots_and_their_runner_exit_cleanly_once_the_queue_is_empty(dbfile: str) -> None:
    """On a broker with per-request users (the embedded one): the last claim, which finds
    the queue empty, is allowed to that user, and nothing waits for a broker patience."""
    rid = sheepdog.map_async(abs, [-1, -2, -3], {"dbfile": dbfile, "workers": 2})
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [(-1, 1), (-2, 2), (-3, 3)]
    row = Store(dbfile).request(rid)
    runner = int(row.job_ids.split(":")[1])
    wait_for(lambda: not Path(f"/proc/{runner}").exists()
             or Path(f"/proc/{runner}/stat").read_text().split()[2] == "Z",
             timeout=10, what="the runner to exit")
    log = next(Path(os.environ["SHEEPDOG_HOME"]).glob(f"jobs/*-{row.broker_request}/runner.log"))
    assert log.read_text() == ""  # no worker failed, nothing was retried
