"""tls.py without a network: the context's settings, the password file, the checks at load,
and the environ keys of a client certificate."""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hardserve import tls
from hardserve.http import reasons
from hardserve.master import listeners
from hardserve.master.arbiter import Arbiter
from hardserve.settings import Config, SettingError, is_public_bind, load
from hardserve.worker.heartbeat import TLS_RELOAD, channel, tell


def _pair(directory: Path, password: bytes | None = None) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return cert_path, key_path


def test_no_certfile_no_context() -> None:
    assert tls.build_context(Config()) is None


def test_the_context_has_the_hardened_defaults(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    context = tls.build_context(Config(certfile=str(cert), keyfile=str(key)))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.verify_mode == ssl.CERT_NONE
    # The ssl module's own cipher set: no RC4, no NULL, no export ciphers.
    names = {c["name"] for c in context.get_ciphers()}
    assert names == {c["name"] for c in ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).get_ciphers()}
    assert not any("RC4" in n or "NULL" in n for n in names)


def test_settings_reach_the_context(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    config = Config(
        certfile=str(cert),
        keyfile=str(key),
        ca_certs=str(cert),
        client_cert="required",
        tls_min_version="TLSv1.3",
        ciphers="ECDHE+AESGCM",
    )
    context = tls.build_context(config)
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.verify_mode == ssl.CERT_REQUIRED
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 and all("GCM" in name for name in tls12)
    optional = tls.build_context(
        Config(certfile=str(cert), keyfile=str(key), ca_certs=str(cert), client_cert="optional")
    )
    assert optional is not None and optional.verify_mode == ssl.CERT_OPTIONAL


def test_an_encrypted_key_needs_its_password_file(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path, password=b"s3cret")
    with pytest.raises(tls.TlsError, match="cannot load --certfile"):
        tls.build_context(Config(certfile=str(cert), keyfile=str(key)))
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    with pytest.raises(tls.TlsError, match="cannot load --certfile"):
        tls.build_context(
            Config(certfile=str(cert), keyfile=str(key), keyfile_password_file=str(wrong))
        )
    right = tmp_path / "password"
    right.write_text("s3cret\n")
    context = tls.build_context(
        Config(certfile=str(cert), keyfile=str(key), keyfile_password_file=str(right))
    )
    assert context is not None
    with pytest.raises(tls.TlsError, match="cannot read --keyfile-password-file"):
        tls.check(
            Config(
                certfile=str(cert),
                keyfile=str(key),
                keyfile_password_file=str(tmp_path / "missing"),
            )
        )


def test_bad_ciphers_and_ca_file_are_named(tmp_path: Path) -> None:
    cert, key = _pair(tmp_path)
    with pytest.raises(tls.TlsError, match="--ciphers 'NOTHING-AT-ALL' selects no cipher"):
        tls.build_context(Config(certfile=str(cert), keyfile=str(key), ciphers="NOTHING-AT-ALL"))
    with pytest.raises(tls.TlsError, match="cannot load --ca-certs"):
        tls.build_context(
            Config(certfile=str(cert), keyfile=str(key), ca_certs=str(tmp_path / "none.pem"))
        )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"certfile": "c.pem"}, "--certfile needs --keyfile as well"),
        ({"keyfile": "k.pem"}, "--keyfile needs --certfile as well"),
        ({"ca_certs": "ca.pem"}, "--ca-certs needs --certfile and --keyfile"),
        ({"client_cert": "required"}, "--client-cert needs --certfile and --keyfile"),
        (
            {"certfile": "c.pem", "keyfile": "k.pem", "client_cert": "optional"},
            "--client-cert needs --ca-certs",
        ),
        ({"certfile": " ", "keyfile": "k.pem"}, "--certfile needs a value"),
        (
            {
                "certfile": "c.pem",
                "keyfile": "k.pem",
                "proxy_protocol": "on",
                "proxy_allow_ips": "127.0.0.1",
            },
            "--proxy-protocol on cannot be combined with TLS",
        ),
        ({"bind": ("tls://127.0.0.1:8443",)}, "--bind tls://127.0.0.1:8443 needs --certfile"),
        ({"tls_min_version": "TLSv1.1"}, "--tls-min-version must be one of TLSv1.2, TLSv1.3"),
    ],
)
def test_tls_settings_are_checked_at_load(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError, match=message):
        load(values, env={})


