"""API server benchmark: create, get, list and watch delivery through `kyb server` over HTTPS.

Every figure is printed next to a baseline measured in the same run:
  * the raw SQLite store (same machine, same process as this script),
  * the floor of the HTTP stack: a minimal aiohttp handler over the same TLS
    setup that only returns a fixed JSON body.

Usage: .venv/bin/python bench/api.py [--pods 10000] [--watchers 1000] [--concurrency 32]
The load generator shares the 2 cores with the server; figures are what one
machine does with both on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster import free_port  # noqa: E402


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench", "shard": name[-1]}},
            "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"],
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}


async def run_pool(n: int, conc: int, fn) -> float:
    """Run fn(i) for i in range(n) with `conc` in flight; return ops/s."""
    it = iter(range(n))

    async def worker():
        for i in it:
            await fn(i)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return n / (time.perf_counter() - t0)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bench_store(n: int) -> dict:
    from kybernetes.storage.sqlite import SqliteStore
    d = tempfile.mkdtemp()
    st = SqliteStore(os.path.join(d, "s.db"))
    raws = [orjson.dumps(pod(f"p{i:05d}")) for i in range(n)]
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(32)

    async def c(i):
        async with sem:
            await st.create(f"/registry/pods/default/p{i:05d}", raws[i])
    await asyncio.gather(*(c(i) for i in range(n)))
    creates = n / (time.perf_counter() - t0)
    keys = [f"/registry/pods/default/p{random.randrange(n):05d}" for _ in range(20000)]
    t0 = time.perf_counter()
    for k in keys:
        await st.get(k)
    gets = len(keys) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    await st.list("/registry/pods/")
    list_ms = (time.perf_counter() - t0) * 1000
    await st.close()
    return {"creates": creates, "gets": gets, "list_ms": list_ms}


async def bench_floor(pki: Path, client_ssl: ssl.SSLContext, n: int, conc: int) -> float:
    """Requests/s against a fixed-body aiohttp handler in its own process (same TLS, same loop)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor_server.py"), str(port),
                             str(pki / "apiserver.crt"), str(pki / "apiserver.key")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl, limit=conc)) as s:
            async def get(_i):
                async with s.get(f"https://127.0.0.1:{port}/api/v1/namespaces/default/pods/floor") as r:
                    await r.read()
            return await run_pool(n, conc, get)
    finally:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


