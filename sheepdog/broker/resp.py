"""A minimal Redis protocol (RESP2) client for workers, with no dependencies.

A worker runs a handful of commands once per array task; importing redis-py
(which imports asyncio) costs more than the whole task's broker traffic. This
client speaks just what ``TaskChannel`` needs: connect by URL (TCP, TLS, unix
socket), AUTH, SELECT and ``execute_command``. The submitter keeps redis-py.
"""

from __future__ import annotations

import _socket  # not socket: that imports enum and selectors, a tenth of a worker's start
import io
import sys
import time

from sheepdog.broker import urls
from sheepdog.errors import BrokerError

TYPE_CHECKING = False  # typing, ssl, urllib.parse: a worker's start may not afford them
if TYPE_CHECKING:
    import ssl
    from typing import Any

#: Seconds to wait for a connect or a reply.
TIMEOUT = 30.0


class RespError(Exception):
    """An error reply from the server (``-ERR ...``)."""


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to the broker")
        out += [b"$%d\r\n" % len(data), data, b"\r\n"]
    return b"".join(out)


#: ``ssl_cert_reqs`` values, as redis-py reads them (names of ssl's constants).
_CERT_REQS = {"none": "CERT_NONE", "optional": "CERT_OPTIONAL", "required": "CERT_REQUIRED"}


def tls_context(url: str) -> ssl.SSLContext:
    """The TLS context for a ``rediss://`` URL, from its ``ssl_*`` query parameters.

    Read as redis-py reads them, so that a URL the submitter connects with
    works in the workers too: ``ssl_ca_certs`` (CA file), ``ssl_ca_path`` (CA
    directory), ``ssl_cert_reqs`` (``none``, ``optional``, ``required``),
    ``ssl_check_hostname`` (``false``, ``no``, ``0`` turn it off),
    ``ssl_certfile``, ``ssl_keyfile`` and ``ssl_password`` (a client
    certificate). A missing or unreadable file is a BrokerError naming it.

    ssl is imported here, not with the module: only a ``rediss://`` worker needs it.
    """
    import ssl

    query = {name: values[0] for name, values in urls.query_params(urls.split(url).query).items()}
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise BrokerError(f"broker_url {urls.redact(url)!r}: ssl_cert_reqs must be one of "
                          f"{', '.join(_CERT_REQS)}, not {reqs!r}")
    verify_mode = getattr(ssl, _CERT_REQS[reqs])
    context = ssl.create_default_context()
    context.check_hostname = verify_mode != ssl.CERT_NONE and query.get(
        "ssl_check_hostname", "").upper() not in ("0", "F", "FALSE", "N", "NO")
    context.verify_mode = verify_mode
    certfile, keyfile = query.get("ssl_certfile"), query.get("ssl_keyfile")
    cafile, capath = query.get("ssl_ca_certs"), query.get("ssl_ca_path")
    try:
        if certfile or keyfile:
            context.load_cert_chain(certfile or "", keyfile, query.get("ssl_password"))
        if cafile or capath:
            context.load_verify_locations(cafile, capath)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = ", ".join(f"{k}={v}" for k, v in query.items() if k.startswith("ssl_")
                          and k != "ssl_password")
        raise BrokerError(f"broker_url {urls.redact(url)!r}: cannot load the TLS files"
                          f" ({files}): {exc}") from exc
    return context


