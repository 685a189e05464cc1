"""TLS on a real worker: a throwaway CA, server and client certificates made at test time (no key
is stored in the repository), and Python's ssl client and curl as the peers."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardserve.http.limits import Limits
from tests.helpers import (
    ROOT,
    TIMEOUT_S,
    Response,
    RunningServer,
    both_loops,  # noqa: F401 - a fixture
    read_responses,
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


def refused(action: Any) -> bool:
    """True when the TLS exchange fails: a handshake error, or (TLS 1.3, where the server
    checks the client's certificate after the client's handshake is done) the server's alert
    or close where the response should be."""
    try:
        responses, _ = action()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, h11.RemoteProtocolError):
        return True
    return not responses


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


@pytest.mark.usefixtures("both_loops")
def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    settings = tls_settings(pki, ca_certs=str(pki.ca), client_cert="required")
    with serve(environ_app, **settings) as server:

        def attempt() -> Any:
            with tls_connect(server, client_context(pki)) as sock:
                return get(sock)

        assert refused(attempt)
        # The worker keeps serving clients that do present one.
        with tls_connect(server, client_context(pki, with_cert=True)) as sock:
            assert get_environ(sock)["SSL_CLIENT_VERIFY"] == "SUCCESS"


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
def test_tls_1_0_and_1_1_are_refused(pki: Pki, version: str) -> None:
    with serve(environ_app, **tls_settings(pki)) as server:
        with (
            pytest.raises(ssl.SSLError) as info,
            tls_connect(server, _old_client(pki, getattr(ssl.TLSVersion, version))),
        ):
            pass
        assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value)
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
def test_plain_http_to_the_tls_port_is_closed_and_the_worker_keeps_serving(pki: Pki) -> None:
    with serve(environ_app, **tls_settings(pki)) as server:
        with server.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.settimeout(TIMEOUT_S)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while data := sock.recv(4096):
                    received += data
            # At most a TLS alert record (content type 21), never an HTTP response.
            assert not received.startswith(b"HTTP/")
            assert received == b"" or received[0] == 21
        assert wait_until(lambda: not server.worker.shared.connections)  # type: ignore[union-attr]
        with tls_connect(server, client_context(pki)) as tls_sock:
            assert get_environ(tls_sock)["HTTPS"] == "on"


@pytest.mark.usefixtures("both_loops")
def test_a_client_that_never_finishes_the_handshake_is_dropped(pki: Pki) -> None:
    limits = Limits(tls_handshake_timeout_s=1.0)
    with serve(environ_app, limits=limits, **tls_settings(pki)) as server, server.connect() as sock:
        started = time.monotonic()
        assert server_closed(sock, wait_s=5.0)
        assert 0.5 < time.monotonic() - started < 5.0


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
