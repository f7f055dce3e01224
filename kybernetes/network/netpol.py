"""NetworkPolicy on every node: NetworkPolicies, Pods and Namespaces in, nftables out.

`NetworkPolicyAgent` owns the loop, as `ServiceProxy` does (proxy.py is the model):
informers mark what an event touches dirty, the loop waits a few milliseconds so a burst
is one transaction, recomputes only the dirty parts from the informer caches, and hands
the kernel the difference. Everything programmed is a pure function of the caches, so a
missed event is healed by the next one, and a restart rebuilds the table in one
transaction (the old table enforces until the new one replaces it atomically).

Semantics are upstream's (the Kubernetes NetworkPolicy docs):

* A pod is isolated for ingress (egress) only when some policy in its namespace selects
  it with Ingress (Egress) in its policyTypes. policyTypes defaults to Ingress, plus
  Egress when the policy has egress rules (the API server's defaulting, applied here
  since our API server does not default it).
* What an isolated pod may receive (send) is the union of the rules of every policy
  selecting it; a connection needs the source's egress *and* the destination's ingress to
  allow it. Each side is enforced on the node its pod runs on: egress on the source's
  node, ingress on the destination's; peers are matched cluster-wide (pod IPs of every
  node, from the Pods' status).
* Peers: podSelector (pods of the policy's namespace), namespaceSelector (every pod of
  the matching namespaces; namespaces carry kubernetes.io/metadata.name implicitly),
  both in one peer (those pods in those namespaces), ipBlock (the CIDR minus its except
  blocks). An absent or empty from/to means every source/destination; absent or empty
  ports means every port and protocol.
* Ports: protocol (TCP default, UDP, SCTP), a number (with endPort a range) or a name,
  resolved against the *destination* pod's container ports of that protocol: an ingress
  rule against the isolated pod itself, an egress rule against each destination pod (a
  destination that is not a known pod with that port name matches no named port).
* Replies of allowed connections pass (conntrack established/related, checked first),
  so a DNS answer gets back to an egress-isolated pod whose query was allowed; DNS is not
  otherwise special. Established connections survive a policy change (upstream leaves
  that to the implementation; Calico and Cilium behave the same); new ones see it at once.
* The node's own traffic to its pods (kubelet probes) and pods' traffic to their node
  never pass the forward hook, so they are always allowed, as upstream requires. A pod
  reaching itself (through a Service) is allowed too ("a pod cannot block access to
  itself"). hostNetwork pods are neither subject nor peers; finished pods (Succeeded,
  Failed) are ignored, their IPs may belong to someone else already.
* Service traffic is DNATed by the service proxy in prerouting/output, before this
  table's forward hook: policies see the endpoints' pod IPs, as upstream.
* Denied packets are dropped (a client's connect times out), as most implementations do.

The table, `inet kybernetes-netpol`, one for both families:

    chain forward (hook forward, priority filter)
        ct state established,related accept
        icmpv6 neighbour/router discovery accept       (bridged ND between pods)
        ip saddr . ip daddr @self4 accept             (an isolated pod reaching itself)
        ip saddr vmap @egress4     -> jump e4-<hash>  (local egress-isolated pods)
        ip daddr vmap @ingress4    -> goto i4-<hash>  (local ingress-isolated pods)
        (the same for ip6)

    chain i4-<hash>       one rule per distinct port match of the allowing rules, then drop:
        tcp dport { 80, 8000-8100 } ip saddr @p4-<hash> accept
        ip saddr { 10.0.0.0/8, 172.16.0.0/12 } accept
    chain e4-<hash>       the same with daddr and `return` (so ingress is checked next);
        named ports: ip daddr . meta l4proto . th dport @n4-<hash> return
    set p4-<hash>         the pod IPs some rules' pod peers select, cluster-wide
    set n4-<hash>         ip . proto . port of the destination pods an egress rule with
                          named ports selects, each with its own port number

A pod's chain is named by the hash of its rules, so the pods a set of policies treats
alike (a Deployment's replicas) share one chain, and a peer set is named by its
selectors, so policies that name the same peers share one set. Pod churn therefore edits
set and map elements, not chains: a new pod matching a selector is one `add element` per
set it is in, a new local isolated pod one map element (and, the first time its rules
occur, one chain).

What a new connection costs (replies and later packets stop at the first rule): two map
lookups, then the rules of the isolated pods' chains. Policies that do not select a pod
cost it nothing. The rules of all the policies that select it are merged by port match
(one set of their peers' union per port match), and each rule tests its port before its
set, so a pod selected by many policies pays a compare per distinct port match and one
set lookup. bench/netpol.py measures 100 and 1000 policies against none.

Same-node pod-to-pod traffic is bridged on `kyb0`, so it only meets the forward hook with
br_netfilter: the agent sets net.bridge.bridge-nf-call-ip{,6}tables=1 in its namespace
(the per-namespace default is already 1 where the module is loaded), as kubeadm requires.

Limits: a pod is unprotected until its IP is in its status (the kubelet reports it right
after the sandbox's network is made); upstream documents the same window for new pods
and new policies. A flow that was allowed stays allowed while conntrack remembers it,
also after a policy denies it (a UDP stream that never pauses, in particular). Invalid
selectors (which our API server's validation would normally refuse) select nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from kybernetes.api.selectors import (
    EVERYTHING,
    NOTHING,
    InvalidSelector,
    LabelSelector,
    from_label_selector_object,
)
from kybernetes.client import Client, Informer
from kybernetes.client.informer import informer_for, meta_namespace_key

from .nftables import Desired, Nft, NftError, ObjKey, Script, nft_available
from .nftables import changes as nft_changes

log = logging.getLogger(__name__)

Obj = dict[str, Any]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
ANY_PORT = (0, 65535)
_NODE_INDEX = "kybernetes.io/netpol-node"


def _pod_node(obj: Obj) -> list[str]:
    node = (obj.get("spec") or {}).get("nodeName")
    return [node] if node else []


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _ipf(family: int) -> str:
    return "ip6" if family == 6 else "ip"


def _addr_type(family: int) -> str:
    return "ipv6_addr" if family == 6 else "ipv4_addr"


@lru_cache(maxsize=1 << 16)
def _parse_ip(ip: str) -> tuple[str, int] | None:
    """(canonical text, family) of an address, or None."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return None
    return str(a), a.version


