"""Scheduler adapters: one small module each, chosen by name."""

from __future__ import annotations

from sheepdog.submitter.schedulers.base import ArrayJob, Scheduler
from sheepdog.submitter.schedulers.local import LocalScheduler


def get(name: str) -> Scheduler:
    if name == "local":
        return LocalScheduler()
    raise ValueError(f"no scheduler adapter named {name!r}")


__all__ = ["ArrayJob", "LocalScheduler", "Scheduler", "get"]
