"""The payload codec: a msgpack envelope, signed with the request's key.

An envelope is the msgpack array ``[VERSION, kind, mac, body]``:

- ``kind`` 0: ``body`` is msgpack of a plain value (None, bool, int, float,
  str, bytes, list, dict of those). It comes back with the same types, except
  that nothing else is allowed in: a tuple or a subclass goes to kind 1.
- ``kind`` 1: ``body`` is cloudpickle of anything else, functions by value.
- ``mac`` is HMAC-SHA256 of ``kind`` and ``body`` under the request's key.
  Unpickling runs code, so nothing is unpickled before its mac checks out.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

import cloudpickle
import msgpack

from sheepdog.errors import IntegrityError, SerialisationError

VERSION = 1
KIND_MSGPACK = 0
KIND_PICKLE = 1


def _mac(key: bytes, kind: int, body: bytes) -> bytes:
    return hmac.new(key, bytes([kind]) + body, hashlib.sha256).digest()


def _pack_plain(obj: object) -> bytes | None:
    """msgpack of ``obj`` when it is made only of plain types, else None."""
    try:
        data: bytes = msgpack.packb(obj, use_bin_type=True, strict_types=True)
    except (TypeError, ValueError, OverflowError):
        return None
    return data


def encode(obj: object, key: bytes, *, what: str = "value") -> bytes:
    """Envelope for ``obj``; ``what`` names it in the error if it cannot be pickled."""
    body = _pack_plain(obj)
    kind = KIND_MSGPACK
    if body is None:
        kind = KIND_PICKLE
        try:
            body = cloudpickle.dumps(obj, protocol=pickle.DEFAULT_PROTOCOL)
        except Exception as exc:  # cloudpickle raises many types; all mean the same
            raise SerialisationError(
                f"cannot serialise the {what} ({type(obj).__module__}.{type(obj).__qualname__}):"
                f" {type(exc).__name__}: {exc}. Sheepdog pickles it with cloudpickle; objects"
                " holding locks, open files, sockets or database connections cannot be"
                " pickled - create them inside the function instead."
            ) from exc
    packed: bytes = msgpack.packb([VERSION, kind, _mac(key, kind, body), body], use_bin_type=True)
    return packed


def _unpack_envelope(data: bytes) -> tuple[int, bytes, bytes]:
    try:
        version, kind, mac, body = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise SerialisationError(f"not a sheepdog payload: {exc}") from exc
    if version != VERSION or kind not in (KIND_MSGPACK, KIND_PICKLE):
        raise SerialisationError(
            f"payload version {version}/kind {kind} is not understood by this sheepdog;"
            " use the same sheepdog version on the submitter and the workers"
        )
    return kind, mac, body


def verify(data: bytes, key: bytes) -> None:
    """Raise IntegrityError unless ``data`` was signed with ``key``."""
    kind, mac, body = _unpack_envelope(data)
    if not hmac.compare_digest(mac, _mac(key, kind, body)):
        raise IntegrityError(
            "payload signature does not match this request's key: it was not written by"
            " this request's submitter or workers, so it is not unpickled"
        )


def decode(data: bytes, key: bytes) -> Any:
    """The object in ``data``, after its signature has been checked."""
    verify(data, key)
    return decode_trusted(data)


def decode_trusted(data: bytes) -> Any:
    """The object in ``data`` without a signature check.

    Only for payloads already verified on their way into our own SQLite store.
    """
    kind, _mac_unused, body = _unpack_envelope(data)
    if kind == KIND_MSGPACK:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    try:
        return pickle.loads(body)
    except Exception as exc:
        raise SerialisationError(
            f"cannot unpickle payload: {type(exc).__name__}: {exc}. A module the object"
            " needs may be missing here, or this Python differs from the one that pickled it."
        ) from exc

