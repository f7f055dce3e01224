"""The ingress data path: an asyncio HTTP/1.1 reverse proxy answering from a `RouteTable`.

`IngressProxy` owns the listening sockets (plain HTTP and TLS, on each bind
address), the client connections and a keep-alive pool of connections to the
endpoints. Every request reads `self.table` once, so the controller swapping in a
new table changes routing for the next request on every connection and for no
request in flight.

One request, as ingress-nginx handles it:

* no route -> 404; an Ingress with ssl-redirect on plain HTTP -> 308 to https;
  no Service, port or ready endpoint -> 503;
* the request goes to the backend's next endpoint (round robin; pod IP and
  targetPort, never the Service's cluster IP) over a pooled keep-alive
  connection; a connection that fails is tried against up to two more endpoints
  (nginx's proxy_next_upstream "error timeout"), then the client gets 502
  (refused, reset, a bad answer) or 504 (connect or read timeout). A pooled
  connection the backend had closed is retried once on a new one unless part
  of a streamed body is already gone down it;
* the upstream request is HTTP/1.1 with the client's method, target, Host and
  headers, less the hop-by-hop ones, plus X-Forwarded-For (the client's address
  appended), X-Real-IP, X-Forwarded-Host, -Port and -Proto; interim 1xx answers
  are passed on;
* bodies stream both ways with their own framing (Content-Length, chunked, or
  until close, which an HTTP/1.1 client receives as chunked), a read buffer at a
  time, with backpressure from the slower side; a body up to 64 KiB with a
  Content-Length is read whole to save round trips through the event loop;
* `Upgrade` (WebSocket or any other protocol): after a 101 the connection is a
  byte tunnel both ways until either side closes.

Timeouts are the route's Options: connect, read (between two reads of the
response) and send (between two writes of the request body). A client
connection is closed after `keepalive_timeout` idle seconds between requests,
or when a request head takes longer than `client_timeout`. The waits every
request makes arm no event-loop timer each: they note a deadline that a watchdog
checks every WATCH_TICK seconds (see `_Client`); `asyncio.timeout` around them
cost more CPU than the rest of the request handling together and halved the
requests/s (bench/ingress.py).

HTTP parsing is by hand because a proxy needs only framing and a few headers:
request and status lines, header lines split at the first colon, Content-Length
and Transfer-Encoding. Ambiguous framing (both, several different lengths, an
unknown transfer coding, obsolete line folding) is a 400, as request smuggling
defences require.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from .routing import Endpoint, Options, RouteTable
from .tls import CertStore

log = logging.getLogger(__name__)

HEAD_END = b"\r\n\r\n"
_HEX = b"0123456789abcdefABCDEF"
CRLF = b"\r\n"
HEAD_LIMIT = 64 * 1024        # request and response heads; a longer one is a 431 / 502
SMALL_BODY = 64 * 1024        # Content-Length bodies up to this are read and written whole
READ_SIZE = 256 * 1024
ENDPOINT_TRIES = 3

# Headers never forwarded as they came: hop-by-hop ones (RFC 9110 7.6.1) and the ones the proxy sets.
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding", b"upgrade"})
_OURS = frozenset({b"x-forwarded-for", b"x-forwarded-host", b"x-forwarded-port", b"x-forwarded-proto",
                   b"x-real-ip"})


class HTTPError(Exception):
    """A request the proxy answers itself with `status`."""

    def __init__(self, status: int, detail: str = ""):
        super().__init__(detail or _reason(status))
        self.status = status


class _UpstreamError(Exception):
    """The exchange with an endpoint failed before the client got an answer's first byte."""

    def __init__(self, status: int, retry_fresh: bool, detail: str):
        super().__init__(detail)
        self.status = status          # 502 or 504
        self.retry_fresh = retry_fresh  # a reused connection died first: worth one new connection


class _Abort(Exception):
    """The client connection cannot go on (a half-sent answer, a failed client); close it."""


# ---------------------------------------------------------------------- parsing

