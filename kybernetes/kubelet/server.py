"""The kubelet's streaming server: container logs, exec and attach, over HTTPS.

Only the API server talks to it (as upstream's kubelet API on port 10250):
``kubectl logs`` and ``kubectl exec`` reach the API server, which proxies the
request here (see apiserver/proxy.py). Endpoints, with upstream's paths::

    GET /containerLogs/{ns}/{pod}/{container}?follow&tailLines&sinceSeconds&sinceTime
        &timestamps&limitBytes&previous      -> the log as text/plain, streamed
    GET /exec/{ns}/{pod}/{container}?command=..&command=..&input&output&error&tty
    GET /attach/{ns}/{pod}/{container}?input&output&error&tty
                                             -> WebSocket, "v5.channel.k8s.io"
                                                or "v4.channel.k8s.io"

Exec and attach use the channel protocol kubectl speaks over WebSockets: every
binary message starts with a channel byte (0 stdin, 1 stdout, 2 stderr, 3 error,
4 resize; v5 adds 255 "close", whose payload names the channel the client is done
writing). When the process ends the server writes a metav1.Status on channel 3
(with an ExitCode cause for a non-zero exit, which kubectl turns into its own
exit code) and closes the socket normally, which is how the client sees EOF.

Authentication is by client certificate signed by the cluster CA (the server's
SSL context must require one); only the configured identities (by default the
API server's kubelet client and system:masters) are let through.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import ssl
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import orjson
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from kybernetes.runtime.base import ContainerState, Runtime, RuntimeServiceError, StreamHandle
from kybernetes.kubelet.stats import StatsProvider
from kybernetes.runtime.logs import LogOptions, parse_timestamp, read_logs
from kybernetes.apiserver.pki import peer_identity
from kybernetes.streaming import spdy

log = logging.getLogger("kybernetes.kubelet.server")

# The channel protocols, newest first: v5 lets the client half-close stdin.
V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
# The first channel protocol: no status on the error channel, only an error's text (old clients,
# the 1.20 e2e suite's websocket tests).
V1 = "channel.k8s.io"
PROTOCOLS = (V5, V4, V1)
# How long an exec or attach with a terminal waits for the client's first resize.
FIRST_RESIZE_WAIT = 0.5

STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

# Who may call the kubelet: the API server's client certificate, and cluster admins.
APISERVER_CLIENT_CN = "kube-apiserver-kubelet-client"
DEFAULT_ALLOWED_USERS = frozenset({APISERVER_CLIENT_CN})
DEFAULT_ALLOWED_GROUPS = frozenset({"system:masters"})


class KubeletLike(Protocol):
    """What the server needs from the kubelet: its runtime, a container lookup, a pod dialer.

    ``find_container`` (plain or async) returns (container_id or None when the
    container has not started, log path or None, previous instance's log path or
    None); it returns None or raises LookupError when the pod or container is unknown.
    ``port_forward`` connects to a pod's port from where the pod's network is.
    """

    runtime: Runtime

    def find_container(self, namespace: str, pod: str, container: str) -> Any: ...

    async def port_forward(self, namespace: str, pod: str, port: int) -> tuple[asyncio.StreamReader,
                                                                              asyncio.StreamWriter]: ...


class HTTPError(Exception):
    """An error answered as a metav1.Status with upstream's reason for the code."""

    REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
               500: "InternalError"}

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        body = status(self.code, self.REASONS.get(self.code, "InternalError"), self.message) + b"\n"
        # The message in a header too: a WebSocket client sees a failed handshake's headers, not its body.
        headers = {"X-Kubelet-Error": self.message.encode("ascii", "backslashreplace").decode()}
        return web.Response(status=self.code, body=body, content_type="application/json", headers=headers)


def status(code: int, reason: str, message: str, details: dict | None = None) -> bytes:
    """A metav1.Status with status Failure."""
    st: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": message, "reason": reason}
    if details:
        st["details"] = details
    st["code"] = code   # upstream's field order
    return orjson.dumps(st)


def exit_status(code: int | None, cmd: list[str]) -> bytes:
    """The error-channel message that ends an exec: Success, or the exit code as a cause."""
    if not code:
        return orjson.dumps({"metadata": {}, "status": "Success"})
    # kubectl reads reason NonZeroExitCode and the ExitCode cause to exit with the same code.
    return orjson.dumps({
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {cmd}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    })


