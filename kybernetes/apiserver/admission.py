"""Built-in admission: what the server decides about an object beyond its own validity.

NamespaceLifecycle (content needs an existing, non-terminating namespace;
the boot namespaces cannot be deleted) and the Service allocators (a cluster
IP from the service CIDR, node ports from 30000-32767) live here. Each step
reads cluster state from the watch cache, never from another component.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random

import orjson

from ..api import errors
from ..api.kinds import Kind
from .watchcache import WatchCache

IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
NODE_PORT_RANGE = (30000, 32767)


class Admission:
    def __init__(self, cache: WatchCache, service_cidr: str = "10.96.0.0/12"):
        self.cache = cache
        self.service_net = ipaddress.ip_network(service_cidr)
        self._lock = asyncio.Lock()
        # Allocated in this process but perhaps not yet seen by the cache.
        self._recent_ips: set[str] = set()
        self._recent_ports: set[int] = set()

    def _namespace(self, name: str) -> dict | None:
        e = self.cache.cache("/registry/namespaces/").objects.get("/registry/namespaces/" + name)
        return orjson.loads(e.raw) if e else None

    async def admit_create(self, kind: Kind, obj: dict, user: str) -> None:
        meta = obj["metadata"]
        if kind.namespaced:
            ns = meta.get("namespace") or ""
            nsobj = self._namespace(ns)
            if nsobj is None:
                await self.cache.fresh()
                nsobj = self._namespace(ns)
            if nsobj is None:
                raise errors.not_found("namespaces", "", ns)
            if (nsobj.get("metadata") or {}).get("deletionTimestamp") and kind.kind != "Event":
                raise errors.forbidden_error(
                    f"{kind.plural}{'.' + kind.group if kind.group else ''} \"{meta.get('name', '')}\" is "
                    f"forbidden: unable to create new content in namespace {ns} because it is being terminated")
        if kind.kind == "Service" and not kind.group:
            await self._allocate_service(obj, None)

    async def admit_update(self, kind: Kind, new: dict, old: dict, user: str) -> None:
        if kind.kind == "Service" and not kind.group:
            await self._allocate_service(new, old)

    async def admit_delete(self, kind: Kind, obj: dict, user: str) -> None:
        if kind.kind == "Namespace" and not kind.group:
            name = obj["metadata"]["name"]
            if name in IMMORTAL_NAMESPACES:
                raise errors.forbidden_error(f'namespaces "{name}" is forbidden: this namespace may not be '
                                             f'deleted')

    async def after_create(self, kind: Kind, obj: dict) -> None:
        pass

    # ------------------------------------------------------------ services

    def _used(self) -> tuple[set[str], set[int]]:
        ips: set[str] = set(self._recent_ips)
        ports: set[int] = set(self._recent_ports)
        for e in self.cache.cache("/registry/services/").objects.values():
            svc = orjson.loads(e.raw)
            spec = svc.get("spec") or {}
            for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
                ips.add(ip)
            for p in spec.get("ports") or []:
                if p.get("nodePort"):
                    ports.add(p["nodePort"])
        return ips, ports

    async def _allocate_service(self, svc: dict, old: dict | None) -> None:
        spec = svc.setdefault("spec", {})
        typ = spec.get("type", "ClusterIP")
        async with self._lock:
            used_ips, used_ports = self._used()
            old_spec = (old or {}).get("spec") or {}
            if old is not None:
                for ip in old_spec.get("clusterIPs") or []:
                    used_ips.discard(ip)
                for p in old_spec.get("ports") or []:
                    used_ports.discard(p.get("nodePort"))
            if typ == "ExternalName":
                spec.pop("clusterIP", None)
                spec.pop("clusterIPs", None)
            elif old is not None and old_spec.get("clusterIP") and not spec.get("clusterIP"):
                spec["clusterIP"] = old_spec["clusterIP"]
                spec["clusterIPs"] = old_spec.get("clusterIPs") or [old_spec["clusterIP"]]
            elif old is not None and old_spec.get("clusterIP") and spec.get("clusterIP") != old_spec["clusterIP"]:
                raise errors.invalid_object("Service", "", svc["metadata"]["name"], [errors.invalid(
                    "spec.clusterIPs[0]", spec.get("clusterIP"), "may not change once set")])
            elif spec.get("clusterIP") == "None":
                spec["clusterIPs"] = ["None"]
            elif spec.get("clusterIP"):
                ip = spec["clusterIP"]
                try:
                    addr = ipaddress.ip_address(ip)
                except ValueError:
                    raise errors.invalid_object("Service", "", svc["metadata"]["name"], [errors.invalid(
                        "spec.clusterIPs[0]", ip, "must be a valid IP address")]) from None
                if addr not in self.service_net:
                    raise errors.invalid_object("Service", "", svc["metadata"]["name"], [errors.invalid(
                        "spec.clusterIPs[0]", ip, f"provided IP is not in the valid range. The range of valid "
                                                  f"IPs is {self.service_net}")])
                if old is None and ip in used_ips:
                    raise errors.invalid_object("Service", "", svc["metadata"]["name"], [errors.invalid(
                        "spec.clusterIPs[0]", ip, "provided IP is already allocated")])
                spec["clusterIPs"] = [ip]
                self._recent_ips.add(ip)
            else:
                ip = self._free_ip(used_ips)
                spec["clusterIP"] = ip
                spec["clusterIPs"] = [ip]
                self._recent_ips.add(ip)
            if typ != "ExternalName" and spec.get("clusterIP") != "None":
                spec.setdefault("ipFamilies", ["IPv6" if ":" in spec["clusterIP"] else "IPv4"])
                spec.setdefault("ipFamilyPolicy", "SingleStack")
            if typ in ("NodePort", "LoadBalancer"):
                old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                             for p in old_spec.get("ports") or []}
                for p in spec.get("ports") or []:
                    if not p.get("nodePort"):
                        keep = old_ports.get((p.get("port"), p.get("protocol", "TCP")))
                        p["nodePort"] = keep or self._free_port(used_ports)
                    elif old is None and p["nodePort"] in used_ports:
                        raise errors.invalid_object("Service", "", svc["metadata"]["name"], [errors.invalid(
                            "spec.ports[0].nodePort", p["nodePort"], "provided port is already allocated")])
                    used_ports.add(p["nodePort"])
                    self._recent_ports.add(p["nodePort"])
            else:
                for p in spec.get("ports") or []:
                    p.pop("nodePort", None)
        if typ == "LoadBalancer":
            svc.setdefault("status", {}).setdefault("loadBalancer", {})

    def _free_ip(self, used: set[str]) -> str:
        net = self.service_net
        size = net.num_addresses
        # The first address of the range is reserved for the "kubernetes" service.
        for _ in range(2000):
            off = random.randrange(2, max(3, size - 1))
            ip = str(net.network_address + off)
            if ip not in used:
                return ip
        for off in range(2, size - 1):
            ip = str(net.network_address + off)
            if ip not in used:
                return ip
        raise errors.StatusError(500, "InternalError", "Internal error occurred: failed to allocate a serviceIP: "
                                 "range is full")

    def _free_port(self, used: set[int]) -> int:
        lo, hi = NODE_PORT_RANGE
        for _ in range(2000):
            p = random.randint(lo, hi)
            if p not in used:
                return p
        for p in range(lo, hi + 1):
            if p not in used:
                return p
        raise errors.StatusError(500, "InternalError", "Internal error occurred: failed to allocate a nodePort: "
                                 "range is full")


def kubernetes_service_ip(service_cidr: str) -> str:
    return str(ipaddress.ip_network(service_cidr).network_address + 1)


