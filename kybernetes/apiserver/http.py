"""The HTTPS front door: aiohttp, TLS, authentication, and streaming of watches.

Authentication is upstream's: an x509 client certificate signed by the
cluster CA (user = CN, groups = O) or a bearer token, static or a service
account token (see serviceaccounts.py). Anonymous requests may
reach only the health and version endpoints. Everything else is handed to
APIServer.handle as a transport-independent Request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time

from aiohttp import web

from ..api import errors
from . import proxy
from .pki import PKI
from .request import Request
from .server import APIServer

log = logging.getLogger("kybernetes.http")

_PUBLIC = ("/healthz", "/livez", "/readyz", "/version")


class TokenAuth:
    """Static bearer tokens: token -> (user, groups)."""

    def __init__(self) -> None:
        self.tokens: dict[str, tuple[str, tuple[str, ...]]] = {}

    def add(self, token: str, user: str, groups: tuple[str, ...]) -> None:
        self.tokens[token] = (user, groups)

    def lookup(self, token: str) -> tuple[str, tuple[str, ...]] | None:
        for t, who in self.tokens.items():
            if hmac.compare_digest(t, token):
                return who
        return None


def _peer_identity(request: web.Request) -> tuple[str, tuple[str, ...]] | None:
    sslobj = request.transport.get_extra_info("ssl_object") if request.transport else None
    if sslobj is None:
        return None
    cert = sslobj.getpeercert()
    if not cert:
        return None
    cn = ""
    orgs: list[str] = []
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v
            elif k == "organizationName":
                orgs.append(v)
    return (cn, tuple(orgs) + ("system:authenticated",)) if cn else None


_LARGE_BODY = 1 << 20
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
    async def handler(request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        who = _peer_identity(request)
        auth = request.headers.get("Authorization", "")
        if who is None and auth.startswith("Bearer "):
            token = auth[7:].strip()
            who = tokens.lookup(token)
            if who is None and token.count(".") == 2:
                who = await api.service_accounts.authenticate(token)
            if who is None:
                err = errors.unauthorized()
                return web.Response(status=401, body=err.to_bytes(), content_type="application/json")
        path = request.path
        if who is None:
            if not (path in _PUBLIC or path.startswith(("/healthz/", "/livez/", "/readyz/"))):
                err = errors.unauthorized()
                return web.Response(status=401, body=err.to_bytes(), content_type="application/json")
            who = ("system:anonymous", ("system:unauthenticated",))
        if proxy.is_upgrade(request):
            # exec/attach/port-forward: a WebSocket relayed to the pod's kubelet.
            up = await proxy.handle_upgrade(api, request, who[0], who[1])
            if up is not None:
                return up
        body = await request.read() if request.can_read_body else b""
        req = Request(request.method, path, dict(request.query),
                      {k.lower(): v for k, v in request.headers.items()}, body, who[0], who[1])
        resp = await api.handle(req)
        if resp.stream is None and len(resp.body) > _LARGE_BODY:
            return await _write_large(request, resp)
        if resp.stream is None:
            out = web.Response(status=resp.status, body=resp.body, headers=resp.headers)
            out.content_type = resp.content_type.split(";")[0]
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s %s %d %.1fms user=%s", request.method, request.path_qs, resp.status,
                          (time.perf_counter() - t0) * 1000, who[0])
            return out
        sr = web.StreamResponse(status=resp.status, headers=resp.headers)
        sr.content_type = resp.content_type
        sr.enable_chunked_encoding()
        log.debug("WATCH %s user=%s", request.path_qs, who[0])
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

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


def server_ssl_context(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.load_verify_locations(cafile=str(pki.ca_cert))
    # Optional: token-authenticated and anonymous health checks come without one.
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


async def serve(api: APIServer, tokens: TokenAuth, host: str, port: int,
                ssl_ctx: ssl.SSLContext | None) -> web.AppRunner:
    app = make_app(api, tokens)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, backlog=1024, reuse_address=True)
    await site.start()
    return runner
