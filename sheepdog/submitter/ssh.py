"""SSH to the head node with paramiko, as OpenSSH would do it.

- Host settings come from the config keys, then ``~/.ssh/config`` (HostName,
  User, Port, IdentityFile, ProxyCommand, ProxyJump), then defaults.
  An explicitly set ``ssh_user``/``ssh_port``/``ssh_keyfile`` wins over the file.
- Keys: ``ssh_keyfile``, the file's IdentityFile, the SSH agent, ``~/.ssh/id_*``.
- Host keys are checked strictly against ``~/.ssh/known_hosts`` and
  ``/etc/ssh/ssh_known_hosts``: an unknown host is refused with the command
  that adds it, a changed key with the warning it deserves.
- ``forward`` tunnels a local port to an address seen from the head node, for
  a broker the submitter cannot reach directly.
"""

from __future__ import annotations

import contextlib
import getpass
import select
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko

from sheepdog.errors import SSHError

#: Seconds to wait for the TCP connection and the SSH handshake.
CONNECT_TIMEOUT = 20.0


@dataclass(frozen=True)
class Target:
    """Where to connect, after ~/.ssh/config has been applied."""

    alias: str  # the name the user gave (config key ``host``)
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    proxy_command: str | None
    proxy_jump: str | None

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def _ssh_config() -> paramiko.SSHConfig:
    path = Path.home() / ".ssh" / "config"
    return paramiko.SSHConfig.from_path(str(path)) if path.exists() else paramiko.SSHConfig()


def resolve(host: str, user: str | None = None, port: int | None = None,
            keyfile: str | None = None) -> Target:
    """The connection parameters for ``host``; explicit arguments win over ~/.ssh/config."""
    found = _ssh_config().lookup(host)
    if keyfile and not Path(keyfile).expanduser().is_file():
        raise SSHError(
            f"ssh_keyfile {keyfile!r} does not exist: set 'ssh_keyfile' to your private key"
            " file (e.g. ~/.ssh/id_ed25519), or leave it out to use your SSH agent and"
            " ~/.ssh keys"
        )
    # As OpenSSH does, IdentityFile lines naming a missing file are passed over.
    key_files = [keyfile] if keyfile else [
        k for k in found.get("identityfile", []) if Path(k).expanduser().is_file()]
    return Target(
        alias=host,
        hostname=found.get("hostname", host),
        port=port or int(found.get("port", 22)),
        user=user or found.get("user") or getpass.getuser(),
        key_files=tuple(str(Path(k).expanduser()) for k in key_files),
        proxy_command=found.get("proxycommand"),
        proxy_jump=found.get("proxyjump"),
    )


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        fingerprint = key.fingerprint
        host, _, port = hostname.strip("[").partition("]:")
        scan = f"ssh-keyscan -p {port} {host}" if port else f"ssh-keyscan {host}"
        raise SSHError(
            f"the SSH host key of {hostname} ({key.get_name()} {fingerprint}) is not in"
            " ~/.ssh/known_hosts, and sheepdog does not trust unknown hosts. Check that"
            " fingerprint with your cluster's admins, then add the key: connect once with"
            f" `ssh` and accept it, or `{scan} >> ~/.ssh/known_hosts`."
        )


Closer = Callable[[], None]


def _nothing() -> None:
    pass


def _socket_for(target: Target) -> tuple[paramiko.ProxyCommand | paramiko.Channel | None, Closer]:
    """The socket to speak SSH over (a proxy, or None for TCP), and how to close it."""
    if target.proxy_jump and target.proxy_jump.lower() != "none":
        hops = target.proxy_jump.split(",")
        if len(hops) > 1:
            raise SSHError(f"ProxyJump with several hops ({target.proxy_jump}) is not supported")
        user, _, hostport = hops[0].rpartition("@")
        host, _, port = hostport.partition(":")
        jump, close_jump = connect(resolve(host, user or None, int(port) if port else None))
        transport = jump.get_transport()
        assert transport is not None
        channel = transport.open_channel(
            "direct-tcpip", (target.hostname, target.port), ("127.0.0.1", 0)
        )
        return channel, close_jump
    if target.proxy_command and target.proxy_command.lower() != "none":
        proxy = paramiko.ProxyCommand(target.proxy_command)

        def close_proxy() -> None:
            with contextlib.suppress(ProcessLookupError):  # the transport may have closed it
                proxy.close()
            process = proxy.process
            process.wait(10)  # reap it, and close its pipes: paramiko only signals it
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()

        return proxy, close_proxy
    return None, _nothing


