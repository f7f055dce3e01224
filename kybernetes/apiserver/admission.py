"""Built-in admission: what the server decides about an object beyond its own validity.

NamespaceLifecycle (content needs an existing, non-terminating namespace;
the boot namespaces cannot be deleted), the Service allocators (a cluster
IP from the service CIDR, node ports from 30000-32767) and ServiceAccount
(a new pod's service account must exist; its API token is mounted) live
here. Each step reads cluster state from the watch cache, never from
another component.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass, field

import orjson

from ..api import errors
from ..api.kinds import Kind
from ..api.storage import ANN_BETA_CLASS, is_default_class
from .watchcache import WatchCache

IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
NODE_PORT_RANGE = (30000, 32767)
SA_TOKEN_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_VOLUME_PREFIX = "kube-api-access-"
# What the kubelet asks for the mounted token: a little over an hour, refreshed well before.
SA_TOKEN_EXPIRATION = 3607


@dataclass(slots=True)
class Reservation:
    """Addresses one in-flight write has taken that the watch cache cannot show yet."""

    ips: set[str] = field(default_factory=set)
    ports: set[int] = field(default_factory=set)


class Admission:
    def __init__(self, cache: WatchCache, service_cidr: str = "10.96.0.0/12", service_accounts: bool = False):
        self.cache = cache
        # The ServiceAccount plugin; off for a bare API server whose namespaces nobody gives a
        # default service account (no controller manager), as upstream's would reject every pod.
        self.service_accounts = service_accounts
        self.service_net = ipaddress.ip_network(service_cidr)
        self._lock = asyncio.Lock()
        # Allocated by writes in flight: not yet in the cache, and released
        # (see release) once the write failed or the cache shows it.
        self._recent_ips: set[str] = set()
        self._recent_ports: set[int] = set()

    def _namespace(self, name: str) -> dict | None:
        e = self.cache.cache("/registry/namespaces/").objects.get("/registry/namespaces/" + name)
        return orjson.loads(e.raw) if e else None

    async def admit_create(self, kind: Kind, obj: dict, user: str) -> Reservation | None:
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
            return await self._allocate_service(obj, None)
        if kind.kind == "PersistentVolumeClaim" and not kind.group:
            self._default_storage_class(obj)
        if kind.kind == "Pod" and not kind.group and self.service_accounts:
            await self._admit_pod_service_account(obj)
        return None

    async def admit_update(self, kind: Kind, new: dict, old: dict, user: str) -> Reservation | None:
        if kind.kind == "Service" and not kind.group:
            return await self._allocate_service(new, old)
        return None

    async def release(self, res: Reservation | None, written_rev: int | None) -> None:
        """End a write's reservation: at once if nothing was written, else once the cache has the object.

        Until then the addresses stay taken, so two racing creates never get
        the same one; afterwards the cache alone says what is in use, so a
        deleted Service's address can be had again.
        """
        if res is None:
            return
        if written_rev:
            await self.cache.wait_for(written_rev, 5.0)
        self._recent_ips -= res.ips
        self._recent_ports -= res.ports

    async def admit_delete(self, kind: Kind, obj: dict, user: str) -> None:
        if kind.kind == "Namespace" and not kind.group:
            name = obj["metadata"]["name"]
            if name in IMMORTAL_NAMESPACES:
                raise errors.forbidden_error(f'namespaces "{name}" is forbidden: this namespace may not be '
                                             f'deleted')

    # ------------------------------------------------------------ storage classes

    def _default_storage_class(self, claim: dict) -> None:
        """DefaultStorageClass: a claim that names no class (none at all, not "") gets the default one."""
        spec = claim.setdefault("spec", {})
        if spec.get("storageClassName") is not None or \
                ANN_BETA_CLASS in (claim["metadata"].get("annotations") or {}):
            return
        defaults = [sc for e in self.cache.cache("/registry/storageclasses/").objects.values()
                    if is_default_class(sc := orjson.loads(e.raw))]
        if defaults:
            # Several defaults: the newest wins, then the first by name, as upstream.
            defaults.sort(key=lambda sc: sc["metadata"].get("name") or "")
            defaults.sort(key=lambda sc: sc["metadata"].get("creationTimestamp") or "", reverse=True)
            spec["storageClassName"] = defaults[0]["metadata"]["name"]

    # ------------------------------------------------------------ service accounts

    def _cached_sa(self, ns: str, name: str) -> dict | None:
        key = f"/registry/serviceaccounts/{ns}/{name}"
        e = self.cache.cache("/registry/serviceaccounts/").objects.get(key)
        return orjson.loads(e.raw) if e else None

    async def _service_account(self, ns: str, name: str) -> dict | None:
        sa = self._cached_sa(ns, name)
        if sa is not None:
            return sa
        await self.cache.fresh()
        sa = self._cached_sa(ns, name)
        # The default account is made by a controller right after its namespace: give it a moment,
        # as upstream's plugin retries its lookup for a second or two before refusing the pod.
        attempts = 10 if name == "default" else 0
        while sa is None and attempts:
            attempts -= 1
            await asyncio.sleep(random.uniform(0.1, 0.2))
            await self.cache.fresh()
            sa = self._cached_sa(ns, name)
        return sa

    async def _admit_pod_service_account(self, pod: dict) -> None:
        meta = pod["metadata"]
        if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
            return  # a mirror shows a static pod the kubelet runs from its manifest: never changed here
        spec = pod.setdefault("spec", {})
        name = spec.get("serviceAccountName") or "default"
        spec["serviceAccountName"] = name
        spec["serviceAccount"] = name
        ns = meta.get("namespace") or ""
        sa = await self._service_account(ns, name)
        if sa is None:
            raise errors.forbidden_error(
                f'pods "{meta.get("name") or meta.get("generateName") or ""}" is forbidden: error looking up '
                f'service account {ns}/{name}: serviceaccount "{name}" not found')
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            automount = sa.get("automountServiceAccountToken")
        if automount is not False:
            _mount_token(spec)
        if not spec.get("imagePullSecrets") and sa.get("imagePullSecrets"):
            spec["imagePullSecrets"] = [{"name": s.get("name", "")} for s in sa["imagePullSecrets"]
                                        if isinstance(s, dict)]

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

    async def _allocate_service(self, svc: dict, old: dict | None) -> Reservation:
        spec = svc.setdefault("spec", {})
        typ = spec.get("type", "ClusterIP")
        res = Reservation()
        async with self._lock:
            used_ips, used_ports = self._used()
            asked_ip = spec.get("clusterIP")
            asked_ports = [p.get("nodePort") for p in spec.get("ports") or [] if isinstance(p, dict)]
            if old is None and (asked_ip not in (None, "", "None") and asked_ip in used_ips
                                or any(p in used_ports for p in asked_ports if p)):
                # A requested address looks taken; the cache may just not have
                # seen the delete that freed it yet.
                await self.cache.fresh()
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
                if ip not in (old_spec.get("clusterIPs") or []):
                    res.ips.add(ip)
            else:
                ip = self._free_ip(used_ips)
                if ip is None:
                    # Full as far as the cache knows; it may not have seen
                    # the deletes that just freed some addresses.
                    await self.cache.fresh()
                    ip = self._free_ip(self._used()[0])
                if ip is None:
                    raise errors.StatusError(500, "InternalError", "Internal error occurred: failed to allocate a "
                                             "serviceIP: range is full")
                spec["clusterIP"] = ip
                spec["clusterIPs"] = [ip]
                res.ips.add(ip)
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
                    if p["nodePort"] not in old_ports.values():
                        res.ports.add(p["nodePort"])
                    used_ports.add(p["nodePort"])
            else:
                for p in spec.get("ports") or []:
                    p.pop("nodePort", None)
            self._recent_ips |= res.ips
            self._recent_ports |= res.ports
        if typ == "LoadBalancer":
            svc.setdefault("status", {}).setdefault("loadBalancer", {})
        return res

    def _free_ip(self, used: set[str]) -> str | None:
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
        return None

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


def _mount_token(spec: dict) -> None:
    """Add the kube-api-access projected volume and mount it in every container that lacks one there."""
    volumes = spec.get("volumes") if isinstance(spec.get("volumes"), list) else []
    vol_name = next((v.get("name") for v in volumes if isinstance(v, dict)
                     and str(v.get("name", "")).startswith(SA_VOLUME_PREFIX)), None)
    have_volume = vol_name is not None
    if vol_name is None:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        vol_name = SA_VOLUME_PREFIX + "".join(random.choice(alphabet) for _ in range(5))
    needed = False
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            if not isinstance(c, dict):
                continue
            mounts = c.get("volumeMounts") if isinstance(c.get("volumeMounts"), list) else []
            if any(isinstance(m, dict) and m.get("mountPath") == SA_TOKEN_MOUNT_PATH for m in mounts):
                continue  # the pod brings its own credentials there
            c["volumeMounts"] = [*mounts, {"name": vol_name, "readOnly": True, "mountPath": SA_TOKEN_MOUNT_PATH}]
            needed = True
    if needed and not have_volume:
        spec["volumes"] = [*volumes, {"name": vol_name, "projected": {
            "defaultMode": 0o644,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": SA_TOKEN_EXPIRATION, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                             "fieldPath": "metadata.namespace"}}]}},
            ]}}]


def kubernetes_service_ip(service_cidr: str) -> str:
    return str(ipaddress.ip_network(service_cidr).network_address + 1)


