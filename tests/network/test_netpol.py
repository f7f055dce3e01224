"""NetworkPolicy enforcement: the policy -> rules computation as pure functions (the docs'
recipes), then real traffic between pods (network namespaces on the real pod network of
two nodes, podnet_topology.py), each node's NetworkPolicyAgent programming its own
namespace from an in-process API server.

The traffic world, built once for the module (namespaces, veths, addresses, servers);
the API objects describing it are written per test:

    node1: a-web    alpha  app=web     port "http" = 8080
           a-client alpha  app=client
           a-other  alpha  app=other
           b-client beta   app=client
    node2: b-other  beta   app=other   port "http" = 9090 (a named port resolves per pod)
           d-dns    dns    app=dns     port "dns" = 53/UDP

Every pod answers TCP 8080 and 9090 ("<pod> <peer address>", then echoes lines) and UDP
53 ("<pod> <peer address>"), on IPv4 and IPv6. Denied packets are dropped, so a denied
probe is a connect that times out: those probes use a short timeout and run
concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kybernetes.client import Client
from kybernetes.network.netpol import (
    NetworkPolicyAgent,
    PeerSet,
    PodInfo,
    Policy,
    changes,
    compile_policy,
    local_pod_objects,
    namespace_labels,
    pod_info,
    port_match,
)
from kybernetes.network.podnet import PodNetwork
from kybernetes.runtime.nsutil import open_connection, socket_in_netns
from tests.network.podnet_topology import CLUSTER_CIDRS, NODES, Topology, cannot_run, node_object, sh

# ---------------------------------------------------------------------- pure: helpers


def _policy(spec: dict[str, Any], name: str = "p", ns: str = "alpha") -> Policy:
    p = compile_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                        "metadata": {"name": name, "namespace": ns}, "spec": spec})
    assert p is not None
    return p


def _pod(name: str, ns: str = "alpha", labels: dict[str, str] | None = None, ips: tuple[str, ...] = (),
         node: str = "node1", ports: list[dict[str, Any]] | None = None, **status: Any) -> PodInfo:
    n = sum(map(ord, name)) % 200 + 10
    info = pod_info({"metadata": {"name": name, "namespace": ns, "labels": labels or {}},
                     "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports or []}]},
                     "status": {"podIPs": [{"ip": ip} for ip in ips or (f"10.42.0.{n}", f"fd42::{n:x}")],
                                **status}})
    assert info is not None
    return info


def _chains(pod: PodInfo, *policies: Policy) -> dict[str, list[str]]:
    """"ingress4" -> the rules of the chain the pod's IPv4 address jumps to (absent: not isolated)."""
    objs, _ = local_pod_objects(pod, policies)
    out = {}
    for direction in ("ingress", "egress"):
        for fam in (4, 6):
            ip = pod.ips_of(fam)[0]
            verdict = objs.get(("e", f"{direction}{fam}", ip))
            if verdict is not None:
                out[f"{direction}{fam}"] = objs[("c", verdict.split()[1], "")].split("\n")
    return out


def _sets(pod: PodInfo, *policies: Policy) -> dict[str, PeerSet]:
    return local_pod_objects(pod, policies)[1]


def _members(ps: PeerSet, *pods: PodInfo, ns_labels: dict[str, dict[str, str]] | None = None) -> set[str]:
    out: set[str] = set()
    for p in pods:
        labels = (ns_labels or {}).get(p.namespace) or namespace_labels(p.namespace, None)
        if ps.elements(p, labels):
            out.add(p.key.split("/")[1])
    return out


WEB = {"matchLabels": {"app": "web"}}


# ---------------------------------------------------------------------- pure: the recipes

def test_default_deny_ingress_isolates_every_pod_of_the_namespace_only() -> None:
    deny = _policy({"podSelector": {}, "policyTypes": ["Ingress"]})
    web, other_ns = _pod("web", labels={"app": "web"}), _pod("x", ns="beta")
    assert _chains(web, deny) == {"ingress4": ["drop"], "ingress6": ["drop"]}
    assert _chains(other_ns, deny) == {}
    # Pods treated alike share one chain.
    a, _ = local_pod_objects(web, [deny])
    b, _ = local_pod_objects(_pod("other"), [deny])
    assert {k for k in a if k[0] == "c"} == {k for k in b if k[0] == "c"}
    assert ("e", "self4", f"{web.ips_of(4)[0]} . {web.ips_of(4)[0]}") in a  # it may still reach itself


