"""Broker URLs: checking, redacting, and the messages for failing to connect.

No redis-py here: workers import this module.

Accepted URLs (the same as redis-py's):

- ``redis://[[user]:password@]host[:port][/db]``
- ``rediss://...`` the same over TLS
- ``unix://[[user]:password@]/path/to/socket[?db=N]``
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from sheepdog.errors import BrokerError

SCHEMES = ("redis", "rediss", "unix")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and files."""
    parts = urlsplit(url)
    if parts.password is None and "password=" not in parts.query:
        return url
    netloc = parts.netloc
    if parts.password is not None:
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


def refused_password(url: str, detail: object) -> BrokerError:
    return BrokerError(
        f"the broker at {redact(url)} refused the password: {detail}."
        " Check the password in broker_url."
    )


def needs_password(url: str) -> BrokerError:
    return BrokerError(
        f"the broker at {redact(url)} needs a password; put it in broker_url"
        " as redis://:PASSWORD@host:port"
    )


def unreachable(url: str, detail: object) -> BrokerError:
    return BrokerError(
        f"cannot reach the broker at {redact(url)}: {detail}. Is the server running, and is"
        " this address reachable from here? Check broker_url."
    )


def with_user(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` with ``password`` instead of its own credentials."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("password="))
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