# ---------------------------------------------------------------------- policies, compiled

@dataclass(frozen=True)
class PodPeer:
    """One peer that selects pods: `namespace` None means any namespace `namespaces` selects."""

    namespace: str | None
    pods: LabelSelector
    namespaces: LabelSelector | None = None

    def matches(self, namespace: str, labels: Mapping[str, str], ns_labels: Mapping[str, str]) -> bool:
        if self.namespace is not None and self.namespace != namespace:
            return False
        if self.namespaces is not None and not self.namespaces.matches(ns_labels):
            return False
        return self.pods.matches(labels)


@dataclass(frozen=True)
class Port:
    """One entry of a rule's ports: `port` None is every port of the protocol, a str a name."""

    protocol: str                # tcp, udp or sctp
    port: int | str | None = None
    end_port: int | None = None


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule: who (peers, cidrs, or everyone) on which ports."""

    peers: tuple[PodPeer, ...] = ()
    cidrs: tuple[str, ...] = ()  # ipBlocks with their excepts cut out, collapsed, both families
    everyone: bool = False       # from/to absent or empty
    ports: tuple[Port, ...] = ()  # empty: every port and protocol


@dataclass(frozen=True)
class Policy:
    key: str
    namespace: str
    selector: LabelSelector
    ingress: tuple[Rule, ...] | None  # None: not an Ingress policy
    egress: tuple[Rule, ...] | None   # None: not an Egress policy

    def rules(self, direction: str) -> tuple[Rule, ...] | None:
        return self.ingress if direction == "ingress" else self.egress


def _selector(sel: Any, where: str) -> LabelSelector:
    if sel is None:
        return EVERYTHING
    try:
        return from_label_selector_object(sel if isinstance(sel, dict) else None, where)
    except InvalidSelector as e:
        log.warning("network policy: invalid selector %s (%s): it selects nothing", where, e)
        return NOTHING


def _subtract(net: IPNetwork, excepts: Iterable[IPNetwork]) -> list[IPNetwork]:
    parts = [net]
    for ex in excepts:
        out: list[IPNetwork] = []
        for p in parts:
            if ex.version != p.version or not p.overlaps(ex):  # type: ignore[arg-type]
                out.append(p)
            elif p.subnet_of(ex):  # type: ignore[arg-type]
                continue
            else:
                out.extend(p.address_exclude(ex))  # type: ignore[arg-type]
        parts = out
    return parts


def _ip_block(block: Any) -> list[IPNetwork]:
    if not isinstance(block, dict):
        return []
    try:
        net = ipaddress.ip_network(str(block.get("cidr")), strict=False)
    except ValueError:
        log.warning("network policy: invalid ipBlock cidr %r", block.get("cidr"))
        return []
    excepts = []
    for e in block.get("except") or []:
        with contextlib.suppress(ValueError):
            excepts.append(ipaddress.ip_network(str(e), strict=False))
    return _subtract(net, excepts)


def _ports(raw: Any) -> tuple[Port, ...] | None:
    """A rule's ports; None when it lists ports but none is usable (it then matches nothing)."""
    if not raw:
        return ()
    out: list[Port] = []
    for p in raw if isinstance(raw, list) else []:
        if not isinstance(p, dict):
            continue
        proto = PROTOCOLS.get(str(p.get("protocol") or "TCP").upper())
        if proto is None:
            continue
        port = p.get("port")
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if port is None or port == "":
            out.append(Port(proto))
        elif isinstance(port, bool):
            continue
        elif isinstance(port, int):
            end = p.get("endPort")
            if not 1 <= port <= 65535:
                continue
            if isinstance(end, int) and not isinstance(end, bool):
                if not port <= end <= 65535:
                    continue  # validation refuses it: match nothing rather than guess
                out.append(Port(proto, port, end if end != port else None))
            else:
                out.append(Port(proto, port))
        elif isinstance(port, str):
            out.append(Port(proto, port))
    return tuple(dict.fromkeys(out)) or None


