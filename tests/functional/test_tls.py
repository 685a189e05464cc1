"""TLS on a real worker: a throwaway CA, server and client certificates made at test time (no key
is stored in the repository), and Python's ssl client and curl as the peers."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import logging
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardserve.http.limits import Limits
from hardserve.settings import Config
from hardserve.worker.heartbeat import TLS_RELOAD, Heartbeat, channel
from hardserve.worker.main import Worker
from hardserve.worker.server import WorkerShared
from tests.helpers import (
    DEFAULT_SETTINGS,
    ROOT,
    TIMEOUT_S,
    Response,
    RunningServer,
    both_loops,  # noqa: F401 - a fixture
    only_handler,
    read_responses,
    read_until_close,
    serve,
    serve_process,
    server_closed,
    wait_until,
)

HELLO = "tests.apps_cli.hello:app"
NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


# -- certificates -----------------------------------------------------------------------------


@dataclasses.dataclass
class Pki:
    dir: Path
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    expired_cert: Path
    expired_key: Path
    other_key: Path
    _ca_cert: x509.Certificate
    _ca_key: ec.EllipticCurvePrivateKey

    def server_pair(self, name: str, common_name: str) -> tuple[Path, Path]:
        """A new server certificate signed by the CA, written as NAME.pem and NAME.key."""
        return _issue(self.dir, name, common_name, self._ca_cert, self._ca_key, server=True)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hardserve tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue(
    directory: Path,
    name: str,
    common_name: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
    not_after: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(not_after or NOW + DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("hardserve test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 10 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca = directory / "ca.pem"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert, key = _issue(directory, "server", "127.0.0.1", ca_cert, ca_key, server=True)
    client_cert, client_key = _issue(directory, "client", "client", ca_cert, ca_key, server=False)
    expired_cert, expired_key = _issue(
        directory, "expired", "127.0.0.1", ca_cert, ca_key, server=True, not_after=NOW - DAY / 2
    )
    other_key = directory / "other.key"
    _write_key(other_key, ec.generate_private_key(ec.SECP256R1()))
    return Pki(
        directory,
        ca,
        cert,
        key,
        client_cert,
        client_key,
        expired_cert,
        expired_key,
        other_key,
        ca_cert,
        ca_key,
    )


# -- clients and apps -------------------------------------------------------------------------


def client_context(pki: Pki, *, with_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.set_alpn_protocols(["http/1.1"])
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


@contextlib.contextmanager
def tls_connect(server: RunningServer, context: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    raw = server.connect()
    try:
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise
    with sock:
        yield sock


ENV_KEYS = (
    "wsgi.url_scheme",
    "HTTPS",
    "SSL_CLIENT_VERIFY",
    "SSL_CLIENT_S_DN",
    "SSL_CLIENT_I_DN",
    "SSL_CLIENT_M_SERIAL",
)


def environ_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = json.dumps({key: environ.get(key) for key in ENV_KEYS}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def get(sock: ssl.SSLSocket, count: int = 1) -> tuple[list[Response], bool]:
    """Send `count` pipelined GETs and read the responses (h11 as the client)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * count)
    return read_responses(sock, count)


def get_environ(sock: ssl.SSLSocket) -> dict[str, Any]:
    responses, _ = get(sock)
    assert [r.status for r in responses] == [200]
    result: dict[str, Any] = json.loads(responses[0].body)
    return result


def tls_settings(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"certfile": str(pki.cert), "keyfile": str(pki.key), **more}


def _client_hello(context: ssl.SSLContext) -> bytes:
    """A client's first flight (its ClientHello), made without a socket."""
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def nothing_arrives(sock: socket.socket, wait_s: float = 0.3) -> bool:
    """No byte and no close within wait_s: checking that something does not happen needs a
    bounded wait."""
    readable, _, _ = select.select([sock], [], [], wait_s)
    return not readable


def read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset counts as a close)."""
    sock.settimeout(TIMEOUT_S)
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            received += data
    return received


def refused(action: Any) -> bool:
    """True when the TLS exchange fails: a handshake error, or (TLS 1.3, where the server
    checks the client's certificate after the client's handshake is done) the server's alert
    or close where the response should be."""
    try:
        responses, _ = action()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, h11.RemoteProtocolError):
        return True
    return not responses


class SecurityLines(logging.Handler):
    """The security log's records; `wait` blocks until the next one has arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Semaphore(0)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.release()

    def wait(self, count: int = 1) -> list[tuple[str, int, str]]:
        """(reason, status, detail) of every record so far, once `count` more have arrived."""
        for _ in range(count):
            assert self.arrived.acquire(timeout=TIMEOUT_S), self.refusals()
        return self.refusals()

    def refusals(self) -> list[tuple[str, int, str]]:
        return [
            (r.__dict__["reason"], r.__dict__["status"], r.__dict__["detail"]) for r in self.records
        ]