async def client_side_lists(s: aiohttp.ClientSession, url: str, pid: int) -> dict[str, float]:
    """Full lists of every pod as clients see them, once the server has settled (the scheduler and
    kubelet done with the new pods): the medians of 5 runs of each."""
    import gc
    import json
    t0 = time.perf_counter()
    prev = cpu_seconds(pid)
    for _ in range(180):
        await asyncio.sleep(1)
        cur = cpu_seconds(pid)
        if cur - prev < 0.1:
            break
        prev = cur
    out = {"settle_s": time.perf_counter() - t0}

    async def timed(decode, gc_off: bool = False) -> float:
        runs = []
        for _ in range(5):
            if gc_off:
                gc.disable()
            try:
                t = time.perf_counter()
                async with s.get(url + "/api/v1/pods") as r:
                    body = await r.read()
                if decode is not None:
                    decode(body)
                runs.append((time.perf_counter() - t) * 1000)
            finally:
                gc.enable()
        out["list_mb"] = len(body) / 1e6
        return statistics.median(runs)

    out["list_wire_ms"] = await timed(None)
    out["list_json_ms"] = await timed(json.loads)
    out["list_json_nogc_ms"] = await timed(json.loads, True)
    out["list_orjson_ms"] = await timed(orjson.loads)
    out["list_orjson_nogc_ms"] = await timed(orjson.loads, True)

    async def pages(accept: str) -> float:
        runs = []
        for _ in range(3):
            t = time.perf_counter()
            cont = ""
            while True:
                params = {"limit": "500", **({"continue": cont} if cont else {})}
                async with s.get(url + "/api/v1/pods", params=params, headers={"Accept": accept}) as r:
                    page = orjson.loads(await r.read())
                cont = page["metadata"].get("continue") or ""
                if not cont:
                    break
            runs.append((time.perf_counter() - t) * 1000)
        return statistics.median(runs)
    out["table_pages_ms"] = await pages(TABLE_ACCEPT)
    out["json_pages_ms"] = await pages("application/json")
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--gets", type=int, default=20000)
    ap.add_argument("--watchers", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--disable", default="controllers,scheduler,kubelet",
                    help="components kyb server leaves out (default: measure the API server alone, as "
                         "kube-apiserver is measured); '' runs the whole single-node control plane")
    ap.add_argument("--client-side", action="store_true",
                    help="also time full lists from outside once the server is idle: with the client's JSON "
                         "decode, and in pages of 500 as Table and JSON (what kubectl and informers ask for)")
    a = ap.parse_args()

    store = await bench_store(a.pods)

    data = Path(tempfile.mkdtemp())
    port = free_port()
    logf = open(data / "server.log", "wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kybernetes.cli.main", "server", "--data-dir", str(data),
                             "--port", str(port), "--log-level", "warning", "--disable", a.disable],
                            stdout=logf, stderr=logf)
    pki = data / "pki"
    url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=None)
    while True:
        if proc.poll() is not None:
            raise SystemExit("server died: " + (data / "server.log").read_text())
        if (data / "kubeconfig").exists():
            try:
                ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
                ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
                    async with s.get(url + "/readyz") as r:
                        if r.status == 200:
                            break
            except (aiohttp.ClientError, OSError):
                pass
        await asyncio.sleep(0.02)
    ready_s = time.perf_counter() - t0
    results: dict[str, float] = {"ready_s": ready_s}
    try:
        conn = aiohttp.TCPConnector(ssl=ctx, limit=a.concurrency)
        async with aiohttp.ClientSession(connector=conn) as s:
            base = url + "/api/v1/namespaces/default/pods"
            # Pods need the namespace's default ServiceAccount, which nobody creates
            # while the controllers are disabled (as upstream).
            async with s.post(url + "/api/v1/namespaces/default/serviceaccounts",
                              json={"metadata": {"name": "default"}}) as r:
                if r.status not in (201, 409):
                    raise SystemExit(f"creating the default ServiceAccount failed {r.status}: {await r.text()}")
            bodies = [orjson.dumps(pod(f"p{i:05d}")) for i in range(a.pods)]

            async def create(i):
                async with s.post(base, data=bodies[i], headers={"Content-Type": "application/json"}) as r:
                    if r.status != 201:
                        raise SystemExit(f"create failed {r.status}: {await r.text()}")
                    await r.read()
            results["creates"] = await run_pool(a.pods, a.concurrency, create)
            names = [f"p{random.randrange(a.pods):05d}" for _ in range(a.gets)]

            async def get(i):
                async with s.get(f"{base}/{names[i]}") as r:
                    await r.read()
            results["gets"] = await run_pool(a.gets, a.concurrency, get)
            lists = []
            for _ in range(5):
                t = time.perf_counter()
                async with s.get(url + "/api/v1/pods") as r:
                    body = await r.read()
                lists.append((time.perf_counter() - t) * 1000)
            n_items = len(orjson.loads(body)["items"])
            results["list_ms"] = statistics.median(lists)
            results["list_items"] = n_items
            results["rss_mb_10k"] = rss_mb(proc.pid)
            if a.client_side:
                results.update(await client_side_lists(s, url, proc.pid))

        # watch fan-out: N watchers on pods in one namespace, then one update.
        ns = "watchbench"
        conn = aiohttp.TCPConnector(ssl=ctx, limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as s:
            async with s.post(url + "/api/v1/namespaces", json={"metadata": {"name": ns}}) as r:
                await r.read()
            async with s.post(url + f"/api/v1/namespaces/{ns}/configmaps",
                              json={"metadata": {"name": "w"}, "data": {"v": "0"}}) as r:
                rv = orjson.loads(await r.read())["metadata"]["resourceVersion"]
            arrivals: list[float] = []
            ready = 0
            all_ready = asyncio.Event()
            got = asyncio.Event()

            async def watcher():
                nonlocal ready
                async with s.get(url + f"/api/v1/namespaces/{ns}/configmaps",
                                 params={"watch": "true", "resourceVersion": rv}) as r:
                    ready += 1
                    if ready == a.watchers:
                        all_ready.set()
                    async for _line in r.content:
                        arrivals.append(time.perf_counter())
                        if len(arrivals) == a.watchers:
                            got.set()
                        return
            tasks = [asyncio.create_task(watcher()) for _ in range(a.watchers)]
            await asyncio.wait_for(all_ready.wait(), 120)
            await asyncio.sleep(1.0)  # let every watch settle before the measured write
            t_send = time.perf_counter()
            async with s.patch(url + f"/api/v1/namespaces/{ns}/configmaps/w", data=b'{"data":{"v":"1"}}',
                               headers={"Content-Type": "application/merge-patch+json"}) as r:
                await r.read()
            await asyncio.wait_for(got.wait(), 60)
            lat = sorted((t - t_send) * 1000 for t in arrivals)
            results["watch_p50_ms"] = lat[len(lat) // 2]
            results["watch_p99_ms"] = lat[int(len(lat) * 0.99) - 1]
            results["watch_delivered"] = len(lat)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        floor = await bench_floor(pki, ctx, a.gets, a.concurrency)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)

    print(f"kyb server --disable={a.disable!r}: ready in {results['ready_s']:.2f} s")
    print(f"{'figure':34} {'kyb (HTTPS)':>14} {'baseline':>14} {'ratio':>8}")
    print(f"{'creates/s (pods)':34} {results['creates']:14.0f} {store['creates']:14.0f} "
          f"{results['creates'] / store['creates']:8.3f}   baseline: raw store")
    print(f"{'gets/s':34} {results['gets']:14.0f} {store['gets']:14.0f} "
          f"{results['gets'] / store['gets']:8.3f}   baseline: raw store")
    print(f"{'gets/s vs HTTP floor':34} {results['gets']:14.0f} {floor:14.0f} "
          f"{results['gets'] / floor:8.3f}   baseline: fixed-body aiohttp handler")
    print(f"{'list all pods ms':34} {results['list_ms']:14.1f} {store['list_ms']:14.1f} "
          f"{results['list_ms'] / store['list_ms']:8.2f}   ({int(results['list_items'])} items; baseline: "
          f"raw store list)")
    print(f"{'watch delivery p50 / p99 ms':34} {results['watch_p50_ms']:6.1f} / {results['watch_p99_ms']:5.1f}"
          f"   to {int(results['watch_delivered'])} watchers")
    print(f"{'server RSS MB with pods stored':34} {results['rss_mb_10k']:14.0f}")
    if a.client_side:
        print(f"full list from outside, once the server is idle ({results['list_mb']:.1f} MB, "
              f"{results['settle_s']:.0f} s to settle):")
        for k, what in (("list_wire_ms", "transfer only"), ("list_json_ms", "+ json.loads (stdlib)"),
                        ("list_json_nogc_ms", "+ json.loads, client GC off"),
                        ("list_orjson_ms", "+ orjson.loads"), ("list_orjson_nogc_ms", "+ orjson.loads, client GC off"),
                        ("table_pages_ms", "Table, 500 a page (kubectl get pods -A)"),
                        ("json_pages_ms", "JSON, 500 a page")):
            print(f"  {what:44} {results[k]:8.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
