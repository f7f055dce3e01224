"""Service proxy benchmark: programming nftables for many Services, and traffic through a
ClusterIP against a direct connection to the pod, every figure beside a baseline of the
same run.

    .venv/bin/python bench/proxy.py [--services 1000,10000] [--changes 20] [--seconds 3]
                                    [--conns 2000] [--rounds 3] [--no-baseline]

Needs root, iproute2 and nftables; everything happens in network namespaces this script
creates (and deletes at the end), no packet leaves them.

Sync. An in-process API server holds N Services (ClusterIP, one TCP port) each with an
EndpointSlice of 2 ready endpoints; a ServiceProxy programs a throwaway namespace.
  * start: ServiceProxy.start() until the table is programmed (listing 2N objects from the
    API through the informers, computing every fragment, one nft transaction);
  * cold: a full rebuild from the informer caches (compute + one transaction);
  * floor: the same transaction text loaded by libnftables alone (what nft itself costs);
  * kube-proxy layout: kube-proxy's nftables-mode shape for the same Services (a chain per
    Service and per endpoint, as upstream writes it), loaded the same way: the baseline
    this layout is meant to beat;
  * one change at N: an EndpointSlice update (one endpoint replaced) from the API write
    to the new map element being in the kernel (watch delivery, the 5 ms coalescing
    window, one Service's fragment, one small transaction); median of --changes.
Targets: cold at 10,000 < 2 s, one change < 50 ms.

Traffic. A node namespace with a bridge, a client pod and a server pod. The server (a
threaded socket server in its own process, in the server pod) and the client (another
process, in the client pod) talk to the pod IP directly, and to a ClusterIP programmed
by the ServiceProxy (DNAT in the node's prerouting), alternately, --rounds times:
  * bulk: one TCP connection sending for --seconds, bytes/s;
  * connection latency: connect, 1-byte request and answer, close; --conns times;
  * round trip on an open connection: 1 byte each way.
Target: ClusterIP ≥ 0.9× direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import socketserver
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---------------------------------------------------------------------- child processes

class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = sock.recv(1)
        if mode == b"B":
            total = 0
            buf = bytearray(1 << 20)
            while n := sock.recv_into(buf):
                total += n
            sock.sendall(str(total).encode())
        elif mode == b"P":
            while sock.recv(1):
                sock.sendall(b"!")


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def child_server(port: int) -> None:
    with _Server(("0.0.0.0", port), _Handler) as srv:
        print("ready", flush=True)
        srv.serve_forever()


def child_client(mode: str, host: str, port: int, arg: float) -> None:
    if mode == "bulk":
        chunk = b"x" * (256 << 10)
        s = socket.create_connection((host, port))
        s.sendall(b"B")
        end = time.perf_counter() + arg
        start = time.perf_counter()
        while time.perf_counter() < end:
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
        total = int(s.recv(64))
        elapsed = time.perf_counter() - start
        s.close()
        print(json.dumps({"bps": total / elapsed}))
    elif mode == "conn":
        lat = []
        for _ in range(int(arg)):
            t = time.perf_counter()
            s = socket.create_connection((host, port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"P!")
            s.recv(1)
            s.close()
            lat.append(time.perf_counter() - t)
        print(json.dumps({"lat": lat}))
    elif mode == "rr":
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"P")
        lat = []
        for _ in range(int(arg)):
            t = time.perf_counter()
            s.sendall(b"!")
            s.recv(1)
            lat.append(time.perf_counter() - t)
        s.close()
        print(json.dumps({"lat": lat}))


# ---------------------------------------------------------------------- helpers

def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def vip(i: int) -> str:
    i += 20  # clear of 10.96.0.1 (kubernetes) and 10.96.0.10 (DNS)
    return f"10.96.{i // 250}.{i % 250 + 2}"


def ep(i: int, j: int) -> str:
    k = 2 * i + j
    return f"10.{244 + k // 62500}.{(k // 250) % 250}.{k % 250 + 2}"


def service(i: int) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}", "namespace": "default"},
            "spec": {"clusterIP": vip(i), "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                                     "targetPort": 8080}]}}


def endpoint_slice(i: int, ips: list[str]) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"s{i}-x", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": f"s{i}",
                                    "endpointslice.kubernetes.io/managed-by": "bench"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": "other"} for ip in ips]}


def kube_proxy_script(n: int) -> str:
    """kube-proxy's nftables-mode layout for n Services of 2 endpoints (pkg/proxy/nftables)."""
    lines = ["table ip kp { }", "delete table ip kp", "table ip kp {",
             "  map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }",
             "  chain mark-for-masquerade { meta mark set meta mark | 0x4000; }",
             "  chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }",
             "  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }",
             "}"]
    elems = []
    for i in range(n):
        name = f"{i:05d}-default/s{i}/tcp/http"
        eps = []
        for j in range(2):
            e = ep(i, j)
            chain = f"endpoint-{i:05d}{j}-default/s{i}/tcp/http__{e}/8080"
            eps.append(chain)
            lines.append(f"add chain ip kp {chain}")
            lines.append(f"add rule ip kp {chain} ip saddr {e} jump mark-for-masquerade")
            lines.append(f"add rule ip kp {chain} meta l4proto tcp dnat to {e}:8080")
        lines.append(f"add chain ip kp service-{name}")
        lines.append(f"add rule ip kp service-{name} ip daddr {vip(i)} tcp dport 80 ip saddr != 10.244.0.0/16 "
                     "jump mark-for-masquerade")
        lines.append(f"add rule ip kp service-{name} numgen random mod 2 vmap {{ 0 : goto {eps[0]}, "
                     f"1 : goto {eps[1]} }}")
        elems.append(f"{vip(i)} . tcp . 80 : goto service-{name}")
    lines.append(f"add element ip kp service-ips {{ {', '.join(elems)} }}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- sync

async def sync_bench(n: int, changes: int, baseline: bool) -> dict:
    from kybernetes.apiserver.server import APIServer
    from kybernetes.client import Client
    from kybernetes.network.nftables import Nft
    from kybernetes.network.proxy import ServiceProxy
    from kybernetes.storage.sqlite import SqliteStore

    ns = f"kpxb-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    path = f"/run/netns/{ns}"
    tmp = Path(tempfile.mkdtemp(prefix="kyb-proxy-bench-"))
    api = APIServer(SqliteStore(tmp / "state.db"))
    await api.start()
    client = Client.in_process(api.handle)
    out: dict = {"n": n}
    proxy = None
    try:
        svcs = client.resource("v1", "services")
        slices = client.resource("discovery.k8s.io/v1", "endpointslices")
        sem = asyncio.Semaphore(32)

        async def make(i: int) -> None:
            async with sem:
                await svcs.create(service(i))
                await slices.create(endpoint_slice(i, [ep(i, 0), ep(i, 1)]))

        t = time.perf_counter()
        await asyncio.gather(*(make(i) for i in range(n)))
        print(f"# {n} Services and EndpointSlices created in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        proxy = ServiceProxy(client, "node1", [], cluster_cidrs=["10.244.0.0/14"], netns=path)
        t = time.perf_counter()
        await proxy.start()
        out["start"] = time.perf_counter() - t
        colds = []
        for _ in range(3):
            t = time.perf_counter()
            await proxy.rebuild()
            colds.append(time.perf_counter() - t)
        out["cold"] = min(colds)
        script = proxy.layout.full(proxy.desired.everything()).text()  # type: ignore[arg-type]
        floor = Nft(netns=path)
        try:
            floors = []
            for _ in range(3):
                t = time.perf_counter()
                await floor.run(script)
                floors.append(time.perf_counter() - t)
            out["floor"] = min(floors)
            if baseline:
                kp = kube_proxy_script(n)
                t = time.perf_counter()
                await floor.run(kp)
                out["kube_proxy"] = time.perf_counter() - t
                await floor.run("delete table ip kp\n")
        finally:
            await floor.close()
        await proxy.rebuild()  # the floor runs replaced the table behind the proxy's back

        lat, sync = [], []
        for j in range(changes):
            i = (n // 2 + j * 7919) % n
            new = f"10.{250 + j // 250}.{j % 250}.7"
            cur = await slices.get(f"s{i}-x", "default")
            cur["endpoints"][1]["addresses"] = [new]
            kernel = proxy.backend.kernel  # type: ignore[union-attr]
            keys = [("e", "ep4tcp", f"{vip(i)} . 80 . {k}") for k in (0, 1)]
            t = time.perf_counter()
            await slices.update(cur)
            while not any(kernel.get(k) == f"{new} . 8080" for k in keys):
                await asyncio.sleep(0.0005)
            lat.append(time.perf_counter() - t)
            sync.append(proxy.last_sync_seconds)
        if lat:
            out["change"] = statistics.median(lat)
            out["change_max"] = max(lat)
            out["change_sync"] = statistics.median(sync)
    finally:
        if proxy is not None:
            await proxy.stop()
        await client.close()
        await api.stop()
        await api.store.close()
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
    return out


# ---------------------------------------------------------------------- traffic

async def traffic_bench(seconds: float, conns: int, rounds: int) -> dict:
    from kybernetes.apiserver.server import APIServer
    from kybernetes.client import Client
    from kybernetes.network.proxy import ServiceProxy
    from kybernetes.storage.sqlite import SqliteStore

    tag = uuid.uuid4().hex[:6]
    names = {k: f"kpxt-{tag}-{k}" for k in ("node", "cli", "srv")}
    for name in names.values():
        sh("ip", "netns", "add", name)
    server = None
    tmp = Path(tempfile.mkdtemp(prefix="kyb-proxy-bench-"))
    api = APIServer(SqliteStore(tmp / "state.db"))
    await api.start()
    client = Client.in_process(api.handle)
    proxy = None
    try:
        node = names["node"]

        def ip(ns: str, *args: str) -> None:
            sh("ip", "-n", ns, *args)

        for name in names.values():
            ip(name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ip(node, "link", "add", "br0", "type", "bridge")
        ip(node, "addr", "add", "10.244.0.1/24", "dev", "br0")
        ip(node, "link", "set", "br0", "up")
        for pod, addr in (("cli", "10.244.0.11"), ("srv", "10.244.0.12")):
            ip(node, "link", "add", pod, "type", "veth", "peer", "name", "eth0", "netns", names[pod])
            ip(node, "link", "set", pod, "master", "br0", "up")
            ip(names[pod], "addr", "add", f"{addr}/24", "dev", "eth0")
            ip(names[pod], "link", "set", "eth0", "up")
            ip(names[pod], "route", "add", "default", "via", "10.244.0.1")
        me = [sys.executable, str(Path(__file__).resolve())]
        server = subprocess.Popen(["ip", "netns", "exec", names["srv"], *me, "_server", "8080"],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

        await client.resource("v1", "services").create(service(0))
        await client.resource("discovery.k8s.io/v1", "endpointslices").create(endpoint_slice(0, ["10.244.0.12"]))
        proxy = ServiceProxy(client, "node1", [], cluster_cidrs=["10.244.0.0/16"], netns=f"/run/netns/{node}")
        await proxy.start()

        def run(mode: str, host: str, port: int, arg: float) -> dict:
            r = subprocess.run(["ip", "netns", "exec", names["cli"], *me, "_client", mode, host, str(port),
                                str(arg)], check=True, capture_output=True, text=True)
            return json.loads(r.stdout)

        targets = {"direct": ("10.244.0.12", 8080), "clusterip": (vip(0), 80)}
        res: dict[str, dict[str, list[float]]] = {k: {"bps": [], "conn": [], "conn99": [], "rr": []}
                                                   for k in targets}
        run("conn", vip(0), 80, 50)  # warm up both paths
        run("conn", "10.244.0.12", 8080, 50)
        for _ in range(rounds):
            for name, (host, port) in targets.items():
                res[name]["bps"].append(run("bulk", host, port, seconds)["bps"])
            for name, (host, port) in targets.items():
                lat = sorted(run("conn", host, port, conns)["lat"])
                res[name]["conn"].append(statistics.median(lat))
                res[name]["conn99"].append(lat[int(len(lat) * 0.99)])
            for name, (host, port) in targets.items():
                res[name]["rr"].append(statistics.median(run("rr", host, port, conns * 5)["lat"]))
        return {name: {k: statistics.median(v) for k, v in r.items()} for name, r in res.items()}
    finally:
        if proxy is not None:
            await proxy.stop()
        await client.close()
        await api.stop()
        await api.store.close()
        if server is not None:
            server.kill()
            server.wait()
        for name in names.values():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


# ---------------------------------------------------------------------- main

def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        child_server(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        child_client(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", default="1000,10000")
    p.add_argument("--changes", type=int, default=20)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-baseline", action="store_true", help="skip loading kube-proxy's layout")
    p.add_argument("--skip-traffic", action="store_true")
    p.add_argument("--skip-sync", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, nftables)")
    import logging

    logging.basicConfig(level=logging.WARNING)

    if not args.skip_sync:
        print("Proxy sync (N ClusterIP Services x 2 endpoints, one namespace, nft 1.0.6 via libnftables)")
        for n in (int(x) for x in args.services.split(",")):
            r = asyncio.run(sync_bench(n, args.changes if n == max(int(x) for x in args.services.split(","))
                                       else 0, not args.no_baseline))
            line = (f"  N={n:>6}: start {ms(r['start'])}, cold {ms(r['cold'])} "
                    f"(nft floor {ms(r['floor'])}, {r['cold'] / r['floor']:.2f}x floor)")
            if "kube_proxy" in r:
                line += f"; kube-proxy layout {ms(r['kube_proxy'])} ({r['kube_proxy'] / r['cold']:.1f}x slower)"
            print(line)
            if "change" in r:
                print(f"  one change at N={n}: {ms(r['change'])} API write to kernel (median of {args.changes}, "
                      f"max {ms(r['change_max'])}; the sync itself {ms(r['change_sync'])})")
    if not args.skip_traffic:
        r = asyncio.run(traffic_bench(args.seconds, args.conns, args.rounds))
        d, c = r["direct"], r["clusterip"]
        print(f"Traffic, pod to pod over a bridge, median of {args.rounds} rounds (ClusterIP / direct)")
        print(f"  bulk TCP:           direct {d['bps'] / 1e9:.2f} GB/s, ClusterIP {c['bps'] / 1e9:.2f} GB/s "
              f"-> {c['bps'] / d['bps']:.2f}x")
        print(f"  connect+1B+close:   direct {d['conn'] * 1e6:.0f} us, ClusterIP {c['conn'] * 1e6:.0f} us "
              f"(p99 {d['conn99'] * 1e6:.0f} / {c['conn99'] * 1e6:.0f} us) -> {d['conn'] / c['conn']:.2f}x rate")
        print(f"  1B round trip:      direct {d['rr'] * 1e6:.1f} us, ClusterIP {c['rr'] * 1e6:.1f} us "
              f"-> {d['rr'] / c['rr']:.2f}x rate")


if __name__ == "__main__":
    main()
