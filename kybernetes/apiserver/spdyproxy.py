"""SPDY/3.1 upgrades of pods/exec, pods/attach and pods/portforward, bridged to the kubelet's WebSockets.

kubectl before 1.30 (exec, attach) and 1.31 (port-forward), and newer kubectl
whose WebSocket attempt failed, send ``Connection: Upgrade``, ``Upgrade:
SPDY/3.1`` and the ``X-Stream-Protocol-Version`` values they speak. Our kubelets
speak WebSockets only (kubelet/server.py), so here the API server ends the SPDY
connection itself. proxy.py has already checked the pod and container, so those
errors still reach the client as metav1.Status, and so do the kubelet's refusals
except in terminal sessions (see :func:`relay_remotecommand`).

* negotiation is upstream's (httpstream.Handshake): the first protocol in the
  client's list that we support, echoed in ``X-Stream-Protocol-Version`` on the
  101; none in common is a 403 naming ours in ``X-Accepted-Stream-Protocol-Versions``.
* exec/attach: the client opens one stream per ``streamType`` (error, stdin,
  stdout, stderr, resize), which are translated to the kubelet's channel
  protocol (v5 when the kubelet agrees, so stdin's FIN becomes the CLOSE signal):
  stdin -> channel 0, channels 1 and 2 -> stdout and stderr, channel 3 (a
  metav1.Status) -> the error stream (as JSON for v4/v5, as its message for
  older protocols), resize JSON -> channel 4. When the kubelet closes, every
  stream is half-closed, then GOAWAY: kubectl reads stdout and stderr to their
  end, then the error stream, and exits with the command's exit code.
* port-forward: the kubelet already speaks SPDY inside its WebSocket tunnel
  ("SPDY/3.1+portforward.k8s.io"), so the client's bytes are relayed unchanged.

Once the 101 is sent the connection is no longer HTTP: aiohttp's hook for an
upgraded connection's parser (the one its WebSockets use) gets us the raw bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from ..api.errors import StatusError
from ..streaming import spdy

log = logging.getLogger("kybernetes.apiserver.spdy")

HEADER_PROTOCOL = "X-Stream-Protocol-Version"
HEADER_ACCEPTED = "X-Accepted-Stream-Protocol-Versions"

V5, V4, V3, V2, V1 = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io", "v2.channel.k8s.io",
                      "channel.k8s.io")
# What we accept over SPDY, as upstream's kubelet; v5 differs from v4 only over WebSockets.
REMOTECOMMAND_PROTOCOLS = (V5, V4, V3, V2, V1)
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io",)
# What we ask of the kubelet.
KUBELET_REMOTECOMMAND_PROTOCOLS = (V5, V4)
KUBELET_PORTFORWARD_PROTOCOLS = ("SPDY/3.1+portforward.k8s.io",)

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")

# Upstream's kubelet waits this long for the client's streams (streaming connection defaults).
STREAM_CREATION_TIMEOUT = 30.0
# How long a terminal session waits for the client's first resize before starting the command.
FIRST_RESIZE_TIMEOUT = 1.0
# After our GOAWAY, how long the client gets to hang up before we do.
CLOSE_TIMEOUT = 5.0
# Bytes read from the client and not yet relayed before we stop reading from it.
READ_LIMIT = 1 << 20


# Opens the kubelet's WebSocket (raising StatusError when the kubelet refuses).
Connect = Callable[[], Awaitable[aiohttp.ClientWebSocketResponse]]


class NegotiationError(StatusError):
    """A failed protocol negotiation; ``headers`` go on the error response."""

    def __init__(self, code: int, reason: str, message: str, headers: list[tuple[str, str]]) -> None:
        super().__init__(code, reason, message)
        self.headers = headers


def is_spdy(request: web.Request) -> bool:
    return "spdy/3.1" in request.headers.get("Upgrade", "").lower()


def negotiate(request: web.Request, supported: tuple[str, ...]) -> str:
    """The first protocol in the client's list that we support (raises NegotiationError)."""
    offered = [p.strip() for h in request.headers.getall(HEADER_PROTOCOL, []) for p in h.split(",") if p.strip()]
    if not offered:
        raise NegotiationError(400, "BadRequest", f"unable to upgrade: {HEADER_PROTOCOL} is required", [])
    for p in offered:
        if p in supported:
            return p
    raise NegotiationError(
        403, "Forbidden", "unable to upgrade: unable to negotiate protocol: client supports "
        f"[{' '.join(offered)}], server accepts [{' '.join(supported)}]",
        [(HEADER_ACCEPTED, p) for p in supported])


# -- the connection after the 101 ------------------------------------------------------------


