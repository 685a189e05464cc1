"""How many connections wait in a listening socket's accept queue, as Linux says: TCP_INFO for
TCP (`tcpi_unacked` is a listener's queue), sock_diag for unix sockets (`UNIX_DIAG_RQLEN`). 0
where the system does not say. One system call (two for a unix socket), made a few times a
second by the worker (server.py, Acceptor.watch_queue)."""

from __future__ import annotations

import os
import socket
import struct
import sys

# struct tcp_info (linux/tcp.h): eight one-byte fields, then rto, ato, snd_mss, rcv_mss and
# unacked, each a u32.
_TCPI_UNACKED_OFFSET = 24
_TCP_INFO = getattr(socket, "TCP_INFO", None)

# linux/netlink.h, linux/sock_diag.h, linux/unix_diag.h.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_TCP_LISTEN_STATE = 10
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_RQLEN = 4
_NO_COOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, inode, show, cookie
_UNIX_DIAG_MSG_SIZE = 16  # family, type, state, pad, inode, cookie[2]
_RTATTR = struct.Struct("=HH")  # length, type


def accept_queue(sock: socket.socket) -> int:
    """Connections that have arrived on the listening `sock` and wait to be accepted."""
    try:
        if sock.family == socket.AF_UNIX:
            return _unix_queue(sock)
        return _tcp_queue(sock)
    except OSError:
        return 0


def _tcp_queue(sock: socket.socket) -> int:
    if _TCP_INFO is None:
        return 0
    info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCPI_UNACKED_OFFSET + 4)
    if len(info) < _TCPI_UNACKED_OFFSET + 4:
        return 0
    return int.from_bytes(info[_TCPI_UNACKED_OFFSET : _TCPI_UNACKED_OFFSET + 4], sys.byteorder)


def _unix_queue(sock: socket.socket) -> int:
    """Asks the kernel about the one socket with `sock`'s inode (sock_diag, as `ss -xl` does)."""
    if not hasattr(socket, "AF_NETLINK"):
        return 0
    inode = os.fstat(sock.fileno()).st_ino
    request = _UNIX_DIAG_REQ.pack(
        socket.AF_UNIX,
        0,
        0,
        1 << _TCP_LISTEN_STATE,
        inode,
        _UDIAG_SHOW_RQLEN,
        _NO_COOKIE,
        _NO_COOKIE,
    )
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0
    )
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as netlink:
        # Never blocking: this runs on the event loop. The kernel answers inside sendto, so the
        # reply is there at once; were it not, the queue reads 0 (BlockingIOError is an OSError).
        netlink.setblocking(False)
        netlink.sendto(header + request, (0, 0))
        reply = netlink.recv(8192)
    if len(reply) < _NLMSGHDR.size:
        return 0
    length, kind, _, _, _ = _NLMSGHDR.unpack_from(reply)
    if kind != _SOCK_DIAG_BY_FAMILY:  # NLMSG_ERROR: no such socket, or not allowed
        return 0
    offset = _NLMSGHDR.size + _UNIX_DIAG_MSG_SIZE
    end = min(length, len(reply))
    while offset + _RTATTR.size <= end:
        attr_length, attr_type = _RTATTR.unpack_from(reply, offset)
        if attr_length < _RTATTR.size:
            return 0
        if attr_type == _UNIX_DIAG_RQLEN and attr_length >= _RTATTR.size + 4:
            return int(struct.unpack_from("=I", reply, offset + _RTATTR.size)[0])
        offset += (attr_length + 3) & ~3  # attributes are aligned to 4 bytes
    return 0
