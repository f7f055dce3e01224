"""Ingress benchmark: requests/s and latency through the ingress controller against the same
requests sent straight to the backend, in the same run.

    .venv/bin/python bench/ingress.py [--seconds 3] [--rounds 3] [--concurrency 32]
                                      [--new-concurrency 8] [--backend raw|aiohttp|both]

Three processes, each on its own event loop (uvloop where installed, as `kyb server`
uses), so that on a 2-core machine they share the cores as a node's ingress, its pods
and its clients would:
  * the backend: `raw`, a minimal asyncio protocol answering every request with one
    precomputed 2-byte response (about the ceiling of any Python HTTP server), or
    `aiohttp`, an aiohttp.web app (a typical Python service); /big answers 1 MiB;
  * the ingress: an in-process API server holding one Service, its EndpointSlice and an
    Ingress for host bench.example, and an IngressController on 127.0.0.1;
  * the load generator: asyncio protocols keeping --concurrency keep-alive connections
    busy (each sends its next request when the previous answer is complete), or
    --new-concurrency workers opening a new connection per request (Connection: close).
Where nginx is installed (Debian's nginx-light), nginx with one worker proxies to the same
backend as a production reverse proxy would, as a second baseline: what any proxy costs on
this machine. Direct, ingress and nginx runs alternate, --rounds times, median reported. The
figures: requests/s and p50/p99 latency, and bulk MB/s for 1 MiB answers; ratios are
ingress / direct (rates) and direct / ingress (latencies), so 1.0 is "as fast as going
direct". Target: keep-alive requests/s >= 0.5x direct. Everything stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loops import use_uvloop  # noqa: E402

HOST = "bench.example"
BIG = 1 << 20




# ---------------------------------------------------------------------- child processes

async def serve_raw() -> None:
    small = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
    big = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % BIG + \
        b"x" * BIG

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: Any = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            out = []
            while (i := buf.find(b"\r\n\r\n")) >= 0:
                head, buf = buf[:i], buf[i + 4:]
                out.append(big if head.startswith(b"GET /big") else small)
                if b"onnection: close" in head:
                    self.transport.write(b"".join(out))
                    self.transport.close()
                    return
            self.buf = buf
            if out:
                self.transport.write(b"".join(out))

    srv = await asyncio.get_running_loop().create_server(Server, "127.0.0.1", 0, backlog=4096)
    print("ready", srv.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def serve_aiohttp() -> None:
    from aiohttp import web

    big = b"x" * BIG

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=big, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/big", large)
    app.router.add_get("/{tail:.*}", small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
    await site.start()
    print("ready", site._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    await asyncio.Event().wait()


async def serve_ingress(backend_port: int) -> None:
    import logging

    from kybernetes.apiserver.server import APIServer
    from kybernetes.client import Client
    from kybernetes.ingress import IngressController
    from kybernetes.storage.sqlite import SqliteStore

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="kyb-bench-ingress-"))
    api = APIServer(SqliteStore(tmp / "state.db"))
    await api.start()
    client = Client.in_process(api.handle)
    await client.resource("v1", "services").create(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    await client.resource("discovery.k8s.io/v1", "endpointslices").create(
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": backend_port, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]})
    await client.resource("networking.k8s.io/v1", "ingresses").create(
        {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"ingressClassName": "kybernetes", "rules": [{"host": HOST, "http": {"paths": [
             {"path": "/", "pathType": "Prefix",
              "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}})
    ctrl = IngressController(client, "bench", ["127.0.0.1"], 0, 0, bind="127.0.0.1")
    await ctrl.start()
    deadline = time.monotonic() + 10
    while ctrl.table.match(HOST, "/") is None or not ctrl.table.match(HOST, "/").backend.endpoints:  # type: ignore
        if time.monotonic() > deadline:
            raise SystemExit("the ingress never routed bench.example")
        await asyncio.sleep(0.01)
    print("ready", ctrl.http_ports[0], ctrl.https_ports[0], flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------------- the load generator

class _Conn(asyncio.Protocol):
    """One keep-alive connection sending `request` again as soon as an answer is complete."""

    def __init__(self, request: bytes, deadline: float, lat: list[float], done: asyncio.Future[None],
                 nbytes: list[int]):
        self.request = request
        self.deadline = deadline
        self.lat = lat
        self.done = done
        self.nbytes = nbytes
        self.buf = bytearray()
        self.need = -1
        self.t0 = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self._send()

    def _send(self) -> None:
        self.t0 = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                i = self.buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                head = bytes(self.buf[:i]).lower()
                j = head.find(b"content-length:")
                length = int(head[j + 15:head.find(b"\r\n", j) if head.find(b"\r\n", j) > 0 else None]) \
                    if j >= 0 else 0
                if not head.startswith(b"http/1.1 200"):
                    raise SystemExit(f"unexpected answer {head[:60]!r}")
                self.need = i + 4 + length
            if len(self.buf) < self.need:
                return
            now = time.perf_counter()
            self.lat.append(now - self.t0)
            self.nbytes[0] += self.need
            del self.buf[:self.need]
            self.need = -1
            if now >= self.deadline:
                self.transport.close()
                if not self.done.done():
                    self.done.set_result(None)
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Once(asyncio.Protocol):
    def __init__(self, request: bytes, done: asyncio.Future[None]):
        self.request = request
        self.done = done
        self.got = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.got += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if not self.got.startswith(b"HTTP/1.1 200"):
                self.done.set_exception(SystemExit(f"unexpected answer {self.got[:60]!r}"))
            else:
                self.done.set_result(None)


async def load(port: int, mode: str, seconds: float, concurrency: int, path: str) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    nbytes = [0]
    if mode == "keepalive":
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        # Warm up: connections opened and upstream pools filled before the clock starts.
        warm_deadline = time.perf_counter() + 0.3
        futs = []
        for _ in range(concurrency):
            f: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(lambda f=f: _Conn(request, warm_deadline, [], f, [0]), "127.0.0.1", port)
            futs.append(f)
        await asyncio.gather(*futs)
        start = time.perf_counter()
        deadline = start + seconds
        futs = []
        for _ in range(concurrency):
            f = loop.create_future()
            await loop.create_connection(lambda f=f: _Conn(request, deadline, lat, f, nbytes), "127.0.0.1", port)
            futs.append(f)
        await asyncio.gather(*futs)
    else:
        request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                f: asyncio.Future[None] = loop.create_future()
                await loop.create_connection(lambda f=f: _Once(request, f), "127.0.0.1", port)
                await f
                lat.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat.sort()
    return {"rps": len(lat) / elapsed, "p50": lat[len(lat) // 2], "p99": lat[int(len(lat) * 0.99)],
            "bps": nbytes[0] / elapsed, "n": len(lat)}


# ---------------------------------------------------------------------- orchestration

def spawn(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout is not None
    line = p.stdout.readline().split()
    if not line or line[0] != "ready":
        p.kill()
        raise SystemExit(f"child {args} did not start")
    return p, line[1:]


def run_client(port: int, mode: str, seconds: float, concurrency: int, path: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "_client", str(port), mode, str(seconds), str(concurrency),
                          path], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout)


NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
        }}
    }}
}}
"""


