"""Network namespaces for the pod network's tests: two "nodes" and an "outside" host, each in
a namespace of its own (as kind runs nodes as containers), and "pod" namespaces playing the
sandboxes. Everything is created by the test and deleted afterwards, even on failure;
nothing touches the host's own network namespace.

    outside (192.0.2.1, 2001:db8::1)
       │ veth
    node1 (192.0.2.254, 2001:db8::fe; 198.18.0.1, fd00:18::1)  pod CIDRs 10.42.0.0/24, fd42::/64
       │ veth (one L2 segment: host-gw routes between the nodes)
    node2 (198.18.0.2, fd00:18::2)                               pod CIDRs 10.42.1.0/24, fd42:0:0:1::/64

node1's default route points at outside, as a real node's points at its router; outside
has no route to the pod CIDRs, so a pod's packet only gets an answer there if it was
masqueraded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from typing import Any

from kybernetes.runtime.nsutil import open_connection, socket_in_netns

CLUSTER_CIDRS = "10.42.0.0/16,fd42::/56"
NODES: dict[str, dict[str, Any]] = {
    "node1": {"ips": ["198.18.0.1", "fd00:18::1"], "pod_cidrs": ["10.42.0.0/24", "fd42::/64"]},
    "node2": {"ips": ["198.18.0.2", "fd00:18::2"], "pod_cidrs": ["10.42.1.0/24", "fd42:0:0:1::/64"]},
}
OUTSIDE_IP, OUTSIDE_IP6 = "192.0.2.1", "2001:db8::1"
NODE1_OUT_IP, NODE1_OUT_IP6 = "192.0.2.254", "2001:db8::fe"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("ip") or not shutil.which("nft"):
        return "needs iproute2 and nft"
    return None


def node_object(name: str) -> dict[str, Any]:
    """The Node object the API would hold for a test node (spec.podCIDRs, InternalIPs)."""
    n = NODES[name]
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": n["pod_cidrs"][0], "podCIDRs": n["pod_cidrs"]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in n["ips"]]
                       + [{"type": "Hostname", "address": name}]}}


class Topology:
    """The namespaces of one test; `pod(name)` adds a sandbox namespace on demand."""

    def __init__(self) -> None:
        self.tag = uuid.uuid4().hex[:6]
        self.names: dict[str, str] = {}

    def path(self, ns: str) -> str:
        return f"/run/netns/{self.names[ns]}"

    def ip(self, ns: str, *args: str) -> None:
        sh("ip", "-n", self.names[ns], *args)

    def _add(self, ns: str) -> str:
        name = f"kpn-{self.tag}-{ns}"
        sh("ip", "netns", "add", name)
        self.names[ns] = name
        self.ip(ns, "link", "set", "lo", "up")
        return self.path(ns)

    def build(self) -> None:
        for ns in ("outside", "node1", "node2"):
            self._add(ns)
        self.ip("node1", "link", "add", "out0", "type", "veth", "peer", "name", "eth0", "netns",
                self.names["outside"])
        self.ip("node1", "link", "add", "link0", "type", "veth", "peer", "name", "link0", "netns",
                self.names["node2"])
        for ns, dev, addrs in (("outside", "eth0", [f"{OUTSIDE_IP}/24", f"{OUTSIDE_IP6}/64"]),
                               ("node1", "out0", [f"{NODE1_OUT_IP}/24", f"{NODE1_OUT_IP6}/64"]),
                               ("node1", "link0", ["198.18.0.1/24", "fd00:18::1/64"]),
                               ("node2", "link0", ["198.18.0.2/24", "fd00:18::2/64"])):
            for a in addrs:
                self.ip(ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
            self.ip(ns, "link", "set", dev, "up")
        self.ip("node1", "route", "add", "default", "via", OUTSIDE_IP)
        self.ip("node1", "-6", "route", "add", "default", "via", OUTSIDE_IP6)

    def pod(self, name: str) -> str:
        """A fresh namespace playing a pod sandbox (the runtime's holder would make it)."""
        return self._add(name)

    def destroy(self) -> None:
        for name in self.names.values():
            sh("ip", "netns", "delete", name, check=False)
        self.names.clear()

    def nft_map(self, ns: str, name: str, table: str = "kybernetes-podnet") -> list[Any]:
        import orjson

        r = sh("ip", "netns", "exec", self.names[ns], "nft", "-j", "list", "map", "inet", table, name)
        for item in orjson.loads(r.stdout)["nftables"]:
            if "map" in item:
                return list(item["map"].get("elem") or [])
        return []


async def serve(netns: str, name: str, port: int) -> list[asyncio.AbstractServer]:
    """Identity servers (IPv4 and IPv6) inside `netns`: each answers "<name> <peer address>"."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{name} {writer.get_extra_info('peername')[0]}\n".encode())
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    servers = []
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket_in_netns(netns, family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        s.setblocking(False)
        servers.append(await asyncio.start_server(handle, sock=s))
    return servers


async def ask(netns: str, host: str, port: int, timeout: float = 5.0) -> str:
    """Connect from inside `netns` and return the identity line the server sends."""

    async def go() -> str:
        reader, writer = await open_connection(netns, host, port)
        try:
            return (await reader.readline()).decode().strip()
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)