def test_default_deny_egress_and_policy_types_defaults() -> None:
    deny = _policy({"podSelector": {}, "policyTypes": ["Egress"]})
    assert _chains(_pod("web"), deny) == {"egress4": ["drop"], "egress6": ["drop"]}
    # No policyTypes: Ingress always, Egress only when there are egress rules.
    both = _policy({"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]})
    assert both.ingress == () and both.egress is not None and len(both.egress) == 1
    ingress_only = _policy({"podSelector": {}, "egress": []})
    assert ingress_only.ingress == () and ingress_only.egress is None
    # Explicit policyTypes win: ingress rules of an Egress-only policy are ignored.
    eg = _policy({"podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]})
    assert eg.ingress is None and eg.egress == ()
    assert _chains(_pod("web"), both)["egress4"] == ["udp dport 53 return", "drop"]


def test_allow_all_overrides_default_deny() -> None:
    deny = _policy({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, "deny")
    allow_in = _policy({"podSelector": {}, "ingress": [{}]}, "allow-in")
    allow_out = _policy({"podSelector": {}, "egress": [{}], "policyTypes": ["Egress"]}, "allow-out")
    assert set(_chains(_pod("web"), deny, allow_in)) == {"egress4", "egress6"}
    assert _chains(_pod("web"), deny, allow_in, allow_out) == {}
    objs, _ = local_pod_objects(_pod("web"), [deny, allow_in, allow_out])
    assert objs == {}  # allowing everything is as good as not isolated: nothing programmed
    # An allow-all with ports is not "everything".
    some = _policy({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    assert _chains(_pod("web"), some)["ingress4"] == ["tcp dport 80 accept", "drop"]


def test_allow_from_pod_label_stays_in_the_policy_namespace() -> None:
    pol = _policy({"podSelector": WEB, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]})
    web = _pod("web", labels={"app": "web"})
    assert _chains(_pod("db", labels={"app": "db"}), pol) == {}  # not selected
    [s4, s6] = sorted(_sets(web, pol).values(), key=lambda s: s.family)
    assert _chains(web, pol) == {"ingress4": [f"ip saddr @{s4.name} accept", "drop"],
                                 "ingress6": [f"ip6 saddr @{s6.name} accept", "drop"]}
    here, elsewhere = _pod("c1", labels={"app": "client"}), _pod("c2", ns="beta", labels={"app": "client"})
    assert _members(s4, here, elsewhere, _pod("o", labels={"app": "other"})) == {"c1"}
    assert s4.elements(here, {}) == here.ips_of(4) and s6.elements(here, {}) == here.ips_of(6)


def test_allow_from_namespace_uses_namespace_labels_and_the_implicit_name_label() -> None:
    pol = _policy({"podSelector": WEB, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]})
    [s4, _] = sorted(_sets(_pod("web", labels={"app": "web"}), pol).values(), key=lambda s: s.family)
    pods = (_pod("x", ns="beta", labels={"app": "any"}), _pod("y", ns="alpha"), _pod("z", ns="gamma"))
    labels = {"beta": namespace_labels("beta", {"metadata": {"labels": {"team": "b"}}}),
              "alpha": namespace_labels("alpha", {"metadata": {"labels": {"team": "a"}}})}
    assert _members(s4, *pods, ns_labels=labels) == {"x"}
    by_name = _policy({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "gamma"}}}]}]})
    [g4, _] = sorted(_sets(_pod("web"), by_name).values(), key=lambda s: s.family)
    assert _members(g4, *pods) == {"z"}  # every namespace has its name as a label


def test_namespace_and_pod_selector_in_one_peer_versus_two_peers() -> None:
    ns_sel, pod_sel = {"matchLabels": {"team": "b"}}, {"matchLabels": {"app": "client"}}
    combined = _policy({"podSelector": WEB, "ingress": [{"from": [{"namespaceSelector": ns_sel,
                                                                    "podSelector": pod_sel}]}]})
    separate = _policy({"podSelector": WEB, "ingress": [{"from": [{"namespaceSelector": ns_sel},
                                                                   {"podSelector": pod_sel}]}]})
    labels = {"beta": namespace_labels("beta", {"metadata": {"labels": {"team": "b"}}})}
    pods = (_pod("b-client", ns="beta", labels={"app": "client"}), _pod("b-other", ns="beta", labels={"app": "x"}),
            _pod("a-client", labels={"app": "client"}), _pod("a-other", labels={"app": "x"}),
            _pod("g-client", ns="gamma", labels={"app": "client"}))
    web = _pod("web", labels={"app": "web"})
    [c4, _] = sorted(_sets(web, combined).values(), key=lambda s: s.family)
    [s4, _] = sorted(_sets(web, separate).values(), key=lambda s: s.family)
    assert _members(c4, *pods, ns_labels=labels) == {"b-client"}  # AND: those pods in those namespaces
    assert _members(s4, *pods, ns_labels=labels) == {"b-client", "b-other", "a-client"}  # OR
    assert c4.name != s4.name
    # The same peers in another policy share the set.
    again = _policy({"podSelector": {}, "ingress": [{"from": [{"podSelector": pod_sel},
                                                               {"namespaceSelector": ns_sel}]}]}, "again")
    assert s4.name in _sets(web, again)


def test_ip_block_with_except_both_families() -> None:
    pol = _policy({"podSelector": {}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.42.0.0/16", "except": ["10.42.1.0/24"]}},
        {"ipBlock": {"cidr": "fd42::/56", "except": ["fd42:0:0:1::/64"]}}]}]})
    assert pol.ingress is not None
    [rule] = pol.ingress
    assert "10.42.1.0/24" not in rule.cidrs and "10.42.0.0/24" in rule.cidrs and "10.42.128.0/17" in rule.cidrs
    c = _chains(_pod("web"), pol)
    v4 = c["ingress4"][0]
    assert v4.startswith("ip saddr { 10.42.0.0/24, 10.42.2.0/23,") and v4.endswith(" } accept")
    assert c["ingress6"][0].startswith("ip6 saddr { fd42::/64, fd42:0:0:2::/63,")
    assert _sets(_pod("web"), pol) == {}  # addresses only: no pod sets
    # A family without blocks allows nothing of that family.
    v4only = _policy({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]}],
                      "policyTypes": ["Egress"]})
    assert _chains(_pod("web"), v4only) == {"egress4": ["ip daddr 192.0.2.0/24 return", "drop"],
                                            "egress6": ["drop"]}
    # 0.0.0.0/0 is every IPv4 address (no address match at all), ::/0 every IPv6 one.
    anywhere = _policy({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}],
                                                       "ports": [{"port": 443}]}]})
    assert _chains(_pod("web"), anywhere)["egress4"] == ["tcp dport 443 return", "drop"]


