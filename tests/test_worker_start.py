"""A worker starts in little more than Python itself does.

Every array task starts a worker, so what the worker imports is paid once per
task. The modules in ``COSTLY`` each cost a start more than it can spare (on
Python 3.11 ``typing`` alone costs half of ``python -c pass``; ``re``, which
``json``, ``pickle`` and ``urllib.parse`` import, a third; ``hashlib`` loads
OpenSSL). None of them may be imported before a task runs: the tests read
``python -X importtime`` of a fresh interpreter (``-S``: no site-packages
hooks), and the modules a live task sees loaded. The rest checks that the
stand-ins for what was removed behave as the originals.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import stat
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from sheepdog.broker import codec, keys, urls
from sheepdog.broker.tasks import Batch, Claim, ClaimReply
from sheepdog.errors import TaskFailure
from sheepdog.submitter import zipapp
from sheepdog.worker_bootstrap import capture
from sheepdog.worker_bootstrap.environment import TASK_INDEX_VARS, BadEnvironment, JobFile

from .conftest import Server
from .test_broker import KEY, TOKEN, _pending_request

REPO = Path(__file__).resolve().parent.parent
#: Where msgpack is installed (the worker's one dependency; cloudpickle comes lazily).
SITE = Path(msgpack.__file__).resolve().parent.parent

#: Modules a worker must not import before it runs its task, and what pulls them in.
COSTLY = {
    "re": "json, pickle, urllib.parse, typing",
    "enum": "re, socket",
    "typing": "annotations at run time (use TYPE_CHECKING)",
    "dataclasses": "imports inspect, ast, dis, copy",
    "inspect": "dataclasses",
    "ast": "inspect",
    "dis": "inspect",
    "copy": "dataclasses",
    "pathlib": "imports fnmatch and urllib.parse",
    "traceback": "imports linecache, tokenize, textwrap (import it where one is formatted)",
    "tokenize": "traceback",
    "textwrap": "traceback",
    "ssl": "only rediss:// needs it",
    "tempfile": "imports random, shutil, bz2, lzma",
    "shutil": "tempfile",
    "random": "tempfile, secrets",
    "json": "json.decoder imports re",
    "pickle": "imports re (the C _pickle is enough to load)",
    "urllib.parse": "imports re and ipaddress",
    "ipaddress": "urllib.parse",
    "socket": "imports enum and selectors (_socket is enough)",
    "selectors": "socket",
    "threading": "more than the locks and the one thread it needs (_thread has them)",
    "contextlib": "imports collections and functools (runpy imports it for -m and a zipapp)",
}

#: What runpy itself imports to run ``-m`` or a zipapp: not the worker's doing.
RUNPY = frozenset({"contextlib"})


def _bare_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def _imports(args: list[str], env: dict[str, str] | None = None
             ) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    """Every module a fresh ``python -S`` imported for ``args`` -> the chain of
    imports that brought it in ("re <- urllib.parse <- sheepdog.broker.urls <- ...")."""
    proc = subprocess.run([sys.executable, "-S", "-X", "importtime", *args],
                          env=env or _bare_env(), capture_output=True, text=True, timeout=120,
                          check=False)
    names = [line.split("|")[2] for line in proc.stderr.splitlines()
             if line.startswith("import time:") and line.count("|") == 2][1:]  # no header
    chains: dict[str, str] = {}
    for i, name in enumerate(names):  # a module is listed after what it imported, less indented
        depth = len(name) - len(name.lstrip())
        chain = [name.strip()]
        for later in names[i + 1:]:
            if len(later) - len(later.lstrip()) < depth:
                chain.append(later.strip())
                depth = len(later) - len(later.lstrip())
        chains.setdefault(name.strip(), " <- ".join(chain))
    assert "sheepdog.errors" in chains, proc.stderr[-2000:]  # it did import the worker
    return chains, proc


def _costly(imported: dict[str, str] | list[str], allowed: frozenset[str] = frozenset()
            ) -> list[str]:
    found = [name for name in COSTLY if name in imported and name not in allowed]
    if isinstance(imported, dict):
        return [f"{imported[name]}  ({name}: {COSTLY[name]})" for name in found]
    return [f"{name} ({COSTLY[name]})" for name in found]


@pytest.fixture(scope="module")
def worker_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker zipapp, run once already (it unpacks itself on its first start)."""
    path = tmp_path_factory.mktemp("pyz") / "sheepdog-test.pyz"
    path.write_bytes(zipapp.build()[0])
    first = subprocess.run([sys.executable, "-S", str(path), str(path.parent / "no-job")],
                           env=_bare_env(), capture_output=True, text=True, timeout=60,
                           check=False)
    assert first.returncode == 2 and "cannot read job file" in first.stderr, first.stderr
    assert (path.parent / "sheepdog-test.d").is_dir()
    return path


