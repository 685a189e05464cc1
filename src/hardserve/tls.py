"""The one place that builds an SSLContext (and the only module that imports ssl). The master
builds it once, before it forks the workers, and again on HUP (for the workers that HUP
starts). When the files change (FileWatch, in the master) and load, the master tells each
running worker, which builds a new context off its loop and swaps it in for its new
connections, without a restart. No connection ever reads a certificate file. A failed
handshake is named here (handshake_refusal), for the worker's security log.

Defaults: TLS 1.2 at the least (1.3 with --tls-min-version TLSv1.3), the ssl module's cipher set
unless --ciphers names another, ALPN http/1.1, no TLS compression, no renegotiation."""

from __future__ import annotations

import os
import socket
import ssl
from typing import TYPE_CHECKING, Any

from hardserve.http import reasons

if TYPE_CHECKING:
    from hardserve.http.reasons import Reason
    from hardserve.settings import Config

# What the worker hands to the loop (other modules do not import ssl).
Context = ssl.SSLContext

_MIN_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


class TlsError(ValueError):
    """The certificate, key, password or CA files cannot be used; the text says which and why."""


def enabled(config: Config) -> bool:
    return config.certfile is not None


def _password(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as exc:
        why = exc.strerror or exc
        raise TlsError(f"cannot read --keyfile-password-file {path}: {why}") from None
    return first.rstrip(b"\r\n")


def build_context(config: Config) -> ssl.SSLContext | None:
    """The server's SSLContext, or None when TLS is not configured. TlsError names the file
    that cannot be used."""
    if config.certfile is None or config.keyfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _MIN_VERSIONS[config.tls_min_version]
    context.options |= ssl.OP_NO_COMPRESSION
    # OP_NO_RENEGOTIATION exists from OpenSSL 1.1.0h; TLS 1.3 has no renegotiation at all.
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    if config.ciphers is not None:
        try:
            context.set_ciphers(config.ciphers)
        except ssl.SSLError:
            raise TlsError(f"--ciphers {config.ciphers!r} selects no cipher") from None
    context.set_alpn_protocols(["http/1.1"])
    # Never OpenSSL's own prompt on the terminal: an encrypted key without a password file
    # fails to load instead.
    password: Any = _no_password
    if config.keyfile_password_file is not None:
        password = _password(config.keyfile_password_file)
    try:
        context.load_cert_chain(config.certfile, config.keyfile, password=password)
    except OSError as exc:
        raise TlsError(
            f"cannot load --certfile {config.certfile} with --keyfile {config.keyfile}: {_why(exc)}"
        ) from None
    if config.ca_certs is not None:
        try:
            context.load_verify_locations(cafile=config.ca_certs)
        except OSError as exc:
            raise TlsError(f"cannot load --ca-certs {config.ca_certs}: {_why(exc)}") from None
    context.verify_mode = _VERIFY_MODES[config.client_cert]
    return context


# OpenSSL's reasons for a first record that is the start of an HTTP request ("GET ", "POST",
# "HEAD", "PUT ") or of a proxy's CONNECT: plain HTTP sent to the TLS port.
_PLAIN_HTTP_REASONS = frozenset({"HTTP_REQUEST", "HTTPS_PROXY_REQUEST"})
_DETAIL_MAX = 200


def handshake_refusal(exc: OSError) -> tuple[Reason, str] | None:
    """What a failed server-side handshake amounts to: the reason code and, as the detail,
    OpenSSL's reason (PEER_DID_NOT_RETURN_A_CERTIFICATE, UNSUPPORTED_PROTOCOL,
    NO_SHARED_CIPHER, ...). None when the client only went away (closed or reset its
    connection without a TLS alert): nothing was refused, as with a plain connection closed
    before its first byte. The handshake deadline is the caller's: it knows when it fired."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = f"{exc.reason}: {exc.verify_message}"
        return reasons.TLS_HANDSHAKE_FAILED, detail[:_DETAIL_MAX]
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return None
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in _PLAIN_HTTP_REASONS:
            return reasons.TLS_PLAIN_HTTP, reason
        return reasons.TLS_HANDSHAKE_FAILED, reason[:_DETAIL_MAX]
    return None


def _no_password() -> bytes:
    return b""


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)


# The context the master loaded last, with the settings it was loaded from. Workers are forked
# from the master and find it here: the files are read once per load, not once per worker, and
# a HUP whose files do not load leaves the last good context in place for the new workers.
_prepared: tuple[tuple[str | None, ...], ssl.SSLContext] | None = None


def _settings_of(config: Config) -> tuple[str | None, ...]:
    return (
        config.certfile,
        config.keyfile,
        config.keyfile_password_file,
        config.ca_certs,
        config.client_cert,
        config.tls_min_version,
        config.ciphers,
    )


# The descriptors of the listeners that speak TLS when the binds name some (tls://); None when
# they name none, and every TCP listener speaks TLS.
_tls_listeners: frozenset[int] | None = None


def mark_tls_listeners(fds: frozenset[int]) -> None:
    """The master's record of its tls:// listeners (by descriptor; the workers share them)."""
    global _tls_listeners
    _tls_listeners = fds or None


def serves_tls(sock: socket.socket) -> bool:
    """Whether a listening socket speaks TLS (when a context is configured): a tls:// bind's,
    or, when no bind says tls://, every TCP socket. Unix sockets never."""
    if sock.family == socket.AF_UNIX:
        return False
    return _tls_listeners is None or sock.fileno() in _tls_listeners


def check(config: Config) -> None:
    """The master's load, before it forks and before a HUP's new workers start: a pair that
    does not load is one clear line (TlsError) and the context loaded before stays; one that
    loads becomes the context new workers serve with."""
    global _prepared
    context = build_context(config)
    _prepared = None if context is None else (_settings_of(config), context)


def worker_context(config: Config) -> ssl.SSLContext | None:
    """The context a worker serves with: the one its master loaded for these settings, or (a
    worker without a master, as in the tests) one built now."""
    if _prepared is not None and _prepared[0] == _settings_of(config):
        return _prepared[1]
    return build_context(config)


# What identifies a file's content cheaply: device, inode, size, modification time (None: missing).
_Identity = tuple[int, int, int, int] | None


def _identity(path: str) -> _Identity:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _watched_files(config: Config) -> tuple[str, ...]:
    names = (config.certfile, config.keyfile, config.keyfile_password_file, config.ca_certs)
    return tuple(name for name in names if name is not None)


class FileWatch:
    """The master's watch on the TLS files (certificate, key, password file, CA certificates),
    looked at every tls_reload_check_s with one stat() each. A change is taken up once it has
    held for a whole interval, so that a renewal writing the certificate, then the key, is one
    change and not a broken pair; and only when the files load (`poll` raises TlsError, once
    per change, when they do not: the running pair stays). Files that load become the master's
    context (check), the one the workers it starts from then on serve with."""

    def __init__(self, config: Config, now: float) -> None:
        self._files = _watched_files(config)
        self._seen = tuple(_identity(name) for name in self._files)
        self._pending: tuple[_Identity, ...] | None = None
        self._next_at = now + config.tls_reload_check_s

    def poll(self, config: Config, now: float) -> bool:
        """True when the files changed, have settled and load: time to reload."""
        interval = config.tls_reload_check_s
        if interval <= 0 or config.certfile is None or now < self._next_at:
            return False
        self._next_at = now + interval
        files = _watched_files(config)
        identities = tuple(_identity(name) for name in files)
        if files != self._files:  # other files after a reload: they were loaded by it
            self._files, self._seen, self._pending = files, identities, None
            return False
        if identities == self._seen:
            self._pending = None
            return False
        if identities != self._pending:
            self._pending = identities  # changed since the last look: wait until it settles
            return False
        self._pending = None
        self._seen = identities
        check(config)  # TlsError: they do not load
        return True


# Short names of the attributes in a distinguished name, as RFC 4514 (and Apache, nginx) write
# them; other attributes go by the name the ssl module gives.
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "emailAddress",
}


