"""ResourceQuota: what an object costs a namespace's quotas, and the admission step that charges it.

Evaluators say, per resource, which quota resource names an object is charged
to and how much (upstream's pkg/quota/v1/evaluator/core and the generic object
counter): `count/<resource>[.<group>]` for any resource, the legacy count names
(pods, services, secrets, configmaps, persistentvolumeclaims,
replicationcontrollers, resourcequotas), a pod's compute resources and a
claim's storage, overall and per storage class. The resourcequota controller
(controllers/resourcequota.py) sums the same evaluators over its informer
caches to recompute status.used.

QuotaAdmission is upstream's ResourceQuota admission plugin. For a create (or
an update that can grow usage) it finds the namespace's quotas that track what
the object uses, refuses what would exceed one ("exceeded quota: ..."), and
otherwise writes the grown status.used back before the object is stored, with a
compare-and-swap on the quota's resourceVersion. Checks and charges in one
namespace run one at a time, so two creates racing for the last slot cannot
both see it free; a conflicting writer (the controller, another API server)
makes the charge re-read and retry, as upstream's quota evaluator does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from ..api.errors import StatusError
from ..api.quantity import Quantity
from .watchcache import WatchCache

if TYPE_CHECKING:
    from ..api.kinds import Kind
    from .rest import Call

__all__ = [
    "CREATE", "UPDATE", "Evaluator", "ObjectCountEvaluator", "PersistentVolumeClaimEvaluator", "PodEvaluator",
    "QuotaAdmission", "QuotaRefused", "ResourceList", "ServiceEvaluator", "StatusWriter", "check_request",
    "evaluator_for", "observed_usage", "parse_resource_list", "pod_limits", "pod_requests", "pretty",
    "resource_list_json", "scope_selectors",
]

ResourceList = dict[str, Quantity]
Obj = dict[str, Any]

CREATE = "CREATE"
UPDATE = "UPDATE"

QUOTA_PREFIX = "/registry/resourcequotas/"

# Virtual or unstored resources quota never counts (upstream's ignored resources).
IGNORED_RESOURCES = frozenset({
    ("", "bindings"), ("", "componentstatuses"), ("", "events"),
    ("authentication.k8s.io", "tokenreviews"), ("authentication.k8s.io", "selfsubjectreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"), ("authorization.k8s.io", "selfsubjectaccessreviews"),
    ("authorization.k8s.io", "localsubjectaccessreviews"), ("authorization.k8s.io", "selfsubjectrulesreviews"),
})

# ------------------------------------------------------------------ resource lists


def parse_resource_list(raw: Any) -> ResourceList:
    """A ResourceList from JSON; entries that are not quantities are left out rather than fatal."""
    out: ResourceList = {}
    if isinstance(raw, dict):
        for name, value in raw.items():
            try:
                out[str(name)] = Quantity.parse(value)
            except ValueError:
                continue
    return out


def resource_list_json(rl: Mapping[str, Quantity]) -> dict[str, str]:
    return {name: str(q) for name, q in sorted(rl.items())}


def _add(a: Mapping[str, Quantity], b: Mapping[str, Quantity]) -> ResourceList:
    out = dict(a)
    for name, q in b.items():
        out[name] = out[name] + q if name in out else q
    return out


def _subtract_floor(a: Mapping[str, Quantity], b: Mapping[str, Quantity]) -> ResourceList:
    """a - b per name, never below zero; names only in b come out as zero."""
    out: ResourceList = {}
    for name, q in a.items():
        d = q - b[name] if name in b else q
        out[name] = d if d.sign() > 0 else Quantity(0)
    for name in b:
        out.setdefault(name, Quantity(0))
    return out


def _mask(rl: Mapping[str, Quantity], names: Iterable[str]) -> ResourceList:
    keep = set(names)
    return {n: q for n, q in rl.items() if n in keep}


def _non_zero(rl: Mapping[str, Quantity]) -> ResourceList:
    return {n: q for n, q in rl.items() if not q.is_zero()}


def _same(a: Mapping[str, Quantity], b: Mapping[str, Quantity]) -> bool:
    return a.keys() == b.keys() and all(a[n] == b[n] for n in a)


def _max_into(into: ResourceList, rl: Mapping[str, Quantity]) -> None:
    for name, q in rl.items():
        if name not in into or q > into[name]:
            into[name] = q


def pretty(rl: Mapping[str, Quantity]) -> str:
    """name=value pairs sorted by name, comma-joined: how quota errors print usage."""
    return ",".join(f"{n}={rl[n]}" for n in sorted(rl))


# ------------------------------------------------------------------ scopes


def scope_selectors(quota: Obj) -> list[Obj]:
    """spec.scopes (each as an Exists requirement) followed by spec.scopeSelector.matchExpressions."""
    spec = quota.get("spec") or {}
    out: list[Obj] = [{"scopeName": s, "operator": "Exists"} for s in spec.get("scopes") or []
                      if isinstance(s, str)]
    sel = spec.get("scopeSelector") or {}
    if isinstance(sel, dict):
        out.extend(r for r in sel.get("matchExpressions") or [] if isinstance(r, dict))
    return out


def _requirement_matches(req: Obj, labels: Mapping[str, str]) -> bool:
    """A scope requirement read as a label selector requirement keyed by its scope name."""
    key, op, values = req.get("scopeName") or "", req.get("operator"), req.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    return False


# ------------------------------------------------------------------ evaluators


class Evaluator:
    """How one resource is charged to quota. The generic one counts objects on create."""

    group = ""
    resource = ""
    operations: frozenset[str] = frozenset({CREATE})

    def handles(self, operation: str) -> bool:
        return operation in self.operations

    def matching_resources(self, names: Iterable[str]) -> list[str]:
        """Those of the quota resource names this evaluator charges."""
        raise NotImplementedError

    def matches_scope(self, requirement: Obj, obj: Obj) -> bool:
        """Whether obj is in a quota scope; resources without scopes are in none."""
        return False

    def usage(self, obj: Obj) -> ResourceList:
        raise NotImplementedError

    def constraints(self, required: Iterable[str], obj: Obj) -> str | None:
        """Why obj may not be admitted under a quota tracking `required` (None: it may)."""
        return None

    def released(self, old: Obj, new: Obj) -> bool:
        """Whether an update may have lowered usage: the controller then recounts."""
        before, after = self.usage(old), self.usage(new)
        return any(name not in after or after[name] < q for name, q in before.items())


def count_name(group: str, resource: str) -> str:
    return f"count/{resource}.{group}" if group else f"count/{resource}"


class ObjectCountEvaluator(Evaluator):
    """One per object under count/<resource>[.<group>] (and a legacy alias, for a few core kinds)."""

    def __init__(self, group: str, resource: str, alias: str = ""):
        self.group = group
        self.resource = resource
        self.names = (count_name(group, resource), *((alias,) if alias else ()))

    def matching_resources(self, names: Iterable[str]) -> list[str]:
        return sorted(set(names) & set(self.names))

    def usage(self, obj: Obj) -> ResourceList:
        return {n: Quantity(1) for n in self.names}

    def released(self, old: Obj, new: Obj) -> bool:
        return False


# --- pods

_POD_RESOURCES = frozenset({
    "count/pods", "pods", "cpu", "memory", "ephemeral-storage", "requests.cpu", "requests.memory",
    "requests.ephemeral-storage", "limits.cpu", "limits.memory", "limits.ephemeral-storage",
})
_POD_PREFIXES = ("hugepages-", "requests.hugepages-")
# A quota on these makes every container state them: an upstream rule kept for compatibility.
_REQUIRED_IF_TRACKED = frozenset({"cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"})
_QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def _is_native(name: str) -> bool:
    return "/" not in name or "kubernetes.io/" in name


def _is_extended(name: str) -> bool:
    """A vendor resource (example.com/gpu), which quota only knows as requests.<name>."""
    return not _is_native(name) and not name.startswith("requests.") and bool(_QUALIFIED.match(name))


def _container_list(c: Any, field: str) -> ResourceList:
    res = c.get("resources") if isinstance(c, dict) else None
    return parse_resource_list(res.get(field)) if isinstance(res, dict) else {}


def _containers(spec: Obj, group: str) -> list[Obj]:
    return [c for c in spec.get(group) or [] if isinstance(c, dict)]


def _aggregate(spec: Obj, field: str) -> ResourceList:
    """Containers summed; init containers as the most any one of them needs at a time, sidecars
    (restartPolicy Always) running on beside whatever starts after them."""
    total: ResourceList = {}
    for c in _containers(spec, "containers"):
        total = _add(total, _container_list(c, field))
    sidecars: ResourceList = {}
    init_peak: ResourceList = {}
    for c in _containers(spec, "initContainers"):
        own = _container_list(c, field)
        if c.get("restartPolicy") == "Always":
            total = _add(total, own)
            sidecars = _add(sidecars, own)
            _max_into(init_peak, sidecars)
        else:
            _max_into(init_peak, _add(own, sidecars))
    _max_into(total, init_peak)
    return total


def pod_requests(pod: Obj) -> ResourceList:
    """What the pod asks for as a whole (as the scheduler sees it), overhead included."""
    spec = pod.get("spec") or {}
    return _add(_aggregate(spec, "requests"), parse_resource_list(spec.get("overhead")))


def pod_limits(pod: Obj) -> ResourceList:
    """The pod's limits as a whole; overhead is added only to what is limited at all."""
    spec = pod.get("spec") or {}
    limits = _aggregate(spec, "limits")
    for name, q in parse_resource_list(spec.get("overhead")).items():
        if name in limits and not limits[name].is_zero():
            limits[name] = limits[name] + q
    return limits


