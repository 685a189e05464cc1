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

    # Bytes of request body buffered between the socket and wsgi.input. When the buffer holds
    # this much the worker stops reading the socket until the app reads (TCP pushes back).
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

    # Response bytes queued for the socket before the app's thread waits for the client to
    # read (transport high-water mark).
    write_buffer_bytes: int = 65536

    # Response bytes the app's thread may hand to the loop ahead of the transport before it
    # waits. Only threads that are writing hold such a queue, so the memory it can take is
    # threads x this, not connections x this. At 64 KiB a streaming app waited for the loop
    # after every 64 KiB piece; at 256 KiB a 1 MiB chunked stream cost 35 to 45 % less CPU
    # (bench/RESULTS.md).
    write_queue_bytes: int = 262144

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

    # A request still in the app after this many seconds gets one error-log line with its
    # request line and the stack of the thread running it, so an operator sees where it hangs.
    # Logged, not killed: a thread cannot be stopped safely (the supervisor decides on
    # recycling). gunicorn --timeout 30 kills the whole worker, with no trace of what it did.
    request_timeout_s: float = 30.0

    # The app's thread waits at most this long for a slow reader to take queued response bytes.
    write_timeout_s: float = 30.0