def test_tls_settings_load() -> None:
    config = load({"certfile": "c.pem", "keyfile": "k.pem", "ca_certs": "ca.pem"}, env={})
    assert (config.certfile, config.keyfile, config.ca_certs) == ("c.pem", "k.pem", "ca.pem")
    assert (config.client_cert, config.tls_min_version, config.ciphers) == ("none", "TLSv1.2", None)
    assert config.limits.tls_handshake_timeout_s == 10.0


def test_distinguished_names_are_written_last_rdn_first_and_escaped() -> None:
    name = (
        (("countryName", "DE"),),
        (("organizationName", "Acme, Inc."),),
        (("commonName", "#a+b=c"), ("emailAddress", "x@y")),
        (("2.5.4.99", " odd\x01 "),),
    )
    assert tls.distinguished_name(name) == (
        "2.5.4.99=\\ odd\\01\\ ,CN=\\#a\\+b\\=c+emailAddress=x@y,O=Acme\\, Inc.,C=DE"
    )
    assert tls.distinguished_name(None) == ""


def test_environ_keys() -> None:
    assert tls.environ_keys(None) == {"HTTPS": "on", "SSL_CLIENT_VERIFY": "NONE"}
    assert tls.environ_keys({}) == {"HTTPS": "on", "SSL_CLIENT_VERIFY": "NONE"}
    peercert = {
        "subject": ((("commonName", "client"),),),
        "issuer": ((("commonName", "CA"),),),
        "serialNumber": "0A1B",
    }
    assert tls.environ_keys(peercert) == {
        "HTTPS": "on",
        "SSL_CLIENT_VERIFY": "SUCCESS",
        "SSL_CLIENT_S_DN": "CN=client",
        "SSL_CLIENT_I_DN": "CN=CA",
        "SSL_CLIENT_M_SERIAL": "0A1B",
    }


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("tls://127.0.0.1:8443", ("inet", ("127.0.0.1", 8443))),
        ("tls://[::1]:8443", ("inet6", ("::1", 8443))),
        ("tls://:8443", ("inet", ("0.0.0.0", 8443))),
    ],
)
def test_tls_binds_parse_as_their_address(spec: str, parsed: tuple[str, object]) -> None:
    assert listeners.is_tls_bind(spec)
    assert listeners.parse_bind(spec) == parsed


@pytest.mark.parametrize("spec", ["tls://", "tls://unix:/run/a.sock", "tls://fd://3"])
def test_tls_binds_take_tcp_addresses_only(spec: str) -> None:
    with pytest.raises(listeners.BindError, match="tls:// takes HOST:PORT"):
        listeners.parse_bind(spec)


def test_a_public_tls_bind_is_public() -> None:
    assert is_public_bind("tls://0.0.0.0:8443")
    assert not is_public_bind("tls://127.0.0.1:8443")


# -- what a failed handshake is logged as -----------------------------------------------------


def _handshake_error(tmp_path: Path, first_flight: bytes, **settings: str) -> OSError:
    """What the server's handshake raises when the client's first bytes are `first_flight`."""
    cert, key = _pair(tmp_path)
    context = tls.build_context(Config(certfile=str(cert), keyfile=str(key), **settings))
    assert context is not None
    incoming = ssl.MemoryBIO()
    server = context.wrap_bio(incoming, ssl.MemoryBIO(), server_side=True)
    incoming.write(first_flight)
    with pytest.raises(ssl.SSLError) as info:
        server.do_handshake()
    return info.value


