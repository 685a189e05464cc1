"""Trusted-proxy policy: the direct peer and the request's forwarding headers -> the client the
app is told about (address, port, scheme, host), and the headers the app may see.

A forwarding header is a claim. It is believed only when the peer that delivered it is a proxy
the operator listed, and then only as far back as the chain of listed proxies goes: the first
hop that is not a listed proxy is the client, whatever it claims to its left. From a peer that is
not listed, every forwarding header is removed, so no app or middleware can be fooled by one.

Malformed forwarding data from a listed proxy is refused (FORWARDED_INVALID, 400), never
repaired: a guess about who the client is ends up in access control and rate limits.

docs/proxies.md states the rules with worked examples. Pure: no I/O, no clock, no logging.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

Header = tuple[bytes, bytes]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The reason code of a refused request (status 400, close). Declared here because this module
# decides it; http/reasons.py maps the code to its status.
FORWARDED_INVALID: Final = "forwarded_invalid"

# Which header family a trusted proxy's claims are read from. "auto": whichever is present, and a
# request carrying both is refused, because a proxy that writes one family usually passes the
# other through from the client unchanged (see docs/proxies.md).
HeaderFamily = Literal["auto", "forwarded", "x-forwarded"]

_X_FAMILY: Final = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port"}
)
_RFC7239_FAMILY: Final = frozenset({b"forwarded"})

# Every field that common frameworks, middleware and proxies read as a statement about the
# client's address or scheme. From an untrusted peer they are removed: an app reading
# X-Real-IP or X-Forwarded-Ssl on its own must not be handed a value the client chose.
FORWARDING_HEADERS: Final = frozenset(
    {
        *_X_FAMILY,
        *_RFC7239_FAMILY,
        b"x-forwarded-by",
        b"x-forwarded-prefix",
        b"x-forwarded-protocol",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-ssl",
        b"x-real-ip",
        b"x-client-ip",
        b"true-client-ip",
        b"cf-connecting-ip",
        b"x-scheme",
        b"x-url-scheme",
        b"front-end-https",
    }
)


# -- who is trusted ----------------------------------------------------------------------------


_CACHE_MAX: Final = 1024


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class TrustedPeers:
    """The proxies whose forwarding headers are believed: addresses and networks, and `unix`
    for peers on a unix socket (which have no address). Empty: nobody, the default."""

    networks: tuple[IPNetwork, ...] = ()
    unix: bool = False
    # Derived, for contains(): the exact text of every single-address entry (a set lookup, no
    # parsing, for the usual one or two proxies), and the networks split by family.
    _exact: frozenset[str] = field(default=frozenset(), init=False, repr=False, compare=False)
    _v4: tuple[ipaddress.IPv4Network, ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    _v6: tuple[ipaddress.IPv6Network, ...] = field(
        default=(), init=False, repr=False, compare=False
    )
    # Verdicts on addresses that needed parsing, by their text: the same peers and forwarded
    # hops come back on every request, and parsing one costs microseconds. Bounded like the
    # parser's cache, since hop addresses are chosen by clients.
    _verdicts: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact: set[str] = set()
        v4: list[ipaddress.IPv4Network] = []
        v6: list[ipaddress.IPv6Network] = []
        for network in self.networks:
            if isinstance(network, ipaddress.IPv4Network):
                v4.append(network)
                if network.prefixlen == 32:
                    exact.add(str(network.network_address))
                    exact.add("::ffff:" + str(network.network_address))
            else:
                v6.append(network)
                if network.prefixlen == 128:
                    exact.add(str(network.network_address))
        object.__setattr__(self, "_exact", frozenset(exact))
        object.__setattr__(self, "_v4", tuple(v4))
        object.__setattr__(self, "_v6", tuple(v6))

    @classmethod
    def parse(cls, spec: str) -> TrustedPeers:
        """ "127.0.0.1, 10.0.0.0/8, ::1, fd00::/8, unix" -> TrustedPeers. "" trusts nobody.

        Names are refused (resolving them would make trust depend on DNS), and so is "*": to
        trust every address, write 0.0.0.0/0 and ::/0, which is only safe when nothing but
        the proxies can reach the listener.
        """
        if not spec.strip():
            return cls()
        networks: list[IPNetwork] = []
        unix = False
        for raw in spec.split(","):
            entry = raw.strip()
            if not entry:
                raise ValueError(f"trusted proxies: empty entry in {spec!r}")
            if entry.lower() == "unix":
                unix = True
                continue
            if entry == "*":
                raise ValueError(
                    "trusted proxies: '*' is not accepted; list the proxies' addresses or "
                    "networks (0.0.0.0/0 and ::/0 trust every client: unsafe)"
                )
            try:
                network = ipaddress.ip_network(entry, strict=True)
            except ValueError as exc:
                raise ValueError(f"trusted proxies: {entry!r}: {exc}") from None
            networks.append(_unmapped(network))
        return cls(tuple(dict.fromkeys(networks)), unix)

    def __bool__(self) -> bool:
        return self.unix or bool(self.networks)

    def __str__(self) -> str:
        return ", ".join([*(str(n) for n in self.networks), *(["unix"] if self.unix else [])])

    def contains(self, addr: str | None) -> bool:
        """Whether a peer at `addr` is trusted. None or "" is a unix-socket peer. An IPv4-mapped
        IPv6 address (::ffff:10.0.0.1, what a dual-stack socket reports) counts as its IPv4
        address. Text that is not an address is not trusted."""
        if not addr:
            return self.unix
        if addr in self._exact:
            return True
        if not self.networks:
            return False
        verdict = self._verdicts.get(addr)
        if verdict is None:
            verdict = self._in_networks(addr)
            if len(self._verdicts) >= _CACHE_MAX:
                self._verdicts.clear()
            self._verdicts[addr] = verdict
        return verdict

    def _in_networks(self, addr: str) -> bool:
        ip = _parse_ip(addr)
        if ip is None:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            mapped = ip.ipv4_mapped
            if mapped is None:
                return any(ip in network for network in self._v6)
            ip = mapped
        return any(ip in network for network in self._v4)


NOBODY: Final = TrustedPeers()


def _unmapped(network: IPNetwork) -> IPNetwork:
    """::ffff:10.0.0.0/104 -> 10.0.0.0/8, so that it matches what contains() compares."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