def test_the_worker_modules_import_nothing_costly() -> None:
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(SITE)!r}];"
            " import sheepdog.worker_bootstrap.run, sheepdog.worker_bootstrap.pilot")
    imported, _ = _imports(["-c", code])
    assert not _costly(imported), "the worker imports:\n" + "\n".join(_costly(imported))


def test_the_zipapp_starts_without_anything_costly(worker_pyz: Path, tmp_path: Path) -> None:
    """Up to its first broker call, which fails here (nothing listens on port 1)."""
    job = tmp_path / "job.json"
    JobFile("redis://:secret@127.0.0.1:1/0", 5, TOKEN, KEY.hex(), "local",
            broker_patience=0).dump(job)
    env = {**_bare_env(), TASK_INDEX_VARS["local"]: "1"}
    imported, proc = _imports([str(worker_pyz), str(job)], env)
    assert proc.returncode == 1, proc.stderr  # EXIT_NOT_RECORDED: the broker is unreachable
    assert "redis://:***@127.0.0.1:1/0 did not answer" in proc.stderr
    assert not _costly(imported, RUNPY), "the worker imports:\n" + "\n".join(
        _costly(imported, RUNPY))


class _Sys:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (__import__, ("sys",))


class _LoadedModules:
    """Unpickles as the worker's own ``sys.modules`` (by plain pickle: no cloudpickle)."""

    def __reduce__(self) -> tuple[object, tuple[object, str]]:
        return (getattr, (_Sys(), "modules"))


@pytest.fixture(scope="module")
def unix_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("unix-server")
    server = Server(workdir)
    server.start("--unixsocket", str(workdir / "s.sock"), "--unixsocketperm", "700")
    yield server
    server.stop()