def test_named_ports_resolve_against_the_destination_pod() -> None:
    ing = _policy({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}, {"port": "dns", "protocol": "UDP"}]}]})
    web = _pod("web", ports=[{"name": "http", "containerPort": 8080}, {"name": "dns", "containerPort": 53,
                                                                       "protocol": "UDP"}])
    assert _chains(web, ing)["ingress4"] == ["meta l4proto . th dport { tcp . 8080, udp . 53 } accept", "drop"]
    # A pod without the name (or with it for another protocol) matches nothing of the rule.
    udp_http = _pod("u", ports=[{"name": "http", "containerPort": 8080, "protocol": "UDP"}])
    assert _chains(udp_http, ing)["ingress4"] == ["drop"]
    # Egress: each destination pod's own number, in an ip . proto . port set.
    eg = _policy({"podSelector": {}, "policyTypes": ["Egress"],
                  "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "http"}, {"port": 5000}]}]})
    client = _pod("client")
    sets = _sets(client, eg)
    named = next(s for s in sets.values() if s.ports and s.family == 4)
    pods4 = next(s for s in sets.values() if not s.ports and s.family == 4)
    assert _chains(client, eg)["egress4"] == [f"tcp dport 5000 ip daddr @{pods4.name} return",
                                              f"ip daddr . meta l4proto . th dport @{named.name} return", "drop"]
    a = _pod("a", ports=[{"name": "http", "containerPort": 8080}], ips=("10.42.0.7",))
    b = _pod("b", ports=[{"name": "http", "containerPort": 9090}], ips=("10.42.1.9",), node="node2")
    c = _pod("c", ns="beta", ports=[{"name": "http", "containerPort": 7070}], ips=("10.42.1.10",))
    assert named.elements(a, {}) == ["10.42.0.7 . tcp . 8080"]
    assert named.elements(b, {}) == ["10.42.1.9 . tcp . 9090"]
    assert named.elements(c, {}) == []  # not a peer (another namespace)
    assert named.definition() == "type ipv4_addr . inet_proto . inet_service;"
    # Named ports towards an ipBlock admit the pods inside the block only.
    blk = _policy({"podSelector": {}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "10.42.1.0/24"}}], "ports": [{"port": "http"}]}]})
    nb = next(s for s in _sets(client, blk).values() if s.family == 4)
    assert (nb.elements(a, {}), nb.elements(b, {}), nb.elements(c, {})) == (
        [], ["10.42.1.9 . tcp . 9090"], ["10.42.1.10 . tcp . 7070"])


def test_end_port_ranges_and_protocols() -> None:
    pol = _policy({"podSelector": {}, "ingress": [{"ports": [{"port": 32000, "endPort": 32768},
                                                             {"port": 32100}, {"protocol": "SCTP", "port": 9}]}]})
    assert _chains(_pod("web"), pol)["ingress4"] == [
        "meta l4proto . th dport { sctp . 9, tcp . 32000-32768 } accept", "drop"]
    assert port_match([("udp", 0, 65535)]) == "meta l4proto udp"
    assert port_match([("udp", 0, 65535), ("tcp", 0, 65535)]) == "meta l4proto { tcp, udp }"
    assert port_match([("tcp", 80, 80), ("tcp", 81, 90), ("tcp", 443, 443)]) == "tcp dport { 80-90, 443 }"
    assert port_match([("tcp", 0, 65535), ("udp", 53, 53)]) == "meta l4proto . th dport { tcp . 0-65535, udp . 53 }"
    assert port_match([]) == ""
    # A port list with nothing usable (endPort below port, an unknown protocol) matches
    # nothing, unlike an empty list, which matches every port.
    bad = _policy({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80},
                                                             {"protocol": "ICMP", "port": 1}]}]})
    assert bad.ingress == ()
    assert _chains(_pod("web"), bad)["ingress4"] == ["drop"]


def test_policies_add_up_and_identical_rules_are_written_once() -> None:
    a = _policy({"podSelector": WEB, "ingress": [{"ports": [{"port": 80}]}]}, "a")
    b = _policy({"podSelector": {}, "ingress": [{"ports": [{"port": 443}]}]}, "b")
    dup = _policy({"podSelector": {}, "ingress": [{"ports": [{"port": 443}]}]}, "dup")
    web = _pod("web", labels={"app": "web"})
    assert _chains(web, a, b, dup)["ingress4"] == ["tcp dport 80 accept", "tcp dport 443 accept", "drop"]
    assert _chains(_pod("db"), a, b)["ingress4"] == ["tcp dport 443 accept", "drop"]
    # Policies of another namespace never select.
    assert _chains(web, _policy({"podSelector": {}, "ingress": []}, ns="beta")) == {}


