"""The broker's keys and the worker's contract, checked with raw Redis commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

import sheepdog
from sheepdog.broker import codec, keys
from sheepdog.broker.client import Broker
from sheepdog.submitter import paths
from sheepdog.worker_bootstrap.environment import TASK_INDEX_VARS, JobFile

from .conftest import Trap

KEY = b"k" * 32
TOKEN = "r" * 32


def test_key_schema_after_a_request(server_url: str, raw: redis.Redis, dbfile: str) -> None:
    out = sheepdog.map(divmod, [(7, 2), (9, 3), (1, 1)], {"broker_url": server_url,
                                                           "dbfile": dbfile})
    assert out == [(3, 1), (3, 0), (1, 0)]
    rid = 1
    assert raw.get(keys.seq()) == b"1"
    ident = raw.hgetall(keys.broker())
    assert set(ident) == {b"id", b"schema"} and len(ident[b"id"]) == 36
    assert raw.zrange(keys.requests(), 0, -1) == [b"1"]
    meta = {k.decode(): v.decode() for k, v in raw.hgetall(keys.meta(rid)).items()}
    assert set(meta) <= set(keys.META_FIELDS)
    assert meta["status"] == "done" and len(meta["token"]) == 32
    assert meta["n_tasks"] == "3" and meta["max_attempts"] == "2"  # retries=1 by default
    assert meta["n_ok"] == "3" and meta["n_error"] == "0" and meta["n_lost"] == "0"
    assert meta["function"] == "builtins.divmod"
    assert meta["scheduler"] == "local" and meta["job_ids"].startswith(os.uname().nodename)
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert float(meta["finished"]) >= float(meta["created"])
    assert raw.type(keys.func(rid)) == b"string"
    for gone in (keys.tasks(rid), keys.claims(rid), keys.leases(rid), keys.retry(rid)):
        assert raw.exists(gone) == 0  # every task has left with its outcome
    entries = raw.xrange(keys.results(rid))
    assert len(entries) == 3
    for _id, fields in entries:
        assert set(fields) <= {f.encode() for f in keys.RESULT_FIELDS}
        assert fields[b"status"] == b"ok" and fields[b"attempt"] == b"1"
    assert sorted(int(f[b"index"]) for _, f in entries) == [1, 2, 3]
    # Collated: every key of the request now expires; the broker-wide ones do not.
    for key in keys.request_keys(rid):
        if raw.exists(key):
            assert 0 < raw.ttl(key) <= keys.RESULT_TTL
    assert raw.ttl(keys.seq()) == -1
    assert {k.decode() for k in raw.keys("sheepdog:*")} == {
        keys.broker(), keys.seq(), keys.requests(), keys.meta(rid), keys.func(rid),
        keys.results(rid),
    }
    # The workers' own broker user could touch only this request; it is gone with it.
    assert meta["worker_user"].startswith(f"sheepdog-{rid}-")
    assert raw.acl_getuser(meta["worker_user"]) is None


def test_all_keys_of_a_request_share_one_cluster_slot() -> None:
    tags = {k[k.index("{") + 1 : k.index("}")] for k in keys.request_keys(42)}
    assert tags == {"req:42"}


def test_tasks_are_pushed_in_batches_and_expire_until_queued(
    server_url: str, raw: redis.Redis
) -> None:
    broker = Broker.from_url(server_url)
    raw.config_resetstat()
    broker.push_request(7, {"n_tasks": 5000, "token": "t"}, b"f",
                        ((i, b"x%d" % i) for i in range(1, 5001)))
    stats = raw.info("commandstats")
    assert stats["cmdstat_hset"]["calls"] <= 4  # meta + 5000 tasks in batches of 2000
    assert raw.hlen(keys.tasks(7)) == 5000
    assert raw.hget(keys.tasks(7), "5000") == b"x5000"
    assert 0 < raw.ttl(keys.tasks(7)) <= keys.SUBMIT_TTL  # a dead submitter leaves nothing
    broker.queued(7, "12")
    assert raw.ttl(keys.tasks(7)) == -1 and raw.ttl(keys.meta(7)) == -1
    broker.close()


def _pending_request(server_url: str, f: object, items: list[tuple[object, ...]],
                     tmp_path: Path, *, python: str | None = None,
                     key: bytes = KEY, memory_limit: int | None = None
                     ) -> tuple[Broker, JobFile, Path]:
    """A request on the broker whose tasks no scheduler runs: tests start workers by hand."""
    broker = Broker.from_url(server_url)
    rid = broker.new_request_id(1)
    meta = {"token": TOKEN, "status": "queued", "n_tasks": len(items), "python": python or
            ".".join(map(str, sys.version_info[:3])), "max_attempts": 1, "n_ok": 0,
            "n_error": 0}
    broker.push_request(rid, meta, codec.encode((f, {}), key, codec.FUNC_CONTEXT),
                        [(i, codec.encode(tuple(a), key, codec.args_context(i)))
                         for i, a in enumerate(items, start=1)])
    broker.queued(rid, "")
    job = JobFile(broker_url=server_url, request_id=rid, token=TOKEN, key=KEY.hex(),
                  scheduler="local", memory_limit=memory_limit, broker_patience=0)
    path = tmp_path / "job.json"
    job.dump(path)
    return broker, job, path


def _run_worker(job_file: Path, index: int | str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != TASK_INDEX_VARS["local"]}
    if index is not None:
        env[TASK_INDEX_VARS["local"]] = str(index)
    return subprocess.run(
        [sys.executable, "-m", "sheepdog.worker_bootstrap", str(job_file)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


def test_worker_records_once_and_a_rerun_changes_nothing(
    server_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    _broker, job, path = _pending_request(server_url, pow, [(2, 5), (3, 2)], tmp_path)
    first = _run_worker(path, 1)
    assert first.returncode == 0, first.stderr
    again = _run_worker(path, 1)
    assert again.returncode == 0
    assert "it already has an outcome; nothing to do" in again.stderr
    entries = raw.xrange(keys.results(job.request_id))
    assert len(entries) == 1
    assert codec.decode(entries[0][1][b"payload"], KEY, codec.VALUE_CONTEXT) == 32
    assert raw.hkeys(keys.tasks(job.request_id)) == [b"2"]
    assert raw.hget(keys.meta(job.request_id), "n_ok") == b"1"


def test_worker_with_an_index_outside_the_request_is_recorded(
    server_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    _broker, job, path = _pending_request(server_url, pow, [(2, 5)], tmp_path)
    proc = _run_worker(path, 9)
    assert proc.returncode == 3
    assert f"task index 9 is not part of request {job.request_id} (1..1)" in proc.stderr
    [(_id, fields)] = raw.xrange(keys.results(job.request_id))
    assert fields[b"status"] == b"rejected"
    assert raw.hget(keys.meta(job.request_id), "n_rejected") == b"1"
    assert raw.hlen(keys.tasks(job.request_id)) == 1  # the real task is untouched


def test_worker_without_an_index_or_job_file_says_what_is_missing(
    server_url: str, tmp_path: Path
) -> None:
    _broker, _job, path = _pending_request(server_url, pow, [(2, 5)], tmp_path)
    proc = _run_worker(path, None)
    assert proc.returncode == 2
    assert "SHEEPDOG_TASK_ID is not set: this worker must run as an array task" in proc.stderr
    proc = _run_worker(path, "undefined")
    assert "SHEEPDOG_TASK_ID='undefined' is not a task index" in proc.stderr
    proc = _run_worker(tmp_path / "missing.json", 1)
    assert proc.returncode == 2 and "cannot read job file" in proc.stderr


def test_worker_for_a_request_gone_from_the_broker(server_url: str, raw: redis.Redis,
                                                   tmp_path: Path) -> None:
    broker, job, path = _pending_request(server_url, pow, [(2, 5)], tmp_path)
    broker.delete_request(job.request_id)
    proc = _run_worker(path, 1)
    assert proc.returncode == 2
    assert f"request {job.request_id} is not on the broker redis://:***@" in proc.stderr
    assert raw.exists(*keys.request_keys(job.request_id)) == 0  # nothing was written for it


def test_worker_refuses_a_different_python_and_says_which(
    server_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    _broker, job, path = _pending_request(server_url, pow, [(2, 5)], tmp_path, python="3.2.1")
    assert _run_worker(path, 1).returncode == 0
    [(_id, fields)] = raw.xrange(keys.results(job.request_id))
    assert fields[b"status"] == b"error"
    error = fields[b"error"].decode()
    assert error.startswith("PythonVersionMismatch: this node runs Python")
    assert "submitted from Python 3.2.1" in error and "'shell' config key" in error



def test_worker_does_not_unpickle_a_payload_with_a_bad_signature(
    server_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    _broker, job, path = _pending_request(
        server_url, Trap(marker), [(1,)], tmp_path, key=b"x" * 32
    )
    assert _run_worker(path, 1).returncode == 0
    assert not marker.exists()
    [(_id, fields)] = raw.xrange(keys.results(job.request_id))
    assert fields[b"status"] == b"error"
    assert b"IntegrityError: payload signature does not match" in fields[b"error"]


def test_job_files_and_credentials_are_private(server_url: str, dbfile: str) -> None:
    rid = sheepdog.map_async(abs, [-1], {"broker_url": server_url, "dbfile": dbfile})
    from sheepdog.submitter.store import Store

    with Store(dbfile) as store:
        row = store.request(rid)
    job_file = paths.job_dir(f"{row.broker_id[:8]}-{rid}") / "job.json"
    assert "sheepdog-" in job_file.read_text()  # workers log in as the request's own user
    assert "***" in row.location and server_url.split("@")[0].split(":")[-1] not in row.location
    for path in (job_file, paths.credentials_file(), Path(dbfile)):
        assert path.stat().st_mode & 0o077 == 0, path
    sheepdog.get_results(rid, dbfile)
    assert not job_file.exists()  # it holds the broker password: gone once the request is over
    with open(dbfile, "rb") as f:
        assert server_url.split("@")[0].split(":")[-1].encode() not in f.read()


def _hog(megabytes: int) -> int:
    return len(bytearray(megabytes * 2**20))


def test_memory_limit_overrun_is_a_recorded_memory_error(
    server_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    _broker, job, path = _pending_request(
        server_url, _hog, [(2048,), (8,)], tmp_path, memory_limit=400 * 2**20
    )
    assert _run_worker(path, 1).returncode == 0
    assert _run_worker(path, 2).returncode == 0  # the same limit leaves room for small tasks
    entries = {f[b"index"]: f for _, f in raw.xrange(keys.results(job.request_id))}
    error = entries[b"1"][b"error"].decode()
    assert entries[b"1"][b"status"] == b"error"
    assert error.startswith("MemoryError: the task needed more memory than its limit of 400 MiB")
    assert "-l mem_grab=4G" in error and "in _hog" in error
    assert entries[b"1"][b"cause"] == b"memory"
    assert entries[b"2"][b"status"] == b"ok"

