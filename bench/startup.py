"""Pod startup latency with the process runtime: created -> Running, p50/p99 over N pods.

Each pod is created through the API over HTTPS and timed from the create call
to the watch event that shows its container running. The baseline, measured
in the same run, is spawning the same command directly (fork+exec until the
process exists), so the ratio is what scheduling, the kubelet, the pod's
namespaces and cgroups, and the status round trip add.

Usage: .venv/bin/python bench/startup.py [--pods 100]   (as root for namespaces and cgroups)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster import Server  # noqa: E402

CMD = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def baseline(n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        proc = subprocess.Popen(CMD)
        out.append(time.perf_counter() - t0)
        proc.terminate()
        proc.wait()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=100)
    a = ap.parse_args()
    base = baseline(a.pods)
    srv = Server(disable="")
    client = await srv.ready()
    pods = client.resource("v1", "pods")
    await client.resource("v1", "namespaces", False).create({"metadata": {"name": "startup"}})
    # Wait for the embedded node before timing anything.
    while not (await client.resource("v1", "nodes", False).list())["items"]:
        await asyncio.sleep(0.1)
    running: dict[str, float] = {}
    watch = pods.watch("startup")

    async def follow() -> None:
        async for _typ, obj in watch:
            cs = ((obj.get("status") or {}).get("containerStatuses") or [{}])[0]
            if "running" in (cs.get("state") or {}) and obj["metadata"]["name"] not in running:
                running[obj["metadata"]["name"]] = time.perf_counter()
    follower = asyncio.create_task(follow())
    lat: list[float] = []
    try:
        for i in range(a.pods):
            name = f"s{i:03d}"
            t0 = time.perf_counter()
            await pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                               "spec": {"terminationGracePeriodSeconds": 1,
                                        "containers": [{"name": "c", "image": "busybox", "command": CMD}]}},
                              "startup")
            deadline = t0 + 30
            while name not in running and time.perf_counter() < deadline:
                await asyncio.sleep(0.002)
            if name not in running:
                raise SystemExit(f"pod {name} did not start within 30 s")
            lat.append(running[name] - t0)
        print(f"pod startup (created -> Running), {a.pods} pods one after another, process runtime:")
        print(f"  p50 {statistics.median(lat) * 1000:.0f} ms, p99 {pct(lat, 99) * 1000:.0f} ms, "
              f"max {max(lat) * 1000:.0f} ms")
        print(f"  baseline, spawning the same command directly: p50 {statistics.median(base) * 1000:.1f} ms, "
              f"p99 {pct(base, 99) * 1000:.1f} ms")
        print(f"  ratio p50 {statistics.median(lat) / statistics.median(base):.0f}x, "
              f"p99 {pct(lat, 99) / pct(base, 99):.0f}x")
    finally:
        follower.cancel()
        await watch.close()
        await pods.delete_collection("startup")
        await client.close()
        srv.stop()
        subprocess.run([sys.executable, "-m", "kybernetes.cli.main", "killall", "--data-dir", str(srv.data)],
                       capture_output=True, check=False)


if __name__ == "__main__":
    asyncio.run(main())
