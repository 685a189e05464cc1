"""The header lines the server adds to every response: Date, formatted once a second rather
than per request, and Server."""

from __future__ import annotations

import time
from email.utils import formatdate


class FixedHeaders:
    def __init__(self, server_header: str | None) -> None:
        self._server = (
            b"Server: " + server_header.encode("latin-1") + b"\r\n" if server_header else b""
        )
        self.value = b""
        self.refresh()

    def refresh(self) -> float:
        """Reformat Date; returns the seconds until the next whole second."""
        now = time.time()
        self.value = (
            b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n" + self._server
        )
        return 1.0 - (now % 1.0)