def _flag(query: Any, *names: str) -> bool:
    """A boolean query parameter under any of its names (kubelet and API server spell them differently)."""
    for n in names:
        v = query.get(n)
        if v is not None:
            return v.lower() in ("1", "true", "")
    return False


def log_options(query: Any, now: float | None = None) -> LogOptions:
    """LogOptions from upstream's query parameters; bad values are a 400 as upstream."""
    opts = LogOptions(follow=_flag(query, "follow"), timestamps=_flag(query, "timestamps"))
    try:
        if query.get("tailLines") is not None:
            opts.tail_lines = max(int(query["tailLines"]), 0)
        if query.get("limitBytes") is not None:
            opts.limit_bytes = int(query["limitBytes"])
            if opts.limit_bytes < 1:
                raise HTTPError(400, "limitBytes: must be greater than 0")
        if query.get("sinceSeconds") is not None:
            secs = int(query["sinceSeconds"])
            if secs < 1:
                raise HTTPError(400, "sinceSeconds: must be greater than 0")
            opts.since_time = (now if now is not None else time.time()) - secs
        elif query.get("sinceTime"):
            opts.since_time = parse_timestamp(query["sinceTime"])
    except ValueError as e:
        raise HTTPError(400, f"invalid log options: {e}") from None
    return opts