def _rule(raw: Any, namespace: str, peers_field: str) -> Rule | None:
    if not isinstance(raw, dict):
        return None
    ports = _ports(raw.get("ports"))
    if ports is None:
        return None
    peers_raw = raw.get(peers_field)
    if not peers_raw:
        return Rule(everyone=True, ports=ports)
    peers: list[PodPeer] = []
    nets: list[IPNetwork] = []
    for i, peer in enumerate(peers_raw if isinstance(peers_raw, list) else []):
        if not isinstance(peer, dict):
            continue
        if peer.get("ipBlock") is not None:
            nets.extend(_ip_block(peer["ipBlock"]))
            continue
        ps, nss = peer.get("podSelector"), peer.get("namespaceSelector")
        if ps is None and nss is None:
            continue  # an empty peer is invalid: it selects nothing
        where = f"{peers_field}[{i}]"
        pods = _selector(ps, where + ".podSelector")
        if nss is None:
            peers.append(PodPeer(namespace, pods))
        else:
            peers.append(PodPeer(None, pods, _selector(nss, where + ".namespaceSelector")))
    if not peers and not nets:
        return None
    cidrs: list[str] = []
    for version in (4, 6):
        fam = [n for n in nets if n.version == version]
        cidrs += [str(n) for n in ipaddress.collapse_addresses(fam)]  # type: ignore[type-var]
    return Rule(tuple(sorted(set(peers), key=repr)), tuple(cidrs), False, ports)


def compile_policy(obj: Obj) -> Policy | None:
    """A NetworkPolicy object as the agent uses it; None when it has no namespace."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    if not namespace:
        return None
    spec = obj.get("spec") or {}
    egress_raw = spec.get("egress") or []
    types = [t for t in spec.get("policyTypes") or [] if t in ("Ingress", "Egress")]
    if not spec.get("policyTypes"):
        types = ["Ingress"] + (["Egress"] if egress_raw else [])

    def rules(raw: Any, peers_field: str) -> tuple[Rule, ...]:
        out = [_rule(r, namespace, peers_field) for r in raw] if isinstance(raw, list) else []
        return tuple(r for r in out if r is not None)

    return Policy(
        key=f"{namespace}/{meta.get('name')}", namespace=namespace,
        selector=_selector(spec.get("podSelector"), "spec.podSelector"),
        ingress=rules(spec.get("ingress"), "from") if "Ingress" in types else None,
        egress=rules(egress_raw, "to") if "Egress" in types else None)


# ---------------------------------------------------------------------- pods

@dataclass
class PodInfo:
    """What the agent needs of a pod that is on the pod network."""

    key: str
    namespace: str
    labels: Mapping[str, str]
    node: str | None
    ips: tuple[tuple[str, int], ...]                # (canonical address, family)
    named_ports: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (name, proto) -> port

    def ips_of(self, family: int) -> list[str]:
        return [ip for ip, f in self.ips if f == family]


def pod_info(pod: Obj) -> PodInfo | None:
    """The pod as a subject and peer of policies; None when it is neither: hostNetwork,
    finished, or without an IP yet."""
    spec, status, meta = pod.get("spec") or {}, pod.get("status") or {}, pod.get("metadata") or {}
    if spec.get("hostNetwork") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    raw = [x.get("ip") for x in status.get("podIPs") or [] if isinstance(x, dict)] or [status.get("podIP")]
    ips = tuple(dict.fromkeys(p for p in (_parse_ip(ip) for ip in raw if isinstance(ip, str)) if p))
    if not ips:
        return None
    named: dict[tuple[str, str], int] = {}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for p in (c.get("ports") or []) if isinstance(c, dict) else []:
            if isinstance(p, dict) and p.get("name") and isinstance(p.get("containerPort"), int):
                proto = PROTOCOLS.get(str(p.get("protocol") or "TCP").upper())
                if proto:
                    named.setdefault((p["name"], proto), p["containerPort"])
    return PodInfo(meta_namespace_key(pod), meta.get("namespace") or "", meta.get("labels") or {},
                   spec.get("nodeName"), ips, named)


def _pod_relevant(pod: Obj) -> Any:
    """The parts of a pod the agent reads: an update changing none of them is ignored."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    return ((pod.get("metadata") or {}).get("labels"), spec.get("nodeName"), spec.get("hostNetwork"),
            status.get("phase") in ("Succeeded", "Failed"), status.get("podIPs"), status.get("podIP"),
            [c.get("ports") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
             if isinstance(c, dict)])


