"""Built-in admission: what the server decides about an object beyond its own validity.

The steps run in upstream's order: mutating ones before validation (LimitRanger
fills in default requests and limits: ``mutate_create``), then, for creates and
updates, NodeRestriction, the RBAC escalation checks, the allocators and
defaults below, PodSecurity (podsecurity.py) and last ResourceQuota (quota.py),
which charges the quota only once everything else said yes.

NamespaceLifecycle (content needs an existing, non-terminating namespace;
the boot namespaces cannot be deleted), the Service allocators (cluster IPs
from the service CIDRs, one per IP family, and node ports from 30000-32767:
the rules live in ipalloc.py, what is in use and in flight here) and ServiceAccount
(a new pod's service account must exist; its API token is mounted),
DefaultStorageClass and DefaultIngressClass live here. Each step reads cluster state from the watch cache, never from
another component.
"""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from ..api import errors
from ..api.kinds import Kind
from ..api.storage import ANN_BETA_CLASS, is_default_class
from .ipalloc import (
    DEFAULT_SERVICE_CIDR,
    NODE_PORT_RANGE,
    AddressTaken,
    ServiceAllocator,
    kubernetes_service_ip,
    service_addresses,
)
from .watchcache import WatchCache

if TYPE_CHECKING:
    from .escalation import EscalationCheck
    from .limitranger import LimitRanger
    from .noderestriction import NodeRestriction
    from .podsecurity import PodSecurity
    from .quota import QuotaAdmission
    from .rest import Call

__all__ = ["Admission", "Reservation", "kubernetes_service_ip"]

