"""Serve an apiserver Handler over real HTTP (aiohttp) for the HTTPTransport tests.

Watches are written as chunked newline-delimited JSON, as upstream serves them.
The peer's Authorization header and TLS client certificate subject are passed
to the handler (as headers / Request.user) so tests can check authentication.
"""

from __future__ import annotations

import contextlib
import ssl

from aiohttp import web

from kybernetes.apiserver.request import Handler, Request


class HandlerServer:
    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None):
        self.handler = handler
        self.ssl_context = ssl_context
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        # Cancel handlers when the client hangs up, so abandoned watches unregister at once.
        self.runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True, shutdown_timeout=2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        user = "system:anonymous"
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            for rdn in peer.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        user = value
        req = Request(method=request.method, path=request.path, query=dict(request.query),
                      headers={k.lower(): v for k, v in request.headers.items()},
                      body=await request.read(), user=user)
        resp = await self.handler(req)
        if resp.stream is None:
            return web.Response(status=resp.status, body=resp.body, headers=resp.headers,
                                content_type=resp.content_type)
        out = web.StreamResponse(status=resp.status, headers={"Content-Type": resp.content_type})
        out.enable_chunked_encoding()
        await out.prepare(request)
        try:
            async for chunk in resp.stream:
                await out.write(chunk)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            aclose = getattr(resp.stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        return out
