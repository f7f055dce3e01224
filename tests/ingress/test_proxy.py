"""The ingress proxy alone: HTTP/1.1 parsing and framing, keep-alive and pooling, failover, and
scripted upstreams that misbehave. The route table is built by hand; nothing talks to an API."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kybernetes.ingress.proxy import HTTPError, IngressProxy, parse_request, parse_response
from kybernetes.ingress.routing import Backend, Options, Route, RouteTable
from kybernetes.ingress.tls import CertStore
from tests.ingress.conftest import RawConn

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# ---------------------------------------------------------------------- parsing

def test_parse_request_framing_and_hop_by_hop_headers() -> None:
    req = parse_request(b"POST /a?b=1 HTTP/1.1\r\nHost: Example.com\r\nContent-Length: 5\r\n"
                        b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Other: 2\r\n\r\n")
    assert (req.method, req.target, req.path, req.host, req.length, req.chunked, req.keep_alive) == \
        (b"POST", b"/a?b=1", "/a", "Example.com", 5, False, True)
    assert req.headers == [b"X-Other: 2", b"Content-Length: 5"]
    req = parse_request(b"GET http://h.example:81/p HTTP/1.1\r\nHost: ignored\r\n\r\n")
    assert (req.host, req.target) == ("h.example:81", b"/p")
    req = parse_request(b"GET / HTTP/1.0\r\n\r\n")
    assert not req.keep_alive and req.host == ""
    assert parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    req = parse_request(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert req.upgrade == b"websocket"
    assert parse_request(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n").upgrade is None
    req = parse_request(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    assert req.chunked and b"Transfer-Encoding: gzip" in req.headers
    assert parse_request(b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n").length == 3


@pytest.mark.parametrize("head", [
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",   # smuggling
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\nTransfer-Encoding: chunked\r\n\r\n",                  # a bare LF
    b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\0\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad(name): a\r\n\r\n",
    b"GET /  HTTP/1.1\r\n\r\n",
    b"GET nope HTTP/1.1\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
])
def test_parse_request_rejects_ambiguous_or_malformed_heads(head: bytes) -> None:
    with pytest.raises(HTTPError) as e:
        parse_request(head)
    assert e.value.status in (400, 505)


def test_parse_response_framing() -> None:
    r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX: y\r\n\r\n", b"GET")
    assert (r.status, r.mode, r.length, r.close, r.headers) == (200, "length", 10, False, [b"X: y"])
    assert parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"HEAD").mode == "none"
    assert parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", b"GET").mode == "none"
    assert parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", b"GET").mode == "none"
    r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET")
    assert r.mode == "chunked" and not r.close
    r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", b"GET")
    assert r.mode == "close" and r.close
    assert parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", b"GET").close
    assert parse_response(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", b"GET").close
    assert parse_response(b"HTTP/1.1 200\r\n\r\n", b"GET").status_line == b"200 OK"
    for bad in (b"HTTP/1.1 2x0 OK\r\n\r\n", b"SPDY 200 OK\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"):
        with pytest.raises(ValueError):
            parse_response(bad, b"GET")


# ---------------------------------------------------------------------- against scripted upstreams

class Upstream:
    """A TCP server on 127.0.0.1 running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.connections = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Upstream:
        async def run(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            task = asyncio.current_task()
            assert task is not None
            self.tasks.add(task)
            self.writers.add(w)
            try:
                await self.handler(r, w)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.writers.discard(w)
                self.tasks.discard(task)
                w.close()

        self.server = await asyncio.start_server(run, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        # End the handlers by closing their sockets, not by cancelling them (Python 3.11's
        # start_server would log a cancelled handler as an error).
        for w in list(self.writers):
            w.transport.abort()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=2)


async def read_request(r: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request with a Content-Length body (or none)."""
    head = await r.readuntil(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    return head, await r.readexactly(n) if n else b""


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class ProxyEnv:
    def __init__(self) -> None:
        self.proxy = IngressProxy(CertStore(), http=[("127.0.0.1", 0)])
        self.upstreams: list[Upstream] = []

    async def upstream(self, handler: Handler) -> Upstream:
        u = await Upstream(handler).start()
        self.upstreams.append(u)
        return u

    def route(self, *endpoints: tuple[str, int], **opts: Any) -> None:
        table = RouteTable()
        table.default = Route(Backend("default/test:80", tuple(endpoints)), "default/test", Options(**opts))
        self.proxy.table = table

    async def conn(self) -> RawConn:
        return await RawConn.open(self.proxy.http_ports[0])


@pytest.fixture
async def px() -> AsyncIterator[ProxyEnv]:
    e = ProxyEnv()
    await e.proxy.start()
    try:
        yield e
    finally:
        await e.proxy.stop()
        for u in e.upstreams:
            await u.stop()


async def keepalive_echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        head, body = await read_request(r)
        path = head.split(b" ")[1]
        w.write(ok(path + b":" + body))
        await w.drain()


async def test_pipelined_requests_and_pooled_upstream(px: ProxyEnv) -> None:
    u = await px.upstream(keepalive_echo)
    px.route(("127.0.0.1", u.port))
    c = await px.conn()
    await c.send(b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5)) +
                 b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    for i in range(5):
        assert (await c.response())[2] == b"/%d:" % i
    assert (await c.response())[2] == b"/p:abc"
    await c.close()
    c = await px.conn()
    assert (await c.request("h", "/again"))[2] == b"/again:"
    await c.close()
    assert u.connections == 1 and px.proxy.pool.idle_count() == 1


async def test_http10_client_gets_a_dechunked_body_and_close(px: ProxyEnv) -> None:
    async def chunked(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n"
                    b"0\r\nX-Trailer: t\r\n\r\n")
            await w.drain()

    u = await px.upstream(chunked)
    px.route(("127.0.0.1", u.port))
    c = await px.conn()
    await c.send(b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    status, headers, body = await c.response()
    assert (status, body) == (200, b"hello world")
    assert "transfer-encoding" not in headers and headers["connection"] == "close"
    assert await asyncio.wait_for(c.reader.read(), 5) == b""
    await c.close()
    # An HTTP/1.1 client gets the chunks (and trailer) as they came.
    c = await px.conn()
    await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await c.reader.readuntil(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    rest = await asyncio.wait_for(c.reader.readuntil(b"X-Trailer: t\r\n\r\n"), 5)
    assert rest == b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    await c.close()


async def test_close_delimited_upstream_is_chunked_to_the_client(px: ProxyEnv) -> None:
    async def until_close(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(b"part two")
        await w.drain()

    u = await px.upstream(until_close)
    px.route(("127.0.0.1", u.port))
    c = await px.conn()
    for _ in range(2):   # the client connection survives; the upstream one does not
        status, headers, body = await c.request("h", "/")
        assert (status, body, headers["transfer-encoding"]) == (200, b"part one, part two", "chunked")
    await c.close()
    assert u.connections == 2 and px.proxy.pool.idle_count() == 0


async def test_chunked_request_body_and_expect_100_continue(px: ProxyEnv) -> None:
    got: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            if b"100-continue" in head:
                w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await read_request_body_length(r, head)
            else:
                assert b"Transfer-Encoding: chunked" in head
                body = await r.readuntil(b"0\r\nX-T: 1\r\n\r\n")
            got.append(body)
            w.write(ok(b"got"))
            await w.drain()

    u = await px.upstream(handler)
    px.route(("127.0.0.1", u.port))
    c = await px.conn()
    await c.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    await asyncio.sleep(0.01)
    await c.send(b"2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
    assert (await c.response())[2] == b"got"
    assert got[0] == b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    await c.send(b"PUT / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = await c.response()
    assert status == 100
    await c.send(b"data")
    assert (await c.response())[:1] == (200,) and got[1] == b"data"
    await c.close()


async def test_bad_chunked_framing(px: ProxyEnv) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /bad-response"):
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0x2\r\nno\r\n0\r\n\r\n")
        await r.read()

    u = await px.upstream(handler)
    px.route(("127.0.0.1", u.port))
    for size in (b"0x3", b"+3", b"-3", b"3_0", b""):
        c = await px.conn()
        await c.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabc\r\n")
        assert (await c.response())[0] == 400, size
        await c.close()
    # A bad chunk from the backend after the head went out: the client connection is cut short.
    c = await px.conn()
    await c.send(b"GET /bad-response HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await c.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    rest = await asyncio.wait_for(c.reader.read(), 5)
    assert rest == b"2\r\nok\r\n"       # and no terminating chunk: the client sees the body was cut
    await c.close()


async def read_request_body_length(r: asyncio.StreamReader, head: bytes) -> bytes:
    n = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await r.readexactly(n)


async def test_a_pooled_connection_the_backend_closed_is_retried(px: ProxyEnv) -> None:
    async def one_shot(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(ok())        # keep-alive by the headers, then closes anyway (as idle timeouts do)
        await w.drain()

    u = await px.upstream(one_shot)
    px.route(("127.0.0.1", u.port))
    c = await px.conn()
    for _ in range(4):
        assert (await c.request("h", "/"))[0] == 200
    await c.close()
    assert u.connections == 4


async def test_failover_to_the_next_endpoint_and_bad_upstreams(px: ProxyEnv) -> None:
    u = await px.upstream(keepalive_echo)
    closed = await px.upstream(keepalive_echo)
    await closed.stop()
    px.route(("127.0.0.1", closed.port), ("127.0.0.1", u.port))
    c = await px.conn()
    for _ in range(4):
        assert (await c.request("h", "/"))[0] == 200   # the refused endpoint is skipped each time
    await c.close()

    async def garbage(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"NOT HTTP AT ALL\r\n\r\n")
        await w.drain()

    async def reset(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-")
        await w.drain()
        w.transport.abort()

    for handler in (garbage, reset):
        bad = await px.upstream(handler)
        px.route(("127.0.0.1", bad.port))
        c = await px.conn()
        assert (await c.request("h", "/"))[0] == 502
        await c.close()
    px.route()
    c = await px.conn()
    assert (await c.request("h", "/"))[0] == 503
    await c.close()


async def test_read_timeout_is_504_and_head_requests(px: ProxyEnv) -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await read_request(r)
        await r.read()   # never answers; ends when the connection does

    async def head(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            await read_request(r)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            await w.drain()

    s = await px.upstream(silent)
    px.route(("127.0.0.1", s.port), read_timeout=0.2)
    c = await px.conn()
    assert (await c.request("h", "/"))[0] == 504
    await c.close()
    h = await px.upstream(head)
    px.route(("127.0.0.1", h.port))
    c = await px.conn()
    for _ in range(2):
        status, headers, body = await c.request("h", "/", method="HEAD")
        assert (status, headers["content-length"], body) == (200, "1000", b"")
    await c.close()


async def test_connect_timeout_is_504(px: ProxyEnv) -> None:
    # A listener that never accepts, with its queue filled: further connects wait for a SYN-ACK forever.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            f = socket.socket()
            f.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                f.connect(("127.0.0.1", port))
            fillers.append(f)
        await asyncio.sleep(0.05)
        px.route(("127.0.0.1", port), connect_timeout=0.2)
        c = await px.conn()
        loop = asyncio.get_running_loop()
        t = loop.time()
        assert (await c.request("h", "/"))[0] == 504
        assert loop.time() - t < 2
        await c.close()
    finally:
        for f in fillers:
            f.close()
        lsock.close()


async def test_own_answers_and_limits(px: ProxyEnv) -> None:
    px.proxy.table = RouteTable()
    c = await px.conn()
    assert (await c.request("h", "/"))[0] == 404
    assert (await c.request("h", "/"))[0] == 404           # keep-alive after our own 404
    status, headers, _ = await c.request("h", "/", method="POST", body=b"unread")
    assert status == 404 and headers["connection"] == "close"
    await c.close()
    c = await px.conn()
    await c.send(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
    assert (await c.response())[0] == 431
    await c.close()
    c = await px.conn()
    await c.send(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert (await c.response())[0] == 400
    await c.close()


async def test_generic_upgrade_is_a_tunnel_with_half_close(px: ProxyEnv) -> None:
    async def upgrade(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head, _ = await read_request(r)
        assert b"Upgrade: raw-echo" in head and b"Connection: upgrade" in head
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: raw-echo\r\n\r\n")
        total = b""
        while data := await r.read(65536):
            total += data
            w.write(data.upper())
            await w.drain()
        w.write(b"[bye %d]" % len(total))
        await w.drain()

    u = await px.upstream(upgrade)
    px.route(("127.0.0.1", u.port))
    c = await px.conn()
    await c.send(b"GET /tunnel HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: raw-echo\r\n\r\nearly ")
    status, headers, _ = await c.response()
    assert status == 101 and headers["upgrade"] == "raw-echo"
    await c.send(b"bytes")
    got = b""
    while len(got) < len(b"EARLY BYTES"):
        got += await asyncio.wait_for(c.reader.read(100), 5)
    assert got == b"EARLY BYTES"
    c.writer.write_eof()    # half-close: the backend still answers
    assert await asyncio.wait_for(c.reader.read(), 5) == b"[bye 11]"
    await c.close()


async def test_stop_closes_client_connections() -> None:
    proxy = IngressProxy(CertStore(), http=[("127.0.0.1", 0)])
    await proxy.start()
    c = await RawConn.open(proxy.http_ports[0])
    await c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await c.response())[0] == 404
    await proxy.stop()
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(c.reader.read(), 5) == b""
    await c.close()