def _client_hello(context: ssl.SSLContext) -> bytes:
    """A client's first flight (its ClientHello), made without a socket."""
    outgoing = ssl.MemoryBIO()
    client = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize(
    "request_start", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /form HTTP/1.1\r\n"]
)
def test_plain_http_is_named_as_such(tmp_path: Path, request_start: bytes) -> None:
    refusal = tls.handshake_refusal(_handshake_error(tmp_path, request_start))
    assert refusal is not None
    assert (refusal[0].code, refusal[1]) == ("tls_plain_http", "HTTP_REQUEST")
    assert refusal[0].status == 0


def test_other_bytes_fail_the_handshake_with_openssls_reason(tmp_path: Path) -> None:
    refusal = tls.handshake_refusal(_handshake_error(tmp_path, b"\x00" * 64))
    assert refusal is not None
    assert refusal[0].code == "tls_handshake_failed"
    assert refusal[1] == "WRONG_VERSION_NUMBER"


def test_an_old_protocol_version_fails_the_handshake(tmp_path: Path) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = ssl.TLSVersion.TLSv1
        client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("DEFAULT:@SECLEVEL=0")
    refusal = tls.handshake_refusal(_handshake_error(tmp_path, _client_hello(client)))
    assert refusal is not None
    assert refusal == (reasons.TLS_HANDSHAKE_FAILED, "UNSUPPORTED_PROTOCOL")


def test_a_certificate_that_fails_verification_names_why() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    exc.verify_message = "certificate has expired"
    refusal = tls.handshake_refusal(exc)
    assert refusal == (
        reasons.TLS_HANDSHAKE_FAILED,
        "CERTIFICATE_VERIFY_FAILED: certificate has expired",
    )


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        ConnectionResetError(104, "Connection reset by peer"),
        BrokenPipeError(),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        ssl.SSLZeroReturnError(6, "TLS/SSL connection has been closed"),
    ],
    ids=type,
)
def test_a_client_that_leaves_is_not_a_refusal(exc: OSError) -> None:
    assert tls.handshake_refusal(exc) is None


def test_a_long_reason_is_cut() -> None:
    exc = ssl.SSLError(1, "x")
    exc.reason = "A" * 1000
    refusal = tls.handshake_refusal(exc)
    assert refusal is not None
    assert refusal[1] == "A" * 200


# -- the master's watch on the files ----------------------------------------------------------


def _watched(tmp_path: Path, interval_s: float = 5.0) -> tuple[Config, Path, Path]:
    cert, key = _pair(tmp_path)
    config = Config(certfile=str(cert), keyfile=str(key), tls_reload_check_s=interval_s)
    return config, cert, key


def _replace(path: Path, data: bytes) -> None:
    """Write a new file in place of `path`, as renewal tools do (a new inode)."""
    new = path.with_suffix(".new")
    new.write_bytes(data)
    new.replace(path)


def test_unchanged_files_are_not_reloaded(tmp_path: Path) -> None:
    config, _, _ = _watched(tmp_path)
    watch = tls.FileWatch(config, 0.0)
    assert [watch.poll(config, now) for now in (5.0, 10.0, 15.0)] == [False, False, False]


def test_a_change_is_taken_up_once_it_has_held_for_an_interval(tmp_path: Path) -> None:
    config, cert, key = _watched(tmp_path)
    watch = tls.FileWatch(config, 0.0)
    (tmp_path / "new").mkdir()
    new_cert, new_key = _pair(tmp_path / "new")
    _replace(cert, new_cert.read_bytes())
    assert not watch.poll(config, 1.0)  # not looked at before the interval has passed
    assert not watch.poll(config, 5.0)  # changed: the certificate alone, the key still old
    _replace(key, new_key.read_bytes())
    assert not watch.poll(config, 10.0)  # changed again: still settling
    assert watch.poll(config, 15.0)  # held for an interval, and the pair loads
    assert not watch.poll(config, 20.0)  # taken up once


