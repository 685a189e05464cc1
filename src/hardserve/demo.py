"""The bundled demo app: a small page that shows the request it received.

`hardserve hardserve.demo:app`. Everything the client sent is HTML-escaped before it is shown.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

_BODY_PREVIEW_BYTES = 4096


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ["wsgi.input"].read(_BODY_PREVIEW_BYTES + 1)
    rows = []
    for key in sorted(environ):
        if key.startswith("wsgi.") and key not in ("wsgi.url_scheme", "wsgi.version"):
            continue
        rows.append(
            f"<tr><th>{html.escape(key)}</th><td><code>{html.escape(str(environ[key]))}</code></td></tr>"
        )
    preview = body[:_BODY_PREVIEW_BYTES].decode("utf-8", "replace")
    more = " (truncated)" if len(body) > _BODY_PREVIEW_BYTES else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hardserve demo</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}
td code{{word-break:break-all}}</style></head>
<body><h1>hardserve</h1>
<p>This page shows the request hardserve handed to this WSGI app.</p>
<h2>{html.escape(environ["REQUEST_METHOD"])} {html.escape(environ.get("RAW_URI", ""))}</h2>
<table>{"".join(rows)}</table>
<h2>Body ({len(body[:_BODY_PREVIEW_BYTES])} bytes{more})</h2><pre>{html.escape(preview)}</pre>
</body></html>
"""
    data = page.encode("utf-8")
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(data))),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ],
    )
    return [data]
