"""Bind specs -> listening sockets: HOST:PORT, [IPv6]:PORT, unix:/PATH, fd://N; and the
sockets systemd passes (socket activation, see master/systemd.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hardserve.settings import default_binds

if TYPE_CHECKING:
    from hardserve.settings import Config

_log = logging.getLogger("hardserve.error")

# How long the probe of an existing unix socket file waits for a connection. A listening
# socket answers a local connect at once (accepted, refused, or EAGAIN when its queue is
# full); the timeout only bounds a peer that is stuck.
_PROBE_TIMEOUT_S = 1.0

_IN_USE = "cannot bind unix:{path}: already in use by a running server"

# Descriptors are C ints; a larger number would make socket() raise OverflowError.
_FD_MAX = 2**31 - 1


class BindError(ValueError):
    """A bind spec is malformed or cannot be bound."""


TLS_PREFIX = "tls://"


def is_tls_bind(spec: str) -> bool:
    """tls://HOST:PORT or tls://[IPv6]:PORT: a TCP listener that speaks TLS (docs/tls.md)."""
    return spec.startswith(TLS_PREFIX)


def parse_bind(spec: str) -> tuple[str, tuple[str, int] | str | int]:
    """('unix', path) | ('fd', n) | ('inet6', (host, port)) | ('inet', (host, port)).
    tls://HOST:PORT and tls://[IPv6]:PORT read as the address after the prefix."""
    if is_tls_bind(spec):
        rest = spec[len(TLS_PREFIX) :]
        if rest.startswith(("unix:", "fd://", TLS_PREFIX)) or not rest:
            raise BindError(f"{spec!r}: tls:// takes HOST:PORT or [IPv6]:PORT")
        return parse_bind(rest)
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path:
            raise BindError("unix: needs a path")
        return "unix", path
    if spec.startswith("fd://"):
        number = spec[5:]
        if not _is_ascii_number(number) or int(number) > _FD_MAX:
            raise BindError(f"{spec!r}: fd:// needs a descriptor number")
        return "fd", int(number)
    if spec.startswith("["):
        host, bracket, rest = spec[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise BindError(f"{spec!r} is not [IPv6]:PORT")
        return "inet6", (host, _port(spec, rest[1:]))
    host, colon, port = spec.rpartition(":")
    if not colon:
        host, port = spec, "8000"
    if ":" in host:
        raise BindError(f"{spec!r}: write IPv6 addresses as [ADDRESS]:PORT")
    return "inet", (host or "0.0.0.0", _port(spec, port))


def _port(spec: str, text: str) -> int:
    if not _is_ascii_number(text) or int(text) > 65535:
        raise BindError(f"{spec!r}: {text!r} is not a port")
    return int(text)


def _is_ascii_number(text: str) -> bool:
    # str.isdigit alone accepts other scripts' digits ('\u0663' is read as 3 by int()) and
    # superscripts ('\u00b2', which int() refuses with a ValueError).
    return text.isascii() and text.isdigit()


def bind(spec: str, *, unix_mode: int = 0o600, backlog: int = 2048) -> socket.socket:
    kind, address = parse_bind(spec)
    try:
        if kind == "fd":
            assert isinstance(address, int)
            sock = socket.socket(fileno=address)
            sock.setblocking(False)
            return sock
        if kind == "unix":
            assert isinstance(address, str)
            return _bind_unix(address, unix_mode, backlog)
        assert isinstance(address, tuple)
        family = socket.AF_INET6 if kind == "inet6" else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock
    except OSError as exc:
        raise BindError(f"cannot bind {spec}: {exc.strerror or exc}") from None


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a server that died. A live server's socket is never taken
    over (BindError), and any other file is left alone (the bind then fails on it)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return
    except FileNotFoundError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(_PROBE_TIMEOUT_S)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            pass  # nothing listens: the file is stale
        except FileNotFoundError:
            return  # removed in the meantime
        except (BlockingIOError, TimeoutError):
            # EAGAIN: a listener whose queue is full; a timeout: one that does not answer.
            # Either way something holds the socket.
            raise BindError(_IN_USE.format(path=path)) from None
        except OSError:
            # EACCES, or EPROTOTYPE for a datagram socket: nothing tells that the file is
            # stale, so it stays, and the bind below reports why it cannot be used.
            return
        else:
            raise BindError(_IN_USE.format(path=path))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _bind_unix(path: str, mode: int, backlog: int) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # Create it with no permissions at all, then open it to `mode`: no moment exists when
        # another user could connect.
        old_umask = os.umask(0o777)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_all(specs: tuple[str, ...], *, unix_mode: int, backlog: int) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for spec in specs:
            sockets.append(bind(spec, unix_mode=unix_mode, backlog=backlog))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def open_listeners(config: Config, env: Mapping[str, str] | None = None) -> list[socket.socket]:
    """Every socket the server listens on: those systemd passed, then `config.bind`'s.

    When systemd passed sockets (LISTEN_PID is this process), they are served, and the default
    bind (127.0.0.1:8000, or 0.0.0.0:$PORT) is not opened: the socket unit says where to
    listen. Binds that differ from the default (`--bind`, HARDSERVE_BIND) are opened beside
    the activated sockets, so a unit can add, say, a unix socket the socket unit does not
    create. `fd://N` naming an activated descriptor is that same socket, served once.
    The LISTEN_* variables are removed from the environment (os.environ by default).
    """
    # Imported here: systemd.py raises this module's BindError.
    from hardserve.master.systemd import activated_sockets

    environ = os.environ if env is None else env
    activated = activated_sockets(environ)
    specs = config.bind
    if activated:
        for name, sock in activated:
            _log.info("systemd socket %r (fd %d): %s", name, sock.fileno(), describe(sock))
        if specs == default_binds(environ):
            specs = ()
        taken = {sock.fileno() for _, sock in activated}
        specs = tuple(
            spec for spec in specs if not (spec.startswith("fd://") and _fd_of(spec) in taken)
        )
    try:
        bound = bind_all(specs, unix_mode=config.unix_mode, backlog=config.listen_backlog)
    except BaseException:
        for _, sock in activated:
            sock.close()
        raise
    # Which of them are tls:// binds: their descriptors, which the forked workers share.
    _tls_fds.clear()
    pairs = zip(specs, bound, strict=True)
    _tls_fds.update(sock.fileno() for spec, sock in pairs if is_tls_bind(spec))
    return [sock for _, sock in activated] + bound


# The descriptors of the listeners opened from tls:// binds by the last open_listeners().
_tls_fds: set[int] = set()


def tls_listener_fds() -> frozenset[int]:
    """The descriptors open_listeners() opened from tls:// binds."""
    return frozenset(_tls_fds)


def _fd_of(spec: str) -> int:
    kind, number = parse_bind(spec)
    assert kind == "fd" and isinstance(number, int)
    return number


def describe(sock: socket.socket, *, tls: bool = False) -> str:
    """A listening socket as an operator writes it: http://HOST:PORT, http://[V6]:PORT or
    unix:PATH (an abstract unix name starts with '@'); https:// for a TCP socket when `tls`
    (unix sockets stay plain)."""
    address = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(address, bytes):
            address = "@" + address[1:].decode("utf-8", "backslashreplace")
        return f"unix:{address}"
    scheme = "https" if tls else "http"
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{address[0]}]:{address[1]}"
    return f"{scheme}://{address[0]}:{address[1]}"
