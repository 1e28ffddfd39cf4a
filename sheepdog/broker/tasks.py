"""The task-side operations on a request, written once for both clients.

``TaskChannel`` is what a worker (and the local runner) needs: read the meta,
fetch a task, take a lease, record an outcome. It runs over anything with
``execute_command`` - the workers' small ``resp.RespClient`` or redis-py's
client - and uses only commands whose replies both return alike (no HGETALL,
which redis-py turns into a dict). The same contract tests run it over both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from sheepdog.broker import keys, scripts


class Commands(Protocol):
    def execute_command(self, *args: Any) -> Any: ...


class TaskChannel:
    def __init__(self, conn: Commands) -> None:
        self.conn = conn

    def eval_script(self, script: str, request_id: int, argv: list[Any]) -> Any:
        # EVAL, not EVALSHA: one round trip, no NOSCRIPT dance, and the server
        # caches the compiled script by its hash anyway.
        request_keys = keys.request_keys(request_id)
        return self.conn.execute_command("EVAL", script, len(request_keys), *request_keys, *argv)

    def meta(self, request_id: int) -> dict[str, str]:
        """The request's meta fields that are set; empty if the request is unknown."""
        values = self.conn.execute_command("HMGET", keys.meta(request_id), *keys.META_FIELDS)
        pairs = zip(keys.META_FIELDS, values, strict=True)
        return {field: value.decode() for field, value in pairs if value is not None}

    def fetch(self, request_id: int, index: int) -> tuple[bytes | None, bytes | None]:
        """(function payload, args payload) of one task; None where missing."""
        args = self.conn.execute_command("HGET", keys.tasks(request_id), index)
        if args is None:
            return None, None
        return self.conn.execute_command("GET", keys.func(request_id)), args

    def take_lease(self, request_id: int, index: int, holder: str) -> None:
        self.conn.execute_command("HSET", keys.leases(request_id), index, holder)

    def record(
        self, request_id: int, index: int, status: str, fields: Mapping[str, str | bytes]
    ) -> bool:
        """Record a task's outcome; False if it already had one (nothing written)."""
        if status not in keys.STATUSES:
            raise ValueError(f"unknown status {status!r}")
        argv: list[Any] = [index, status, f"{time.time():.6f}"]
        for name, value in fields.items():
            argv += [name, value]
        return bool(self.eval_script(scripts.RECORD, request_id, argv))

    def reject(self, request_id: int, index: int, reason: str, host: str, pid: int) -> bool:
        argv: list[Any] = [index, reason, host, pid, f"{time.time():.6f}"]
        return bool(self.eval_script(scripts.REJECT, request_id, argv))
