"""The cluster DNS zone as data: which records a Service and its endpoints make, and how a
question about a name in the zone is answered.

It follows the Kubernetes DNS-Based Service Discovery specification, schema 1.1.0
(kubernetes/dns docs/specification.md):

* `<svc>.<ns>.svc.<zone>` A/AAAA with the Service's ClusterIPs, one per family;
  PTR for each ClusterIP back to that name; SRV `_<port>._<proto>.<svc>...` for
  each named port, pointing at the Service name.
* Headless Services (clusterIP None): A/AAAA for every ready endpoint address
  (all of them with publishNotReadyAddresses or the old tolerate-unready
  annotation), `<hostname>.<svc>.<ns>.svc.<zone>` per endpoint, where the hostname
  is the endpoint's `hostname` (StatefulSet pods: `web-0`) or else the address
  with dashes (`10-42-0-5`, `fd00--5`, as CoreDNS does); SRV per endpoint and named
  port of its slice, with the slice's (target) port; PTR per endpoint address.
  No ready endpoints means no records at all: NXDOMAIN, as the spec asks.
* ExternalName Services: a CNAME to the external name (and SRV for named ports).
* `dns-version.<zone>` TXT, the apex SOA and NS (`ns.dns.<zone>`, with A/AAAA from
  the kube-dns Service's ClusterIPs, as CoreDNS serves them).
* Pod records `<a-b-c-d>.<ns>.pod.<zone>` are answered from the name itself, like
  CoreDNS's `pods insecure` (k3s's default): no pod informer, no check that a pod
  has that address.

`service_records` is a pure function of one Service and its EndpointSlices.
`Zone` merges every Service's records (several may own the same reverse name),
keeps which names exist (empty non-terminals such as `default.svc.<zone>` are
NOERROR/NODATA, not NXDOMAIN), and resolves a question to rrsets. It knows
nothing of sockets, caches or the API; ClusterDNS (dns.py) feeds and serves it.
Names are dnspython Names, lowercased on the way in; comparisons are case-insensitive.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

Obj = dict[str, Any]
Name = dns.name.Name
Rdata = dns.rdata.Rdata
# owner name -> rdtype -> rdatas
Records = dict[Name, dict[int, set[Rdata]]]

SCHEMA_VERSION = "1.1.0"
IN = dns.rdataclass.IN
TOLERATE_UNREADY = "service.alpha.kubernetes.io/tolerate-unready-endpoints"
REVERSE_ZONES = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))
# CNAME chains inside the zone longer than this are a loop (ExternalName services
# pointing at each other).
MAX_CNAME_CHAIN = 8

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(value: Any) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _addr_rdata(ip: IPAddress) -> Rdata:
    if ip.version == 4:
        return A(IN, dns.rdatatype.A, str(ip))
    return AAAA(IN, dns.rdatatype.AAAA, str(ip))


def _sub(labels: Iterable[str], parent: Name) -> Name | None:
    """parent with `labels` prepended, or None when they don't make a legal name."""
    try:
        return Name([lab.lower().encode() for lab in labels] + list(parent.labels))
    except (dns.exception.DNSException, UnicodeError):
        return None


def ip_label(ip: IPAddress) -> str:
    """The system-assigned endpoint hostname: the address with dashes, as CoreDNS makes it."""
    return str(ip).replace(".", "-").replace(":", "-")


