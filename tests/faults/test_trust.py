"""Trust boundaries: forged outcomes, per-request broker users, a foreign Python.

Nothing from the broker is unpickled before its signature checks out; a worker
can touch only its own request's keys; a worker that cannot load the request's
pickles says why instead of failing obscurely.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import sys
from pathlib import Path

import msgpack
import pytest
import redis

import sheepdog
from sheepdog.broker import codec, keys
from sheepdog.submitter import paths
from sheepdog.submitter.store import Store

from ..conftest import Trap
from .conftest import Server, rows, wait_for


def slow_double(x: int) -> int:
    import time

    time.sleep(1.5)
    return 2 * x



def test_forged_replayed_and_garbage_entries_are_incidents_never_unpickled(
    server: Server, dbfile: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    config = {"broker_url": server.url, "dbfile": dbfile, "local_workers": 1}
    rid = sheepdog.map_async(slow_double, [1, 2, 3], config)
    stream = keys.results(rid)
    raw = server.client()
    wait_for(lambda: raw.xlen(stream) >= 1, what="the first outcome")
    [(_id, genuine)] = raw.xrange(stream)  # task 1's real, signed outcome
    bomb = msgpack.packb([1, codec.KIND_PICKLE, b"\0" * 32, pickle.dumps(Trap(marker))])
    forged = [
        {"index": 2, "attempt": 1, "status": "ok", "payload": bomb, "mac": "0" * 64},
        {**genuine, b"index": b"3"},  # a valid entry replayed under another index
        {**genuine, b"attempt": b"2"},  # ... under another attempt
        {"index": 2, "attempt": 1, "status": "error", "error": "forged failure"},
        {"index": 0, "attempt": 0, "status": "cancelled", "error": "forged cancel"},
        {"garbage": "entry"},
        {"index": "x", "status": "ok"},
    ]
    for fields in forged:
        raw.xadd(stream, fields)  # type: ignore[arg-type]
    raw.close()
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [(1, 2), (2, 4), (3, 6)]
    assert not marker.exists()
    assert rows(dbfile, rid) == [(1, 1, "ok"), (2, 1, "ok"), (3, 1, "ok")]
    incidents = [text for args, text in sheepdog.get_errors(rid, dbfile) if args is None]
    assert len(incidents) == len(forged)
    assert sum("signature does not match" in t for t in incidents) == 5
    assert sum("is not a sheepdog outcome" in t for t in incidents) == 2


def test_a_dbfile_result_without_our_signature_is_not_unpickled(
    dbfile: str, tmp_path: Path
) -> None:
    import sqlite3

    rid = sheepdog.map_async(tuple, [[1, 2]], {"dbfile": dbfile})
    assert sheepdog.get_results(rid, dbfile) == [([1, 2], (1, 2))]
    marker = tmp_path / "pwned"
    bomb = codec.encode(Trap(marker), b"not the key" * 3, codec.VALUE_CONTEXT)
    with sqlite3.connect(dbfile) as db:  # someone edits the dbfile
        db.execute("UPDATE results SET value = ?", (bomb,))
    with pytest.raises(sheepdog.IntegrityError, match="does not carry this request's signature"):
        sheepdog.get_results(rid, dbfile)
    assert not marker.exists()


def _job_file(dbfile: str, rid: int) -> dict[str, object]:
    with Store(dbfile) as store:
        row = store.request(rid)
    found = paths.job_dir(f"{row.broker_id[:8]}-{row.broker_request}") / "job.json"
    data: dict[str, object] = json.loads(found.read_text())
    return data


def test_workers_can_touch_only_their_own_request(server: Server, dbfile: str) -> None:
    config = {"broker_url": server.url, "dbfile": dbfile, "local_workers": 1}
    other = sheepdog.map_async(slow_double, [5], config)
    rid = sheepdog.map_async(slow_double, [1, 2, 3], config)
    worker_url = str(_job_file(dbfile, rid)["broker_url"])
    assert server.password not in worker_url  # the workers never see the broker's password
    worker = redis.Redis.from_url(worker_url)
    assert worker.hget(keys.meta(rid), "n_tasks") == b"3"  # its own request: yes
    for denied in (lambda: worker.hget(keys.meta(other), "n_tasks"),
                   lambda: worker.get(keys.func(other)),
                   lambda: worker.flushall(),
                   lambda: worker.keys("*"),
                   lambda: worker.config_get("*"),
                   lambda: worker.acl_list()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            denied()
    worker.close()
    assert sheepdog.get_results(rid, dbfile, timeout=60) == [(1, 2), (2, 4), (3, 6)]
    assert sheepdog.get_results(other, dbfile, timeout=60) == [(5, 10)]
    admin = server.client()
    users = [u.decode() if isinstance(u, bytes) else u for u in admin.acl_users()]
    assert not [u for u in users if u.startswith("sheepdog-")]  # deleted when done
    admin.close()


def test_without_acl_permission_it_says_so_once_and_goes_on(
    server: Server, dbfile: str, capfd: pytest.CaptureFixture[str]
) -> None:
    admin = server.client()
    admin.acl_setuser("limited", enabled=True, passwords=["+pw"], keys=["*"],
                      channels=["*"], commands=["+@all", "-acl"])
    admin.close()
    limited = server.url.replace(f":{server.password}@", ":pw@").replace("://", "://limited", 1)
    config = {"broker_url": limited, "dbfile": dbfile}
    assert sheepdog.map(abs, [-1, -2], config) == [1, 2]
    assert sheepdog.map(abs, [-3], config) == [3]
    err = capfd.readouterr().err
    assert err.count("the broker does not let us make per-request users") == 1
    assert "workers will log in with the broker's own password" in err


def _other_python() -> str:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))):
        if not Path(candidate).parent.parent.name.startswith(here + "."):
            return candidate
    if os.environ.get("CI"):
        pytest.fail("no Python of another minor version on this machine (pyenv versions)")
    pytest.skip("no Python of another minor version on this machine")


def test_a_worker_whose_python_differs_says_so(dbfile: str) -> None:
    other = _other_python()
    with pytest.raises(sheepdog.TaskErrors) as caught:
        sheepdog.map(abs, [-1], {"dbfile": dbfile, "shell": other}, raise_errors=True,
                     timeout=60)
    error = caught.value.failures[0].error
    assert error.startswith("PythonVersionMismatch: this node runs Python")
    assert f"submitted from Python {sys.version.split()[0]}" in error
    assert "Set the 'shell' config key to a Python" in error