# -- what the app is told ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome for one request. Every None means "keep the connection's own value".

    client_addr is None when the client is the direct peer; when set, the client was named by a
    forwarding header and client_port is its port (None: not known, REMOTE_PORT is empty).
    headers is None when the app sees the request's headers unchanged; otherwise the tuple it
    sees. error is FORWARDED_INVALID when the request must be refused (detail says why)."""

    client_addr: str | None = None
    client_port: int | None = None
    url_scheme: str | None = None
    host: bytes | None = None
    server_port: int | None = None
    headers: tuple[Header, ...] | None = None
    error: str | None = None
    detail: str = ""


# Returned as is on the hot path (nothing forwarded, nothing to remove): no allocation.
NOT_FORWARDED: Final = Resolution()


class _Invalid(ValueError):
    pass


def resolve_untrusted(headers: Sequence[Header]) -> Resolution:
    """resolve()'s verdict on a request from a peer that is not trusted, for a caller that knows
    it already: NOT_FORWARDED, or without the forwarding fields, which only a trusted proxy may
    set."""
    for name, _ in headers:
        if name in FORWARDING_HEADERS:
            return Resolution(headers=_without(headers, FORWARDING_HEADERS))
    return NOT_FORWARDED


def resolve(
    peer: str | None,
    headers: Sequence[Header],
    trusted: TrustedPeers,
    *,
    family: HeaderFamily = "auto",
) -> Resolution:
    """Resolve the client of one request. `peer` is the direct peer's address (None or "" on a
    unix socket); `headers` are the request's (lower-cased name, value) pairs."""
    if not trusted.contains(peer):
        return resolve_untrusted(headers)
    return resolve_trusted(peer, headers, trusted, family=family)


