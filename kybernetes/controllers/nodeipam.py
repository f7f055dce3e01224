"""Node IPAM: every Node's pod CIDRs (spec.podCIDR, spec.podCIDRs) from the cluster CIDRs.

As upstream's range allocator (kube-controller-manager --allocate-node-cidrs
with --cluster-cidr): one CIDR from each cluster CIDR, so one per IP family in
the cluster CIDRs' order, of the node mask size (/24 for IPv4, /64 for IPv6
unless configured). A CIDR is never handed to two nodes. A node's CIDRs are
written once (the API refuses to change them) and are its for good; at start
the allocation is rebuilt from the nodes, so restarts keep every assignment.
A deleted node's CIDRs are free again. Subnets overlapping the service CIDRs
are never handed out.

When a range has no CIDR left, the node waits and gets a Warning event
CIDRNotAvailable, "Node <name> status is now: CIDRNotAvailable", as upstream's
(source cidrAllocator). Upstream's range allocator sets no node condition for
it (NetworkUnavailable belongs to the network plugin and the route controller),
so neither does this one. A waiting node is tried again as soon as another
node's CIDRs are released.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from ..api.errors import StatusError
from ..apiserver.ipalloc import Network, net_family, parse_cidrs
from ..client import Client
from .base import Controller, Requeue

log = logging.getLogger("kybernetes.controllers.nodeipam")

COMPONENT = "cidrAllocator"
# Past this many bits between the cluster and node masks an IPv6 set is refused, as upstream's.
MAX_SUBNET_BITS = 16
# A node waiting for a free CIDR is retried this often even without a release to wake it.
EXHAUSTED_RETRY = 30.0

Obj = dict[str, Any]


class CIDRSet:
    """The node-sized subnets of one cluster CIDR: which are taken, handed out round robin."""

    def __init__(self, cluster: Network, mask: int):
        if not cluster.prefixlen <= mask <= cluster.max_prefixlen:
            raise ValueError(f"node CIDR mask size /{mask} must be between the cluster CIDR's "
                             f"/{cluster.prefixlen} and /{cluster.max_prefixlen}")
        if cluster.version == 6 and mask - cluster.prefixlen > MAX_SUBNET_BITS:
            raise ValueError(f"node CIDR mask size /{mask} is too big for cluster CIDR {cluster}: at most "
                             f"{MAX_SUBNET_BITS} bits more than its mask")
        self.cluster, self.mask = cluster, mask
        self.count = 1 << (mask - cluster.prefixlen)
        self._shift = cluster.max_prefixlen - mask
        self._base = int(cluster.network_address)
        self.used: set[int] = set()
        # Hand out in turn, not lowest first, so a just-released CIDR is not reused at once
        # while the old node's routes may linger (upstream's nextCandidate).
        self._next = 0

    @property
    def family(self) -> str:
        return net_family(self.cluster)

    def subnet(self, index: int) -> Network:
        return ipaddress.ip_network((self._base + (index << self._shift), self.mask))

    def _range(self, net: Network) -> range | None:
        """The indexes of the subnets net covers (or lies in), None if outside this set."""
        if net.version != self.cluster.version:
            return None
        if not (net.subnet_of(self.cluster) or self.cluster.subnet_of(net)):
            return None
        lo = max(int(net.network_address), self._base)
        hi = min(int(net.broadcast_address), int(self.cluster.broadcast_address))
        return range((lo - self._base) >> self._shift, ((hi - self._base) >> self._shift) + 1)

    def allocate_next(self) -> Network | None:
        for i in range(self.count):
            idx = (self._next + i) % self.count
            if idx not in self.used:
                self.used.add(idx)
                self._next = (idx + 1) % self.count
                return self.subnet(idx)
        return None

    def occupy(self, net: Network) -> bool:
        r = self._range(net)
        if r is None:
            return False
        self.used.update(r)
        return True

    def release(self, net: Network) -> None:
        r = self._range(net)
        if r is not None:
            self.used.difference_update(r)

    def free(self) -> int:
        return self.count - len(self.used)


def node_pod_cidrs(node: Obj) -> list[str]:
    spec = node.get("spec") or {}
    cidrs = spec.get("podCIDRs")
    if isinstance(cidrs, list) and cidrs:
        return [c for c in cidrs if isinstance(c, str)]
    return [spec["podCIDR"]] if isinstance(spec.get("podCIDR"), str) and spec["podCIDR"] else []


class NodeIPAMController(Controller):
    """Assigns spec.podCIDR(s) to Nodes from the cluster CIDRs; see the module docstring."""

    name = "node-ipam"
    component = COMPONENT

    def __init__(self, client: Client, cluster_cidrs: str | Sequence[str], *,
                 node_cidr_mask_size_ipv4: int = 24, node_cidr_mask_size_ipv6: int = 64,
                 service_cidrs: str | Sequence[str] = ()):
        """cluster_cidrs: one CIDR or an IPv4,IPv6 pair ("a,b" or a list), as --cluster-cidr;
        service_cidrs: the Service ranges, never handed to nodes where they overlap."""
        super().__init__(client)
        nets = parse_cidrs(cluster_cidrs, "--cluster-cidr", max_bits=None)
        masks = {"IPv4": node_cidr_mask_size_ipv4, "IPv6": node_cidr_mask_size_ipv6}
        self.sets = [CIDRSet(n, masks[net_family(n)]) for n in nets]
        if service_cidrs:
            for svc_net in parse_cidrs(service_cidrs, "--service-cidr", max_bits=None):
                for s in self.sets:
                    if s.occupy(svc_net):
                        log.info("node-ipam: service CIDR %s overlaps cluster CIDR %s: its subnets are "
                                 "never handed out", svc_net, s.cluster)
        # Shared with the other controllers that watch nodes (no resync of its own): one node cache.
        self.nodes = self.informer("v1", "nodes", namespaced=False)
        self.nodes.add_handler(on_add=self._on_node, on_update=lambda _o, n: self._on_node(n),
                               on_delete=self._on_node)
        # node -> the CIDRs (per set, None where not ours to track) this allocator holds for it
        self._held: dict[str, list[Network | None]] = {}
        # node -> the spec.podCIDRs those were taken from (none for CIDRs this allocator chose)
        self._occupied_from: dict[str, list[str]] = {}
        self._rebuilt = False
        # Nodes waiting for a free CIDR: woken by a release, told once by an event.
        self._waiting: set[str] = set()

    def _on_node(self, node: Obj) -> None:
        self.enqueue(node["metadata"]["name"])

    # ------------------------------------------------------------ state

    def _rebuild(self) -> None:
        """Take every CIDR the nodes already have before handing out any, so that nothing is given twice."""
        for node in self.nodes.list():
            cidrs = node_pod_cidrs(node)
            if cidrs and not (node.get("metadata") or {}).get("deletionTimestamp"):
                self._occupy(node["metadata"]["name"], cidrs)
        self._rebuilt = True

    def _occupy(self, name: str, cidrs: list[str]) -> None:
        held: list[Network | None] = []
        for idx, c in enumerate(cidrs):
            try:
                net = ipaddress.ip_network(c, strict=False)
            except ValueError:
                log.warning("node-ipam: node %s has an invalid pod CIDR %r; not tracked", name, c)
                held.append(None)
                continue
            s = self.sets[idx] if idx < len(self.sets) else None
            if s is None or not s.occupy(net):
                # Set by hand or under another configuration: not ours to hand out or release.
                log.warning("node-ipam: node %s pod CIDR %s is outside cluster CIDR %s; not tracked", name, c,
                            s.cluster if s else "(none at this index)")
                held.append(None)
            else:
                held.append(net)
        previous = self._held.get(name)
        self._held[name] = held
        self._occupied_from[name] = list(cidrs)
        if previous:
            for idx, net in enumerate(previous):
                if net is not None and net not in held:
                    self.sets[idx].release(net)

    def _release(self, name: str) -> None:
        held = self._held.pop(name, None)
        self._occupied_from.pop(name, None)
        self._waiting.discard(name)
        if not held:
            return
        for idx, net in enumerate(held):
            if net is not None:
                self.sets[idx].release(net)
        log.info("node-ipam: released %s of node %s", ", ".join(str(n) for n in held if n), name)
        for waiting in sorted(self._waiting):
            self.enqueue(waiting)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        if not self._rebuilt:
            self._rebuild()
        node = self.nodes.get(key)
        if node is None or (node.get("metadata") or {}).get("deletionTimestamp"):
            self._release(key)
            return
        cidrs = node_pod_cidrs(node)
        if cidrs:
            if self._occupied_from.get(key) != cidrs:
                self._occupy(key, cidrs)
            self._waiting.discard(key)
            return
        held = self._held.get(key)
        if held is None:
            got: list[Network | None] = []
            for s in self.sets:
                net = s.allocate_next()
                if net is None:
                    for idx, n in enumerate(got):
                        if n is not None:
                            self.sets[idx].release(n)
                    if key not in self._waiting:
                        self._waiting.add(key)
                        log.warning("node-ipam: no %s CIDR left in %s for node %s", s.family, s.cluster, key)
                        await self._event(node, "CIDRNotAvailable")
                    raise Requeue(after=EXHAUSTED_RETRY)
                got.append(net)
            held = self._held[key] = got
            self._waiting.discard(key)
        # Both fields, as upstream's patch: old clients read podCIDR.
        strs = [str(n) for n in held if n is not None]
        try:
            await self.client.resource("v1", "nodes", False).patch(
                key, {"spec": {"podCIDR": strs[0], "podCIDRs": strs}})
        except StatusError as e:
            if e.code == 404:
                self._release(key)
                return
            if e.code == 422:
                # Someone else gave it CIDRs first: the node update brings us back to take those.
                return
            self._release(key)
            await self._event(node, "CIDRAssignmentFailed")
            raise
        log.info("node-ipam: node %s pod CIDRs %s", key, ", ".join(strs))

    async def _event(self, node: Obj, status: str) -> None:
        """Upstream's RecordNodeStatusChange: a Warning about the node."""
        name = (node.get("metadata") or {}).get("name") or ""
        self.recorder.event({**node, "apiVersion": "v1", "kind": "Node"}, "Warning", status,
                            f"Node {name} status is now: {status}")