def test_rules_with_the_same_ports_share_one_lookup_of_their_peers_union() -> None:
    pols = [_policy({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"c{i}"}}},
                                                              {"ipBlock": {"cidr": f"192.0.2.{i * 8}/29"}}],
                                                     "ports": [{"port": 443}]}]}, f"p{i}") for i in range(3)]
    other = _policy({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]}, "q")
    web = _pod("web")
    union = next(s for s in _sets(web, *pols).values() if s.family == 4)
    c = _chains(web, *pols, other)["ingress4"]
    assert c[:2] == [f"tcp dport 443 ip saddr @{union.name} accept",
                     "tcp dport 443 ip saddr { 192.0.2.0/28, 192.0.2.16/29 } accept"]
    assert c[2].startswith("tcp dport 80 ip saddr @") and c[3:] == ["drop"]
    assert _members(union, *(_pod(f"x{i}", labels={"app": f"c{i}"}) for i in range(4))) == {"x0", "x1", "x2"}


def test_pods_that_are_not_subject() -> None:
    base = {"metadata": {"name": "p", "namespace": "alpha"}, "spec": {"nodeName": "node1"},
            "status": {"podIP": "10.42.0.9"}}
    assert pod_info(base) is not None and pod_info(base).ips == (("10.42.0.9", 4),)  # type: ignore[union-attr]
    assert pod_info({**base, "spec": {"hostNetwork": True}}) is None
    assert pod_info({**base, "status": {"podIP": "10.42.0.9", "phase": "Succeeded"}}) is None
    assert pod_info({**base, "status": {}}) is None
    v6 = pod_info({**base, "status": {"podIPs": [{"ip": "fd42:0::09"}]}})
    assert v6 is not None and v6.ips == (("fd42::9", 6),)  # canonical text


def test_invalid_selectors_select_nothing() -> None:
    bad = _policy({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}, "ingress": []})
    assert _chains(_pod("web"), bad) == {}


def test_changes_orders_a_transaction() -> None:
    kernel = {("s", "p4-old", ""): "type ipv4_addr;", ("c", "i4-old", ""): "ip saddr @p4-old accept\ndrop",
              ("e", "ingress4", "10.42.0.5"): "goto i4-old", ("e", "p4-old", "10.42.0.6"): ""}
    wanted: dict[Any, str | None] = {
        ("s", "p4-old", ""): None, ("c", "i4-old", ""): None, ("e", "p4-old", "10.42.0.6"): None,
        ("s", "p4-new", ""): "type ipv4_addr;", ("c", "i4-new", ""): "ip saddr @p4-new accept\ndrop",
        ("e", "ingress4", "10.42.0.5"): "goto i4-new", ("e", "p4-new", "10.42.0.6"): ""}
    lines = changes("t", kernel, wanted).lines  # type: ignore[arg-type]

    def at(prefix: str) -> int:
        return next(i for i, ln in enumerate(lines) if ln.startswith(prefix))

    assert at("add set inet t p4-new") < at("add chain inet t i4-new") < at("add rule inet t i4-new ip saddr")
    assert at("add rule inet t i4-new") < at("delete element inet t ingress4") < at("add element inet t ingress4")
    assert at("add element inet t ingress4") < at("delete chain inet t i4-old") < at("delete set inet t p4-old")
    assert not any(ln.startswith("delete element inet t p4-old") for ln in lines)  # the set goes whole


# ---------------------------------------------------------------------- traffic: the world

@dataclass(frozen=True)
class PodSpec:
    name: str
    namespace: str
    node: str
    labels: dict[str, str]
    ports: tuple[tuple[str, int, str], ...] = ()  # (name, containerPort, protocol)


PODS = [
    PodSpec("a-web", "alpha", "node1", {"app": "web"}, (("http", 8080, "TCP"),)),
    PodSpec("a-client", "alpha", "node1", {"app": "client"}),
    PodSpec("a-other", "alpha", "node1", {"app": "other"}),
    PodSpec("b-client", "beta", "node1", {"app": "client"}),
    PodSpec("b-other", "beta", "node2", {"app": "other"}, (("http", 9090, "TCP"),)),
    PodSpec("d-dns", "dns", "node2", {"app": "dns"}, (("dns", 53, "UDP"),)),
]
NAMESPACES = {"alpha": {"team": "a"}, "beta": {"team": "b"}, "dns": {"team": "infra"}}
DENIED_TIMEOUT = 0.25
ALLOWED_TIMEOUT = 0.5


