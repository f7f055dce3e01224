"""servicelb: addresses for Services of type LoadBalancer, written to status.loadBalancer.ingress.

Only Services with no spec.loadBalancerClass are this controller's (a class
names another implementation). Each ingress entry is an address with
ipMode VIP (upstream 1.30+): traffic to it is the Service's, and the service
proxy serves it on each of the Service's ports. Two modes:

Node addresses (the default), as k3s's servicelb. A Service is served on the
nodes that could run its svclb pods: Ready nodes without a taint those pods do
not tolerate; when any node carries svccontroller.k3s.cattle.io/enablelb, only
those labelled "true" (and, for a Service labelled
svccontroller.k3s.cattle.io/lbpool, the nodes of that pool); with
externalTrafficPolicy Local, only nodes with a ready endpoint of it. A node
holds each (protocol, port) for one Service only, as the svclb pods' host
ports do: a Service that already has addresses keeps its ports, then the
oldest wins. The ports a node's ingress controller listens on (80 and 443 by
default, announced in its status Lease) are that node's too, as Traefik's
svclb pods hold them on a k3s node. The ingress lists the ExternalIP addresses of those nodes if any
has one, else their InternalIP addresses, by the Service's ipFamilies order and
sorted within a family. Events are k3s's: Normal UpdatedLoadBalancer ("Updated
LoadBalancer with new IPs: [a] -> [a b]") and Warning UnAvailableLoadBalancer
("There are no available nodes for LoadBalancer", with the port in the way
when that is why).

An address pool (`pools`, e.g. ["10.0.0.240/29", "fd00:lb::/120"] or
"10.0.0.240-10.0.0.250" ranges), as MetalLB users expect: one address per
family of the Service (its primary only for SingleStack; both for
RequireDualStack; both if the pool has them for PreferDualStack), lowest free
first, or the ones asked for with spec.loadBalancerIP or the
metallb.io/loadBalancerIPs annotation. A Service keeps its addresses (they are
read back from its status, so restarts keep them too) until it is deleted or
stops being a LoadBalancer; the API server then clears its status and the
addresses are free for the next one waiting. Events are MetalLB's: Normal
IPAllocated ('Assigned IP ["10.0.0.240"]') and, while none can be had, Warning
AllocationFailed ('Failed to allocate IP for "ns/name": no available IPs').

A Service that gets no address stays Pending (no ingress); its Warning is
recorded once per reason, and it is tried again whenever an address or port
may have come free.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from ..client import Client
from ..ingress.controller import LEASE_LABEL as INGRESS_LEASE_LABEL
from ..ingress.controller import LEASE_PORTS_ANNOTATION as INGRESS_PORTS_ANNOTATION
from .base import Controller, key_of

log = logging.getLogger("kybernetes.controllers.servicelb")

COMPONENT = "service-lb-controller"
ENABLE_LB_LABEL = "svccontroller.k3s.cattle.io/enablelb"
LB_POOL_LABEL = "svccontroller.k3s.cattle.io/lbpool"
LB_IPS_ANNOTATIONS = ("metallb.io/loadBalancerIPs", "metallb.universe.tf/loadBalancerIPs")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
NO_NODES = "There are no available nodes for LoadBalancer"
NO_IPS = "no available IPs"
# Taints the svclb pods tolerate: k3s's own, and those every DaemonSet pod gets.
TOLERATED = {
    ("node-role.kubernetes.io/master", "NoSchedule"), ("node-role.kubernetes.io/control-plane", "NoSchedule"),
    ("node.kubernetes.io/not-ready", "NoExecute"), ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"), ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"), ("node.kubernetes.io/unschedulable", "NoSchedule"),
}

Obj = dict[str, Any]


def is_ours(svc: Obj | None) -> bool:
    spec = (svc or {}).get("spec") or {}
    return spec.get("type") == "LoadBalancer" and not spec.get("loadBalancerClass")


def ingress_ips(svc: Obj) -> list[str]:
    ingress = (((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
    return [i.get("ip") or i.get("hostname") or "" for i in ingress if isinstance(i, dict)]


def wanted_families(svc: Obj) -> list[str]:
    spec = svc.get("spec") or {}
    fams = [f for f in spec.get("ipFamilies") or [] if f in ("IPv4", "IPv6")]
    if not fams and spec.get("clusterIP") not in (None, "", "None"):
        fams = ["IPv6" if ":" in spec["clusterIP"] else "IPv4"]
    if (spec.get("ipFamilyPolicy") or "SingleStack") == "SingleStack":
        fams = fams[:1]
    return fams


def _family(ip: str) -> str:
    return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"


def _go_strings(xs: list[str]) -> str:
    return "[" + " ".join(xs) + "]"  # Go's %v of a []string


def _go_quoted(xs: list[str]) -> str:
    return "[" + " ".join(f'"{x}"' for x in xs) + "]"  # Go's %q of a []net.IP


def _priority(svc: Obj) -> tuple[str, str]:
    meta = svc.get("metadata") or {}
    return meta.get("creationTimestamp") or "", key_of(svc)


# ---------------------------------------------------------------------- address pools

class AddressPool:
    """Addresses to hand out: CIDRs (every address in them, as MetalLB), "a-b" ranges, single IPs."""

    def __init__(self, pools: Sequence[str]):
        self.ranges: list[tuple[int, int, int]] = []  # (IP version, first, last)
        for spec in pools:
            for part in (p.strip() for p in spec.split(",")):
                if not part:
                    continue
                try:
                    if "-" in part:
                        a, b = (ipaddress.ip_address(x.strip()) for x in part.split("-", 1))
                        if a.version != b.version or int(b) < int(a):
                            raise ValueError("the range's ends must be of one family, the first not above "
                                             "the last")
                        self.ranges.append((a.version, int(a), int(b)))
                    else:
                        net = ipaddress.ip_network(part, strict=False)
                        self.ranges.append((net.version, int(net.network_address),
                                            int(net.broadcast_address)))
                except ValueError as e:
                    raise ValueError(f"load balancer address pool {part!r}: {e}") from None
        if not self.ranges:
            raise ValueError("a load balancer address pool needs at least one address")

    def families(self) -> set[str]:
        return {"IPv6" if v == 6 else "IPv4" for v, _, _ in self.ranges}

    def contains(self, ip: str) -> bool:
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(v == a.version and lo <= int(a) <= hi for v, lo, hi in self.ranges)

    def pick(self, family: str, used: set[str]) -> str | None:
        version = 6 if family == "IPv6" else 4
        cls = ipaddress.IPv6Address if version == 6 else ipaddress.IPv4Address
        taken = {int(a) for ip in used if (a := _addr(ip)) is not None and a.version == version}
        for v, lo, hi in self.ranges:
            if v != version:
                continue
            n = lo
            while n <= hi:
                if n not in taken:
                    return str(cls(n))
                n += 1
        return None


def _addr(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip)
    except ValueError:
        return None


def requested_ips(svc: Obj) -> list[str]:
    """spec.loadBalancerIP or the MetalLB annotation; ValueError if malformed or both are given."""
    spec = svc.get("spec") or {}
    ann = (svc.get("metadata") or {}).get("annotations") or {}
    listed = next((ann[a] for a in LB_IPS_ANNOTATIONS if ann.get(a)), "")
    if listed and spec.get("loadBalancerIP"):
        raise ValueError(f"service can not have both {LB_IPS_ANNOTATIONS[0]} and svc.Spec.LoadBalancerIP")
    raw = [x.strip() for x in listed.split(",") if x.strip()] if listed else \
        ([spec["loadBalancerIP"]] if spec.get("loadBalancerIP") else [])
    out = []
    for ip in raw:
        a = _addr(ip)
        if a is None:
            raise ValueError(f"invalid requested loadbalancer IP {ip!r}")
        out.append(str(a))
    return out


# ---------------------------------------------------------------------- nodes

def node_eligible(node: Obj) -> bool:
    """Whether a svclb pod could run (and be ready) there."""
    status = node.get("status") or {}
    conditions = status.get("conditions") or []
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
        return False
    for t in (node.get("spec") or {}).get("taints") or []:
        effect, key = t.get("effect"), t.get("key")
        if effect not in ("NoSchedule", "NoExecute") or key == "CriticalAddonsOnly" or \
                (key, effect) in TOLERATED:
            continue
        return False
    return not (node.get("metadata") or {}).get("deletionTimestamp")


def node_addresses(node: Obj, kind: str) -> list[str]:
    return [a["address"] for a in (node.get("status") or {}).get("addresses") or []
            if a.get("type") == kind and a.get("address") and _addr(a["address"]) is not None]


def _node_signature(node: Obj) -> tuple[Any, ...]:
    """What of a node the node-address mode looks at: its heartbeats alone change nothing."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    return (node_eligible(node), tuple(node_addresses(node, "InternalIP")),
            tuple(node_addresses(node, "ExternalIP")), tuple(sorted(labels.items())))


