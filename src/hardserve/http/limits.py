"""Every size, count and time ceiling of the HTTP core, in one frozen dataclass.

Units are in the names (_bytes, _count, _s). Beside each default: why it was chosen and what
the peers use, so that a change is a decision, not an accident.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    # Line limits count the whole line with its CRLF.
    # The request line (method, target, version). gunicorn limit_request_line 4094 without the
    # CRLF (the same as ours), nginx an 8 KiB buffer, waitress no separate limit. Browsers keep
    # URLs near 2 KiB for interoperability; an app with longer ones raises the setting.
    request_line_max_bytes: int = 4096

    # One header field line, name and value. gunicorn limit_request_field_size 8190, nginx 8 KiB.
    header_field_max_bytes: int = 8190

    # Header fields per request. gunicorn limit_request_fields 100; nginx and node allow more
    # in total bytes but each field costs a dict entry in the environ.
    header_count_max: int = 100

    # The whole head, request line included. node 16 KiB, waitress 256 KiB, nginx 4 x 8 KiB.
    # 64 KiB leaves room for large cookies and a client-certificate header from a proxy.
    head_max_bytes: int = 65536

    # A request body. waitress max_request_body_size 1 GiB; nginx client_max_body_size 1 MiB;
    # gunicorn and Flask none. 100 MiB covers ordinary uploads; bigger ones are a setting.
    body_max_bytes: int = 100 * 1024 * 1024

    # One chunk-size line with its extensions. Extensions are unused in practice; 4 KiB stops a
    # client from making the server buffer an endless chunk header.
    chunk_line_max_bytes: int = 4096

    # The whole trailer section of a chunked body.
    trailer_max_bytes: int = 8192

    # Bytes of request body buffered between the socket and wsgi.input. A request reaches the
    # app once its body is complete or fills this buffer, so smaller bodies never hold a pool
    # thread while they arrive. When the buffer holds this much the worker stops reading the
    # socket until the app reads (TCP pushes back).
    body_buffer_bytes: int = 65536

    # After a response, an unread request body is read and thrown away up to this many bytes so
    # the connection can be kept; more than that and the connection is closed instead.
    drain_max_bytes: int = 65536

    # Requests served on one keep-alive connection; the last one's response says
    # Connection: close. nginx keepalive_requests 1000 (it frees per-connection memory that grows
    # with use); gunicorn and waitress have none. Bounds how long one client can hold a
    # connection slot in a busy worker.
    keepalive_requests_max: int = 1000

    # Bytes of pipelined requests held while an earlier request of the connection is in the
    # app. Past it the worker stops reading the socket.
    pipeline_buffer_bytes: int = 65536

    # Response bytes queued for the socket before the response waits for the client to read
    # (transport high-water mark): an iterable's response parks and gives its thread back,
    # write() and sendfile wait on their thread.
    write_buffer_bytes: int = 65536

    # Response bytes the app's thread may hand to the loop ahead of the transport. Past it, a
    # response iterable parks until the loop has written them (write() waits on its thread).
    # What one turn brings leaves in one writev: 1 MiB made a fast 1 MiB stream 15-25 % cheaper
    # than 256 KiB (docs/performance.md). What was handed over when the client stopped reading stays
    # in the transport while the response is parked: each stalled reader of a stream holds up
    # to this plus write_buffer_bytes (measured: 212 KiB of RSS each at 256 KiB, 552 KiB at
    # 1 MiB), until the send deadline cuts it.
    write_queue_bytes: int = 262144

    # Response bytes all of a worker's app threads together may hand to the loop before the
    # loop has taken them. Past it, a thread that hands over a piece waits until the loop takes
    # the burst (waiting threads are let go one per burst, in turn); a response's last bytes
    # count but never wait. Without it the threads ran every streaming connection up to
    # write_queue_bytes before the loop wrote a byte: 64 clients of a stream built piece by
    # piece meant 16 MiB of new pieces per burst and a peak RSS of 62-66 MB per worker (149-177
    # MB with 1,000 clients). At 2 MiB: 37 MB (50 MB), with the same responses per second within
    # the noise. A stream that yields one object again and again pays for nothing it gains:
    # 4-8 % fewer responses (bench/NOTES.md). 0: only the connections' own bounds.
    worker_write_queue_bytes: int = 2097152

    # Response bytes the kernel may hold unsent on one TCP connection (TCP_NOTSENT_LOWAT on the
    # listeners, inherited by each connection): past it the socket reports itself full, and
    # the transport's own buffer and write_buffer_bytes take over. Without it the kernel grows a
    # connection's send buffer up to net.ipv4.tcp_wmem's maximum (4 MiB by default): measured
    # on loopback, 2.8 MB held for each client that stopped reading a large response. 0 leaves
    # the kernel's setting. 128 KiB cost 1 MiB responses 13-40 % more CPU (more, smaller
    # writes); at 1 MiB no cost showed. gunicorn and waitress do not set it.
    socket_unsent_max_bytes: int = 1048576

    # Idle time allowed between requests on a keep-alive connection. gunicorn 2 s, uvicorn 5 s,
    # waitress 120 s (channel_timeout), nginx 75 s. 5 s frees idle sockets quickly while keeping
    # the reuse a browser gets within one page load.
    keepalive_timeout_s: float = 5.0

    # The whole head must arrive within this many seconds of its first byte.
    head_timeout_s: float = 10.0

    # wsgi.input.read waits at most this long for the next body byte.
    body_idle_timeout_s: float = 30.0

    # After its last response a closing connection still reads and discards what the client
    # sends, for at most this long, so the response is not destroyed by a TCP reset (nginx
    # lingering_time 30 s, lingering_timeout 5 s; Apache 2 s).
    linger_timeout_s: float = 2.0

    # A request that has waited this long in the pool's queue without a thread is answered 503
    # with Retry-After from the loop, without touching the app: the queue absorbs bursts, and
    # under sustained overload a quick 503 the client can retry elsewhere beats an answer that
    # comes after the client (or its proxy, commonly 30 to 60 s) has given up. Checked a few
    # times a second, so the 503 can come up to a quarter second late. No peer has one
    # (waitress only logs its queue depth).
    queue_timeout_s: float = 10.0

    # A request still in the app after this many seconds gets one error-log line with its
    # request line and the stack of the thread running it, so an operator sees where it hangs.
    # Logged, not killed: a thread cannot be stopped safely (the supervisor decides on
    # recycling). gunicorn --timeout 30 kills the whole worker, with no trace of what it did.
    request_timeout_s: float = 30.0

    # A TLS client must finish its handshake within this many seconds of connecting, or the
    # connection is dropped before it reaches the HTTP layer and logged as
    # tls_handshake_timeout (docs/tls.md). nginx ssl_handshake_timeout 60 s (1.25.3), gunicorn
    # none; 10 s is the head deadline's budget. 0 means 60 s, the event loops' own default.
    tls_handshake_timeout_s: float = 10.0

    # A response (parked, or waiting on its thread) waits at most this long for a slow reader
    # to take queued response bytes; then the connection is reset.
    write_timeout_s: float = 30.0

    # The minimum average rate of a request body, in bytes per second, once `body_rate_grace_s`
    # has passed: by time t after the body started the client must have sent
    # (t - grace) x rate bytes, or the upload is cut (408 if no response has started) and the
    # app's next wsgi.input read raises. Time while the worker is not reading (the app has
    # not taken the buffered bytes) does not count against the client. Apache
    # mod_reqtimeout body=20,MinRate=500; gunicorn, waitress, uWSGI have no such rate. 0 turns
    # the rate off (the idle timeout still applies).
    body_min_rate_bytes_s: int = 1024

    # Seconds of grace before the body rate is enforced (Apache 20 s before MinRate counts).
    body_rate_grace_s: float = 10.0

    # The minimum rate at which a client must read a response while the worker waits on it
    # (the transport's buffer is full or a closing connection still holds unsent bytes). Only
    # waiting time counts, so a slow app is never blamed on its client. A slow reader below it
    # is dropped and its response ended; a 50 MB response read at 1 KiB/s is not worth
    # a connection slot for 14 hours. No peer has one; nginx send_timeout 60 s only bounds a
    # stall. 0 turns it off (write_timeout_s still bounds a stall).
    send_min_rate_bytes_s: int = 1024

    # Seconds of waiting on a reader before the send rate is enforced.
    send_rate_grace_s: float = 10.0

    # Open connections per worker. At the limit the worker stops accepting (new connections
    # wait in the kernel's backlog) until it is back under nine tenths of it. gunicorn
    # worker_connections 1000 (async workers only), waitress connection_limit 100, uvicorn
    # none. 2048 holds the 1,024 keep-alive clients the benchmarks use plus slow ones; each
    # idle connection costs a few KiB, and the worst case of every buffer full is bounded by
    # the per-connection limits above.
    connections_max: int = 2048

    # Open connections from one client address in one worker; past it a new connection is
    # closed at once. Peers on a unix socket and trusted proxies are not counted (behind a
    # proxy every connection comes from it). No peer has one; nginx limit_conn is the model.
    # 256 leaves room for a few dozen browsers behind one NAT address.
    client_connections_max: int = 256

    # Requests of one client address (the forwarded one behind a trusted proxy) admitted to the
    # pool at once in one worker, running or queued; past it 503 with Retry-After, from the
    # loop, without touching the app. 0, the default, turns it off: one address is often many
    # clients (a proxy not declared trusted, a NAT, a load generator), so a default cap turns
    # ordinary load into 503s, and only a cap below the thread count keeps one client from
    # taking every thread; the pool itself is bounded by threads and pool_queue_max either
    # way. For a server at the edge, set it below --threads. No peer has one.
    client_in_flight_max: int = 0
