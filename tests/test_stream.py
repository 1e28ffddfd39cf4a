"""sheepdog.imap and sheepdog.aimap: results as they arrive, with bounded memory."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path

import pytest

import sheepdog


def slow_first(x: int) -> int:
    if x == 0:
        time.sleep(1.5)  # the first task finishes last
    if x == 7:
        raise KeyError("seven")
    return x * x


def kilobytes(x: int) -> str:
    return str(x % 10) * 2048


def test_imap_yields_in_order(dbfile: str) -> None:
    found = sheepdog.imap(slow_first, range(10), {"dbfile": dbfile, "workers": 2})
    assert isinstance(found.request_id, int)
    assert list(found) == [x * x if x != 7 else None for x in range(10)]


def test_unordered_yields_as_tasks_finish_with_their_position(dbfile: str) -> None:
    pairs = list(sheepdog.imap(slow_first, range(10), {"dbfile": dbfile, "workers": 2},
                               ordered=False))
    assert sorted(pairs) == [(x, x * x if x != 7 else None) for x in range(10)]
    assert pairs[-1] == (0, 0)  # the slow first task came last, not first


def test_raise_errors_raises_at_the_failed_task_after_those_before_it(dbfile: str) -> None:
    found = sheepdog.imap(slow_first, range(1, 10), {"dbfile": dbfile},
                          raise_errors=True)
    got = [next(found) for _ in range(6)]
    assert got == [1, 4, 9, 16, 25, 36]
    with pytest.raises(sheepdog.TaskFailed, match="KeyError: 'seven'") as raised:
        next(found)
    assert raised.value.index == 7 and raised.value.status == "error"
    assert next(found) == 64  # the rest still come
    found.close()


def test_timeout_bounds_the_whole_wait(dbfile: str) -> None:
    found = sheepdog.imap(slow_first, [0], {"dbfile": dbfile}, timeout=0.3)
    with pytest.raises(sheepdog.ResultsTimeout):
        list(found)
    assert sheepdog.get_results(found.request_id, dbfile) == [(0, 0)]  # it kept running


def test_stopping_early_leaves_the_request_to_collect_later(dbfile: str) -> None:
    found = sheepdog.imap(slow_first, range(20), {"dbfile": dbfile})
    assert next(found) == 0
    found.close()
    results = sheepdog.get_results(found.request_id, dbfile, timeout=60)
    assert [value for _, value in results][:3] == [0, 1, 4]


def _peak_while_streaming(n: int, dbfile: str, ordered: bool) -> int:
    """Peak traced memory while ``n`` results of 2 KiB each are read and dropped."""
    tracemalloc.start()
    try:
        count = total = 0
        for item in sheepdog.imap(kilobytes, range(n), {"dbfile": dbfile}, ordered=ordered,
                                  verbose=False):
            value = item if ordered else item[1]
            count += 1
            total += len(value)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == n and total == n * 2048
    return peak


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_memory_stays_bounded_while_results_stream(dbfile: str, ordered: bool) -> None:
    """Holding them, 20,000 results would take 30 MiB more than 5,000 do."""
    _peak_while_streaming(10, dbfile, ordered)  # imports and the broker's start, once
    small = _peak_while_streaming(5_000, dbfile, ordered)
    large = _peak_while_streaming(20_000, dbfile, ordered)
    assert large < small + 8 * 2**20, \
        f"peak {small / 2**20:.1f} MiB for 5,000 results, {large / 2**20:.1f} MiB for 20,000"


def test_aimap_for_asyncio(dbfile: str) -> None:
    async def main() -> list[object]:
        return [r async for r in sheepdog.aimap(slow_first, range(1, 6), {"dbfile": dbfile})]

    assert asyncio.run(main()) == [1, 4, 9, 16, 25]


def test_aimap_raises_a_failure_and_a_bad_config(dbfile: str, tmp_path: Path) -> None:
    async def collect(config: dict[str, object]) -> list[object]:
        return [r async for r in sheepdog.aimap(slow_first, range(6, 9), config,
                                                raise_errors=True)]

    with pytest.raises(sheepdog.TaskFailed, match="seven"):
        asyncio.run(collect({"dbfile": dbfile}))
    with pytest.raises(sheepdog.ConfigError, match="unknown config key"):
        asyncio.run(collect({"dbfile": dbfile, "wokers": 2}))