class Servers:
    """The pods' servers, on an event loop in a thread of their own: they outlive each test's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="netpol-servers", daemon=True)
        self.thread.start()
        self.closers: list[Any] = []

    def add(self, netns: str, name: str) -> None:
        asyncio.run_coroutine_threadsafe(self._serve(netns, name), self.loop).result(10)

    async def _serve(self, netns: str, name: str) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(f"{name} {writer.get_extra_info('peername')[0]}\n".encode())
            with contextlib.suppress(OSError):
                while line := await reader.readline():
                    writer.write(line)
                    await writer.drain()
            writer.close()

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.transport.sendto(f"{name} {addr[0]}".encode(), addr)  # type: ignore[attr-defined]

        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for port in (8080, 9090):
                s = socket_in_netns(netns, family, socket.SOCK_STREAM)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                s.listen(64)
                s.setblocking(False)
                self.closers.append(await asyncio.start_server(handle, sock=s))
            u = socket_in_netns(netns, family, socket.SOCK_DGRAM)
            if family == socket.AF_INET6:
                u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            u.bind((host, 53))
            u.setblocking(False)
            transport, _ = await self.loop.create_datagram_endpoint(Udp, sock=u)
            self.closers.append(transport)

    def close(self) -> None:
        def stop() -> None:
            for c in self.closers:
                c.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)


@dataclass
class World:
    topo: Topology
    ips: dict[str, tuple[str, str]]  # pod -> (IPv4, IPv6)

    def netns(self, pod: str) -> str:
        return self.topo.path(pod)

    def ip(self, pod: str, family: int) -> str:
        return self.ips[pod][0 if family == 4 else 1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    why = cannot_run()
    if why:
        pytest.skip(why)
    topo = Topology()
    servers: Servers | None = None
    try:
        try:
            topo.build()
        except subprocess.CalledProcessError as e:
            pytest.skip(f"cannot build network namespaces: {e.stderr}")
        tmp = tmp_path_factory.mktemp("netpol")

        async def plumb() -> dict[str, tuple[str, str]]:
            nets = {n: PodNetwork(node_name=n, state_dir=tmp / n, pod_cidrs=NODES[n]["pod_cidrs"],
                                  cluster_cidrs=CLUSTER_CIDRS, node_ips=NODES[n]["ips"], netns=topo.path(n))
                    for n in NODES}
            try:
                for pn in nets.values():
                    await pn.setup()
                    assert await pn.sync_routes([node_object(n) for n in NODES]) == {}
                ips = {}
                for p in PODS:
                    got = await nets[p.node].add(f"sb-{p.name}", topo.pod(p.name), namespace=p.namespace,
                                                 name=p.name)
                    ips[p.name] = (got.ips[0], got.ips[1])
                return ips
            finally:
                for pn in nets.values():
                    await pn.close()

        ips = asyncio.run(plumb())
        servers = Servers()
        for p in PODS:
            servers.add(topo.path(p.name), p.name)
        w = World(topo, ips)
        asyncio.run(_warm_up(w))
        yield w
    finally:
        if servers is not None:
            servers.close()
        topo.destroy()


async def _warm_up(w: World) -> None:
    """Wait for first contact between the nodes (a fresh link's IPv6 link-local address is
    tentative for a moment, and neighbour discovery waits for it), so that no test's
    first probe pays for it."""
    deadline = time.monotonic() + 10
    for src, dst in (("a-client", "b-other"), ("b-other", "a-web"), ("a-client", "a-web")):
        for fam in (4, 6):
            while await _tcp(w.netns(src), w.ip(dst, fam), 8080, 0.3) != dst:
                assert time.monotonic() < deadline, f"{src} cannot reach {dst} over IPv{fam}"


async def _tcp(netns: str, host: str, port: int, timeout: float) -> str | None:
    """The identity line of a TCP connection, None when the connect timed out (dropped)."""
    try:
        reader, writer = await asyncio.wait_for(open_connection(netns, host, port), timeout)
    except TimeoutError:
        return None
    try:
        return (await asyncio.wait_for(reader.readline(), 2.0)).decode().split()[0]
    finally:
        writer.close()


async def _udp(netns: str, host: str, port: int, timeout: float) -> str | None:
    loop = asyncio.get_running_loop()
    sock = socket_in_netns(netns, socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, b"?", (host, port))
        data = await asyncio.wait_for(loop.sock_recv(sock, 200), timeout)
        return data.decode().split()[0]
    except TimeoutError:
        return None
    finally:
        sock.close()


Case = tuple[str, str, int]  # (from pod, to pod, port); port 53 is UDP


async def _probe(w: World, cases: dict[Case, bool], families: tuple[int, ...]) -> list[str]:
    """The cases (in every family) whose outcome differs from the expected one, described."""
    keys = [(c, fam) for c in cases for fam in families]

    async def one(case: Case, fam: int) -> bool:
        src, dst, port = case
        # Short for allowed cases too: a connect whose first SYN met the old rules waits a
        # second for its retransmission; a fresh attempt is quicker.
        timeout = ALLOWED_TIMEOUT if cases[case] else DENIED_TIMEOUT
        fn = _udp if port == 53 else _tcp
        got = await fn(w.netns(src), w.ip(dst, fam), port, timeout)
        assert got in (None, dst), got
        return got is not None

    results = await asyncio.gather(*(one(c, f) for c, f in keys))
    return [f"{c[0]} -> {c[1]}:{c[2]} IPv{f}: {'passes' if r else 'blocked'}"
            for (c, f), r in zip(keys, results, strict=True) if r != cases[c]]


async def expect(w: World, cases: dict[Case, bool], families: tuple[int, ...] = (4, 6),
                 timeout: float = 4.0) -> None:
    """Poll until every case comes out as expected (allowed: answered; denied: dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = await _probe(w, cases, families)
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise AssertionError("unexpected outcomes:\n  " + "\n  ".join(wrong))
        await asyncio.sleep(0.02)


async def _populate(client: Client, w: World) -> None:
    for ns, labels in NAMESPACES.items():
        await client.resource("v1", "namespaces", namespaced=False).create(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}})
    pods = client.resource("v1", "pods")
    for p in PODS:
        ports = [{"name": n, "containerPort": c, "protocol": proto} for n, c, proto in p.ports]
        made = await pods.create({"apiVersion": "v1", "kind": "Pod",
                                  "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
                                  "spec": {"nodeName": p.node,
                                           "containers": [{"name": "c", "image": "busybox", "ports": ports}]}},
                                 p.namespace)
        made["status"] = {"phase": "Running", "podIP": w.ips[p.name][0],
                          "podIPs": [{"ip": ip} for ip in w.ips[p.name]]}
        await pods.update_status(made, p.namespace)


