"""sheepdog.Executor: a real concurrent.futures.Executor over array jobs.

On the embedded default (local workers, the private broker) and on the Grid
Engine testbed: futures work with the standard ``wait``/``as_completed`` and
with asyncio, calls submitted together go out as one request, a failed task's
future carries the remote traceback, and ``cancel()`` stops tasks that have not
started - which then never run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import sheepdog
from sheepdog.submitter.store import Store


def scaled(x: int, scale: int = 1, *, offset: int = 0) -> int:
    if x == 3:
        raise ValueError(f"three is not allowed (scale {scale})")
    return x * scale + offset


def gated(marks: str, i: int) -> int:
    """Leave a mark that task ``i`` ran; task 0 then waits for the test's 'open' file."""
    Path(marks, f"ran-{i}").touch()
    if i == 0:
        deadline = time.time() + 60
        while not Path(marks, "open").exists() and time.time() < deadline:
            time.sleep(0.05)
    return i


def requests_in(dbfile: str) -> list[tuple[int, int]]:
    with Store(dbfile, create=False) as store:
        return [(row.request_id, row.n_tasks) for row in store.requests()]


def test_futures_work_with_the_standard_wait_and_as_completed(dbfile: str) -> None:
    with sheepdog.Executor({"dbfile": dbfile}) as executor:
        futures = [executor.submit(scaled, i, 10, offset=i) for i in range(30)]
        assert all(isinstance(f, cf.Future) for f in futures)
        finished = list(cf.as_completed(futures, timeout=60))
        done, not_done = cf.wait(futures, timeout=1)
    assert len(finished) == 30 and len(done) == 30 and not not_done
    for i, future in enumerate(futures):
        if i == 3:
            continue
        assert future.result() == i * 10 + i
    # submitted together: one request (one array job) of 30 tasks
    assert requests_in(dbfile) == [(executor.request_ids[0], 30)]
    assert {f.request_id for f in futures} == set(executor.request_ids)  # type: ignore[attr-defined]
    assert sorted(f.task for f in futures) == list(range(1, 31))  # type: ignore[attr-defined]


def test_a_loop_of_submits_is_one_batch_however_long_it_takes(dbfile: str) -> None:
    """A loop slower than batch_delay still makes one request: the batch goes out once
    submits pause for batch_delay (here 0.2 s of submitting, with 0.01 s gaps)."""
    with sheepdog.Executor({"dbfile": dbfile}, batch_delay=0.05) as executor:
        futures = []
        for i in range(20):
            futures.append(executor.submit(scaled, i + 4))
            time.sleep(0.01)
        assert [f.result(timeout=60) for f in futures] == list(range(4, 24))
        time.sleep(0.1)
        later = executor.submit(scaled, 2)  # after a pause: a request of its own
        assert later.result(timeout=60) == 2
    assert requests_in(dbfile) == [(executor.request_ids[0], 20), (executor.request_ids[1], 1)]


def test_a_failed_task_carries_the_remote_traceback(dbfile: str) -> None:
    with sheepdog.Executor({"dbfile": dbfile}) as executor:
        future = executor.submit(scaled, 3, scale=7)
        error = future.exception(timeout=60)
    assert isinstance(error, sheepdog.TaskFailed)
    assert error.status == "error" and error.index == 1
    assert "ValueError: three is not allowed (scale 7)" in error.remote_traceback
    assert 'raise ValueError(f"three is not allowed' in error.remote_traceback
    with pytest.raises(sheepdog.TaskFailed, match="three is not allowed"):
        future.result()


def test_map_is_in_order_and_lazy_and_raises_at_a_failed_call(dbfile: str) -> None:
    with sheepdog.Executor({"dbfile": dbfile}) as executor:
        assert list(executor.map(scaled, [1, 2, 4, 5], [2, 2, 2, 2])) == [2, 4, 8, 10]
        results = executor.map(scaled, range(6))
        assert [next(results), next(results), next(results)] == [0, 1, 2]
        with pytest.raises(sheepdog.TaskFailed, match="three is not allowed"):
            next(results)


