"""The trivial task of bench_local.py, in a module every peer's workers can import."""

from __future__ import annotations


def add(a: int, b: int) -> int:
    return a + b
