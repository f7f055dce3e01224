"""The service proxy on every node: Services and EndpointSlices in, nftables (or userspace
listeners) out.

`ServiceProxy` owns the loop. Informers on Services and EndpointSlices mark the key of
the Service an event touches dirty; the loop waits a few milliseconds so a burst of
events is one transaction, then recomputes, for each dirty Service only, what it wants
programmed (its *fragment*) from the informer caches, diffs it against what is
programmed and hands the backend just the difference. Level-triggered: the fragment is
a pure function of the caches, so a missed event is healed by the next one for the same
Service, and a proxy that starts (or restarts) rebuilds everything in one transaction.

`service_ports` is that pure function's first half: one `ServicePort` per Service port
and IP family with its entry points (cluster IPs, externalIPs and
status.loadBalancer.ingress IPs, the nodePort) and its endpoints. Endpoints are the
slices' `ready` ones; when there are none, the serving-and-terminating ones (upstream's
ProxyTerminatingEndpoints), separately for the cluster-wide and the node-local pool.

`NftLayout` is the second half for nftables: a fragment is a set of objects, each a
map/set element, a chain with its rules, or a named set, keyed so that several
Services can want the same object (a shared chain, the same hairpin pair) and it
stays while any of them does (`Desired` counts owners). The layout is flat, so
that 10,000 Services are tens of thousands of map elements and a handful of chains,
not tens of thousands of chains (kube-proxy's chain-per-service-and-endpoint layout
took 16.5 s to load 10,000 services on this machine's nft 1.0.6):

    svc4/svc6     ip daddr . l4proto . dport  ->  goto <class chain>   cluster/external IPs
    np4/np6       l4proto . dport             ->  goto <class chain>   nodePorts, any local address
    ep4tcp/...    ip daddr . dport . index    ->  endpoint ip . port   (one map per family
    npep4tcp/...  dport . index               ->  endpoint ip . port    and protocol)

A class chain is shared by every entry point with the same behaviour, protocol and
endpoint count N: e.g. `c4t-3` is "cluster IP, TCP, masquerade if the client is outside
the cluster CIDRs, then `dnat ip to ip daddr . tcp dport . numgen random mod 3 map
@ep4tcp`". The packet's own destination plus a random index is the key of its endpoint,
so one rule serves every TCP Service with three endpoints. `x` chains are external entry points
with externalTrafficPolicy Cluster (always masquerade), `l<M>-<N>` ones are
externalTrafficPolicy Local: pods' and the node's own traffic goes to all N endpoints (as
upstream's short-circuit; the node's is masqueraded), the rest to the M local ones
without masquerade, or is dropped when M is 0. internalTrafficPolicy Local uses the local
endpoints for cluster IPs and drops when there are none. A Service with no endpoints at
all is in noep4/nonp4 and rejected (ICMP port unreachable: clients see "connection
refused" at once) in the filter hooks, before anything is DNATed, as upstream.

Hairpin (a pod reaching itself through its Service) is masqueraded in postrouting by a
set of `endpoint . endpoint` address pairs for this node's endpoints: after DNAT the
source equals the destination exactly then. Masquerading elsewhere is by the mark bit
(0x4000 as kube-proxy's), set in the class chains.

sessionAffinity ClientIP is the one feature that needs per-Service chains, and they exist
only for such Services: an entry chain, a pool chain checking one dynamic set per
endpoint (`ip saddr @as4-... goto ae4-...`) and one chain per endpoint that refreshes the
client in its set (`update @set { ip saddr }`, timeout = timeoutSeconds) and DNATs, as
kube-proxy's nftables mode. A flat form (a dynamic map from client to endpoint) needs
nft to store a looked-up value in a map from the packet path, which nft 1.0.6 cannot
express.

NodePorts are served on every local address (`fib daddr type local`), including
127.0.0.1 (which needs net.ipv4.conf.all.route_localnet=1, set by the proxy in its
namespace as kube-proxy does, with kube-proxy's guard dropping packets from outside to
127.0.0.0/8 that were not DNATed), but not on ::1 (IPv6 has no route_localnet).

The table is `inet kybernetes`: one table for both families. On start it is replaced
whole in one transaction (established connections keep their NAT in conntrack and are
not touched); a failed incremental transaction triggers such a rebuild. When UDP
endpoints go away their conntrack entries are deleted (`nftables.delete_conntrack_sync`,
over netlink), so a UDP flow does not stay pinned to a dead endpoint.

Where nftables is missing, `backend="userspace"` (or "auto") forwards with asyncio
listeners instead (`userspace.py`), from the same `ServicePort`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import socket
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kybernetes.client import Client, Informer
from kybernetes.client.informer import informer_for, meta_namespace_key

from .nftables import Desired, NatFlow, Nft, NftError, ObjKey, Script, changes, delete_conntrack_sync, nft_available

log = logging.getLogger(__name__)

Obj = dict[str, Any]
# Objects are nftables.ObjKey's, plus ("u", endpoint, destination) -> "": a UDP flow that
# may need its conntrack entries deleted once it is gone (never programmed into nft).

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PROXY_NAME_LABEL = "service.kubernetes.io/service-proxy-name"
HEADLESS_LABEL = "service.kubernetes.io/headless"
_SLICE_INDEX = "kybernetes.io/proxy-service"
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
DEFAULT_AFFINITY_TIMEOUT = 10800


def _slice_service_key(obj: Obj) -> list[str]:
    meta = obj.get("metadata") or {}
    svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{meta.get('namespace')}/{svc}"] if svc else []


@lru_cache(maxsize=1 << 16)
def _parse(ip: str) -> tuple[str, int] | None:
    """(canonical text, family) of an address, or None. inet_pton, not ipaddress: it is 20
    times faster, and at 10,000 Services parsing addresses was most of a cold sync."""
    try:
        socket.inet_pton(socket.AF_INET, ip)
        return ip, 4  # inet_pton takes only the canonical dotted quad (no leading zeros)
    except OSError:
        pass
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, ip)), 6
    except OSError:
        return None


def _family(ip: str) -> int | None:
    parsed = _parse(ip)
    return parsed[1] if parsed else None


def _canonical(ip: str) -> str | None:
    parsed = _parse(ip)
    return parsed[0] if parsed else None


# ---------------------------------------------------------------------- what a Service wants

@dataclass(frozen=True, order=True)
class Endpoint:
    ip: str
    port: int
    node_name: str | None = None


@dataclass(frozen=True)
class ServicePort:
    """One port of one Service in one IP family, with its entry points and endpoints."""

    name: str                            # "namespace/service:port-name"
    family: int                          # 4 or 6
    protocol: str                        # tcp, udp or sctp
    port: int
    node_port: int | None
    cluster_ips: tuple[str, ...]
    external_ips: tuple[str, ...]        # externalIPs and load balancer ingress IPs
    endpoints: tuple[Endpoint, ...]      # the cluster-wide pool
    local_endpoints: tuple[Endpoint, ...]
    internal_local: bool = False         # internalTrafficPolicy: Local
    external_local: bool = False         # externalTrafficPolicy: Local
    affinity_timeout: int | None = None  # sessionAffinity: ClientIP


def proxied(svc: Obj) -> bool:
    """Whether this proxy serves the Service at all (not ExternalName, not another proxy's)."""
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return False
    return PROXY_NAME_LABEL not in ((svc.get("metadata") or {}).get("labels") or {})


def service_ports(svc: Obj, slices: Iterable[Obj], node_name: str) -> list[ServicePort]:
    """Everything the backends need to program for one Service, one entry per port and family."""
    if not proxied(svc):
        return []
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    cluster_ips = [ip for ip in (_canonical(x) for x in (spec.get("clusterIPs") or [spec.get("clusterIP")])
                                 if isinstance(x, str) and x not in ("", "None")) if ip]
    families = {f for f in (_family(ip) for ip in cluster_ips) if f}
    for fam in spec.get("ipFamilies") or []:
        families.add(6 if fam == "IPv6" else 4)
    if not cluster_ips:
        return []  # headless (or not yet allocated): nothing to proxy
    external = [ip for ip in (_canonical(x) for x in spec.get("externalIPs") or [] if isinstance(x, str)) if ip]
    if spec.get("type") == "LoadBalancer":
        for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            # ipMode Proxy: the load balancer delivers to the nodes itself, so the
            # address must not be captured here (upstream's LoadBalancerIPMode).
            if isinstance(ing, dict) and ing.get("ip") and ing.get("ipMode", "VIP") == "VIP":
                ip = _canonical(ing["ip"])
                if ip and ip not in external:
                    external.append(ip)
    has_node_ports = spec.get("type") in ("NodePort", "LoadBalancer")
    internal_local = spec.get("internalTrafficPolicy") == "Local"
    external_local = spec.get("externalTrafficPolicy") == "Local" and (has_node_ports or bool(external))
    affinity = None
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
        affinity = int(cfg.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT)
    slices = [s for s in slices if s.get("addressType") in ("IPv4", "IPv6")]
    out: list[ServicePort] = []
    for port in spec.get("ports") or []:
        if not isinstance(port, dict) or not isinstance(port.get("port"), int):
            continue
        proto = PROTOCOLS.get(port.get("protocol") or "TCP")
        if proto is None:
            continue
        pname = port.get("name") or ""
        for fam in sorted(families):
            eps_all, eps_local = _endpoints(slices, fam, pname, port.get("protocol") or "TCP", node_name)
            out.append(ServicePort(
                name=f"{key}:{pname}", family=fam, protocol=proto, port=port["port"],
                node_port=port.get("nodePort") if has_node_ports and isinstance(port.get("nodePort"), int)
                else None,
                cluster_ips=tuple(ip for ip in cluster_ips if _family(ip) == fam),
                external_ips=tuple(ip for ip in external if _family(ip) == fam),
                endpoints=eps_all, local_endpoints=eps_local, internal_local=internal_local,
                external_local=external_local, affinity_timeout=affinity))
    return out


def _endpoints(slices: list[Obj], family: int, port_name: str, protocol: str,
               node_name: str) -> tuple[tuple[Endpoint, ...], tuple[Endpoint, ...]]:
    address_type = "IPv6" if family == 6 else "IPv4"
    # (ip, port) -> (endpoint, ready, serving-and-terminating); one address may be in two
    # slices for a moment while the controller moves it: the readier wins.
    found: dict[tuple[str, int], tuple[Endpoint, bool, bool]] = {}
    for sl in slices:
        if sl.get("addressType") != address_type:
            continue
        number = None
        for p in sl.get("ports") or []:
            if isinstance(p, dict) and (p.get("name") or "") == port_name \
                    and (p.get("protocol") or "TCP") == protocol and isinstance(p.get("port"), int):
                number = p["port"]
                break
        if number is None:
            continue
        for ep in sl.get("endpoints") or []:
            if not isinstance(ep, dict):
                continue
            addrs = ep.get("addresses") or []
            ip = _canonical(addrs[0]) if addrs and isinstance(addrs[0], str) else None
            if ip is None or _family(ip) != family:
                continue
            cond = ep.get("conditions") or {}
            ready = cond.get("ready") is not False
            serving = cond.get("serving") if cond.get("serving") is not None else ready
            terminating = bool(cond.get("terminating"))
            e = Endpoint(ip, number, ep.get("nodeName"))
            old = found.get((ip, number))
            entry = (e, ready, bool(serving and terminating))
            if old is None or (ready and not old[1]):
                found[(ip, number)] = entry
    every = sorted(found.values())

    def pool(candidates: list[tuple[Endpoint, bool, bool]]) -> tuple[Endpoint, ...]:
        ready = tuple(e for e, r, _ in candidates if r)
        return ready or tuple(e for e, r, st in candidates if not r and st)

    return pool(every), pool([c for c in every if c[0].node_name == node_name])


# ---------------------------------------------------------------------- nftables layout

def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _ipf(family: int) -> str:
    return "ip6" if family == 6 else "ip"


def _addr_type(family: int) -> str:
    return "ipv6_addr" if family == 6 else "ipv4_addr"


def _sockaddr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class NftLayout:
    """Turns ServicePorts into nft objects, and writes the table's fixed part."""

    def __init__(self, table: str, cluster_cidrs: Iterable[str], node_name: str, *, masquerade_mark: int = 0x4000,
                 localhost_nodeports: bool = True, nodeport_addresses: Iterable[str] | None = None):
        self.table = table
        self.node_name = node_name
        self.mark = masquerade_mark
        self.localhost_nodeports = localhost_nodeports
        self.cidrs: dict[int, list[str]] = {4: [], 6: []}
        for c in cluster_cidrs:
            net = ipaddress.ip_network(c, strict=False)
            self.cidrs[net.version].append(str(net))
        self.nodeport_addresses: dict[int, list[str]] | None = None
        if nodeport_addresses is not None:
            self.nodeport_addresses = {4: [], 6: []}
            for a in nodeport_addresses:
                net = ipaddress.ip_network(a, strict=False)
                self.nodeport_addresses[net.version].append(str(net))
        self._class_rules = lru_cache(maxsize=None)(self._class_rules_uncached)

    # ------------------------------------------------------------------ the fixed part

    def base(self) -> Script:
        """Replace the table with its fixed part: maps, sets, hooks (one transaction with the rest)."""
        t = self.table
        s = Script("inet", t)
        s.add(f"table inet {t} {{ }}")
        s.add(f"delete table inet {t}")
        s.add(f"table inet {t} {{")
        mark = f"{self.mark:#x}"
        service_rules: list[str] = []
        np_reject: list[str] = []
        for fam in (4, 6):
            ip, a = _ipf(fam), _addr_type(fam)
            s.add(f"  map svc{fam} {{ type {a} . inet_proto . inet_service : verdict; }}")
            s.add(f"  map np{fam} {{ type inet_proto . inet_service : verdict; }}")
            # typeof, not type: nft has no fixed-size type numgen's integer matches. One map per
            # protocol: the port in the data must be spelled `tcp dport` (or udp/sctp), since nft
            # 1.0.6 cannot reload a `th dport` typeof, and that spelling makes the DNAT rule
            # match only that protocol.
            for proto in PROTOCOLS.values():
                for m in ("ep", "epc"):
                    s.add(f"  map {m}{fam}{proto} {{ typeof {ip} daddr . {proto} dport . numgen random mod 1 : "
                          f"{ip} daddr . {proto} dport; }}")
                for m in ("npep", "npepc"):
                    s.add(f"  map {m}{fam}{proto} {{ typeof {proto} dport . numgen random mod 1 : "
                          f"{ip} daddr . {proto} dport; }}")
            s.add(f"  set noep{fam} {{ type {a} . inet_proto . inet_service; }}")
            s.add(f"  set nonp{fam} {{ type inet_proto . inet_service; }}")
            s.add(f"  set hairpin{fam} {{ type {a} . {a}; }}")
            service_rules.append(f"{ip} daddr . meta l4proto . th dport vmap @svc{fam}")
            local = self._nodeport_match(fam)
            if local is not None:
                service_rules.append(f"{local} meta l4proto . th dport vmap @np{fam}")
                np_reject.append(f"{local} meta l4proto . th dport @nonp{fam} reject")
        s.add("  chain services {")
        for rule in service_rules:
            s.add(f"    {rule}")
        s.add("  }")
        s.add("  chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }")
        s.add("  chain nat-output { type nat hook output priority -100; policy accept; jump services; }")
        s.add("  chain nat-postrouting { type nat hook postrouting priority srcnat; policy accept;")
        s.add(f"    meta mark & {mark} != 0 meta mark set meta mark & {~self.mark & 0xFFFFFFFF:#x} "
              "masquerade fully-random")
        for fam in (4, 6):
            ip = _ipf(fam)
            s.add(f"    ct status dnat {ip} saddr . {ip} daddr @hairpin{fam} masquerade fully-random")
        s.add("  }")
        s.add("  chain reject-services {")
        for fam in (4, 6):
            s.add(f"    {_ipf(fam)} daddr . meta l4proto . th dport @noep{fam} reject")
        s.add("  }")
        s.add("  chain reject-nodeports {")
        for rule in np_reject:
            s.add(f"    {rule}")
        s.add("  }")
        s.add("  chain filter-input { type filter hook input priority filter - 10; policy accept;")
        s.add("    ct state new jump reject-services")
        s.add("    ct state new jump reject-nodeports")
        if self.localhost_nodeports:
            # route_localnet lets packets from outside reach 127.0.0.0/8: only DNATed ones may
            # (kube-proxy's guard for CVE-2020-8558).
            s.add("    ip daddr 127.0.0.0/8 ip saddr != 127.0.0.0/8 ct state != { established, related } "
                  "ct status & dnat == 0 drop")
        s.add("  }")
        s.add("  chain filter-forward { type filter hook forward priority filter - 10; policy accept;")
        s.add("    ct state new jump reject-services")
        s.add("  }")
        s.add("  chain filter-output { type filter hook output priority filter - 10; policy accept;")
        s.add("    ct state new jump reject-services")
        s.add("    ct state new jump reject-nodeports")
        s.add("  }")
        s.add("}")
        return s

    def _nodeport_match(self, fam: int) -> str | None:
        ip = _ipf(fam)
        if self.nodeport_addresses is not None:
            nets = self.nodeport_addresses[fam]
            return f"{ip} daddr {{ {', '.join(nets)} }}" if nets else None
        if fam == 4:
            loopback = "" if self.localhost_nodeports else " ip daddr != 127.0.0.0/8"
            return f"fib daddr type local meta nfproto ipv4{loopback}"
        return "fib daddr type local meta nfproto ipv6 ip6 daddr != ::1"

    # ------------------------------------------------------------------ class chains

    def _class_rules_uncached(self, kind: str, fam: int, proto: str, local: int, total: int) -> str:
        """The rules of a shared chain: kind c (cluster IP), x/xn (external, Cluster policy),
        l/ln (external, Local policy); n = keyed by nodePort rather than by address."""
        ip = _ipf(fam)
        mark = f"meta mark set meta mark | {self.mark:#x}"
        if kind.endswith("n"):
            key, pool, cpool = f"{proto} dport", f"npep{fam}{proto}", f"npepc{fam}{proto}"
        else:
            key, pool, cpool = f"{ip} daddr . {proto} dport", f"ep{fam}{proto}", f"epc{fam}{proto}"
        cidrs = self.cidrs[fam]
        rules: list[str] = []
        if kind == "c":
            if cidrs:
                rules.append(f"{ip} saddr != {{ {', '.join(cidrs)} }} {mark}")
            rules.append(f"dnat {ip} to {key} . numgen random mod {total} map @{pool}")
        elif kind in ("x", "xn"):
            rules.append(f"{mark} dnat {ip} to {key} . numgen random mod {total} map @{pool}")
        else:
            every = f"dnat {ip} to {key} . numgen random mod {total} map @{cpool}"
            if cidrs:
                rules.append(f"{ip} saddr {{ {', '.join(cidrs)} }} {every}")
            rules.append(f"fib saddr type local {mark} {every}")
            rules.append(f"dnat {ip} to {key} . numgen random mod {local} map @{pool}" if local else "drop")
        return "\n".join(rules)

    def _class(self, out: dict[ObjKey, str], kind: str, fam: int, proto: str, local: int, total: int) -> str:
        counts = f"{local}-{total}" if kind.startswith("l") else f"{total}"
        name = f"{kind}{fam}{proto[0]}-{counts}"
        out[("c", name, "")] = self._class_rules(kind, fam, proto, local, total)
        return name

    # ------------------------------------------------------------------ one ServicePort

    def objects(self, sp: ServicePort, out: dict[ObjKey, str]) -> None:
        """Add everything `sp` needs to `out`."""
        fam, proto = sp.family, sp.protocol
        eps, loc = sp.endpoints, sp.local_endpoints
        for e in {*eps, *loc}:
            if e.node_name in (None, self.node_name):
                out[("e", f"hairpin{fam}", f"{e.ip} . {e.ip}")] = ""
        udp = proto == "udp"

        def pool(name: str, prefix: str, members: tuple[Endpoint, ...]) -> None:
            for i, e in enumerate(members):
                out[("e", name, f"{prefix} . {i}")] = f"{e.ip} . {e.port}"

        def flows(dst_ip: str | None, dst_port: int, members: Iterable[Endpoint]) -> None:
            if udp:
                for e in members:
                    out[("u", f"{e.ip}|{e.port}", f"{dst_ip or ''}|{dst_port}")] = ""

        for vip in sp.cluster_ips:
            k = f"{vip} . {proto} . {sp.port}"
            members = loc if sp.internal_local else eps
            if not eps:
                out[("e", f"noep{fam}", k)] = ""
            elif not members:
                out[("e", f"svc{fam}", k)] = "drop"
            elif sp.affinity_timeout:
                out[("e", f"svc{fam}", k)] = "goto " + self._affinity(out, sp, "c")
            else:
                out[("e", f"svc{fam}", k)] = "goto " + self._class(out, "c", fam, proto, 0, len(members))
                pool(f"ep{fam}{proto}", f"{vip} . {sp.port}", members)
            flows(vip, sp.port, members)

        entries = [(f"{x} . {proto} . {sp.port}", f"{x} . {sp.port}", "", x, sp.port) for x in sp.external_ips]
        if sp.node_port:
            entries.append((f"{proto} . {sp.node_port}", f"{sp.node_port}", "n", None, sp.node_port))
        for k, pk, n, dst_ip, dst_port in entries:
            vmap, reject = (f"np{fam}", f"nonp{fam}") if n else (f"svc{fam}", f"noep{fam}")
            if not eps:
                out[("e", reject, k)] = ""
                continue
            if sp.affinity_timeout:
                out[("e", vmap, k)] = "goto " + self._affinity(out, sp, "l" if sp.external_local else "x")
            elif sp.external_local:
                out[("e", vmap, k)] = "goto " + self._class(out, "l" + n, fam, proto, len(loc), len(eps))
                pool(f"{'np' if n else ''}ep{fam}{proto}", pk, loc)
                pool(f"{'np' if n else ''}epc{fam}{proto}", pk, eps)
            else:
                out[("e", vmap, k)] = "goto " + self._class(out, "x" + n, fam, proto, 0, len(eps))
                pool(f"{'np' if n else ''}ep{fam}{proto}", pk, eps)
            flows(dst_ip, dst_port, {*eps, *loc})

    def _affinity(self, out: dict[ObjKey, str], sp: ServicePort, kind: str) -> str:
        """Per-ServicePort chains for sessionAffinity ClientIP; the entry chain's name."""
        fam, ip = sp.family, _ipf(sp.family)
        base = f"{sp.name}/{sp.protocol}/{fam}/{sp.affinity_timeout}"
        mark = f"meta mark set meta mark | {self.mark:#x}"
        ep_chain: dict[Endpoint, tuple[str, str]] = {}
        for e in sorted({*sp.endpoints, *sp.local_endpoints}):
            h = _hash(f"{base}/{e.ip}/{e.port}")
            set_name, chain = f"as{fam}-{h}", f"ae{fam}-{h}"
            ep_chain[e] = (set_name, chain)
            out[("s", set_name, "")] = (f"type {_addr_type(fam)}; flags dynamic,timeout; "
                                        f"timeout {sp.affinity_timeout}s;")
            out[("c", chain, "")] = (f"update @{set_name} {{ {ip} saddr }}\n"
                                     f"meta l4proto {sp.protocol} dnat {ip} to {_sockaddr(e.ip, e.port)}")

        def pool_chain(members: tuple[Endpoint, ...], which: str) -> str:
            name = f"ap{fam}-{_hash(base + '/' + which)}"
            rules = [f"{ip} saddr @{ep_chain[e][0]} goto {ep_chain[e][1]}" for e in members]
            choices = ", ".join(f"{i} : goto {ep_chain[e][1]}" for i, e in enumerate(members))
            rules.append(f"numgen random mod {len(members)} vmap {{ {choices} }}")
            out[("c", name, "")] = "\n".join(rules)
            return name

        name = f"ak{fam}-{_hash(base + '/' + kind)}"
        cidrs = self.cidrs[fam]
        rules: list[str] = []
        if kind == "c":
            if cidrs:
                rules.append(f"{ip} saddr != {{ {', '.join(cidrs)} }} {mark}")
            members = sp.local_endpoints if sp.internal_local else sp.endpoints
            rules.append(f"goto {pool_chain(members, 'local' if sp.internal_local else 'all')}")
        elif kind == "x":
            rules.append(f"{mark} goto {pool_chain(sp.endpoints, 'all')}")
        else:
            every = pool_chain(sp.endpoints, "all")
            if cidrs:
                rules.append(f"{ip} saddr {{ {', '.join(cidrs)} }} goto {every}")
            rules.append(f"fib saddr type local {mark} goto {every}")
            rules.append(f"goto {pool_chain(sp.local_endpoints, 'local')}" if sp.local_endpoints else "drop")
        out[("c", name, "")] = "\n".join(rules)
        return name

    # ------------------------------------------------------------------ scripts

    def full(self, objects: dict[ObjKey, str]) -> Script:
        """The whole table: the fixed part, then every object, in one transaction."""
        s = self.base()
        changes(s, {}, objects)
        return s

    def changes(self, kernel: dict[ObjKey, str], wanted: dict[ObjKey, str | None]) -> Script:
        """The transaction taking `kernel` to `wanted` (only the keys in it; None = remove)."""
        return changes(Script("inet", self.table), kernel, wanted)


# ---------------------------------------------------------------------- backends

def _unnated_flow(key: Hashable, value: Any) -> NatFlow | None:
    """For a UDP entry point that starts DNATing: the flows that were sent there before, unNATed,
    and would otherwise stay so (conntrack only NATs a flow's first packet)."""
    if value is None or value == "drop" or not isinstance(key, tuple) or key[0] != "e":
        return None
    if key[1] in ("svc4", "svc6"):
        ip, proto, port = key[2].split(" . ")
        return NatFlow(None, 0, ip, int(port)) if proto == "udp" else None
    if key[1] in ("np4", "np6"):
        proto, port = key[2].split(" . ")
        return NatFlow(None, 0, None, int(port)) if proto == "udp" else None
    return None


class NftablesBackend:
    """Programs `inet <table>` through Nft; `kernel` is what the last good transaction left."""

    name = "nftables"

    def __init__(self, layout: NftLayout, nft: Nft, *, flush_conntrack: bool = True):
        self.layout = layout
        self.nft = nft
        self.flush_conntrack = flush_conntrack
        self.kernel: dict[ObjKey, str] = {}

    async def prepare(self) -> None:
        if self.layout.localhost_nodeports:
            try:
                await self.nft.sysctl("net.ipv4.conf.all.route_localnet", "1")
            except OSError as e:
                log.warning("service proxy: cannot set route_localnet (NodePorts on 127.0.0.1 will not work): %s", e)

    def fragment(self, ports: list[ServicePort]) -> dict[Hashable, Any]:
        out: dict[ObjKey, str] = {}
        for sp in ports:
            self.layout.objects(sp, out)
        return out  # type: ignore[return-value]

    async def rebuild(self, objects: dict[Hashable, Any]) -> None:
        await self.nft.run(self.layout.full(objects).text())  # type: ignore[arg-type]
        self.kernel = dict(objects)  # type: ignore[arg-type]
        await self._delete_flows([f for k, v in objects.items() if (f := _unnated_flow(k, v))])

    async def apply(self, wanted: dict[Hashable, Any]) -> None:
        script = self.layout.changes(self.kernel, wanted)  # type: ignore[arg-type]
        if script:
            await self.nft.run(script.text())
        gone: list[NatFlow] = []
        for key, value in wanted.items():
            if self.kernel.get(key) is None and (f := _unnated_flow(key, value)):  # type: ignore[arg-type]
                gone.append(f)
            if value is None:
                old = self.kernel.pop(key, None)  # type: ignore[arg-type]
                if key[0] == "u" and old is not None:
                    ep_ip, ep_port = key[1].split("|")
                    dst_ip, dst_port = key[2].split("|")
                    gone.append(NatFlow(ep_ip, int(ep_port), dst_ip or None, int(dst_port)))
            else:
                self.kernel[key] = value  # type: ignore[index]
        await self._delete_flows(gone)

    async def _delete_flows(self, gone: list[NatFlow]) -> None:
        if gone and self.flush_conntrack:
            try:
                n = await self.nft.in_netns(delete_conntrack_sync, gone)
                if n:
                    log.debug("service proxy: deleted %d conntrack entries of removed UDP endpoints", n)
            except OSError as e:
                log.warning("service proxy: cannot delete stale UDP conntrack entries: %s", e)

    async def intact(self) -> bool:
        """Whether our table is still there (someone may have run `nft flush ruleset`). Adding a
        chain that exists is a no-op, and cheap, unlike listing (which fetches every element)."""
        try:
            await self.nft.run(f"add chain inet {self.layout.table} services\n")
        except (NftError, OSError):
            return False
        return True

    async def cleanup(self) -> None:
        t = self.layout.table
        await self.nft.run(f"table inet {t} {{ }}\ndelete table inet {t}\n")
        self.kernel.clear()

    async def close(self) -> None:
        await self.nft.close()


class UserspaceBackend:
    """Forwards through asyncio listeners (userspace.py) where nftables cannot be used."""

    name = "userspace"

    def __init__(self, proxy: Any, *, netns: str | None = None):
        from .userspace import UserspaceProxy

        self.proxy: UserspaceProxy = proxy if proxy is not None else UserspaceProxy(netns=netns)

    async def prepare(self) -> None:
        pass

    def fragment(self, ports: list[ServicePort]) -> dict[Hashable, Any]:
        from .userspace import Target

        out: dict[Hashable, Any] = {}
        for sp in ports:
            cluster = sp.local_endpoints if sp.internal_local else sp.endpoints
            external = sp.local_endpoints if sp.external_local else sp.endpoints
            for vip in sp.cluster_ips:
                out[(vip, sp.port, sp.protocol)] = Target(tuple((e.ip, e.port) for e in cluster),
                                                          sp.affinity_timeout, cluster_ip=True)
            for x in sp.external_ips:
                out[(x, sp.port, sp.protocol)] = Target(tuple((e.ip, e.port) for e in external),
                                                        sp.affinity_timeout)
            if sp.node_port:
                wildcard = "::" if sp.family == 6 else "0.0.0.0"
                out[(wildcard, sp.node_port, sp.protocol)] = Target(tuple((e.ip, e.port) for e in external),
                                                                    sp.affinity_timeout)
        return out

    async def rebuild(self, objects: dict[Hashable, Any]) -> None:
        await self.proxy.replace(objects)  # type: ignore[arg-type]

    async def apply(self, wanted: dict[Hashable, Any]) -> None:
        await self.proxy.update(wanted)  # type: ignore[arg-type]

    async def intact(self) -> bool:
        return True

    async def cleanup(self) -> None:
        await self.proxy.replace({})

    async def close(self) -> None:
        await self.proxy.close()


# ---------------------------------------------------------------------- the proxier

class ServiceProxy:
    """The service proxy of one node.

    `node_name` picks the node-local endpoints (externalTrafficPolicy/internalTrafficPolicy
    Local, hairpin); `node_ips` are the node's addresses (informational for the nftables
    backend, which serves NodePorts on every local address unless `nodeport_addresses`
    narrows it); `cluster_cidrs` are the pod networks (traffic from outside them to a
    cluster IP is masqueraded, traffic from inside them to an external entry point with
    policy Local is short-circuited to every endpoint). `netns` (a path such as
    /run/netns/NAME) runs it all inside another network namespace.
    """

    def __init__(self, client: Client, node_name: str, node_ips: Iterable[str] = (), *,
                 cluster_cidrs: Iterable[str] = (), backend: str = "auto", netns: str | None = None,
                 table: str = "kybernetes", masquerade_bit: int = 14, localhost_nodeports: bool = True,
                 nodeport_addresses: Iterable[str] | None = None, sync_delay: float = 0.005,
                 check_period: float = 30.0, nft: Nft | None = None, userspace: Any = None):
        if backend not in ("auto", "nftables", "userspace"):
            raise ValueError(f"unknown service proxy backend {backend!r}")
        self.client = client
        self.node_name = node_name
        self.node_ips = list(node_ips)
        self.cluster_cidrs = list(cluster_cidrs)
        self.netns = netns
        self.sync_delay = sync_delay
        self.check_period = check_period
        self._wanted_backend = backend
        self._nft = nft
        self._userspace = userspace
        self.layout = NftLayout(table, self.cluster_cidrs, node_name, masquerade_mark=1 << masquerade_bit,
                                localhost_nodeports=localhost_nodeports, nodeport_addresses=nodeport_addresses)
        self.backend: NftablesBackend | UserspaceBackend | None = None
        self.desired = Desired()
        self.services: Informer | None = None
        self.slices: Informer | None = None
        self._own_informers: list[Informer] = []
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._full_needed = True
        self.syncs = 0                 # transactions applied (full or incremental)
        self.full_syncs = 0
        self.last_sync_seconds = 0.0   # the last sync: computing the fragments and applying them
        self.idle = asyncio.Event()    # set while nothing is dirty and no sync runs
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.backend = await self._choose_backend()
        await self.backend.prepare()
        self.services = self._informer("v1", "services")
        self.slices = self._informer("discovery.k8s.io/v1", "endpointslices")
        self.slices.add_index(_SLICE_INDEX, _slice_service_key)
        self.services.add_handler(self._on_service, lambda old, new: self._on_service(new), self._on_service)
        self.slices.add_handler(self._on_slice, self._on_slice_update, self._on_slice)
        for inf in (self.services, self.slices):
            await inf.start()
        for inf in (self.services, self.slices):
            await inf.wait_for_sync()
        await self._sync()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop syncing; what is programmed stays, so traffic flows while a new proxy starts."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for inf in self._own_informers:
            await inf.stop()
        self._own_informers.clear()
        if self.backend is not None:
            await self.backend.close()

    async def cleanup(self) -> None:
        """Remove everything this proxy programmed (the table, or the listeners)."""
        if self.backend is not None:
            await self.backend.cleanup()
            self.desired.clear()

    async def __aenter__(self) -> ServiceProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _choose_backend(self) -> NftablesBackend | UserspaceBackend:
        if self._wanted_backend in ("auto", "nftables"):
            if self._nft is not None or nft_available():
                nft = self._nft or Nft(netns=self.netns)
                backend = NftablesBackend(self.layout, nft)
                if self._wanted_backend == "nftables":
                    return backend
                try:
                    # Can this process program nftables at all (CAP_NET_ADMIN, nf_tables in the kernel)?
                    await nft.run(f"table inet {self.layout.table} {{ }}\n")
                    return backend
                except (NftError, OSError) as e:
                    log.warning("service proxy: nftables unusable (%s); using the userspace proxy", e)
                    await nft.close()
            elif self._wanted_backend == "nftables":
                raise RuntimeError("nftables is not available (neither libnftables nor the nft binary)")
            else:
                log.warning("service proxy: nftables not available; using the userspace proxy")
        return UserspaceBackend(self._userspace, netns=self.netns)

    def _informer(self, api_version: str, plural: str) -> Informer:
        return informer_for(self.client, self.client.resource(api_version, plural), self._own_informers)

    # ------------------------------------------------------------------ events

    def _mark(self, key: str) -> None:
        self._dirty.add(key)
        self.idle.clear()
        self._wake.set()

    def _on_service(self, obj: Obj) -> None:
        self._mark(meta_namespace_key(obj))

    def _on_slice(self, obj: Obj) -> None:
        for key in _slice_service_key(obj):
            self._mark(key)

    def _on_slice_update(self, old: Obj, new: Obj) -> None:
        for key in {*_slice_service_key(old), *_slice_service_key(new)}:
            self._mark(key)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        delay = 0.1
        while True:
            if not self._dirty and not self._full_needed:
                self.idle.set()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.check_period or None)
                except TimeoutError:
                    # Quiet for a while: is what we programmed still there?
                    if self.backend is not None and not await self.backend.intact():
                        log.warning("service proxy: table %s vanished; rebuilding", self.layout.table)
                        self._full_needed = True
                    continue
                # Coalesce a burst (a rollout updates a slice per pod) into one transaction.
                await asyncio.sleep(self.sync_delay)
            try:
                await self._sync()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("service proxy: sync failed; rebuilding in %.1fs", delay)
                self._full_needed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def fragment_for(self, key: str) -> dict[Hashable, Any]:
        assert self.services is not None and self.slices is not None and self.backend is not None
        svc = self.services.get(key)
        if svc is None:
            return {}
        slices = [s for s in self.slices.by_index(_SLICE_INDEX, key)
                  if HEADLESS_LABEL not in ((s.get("metadata") or {}).get("labels") or {})]
        return self.backend.fragment(service_ports(svc, slices, self.node_name))

    async def rebuild(self) -> None:
        """Recompute every Service and replace what is programmed in one transaction."""
        self._full_needed = True
        await self._sync()

    async def _sync(self) -> None:
        async with self._lock:
            await self._sync_locked()

    async def _sync_locked(self) -> None:
        assert self.backend is not None and self.services is not None
        start = time.perf_counter()
        if self._full_needed:
            self._dirty.clear()
            self.desired.clear()
            for key in self.services.keys():
                self.desired.set(key, self.fragment_for(key))
            await self.backend.rebuild(self.desired.everything())
            self._full_needed = False
            self.full_syncs += 1
        else:
            dirty, self._dirty = self._dirty, set()
            touched: set[Hashable] = set()
            for key in dirty:
                touched |= self.desired.set(key, self.fragment_for(key))
            if not touched:
                return
            try:
                await self.backend.apply({k: self.desired.value(k) for k in touched})
            except NftError as e:
                # The kernel does not hold what we think (someone flushed the table, a
                # restart raced us): rebuild from scratch rather than guess.
                log.warning("service proxy: incremental update failed (%s); rebuilding", e)
                self._full_needed = True
                await self._sync_locked()
                return
        self.syncs += 1
        self.last_sync_seconds = time.perf_counter() - start
