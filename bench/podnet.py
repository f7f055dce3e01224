"""Pod network setup cost per pod (sandbox created -> IP assigned), p50/p99: PodNetwork.add
against Debian's CNI plugins (bridge with host-local IPAM, the reference kubelets use via
containerd/k3s) measured in the same run, and pyroute2 doing the same netlink work when it
is importable.

    sudo .venv/bin/python bench/podnet.py [--pods 100] [--rounds 3]

Everything happens in throwaway network namespaces this script creates (one "node" per
approach, one per pod) and deletes at the end; the host's own network is not touched.
Each approach sets up the same dual-stack pod: a veth on a bridge, eth0 in the pod with
an IPv4 and an IPv6 address from the node's pod CIDRs, default routes via the gateways,
lo up, no duplicate address detection. The pod namespaces exist before the clock starts
(the runtime made the sandbox); the clock stops when the addresses are known and
configured. The CNI plugin is exec'd as kubelets' runtimes do (the CNI env protocol, the
config on stdin), already inside the node namespace (setns in the child, not nsenter),
with ipMasq off: PodNetwork masquerades with one node-wide rule, not per pod. Delete
(CNI DEL) is timed too.

Prints per approach: p50, p99 and mean of add and delete in milliseconds, and the ratio
of each p50 to the CNI plugins'.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from kybernetes.network.podnet import PodNetwork  # noqa: E402
from kybernetes.runtime.nsutil import CLONE_NEWNET, setns  # noqa: E402

CNI_DIR = "/usr/lib/cni"
POD_CIDRS = ["10.42.0.0/24", "fd42::/64"]
TAG = uuid.uuid4().hex[:6]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def make_ns(name: str) -> str:
    sh("ip", "netns", "add", name)
    return f"/run/netns/{name}"


def drop_ns(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


class Namespaces:
    def __init__(self) -> None:
        self.names: list[str] = []

    def new(self, what: str) -> str:
        name = f"kpb-{TAG}-{what}"
        self.names.append(name)
        return make_ns(name)

    def pods(self, approach: str, n: int) -> list[str]:
        return [self.new(f"{approach}{i}") for i in range(n)]

    def cleanup(self) -> None:
        for name in self.names:
            drop_ns(name)
        self.names.clear()


def summary(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(round(0.99 * (len(xs) - 1))))]
    return statistics.median(xs), p99, statistics.fmean(xs)


# ---------------------------------------------------------------------- approaches

async def bench_podnet(ns: Namespaces, n: int, tmp: Path) -> tuple[list[float], list[float]]:
    node = ns.new("node-kyb")
    pods = ns.pods("k", n)
    pn = PodNetwork(node_name="bench", state_dir=tmp / "kyb", pod_cidrs=POD_CIDRS,
                    cluster_cidrs="10.42.0.0/16,fd42::/56", node_ips=["198.18.0.1"], netns=node)
    await pn.setup()
    adds, dels = [], []
    try:
        for i, pod in enumerate(pods):
            t0 = time.perf_counter()
            await pn.add(f"sandbox-{i}", pod, namespace="bench", name=f"p{i}", uid=str(i))
            adds.append(time.perf_counter() - t0)
        for i, pod in enumerate(pods):
            t0 = time.perf_counter()
            await pn.delete(f"sandbox-{i}", pod)
            dels.append(time.perf_counter() - t0)
    finally:
        await pn.close()
    return adds, dels


def _cni_config(data_dir: Path) -> bytes:
    return json.dumps({
        "cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": "cni0", "isGateway": True,
        "ipMasq": False, "hairpinMode": True, "mtu": 1500,
        "ipam": {"type": "host-local", "dataDir": str(data_dir),
                 "ranges": [[{"subnet": c}] for c in POD_CIDRS],
                 "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]},
    }).encode()


def _cni(command: str, node: str, pod: str, cid: str, config: bytes) -> bytes:
    def enter() -> None:
        fd = os.open(node, os.O_RDONLY)
        setns(fd, CLONE_NEWNET)
        os.close(fd)

    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": pod, "CNI_IFNAME": "eth0",
           "CNI_PATH": CNI_DIR, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    r = subprocess.run([f"{CNI_DIR}/bridge"], input=config, env=env, capture_output=True, preexec_fn=enter)
    if r.returncode != 0:
        raise RuntimeError(f"CNI {command} failed: {r.stdout.decode()} {r.stderr.decode()}")
    return r.stdout


def bench_cni(ns: Namespaces, n: int, tmp: Path) -> tuple[list[float], list[float]]:
    node = ns.new("node-cni")
    pods = ns.pods("c", n)
    config = _cni_config(tmp / "cni")
    adds, dels = [], []
    for i, pod in enumerate(pods):
        t0 = time.perf_counter()
        out = json.loads(_cni("ADD", node, pod, f"sandbox-{i}", config))
        adds.append(time.perf_counter() - t0)
        assert len(out["ips"]) == 2, out
    for i, pod in enumerate(pods):
        t0 = time.perf_counter()
        _cni("DEL", node, pod, f"sandbox-{i}", config)
        dels.append(time.perf_counter() - t0)
    return adds, dels


def bench_pyroute2(ns: Namespaces, n: int) -> tuple[list[float], list[float]] | None:
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return None
    node_path = ns.new("node-pyroute2")
    pods = ns.pods("p", n)
    adds, dels = [], []
    with IPRoute(netns=node_path) as node:
        node.link("add", ifname="br0", kind="bridge")
        br = node.link_lookup(ifname="br0")[0]
        node.link("set", index=br, state="up")
        node.addr("add", index=br, address="10.42.0.1", prefixlen=24)
        node.addr("add", index=br, address="fd42::1", prefixlen=64, flags=0x02)
        for i, pod in enumerate(pods):
            t0 = time.perf_counter()
            # The same steps PodNetwork takes (IPAM aside): veth with its peer born in the pod.
            fd = os.open(pod, os.O_RDONLY)
            try:
                node.link("add", ifname=f"vp{i}", kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
            finally:
                os.close(fd)
            idx = node.link_lookup(ifname=f"vp{i}")[0]
            node.link("set", index=idx, master=br, state="up")
            with IPRoute(netns=pod) as p:
                eth0 = p.link_lookup(ifname="eth0")[0]
                p.link("set", index=eth0, state="up")
                p.link("set", index=p.link_lookup(ifname="lo")[0], state="up")
                p.addr("add", index=eth0, address=str(ipaddress.ip_address("10.42.0.2") + i), prefixlen=24)
                p.addr("add", index=eth0, address=str(ipaddress.ip_address("fd42::2") + i), prefixlen=64,
                       flags=0x02)
                p.route("add", dst="0.0.0.0/0", gateway="10.42.0.1")
                p.route("add", dst="::/0", gateway="fd42::1", family=10)
            adds.append(time.perf_counter() - t0)
        for i in range(n):
            t0 = time.perf_counter()
            node.link("del", index=node.link_lookup(ifname=f"vp{i}")[0])
            dels.append(time.perf_counter() - t0)
    return adds, dels


# ---------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("ip"):
        sys.exit("needs root and iproute2")
    have_cni = os.access(f"{CNI_DIR}/bridge", os.X_OK) and os.access(f"{CNI_DIR}/host-local", os.X_OK)
    results: dict[str, tuple[list[float], list[float]]] = {}

    def record(name: str, got: tuple[list[float], list[float]] | None) -> None:
        if got is not None:
            a, d = results.setdefault(name, ([], []))
            a.extend(got[0])
            d.extend(got[1])

    for _ in range(args.rounds):
        ns = Namespaces()
        try:
            with tempfile.TemporaryDirectory(prefix="kyb-podnet-bench-") as tmp:
                record("kybernetes (netlink)", asyncio.run(bench_podnet(ns, args.pods, Path(tmp))))
                if have_cni:
                    record("CNI bridge+host-local", bench_cni(ns, args.pods, Path(tmp)))
                record("pyroute2 (same steps)", bench_pyroute2(ns, args.pods))
        finally:
            ns.cleanup()

    base = results.get("CNI bridge+host-local")
    base_add = summary(base[0])[0] if base else None
    base_del = summary(base[1])[0] if base else None
    print(f"pod network setup, dual stack, {args.pods} pods x {args.rounds} rounds (ms)")
    print(f"{'approach':24} {'add p50':>8} {'p99':>7} {'mean':>7} {'del p50':>8} {'p99':>7}   vs CNI (add, del)")
    for name, (adds, dels) in results.items():
        a50, a99, amean = (x * 1000 for x in summary(adds))
        d50, d99, _ = (x * 1000 for x in summary(dels))
        ratio = ""
        if base_add and base_del:
            ratio = f"{a50 / (base_add * 1000):.2f}x, {d50 / (base_del * 1000):.2f}x"
        print(f"{name:24} {a50:8.2f} {a99:7.2f} {amean:7.2f} {d50:8.2f} {d99:7.2f}   {ratio}")
    if not have_cni:
        print("(CNI plugins not found in /usr/lib/cni: apt-get install containernetworking-plugins)")


if __name__ == "__main__":
    main()
