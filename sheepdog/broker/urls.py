"""Broker URLs: checking, redacting, and the messages for failing to connect.

No redis-py here: workers import this module.

Accepted URLs (the same as redis-py's):

- ``redis://[[user]:password@]host[:port][/db]``
- ``rediss://...`` the same over TLS, with redis-py's ``ssl_*`` query parameters
  (``ssl_ca_certs=/path/to/ca.pem`` and the rest: ``resp.tls_context``)
- ``unix://[[user]:password@]/path/to/socket[?db=N]``
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

from sheepdog.errors import BrokerError

SCHEMES = ("redis", "rediss", "unix")


#: Query parameters that hold a secret: the server's password, a client key's password.
SECRET_PARAMS = ("password", "ssl_password")


def _secret(param: str) -> bool:
    return param.split("=", 1)[0] in SECRET_PARAMS


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and files."""
    parts = urlsplit(url)
    params = [q for q in parts.query.split("&") if q]
    if parts.password is None and not any(_secret(q) for q in params):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    query = "&".join(q.split("=", 1)[0] + "=***" if _secret(q) else q for q in params)
    if not netloc:  # unix:///path: urlunsplit would drop the '//'
        return f"{parts.scheme}://{parts.path}" + (f"?{query}" if query else "")
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
        f"the broker at {redact(url)} refused the password: {_said(detail)}."
        " Check the password in broker_url."
    )


def needs_password(url: str) -> BrokerError:
    return BrokerError(
        f"the broker at {redact(url)} needs a password; put it in broker_url"
        " as redis://:PASSWORD@host:port"
    )


def unreachable(url: str, detail: object) -> BrokerError:
    return BrokerError(
        f"cannot reach the broker at {redact(url)}: {_said(detail)}. Is the server running, and is"
        " this address reachable from here? Check broker_url."
    )


def unverified(url: str, detail: object) -> BrokerError:
    return BrokerError(
        f"the broker at {redact(url)} sent a TLS certificate that does not verify:"
        f" {str(detail).rstrip('.')}."
        " Give the CA that signed it in broker_url's query as ssl_ca_certs=/path/to/ca.pem"
        " (a file that must exist where the workers run too), and connect by a name or address"
        " the certificate holds (or set ssl_check_hostname=false)."
    )


def with_user(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` with ``password`` instead of its own credentials."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("password="))
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _said(detail: object) -> str:
    """An error's text, for the middle of a sentence (no full stop of its own)."""
    return str(detail).rstrip().rstrip(".")