class Request:
    __slots__ = ("chunked", "expect", "headers", "host", "host_value", "keep_alive", "length", "method",
                 "path", "target", "upgrade", "version", "xff")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = b"HTTP/1.1"
        self.headers: list[bytes] = []      # "Name: value" lines to forward as they are
        self.host = ""
        self.host_value = b""
        self.path = "/"
        self.keep_alive = True
        self.length = 0                     # body bytes when not chunked
        self.chunked = False
        self.upgrade: bytes | None = None
        self.expect = False
        self.xff = b""

    @property
    def has_body(self) -> bool:
        return self.chunked or self.length > 0


# A header name is an RFC 9110 token: these characters and no others.
_TOKEN = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _clean_head(head: bytes) -> bool:
    """No CR or LF outside CRLF pairs and no NUL: a lone LF would end a line for some backends and
    not for us, which is how requests are smuggled past a proxy."""
    crlf = head.count(b"\r\n")
    return head.count(b"\n") == crlf and head.count(b"\r") == crlf and b"\0" not in head


def _tokens(value: bytes) -> set[bytes]:
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def _parse_length(value: bytes, current: int | None) -> int:
    # "5, 5" (a list of identical values) is allowed by RFC 9110; anything else ambiguous is not.
    vals = {v.strip() for v in value.split(b",")}
    if len(vals) != 1:
        raise HTTPError(400, "conflicting Content-Length")
    v = vals.pop()
    if not v.isdigit():
        raise HTTPError(400, "bad Content-Length")
    n = int(v)
    if current is not None and current != n:
        raise HTTPError(400, "conflicting Content-Length")
    return n


def parse_request(head: bytes) -> Request:
    """A request head (up to and including the blank line) -> Request; HTTPError(400/505) if malformed."""
    if not _clean_head(head):
        raise HTTPError(400, "bare CR or LF, or NUL, in the request head")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        raise HTTPError(400, "bad request line")
    req = Request()
    req.method, target, version = parts
    if version == b"HTTP/1.0":
        req.keep_alive = False
    elif version != b"HTTP/1.1":
        raise HTTPError(505 if version.startswith(b"HTTP/") else 400, "unsupported HTTP version")
    req.version = version
    if target[:1] != b"/":
        low = target[:8].lower()
        if low.startswith(b"http://") or low.startswith(b"https://"):
            # absolute-form: the authority is the host; the origin-form goes upstream
            rest = target.split(b"//", 1)[1]
            slash = rest.find(b"/")
            authority, target = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
            req.host_value = authority
        elif target != b"*":
            raise HTTPError(400, "bad request target")
    req.target = target
    length: int | None = None
    te: bytes | None = None
    conn: set[bytes] = set()
    keep: list[bytes] = []
    names: list[bytes] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name.translate(None, _TOKEN):
            raise HTTPError(400, "bad header line")   # also obsolete line folding, space before the colon
        value = value.strip(b" \t")
        lname = name.lower()
        if lname in _HOP or lname in _OURS or lname == b"host" or lname == b"content-length" \
                or lname == b"expect":
            if lname == b"host":
                if not req.host_value:   # an absolute-form target's authority wins over Host
                    req.host_value = value
                continue
            if lname == b"content-length":
                length = _parse_length(value, length)
            elif lname == b"transfer-encoding":
                te = value if te is None else te + b", " + value
            elif lname == b"connection" or lname == b"proxy-connection":
                conn |= _tokens(value)
            elif lname == b"upgrade":
                req.upgrade = value
            elif lname == b"x-forwarded-for":
                req.xff = value if not req.xff else req.xff + b", " + value
            elif lname == b"expect":
                if value.lower() == b"100-continue":
                    req.expect = True
                keep.append(line)
                names.append(lname)
            continue
        keep.append(line)
        names.append(lname)
    if te is not None:
        codings = [c.strip().lower() for c in te.split(b",")]
        if codings[-1] != b"chunked" or length is not None or version == b"HTTP/1.0":
            raise HTTPError(400, "bad Transfer-Encoding")
        req.chunked = True
        if len(codings) > 1:
            keep.append(b"Transfer-Encoding: " + b", ".join(codings[:-1]))
            names.append(b"transfer-encoding")
    else:
        req.length = length or 0
        if length is not None:
            keep.append(b"Content-Length: " + str(length).encode())
            names.append(b"content-length")
    if conn:
        if b"close" in conn:
            req.keep_alive = False
        elif b"keep-alive" in conn and version == b"HTTP/1.0":
            req.keep_alive = True
        drop = conn - {b"close", b"keep-alive", b"upgrade"}
        if drop:
            keep = [h for h, n in zip(keep, names) if n not in drop]
    if req.upgrade is not None and b"upgrade" not in conn:
        req.upgrade = None
    req.headers = keep
    host = req.host_value.decode("latin-1")
    req.host = host
    q = target.find(b"?")
    req.path = (target if q < 0 else target[:q]).decode("latin-1") if target != b"*" else "/"
    return req


