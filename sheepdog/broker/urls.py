"""Broker URLs: checking, redacting, and the messages for failing to connect.

No redis-py here: workers import this module.

Accepted URLs (the same as redis-py's):

- ``redis://[[user]:password@]host[:port][/db]``
- ``rediss://...`` the same over TLS, with redis-py's ``ssl_*`` query parameters
  (``ssl_ca_certs=/path/to/ca.pem`` and the rest: ``resp.tls_context``)
- ``unix://[[user]:password@]/path/to/socket[?db=N]``
"""

from __future__ import annotations

from sheepdog.errors import BrokerError

SCHEMES = ("redis", "rediss", "unix")

#: What urllib.parse.urlsplit takes for a scheme's characters.
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
#: Schemes urlunsplit writes with '//' even without a netloc (urllib.parse.uses_netloc).
_USES_NETLOC = frozenset((
    "ftp", "http", "gopher", "nntp", "telnet", "imap", "wais", "file", "mms", "https", "shttp",
    "snews", "prospero", "rtsp", "rtspu", "rsync", "svn", "svn+ssh", "sftp", "nfs", "git",
    "git+ssh", "ws", "wss",
))


class Parts:
    """A URL split as ``urllib.parse.urlsplit`` splits it, with the same attributes."""

    __slots__ = ("fragment", "netloc", "path", "query", "scheme")

    def __init__(self, scheme: str, netloc: str, path: str, query: str, fragment: str
                 ) -> None:
        self.scheme = scheme
        self.netloc = netloc
        self.path = path
        self.query = query
        self.fragment = fragment

    @property
    def username(self) -> str | None:
        userinfo, at, _host = self.netloc.rpartition("@")
        return userinfo.partition(":")[0] if at else None

    @property
    def password(self) -> str | None:
        userinfo, at, _host = self.netloc.rpartition("@")
        _user, colon, password = userinfo.partition(":")
        return password if at and colon else None

    def _hostinfo(self) -> tuple[str, str | None]:
        hostinfo = self.netloc.rpartition("@")[2]
        _, bracket, bracketed = hostinfo.partition("[")
        if bracket:
            hostname, _, port = bracketed.partition("]")
            port = port.partition(":")[2]
        else:
            hostname, _, port = hostinfo.partition(":")
        return hostname, port or None

    @property
    def hostname(self) -> str | None:
        host = self._hostinfo()[0]
        if not host:
            return None
        name, percent, zone = host.partition("%")  # an IPv6 zone is not lowercased
        return name.lower() + percent + zone

    @property
    def port(self) -> int | None:
        port = self._hostinfo()[1]
        if port is None:
            return None
        if not (port.isdigit() and port.isascii()):
            raise ValueError(f"Port could not be cast to integer value as {port!r}")
        if not 0 <= int(port) <= 65535:
            raise ValueError("Port out of range 0-65535")
        return int(port)

    def unsplit(self) -> str:
        """``urllib.parse.urlunsplit`` of the parts."""
        url = self.path
        if self.netloc or (self.scheme and self.scheme in _USES_NETLOC and url[:2] != "//"):
            if url and url[:1] != "/":
                url = "/" + url
            url = "//" + self.netloc + url
        if self.scheme:
            url = self.scheme + ":" + url
        if self.query:
            url += "?" + self.query
        if self.fragment:
            url += "#" + self.fragment
        return url


def split(url: str) -> Parts:
    """``urllib.parse.urlsplit(url)``, without importing urllib.parse where it need not be.

    A worker splits its broker URL on every start, and urllib.parse imports re
    and ipaddress: several times what the split itself is worth. This is the
    same algorithm for a printable ASCII URL without IPv6 brackets; anything
    else (spaces, control characters, non-ASCII, ``[::1]``) goes to urllib.
    """
    if not url.isascii() or not url.isprintable() or " " in url or "[" in url or "]" in url:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return Parts(parts.scheme, parts.netloc, parts.path, parts.query, parts.fragment)
    scheme = netloc = query = fragment = ""
    colon = url.find(":")
    if colon > 0 and url[0].isalpha() and all(c in _SCHEME_CHARS for c in url[:colon]):
        scheme, url = url[:colon].lower(), url[colon + 1:]
    if url[:2] == "//":
        end = min((i for i in (url.find(c, 2) for c in "/?#") if i >= 0), default=len(url))
        netloc, url = url[2:end], url[end:]
    if "#" in url:
        url, fragment = url.split("#", 1)
    if "?" in url:
        url, query = url.split("?", 1)
    return Parts(scheme, netloc, url, query, fragment)


def unquote(text: str) -> str:
    """``urllib.parse.unquote(text)``: %XX escapes decoded as UTF-8."""
    if "%" not in text:
        return text
    if not text.isascii():
        from urllib.parse import unquote as urllib_unquote

        return urllib_unquote(text)
    first, *rest = text.split("%")
    out = [first.encode()]
    for piece in rest:
        code = piece[:2]
        if len(code) == 2 and code[0] in _HEX_DIGITS and code[1] in _HEX_DIGITS:
            out += [bytes([int(code, 16)]), piece[2:].encode()]
        else:
            out += [b"%", piece.encode()]
    return b"".join(out).decode("utf-8", "replace")


def query_params(query: str) -> dict[str, list[str]]:
    """``urllib.parse.parse_qs(query)``: name -> its values; blank values are left out."""
    params: dict[str, list[str]] = {}
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        if eq and value:
            params.setdefault(unquote(name.replace("+", " ")), []).append(
                unquote(value.replace("+", " ")))
    return params


#: Query parameters that hold a secret: the server's password, a client key's password.
SECRET_PARAMS = ("password", "ssl_password")


def _secret(param: str) -> bool:
    return param.split("=", 1)[0] in SECRET_PARAMS


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and files."""
    parts = split(url)
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
    return Parts(parts.scheme, netloc, parts.path, query, parts.fragment).unsplit()


def check_url(url: str) -> None:
    """Raise BrokerError unless ``url`` has a scheme we can connect with."""
    scheme = split(url).scheme
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
    from urllib.parse import quote, urlsplit, urlunsplit  # here: the submitter's alone

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("password="))
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _said(detail: object) -> str:
    """An error's text, for the middle of a sentence (no full stop of its own)."""
    return str(detail).rstrip().rstrip(".")