def test_map_timeout_is_a_timeout_error(dbfile: str, tmp_path: Path) -> None:
    with sheepdog.Executor({"dbfile": dbfile}) as executor:
        results = executor.map(gated, [str(tmp_path)], [0], timeout=1.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            next(results)
        assert time.monotonic() - started < 10
        (tmp_path / "open").touch()


@pytest.mark.parametrize("workers", [1, 0], ids=["one worker", "one process per task"])
def test_cancel_stops_tasks_that_have_not_started(
        dbfile: str, tmp_path: Path, workers: int) -> None:
    config = {"dbfile": dbfile, "workers": workers, "local_workers": 1}
    with sheepdog.Executor(config) as executor:
        futures = [executor.submit(gated, str(tmp_path), i) for i in range(6)]
        deadline = time.monotonic() + 60
        while not (tmp_path / "ran-0").exists():  # task 0 runs, and holds the only slot
            assert time.monotonic() < deadline, "task 0 never started"
            time.sleep(0.05)
        assert futures[0].cancel() is False  # it runs
        assert [f.cancel() for f in futures[3:]] == [True, True, True]
        assert all(f.cancelled() for f in futures[3:])
        (tmp_path / "open").touch()
        done, _ = cf.wait(futures, timeout=60)
    assert len(done) == 6
    assert [f.result() for f in futures[:3]] == [0, 1, 2]
    with pytest.raises(cf.CancelledError):
        futures[4].result()
    ran = sorted(p.name for p in tmp_path.glob("ran-*"))
    assert ran == ["ran-0", "ran-1", "ran-2"]  # the cancelled ones never ran
    errors = sheepdog.get_errors(executor.request_ids[0], dbfile)
    assert [e.task for e in errors] == [4, 5, 6]  # type: ignore[attr-defined]
    assert all("cancelled with Future.cancel()" in text for _, text in errors)


def test_cancel_before_it_is_sent_and_shutdown_cancel_futures(dbfile: str) -> None:
    executor = sheepdog.Executor({"dbfile": dbfile}, batch_delay=30)
    first = executor.submit(scaled, 1)
    assert first.cancel() is True and first.cancelled()
    second = executor.submit(scaled, 2)
    executor.shutdown(wait=True, cancel_futures=True)
    assert second.cancelled()
    assert not Path(dbfile).exists() or requests_in(dbfile) == []  # nothing was sent
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(scaled, 1)


def test_shutdown_waits_for_every_future(dbfile: str) -> None:
    executor = sheepdog.Executor({"dbfile": dbfile})
    futures = [executor.submit(scaled, i) for i in (1, 2)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [1, 2]


def test_an_unpicklable_argument_fails_only_its_own_future(dbfile: str) -> None:
    with sheepdog.Executor({"dbfile": dbfile}) as executor:
        good = executor.submit(scaled, 2)
        bad = executor.submit(scaled, threading.Lock())
        with pytest.raises(sheepdog.SerialisationError, match="cannot serialise the arguments"):
            bad.result(timeout=60)
        assert good.result(timeout=60) == 2


def test_an_unpicklable_function_fails_its_futures_with_the_reason(dbfile: str) -> None:
    lock = threading.Lock()

    def holds_a_lock(x: int) -> int:
        with lock:
            return x

    with sheepdog.Executor({"dbfile": dbfile}) as executor:
        futures = [executor.submit(holds_a_lock, i) for i in range(3)]
        fine = executor.submit(scaled, 5)
        for future in futures:
            with pytest.raises(sheepdog.SerialisationError, match="holds_a_lock"):
                future.result(timeout=60)
        assert fine.result(timeout=60) == 5


def test_futures_await_in_asyncio(dbfile: str) -> None:
    async def main(executor: sheepdog.Executor) -> list[Any]:
        futures = [asyncio.wrap_future(executor.submit(scaled, i, 2)) for i in (1, 2, 4)]
        return list(await asyncio.gather(*futures))

    with sheepdog.Executor({"dbfile": dbfile}) as executor:
        assert asyncio.run(main(executor)) == [2, 4, 8]


def test_a_request_cancelled_from_outside_fails_its_futures_as_lost(
        dbfile: str, tmp_path: Path) -> None:
    with sheepdog.Executor({"dbfile": dbfile, "workers": 1}) as executor:
        futures = [executor.submit(gated, str(tmp_path), i) for i in range(3)]
        deadline = time.monotonic() + 60
        while not (tmp_path / "ran-0").exists():
            assert time.monotonic() < deadline, "task 0 never started"
            time.sleep(0.05)
        sheepdog.cancel(futures[0].request_id, dbfile)  # type: ignore[attr-defined]
        errors = [f.exception(timeout=60) for f in futures[1:]]
        (tmp_path / "open").touch()
    assert all(isinstance(e, sheepdog.TaskFailed) and e.status == "lost" for e in errors)
    assert all("cancelled by the user" in e.remote_traceback for e in errors)  # type: ignore[union-attr]


def test_calls_with_keywords_run_through_map_too(dbfile: str) -> None:
    calls = [sheepdog.Call(1, scale=5), sheepdog.Call(2, offset=1), (4, 3)]
    assert sheepdog.map(scaled, calls, {"dbfile": dbfile}) == [5, 3, 12]
    assert repr(calls[0]) == "Call(1, scale=5)"


def test_executor_on_grid_engine(config: dict[str, object]) -> None:
    """The testbed's nodes run each call as an array task, from the zipapp."""
    def node(x: int, *, power: int = 1) -> tuple[str, int]:
        import socket

        if x < 0:
            raise ArithmeticError("negative")
        return socket.gethostname(), x ** power

    with sheepdog.Executor(config) as executor:
        futures = [executor.submit(node, x, power=2) for x in (1, 2, 3, -1)]
        finished = list(cf.as_completed(futures, timeout=110))
    assert len(finished) == 4
    assert [f.result()[1] for f in futures[:3]] == [1, 4, 9]
    error = futures[3].exception()
    assert isinstance(error, sheepdog.TaskFailed)
    assert "ArithmeticError: negative" in error.remote_traceback
    assert len(executor.request_ids) == 1
    with Store(str(config["dbfile"]), create=False) as store:
        row = store.request(executor.request_ids[0])
        assert row.scheduler == "gridengine" and row.job_ids.isdigit()  # one qsub'd array
        hosts = {store.outcome_detail(row.request_id, i)["host"] for i in (1, 2, 3)}
    assert hosts == {f.result()[0] for f in futures[:3]}  # recorded by the node's worker
