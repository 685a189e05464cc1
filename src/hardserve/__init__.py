"""hardserve: a security-hardened production WSGI server."""

__version__ = "0.1.0"