def _is_label(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 63 and "." not in value


def service_records(svc: Obj, slices: Iterable[Obj], origin: Name) -> Records:
    """Every record one Service contributes to the zone `origin`, given its EndpointSlices."""
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    name, ns = meta.get("name"), meta.get("namespace")
    out: Records = {}
    if not (_is_label(name) and _is_label(ns)):
        return out
    svc_name = _sub((name, ns, "svc"), origin)
    if svc_name is None:
        return out

    def add(owner: Name, rdata: Rdata) -> None:
        out.setdefault(owner, {}).setdefault(rdata.rdtype, set()).add(rdata)

    def srv_owner(port_name: str, protocol: str) -> Name | None:
        return _sub((f"_{port_name}", f"_{protocol.lower()}"), svc_name)

    if spec.get("type") == "ExternalName":
        try:
            target = dns.name.from_text(str(spec.get("externalName") or ""))
        except dns.exception.DNSException:
            return out
        if len(target.labels) <= 1:
            return out
        add(svc_name, CNAME(IN, dns.rdatatype.CNAME, target))
        for p in spec.get("ports") or []:
            owner = srv_owner(p.get("name") or "", p.get("protocol") or "TCP") if p.get("name") else None
            if owner is not None and isinstance(p.get("port"), int):
                add(owner, SRV(IN, dns.rdatatype.SRV, 0, 100, p["port"], target))
        return out

    cluster_ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip]
    if not cluster_ips:
        return out  # not allocated yet
    if "None" not in cluster_ips:
        ips = [ip for ip in map(_ip, cluster_ips) if ip is not None]
        for ip in ips:
            add(svc_name, _addr_rdata(ip))
            add(dns.reversename.from_address(str(ip)), PTR(IN, dns.rdatatype.PTR, svc_name))
        if ips:
            for p in spec.get("ports") or []:
                owner = srv_owner(p.get("name") or "", p.get("protocol") or "TCP") if p.get("name") else None
                if owner is not None and isinstance(p.get("port"), int):
                    add(owner, SRV(IN, dns.rdatatype.SRV, 0, 100, p["port"], svc_name))
        return out

    # Headless: the records come from the endpoints.
    publish_all = bool(spec.get("publishNotReadyAddresses")) or \
        (meta.get("annotations") or {}).get(TOLERATE_UNREADY) == "true"
    srv: dict[Name, set[tuple[int, Name]]] = {}
    for sl in slices:
        if sl.get("addressType") not in ("IPv4", "IPv6"):
            continue  # FQDN slices have no addresses to serve
        ports = [(p["name"], p.get("protocol") or "TCP", p["port"]) for p in sl.get("ports") or []
                 if p.get("name") and isinstance(p.get("port"), int)]
        for ep in sl.get("endpoints") or []:
            # A nil ready condition means ready (EndpointSlice API).
            if (ep.get("conditions") or {}).get("ready") is False and not publish_all:
                continue
            for raw in ep.get("addresses") or []:
                ip = _ip(raw)
                if ip is None:
                    continue
                hostname = ep.get("hostname")
                host = _sub((hostname if _is_label(hostname) else ip_label(ip),), svc_name)
                if host is None:
                    continue
                rdata = _addr_rdata(ip)
                add(svc_name, rdata)
                add(host, rdata)
                add(dns.reversename.from_address(str(ip)), PTR(IN, dns.rdatatype.PTR, host))
                for port_name, proto, port in ports:
                    owner = srv_owner(port_name, proto)
                    if owner is not None:
                        srv.setdefault(owner, set()).add((port, host))
    for owner, targets in srv.items():
        # Equal shares, as CoreDNS weighs the endpoints of one service.
        weight = max(1, 100 // len(targets))
        for port, host in targets:
            add(owner, SRV(IN, dns.rdatatype.SRV, 0, weight, port, host))
    return out


def slices_from_endpoints(ep: Obj) -> list[Obj]:
    """core/v1 Endpoints seen as EndpointSlices, for servers without discovery.k8s.io/v1."""
    out: list[Obj] = []
    for subset in ep.get("subsets") or []:
        ports = [{"name": p.get("name"), "port": p.get("port"), "protocol": p.get("protocol") or "TCP"}
                 for p in subset.get("ports") or []]
        by_family: dict[str, list[Obj]] = {}
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in subset.get(key) or []:
                ip = _ip(a.get("ip"))
                if ip is None:
                    continue
                e: Obj = {"addresses": [str(ip)], "conditions": {"ready": ready}}
                if a.get("hostname"):
                    e["hostname"] = a["hostname"]
                by_family.setdefault("IPv4" if ip.version == 4 else "IPv6", []).append(e)
        for family, endpoints in by_family.items():
            out.append({"addressType": family, "endpoints": endpoints, "ports": ports})
    return out


@dataclass
class Answer:
    """What the zone says about one question. forward: not ours, ask the upstreams.
    chase: the answer ends in a CNAME to this name outside the zone, to be resolved upstream.
    volatile: the answer borrowed another name's records (an in-zone CNAME target),
    so a cache must not keep it past the TTL."""

    rcode: int = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    forward: bool = False
    chase: Name | None = None
    volatile: bool = False


FORWARD = Answer(forward=True)


class Zone:
    """The merged records of every source (one per Service) plus the zone's own, and lookups."""

    def __init__(self, domain: str = "cluster.local", ttl: int = 5, serial: int | None = None):
        self.origin = dns.name.from_text(domain).canonicalize()
        self.ttl = ttl
        self._svc = _sub(("svc",), self.origin)
        self._pod = _sub(("pod",), self.origin)
        self.ns_name = _sub(("ns", "dns"), self.origin)
        assert self._svc is not None and self._pod is not None and self.ns_name is not None
        # rdata -> how many sources contribute it (two headless Services selecting
        # one pod both make its PTR: it stays until neither does).
        self._owners: dict[Name, dict[int, dict[Rdata, int]]] = {}
        # Names in the zone at or above an owner name -> count of owners at or below:
        # a name exists (NODATA rather than NXDOMAIN) while it is in here.
        self._below: dict[Name, int] = {self._svc: 1, self._pod: 1}
        self._sources: dict[str, Records] = {}
        # The serial only matters for zone transfers, which are not offered; a fixed
        # one keeps cached negative answers valid across record changes.
        self.serial = int(time.time()) & 0xFFFFFFFF if serial is None else serial
        hostmaster = _sub(("hostmaster",), self.origin)
        assert hostmaster is not None
        self._soa = dns.rrset.from_rdata(self.origin, ttl, SOA(
            IN, dns.rdatatype.SOA, self.ns_name, hostmaster, self.serial, 7200, 1800, 86400, ttl))
        version = _sub(("dns-version",), self.origin)
        assert version is not None
        self.set_source("", {
            self.origin: {dns.rdatatype.SOA: set(self._soa), dns.rdatatype.NS: {NS(IN, dns.rdatatype.NS,
                                                                                     self.ns_name)}},
            version: {dns.rdatatype.TXT: {TXT(IN, dns.rdatatype.TXT, [SCHEMA_VERSION.encode()])}},
        })

    # ------------------------------------------------------------------ feeding

    def set_source(self, key: str, records: Records) -> set[Name]:
        """Replace what source `key` contributes; returns every owner name it had or has now."""
        old = self._sources.pop(key, {})
        if records:
            self._sources[key] = records
        for owner, by_type in old.items():
            for rdtype, rdatas in by_type.items():
                for rd in rdatas:
                    self._unref(owner, rdtype, rd)
        for owner, by_type in records.items():
            for rdtype, rdatas in by_type.items():
                for rd in rdatas:
                    self._ref(owner, rdtype, rd)
        return set(old) | set(records)

    def sources(self) -> list[str]:
        return [k for k in self._sources if k]

    def _ref(self, owner: Name, rdtype: int, rd: Rdata) -> None:
        by_type = self._owners.get(owner)
        if by_type is None:
            by_type = self._owners[owner] = {}
            self._mark(owner, 1)
        counts = by_type.setdefault(rdtype, {})
        counts[rd] = counts.get(rd, 0) + 1

    def _unref(self, owner: Name, rdtype: int, rd: Rdata) -> None:
        by_type = self._owners[owner]
        counts = by_type[rdtype]
        if counts[rd] > 1:
            counts[rd] -= 1
            return
        del counts[rd]
        if not counts:
            del by_type[rdtype]
            if not by_type:
                del self._owners[owner]
                self._mark(owner, -1)

    def _mark(self, owner: Name, delta: int) -> None:
        if not owner.is_subdomain(self.origin):
            return  # reverse names: only exact PTR answers, never NODATA
        n = owner
        while True:
            count = self._below.get(n, 0) + delta
            if count:
                self._below[n] = count
            else:
                self._below.pop(n, None)
            if n == self.origin:
                break
            n = n.parent()

    # ------------------------------------------------------------------ reading

    def in_zone(self, name: Name) -> bool:
        return name.is_subdomain(self.origin)

    def exists(self, name: Name) -> bool:
        return name in self._below or name in self._owners

    def rrset(self, name: Name, rdtype: int) -> dns.rrset.RRset | None:
        counts = (self._owners.get(name) or {}).get(rdtype)
        if not counts:
            return None
        return dns.rrset.from_rdata_list(name, self.ttl, sorted(counts, key=_sort_key))

    def soa(self) -> dns.rrset.RRset:
        return self._soa

    def resolve(self, qname: Name, qtype: int) -> Answer:
        """The answer for (qname, qtype), class IN; qname canonical (lowercase)."""
        if not qname.is_subdomain(self.origin):
            # Reverse lookups we can answer; everything else (including reverse
            # names we do not know) falls through to the upstreams, as CoreDNS's
            # `fallthrough in-addr.arpa ip6.arpa` does.
            if qtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
                ptr = self.rrset(qname, dns.rdatatype.PTR)
                if ptr is not None:
                    return Answer(answer=[ptr])
            return FORWARD
        if qname.is_subdomain(self._pod):
            return self._pod_answer(qname, qtype)
        ans = Answer()
        name = qname
        for _ in range(MAX_CNAME_CHAIN):
            by_type = self._owners.get(name)
            if not by_type:
                if name not in self._below:
                    ans.rcode = dns.rcode.NXDOMAIN
                ans.authority.append(self._soa)
                return ans
            if qtype == dns.rdatatype.ANY:
                ans.answer.extend(r for t in sorted(by_type) if (r := self.rrset(name, t)) is not None)
                return ans
            found = self.rrset(name, qtype)
            if found is not None:
                ans.answer.append(found)
                self._add_additional(ans, found)
                return ans
            cname = self.rrset(name, dns.rdatatype.CNAME)
            if cname is None:
                ans.authority.append(self._soa)  # NODATA
                return ans
            ans.answer.append(cname)
            target = cname[0].target.canonicalize()
            if not target.is_subdomain(self.origin):
                ans.chase = target
                return ans
            ans.volatile = True
            name = target
        ans.rcode = dns.rcode.SERVFAIL  # a CNAME loop
        ans.answer.clear()
        return ans

    def _add_additional(self, ans: Answer, rrset: dns.rrset.RRset) -> None:
        if rrset.rdtype == dns.rdatatype.SRV:
            targets = [rd.target for rd in rrset]
        elif rrset.rdtype == dns.rdatatype.NS:
            targets = [rd.target for rd in rrset]
        else:
            return
        seen: set[Name] = set()
        for t in targets:
            if t in seen:
                continue
            seen.add(t)
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                r = self.rrset(t, rdtype)
                if r is not None:
                    ans.additional.append(r)

    def _pod_answer(self, qname: Name, qtype: int) -> Answer:
        assert self._pod is not None
        rel = qname.relativize(self._pod).labels  # (ip-label, ns) or shorter
        if len(rel) < 2:
            return Answer(authority=[self._soa])  # pod.<zone> and <ns>.pod.<zone> exist, empty
        if len(rel) > 2:
            return Answer(rcode=dns.rcode.NXDOMAIN, authority=[self._soa])
        label = rel[0].decode(errors="replace")
        ip = _ip(label.replace("-", ".")) if label.count("-") == 3 else None
        if ip is None:
            ip = _ip(label.replace("-", ":"))
        if ip is None:
            return Answer(rcode=dns.rcode.NXDOMAIN, authority=[self._soa])
        rdata = _addr_rdata(ip)
        if qtype in (rdata.rdtype, dns.rdatatype.ANY):
            return Answer(answer=[dns.rrset.from_rdata(qname, self.ttl, rdata)])
        return Answer(authority=[self._soa])


def _sort_key(rd: Rdata) -> Any:
    # A stable order for answers (addresses numerically, others by text).
    addr = getattr(rd, "address", None)
    if addr is not None:
        ip = ipaddress.ip_address(addr)
        return (0, ip.version, int(ip), "")
    return (1, 0, 0, rd.to_text())
