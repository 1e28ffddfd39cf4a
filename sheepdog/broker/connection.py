"""Opening a connection to the broker from a URL, with errors that say what to do.

Accepted URLs (those of redis-py):

- ``redis://[[user]:password@]host[:port][/db]``
- ``rediss://...`` the same over TLS
- ``unix://[[user]:password@]/path/to/socket[?db=N]``
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

import redis

from sheepdog.errors import BrokerError

SCHEMES = ("redis", "rediss", "unix")

#: Seconds to wait for a TCP connect or a reply before calling the broker unreachable.
SOCKET_TIMEOUT = 30.0


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and files."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    query = "&".join(
        "password=***" if q.startswith("password=") else q for q in parts.query.split("&") if q
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_url(url: str) -> None:
    """Raise BrokerError unless ``url`` has a scheme we can connect with."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise BrokerError(
            f"broker_url {redact(url)!r} has scheme {scheme!r}; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )


def connect(url: str, *, attempts: int = 1, retry_delay: float = 1.0) -> redis.Redis:
    """A connected client for ``url``; tries ``attempts`` times before giving up."""
    check_url(url)
    client = redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
    )
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client.ping()
            return client
        except redis.AuthenticationError as exc:
            raise BrokerError(
                f"the broker at {redact(url)} refused the password: {exc}."
                " Check the password in broker_url."
            ) from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc):
                raise BrokerError(
                    f"the broker at {redact(url)} needs a password; put it in broker_url"
                    " as redis://:PASSWORD@host:port"
                ) from exc
            raise BrokerError(f"the broker at {redact(url)} answered: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            last = exc
            if attempt + 1 < attempts:
                time.sleep(retry_delay)
    raise BrokerError(
        f"cannot reach the broker at {redact(url)}: {last}. Is the server running, and is"
        " this address reachable from here? Check broker_url."
    ) from last
