"""The three logs: error (hardserve.error), access (hardserve.access) and security
(hardserve.security, one line per refusal). Client-controlled text is escaped before it is
logged so that no client can forge or split a line."""

from __future__ import annotations

import logging
import sys

ERROR = "hardserve.error"
ACCESS = "hardserve.access"
SECURITY = "hardserve.security"

_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure(*, log_level: str = "info", access_log: str | None = None) -> None:
    level = getattr(logging, log_level.upper())
    formatter = logging.Formatter(_FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    for name in (ERROR, SECURITY):
        logger = logging.getLogger(name)
        logger.handlers[:] = [stderr]
        logger.setLevel(level)
        logger.propagate = False
    access = logging.getLogger(ACCESS)
    access.propagate = False
    if access_log is None:
        access.handlers[:] = []
        access.setLevel(logging.CRITICAL + 1)
        return
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if access_log == "-" else logging.FileHandler(access_log)
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