@pytest.fixture
def security_log() -> Iterator[SecurityLines]:
    with only_handler("hardserve.security", SecurityLines(), logging.WARNING) as handler:
        yield handler


def shared_of(server: RunningServer) -> WorkerShared:
    shared = server.worker.shared
    assert shared is not None
    return shared


# -- handshake, keep-alive, environ -----------------------------------------------------------


@pytest.mark.usefixtures("both_loops")
def test_get_over_tls_with_modern_defaults(pki: Pki) -> None:
    with (
        serve(environ_app, **tls_settings(pki)) as server,
        tls_connect(server, client_context(pki)) as sock,
    ):
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.compression() is None
        environ = get_environ(sock)
    assert environ == {
        "wsgi.url_scheme": "https",
        "HTTPS": "on",
        "SSL_CLIENT_VERIFY": "NONE",
        "SSL_CLIENT_S_DN": None,
        "SSL_CLIENT_I_DN": None,
        "SSL_CLIENT_M_SERIAL": None,
    }


def test_plain_server_sets_no_tls_keys() -> None:
    with serve(environ_app) as server, server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    assert json.loads(responses[0].body) == {
        "wsgi.url_scheme": "http",
        "HTTPS": None,
        "SSL_CLIENT_VERIFY": None,
        "SSL_CLIENT_S_DN": None,
        "SSL_CLIENT_I_DN": None,
        "SSL_CLIENT_M_SERIAL": None,
    }


@pytest.mark.usefixtures("both_loops")
def test_keep_alive_over_tls(pki: Pki) -> None:
    with (
        serve(environ_app, **tls_settings(pki)) as server,
        tls_connect(server, client_context(pki)) as sock,
    ):
        responses, closed = get(sock, 2)
        assert [r.status for r in responses] == [200, 200]
        assert not closed
        assert len(server.worker.shared.connections) == 1  # type: ignore[union-attr]


