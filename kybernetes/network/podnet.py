"""The pod network of one node: the CNI-shaped seam the kubelet drives (add a sandbox's
network namespace to the network, report its IPs, delete it), and the node-side plumbing
that makes pod addresses reachable.

Layout, as CNI's bridge plugin with host-local IPAM and portmap would build it:

* One bridge (`kyb0`) in the node's network namespace, holding the gateway of each of the
  node's pod CIDRs (the first address: 10.42.0.1/24, fd42::1/64) and a fixed MAC, so the
  gateway's MAC does not change as pods come and go.
* Per pod sandbox a veth pair: the host end (`veth` + 11 hex digits of a hash of the
  sandbox id) on the bridge, the pod end created directly inside the sandbox's namespace
  as `eth0`, with one address per pod CIDR (ipam.py), default routes via the gateways and
  `lo` up. IPv6 addresses skip duplicate address detection (nodad, accept_dad=0 in the
  pod's namespace) so they work at once, as the bridge plugin does.
* Routes to other nodes' pod CIDRs via their InternalIP of the same family (host-gw mode,
  as flannel's host-gw: the nodes must share an L2 segment; no VXLAN), kept in sync with
  the Node objects by `sync_routes` / `watch_nodes`. They are tagged with our own route
  protocol number, so stale ones are found and removed after a restart.
* nftables table `inet kybernetes-podnet` (the service proxy owns `kybernetes`): pod
  traffic leaving the cluster CIDRs is masqueraded; hostPorts are DNATed from every local
  address (and 127.0.0.1, as portmap with snat does) to podIP:containerPort through maps,
  one element per port, so adding or removing a pod's hostPorts is one small transaction.
  Traffic from this node's pods to a hostPort is masqueraded too, as portmap does: the
  answer would otherwise go straight back across the bridge, un-NATed. Bridge ports are in
  hairpin mode (CNI bridge's hairpinMode), so with br_netfilter loaded a DNATed packet may
  be bridged back out the port it came in (a pod reaching itself). Service hairpin is the
  proxy's (kube-proxy's model: it masquerades a pod that reaches itself).

The pod end is made the same way whatever created the namespace: a runc container's
holder or the process runtime's, /proc/<pid>/ns/net either way.

Everything is restart-safe and idempotent. State lives in `state_dir`: the IPAM file and
one record per sandbox (its netns, veth, addresses, hostPorts) written before the veth is
made, so a restarted kubelet knows each sandbox's addresses (`status`), `delete` after a
crash still frees them (the veth name is derived from the sandbox id, the addresses are
found by sandbox id), `setup` rebuilds the nft table from the records, and `gc(live)`
frees whatever belongs to sandboxes that no longer exist.

Netlink work runs on one worker thread (netlink.py: raw rtnetlink, measured against
pyroute2 and the CNI plugins in bench/podnet.py); nft transactions go through
network/nftables.py's `Nft`. `netns` (a path) runs the whole node side inside another
network namespace: that is how tests run several "nodes" on one machine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from kybernetes.network import netlink
from kybernetes.network.ipam import IPAM, IPAMError, Range
from kybernetes.network.netlink import NetlinkError, Rtnl
from kybernetes.network.nftables import Nft, NftError

log = logging.getLogger(__name__)

T = TypeVar("T")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Our routes to other nodes carry this rtm_protocol (iproute2 shows "proto 75"), which is
# how they are told from everyone else's.
RTPROT_KYBERNETES = 75
POD_IFNAME = "eth0"
DEFAULT_MTU = 1500
_PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")


class PodNetworkError(Exception):
    """The pod network could not do what was asked; the message says why."""


class HostPortConflict(PodNetworkError):
    """A hostPort another sandbox on this node already has."""


def veth_name(sandbox_id: str) -> str:
    """The host end's name: 15 characters at most (IFNAMSIZ), the same after a restart."""
    return "veth" + hashlib.sha256(sandbox_id.encode()).hexdigest()[:11]


