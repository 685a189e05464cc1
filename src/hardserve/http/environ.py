"""The PEP 3333 environ of one request, built from its parsed head. Pure: the stream objects and
addresses are given by the caller."""

from __future__ import annotations

from typing import Any, Final

from hardserve.http.forwarded import NOT_FORWARDED, Resolution
from hardserve.http.parser import RequestHead

# Header-name -> environ-key translations, cached because the same few dozen names arrive on
# every request. Bounded: names are client-controlled, so an attacker sending random names must
# not grow it without end; past the bound, keys are computed each time.
_KEY_CACHE: dict[bytes, str] = {}
_KEY_CACHE_MAX: Final = 512
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_SPECIAL_KEYS: Final = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}
_PROTOCOLS: Final = {b"1.1": "HTTP/1.1", b"1.0": "HTTP/1.0"}
# The usual methods' names, made once rather than decoded per request.
_METHODS: Final = {
    method.encode(): method for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
}


def _environ_key(name: bytes) -> str:
    key = _KEY_CACHE.get(name)
    if key is None:
        key = _SPECIAL_KEYS.get(name) or "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if len(_KEY_CACHE) < _KEY_CACHE_MAX:
            _KEY_CACHE[name] = key
    return key


# The keys build_environ sets on every request, whatever the request.
_SET_PER_REQUEST: Final = (
    "REQUEST_METHOD",
    "PATH_INFO",
    "QUERY_STRING",
    "RAW_URI",
    "REQUEST_URI",
    "SERVER_PROTOCOL",
    "SERVER_NAME",
    "SERVER_PORT",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "wsgi.url_scheme",
    "wsgi.input",
)


def worker_constants(
    *, wsgi_errors: Any, file_wrapper: Any, script_name: str = ""
) -> dict[str, Any]:
    """The environ keys that are the same for every request of a worker, and a placeholder of
    each key every request sets (_SET_PER_REQUEST). build_environ starts each environ as a copy
    of them: a copy costs less than building those keys again."""
    constants: dict[str, Any] = {
        "SCRIPT_NAME": script_name,
        "SERVER_SOFTWARE": "hardserve",
        "wsgi.version": (1, 0),
        "wsgi.input_terminated": True,
        "wsgi.errors": wsgi_errors,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": file_wrapper,
    }
    # The keys build_environ sets on every request are made here too, so that the table each
    # copy starts from has room for a whole environ: a copy of a dict is a copy of its table,
    # and a copy of the nine constants alone grew twice per request (a new table, filled and
    # the old one freed, each time). Every one is overwritten before the app sees it.
    constants.update(dict.fromkeys(_SET_PER_REQUEST))
    return constants


# SERVER_NAME, SERVER_PORT, REMOTE_ADDR and REMOTE_PORT of one connection, as the environ holds
# them (connection_addresses).
Addresses = tuple[str, str, str, str]


def connection_addresses(peer: tuple[str, int] | None, server: tuple[str, int]) -> Addresses:
    """A connection's addresses as environ strings, made once per connection, not per request."""
    if peer is None:
        return (server[0], str(server[1]), "", "")
    return (server[0], str(server[1]), peer[0], str(peer[1]))


def build_environ(
    head: RequestHead,
    constants: dict[str, Any],
    *,
    addresses: Addresses,
    url_scheme: str,
    wsgi_input: Any,
    resolution: Resolution | None = None,
) -> dict[str, Any]:
    """`constants` is worker_constants()'s dict, copied, never changed. `resolution` is
    http/forwarded.resolve()'s verdict on the request (None: no proxy policy, as
    NOT_FORWARDED). A refused one (error set) must be answered, not given an environ."""
    target = head.target
    headers = head.headers
    # The usual request, with nothing forwarded, pays for this one comparison and no more.
    forwarded = None if resolution is NOT_FORWARDED else resolution
    if forwarded is not None:
        if forwarded.error is not None:
            raise ValueError(f"a refused request ({forwarded.error}) has no environ")
        if forwarded.headers is not None:
            headers = forwarded.headers
        if forwarded.url_scheme is not None:
            url_scheme = forwarded.url_scheme
    raw_uri = head.raw_target.decode("latin-1")
    environ = constants.copy()
    environ["REQUEST_METHOD"] = _METHODS.get(head.method) or head.method.decode("ascii")
    environ["PATH_INFO"] = target.path.decode("latin-1")
    environ["QUERY_STRING"] = target.query.decode("latin-1")
    environ["RAW_URI"] = environ["REQUEST_URI"] = raw_uri
    environ["SERVER_PROTOCOL"] = _PROTOCOLS.get(head.http_version) or (
        "HTTP/" + head.http_version.decode("ascii")
    )
    # The listening socket's address, not the client's Host field: a client must not be able to
    # change what the server says its own name is. The Host field is in HTTP_HOST.
    (
        environ["SERVER_NAME"],
        environ["SERVER_PORT"],
        environ["REMOTE_ADDR"],
        environ["REMOTE_PORT"],
    ) = addresses
    environ["wsgi.url_scheme"] = url_scheme
    environ["wsgi.input"] = wsgi_input
    if head.content_length is None and not head.chunked:
        environ["CONTENT_LENGTH"] = ""
    for name, value in headers:
        key = _environ_key(name)
        text = value.decode("latin-1")
        previous = environ.get(key)
        if previous:
            # RFC 9110 section 5.3: repeated fields combine with ", "; Cookie with "; "
            # (RFC 6265 section 5.4), the form cookie parsers expect.
            text = previous + ("; " if name == b"cookie" else ", ") + text
        environ[key] = text
    if target.authority is not None:
        # RFC 9112 section 3.2.2: with an absolute-form target, its authority is the host and
        # the Host field is ignored.
        environ["HTTP_HOST"] = target.authority.decode("latin-1")
    if forwarded is not None:
        _apply_forwarded(environ, forwarded, url_scheme)
    if head.chunked:
        # The length is unknown until the last chunk; wsgi.input_terminated tells apps to read
        # to the end instead.
        environ.pop("CONTENT_LENGTH", None)
    return environ


def _apply_forwarded(environ: dict[str, Any], resolution: Resolution, url_scheme: str) -> None:
    """What a trusted proxy said about the client wins over the connection's own view."""
    if resolution.client_addr is not None:
        environ["REMOTE_ADDR"] = resolution.client_addr
        # The proxy's port beside the client's address would be a lie: empty when not known.
        port = resolution.client_port
        environ["REMOTE_PORT"] = "" if port is None else str(port)
    if resolution.server_port is not None:
        environ["SERVER_PORT"] = str(resolution.server_port)
    host = resolution.host
    if host is not None:
        # The host the client asked the proxy for. When it carries no port and the proxy named a
        # port that is not the scheme's default, the port is added, so that a URL rebuilt from
        # HTTP_HOST (PEP 3333's URL reconstruction) reaches the client's port.
        text = host.decode("latin-1")
        port = resolution.server_port
        if (
            port is not None
            and ":" not in text.rpartition("]")[2]
            and port != _DEFAULT_PORTS.get(url_scheme)
        ):
            text = f"{text}:{port}"
        environ["HTTP_HOST"] = text