class Upgraded:
    """The client's connection once switched to SPDY: raw bytes in and out.

    aiohttp hands an upgraded connection's bytes to a parser object set on its
    protocol (``feed_data``/``feed_eof``); this one queues them for :meth:`read`,
    pausing the socket when the reader falls behind.
    """

    def __init__(self, request: web.Request) -> None:
        self._transport = request.transport
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self.response: web.StreamResponse | None = None

    # aiohttp's payload-parser interface
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if data:
            self._chunks.append(bytes(data))
            self._size += len(data)
            if self._size > READ_LIMIT and not self._paused and self._transport is not None:
                with contextlib.suppress(AttributeError, RuntimeError):
                    self._transport.pause_reading()
                    self._paused = True
            self._wake()
        return False, b""

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self) -> bytes:
        """The next bytes from the client; b"" when it has closed the connection."""
        while not self._chunks:
            if self._eof:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = self._chunks.popleft()
        self._size -= len(data)
        if self._paused and self._size <= READ_LIMIT // 2 and self._transport is not None:
            with contextlib.suppress(AttributeError, RuntimeError):
                self._transport.resume_reading()
                self._paused = False
        return data

    async def write(self, data: bytes) -> None:
        assert self.response is not None
        await self.response.write(data)


async def upgrade(request: web.Request, protocol: str) -> Upgraded:
    """Answer 101 Switching Protocols to SPDY/3.1 with the negotiated protocol and take the connection."""
    if request.body_exists:
        await request.read()
    conn = Upgraded(request)
    # Before the 101: the client may start sending frames the moment it sees it.
    request.protocol.set_parser(conn)  # type: ignore[arg-type]
    resp = web.StreamResponse(status=101, headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1",
                                                   HEADER_PROTOCOL: protocol})
    resp.force_close()  # when we are done, so is the connection
    await resp.prepare(request)
    conn.response = resp
    return conn


async def _close_upstream(ws: aiohttp.ClientWebSocketResponse) -> None:
    if not ws.closed:
        with contextlib.suppress(Exception):
            await ws.close()


