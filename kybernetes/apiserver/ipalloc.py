"""Service address allocation: cluster IPs from the service CIDRs, node ports from their range.

This module owns what upstream's service REST storage does around allocation
(pkg/registry/core/service/storage/alloc.go and its strategy), written from its
behaviour:

* the service CIDRs as k3s and kube-apiserver take them: one CIDR, or an
  IPv4,IPv6 pair (either order) for a dual-stack cluster; the first is the
  primary family, the `kubernetes` Service gets its first address;
* one address range per family, as upstream's bitmap ranges: the network
  address (and IPv4's broadcast) is never handed out, an IPv6 range is capped
  at 2^16 addresses, and dynamic picks come from above a small static band
  first, so that the low addresses users pick by hand stay free (KEP-3070);
  node ports likewise (KEP-3668);
* the rules that turn a Service as written into the Service as stored:
  ipFamilyPolicy / ipFamilies defaulting, clusterIP / clusterIPs kept in sync,
  upgrades to and downgrades from dual stack on update (the primary never
  changes), node ports and the health-check node port, the fields a type
  change wipes, and the checks on all of these that need the cluster's
  configuration.

It decides; it keeps no state. Admission (admission.py) says what is in use,
from the watch cache and its in-flight reservations, and serialises writers.
"""

from __future__ import annotations

import copy
import ipaddress
import random
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from ..api import errors
from ..api.errors import FieldError

IPV4, IPV6 = "IPv4", "IPv6"
SINGLE, PREFER, REQUIRE = "SingleStack", "PreferDualStack", "RequireDualStack"
NODE_PORT_RANGE = (30000, 32767)
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
# kube-apiserver refuses service ranges of more than 2^20 addresses.
MAX_CIDR_BITS = 20

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Obj = dict[str, Any]


class AddressTaken(errors.StatusError):
    """A requested address or port is in use, or a range is full: the watch cache may just be behind."""


# ---------------------------------------------------------------------- configuration

def family_of(ip: str) -> str:
    return IPV6 if ipaddress.ip_address(ip).version == 6 else IPV4


def other_family(family: str) -> str:
    return IPV6 if family == IPV4 else IPV4


def net_family(net: Network) -> str:
    return IPV6 if net.version == 6 else IPV4


def parse_cidrs(value: str | Sequence[str], flag: str = "--service-cidr",
                max_bits: int | None = MAX_CIDR_BITS) -> list[Network]:
    """One CIDR or a dual-stack pair, given as "a,b" or a list; ValueError says what is wrong."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else \
        [p.strip() for v in value for p in str(v).split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError(f"{flag}: at least one CIDR is required")
    if len(parts) > 2:
        raise ValueError(f"{flag}: at most two CIDRs (an IPv4,IPv6 pair) may be given, got {len(parts)}")
    nets: list[Network] = []
    for p in parts:
        try:
            net = ipaddress.ip_network(p, strict=False)
        except ValueError as e:
            raise ValueError(f"{flag}: {p!r} is not a valid CIDR: {e}") from None
        if max_bits is not None and net.max_prefixlen - net.prefixlen > max_bits:
            raise ValueError(f"specified {flag} {p} is too large; for {net.max_prefixlen}-bit addresses, "
                             f"the mask must be >= {net.max_prefixlen - max_bits}")
        nets.append(net)
    if len(nets) == 2 and nets[0].version == nets[1].version:
        raise ValueError(f"{flag}: {parts[0]} and {parts[1]} must be of different IP families for dual stack")
    return nets


def kubernetes_service_ip(service_cidr: str | Sequence[str]) -> str:
    """The `kubernetes` Service's address: the first of the primary service CIDR."""
    return str(parse_cidrs(service_cidr)[0].network_address + 1)