def _escape(value: str) -> str:
    out = []
    for i, char in enumerate(value):
        if (
            char in ',+"\\<>;='
            or (char == "#" and i == 0)
            or (char == " " and i in (0, len(value) - 1))
        ):
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


def distinguished_name(name: Any) -> str:
    """A certificate name as getpeercert() gives it, in RFC 4514 form (the last RDN first,
    special characters escaped): 'CN=client,O=Example'."""
    rdns = []
    for rdn in reversed(tuple(name or ())):
        rdns.append("+".join(f"{_SHORT_NAMES.get(k, k)}={_escape(str(v))}" for k, v in rdn))
    return ",".join(rdns)


def environ_keys(peercert: Any) -> dict[str, str]:
    """The environ keys of a TLS connection (docs/tls.md): HTTPS, and SSL_CLIENT_VERIFY with the
    client certificate's subject, issuer and serial when the client sent one. A certificate
    reaches here only verified: the handshake refuses one that the CAs do not vouch for."""
    keys = {"HTTPS": "on"}
    if peercert:
        keys["SSL_CLIENT_VERIFY"] = "SUCCESS"
        keys["SSL_CLIENT_S_DN"] = distinguished_name(peercert.get("subject"))
        keys["SSL_CLIENT_I_DN"] = distinguished_name(peercert.get("issuer"))
        keys["SSL_CLIENT_M_SERIAL"] = str(peercert.get("serialNumber", ""))
    else:
        keys["SSL_CLIENT_VERIFY"] = "NONE"
    return keys
