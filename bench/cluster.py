"""End-to-end benchmarks on hollow nodes, through a real `kyb server` over HTTPS.

  scheduler:  N plain pods (and pods with anti-affinity / topology spread) onto
              M hollow nodes, created -> bound, in pods/s. Baseline in the same
              run: creating the same pods with the scheduler out of the way
              (the API's own create rate), so the ratio says how close
              scheduling keeps up with the store of record.
  workloads:  a Deployment scaled 0 -> R on M hollow nodes until all Ready,
              then a full rolling update; seconds for each, control-plane CPU
              seconds and peak RSS.

Usage:
  .venv/bin/python bench/cluster.py scheduler --nodes 1000 --pods 10000
  .venv/bin/python bench/cluster.py workloads --nodes 300 --replicas 3000
The load generator, hollow nodes and server share the machine's 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kybernetes.api.errors import StatusError  # noqa: E402
from kybernetes.client import Client  # noqa: E402
from kybernetes.runtime.hollow import HollowNodes  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(proc: subprocess.Popen, kubeconfig: Path, log: Path) -> Client:
    """A client of a starting `kyb server` once it writes its kubeconfig and answers /readyz."""
    while not kubeconfig.exists():
        if proc.poll() is not None:
            raise SystemExit(log.read_text())
        await asyncio.sleep(0.05)
    client = Client.from_kubeconfig(str(kubeconfig))
    while True:
        try:
            await client.request("GET", "/readyz")
            return client
        except Exception:  # noqa: BLE001 - still starting
            await asyncio.sleep(0.05)


_RUNNING: list[Server] = []


class Server:
    def __init__(self, disable: str = ""):
        self.data = Path(tempfile.mkdtemp())
        self.port = free_port()
        args = [sys.executable, "-m", "kybernetes.cli.main", "server", "--data-dir", str(self.data), "--port",
                str(self.port), "--log-level", "warning", "--runtime", "process",
                # Room for a /24 per node of up to 4,096 hollow nodes.
                "--cluster-cidr", "10.32.0.0/12"]
        if disable:
            args += ["--disable", disable]
        self.log = open(self.data / "server.log", "wb")  # noqa: SIM115 - the server process owns it
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        self.peak_rss = 0
        _RUNNING.append(self)

    async def ready(self) -> Client:
        return await wait_ready(self.proc, self.data / "kubeconfig", self.data / "server.log")

    def cpu_seconds(self) -> float:
        parts = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(parts[11]) + int(parts[12])) / ticks

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                mb = int(line.split()[1]) / 1024
                self.peak_rss = max(self.peak_rss, mb)
                return mb
        return 0.0

    def stop(self) -> None:
        if self in _RUNNING:
            _RUNNING.remove(self)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pod(name: str, kind: str) -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "busybox",
                                  "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}]}
    labels = {"app": "bench", "group": name[-2:]}
    if kind == "anti-affinity":
        spec["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                "labelSelector": {"matchLabels": {"group": name[-2:]}}}}]}}
    elif kind == "spread":
        spec["topologySpreadConstraints"] = [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                              "whenUnsatisfiable": "ScheduleAnyway",
                                              "labelSelector": {"matchLabels": {"group": name[-2:]}}}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}


async def create_pods(client: Client, ns: str, n: int, kind: str, conc: int = 32) -> float:
    pods = client.resource("v1", "pods")
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await pods.create(pod(f"p{i:05d}", kind), ns)
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return time.perf_counter() - t0


async def count_bound(client: Client, ns: str) -> int:
    lst = await client.resource("v1", "pods").list(ns, field_selector="spec.nodeName!=")
    return len(lst["items"])


async def make_namespace(client: Client, name: str) -> None:
    """A namespace with its default ServiceAccount: pods need it, and with the
    controllers disabled nobody else creates it (as upstream)."""
    await client.resource("v1", "namespaces", False).create({"metadata": {"name": name}})
    try:
        await client.resource("v1", "serviceaccounts").create({"metadata": {"name": "default"}}, name)
    except StatusError as e:
        if e.code != 409:
            raise


async def bench_scheduler(a: argparse.Namespace) -> None:
    # Baseline: the same creates with no scheduler binding anything.
    base = Server(disable="scheduler,controllers,kubelet")
    client = await base.ready()
    await make_namespace(client, "b")
    base_s = await create_pods(client, "b", a.pods, "plain")
    await client.close()
    base.stop()
    base_rate = a.pods / base_s
    print(f"baseline: {a.pods} pod creates with no scheduler: {base_rate:.0f} pods/s")
    for kind in a.kinds.split(","):
        srv = Server(disable="controllers,kubelet")
        client = await srv.ready()
        hollow = HollowNodes(client, a.nodes, renew_interval=30.0, pods=max(110, a.pods // a.nodes * 2))
        await hollow.register()
        await make_namespace(client, "s")
        cpu0 = srv.cpu_seconds()
        t0 = time.perf_counter()
        created = asyncio.create_task(create_pods(client, "s", a.pods, kind))
        while True:
            await asyncio.sleep(0.5)
            srv.rss_mb()
            if created.done() and await count_bound(client, "s") >= a.pods:
                break
            if time.perf_counter() - t0 > a.timeout:
                print(f"  {kind}: timed out with {await count_bound(client, 's')} bound")
                break
        took = time.perf_counter() - t0
        rate = a.pods / took
        print(f"{kind:14} {a.pods} pods onto {a.nodes} hollow nodes: created->bound {took:.1f} s = "
              f"{rate:.0f} pods/s  (ratio to create-only baseline {rate / base_rate:.2f}); "
              f"server CPU {srv.cpu_seconds() - cpu0:.1f} s, peak RSS {srv.peak_rss:.0f} MB")
        await client.close()
        srv.stop()


async def bench_workloads(a: argparse.Namespace) -> None:
    srv = Server(disable="kubelet")
    client = await srv.ready()
    hollow = HollowNodes(client, a.nodes, renew_interval=20.0, pods=max(110, a.replicas // a.nodes * 2))
    await hollow.start()
    deps = client.resource("apps/v1", "deployments")
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                    "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "c", "image": "nginx:1.26",
                                                          "resources": {"requests": {"cpu": "1m"}}}]}}}}
    await deps.create(dep, "default")

    async def wait(pred, what: str) -> float:
        t0 = time.perf_counter()
        while True:
            d = await deps.get("web", "default")
            srv.rss_mb()
            if pred(d):
                return time.perf_counter() - t0
            if time.perf_counter() - t0 > a.timeout:
                raise SystemExit(f"{what}: timed out: {d.get('status')}")
            await asyncio.sleep(0.25)
    cpu0 = srv.cpu_seconds()
    t0 = time.perf_counter()
    await deps.patch("web", {"spec": {"replicas": a.replicas}}, namespace="default")
    scale_s = await wait(lambda d: (d.get("status") or {}).get("readyReplicas") == a.replicas, "scale up")
    scale_cpu = srv.cpu_seconds() - cpu0
    cpu1 = srv.cpu_seconds()
    await deps.patch("web", {"spec": {"template": {"spec": {"containers": [
        {"name": "c", "image": "nginx:1.27"}]}}}}, namespace="default", patch_type="strategic")

    def rolled(d: dict) -> bool:
        s = d.get("status") or {}
        return (s.get("observedGeneration") == d["metadata"]["generation"] and
                s.get("updatedReplicas") == a.replicas and s.get("replicas") == a.replicas and
                s.get("availableReplicas") == a.replicas)
    roll_s = await wait(rolled, "rolling update")
    roll_cpu = srv.cpu_seconds() - cpu1
    print(f"Deployment 0 -> {a.replicas} replicas Ready on {a.nodes} hollow nodes: {scale_s:.1f} s "
          f"(server CPU {scale_cpu:.1f} s)")
    print(f"rolling update of all {a.replicas}: {roll_s:.1f} s (server CPU {roll_cpu:.1f} s)")
    print(f"control plane peak RSS {srv.peak_rss:.0f} MB; bench process max RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; total {time.perf_counter() - t0:.1f} s")
    await hollow.stop()
    await client.close()
    srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scheduler")
    s.add_argument("--nodes", type=int, default=1000)
    s.add_argument("--pods", type=int, default=10000)
    s.add_argument("--kinds", default="plain,anti-affinity,spread")
    s.add_argument("--timeout", type=float, default=600)
    w = sub.add_parser("workloads")
    w.add_argument("--nodes", type=int, default=300)
    w.add_argument("--replicas", type=int, default=3000)
    w.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    try:
        asyncio.run(bench_scheduler(a) if a.what == "scheduler" else bench_workloads(a))
    finally:
        # A failed run must not leave its servers behind.
        for srv in list(_RUNNING):
            srv.stop()


if __name__ == "__main__":
    main()
