"""NetworkPolicy benchmark: what a new connection costs with 100 policies against none, in
the same run, and how fast policies are programmed.

    .venv/bin/python bench/netpol.py [--policies 100] [--pods 1000] [--conns 2000] [--rounds 3]

Needs root, iproute2 and nftables; everything happens in network namespaces this script
creates (and deletes at the end), no packet leaves them.

Traffic. A node namespace with a bridge and two pods on it, a client and a server (a
threaded socket server in its own process); the client (another process) connects,
sends a byte, reads one, closes (with a reset, so that no TIME_WAIT piles up), --conns times, and reports the median latency and the
connections per second of the whole run. A NetworkPolicyAgent programs the node from an
in-process API server holding the two pods plus --pods others (on other nodes, so they
only fill the peer sets). The states, measured in turn, --rounds times:
  * no table: no agent has ever programmed the namespace (no conntrack either);
  * 0 policies: the agent's table, nothing isolated (the baseline for the rest);
  * 100 policies, 2 select: N policies selecting other pods, plus one isolating the server
    (ingress from the client on its port) and one the client (egress to the server): the
    connection passes the client's egress chain and the server's ingress chain, one rule
    each; the other policies cost it nothing;
  * 100 policies, all select: N policies select the server, each allowing another label
    and port, N the client; the allowing rule of each is the last one of its chain, so
    every connection walks 2N rules (the worst case of this layout: linear in the
    policies that select a pod, one set lookup per rule).

Sync. With the pods and 2N policies in the API: a cold start of the agent (list, compute,
one transaction), and one policy change from the API write until the kernel has it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLI, SRV = "10.244.0.11", "10.244.0.12"
PORT = 8080


# ---------------------------------------------------------------------- child processes

class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # the client resets the connection to close it
            while sock.recv(1):
                sock.sendall(b"!")


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


def child_server(port: int) -> None:
    with _Server(("0.0.0.0", port), _Handler) as srv:
        print("ready", flush=True)
        srv.serve_forever()


def child_client(host: str, port: int, n: int) -> None:
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        s = socket.create_connection((host, port), timeout=2)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Closed with a reset: tens of thousands of connections in TIME_WAIT would fill the
        # ephemeral port range, and connect() would spend longer and longer finding a port.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"!")
        s.recv(1)
        s.close()
        lat.append(time.perf_counter() - t)
    print(json.dumps({"lat": lat, "elapsed": time.perf_counter() - start}))


# ---------------------------------------------------------------------- helpers

def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def pod(name: str, ip: str, labels: dict[str, str], node: str, port: int | None = None) -> dict[str, Any]:
    ports = [{"name": "http", "containerPort": port}] if port else []
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "bench", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "bench"}, "spec": spec}


def scenario(kind: str, n: int) -> list[dict[str, Any]]:
    """The policies of one state (the allowing ones sort last: rules are in policy-name order)."""
    if kind == "none":
        return []
    out = []
    for i in range(n):
        if kind == "other":
            out.append(policy(f"p{i:03d}", {
                "podSelector": {"matchLabels": {"app": f"other-{i % 50}"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"other-{(i + 1) % 50}"}}}],
                             "ports": [{"port": 9000 + i}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": f"other-{(i + 2) % 50}"}}}]}]}))
        else:
            out.append(policy(f"in{i:03d}", {
                "podSelector": {"matchLabels": {"role": "server"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"other-{i % 50}"}}}],
                             "ports": [{"port": 9000 + i}]}]}))
            out.append(policy(f"out{i:03d}", {
                "podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": f"other-{i % 50}"}}}],
                            "ports": [{"port": 9000 + i}]}]}))
    out.append(policy("zz-in", {"podSelector": {"matchLabels": {"role": "server"}},
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                                             "ports": [{"port": "http"}]}]}))
    out.append(policy("zz-out", {"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                                 "egress": [{"to": [{"podSelector": {"matchLabels": {"role": "server"}}}],
                                             "ports": [{"port": PORT}]}]}))
    return out


# ---------------------------------------------------------------------- the run

async def bench(n_policies: int, n_pods: int, conns: int, rounds: int) -> dict[str, Any]:
    from kybernetes.apiserver.server import APIServer
    from kybernetes.client import Client
    from kybernetes.network.netpol import NetworkPolicyAgent
    from kybernetes.runtime.nsutil import socket_in_netns
    from kybernetes.storage.sqlite import SqliteStore

    tag = uuid.uuid4().hex[:6]
    names = {k: f"knpb-{tag}-{k}" for k in ("node", "cli", "srv")}
    for name in names.values():
        sh("ip", "netns", "add", name)
    server = None
    tmp = Path(tempfile.mkdtemp(prefix="kyb-netpol-bench-"))
    api = APIServer(SqliteStore(tmp / "state.db"))
    await api.start()
    client = Client.in_process(api.handle)
    agent: NetworkPolicyAgent | None = None
    node_path = f"/run/netns/{names['node']}"
    try:
        def ip(ns: str, *args: str) -> None:
            sh("ip", "-n", ns, *args)

        node = names["node"]
        for name in names.values():
            ip(name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ip(node, "link", "add", "br0", "type", "bridge")
        ip(node, "addr", "add", "10.244.0.1/24", "dev", "br0")
        ip(node, "link", "set", "br0", "up")
        for p, addr in (("cli", CLI), ("srv", SRV)):
            ip(node, "link", "add", p, "type", "veth", "peer", "name", "eth0", "netns", names[p])
            ip(node, "link", "set", p, "master", "br0", "up")
            ip(names[p], "addr", "add", f"{addr}/24", "dev", "eth0")
            ip(names[p], "link", "set", "eth0", "up")
            ip(names[p], "route", "add", "default", "via", "10.244.0.1")
        me = [sys.executable, str(Path(__file__).resolve())]
        server = subprocess.Popen(["ip", "netns", "exec", names["srv"], *me, "_server", str(PORT)],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

        def reaches(host: str, port: int) -> bool:
            """Whether a connect from the client gets an answer (accepted or refused) at all."""
            s = socket_in_netns(f"/run/netns/{names['cli']}")
            s.settimeout(0.3)
            try:
                s.connect((host, port))
            except ConnectionRefusedError:
                return True
            except TimeoutError:
                return False
            finally:
                s.close()
            return True

        def run(n: int) -> dict[str, Any]:
            r = subprocess.run(["ip", "netns", "exec", names["cli"], *me, "_client", SRV, str(PORT), str(n)],
                               check=True, capture_output=True, text=True)
            return json.loads(r.stdout)

        await client.resource("v1", "namespaces", namespaced=False).create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        pods = client.resource("v1", "pods")
        everyone = [pod("client", CLI, {"role": "client"}, "node1"),
                    pod("server", SRV, {"role": "server"}, "node1", PORT)]
        everyone += [pod(f"o{i}", f"10.245.{i // 250}.{i % 250 + 1}", {"app": f"other-{i % 50}"}, f"n{i % 10}")
                     for i in range(n_pods)]
        for p in everyone:
            made = await pods.create({k: v for k, v in p.items() if k != "status"}, "bench")
            made["status"] = p["status"]
            await pods.update_status(made, "bench")

        nps = client.resource("networking.k8s.io/v1", "networkpolicies")

        async def settle() -> None:
            await asyncio.sleep(0.05)
            assert agent is not None
            await asyncio.wait_for(agent.idle.wait(), 30)

        async def switch(kind: str) -> None:
            want = {p["metadata"]["name"]: p for p in scenario(kind, n_policies)}
            have = {p["metadata"]["name"] for p in (await nps.list_all("bench"))["items"]}
            for name in have - set(want):
                await nps.delete(name, "bench")
            for name in set(want) - have:
                await nps.create(want[name], "bench")
            deadline = time.monotonic() + 30
            while agent is not None and len(agent.policies or ()) != len(want):  # type: ignore[arg-type]
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await settle()

        states = ["no table", "none", "other", "all"]
        res: dict[str, dict[str, list[float]]] = {s: {"lat": [], "rate": []} for s in states}
        run(200)  # warm up
        for rnd in range(rounds):
            # Each round starts with another state, so no state is always measured first.
            for state in states[rnd % len(states):] + states[:rnd % len(states)]:
                if state == "no table":
                    if agent is not None:
                        await agent.cleanup()  # (conntrack goes with the last rule that used it)
                        await agent.stop()
                        agent = None
                else:
                    if agent is None:
                        agent = NetworkPolicyAgent(client, "node1", netns=node_path)
                        await agent.start()
                    await switch(state)
                r = run(conns)
                res[state]["lat"].append(statistics.median(r["lat"]))
                res[state]["rate"].append(conns / r["elapsed"])
                if state in ("other", "all"):
                    assert not reaches(SRV, PORT + 1), "the policies are not in force"
                else:
                    assert reaches(SRV, PORT + 1)  # refused: nothing listens there, nothing drops
        out: dict[str, Any] = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in res.items()}

        # Sync: a cold start with the "all" policies in the API, and one change.
        if agent is None:
            agent = NetworkPolicyAgent(client, "node1", netns=node_path)
            await agent.start()
        await switch("all")
        await agent.stop()
        t = time.perf_counter()
        agent = NetworkPolicyAgent(client, "node1", netns=node_path)
        await agent.start()
        out["cold"] = time.perf_counter() - t
        out["cold_sync"] = agent.last_sync_seconds
        changes = []
        for i in range(10):
            before = agent.syncs
            t = time.perf_counter()
            cur = await nps.get("zz-in", "bench")
            cur["spec"]["ingress"][0]["ports"] = [{"port": "http"}, {"port": 20000 + i}]
            await nps.update(cur, "bench")
            while agent.syncs == before or not agent.idle.is_set():
                await asyncio.sleep(0.0005)
            changes.append(time.perf_counter() - t)
        out["change"] = statistics.median(changes)
        out["change_sync"] = agent.last_sync_seconds
        out["sets"] = len([k for k in agent.kernel if k[0] == "s"])
        out["chains"] = len([k for k in agent.kernel if k[0] == "c"])
        out["elements"] = len([k for k in agent.kernel if k[0] == "e"])
        return out
    finally:
        if agent is not None:
            await agent.stop()
        await client.close()
        await api.stop()
        await api.store.close()
        if server is not None:
            server.kill()
            server.wait()
        for name in names.values():
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_server":
        child_server(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        child_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policies", type=int, default=100)
    p.add_argument("--pods", type=int, default=1000)
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, nftables)")
    import logging

    logging.basicConfig(level=logging.WARNING)
    r = asyncio.run(bench(args.policies, args.pods, args.conns, args.rounds))
    n = args.policies
    base = r["none"]
    print(f"NetworkPolicy, connect+1B+close between two pods of one node, median of {args.rounds} rounds "
          f"x {args.conns} connections ({args.pods} other pods in the API)")
    labels = {"no table": "no table (no conntrack)", "none": "0 policies (baseline)",
              "other": f"{n} policies, 2 select", "all": f"{2 * n} policies, all select"}
    for state, label in labels.items():
        x = r[state]
        print(f"  {label:<28} {x['lat'] * 1e6:7.1f} us  {x['rate']:8.0f} conn/s  "
              f"-> {x['rate'] / base['rate']:.2f}x the baseline's rate, {x['lat'] / base['lat']:.2f}x its latency")
    print(f"Sync with {2 * n + 2} policies and {args.pods + 2} pods: cold start {r['cold'] * 1000:.0f} ms "
          f"(the sync itself {r['cold_sync'] * 1000:.0f} ms; {r['sets']} sets, {r['chains']} chains, "
          f"{r['elements']} elements); one policy change {r['change'] * 1000:.1f} ms API write to kernel "
          f"(the sync {r['change_sync'] * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