IMMORTAL_NAMESPACES = ("default", "kube-system", "kube-public")
ANN_INGRESS_CLASS = "kubernetes.io/ingress.class"
ANN_DEFAULT_INGRESS_CLASS = "ingressclass.kubernetes.io/is-default-class"
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
    def __init__(self, cache: WatchCache, service_cidr: str | Sequence[str] = DEFAULT_SERVICE_CIDR,
                 service_accounts: bool = False):
        """service_cidr: one CIDR or an IPv4,IPv6 pair ("a,b" or a list); ValueError if malformed."""
        self.cache = cache
        # The ServiceAccount plugin; off for a bare API server whose namespaces nobody gives a
        # default service account (no controller manager), as upstream's would reject every pod.
        self.service_accounts = service_accounts
        self.services = ServiceAllocator(service_cidr, NODE_PORT_RANGE)
        # RBAC's escalation checks (escalation.py) and NodeRestriction (noderestriction.py), when the
        # server authorizes with RBAC and the Node authorizer.
        self.escalation: EscalationCheck | None = None
        self.node_restriction: NodeRestriction | None = None
        # Pod Security, LimitRanger and ResourceQuota: set by the API server, which owns the writes
        # quota charging makes.
        self.pod_security: PodSecurity | None = None
        self.limit_ranger: LimitRanger | None = None
        self.quota: QuotaAdmission | None = None
        self._service_addresses: dict[str, tuple[int, frozenset[str], frozenset[int]]] = {}
        self._lock = asyncio.Lock()
        # Allocated by writes in flight: not yet in the cache, and released
        # (see release) once the write failed or the cache shows it.
        self._recent_ips: set[str] = set()
        self._recent_ports: set[int] = set()

    def _namespace(self, name: str) -> dict | None:
        e = self.cache.cache("/registry/namespaces/").objects.get("/registry/namespaces/" + name)
        return orjson.loads(e.raw) if e else None

    async def mutate_create(self, kind: Kind, obj: dict, call: Call) -> None:
        """The mutating steps that must run before the object is validated."""
        if self.limit_ranger is not None and kind.namespaced:
            await self.limit_ranger.admit(kind, obj, None, call)

    def _pods_in(self, ns: str):
        for e in self.cache.cache("/registry/pods/").entries(ns):
            yield orjson.loads(e.raw)

    async def _validating(self, kind: Kind, obj: dict, old: dict | None, nsobj: dict | None, call: Call,
                          subresource: str) -> None:
        """PodSecurity, then ResourceQuota: the last word on a create or update."""
        psa = self.pod_security
        if psa is not None:
            core = not kind.group
            if core and kind.kind == "Pod":
                await psa.admit_pod(nsobj, obj, old, call.user, call.groups, call.warnings, subresource=subresource)
            elif core and kind.kind == "Namespace":
                psa.check_namespace(obj, old, self._pods_in(obj["metadata"].get("name") or ""), call.warnings,
                                    subresource=subresource)
            elif kind.namespaced and nsobj is not None:
                psa.check_workload(nsobj, kind.kind, obj, call.warnings, user=call.user, subresource=subresource)
        if self.quota is not None and kind.namespaced:
            await self.quota.admit(kind, obj, old, call, subresource)

    async def admit_create(self, kind: Kind, obj: dict, call: Call) -> Reservation | None:
        meta = obj["metadata"]
        nsobj = None
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
        if self.node_restriction is not None:
            self.node_restriction.admit(kind, obj, None, call, "CREATE")
        if self.escalation is not None:
            await self.escalation.admit(kind, obj, None, call)
        reservation = None
        if kind.kind == "Service" and not kind.group:
            reservation = await self._allocate_service(obj, None)
        if kind.kind == "PersistentVolumeClaim" and not kind.group:
            self._default_storage_class(obj)
        if kind.kind == "Ingress" and kind.group == "networking.k8s.io":
            self._default_ingress_class(obj)
        if kind.kind == "Pod" and not kind.group and self.service_accounts:
            await self._admit_pod_service_account(obj)
        try:
            await self._validating(kind, obj, None, nsobj, call, "")
        except BaseException:
            await self.release(reservation, None)
            raise
        return reservation

    async def admit_update(self, kind: Kind, new: dict, old: dict, call: Call,
                           subresource: str = "") -> Reservation | None:
        if self.node_restriction is not None:
            self.node_restriction.admit(kind, new, old, call, "UPDATE")
        if self.escalation is not None:
            await self.escalation.admit(kind, new, old, call)
        if self.limit_ranger is not None and kind.namespaced:
            await self.limit_ranger.admit(kind, new, old, call, subresource)
        reservation = None
        if kind.kind == "Service" and not kind.group:
            reservation = await self._allocate_service(new, old)
        try:
            nsobj = self._namespace(new["metadata"].get("namespace") or "") if kind.namespaced else None
            await self._validating(kind, new, old, nsobj, call, subresource)
        except BaseException:
            await self.release(reservation, None)
            raise
        return reservation

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

    async def admit_delete(self, kind: Kind, obj: dict, call: Call) -> None:
        if self.node_restriction is not None:
            self.node_restriction.admit(kind, obj, None, call, "DELETE")
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
        name = self._default_class("/registry/storageclasses/", is_default_class)
        if name is not None:
            spec["storageClassName"] = name

    def _default_ingress_class(self, ing: dict) -> None:
        """DefaultIngressClass: an Ingress that names no class (neither field nor the deprecated
        annotation) gets the default IngressClass, so that `kubectl get ingress` shows it."""
        spec = ing.setdefault("spec", {})
        if spec.get("ingressClassName") is not None or \
                ANN_INGRESS_CLASS in (ing["metadata"].get("annotations") or {}):
            return
        name = self._default_class(
            "/registry/ingressclasses/",
            lambda c: ((c.get("metadata") or {}).get("annotations") or {}).get(ANN_DEFAULT_INGRESS_CLASS) == "true")
        if name is not None:
            spec["ingressClassName"] = name

    def _default_class(self, prefix: str, is_default) -> str | None:
        """The default class among the cached objects under `prefix`: with several, the newest,
        then the first by name, as upstream."""
        defaults = [c for e in self.cache.cache(prefix).objects.values() if is_default(c := orjson.loads(e.raw))]
        if not defaults:
            return None
        defaults.sort(key=lambda c: c["metadata"].get("name") or "")
        defaults.sort(key=lambda c: c["metadata"].get("creationTimestamp") or "", reverse=True)
        return defaults[0]["metadata"]["name"]

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
        """Cluster IPs and node ports held by stored Services or taken by writes in flight."""
        ips: set[str] = set(self._recent_ips)
        ports: set[int] = set(self._recent_ports)
        seen: dict[str, tuple[int, frozenset[str], frozenset[int]]] = {}
        for key, e in self.cache.cache("/registry/services/").objects.items():
            # Parse each stored version once, not once per allocation.
            got = self._service_addresses.get(key)
            if got is None or got[0] != e.rv:
                got = (e.rv, *service_addresses(orjson.loads(e.raw)))
            seen[key] = got
            ips |= got[1]
            ports |= got[2]
        self._service_addresses = seen
        return ips, ports

    async def _allocate_service(self, svc: dict, old: dict | None) -> Reservation:
        if old is not None and svc.get("spec") == old.get("spec"):
            # A status or metadata write (servicelb, labels): no address changes hands.
            self.services.prepare(svc, old, set(), set())
            return Reservation()
        original = copy.deepcopy(svc)
        own_ips, own_ports = service_addresses(old) if old is not None else (frozenset(), frozenset())
        async with self._lock:
            for attempt in (1, 2):
                used_ips, used_ports = self._used()
                try:
                    ips, ports = self.services.prepare(svc, old, used_ips - own_ips, used_ports - own_ports)
                    break
                except AddressTaken:
                    if attempt == 2:
                        raise
                    # Taken or full as far as the cache knows; it may not have seen the
                    # deletes that just freed some addresses.
                    await self.cache.fresh()
                    svc.clear()
                    svc.update(copy.deepcopy(original))
            res = Reservation(ips=ips, ports=ports)
            self._recent_ips |= res.ips
            self._recent_ports |= res.ports
        return res


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