def _connected(family: int, address: Any, timeout: float) -> _socket.socket:
    sock = _socket.socket(family, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _create_connection(host: str, port: int, timeout: float) -> _socket.socket:
    """``socket.create_connection((host, port), timeout)``: each address in turn."""
    # getaddrinfo encodes a str host with the idna codec, which imports re (and
    # unicodedata); an ASCII name is those bytes already.
    name = host.encode() if host.isascii() else host
    error: OSError | None = None
    for family, _, _, _, address in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
        try:
            return _connected(family, address, timeout)
        except OSError as exc:
            error = exc
    raise error or OSError(f"getaddrinfo returned no address for {host}")


def _open_socket(url: str, timeout: float) -> _socket.socket:
    parts = urls.split(url)
    if parts.scheme == "unix":
        return _connected(_socket.AF_UNIX, parts.path, timeout)
    host = parts.hostname or "localhost"
    if parts.scheme != "rediss":
        return _create_connection(host, parts.port or 6379, timeout)
    context = tls_context(url)  # before any socket
    import socket  # ssl has imported it anyway

    sock = socket.create_connection((host, parts.port or 6379), timeout=timeout)
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


class _SocketReader(io.RawIOBase):
    """A socket as a raw stream, for a buffered reader (what ``socket.makefile`` makes)."""

    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


class RespClient:
    def __init__(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._file = io.BufferedReader(_SocketReader(sock))

    @classmethod
    def from_url(cls, url: str, timeout: float = TIMEOUT) -> RespClient:
        urls.check_url(url)
        parts = urls.split(url)
        query = urls.query_params(parts.query)
        client = cls(_open_socket(url, timeout))
        password = (urls.unquote(parts.password) if parts.password
                    else query.get("password", [""])[0])
        db_text = query.get("db", [""])[0] if parts.scheme == "unix" else parts.path.strip("/")
        try:
            if password:
                user = [urls.unquote(parts.username)] if parts.username else []
                client.execute_command("AUTH", *user, password)
            if db_text and int(db_text):
                client.execute_command("SELECT", int(db_text))
            client.execute_command("PING")
        except BaseException:
            client.close()
            raise
        return client

    def execute_command(self, *args: Any) -> Any:
        self._sock.sendall(_encode(args))
        reply = self._read()
        if isinstance(reply, RespError):
            raise reply
        return reply

    def execute_pipeline(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send every command, then read every reply (one round trip). Error replies
        are returned in their places, as RespError."""
        self._sock.sendall(b"".join(_encode(command) for command in commands))
        return [self._read() for _ in commands]

    def _read(self) -> Any:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the broker closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            return RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else self._file.read(size + 2)[:-2]
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise ConnectionError(f"unexpected reply from the broker: {line[:40]!r}")

    def close(self) -> None:
        self._file.close()
        self._sock.close()


#: Error replies that mean "not now" rather than "no": the server is loading
#: its data, busy with a script, out of memory, failing over or still being
#: set up; a per-request user missing after a restart is recreated by the
#: submitter.
TRANSIENT_REPLIES = ("LOADING", "BUSY", "OOM", "MISCONF", "TRYAGAIN", "MASTERDOWN",
                     "READONLY", "CLUSTERDOWN", "NOREPLICAS", "WRONGPASS", "NOAUTH")


def _unverified(exc: BaseException) -> bool:
    """Whether ``exc`` is a TLS certificate that did not verify. Only a program that
    imported ssl can have one: ssl is not imported to find out."""
    ssl_module = sys.modules.get("ssl")
    return ssl_module is not None and isinstance(exc, ssl_module.SSLCertVerificationError)


def transient(exc: BaseException) -> bool:
    """Whether retrying later may succeed where ``exc`` failed."""
    if isinstance(exc, RespError):
        return str(exc).startswith(TRANSIENT_REPLIES)
    if _unverified(exc):
        return False  # the wrong CA or name: it will not verify in a moment either
    return isinstance(exc, OSError)  # ConnectionError, timeouts and other TLS errors


def connect(url: str, *, patience: float = 0.0, retry_delay: float = 0.5) -> RespClient:
    """A connected, authenticated client, trying for up to ``patience`` seconds.

    A refused password or an unreachable server raise BrokerError saying
    which, once the patience is used up.
    """
    deadline = time.monotonic() + patience
    while True:
        try:
            return RespClient.from_url(url)
        except (RespError, OSError) as exc:
            if not transient(exc) or time.monotonic() + retry_delay > deadline:
                raise _connect_error(url, exc) from exc
        time.sleep(retry_delay)
        retry_delay = min(retry_delay * 2, 5.0)


def _connect_error(url: str, exc: BaseException) -> Exception:
    text = str(exc)
    if text.startswith(("WRONGPASS", "ERR invalid password", "ERR AUTH")):
        return urls.refused_password(url, exc)
    if text.startswith("NOAUTH"):
        return urls.needs_password(url)
    if _unverified(exc):
        return urls.unverified(url, exc)
    return urls.unreachable(url, exc)