def parse_cidrs(value: str | Sequence[str]) -> list[IPNetwork]:
    """CIDRs as k3s spells them ("10.42.0.0/16,fd42::/56") or as a list."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if item.strip():
            try:
                out.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError as e:
                raise PodNetworkError(f"invalid CIDR {item!r}: {e}") from None
    return out


@dataclass(frozen=True)
class HostPort:
    """One containerPort with a hostPort, as in a pod's spec.containers[].ports[]."""

    host_port: int
    container_port: int
    protocol: str = "TCP"
    host_ip: str = ""

    @classmethod
    def from_pod(cls, pod: dict[str, Any]) -> list[HostPort]:
        """The hostPorts a pod asks for (none for a hostNetwork pod: it binds them itself)."""
        spec = pod.get("spec") or {}
        if spec.get("hostNetwork"):
            return []
        out = []
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            for p in c.get("ports") or []:
                if p.get("hostPort"):
                    out.append(cls(int(p["hostPort"]), int(p.get("containerPort") or p["hostPort"]),
                                   str(p.get("protocol") or "TCP").upper(), str(p.get("hostIP") or "")))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"hostPort": self.host_port, "containerPort": self.container_port,
                "protocol": self.protocol, "hostIP": self.host_ip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HostPort:
        return cls(int(d["hostPort"]), int(d["containerPort"]), str(d.get("protocol") or "TCP"),
                   str(d.get("hostIP") or ""))


@dataclass(frozen=True)
class PodIPs:
    """What the network gave a sandbox: addresses in the node's podCIDRs order."""

    sandbox_id: str
    interfaces: tuple[str, ...]  # "10.42.0.5/24", "fd42::5/64"
    gateways: tuple[str, ...]
    host_veth: str
    host_ports: tuple[HostPort, ...] = ()

    @property
    def ips(self) -> list[str]:
        return [i.split("/")[0] for i in self.interfaces]

    @property
    def pod_ip(self) -> str:
        return self.ips[0]

    def status(self) -> dict[str, Any]:
        """The pod status fields: {"podIP": ..., "podIPs": [{"ip": ...}, ...]}."""
        return {"podIP": self.pod_ip, "podIPs": [{"ip": ip} for ip in self.ips]}


