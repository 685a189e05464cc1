"""The header lines the server adds to every response: Date, formatted once a second rather
than per request, and Server. Each is left out when the app set its own (both are
single-valued: RFC 9110 sections 6.6.1 and 10.2.4)."""

from __future__ import annotations

import time
from email.utils import formatdate

from hardserve.http.response import APP_SET_DATE, APP_SET_SERVER


class FixedHeaders:
    def __init__(self, server_header: str | None) -> None:
        self._server = (
            b"Server: " + server_header.encode("latin-1") + b"\r\n" if server_header else b""
        )
        # Indexed by the APP_SET_* bits of what the app set itself.
        self.variants: tuple[bytes, bytes, bytes, bytes] = (b"", b"", b"", b"")
        self.value = b""
        self.refresh()

    def refresh(self) -> float:
        """Reformat Date; returns the seconds until the next whole second."""
        now = time.time()
        date = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
        variants = [b"", b"", b"", b""]
        for app_set in range(4):
            variants[app_set] = (b"" if app_set & APP_SET_DATE else date) + (
                b"" if app_set & APP_SET_SERVER else self._server
            )
        self.variants = (variants[0], variants[1], variants[2], variants[3])
        self.value = variants[0]
        return 1.0 - (now % 1.0)