class ServiceLBController(Controller):
    """Load balancer addresses for Services: node addresses (k3s) or an address pool (MetalLB)."""

    name = "servicelb"
    component = COMPONENT
    workers = 1  # every decision looks at all LoadBalancers; one at a time keeps them consistent

    def __init__(self, client: Client, *, pools: Sequence[str] | str | None = None):
        """pools: address pool CIDRs / ranges (a list, or one comma-separated string);
        none: the nodes' addresses."""
        super().__init__(client)
        if isinstance(pools, str):
            pools = [pools]
        self.pool = AddressPool(pools) if pools else None
        # Shared informers (no resync of their own): one cache per resource in the manager.
        self.services = self.informer("v1", "services")
        self.services.add_handler(on_add=self._on_service, on_update=self._on_service_update,
                                  on_delete=self._on_service)
        if self.pool is None:
            self.nodes = self.informer("v1", "nodes", namespaced=False)
            self.nodes.add_handler(on_add=lambda n: self._wake_all(), on_update=self._on_node_update,
                                   on_delete=lambda n: self._wake_all())
            self.slices = self.informer("discovery.k8s.io/v1", "endpointslices")
            self.slices.add_index("servicelb-service", _slice_service)
            self.slices.add_handler(on_add=self._on_slice, on_update=lambda _o, s: self._on_slice(s),
                                    on_delete=self._on_slice)
            # The node ports each node's ingress controller holds, from its Lease (see ingress_ports).
            # Indexed: the shared Lease cache also holds every node's heartbeat Lease.
            self.leases = self.informer("coordination.k8s.io/v1", "leases")
            self.leases.add_index(INGRESS_LEASES, _ingress_lease_index)
            self.leases.add_handler(on_add=self._on_lease, on_update=self._on_lease_update,
                                    on_delete=self._on_lease)
        # Pool addresses chosen for a Service whose status write the cache may not show yet.
        self._chosen: dict[str, list[str]] = {}
        # The Warning last recorded for a pending Service: recorded once per reason.
        self._pending: dict[str, str] = {}

    # ------------------------------------------------------------ events in

    def _on_service(self, svc: Obj) -> None:
        key = key_of(svc)
        if is_ours(svc) or key in self._chosen or key in self._pending:
            self.enqueue(key)
            self._wake_others(key)

    def _on_service_update(self, old: Obj, new: Obj) -> None:
        if is_ours(old) or is_ours(new):
            key = key_of(new)
            self.enqueue(key)
            o, n = old.get("spec") or {}, new.get("spec") or {}
            if o != n or ingress_ips(old) != ingress_ips(new):
                self._wake_others(key)

    def _wake_others(self, key: str) -> None:
        # Node addresses: ports may have come free or been taken. A pool: only those waiting care.
        if self.pool is None:
            keys = [key_of(s) for s in self.services.list() if is_ours(s)]
        else:
            keys = list(self._pending)
        for k in keys:
            if k != key:
                self.enqueue(k)

    def _wake_all(self) -> None:
        for s in self.services.list():
            if is_ours(s):
                self.enqueue(key_of(s))

    def _on_node_update(self, old: Obj, new: Obj) -> None:
        if _node_signature(old) != _node_signature(new):
            self._wake_all()

    def _on_lease(self, lease: Obj) -> None:
        if ingress_ports(lease):
            self._wake_all()

    def _on_lease_update(self, old: Obj, new: Obj) -> None:
        if ingress_ports(old) != ingress_ports(new):
            self._wake_all()

    def _on_slice(self, eps: Obj) -> None:
        for key in _slice_service(eps):
            svc = self.services.get(key)
            if is_ours(svc) and (svc.get("spec") or {}).get("externalTrafficPolicy") == "Local":
                self.enqueue(key)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        svc = self.services.get(key)
        if svc is None or not is_ours(svc):
            # Gone or not ours: its addresses are free once the API server dropped its status.
            if self._chosen.pop(key, None) is not None or self._pending.pop(key, None) is not None:
                self._wake_others(key)
            return
        if self.pool is not None:
            ips, problem = self._pool_plan(key, svc)
        else:
            ips, problem = self._node_plan().get(key, ([], NO_NODES))
        before = ingress_ips(svc)
        desired = [{"ip": ip, "ipMode": "VIP"} for ip in ips]
        current = (((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
        if current != desired:
            meta = svc["metadata"]
            # Guarded by the resourceVersion: a decision on an old Service is never written.
            await self.client.resource("v1", "services").patch(
                meta["name"], {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                               "status": {"loadBalancer": {"ingress": desired or None}}},
                namespace=meta.get("namespace"), subresource="status")
            if ips:
                log.info("servicelb: %s: %s -> %s", key, before, ips)
                if self.pool is not None:
                    await self._event(svc, "Normal", "IPAllocated", f"Assigned IP {_go_quoted(ips)}")
                else:
                    await self._event(svc, "Normal", "UpdatedLoadBalancer",
                                      f"Updated LoadBalancer with new IPs: {_go_strings(before)} -> "
                                      f"{_go_strings(ips)}")
        if problem is None:
            self._pending.pop(key, None)
        elif self._pending.get(key) != problem:
            self._pending[key] = problem
            log.info("servicelb: %s pending: %s", key, problem)
            if self.pool is not None:
                await self._event(svc, "Warning", "AllocationFailed",
                                  f'Failed to allocate IP for "{key}": {problem}')
            else:
                await self._event(svc, "Warning", "UnAvailableLoadBalancer", problem)

    async def _event(self, svc: Obj, etype: str, reason: str, message: str) -> None:
        self.recorder.event(svc, etype, reason, message)

    # ------------------------------------------------------------ node addresses

    def _node_plan(self) -> dict[str, tuple[list[str], str | None]]:
        """Every LoadBalancer's addresses (or why it has none), in one pass so that ports are
        given out consistently."""
        nodes = [n for n in self.nodes.list() if node_eligible(n)]
        selecting = any(ENABLE_LB_LABEL in ((n.get("metadata") or {}).get("labels") or {})
                        for n in self.nodes.list())
        svcs = sorted((s for s in self.services.list() if is_ours(s)),
                      key=lambda s: (not ingress_ips(s), *_priority(s)))
        # What holds a (protocol, port) on a node: a LoadBalancer, or the node's ingress controller.
        claims: dict[str, dict[tuple[str, int], str]] = {}
        for lease in self.leases.by_index(INGRESS_LEASES, INGRESS_LEASES):
            node, ports = ingress_ports(lease)
            for port in ports:
                claims.setdefault(node, {})[("TCP", port)] = f"the ingress controller of node {node}"
        plan: dict[str, tuple[list[str], str | None]] = {}
        for svc in svcs:
            key = key_of(svc)
            spec = svc.get("spec") or {}
            pool = ((svc.get("metadata") or {}).get("labels") or {}).get(LB_POOL_LABEL)
            cands = []
            for n in nodes:
                labels = (n.get("metadata") or {}).get("labels") or {}
                if selecting and labels.get(ENABLE_LB_LABEL) != "true":
                    continue
                if selecting and pool and labels.get(LB_POOL_LABEL) != pool:
                    continue
                cands.append(n)
            if spec.get("externalTrafficPolicy") == "Local":
                ready = self._nodes_with_ready_endpoints(key)
                cands = [n for n in cands if n["metadata"]["name"] in ready]
            ports = [((p.get("protocol") or "TCP"), p.get("port")) for p in spec.get("ports") or []
                     if isinstance(p, dict)]
            free, blocked = [], None
            for n in cands:
                held = claims.get(n["metadata"]["name"], {})
                clash = next(((pp, held[pp]) for pp in ports if pp in held), None)
                if clash is not None:
                    blocked = blocked or clash
                    continue
                free.append(n)
            for n in free:
                held = claims.setdefault(n["metadata"]["name"], {})
                for pp in ports:
                    held[pp] = f"LoadBalancer {key}"
            external = [ip for n in free for ip in node_addresses(n, "ExternalIP")]
            addrs = external or [ip for n in free for ip in node_addresses(n, "InternalIP")]
            ips = []
            for fam in spec.get("ipFamilies") or []:
                ips.extend(sorted({ip for ip in addrs if _family(ip) == fam}))
            problem = None
            if not ips:
                problem = NO_NODES
                if blocked is not None and not free:
                    (proto, port), other = blocked
                    problem += f": port {port}/{proto} is in use by {other}"
            plan[key] = (ips, problem)
        return plan

    def _nodes_with_ready_endpoints(self, key: str) -> set[str]:
        out = set()
        for eps in self.slices.by_index("servicelb-service", key):
            for ep in eps.get("endpoints") or []:
                ref = ep.get("targetRef") or {}
                ready = (ep.get("conditions") or {}).get("ready")
                if ref.get("kind") == "Pod" and ready and ep.get("nodeName"):
                    out.add(ep["nodeName"])
        return out

    # ------------------------------------------------------------ address pool

    def _pool_plan(self, key: str, svc: Obj) -> tuple[list[str], str | None]:
        pool = self.pool
        if pool is None:
            return [], NO_IPS
        families = wanted_families(svc)
        policy = (svc.get("spec") or {}).get("ipFamilyPolicy") or "SingleStack"
        mine = _priority(svc)
        # Who holds what: statuses, and choices the cache may not show yet; an address two
        # Services claim is the older one's.
        holders: dict[str, tuple[tuple[str, str], str]] = {}
        for other in self.services.list():
            okey = key_of(other)
            if okey == key or not is_ours(other):
                continue
            for ip in ingress_ips(other) + self._chosen.get(okey, []):
                if pool.contains(ip):
                    holders.setdefault(str(ipaddress.ip_address(ip)), (_priority(other), okey))
        # Free for this Service: what nobody holds, and what it holds itself with the older claim.
        own = {str(a) for ip in ingress_ips(svc) if (a := _addr(ip)) is not None}
        used = {ip for ip, (prio, _k) in holders.items() if ip not in own or prio < mine}
        try:
            asked = requested_ips(svc)
        except ValueError as e:
            self._chosen.pop(key, None)
            return [], str(e)
        if asked:
            for ip in asked:
                if not pool.contains(ip):
                    return self._fail(key, f'["{ip}"] is not allowed in config')
                if _family(ip) not in families:
                    return self._fail(key, f'requested loadBalancer IP(s) {_go_quoted(asked)} does not '
                                           f'match the ipFamily of the service')
                if ip in used:
                    return self._fail(key, f'["{ip}"] is already in use by {holders[ip][1]}')
            ips = sorted(asked, key=lambda ip: families.index(_family(ip)))
            self._chosen[key] = ips
            return ips, None
        have = {}
        for ip in ingress_ips(svc) + self._chosen.get(key, []):
            if _addr(ip) is None:
                continue
            ip = str(ipaddress.ip_address(ip))
            fam = _family(ip)
            if pool.contains(ip) and fam in families and ip not in used and fam not in have:
                have[fam] = ip
        for fam in families:
            if fam not in have:
                got = pool.pick(fam, used | set(have.values()))
                if got is not None:
                    have[fam] = got
        missing = [f for f in families if f not in have]
        if missing and (policy == "RequireDualStack" or not have):
            return self._fail(key, NO_IPS)
        ips = [have[f] for f in families if f in have]
        self._chosen[key] = ips
        return ips, None

    def _fail(self, key: str, problem: str) -> tuple[list[str], str | None]:
        self._chosen.pop(key, None)
        return [], problem


def ingress_ports(lease: Obj) -> tuple[str, list[int]]:
    """(node, TCP ports) a node's ingress controller listens on, from its status Lease; ("", [])
    for any other Lease."""
    meta = lease.get("metadata") or {}
    if (meta.get("labels") or {}).get(INGRESS_LEASE_LABEL) != "true":
        return "", []
    node = (lease.get("spec") or {}).get("holderIdentity") or ""
    raw = (meta.get("annotations") or {}).get(INGRESS_PORTS_ANNOTATION) or ""
    ports = sorted({int(p) for p in raw.split(",") if p.strip().isdigit()})
    return (node, ports) if node else ("", [])


INGRESS_LEASES = "servicelb-ingress-leases"


def _ingress_lease_index(lease: Obj) -> list[str]:
    return [INGRESS_LEASES] if ingress_ports(lease)[0] else []


def _slice_service(eps: Obj) -> list[str]:
    meta = eps.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{meta.get('namespace')}/{name}"] if name else []
