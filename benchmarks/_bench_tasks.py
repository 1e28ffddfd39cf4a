"""The trivial tasks of the local benchmarks, in a module every peer's workers can import."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    return a + b


def print_add(a: int, b: int) -> None:
    """``add`` for peers that keep no return values (hyperqueue): the result on stdout."""
    print(add(a, b))


def add_double(a: int) -> int:
    """``add(a, 2 * a)`` of one argument, for the ``imap`` rows (``f`` over ``range(N)``):
    its results are those of ``add`` over the ``(i, 2 * i)`` tuples the other rows use."""
    return add(a, 2 * a)
