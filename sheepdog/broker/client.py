"""The broker's operations for the submitter side, over redis-py.

Submitter, collator, reaper and local runner go through ``Broker``; the
task-side operations it shares with workers are ``tasks.TaskChannel``. Key
names come from ``keys`` and multi-key changes from ``scripts``; no other
module issues Redis commands.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import redis

from sheepdog.broker import keys, scripts
from sheepdog.broker.connection import connect
from sheepdog.broker.tasks import Claim, TaskChannel
from sheepdog.errors import BrokerError

#: Tasks pushed per pipeline round trip when a request is created.
PUSH_BATCH = 2000

StreamEntry = tuple[str, dict[str, bytes]]

#: Redis's and Valkey's default proto-max-bulk-len: bytes in one value.
DEFAULT_MAX_VALUE = 512 * 2**20

#: Bytes of a result's record besides the value (fields, output tails, the script).
RECORD_OVERHEAD = 64 * 1024

#: redis-py annotates replies as unions of its sync and async types; replies
#: are read into variables of this type and converted right away.
Reply = Any

#: What a worker's per-request broker user may run: PING and SELECT when it
#: connects, the Lua scripts, and what they (and the local runner) call -
#: the broker checks commands inside a script against the same user. Named
#: one by one: '+@write' would include FLUSHALL, '+@read' KEYS and SCAN,
#: which key patterns do not restrict. (TIME inside a script needs '+time'.)
WORKER_COMMANDS = (
    "ping", "select", "eval", "evalsha", "time", "get", "hget", "hmget", "hgetall", "hkeys", "hset",
    "hdel", "hexists", "hincrby", "hlen", "del", "unlink", "xadd", "zadd", "zrem", "zscore",
    "zrangebyscore", "lpop", "lpush", "llen",
)


def ranges(indices: list[int]) -> list[str]:
    """Runs of consecutive indices as queue entries: [1, 2, 3, 7] -> ['1-3', '7-7']."""
    found: list[str] = []
    first = last = None
    for index in indices:
        if last is not None and index == last + 1:
            last = index
            continue
        if first is not None:
            found.append(f"{first}-{last}")
        first = last = index
    if first is not None:
        found.append(f"{first}-{last}")
    return found


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
        # HSETNX makes the first submitter's uuid the broker's for ever - until
        # its data is lost: then the next one makes a new id, which is how a
        # flushed or replaced broker is recognised.
        self.client.hsetnx(keys.broker(), "id", str(uuid.uuid4()))
        self.client.hsetnx(keys.broker(), "schema", keys.SCHEMA_VERSION)
        schema = _text(self.client.hget(keys.broker(), "schema"))
        if schema != keys.SCHEMA_VERSION:
            raise BrokerError(
                f"the broker holds sheepdog key schema {schema}, this sheepdog uses"
                f" {keys.SCHEMA_VERSION}; use a matching sheepdog version or another broker"
            )
        return str(_text(self.client.hget(keys.broker(), "id")))

    def current_id(self) -> str | None:
        """The id the broker holds now (None: its data is gone), without making one."""
        return _text(self.client.hget(keys.broker(), "id"))

    # -- requests -----------------------------------------------------------

    def new_request_id(self, floor: int) -> int:
        """A request id no submitter of this broker has had, and at least ``floor``."""
        return int(self.client.eval(scripts.NEXT_ID, 1, keys.seq(), floor))

    def request_exists(self, request_id: int) -> bool:
        return bool(self.client.exists(keys.meta(request_id)))

    def push_request(
        self, request_id: int, meta: Mapping[str, str | int], func_payload: bytes,
        task_payloads: Iterable[tuple[int, bytes]],
        claims: Mapping[int, str] | None = None,
    ) -> None:
        """Store meta, function and tasks in batched round trips, all expiring in SUBMIT_TTL.

        ``claims`` (index -> claim) carries attempt numbers over from an earlier
        submission. In worker mode (meta ``mode``) the tasks are queued too.
        ``queued`` then keeps the keys for good.
        """
        self.start_request(request_id, meta, func_payload)
        queue = meta.get("mode") == "workers"
        batch: list[tuple[int, bytes]] = []
        for item in task_payloads:
            batch.append(item)
            if len(batch) == PUSH_BATCH:
                self.push_tasks(request_id, batch, queue=queue)
                batch = []
        self.push_tasks(request_id, batch, queue=queue)
        placeholders = list((claims or {}).items())
        for start in range(0, len(placeholders), PUSH_BATCH):
            chunk = dict(placeholders[start : start + PUSH_BATCH])
            self.client.hset(keys.claims(request_id), mapping=chunk)  # type: ignore[arg-type]
        pipe = self.client.pipeline(transaction=False)
        self._expire_all(pipe, request_id, keys.SUBMIT_TTL)
        pipe.execute()

    def start_request(self, request_id: int, meta: Mapping[str, str | int],
                      func_payload: bytes) -> None:
        """Meta and function of a new request, expiring in SUBMIT_TTL."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(keys.meta(request_id), mapping=dict(meta))  # type: ignore[arg-type]
        pipe.set(keys.func(request_id), func_payload)
        pipe.zadd(keys.requests(), {str(request_id): time.time()})
        self._expire_all(pipe, request_id, keys.SUBMIT_TTL)
        pipe.execute()

    def push_tasks(self, request_id: int, batch: list[tuple[int, bytes]], *, queue: bool
                   ) -> None:
        """One round trip: tasks into ``tasks`` (and their ranges into ``queue``), every
        key's SUBMIT_TTL renewed (a submitter that dies mid-push leaves nothing)."""
        if not batch:
            return
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(keys.tasks(request_id), mapping=dict(batch))
        if queue:
            pipe.rpush(keys.queue(request_id), *ranges([index for index, _ in batch]))
        self._expire_all(pipe, request_id, keys.SUBMIT_TTL)
        pipe.execute()

    @staticmethod
    def _expire_all(pipe: Any, request_id: int, seconds: int) -> None:
        for key in keys.request_keys(request_id):
            pipe.expire(key, seconds)

    def queued(self, request_id: int, job_ids: str, status: str = "queued") -> None:
        """The job is submitted: keep the request's keys until it is collated."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(keys.meta(request_id), mapping={"job_ids": job_ids, "status": status})
        for key in keys.request_keys(request_id):
            pipe.persist(key)
        pipe.execute()

    def delete_request(self, request_id: int) -> None:
        self.client.delete(*keys.request_keys(request_id))
        self.client.zrem(keys.requests(), str(request_id))

    def set_meta(self, request_id: int, **fields: str | int) -> None:
        self.client.hset(keys.meta(request_id), mapping=fields)  # type: ignore[arg-type]

    def add_job_ids(self, request_id: int, job_ids: list[str]) -> str:
        """Append ``job_ids`` to the request's; return them all, comma separated."""
        known = _text(self.client.hget(keys.meta(request_id), "job_ids")) or ""
        joined = ",".join([j for j in known.split(",") if j] + job_ids)
        self.client.hset(keys.meta(request_id), "job_ids", joined)
        return joined

    def pending(self, request_id: int) -> int:
        """Tasks that have no final outcome yet."""
        return int(self.client.hlen(keys.tasks(request_id)))

    def pending_indices(self, request_id: int) -> list[int]:
        return sorted(int(i) for i in self.client.hkeys(keys.tasks(request_id)))

    def expire_request(self, request_id: int, seconds: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._expire_all(pipe, request_id, seconds)
        pipe.execute()

    # -- task side (one implementation, shared with the workers) ---------------

    def meta(self, request_id: int) -> dict[str, str]:
        return self.tasks.meta(request_id)

    def claims(self, request_id: int) -> dict[int, Claim]:
        raw: Reply = self.client.hgetall(keys.claims(request_id))
        return {int(k): Claim.parse(v.decode()) for k, v in raw.items()}

    def leases(self, request_id: int) -> dict[int, float]:
        """Running task -> lease deadline (broker time)."""
        raw: Reply = self.client.zrange(keys.leases(request_id), 0, -1, withscores=True)
        return {int(k): float(score) for k, score in raw}

    def cancel_task(self, request_id: int, token: str, index: int, *, key: bytes,
                    reason: str) -> bool:
        """Give task ``index`` up as lost if no attempt of it runs now, and never retry
        it; False if one runs, or it has its final outcome already."""
        text = self.client.hget(keys.claims(request_id), str(index))
        claim = Claim.parse(text.decode()) if text else None  # type: ignore[union-attr]
        if claim is not None and claim.holder != "-":
            return False
        now = f"{time.time():.6f}"
        fields = {"error": reason, "started": now, "finished": now}
        written = self.tasks.record(request_id, token, index, key=key, holder="-",
                                    attempt=(claim.attempt if claim else 0) + 1,
                                    status="lost", cause="cancelled", fields=fields,
                                    check="unstarted")
        return written == 1

    def cancel(self, request_id: int, token: str, reason: str, mac: str) -> int:
        """Give up every task without a final outcome; -1 if the request is unknown."""
        return int(self.tasks.eval_script(scripts.CANCEL, request_id, [token, reason, mac]))

    def expired(self, request_id: int, token: str, limit: int = 1000
                ) -> list[tuple[int, Claim | None, float]]:
        """Running attempts whose lease ran out: (index, claim, deadline)."""
        flat: Reply = self.tasks.eval_script(scripts.EXPIRED, request_id, [token, limit])
        found = []
        for i in range(0, len(flat), 3):
            text = _text(flat[i + 1]) or ""
            found.append((int(flat[i]), Claim.parse(text) if text else None, float(flat[i + 2])))
        return found

    def take_retries(self, request_id: int, token: str) -> dict[int, int]:
        """Tasks waiting for a new attempt (index -> memory level); they are now the caller's."""
        flat: Reply = self.tasks.eval_script(scripts.TAKE_RETRIES, request_id, [token])
        return {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def waiting_retries(self, request_id: int) -> dict[int, int]:
        """Tasks waiting for a new attempt (index -> memory level), left where they are."""
        raw: Reply = self.client.hgetall(keys.retry(request_id))
        return {int(k): int(v) for k, v in raw.items()}

    def put_back_retries(self, request_id: int, waiting: Mapping[int, int]) -> None:
        if waiting and self.request_exists(request_id):
            self.client.hset(keys.retry(request_id), mapping=dict(waiting))  # type: ignore[arg-type]

    def max_value_size(self) -> int:
        """Bytes the broker accepts in one value (its proto-max-bulk-len), if it says."""
        try:
            found: Reply = self.client.config_get("proto-max-bulk-len")
            return int(found["proto-max-bulk-len"])
        except (redis.ResponseError, KeyError, ValueError):  # not allowed, or not said
            return DEFAULT_MAX_VALUE

    def broker_time(self) -> float:
        seconds, micros = self.client.time()
        return float(seconds) + float(micros) / 1e6

    def round_trip(self, key: str, value: bytes, ttl: int) -> bytes | None:
        """Write ``value`` to ``key`` (expiring in ``ttl`` seconds), read it back and
        delete it; what was read. Shows that the broker takes writes (``sheepdog doctor``)."""
        self.client.set(key, value, ex=ttl)
        got: Reply = self.client.get(key)
        self.client.delete(key)
        return None if got is None else bytes(got)

    # -- per-request users ------------------------------------------------------

    def create_worker_user(self, name: str, password: str, request_id: int) -> None:
        """An ACL user that can touch only this request's keys (made again if it exists).

        Raises redis.ResponseError if this broker has no ACLs or we may not
        manage them.
        """
        self.client.acl_setuser(
            name, enabled=True, reset=True, passwords=[f"+{password}"],
            keys=[keys.request_pattern(request_id)], reset_channels=True,
            categories=["-@all"], commands=[f"+{command}" for command in WORKER_COMMANDS],
        )

    def worker_user_exists(self, name: str) -> bool:
        return self.client.acl_getuser(name) is not None

    def delete_worker_user(self, name: str) -> None:
        self.client.acl_deluser(name)

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

    def all_results(self, request_id: int, *, chunk: int = 1000) -> Iterator[list[StreamEntry]]:
        """Every entry of the results stream, acknowledged or not, oldest first, ``chunk``
        entries at a time (a million are never held at once)."""
        start = "-"
        while True:
            items: Reply = self.client.xrange(keys.results(request_id), start, "+", count=chunk)
            entries = [(i.decode(), {k.decode(): v for k, v in f.items()}) for i, f in items]
            if entries:
                yield entries
            if len(items) < chunk:
                return
            start = "(" + entries[-1][0]

    def ack(self, request_id: int, group: str, entry_ids: list[str]) -> None:
        if entry_ids:
            self.client.xack(keys.results(request_id), group, *entry_ids)