def namespace_labels(name: str, ns: Obj | None) -> dict[str, str]:
    """A namespace's labels, with the name label the API server sets on every namespace."""
    labels = dict(((ns or {}).get("metadata") or {}).get("labels") or {})
    labels[NAMESPACE_NAME_LABEL] = name
    return labels


# ---------------------------------------------------------------------- peer sets

@dataclass(frozen=True)
class PeerSet:
    """A named set of one family's pod IPs some rule's pod peers select; with `ports` (named
    ports of an egress rule) its elements are ip . protocol . that pod's port number, and
    `cidrs`/`everyone` also admit pods by address."""

    family: int
    peers: tuple[PodPeer, ...]
    ports: tuple[tuple[str, str], ...] = ()   # (port name, protocol)
    cidrs: tuple[str, ...] = ()
    everyone: bool = False

    @cached_property
    def name(self) -> str:
        kind = "n" if self.ports else "p"
        return f"{kind}{self.family}-{_hash(repr(self))}"

    def definition(self) -> str:
        a = _addr_type(self.family)
        return f"type {a} . inet_proto . inet_service;" if self.ports else f"type {a};"

    @cached_property
    def _nets(self) -> list[IPNetwork]:
        return [n for n in (ipaddress.ip_network(c) for c in self.cidrs) if n.version == self.family]

    def elements(self, pod: PodInfo, ns_labels: Mapping[str, str]) -> list[str]:
        ips = pod.ips_of(self.family)
        if not ips:
            return []
        selected = any(p.matches(pod.namespace, pod.labels, ns_labels) for p in self.peers)
        if not self.ports:
            return ips if selected else []
        out = []
        for ip in ips:
            if self.everyone or selected or any(ipaddress.ip_address(ip) in n for n in self._nets):
                for name, proto in self.ports:
                    port = pod.named_ports.get((name, proto))
                    if port:
                        out.append(f"{ip} . {proto} . {port}")
        return out


# ---------------------------------------------------------------------- rules of a local pod