class KubeletServer:
    """The kubelet's HTTPS server for logs, exec and attach."""

    def __init__(self, kubelet: KubeletLike, host: str, port: int, ssl_context: ssl.SSLContext | None, *,
                 allowed_users: Iterable[str] = DEFAULT_ALLOWED_USERS,
                 allowed_groups: Iterable[str] = DEFAULT_ALLOWED_GROUPS) -> None:
        """ssl_context None serves plain HTTP with no authentication (tests and local debugging only)."""
        self.kubelet = kubelet
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.allowed_users = frozenset(allowed_users)
        self.allowed_groups = frozenset(allowed_groups)
        self._runner: web.AppRunner | None = None
        self._sessions: set[asyncio.Task] = set()
        self._stats: StatsProvider | None = None

    # -- lifecycle ------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self.container_logs)
        app.router.add_get("/exec/{ns}/{pod}/{container}", self.exec)
        app.router.add_post("/exec/{ns}/{pod}/{container}", self.exec)
        app.router.add_get("/attach/{ns}/{pod}/{container}", self.attach)
        app.router.add_post("/attach/{ns}/{pod}/{container}", self.attach)
        app.router.add_get("/portForward/{ns}/{pod}", self.port_forward)
        app.router.add_post("/portForward/{ns}/{pod}", self.port_forward)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/stats/summary", self._stats_summary)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context,
                           reuse_address=True)
        await site.start()
        if self.port == 0:
            # Port 0 asks the OS for one; report it so the Node object can advertise it.
            server = site._server
            if server is not None and server.sockets:  # type: ignore[union-attr]
                self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("kubelet server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            # Shutdown closes open websockets and cancels the handlers, which close their sessions.
            await self._runner.cleanup()
            self._runner = None

    # -- auth -----------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler) -> web.StreamResponse:
        if self.ssl_context is not None:
            who = peer_identity(request)
            if who is None:
                return HTTPError(401, "Unauthorized").response()
            user, groups = who
            if user not in self.allowed_users and not self.allowed_groups.intersection(groups):
                return HTTPError(403, f'user "{user}" cannot access the kubelet API').response()
        try:
            return await handler(request)
        except HTTPError as e:
            return e.response()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _stats_summary(self, request: web.Request) -> web.Response:
        """Resource usage of the node and its pods, which the API server's metrics API reads."""
        if self._stats is None:
            name = getattr(self.kubelet, "node_name", None) or os.uname().nodename
            self._stats = StatsProvider(self.kubelet.runtime, name)
        return web.json_response(await self._stats.summary())

    # -- lookups --------------------------------------------------------------
    async def _find(self, ns: str, pod: str, container: str) -> tuple[str | None, str | None, str | None]:
        try:
            found = self.kubelet.find_container(ns, pod, container)
            if inspect.isawaitable(found):
                found = await found
        except LookupError:
            found = None
        if not found:
            raise HTTPError(404, f'container "{container}" in pod "{pod}" not found')
        cid, log_path, prev = found
        return cid, log_path, prev

    async def _running(self, cid: str | None) -> bool:
        if cid is None:
            return False
        try:
            st = await self.kubelet.runtime.container_status(cid)
        except RuntimeServiceError:
            return False
        return st.state == ContainerState.RUNNING

    # -- logs -----------------------------------------------------------------
    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        ns, pod, container = (request.match_info[k] for k in ("ns", "pod", "container"))
        opts = log_options(request.query)
        cid, path, prev = await self._find(ns, pod, container)
        if _flag(request.query, "previous"):
            if not prev or not os.path.exists(prev):
                raise HTTPError(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            path, opts.follow = prev, False  # a dead container's log does not grow
        elif not path or (cid is None and not os.path.exists(path)):
            raise HTTPError(400, f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating')

        async def stop() -> bool:
            return not await self._running(cid)

        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        if opts.follow:
            resp.enable_chunked_encoding()
        await resp.prepare(request)
        stream = read_logs(path, opts, stop)
        try:
            async for chunk in stream:
                await resp.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            return resp
        finally:
            await stream.aclose()
        await resp.write_eof()
        return resp

    # -- exec and attach --------------------------------------------------------
    async def exec(self, request: web.Request) -> web.StreamResponse:
        cmd = request.query.getall("command", [])
        if not cmd:
            raise HTTPError(400, "you must specify at least 1 command")
        return await self._stream(request, cmd)

    async def attach(self, request: web.Request) -> web.StreamResponse:
        return await self._stream(request, None)

    async def _stream(self, request: web.Request, cmd: list[str] | None) -> web.StreamResponse:
        ns, pod, container = (request.match_info[k] for k in ("ns", "pod", "container"))
        q = request.query
        want_stdin = _flag(q, "input", "stdin")
        want_stdout = _flag(q, "output", "stdout")
        want_stderr = _flag(q, "error", "stderr")
        tty = _flag(q, "tty")
        if not (want_stdin or want_stdout or want_stderr):
            raise HTTPError(400, "you must specify at least 1 of stdin, stdout, stderr")
        if request.headers.get("Upgrade", "").lower() != "websocket":
            # kubectl falls back to SPDY when the websocket upgrade fails; we only speak websockets.
            raise HTTPError(400, "Upgrade request required: only WebSocket (v5.channel.k8s.io, "
                            "v4.channel.k8s.io) is supported")
        cid, _, _ = await self._find(ns, pod, container)
        if not await self._running(cid):
            raise HTTPError(400, f'container "{container}" in pod "{pod}" is not running')
        assert cid is not None
        ws = web.WebSocketResponse(protocols=PROTOCOLS, autoping=True, max_msg_size=0)
        await ws.prepare(request)
        session = _Session(ws, self.kubelet.runtime, cid, cmd, tty=tty, stdin=want_stdin,
                           stdout=want_stdout, stderr=want_stderr)
        await session.run()
        return ws


    async def port_forward(self, request: web.Request) -> web.StreamResponse:
        ns, pod = request.match_info["ns"], request.match_info["pod"]
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise HTTPError(400, f"Upgrade request required: only WebSocket ({PORTFORWARD_TUNNEL}) is supported")
        async def dial_port(port: int):
            return await self.kubelet.port_forward(ns, pod, port)
        ws = web.WebSocketResponse(protocols=(PORTFORWARD_TUNNEL,), autoping=True, max_msg_size=0)
        await ws.prepare(request)
        if ws.ws_protocol != PORTFORWARD_TUNNEL:
            await ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=b"unsupported protocol")
            return ws
        await _SpdyPortForward(ws, dial_port).run()
        if not ws.closed:
            await ws.close()
        return ws


class _Session:
    """One exec or attach over a channel-protocol websocket."""

    def __init__(self, ws: web.WebSocketResponse, runtime: Runtime, cid: str, cmd: list[str] | None, *,
                 tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
        self.ws = ws
        self.runtime = runtime
        self.cid = cid
        self.cmd = cmd
        self.tty = tty
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.v5 = ws.ws_protocol == V5
        # v4 and v5 report how the command ended as a Status on the error channel; the first
        # protocol (or none negotiated) only ever writes an error's message there.
        self.statuses = ws.ws_protocol in (V4, V5)
        # One frame at a time: output pumps and the final status share the socket.
        self._send_lock = asyncio.Lock()

    async def _send(self, channel: int, data: bytes) -> None:
        async with self._send_lock:
            if not self.ws.closed:
                # A client that went away mid-send is noticed by the reader; output is dropped.
                with contextlib.suppress(ConnectionError):
                    await self.ws.send_bytes(bytes((channel,)) + data)

    async def _receive(self, inbox: asyncio.Queue[WSMessage | None], got: asyncio.Event) -> None:
        try:
            async for msg in self.ws:
                inbox.put_nowait(msg)
                got.set()
        finally:
            inbox.put_nowait(None)
            got.set()

    async def run(self) -> None:
        inbox: asyncio.Queue[WSMessage | None] = asyncio.Queue()
        got = asyncio.Event()
        receiver = asyncio.create_task(self._receive(inbox, got))
        try:
            if self.tty:
                # With a terminal, kubectl's first message is the terminal's size: wait a moment
                # for it, so the command starts with the right size rather than learning it later.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(got.wait(), FIRST_RESIZE_WAIT)
            await self._run(inbox)
        finally:
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
            if not self.ws.closed:
                await self.ws.close()

    async def _run(self, inbox: asyncio.Queue[WSMessage | None]) -> None:
        try:
            if self.cmd is not None:
                handle = await self.runtime.exec(self.cid, self.cmd, tty=self.tty, stdin=self.stdin)
            else:
                handle = await self.runtime.attach(self.cid, stdin=self.stdin)
        except (RuntimeServiceError, OSError) as e:
            what = "executing command in container" if self.cmd is not None else "attaching to container"
            message = f"error {what}: {e}"
            await self._send(ERROR, status(500, "InternalError", message) if self.statuses else message.encode())
            return
        reader = asyncio.create_task(self._read_client(handle, inbox))
        try:
            pumps = [self._pump(handle.stdout, STDOUT if self.stdout else None)]
            if handle.stderr is not None:
                pumps.append(self._pump(handle.stderr, STDERR if self.stderr else None))
            output = asyncio.gather(*pumps)
            # Either the process finishes (its output reaches EOF) or the client goes away.
            done, _ = await asyncio.wait({output, reader}, return_when=asyncio.FIRST_COMPLETED)
            if output in done:
                code = await handle.wait()
                if self.statuses:
                    await self._send(ERROR, exit_status(code, self.cmd or []))
                elif code:
                    await self._send(ERROR, f"command terminated with non-zero exit code: {code}".encode())
            else:
                output.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await output
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await handle.close()

    async def _pump(self, src: asyncio.StreamReader, channel: int | None) -> None:
        while True:
            data = await src.read(32 * 1024)
            if not data:
                return
            if channel is not None:  # a stream the client did not ask for is drained and dropped
                await self._send(channel, data)

    async def _read_client(self, handle: StreamHandle, inbox: asyncio.Queue[WSMessage | None]) -> None:
        while (msg := await inbox.get()) is not None:
            if not await self._handle(handle, msg):
                break
        # The client closed its side (or dropped): nothing more to read.

    async def _handle(self, handle: StreamHandle, msg: WSMessage) -> bool:
        """Act on one client message; False when it ends the client's side."""
        if msg.type == WSMsgType.TEXT:
            # The base64 text protocols are not offered; treat a text frame as raw bytes.
            data = msg.data.encode()
        elif msg.type == WSMsgType.BINARY:
            data = msg.data
        else:
            return False
        if data:
            channel, payload = data[0], data[1:]
            if channel == STDIN and self.stdin:
                if payload:
                    await handle.write_stdin(payload)
            elif channel == RESIZE and self.tty:
                try:
                    size = orjson.loads(payload)
                    handle.resize(int(size.get("Width", 0)), int(size.get("Height", 0)))
                except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError, OSError):
                    log.debug("ignoring a bad resize message %r", payload)
            elif channel == CLOSE and self.v5 and payload[:1] == bytes((STDIN,)) and self.stdin:
                await handle.close_stdin()
        return True


# -- certificates --------------------------------------------------------------


def ensure_serving_cert(pki: Any, cert_path: Path, key_path: Path, hosts: list[str]) -> None:
    """A kubelet serving certificate for ``hosts`` signed by the cluster CA, reusing a valid one.

    Needs the CA key, so this is for a kubelet on the control-plane machine; an
    agent on another machine gets its certificate through the join flow.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
                san.get_values_for_type(x509.DNSName))
            if all(h in have for h in hosts):
                return
        except x509.ExtensionNotFound:
            pass
    from kybernetes.apiserver import pki as pkimod

    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    k = pkimod._key()
    cert = pki._issue(ca, ca_key, k.public_key(), f"system:node:{hosts[0] if hosts else 'kubelet'}",
                      ["system:nodes"], server=True, hosts=hosts)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    pkimod._write(key_path, pkimod._key_pem(k))
    pkimod._write(cert_path, pkimod._cert_pem(cert) + pkimod._cert_pem(ca), 0o644)


def serving_ssl_context(ca_file: str | Path, cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    """TLS for the kubelet server: its certificate, and a required client certificate from the CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # a connection keeps its client certificate
    return ctx


# -- port forwarding: SPDY/3.1 tunnelled in a WebSocket ---------------------------------
#
# kubectl 1.31+ port-forwards over a WebSocket negotiated as "SPDY/3.1+portforward.k8s.io"
# whose binary messages carry a raw SPDY/3.1 byte stream; the API server relays older
# kubectl's plain SPDY connections into the same tunnel. Each forwarded connection is a
# pair of SPDY streams with the same "requestID" header: "streamType: error" (we write a
# message there if the port cannot be reached) and "streamType: data" (the bytes). The
# framing and the session are streaming/spdy.py's.

PORTFORWARD_TUNNEL = "SPDY/3.1+portforward.k8s.io"
# After the pod closes a forwarded connection, how long the client may still send.
FORWARD_CLOSE_GRACE = 1.0


class _SpdyPortForward:
    """The server side of one port-forward connection."""

    def __init__(self, ws: web.WebSocketResponse, dial) -> None:
        self.ws = ws
        self.dial = dial  # async (port) -> (reader, writer)
        self.session = spdy.Session(self._send, self._on_stream)
        self.pairs: dict[str, dict[str, spdy.Stream]] = {}
        self.tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type != WSMsgType.BINARY:
                    break
                try:
                    await self.session.feed(msg.data)
                except spdy.ProtocolError as e:
                    log.debug("port-forward: %s", e)
                    break
                if self.session.goaway_received:
                    await self.ws.close()
        finally:
            self.session.feed_eof()
            for t in list(self.tasks):
                t.cancel()
            for t in list(self.tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _send(self, frame: bytes) -> None:
        if not self.ws.closed:
            await self.ws.send_bytes(frame)

    def _on_stream(self, st: spdy.Stream) -> None:
        rid = st.header("requestid", str(st.id))
        pair = self.pairs.setdefault(rid, {})
        pair[st.header("streamtype")] = st
        if "data" in pair and "error" in pair:
            del self.pairs[rid]
            t = asyncio.create_task(self._forward(pair["error"], pair["data"]))
            self.tasks.add(t)
            t.add_done_callback(self.tasks.discard)

    async def _forward(self, err: spdy.Stream, data: spdy.Stream) -> None:
        port = data.header("port")
        try:
            reader, writer = await self.dial(int(port))
        except (OSError, ValueError) as e:
            await err.write(f"error forwarding port {port} to pod: {e}".encode(), fin=True)
            await data.close()
            return

        async def upstream() -> None:
            while chunk := await data.read():
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        async def downstream() -> None:
            while chunk := await reader.read(32 * 1024):
                await data.write(chunk)
            await data.close()

        up = asyncio.create_task(upstream())
        try:
            await downstream()
            # The pod is done; as upstream's runtimes do, the client's direction gets a moment to
            # finish, then both streams end. kubectl up to 1.30 keeps its local connection open
            # until the error stream ends, so waiting for its FIN could wait forever.
            await asyncio.wait({up}, timeout=FORWARD_CLOSE_GRACE)
            if up.done():
                up.result()
        except (ConnectionError, OSError):
            pass
        finally:
            up.cancel()
            writer.close()
            await data.close()
            await err.close()
