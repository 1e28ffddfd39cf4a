"""The broker's operations for the submitter side, over redis-py.

Submitter, collator and local runner go through ``Broker``; the task-side
operations it shares with workers are ``tasks.TaskChannel``. Key names come
from ``keys`` and multi-key changes from ``scripts``; no other module issues
Redis commands.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from sheepdog.broker import keys, scripts
from sheepdog.broker.connection import connect
from sheepdog.broker.tasks import TaskChannel
from sheepdog.errors import BrokerError

#: Tasks pushed per pipeline round trip when a request is created.
PUSH_BATCH = 2000

StreamEntry = tuple[str, dict[str, bytes]]

#: redis-py annotates replies as unions of its sync and async types; replies
#: are read into variables of this type and converted right away.
Reply = Any


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Broker:
    """One broker, identified by the uuid it keeps in ``sheepdog:broker``."""

    def __init__(self, client: redis.Redis, url: str) -> None:
        self.client = client
        self.url = url
        self.tasks = TaskChannel(client)
        self.broker_id = self._identity()

    @classmethod
    def from_url(cls, url: str, *, attempts: int = 1) -> Broker:
        return cls(connect(url, attempts=attempts), url)

    def close(self) -> None:
        self.client.close()

    def _identity(self) -> str:
        # HSETNX makes the first submitter's uuid the broker's for ever.
        self.client.hsetnx(keys.broker(), "id", str(uuid.uuid4()))
        self.client.hsetnx(keys.broker(), "schema", keys.SCHEMA_VERSION)
        schema = _text(self.client.hget(keys.broker(), "schema"))
        if schema != keys.SCHEMA_VERSION:
            raise BrokerError(
                f"the broker holds sheepdog key schema {schema}, this sheepdog uses"
                f" {keys.SCHEMA_VERSION}; use a matching sheepdog version or another broker"
            )
        return str(_text(self.client.hget(keys.broker(), "id")))

    # -- requests -----------------------------------------------------------

    def new_request_id(self) -> int:
        return int(self.client.incr(keys.seq()))

    def create_request(
        self,
        request_id: int,
        meta: Mapping[str, str | int],
        func_payload: bytes,
        task_payloads: Iterable[bytes],
    ) -> None:
        """Store meta, function and tasks (indices from 1) in batched round trips."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(keys.meta(request_id), mapping=dict(meta))  # type: ignore[arg-type]
        pipe.set(keys.func(request_id), func_payload)
        pipe.zadd(keys.requests(), {str(request_id): time.time()})
        batch: dict[int, bytes] = {}
        for index, payload in enumerate(task_payloads, start=1):
            batch[index] = payload
            if len(batch) == PUSH_BATCH:
                pipe.hset(keys.tasks(request_id), mapping=batch)  # type: ignore[arg-type]
                pipe.execute()
                batch = {}
        if batch:
            pipe.hset(keys.tasks(request_id), mapping=batch)  # type: ignore[arg-type]
        pipe.execute()

    def delete_request(self, request_id: int) -> None:
        self.client.delete(*keys.request_keys(request_id))
        self.client.zrem(keys.requests(), str(request_id))

    def set_meta(self, request_id: int, **fields: str | int) -> None:
        self.client.hset(keys.meta(request_id), mapping=fields)  # type: ignore[arg-type]

    def pending(self, request_id: int) -> int:
        """Tasks that have no outcome yet."""
        return int(self.client.hlen(keys.tasks(request_id)))

    def pending_indices(self, request_id: int) -> list[int]:
        return sorted(int(i) for i in self.client.hkeys(keys.tasks(request_id)))

    def expire_request(self, request_id: int, seconds: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in keys.request_keys(request_id):
            pipe.expire(key, seconds)
        pipe.execute()

    # -- task side (one implementation, shared with the workers) ---------------

    def meta(self, request_id: int) -> dict[str, str]:
        return self.tasks.meta(request_id)

    def record(
        self, request_id: int, index: int, status: str, fields: Mapping[str, str | bytes]
    ) -> bool:
        return self.tasks.record(request_id, index, status, fields)

    def leases(self, request_id: int) -> dict[int, str]:
        raw: Reply = self.client.hgetall(keys.leases(request_id))
        return {int(k): v.decode() for k, v in raw.items()}

    def cancel(self, request_id: int, reason: str, *, status: str = "cancelled") -> int:
        """Record every task without an outcome as lost; -1 if the request is unknown.

        ``status`` becomes the request's: cancelled, or done when its remaining
        tasks died and nothing else will come.
        """
        argv = [reason, f"{time.time():.6f}", status]
        return int(self.tasks.eval_script(scripts.CANCEL, request_id, argv))

    # -- collator side ------------------------------------------------------

    def ensure_group(self, request_id: int, group: str) -> None:
        try:
            self.client.xgroup_create(keys.results(request_id), group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read_results(
        self,
        request_id: int,
        group: str,
        consumer: str,
        *,
        count: int,
        block_ms: int | None,
        pending: bool,
    ) -> list[StreamEntry]:
        """Entries for ``group``: those delivered but unacknowledged if ``pending``, else new."""
        stream = keys.results(request_id)
        reply: Reply = self.client.xreadgroup(
            group,
            consumer,
            {stream: "0" if pending else ">"},
            count=count,
            block=None if pending else block_ms,
        )
        entries: list[StreamEntry] = []
        for _name, items in reply or []:
            for entry_id, fields in items:
                if fields:  # a pending entry trimmed away reads back empty
                    entries.append(
                        (entry_id.decode(), {k.decode(): v for k, v in fields.items()})
                    )
        return entries

    def all_results(self, request_id: int, *, chunk: int = 1000) -> list[StreamEntry]:
        """Every entry of the results stream, acknowledged or not, oldest first."""
        entries: list[StreamEntry] = []
        start = "-"
        while True:
            items: Reply = self.client.xrange(keys.results(request_id), start, "+", count=chunk)
            entries += [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in items]
            if len(items) < chunk:
                return entries
            start = "(" + entries[-1][0]

    def ack(self, request_id: int, group: str, entry_ids: list[str]) -> None:
        if entry_ids:
            self.client.xack(keys.results(request_id), group, *entry_ids)
