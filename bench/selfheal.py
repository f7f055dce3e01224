"""Self-healing time: from a node agent's death to all its pods Running on other nodes.

A `kyb server` runs the control plane (API server, controllers, scheduler; no
embedded kubelet) with the default node-monitor grace period of 40 s. Each node
is its own process: `kyb hollow-nodes --count 1` (the fake runtime reports pods
Running without running anything) or, with --agents, a real `kyb agent` on the
process runtime. A Deployment whose pods tolerate the unreachable and
not-ready NoExecute taints for 0 s is spread over them; then the victim's
process is SIGKILLed and the bench follows, through watches, until

  not ready:  the victim's Ready condition is Unknown (or False),
  tainted:    it carries a node.kubernetes.io/unreachable (not-ready) NoExecute taint,
  evicted:    every pod it ran is deleted or terminating,
  healed:     the Deployment again has all its replicas Running and Ready, none
              of them on the victim.

The grace period counts from the victim's last lease renewal, not from its
death: a node killed just after renewing is noticed 40 s later, one killed just
before its next renewal (renew interval 10 s) about 30 s later. So each run
reports the total from the kill, the time since the last renewal at the kill,
and the margin over the grace period measured from that last renewal (the
part that is the control plane's own reaction, independent of the heartbeat
phase). --phase sets how long after a renewal the victim is killed; the
default, 0, is the worst case.

Usage:
  .venv/bin/python bench/selfheal.py [--replicas 40] [--survivors 3] [--runs 3] [--phase 0,5,9]
  .venv/bin/python bench/selfheal.py --agents      (real `kyb agent` nodes; as root)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cluster import free_port, wait_ready  # noqa: E402
from kybernetes.client import Client, Informer  # noqa: E402
from kybernetes.client.informer import strip_managed_fields  # noqa: E402

KYB = [sys.executable, "-m", "kybernetes.cli.main"]
GRACE = 40.0  # the server's default --node-monitor-grace-period, left as it is
TAINT_KEYS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
CMD = ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]


def micro_time(ts: str | None) -> float | None:
    """A MicroTime / Time string as a Unix time, keeping the fraction."""
    if not ts:
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(ts, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
    return None


class Cluster:
    """A `kyb server` plus one process per node, all under one temporary directory."""

    def __init__(self, survivors: int, agents: bool):
        self.dir = Path(tempfile.mkdtemp(prefix="kyb-selfheal-"))
        self.data = self.dir / "server"
        self.port = free_port()
        self.agents = agents
        self.log = open(self.dir / "server.log", "wb")  # noqa: SIM115 - the server process owns it
        self.server = subprocess.Popen(
            KYB + ["server", "--data-dir", str(self.data), "--port", str(self.port), "--disable", "kubelet",
                   "--log-level", "info"], stdout=self.log, stderr=self.log)
        self.victim = "victim-0"
        self.survivors = [f"survivor{i + 1}-0" for i in range(survivors)]
        self.nodes: dict[str, subprocess.Popen] = {}

    async def ready(self) -> Client:
        return await wait_ready(self.server, self.data / "kubeconfig", self.dir / "server.log")

    def start_node(self, name: str) -> None:
        log = open(self.dir / f"{name}.log", "wb")  # noqa: SIM115 - the node process owns it
        if self.agents:
            args = KYB + ["--log-level", "info", "agent", "--server", f"https://127.0.0.1:{self.port}",
                          "--token", (self.data / "pki" / "join.token").read_text().strip(),
                          "--name", name, "--server-data-dir", str(self.data),
                          "--data-dir", str(self.dir / name), "--kubelet-port", "0", "--runtime", "process"]
        else:
            # One hollow node per process, so killing the process kills exactly one node.
            prefix = name[:-1]
            args = KYB + ["--log-level", "info", "hollow-nodes", "--count", "1", "--prefix", prefix,
                          "--kubeconfig", str(self.data / "kubeconfig")]
        self.nodes[name] = subprocess.Popen(args, stdout=log, stderr=log)

    def stop(self) -> None:
        for proc in self.nodes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.nodes.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.agents:
            # Kubelets leave their pods running when they exit; the victim's were orphaned by the kill.
            for name in self.nodes:
                subprocess.run(KYB + ["killall", "--data-dir", str(self.dir / name)], capture_output=True,
                               check=False)
        self.server.send_signal(signal.SIGINT)
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()


def deployment(replicas: int, agents: bool) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": "busybox",
                                 "resources": {"requests": {"cpu": "10m", "memory": "8Mi"}}}
    if agents:
        container["command"] = CMD
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "selfheal"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "selfheal"}},
                     "template": {"metadata": {"labels": {"app": "selfheal"}}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "containers": [container],
                         "tolerations": [{"key": k, "operator": "Exists", "effect": "NoExecute",
                                          "tolerationSeconds": 0} for k in TAINT_KEYS]}}}}


def running_ready(pod: dict[str, Any]) -> bool:
    st = pod.get("status") or {}
    return st.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


async def one_run(a: argparse.Namespace, phase: float) -> dict[str, Any]:
    cl = Cluster(a.survivors, a.agents)
    client = None
    informers: list[Informer] = []
    try:
        client = await cl.ready()
        for name in [cl.victim, *cl.survivors]:
            cl.start_node(name)
        nodes_rc = client.resource("v1", "nodes", False)
        deadline = time.monotonic() + 120
        while True:
            names = {n["metadata"]["name"] for n in (await nodes_rc.list())["items"]}
            if names >= {cl.victim, *cl.survivors}:
                break
            dead = [n for n, p in cl.nodes.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise SystemExit(f"nodes did not register (exited: {dead}); logs in {cl.dir}")
            await asyncio.sleep(0.2)

        nodes = Informer(nodes_rc, transform=strip_managed_fields)
        leases = Informer(client.resource("coordination.k8s.io/v1", "leases"), namespace="kube-node-lease",
                          transform=strip_managed_fields)
        pods = Informer(client.resource("v1", "pods"), namespace="default", label_selector="app=selfheal",
                        transform=strip_managed_fields)
        informers = [nodes, leases, pods]
        changed = asyncio.Event()
        renewed = asyncio.Event()

        def poke(*_: Any) -> None:
            changed.set()

        def lease_update(_old: dict[str, Any], new: dict[str, Any]) -> None:
            if new["metadata"]["name"] == cl.victim:
                renewed.set()
        for inf in informers:
            inf.add_handler(on_add=poke, on_update=poke, on_delete=poke)
        leases.add_handler(on_update=lease_update)
        for inf in informers:
            await inf.start()
        for inf in informers:
            await inf.wait_for_sync(30)

        async def until(pred, what: str, timeout: float) -> float:
            end = time.monotonic() + timeout
            while not pred():
                changed.clear()
                left = end - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"{what}: timed out; logs in {cl.dir}")
                try:
                    await asyncio.wait_for(changed.wait(), min(left, 0.5))
                except TimeoutError:
                    pass
            return time.time()

        def live_pods() -> list[dict[str, Any]]:
            return [p for p in pods.list() if not p["metadata"].get("deletionTimestamp")]

        await client.resource("apps/v1", "deployments").create(deployment(a.replicas, a.agents), "default")
        await until(lambda: sum(running_ready(p) for p in live_pods()) == a.replicas, "all replicas Running",
                    180)
        placed: dict[str, int] = {}
        for p in live_pods():
            placed[p["spec"]["nodeName"]] = placed.get(p["spec"]["nodeName"], 0) + 1
        on_victim = {p["metadata"]["uid"] for p in live_pods() if p["spec"]["nodeName"] == cl.victim}
        if not on_victim:
            raise SystemExit(f"no pod landed on the victim: {placed}")

        # Kill the victim `phase` seconds after it renews its lease.
        renewed.clear()
        await asyncio.wait_for(renewed.wait(), 30)
        await asyncio.sleep(phase)
        lease = leases.get(f"kube-node-lease/{cl.victim}") or {}
        last_renewal = micro_time((lease.get("spec") or {}).get("renewTime"))
        t_kill = time.time()
        cl.nodes[cl.victim].send_signal(signal.SIGKILL)
        cl.nodes[cl.victim].wait()
        since_renewal = t_kill - last_renewal if last_renewal else float("nan")

        def victim_node() -> dict[str, Any]:
            return nodes.get(cl.victim) or {}

        def not_ready() -> bool:
            conds = (victim_node().get("status") or {}).get("conditions") or []
            return any(c.get("type") == "Ready" and c.get("status") != "True" for c in conds)

        def tainted() -> bool:
            return any(t.get("key") in TAINT_KEYS and t.get("effect") == "NoExecute"
                       for t in (victim_node().get("spec") or {}).get("taints") or [])

        def evicted() -> bool:
            return not any(p["metadata"]["uid"] in on_victim for p in live_pods())

        def healed() -> bool:
            live = live_pods()
            return (len(live) == a.replicas and all(p["spec"].get("nodeName") != cl.victim for p in live)
                    and all(running_ready(p) for p in live))

        timeout = GRACE + 120
        t_nr = await until(not_ready, "victim NotReady/Unknown", timeout)
        t_taint = await until(tainted, "victim tainted", timeout)
        t_evict = await until(evicted, "victim's pods evicted", timeout)
        t_heal = await until(healed, "all replicas Running elsewhere", timeout)
        total = t_heal - t_kill
        res = {"phase": phase, "since_renewal": since_renewal, "on_victim": len(on_victim), "placed": placed,
               "not_ready": t_nr - t_kill, "tainted": t_taint - t_kill, "evicted": t_evict - t_kill,
               "healed": total, "margin_kill": total - GRACE, "margin_renewal": total + since_renewal - GRACE}
        return res
    finally:
        for inf in informers:
            await inf.stop()
        if client is not None:
            await client.close()
        cl.stop()
        if not a.keep:
            subprocess.run(["rm", "-rf", str(cl.dir)], check=False)
        else:
            print(f"  logs kept in {cl.dir}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=40)
    ap.add_argument("--survivors", type=int, default=3, help="surviving nodes (one process each)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--phase", default="0,5,9",
                    help="seconds after a lease renewal to kill the victim, one per run (cycled)")
    ap.add_argument("--agents", action="store_true", help="real `kyb agent` nodes (process runtime) "
                                                          "instead of hollow nodes")
    ap.add_argument("--keep", action="store_true", help="keep the logs and data dirs")
    a = ap.parse_args()
    phases = [float(p) for p in a.phase.split(",")]
    kind = "kyb agent (process runtime)" if a.agents else "kyb hollow-nodes --count 1"
    print(f"self-healing: Deployment of {a.replicas} (tolerationSeconds 0 for unreachable/not-ready), "
          f"1 victim + {a.survivors} survivor nodes, each a `{kind}` process; node-monitor grace {GRACE:.0f} s")
    results = []
    for i in range(a.runs):
        phase = phases[i % len(phases)]
        r = await one_run(a, phase)
        results.append(r)
        print(f"run {i + 1}: killed {r['since_renewal']:.1f} s after the victim's last lease renewal "
              f"({r['on_victim']} of {a.replicas} pods on it; placement {r['placed']})")
        print(f"  from the kill: NotReady/Unknown {r['not_ready']:.1f} s, tainted {r['tainted']:.1f} s, "
              f"pods evicted {r['evicted']:.1f} s, all {a.replicas} Running elsewhere {r['healed']:.1f} s")
        print(f"  total {r['healed']:.1f} s = grace {GRACE:.0f} s {r['margin_kill']:+.1f} s; from the last "
              f"renewal {r['healed'] + r['since_renewal']:.1f} s = grace {r['margin_renewal']:+.1f} s; "
              f"target < {GRACE + 5:.0f} s {'met' if r['healed'] < GRACE + 5 else 'MISSED'}")
    if len(results) > 1:
        worst = max(results, key=lambda r: r["healed"])
        print(f"worst total {worst['healed']:.1f} s (margin over grace {worst['margin_kill']:+.1f} s); "
              f"margin from the last renewal {min(r['margin_renewal'] for r in results):+.1f} .. "
              f"{max(r['margin_renewal'] for r in results):+.1f} s")


if __name__ == "__main__":
    os.environ.setdefault("KYB_LOG_LEVEL", "info")
    asyncio.run(main())