def resolve_trusted(
    peer: str | None,
    headers: Sequence[Header],
    trusted: TrustedPeers,
    *,
    family: HeaderFamily = "auto",
) -> Resolution:
    """resolve()'s verdict on a request from a peer already known to be a trusted proxy (a
    connection asks once, not per request): what the forwarding fields say, walked back
    through the proxies `trusted` names."""
    xff: list[bytes] = []
    protos: list[bytes] = []
    hosts: list[bytes] = []
    ports: list[bytes] = []
    rfc7239: list[bytes] = []
    for name, value in headers:
        if name == b"x-forwarded-for":
            xff.append(value)
        elif name == b"x-forwarded-proto":
            protos.append(value)
        elif name == b"x-forwarded-host":
            hosts.append(value)
        elif name == b"x-forwarded-port":
            ports.append(value)
        elif name == b"forwarded":
            rfc7239.append(value)
    has_x = bool(xff or protos or hosts or ports)

    seen: tuple[Header, ...] | None = None
    if family == "auto":
        if rfc7239 and has_x:
            return Resolution(
                error=FORWARDED_INVALID,
                detail="both Forwarded and X-Forwarded-* from a trusted proxy; choose one family",
            )
        use_rfc7239 = bool(rfc7239)
    elif family == "forwarded":
        # The other family was not written by the proxy we believe: the app must not see it.
        use_rfc7239 = True
        if has_x:
            seen = _without(headers, _X_FAMILY)
    elif family == "x-forwarded":
        use_rfc7239 = False
        if rfc7239:
            seen = _without(headers, _RFC7239_FAMILY)
    else:  # pragma: no cover - guarded by the type
        raise ValueError(f"unknown header family {family!r}")
    if not (rfc7239 if use_rfc7239 else has_x):
        return NOT_FORWARDED if seen is None else Resolution(headers=seen)

    try:
        if use_rfc7239:
            hop = _walk_rfc7239(peer, b", ".join(rfc7239), trusted)
        else:
            hop = _walk_x_forwarded(peer, xff, protos, hosts, ports, trusted)
    except _Invalid as exc:
        return Resolution(error=FORWARDED_INVALID, detail=str(exc))
    return Resolution(
        client_addr=hop.addr,
        client_port=hop.port,
        url_scheme=hop.scheme,
        host=hop.host,
        server_port=hop.server_port,
        headers=seen,
    )


def _without(headers: Iterable[Header], names: frozenset[bytes]) -> tuple[Header, ...]:
    return tuple(header for header in headers if header[0] not in names)


@dataclass(slots=True)
class _Hop:
    addr: str | None = None
    port: int | None = None
    scheme: str | None = None
    host: bytes | None = None
    server_port: int | None = None


# -- values ------------------------------------------------------------------------------------