def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _anon(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def port_match(items: Iterable[tuple[str, int, int]]) -> str:
    """The nft match for (protocol, first, last) port ranges; "" (no match at all) for no
    items, which callers only ask for a rule without ports: every port of every protocol."""
    by: dict[str, list[tuple[int, int]]] = {}
    for proto, lo, hi in items:
        by.setdefault(proto, []).append((lo, hi))
    if not by:
        return ""
    merged = {p: _merge(r) for p, r in sorted(by.items())}

    def rng(r: tuple[int, int]) -> str:
        return str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"

    if all(r == [ANY_PORT] for r in merged.values()):
        return f"meta l4proto {_anon(list(merged))}"
    if len(merged) == 1:
        ((proto, ranges),) = merged.items()
        return f"{proto} dport {_anon([rng(r) for r in ranges])}"
    return "meta l4proto . th dport { " + ", ".join(f"{p} . {rng(r)}" for p, rs in merged.items()
                                                     for r in rs) + " }"


def _resolve(ports: Iterable[Port], pod: PodInfo | None) -> list[tuple[str, int, int]]:
    """Port ranges; named ports against `pod` (None: named ports are left out)."""
    out = []
    for p in ports:
        if p.port is None:
            out.append((p.protocol, *ANY_PORT))
        elif isinstance(p.port, int):
            out.append((p.protocol, p.port, p.end_port or p.port))
        elif pod is not None and (n := pod.named_ports.get((p.port, p.protocol))):
            out.append((p.protocol, n, n))
    return out


def _cidr_match(nets: Iterable[IPNetwork], family: int, addr: str) -> str | None:
    mine = [n for n in nets if n.version == family]
    if not mine:
        return None
    collapsed = [str(n) for n in ipaddress.collapse_addresses(mine)]  # type: ignore[type-var]
    if any(c.endswith("/0") for c in collapsed):
        return ""  # every address of the family: the chain is of that family already
    return f"{_ipf(family)} {addr} {_anon(collapsed)}"


@dataclass
class _Allowed:
    """Whom the rules with one port match allow: their peers' union."""

    everyone: bool = False
    peers: set[PodPeer] = field(default_factory=set)
    nets: list[IPNetwork] = field(default_factory=list)

    def add(self, rule: Rule, family: int) -> None:
        self.everyone = self.everyone or rule.everyone
        self.peers.update(rule.peers)
        self.nets += [n for n in (ipaddress.ip_network(c) for c in rule.cidrs) if n.version == family]


def chain_rules(rules: Iterable[Rule], direction: str, family: int,
                pod: PodInfo) -> tuple[list[str], dict[str, PeerSet]]:
    """The nft rules of `pod`'s chain for `direction` and `family` allowing what `rules`
    allow (without the final drop), and the peer sets they use.

    Rules with the same ports are merged: one lookup in a set of their peers' union
    (and one of their address blocks), so a pod that many policies select with the same
    ports pays one lookup, not one per policy. The port match comes first in each rule: it
    is cheaper than the set lookup and rejects most rules that do not apply."""
    ingress = direction == "ingress"
    verdict = "accept" if ingress else "return"
    addr = "saddr" if ingress else "daddr"
    ipf = _ipf(family)
    by_ports: dict[str, _Allowed] = {}
    by_names: dict[tuple[tuple[str, str], ...], _Allowed] = {}
    for rule in rules:
        if not rule.everyone and not rule.peers and _cidr_match(
                [ipaddress.ip_network(c) for c in rule.cidrs], family, addr) is None:
            continue  # no peer of this family
        # Ingress: named ports are the isolated pod's own; egress: each destination's.
        ranges = _resolve(rule.ports, pod if ingress else None)
        if ranges or not rule.ports:
            by_ports.setdefault(port_match(ranges), _Allowed()).add(rule, family)
        if not ingress:
            named = tuple(sorted({(p.port, p.protocol) for p in rule.ports if isinstance(p.port, str)}))
            if named:
                by_names.setdefault(named, _Allowed()).add(rule, family)  # type: ignore[arg-type]
    lines: list[str] = []
    sets: dict[str, PeerSet] = {}
    for ports, who in by_ports.items():
        if who.everyone:
            lines.append(" ".join(x for x in (ports, verdict) if x))
            continue
        if who.peers:
            s = PeerSet(family, tuple(sorted(who.peers, key=repr)))
            sets[s.name] = s
            lines.append(" ".join(x for x in (ports, f"{ipf} {addr} @{s.name}", verdict) if x))
        m = _cidr_match(who.nets, family, addr)
        if m is not None:
            lines.append(" ".join(x for x in (ports, m, verdict) if x))
    for names, who in by_names.items():
        cidrs = tuple(str(n) for n in ipaddress.collapse_addresses(who.nets))  # type: ignore[type-var]
        s = PeerSet(family, tuple(sorted(who.peers, key=repr)), names, cidrs, who.everyone)
        sets[s.name] = s
        lines.append(f"{ipf} daddr . meta l4proto . th dport @{s.name} {verdict}")
    return lines, sets


def local_pod_objects(pod: PodInfo, policies: Iterable[Policy]) -> tuple[dict[ObjKey, str], dict[str, PeerSet]]:
    """Everything an isolated local pod needs programmed (map elements, its chains), and the
    peer sets those chains use. Nothing for a pod no policy isolates."""
    out: dict[ObjKey, str] = {}
    sets: dict[str, PeerSet] = {}
    selecting = sorted((p for p in policies if p.namespace == pod.namespace and p.selector.matches(pod.labels)),
                       key=lambda p: p.key)
    isolated = False
    for direction in ("ingress", "egress"):
        mine = [p for p in selecting if p.rules(direction) is not None]
        if not mine:
            continue
        ingress = direction == "ingress"
        for family in (4, 6):
            ips = pod.ips_of(family)
            if not ips:
                continue
            lines, used = chain_rules([r for p in mine for r in p.rules(direction) or ()], direction, family, pod)
            if "accept" in lines or "return" in lines:
                continue  # allows everything: as if not isolated in this direction
            isolated = True
            sets.update(used)
            rules = "\n".join([*lines, "drop"])
            chain = f"{'i' if ingress else 'e'}{family}-{_hash(rules)}"
            out[("c", chain, "")] = rules
            for ip in ips:
                out[("e", f"{direction}{family}", ip)] = f"{'goto' if ingress else 'jump'} {chain}"
    if isolated:
        for ip, family in pod.ips:
            out[("e", f"self{family}", f"{ip} . {ip}")] = ""
    return out, sets


# ---------------------------------------------------------------------- nftables

def base_script(table: str) -> Script:
    """Replace the table with its fixed part (one transaction with the rest)."""
    s = Script("inet", table)
    s.add(f"table inet {table} {{ }}")
    s.add(f"delete table inet {table}")
    s.add(f"table inet {table} {{")
    for fam in (4, 6):
        a = _addr_type(fam)
        s.add(f"  map ingress{fam} {{ type {a} : verdict; }}")
        s.add(f"  map egress{fam} {{ type {a} : verdict; }}")
        s.add(f"  set self{fam} {{ type {a} . {a}; }}")
    s.add("  chain forward { type filter hook forward priority filter; policy accept;")
    s.add("    ct state established,related accept")
    # Bridged neighbour discovery between pods passes this hook (br_netfilter); conntrack
    # does not track it, so it would meet the policies as new traffic.
    s.add("    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept")
    for fam in (4, 6):
        ip = _ipf(fam)
        s.add(f"    {ip} saddr . {ip} daddr @self{fam} accept")
    for fam in (4, 6):
        s.add(f"    {_ipf(fam)} saddr vmap @egress{fam}")
    for fam in (4, 6):
        s.add(f"    {_ipf(fam)} daddr vmap @ingress{fam}")
    s.add("  }")
    s.add("}")
    return s


def changes(table: str, kernel: Mapping[ObjKey, str], wanted: Mapping[ObjKey, str | None],
            script: Script | None = None) -> Script:
    """The transaction taking `kernel` to `wanted` in our table (nftables.changes)."""
    return nft_changes(script or Script("inet", table), kernel, wanted)


# ---------------------------------------------------------------------- the agent

class NetworkPolicyAgent:
    """Enforces NetworkPolicies for the pods of one node.

    `node_name` picks the pods enforced here (spec.nodeName); every pod of the cluster is a
    potential peer. `netns` (a path such as /run/netns/NAME) programs another network
    namespace (tests run several nodes on one machine); `table` is the nft table it owns.
    Without nftables (or the right to use it) it logs a warning and enforces nothing
    (`enforcing` is False).
    """

    def __init__(self, client: Client, node_name: str, *, netns: str | None = None,
                 table: str = "kybernetes-netpol", sync_delay: float = 0.005, check_period: float = 30.0,
                 nft: Nft | None = None):
        self.client = client
        self.node_name = node_name
        self.netns = netns
        self.table = table
        self.sync_delay = sync_delay
        self.check_period = check_period
        self._nft_given = nft
        self.nft: Nft | None = None
        self.enforcing = False
        self.policies: Informer | None = None
        self.pods: Informer | None = None
        self.namespaces: Informer | None = None
        self._own_informers: list[Informer] = []
        # What is wanted, by owner: "p|<pod>" a local pod's chains and map elements,
        # "d|<set>" a set's definition, "m|<set>|<pod>" one pod's elements in one set.
        self.desired = Desired()
        self.kernel: dict[ObjKey, str] = {}
        self._compiled: dict[str, Policy] = {}
        self._by_namespace: dict[str, dict[str, Policy]] = {}
        self._infos: dict[str, PodInfo | None] = {}
        self._pod_sets: dict[str, set[str]] = {}       # local pod -> the sets its chains use
        self._set_users: dict[str, set[str]] = {}      # set -> the local pods using it
        self._live_sets: dict[str, PeerSet] = {}       # the sets that exist (have users)
        self._set_members: dict[str, set[str]] = {}    # set -> the pods with elements in it
        self._dirty_policies: set[str] = set()
        self._dirty_pods: set[str] = set()
        self._dirty_namespaces: set[str] = set()
        self._full_needed = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.syncs = 0
        self.full_syncs = 0
        self.last_sync_seconds = 0.0
        self.idle = asyncio.Event()   # set while nothing is dirty and no sync runs

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._nft_given is None and not nft_available():
            log.warning("network policy: nftables is not available; NetworkPolicies are not enforced")
            self.idle.set()
            return
        nft = self._nft_given or Nft(netns=self.netns)
        try:
            # Can this process program nftables at all (CAP_NET_ADMIN, nf_tables in the kernel)?
            await nft.run(f"table inet {self.table} {{ }}\n")
        except (NftError, OSError) as e:
            log.warning("network policy: nftables unusable (%s); NetworkPolicies are not enforced", e)
            if self._nft_given is None:
                await nft.close()
            self.idle.set()
            return
        self.nft = nft
        for name in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"):
            try:
                await nft.sysctl(name, "1")
            except OSError as e:
                log.warning("network policy: cannot set %s (%s): traffic between pods of this node is "
                            "bridged past the policies unless br_netfilter is loaded", name, e)
        self.policies = self._informer("networking.k8s.io/v1", "networkpolicies")
        self.pods = self._informer("v1", "pods")
        self.namespaces = self._informer("v1", "namespaces")
        self.pods.add_index(_NODE_INDEX, _pod_node)
        self.policies.add_handler(self._on_policy, lambda old, new: self._on_policy(new), self._on_policy)
        self.pods.add_handler(self._on_pod, self._on_pod_update, self._on_pod)
        self.namespaces.add_handler(self._on_namespace, self._on_namespace_update, self._on_namespace)
        for inf in (self.policies, self.pods, self.namespaces):
            await inf.start()
        for inf in (self.policies, self.pods, self.namespaces):
            await inf.wait_for_sync()
        self.enforcing = True
        await self._sync()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop syncing; what is programmed stays, so policies hold while a new agent starts."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for inf in self._own_informers:
            await inf.stop()
        self._own_informers.clear()
        if self.nft is not None and self._nft_given is None:
            await self.nft.close()
        self.enforcing = False

    async def cleanup(self) -> None:
        """Remove the table: every pod of this node is unisolated."""
        if self.nft is not None:
            await self.nft.run(f"table inet {self.table} {{ }}\ndelete table inet {self.table}\n")
            self.kernel.clear()
            self._full_needed = True

    async def __aenter__(self) -> NetworkPolicyAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _informer(self, api_version: str, plural: str) -> Informer:
        return informer_for(self.client, self.client.resource(api_version, plural), self._own_informers)

    # ------------------------------------------------------------------ events

    def _kick(self) -> None:
        self.idle.clear()
        self._wake.set()

    def _on_policy(self, obj: Obj) -> None:
        self._dirty_policies.add(meta_namespace_key(obj))
        self._kick()

    def _on_pod(self, obj: Obj) -> None:
        self._dirty_pods.add(meta_namespace_key(obj))
        self._kick()

    def _on_pod_update(self, old: Obj, new: Obj) -> None:
        if _pod_relevant(old) != _pod_relevant(new):
            self._on_pod(new)

    def _on_namespace(self, obj: Obj) -> None:
        self._dirty_namespaces.add((obj.get("metadata") or {}).get("name") or "")
        self._kick()

    def _on_namespace_update(self, old: Obj, new: Obj) -> None:
        if (old.get("metadata") or {}).get("labels") != (new.get("metadata") or {}).get("labels"):
            self._on_namespace(new)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        delay = 0.1
        while True:
            if not (self._dirty_policies or self._dirty_pods or self._dirty_namespaces or self._full_needed):
                self.idle.set()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.check_period or None)
                except TimeoutError:
                    if not await self._intact():
                        log.warning("network policy: table %s vanished; rebuilding", self.table)
                        self._full_needed = True
                    continue
                await asyncio.sleep(self.sync_delay)  # a burst of events is one transaction
            try:
                await self._sync()
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("network policy: sync failed; rebuilding in %.1fs", delay)
                self._full_needed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _intact(self) -> bool:
        """Whether our table is still there (adding a map that exists is a cheap no-op)."""
        assert self.nft is not None
        try:
            await self.nft.run(f"add map inet {self.table} ingress4 {{ type ipv4_addr : verdict; }}\n")
        except (NftError, OSError):
            return False
        return True

    async def rebuild(self) -> None:
        """Recompute everything and replace the table in one transaction."""
        self._full_needed = True
        await self._sync()

    async def _sync(self) -> None:
        async with self._lock:
            await self._sync_locked()

    def _info(self, key: str) -> PodInfo | None:
        if key in self._infos:
            return self._infos[key]
        assert self.pods is not None
        obj = self.pods.get(key)
        info = self._infos[key] = pod_info(obj) if obj is not None else None
        return info

    def _ns_labels(self, name: str) -> dict[str, str]:
        assert self.namespaces is not None
        return namespace_labels(name, self.namespaces.get(name))

    def _local_keys(self, namespace: str | None = None) -> list[str]:
        assert self.pods is not None
        keys = self.pods.index_keys(_NODE_INDEX, self.node_name)
        return keys if namespace is None else [k for k in keys if k.startswith(namespace + "/")]

    async def _sync_locked(self) -> None:
        assert self.nft is not None and self.pods is not None and self.policies is not None
        assert self.namespaces is not None
        start = time.perf_counter()
        full = self._full_needed
        if full:
            self.desired.clear()
            for d in (self._compiled, self._by_namespace, self._infos, self._pod_sets, self._set_users,
                      self._live_sets, self._set_members):
                d.clear()
            self._dirty_policies = set(self.policies.keys())
            self._dirty_pods = set(self.pods.keys())
            self._dirty_namespaces.clear()
            self._full_needed = False
        policies, self._dirty_policies = self._dirty_policies, set()
        pods, self._dirty_pods = self._dirty_pods, set()
        namespaces, self._dirty_namespaces = self._dirty_namespaces, set()
        touched: set[Hashable] = set()
        for key in pods:
            self._infos.pop(key, None)
        # (A pod that is not local gets an empty fragment: cheap, and it clears what a pod
        # that moved or went away had.)
        chain_dirty: set[str] = set(pods)
        member_dirty: set[str] = set(pods)
        fresh: set[str] = set()

        for key in policies:
            old = self._compiled.pop(key, None)
            obj = self.policies.get(key)
            new = compile_policy(obj) if obj is not None else None
            if old is not None:
                self._by_namespace.get(old.namespace, {}).pop(key, None)
            if new is not None:
                self._compiled[key] = new
                self._by_namespace.setdefault(new.namespace, {})[key] = new
            for ns in {p.namespace for p in (old, new) if p is not None}:
                chain_dirty.update(self._local_keys(ns))
        for ns in namespaces:
            member_dirty.update(self._namespace_pod_keys(ns))

        # Local pods: their chains and map elements, and which peer sets they use.
        for key in chain_dirty:
            info = self._info(key)
            if info is not None and info.node == self.node_name:
                frag, sets = local_pod_objects(info, self._by_namespace.get(info.namespace, {}).values())
            else:
                frag, sets = {}, {}
            touched |= self.desired.set("p|" + key, frag)  # type: ignore[arg-type]
            old_sets = self._pod_sets.pop(key, set())
            if sets:
                self._pod_sets[key] = set(sets)
            for name in set(sets) - old_sets:
                self._set_users.setdefault(name, set()).add(key)
                if name not in self._live_sets:
                    touched |= self._create_set(sets[name])
                    fresh.add(name)
            for name in old_sets - set(sets):
                users = self._set_users.get(name)
                if users is not None:
                    users.discard(key)
                    if not users:
                        del self._set_users[name]
                        touched |= self._drop_set(name)

        # Peer sets: each dirty pod's elements in each set.
        if self._live_sets:
            for key in member_dirty:
                info = self._info(key)
                ns_labels = self._ns_labels(info.namespace) if info is not None else {}
                for name, ps in self._live_sets.items():
                    if name in fresh:
                        continue  # _create_set has just looked at every pod
                    members = self._set_members[name]
                    els = ps.elements(info, ns_labels) if info is not None else []
                    if els or key in members:
                        touched |= self.desired.set(f"m|{name}|{key}", {("e", name, e): "" for e in els})
                        if els:
                            members.add(key)
                        else:
                            members.discard(key)

        if full:
            everything = self.desired.everything()
            await self.nft.run(changes(self.table, {}, everything, base_script(self.table)).text())
            self.kernel = everything  # type: ignore[assignment]
            self.full_syncs += 1
        else:
            if not touched:
                return
            wanted = {k: self.desired.value(k) for k in touched}
            script = changes(self.table, self.kernel, wanted)  # type: ignore[arg-type]
            try:
                if script:
                    await self.nft.run(script.text())
            except NftError as e:
                # The kernel does not hold what we think (someone flushed the table):
                # rebuild from scratch rather than guess.
                log.warning("network policy: incremental update failed (%s); rebuilding", e)
                self._full_needed = True
                await self._sync_locked()
                return
            for key, value in wanted.items():
                if value is None:
                    self.kernel.pop(key, None)  # type: ignore[arg-type]
                else:
                    self.kernel[key] = value  # type: ignore[index]
        self.syncs += 1
        self.last_sync_seconds = time.perf_counter() - start

    def _namespace_pod_keys(self, namespace: str) -> list[str]:
        assert self.pods is not None
        return [meta_namespace_key(p) for p in self.pods.list_by_namespace(namespace)]

    def _create_set(self, ps: PeerSet) -> set[Hashable]:
        """A set some chain starts using: its definition and every pod's elements."""
        assert self.pods is not None
        self._live_sets[ps.name] = ps
        members = self._set_members[ps.name] = set()
        touched = self.desired.set("d|" + ps.name, {("s", ps.name, ""): ps.definition()})
        labels: dict[str, dict[str, str]] = {}
        for key in self.pods.keys():
            info = self._info(key)
            if info is None:
                continue
            ns = labels.get(info.namespace)
            if ns is None:
                ns = labels[info.namespace] = self._ns_labels(info.namespace)
            els = ps.elements(info, ns)
            if els:
                members.add(key)
                touched |= self.desired.set(f"m|{ps.name}|{key}", {("e", ps.name, e): "" for e in els})
        return touched

    def _drop_set(self, name: str) -> set[Hashable]:
        self._live_sets.pop(name, None)
        touched = self.desired.set("d|" + name, {})
        for key in self._set_members.pop(name, set()):
            touched |= self.desired.set(f"m|{name}|{key}", {})
        return touched