def _static_band(size: int, low: int, high: int, step: int) -> int:
    # min(max(low, size/step), high), and none at all for a tiny range, as upstream's allocators.
    if size <= low:
        return 0
    return min(max(low, size // step), high)


class _Band:
    """Integers base..base+size-1 handed out at random, from offset up first, then below it."""

    def __init__(self, base: int, size: int, offset: int):
        self.base, self.size, self.offset = base, max(0, size), min(offset, max(0, size))

    def pick(self, taken: set[int]) -> int | None:
        for lo, hi in ((self.offset, self.size), (0, self.offset)):
            n = hi - lo
            if n <= 0:
                continue
            # Random probes find a free slot fast while the band is sparse; a scan from a random
            # start finishes the job when it is nearly full.
            for _ in range(min(n, 64)):
                v = self.base + lo + random.randrange(n)
                if v not in taken:
                    return v
            start = random.randrange(n)
            for i in range(n):
                v = self.base + lo + (start + i) % n
                if v not in taken:
                    return v
        return None


class IPRange:
    """One family's service addresses."""

    def __init__(self, net: Network):
        self.net = net
        self.family = net_family(net)
        size = net.num_addresses
        if net.version == 6:
            size = min(size, 1 << 16)  # upstream keeps a bitmap of at most this many
        else:
            size -= 1  # the broadcast address
        self.band = _Band(int(net.network_address) + 1, size - 1,
                          _static_band(net.num_addresses, 16, 256, 16))

    def contains(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        if addr.version != self.net.version:
            return False
        off = int(addr) - self.band.base
        return 0 <= off < self.band.size

    def pick(self, used: set[str]) -> str | None:
        cls = ipaddress.IPv6Address if self.net.version == 6 else ipaddress.IPv4Address
        taken = set()
        for ip in used:
            try:
                a = ipaddress.ip_address(ip)
            except ValueError:
                continue
            if a.version == self.net.version:
                taken.add(int(a))
        v = self.band.pick(taken)
        return None if v is None else str(cls(v))


def canonical(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def service_addresses(svc: Obj) -> tuple[frozenset[str], frozenset[int]]:
    """The cluster IPs (canonical) and node ports (health check included) a stored Service holds."""
    spec = svc.get("spec") or {}
    raw = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ips = frozenset(c for ip in raw if isinstance(ip, str) and (c := canonical(ip)))
    ports = {p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, dict)}
    ports.add(spec.get("healthCheckNodePort"))
    return ips, frozenset(p for p in ports if isinstance(p, int) and p > 0)


# ---------------------------------------------------------------------- small predicates

def _type(spec: Obj) -> str:
    return spec.get("type") or "ClusterIP"


def _needs_cluster_ip(spec: Obj) -> bool:
    return _type(spec) != "ExternalName"


def _needs_node_port(spec: Obj) -> bool:
    return _type(spec) in ("NodePort", "LoadBalancer")


def _externally_accessible(spec: Obj) -> bool:
    return _needs_node_port(spec) or (_type(spec) == "ClusterIP" and bool(spec.get("externalIPs")))


def _needs_hc_node_port(spec: Obj) -> bool:
    return _type(spec) == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def _should_allocate_node_ports(spec: Obj) -> bool:
    if _type(spec) == "NodePort":
        return True
    return _type(spec) == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is not False


def _ips(spec: Obj) -> list[str]:
    v = spec.get("clusterIPs")
    return list(v) if isinstance(v, list) else []


def _families(spec: Obj) -> list[str]:
    v = spec.get("ipFamilies")
    return list(v) if isinstance(v, list) else []


def _headless(spec: Obj) -> bool:
    ips = _ips(spec)
    return len(ips) == 1 and ips[0] == "None"


def _ports(spec: Obj) -> list[Obj]:
    return [p for p in spec.get("ports") or [] if isinstance(p, dict)]


def _node_port_set(spec: Obj) -> set[int]:
    return {p["nodePort"] for p in _ports(spec) if p.get("nodePort")}


def _set_cluster_ips(spec: Obj, ips: list[str]) -> None:
    if ips:
        spec["clusterIPs"] = ips
    else:
        spec.pop("clusterIPs", None)


def _go_list(type_name: str, xs: Iterable[Any]) -> str:
    """A list as Go's %#v prints it, as upstream's messages show it."""
    return f"[]{type_name}{{" + ", ".join(orjson.dumps(str(x)).decode() for x in xs) + "}"


def _invalid_list(path: str, type_name: str, xs: Iterable[Any], detail: str) -> FieldError:
    return FieldError("Invalid", path, f"{_go_list(type_name, xs)}: {detail}")


def _strings(xs: Iterable[Any]) -> str:
    return _go_list("string", xs)


# ---------------------------------------------------------------------- the allocator

class ServiceAllocator:
    """Cluster IPs per family and node ports for Services, by upstream's rules."""

    def __init__(self, service_cidr: str | Sequence[str] = DEFAULT_SERVICE_CIDR,
                 node_port_range: tuple[int, int] = NODE_PORT_RANGE):
        self.cidrs = parse_cidrs(service_cidr)
        self.ranges: dict[str, IPRange] = {net_family(n): IPRange(n) for n in self.cidrs}
        self.primary = net_family(self.cidrs[0])
        lo, hi = node_port_range
        self.node_port_range = node_port_range
        self.port_band = _Band(lo, hi - lo + 1, _static_band(hi - lo + 1, 16, 128, 32))

    @property
    def dual_stack(self) -> bool:
        return len(self.ranges) == 2

    def prepare(self, svc: Obj, old: Obj | None, used_ips: set[str], used_ports: set[int]
                ) -> tuple[set[str], set[int]]:
        """Make svc (the Service being written; old: the stored one on update) what is stored.

        used_ips / used_ports: what other Services hold (canonical IPs). Returns what this write
        newly takes; what it gives up is free once the write is seen. Raises an Invalid
        StatusError for bad input, AddressTaken when a wanted address is in use or a range full.
        """
        spec = svc.setdefault("spec", {})
        name = (svc.get("metadata") or {}).get("name") or ""
        if _type(spec) == "LoadBalancer":
            # The default upstream's decoding gives every ingress address (LoadBalancerIPMode, 1.30+).
            for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
                if isinstance(ing, dict) and ing.get("ip") and not ing.get("ipMode"):
                    ing["ipMode"] = "VIP"
        if old is not None and spec == old.get("spec"):
            return set(), set()  # a status or metadata write: nothing to allocate or check
        old_spec = None
        if old is not None:
            old_spec = copy.deepcopy(old.get("spec") or {})
            self._default_on_read(old_spec)
            _patch_allocated_values(spec, old_spec)
        _normalize_cluster_ips(spec, old_spec)
        self._init_ip_families(name, spec, old_spec)
        taken_ips = self._cluster_ips(name, spec, old_spec, used_ips)
        taken_ports = self._node_ports(name, spec, old_spec, used_ports)
        if old_spec is not None:
            _drop_type_dependent_fields(svc, spec, old_spec)
        errs = self._validate(spec, old_spec)
        if errs:
            raise errors.invalid_object("Service", "", name, errs)
        return taken_ips, taken_ports

    # ------------------------------------------------------------ ip families

    def _default_on_read(self, spec: Obj) -> None:
        """Fill the family fields of a Service stored before they existed, as upstream reads one."""
        if not _needs_cluster_ip(spec) or _families(spec):
            return
        if spec.get("clusterIP") and not _ips(spec):
            spec["clusterIPs"] = [spec["clusterIP"]]
        if spec.get("clusterIP") == "None":
            if not spec.get("selector"):
                spec["ipFamilyPolicy"] = REQUIRE
                spec["ipFamilies"] = [self.primary, other_family(self.primary)]
            else:
                spec["ipFamilyPolicy"] = SINGLE
                spec["ipFamilies"] = [self.primary]
            return
        fams = [family_of(ip) for ip in _ips(spec) if canonical(ip)]
        if fams:
            spec["ipFamilies"] = fams
            spec["ipFamilyPolicy"] = SINGLE if len(fams) == 1 else REQUIRE

    def _init_ip_families(self, name: str, spec: Obj, old: Obj | None) -> None:
        if not _needs_cluster_ip(spec) or _matching_prefer_dual_stack(spec, old):
            return
        if spec.get("ipFamilyPolicy") is None:
            # No static default: an update adopts the stored policy, so that a PUT which does
            # not mention it never switches a Service between single and dual stack.
            if old is not None and old.get("ipFamilyPolicy") is not None:
                spec["ipFamilyPolicy"] = old["ipFamilyPolicy"]
            elif spec.get("clusterIP") == "None" and not spec.get("selector"):
                spec["ipFamilyPolicy"] = REQUIRE  # headless without selector: any family's endpoints
            else:
                spec["ipFamilyPolicy"] = SINGLE
        errs = cluster_ip_field_errors(spec)
        if errs:
            raise errors.invalid_object("Service", "", name, errs)
        policy = spec["ipFamilyPolicy"]
        errs = []
        if old is not None:
            if policy == SINGLE:
                # Asking for single stack, fields otherwise unchanged: release the secondary.
                if _ips(spec) == _ips(old) and len(_ips(spec)) > 1:
                    spec["clusterIPs"] = _ips(spec)[:1]
                if _families(spec) == _families(old) and len(_families(spec)) > 1:
                    spec["ipFamilies"] = _families(spec)[:1]
            else:
                if _ips(spec) and len(_ips(spec)) < len(_ips(old)):
                    errs.append(errors.invalid("spec.ipFamilyPolicy", policy,
                                               "must be 'SingleStack' to release the secondary cluster IP"))
                if _families(spec) and len(_families(spec)) < len(_families(old)):
                    errs.append(errors.invalid("spec.ipFamilyPolicy", policy,
                                               "must be 'SingleStack' to release the secondary IP family"))
        if policy == SINGLE:
            if len(_ips(spec)) == 2:
                errs.append(errors.invalid("spec.ipFamilyPolicy", policy, "must be 'RequireDualStack' or "
                                           "'PreferDualStack' when multiple cluster IPs are specified"))
            if len(_families(spec)) == 2:
                errs.append(errors.invalid("spec.ipFamilyPolicy", policy, "must be 'RequireDualStack' or "
                                           "'PreferDualStack' when multiple IP families are specified"))
        families = _families(spec)
        for i, ip in enumerate(_ips(spec)):
            if ip == "None":
                break
            if i >= len(families):
                fam = family_of(ip)
                if fam not in self.ranges:
                    errs.append(_invalid_list(f"spec.clusterIPs[{i}]", "string", _ips(spec),
                                              f"{fam} is not configured on this cluster"))
                else:
                    families.append(fam)
        if families:
            spec["ipFamilies"] = families
        if errs:
            raise errors.invalid_object("Service", "", name, errs)
        if spec.get("clusterIP") == "None" and not spec.get("selector"):
            # Headless without selector takes any families, even on a single-stack cluster:
            # its endpoints are the user's.
            if not families:
                families = [self.primary]
            if len(families) < 2 and policy != SINGLE:
                families.append(other_family(families[0]))
            spec["ipFamilies"] = families
            return
        if policy == REQUIRE and not self.dual_stack:
            errs.append(errors.invalid("spec.ipFamilyPolicy", policy,
                                       "this cluster is not configured for dual-stack services"))
        for i, fam in enumerate(families):
            if fam not in self.ranges:
                errs.append(errors.invalid(f"spec.ipFamilies[{i}]", fam, "not configured on this cluster"))
        if errs:
            raise errors.invalid_object("Service", "", name, errs)
        if not families:
            families = [self.primary]
        if policy != SINGLE and len(families) == 1 and self.dual_stack:
            families.append(other_family(families[0]))
        spec["ipFamilies"] = families

    # ------------------------------------------------------------ cluster IPs

    def _cluster_ips(self, name: str, spec: Obj, old: Obj | None, used: set[str]) -> set[str]:
        if old is None:
            return self._alloc_cluster_ips(name, spec, used)
        if _matching_prefer_dual_stack(spec, old):
            return set()
        if not _needs_cluster_ip(old) and _needs_cluster_ip(spec):
            return self._alloc_cluster_ips(name, spec, used)  # from ExternalName: all new
        if _headless(old) or not _needs_cluster_ip(spec):
            return set()  # headless keeps none; to ExternalName releases all
        families = _families(spec)
        if len(_families(old)) == 1 and len(families) == 2:
            # Upgraded to dual stack: the secondary, as asked or the next free.
            ips = _ips(spec)
            if len(ips) < 2:
                ips.append("")
            got = self._alloc_ips(name, {families[1]: ips[1]}, ips, used)
            ips[1] = got[families[1]]
            _set_cluster_ips(spec, ips)
            return {canonical(got[families[1]]) or got[families[1]]}
        return set()  # unchanged, or downgraded (the secondary is free once written)

    def _alloc_cluster_ips(self, name: str, spec: Obj, used: set[str]) -> set[str]:
        if not _needs_cluster_ip(spec) or _headless(spec):
            return set()
        ips = _ips(spec)
        families = _families(spec)
        while len(ips) < len(families):
            ips.append("")
        got = self._alloc_ips(name, dict(zip(families, ips)), ips, used)
        for i, fam in enumerate(families):
            ips[i] = got[fam]
        _set_cluster_ips(spec, ips)
        if ips:
            spec["clusterIP"] = ips[0]
        return {canonical(ip) or ip for ip in got.values()}

    def _alloc_ips(self, name: str, wanted: dict[str, str], shown: list[str],
                   used: set[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        taken = set(used)
        for fam, ip in wanted.items():
            rng = self.ranges[fam]
            if not ip:
                got = rng.pick(taken)
                if got is None:
                    raise AddressTaken(500, "InternalError", "Internal error occurred: failed to allocate a "
                                       "serviceIP: range is full")
                out[fam] = got
            else:
                # The list as it stands, markers ("") for addresses still to allocate included.
                shown_ips = list(shown)
                if not rng.contains(ip):
                    raise errors.invalid_object("Service", "", name, [_invalid_list(
                        "spec.clusterIPs", "string", shown_ips,
                        f"failed to allocate IP {ip}: provided IP {ip} is not in the valid range")])
                if canonical(ip) in taken:
                    raise AddressTaken(*_invalid_parts(name, [_invalid_list(
                        "spec.clusterIPs", "string", shown_ips,
                        f"failed to allocate IP {ip}: provided IP is already allocated")]))
                out[fam] = ip
            taken.add(canonical(out[fam]) or out[fam])
        return out

    # ------------------------------------------------------------ node ports

    def _node_ports(self, name: str, spec: Obj, old: Obj | None, used: set[int]) -> set[int]:
        taken: set[int] = set()
        if _needs_node_port(spec):
            if old is None:
                self._init_node_ports(name, spec, used, taken)
            else:
                self._update_node_ports(name, spec, old, used, taken)
        needs_hc = _needs_hc_node_port(spec)
        if needs_hc and (old is None or not _needs_hc_node_port(old)):
            want = spec.get("healthCheckNodePort")
            if want:
                if not self._port_free(want, used, taken):
                    raise AddressTaken(*_internal_parts(
                        f"failed to allocate requested HealthCheck NodePort {want}: provided port is "
                        f"already allocated"))
                taken.add(want)
            else:
                spec["healthCheckNodePort"] = self._next_port(used, taken, health_check=True)
        return taken

    def _port_free(self, port: int, used: set[int], taken: set[int]) -> bool:
        return port not in used and port not in taken

    def _in_port_range(self, port: int) -> bool:
        lo, hi = self.node_port_range
        return lo <= port <= hi

    def _next_port(self, used: set[int], taken: set[int], health_check: bool = False) -> int:
        got = self.port_band.pick(used | taken)
        if got is None:
            what = "a HealthCheck NodePort 0" if health_check else "a nodePort"
            raise AddressTaken(*_internal_parts(f"failed to allocate {what}: range is full"))
        taken.add(got)
        return got

    def _claim_port(self, name: str, i: int, port: int, used: set[int], taken: set[int]) -> None:
        if not self._in_port_range(port):
            lo, hi = self.node_port_range
            raise errors.invalid_object("Service", "", name, [errors.invalid(
                f"spec.ports[{i}].nodePort", port,
                f"provided port is not in the valid range. The range of valid ports is {lo}-{hi}")])
        if not self._port_free(port, used, taken):
            raise AddressTaken(*_invalid_parts(name, [errors.invalid(
                f"spec.ports[{i}].nodePort", port, "provided port is already allocated")]))
        taken.add(port)

    def _init_node_ports(self, name: str, spec: Obj, used: set[int], taken: set[int]) -> None:
        allocate = _should_allocate_node_ports(spec)
        ports = _ports(spec)
        by_port: dict[Any, int] = {}  # one node port per service port number, whatever the protocols
        for i, p in enumerate(ports):
            if not p.get("nodePort") and not allocate:
                continue  # an LB without node ports still gets the ones asked for
            have = by_port.get(p.get("port"))
            if not have:
                asked = next((q["nodePort"] for q in ports
                              if q.get("port") == p.get("port") and q.get("nodePort")), None)
                if asked:
                    self._claim_port(name, i, asked, used, taken)
                    p["nodePort"] = asked
                else:
                    p["nodePort"] = self._next_port(used, taken)
                by_port[p.get("port")] = p["nodePort"]
            elif p.get("nodePort") != have:
                if not p.get("nodePort"):
                    p["nodePort"] = have
                else:
                    self._claim_port(name, i, p["nodePort"], used, taken)

    def _update_node_ports(self, name: str, spec: Obj, old: Obj, used: set[int], taken: set[int]) -> None:
        allocate = _should_allocate_node_ports(spec)
        old_ports = _node_port_set(old) if _needs_node_port(old) else set()
        seen: set[tuple[Any, int]] = set()
        for i, p in enumerate(_ports(spec)):
            if not p.get("nodePort") and not allocate:
                continue
            if p.get("nodePort"):
                if p["nodePort"] not in old_ports and p["nodePort"] not in taken:
                    self._claim_port(name, i, p["nodePort"], used, taken)
            else:
                p["nodePort"] = self._next_port(used, taken)
            key = (p.get("protocol") or "TCP", p["nodePort"])
            if key in seen:
                raise errors.invalid_object("Service", "", name, [errors.duplicate(
                    f"spec.ports[{i}].nodePort", p["nodePort"])])
            seen.add(key)

    # ------------------------------------------------------------ checks

    def _validate(self, spec: Obj, old: Obj | None) -> list[FieldError]:
        if not _needs_cluster_ip(spec):
            present = (("clusterIPs", bool(_ips(spec))), ("ipFamilies", bool(_families(spec))),
                       ("ipFamilyPolicy", spec.get("ipFamilyPolicy") is not None))
            return [errors.forbidden(f"spec.{f}", "may not be set for ExternalName services")
                    for f, there in present if there]
        errs = cluster_ip_field_errors(spec)
        if old is not None and _needs_cluster_ip(old):
            errs.extend(_upgrade_downgrade_errors(spec, old))
        return errs


def _invalid_parts(name: str, errs: list[FieldError]) -> tuple[int, str, str, dict[str, Any] | None]:
    e = errors.invalid_object("Service", "", name, errs)
    return e.code, e.reason, e.message, e.details


def _internal_parts(message: str) -> tuple[int, str, str]:
    e = errors.internal(message)
    return e.code, e.reason, e.message


# ---------------------------------------------------------------------- field rules

def cluster_ip_field_errors(spec: Obj) -> list[FieldError]:
    """clusterIP / clusterIPs / ipFamilies / ipFamilyPolicy on their own and against each other."""
    if not _needs_cluster_ip(spec):
        return []
    errs: list[FieldError] = []
    ip, ips = spec.get("clusterIP") or "", _ips(spec)
    if ip:
        if not ips:
            errs.append(errors.required("spec.clusterIPs", ""))
        elif ips[0] != ip:
            errs.append(_invalid_list("spec.clusterIPs", "string", ips, "first value must match `clusterIP`"))
    elif ips:
        errs.append(_invalid_list("spec.clusterIPs", "string", ips,
                                  "must be empty when `clusterIP` is not specified"))
    seen: set[Any] = set()
    for i, fam in enumerate(_families(spec)):
        if fam not in (IPV4, IPV6):
            errs.append(errors.not_supported(f"spec.ipFamilies[{i}]", fam, [IPV4, IPV6]))
        if fam in seen:
            errs.append(errors.duplicate(f"spec.ipFamilies[{i}]", fam))
        seen.add(fam)
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in (PREFER, REQUIRE, SINGLE):
        errs.append(errors.not_supported("spec.ipFamilyPolicy", policy, [PREFER, REQUIRE, SINGLE]))
    bad = False
    for i, c in enumerate(ips):
        if i == 0 and c == "None":
            if len(ips) > 1:
                bad = True
                errs.append(_invalid_list("spec.clusterIPs", "string", ips,
                                          "'None' must be the first and only value"))
            continue
        if not isinstance(c, str) or canonical(c) is None:
            bad = True
            errs.append(errors.invalid(f"spec.clusterIPs[{i}]", c,
                                       "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
    if len(ips) > 2:
        errs.append(_invalid_list("spec.clusterIPs", "string", ips, "may only hold up to 2 values"))
    if bad:
        return errs
    if len(ips) > 1 and len({family_of(c) for c in ips}) != len(ips):
        errs.append(_invalid_list("spec.clusterIPs", "string", ips,
                                  "may specify no more than one IP for each IP family"))
    families = _families(spec)
    if ips and not _headless(spec):
        for i, c in enumerate(ips[:len(families)]):
            if families[i] in (IPV4, IPV6) and family_of(c) != families[i]:
                errs.append(errors.invalid(f"spec.clusterIPs[{i}]", c, f"expected an {families[i]} value as "
                                           f"indicated by `ipFamilies[{i}]`"))
    return errs


def _upgrade_downgrade_errors(spec: Obj, old: Obj) -> list[FieldError]:
    """The primary cluster IP and family never change; the secondary goes only with SingleStack."""
    errs: list[FieldError] = []
    new_h, old_h = _headless(spec), _headless(old)
    ips, old_ips = _ips(spec), _ips(old)
    if not (new_h and old_h):
        if len(old_ips) == len(ips):
            for i, ip in enumerate(old_ips):
                if ip != ips[i]:
                    errs.append(_invalid_list(f"spec.clusterIPs[{i}]", "string", ips,
                                              "may not change once set"))
        elif len(old_ips) > len(ips):
            if not ips:
                errs.append(_invalid_list("spec.clusterIPs[0]", "string", ips,
                                          "primary clusterIP can not be unset"))
            elif old_ips and ips[0] != old_ips[0]:
                errs.append(_invalid_list("spec.clusterIPs[0]", "string", ips, "may not change once set"))
            if len(ips) == 1 and spec.get("ipFamilyPolicy") != SINGLE:
                errs.append(errors.invalid(
                    "spec.ipFamilyPolicy", spec.get("ipFamilyPolicy"),
                    "must be set to 'SingleStack' when releasing the secondary clusterIP"))
        elif old_ips and ips[0] != old_ips[0]:
            errs.append(_invalid_list("spec.clusterIPs[0]", "string", ips, "may not change once set"))
    if new_h != old_h or new_h:
        return errs  # a headless Service may change its families
    fams, old_fams = _families(spec), _families(old)
    if len(old_fams) == len(fams):
        for i, f in enumerate(old_fams):
            if f != fams[i]:
                errs.append(_invalid_list("spec.ipFamilies[0]", "core.IPFamily", fams,
                                          "may not change once set"))
    elif len(old_fams) > len(fams):
        if not ips:
            errs.append(_invalid_list("spec.ipFamilies[0]", "core.IPFamily", fams,
                                      "primary ipFamily can not be unset"))
        if fams and fams[0] != old_fams[0]:
            errs.append(_invalid_list("spec.ipFamilies[0]", "string", ips, "may not change once set"))
        if len(fams) == 1 and spec.get("ipFamilyPolicy") != SINGLE:
            errs.append(errors.invalid("spec.ipFamilyPolicy", spec.get("ipFamilyPolicy"),
                                       "must be set to 'SingleStack' when releasing the secondary ipFamily"))
    elif old_fams and fams and fams[0] != old_fams[0]:
        errs.append(_invalid_list("spec.ipFamilies[0]", "string", ips, "may not change once set"))
    return errs


# ---------------------------------------------------------------------- update preparation

def _matching_prefer_dual_stack(spec: Obj, old: Obj | None) -> bool:
    """A PreferDualStack Service whose address fields did not change: never up- or downgraded
    behind its back when the cluster gains or loses a family."""
    if old is None or spec.get("ipFamilyPolicy") is None or _type(old) != _type(spec):
        return False
    if _type(spec) not in ("ClusterIP", "NodePort", "LoadBalancer"):
        return False
    if spec.get("ipFamilyPolicy") != PREFER or old.get("ipFamilyPolicy") not in (None, PREFER):
        return False
    return _ips(spec) == _ips(old) and _families(spec) == _families(old)


def _patch_allocated_values(spec: Obj, old: Obj) -> None:
    """What an update leaves out that the server allocated is kept, so resubmitting a manifest works."""
    if _needs_cluster_ip(old) and _needs_cluster_ip(spec):
        if not spec.get("clusterIP") and old.get("clusterIP"):
            spec["clusterIP"] = old["clusterIP"]
        if not _ips(spec) and _ips(old):
            spec["clusterIPs"] = list(_ips(old))
    if _needs_node_port(old) and _needs_node_port(spec):
        in_both = _node_port_set(old) & _node_port_set(spec)
        by_name = {p.get("name") or "": p.get("nodePort") for p in _ports(old)}
        for p in _ports(spec):
            if not p.get("nodePort"):
                v = by_name.get(p.get("name") or "")
                if v and v not in in_both:
                    p["nodePort"] = v
    if _needs_hc_node_port(old) and _needs_hc_node_port(spec) and not spec.get("healthCheckNodePort"):
        if old.get("healthCheckNodePort"):
            spec["healthCheckNodePort"] = old["healthCheckNodePort"]


def _normalize_cluster_ips(spec: Obj, old: Obj | None) -> None:
    """Keep clusterIP and clusterIPs in step for clients that only know the singular field."""
    ip = spec.get("clusterIP") or ""
    if old is None:
        if ip and not _ips(spec):
            spec["clusterIPs"] = [ip]
        return
    old_ip = old.get("clusterIP") or ""
    if _ips(old) and not _ips(spec) and old_ip == ip:
        spec["clusterIPs"] = list(_ips(old))
    if old_ip != ip:
        same_plural = _ips(old) == _ips(spec)
        if old_ip and not ip:
            if same_plural:
                spec.pop("clusterIPs", None)
        elif same_plural:
            spec["clusterIPs"] = [ip]


def _drop_type_dependent_fields(svc: Obj, spec: Obj, old: Obj) -> None:
    """A type change wipes what the old type used, when the writer left it as it was."""
    if _needs_cluster_ip(old) and not _needs_cluster_ip(spec):
        if (old.get("clusterIP") or "") == (spec.get("clusterIP") or "") and _ips(old) == _ips(spec):
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        if _families(old) == _families(spec):
            spec.pop("ipFamilies", None)
        if old.get("ipFamilyPolicy") == spec.get("ipFamilyPolicy"):
            spec.pop("ipFamilyPolicy", None)
    if _needs_node_port(old) and not _needs_node_port(spec) and _node_port_set(spec) <= _node_port_set(old):
        for p in _ports(spec):
            p.pop("nodePort", None)
    if _needs_hc_node_port(old) and not _needs_hc_node_port(spec) and \
            old.get("healthCheckNodePort") == spec.get("healthCheckNodePort"):
        spec.pop("healthCheckNodePort", None)
    if _type(old) == "LoadBalancer" and _type(spec) != "LoadBalancer":
        for f in ("allocateLoadBalancerNodePorts", "loadBalancerClass"):
            if f in spec and spec.get(f) == old.get(f):
                spec.pop(f)
    if _externally_accessible(old) and not _externally_accessible(spec) and \
            spec.get("externalTrafficPolicy") == old.get("externalTrafficPolicy"):
        spec.pop("externalTrafficPolicy", None)
    if _type(spec) != "LoadBalancer":
        # Not a load balancer any more: its addresses go at once, however long deprovisioning takes.
        status = svc.get("status")
        if isinstance(status, dict) and status.get("loadBalancer"):
            status["loadBalancer"] = {}