def spawn_nginx(backend_port: str) -> tuple[subprocess.Popen[str] | None, int]:
    """nginx with one worker (the ingress is one process) proxying to the backend as ingress-nginx
    does: HTTP/1.1 upstream keep-alive, X-Forwarded-For; (None, 0) where nginx is not installed."""
    import shutil
    import socket

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        return None, 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Path(tempfile.mkdtemp(prefix="kyb-bench-nginx-"))
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, backend=backend_port, port=port))
    p = subprocess.Popen([nginx, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"], text=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                p.kill()
                return None, 0
            time.sleep(0.05)


def bench_backend(kind: str, args: argparse.Namespace) -> dict[str, dict[str, dict[str, float]]]:
    backend, (bport,) = spawn("_backend", kind)
    ingress, (iport, _sport) = spawn("_ingress", bport)
    procs = [ingress, backend]
    nginx, nport = spawn_nginx(bport) if args.nginx else (None, 0)
    if nginx is not None:
        procs.append(nginx)
    cases = {"keepalive": ("keepalive", args.concurrency, "/"),
             "new connections": ("new", args.new_concurrency, "/"),
             "1 MiB answers": ("keepalive", 4, "/big")}
    targets = {"direct": int(bport), "ingress": int(iport), **({"nginx": nport} if nginx is not None else {})}
    results: dict[str, dict[str, list[dict[str, float]]]] = {c: {t: [] for t in targets} for c in cases}
    try:
        for _ in range(args.rounds):
            for case, (mode, conc, path) in cases.items():
                for target, port in targets.items():
                    results[case][target].append(run_client(port, mode, args.seconds, conc, path))
    finally:
        for p in procs:
            p.terminate()   # nginx's master stops its workers on SIGTERM (a SIGKILL would orphan them)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def median(rs: list[dict[str, float]]) -> dict[str, float]:
        return {k: statistics.median(r[k] for r in rs) for k in rs[0]}

    return {c: {w: median(v) for w, v in r.items()} for c, r in results.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        use_uvloop()
        role = sys.argv[1]
        if role == "_backend":
            asyncio.run(serve_raw() if sys.argv[2] == "raw" else serve_aiohttp())
        elif role == "_ingress":
            asyncio.run(serve_ingress(int(sys.argv[2])))
        elif role == "_client":
            port, mode, seconds, conc, path = sys.argv[2:7]
            print(json.dumps(asyncio.run(load(int(port), mode, float(seconds), int(conc), path))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--new-concurrency", type=int, default=8)
    p.add_argument("--backend", choices=["raw", "aiohttp", "both"], default="both")
    p.add_argument("--no-nginx", dest="nginx", action="store_false",
                   help="skip the comparison with nginx (run where nginx is installed)")
    args = p.parse_args()
    loop_name = "uvloop" if not os.environ.get("KYB_NO_UVLOOP") and _has_uvloop() else "asyncio"
    for kind in (["raw", "aiohttp"] if args.backend == "both" else [args.backend]):
        r = bench_backend(kind, args)
        print(f"Ingress vs direct, {kind} backend, {loop_name}, median of {args.rounds} rounds of {args.seconds:g} s "
              f"(ratios: ingress / direct rate, direct / ingress latency)")
        for case, label in (("keepalive", f"keep-alive, {args.concurrency} conns"),
                            ("new connections", f"new conn per request, {args.new_concurrency} workers")):
            d, i = r[case]["direct"], r[case]["ingress"]
            print(f"  {label:<34} direct {d['rps']:>8.0f} req/s p50 {d['p50'] * 1e3:6.2f} ms "
                  f"p99 {d['p99'] * 1e3:6.2f} ms | ingress {i['rps']:>8.0f} req/s p50 {i['p50'] * 1e3:6.2f} ms "
                  f"p99 {i['p99'] * 1e3:6.2f} ms -> {i['rps'] / d['rps']:.2f}x rate, "
                  f"{d['p99'] / i['p99']:.2f}x p99")
        d, i = r["1 MiB answers"]["direct"], r["1 MiB answers"]["ingress"]
        print(f"  {'1 MiB answers, 4 keep-alive conns':<34} direct {d['bps'] / 1e6:>8.0f} MB/s "
              f"{'':>24}| ingress {i['bps'] / 1e6:>8.0f} MB/s {'':>24}-> {i['bps'] / d['bps']:.2f}x")
        if "nginx" in r["keepalive"]:
            print("  nginx, 1 worker, as a reverse proxy in the same run (nginx / direct; ingress / nginx):")
            for case in ("keepalive", "new connections"):
                d, n, i = (r[case][t] for t in ("direct", "nginx", "ingress"))
                print(f"    {case:<32} nginx {n['rps']:>8.0f} req/s p99 {n['p99'] * 1e3:6.2f} ms -> "
                      f"{n['rps'] / d['rps']:.2f}x direct; ingress {i['rps'] / n['rps']:.2f}x nginx")
            d, n, i = (r["1 MiB answers"][t] for t in ("direct", "nginx", "ingress"))
            print(f"    {'1 MiB answers':<32} nginx {n['bps'] / 1e6:>8.0f} MB/s -> {n['bps'] / d['bps']:.2f}x "
                  f"direct; ingress {i['bps'] / n['bps']:.2f}x nginx")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