def test_a_change_that_does_not_load_is_reported_once(tmp_path: Path) -> None:
    config, _, key = _watched(tmp_path)
    watch = tls.FileWatch(config, 0.0)
    other = ec.generate_private_key(ec.SECP256R1())
    _replace(
        key,
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    assert not watch.poll(config, 5.0)
    with pytest.raises(tls.TlsError, match="KEY_VALUES_MISMATCH"):
        watch.poll(config, 10.0)
    assert not watch.poll(config, 15.0)


def test_a_missing_file_is_a_change_that_does_not_load(tmp_path: Path) -> None:
    config, cert, _ = _watched(tmp_path)
    watch = tls.FileWatch(config, 0.0)
    cert.unlink()
    assert not watch.poll(config, 5.0)
    with pytest.raises(tls.TlsError, match="No such file"):
        watch.poll(config, 10.0)


def test_the_watch_can_be_turned_off(tmp_path: Path) -> None:
    config, cert, _ = _watched(tmp_path, interval_s=0.0)
    watch = tls.FileWatch(config, 0.0)
    cert.unlink()
    assert [watch.poll(config, now) for now in (5.0, 10.0, 100.0)] == [False, False, False]


def test_files_that_load_become_the_context_of_workers_started_later(tmp_path: Path) -> None:
    """A worker the master starts after the change (a replacement) serves the new pair too."""
    config, cert, key = _watched(tmp_path)
    tls.check(config)
    before = tls.worker_context(config)
    watch = tls.FileWatch(config, 0.0)
    (tmp_path / "new").mkdir()
    new_cert, new_key = _pair(tmp_path / "new")
    _replace(cert, new_cert.read_bytes())
    _replace(key, new_key.read_bytes())
    assert not watch.poll(config, 5.0)
    assert tls.worker_context(config) is before
    assert watch.poll(config, 10.0)
    after = tls.worker_context(config)
    assert after is not None and after is not before
    assert tls.worker_context(config) is after


# -- the master's word to the workers ---------------------------------------------------------


def test_the_master_tells_every_worker_and_retries_a_full_channel(tmp_path: Path) -> None:
    """TLS_RELOAD goes to each worker's channel without blocking; a channel that is full is
    written again on a later turn, once there is room."""
    config, cert, key = _watched(tmp_path, interval_s=0.01)
    arbiter = Arbiter(config, [], lambda fd, config: 0)
    free_master, free_worker = channel()
    full_master, full_worker = channel()
    try:
        for fd in (free_master, full_master):
            os.set_blocking(fd, False)
        os.set_blocking(full_worker, False)
        os.set_blocking(free_worker, False)
        arbiter._pipes.update({free_master: 101, full_master: 102})
        while not _is_full(full_master):  # a worker whose loop does not read
            pass
        (tmp_path / "new").mkdir()
        new_cert, new_key = _pair(tmp_path / "new")
        _replace(cert, new_cert.read_bytes())
        _replace(key, new_key.read_bytes())
        deadline = time.monotonic() + 10.0
        while not arbiter._tls_reload_due:
            assert time.monotonic() < deadline, "the change was not taken up"
            arbiter._watch_tls_files()
            time.sleep(0.005)
        assert arbiter._tls_reload_due == {full_master}
        assert os.read(free_worker, 64) == TLS_RELOAD
        arbiter._watch_tls_files()
        assert arbiter._tls_reload_due == {full_master}  # still full: kept for later
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(os.read(full_worker, 64))
        assert TLS_RELOAD not in messages
        arbiter._watch_tls_files()
        assert arbiter._tls_reload_due == set()
        assert os.read(full_worker, 64) == TLS_RELOAD
        with pytest.raises(BlockingIOError):
            os.read(free_worker, 64)  # told once
    finally:
        for fd in (free_master, free_worker, full_master, full_worker):
            os.close(fd)


def _is_full(fd: int) -> bool:
    try:
        os.write(fd, b"x")
    except BlockingIOError:
        return True
    return False


def test_a_worker_that_is_gone_is_not_told_again() -> None:
    master_end, worker_end = channel()
    os.set_blocking(master_end, False)
    os.close(worker_end)
    try:
        assert tell(master_end, TLS_RELOAD)  # nothing to retry
    finally:
        os.close(master_end)
