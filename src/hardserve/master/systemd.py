"""systemd integration without libsystemd: sd_notify messages and socket activation.

Both protocols are small and stable, and are written down in sd_notify(3) and
sd_listen_fds(3); this module speaks them with the standard library alone.

Notifications. When systemd starts a `Type=notify` (or `notify-reload`) service it sets
NOTIFY_SOCKET to a datagram socket (a path, or an abstract name written with a leading '@').
The service's main process sends newline-separated `KEY=VALUE` assignments to it: READY=1 once
it serves, RELOADING=1 (with MONOTONIC_USEC) when it starts a reload and READY=1 when the reload
is done, STOPPING=1 when it begins to stop, STATUS=... for `systemctl status`, and WATCHDOG=1 at
least every WATCHDOG_USEC microseconds when the unit has WatchdogSec= (systemd kills and, with
Restart=, restarts a service whose pings stop).

Socket activation. systemd (or `systemd-socket-activate`) binds the listeners itself and starts
the service with them open on descriptors 3, 4, ... (SD_LISTEN_FDS_START), LISTEN_FDS saying
how many, LISTEN_PID saying which process they are for, and LISTEN_FDNAMES naming them (the
socket unit's FileDescriptorName=). A privileged port then needs no privilege in the service,
and the port stays open across restarts: connections wait in the kernel's queue.

Only the master is the service's main process. With the default NotifyAccess=main, systemd
ignores messages from any other process, and LISTEN_PID names the master alone, so
`unset_env` removes these variables before workers start: a worker never talks to systemd and
never takes the sockets itself (it is handed them by the master).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

from hardserve.master.listeners import BindError

_log = logging.getLogger("hardserve.error")

# sd_listen_fds(3): the first passed descriptor; 0, 1 and 2 are stdin, stdout and stderr.
SD_LISTEN_FDS_START = 3

# Every variable systemd sets for the service's main process only.
NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# LISTEN_FDNAMES' value for a descriptor the socket unit did not name (sd_listen_fds(3)).
UNNAMED = "unknown"

# The families a worker can serve; anything else passed by systemd is refused at start.
_SERVED_FAMILIES = {
    socket.AF_INET: "AF_INET",
    socket.AF_INET6: "AF_INET6",
    socket.AF_UNIX: "AF_UNIX",
}


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _pid(text: str) -> int | None:
    """A process id written in ASCII digits, or None."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        return None
    return int(text)


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC when the watchdog applies to this process (sd_watchdog_enabled(3)): set,
    a positive number, and WATCHDOG_PID unset or this process's id."""
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or int(raw) == 0:
        _log.debug("WATCHDOG_USEC=%r is not a positive number: watchdog off", raw)
        return None
    owner = env.get("WATCHDOG_PID")
    if owner:
        pid = _pid(owner)
        if pid != os.getpid():
            _log.debug("WATCHDOG_PID=%r is not this process: watchdog off", owner)
            return None
    return int(raw)


def _socket_address(value: str) -> str | None:
    """NOTIFY_SOCKET -> an AF_UNIX address: a path, or '@name' -> '\\0name' (abstract)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd 254 also accepts vsock:CID:PORT; this module speaks AF_UNIX only.
    return None


class Notifier:
    """sd_notify from the service's main process. Without NOTIFY_SOCKET every method does
    nothing (and `send` returns False), so callers need no `if systemd:`."""

    def __init__(self, notify_socket: str | None = None, *, watchdog_usec: int | None = None):
        self.notify_socket = notify_socket
        self._address = _socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            _log.debug("NOTIFY_SOCKET=%r is not an AF_UNIX address: not notifying", notify_socket)
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (os.environ by default)."""
        env = _environ(env)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=_watchdog_usec(env))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half the timeout, as sd_watchdog_enabled(3) advises;
        None when the unit has no watchdog (or it is meant for another process)."""
        if self.watchdog_usec is None or not self.enabled:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def send(self, *lines: str) -> bool:
        """Send the lines as one datagram; True when it was sent. A missing or dead socket is
        logged once (at debug) and never raises: losing a notification must not stop serving.
        A RELOADING=1 without MONOTONIC_USEC gets one (Type=notify-reload needs it)."""
        if self._address is None:
            return False
        if "RELOADING=1" in lines and not any(x.startswith("MONOTONIC_USEC=") for x in lines):
            lines = (*lines, _monotonic_usec())
        payload = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                _log.debug("cannot notify systemd at %s: %s", self.notify_socket, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the service serves (start-up, or the end of a reload)."""
        return self.send("READY=1", *_status_lines(status))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (Type=notify-reload requires the timestamp, so that
        systemd can tell this reload from an earlier one). READY=1 must follow when done."""
        return self.send("RELOADING=1", _monotonic_usec(), *_status_lines(status))

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the service has begun to stop (a graceful drain is under way)."""
        return self.send("STOPPING=1", *_status_lines(status))

    def status(self, text: str) -> bool:
        """STATUS=text, shown by `systemctl status`."""
        return self.send(*_status_lines(text))

    def watchdog(self) -> bool:
        """WATCHDOG=1: send every `watchdog_interval_s`, and only while the service is
        healthy; systemd acts when the pings stop."""
        return self.send("WATCHDOG=1")

    def main_pid(self, pid: int) -> bool:
        """MAINPID=pid: another process becomes the service's main process."""
        return self.send(f"MAINPID={int(pid)}")


