"""Moving outcomes from the broker's results stream into the SQLite store.

The collator reads with a consumer group named after the store, writes each
batch in one SQLite transaction (upserts keyed by broker id, request id and
task index) and acknowledges the batch only after the commit. Killed at any
moment, it loses nothing: unacknowledged entries are read again on the next
start, and writing them again changes nothing.
"""

from __future__ import annotations

from sheepdog.broker import codec, keys
from sheepdog.broker.client import Broker, StreamEntry
from sheepdog.errors import SheepdogError
from sheepdog.submitter.store import Store, stream_key

#: Stream entries per SQLite transaction.
BATCH = 500

#: One consumer per group: collators of the same store share the pending list.
CONSUMER = "collator"


def _text(fields: dict[str, bytes], name: str) -> str | None:
    value = fields.get(name)
    return value.decode("utf-8", errors="replace") if value is not None else None


def _number(fields: dict[str, bytes], name: str) -> float | None:
    value = fields.get(name)
    return float(value) if value else None


class Collator:
    """Collates one request of one broker into one store."""

    def __init__(self, broker: Broker, store: Store, request_id: int, key: bytes) -> None:
        self.broker = broker
        self.store = store
        self.request_id = request_id
        self.key = key
        self.group = keys.collator_group(store.store_id)
        self._replaying = True  # first re-read what an earlier collator left unacknowledged
        broker.ensure_group(request_id, self.group)

    def step(self, block_ms: int | None = 500) -> int:
        """Collate one batch, waiting up to ``block_ms`` (None: not at all); return its size."""
        entries = self.broker.read_results(
            self.request_id, self.group, CONSUMER,
            count=BATCH, block_ms=block_ms, pending=self._replaying,
        )
        if self._replaying and not entries:
            self._replaying = False
            return self.step(block_ms)
        if entries:
            self._save(entries)
        return len(entries)

    def resync(self) -> None:
        """Write every entry of the stream again, whatever was acknowledged."""
        entries = self.broker.all_results(self.request_id)
        for start in range(0, len(entries), BATCH):
            self._save(entries[start : start + BATCH])

    def _save(self, entries: list[StreamEntry]) -> None:
        results: list[dict[str, object]] = []
        incidents: list[dict[str, object]] = []
        for entry_id, fields in entries:
            row = self._row(entry_id, fields)
            (incidents if fields.get("status") == b"rejected" else results).append(row)
        self.store.save_outcomes(results, incidents)
        self.broker.ack(self.request_id, self.group, [entry_id for entry_id, _ in entries])

    def _row(self, entry_id: str, fields: dict[str, bytes]) -> dict[str, object]:
        status = _text(fields, "status") or "error"
        error = _text(fields, "error")
        value = fields.get("payload") or None
        if status == "ok":
            try:
                codec.verify(value or b"", self.key)
            except SheepdogError as exc:
                status, value, error = "error", None, f"{type(exc).__name__}: {exc}"
        index = _text(fields, "index")
        pid = _text(fields, "pid")
        return {
            "broker_id": self.broker.broker_id,
            "request_id": self.request_id,
            "idx": int(index) if index else None,
            "status": status,
            "value": value,
            "error": error,
            "host": _text(fields, "host"),
            "pid": int(pid) if pid else None,
            "started": _number(fields, "started"),
            "finished": _number(fields, "finished"),
            "stdout": _text(fields, "stdout"),
            "stderr": _text(fields, "stderr"),
            "stream_key": stream_key(entry_id),
        }
