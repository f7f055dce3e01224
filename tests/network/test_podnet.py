"""The pod network with real traffic: two nodes, each a network namespace running a
PodNetwork, pods as namespaces the test creates, IPv4 and IPv6 (topology in
podnet_topology.py). The unit tests at the top need no namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kybernetes.network.netlink import Rtnl
from kybernetes.network.podnet import (
    RTPROT_KYBERNETES,
    HostPort,
    HostPortConflict,
    PodNetwork,
    PodNetworkError,
    veth_name,
)
from tests.apiserver.conftest import eventually
from tests.network.podnet_topology import (
    CLUSTER_CIDRS,
    NODE1_OUT_IP,
    NODE1_OUT_IP6,
    NODES,
    OUTSIDE_IP,
    OUTSIDE_IP6,
    Topology,
    ask,
    cannot_run,
    node_object,
    serve,
    sh,
)


def _net(node: str, state_dir: Path, netns: str | None = None) -> PodNetwork:
    n = NODES[node]
    return PodNetwork(node_name=node, state_dir=state_dir, pod_cidrs=n["pod_cidrs"], cluster_cidrs=CLUSTER_CIDRS,
                      node_ips=n["ips"], netns=netns)


# ---------------------------------------------------------------------- no namespaces needed

def test_veth_names_fit_ifnamsiz_and_are_stable() -> None:
    a, b = veth_name("a" * 64), veth_name("b" * 64)
    assert len(a) <= 15 and a.startswith("veth") and a != b and a == veth_name("a" * 64)


def test_host_ports_from_pod_spec() -> None:
    pod = {"spec": {"containers": [{"ports": [{"containerPort": 80, "hostPort": 8080},
                                              {"containerPort": 53, "hostPort": 5353, "protocol": "UDP",
                                               "hostIP": "198.18.0.1"},
                                              {"containerPort": 9000}]}]}}
    assert HostPort.from_pod(pod) == [HostPort(8080, 80, "TCP", ""), HostPort(5353, 53, "UDP", "198.18.0.1")]
    pod["spec"]["hostNetwork"] = True
    assert HostPort.from_pod(pod) == []


def test_routes_wanted_from_node_objects(tmp_path: Path) -> None:
    pn = _net("node1", tmp_path)
    other = node_object("node2")
    v4only = {"metadata": {"name": "node3"}, "spec": {"podCIDR": "10.42.3.0/24", "podCIDRs": ["10.42.3.0/24",
                                                                                                "fd42:0:0:3::/64"]},
              "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.3"}]}}
    pending = {"metadata": {"name": "node4"}, "spec": {}, "status": {"addresses": []}}
    overlap = {"metadata": {"name": "node5"}, "spec": {"podCIDRs": ["10.42.0.0/25"]},
               "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.5"}]}}
    got = pn.desired_routes([node_object("node1"), other, v4only, pending, overlap])
    assert {str(k): str(v) for k, v in got.items()} == {
        "10.42.1.0/24": "198.18.0.2", "fd42:0:0:1::/64": "fd00:18::2", "10.42.3.0/24": "198.18.0.3"}
    assert pn.host_network_status() == {"podIP": "198.18.0.1", "podIPs": [{"ip": "198.18.0.1"},
                                                                          {"ip": "fd00:18::1"}]}


def test_table_masquerades_only_traffic_leaving_the_cluster(tmp_path: Path) -> None:
    script = _net("node1", tmp_path)._table_script([])
    assert "set cluster4 { type ipv4_addr; flags interval; elements = { 10.42.0.0/16 } }" in script
    assert "ip saddr 10.42.0.0/24 ip daddr != @cluster4 ip daddr != 224.0.0.0/4 masquerade" in script
    assert "ip6 saddr fd42::/64 ip6 daddr != @cluster6 ip6 daddr != ff00::/8 masquerade" in script
    with pytest.raises(PodNetworkError, match="at most one pod CIDR per IP family"):
        PodNetwork(node_name="n", state_dir=tmp_path / "x", pod_cidrs=["10.0.0.0/24", "10.1.0.0/24"])


# ---------------------------------------------------------------------- namespaces

@pytest.fixture
def topo() -> Iterator[Topology]:
    why = cannot_run()
    if why:
        pytest.skip(why)
    t = Topology()
    try:
        t.build()
    except subprocess.CalledProcessError as e:
        t.destroy()
        pytest.skip(f"cannot build network namespaces: {e.stderr}")
    try:
        yield t
    finally:
        t.destroy()


@pytest.fixture
async def nets(topo: Topology, tmp_path: Path) -> AsyncIterator[dict[str, PodNetwork]]:
    made: dict[str, PodNetwork] = {}
    try:
        for node in NODES:
            made[node] = pn = _net(node, tmp_path / node, topo.path(node))
            await pn.setup()
        for pn in made.values():
            assert await pn.sync_routes([node_object(n) for n in NODES]) == {}
        yield made
    finally:
        for pn in made.values():
            await pn.close()


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.AbstractServer]]:
    out: list[asyncio.AbstractServer] = []
    try:
        yield out
    finally:
        for s in out:
            s.close()


def _link(netns: str, name: str):  # noqa: ANN202 - a netlink.Link or None
    with Rtnl.open(netns) as r:
        return r.link(name)


async def test_dual_stack_addresses_routes_and_idempotent_add(topo: Topology, nets: dict[str, PodNetwork]) -> None:
    pn = nets["node1"]
    pa = topo.pod("pa")
    ips = await pn.add("sb-a", pa, namespace="default", name="a", uid="u-a")
    v4, v6 = (ipaddress.ip_address(ip) for ip in ips.ips)
    assert v4 in ipaddress.ip_network("10.42.0.0/24") and v6 in ipaddress.ip_network("fd42::/64")
    assert ips.status() == {"podIP": str(v4), "podIPs": [{"ip": str(v4)}, {"ip": str(v6)}]}
    assert ips.gateways == ("10.42.0.1", "fd42::1")
    with Rtnl.open(pa) as pod:
        eth0, lo = pod.link("eth0"), pod.link("lo")
        assert eth0 is not None and eth0.up and lo is not None and lo.up
        assert {str(a) for a in pod.addresses(eth0.index) if not a.ip.is_link_local} == set(ips.interfaces)
        defaults = {str(r.gateway) for v in (4, 6) for r in pod.routes(v) if r.dst.prefixlen == 0}
        assert defaults == {"10.42.0.1", "fd42::1"}
    out = sh("ip", "-n", topo.names["pa"], "-6", "addr", "show", "dev", "eth0").stdout
    assert "tentative" not in out  # no duplicate address detection to wait for
    host, br = _link(topo.path("node1"), ips.host_veth), _link(topo.path("node1"), "kyb0")
    assert host is not None and br is not None and host.master == br.index and host.up
    assert await pn.add("sb-a", pa) == ips  # again: the same, untouched
    # A crash mid-add (the record written, the veth not finished): the retry redoes it with
    # the same addresses.
    sh("ip", "-n", topo.names["node1"], "link", "delete", ips.host_veth)
    assert await pn.add("sb-a", pa) == ips
    with Rtnl.open(pa) as pod:
        eth0 = pod.link("eth0")
        assert eth0 is not None and {str(a) for a in pod.addresses(eth0.index)} >= set(ips.interfaces)
    assert await pn.status("sb-a") == ips
    assert await pn.status("sb-none") is None
    with pytest.raises(PodNetworkError, match="node's own network namespace"):
        await pn.add("sb-host", topo.path("node1"))


async def test_pod_to_pod_on_one_node_across_nodes_and_to_the_node(
        topo: Topology, nets: dict[str, PodNetwork], servers: list[asyncio.AbstractServer]) -> None:
    pa, pb, pc = topo.pod("pa"), topo.pod("pb"), topo.pod("pc")
    a = await nets["node1"].add("sb-a", pa)
    b = await nets["node1"].add("sb-b", pb)
    c = await nets["node2"].add("sb-c", pc)
    assert ipaddress.ip_address(c.pod_ip) in ipaddress.ip_network("10.42.1.0/24")
    for ns, name in ((pb, "b"), (pc, "c"), (pa, "a")):
        servers += await serve(ns, name, 8080)
    servers += await serve(topo.path("node1"), "node1", 9001)
    for family in (0, 1):  # IPv4, IPv6: every source address arrives unchanged
        assert await ask(pa, b.ips[family], 8080) == f"b {a.ips[family]}"
        assert await ask(pa, c.ips[family], 8080) == f"c {a.ips[family]}"
        assert await ask(pc, a.ips[family], 8080) == f"a {c.ips[family]}"
        assert await ask(pa, NODES["node1"]["ips"][family], 9001) == f"node1 {a.ips[family]}"


async def test_traffic_leaving_the_cluster_is_masqueraded(
        topo: Topology, nets: dict[str, PodNetwork], servers: list[asyncio.AbstractServer]) -> None:
    pa = topo.pod("pa")
    await nets["node1"].add("sb-a", pa)
    servers += await serve(topo.path("outside"), "outside", 9000)
    # outside has no route back to the pod CIDRs: only the node's own address gets an answer.
    assert await ask(pa, OUTSIDE_IP, 9000) == f"outside {NODE1_OUT_IP}"
    assert await ask(pa, OUTSIDE_IP6, 9000) == f"outside {NODE1_OUT_IP6}"


@pytest.mark.parametrize("br_netfilter", [False, True], ids=["plain-bridge", "br_netfilter"])
async def test_host_ports_dnat_hairpin_localhost_conflict_and_removal(
        topo: Topology, nets: dict[str, PodNetwork], servers: list[asyncio.AbstractServer],
        br_netfilter: bool) -> None:
    # With br_netfilter, bridged frames pass the IP hooks; without it the hairpin answer only
    # comes back NATed because it was masqueraded. Its sysctls are per namespace (Linux 5.3+):
    # this changes node1 only.
    have = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists()
    if br_netfilter and not have:
        pytest.skip("br_netfilter is not loaded")
    if have:
        for name in ("iptables", "ip6tables"):
            sh("ip", "netns", "exec", topo.names["node1"], "sysctl", "-qw",
               f"net.bridge.bridge-nf-call-{name}={int(br_netfilter)}")
    pn = nets["node1"]
    pa, pb = topo.pod("pa"), topo.pod("pb")
    hps = [HostPort(18080, 8080), HostPort(18081, 8080, "TCP", "198.18.0.1")]
    a = await pn.add("sb-a", pa, host_ports=hps)
    b = await pn.add("sb-b", pb)
    servers += await serve(pa, "a", 8080)
    node1, node2 = topo.path("node1"), topo.path("node2")
    # From another node, v4 and v6: DNAT only, the client's address is kept (as portmap).
    assert await ask(node2, "198.18.0.1", 18080) == "a 198.18.0.2"
    assert await ask(node2, "fd00:18::1", 18080) == "a fd00:18::2"
    # From the node itself: to its own address (the pod answers that address, so no NAT
    # is needed) and to localhost (masqueraded to the gateway, or the pod would answer
    # 127.0.0.1).
    assert await ask(node1, NODE1_OUT_IP, 18080) == f"a {NODE1_OUT_IP}"
    assert await ask(node1, "127.0.0.1", 18080) == "a 10.42.0.1"
    # Hairpin: a pod on the same bridge reaches the hostPort, and so does the pod itself;
    # the answer must come back NATed.
    assert await ask(pb, "198.18.0.1", 18080) == "a 10.42.0.1"
    assert await ask(pa, "198.18.0.1", 18080) == "a 10.42.0.1"
    # A hostPort bound to one address answers there only.
    assert await ask(node2, "198.18.0.1", 18081) == "a 198.18.0.2"
    with pytest.raises(ConnectionRefusedError):
        await ask(topo.path("outside"), NODE1_OUT_IP, 18081)
    # Another sandbox asking for a hostPort in use is refused, and leaves nothing behind.
    pd = topo.pod("pd")
    with pytest.raises(HostPortConflict, match="18080/TCP"):
        await pn.add("sb-d", pd, host_ports=[HostPort(18080, 80)])
    assert await pn.status("sb-d") is None and _link(node1, veth_name("sb-d")) is None
    assert await ask(node2, "198.18.0.1", 18080) == "a 198.18.0.2"  # the owner still has it

    await pn.delete("sb-a", pa)
    assert topo.nft_map("node1", "hostport4") == [] and topo.nft_map("node1", "hostipport4") == []
    with pytest.raises(ConnectionRefusedError):
        await ask(node2, "198.18.0.1", 18080)
    assert _link(node1, a.host_veth) is None
    with Rtnl.open(pa) as pod:
        assert pod.link("eth0") is None
    assert await pn.status("sb-a") is None
    assert pn.ipam.allocations() == {"sb-b": list(b.interfaces)}


async def test_a_restarted_pod_network_knows_and_frees_existing_sandboxes(
        topo: Topology, nets: dict[str, PodNetwork], tmp_path: Path,
        servers: list[asyncio.AbstractServer]) -> None:
    pa, pb = topo.pod("pa"), topo.pod("pb")
    a = await nets["node1"].add("sb-a", pa, host_ports=[HostPort(18080, 8080)])
    b = await nets["node1"].add("sb-b", pb)
    servers += await serve(pa, "a", 8080)
    await nets["node1"].close()  # the kubelet goes away; the fixture closing it again is harmless

    again = _net("node1", tmp_path / "node1", topo.path("node1"))
    try:
        await again.setup()  # rebuilds the nft table, hostPorts included
        assert await again.status("sb-a") == a and await again.status("sb-b") == b
        assert await ask(topo.path("node2"), "198.18.0.1", 18080) == "a 198.18.0.2"
        assert await again.add("sb-a", pa, host_ports=[HostPort(18080, 8080)]) == a
        await again.delete("sb-a")  # without the namespace path: found by sandbox id
        assert _link(topo.path("node1"), a.host_veth) is None
        assert topo.nft_map("node1", "hostport4") == []
        # Leaked: sandbox b is gone from the runtime while the kubelet was down.
        assert await again.gc(live=["sb-other"]) == ["sb-b"]
        assert _link(topo.path("node1"), b.host_veth) is None
        assert again.ipam.allocations() == {}
        await again.delete("sb-a")  # idempotent
        await again.delete("sb-never-seen")
    finally:
        await again.close()


async def test_delete_after_the_namespace_is_gone(topo: Topology, nets: dict[str, PodNetwork]) -> None:
    pn = nets["node1"]
    a = await pn.add("sb-a", topo.pod("pa"))
    sh("ip", "netns", "delete", topo.names.pop("pa"))  # the sandbox died, taking its veth along
    await pn.delete("sb-a", None)
    assert await pn.status("sb-a") is None and pn.ipam.allocations() == {}
    assert _link(topo.path("node1"), a.host_veth) is None
    with pytest.raises(PodNetworkError, match="network namespace"):
        await pn.add("sb-z", "/run/netns/kpn-does-not-exist")
    assert pn.ipam.allocations() == {}


async def test_a_process_held_namespace_joins_like_a_named_one(
        topo: Topology, nets: dict[str, PodNetwork], servers: list[asyncio.AbstractServer]) -> None:
    # The runtimes hand over /proc/<holder pid>/ns/net, not a /run/netns name.
    proc = await asyncio.create_subprocess_exec("unshare", "--net", "--", "sleep", "60")
    try:
        holder = f"/proc/{proc.pid}/ns/net"
        own = Path("/proc/self/ns/net").resolve()

        def moved() -> bool:
            return Path(holder).resolve() != own

        deadline = asyncio.get_running_loop().time() + 5
        while not moved():
            assert asyncio.get_running_loop().time() < deadline, "unshare did not enter a new namespace"
            await asyncio.sleep(0.01)
        pa = topo.pod("pa")
        a = await nets["node1"].add("sb-a", pa)
        h = await nets["node1"].add("sb-holder", holder)
        servers += await serve(holder, "holder", 8080)
        assert await ask(pa, h.ips[0], 8080) == f"holder {a.ips[0]}"
        assert await ask(pa, h.ips[1], 8080) == f"holder {a.ips[1]}"
        await nets["node1"].delete("sb-holder", holder)
        assert _link(topo.path("node1"), h.host_veth) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_routes_follow_the_nodes(topo: Topology, nets: dict[str, PodNetwork]) -> None:
    pn = nets["node1"]

    def ours() -> dict[str, str]:
        with Rtnl.open(topo.path("node1")) as r:
            return {str(x.dst): str(x.gateway) for v in (4, 6) for x in r.routes(v, protocol=RTPROT_KYBERNETES)}

    assert ours() == {"10.42.1.0/24": "198.18.0.2", "fd42:0:0:1::/64": "fd00:18::2"}
    moved = node_object("node2")
    moved["status"]["addresses"][0]["address"] = "198.18.0.22"
    assert await pn.sync_routes([node_object("node1"), moved]) == {}
    assert ours()["10.42.1.0/24"] == "198.18.0.22"
    # A node whose address is on no link of ours cannot be reached host-gw: reported, not fatal.
    far = node_object("node2")
    far["status"]["addresses"] = [{"type": "InternalIP", "address": "203.0.113.9"}]
    failed = await pn.sync_routes([far])
    assert list(failed) == ["10.42.1.0/24"] and "unreachable" in failed["10.42.1.0/24"].lower()
    assert ours() == {}
    assert await pn.sync_routes([node_object("node2")]) == {}
    assert len(ours()) == 2

    # Driven by a Node informer: a node's new address moves the route.
    class FakeInformer:
        def __init__(self) -> None:
            self.nodes = [node_object("node1"), node_object("node2")]
            self.handlers: list[tuple] = []

        def add_handler(self, on_add=None, on_update=None, on_delete=None) -> None:  # noqa: ANN001
            self.handlers.append((on_add, on_update, on_delete))

        def list(self) -> list[dict]:
            return self.nodes

    inf = FakeInformer()
    inf.nodes[1]["status"]["addresses"][0]["address"] = "198.18.0.23"
    pn.watch_nodes(inf)
    await eventually(lambda: ours().get("10.42.1.0/24") == "198.18.0.23", what="the informer's route")
    old, new = inf.nodes[1], node_object("node2")
    inf.nodes[1] = new
    for _, on_update, _ in inf.handlers:
        on_update(old, new)
    await eventually(lambda: ours().get("10.42.1.0/24") == "198.18.0.2", what="the moved route")

    await pn.teardown()
    assert ours() == {} and _link(topo.path("node1"), "kyb0") is None


async def test_concurrent_adds_and_deletes(topo: Topology, nets: dict[str, PodNetwork]) -> None:
    pn = nets["node1"]
    pods = [topo.pod(f"p{i}") for i in range(6)]
    got = await asyncio.gather(*(pn.add(f"sb-{i}", p) for i, p in enumerate(pods)),
                               pn.add("sb-0", pods[0]))  # the same sandbox twice at once
    assert got[0] == got[-1]
    assert len({g.pod_ip for g in got[:-1]}) == 6
    await asyncio.gather(*(pn.delete(f"sb-{i}", p) for i, p in enumerate(pods)), pn.delete("sb-0"))
    assert pn.ipam.allocations() == {} and pn._locks == {}