def _compute_usage(requests: Mapping[str, Quantity], limits: Mapping[str, Quantity]) -> ResourceList:
    out: ResourceList = {"pods": Quantity(1)}
    for name in ("cpu", "memory", "ephemeral-storage"):
        if name in requests:
            out[name] = out[f"requests.{name}"] = requests[name]
        if name in limits:
            out[f"limits.{name}"] = limits[name]
    for name, q in requests.items():
        if name.startswith("hugepages-"):
            out[name] = out[f"requests.{name}"] = q
        if _is_extended(name):
            out[f"requests.{name}"] = q
    return out


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def pod_is_charged(pod: Obj, now: datetime | None = None) -> bool:
    """Whether a pod's compute resources count: not once it is done (Succeeded, Failed), nor
    once its deletion's grace period is over (its node may be gone, the pod stuck terminating)."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    meta = pod.get("metadata") or {}
    deleted, grace = _parse_time(meta.get("deletionTimestamp")), meta.get("deletionGracePeriodSeconds")
    if deleted is not None and isinstance(grace, int):
        if (now or datetime.now(UTC)) > deleted + timedelta(seconds=grace):
            return False
    return True


def _is_best_effort(pod: Obj) -> bool:
    qos = (pod.get("status") or {}).get("qosClass")
    if qos:
        return qos == "BestEffort"
    spec = pod.get("spec") or {}
    for c in _containers(spec, "initContainers") + _containers(spec, "containers"):
        for field in ("requests", "limits"):
            rl = _container_list(c, field)
            if any(rl[n].sign() > 0 for n in ("cpu", "memory") if n in rl):
                return False
    return True


def _is_terminating(pod: Obj) -> bool:
    ads = (pod.get("spec") or {}).get("activeDeadlineSeconds")
    return isinstance(ads, int) and not isinstance(ads, bool) and ads >= 0


def _cross_namespace_affinity(pod: Obj) -> bool:
    affinity = (pod.get("spec") or {}).get("affinity") or {}
    for kind in ("podAffinity", "podAntiAffinity"):
        a = affinity.get(kind) or {}
        terms = [t for t in a.get("requiredDuringSchedulingIgnoredDuringExecution") or [] if isinstance(t, dict)]
        terms += [(w.get("podAffinityTerm") or {}) for w in a.get("preferredDuringSchedulingIgnoredDuringExecution")
                  or [] if isinstance(w, dict)]
        if any(t.get("namespaces") or t.get("namespaceSelector") is not None for t in terms):
            return True
    return False


class PodEvaluator(Evaluator):
    group, resource = "", "pods"

    def matching_resources(self, names: Iterable[str]) -> list[str]:
        out = set()
        for n in names:
            if n in _POD_RESOURCES or n.startswith(_POD_PREFIXES) or \
                    (not _is_native(n) and n.startswith("requests.")):
                out.add(n)
        return sorted(out)

    def matches_scope(self, requirement: Obj, obj: Obj) -> bool:
        scope = requirement.get("scopeName")
        if scope == "Terminating":
            return _is_terminating(obj)
        if scope == "NotTerminating":
            return not _is_terminating(obj)
        if scope == "BestEffort":
            return _is_best_effort(obj)
        if scope == "NotBestEffort":
            return not _is_best_effort(obj)
        if scope == "PriorityClass":
            pc = (obj.get("spec") or {}).get("priorityClassName") or ""
            return _requirement_matches(requirement, {"PriorityClass": pc} if pc else {})
        if scope == "CrossNamespacePodAffinity":
            return _cross_namespace_affinity(obj)
        return False

    def usage(self, obj: Obj) -> ResourceList:
        # count/pods follows every stored pod; "pods" and compute only live ones.
        out: ResourceList = {"count/pods": Quantity(1)}
        if not pod_is_charged(obj):
            return out
        return _add(out, _compute_usage(pod_requests(obj), pod_limits(obj)))

    def constraints(self, required: Iterable[str], obj: Obj) -> str | None:
        need = set(required) & _REQUIRED_IF_TRACKED
        if not need:
            return None
        missing: dict[str, set[str]] = {}
        spec = obj.get("spec") or {}
        for c in _containers(spec, "containers") + _containers(spec, "initContainers"):
            have = _compute_usage(_container_list(c, "requests"), _container_list(c, "limits"))
            for name in need - have.keys():
                missing.setdefault(name, set()).add(str(c.get("name") or ""))
        if not missing:
            return None
        return "must specify " + "; ".join(f"{name} for: {','.join(sorted(missing[name]))}"
                                           for name in sorted(missing))

    def released(self, old: Obj, new: Obj) -> bool:
        # Pod specs do not change what they request; finishing is what frees a pod's share.
        return pod_is_charged(old) and not pod_is_charged(new)


# --- services

_SERVICE_RESOURCES = frozenset({"count/services", "services", "services.nodeports", "services.loadbalancers"})


class ServiceEvaluator(Evaluator):
    group, resource = "", "services"
    operations = frozenset({CREATE, UPDATE})  # a Service can change type

    def matching_resources(self, names: Iterable[str]) -> list[str]:
        return sorted(set(names) & _SERVICE_RESOURCES)

    def usage(self, obj: Obj) -> ResourceList:
        spec = obj.get("spec") or {}
        ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
        out: ResourceList = {"count/services": Quantity(1), "services": Quantity(1),
                             "services.loadbalancers": Quantity(0), "services.nodeports": Quantity(0)}
        kind = spec.get("type")
        if kind == "NodePort":
            out["services.nodeports"] = Quantity(len(ports))
        elif kind == "LoadBalancer":
            if spec.get("allocateLoadBalancerNodePorts") is False:
                # Only the ports that name a node port take one.
                out["services.nodeports"] = Quantity(sum(1 for p in ports if p.get("nodePort")))
            else:
                out["services.nodeports"] = Quantity(len(ports))
            out["services.loadbalancers"] = Quantity(1)
        return out


# --- persistent volume claims

STORAGE_CLASS_SUFFIX = ".storageclass.storage.k8s.io/"
_PVC_RESOURCES = ("persistentvolumeclaims", "requests.storage")


def _claim_class(pvc: Obj) -> str:
    ann = (pvc.get("metadata") or {}).get("annotations") or {}
    beta = ann.get("volume.beta.kubernetes.io/storage-class")
    if beta is not None:
        return str(beta)
    return str((pvc.get("spec") or {}).get("storageClassName") or "")


def _whole(q: Quantity) -> Quantity:
    """Rounded up to whole bytes, as storage is charged."""
    return q if q.value_exact.denominator == 1 else Quantity(q.value(), q.format)


class PersistentVolumeClaimEvaluator(Evaluator):
    group, resource = "", "persistentvolumeclaims"
    operations = frozenset({CREATE, UPDATE})  # a claim can grow

    def matching_resources(self, names: Iterable[str]) -> list[str]:
        out = set()
        for n in names:
            if n == "count/persistentvolumeclaims" or n in _PVC_RESOURCES or \
                    any(n.endswith(STORAGE_CLASS_SUFFIX + r) for r in _PVC_RESOURCES):
                out.add(n)
        return sorted(out)

    def usage(self, obj: Obj) -> ResourceList:
        out: ResourceList = {"persistentvolumeclaims": Quantity(1), "count/persistentvolumeclaims": Quantity(1)}
        cls = _claim_class(obj)
        if cls:
            out[cls + STORAGE_CLASS_SUFFIX + "persistentvolumeclaims"] = Quantity(1)
        storage = self._storage(obj)
        if storage is not None:
            out["requests.storage"] = storage
            if cls:
                out[cls + STORAGE_CLASS_SUFFIX + "requests.storage"] = storage
        return out

    @staticmethod
    def _storage(pvc: Obj) -> Quantity | None:
        """The request, or what the volume was already grown to if that is more."""
        requested = parse_resource_list(((pvc.get("spec") or {}).get("resources") or {}).get("requests"))
        if "storage" not in requested:
            return None
        q = _whole(requested["storage"])
        allocated = parse_resource_list((pvc.get("status") or {}).get("allocatedResources")).get("storage")
        if allocated is not None and allocated > q:
            q = _whole(allocated)
        return q


_LEGACY_COUNTS = {"configmaps": "configmaps", "resourcequotas": "resourcequotas",
                  "replicationcontrollers": "replicationcontrollers", "secrets": "secrets"}
_EVALUATORS: dict[tuple[str, str], Evaluator] = {
    ("", "pods"): PodEvaluator(),
    ("", "services"): ServiceEvaluator(),
    ("", "persistentvolumeclaims"): PersistentVolumeClaimEvaluator(),
    **{("", r): ObjectCountEvaluator("", r, alias) for r, alias in _LEGACY_COUNTS.items()},
}


def evaluator_for(group: str, resource: str) -> Evaluator | None:
    """The evaluator for a resource (an object counter unless it has its own); None for ignored ones."""
    if (group, resource) in IGNORED_RESOURCES:
        return None
    ev = _EVALUATORS.get((group, resource))
    if ev is None:
        ev = _EVALUATORS[(group, resource)] = ObjectCountEvaluator(group, resource)
    return ev


def _matches(ev: Evaluator, quota: Obj, hard_names: Iterable[str], obj: Obj) -> bool:
    """The quota tracks something this evaluator charges, and obj is in every scope it has."""
    if not ev.matching_resources(hard_names):
        return False
    return all(ev.matches_scope(req, obj) for req in scope_selectors(quota))


# ------------------------------------------------------------------ usage and checks


def observed_usage(quota: Obj, sources: Iterable[tuple[Evaluator, Callable[[], Iterable[Obj]]]]) -> ResourceList:
    """What the objects of a quota's namespace use of its spec.hard resources, within its scopes.

    sources: (evaluator, a function listing that resource's objects in the namespace). A resource
    no source charges is absent from the result (its earlier figure, if any, is kept by the caller).
    """
    hard = parse_resource_list((quota.get("spec") or {}).get("hard"))
    selectors = scope_selectors(quota)
    out: ResourceList = {}
    for ev, objects in sources:
        tracked = ev.matching_resources(hard)
        if not tracked:
            continue
        used: ResourceList = {name: Quantity(0) for name in tracked}
        for obj in objects():
            if all(ev.matches_scope(req, obj) for req in selectors):
                used = _add(used, ev.usage(obj))
        out = _add(out, _mask(used, tracked))
    return out


class QuotaRefused(Exception):
    """An object refused by quota; str() is the reason without the "<resource> <name> is forbidden" head."""


def check_request(quotas: list[Obj], ev: Evaluator, operation: str, obj: Obj, old: Obj | None = None,
                  ) -> list[ResourceList | None]:
    """Each quota's status.used once obj is admitted (None where it does not change).

    Raises QuotaRefused when a quota would be exceeded, when obj lacks what a quota requires of
    it, or when a quota tracking what obj uses has no usage figure yet (its controller has not
    counted). Only status.hard is enforced: a quota the controller has not seen yet is inert.
    """
    interesting: list[int] = []
    hards: list[ResourceList] = []
    useds: list[ResourceList] = []
    for i, q in enumerate(quotas):
        status = q.get("status") or {}
        hard, used = parse_resource_list(status.get("hard")), parse_resource_list(status.get("used"))
        hards.append(hard)
        useds.append(used)
        if not _matches(ev, q, hard, obj):
            continue
        name = (q.get("metadata") or {}).get("name", "")
        restricted = ev.matching_resources(hard)
        why = ev.constraints(restricted, obj)
        if why:
            raise QuotaRefused(f"failed quota: {name}: {why}")
        if any(r not in used for r in restricted):
            raise QuotaRefused(f"status unknown for quota: {name}, resources: {','.join(sorted(restricted))}")
        interesting.append(i)
    result: list[ResourceList | None] = [None] * len(quotas)
    if not interesting:
        return result
    usage = ev.usage(obj)
    negative = sorted(n for n, q in usage.items() if q.sign() < 0)
    if negative:
        raise QuotaRefused(f"quota usage is negative for resource(s): {','.join(negative)}")
    deltas = dict.fromkeys(interesting, usage)
    if operation == UPDATE and old is not None and (old.get("metadata") or {}).get("resourceVersion"):
        # Charge only the growth, to the quotas that already counted the old object.
        grown = _subtract_floor(usage, ev.usage(old))
        for i in interesting:
            if _matches(ev, quotas[i], hards[i], old):
                deltas[i] = grown
    for i in interesting:
        requested = _mask(_non_zero(deltas[i]), hards[i])
        if not requested:
            continue
        hard, used = hards[i], useds[i]
        new_used = _add(used, requested)
        over = sorted(n for n in requested if new_used[n] > hard[n])
        if over:
            name = (quotas[i].get("metadata") or {}).get("name", "")
            raise QuotaRefused(f"exceeded quota: {name}, requested: {pretty(_mask(requested, over))}, "
                               f"used: {pretty(_mask(used, over))}, limited: {pretty(_mask(hard, over))}")
        result[i] = new_used
    return result


# ------------------------------------------------------------------ admission

StatusWriter = Callable[[Obj], Awaitable[Obj]]


def forbidden(kind: Kind, obj: Obj, reason: str) -> StatusError:
    """403 for obj as upstream's admission.NewForbidden words it."""
    meta = obj.get("metadata") or {}
    name = meta.get("name") or meta.get("generateName") or "Unknown"
    resource = f"{kind.plural}.{kind.group}" if kind.group else kind.plural
    details: dict[str, Any] = {"name": name, "kind": kind.plural}
    if kind.group:
        details["group"] = kind.group
    return StatusError(403, "Forbidden", f'{resource} "{name}" is forbidden: {reason}', details)


class QuotaAdmission:
    """The ResourceQuota admission step; call `admit` last, once the object is final.

    update_status(quota) must write `quota` (a ResourceQuota as read, its metadata.resourceVersion
    untouched, status.used replaced) through the status subresource *only if* the stored
    resourceVersion is still that one, and return the stored object. On a stale resourceVersion
    it must raise StatusError 409 and not retry: the charge re-reads and re-checks itself.
    """

    def __init__(self, cache: WatchCache, update_status: StatusWriter, *, retries: int = 3):
        self.cache = cache
        self.update_status = update_status
        self.retries = retries
        self._locks: dict[str, list[Any]] = {}
        # key -> (resourceVersion written over, object written): our own charges until the
        # cache shows them, so back-to-back creates never check against a stale status.used.
        self._written: dict[str, tuple[str, Obj]] = {}

    async def admit(self, kind: Kind, obj: Obj, old: Obj | None, call: Call, subresource: str = "") -> None:
        """Check obj (a create if old is None, else an update of old) and charge it; StatusError 403 if refused.

        Subresource writes, cluster-scoped kinds and operations no evaluator charges return at
        once, without waiting for other writes in the namespace.
        """
        if subresource or not kind.namespaced:
            return
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        ev = evaluator_for(kind.group, kind.plural)
        operation = CREATE if old is None else UPDATE
        if not ns or ev is None or not ev.handles(operation):
            return
        if not self.cache.cache(QUOTA_PREFIX).entries(ns):
            return
        async with self._namespace_lock(ns):
            await self._charge(kind, ev, operation, obj, old, ns, call.dry_run)

    @contextlib.asynccontextmanager
    async def _namespace_lock(self, ns: str) -> AsyncIterator[None]:
        entry = self._locks.get(ns)
        if entry is None:
            entry = self._locks[ns] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[ns]

    def _quotas(self, ns: str) -> list[tuple[str, Obj]]:
        """The namespace's quotas by name, each with the resourceVersion the cache shows for it."""
        out = []
        for e in sorted(self.cache.cache(QUOTA_PREFIX).entries(ns), key=lambda e: e.name):
            seen = str(e.rv)
            written = self._written.get(e.key)
            if written is not None and written[0] == seen:
                # The cache still shows the version our last charge replaced: any other write
                # since would have failed that charge's compare-and-swap, so ours is current.
                out.append((seen, written[1]))
                continue
            self._written.pop(e.key, None)
            out.append((seen, orjson.loads(e.raw)))
        return out

    async def _charge(self, kind: Kind, ev: Evaluator, operation: str, obj: Obj, old: Obj | None, ns: str,
                      dry_run: bool) -> None:
        pending: set[str] | None = None  # on a retry, the quotas whose charge did not go through
        fresh = False  # whether what we read is at least as new as this request
        conflicts = 0
        while True:
            read = [(seen, q) for seen, q in self._quotas(ns) if pending is None or q["metadata"]["name"] in pending]
            try:
                new_used = check_request([q for _, q in read], ev, operation, obj, old)
            except QuotaRefused as e:
                if not fresh:
                    # Refuse on what the store says, not on a cache that may not show a freed slot yet.
                    fresh = True
                    await self.cache.fresh()
                    continue
                raise forbidden(kind, obj, str(e)) from None
            if dry_run:
                return
            failed: set[str] = set()
            last: StatusError | None = None
            for (seen, q), used in zip(read, new_used, strict=True):
                if used is None:
                    continue
                try:
                    await self._write(q, used, seen)
                except StatusError as e:
                    if e.code not in (404, 409):
                        raise
                    failed.add(q["metadata"]["name"])
                    last = e
            if last is None:
                return
            conflicts += 1
            if conflicts > self.retries:
                raise last
            # Someone wrote a quota since we read it: the charges that went through stand, the
            # others are checked again against what is stored now.
            pending, fresh = failed, True
            await self.cache.fresh()

    async def _write(self, quota: Obj, used: ResourceList, seen: str) -> None:
        """Write the new status.used over `quota`; `seen` is the cache's resourceVersion for it."""
        meta = quota["metadata"]
        status = dict(quota.get("status") or {})
        status["used"] = resource_list_json(used)
        written = await self.update_status({**quota, "status": status})
        key = f"{QUOTA_PREFIX}{meta['namespace']}/{meta['name']}"
        self._written[key] = (seen, written)
