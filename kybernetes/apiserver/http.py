"""The HTTPS front door: aiohttp, TLS, and streaming of watches.

Each HTTP request becomes one transport-independent Request for
APIServer.handle, whose request chain (chain.py) authenticates, authorizes and
serves it. The front door adds only what it alone knows: the TLS client
certificate's identity (``Request.peer``), a way to read the body once the
chain allows it, and, for connection upgrades (exec, attach, port-forward), a
way to take the connection over once the chain has authorized it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time

from aiohttp import web

from ..api import errors
from . import proxy
from .authentication import BootstrapTokenAuth, TokenAuth, impersonate  # noqa: F401 (their old home)
from .chain import CLUSTER_INFO_PATH  # noqa: F401
from .pki import PKI, peer_identity
from .request import Request
from .server import APIServer

log = logging.getLogger("kybernetes.http")


_LARGE_BODY = 1 << 20
_MAX_BODY = 16 * 1024 * 1024
_SLICE = 256 * 1024


async def _write_large(request: web.Request, resp) -> web.StreamResponse:
    """Write a large body (a big list) in slices, waiting for the socket to drain between them.

    Handing TLS megabytes at once makes it encrypt and buffer all of them at
    once, and the heap they leave behind is never given back.
    """
    sr = web.StreamResponse(status=resp.status, headers=resp.headers)
    sr.content_type = resp.content_type.split(";")[0]
    sr.content_length = len(resp.body)
    await sr.prepare(request)
    view = memoryview(resp.body)
    for i in range(0, len(view), _SLICE):
        await sr.write(view[i:i + _SLICE])
    await sr.write_eof()
    return sr


def make_app(api: APIServer, tokens: TokenAuth) -> web.Application:
    """The aiohttp application serving ``api``; ``tokens`` are the static bearer tokens."""
    api.authenticator.tokens = tokens

    async def handler(request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        upgrade = read_body = None
        if proxy.is_upgrade(request):
            # exec/attach/port-forward: once authorized, a WebSocket (or SPDY) relayed to the kubelet.
            async def upgrade(user: str, groups: tuple[str, ...]) -> web.StreamResponse | None:
                return await proxy.handle_upgrade(api, request, user, groups)
        elif request.can_read_body:
            async def read_body() -> bytes:
                try:
                    return await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raise errors.StatusError(413, "RequestEntityTooLarge",
                                             f"Request entity too large: limit is {_MAX_BODY}") from None
        req = Request(request.method, request.rel_url.raw_path, dict(request.query), request.headers, b"",
                      read_body=read_body, user="", groups=(), peer=peer_identity(request),
                      remote=request.remote or "", upgrade=upgrade)
        resp = await api.handle(req)
        if resp.native is not None:
            return resp.native
        if resp.stream is None and len(resp.body) > _LARGE_BODY:
            return await _write_large(request, resp)
        if resp.stream is None:
            out = web.Response(status=resp.status, body=resp.body, headers=resp.headers)
            out.content_type = resp.content_type.split(";")[0]
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s %d %.1fms user=%s", request.method, request.path_qs, resp.status,
                          (time.perf_counter() - t0) * 1000, req.user)
            return out
        sr = web.StreamResponse(status=resp.status, headers=resp.headers)
        sr.content_type = resp.content_type
        sr.enable_chunked_encoding()
        log.debug("WATCH %s user=%s", request.path_qs, req.user)
        try:
            await sr.prepare(request)
            async for chunk in resp.stream:
                await sr.write(chunk)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            close = getattr(resp.stream, "close", None) or getattr(resp.stream, "aclose", None)
            if close is not None:
                r = close()
                if asyncio.iscoroutine(r):
                    await r
        try:
            await sr.write_eof()
        except (ConnectionResetError, RuntimeError):
            pass
        return sr

    app = web.Application(client_max_size=_MAX_BODY)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def server_ssl_context(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    # Optional: token-authenticated and anonymous health checks come without one.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # A connection keeps the client certificate it began with (peer_identity reads it once).
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    return ctx


async def serve(api: APIServer, tokens: TokenAuth, host: str, port: int,
                ssl_ctx: ssl.SSLContext | None) -> web.AppRunner:
    app = make_app(api, tokens)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024, reuse_address=True)
    await site.start()
    return runner