@pytest.mark.parametrize("scheme", ["redis", "unix"])
def test_a_task_runs_before_anything_costly_is_imported(
    scheme: str, unix_server: Server, worker_pyz: Path, tmp_path: Path
) -> None:
    """The task is ``sorted(sys.modules)`` of the worker that runs it: what the worker
    loaded to connect, claim, unpickle, capture output and start its heartbeat."""
    raw = unix_server.client()
    raw.flushdb()
    _broker, job, path = _pending_request(unix_server.url, sorted, [(_LoadedModules(),)],
                                          tmp_path)
    if scheme == "unix":
        url = f"unix://:{unix_server.password}@{unix_server.workdir / 's.sock'}?db=0"
        job.replace(broker_url=url).dump(path)
    env = {**_bare_env(), TASK_INDEX_VARS["local"]: "1"}
    proc = subprocess.run([sys.executable, "-S", str(worker_pyz), str(path)], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    [(_id, fields)] = raw.xrange(keys.results(job.request_id))
    raw.close()
    assert fields[b"status"] == b"ok", fields
    loaded = codec.decode(fields[b"payload"], KEY, codec.VALUE_CONTEXT)
    assert {"sheepdog.worker_bootstrap.run", "sheepdog.broker.resp", "msgpack"} <= set(loaded)
    assert "cloudpickle" not in loaded  # nothing was pickled by value
    assert not _costly(loaded, RUNPY), "loaded when the task ran:\n" + "\n".join(
        _costly(loaded, RUNPY))


# -- the stand-ins behave as what they replace ----------------------------------------

URLS = [
    "redis://h", "redis://:pw@h:6379/0", "rediss://u:p%40ss@Host.Example:6380/2?ssl_cert_reqs=none",
    "unix:///tmp/s.sock", "unix://:pw@/tmp/s.sock?db=2&password=x", "redis://h:99999",
    "redis://h:port", "REDIS://H:1", "redis://u@h", "redis://:@h", "redis://h/0#frag",
    "redis://h?a=1&&b=2+3&c=%zz", "redis:h", "h:1", "//h:1/0", "", "redis://[::1]:6379/0",
    "redis://[fe80::1%25eth0]:1", " redis://h", "redis://h\n:1", "redis://hé:1", "1redis://h",
    "redis://a@b@h:1", "redis://u:p:q@h", "redis://H%Zone:1",
]


def _split(split: object, url: str) -> list[object]:
    try:
        parts = split(url)  # type: ignore[operator]
    except ValueError as exc:
        return [type(exc)]
    got: list[object] = []
    for name in ("scheme", "netloc", "path", "query", "fragment", "username", "password",
                 "hostname", "port"):
        try:
            got.append(getattr(parts, name))
        except ValueError as exc:
            got.append(str(exc))
    return got


def test_urls_split_as_urllib_does() -> None:
    rng = random.Random(7)
    alphabet = "rRedis:/@?#&=%+-._~[] 0aF9xZ"
    fuzz = [rng.choice(["redis://", "rediss://", "unix://", "", "x:"])
            + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
            for _ in range(3000)]
    for url in URLS + fuzz:
        assert _split(urls.split, url) == _split(urllib.parse.urlsplit, url), url
        if _split(urls.split, url)[0] is not ValueError:
            assert urls.split(url).unsplit() == urllib.parse.urlunsplit(
                urllib.parse.urlsplit(url)), url
        query = url.partition("?")[2]
        assert urls.query_params(query) == urllib.parse.parse_qs(query), url
        assert urls.unquote(url) == urllib.parse.unquote(url), url


def test_redact_and_with_user_are_unchanged() -> None:
    assert urls.redact("redis://u:pw@Host:1/0?password=x#f") == "redis://u:***@host:1/0?password=***#f"
    assert urls.redact("redis://[::1]:1") == "redis://[::1]:1"
    assert urls.with_user("redis://:pw@h:1/0?password=x&db=1", "u s", "p/w") == \
        "redis://u%20s:p%2Fw@h:1/0?db=1"


def test_job_file_round_trip(tmp_path: Path) -> None:
    job = JobFile("redis://:pw@h:1/0", 7, TOKEN, KEY.hex(), "gridengine", indices=[3, 5],
                  memory_limit=2**30, mode="workers")
    path = tmp_path / "job.json"
    job.dump(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["job.json"]  # no part file left
    assert json.loads(path.read_text()) == {  # JSON, as before: readable with any tool
        "broker_url": "redis://:pw@h:1/0", "request_id": 7, "token": TOKEN, "key": KEY.hex(),
        "scheduler": "gridengine", "indices": [3, 5], "level": 0, "memory_limit": 2**30,
        "heartbeat_interval": 10.0, "lease_timeout": 60.0, "broker_patience": 120.0,
        "max_payload": 512 * 2**20, "mode": "workers"}
    back = JobFile.load(path)
    assert back == job and JobFile.load(str(path)) == job and back is not job
    assert back.task_for(2) == 5 and back.indices == [3, 5]
    assert pickle.loads(pickle.dumps(job)) == job
    assert repr(job).startswith("JobFile(broker_url='redis://:pw@h:1/0', request_id=7,")
    assert job.replace(indices=None, level=2) == JobFile(
        "redis://:pw@h:1/0", 7, TOKEN, KEY.hex(), "gridengine", level=2,
        memory_limit=2**30, mode="workers")
    assert job.indices == [3, 5]  # replace made a copy
    with pytest.raises(AttributeError):
        job.level = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field"):
        job.replace(colour="red")


@pytest.mark.parametrize("text", ["", "{", "[1]", '{"broker_url": "x"}', '{"a": 1} x',
                                  '{"broker_url": "u", "request_id": 1, "token": "t",'
                                  ' "key": "k", "scheduler": "local", "colour": 1}'])
def test_a_job_file_that_is_not_one_says_so(tmp_path: Path, text: str) -> None:
    path = tmp_path / "job.json"
    path.write_text(text)
    with pytest.raises(BadEnvironment, match="is not a sheepdog job file of this version"):
        JobFile.load(path)


def test_the_records_behave_as_frozen_dataclasses() -> None:
    reply = ClaimReply("run", 2, b"f", b"a", "3.11.0")
    assert (reply.kind, reply.attempt, reply.func, reply.args, reply.python, reply.detail) == \
        ("run", 2, b"f", b"a", "3.11.0", "")
    assert reply == ClaimReply("run", 2, b"f", b"a", "3.11.0") != ClaimReply("done")
    assert repr(ClaimReply("done")) == \
        "ClaimReply(kind='done', attempt=0, func=b'', args=b'', python='', detail='')"
    batch = Batch("run", "3.11.0", b"", [(1, 1, b"x")])
    assert Batch("empty").tasks == [] and Batch("empty").tasks is not Batch("empty").tasks
    claim = Claim.parse("2 1 0 h1 17.5 node 42 7.1")
    assert claim == Claim(2, 1, 0, "h1", 17.5, "node", "42", "7.1")
    assert Claim.parse("1 1 0 -") == Claim(1, 1, 0, "-")
    assert hash(claim) == hash(Claim(2, 1, 0, "h1", 17.5, "node", "42", "7.1"))
    failure = TaskFailure(1, (1, 0), "Traceback...", 2)
    assert failure == TaskFailure(1, (1, 0), "Traceback...", 2) and failure.attempt == 2
    assert TaskFailure(1, None, "e").attempt == 1
    assert repr(failure) == "TaskFailure(index=1, args=(1, 0), error='Traceback...', attempt=2)"
    for record in (reply, batch, claim, failure):
        assert pickle.loads(pickle.dumps(record)) == record
        with pytest.raises(AttributeError):
            record.kind = "x"  # type: ignore[union-attr]


def test_captured_output_goes_to_an_anonymous_file(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with capture.temporary_file() as f:
        f.write(b"hello")
        f.seek(0)
        assert f.read() == b"hello"
        assert list(tmp_path.iterdir()) == []  # nameless from the start
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))  # falls back to tempfile
    with capture.temporary_file() as f:
        f.write(b"x" * 5000)
        assert capture.tail(f) == "x" * capture.TAIL_BYTES
