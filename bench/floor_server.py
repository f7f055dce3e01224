"""The floor of the HTTP stack: aiohttp over the same TLS and event loop as `kyb server`,
answering every request with one fixed JSON body. Run by bench/api.py as a separate process.

Usage: floor_server.py PORT CERT KEY
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def main(port: int, cert: str, key: str) -> None:
    import ssl
    body = b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"floor","namespace":"default"}}'

    async def h(_req: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", h)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