_PORT_RE: Final = re.compile(rb"[1-9][0-9]{0,4}")
# A host as a proxy forwards it: an IP literal, or a DNS-style name (letters, digits, '.', '-',
# '_'), with an optional port. Stricter than the Host field's grammar on purpose: no
# percent-encoding, no sub-delims, no userinfo.
_HOST_RE: Final = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([1-9][0-9]{0,4}))?")
_IPV4_RE: Final = re.compile(rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6_RE: Final = re.compile(rb"[0-9A-Fa-f:.]+")
# An X-Forwarded-For element: IPv4[:port], [IPv6][:port] or a bare IPv6 address.
_XFF_NODE_RE: Final = re.compile(
    rb"(?:("
    + _IPV4_RE.pattern
    + rb")|\[([0-9A-Fa-f:.]+)\])(?::([0-9]+))?|([0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)"
)
# RFC 7239 section 6: node = nodename [ ":" node-port ]; nodename = IPv4address / "[" IPv6address
# "]" / "unknown" / obfnode; node-port = port / obfport; obf* = "_" 1*( ALPHA / DIGIT / "." / "_"
# / "-" ).
_OBF = rb"_[A-Za-z0-9._-]+"
_RFC7239_NODE_RE: Final = re.compile(
    rb"(?:("
    + _IPV4_RE.pattern
    + rb")|\[([0-9A-Fa-f:.]+)\]|([Uu][Nn][Kk][Nn][Oo][Ww][Nn])|("
    + _OBF
    + rb"))(?::([0-9]+|"
    + _OBF
    + rb"))?"
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def _port(text: bytes, what: str) -> int:
    """1*5DIGIT, 1..65535, no leading zero (no '+', no '_', no non-ASCII digits)."""
    if _PORT_RE.fullmatch(text) is None or int(text) > 65535:
        raise _Invalid(f"{what}: bad port {text[:20]!r}")
    return int(text)


def _ipv4(text: bytes, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.decode("ascii")))
    except ValueError:  # also leading zeros, refused by ipaddress since Python 3.9.5
        raise _Invalid(f"{what}: bad IPv4 address {text[:60]!r}") from None


def _ipv6(text: bytes, what: str) -> str:
    try:
        return str(ipaddress.IPv6Address(text.decode("ascii")))
    except ValueError:
        raise _Invalid(f"{what}: bad IPv6 address {text[:60]!r}") from None


def _scheme(value: bytes, what: str) -> str:
    scheme = value.lower()
    if scheme not in (b"http", b"https"):
        raise _Invalid(f"{what}: scheme {value[:20]!r} is not http or https")
    return scheme.decode("ascii")


def _host(value: bytes, what: str) -> tuple[bytes, int | None]:
    match = _HOST_RE.fullmatch(value)
    if match is None:
        raise _Invalid(f"{what}: bad host {value[:60]!r}")
    name, port = match.groups()
    if name[:1] == b"[":
        _ipv6(name[1:-1], what)
    return value, (None if port is None else _port(port, what))


# Parsed nodes, by their bytes (valid ones only), for the same reason as TrustedPeers._verdicts.
_XFF_NODES: dict[bytes, tuple[str | None, int | None]] = {}
_RFC7239_NODES: dict[bytes, tuple[str | None, int | None]] = {}


def _cached(
    cache: dict[bytes, tuple[str | None, int | None]],
    parse: Callable[[bytes], tuple[str | None, int | None]],
    text: bytes,
) -> tuple[str | None, int | None]:
    node = cache.get(text)
    if node is None:
        node = parse(text)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[text] = node
    return node


def _xff_node(text: bytes) -> tuple[str | None, int | None]:
    return _cached(_XFF_NODES, _parse_xff_node, text)


def _rfc7239_node(text: bytes) -> tuple[str | None, int | None]:
    return _cached(_RFC7239_NODES, _parse_rfc7239_node, text)


def _parse_xff_node(text: bytes) -> tuple[str | None, int | None]:
    """(address, port) of one X-Forwarded-For element; (None, None) for "unknown"."""
    if text.lower() == b"unknown":
        return None, None
    match = _XFF_NODE_RE.fullmatch(text)
    if match is None:
        raise _Invalid(f"X-Forwarded-For: bad element {text[:60]!r}")
    v4, v6, port, bare_v6 = match.groups()
    if bare_v6 is not None:
        return _ipv6(bare_v6, "X-Forwarded-For"), None
    addr = _ipv4(v4, "X-Forwarded-For") if v4 is not None else _ipv6(v6, "X-Forwarded-For")
    return addr, (None if port is None else _port(port, "X-Forwarded-For"))


def _parse_rfc7239_node(text: bytes) -> tuple[str | None, int | None]:
    """(address, port) of a for= value; (None, None) for "unknown" and obfuscated names."""
    match = _RFC7239_NODE_RE.fullmatch(text)
    if match is None:
        raise _Invalid(f"Forwarded: bad for= {text[:60]!r}")
    v4, v6, _unknown, _obfuscated, port = match.groups()
    if v4 is None and v6 is None:
        return None, None
    addr = _ipv4(v4, "Forwarded for=") if v4 is not None else _ipv6(v6, "Forwarded for=")
    if port is None or port[:1] == b"_":
        return addr, None
    return addr, _port(port, "Forwarded for=")


def _elements(values: list[bytes]) -> list[bytes]:
    """A comma-separated list field, every occurrence joined in order (RFC 9110 section 5.3),
    OWS around elements removed and empty elements ignored (RFC 9110 section 5.6.1)."""
    out: list[bytes] = []
    for value in values:
        for element in value.split(b","):
            element = element.strip(b" \t")
            if element:
                out.append(element)
    return out


# -- X-Forwarded-* -----------------------------------------------------------------------------


def _walk_x_forwarded(
    peer: str | None,
    xff: list[bytes],
    protos: list[bytes],
    hosts: list[bytes],
    ports: list[bytes],
    trusted: TrustedPeers,
) -> _Hop:
    hop = _Hop()
    addrs = _elements(xff)
    # Index from the right of the element that names the client (0: the peer's own client).
    stop = 0
    previous = peer
    for stop, element in enumerate(reversed(addrs)):
        addr, port = _xff_node(element)
        if addr is None:
            # "unknown": the hop cannot be checked or used. The client is as the last trusted
            # hop saw it: the address to its right (or the peer itself).
            if stop:
                hop.addr = previous
            break
        if not trusted.contains(addr) or stop == len(addrs) - 1:
            hop.addr, hop.port = addr, port
            break
        previous = addr

    # X-Forwarded-Proto/Host/Port: the value at the client's index when the list is as long
    # as X-Forwarded-For (one element per hop); otherwise the rightmost, the one the peer (a
    # trusted proxy) wrote or passed on. Elements further left were never written by a trusted
    # proxy and are never read.
    proto = _at(protos, len(addrs), stop)
    if proto is not None:
        hop.scheme = _scheme(proto, "X-Forwarded-Proto")
    host_port: int | None = None
    host = _at(hosts, len(addrs), stop)
    if host is not None:
        hop.host, host_port = _host(host, "X-Forwarded-Host")
    port_value = _at(ports, len(addrs), stop)
    explicit = None if port_value is None else _port(port_value, "X-Forwarded-Port")
    if explicit is not None and host_port is not None and explicit != host_port:
        raise _Invalid(f"X-Forwarded-Port {explicit} contradicts X-Forwarded-Host port {host_port}")
    hop.server_port = _server_port(explicit or host_port, hop.scheme)
    return hop


def _at(values: list[bytes], hops: int, stop: int) -> bytes | None:
    elements = _elements(values)
    if not elements:
        return None
    return elements[len(elements) - 1 - stop] if len(elements) == hops else elements[-1]


def _server_port(port: int | None, scheme: str | None) -> int | None:
    if port is not None:
        return port
    # A forwarded scheme without a port: the scheme's default port, not the listener's (which
    # is the proxy-to-us connection's and would build wrong URLs).
    return None if scheme is None else _DEFAULT_PORTS[scheme]


# -- RFC 7239 Forwarded ------------------------------------------------------------------------

_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*"'
# forwarded-pair = token "=" value; value = token / quoted-string. No whitespace around '=' or
# ';' (RFC 7239 section 4); OWS only around the commas between elements.
_PAIR_RE: Final = re.compile(rb"(" + _TOKEN + rb")=(" + _TOKEN + rb"|" + _QUOTED + rb")")
_COMMA_RE: Final = re.compile(rb"[ \t]*,[ \t]*")
_QUOTED_PAIR_RE: Final = re.compile(rb"\\(.)", re.DOTALL)


def _parse_rfc7239(value: bytes) -> list[dict[bytes, bytes]]:
    """Forwarded = 1#forwarded-element; forwarded-element = [ pair ] *( ";" [ pair ] ).
    The whole field must parse (a quoted string can hide a comma, so the elements cannot be
    found otherwise). Empty elements are ignored. A parameter twice in one element is refused
    (RFC 7239 section 4: it MUST NOT occur more than once)."""
    elements: list[dict[bytes, bytes]] = []
    pairs: dict[bytes, bytes] = {}
    pos = 0
    end = len(value)
    while True:
        match = _PAIR_RE.match(value, pos)
        if match is not None:
            name = match.group(1).lower()
            if name in pairs:
                raise _Invalid(f"Forwarded: {name.decode('ascii')}= twice in one element")
            raw = match.group(2)
            if raw[:1] == b'"':
                raw = _QUOTED_PAIR_RE.sub(rb"\1", raw[1:-1])
            pairs[name] = raw
            pos = match.end()
        if pos == end:
            break
        if value[pos] == 0x3B:  # ';'
            pos += 1
            continue
        comma = _COMMA_RE.match(value, pos)
        if comma is None:
            raise _Invalid(f"Forwarded: syntax error at byte {pos}: {value[pos : pos + 20]!r}")
        if pairs:
            elements.append(pairs)
        pairs = {}
        pos = comma.end()
    if pairs:
        elements.append(pairs)
    return elements


def _walk_rfc7239(peer: str | None, value: bytes, trusted: TrustedPeers) -> _Hop:
    hop = _Hop()
    elements = _parse_rfc7239(value)
    if not elements:
        return hop
    previous = peer
    chosen = elements[-1]
    for stop, element in enumerate(reversed(elements)):
        chosen = element
        node = element.get(b"for")
        addr, port = (None, None) if node is None else _rfc7239_node(node)
        if addr is None:
            # "unknown", an obfuscated name or no for= at all: see _walk_x_forwarded.
            if stop:
                hop.addr = previous
            break
        if not trusted.contains(addr) or stop == len(elements) - 1:
            hop.addr, hop.port = addr, port
            break
        previous = addr
    # host= and proto= of the element that names the client were written by a trusted proxy
    # (every element to its right named a trusted one) and describe the client's own request.
    proto = chosen.get(b"proto")
    if proto is not None:
        hop.scheme = _scheme(proto, "Forwarded proto=")
    host_port: int | None = None
    host = chosen.get(b"host")
    if host is not None:
        hop.host, host_port = _host(host, "Forwarded host=")
    hop.server_port = _server_port(host_port, hop.scheme)
    return hop