@pytest.fixture
async def agents(world: World, client: Client) -> AsyncIterator[dict[str, NetworkPolicyAgent]]:
    await _populate(client, world)
    made: dict[str, NetworkPolicyAgent] = {}
    try:
        for node in NODES:
            a = made[node] = NetworkPolicyAgent(client, node, netns=world.topo.path(node))
            await a.start()
            assert a.enforcing
        yield made
    finally:
        for a in made.values():
            with contextlib.suppress(Exception):
                await a.cleanup()
            await a.stop()
        for node in NODES:
            sh("ip", "netns", "exec", world.topo.names[node], "nft", "delete", "table", "inet", "kybernetes-netpol",
               check=False)


NP = "networking.k8s.io/v1", "networkpolicies"


async def settle(agents: dict[str, NetworkPolicyAgent], informer: str, key: str, rv: str | None) -> None:
    """Wait until every agent's cache holds this version of the object (None: its deletion)
    and the agent has synced since: probes then see the new rules at their first attempt
    (expect() polls anyway)."""
    deadline = time.monotonic() + 5
    for a in agents.values():
        inf = getattr(a, informer)
        while ((o := inf.get(key)) and o["metadata"]["resourceVersion"]) != rv:
            assert time.monotonic() < deadline, f"{a.node_name} never saw {key} at {rv}"
            await asyncio.sleep(0.002)
    await asyncio.sleep(0.01)  # the informer hands the event to its handlers just after caching it
    for a in agents.values():
        await asyncio.wait_for(a.idle.wait(), 5)


async def apply(client: Client, agents: dict[str, NetworkPolicyAgent], name: str, ns: str,
                spec: dict[str, Any]) -> None:
    rc = client.resource(*NP)
    obj = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec}
    try:
        cur = await rc.get(name, ns)
    except Exception:  # noqa: BLE001 - NotFound: create it
        made = await rc.create(obj, ns)
    else:
        obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        made = await rc.update(obj, ns)
    await settle(agents, "policies", f"{ns}/{name}", made["metadata"]["resourceVersion"])


async def delete(client: Client, agents: dict[str, NetworkPolicyAgent], name: str, ns: str) -> None:
    await client.resource(*NP).delete(name, ns)
    await settle(agents, "policies", f"{ns}/{name}", None)


# ---------------------------------------------------------------------- traffic: the recipes

async def test_default_deny_ingress_then_allow_from_pod_label_and_from_namespace(
        world: World, client: Client, agents: dict[str, NetworkPolicyAgent]) -> None:
    base = {("a-client", "a-web", 8080): True, ("b-client", "a-web", 8080): True,
            ("b-other", "a-web", 8080): True, ("a-web", "b-other", 8080): True, ("a-other", "a-web", 8080): True}
    await expect(world, base)
    await apply(client, agents, "deny", "alpha", {"podSelector": {}, "policyTypes": ["Ingress"]})
    await expect(world, {**base, ("a-client", "a-web", 8080): False, ("b-client", "a-web", 8080): False,
                         ("b-other", "a-web", 8080): False, ("a-other", "a-web", 8080): False})
    # Pod label: same-namespace clients only (b-client has the label in another namespace).
    await apply(client, agents, "from-clients", "alpha", {"podSelector": {"matchLabels": {"app": "web"}},
                                                  "ingress": [{"from": [{"podSelector": {
                                                      "matchLabels": {"app": "client"}}}]}]})
    await expect(world, {("a-client", "a-web", 8080): True, ("b-client", "a-web", 8080): False,
                         ("a-other", "a-web", 8080): False, ("a-web", "b-other", 8080): True})
    # Namespace: every pod of beta, on either node (b-other's ingress is checked on node1,
    # its egress on node2, where it is not isolated).
    await apply(client, agents, "from-beta", "alpha", {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {
        "matchLabels": {"team": "b"}}}]}]})
    await expect(world, {("a-client", "a-web", 8080): True, ("b-client", "a-web", 8080): True,
                         ("b-other", "a-web", 8080): True, ("a-other", "a-web", 8080): False})
    # A pod's label change moves it in or out of the peer sets.
    pods = client.resource("v1", "pods")
    other = await pods.get("a-other", "alpha")
    other["metadata"]["labels"] = {"app": "client"}
    other = await pods.update(other, "alpha")
    await settle(agents, "pods", "alpha/a-other", other["metadata"]["resourceVersion"])
    await expect(world, {("a-other", "a-web", 8080): True})
    # And a namespace's.
    beta = await client.resource("v1", "namespaces", namespaced=False).get("beta")
    beta["metadata"]["labels"] = {"team": "x"}
    beta = await client.resource("v1", "namespaces", namespaced=False).update(beta)
    await settle(agents, "namespaces", "beta", beta["metadata"]["resourceVersion"])
    await expect(world, {("b-client", "a-web", 8080): False, ("b-other", "a-web", 8080): False})
    # A deleted pod is no peer any more (its address may be someone else's soon); when it
    # comes back with an address, it is again.
    await pods.delete("a-other", "alpha", grace_period_seconds=0)  # no kubelet here to finish it
    await settle(agents, "pods", "alpha/a-other", None)
    await expect(world, {("a-other", "a-web", 8080): False, ("a-client", "a-web", 8080): True})
    p = next(p for p in PODS if p.name == "a-other")
    made = await pods.create({"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": p.name, "namespace": p.namespace, "labels": {"app": "client"}},
                              "spec": {"nodeName": p.node, "containers": [{"name": "c", "image": "busybox"}]}},
                             p.namespace)
    made["status"] = {"phase": "Running", "podIPs": [{"ip": ip} for ip in world.ips[p.name]]}
    made = await pods.update_status(made, p.namespace)
    await settle(agents, "pods", "alpha/a-other", made["metadata"]["resourceVersion"])
    await expect(world, {("a-other", "a-web", 8080): True})
    for name in ("deny", "from-clients", "from-beta"):
        await delete(client, agents, name, "alpha")
    await expect(world, base)


