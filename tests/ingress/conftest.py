"""Helpers for the ingress tests: backend HTTP servers on loopback and a controller on a real API.

`Backend` is an aiohttp server on a 127.0.0.x address that answers every path with
JSON describing what it received (its name, method, path, headers, body size), and
has a few special paths: /ws (WebSocket echo), /stream (a chunked answer paced by
the test), /upload (reads a streamed body, paced by the test), /slow (never answers
in time). `Env` runs an API server over SQLite in tmp_path and an IngressController
listening on 127.0.0.1 (free ports), and writes Services with one EndpointSlice per
backend (so that each backend can have its own port), Ingresses and TLS Secrets.
Nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kybernetes.client import Client
from kybernetes.ingress import IngressController
from kybernetes.ingress.tls import generate_self_signed
from tests.apiserver.conftest import eventually, start_api, stop_api

NODE_IPS = ["10.0.0.1", "fd00::1"]


class Backend:
    """One backend pod: an aiohttp app on `ip`:free port."""

    def __init__(self, name: str, ip: str = "127.0.0.1"):
        self.name = name
        self.ip = ip
        self.port = 0
        self.hits = 0
        self.stream_gate = asyncio.Event()       # /stream sends its second chunk when set
        self.upload_first = asyncio.Event()      # /upload got its first bytes
        self.runner: web.AppRunner | None = None

    async def start(self) -> Backend:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/stream", self._stream)
        app.router.add_post("/upload", self._upload)
        app.router.add_get("/slow", self._slow)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.ip, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _echo(self, request: web.Request) -> web.Response:
        self.hits += 1
        body = await request.read()
        return web.json_response({"backend": self.name, "method": request.method, "path": request.path_qs,
                                  "headers": dict(request.headers), "body": len(body),
                                  "version": f"{request.version.major}.{request.version.minor}"})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"first\n")
        await self.stream_gate.wait()
        await resp.write(b"second\n")
        await resp.write_eof()
        return resp

    async def _upload(self, request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            self.upload_first.set()
        return web.json_response({"backend": self.name, "received": total})

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="late")


def tls_secret(name: str, pair: tuple[bytes, bytes], namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": base64.b64encode(pair[0]).decode(), "tls.key": base64.b64encode(pair[1]).decode()}}


def cert_for(*hosts: str) -> tuple[bytes, bytes]:
    return generate_self_signed(hosts[0], hosts)


def path(p: str, service: str, port: int | str = 80, path_type: str = "Prefix") -> dict[str, Any]:
    ref = {"number": port} if isinstance(port, int) else {"name": port}
    return {"path": p, "pathType": path_type, "backend": {"service": {"name": service, "port": ref}}}


def ingress(name: str, rules: list[dict[str, Any]] | None = None, *, default: str | None = None,
            tls: list[dict[str, Any]] | None = None, annotations: dict[str, str] | None = None,
            class_name: str | None = None, namespace: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if rules is not None:
        spec["rules"] = rules
    if default:
        spec["defaultBackend"] = {"service": {"name": default, "port": {"number": 80}}}
    if tls:
        spec["tls"] = tls
    if class_name:
        spec["ingressClassName"] = class_name
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def rule(host: str | None, *paths: dict[str, Any]) -> dict[str, Any]:
    r: dict[str, Any] = {"http": {"paths": list(paths)}}
    if host:
        r["host"] = host
    return r


class Env:
    """An API server, a client on it, an IngressController on 127.0.0.1, and backends."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.backends: list[Backend] = []
        self._written: list[tuple[str, str, str | None]] = []   # (controller cache, key, rv or None: gone)
        self.session: aiohttp.ClientSession | None = None

    async def start(self, **kwargs: Any) -> Env:
        self.api = await start_api(self.tmp_path)
        self.client = Client.in_process(self.api.handle)
        kwargs.setdefault("bind", "127.0.0.1")
        self.ctrl = IngressController(self.client, "node1", NODE_IPS, 0, 0, **kwargs)
        await self.ctrl.start()
        self.http_port = self.ctrl.http_ports[0]
        self.https_port = self.ctrl.https_ports[0]
        # The connector keeps no connections between tests' requests unless asked to.
        self.session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.ctrl.stop()
        for b in self.backends:
            await b.stop()
        await self.client.close()
        await stop_api(self.api)

    async def backend(self, name: str, ip: str = "127.0.0.1") -> Backend:
        b = await Backend(name, ip).start()
        self.backends.append(b)
        return b

    async def service(self, name: str, backends: list[Backend], *, port: int = 80, port_name: str = "http",
                      namespace: str = "default", ready: list[bool] | None = None) -> None:
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
               "spec": {"ports": [{"name": port_name, "port": port, "targetPort": 8080}]}}
        await self.client.resource("v1", "services").create(svc)
        await self.set_endpoints(name, backends, namespace=namespace, ready=ready, port_name=port_name)

    async def set_endpoints(self, name: str, backends: list[Backend], *, namespace: str = "default",
                            ready: list[bool] | None = None, port_name: str = "http") -> None:
        """One slice per backend, "<service>-<i>", created or replaced; extra old slices deleted."""
        rc = self.client.resource("discovery.k8s.io/v1", "endpointslices")
        existing = {s["metadata"]["name"]: s for s in
                    (await rc.list(namespace, label_selector=f"kubernetes.io/service-name={name}"))["items"]}
        for i, b in enumerate(backends):
            sname = f"{name}-{i}"
            sl = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                  "metadata": {"name": sname, "namespace": namespace,
                               "labels": {"kubernetes.io/service-name": name}},
                  "addressType": "IPv4", "ports": [{"name": port_name, "port": b.port, "protocol": "TCP"}],
                  "endpoints": [{"addresses": [b.ip],
                                 "conditions": {"ready": True if ready is None else ready[i]}}]}
            old = existing.pop(sname, None)
            if old is None:
                self._wrote("slices", await rc.create(sl))
            else:
                sl["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
                self._wrote("slices", await rc.update(sl))
        for sname in existing:
            await rc.delete(sname, namespace)
            self._written.append(("slices", f"{namespace}/{sname}", None))

    def _wrote(self, cache: str, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
        self._written.append((cache, key, meta["resourceVersion"]))
        return obj

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        rc, cache = self._rc(obj["kind"])
        ns = obj["metadata"].get("namespace")
        try:
            old = await rc.get(obj["metadata"]["name"], ns)
        except Exception:
            return self._wrote(cache, await rc.create(obj))
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": old["metadata"]["resourceVersion"]}}
        return self._wrote(cache, await rc.update(obj))

    async def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        rc, cache = self._rc(kind)
        await rc.delete(name, namespace)
        self._written.append((cache, f"{namespace}/{name}", None))

    def _rc(self, kind: str) -> tuple[Any, str]:
        return {"Ingress": (self.client.resource("networking.k8s.io/v1", "ingresses"), "ingresses"),
                "Secret": (self.client.resource("v1", "secrets"), "secrets"),
                "IngressClass": (self.client.resource("networking.k8s.io/v1", "ingressclasses", False),
                                 "classes")}[kind]

    async def settled(self) -> None:
        """Wait until the controller's caches hold every write so far and the table is rebuilt."""
        def seen() -> bool:
            for cache, key, rv in self._written:
                got = getattr(self.ctrl, cache).get(key)
                # The store's revisions are integers; the controller's own status writes may be newer.
                if (got is None) != (rv is None) or \
                        (got is not None and int(got["metadata"]["resourceVersion"]) < int(rv or 0)):
                    return False
            return True

        await eventually(seen, 5, "the controller's informers to see the writes")
        self._written.clear()
        await asyncio.sleep(0)
        await eventually(lambda: self.ctrl.idle.is_set() and not self.ctrl._wake.is_set(), 5,
                         "the ingress controller to settle")

    def url(self, p: str, *, tls: bool = False) -> str:
        return f"{'https' if tls else 'http'}://127.0.0.1:{self.https_port if tls else self.http_port}{p}"

    async def get(self, host: str, p: str = "/", *, tls: bool = False, sni: str | None = None,
                  **kw: Any) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body or text, headers) of a request with Host `host`."""
        assert self.session is not None
        extra: dict[str, Any] = {}
        if tls:
            extra["ssl"] = False
            extra["server_hostname"] = sni or host
        method = kw.pop("method", "GET")
        async with self.session.request(method, self.url(p, tls=tls), headers={"Host": host, **kw.pop("headers", {})},
                                        allow_redirects=False, **extra, **kw) as r:
            text = await r.text()
            try:
                body: Any = await r.json(content_type=None)
            except ValueError:
                body = text
            return r.status, body, dict(r.headers)

    async def until(self, host: str, p: str, want_status: int, want_backend: str | None = None, *,
                    tls: bool = False, timeout: float = 5) -> Any:
        """Poll until a request answers as wanted (routes follow events within milliseconds)."""
        async def check() -> Any:
            status, body, _ = await self.get(host, p, tls=tls)
            if status != want_status:
                return None
            if want_backend is not None and (not isinstance(body, dict) or body.get("backend") != want_backend):
                return None
            return body or True
        return await eventually(check, timeout, f"{host}{p} -> {want_status} {want_backend}")


class RawConn:
    """A hand-written HTTP/1.1 client connection (plain or TLS with a chosen SNI name), for tests that
    care which connection carries a request or which certificate it was shown."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, *, sni: str | None = None, tls: bool = False) -> RawConn:
        ctx = None
        if tls or sni:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni if ctx else None)
        return cls(r, w)

    @property
    def peer_cert(self) -> bytes:
        obj = self.writer.get_extra_info("ssl_object")
        return obj.getpeercert(binary_form=True)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def request(self, host: str, p: str = "/", method: str = "GET", headers: dict[str, str] | None = None,
                      body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {p} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        return await self.response(method)

    async def response(self, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        if method == "HEAD" or status in (101, 204, 304) or 100 <= status < 200:
            return status, hdrs, b""
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass
                    return status, hdrs, out
                out += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
        if "content-length" in hdrs:
            return status, hdrs, await self.reader.readexactly(int(hdrs["content-length"]))
        return status, hdrs, await asyncio.wait_for(self.reader.read(), 5)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e = Env(tmp_path)
    await e.start()
    try:
        yield e
    finally:
        with contextlib.suppress(Exception):
            await e.stop()