class Response:
    __slots__ = ("close", "headers", "length", "mode", "status", "status_line", "upgrade")

    def __init__(self) -> None:
        self.status = 0
        self.status_line = b""     # "200 OK"
        self.headers: list[bytes] = []
        self.length = 0
        self.mode = "none"         # none | length | chunked | close
        self.close = False         # the upstream connection cannot be reused
        self.upgrade: bytes | None = None


def parse_response(head: bytes, method: bytes) -> Response:
    """A response head -> Response; ValueError if malformed (the client then gets a 502)."""
    if not _clean_head(head):
        raise ValueError("bare CR or LF, or NUL, in the response head")
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    code = rest[:3]
    if len(code) != 3 or not code.isdigit():
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    resp = Response()
    resp.status = int(code)
    resp.status_line = rest if len(rest) > 3 else rest + b" " + _reason(resp.status).encode()
    length: int | None = None
    chunked = False
    conn: set[bytes] = set()
    keep: list[bytes] = []
    names: list[bytes] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or line[:1] in (b" ", b"\t"):
            raise ValueError("bad header line")
        lname = name.lower().rstrip(b" \t")
        if lname in _HOP or lname == b"content-length":
            value = value.strip(b" \t")
            if lname == b"content-length":
                try:
                    length = _parse_length(value, length)
                except HTTPError as e:
                    raise ValueError(str(e)) from None
            elif lname == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    raise ValueError("unsupported transfer coding")
            elif lname == b"connection" or lname == b"proxy-connection":
                conn |= _tokens(value)
            elif lname == b"upgrade":
                resp.upgrade = value
            continue
        keep.append(line)
        names.append(lname)
    drop = conn - {b"close", b"keep-alive", b"upgrade"}
    if drop:
        keep = [h for h, n in zip(keep, names) if n not in drop]
    resp.headers = keep
    resp.close = b"close" in conn or (version == b"HTTP/1.0" and b"keep-alive" not in conn)
    s = resp.status
    if method == b"HEAD" or s < 200 or s in (204, 304):
        resp.mode = "none"
        if length is not None and method == b"HEAD":
            keep.append(b"Content-Length: " + str(length).encode())
    elif chunked:
        resp.mode = "chunked"
    elif length is not None:
        resp.mode = "length"
        resp.length = length
    else:
        resp.mode = "close"
        resp.close = True
    return resp


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def simple_response(status: int, *, keep_alive: bool, extra: Sequence[bytes] = (),
                    body: bytes | None = None) -> bytes:
    """An answer of the proxy's own (404, 502, a redirect...)."""
    reason = _reason(status)
    if body is None:
        body = f"{status} {reason}\n".encode()
    lines = [f"HTTP/1.1 {status} {reason}".encode(), b"Content-Type: text/plain; charset=utf-8",
             b"Content-Length: " + str(len(body)).encode(), *extra]
    if not keep_alive:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + HEAD_END + body


# ---------------------------------------------------------------------- the upstream pool