def connect(target: Target) -> tuple[paramiko.SSHClient, Closer]:
    """An authenticated SSH connection to ``target``, host key checked, and its closer."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_RefuseUnknown())
    for known in (Path("/etc/ssh/ssh_known_hosts"), Path.home() / ".ssh" / "known_hosts"):
        if known.exists():  # read only: nothing is ever added to these files
            client.load_system_host_keys(str(known))
    where = f"{target.user}@{target.hostname}:{target.port}"
    sock, close_sock = _socket_for(target)

    def close() -> None:
        transport = client.get_transport()
        client.close()
        if transport is not None and transport.is_alive():
            transport.join(10)  # it closes the proxy on its way out: let it, then clean up
        close_sock()

    try:
        client.connect(
            target.hostname, port=target.port, username=target.user,
            key_filename=list(target.key_files) or None,  # type: ignore[arg-type]  # a list works
            allow_agent=True, look_for_keys=True,
            sock=sock, timeout=CONNECT_TIMEOUT, banner_timeout=CONNECT_TIMEOUT,
            auth_timeout=CONNECT_TIMEOUT,
        )
    except SSHError:
        close()
        raise
    except paramiko.BadHostKeyException as exc:
        close()
        raise SSHError(
            f"the SSH host key of {target.known_hosts_name} has CHANGED (got"
            f" {exc.key.get_name()} {exc.key.fingerprint},"
            f" expected {exc.expected_key.fingerprint})."
            " Someone may be intercepting the connection, or the host was reinstalled. Ask"
            " your admins; if the change is expected, remove the old key with"
            f" `ssh-keygen -R '{target.known_hosts_name}'` and connect once with ssh."
        ) from exc
    except paramiko.AuthenticationException as exc:
        close()
        tried = ", ".join(target.key_files) or "the SSH agent and ~/.ssh/id_*"
        raise SSHError(
            f"SSH authentication as {where} failed ({exc}); tried {tried}. Set 'ssh_keyfile'"
            " to a key the head node accepts, or add one to your SSH agent (ssh-add)."
        ) from exc
    except (paramiko.SSHException, OSError) as exc:
        close()
        raise SSHError(f"cannot connect to {where} over SSH: {exc}. Check 'host'/'ssh_port'"
                       " and that the head node is reachable.") from exc
    return client, close


class _Forwarder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    transport: paramiko.Transport
    remote: tuple[str, int]


class _Pipe(socketserver.BaseRequestHandler):
    server: _Forwarder

    def handle(self) -> None:
        try:
            channel = self.server.transport.open_channel(
                "direct-tcpip", self.server.remote, self.request.getpeername()
            )
        except paramiko.SSHException:
            return
        with contextlib.closing(channel):
            while True:
                ready, _, _ = select.select([self.request, channel], [], [], 1.0)
                if self.request in ready:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    channel.sendall(data)
                if channel in ready:
                    data = channel.recv(65536)
                    if not data:
                        return
                    self.request.sendall(data)


class Tunnel:
    """A local port on 127.0.0.1 that leads to ``remote`` as seen from the SSH server."""

    def __init__(self, client: paramiko.SSHClient, remote: tuple[str, int]) -> None:
        transport = client.get_transport()
        assert transport is not None
        self._server = _Forwarder(("127.0.0.1", 0), _Pipe)
        self._server.transport = transport
        self._server.remote = remote
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:port can be opened from here."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
