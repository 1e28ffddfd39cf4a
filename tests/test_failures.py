"""Every failure a user can cause ends in one readable message, and nothing is lost."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import sheepdog
from sheepdog.errors import (
    BrokerError,
    ConfigError,
    RequestFailed,
    ResultsTimeout,
    SerialisationError,
    TaskErrors,
)
from sheepdog.submitter import paths, results
from sheepdog.submitter.store import RequestRow, Store


def divide(a: float, b: float) -> float:
    return a / b


def test_exception_in_f_is_none_in_place_and_traceback_in_get_errors(
    dbfile: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = sheepdog.map(divide, [(1, 2), (1, 0), (3, 1)], {"dbfile": dbfile})
    assert out == [0.5, None, 3.0]
    assert "1 of 3 tasks of request" in capsys.readouterr().err
    request_id = sheepdog.map_async(divide, [(4, 0)], {"dbfile": dbfile})
    sheepdog.get_results(request_id, dbfile)
    [(args, error)] = sheepdog.get_errors(request_id, dbfile)
    assert args == (4, 0)
    assert error.startswith("Traceback (most recent call last):")
    assert "in divide\n    return a / b" in error
    assert error.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "sheepdog/worker_bootstrap" not in error  # only the user's frames


def test_raise_errors_carries_every_remote_traceback(dbfile: str) -> None:
    with pytest.raises(TaskErrors) as caught:
        sheepdog.map(divide, [(1, 0), (2, 1), (3, 0)], {"dbfile": dbfile}, raise_errors=True)
    failures = caught.value.failures
    assert [(f.index, f.args) for f in failures] == [(1, (1, 0)), (3, (3, 0))]
    assert all("ZeroDivisionError" in f.error for f in failures)
    assert "2 task(s) of request" in str(caught.value)


def test_returning_none_is_not_a_failure(dbfile: str) -> None:
    def nothing(x: int) -> None:
        return None

    assert sheepdog.map(nothing, [1, 2], {"dbfile": dbfile}, raise_errors=True) == [None, None]


def test_unpicklable_function_is_refused_before_anything_runs(dbfile: str) -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    message = r"cannot serialise the function .*uses_lock.*lock"
    with pytest.raises(SerialisationError, match=message):
        sheepdog.map(uses_lock, [1], {"dbfile": dbfile})
    with pytest.raises(SerialisationError, match="arguments of task 2"):
        sheepdog.map(divide, [(1, 2), (lock, 1)], {"dbfile": dbfile})
    assert not Path(dbfile).exists()  # refused before the dbfile was even created


def test_unpicklable_result_is_a_recorded_error(dbfile: str) -> None:
    def make_lock(x: int) -> object:
        return threading.Lock()

    request_id = sheepdog.map_async(make_lock, [1], {"dbfile": dbfile})
    assert sheepdog.get_results(request_id, dbfile) == [(1, None)]
    [(_, error)] = sheepdog.get_errors(request_id, dbfile)
    assert "SerialisationError: cannot serialise the return value" in error
    assert "lock" in error


def test_task_output_tail_is_kept(dbfile: str) -> None:
    def noisy(x: int) -> int:
        import sys

        print("to stdout", x)
        print("to stderr", x, file=sys.stderr)
        os.system("echo from a child process")
        return x

    request_id = sheepdog.map_async(noisy, [7], {"dbfile": dbfile})
    sheepdog.get_results(request_id, dbfile)
    from sheepdog.submitter.store import Store

    with Store(dbfile) as store:
        detail = store.outcome_detail(request_id, 1)
    assert detail is not None
    assert detail["stdout"] == "to stdout 7\nfrom a child process\n"
    assert detail["stderr"] == "to stderr 7\n"
    assert detail["host"] and detail["pid"] and detail["finished"] >= detail["started"]


def test_killed_task_is_lost_after_its_retries_not_waited_for(dbfile: str) -> None:
    def die(x: int) -> int:
        if x == 2:
            os.kill(os.getpid(), 9)
        return x

    request_id = sheepdog.map_async(die, [1, 2, 3], {"dbfile": dbfile})  # retries=1
    assert sheepdog.get_results(request_id, dbfile, timeout=60) == [(1, 1), (2, None), (3, 3)]
    [failure] = sheepdog.get_errors(request_id, dbfile)
    args, error = failure
    assert args == 2
    assert "was killed by signal SIGKILL without an outcome" in error
    assert (failure.task, failure.status, failure.attempt) == (2, "lost", 2)  # type: ignore[attr-defined]
    assert re.search(rf"\[sheepdog: attempt 2; earlier attempt 1: lost on {os.uname().nodename}:"
                     r" worker process .*was killed by signal SIGKILL without an outcome.*\]$",
                     error.rstrip())


def test_a_killed_task_is_run_again_and_its_result_kept(dbfile: str, tmp_path: Path) -> None:
    def die_once(x: int) -> int:
        marker = tmp_path / f"died-{x}"
        if x == 2 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), 9)
        return x * 10

    assert sheepdog.map(die_once, [1, 2, 3], {"dbfile": dbfile}, raise_errors=True) == [
        10, 20, 30]
    with Store(dbfile) as store:
        [row] = store.requests()
        assert store.retried(row.request_id) == 1
        assert store.outcome_detail(row.request_id, 2)["attempt"] == 2  # type: ignore[index]
    assert sheepdog.get_errors(row.request_id, dbfile) == []


def test_retries_zero_keeps_the_first_loss(dbfile: str) -> None:
    def die(x: int) -> int:
        os.kill(os.getpid(), 9)
        return x

    with pytest.raises(TaskErrors) as caught:
        sheepdog.map(die, [1], {"dbfile": dbfile, "retries": 0}, raise_errors=True)
    assert caught.value.failures[0].attempt == 1


def test_errors_are_final_unless_retry_errors(dbfile: str, tmp_path: Path) -> None:
    def flaky(x: int) -> int:
        marker = tmp_path / f"failed-{x}"
        if not marker.exists():
            marker.touch()
            raise RuntimeError("first time")
        return x

    assert sheepdog.map(flaky, [1], {"dbfile": dbfile}, verbose=False) == [None]
    assert sheepdog.map(flaky, [2], {"dbfile": dbfile, "retry_errors": True}) == [2]


def test_sys_exit_in_f_is_an_error(dbfile: str) -> None:
    def leave(x: int) -> int:
        raise SystemExit(3)

    with pytest.raises(TaskErrors, match="SystemExit: 3"):
        sheepdog.map(leave, [1], {"dbfile": dbfile}, raise_errors=True)


def test_wrong_shell_is_a_clear_lost_task(dbfile: str) -> None:
    config = {"dbfile": dbfile, "shell": "/no/such/python"}
    with pytest.raises(TaskErrors) as caught:
        sheepdog.map(divide, [(1, 1)], config, raise_errors=True, timeout=60)
    message = caught.value.failures[0].error
    assert "cannot start the worker with '/no/such/python'" in message
    assert "'shell' config key" in message


def test_timeout_names_the_counts(dbfile: str) -> None:
    def slow(x: int) -> int:
        import time

        time.sleep(30)
        return x

    request_id = sheepdog.map_async(slow, [1], {"dbfile": dbfile})
    try:
        with pytest.raises(ResultsTimeout, match=r"0 of 1 tasks done after 0.5 s"):
            sheepdog.get_results(request_id, dbfile, timeout=0.5)
    finally:
        sheepdog.cancel(request_id, dbfile)


def _request_row(request_id: int, dbfile: str) -> RequestRow:
    with Store(dbfile) as store:
        return store.request(request_id)


def _runner_pid(request_id: int, dbfile: str) -> int:
    return int(_request_row(request_id, dbfile).job_ids.split(":")[1])


def _live_processes_of(request_id: int, dbfile: str) -> list[str]:
    """Runner and workers of a local request: every process naming its job file."""
    row = _request_row(request_id, dbfile)
    job_file = str(paths.job_dir(f"{row.broker_id[:8]}-{request_id}") / "job.json")
    pids = subprocess.run(
        ["pgrep", "-f", job_file], capture_output=True, text=True, check=False
    ).stdout.split()
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _wait_gone(request_id: int, dbfile: str) -> None:
    deadline = time.monotonic() + 10
    while _live_processes_of(request_id, dbfile):
        if time.monotonic() > deadline:
            raise AssertionError(f"still running: {_live_processes_of(request_id, dbfile)}")
        time.sleep(0.1)


def test_cancel_stops_the_job_and_map_says_so(dbfile: str) -> None:
    def slow(x: int) -> int:
        import time

        time.sleep(60)
        return x

    request_id = sheepdog.map_async(slow, range(4), {"dbfile": dbfile, "local_workers": 2})
    with results.open_request(request_id, dbfile) as request:
        broker = request.connect()
        deadline = time.monotonic() + 20
        while len(broker.leases(request_id)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # until both workers are inside slow()
    time.sleep(0.3)
    assert len(_live_processes_of(request_id, dbfile)) == 3  # the runner and two workers
    assert sheepdog.cancel(request_id, dbfile) == 4
    _wait_gone(request_id, dbfile)
    expected = f"request {request_id} was cancelled \\(cancelled by the user\\); 0 of 4"
    with pytest.raises(RequestFailed, match=expected):
        sheepdog.get_results(request_id, dbfile, timeout=30)
    assert sheepdog.get_results(request_id, dbfile, block=False) == [(i, None) for i in range(4)]
    assert all("cancelled by the user" in e for _, e in sheepdog.get_errors(request_id, dbfile))


def test_runner_that_dies_gives_lost_tasks_not_a_hang(dbfile: str) -> None:
    def slow(x: int) -> int:
        import time

        time.sleep(60)
        return x

    request_id = sheepdog.map_async(slow, range(3), {"dbfile": dbfile, "local_workers": 1})
    runner = _runner_pid(request_id, dbfile)
    os.kill(runner, signal.SIGKILL)
    with pytest.raises(RequestFailed, match=r"was cancelled \(the local job .* ended before"
                       r" every task had started \(2 never did\)"):
        sheepdog.get_results(request_id, dbfile, timeout=60)
    out = sheepdog.get_results(request_id, dbfile, block=False)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(runner, signal.SIGKILL)  # its orphaned worker, if it had started one
    assert out == [(i, None) for i in range(3)]
    errors = sheepdog.get_errors(request_id, dbfile)
    assert len(errors) == 3
    assert all("ended before every task had started" in e for _, e in errors)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hots": "fear"}, r"unknown config key\(s\): 'hots' \(did you mean 'host'\?\)"),
        ({"port": 7676}, "'port' is no longer used: the workers no longer connect"),
        ({"localhost": "me"}, "'localhost' is no longer used"),
        ({"ge_opts": "-l h_rt=1:0:0"}, "ge_opts must be a list of strings"),
        ({"ssh_port": "22"}, "ssh_port must be a positive whole number"),
        ({"broker_url": "http://x"}, "scheme 'http'; use one of redis://, rediss://, unix://"),
        ({"scheduler": "pbs"}, "scheduler 'pbs' is not one of local, gridengine"),
        ({"retries": -1}, "retries must be a whole number, 0 or more"),
        ({"retry_errors": 1}, "retry_errors must be True or False"),
        ({"lease_timeout": 5, "heartbeat_interval": 3},
         r"lease_timeout \(5 s\) must be at least twice heartbeat_interval \(3 s\)"),
        ({"retry_memory_factor": 0.5}, "retry_memory_factor must be more than 1"),
        ({"broker_patience": "long"}, "broker_patience must be a number more than 0"),
        ({"host": "fear", "scheduler": "local"}, "host 'fear' is set but scheduler is 'local'"),
        ({"host": "fear"}, "Cluster workers run on other machines and need a broker they"),
        ({"scheduler": "gridengine"}, "Grid Engine workers run on other machines and need a"),
        ({"scheduler": "slurm"}, "Slurm workers run on other machines and need a broker"),
        ({"ssh_tunnel": "sometimes"}, "ssh_tunnel must be one of auto, always, never"),
        ({"ship_worker": "yes"}, "ship_worker must be True or False"),
    ],
)
def test_bad_config_is_refused_with_the_fix(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sheepdog.map(divide, [(1, 1)], config)


def test_unknown_key_lists_every_valid_key_with_its_default() -> None:
    with pytest.raises(ConfigError) as caught:
        sheepdog.map_async(divide, [(1, 1)], {"nope": 1})
    text = str(caught.value)
    for line in ("host = None", "ssh_port = None", "ssh_dir = '.sheepdog'",
                 "dbfile = './sheepdog.sqlite'", "ge_opts = ()", "broker_url = None"):
        assert line in text


def test_unreachable_broker_is_one_clear_error(dbfile: str) -> None:
    config = {"dbfile": dbfile, "broker_url": "redis://:pw@127.0.0.1:1/0"}
    with pytest.raises(BrokerError, match=r"cannot reach the broker at redis://:\*\*\*@127.0.0.1:1/0"):
        sheepdog.map(divide, [(1, 1)], config)


def test_wrong_broker_password_is_one_clear_error(server_url: str, dbfile: str) -> None:
    wrong = server_url.replace("://:", "://:wrong", 1)
    with pytest.raises(BrokerError, match="refused the password"):
        sheepdog.map(divide, [(1, 1)], {"dbfile": dbfile, "broker_url": wrong})


def test_unknown_request_id(dbfile: str, tmp_path: Path) -> None:
    with pytest.raises(sheepdog.RequestNotFound, match=r"request 12345 is not in .*: there is no"
                       " such file"):
        sheepdog.get_results(12345, dbfile)
    assert not Path(dbfile).exists()  # reading does not create it
    sheepdog.map(divide, [(1, 1)], {"dbfile": dbfile})
    with pytest.raises(sheepdog.RequestNotFound, match="request 12345 is not in"):
        sheepdog.get_results(12345, dbfile)


def test_get_results_without_blocking_lists_every_task(dbfile: str) -> None:
    def slow(x: int) -> int:
        import time

        if x:
            time.sleep(30)
        return x

    request_id = sheepdog.map_async(slow, [0, 1], {"dbfile": dbfile})
    try:
        deadline = time.monotonic() + 30
        while sheepdog.get_results(request_id, dbfile, block=False)[0][1] is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # As the original Sheepdog: every argument, None where no result came yet.
        assert sheepdog.get_results(request_id, dbfile, block=False) == [(0, 0), (1, None)]
    finally:
        sheepdog.cancel(request_id, dbfile)


def test_get_errors_does_not_unpickle_results(dbfile: str, tmp_path: Path) -> None:
    """A result whose class cannot be imported here does not stop get_errors."""
    module = tmp_path / "gone_module.py"
    module.write_text("class Thing:\n    pass\n")
    code = f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import sheepdog, gone_module

        def f(x):
            if x:
                raise ValueError("bad")
            return gone_module.Thing()

        print(sheepdog.map_async(f, [0, 1], {{"dbfile": {dbfile!r}}}))
    """
    from .conftest import run_python

    proc = run_python(code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    request_id = int(proc.stdout)
    assert "gone_module" not in sys.modules  # this process cannot unpickle a Thing
    deadline = time.monotonic() + 60
    while True:
        errors = sheepdog.get_errors(request_id, dbfile)
        if errors or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    [(args, error)] = errors
    assert args == 1 and "ValueError: bad" in error


def test_a_failure_after_the_job_started_leaves_no_job_behind(
    dbfile: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a locked dbfile) right after the scheduler took the job."""
    from sheepdog.broker.client import Broker

    started: list[str] = []
    original = Broker.queued

    def interrupted(self: Broker, request_id: int, job_ids: str, status: str = "") -> None:
        started.append(job_ids)
        raise KeyboardInterrupt

    monkeypatch.setattr(Broker, "queued", interrupted)

    def slow(x: int) -> int:
        import time

        time.sleep(60)
        return x

    job_files_before = set((paths.home() / "jobs").glob("*/job.json"))
    with pytest.raises(KeyboardInterrupt):
        sheepdog.map_async(slow, range(3), {"dbfile": dbfile})
    monkeypatch.setattr(Broker, "queued", original)
    [job_id] = started
    runner = int(job_id.split(":")[1])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{runner}").exists() and \
            Path(f"/proc/{runner}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the runner was left running"
        time.sleep(0.05)
    with Store(dbfile) as store:
        assert store.requests() == []
    assert set((paths.home() / "jobs").glob("*/job.json")) == job_files_before  # no password left


def test_cancel_writes_one_entry_however_many_tasks(dbfile: str) -> None:
    def slow(x: int) -> int:
        import time

        time.sleep(60)
        return x

    request_id = sheepdog.map_async(slow, range(500), {"dbfile": dbfile, "local_workers": 1})
    assert sheepdog.cancel(request_id, dbfile) == 500
    with results.open_request(request_id, dbfile) as request:
        broker = request.connect()
        entries = [e for chunk in broker.all_results(request.row.broker_request) for e in chunk]
    assert [f["status"] for _, f in entries][-1] == b"cancelled"
    assert len(entries) <= 2  # one for the request, perhaps one for the task it killed
    lost = [e for _, e in sheepdog.get_errors(request_id, dbfile)]
    assert len(lost) == 500 and all("cancelled by the user" in e for e in lost[1:])


def test_a_killed_task_keeps_its_last_words(dbfile: str) -> None:
    def talk_then_die(x: int) -> int:
        import os
        import sys
        import time

        print("about to do something dangerous", file=sys.stderr, flush=True)
        time.sleep(1.5)  # its output reaches the log while it runs, not when it returns
        os.kill(os.getpid(), 9)
        return x

    request_id = sheepdog.map_async(talk_then_die, [1], {"dbfile": dbfile, "retries": 0})
    sheepdog.get_results(request_id, dbfile, timeout=60)
    with Store(dbfile) as store:
        detail = store.outcome_detail(request_id, 1)
    assert detail is not None and detail["status"] == "lost"
    assert "about to do something dangerous" in detail["stderr"]


def test_ctrl_c_while_map_waits_leaves_the_request_running(tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time, sheepdog

        def slow(x):
            time.sleep(3)
            return x + 1

        print("waiting", flush=True)
        sheepdog.map(slow, [1, 2], {{"dbfile": {str(tmp_path / "r.sqlite")!r}}})
        """))
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=tmp_path) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "waiting\n"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    [request_id] = re.findall(r"request (\d+) keeps running; collect it with", err)
    dbfile = str(tmp_path / "r.sqlite")
    assert sheepdog.get_results(int(request_id), dbfile, timeout=60) == [(1, 2), (2, 3)]