class _Upstream:
    __slots__ = ("endpoint", "idle_since", "reader", "writer")

    def __init__(self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof() and self.reader.exception() is None

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        transport = self.writer.transport
        if transport is not None:
            transport.abort()


class UpstreamPool:
    """Idle keep-alive connections per endpoint, most recently used first."""

    def __init__(self, max_idle_per_endpoint: int = 64, idle_timeout: float = 30.0):
        self.max_idle = max_idle_per_endpoint
        self.idle_timeout = idle_timeout
        self._idle: dict[Endpoint, deque[_Upstream]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.opened = 0      # connections opened (a figure for tests and the benchmark)

    def take(self, ep: Endpoint) -> _Upstream | None:
        """An idle connection to `ep` that still looks alive, or None."""
        q = self._idle.get(ep)
        while q:
            c = q.pop()
            if c.usable():
                return c
            c.close()
        return None

    async def open(self, ep: Endpoint, timeout: float) -> _Upstream:
        """A new connection; TimeoutError / OSError when it cannot be opened."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(ep[0], ep[1], limit=HEAD_LIMIT)
        self.opened += 1
        return _Upstream(ep, reader, writer)

    def put(self, c: _Upstream) -> None:
        if not c.usable():
            c.close()
            return
        q = self._idle.get(c.endpoint)
        if q is None:
            q = self._idle[c.endpoint] = deque()
        if len(q) >= self.max_idle:
            q.popleft().close()
        c.idle_since = time.monotonic()
        q.append(c)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def idle_count(self, ep: Endpoint | None = None) -> int:
        if ep is not None:
            return len(self._idle.get(ep, ()))
        return sum(len(q) for q in self._idle.values())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(self.idle_timeout / 2, 0.5))
            cutoff = time.monotonic() - self.idle_timeout
            for ep in list(self._idle):
                q = self._idle[ep]
                while q and (q[0].idle_since < cutoff or not q[0].usable()):
                    q.popleft().close()
                if not q:
                    del self._idle[ep]

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for q in self._idle.values():
            for c in q:
                c.close()
        self._idle.clear()


# ---------------------------------------------------------------------- body copying

async def copy_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int,
                      read_timeout: float, write_timeout: float) -> None:
    """Copy exactly n body bytes; IncompleteReadError if the sender stops short."""
    while n > 0:
        async with asyncio.timeout(read_timeout):
            data = await reader.read(min(n, READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", n)
        n -= len(data)
        writer.write(data)
        async with asyncio.timeout(write_timeout):
            await writer.drain()


async def copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_timeout: float,
                       write_timeout: float, *, dechunk: bool = False) -> None:
    """Copy a chunked body, chunk framing and trailers as they are (or only the data if dechunk)."""
    while True:
        async with asyncio.timeout(read_timeout):
            line = await reader.readuntil(CRLF)
        size_text = line.split(b";", 1)[0].strip(b" \t\r\n")
        # Hex digits only: int() would also take "0x", "_", "+" and "-", which other parsers read otherwise.
        if not size_text or len(size_text) > 16 or size_text.strip(_HEX):
            raise ValueError("bad chunk size")
        size = int(size_text, 16)
        if size == 0:
            out = [line]
            while True:
                async with asyncio.timeout(read_timeout):
                    t = await reader.readuntil(CRLF)
                out.append(t)
                if t == CRLF:
                    break
            if not dechunk:
                writer.write(b"".join(out))
            return
        if not dechunk:
            writer.write(line)
        n = size
        while n > 0:
            async with asyncio.timeout(read_timeout):
                data = await reader.read(min(n, READ_SIZE))
            if not data:
                raise asyncio.IncompleteReadError(b"", n)
            n -= len(data)
            writer.write(data)
            if n:
                async with asyncio.timeout(write_timeout):
                    await writer.drain()
        async with asyncio.timeout(read_timeout):
            end = await reader.readexactly(2)
        if end != CRLF:
            raise ValueError("bad chunk end")
        if not dechunk:
            writer.write(CRLF)
        async with asyncio.timeout(write_timeout):
            await writer.drain()


async def copy_until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, read_timeout: float,
                           write_timeout: float, *, chunk: bool) -> None:
    """Copy a body that ends when the sender closes, as chunks if `chunk` (an HTTP/1.1 client)."""
    while True:
        async with asyncio.timeout(read_timeout):
            data = await reader.read(READ_SIZE)
        if not data:
            if chunk:
                writer.write(b"0\r\n\r\n")
            return
        if chunk:
            writer.write(b"%x\r\n" % len(data) + data + CRLF)
        else:
            writer.write(data)
        async with asyncio.timeout(write_timeout):
            await writer.drain()


async def tunnel(a_reader: asyncio.StreamReader, a_writer: asyncio.StreamWriter,
                 b_reader: asyncio.StreamReader, b_writer: asyncio.StreamWriter) -> None:
    """Bytes both ways until both directions have ended (a half-close is passed on) or one fails."""
    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            data = await r.read(READ_SIZE)
            if not data:
                if w.can_write_eof():
                    w.write_eof()
                return
            w.write(data)
            await w.drain()

    tasks = [asyncio.ensure_future(pipe(a_reader, b_writer)), asyncio.ensure_future(pipe(b_reader, a_writer))]
    try:
        pending: set[asyncio.Future[None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() is not None for t in done):
                break
            # A half-closed TLS side cannot write EOF: once one direction ended there, end the other too.
            if pending and not (a_writer.can_write_eof() and b_writer.can_write_eof()):
                break
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


# ---------------------------------------------------------------------- the proxy

class _Client:
    """One client connection, what the proxy tells backends about it, and its watchdog.

    The hot path's waits (the next request head, the response head, a small body, a
    write to the client) do not each arm an event-loop timer: they set `deadline` and
    the transport to abort when it passes, and the proxy's watchdog, ticking every
    `WATCH_TICK` seconds, aborts the overdue ones and marks them `expired`. The wait
    then fails as a closed connection would, and `expired` tells a timeout from a failure.
    """

    __slots__ = ("deadline", "expired", "forwarded", "ip", "reader", "scheme", "upstream", "watched", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: str):
        self.reader = reader
        self.writer = writer
        self.scheme = scheme
        self.upstream: _Upstream | None = None   # the upstream connection of the request in flight
        self.deadline = 0.0                      # 0: nothing watched
        self.watched: asyncio.BaseTransport | None = None
        self.expired = False
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        self.ip = (peer[0] if isinstance(peer, tuple) else "") or ""
        port = local[1] if isinstance(local, tuple) else ""
        # The per-connection forwarded headers, encoded once.
        self.forwarded = (f"X-Real-IP: {self.ip}\r\nX-Forwarded-Proto: {scheme}\r\n"
                          f"X-Forwarded-Port: {port}\r\n").encode()

    def watch(self, seconds: float, transport: asyncio.BaseTransport) -> None:
        self.deadline = _monotonic() + seconds
        self.watched = transport
        self.expired = False

    def unwatch(self) -> None:
        self.deadline = 0.0
        self.watched = None


Address = tuple[str | None, int]
WATCH_TICK = 0.1
_monotonic = time.monotonic


class IngressProxy:
    """HTTP and HTTPS listeners that route each request through `table` to a pooled upstream."""

    def __init__(self, certs: CertStore, *, http: Iterable[Address] = (), https: Iterable[Address] = (),
                 table: RouteTable | None = None, redirect_port: int = 443, keepalive_timeout: float = 75.0,
                 client_timeout: float = 60.0, max_idle_per_endpoint: int = 64,
                 upstream_idle_timeout: float = 30.0, backlog: int = 1024):
        self.certs = certs
        self.http_addresses = list(http)
        self.https_addresses = list(https)
        self.table = table or RouteTable()
        self.redirect_port = redirect_port
        self.keepalive_timeout = keepalive_timeout
        self.client_timeout = client_timeout
        self.backlog = backlog
        self.pool = UpstreamPool(max_idle_per_endpoint, upstream_idle_timeout)
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[Any]] = set()
        self._clients: set[_Client] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self.http_ports: list[int] = []
        self.https_ports: list[int] = []
        self.requests = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            for host, port in self.http_addresses:
                srv = await asyncio.start_server(lambda r, w: self._handle(r, w, "http"), host, port,
                                                 limit=HEAD_LIMIT, backlog=self.backlog, reuse_address=True)
                self._servers.append(srv)
                self.http_ports.extend(_ports(srv))
            for host, port in self.https_addresses:
                srv = await asyncio.start_server(lambda r, w: self._handle(r, w, "https"), host, port,
                                                 ssl=self.certs.context, ssl_handshake_timeout=10.0,
                                                 limit=HEAD_LIMIT, backlog=self.backlog, reuse_address=True)
                self._servers.append(srv)
                self.https_ports.extend(_ports(srv))
            if not self.redirect_port:   # "any free port": redirect to the one it got
                self.redirect_port = self.https_ports[0] if self.https_ports else 443
        except BaseException:
            await self.stop()
            raise
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        """Stop listening, close every client connection and the pool."""
        servers, self._servers = self._servers, []
        for srv in servers:
            srv.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        # Closing the sockets ends the handlers (cancelling them would make Python 3.11's
        # start_server log each as an unhandled error).
        for client in list(self._clients):
            client.writer.transport.abort()
            if client.upstream is not None:
                client.upstream.abort()
        tasks = list(self._handlers)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=2.0)
            for task in pending:
                task.cancel()
        for srv in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        await self.pool.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_TICK)
            now = _monotonic()
            for c in list(self._clients):
                if c.deadline and c.deadline < now:
                    c.expired = True
                    c.deadline = 0.0
                    if c.watched is not None:
                        c.watched.abort()  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ one client connection

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        client = _Client(reader, writer, scheme)
        self._clients.add(client)
        transport = writer.transport
        try:
            timeout = self.client_timeout
            while True:
                client.watch(timeout, transport)
                try:
                    head = await reader.readuntil(HEAD_END)
                except asyncio.LimitOverrunError:
                    writer.write(simple_response(431, keep_alive=False))
                    return
                except (asyncio.IncompleteReadError, ConnectionError, OSError):
                    return
                finally:
                    client.unwatch()
                timeout = self.keepalive_timeout
                try:
                    req = parse_request(head)
                except HTTPError as e:
                    writer.write(simple_response(e.status, keep_alive=False))
                    return
                self.requests += 1
                if not await self._serve(client, req):
                    return
        except (_Abort, ConnectionError, TimeoutError, OSError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ingress: unexpected failure on a client connection")
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._clients.discard(client)
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, client: _Client, req: Request, status: int, extra: Sequence[bytes] = ()) -> bool:
        """Send one of our own answers; True if the connection goes on (no unread body left)."""
        keep = req.keep_alive and not req.has_body
        if keep and req.version == b"HTTP/1.0":
            extra = (*extra, b"Connection: keep-alive")
        client.writer.write(simple_response(status, keep_alive=keep, extra=extra))
        await self._drain(client)
        return keep

    async def _drain(self, client: _Client) -> None:
        client.watch(self.client_timeout, client.writer.transport)
        try:
            await client.writer.drain()
        finally:
            client.unwatch()

    async def _serve(self, client: _Client, req: Request) -> bool:
        """Answer one request; True if the client connection can carry the next one."""
        route = self.table.match(req.host, req.path)
        if route is None:
            return await self._answer(client, req, 404)
        opts = route.options
        if opts.ssl_redirect and client.scheme == "http":
            port = "" if self.redirect_port == 443 else f":{self.redirect_port}"
            location = f"https://{_strip_port(req.host)}{port}".encode("latin-1") + req.target
            return await self._answer(client, req, 308, (b"Location: " + location,))
        backend = route.backend
        endpoints = backend.pick(ENDPOINT_TRIES)
        if not endpoints:
            log.debug("ingress: %s %s: %s", req.host, req.path, backend.problem)
            return await self._answer(client, req, 503)
        head = self._upstream_head(client, req)
        streaming = req.has_body
        if req.length and req.length <= SMALL_BODY and not req.expect:
            client.watch(self.client_timeout, client.writer.transport)
            try:
                head += await client.reader.readexactly(req.length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return False
            finally:
                client.unwatch()
            streaming = False
        status = 502
        pool = self.pool
        for ep in endpoints:
            fresh = False
            while True:
                up = None if fresh else pool.take(ep)
                reused = up is not None
                if up is None:
                    try:
                        up = await pool.open(ep, opts.connect_timeout)
                    except TimeoutError:
                        status = 504
                        log.info("ingress: %s: connect to %s:%s timed out", backend.key, *ep)
                        break
                    except OSError as e:
                        status = 502
                        log.info("ingress: %s: connect to %s:%s failed: %s", backend.key, ep[0], ep[1], e)
                        break
                client.upstream = up
                try:
                    return await self._exchange(client, req, opts, up, head, streaming, reused)
                except _UpstreamError as e:
                    up.abort()
                    if e.retry_fresh and not fresh:
                        fresh = True
                        continue
                    status = e.status
                    log.info("ingress: %s: %s:%s: %s", backend.key, ep[0], ep[1], e)
                    if streaming:
                        # The body is (partly) gone to that endpoint: no other can be tried.
                        client.writer.write(simple_response(status, keep_alive=False))
                        await self._drain(client)
                        return False
                    break
                except BaseException:
                    up.abort()
                    raise
                finally:
                    client.upstream = None
        return await self._answer(client, req, status)

    def _upstream_head(self, client: _Client, req: Request) -> bytes:
        xff = req.xff + b", " + client.ip.encode() if req.xff else client.ip.encode()
        parts = [req.method, b" ", req.target, b" HTTP/1.1\r\nHost: ", req.host_value, CRLF]
        parts += [h + CRLF for h in req.headers]
        if req.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if req.upgrade is not None:
            parts += (b"Connection: upgrade\r\nUpgrade: ", req.upgrade, CRLF)
        parts += (b"X-Forwarded-For: ", xff, b"\r\nX-Forwarded-Host: ", req.host_value, CRLF, client.forwarded,
                  CRLF)
        return b"".join(parts)

    async def _exchange(self, client: _Client, req: Request, opts: Options, up: _Upstream, head: bytes,
                        streaming: bool, reused: bool) -> bool:
        """One request/response with one upstream connection. _UpstreamError if it failed before
        the client was told anything; True if the client connection can go on."""
        cw = client.writer
        up.writer.write(head)
        body_task: asyncio.Task[None] | None = None
        if streaming:
            body_task = asyncio.ensure_future(self._send_body(client, req, up, opts))
            body_task.add_done_callback(_consume)
        got_any = False
        up_transport = up.writer.transport
        try:
            while True:
                client.watch(opts.read_timeout, up_transport)
                try:
                    rhead = await up.reader.readuntil(HEAD_END)
                except asyncio.LimitOverrunError:
                    raise _UpstreamError(502, False, "response head too long") from None
                except (asyncio.IncompleteReadError, OSError) as e:
                    if client.expired:
                        raise _UpstreamError(504, False, "timed out waiting for the response") from None
                    failed = body_task.exception() if body_task is not None and body_task.done() else None
                    if failed is not None:
                        if isinstance(failed, ValueError):   # the client's chunked framing was bad
                            cw.write(simple_response(400, keep_alive=False))
                        raise _Abort() from None
                    partial = isinstance(e, asyncio.IncompleteReadError) and e.partial
                    raise _UpstreamError(502, reused and not partial and not got_any and not streaming,
                                         str(e) or "connection closed before a response") from None
                finally:
                    client.unwatch()
                try:
                    resp = parse_response(rhead, req.method)
                except ValueError as e:
                    raise _UpstreamError(502, False, f"bad response: {e}") from None
                got_any = True
                if resp.status == 101:
                    if req.upgrade is None:
                        raise _UpstreamError(502, False, "101 to a request that did not ask to upgrade")
                    await self._upgrade(client, up, resp, body_task)
                    return False
                if resp.status >= 200:
                    break
                if req.version == b"HTTP/1.1":     # interim answers: 100 Continue, 103 Early Hints
                    cw.write(_response_head(resp, []))
        except BaseException:
            if body_task is not None:
                body_task.cancel()
            raise
        # From here on the client is being answered: failures abort the connection.
        client_keep = req.keep_alive
        mode = resp.mode
        http10 = req.version == b"HTTP/1.0"
        if mode == "length":
            extra = [b"Content-Length: " + str(resp.length).encode()]
        elif mode == "none":
            extra = []
        elif http10:                    # chunked or until close: an HTTP/1.0 client reads until close
            extra = []
            client_keep = False
        else:
            extra = [b"Transfer-Encoding: chunked"]
        if not client_keep:
            extra.append(b"Connection: close")
        elif http10:
            extra.append(b"Connection: keep-alive")
        out = _response_head(resp, extra)
        ok = False
        try:
            if mode == "none":
                cw.write(out)
            elif mode == "length" and resp.length <= SMALL_BODY:
                client.watch(opts.read_timeout, up_transport)
                try:
                    data = await up.reader.readexactly(resp.length)
                finally:
                    client.unwatch()
                cw.write(out + data)
            else:
                cw.write(out)
                if mode == "length":
                    await copy_length(up.reader, cw, resp.length, opts.read_timeout, self.client_timeout)
                elif mode == "chunked":
                    await copy_chunked(up.reader, cw, opts.read_timeout, self.client_timeout, dechunk=http10)
                else:
                    await copy_until_close(up.reader, cw, opts.read_timeout, self.client_timeout,
                                           chunk=not http10)
            await self._drain(client)
            ok = True
        finally:
            if not ok:
                if body_task is not None:
                    body_task.cancel()
                up.abort()
        if body_task is not None:
            if not body_task.done():
                # The backend answered before the whole body came: the rest is unread.
                body_task.cancel()
                up.abort()
                return False
            if body_task.exception() is not None:
                up.abort()
                return False
        if resp.close or mode == "close":
            up.close()
        else:
            self.pool.put(up)
        return client_keep

    async def _send_body(self, client: _Client, req: Request, up: _Upstream, opts: Options) -> None:
        try:
            if req.chunked:
                await copy_chunked(client.reader, up.writer, self.client_timeout, opts.send_timeout)
            else:
                await copy_length(client.reader, up.writer, req.length, self.client_timeout, opts.send_timeout)
            async with asyncio.timeout(opts.send_timeout):
                await up.writer.drain()
        except asyncio.CancelledError:
            raise
        except BaseException:
            # The client stopped sending (or the backend stopped reading): the exchange is over.
            up.abort()
            raise

    async def _upgrade(self, client: _Client, up: _Upstream, resp: Response,
                       body_task: asyncio.Task[None] | None) -> None:
        if body_task is not None:
            body_task.cancel()
        extra = [b"Connection: Upgrade"]
        if resp.upgrade is not None:
            extra.append(b"Upgrade: " + resp.upgrade)
        client.writer.write(_response_head(resp, extra))
        try:
            await self._drain(client)
            await tunnel(client.reader, client.writer, up.reader, up.writer)
        finally:
            up.close()


def _consume(task: asyncio.Task[None]) -> None:
    # A body task's failure is acted on where it matters; here it is only marked as seen.
    if not task.cancelled():
        task.exception()


def _strip_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        return host[:end + 1] if end > 0 else host
    return host.partition(":")[0]


def _response_head(resp: Response, extra: list[bytes]) -> bytes:
    return b"\r\n".join([b"HTTP/1.1 " + resp.status_line, *resp.headers, *extra]) + HEAD_END


def _ports(srv: asyncio.Server) -> list[int]:
    out = []
    for s in srv.sockets:
        name = s.getsockname()
        if s.family in (socket.AF_INET, socket.AF_INET6) and name[1] not in out:
            out.append(name[1])
    return out
