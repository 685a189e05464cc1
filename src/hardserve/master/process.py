"""What the master does to its own process before the workers start: the umask, the pid file,
the process title, and giving up root."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd


class PrivilegeError(RuntimeError):
    """The process cannot run as asked (root without permission, an unknown user)."""


def drop_privileges(user: str | None, group: str | None, *, allow_root: bool) -> None:
    """Become `user` (and `group`, or the user's own group) for good, after the listeners are
    bound; refuse to go on as root unless allowed. Workers are forked afterwards, so they
    never hold root either."""
    if user is None and group is None:
        if os.geteuid() == 0 and not allow_root:
            raise PrivilegeError(
                "refusing to run as root: give --user (and --group) to drop privileges after "
                "binding, or --allow-root"
            )
        return
    if os.geteuid() != 0:
        raise PrivilegeError("--user and --group need hardserve to be started as root")
    uid, default_gid = _user(user) if user is not None else (os.getuid(), os.getgid())
    gid = _group(group) if group is not None else default_gid
    if uid == 0 and not allow_root:
        raise PrivilegeError("--user names root: add --allow-root to run workers as root")
    name = pwd.getpwuid(uid).pw_name if _has_uid(uid) else None
    os.setgroups([])
    if name is not None:
        os.initgroups(name, gid)
    os.setgid(gid)
    os.setuid(uid)
    # setuid to a non-root user drops the saved set-user-ID too: root cannot come back.
    if uid != 0 and os.geteuid() == 0:  # pragma: no cover - the kernel guarantees it
        raise PrivilegeError("could not give up root")


def _user(text: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except (KeyError, ValueError):
        if text.isdigit():
            return int(text), int(text)
        raise PrivilegeError(f"--user {text!r}: no such user") from None
    return entry.pw_uid, entry.pw_gid


def _group(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise PrivilegeError(f"--group {text!r}: no such group") from None


def _has_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def write_pid_file(path: str) -> None:
    """Write the pid atomically (a reader never sees a half-written file)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(temporary, path)


def remove_pid_file(path: str) -> None:
    with contextlib.suppress(OSError):
        with open(path, encoding="ascii") as handle:
            if handle.read().strip() != str(os.getpid()):
                return  # another server's by now
        os.unlink(path)


def set_title(title: str) -> None:
    """The process title, where setproctitle is installed (optional)."""
    try:
        import setproctitle  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    setproctitle.setproctitle(title)