def test_curl_over_tls(pki: Pki) -> None:
    with serve(environ_app, **tls_settings(pki)) as server:
        result = subprocess.run(
            ["curl", "-sS", "--cacert", str(pki.ca), f"https://127.0.0.1:{server.port}/"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["HTTPS"] == "on"
        # curl refuses the server when it does not trust the CA.
        untrusted = subprocess.run(
            ["curl", "-sS", f"https://127.0.0.1:{server.port}/"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env={**os.environ, "CURL_CA_BUNDLE": os.devnull, "SSL_CERT_FILE": os.devnull},
        )
        assert untrusted.returncode != 0


# -- client certificates ----------------------------------------------------------------------


@pytest.mark.usefixtures("both_loops")
def test_mutual_tls_accepted_with_the_client_certificate_in_the_environ(pki: Pki) -> None:
    settings = tls_settings(pki, ca_certs=str(pki.ca), client_cert="required")
    with (
        serve(environ_app, **settings) as server,
        tls_connect(server, client_context(pki, with_cert=True)) as sock,
    ):
        environ = get_environ(sock)
    client = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    assert environ["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert environ["SSL_CLIENT_S_DN"] == "CN=client,O=hardserve tests"
    assert environ["SSL_CLIENT_I_DN"] == "CN=hardserve test CA,O=hardserve tests"
    assert int(environ["SSL_CLIENT_M_SERIAL"], 16) == client.serial_number


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.usefixtures("both_loops")
def test_mutual_tls_refuses_a_client_without_a_certificate(
    pki: Pki, version: str, security_log: SecurityLines
) -> None:
    settings = tls_settings(pki, ca_certs=str(pki.ca), client_cert="required")
    with serve(environ_app, **settings) as server:
        context = client_context(pki)
        context.maximum_version = getattr(ssl.TLSVersion, version)

        def attempt() -> Any:
            with tls_connect(server, context) as sock:
                return get(sock)

        assert refused(attempt)
        assert security_log.wait() == [
            ("tls_handshake_failed", 0, "PEER_DID_NOT_RETURN_A_CERTIFICATE")
        ]
        # The worker keeps serving clients that do present one.
        with tls_connect(server, client_context(pki, with_cert=True)) as sock:
            assert get_environ(sock)["SSL_CLIENT_VERIFY"] == "SUCCESS"
        assert shared_of(server).stats.refusals == {"tls_handshake_failed": 1}


@pytest.mark.usefixtures("both_loops")
def test_mutual_tls_refuses_a_certificate_from_another_ca(
    pki: Pki, tmp_path: Path, security_log: SecurityLines
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("stranger"))
        .issuer_name(_name("stranger"))
        .public_key(other.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .sign(other, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "stranger.pem", tmp_path / "stranger.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, other)
    settings = tls_settings(pki, ca_certs=str(pki.ca), client_cert="required")
    with serve(environ_app, **settings) as server:
        context = client_context(pki)
        context.load_cert_chain(str(cert_path), str(key_path))

        def attempt() -> Any:
            with tls_connect(server, context) as sock:
                return get(sock)

        assert refused(attempt)
        ((reason, status, detail),) = security_log.wait()
        assert (reason, status) == ("tls_handshake_failed", 0)
        assert detail.startswith("CERTIFICATE_VERIFY_FAILED: "), detail


def test_optional_client_certificate(pki: Pki) -> None:
    settings = tls_settings(pki, ca_certs=str(pki.ca), client_cert="optional")
    with serve(environ_app, **settings) as server:
        with tls_connect(server, client_context(pki)) as sock:
            assert get_environ(sock)["SSL_CLIENT_VERIFY"] == "NONE"
        with tls_connect(server, client_context(pki, with_cert=True)) as sock:
            assert get_environ(sock)["SSL_CLIENT_VERIFY"] == "SUCCESS"


# -- refusals ---------------------------------------------------------------------------------


def test_an_expired_server_certificate_is_refused_by_the_client(pki: Pki) -> None:
    settings = {"certfile": str(pki.expired_cert), "keyfile": str(pki.expired_key)}
    with (
        serve(environ_app, **settings) as server,
        pytest.raises(ssl.SSLCertVerificationError, match="expired"),
        tls_connect(server, client_context(pki)),
    ):
        pass


@pytest.mark.usefixtures("both_loops")
def test_a_client_that_refuses_the_server_certificate_is_logged(
    pki: Pki, security_log: SecurityLines
) -> None:
    with serve(environ_app, **tls_settings(pki)) as server:
        with (
            pytest.raises(ssl.SSLCertVerificationError),
            tls_connect(server, ssl.create_default_context(cafile=str(pki.client_cert))),
        ):
            pass
        assert security_log.wait() == [("tls_handshake_failed", 0, "TLSV1_ALERT_UNKNOWN_CA")]


def _old_client(pki: Pki, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = client_context(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    # Let this client's OpenSSL offer the old versions at all: the refusal must be the server's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
@pytest.mark.usefixtures("both_loops")
def test_tls_1_0_and_1_1_are_refused(pki: Pki, version: str, security_log: SecurityLines) -> None:
    with serve(environ_app, **tls_settings(pki)) as server:
        with (
            pytest.raises(ssl.SSLError) as info,
            tls_connect(server, _old_client(pki, getattr(ssl.TLSVersion, version))),
        ):
            pass
        assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value)
        assert security_log.wait() == [("tls_handshake_failed", 0, "UNSUPPORTED_PROTOCOL")]
        # The same client allowed TLS 1.2 is served.
        with tls_connect(server, _old_client(pki, ssl.TLSVersion.TLSv1_2)) as sock:
            assert sock.version() == "TLSv1.2"
            assert get_environ(sock)["HTTPS"] == "on"


def test_tls_min_version_1_3_refuses_tls_1_2(pki: Pki) -> None:
    with serve(environ_app, **tls_settings(pki, tls_min_version="TLSv1.3")) as server:
        with (
            pytest.raises(ssl.SSLError),
            tls_connect(server, _old_client(pki, ssl.TLSVersion.TLSv1_2)),
        ):
            pass
        with tls_connect(server, client_context(pki)) as sock:
            assert sock.version() == "TLSv1.3"


@pytest.mark.usefixtures("both_loops")
def test_plain_http_to_the_tls_port_is_closed_and_the_worker_keeps_serving(
    pki: Pki, security_log: SecurityLines
) -> None:
    with serve(environ_app, **tls_settings(pki)) as server:
        with server.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # A clean close: no HTTP response (it would be plain text on a TLS port), no TLS
            # alert, no reset.
            assert read_until_close(sock) == b""
        assert security_log.wait() == [("tls_plain_http", 0, "HTTP_REQUEST")]
        shared = shared_of(server)
        assert wait_until(lambda: not shared.connections and not shared.handshakes)
        with tls_connect(server, client_context(pki)) as tls_sock:
            assert get_environ(tls_sock)["HTTPS"] == "on"
        assert shared.stats.refusals == {"tls_plain_http": 1}


@pytest.mark.usefixtures("both_loops")
def test_curl_with_http_to_the_tls_port_gets_an_empty_reply(
    pki: Pki, security_log: SecurityLines
) -> None:
    with serve(environ_app, **tls_settings(pki)) as server:
        result = subprocess.run(
            ["curl", "-sS", f"http://127.0.0.1:{server.port}/"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert result.returncode == 52, result.stderr  # curl: "Empty reply from server"
        assert security_log.wait() == [("tls_plain_http", 0, "HTTP_REQUEST")]


@pytest.mark.usefixtures("both_loops")
def test_a_client_that_never_finishes_the_handshake_is_dropped(
    pki: Pki, security_log: SecurityLines
) -> None:
    limits = Limits(tls_handshake_timeout_s=0.5)
    with serve(environ_app, limits=limits, **tls_settings(pki)) as server:
        started = time.monotonic()  # before the connection: the deadline runs from its accept
        with server.connect() as sock:
            # Other clients are served meanwhile.
            with tls_connect(server, client_context(pki)) as tls_sock:
                assert get_environ(tls_sock)["HTTPS"] == "on"
            assert len(shared_of(server).handshakes) == 1
            assert server_closed(sock, wait_s=TIMEOUT_S)
        assert time.monotonic() - started >= 0.45  # uvloop's clock counts whole milliseconds
        assert security_log.wait() == [("tls_handshake_timeout", 0, "not complete in 0.5 s")]
        shared = shared_of(server)
        assert wait_until(lambda: not shared.handshakes)
        assert shared.stats.refusals == {"tls_handshake_timeout": 1}


@pytest.mark.usefixtures("both_loops")
def test_a_handshake_that_stops_halfway_is_dropped_at_the_deadline(
    pki: Pki, security_log: SecurityLines
) -> None:
    limits = Limits(tls_handshake_timeout_s=0.5)
    with serve(environ_app, limits=limits, **tls_settings(pki)) as server, server.connect() as sock:
        sock.sendall(_client_hello(client_context(pki)))  # then nothing
        assert sock.recv(1) == b"\x16"  # the server's answer: a handshake record
        read_until_closed(sock)  # the rest of its flight, then the close at the deadline
        assert security_log.wait() == [("tls_handshake_timeout", 0, "not complete in 0.5 s")]


@pytest.mark.usefixtures("both_loops")
def test_a_client_that_connects_and_leaves_is_not_a_refusal(
    pki: Pki, security_log: SecurityLines
) -> None:
    with serve(environ_app, **tls_settings(pki)) as server:
        shared = shared_of(server)
        server.connect().close()  # a TCP health check, a port scan
        with server.connect() as sock:
            sock.sendall(_client_hello(client_context(pki))[:20])  # part of a ClientHello
        assert wait_until(lambda: not shared.handshakes and not shared.connections)
        # Served after them, so their ends were seen first.
        with tls_connect(server, client_context(pki)) as tls_sock:
            assert get_environ(tls_sock)["HTTPS"] == "on"
        assert security_log.refusals() == []
        assert shared.stats.refusals == {}


@pytest.mark.usefixtures("both_loops")
def test_a_request_in_the_same_read_as_the_end_of_the_handshake_is_served(pki: Pki) -> None:
    # TLS 1.3: the client's Finished and its request leave together, so the worker reads them
    # together and the request arrives before the handshake's end has been handed over.
    with serve(environ_app, **tls_settings(pki)) as server, server.connect() as sock:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_context(pki).wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    sock.sendall(outgoing.read())
                incoming.write(sock.recv(65536))
        assert client.version() == "TLSv1.3"
        client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        sock.sendall(outgoing.read())  # Finished and two requests, in one write
        received = b""
        while received.count(b"HTTP/1.1 200 OK") < 2:
            incoming.write(sock.recv(65536))
            with contextlib.suppress(ssl.SSLWantReadError):
                while data := client.read(65536):
                    received += data
        assert received.count(b'"HTTPS": "on"') == 2


# -- connections in their handshake count ------------------------------------------------------


def test_connections_in_their_handshake_count_against_connections_max(pki: Pki) -> None:
    limits = Limits(connections_max=2)
    with serve(environ_app, limits=limits, **tls_settings(pki)) as server, ExitStack() as stack:
        shared = shared_of(server)
        first = stack.enter_context(server.connect())
        stack.enter_context(server.connect())
        assert wait_until(lambda: len(shared.handshakes) == 2)
        # At the cap: the third waits in the backlog, its ClientHello unanswered.
        waiting = stack.enter_context(server.connect())
        waiting.sendall(_client_hello(client_context(pki)))
        assert nothing_arrives(waiting)
        first.close()
        # Below the cap again: the worker accepts it and answers.
        waiting.settimeout(TIMEOUT_S)
        assert waiting.recv(1) == b"\x16"


def test_connections_in_their_handshake_count_against_client_connections_max(
    pki: Pki, security_log: SecurityLines
) -> None:
    limits = Limits(client_connections_max=2)
    with serve(environ_app, limits=limits, **tls_settings(pki)) as server, ExitStack() as stack:
        shared = shared_of(server)
        stack.enter_context(server.connect())
        second = stack.enter_context(server.connect())
        assert wait_until(lambda: len(shared.handshakes) == 2)
        extra = stack.enter_context(server.connect())
        assert server_closed(extra, wait_s=TIMEOUT_S)  # past the cap: closed at once
        ((reason, status, _),) = security_log.wait()
        assert (reason, status) == ("client_connections", 0)
        second.close()
        assert wait_until(lambda: len(shared.handshakes) == 1)
        with tls_connect(server, client_context(pki)) as tls_sock:
            assert get_environ(tls_sock)["HTTPS"] == "on"
        assert shared.stats.refusals == {"client_connections": 1}  # no handshake refusal


@pytest.mark.usefixtures("both_loops")
def test_a_graceful_stop_closes_handshakes_in_progress(
    pki: Pki, security_log: SecurityLines
) -> None:
    limits = Limits(tls_handshake_timeout_s=60.0)
    with serve(environ_app, limits=limits, **tls_settings(pki)) as server, server.connect() as sock:
        shared = shared_of(server)
        assert wait_until(lambda: len(shared.handshakes) == 1)
        started = time.monotonic()
        server.worker.stop()
        assert server_closed(sock, wait_s=TIMEOUT_S)
        assert time.monotonic() - started < 5.0  # not the handshake deadline
    # The worker has stopped: its drain saw the handshake end, long before the graceful timeout.
    assert time.monotonic() - started < 5.0
    assert not shared.handshakes
    assert security_log.refusals() == []


@pytest.mark.usefixtures("both_loops")
def test_file_wrapper_over_tls_sends_the_whole_file(pki: Pki, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(len(data)))])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 65536)

    with (
        serve(app, **tls_settings(pki)) as server,
        tls_connect(server, client_context(pki)) as sock,
    ):
        responses, _ = get(sock)
        assert responses[0].status == 200
        assert responses[0].body == data


# -- the command line -------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hardserve", HELLO, "--bind", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=str(ROOT),
    )


def test_a_key_that_does_not_match_the_certificate_exits_3_with_one_line(
    pki: Pki, clean_server_env: None
) -> None:
    result = run_cli("--certfile", str(pki.cert), "--keyfile", str(pki.other_key))
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"hardserve: cannot load --certfile {pki.cert}")


def test_a_missing_certificate_file_exits_3(pki: Pki, clean_server_env: None) -> None:
    missing = pki.dir / "missing.pem"
    result = run_cli("--certfile", str(missing), "--keyfile", str(pki.key))
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f"hardserve: cannot load --certfile {missing} with --keyfile {pki.key}: "
        "No such file or directory"
    ]


def test_certfile_without_keyfile_exits_3(pki: Pki, clean_server_env: None) -> None:
    result = run_cli("--certfile", str(pki.cert))
    assert result.returncode == 3
    assert result.stderr.strip() == "hardserve: --certfile needs --keyfile as well"


def test_the_cli_serves_tls(pki: Pki, clean_server_env: None) -> None:
    args = ("--certfile", str(pki.cert), "--keyfile", str(pki.key))
    with serve_process(HELLO, *args, cwd=str(ROOT)) as server:
        assert any("binds: https://127.0.0.1:" in line for line in server.stderr_lines)
        with (
            socket.create_connection((server.host, server.port), timeout=TIMEOUT_S) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            responses, _ = get(sock)
        assert responses[0].body == b"hello from apps_cli\n"


def _served_serial(pki: Pki, port: int) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
        client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _wait_for_line(server: Any, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not any(text in line for line in server.stderr_lines):
        assert time.monotonic() < deadline, f"no {text!r} in:\n" + "".join(server.stderr_lines)
        time.sleep(0.02)


def test_hup_serves_a_certificate_replaced_on_disk(
    pki: Pki, tmp_path: Path, clean_server_env: None
) -> None:
    cert, key = pki.server_pair("reload-before", "127.0.0.1")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    args = ("--certfile", str(live_cert), "--keyfile", str(live_key))
    with serve_process(HELLO, *args, cwd=str(ROOT)) as server:
        before = _served_serial(pki, server.port)
        new_cert, new_key = pki.server_pair("reload-after", "127.0.0.1")
        live_cert.write_bytes(new_cert.read_bytes())
        live_key.write_bytes(new_key.read_bytes())
        server.process.send_signal(signal.SIGHUP)
        _wait_for_line(server, "every worker replaced")
        after = _served_serial(pki, server.port)
    assert before == x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    assert after == x509.load_pem_x509_certificate(new_cert.read_bytes()).serial_number


def test_hup_with_a_broken_pair_keeps_serving_the_old_certificate(
    pki: Pki, tmp_path: Path, clean_server_env: None
) -> None:
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(pki.cert.read_bytes())
    live_key.write_bytes(pki.key.read_bytes())
    args = ("--certfile", str(live_cert), "--keyfile", str(live_key), "--workers", "2")
    with serve_process(HELLO, *args, cwd=str(ROOT)) as server:
        before = _served_serial(pki, server.port)
        live_key.write_bytes(pki.other_key.read_bytes())  # no longer the certificate's key
        server.process.send_signal(signal.SIGHUP)
        _wait_for_line(server, "every worker replaced")
        assert _served_serial(pki, server.port) == before
        assert server.process.poll() is None
        log = "".join(server.stderr_lines)
    assert (
        f"reload: configuration not changed: cannot load --certfile {live_cert} "
        f"with --keyfile {live_key}: KEY_VALUES_MISMATCH" in log
    )
    # The new workers got the pair loaded before: none of them failed to start.
    assert "died" not in log
    assert "Traceback" not in log


def _serial_of(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def _live_pair(pki: Pki, tmp_path: Path, name: str) -> tuple[Path, Path, Path]:
    """A new pair copied to live.pem and live.key (the files the server is given), and the
    certificate it was copied from."""
    cert, key = pki.server_pair(name, "127.0.0.1")
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(cert.read_bytes())
    live_key.write_bytes(key.read_bytes())
    return live_cert, live_key, cert


def _children(pid: int) -> set[int]:
    """The live (not zombie) child processes of `pid`: the master's workers."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            found.update(int(c) for c in (task / "children").read_text().split())
    live = set()
    for child in found:
        with contextlib.suppress(FileNotFoundError):
            if Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
                live.add(child)
    return live


def _workers(server: Any, count: int) -> set[int]:
    """The master's workers once there are `count` of them, all serving."""
    _wait_for_line(server, "listening at")
    deadline = time.monotonic() + TIMEOUT_S
    while len(found := _children(server.process.pid)) != count:
        assert time.monotonic() < deadline, f"{found} are not {count} workers"
        time.sleep(0.02)
    return found


def _pids_that_logged(server: Any, text: str) -> list[int]:
    """The pid of the process that wrote each error-log line containing `text`."""
    found = (
        re.search(r"\] \[(\d+)\] \[", line) for line in list(server.stderr_lines) if text in line
    )
    return [int(match[1]) for match in found if match]


_LOADED_AGAIN = "TLS files loaded again"


def test_certificate_files_replaced_on_disk_are_taken_up_without_a_hup(
    pki: Pki, tmp_path: Path, clean_server_env: None
) -> None:
    """A renewal written over the files: each worker loads the new pair and serves it to new
    connections, without a restart; a keep-alive connection made before goes on."""
    live_cert, live_key, cert = _live_pair(pki, tmp_path, "watch-before")
    args = ("--certfile", str(live_cert), "--keyfile", str(live_key), "--workers", "2")
    with serve_process(HELLO, *args, "--tls-reload-check-s", "0.2", cwd=str(ROOT)) as server:
        workers = _workers(server, 2)
        assert _served_serial(pki, server.port) == _serial_of(cert)
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as kept,
        ):
            assert get(kept)[0][0].status == 200
            new_cert, new_key = pki.server_pair("watch-after", "127.0.0.1")
            live_cert.write_bytes(new_cert.read_bytes())
            live_key.write_bytes(new_key.read_bytes())
            assert wait_until(lambda: len(_pids_that_logged(server, _LOADED_AGAIN)) == 2), "".join(
                server.stderr_lines
            )
            # Each worker has swapped: whichever takes a new connection serves the new pair.
            assert {_served_serial(pki, server.port) for _ in range(8)} == {_serial_of(new_cert)}
            # The connection made before keeps its session and is served on.
            responses, _ = get(kept, 2)
            assert [r.status for r in responses] == [200, 200]
            der = kept.getpeercert(binary_form=True)
            assert der is not None
            assert x509.load_der_x509_certificate(der).serial_number == _serial_of(cert)
        assert _children(server.process.pid) == workers  # no worker was replaced
        assert sorted(_pids_that_logged(server, _LOADED_AGAIN)) == sorted(workers)
        log = "".join(server.stderr_lines)
    assert log.count("TLS files changed: the workers load them for new connections") == 1
    assert "replaced" not in log
    assert "died" not in log


def test_a_broken_pair_on_disk_is_logged_once_and_the_old_certificate_stays(
    pki: Pki, tmp_path: Path, clean_server_env: None
) -> None:
    live_cert, live_key, cert = _live_pair(pki, tmp_path, "broken-before")
    args = ("--certfile", str(live_cert), "--keyfile", str(live_key), "--workers", "2")
    with serve_process(HELLO, *args, "--tls-reload-check-s", "0.1", cwd=str(ROOT)) as server:
        workers = _workers(server, 2)
        before = _served_serial(pki, server.port)
        live_key.write_bytes(pki.other_key.read_bytes())  # no longer the certificate's key
        _wait_for_line(server, "TLS files changed but do not load")
        assert {_served_serial(pki, server.port) for _ in range(4)} == {before}

        def logged_again() -> bool:
            return "".join(server.stderr_lines).count("TLS files changed but do not load") > 1

        # Ten more looks at the files (a bounded wait: checking that nothing more happens).
        assert not wait_until(logged_again, timeout_s=1.0)
        assert _children(server.process.pid) == workers
        assert server.process.poll() is None
        log = "".join(server.stderr_lines)
    assert before == _serial_of(cert)
    assert (
        f"TLS files changed but do not load, the running ones stay: cannot load --certfile "
        f"{live_cert} with --keyfile {live_key}: KEY_VALUES_MISMATCH" in log
    )
    assert "TLS files changed: the workers load" not in log
    assert _LOADED_AGAIN not in log
    assert "Traceback" not in log


# -- the swap inside one worker ----------------------------------------------------------------


@contextlib.contextmanager
def serve_with_channel(app: Any, **settings: Any) -> Iterator[tuple[RunningServer, int]]:
    """One worker in a thread with a master-worker channel, as a master would run it: the
    server and the master's end of the channel."""
    master_end, worker_end = channel()
    os.set_blocking(master_end, False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    host, port = sock.getsockname()
    config = Config(bind=(f"{host}:{port}",), **{**DEFAULT_SETTINGS, **settings})
    worker = Worker(app, config, [sock], Heartbeat(worker_end))
    thread = threading.Thread(target=worker.run, kwargs={"install_signals": False}, daemon=True)
    thread.start()
    try:
        assert worker.ready.wait(TIMEOUT_S), "worker did not start"
        yield RunningServer(host, port, worker), master_end
    finally:
        worker.stop()
        thread.join(TIMEOUT_S)
        sock.close()
        os.close(master_end)
        os.close(worker_end)
        assert not thread.is_alive(), "worker did not stop"


class ErrorLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def error_log() -> Iterator[ErrorLines]:
    with only_handler("hardserve.error", ErrorLines(), logging.INFO) as handler:
        yield handler


def _context_of(server: RunningServer) -> Any:
    acceptor = shared_of(server).acceptor
    assert acceptor is not None
    return acceptor.tls_context


@pytest.mark.usefixtures("both_loops")
def test_a_worker_told_to_reload_swaps_the_context_for_new_connections(
    pki: Pki, tmp_path: Path, error_log: ErrorLines
) -> None:
    live_cert, live_key, cert = _live_pair(pki, tmp_path, "swap-before")
    settings = {"certfile": str(live_cert), "keyfile": str(live_key)}
    with serve_with_channel(environ_app, **settings) as (server, master_end):
        old = _context_of(server)
        with tls_connect(server, client_context(pki)) as kept:
            assert get_environ(kept)["HTTPS"] == "on"
            new_cert, new_key = pki.server_pair("swap-after", "127.0.0.1")
            live_cert.write_bytes(new_cert.read_bytes())
            live_key.write_bytes(new_key.read_bytes())
            os.write(master_end, TLS_RELOAD)
            assert wait_until(lambda: _context_of(server) is not old), error_log.lines
            assert _served_serial(pki, server.port) == _serial_of(new_cert)
            assert get_environ(kept)["HTTPS"] == "on"  # made before the swap: served on
            der = kept.getpeercert(binary_form=True)
            assert der is not None
            assert x509.load_der_x509_certificate(der).serial_number == _serial_of(cert)
    assert error_log.lines.count("TLS files loaded again: new connections use them") == 1


@pytest.mark.usefixtures("both_loops")
def test_a_worker_keeps_its_context_when_the_files_no_longer_load(
    pki: Pki, tmp_path: Path, error_log: ErrorLines
) -> None:
    """The files changed again between the master's load and the worker's (or the worker
    cannot read them): the worker logs why and serves on with the pair it has."""
    live_cert, live_key, cert = _live_pair(pki, tmp_path, "stay")
    settings = {"certfile": str(live_cert), "keyfile": str(live_key)}
    with serve_with_channel(environ_app, **settings) as (server, master_end):
        old = _context_of(server)
        live_key.write_bytes(pki.other_key.read_bytes())
        os.write(master_end, TLS_RELOAD)
        os.write(master_end, TLS_RELOAD)  # two in a row: loaded twice at most, never at once

        def failed() -> int:
            return sum("TLS files not loaded again" in line for line in error_log.lines)

        assert wait_until(lambda: failed() >= 1), error_log.lines
        assert _context_of(server) is old
        assert _served_serial(pki, server.port) == _serial_of(cert)
    assert 1 <= failed() <= 2
    assert any("KEY_VALUES_MISMATCH" in line for line in error_log.lines)
    assert not any("loaded again:" in line for line in error_log.lines)


# -- which listeners speak TLS ----------------------------------------------------------------


def _plain_get(sock: socket.socket) -> bytes:
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    responses, _ = read_responses(sock, 1)
    return responses[0].body


def test_unix_sockets_stay_plain_beside_a_tls_port(
    pki: Pki, tmp_path: Path, clean_server_env: None
) -> None:
    path = tmp_path / "app.sock"
    args = ("--certfile", str(pki.cert), "--keyfile", str(pki.key))
    binds = ("--bind", f"unix:{path}", "--bind", "127.0.0.1:0")
    with serve_process(HELLO, *args, *binds, cwd=str(ROOT)) as server:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as local:
            local.settimeout(TIMEOUT_S)
            local.connect(str(path))
            assert _plain_get(local) == b"hello from apps_cli\n"
        with (
            socket.create_connection((server.host, server.port), timeout=TIMEOUT_S) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            assert get(sock)[0][0].body == b"hello from apps_cli\n"


def test_with_a_tls_bind_only_tls_binds_speak_tls(pki: Pki, clean_server_env: None) -> None:
    args = ("--certfile", str(pki.cert), "--keyfile", str(pki.key))
    binds = ("--bind", "tls://127.0.0.1:0", "--bind", "127.0.0.1:0")
    with serve_process(HELLO, *args, *binds, cwd=str(ROOT)) as server:
        _wait_for_line(server, "binds: ")

        def ports() -> list[tuple[str, int]]:
            found = (
                re.search(r"listening at (https?)://127\.0\.0\.1:(\d+)", line)
                for line in list(server.stderr_lines)
            )
            return [(match[1], int(match[2])) for match in found if match]

        assert wait_until(lambda: len(ports()) == 2), server.stderr_lines
        (tls_scheme, tls_port), (plain_scheme, plain_port) = ports()
        assert (tls_scheme, plain_scheme) == ("https", "http")
        binds_line = next(line for line in server.stderr_lines if "binds: " in line)
        assert f"https://127.0.0.1:{tls_port}, http://127.0.0.1:{plain_port}" in binds_line
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=TIMEOUT_S) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            assert get(sock)[0][0].body == b"hello from apps_cli\n"
        with socket.create_connection(("127.0.0.1", plain_port), timeout=TIMEOUT_S) as plain:
            assert _plain_get(plain) == b"hello from apps_cli\n"
        with (
            pytest.raises(ssl.SSLError),
            socket.create_connection(("127.0.0.1", plain_port), timeout=TIMEOUT_S) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1"),
        ):
            pass


def test_a_tls_bind_without_a_certificate_exits_3(clean_server_env: None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hardserve", HELLO, "--bind", "tls://127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=str(ROOT),
    )
    assert result.returncode == 3
    assert result.stderr.strip() == "hardserve: --bind tls://127.0.0.1:0 needs --certfile"
