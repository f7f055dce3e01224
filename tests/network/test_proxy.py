"""The service proxy against a real in-process API server, carrying real traffic between
network namespaces the test creates.

Topology (built once for the module, torn down even on failure):

    ext (10.250.0.2, fd00:250::2) ── veth ── node (10.250.0.1, fd00:250::1; br0 10.244.0.1, fd00:10:244::1)
                                                 ├── veth ── pod1 (10.244.0.11, fd00:10:244::11)
                                                 └── veth ── pod2 (10.244.0.12, fd00:10:244::12)

Every address lives inside those namespaces; nothing is sent anywhere else. The proxy runs
with its nftables work (and the userspace backend with its sockets) inside `node`. The
pods run identity servers (TCP 8080 answers "<pod> <peer address>" then echoes; UDP 5353
answers the same), so a test sees which endpoint it reached and whether its source
address was masqueraded. Services and EndpointSlices are written through the API by hand
(no controllers run), with the nodeName that makes pod1 node-local and pod2 remote.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kybernetes.client import Client
from kybernetes.network.proxy import (
    Endpoint,
    NftLayout,
    ServicePort,
    ServiceProxy,
    service_ports,
)
from kybernetes.network.nftables import Desired
from kybernetes.runtime.nsutil import open_connection, socket_in_netns
from tests.apiserver.conftest import eventually, start_api, stop_api

NODE = "node1"
POD1, POD2 = "10.244.0.11", "10.244.0.12"
POD1_6, POD2_6 = "fd00:10:244::11", "fd00:10:244::12"
NODE_IP, EXT_IP = "10.250.0.1", "10.250.0.2"
CIDRS = ["10.244.0.0/16", "fd00:10:244::/48"]


# ---------------------------------------------------------------------- pure logic (no namespaces)

def _svc(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                     **spec}}


def _slice(svc: str, eps: list[dict[str, Any]], *, family: str = "IPv4", port: int = 8080,
           port_name: str = "http", protocol: str = "TCP", name: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{svc}-{family.lower()}", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc,
                                    "endpointslice.kubernetes.io/managed-by": "test"}},
            "addressType": family, "ports": [{"name": port_name, "port": port, "protocol": protocol}],
            "endpoints": eps}


def _ep(ip: str, node: str | None = NODE, ready: bool | None = True, serving: bool | None = None,
        terminating: bool | None = None) -> dict[str, Any]:
    cond = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating))
            if v is not None}
    return {"addresses": [ip], "conditions": cond, **({"nodeName": node} if node else {})}


def test_service_ports_pools_and_fallback_to_terminating() -> None:
    svc = _svc()
    sl = _slice("web", [_ep("10.244.0.11"), _ep("10.244.0.12", node="other"),
                        _ep("10.244.0.13", ready=False, serving=True, terminating=True)])
    [sp] = service_ports(svc, [sl], NODE)
    assert sp.family == 4 and sp.port == 80 and sp.protocol == "tcp" and sp.cluster_ips == ("10.96.0.10",)
    assert [e.ip for e in sp.endpoints] == ["10.244.0.11", "10.244.0.12"]
    assert [e.ip for e in sp.local_endpoints] == ["10.244.0.11"]
    # No ready endpoints: the serving, terminating ones carry traffic (ProxyTerminatingEndpoints).
    sl = _slice("web", [_ep("10.244.0.11", ready=False, serving=True, terminating=True),
                        _ep("10.244.0.12", ready=False, serving=False, terminating=True)])
    [sp] = service_ports(svc, [sl], NODE)
    assert [e.ip for e in sp.endpoints] == ["10.244.0.11"]
    # Another port name, or another protocol, is not this port's endpoint.
    assert service_ports(svc, [_slice("web", [_ep("10.244.0.11")], port_name="x")], NODE)[0].endpoints == ()
    assert service_ports(svc, [_slice("web", [_ep("10.244.0.11")], protocol="UDP")], NODE)[0].endpoints == ()


def test_service_ports_dual_stack_entry_points() -> None:
    svc = _svc(clusterIPs=["10.96.0.10", "fd00:10:96::a"], ipFamilies=["IPv4", "IPv6"], type="LoadBalancer",
               externalIPs=["192.0.2.7", "2001:db8::7"], externalTrafficPolicy="Local",
               sessionAffinity="ClientIP", ports=[{"name": "http", "port": 80, "nodePort": 30080}])
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.8"}, {"ip": "192.0.2.9", "ipMode": "Proxy"},
                                                  {"hostname": "lb.example"}]}}
    slices = [_slice("web", [_ep(POD1)]), _slice("web", [_ep(POD1_6)], family="IPv6")]
    v4, v6 = service_ports(svc, slices, NODE)
    assert (v4.family, v4.cluster_ips, v4.external_ips) == (4, ("10.96.0.10",), ("192.0.2.7", "192.0.2.8"))
    assert (v6.family, v6.cluster_ips, v6.external_ips) == (6, ("fd00:10:96::a",), ("2001:db8::7",))
    assert [e.ip for e in v6.endpoints] == [POD1_6]
    assert v4.node_port == 30080 and v4.external_local and v4.affinity_timeout == 10800
    # Headless and ExternalName Services are not proxied; neither is another proxy's.
    assert service_ports(_svc(clusterIP="None"), slices, NODE) == []
    assert service_ports(_svc(type="ExternalName", externalName="x.example"), slices, NODE) == []
    other = _svc()
    other["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "someone-else"}
    assert service_ports(other, slices, NODE) == []


def test_desired_resolves_shared_objects_by_owner() -> None:
    d = Desired()
    assert d.set("a/x", {"k": "1", "shared": ""}) == {"k", "shared"}
    assert d.set("b/y", {"k": "2", "shared": ""}) == {"k", "shared"}
    assert d.value("k") == "1"  # the smallest owner wins, every time
    assert d.set("a/x", {}) == {"k", "shared"}
    assert d.value("k") == "2" and d.value("shared") == ""
    d.set("b/y", {})
    assert d.value("shared") is None and not d.owners


def test_layout_shares_class_chains_and_orders_changes() -> None:
    lay = NftLayout("t", CIDRS, NODE)
    e = [Endpoint(POD1, 8080, NODE), Endpoint(POD2, 8080, "other")]
    out: dict[Any, str] = {}
    for i in range(3):
        lay.objects(ServicePort(f"default/s{i}:http", 4, "tcp", 80, None, (f"10.96.0.{i + 10}",), (),
                                tuple(e), tuple(e[:1])), out)
    chains = [k for k in out if k[0] == "c"]
    assert chains == [("c", "c4t-2", "")]  # three Services, one chain
    assert out[("e", "svc4", "10.96.0.10 . tcp . 80")] == "goto c4t-2"
    assert out[("e", "ep4tcp", "10.96.0.10 . 80 . 1")] == f"{POD2} . 8080"
    assert ("e", "hairpin4", f"{POD1} . {POD1}") in out and ("e", "hairpin4", f"{POD2} . {POD2}") not in out
    # Going from two endpoints to one: the new chain exists before the element points at
    # it, and the old one goes only after nothing points at it.
    new: dict[Any, str] = {}
    lay.objects(ServicePort("default/s0:http", 4, "tcp", 80, None, ("10.96.0.10",), (), tuple(e[:1]),
                            tuple(e[:1])), new)
    wanted = {k: new.get(k) for k in {*out, *new} if "10.96.0.10" in k[2] or k[0] == "c"}
    wanted[("c", "c4t-2", "")] = None
    lines = lay.changes(out, wanted).lines
    first = next(i for i, ln in enumerate(lines) if ln.startswith("add chain inet t c4t-1"))
    refer = next(i for i, ln in enumerate(lines) if ln.startswith("add element inet t svc4"))
    gone = next(i for i, ln in enumerate(lines) if ln.startswith("delete chain inet t c4t-2"))
    assert first < refer < gone


# ---------------------------------------------------------------------- the namespaces

def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


class Net:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.names = {n: f"kpx-{tag}-{n}" for n in ("node", "pod1", "pod2", "ext")}

    def path(self, ns: str) -> str:
        return f"/run/netns/{self.names[ns]}"

    def ip(self, ns: str, *args: str) -> None:
        _sh("ip", "-n", self.names[ns], *args)

    def sysctl(self, ns: str, name: str, value: str) -> None:
        _sh("ip", "netns", "exec", self.names[ns], "sysctl", "-qw", f"{name}={value}")

    def build(self) -> None:
        for name in self.names.values():
            _sh("ip", "netns", "add", name)
        for ns in self.names:
            self.ip(ns, "link", "set", "lo", "up")
        self.sysctl("node", "net.ipv4.ip_forward", "1")
        self.sysctl("node", "net.ipv6.conf.all.forwarding", "1")
        self.ip("node", "link", "add", "br0", "type", "bridge")
        self.ip("node", "addr", "add", "10.244.0.1/24", "dev", "br0")
        self.ip("node", "addr", "add", "fd00:10:244::1/64", "dev", "br0", "nodad")
        self.ip("node", "link", "set", "br0", "up")
        for pod, v4, v6 in (("pod1", POD1, POD1_6), ("pod2", POD2, POD2_6)):
            self.ip("node", "link", "add", pod, "type", "veth", "peer", "name", "eth0", "netns", self.names[pod])
            self.ip("node", "link", "set", pod, "master", "br0", "up")
            # With br_netfilter loaded (bridge-nf-call-iptables), a pod's packet DNATed back
            # to itself is bridged out the port it came in: the port needs hairpin mode, as
            # kubenet's hairpin-veth sets.
            self.ip("node", "link", "set", pod, "type", "bridge_slave", "hairpin", "on")
            self.ip(pod, "addr", "add", f"{v4}/24", "dev", "eth0")
            self.ip(pod, "addr", "add", f"{v6}/64", "dev", "eth0", "nodad")
            self.ip(pod, "link", "set", "eth0", "up")
            self.ip(pod, "route", "add", "default", "via", "10.244.0.1")
            self.ip(pod, "-6", "route", "add", "default", "via", "fd00:10:244::1")
        self.ip("node", "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", self.names["ext"])
        self.ip("node", "addr", "add", f"{NODE_IP}/24", "dev", "ext0")
        self.ip("node", "addr", "add", "fd00:250::1/64", "dev", "ext0", "nodad")
        self.ip("node", "link", "set", "ext0", "up")
        self.ip("ext", "addr", "add", f"{EXT_IP}/24", "dev", "eth0")
        self.ip("ext", "addr", "add", "fd00:250::2/64", "dev", "eth0", "nodad")
        self.ip("ext", "link", "set", "eth0", "up")
        # The node's default route (towards ext) is what makes cluster IPs routable from the
        # node itself, as on a real node; ext reaches externalIPs and LB IPs through the node.
        self.ip("node", "route", "add", "default", "via", EXT_IP)
        self.ip("node", "-6", "route", "add", "default", "via", "fd00:250::2")
        self.ip("ext", "route", "add", "10.251.0.0/24", "via", NODE_IP)

    def destroy(self) -> None:
        for name in self.names.values():
            _sh("ip", "netns", "delete", name, check=False)

    def nft_elements(self, table: str = "kybernetes") -> dict[str, list[str]]:
        """set name -> its elements, rendered compactly, from `nft -j list table`."""
        r = _sh("ip", "netns", "exec", self.names["node"], "nft", "-j", "list", "table", "inet", table)
        out: dict[str, list[str]] = {}
        for item in orjson.loads(r.stdout)["nftables"]:
            for kind in ("set", "map"):
                if kind in item:
                    s = item[kind]
                    out[s["name"]] = [orjson.dumps(e).decode() for e in s.get("elem") or []]
        return out


def _can_run() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("ip") or not shutil.which("nft"):
        return "needs iproute2 and nft"
    return None


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    why = _can_run()
    if why:
        pytest.skip(why)
    n = Net()
    try:
        n.build()
    except subprocess.CalledProcessError as e:
        n.destroy()
        pytest.skip(f"cannot build network namespaces: {e.stderr}")
    try:
        yield n
    finally:
        n.destroy()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, name: str):
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(f"{self.name} {addr[0]}".encode(), addr)


async def serve_pods(net: Net) -> list[Any]:
    """Identity servers in pod1 and pod2, TCP 8080 and UDP 5353, IPv4 and IPv6; their closers."""
    closers: list[Any] = []
    loop = asyncio.get_running_loop()
    for pod in ("pod1", "pod2"):
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pod: str = pod) -> None:
            writer.write(f"{pod} {writer.get_extra_info('peername')[0]}\n".encode())
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            tcp = socket_in_netns(net.path(pod), family, socket.SOCK_STREAM)
            udp = socket_in_netns(net.path(pod), family, socket.SOCK_DGRAM)
            for s in (tcp, udp):
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, 8080))
            tcp.listen(64)
            tcp.setblocking(False)
            closers.append(await asyncio.start_server(handle, sock=tcp))
            udp.bind((host, 5353))
            udp.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(lambda pod=pod: _Udp(pod), sock=udp)
            closers.append(transport)
    return closers


@pytest.fixture
async def pods(net: Net) -> AsyncIterator[None]:
    closers = await serve_pods(net)
    try:
        yield
    finally:
        for c in closers:
            c.close()


async def who(net: Net, ns: str, host: str, port: int = 80, timeout: float = 2.0) -> tuple[str, str]:
    """(pod, the client address the pod saw) for one TCP connection from namespace `ns`."""
    reader, writer = await asyncio.wait_for(open_connection(net.path(ns), host, port), timeout)
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    pod, peer = line.decode().split()
    return pod, peer


async def hits(net: Net, ns: str, host: str, port: int = 80, n: int = 24) -> set[str]:
    return {(await who(net, ns, host, port))[0] for _ in range(n)}


async def refused(net: Net, ns: str, host: str, port: int = 80) -> bool:
    try:
        await who(net, ns, host, port, timeout=1.0)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    return False


async def udp_who(net: Net, ns: str, host: str, port: int, sock: socket.socket | None = None) -> str:
    loop = asyncio.get_running_loop()
    own = sock is None
    if sock is None:
        sock = socket_in_netns(net.path(ns), socket.AF_INET6 if ":" in host else socket.AF_INET,
                               socket.SOCK_DGRAM)
        sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, b"?", (host, port))
        data = await asyncio.wait_for(loop.sock_recv(sock, 100), 1.0)
        return data.decode().split()[0]
    finally:
        if own:
            sock.close()


@pytest.fixture
async def proxies(net: Net, client: Client) -> AsyncIterator[list[ServiceProxy]]:
    """Proxies a test starts; stopped, and their table removed, afterwards."""
    started: list[ServiceProxy] = []
    try:
        yield started
    finally:
        for p in started:
            with contextlib.suppress(Exception):
                await p.cleanup()
            await p.stop()
        _sh("ip", "netns", "exec", net.names["node"], "nft", "delete", "table", "inet", "kybernetes", check=False)


async def start_proxy(proxies: list[ServiceProxy], client: Client, net: Net, **kw: Any) -> ServiceProxy:
    p = ServiceProxy(client, NODE, [NODE_IP], cluster_cidrs=CIDRS, netns=net.path("node"), **kw)
    await p.start()
    proxies.append(p)
    return p


SVC = "v1", "services"
SLICES = "discovery.k8s.io/v1", "endpointslices"


async def create(client: Client, obj: dict[str, Any]) -> dict[str, Any]:
    plural = "services" if obj["kind"] == "Service" else "endpointslices"
    return await client.resource(obj["apiVersion"], plural).create(obj)


async def put_slice(client: Client, obj: dict[str, Any]) -> None:
    rc = client.resource(*SLICES)
    cur = await rc.get(obj["metadata"]["name"], "default")
    obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": cur["metadata"]["resourceVersion"]}}
    await rc.update(obj)


# ---------------------------------------------------------------------- traffic

async def test_cluster_ip_balances_follows_endpoints_and_forgets_deleted(net: Net, pods: None, client: Client,
                                                                         proxies: list[ServiceProxy]) -> None:
    await start_proxy(proxies, client, net)
    await create(client, _svc("web", clusterIP="10.96.0.10"))
    await create(client, _slice("web", [_ep(POD1), _ep(POD2, node="other")]))

    async def both() -> bool:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            return await hits(net, "pod1", "10.96.0.10", n=2) is not None
        return False

    await eventually(both, what="the cluster IP answers")
    # (pod2 is never the client of a Service it is a "remote" endpoint of: a real remote
    # endpoint cannot be on this node, so it is not in the hairpin set.)
    assert await hits(net, "pod1", "10.96.0.10") == {"pod1", "pod2"}
    assert await hits(net, "node", "10.96.0.10") == {"pod1", "pod2"}  # the node's own traffic (output hook)
    for _ in range(6):
        # Pod to pod through the cluster IP keeps the client's address; hairpin is masqueraded.
        assert await who(net, "pod1", "10.96.0.10") in (("pod2", POD1), ("pod1", "10.244.0.1"))

    await put_slice(client, _slice("web", [_ep(POD2, node="other")]))

    async def only_pod2() -> bool:
        return await hits(net, "pod1", "10.96.0.10", n=12) == {"pod2"}

    await eventually(only_pod2, what="the removed endpoint is no longer hit")

    await client.resource(*SVC).delete("web", "default")

    def gone() -> bool:
        els = net.nft_elements()
        # (The API server's own `kubernetes` Service stays.)
        return not any("10.96.0.10" in e or POD2 in e for elems in els.values() for e in elems)

    await eventually(gone, what="the deleted Service's elements are gone")


async def test_node_port_on_node_addresses_and_localhost(net: Net, pods: None, client: Client,
                                                         proxies: list[ServiceProxy]) -> None:
    await start_proxy(proxies, client, net)
    svc = await create(client, _svc("np", clusterIP="10.96.0.20", type="NodePort",
                                    ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    assert svc["spec"]["ports"][0]["nodePort"] == 30080
    await create(client, _slice("np", [_ep(POD1), _ep(POD2, node="other")]))

    async def up() -> bool:
        with contextlib.suppress(OSError, TimeoutError):
            return bool(await who(net, "ext", NODE_IP, 30080))
        return False

    await eventually(up, what="the NodePort answers from outside")
    assert await hits(net, "ext", NODE_IP, 30080) == {"pod1", "pod2"}
    # externalTrafficPolicy Cluster: outside clients are masqueraded.
    assert (await who(net, "ext", NODE_IP, 30080))[1] != EXT_IP
    assert await hits(net, "node", "127.0.0.1", 30080) == {"pod1", "pod2"}  # route_localnet
    assert await hits(net, "node", NODE_IP, 30080, n=8)
    assert await hits(net, "pod1", "10.244.0.1", 30080, n=8)  # the node's bridge address too


async def test_no_endpoints_is_refused_at_once(net: Net, pods: None, client: Client,
                                               proxies: list[ServiceProxy]) -> None:
    proxy = await start_proxy(proxies, client, net)
    await create(client, _svc("empty", clusterIP="10.96.0.30", type="NodePort",
                              ports=[{"name": "http", "port": 80, "nodePort": 30090}]))
    await create(client, _slice("empty", []))
    await eventually(lambda: "10.96.0.30 . tcp . 80" in str(proxy.backend.kernel), what="programmed")  # type: ignore
    loop = asyncio.get_running_loop()
    t = loop.time()
    assert await refused(net, "pod1", "10.96.0.30")
    assert await refused(net, "node", "10.96.0.30")
    assert await refused(net, "ext", NODE_IP, 30090)
    assert loop.time() - t < 1.0  # rejected, not dropped into a timeout
    await put_slice(client, _slice("empty", [_ep(POD2)]))

    async def answers() -> bool:
        with contextlib.suppress(OSError, TimeoutError):
            return (await who(net, "pod1", "10.96.0.30"))[0] == "pod2"
        return False

    await eventually(answers, what="endpoints appear")


async def test_traffic_policy_local_external_ips_and_load_balancer(net: Net, pods: None, client: Client,
                                                                   proxies: list[ServiceProxy]) -> None:
    await start_proxy(proxies, client, net)
    await create(client, _svc("loc", clusterIP="10.96.0.40", type="LoadBalancer", externalTrafficPolicy="Local",
                              externalIPs=["10.251.0.10"],
                              ports=[{"name": "http", "port": 80, "nodePort": 30100}]))
    await client.resource(*SVC).patch("loc", {"status": {"loadBalancer": {"ingress": [{"ip": "10.251.0.20"}]}}},
                                      namespace="default", subresource="status")
    await create(client, _svc("itp", clusterIP="10.96.0.41", internalTrafficPolicy="Local"))
    for name in ("loc", "itp"):
        await create(client, _slice(name, [_ep(POD1), _ep(POD2, node="other")]))

    async def up() -> bool:
        with contextlib.suppress(OSError, TimeoutError):
            return bool(await who(net, "ext", "10.251.0.20", 80))
        return False

    await eventually(up, what="the load balancer IP answers")
    for host, port in ((NODE_IP, 30100), ("10.251.0.10", 80), ("10.251.0.20", 80)):
        for _ in range(8):
            # Only the local endpoint, and the client's own address is kept.
            assert await who(net, "ext", host, port) == ("pod1", EXT_IP)
    # Pods reaching an external entry point are short-circuited to every endpoint.
    assert await hits(net, "pod1", NODE_IP, 30100) == {"pod1", "pod2"}
    # internalTrafficPolicy Local: the cluster IP only reaches this node's endpoints.
    assert await hits(net, "pod2", "10.96.0.41") == {"pod1"}
    # With no local endpoint, external traffic is dropped, pods still get through.
    await put_slice(client, _slice("loc", [_ep(POD2, node="other")]))

    async def dropped() -> bool:
        try:
            await who(net, "ext", NODE_IP, 30100, timeout=0.3)
        except (TimeoutError, OSError):
            return True
        return False

    await eventually(dropped, what="no local endpoint drops external traffic")
    assert await hits(net, "pod1", NODE_IP, 30100, n=4) == {"pod2"}


async def test_client_ip_affinity_sticks(net: Net, pods: None, client: Client,
                                         proxies: list[ServiceProxy]) -> None:
    await start_proxy(proxies, client, net)
    await create(client, _svc("sticky", clusterIP="10.96.0.50", sessionAffinity="ClientIP",
                              sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}}))
    await create(client, _slice("sticky", [_ep(POD1), _ep(POD2, node="other")]))

    async def up() -> bool:
        with contextlib.suppress(OSError, TimeoutError):
            return bool(await who(net, "ext", "10.96.0.50", 80))
        return False

    net.ip("ext", "route", "add", "10.96.0.0/12", "via", NODE_IP)
    try:
        await eventually(up, what="the sticky Service answers")
        for ns in ("pod1", "ext", "node"):
            assert len(await hits(net, ns, "10.96.0.50", n=12)) == 1, ns
    finally:
        net.ip("ext", "route", "del", "10.96.0.0/12", "via", NODE_IP)


async def test_hairpin_pod_reaches_itself(net: Net, pods: None, client: Client,
                                          proxies: list[ServiceProxy]) -> None:
    await start_proxy(proxies, client, net)
    await create(client, _svc("self", clusterIP="10.96.0.60"))
    await create(client, _slice("self", [_ep(POD1)]))

    async def answer() -> tuple[str, str] | None:
        with contextlib.suppress(OSError, TimeoutError):
            return await who(net, "pod1", "10.96.0.60")
        return None

    pod, peer = await eventually(answer, what="a pod reaches itself through its Service")
    assert pod == "pod1" and peer == "10.244.0.1"  # masqueraded to the bridge, or the reply would never match


async def test_udp_and_stale_conntrack_of_removed_endpoints(net: Net, pods: None, client: Client,
                                                            proxies: list[ServiceProxy]) -> None:
    await start_proxy(proxies, client, net)
    await create(client, _svc("dns", clusterIP="10.96.0.70", ports=[{"name": "dns", "port": 53, "protocol": "UDP"}]))
    await create(client, _slice("dns", [_ep(POD1)], port=5353, port_name="dns", protocol="UDP"))
    sock = socket_in_netns(net.path("pod2"), socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        async def answer() -> str | None:
            with contextlib.suppress(OSError, TimeoutError):
                return await udp_who(net, "pod2", "10.96.0.70", 53, sock)
            return None

        assert await eventually(answer, what="UDP through the cluster IP") == "pod1"
        # The same socket (one conntrack entry) must move on when its endpoint goes.
        await put_slice(client, _slice("dns", [_ep(POD2)], port=5353, port_name="dns", protocol="UDP"))

        async def moved() -> bool:
            return await answer() == "pod2"

        await eventually(moved, what="the UDP flow follows the endpoint change")
    finally:
        sock.close()


async def test_dual_stack_ipv6_cluster_ip(net: Net, pods: None, tmp_path: Path,
                                          proxies: list[ServiceProxy]) -> None:
    (tmp_path / "v6").mkdir()
    api = await start_api(tmp_path / "v6", service_cidr="fd00:10:96::/112")
    c6 = Client.in_process(api.handle)
    try:
        await start_proxy(proxies, c6, net)
        await create(c6, _svc("six", clusterIP="fd00:10:96::10", type="NodePort",
                              ports=[{"name": "http", "port": 80, "nodePort": 30110}]))
        await create(c6, _slice("six", [_ep(POD1_6), _ep(POD2_6, node="other")], family="IPv6"))

        async def up() -> bool:
            with contextlib.suppress(OSError, TimeoutError):
                return bool(await who(net, "pod1", "fd00:10:96::10"))
            return False

        await eventually(up, what="the IPv6 cluster IP answers")
        assert await hits(net, "pod1", "fd00:10:96::10") == {"pod1", "pod2"}
        assert await hits(net, "ext", "fd00:250::1", 30110) == {"pod1", "pod2"}
    finally:
        for p in list(proxies):
            await p.cleanup()
            await p.stop()
            proxies.remove(p)
        await c6.close()
        await stop_api(api)


async def test_restart_rebuilds_without_stale_elements_or_cutting_connections(
        net: Net, pods: None, client: Client, proxies: list[ServiceProxy]) -> None:
    first = await start_proxy(proxies, client, net)
    await create(client, _svc("keep", clusterIP="10.96.0.80"))
    await create(client, _slice("keep", [_ep(POD1)]))
    await create(client, _svc("drop", clusterIP="10.96.0.81"))
    await create(client, _slice("drop", [_ep(POD2)]))

    async def up() -> bool:
        with contextlib.suppress(OSError, TimeoutError):
            return bool(await who(net, "pod2", "10.96.0.81"))
        return False

    await eventually(up, what="both Services answer")
    reader, writer = await open_connection(net.path("pod2"), "10.96.0.80", 80)
    try:
        assert (await reader.readline()).split()[0] == b"pod1"
        await first.stop()
        proxies.remove(first)
        # While no proxy runs: one Service goes, the other changes endpoints.
        await client.resource(*SVC).delete("drop", "default")
        await put_slice(client, _slice("keep", [_ep(POD2, node="other")]))
        second = await start_proxy(proxies, client, net)
        assert second.full_syncs == 1
        els = net.nft_elements()
        assert not any("10.96.0.81" in e or POD1 in e for elems in els.values() for e in elems), els
        assert await hits(net, "pod1", "10.96.0.80", n=6) == {"pod2"}
        # The connection made through the old table still flows (its NAT lives in conntrack).
        writer.write(b"still there\n")
        assert await asyncio.wait_for(reader.readline(), 2) == b"still there\n"
    finally:
        writer.close()


async def test_a_vanished_table_is_rebuilt(net: Net, pods: None, client: Client,
                                           proxies: list[ServiceProxy]) -> None:
    proxy = await start_proxy(proxies, client, net, check_period=0.05)
    await create(client, _svc("web", clusterIP="10.96.0.85"))
    await create(client, _slice("web", [_ep(POD1)]))
    await eventually(lambda: "10.96.0.85 . tcp . 80" in str(proxy.backend.kernel), what="programmed")  # type: ignore
    _sh("ip", "netns", "exec", net.names["node"], "nft", "flush", "ruleset")

    async def back() -> bool:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            return (await who(net, "pod1", "10.96.0.85"))[0] == "pod1"
        return False

    await eventually(back, what="the proxy puts its table back")
    assert proxy.full_syncs == 2


async def test_userspace_backend(net: Net, pods: None, client: Client, proxies: list[ServiceProxy]) -> None:
    proxy = await start_proxy(proxies, client, net, backend="userspace")
    assert proxy.backend is not None and proxy.backend.name == "userspace"
    await create(client, _svc("us", clusterIP="10.96.0.90", type="NodePort",
                              ports=[{"name": "http", "port": 80, "nodePort": 30120},
                                     {"name": "dns", "port": 53, "protocol": "UDP"}]))
    sl = _slice("us", [_ep(POD1), _ep(POD2, node="other")])
    sl["ports"].append({"name": "dns", "port": 5353, "protocol": "UDP"})
    await create(client, sl)

    async def up() -> bool:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            return bool(await who(net, "pod1", "10.96.0.90"))
        return False

    await eventually(up, what="the userspace cluster IP answers")
    assert await hits(net, "pod1", "10.96.0.90", n=6) == {"pod1", "pod2"}  # round robin
    assert await hits(net, "ext", NODE_IP, 30120, n=6) == {"pod1", "pod2"}
    assert await udp_who(net, "pod1", "10.96.0.90", 53) in ("pod1", "pod2")
    await client.resource(*SVC).delete("us", "default")

    async def closed() -> bool:
        return await refused(net, "ext", NODE_IP, 30120)

    await eventually(closed, what="the listener closes with its Service")
