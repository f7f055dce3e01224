"""The kinds registry: what each served resource is.

One entry per kind says its group/version/kind, plural and short names, scope,
categories and subresources. Everything else the API server needs about a kind
(its schema, patch keys, OpenAPI) comes from the upstream schema in
``kybernetes.api.schema``; semantic rules and defaults live in
``kybernetes.api.validation``; table columns in ``kybernetes.apiserver.tables``.
Adding a kind is one ``_k(...)`` line here.

Several versions of one kind share storage (autoscaling/v1 and v2
HorizontalPodAutoscaler, core/v1 and events.k8s.io/v1 Event): ``storage``
names the resource path they share and ``storage_version`` the version objects
are kept as; ``kybernetes.api.conversion`` converts between them.
"""

from __future__ import annotations

from functools import cached_property
from dataclasses import dataclass, field

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # The resource path segment under /registry/ where objects are kept, and
    # the apiVersion they are stored as; differs from plural/version only when
    # several versions or groups share storage.
    storage: str = ""
    storage_version: str = ""
    # Scale subresource: where replicas live, as upstream's scale mapping.
    scale_spec_path: str = "spec.replicas"
    scale_status_path: str = "status.replicas"
    has_spec: bool = True
    # An immediate DELETE answers with the deleted object rather than a Status.
    return_deleted: bool = False
    verbs: tuple[str, ...] = ALL_VERBS
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @cached_property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @cached_property
    def singular(self) -> str:
        return self.kind.lower()

    @cached_property
    def list_kind(self) -> str:
        return self.kind + "List"

    @cached_property
    def storage_prefix(self) -> str:
        return "/registry/" + (self.storage or self.plural) + "/"

    @cached_property
    def stored_api_version(self) -> str:
        return self.storage_version or self.api_version

    @cached_property
    def group_resource(self) -> str:
        """'deployments.apps' or 'pods': the name upstream uses in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def key(self, namespace: str | None, name: str) -> str:
        if self.namespaced:
            return f"{self.storage_prefix}{namespace}/{name}"
        return f"{self.storage_prefix}{name}"

    def prefix(self, namespace: str | None) -> str:
        if self.namespaced and namespace:
            return f"{self.storage_prefix}{namespace}/"
        return self.storage_prefix


_KINDS: list[Kind] = []


def _k(group: str, version: str, kind: str, plural: str, **kw) -> None:
    _KINDS.append(Kind(group, version, kind, plural, **kw))


_ALL = ("all",)
# core/v1
_k("", "v1", "Namespace", "namespaces", namespaced=False, short_names=("ns",), subresources=("status", "finalize"),
   has_spec=False, return_deleted=True)
# Pods carry no metadata.generation in 1.32.
_k("", "v1", "Pod", "pods", short_names=("po",), categories=_ALL, subresources=("status", "binding", "eviction", "log", "exec", "attach", "portforward"),
   has_spec=False, return_deleted=True)
_k("", "v1", "Node", "nodes", namespaced=False, short_names=("no",), subresources=("status",))
_k("", "v1", "Service", "services", short_names=("svc",), categories=_ALL, subresources=("status",),
   return_deleted=True)
_k("", "v1", "Endpoints", "endpoints", short_names=("ep",), has_spec=False)
_k("", "v1", "ConfigMap", "configmaps", short_names=("cm",), has_spec=False)
_k("", "v1", "Secret", "secrets", has_spec=False)
_k("", "v1", "ServiceAccount", "serviceaccounts", short_names=("sa",), subresources=("token",), has_spec=False,
   return_deleted=True)
_k("", "v1", "Event", "events", short_names=("ev",), has_spec=False)
_k("", "v1", "PersistentVolume", "persistentvolumes", namespaced=False, short_names=("pv",),
   subresources=("status",))
_k("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", short_names=("pvc",), subresources=("status",))
_k("", "v1", "LimitRange", "limitranges", short_names=("limits",))
_k("", "v1", "ResourceQuota", "resourcequotas", short_names=("quota",), subresources=("status",))
_k("", "v1", "PodTemplate", "podtemplates", has_spec=False)
_k("", "v1", "ReplicationController", "replicationcontrollers", short_names=("rc",), categories=_ALL,
   subresources=("status", "scale"))
# apps/v1
_k("apps", "v1", "Deployment", "deployments", short_names=("deploy",), categories=_ALL,
   subresources=("status", "scale"))
_k("apps", "v1", "ReplicaSet", "replicasets", short_names=("rs",), categories=_ALL, subresources=("status", "scale"))
_k("apps", "v1", "StatefulSet", "statefulsets", short_names=("sts",), categories=_ALL,
   subresources=("status", "scale"))
_k("apps", "v1", "DaemonSet", "daemonsets", short_names=("ds",), categories=_ALL, subresources=("status",))
_k("apps", "v1", "ControllerRevision", "controllerrevisions", has_spec=False)
# batch/v1
_k("batch", "v1", "Job", "jobs", categories=_ALL, subresources=("status",))
_k("batch", "v1", "CronJob", "cronjobs", short_names=("cj",), categories=_ALL, subresources=("status",))
_k("certificates.k8s.io", "v1", "CertificateSigningRequest", "certificatesigningrequests", namespaced=False,
   short_names=("csr",), subresources=("status", "approval"))
# networking, discovery, coordination
_k("networking.k8s.io", "v1", "Ingress", "ingresses", short_names=("ing",), subresources=("status",))
_k("networking.k8s.io", "v1", "IngressClass", "ingressclasses", namespaced=False)
_k("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", short_names=("netpol",))
_k("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", has_spec=False)
_k("coordination.k8s.io", "v1", "Lease", "leases")
# autoscaling: v2 is the storage version, v1 is served by conversion
_k("autoscaling", "v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", short_names=("hpa",),
   categories=_ALL, subresources=("status",))
_k("autoscaling", "v1", "HorizontalPodAutoscaler", "horizontalpodautoscalers", short_names=("hpa",),
   categories=_ALL, subresources=("status",), storage_version="autoscaling/v2")
# storage, policy, scheduling, rbac
_k("storage.k8s.io", "v1", "StorageClass", "storageclasses", namespaced=False, short_names=("sc",), has_spec=False,
   return_deleted=True)
_k("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", short_names=("pdb",), subresources=("status",))
_k("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", namespaced=False, short_names=("pc",),
   has_spec=False)
_k("rbac.authorization.k8s.io", "v1", "Role", "roles", has_spec=False)
_k("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False, has_spec=False)
_k("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", has_spec=False)
_k("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", namespaced=False,
   has_spec=False)
# events.k8s.io/v1 shares storage with core/v1 Event
_k("events.k8s.io", "v1", "Event", "events", short_names=("ev",), has_spec=False, storage="events",
   storage_version="v1")

# Group preference order for discovery, as upstream lists them.
GROUP_ORDER = ["", "apps", "events.k8s.io", "autoscaling", "batch", "certificates.k8s.io", "networking.k8s.io",
               "policy", "rbac.authorization.k8s.io", "storage.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
               "scheduling.k8s.io"]
# The preferred version of groups serving several.
PREFERRED_VERSION = {"autoscaling": "v2"}


class Registry:
    """Lookup of served kinds by (group, version, plural) and by (group, version, kind)."""

    def __init__(self, kinds: list[Kind]):
        self.kinds = list(kinds)
        self._by_resource: dict[tuple[str, str, str], Kind] = {}
        self._by_kind: dict[tuple[str, str, str], Kind] = {}
        for k in kinds:
            self.add(k)

    def add(self, k: Kind) -> None:
        if k not in self.kinds:
            self.kinds.append(k)
        self._by_resource[(k.group, k.version, k.plural)] = k
        self._by_kind[(k.group, k.version, k.kind)] = k

    def remove(self, k: Kind) -> None:
        self.kinds = [x for x in self.kinds if x is not k]
        self._by_resource.pop((k.group, k.version, k.plural), None)
        self._by_kind.pop((k.group, k.version, k.kind), None)

    def by_resource(self, group: str, version: str, plural: str) -> Kind | None:
        return self._by_resource.get((group, version, plural))

    def by_kind(self, group: str, version: str, kind: str) -> Kind | None:
        return self._by_kind.get((group, version, kind))

    def groups(self) -> dict[str, list[str]]:
        """group -> versions served, preferred first."""
        out: dict[str, list[str]] = {}
        for k in self.kinds:
            vs = out.setdefault(k.group, [])
            if k.version not in vs:
                vs.append(k.version)
        for g, vs in out.items():
            pref = PREFERRED_VERSION.get(g)
            if pref in vs:
                vs.remove(pref)
                vs.insert(0, pref)
        order = {g: i for i, g in enumerate(GROUP_ORDER)}
        return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))

    def in_group_version(self, group: str, version: str) -> list[Kind]:
        return [k for k in self.kinds if k.group == group and k.version == version]

    def sharing_storage(self, k: Kind) -> list[Kind]:
        """Every served kind whose objects live under k's storage prefix (k included)."""
        return [x for x in self.kinds if x.storage_prefix == k.storage_prefix]


def builtin_registry() -> Registry:
    return Registry(_KINDS)