@dataclass
class _Record:
    sandbox_id: str
    netns: str | None
    veth: str
    interfaces: list[str]
    gateways: list[str]
    host_ports: list[HostPort] = field(default_factory=list)
    namespace: str = ""
    name: str = ""
    uid: str = ""
    created: float = 0.0

    def pod_ips(self) -> PodIPs:
        return PodIPs(self.sandbox_id, tuple(self.interfaces), tuple(self.gateways), self.veth,
                      tuple(self.host_ports))

    def to_json(self) -> bytes:
        return orjson.dumps({
            "sandboxId": self.sandbox_id, "netns": self.netns, "veth": self.veth,
            "interfaces": self.interfaces, "gateways": self.gateways,
            "hostPorts": [h.to_dict() for h in self.host_ports],
            "pod": {"namespace": self.namespace, "name": self.name, "uid": self.uid},
            "created": self.created}, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> _Record:
        d = orjson.loads(data)
        pod = d.get("pod") or {}
        return cls(d["sandboxId"], d.get("netns"), d["veth"], list(d["interfaces"]), list(d["gateways"]),
                   [HostPort.from_dict(h) for h in d.get("hostPorts") or []], pod.get("namespace", ""),
                   pod.get("name", ""), pod.get("uid", ""), float(d.get("created") or 0))


@dataclass
class _Held:
    lock: asyncio.Lock
    users: int = 0


class PodNetwork:
    """The node's pod network: `setup()` once, then `add`/`delete`/`status` per sandbox."""

    def __init__(self, *, node_name: str, state_dir: str | os.PathLike[str], pod_cidrs: Sequence[str],
                 cluster_cidrs: str | Sequence[str] = (), node_ips: Sequence[str] = (),
                 bridge: str = "kyb0", mtu: int | None = None, netns: str | None = None,
                 table: str = "kybernetes-podnet", nft: Nft | None = None):
        """
        node_name:     this node's name (its own Node object is skipped by sync_routes).
        state_dir:     where allocations and sandbox records live (survives restarts).
        pod_cidrs:     the node's spec.podCIDRs, at most one per family; the first is primary.
        cluster_cidrs: the cluster's pod CIDRs ("10.42.0.0/16,fd42::/56"); traffic from a
                       pod to anywhere outside them is masqueraded. Default: pod_cidrs.
        node_ips:      the node's InternalIP(s), reported as hostIPs and podIPs of
                       hostNetwork pods.
        mtu:           the veths' and bridge's MTU; default: that of the interface with the
                       default route, else 1500.
        netns:         run the whole node side in the network namespace at this path
                       (tests; a kubelet leaves it None).
        """
        if len(bridge) > 15:
            raise PodNetworkError(f"bridge name {bridge!r} is longer than 15 characters")
        self.node_name = node_name
        self.state_dir = Path(state_dir)
        try:
            self.ipam = IPAM(self.state_dir / "ipam", pod_cidrs)
        except IPAMError as e:
            raise PodNetworkError(str(e)) from None
        self.ranges: list[Range] = self.ipam.ranges
        clusters = parse_cidrs(cluster_cidrs)
        for r in self.ranges:  # a node's own pod CIDR is always inside "the cluster"
            if not any(r.network.subnet_of(c) for c in clusters if c.version == r.version):  # type: ignore[arg-type]
                clusters.append(r.network)
        self.cluster_cidrs = clusters
        self.node_ips = [str(ipaddress.ip_address(ip)) for ip in node_ips]
        self.bridge = bridge
        self.mtu = mtu
        self.netns = netns
        self.table = table
        self.nft = nft or Nft(netns=netns)
        self._own_nft = nft is None
        self._records_dir = self.state_dir / "sandboxes"
        self._records_dir.mkdir(parents=True, exist_ok=True)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="podnet")
        self._node: Rtnl | None = None
        self._locks: dict[str, _Held] = {}
        self._route_task: asyncio.Task[None] | None = None
        self._route_kick = asyncio.Event()
        self._is_setup = False

    # ------------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _node_rtnl(self) -> Rtnl:
        if self._node is None:
            self._node = Rtnl.open(self.netns)
        return self._node

    @contextlib.asynccontextmanager
    async def _sandbox_lock(self, sandbox_id: str) -> AsyncIterator[None]:
        """One add/delete per sandbox at a time; the lock lives only while someone holds or
        waits for it (counted, so it is never dropped under a waiter)."""
        entry = self._locks.get(sandbox_id)
        if entry is None:
            entry = self._locks[sandbox_id] = _Held(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[sandbox_id]

    @property
    def host_ips(self) -> list[str]:
        """The node's addresses, for status.hostIP(s) and the podIP(s) of hostNetwork pods."""
        return list(self.node_ips)

    def host_network_status(self) -> dict[str, Any]:
        """status.podIP(s) for a hostNetwork pod: the node's own addresses."""
        if not self.node_ips:
            return {}
        return {"podIP": self.node_ips[0], "podIPs": [{"ip": ip} for ip in self.node_ips]}

    # ------------------------------------------------------------------ records

    def _record_path(self, sandbox_id: str) -> Path:
        name = sandbox_id if _SAFE_ID.fullmatch(sandbox_id) else hashlib.sha256(sandbox_id.encode()).hexdigest()
        return self._records_dir / f"{name}.json"

    def _load(self, sandbox_id: str) -> _Record | None:
        try:
            return _Record.from_json(self._record_path(sandbox_id).read_bytes())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as e:
            log.error("pod network record of sandbox %s is unreadable: %s", sandbox_id, e)
            return None

    def _save(self, rec: _Record) -> None:
        path = self._record_path(rec.sandbox_id)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(rec.to_json())
        os.replace(tmp, path)

    def _forget(self, sandbox_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(sandbox_id).unlink()

    def _records(self) -> list[_Record]:
        out = []
        for path in sorted(self._records_dir.glob("*.json")):
            try:
                out.append(_Record.from_json(path.read_bytes()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("skipping unreadable pod network record %s: %s", path, e)
        return out

    # ------------------------------------------------------------------ node setup

    async def setup(self) -> None:
        """Make the node ready for pods: forwarding on, the bridge with the gateways, the nft
        table (with the hostPorts of sandboxes that survived a restart). Idempotent."""
        await self._run(self._setup_links)
        await self.nft.run(self._table_script(await self._run(self._records)))
        self._is_setup = True

    def _setup_links(self) -> None:
        versions = {r.version for r in self.ranges}

        def forwarding() -> None:
            if 4 in versions:
                netlink.write_sysctl("net.ipv4.ip_forward", "1")
            if 6 in versions:
                netlink.write_sysctl("net.ipv6.conf.all.forwarding", "1")

        netlink.run_in_netns(self.netns, forwarding)
        node = self._node_rtnl()
        if self.mtu is None:
            self.mtu = self._default_mtu(node)
        br = node.link(self.bridge)
        if br is not None and br.kind != "bridge":
            raise PodNetworkError(f"{self.bridge} exists and is a {br.kind or 'device'}, not a bridge")
        if br is None:
            mac = bytes([0x02]) + hashlib.sha256(f"{self.node_name}/{self.bridge}".encode()).digest()[:5]
            node.add_bridge(self.bridge, mtu=self.mtu, mac=mac)
            br = node.link(self.bridge)
            assert br is not None

        def bridge_sysctls() -> None:
            if 6 in versions:
                netlink.write_sysctl(f"net.ipv6.conf.{self.bridge}.accept_dad", "0")
            if 4 in versions:
                # hostPorts on 127.0.0.1 are DNATed out through the bridge, which the kernel
                # only routes with route_localnet (as portmap sets it); the nft input chain
                # drops what else arrives on the bridge for 127.0.0.0/8 (CVE-2020-8558).
                netlink.write_sysctl(f"net.ipv4.conf.{self.bridge}.route_localnet", "1")

        netlink.run_in_netns(self.netns, bridge_sysctls)
        if not br.up or br.mtu != self.mtu:
            node.set_link(br.index, up=True, mtu=self.mtu)
        want = {r.gateway for r in self.ranges}
        for have in node.addresses(br.index):
            if have not in want and not have.ip.is_link_local:
                log.info("removing %s from %s: no longer a pod CIDR gateway", have, self.bridge)
                node.delete_address(br.index, have)
        for gw in want:
            node.add_address(br.index, gw, nodad=True)

    @staticmethod
    def _default_mtu(node: Rtnl) -> int:
        for version in (4, 6):
            for route in node.routes(version):
                if route.dst.prefixlen == 0 and route.oif:
                    for link in node.links():
                        if link.index == route.oif and link.mtu:
                            return link.mtu
        return DEFAULT_MTU

    def _table_script(self, records: Iterable[_Record]) -> str:
        """The whole table, replaced in one transaction (add+delete so it need not exist)."""
        t, br = self.table, self.bridge
        versions = {r.version for r in self.ranges}
        lines = [f"add table inet {t}", f"delete table inet {t}", f"table inet {t} {{"]
        for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            if v not in versions:
                continue
            nets = ", ".join(str(c) for c in self.cluster_cidrs if c.version == v)
            lines += [f"  set cluster{v} {{ type {addr}; flags interval; elements = {{ {nets} }} }}",
                      f"  map hostport{v} {{ type inet_proto . inet_service : {addr} . inet_service; }}",
                      f"  map hostipport{v} {{ type {addr} . inet_proto . inet_service : "
                      f"{addr} . inet_service; }}",
                      f"  set hosttarget{v} {{ type {addr} . inet_proto . inet_service; }}"]
        lines.append("  chain hostports {")
        for v, ip in ((4, "ip"), (6, "ip6")):
            if v in versions:
                lines += [f"    dnat {ip} to {ip} daddr . meta l4proto . th dport map @hostipport{v}",
                          f"    dnat {ip} to meta l4proto . th dport map @hostport{v}"]
        lines += ["  }",
                  "  chain prerouting {",
                  "    type nat hook prerouting priority dstnat; policy accept;",
                  "    fib daddr type local jump hostports",
                  "  }",
                  "  chain output {",
                  "    type nat hook output priority -100; policy accept;",
                  "    fib daddr type local jump hostports",
                  "  }",
                  "  chain postrouting {",
                  "    type nat hook postrouting priority srcnat; policy accept;"]
        if 4 in versions:
            lines.append(f'    oifname "{br}" ip saddr 127.0.0.0/8 ct status dnat masquerade')
        for r in self.ranges:
            ip, mcast = ("ip", "224.0.0.0/4") if r.version == 4 else ("ip6", "ff00::/8")
            lines.append(f"    {ip} saddr {r.network} {ip} daddr . meta l4proto . th dport @hosttarget{r.version} "
                         "ct status dnat masquerade")
            lines.append(f"    {ip} saddr {r.network} {ip} daddr != @cluster{r.version} "
                         f"{ip} daddr != {mcast} masquerade")
        lines.append("  }")
        if 4 in versions:
            lines += ["  chain input {",
                      "    type filter hook input priority filter; policy accept;",
                      f'    iifname "{br}" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop',
                      "  }"]
        lines.append("}")
        elements = [e for rec in records for e in self._hostport_elements(rec.interfaces, rec.host_ports)]
        lines += [f"add element inet {t} {m} {{ {e} }}" for m, e in elements]
        return "\n".join(lines) + "\n"

    def _hostport_elements(self, interfaces: Sequence[str], host_ports: Sequence[HostPort]
                           ) -> list[tuple[str, str]]:
        """(map, element) pairs DNATing each hostPort to the pod's address of that family."""
        pod = {ipaddress.ip_interface(i).version: str(ipaddress.ip_interface(i).ip) for i in interfaces}
        out = []
        for hp in host_ports:
            proto = _PROTOCOLS.get(hp.protocol.upper())
            if proto is None:
                log.warning("hostPort %s: unsupported protocol %s", hp.host_port, hp.protocol)
                continue
            host_ip = ipaddress.ip_address(hp.host_ip) if hp.host_ip else None
            for v in (4, 6):
                if v not in pod or (host_ip is not None and host_ip.version != v):
                    continue
                target = f"{pod[v]} . {hp.container_port}"
                out.append((f"hosttarget{v}", f"{pod[v]} . {proto} . {hp.container_port}"))
                if host_ip is None or host_ip.is_unspecified:
                    out.append((f"hostport{v}", f"{proto} . {hp.host_port} : {target}"))
                else:
                    out.append((f"hostipport{v}", f"{host_ip} . {proto} . {hp.host_port} : {target}"))
        return out

    # ------------------------------------------------------------------ per sandbox

    async def add(self, sandbox_id: str, netns_path: str, *, namespace: str = "", name: str = "",
                  uid: str = "", host_ports: Sequence[HostPort] = ()) -> PodIPs:
        """Join the sandbox's network namespace to the pod network; its addresses.

        Idempotent: a sandbox already fully set up gets its addresses back untouched; a
        half-made one (a crash mid-add) is redone with the same addresses. On failure
        nothing is left behind (the addresses are freed, the veth removed)."""
        if not self._is_setup:
            raise PodNetworkError("the pod network is not set up (call setup() first)")
        async with self._sandbox_lock(sandbox_id):
            rec, fresh = await self._run(self._add_sync, sandbox_id, netns_path,
                                         dict(namespace=namespace, name=name, uid=uid), list(host_ports))
            if fresh and rec.host_ports:
                try:
                    await self._add_host_ports(rec)
                except BaseException:
                    await self._run(self._delete_sync, sandbox_id)
                    raise
            return rec.pod_ips()

    def _add_sync(self, sandbox_id: str, netns_path: str, meta: dict[str, str],
                  host_ports: list[HostPort]) -> tuple[_Record, bool]:
        self._check_netns(netns_path)
        veth = veth_name(sandbox_id)
        rec = self._load(sandbox_id)
        node = self._node_rtnl()
        has_v6 = any(r.version == 6 for r in self.ranges)

        def pod_prepare() -> None:
            # Set before eth0 exists, so it is born without DAD (its link-local address too).
            if has_v6:
                with contextlib.suppress(OSError):
                    netlink.write_sysctl("net.ipv6.conf.default.accept_dad", "0")

        try:
            pod = Rtnl.open(netns_path, prepare=pod_prepare)
        except OSError as e:
            raise PodNetworkError(f"cannot enter the network namespace {netns_path} of sandbox "
                                  f"{sandbox_id}: {e}") from None
        with pod:
            if rec is not None and rec.netns == netns_path and self._complete(node, pod, rec):
                return rec, False
            redo = rec is not None
            try:
                ifaces = self.ipam.allocate(sandbox_id)
            except IPAMError as e:
                raise PodNetworkError(str(e)) from None
            gateways = {r.version: r.gateway.ip for r in self.ranges}
            rec = _Record(sandbox_id, netns_path, veth, [str(i) for i in ifaces],
                          [str(gateways[i.version]) for i in ifaces if i.version in gateways],
                          list(host_ports), created=time.time(), **meta)
            try:
                # Written before the veth exists: a crash from here on leaves a record that
                # delete() and gc() act on.
                self._save(rec)
                if redo:  # a half-made pair from an earlier try (no record: we made none)
                    node.delete_link(veth)
                    if pod.link(POD_IFNAME) is not None:
                        pod.delete_link(POD_IFNAME)
                br = node.link(self.bridge)
                if br is None:
                    raise PodNetworkError(f"bridge {self.bridge} is missing (setup() not run in this "
                                          "network namespace, or it was deleted)")
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    node.add_veth(veth, POD_IFNAME, peer_netns_fd=fd, mtu=self.mtu or DEFAULT_MTU,
                                  master=br.index)
                finally:
                    os.close(fd)
                host = node.link(veth)
                if host is None:
                    raise PodNetworkError(f"{veth} vanished right after it was made")
                node.set_bridge_port(host.index, hairpin=True)
                eth0 = pod.link(POD_IFNAME)
                if eth0 is None:
                    raise PodNetworkError(f"{POD_IFNAME} did not appear in {netns_path}")
                pod.set_link(eth0.index, up=True)
                lo = pod.link("lo")
                if lo is not None and not lo.up:
                    pod.set_link(lo.index, up=True)
                for iface in ifaces:
                    pod.add_address(eth0.index, iface, nodad=True)
                for iface in ifaces:
                    default = ipaddress.ip_network("0.0.0.0/0" if iface.version == 4 else "::/0")
                    pod.replace_route(default, gateway=gateways[iface.version], oif=eth0.index)
            except BaseException:
                self._delete_sync(sandbox_id)
                raise
        return rec, True

    def _check_netns(self, netns_path: str) -> None:
        try:
            st = os.stat(netns_path)
        except OSError as e:
            raise PodNetworkError(f"network namespace {netns_path}: {e.strerror}") from None
        own = os.stat(self.netns or "/proc/self/ns/net")
        if (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino):
            raise PodNetworkError(f"{netns_path} is the node's own network namespace: a hostNetwork "
                                  "pod needs no pod network")

    def _complete(self, node: Rtnl, pod: Rtnl, rec: _Record) -> bool:
        """Whether an earlier add of this sandbox finished (so a retry need not redo it)."""
        host = node.link(rec.veth)
        br = node.link(self.bridge)
        if host is None or br is None or host.master != br.index or not host.up:
            return False
        eth0 = pod.link(POD_IFNAME)
        if eth0 is None or not eth0.up:
            return False
        have = {str(a) for a in pod.addresses(eth0.index)}
        return all(i in have for i in rec.interfaces)

    async def _add_host_ports(self, rec: _Record) -> None:
        elements = self._hostport_elements(rec.interfaces, rec.host_ports)
        if not elements:
            return
        t = self.table
        try:
            await self.nft.run("".join(f"add element inet {t} {m} {{ {e} }}\n" for m, e in elements))
        except NftError as e:
            if "File exists" not in str(e):
                raise PodNetworkError(f"hostPorts of sandbox {rec.sandbox_id}: {e}") from None
            taken = [hp for hp in rec.host_ports
                     if not await self._elements_free(self._hostport_elements(rec.interfaces, [hp]))]
            ports = ", ".join(f"{hp.host_ip + ':' if hp.host_ip else ''}{hp.host_port}/{hp.protocol}"
                              for hp in taken) or "?"
            raise HostPortConflict(f"hostPort {ports} is already in use on node {self.node_name} by "
                                   "another pod") from None

    async def _elements_free(self, elements: list[tuple[str, str]]) -> bool:
        """True when these hostPort elements could be added (an add+delete probe)."""
        t = self.table
        script = "".join(f"add element inet {t} {m} {{ {e} }}\ndelete element inet {t} {m} {{ {e} }}\n"
                         for m, e in elements)
        try:
            await self.nft.run(script)
        except NftError:
            return False
        return True

    async def _delete_host_ports(self, interfaces: Sequence[str], host_ports: Sequence[HostPort]) -> None:
        # add-then-delete of the exact element: absent is fine, and an element with the
        # same key pointing at another pod fails the add, so someone else's port is kept.
        elements = self._hostport_elements(interfaces, host_ports)
        if not elements or await self._elements_free(elements):
            return
        for el in elements:
            await self._elements_free([el])

    async def delete(self, sandbox_id: str, netns_path: str | None = None) -> None:
        """Remove the sandbox from the pod network: its hostPorts, its veth, its addresses.
        Idempotent, and works without the namespace (it may be gone already) and after a
        restart (the record on disk, or just the sandbox id)."""
        async with self._sandbox_lock(sandbox_id):
            rec = await self._run(self._load, sandbox_id)
            if rec is not None and rec.host_ports:
                with contextlib.suppress(NftError):  # no table (never set up): nothing to remove
                    await self._delete_host_ports(rec.interfaces, rec.host_ports)
            await self._run(self._delete_sync, sandbox_id)

    def _delete_sync(self, sandbox_id: str) -> None:
        # The host end is found by name from the sandbox id alone; deleting it takes the pod's
        # eth0 with it (and if the namespace is gone, the pair went with it).
        self._node_rtnl().delete_link(veth_name(sandbox_id))
        freed = self.ipam.release(sandbox_id)
        self._forget(sandbox_id)
        if freed:
            log.debug("pod network: sandbox %s released %s", sandbox_id, ", ".join(freed))

    async def status(self, sandbox_id: str) -> PodIPs | None:
        """The sandbox's addresses as the network gave them, None if it has none."""
        rec = await self._run(self._load, sandbox_id)
        if rec is not None:
            return rec.pod_ips()
        # Allocated but the record not yet written (a crash in between): addresses only.
        ifaces = await self._run(self.ipam.get, sandbox_id)
        if not ifaces:
            return None
        gws = {r.version: str(r.gateway.ip) for r in self.ranges}
        return PodIPs(sandbox_id, tuple(str(i) for i in ifaces), tuple(gws.get(i.version, "") for i in ifaces),
                      veth_name(sandbox_id))

    async def sandboxes(self) -> list[str]:
        """Every sandbox the network holds something for (record or addresses)."""
        recs = await self._run(self._records)
        allocs = await self._run(self.ipam.allocations)
        return sorted({r.sandbox_id for r in recs} | set(allocs))

    async def gc(self, live: Iterable[str]) -> list[str]:
        """Delete whatever belongs to sandboxes not in `live` (those the runtime still has);
        the sandbox ids cleaned up. Call after a restart, once the runtime is listed."""
        keep = set(live)
        dead = [s for s in await self.sandboxes() if s not in keep]
        for sandbox_id in dead:
            log.info("pod network: cleaning up sandbox %s, which no longer exists", sandbox_id)
            await self.delete(sandbox_id)
        return dead

    # ------------------------------------------------------------------ routes to other nodes

    def desired_routes(self, nodes: Iterable[dict[str, Any]]) -> dict[IPNetwork, IPAddress]:
        """{other node's pod CIDR: its InternalIP of that family} for every node that has both."""
        own = [r.network for r in self.ranges]
        out: dict[IPNetwork, IPAddress] = {}
        for node in nodes:
            meta, spec, st = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
            if meta.get("name") == self.node_name:
                continue
            cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
            ips: list[IPAddress] = []
            for a in st.get("addresses") or []:
                if a.get("type") == "InternalIP":
                    with contextlib.suppress(ValueError):
                        ips.append(ipaddress.ip_address(a.get("address", "")))
            for cidr in cidrs:
                try:
                    net = ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    continue
                gw = next((ip for ip in ips if ip.version == net.version), None)
                if gw is None:
                    log.debug("node %s has no IPv%d InternalIP: no route to %s", meta.get("name"),
                              net.version, net)
                    continue
                if any(net.overlaps(o) for o in own if o.version == net.version):  # type: ignore[arg-type]
                    log.warning("node %s's pod CIDR %s overlaps ours: not routed", meta.get("name"), net)
                    continue
                out[net] = gw
        return out

    async def sync_routes(self, nodes: Iterable[dict[str, Any]]) -> dict[str, str]:
        """Make our routes to other nodes' pod CIDRs match `nodes` (Node objects); returns
        {cidr: error} for routes the kernel refused (e.g. a gateway not on a shared link)."""
        return await self._run(self._sync_routes_sync, self.desired_routes(nodes))

    def _sync_routes_sync(self, desired: dict[IPNetwork, IPAddress]) -> dict[str, str]:
        node = self._node_rtnl()
        existing = {r.dst: r for v in (4, 6) for r in node.routes(v, protocol=RTPROT_KYBERNETES)}
        for dst, route in existing.items():
            if desired.get(dst) != route.gateway:
                node.delete_route(route)
        failed = {}
        for dst, gw in desired.items():
            have = existing.get(dst)
            if have is not None and have.gateway == gw:
                continue
            try:
                node.replace_route(dst, gateway=gw, protocol=RTPROT_KYBERNETES)
            except NetlinkError as e:
                failed[str(dst)] = str(e)
                log.warning("pod network: no route to %s via %s: %s", dst, gw, e)
        return failed

    def watch_nodes(self, informer: Any) -> None:
        """Keep routes in sync with a Node informer (kybernetes.client.informer.Informer):
        a change of any node's podCIDRs or InternalIPs resyncs them all. Stopped by close()."""

        def relevant(n: dict[str, Any]) -> Any:
            spec = n.get("spec") or {}
            return (spec.get("podCIDRs"), spec.get("podCIDR"),
                    [a for a in (n.get("status") or {}).get("addresses") or [] if a.get("type") == "InternalIP"])

        def kick(*_: Any) -> None:
            self._route_kick.set()

        def on_update(old: dict[str, Any], new: dict[str, Any]) -> None:
            if relevant(old) != relevant(new):
                kick()

        informer.add_handler(on_add=kick, on_update=on_update, on_delete=kick)

        async def loop() -> None:
            while True:
                await self._route_kick.wait()
                self._route_kick.clear()
                try:
                    await self.sync_routes(informer.list())
                except Exception:  # noqa: BLE001 - the next node event retries
                    log.exception("pod network: route sync failed")

        if self._route_task is None:
            self._route_task = asyncio.get_running_loop().create_task(loop())
        kick()

    # ------------------------------------------------------------------ lifecycle

    async def teardown(self) -> None:
        """Remove the node-side plumbing (nft table, our routes, the bridge); sandbox state
        on disk is kept. For uninstalling a node and for tests."""
        with contextlib.suppress(NftError):
            await self.nft.run(f"add table inet {self.table}\ndelete table inet {self.table}\n")

        def links() -> None:
            node = self._node_rtnl()
            for v in (4, 6):
                for route in node.routes(v, protocol=RTPROT_KYBERNETES):
                    node.delete_route(route)
            node.delete_link(self.bridge)

        await self._run(links)
        self._is_setup = False

    async def close(self) -> None:
        task, self._route_task = self._route_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._node is not None:
            node, self._node = self._node, None
            await self._run(node.close)
        self._pool.shutdown(wait=False)
        if self._own_nft:
            await self.nft.close()