async def test_namespace_and_pod_selector_combined_versus_separate(
        world: World, client: Client, agents: dict[str, NetworkPolicyAgent]) -> None:
    ns_sel, pod_sel = {"matchLabels": {"team": "b"}}, {"matchLabels": {"app": "client"}}
    await apply(client, agents, "p", "alpha", {"podSelector": {"matchLabels": {"app": "web"}},
                                       "ingress": [{"from": [{"namespaceSelector": ns_sel, "podSelector": pod_sel}]}]})
    await expect(world, {("b-client", "a-web", 8080): True, ("b-other", "a-web", 8080): False,
                         ("a-client", "a-web", 8080): False})
    await apply(client, agents, "p", "alpha", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
        {"from": [{"namespaceSelector": ns_sel}, {"podSelector": pod_sel}]}]})
    await expect(world, {("b-client", "a-web", 8080): True, ("b-other", "a-web", 8080): True,
                         ("a-client", "a-web", 8080): True, ("a-other", "a-web", 8080): False})


async def test_default_deny_egress_dns_replies_by_conntrack_and_allow_all(
        world: World, client: Client, agents: dict[str, NetworkPolicyAgent]) -> None:
    await apply(client, agents, "deny-out", "alpha", {"podSelector": {}, "policyTypes": ["Egress"]})
    # The DNS pod takes queries but may send nothing itself: its answers go by conntrack.
    await apply(client, agents, "dns", "dns", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                       "ingress": [{"ports": [{"protocol": "UDP", "port": 53}]}]})
    await expect(world, {("a-client", "d-dns", 53): False, ("a-client", "a-web", 8080): False,
                         ("a-client", "b-other", 8080): False, ("b-client", "a-web", 8080): True,
                         ("d-dns", "b-other", 8080): False, ("b-other", "d-dns", 8080): False})
    await apply(client, agents, "dns-out", "alpha", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}]}]})
    await expect(world, {("a-client", "d-dns", 53): True, ("a-client", "d-dns", 8080): False,
                         ("a-client", "b-other", 53): False, ("b-client", "d-dns", 53): True})
    await apply(client, agents, "all-out", "alpha", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]})
    await expect(world, {("a-client", "a-web", 8080): True, ("a-client", "b-other", 9090): True,
                         ("a-client", "d-dns", 8080): False})  # that one is d-dns's ingress


async def test_named_ports_end_port_and_ip_block_except(
        world: World, client: Client, agents: dict[str, NetworkPolicyAgent]) -> None:
    # Ingress named port: a-web's "http" is 8080.
    await apply(client, agents, "in", "alpha", {"podSelector": {"matchLabels": {"app": "web"}},
                                        "ingress": [{"ports": [{"port": "http"}]}]})
    # Egress named port: resolved per destination (a-web 8080, b-other 9090).
    await apply(client, agents, "out", "alpha", {"podSelector": {"matchLabels": {"app": "client"}},
                                         "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]})
    await expect(world, {("a-other", "a-web", 8080): True, ("a-other", "a-web", 9090): False,
                         ("a-client", "a-web", 8080): True, ("a-client", "b-other", 9090): True,
                         ("a-client", "b-other", 8080): False, ("a-client", "d-dns", 8080): False})
    # endPort.
    await apply(client, agents, "in", "alpha", {"podSelector": {"matchLabels": {"app": "web"}},
                                        "ingress": [{"ports": [{"port": 9000, "endPort": 9100}]}]})
    await expect(world, {("a-other", "a-web", 9090): True, ("a-other", "a-web", 8080): False})
    await delete(client, agents, "out", "alpha")
    # ipBlock with except: node1's pod CIDRs are in, node2's are cut out.
    await apply(client, agents, "in", "alpha", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.42.0.0/16", "except": ["10.42.1.0/24"]}},
        {"ipBlock": {"cidr": "fd42::/56", "except": ["fd42:0:0:1::/64"]}}]}]})
    await expect(world, {("a-client", "a-web", 8080): True, ("b-client", "a-web", 9090): True,
                         ("b-other", "a-web", 8080): False, ("d-dns", "a-web", 8080): False})


