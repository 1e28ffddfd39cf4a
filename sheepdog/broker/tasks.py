"""The task-side operations on a request, written once for both clients.

``TaskChannel`` is what a worker (and the local runner, and the submitter's
reaper) needs: claim a task for an attempt, keep its lease alive, record how
the attempt ended. It runs over anything with ``execute_command`` - the
workers' small ``resp.RespClient`` or redis-py's client - and uses only
replies both return alike. The same contract tests run it over both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sheepdog.broker import codec, keys, scripts


class Commands(Protocol):
    def execute_command(self, *args: Any) -> Any: ...


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class ClaimReply:
    """What CLAIM said: ``kind`` is run, gone, cancelled, outside, done or busy."""

    kind: str
    attempt: int = 0
    func: bytes = b""
    args: bytes = b""
    python: str = ""
    detail: str = ""  # outside: n_tasks; busy: the holder's claim


@dataclass(frozen=True)
class Claim:
    """A ``claims`` hash value, split (see ``keys.CLAIM_FIELDS``)."""

    attempt: int
    first: int
    level: int
    holder: str
    started: float = 0.0
    host: str = ""
    pid: str = ""
    job: str = ""

    @classmethod
    def parse(cls, text: str) -> Claim:
        parts = text.split() + [""] * len(keys.CLAIM_FIELDS)
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), parts[3],
                   float(parts[4] or 0), parts[5], parts[6], parts[7])


#: Record replies (see ``scripts.RECORD``).
FINAL, RETRIED, NOT_HOLDER, GONE, CANCELLED = 1, 2, 0, -1, -2


def _signed(
    key: bytes, token: str, index: int, attempt: int, status: str, cause: str,
    fields: Mapping[str, str | bytes],
) -> dict[str, str | bytes]:
    """``fields`` with the entry's signature added (over what ``codec.outcome_mac`` covers)."""
    payload = fields.get("payload", b"")
    error = fields.get("error", "")
    mac = codec.outcome_mac(
        key, token, index, attempt, status, cause,
        payload if isinstance(payload, bytes) else payload.encode(),
        error if isinstance(error, str) else error.decode("utf-8", "surrogateescape"),
    )
    return {**fields, "mac": mac}


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

    def claim(
        self, request_id: int, token: str, index: int, *, holder: str, level: int, host: str,
        pid: int, job: str, lease: float,
    ) -> ClaimReply:
        """Take task ``index`` for a new attempt, with a lease of ``lease`` seconds."""
        reply = self.eval_script(scripts.CLAIM, request_id, [
            token, index, holder, level, _word(host), pid, _word(job), f"{lease:.3f}",
        ])
        kind = _text(reply[0])
        if kind == "run":
            return ClaimReply(kind, int(reply[1]), reply[2] or b"", reply[3], _text(reply[4]))
        return ClaimReply(kind, detail=_text(reply[1]) if len(reply) > 1 else "")

    def heartbeat(self, request_id: int, token: str, index: int, holder: str, lease: float
                  ) -> int:
        """Push the lease forward; 1, or 0 if no longer the holder, -1 if the request is gone."""
        return int(self.eval_script(scripts.HEARTBEAT, request_id,
                                    [token, index, holder, f"{lease:.3f}"]))

    def record(
        self, request_id: int, token: str, index: int, *, key: bytes, holder: str,
        attempt: int, status: str, cause: str, fields: Mapping[str, str | bytes],
        check: str = "",
    ) -> int:
        """Record how an attempt ended, signed here with ``key`` over exactly what is
        recorded; see ``scripts.RECORD``."""
        if status not in keys.OUTCOMES:
            raise ValueError(f"unknown status {status!r}")
        signed = _signed(key, token, index, attempt, status, cause, fields)
        argv: list[Any] = [token, index, holder, attempt, status, cause, check]
        for name, value in signed.items():
            argv += [name, value]
        return int(self.eval_script(scripts.RECORD, request_id, argv))

    def reject(self, request_id: int, token: str, index: int, *, key: bytes,
               fields: Mapping[str, str | bytes]) -> bool:
        """Record that a worker asked for ``index``, which is not part of the request."""
        argv: list[Any] = [token]
        for name, value in _signed(key, token, index, 0, "rejected", "", fields).items():
            argv += [name, value]
        return bool(self.eval_script(scripts.REJECT, request_id, argv))

    def claim_of(self, request_id: int, index: int) -> Claim | None:
        text = self.conn.execute_command("HGET", keys.claims(request_id), index)
        return Claim.parse(_text(text)) if text else None


def _word(text: str) -> str:
    """``text`` as one space-free word, for a claim's fields."""
    return "_".join(text.split()) or "-"