def _monotonic_usec() -> str:
    # CLOCK_MONOTONIC, the clock systemd compares it with (time.monotonic may differ).
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"


def _status_lines(status: str | None) -> tuple[str, ...]:
    if status is None:
        return ()
    # One assignment per line: a newline in the text would start a new (forged) assignment.
    return ("STATUS=" + " ".join(status.splitlines()),)


def unset_env(env: MutableMapping[str, str] | None = None) -> None:
    """Remove NOTIFY_SOCKET, WATCHDOG_* and LISTEN_* (from os.environ by default).

    Call it in the master once it has read them (Notifier.from_env, activated_sockets), before
    any worker starts. Only the master is the service's main process: systemd ignores
    notifications from other processes unless NotifyAccess=all, and a worker that pinged the
    watchdog would keep a unit alive whose master is stuck. The LISTEN_* variables name the
    master's pid; a child, or a program it execs, must not take the sockets as its own.
    """
    target: MutableMapping[str, str] = os.environ if env is None else env
    for name in (*NOTIFY_VARIABLES, *LISTEN_VARIABLES):
        target.pop(name, None)


def activated_sockets(
    env: Mapping[str, str] | None = None, *, unset: bool = True
) -> list[tuple[str, socket.socket]]:
    """The listening sockets systemd passed to this process, as (name, socket), in order.

    Empty when LISTEN_PID/LISTEN_FDS are unset or LISTEN_PID is another process (the variables
    were inherited, not meant for us). Each descriptor must be a listening stream socket of a
    family hardserve serves (AF_INET, AF_INET6, AF_UNIX); anything else raises BindError, as
    does a malformed variable: the unit is wrong and the operator must hear it at start.
    The sockets are made non-blocking and non-inheritable (the master decides what workers
    get). With `unset`, the LISTEN_* variables are removed from `env` when it is mutable.
    """
    env = _environ(env)
    try:
        return _activated(env)
    finally:
        if unset and isinstance(env, MutableMapping):
            for name in LISTEN_VARIABLES:
                env.pop(name, None)


def _activated(env: Mapping[str, str]) -> list[tuple[str, socket.socket]]:
    raw_pid, raw_fds = env.get("LISTEN_PID"), env.get("LISTEN_FDS")
    if not raw_pid or not raw_fds:
        return []
    pid = _pid(raw_pid)
    if pid is None:
        raise BindError(f"socket activation: LISTEN_PID={raw_pid!r} is not a process id")
    if pid != os.getpid():
        _log.debug(
            "socket activation: LISTEN_PID=%d is not this process (%d): ignored", pid, os.getpid()
        )
        return []
    count_text = raw_fds.strip()
    if not (count_text.isascii() and count_text.isdigit()):
        raise BindError(f"socket activation: LISTEN_FDS={raw_fds!r} is not a count")
    count = int(count_text)
    raw_names = env.get("LISTEN_FDNAMES")
    if raw_names is None:
        names = [UNNAMED] * count
    else:
        names = raw_names.split(":") if count else []
        if len(names) != count:
            raise BindError(
                f"socket activation: LISTEN_FDNAMES={raw_names!r} names {len(names)} "
                f"descriptors, LISTEN_FDS={count}"
            )
    sockets: list[tuple[str, socket.socket]] = []
    try:
        for offset, name in enumerate(names):
            fd = SD_LISTEN_FDS_START + offset
            sockets.append((name or UNNAMED, _adopt(fd, name or UNNAMED)))
    except BaseException:
        for _, sock in sockets:
            sock.close()
        raise
    return sockets


def _adopt(fd: int, name: str) -> socket.socket:
    where = f"socket activation: fd {fd} ({name!r})"
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        # EBADF: LISTEN_FDS counts more descriptors than are open; ENOTSOCK: a file or a pipe.
        raise BindError(f"{where} is not a socket: {exc.strerror or exc}") from None
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            raise BindError(f"{where} is not a stream socket (a socket unit needs ListenStream=)")
        if sock.family not in _SERVED_FAMILIES:
            raise BindError(f"{where}: family {sock.family!r} is not served (TCP or unix only)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise BindError(
                f"{where} is not listening (Accept=yes passes a connection, not a listener; "
                "hardserve needs Accept=no)"
            )
        sock.set_inheritable(False)
        sock.setblocking(False)
    except BaseException:
        # Not ours to close: the descriptor stays as it was passed.
        sock.detach()
        raise
    return sock