async def test_established_connections_replies_node_traffic_and_updates_within_a_second(
        world: World, client: Client, agents: dict[str, NetworkPolicyAgent]) -> None:
    host = world.ip("a-web", 4)
    reader, writer = await open_connection(world.netns("b-other"), host, 8080)  # across nodes
    try:
        assert (await reader.readline()).startswith(b"a-web")
        t0 = time.monotonic()
        await apply(client, agents, "deny", "alpha", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})
        while await _tcp(world.netns("b-other"), host, 8080, 0.1) is not None:
            assert time.monotonic() - t0 < 1.0, "the deny policy took more than a second"
        # The connection made before still carries data both ways (conntrack established).
        writer.write(b"still there\n")
        assert await asyncio.wait_for(reader.readline(), 2.0) == b"still there\n"
    finally:
        writer.close()
    # The node reaches its own pods (kubelet probes); the other node does not.
    assert await _tcp(world.topo.path("node1"), host, 8080, 2.0) == "a-web"
    assert await _tcp(world.topo.path("node2"), host, 8080, DENIED_TIMEOUT) is None
    # Allowing again takes effect within a second too.
    t0 = time.monotonic()
    await apply(client, agents, "allow", "alpha", {"podSelector": {}, "ingress": [{}]})
    while await _tcp(world.netns("b-other"), host, 8080, 0.1) is None:
        assert time.monotonic() - t0 < 1.0, "the allow policy took more than a second"
    # a-web is still egress-isolated: it can answer, but not connect.
    await expect(world, {("a-web", "b-other", 8080): False, ("b-other", "a-web", 9090): True})


async def test_service_traffic_meets_the_policies_of_its_endpoints(
        world: World, client: Client, agents: dict[str, NetworkPolicyAgent]) -> None:
    from kybernetes.network.proxy import ServiceProxy

    proxy = ServiceProxy(client, "node1", NODES["node1"]["ips"], cluster_cidrs=CLUSTER_CIDRS.split(","),
                         netns=world.topo.path("node1"))
    await proxy.start()
    try:
        await client.resource("v1", "services").create({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "alpha"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
            "alpha")
        await client.resource("discovery.k8s.io/v1", "endpointslices").create({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "alpha", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [world.ip("a-web", 4)], "nodeName": "node1",
                           "conditions": {"ready": True}}]}, "alpha")
        deadline = time.monotonic() + 5

        async def via_service() -> str | None:
            # Until the proxy's rules are in, the node has no route for the cluster IP (the
            # client gets ICMP net unreachable) or rejects it for want of endpoints.
            with contextlib.suppress(OSError):
                return await _tcp(world.netns("a-client"), "10.96.0.10", 80, 0.3)
            await asyncio.sleep(0.05)
            return None
        while await via_service() != "a-web":
            assert time.monotonic() < deadline, "the Service never answered"
        # Ingress of the endpoint: from alpha's clients only. Egress of a-client: to the
        # web pods' port 8080 only, which is what the packet is after DNAT (the cluster
        # IP and port 80 appear in no rule).
        await apply(client, agents, "in", "alpha", {"podSelector": {"matchLabels": {"app": "web"}},
                                                    "ingress": [{"from": [{"podSelector": {
                                                        "matchLabels": {"app": "client"}}}]}]})
        await apply(client, agents, "out", "alpha", {
            "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 8080}]}]})
        for _ in range(3):
            assert await _tcp(world.netns("a-client"), "10.96.0.10", 80, 2.0) == "a-web"
        assert await _tcp(world.netns("b-client"), "10.96.0.10", 80, DENIED_TIMEOUT) is None
        assert await _tcp(world.netns("a-other"), "10.96.0.10", 80, DENIED_TIMEOUT) is None
        # A pod cannot block itself: a-web reaches itself through its Service (hairpin).
        assert await _tcp(world.netns("a-web"), "10.96.0.10", 80, 2.0) == "a-web"
    finally:
        with contextlib.suppress(Exception):
            await proxy.cleanup()
        await proxy.stop()


async def test_restart_rebuilds_and_a_flushed_table_comes_back(
        world: World, client: Client, agents: dict[str, NetworkPolicyAgent]) -> None:
    await apply(client, agents, "deny", "alpha", {"podSelector": {}, "policyTypes": ["Ingress"]})
    await expect(world, {("b-client", "a-web", 8080): False}, families=(4,))
    old = agents["node1"]
    await old.stop()  # the rules stay while no agent runs
    await expect(world, {("b-client", "a-web", 8080): False}, families=(4,))
    await client.resource(*NP).delete("deny", "alpha")
    new = NetworkPolicyAgent(client, "node1", netns=world.topo.path("node1"), check_period=0.05)
    agents["node1"] = new
    await new.start()
    assert new.full_syncs == 1
    await expect(world, {("b-client", "a-web", 8080): True}, families=(4,))
    await apply(client, agents, "deny", "alpha", {"podSelector": {}, "policyTypes": ["Ingress"]})
    await expect(world, {("b-client", "a-web", 8080): False}, families=(4,))
    sh("ip", "netns", "exec", world.topo.names["node1"], "nft", "delete", "table", "inet", "kybernetes-netpol")
    await expect(world, {("b-client", "a-web", 8080): False}, families=(4,))
    assert new.full_syncs >= 2


def test_agent_without_nftables_enforces_nothing(tmp_path: Path) -> None:
    class Broken:
        async def run(self, script: str) -> str:
            raise OSError("no nf_tables here")

        async def close(self) -> None:
            pass

    async def go() -> None:
        a = NetworkPolicyAgent(None, "node1", nft=Broken())  # type: ignore[arg-type]
        await a.start()
        assert not a.enforcing and a.idle.is_set()
        await a.stop()

    asyncio.run(go())
