"""The trivial tasks of the local benchmarks, in a module every peer's workers can import."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    return a + b


def print_add(a: int, b: int) -> None:
    """``add`` for peers that keep no return values (hyperqueue): the result on stdout."""
    print(add(a, b))
