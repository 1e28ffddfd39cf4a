"""Unit tests of single boundaries: codec, config, store, layout. No servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sheepdog.broker import codec
from sheepdog.broker.codec import positional
from sheepdog.errors import IntegrityError, SerialisationError, TaskErrors, TaskFailure
from sheepdog.submitter.config import Settings, describe
from sheepdog.submitter.store import RequestRow, Store, stream_key

KEY = b"s" * 32


@pytest.mark.parametrize(
    "value", [None, True, 0, -(2**63), 2**64 - 1, 1.5, "é", b"\0", [1, [2]], {"a": {1: None}}]
)
def test_plain_values_travel_as_msgpack(value: object) -> None:
    data = codec.encode(value, KEY, codec.VALUE_CONTEXT)
    assert codec.decode(data, KEY, codec.VALUE_CONTEXT) == value
    assert codec._unpack_envelope(data)[0] == codec.KIND_MSGPACK


@pytest.mark.parametrize("value", [(1, 2), (), ("a", [1, 2], {"b": None})])
def test_plain_tuples_travel_as_msgpack_and_stay_tuples(value: object) -> None:
    data = codec.encode(value, KEY, codec.args_context(1))
    assert codec._unpack_envelope(data)[0] == codec.KIND_TUPLE
    back = codec.decode(data, KEY, codec.args_context(1))
    assert back == value and type(back) is tuple
    assert codec.is_plain(data)


@pytest.mark.parametrize("value", [((1, 2), 3), 2**70, {1, 2}, [1, (2,)], {(1, 2): 3},
                                   Path("/x")])
def test_other_values_are_pickled_and_keep_their_types(value: object) -> None:
    data = codec.encode(value, KEY, codec.VALUE_CONTEXT)
    assert codec._unpack_envelope(data)[0] == codec.KIND_PICKLE
    back = codec.decode(data, KEY, codec.VALUE_CONTEXT)
    assert back == value and type(back) is type(value)


def test_a_changed_byte_key_or_context_fails_the_signature() -> None:
    data = bytearray(codec.encode((1, 2), KEY, codec.args_context(7)))
    assert codec.decode(bytes(data), KEY, codec.args_context(7)) == (1, 2)
    with pytest.raises(IntegrityError):
        codec.decode(bytes(data), b"other key", codec.args_context(7))
    with pytest.raises(IntegrityError):  # the arguments of task 7 are not those of task 8
        codec.decode(bytes(data), KEY, codec.args_context(8))
    data[-1] ^= 1
    with pytest.raises(IntegrityError):
        codec.decode(bytes(data), KEY, codec.args_context(7))
    with pytest.raises(SerialisationError, match="not a sheepdog payload"):
        codec.decode(b"garbage", KEY, codec.VALUE_CONTEXT)


@pytest.mark.parametrize(
    "change",
    [{"token": "t2"}, {"index": 4}, {"attempt": 2}, {"status": "error"}, {"cause": "memory"},
     {"payload": b"P"}, {"error": "e"}],
)
def test_an_outcome_signature_binds_request_index_attempt_status_and_body(
    change: dict[str, object]
) -> None:
    signed = {"token": "t1", "index": 3, "attempt": 1, "status": "ok", "cause": "",
              "payload": b"p", "error": ""}
    mac = codec.outcome_mac(KEY, **signed)  # type: ignore[arg-type]
    assert codec.check_outcome_mac(mac, KEY, **signed)  # type: ignore[arg-type]
    assert not codec.check_outcome_mac(mac, KEY, **{**signed, **change})  # type: ignore[arg-type]
    assert not codec.check_outcome_mac(mac, b"k" * 32, **signed)  # type: ignore[arg-type]


def test_positional_arguments_of_an_item() -> None:
    from collections import namedtuple

    point = namedtuple("point", "x y")(1, 2)
    assert positional((1, 2)) == [1, 2]
    assert positional(()) == []
    assert positional([1, 2]) == [[1, 2]]
    assert positional(point) == [point]
    assert positional(None) == [None]


def test_settings_from_seed_config() -> None:
    s = Settings.from_config({"dbfile": "x.sqlite", "ge_opts": ["-l a=1"], "local_workers": 3})
    assert s.dbfile == "x.sqlite" and s.ge_opts == ("-l a=1",) and s.local_slots == 3
    assert s.scheduler_name == "local" and s.worker_python == sys.executable
    assert Settings.from_config(None) == Settings()
    assert Settings.from_config(s) is s
    ge = Settings.from_config({"host": "fear", "broker_url": "redis://:pw@head:6379/0"})
    assert ge.scheduler_name == "gridengine" and ge.worker_python == "/usr/bin/python3"
    assert "broker_url" not in ge.public()
    from dataclasses import replace

    assert Settings.from_public(json.dumps(ge.public())) == replace(ge, broker_url=None)


def test_describe_lists_every_key_once() -> None:
    text = describe()
    for key in ("host", "ssh_port", "ssh_user", "ssh_keyfile", "ssh_dir", "dbfile", "shell",
                "ge_opts", "broker_url", "scheduler", "local_workers", "ship_worker",
                "ssh_tunnel", "retries", "retry_errors", "retry_memory_factor",
                "heartbeat_interval", "lease_timeout", "broker_patience"):
        assert text.count(f"  {key} = ") == 1


def _row(request_id: int, broker: str = "b") -> RequestRow:
    return RequestRow(request_id, f"token{request_id}{broker}", broker, broker, request_id,
                      "loc", "f", 2, "local", "", 0.0)


def test_store_upserts_are_idempotent_and_a_later_attempt_wins(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        with store.new_request() as (floor, add):
            assert floor == 1
            add(_row(1), b"func")
        store.add_tasks(1, [(1, b"a1"), (2, b"a2")])
        base = {"request_id": 1, "idx": 1, "value": None, "error": "x", "cause": None,
                "mac": "", "host": None, "pid": None, "job": None, "booted": None,
                "started": None, "finished": None, "stdout": None, "stderr": None,
                "broker_id": "b"}
        lost = dict(base, status="lost", attempt=1, stream_key=stream_key("10-0"))
        ok = dict(base, status="ok", attempt=2, value=b"v", error=None,
                  stream_key=stream_key("11-0"))
        store.save_outcomes([lost, ok, lost], [], [], [])  # a replay of an earlier attempt loses
        store.save_outcomes([ok], [], [], [])
        assert store.counts(1) == {"ok": 1, "error": 0, "lost": 0}
        assert [(t.idx, t.status, t.attempt) for t in store.tasks(1)] == [
            (1, "ok", 2), (2, None, None)]
        # After a resubmit of task 1 its outcome is history, and attempt 2 is before it.
        store.restart_tasks(1, [1], {1: 3})
        assert [(t.idx, t.status) for t in store.tasks(1)] == [(1, None), (2, None)]
        store.save_outcomes([ok], [], [], [])
        assert store.tasks(1)[0].status is None
        assert [r["attempt"] for r in store.history(1)[1]] == [2]


def test_store_request_ids_are_unique_whatever_the_broker(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        with store.new_request() as (floor, add):
            add(_row(floor, "b1"), b"f")
        with store.new_request() as (floor, add):
            assert floor == 2  # the next broker's ids start above this dbfile's
            add(_row(floor, "b2"), b"f")
        assert [(r.request_id, r.broker_id) for r in store.requests()] == [(1, "b1"), (2, "b2")]


def test_a_busy_dbfile_can_still_be_read(tmp_path: Path) -> None:
    """Reading takes no lock: ls and status work while a collator holds the write lock."""
    import sqlite3

    path = tmp_path / "s.sqlite"
    with Store(path) as store, store.new_request() as (floor, add):
        add(_row(floor), b"f")
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process writing
    try:
        with Store(path, create=False) as store:
            assert [r.request_id for r in store.requests()] == [1]
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_stream_keys_sort_like_stream_ids() -> None:
    ids = ["1-0", "1-1", "1-999999", "2-0", "1700000000000-5"]
    assert sorted(ids, key=stream_key) == ids


def test_errors_survive_pickling() -> None:
    import pickle

    err = TaskErrors(3, [TaskFailure(1, (1, 0), "Traceback...", 2)])
    back = pickle.loads(pickle.dumps(err))
    assert back.request_id == 3 and back.failures == err.failures and str(back) == str(err)


def test_worker_imports_nothing_of_the_submitter() -> None:
    code = (
        "import sys, sheepdog.worker_bootstrap.run\n"
        "bad = [m for m in sys.modules if m.startswith(('sheepdog.submitter', 'tqdm', 'click',"
        " 'sqlite3'))]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_dbfile_of_another_schema_is_refused_by_name(tmp_path: Path) -> None:
    import sqlite3

    from sheepdog.errors import SheepdogError

    path = tmp_path / "old.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE store SET value = '0' WHERE key = 'schema'")
    with pytest.raises(SheepdogError, match="written by a sheepdog with store schema 0"):
        Store(path)


# -- known defects, each with the test that shows it fixed --------------------------


def test_seed_default_ge_opts_none_is_no_options() -> None:
    assert Settings.from_config({"ge_opts": None}).ge_opts == ()


def test_max_aj_tasks_0_means_no_limit() -> None:
    from sheepdog.submitter.schedulers.batch import chunks

    assert chunks(5, 0) == [(1, 5)]
    assert chunks(5, 2) == [(1, 2), (3, 4), (5, 5)]


def test_memory_retries_scale_the_limits_asked_for() -> None:
    from sheepdog.submitter.schedulers.gridengine import memory_limit, scale_memory

    opts = ("-l h_rt=1:0:0,mem_grab=1G", "-l h_vmem=512M", "-r y")
    scaled = scale_memory(opts, 2.0)
    assert scaled == ("-l h_rt=1:0:0,mem_grab=2048M", "-l h_vmem=1024M", "-r y")
    assert memory_limit(scaled) == 2 * 2**30
    assert scale_memory(opts, 1.0) == opts


class _RecordingRemote:
    """The head node as a list of the commands it was asked to run (unit tests only)."""

    where = "fake"

    def __init__(self) -> None:
        self.commands: list[str] = []

    def run(self, command: str, timeout: float = 0) -> object:
        from sheepdog.submitter.remote import Completed

        self.commands.append(command)
        return Completed(command, 0, "", "")


def test_job_ids_from_the_broker_never_reach_a_shell_unchecked() -> None:
    from sheepdog.errors import SubmitError
    from sheepdog.submitter.schedulers.gridengine import GridEngine

    remote = _RecordingRemote()
    scheduler = GridEngine(lambda: remote)  # type: ignore[arg-type, return-value]
    for hostile in (["12; touch /tmp/x"], ["$(reboot)"], ["12 13"]):
        with pytest.raises(SubmitError, match="is not a Grid Engine job id"):
            scheduler.cancel(hostile)
        with pytest.raises(SubmitError, match="is not a Grid Engine job id"):
            scheduler.state(hostile)
    assert scheduler.last_words(Settings(), "name", "12.3; rm -rf ~") == ""
    assert remote.commands == []
    scheduler.cancel(["12", "13"])
    assert remote.commands == ["qdel 12 13"]


def test_slurm_job_ids_from_the_broker_never_reach_a_shell_unchecked() -> None:
    from sheepdog.errors import SubmitError
    from sheepdog.submitter.schedulers.slurm import Slurm

    remote = _RecordingRemote()
    scheduler = Slurm(lambda: remote)  # type: ignore[arg-type, return-value]
    for hostile in (["12; touch /tmp/x"], ["$(reboot)"], ["12 13"], ["12_3"]):
        with pytest.raises(SubmitError, match="is not a Slurm job id"):
            scheduler.cancel(hostile)
        with pytest.raises(SubmitError, match="is not a Slurm job id"):
            scheduler.state(hostile)
    assert scheduler.last_words(Settings(), "name", "12.3; rm -rf ~") == ""
    assert remote.commands == []
    scheduler.cancel(["12", "13"])
    assert remote.commands == ["scancel 12 13"]


def test_rq_job_ids_are_checked_before_use() -> None:
    from sheepdog.errors import SubmitError
    from sheepdog.submitter.schedulers.rq_workers import RqScheduler, rq_ids

    assert rq_ids("sheepdog-ab-1-main/3") == [
        "sheepdog-ab-1-main_1", "sheepdog-ab-1-main_2", "sheepdog-ab-1-main_3"]
    scheduler = RqScheduler(Settings(scheduler="rq", broker_url="redis://127.0.0.1:1/0"))
    for hostile in (["rq:job:x/3"], ["sheepdog-x"], ["sheepdog-x/y"]):
        with pytest.raises(SubmitError, match="is not a sheepdog rq job id"):
            scheduler.state(hostile)
    assert scheduler.last_words(Settings(), "name", "not-ours.1") == ""


def test_a_reused_pid_is_not_taken_for_a_local_runner() -> None:
    import os
    import socket

    from sheepdog.submitter.schedulers.local import LocalScheduler, job_id_for

    mine = job_id_for(os.getpid())
    assert LocalScheduler().state([mine]).active == {mine}
    host, pid, start = mine.split(":")
    reused = f"{host}:{pid}:{start[:-1]}9" if not start.endswith("9") else f"{host}:{pid}:x-1"
    assert LocalScheduler().state([reused]).ended == {reused}  # same pid, not the same process
    assert socket.gethostname() == host


def test_credentials_survive_a_crash_mid_write(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from sheepdog.submitter import credentials, paths

    master = credentials.remember("broker-a", "redis://:a@h/0")
    before = paths.credentials_file().read_text()

    def crash(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(credentials.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        credentials.remember("broker-b", "redis://:b@h/0")
    assert paths.credentials_file().read_text() == before  # whole, as it was
    assert [p.name for p in paths.home().iterdir() if p.name.startswith(".credentials")] == []
    assert credentials.lookup("broker-a") == ("redis://:a@h/0", master)
    assert paths.credentials_file().stat().st_mode & 0o777 == 0o600


def test_a_socket_directory_others_can_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import tempfile

    from sheepdog.broker import embedded
    from sheepdog.errors import EmbeddedBrokerError

    # A deep state dir puts the socket in <tmp>/sheepdog-<uid>: someone made it writable.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shared = tmp_path / f"sheepdog-{os.getuid()}"
    shared.mkdir()
    shared.chmod(0o777)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with pytest.raises(EmbeddedBrokerError, match=r"is not a private directory of this user"
                       r" \(owner uid \d+, mode 777\)"):
        embedded.ensure_running(deep)
    if os.getuid() == 0:  # a state dir owned by someone else
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 65534, 65534)
        with pytest.raises(EmbeddedBrokerError, match="owner uid 65534"):
            embedded.ensure_running(other)


def test_a_missing_ssh_keyfile_is_named(dbfile: str) -> None:
    import sheepdog
    from sheepdog.errors import SSHError

    config = {"host": "headnode", "broker_url": "redis://:pw@headnode:6379/0",
              "ssh_keyfile": "/no/such/key", "dbfile": dbfile}
    with pytest.raises(SSHError, match="ssh_keyfile '/no/such/key' does not exist"):
        sheepdog.map(abs, [1], config)


def test_redact_hides_passwords_in_every_url_form() -> None:
    from sheepdog.broker.urls import redact

    assert redact("unix:///tmp/s.sock?password=x&db=2") == "unix:///tmp/s.sock?password=***&db=2"
    assert redact("unix://:pw@/tmp/s.sock") == "unix://:***@/tmp/s.sock"
    assert redact("rediss://u:pw@h:1/0?ssl_password=k") == "rediss://u:***@h:1/0?ssl_password=***"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_a_failed_unix_socket_connect_leaks_no_socket(tmp_path: Path) -> None:
    import warnings

    from sheepdog.broker import resp
    from sheepdog.errors import BrokerError

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(BrokerError, match="cannot reach the broker"):
            resp.connect(f"unix://{tmp_path}/nothing.sock")
        import gc

        gc.collect()  # an unclosed socket would warn here


def test_slurm_and_rq_settings_are_checked() -> None:
    from sheepdog.errors import ConfigError

    with pytest.raises(ConfigError, match=r"Slurm workers run on other machines and need a"
                       r" broker .* docs/slurm.md"):
        Settings.from_config({"scheduler": "slurm", "host": "login"})
    with pytest.raises(ConfigError, match="rq workers run on other machines"):
        Settings.from_config({"scheduler": "rq"})
    with pytest.raises(ConfigError, match="scheduler is 'rq', whose workers take jobs from"
                       " Redis"):
        Settings.from_config({"scheduler": "rq", "host": "h", "broker_url": "redis://h/0"})
    with pytest.raises(ConfigError, match=r"slurm_opts must be a list of strings, one per"
                       r" option, e.g. \['--time=1:00:00'"):
        Settings.from_config({"slurm_opts": "--time=1:00:00"})
    with pytest.raises(ConfigError, match="max_running must be a positive whole number"):
        Settings.from_config({"max_running": 0})
    with pytest.raises(ConfigError, match="'slurm_opt' \\(did you mean 'slurm_opts'\\?\\)"):
        Settings.from_config({"slurm_opt": []})
    assert "slurm_opts = ()" in describe() and "rq_queue = 'sheepdog'" in describe()


def test_the_rq_url_password_stays_out_of_the_dbfile() -> None:
    from sheepdog.submitter import credentials

    settings = Settings.from_config({"scheduler": "rq", "broker_url": "redis://h/0",
                                     "rq_url": "redis://:s3cret@rq-host:6379/0",
                                     "slurm_opts": ["--mem=1G"]})
    public = settings.public()
    assert public["rq_url"] == "redis://:***@rq-host:6379/0" and "s3cret" not in json.dumps(public)
    credentials.remember_url(settings.rq_url or "", public["rq_url"])
    again = Settings.from_public(json.dumps(public))
    assert again.slurm_opts == ("--mem=1G",)
    assert credentials.full_url(again.rq_url or "") == "redis://:s3cret@rq-host:6379/0"


class _HeadNode:
    """A head node whose PATH has ``commands`` (unit tests of the choice only)."""

    where = "u@head"

    def __init__(self, *commands: str) -> None:
        self.commands = commands

    def run(self, command: str, timeout: float = 0) -> object:
        from sheepdog.submitter.remote import Completed

        found = "".join(f"/usr/bin/{c}\n" for c in self.commands if f"-v {c}" in command)
        return Completed(command, 0 if found else 1, found, "")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("commands", "chosen"), [
    (("qsub",), "gridengine"), (("sbatch",), "slurm"), (("sbatch", "qsub"), "gridengine")])
def test_with_only_host_the_head_node_decides(commands: tuple[str, ...], chosen: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from sheepdog.submitter.session import Session

    session = Session(Settings.from_config({"host": "head", "broker_url": "redis://h/0"}))
    session._remote = _HeadNode(*commands)  # type: ignore[assignment]
    session.choose_scheduler()
    assert session.settings.scheduler == chosen
    assert f"head runs {chosen}: using it" in capsys.readouterr().err


def test_a_head_node_with_neither_scheduler_is_refused() -> None:
    from sheepdog.errors import ConfigError
    from sheepdog.submitter.session import Session

    session = Session(Settings.from_config({"host": "head", "broker_url": "redis://h/0"}))
    session._remote = _HeadNode()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"u@head has no qsub or sbatch on the PATH .* set"
                       r" 'scheduler'"):
        session.choose_scheduler()
