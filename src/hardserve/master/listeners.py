"""Bind specs -> listening sockets: HOST:PORT, [IPv6]:PORT, unix:/PATH, fd://N."""

from __future__ import annotations

import contextlib
import os
import socket
import stat


class BindError(ValueError):
    """A bind spec is malformed or cannot be bound."""


def parse_bind(spec: str) -> tuple[str, tuple[str, int] | str | int]:
    """('unix', path) | ('fd', n) | ('inet6', (host, port)) | ('inet', (host, port))."""
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path:
            raise BindError("unix: needs a path")
        return "unix", path
    if spec.startswith("fd://"):
        number = spec[5:]
        if not number.isdigit():
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
    if not text.isdigit() or int(text) > 65535:
        raise BindError(f"{spec!r}: {text!r} is not a port")
    return int(text)


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


def _bind_unix(path: str, mode: int, backlog: int) -> socket.socket:
    # A socket file left by a server that died is removed; any other file is left alone.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
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