async def _finish(tasks: list[asyncio.Task]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t


# -- port-forward ---------------------------------------------------------------------------


async def relay_portforward(request: web.Request, upstream: aiohttp.ClientWebSocketResponse,
                            protocol: str) -> web.StreamResponse:
    """The client's SPDY bytes into the kubelet's tunnel and back, unchanged."""
    tasks: list[asyncio.Task] = []
    try:
        conn = await upgrade(request, protocol)

        async def to_kubelet() -> None:
            while data := await conn.read():
                await upstream.send_bytes(data)

        async def to_client() -> None:
            async for msg in upstream:
                if msg.type != WSMsgType.BINARY:
                    return
                await conn.write(msg.data)

        tasks = [asyncio.create_task(to_kubelet()), asyncio.create_task(to_client())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        assert conn.response is not None
        return conn.response
    finally:
        await _finish(tasks)
        await _close_upstream(upstream)


# -- exec and attach ----------------------------------------------------------------------------


async def relay_remotecommand(request: web.Request, connect: Connect, protocol: str, *,
                              stdin: bool, stdout: bool, stderr: bool, tty: bool) -> web.StreamResponse:
    """An exec or attach session: SPDY streams on the client's side, channels on the kubelet's.

    ``connect`` opens the kubelet's WebSocket, which starts the command. Without a
    terminal that happens before the 101, so the kubelet's refusal is still an HTTP
    error. With one, only once the client's streams and its first resize are in
    (as upstream starts the command only after the streams): the terminal then has
    kubectl's size from the start, and a refusal goes on the error stream.
    """
    upstream = None if tty else await connect()
    rc = None
    try:
        conn = await upgrade(request, protocol)
        rc = _RemoteCommand(conn, upstream, connect, protocol, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
        await rc.run()
        assert conn.response is not None
        return conn.response
    finally:
        upstream = rc.upstream if rc is not None else upstream
        if upstream is not None:
            await _close_upstream(upstream)


class _RemoteCommand:
    def __init__(self, conn: Upgraded, upstream: aiohttp.ClientWebSocketResponse | None, connect: Connect,
                 protocol: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
        self.conn = conn
        self.upstream = upstream
        self.connect = connect
        self.protocol = protocol
        self.session = spdy.Session(conn.write, self._on_stream)
        self.streams: dict[str, spdy.Stream] = {}
        # Upstream's count: error, each requested stream (no stderr with a tty), resize from v3 on.
        stderr = stderr and not tty
        self.expected = 1 + stdin + stdout + stderr + (tty and protocol not in (V2, V1))
        self.ready = asyncio.Event()

    def _on_stream(self, st: spdy.Stream) -> None:
        kind = st.header("streamtype")
        if kind not in STREAM_TYPES or kind in self.streams:
            log.debug("ignoring an unexpected %r stream", kind)
            return
        self.streams[kind] = st
        if len(self.streams) >= self.expected:
            self.ready.set()

    async def run(self) -> None:
        reader = asyncio.create_task(self._read_client())
        ready = asyncio.create_task(self.ready.wait())
        tasks = [reader, ready]
        try:
            done, _ = await asyncio.wait({reader, ready}, timeout=STREAM_CREATION_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
            if ready not in done:
                # The client went away, or never opened its streams: the kubelet's session ends with ours.
                return
            first_size = b""
            if self.upstream is None:
                resize = self.streams.get("resize")
                if resize is not None:
                    # kubectl sends the terminal's size as soon as its streams are up.
                    with contextlib.suppress(asyncio.TimeoutError):
                        first_size = await asyncio.wait_for(resize.read(), FIRST_RESIZE_TIMEOUT)
                if reader.done():
                    return  # the client is gone: start nothing
                try:
                    self.upstream = await self.connect()
                except StatusError as e:
                    if "error" in self.streams:
                        await self.streams["error"].write(self._error_payload(e.to_json()))
                    await self._end(reader)
                    return
            if "stdin" in self.streams:
                tasks.append(asyncio.create_task(self._stdin(self.streams["stdin"])))
            if "resize" in self.streams:
                tasks.append(asyncio.create_task(self._resize(self.streams["resize"], first_size)))
            output = asyncio.create_task(self._from_kubelet())
            tasks.append(output)
            done, _ = await asyncio.wait({reader, output}, return_when=asyncio.FIRST_COMPLETED)
            if output in done:
                # The kubelet is done (it has sent the exit status).
                await self._end(reader)
        finally:
            await _finish(tasks)

    async def _end(self, reader: asyncio.Task) -> None:
        """Every stream ends, then the connection."""
        for kind in ("stdout", "stderr", "error", "stdin", "resize"):
            st = self.streams.get(kind)
            if st is not None:
                await st.close()
        await self.session.goaway()
        # The client hangs up once it has read everything; closing first could lose its last bytes.
        await asyncio.wait({reader}, timeout=CLOSE_TIMEOUT)

    async def _read_client(self) -> None:
        try:
            while data := await self.conn.read():
                await self.session.feed(data)
        except spdy.ProtocolError as e:
            log.debug("exec: %s", e)
        finally:
            self.session.feed_eof()

    async def _send_kubelet(self, channel: int, data: bytes) -> None:
        assert self.upstream is not None
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.upstream.send_bytes(bytes((channel,)) + data)

    async def _stdin(self, st: spdy.Stream) -> None:
        assert self.upstream is not None
        while data := await st.read():
            await self._send_kubelet(STDIN, data)
        if self.upstream.protocol == V5:
            # The client closed stdin (kubectl does at EOF): the v5 CLOSE signal closes the process's stdin.
            await self._send_kubelet(CLOSE, bytes((STDIN,)))

    async def _resize(self, st: spdy.Stream, first: bytes = b"") -> None:
        # A stream of JSON objects, {"Width": 80, "Height": 24}, one after another.
        decoder, buf = json.JSONDecoder(), ""
        data = first
        while data or (data := await st.read()):
            buf += data.decode(errors="replace")
            data = b""
            while True:
                buf = buf.lstrip()
                try:
                    size, end = decoder.raw_decode(buf)
                except ValueError:
                    break
                buf = buf[end:]
                if isinstance(size, dict):
                    await self._send_kubelet(RESIZE, orjson.dumps(size))

    async def _from_kubelet(self) -> None:
        assert self.upstream is not None
        async for msg in self.upstream:
            if msg.type == WSMsgType.BINARY:
                data = msg.data
            elif msg.type == WSMsgType.TEXT:
                data = msg.data.encode()
            else:
                return
            if not data:
                continue
            channel, payload = data[0], data[1:]
            kind = {STDOUT: "stdout", STDERR: "stderr", ERROR: "error"}.get(channel)
            st = self.streams.get(kind) if kind else None
            if st is None:
                continue  # a stream the client did not open: dropped
            if channel == ERROR:
                payload = self._error_payload(payload)
            if payload:
                await st.write(payload)

    def _error_payload(self, status: bytes) -> bytes:
        """The kubelet's metav1.Status as this protocol wants it on the error stream."""
        if self.protocol in (V5, V4):
            return status
        # v1-v3: the error's message as text, nothing for success.
        try:
            st = orjson.loads(status)
        except orjson.JSONDecodeError:
            return status
        if not isinstance(st, dict) or st.get("status") == "Success":
            return b""
        return str(st.get("message") or "error executing command").encode()
