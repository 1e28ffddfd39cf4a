"""The original Sheepdog's examples, on the embedded default (no config at all)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import sheepdog

from .conftest import run_python


def add(a: int, b: int) -> int:
    return a + b


def test_quickstart_map(dbfile: str) -> None:
    assert sheepdog.map(add, [(1, 1), (1, 2), (2, 2)], {"dbfile": dbfile}) == [2, 3, 4]


def test_namespace_example(dbfile: str) -> None:
    constant = 12

    def g(x: int) -> int:
        return x * 2

    def f(a: int, b: int) -> int:
        return a + g(b) + constant

    namespace = {"constant": constant, "g": g}
    assert sheepdog.map(f, [(1, 2), (2, 3), (3, 4)], {"dbfile": dbfile}, ns=namespace) == [
        17, 20, 23,
    ]


def test_default_config_uses_default_dbfile(tmp_path: Path) -> None:
    # Run where the seed's default './sheepdog.sqlite' lands in a test directory.
    proc = run_python(
        """
        import sheepdog
        def f(a, b):
            return a + b
        print(sheepdog.map(f, [(1, 1), (1, 2), (2, 2)], verbose=False))
        """,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[2, 3, 4]"
    assert (tmp_path / "sheepdog.sqlite").exists()


def test_main_module_functions_lambdas_and_the_global_import_idiom(tmp_path: Path) -> None:
    """Functions from __main__ travel by value; ``global`` imports reach helpers (seed 1.5)."""
    proc = run_python(
        """
        import sheepdog

        def g(x):
            return statistics.mean(x)

        def f(x):
            import statistics
            global statistics
            return g(x)

        def make_adder(n):
            return lambda x: x + n

        conf = {"dbfile": "r.sqlite"}
        print(sheepdog.map(f, [([1, 2, 3],), ([4, 6],)], conf, ns={"g": g}, verbose=False))
        print(sheepdog.map(make_adder(10), [1, 2, 3], conf, verbose=False))
        """,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["[2, 5]", "[11, 12, 13]"]


def test_items_that_are_not_tuples_are_one_argument(dbfile: str) -> None:
    items = [[1, 2], 5, "ab", {"k": 1}]
    assert sheepdog.map(repr, items, {"dbfile": dbfile}) == [repr(i) for i in items]


def test_results_keep_their_types(dbfile: str) -> None:
    def echo(x: object) -> object:
        return x

    values = [None, True, 3, 2.5, "s", b"b", [1, (2, 3)], (1, 2), {1: "x"}, 2**80, {1, 2}]
    out = sheepdog.map(echo, [(v,) for v in values], {"dbfile": dbfile})
    assert out == values
    assert [type(v) for v in out] == [type(v) for v in values]


def test_empty_args_submit_nothing(tmp_path: Path) -> None:
    dbfile = tmp_path / "never.sqlite"
    assert sheepdog.map(add, [], {"dbfile": str(dbfile)}) == []
    assert not dbfile.exists()


def test_map_async_empty_is_a_complete_request(dbfile: str) -> None:
    request_id = sheepdog.map_async(add, [], {"dbfile": dbfile})
    assert sheepdog.get_results(request_id, dbfile, timeout=10) == []


def test_get_results_pairs_args_with_results_in_order(dbfile: str) -> None:
    args = [(i, i) for i in range(12)]
    request_id = sheepdog.map_async(add, args, {"dbfile": dbfile, "local_workers": 4})
    assert isinstance(request_id, int)
    assert sheepdog.get_results(request_id, dbfile) == [(a, a[0] + a[1]) for a in args]
    with sqlite3.connect(dbfile) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_public_api_is_what_we_document() -> None:
    assert sheepdog.__all__ == sorted([
        "BrokerError", "Call", "ConfigError", "Executor", "IntegrityError", "RequestFailed",
        "RequestNotFound", "ResultsTimeout", "SerialisationError", "Settings", "SheepdogError",
        "SubmitError", "TaskError", "TaskErrors", "TaskFailed", "TaskFailure", "TransferError",
        "__version__", "aimap", "cancel", "export_request", "get_errors", "get_results",
        "import_request", "imap", "map", "map_async", "resubmit",
    ])
    for name in sheepdog.__all__:
        assert getattr(sheepdog, name) is not None
    with pytest.raises(AttributeError):
        sheepdog.map_sync  # noqa: B018 - the 0.1 name is gone, as in the seed's 0.2
