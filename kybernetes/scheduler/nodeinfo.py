"""What the scheduler knows about pods and nodes, precomputed once so a cycle stays cheap.

`PodInfo` is a pod parsed for scheduling: resource requests (with init
containers, sidecars and overhead folded in as upstream computes them), host
ports, tolerations, compiled node and pod affinity terms and spread
constraints. It is built once per pod object and shared by every node it is
tested against.

`NodeInfo` is one node plus the running totals the filters and scores need:
requested and non-zero-requested resources, the pods on it, the host ports in
use, and the pods carrying affinity terms. It is updated incrementally as pods
are added and removed, never recomputed from scratch.

`Cache` holds every NodeInfo, keeps them current from informer events, and
holds *assumed* pods: a pod the scheduler has decided to place is added to its
node at once (so the next cycle sees the capacity gone) and confirmed when the
informer reports it bound, or forgotten if binding fails.

The Cache also indexes the placed pods for the inter-pod affinity and
topology-spread plugins, so that they never walk every pod of the cluster:
pods alike for selector matching (same namespace, labels, terminating or not)
form one `PodGroup`, and the affinity terms of placed pods alike (same compiled
term, same role) one `TermGroup`; each knows how many of its pods sit on each
node. A plugin matches a selector once per group, not once per pod, and then
adds up the group's per-node counts by topology value. Both indexes are updated
with the NodeInfos, pod by pod.

Quantities are integers: cpu in millicores, everything else in base units
(bytes, counts), as upstream's framework.Resource keeps them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from kybernetes.api.quantity import Quantity
from kybernetes.api.selectors import NOTHING, LabelSelector, from_label_selector_object

Obj = dict[str, Any]

CPU, MEMORY, EPHEMERAL, PODS = "cpu", "memory", "ephemeral-storage", "pods"
# What a container without requests is counted as when *scoring*, so that many
# request-less pods do not all land on one node (upstream's non-zero defaults).
DEFAULT_MILLI_CPU = 100
DEFAULT_MEMORY = 200 * 1024 * 1024
HOSTNAME_LABEL = "kubernetes.io/hostname"
DEFAULT_PODS_PER_NODE = 110


@lru_cache(maxsize=4096)
def _parse_amount(resource: str, raw: str) -> int:
    q = Quantity.parse(raw)
    return q.milli_value() if resource == CPU else q.value()


def amount(resource: str, raw: Any) -> int:
    """A resource quantity as an integer (millicores for cpu); unparsable values count as 0."""
    try:
        return _parse_amount(resource, raw if isinstance(raw, str) else str(raw))
    except (ValueError, TypeError):
        return 0


def resource_list(rl: Mapping[str, Any] | None) -> dict[str, int]:
    if not rl:
        return {}
    return {k: amount(k, v) for k, v in rl.items()}


def _add_into(acc: dict[str, int], rl: Mapping[str, int]) -> None:
    for k, v in rl.items():
        acc[k] = acc.get(k, 0) + v


def _max_into(acc: dict[str, int], rl: Mapping[str, int]) -> None:
    for k, v in rl.items():
        if v > acc.get(k, 0):
            acc[k] = v


def _container_requests(c: Obj) -> dict[str, int]:
    res = c.get("resources") or {}
    req = res.get("requests")
    if req is None:
        # The API server copies limits into missing requests; do the same for
        # objects that did not go through its defaulting.
        req = res.get("limits")
    return resource_list(req)


def pod_requests(spec: Obj, non_zero: bool = False) -> dict[str, int]:
    """Effective requests of a pod: max(sum of containers + sidecars, largest init step) + overhead.

    With non_zero, containers without cpu/memory requests count the scoring defaults.
    """
    def reqs(c: Obj) -> dict[str, int]:
        r = _container_requests(c)
        if non_zero:
            r.setdefault(CPU, DEFAULT_MILLI_CPU)
            r.setdefault(MEMORY, DEFAULT_MEMORY)
        return r

    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        _add_into(total, reqs(c))
    sidecars: dict[str, int] = {}
    init_peak: dict[str, int] = {}
    for c in spec.get("initContainers") or []:
        r = reqs(c)
        if c.get("restartPolicy") == "Always":
            # A sidecar keeps running next to the app containers and every later init step.
            _add_into(total, r)
            _add_into(sidecars, r)
            step = dict(sidecars)
        else:
            step = dict(r)
            _add_into(step, sidecars)
        _max_into(init_peak, step)
    _max_into(total, init_peak)
    _add_into(total, resource_list(spec.get("overhead")))
    return total


# ---------------------------------------------------------------------------- node selectors


def _compile_node_requirement(expr: Obj, field: bool) -> Callable[[Mapping[str, str]], bool]:
    key = expr.get("key") or ""
    op = expr.get("operator") or ""
    values = list(expr.get("values") or [])
    if field and key != "metadata.name":
        return lambda labels: False
    if op == "In":
        vs = frozenset(values)
        return lambda labels: key in labels and labels[key] in vs
    if op == "NotIn":
        vs = frozenset(values)
        return lambda labels: key not in labels or labels[key] not in vs
    if op == "Exists":
        return lambda labels: key in labels
    if op == "DoesNotExist":
        return lambda labels: key not in labels
    if op in ("Gt", "Lt") and len(values) == 1:
        try:
            bound = int(values[0])
        except ValueError:
            return lambda labels: False
        greater = op == "Gt"

        def numeric(labels: Mapping[str, str]) -> bool:
            try:
                n = int(labels[key])
            except (KeyError, ValueError):
                return False
            return n > bound if greater else n < bound
        return numeric
    return lambda labels: False


class NodeSelectorTerm:
    """One nodeSelectorTerm: all its matchExpressions (labels) and matchFields (metadata.name) hold."""

    __slots__ = ("exprs", "fields")

    def __init__(self, term: Obj):
        self.exprs = [_compile_node_requirement(e, False) for e in term.get("matchExpressions") or []]
        self.fields = [_compile_node_requirement(e, True) for e in term.get("matchFields") or []]

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        if not self.exprs and not self.fields:
            return False  # an empty term selects no node, as upstream
        for check in self.exprs:
            if not check(labels):
                return False
        if self.fields:
            fields = {"metadata.name": name}
            for check in self.fields:
                if not check(fields):
                    return False
        return True


class NodeSelector:
    """A required nodeSelector: the terms are ORed."""

    __slots__ = ("terms",)

    def __init__(self, sel: Obj):
        self.terms = [NodeSelectorTerm(t) for t in sel.get("nodeSelectorTerms") or []]

    def matches(self, labels: Mapping[str, str], name: str) -> bool:
        return any(t.matches(labels, name) for t in self.terms)


# ---------------------------------------------------------------------------- pod affinity terms


class AffinityTerm:
    """A PodAffinityTerm compiled against the namespace of the pod that declares it.

    `key` is equal for two terms that match the same pods (the Cache groups
    the terms of placed pods by it).
    """

    __slots__ = ("all_namespaces", "key", "namespace_selector", "namespaces", "selector", "topology_key",
                 "weight")

    def __init__(self, term: Obj, own_namespace: str, own_labels: Mapping[str, str], weight: int = 1):
        self.topology_key: str = term.get("topologyKey") or ""
        self.weight = weight
        try:
            sel = term.get("labelSelector")
            self.selector = from_label_selector_object(sel) if sel is not None else NOTHING
            self.selector = _with_label_keys(self.selector, term, own_labels)
        except ValueError:
            self.selector = NOTHING
        self.namespaces = frozenset(term.get("namespaces") or ())
        ns_sel = term.get("namespaceSelector")
        self.all_namespaces = False
        self.namespace_selector: LabelSelector | None = None
        if ns_sel is not None:
            try:
                compiled = from_label_selector_object(ns_sel)
            except ValueError:
                compiled = NOTHING
            if compiled.empty:
                self.all_namespaces = True  # `namespaceSelector: {}` means every namespace
            else:
                self.namespace_selector = compiled
        elif not self.namespaces:
            self.namespaces = frozenset((own_namespace,))
        self.key = (self.topology_key, self.weight, self.all_namespaces, self.namespaces, self.namespace_selector,
                    self.selector)

    def matches_namespace(self, namespace: str, ns_labels: Callable[[str], Mapping[str, str]]) -> bool:
        return self.all_namespaces or namespace in self.namespaces or (
            self.namespace_selector is not None and self.namespace_selector.matches(ns_labels(namespace)))

    def matches(self, pod: PodInfo, ns_labels: Callable[[str], Mapping[str, str]]) -> bool:
        if not (self.all_namespaces or pod.namespace in self.namespaces or (
                self.namespace_selector is not None and self.namespace_selector.matches(ns_labels(pod.namespace)))):
            return False
        return self.selector.matches(pod.labels)


def _with_label_keys(sel: LabelSelector, obj: Obj, own_labels: Mapping[str, str]) -> LabelSelector:
    """Fold matchLabelKeys / mismatchLabelKeys into the selector using the declaring pod's labels."""
    from kybernetes.api.selectors import EQUALS, NOT_EQUALS, Requirement

    extra = []
    for k in obj.get("matchLabelKeys") or []:
        if k in own_labels:
            extra.append(Requirement(k, EQUALS, (own_labels[k],)))
    for k in obj.get("mismatchLabelKeys") or []:
        if k in own_labels:
            extra.append(Requirement(k, NOT_EQUALS, (own_labels[k],)))
    if not extra or sel.nothing:
        return sel
    return LabelSelector(list(sel.requirements) + extra)


class SpreadConstraint:
    __slots__ = ("hard", "max_skew", "min_domains", "node_affinity_honor", "node_taints_honor", "selector",
                 "topology_key")

    def __init__(self, c: Obj, own_labels: Mapping[str, str]):
        self.max_skew = int(c.get("maxSkew") or 1)
        self.topology_key: str = c.get("topologyKey") or ""
        self.hard = (c.get("whenUnsatisfiable") or "DoNotSchedule") == "DoNotSchedule"
        self.min_domains = int(c.get("minDomains") or 1)
        self.node_affinity_honor = (c.get("nodeAffinityPolicy") or "Honor") == "Honor"
        self.node_taints_honor = (c.get("nodeTaintsPolicy") or "Ignore") == "Honor"
        try:
            sel = c.get("labelSelector")
            selector = from_label_selector_object(sel) if sel is not None else NOTHING
            self.selector = _with_label_keys(selector, c, own_labels)
        except ValueError:
            self.selector = NOTHING


# ---------------------------------------------------------------------------- PodInfo


def _priority(spec: Obj) -> int:
    p = spec.get("priority")
    return p if isinstance(p, int) and not isinstance(p, bool) else 0


class PodInfo:
    """A pod parsed once for scheduling; `pod` is the object it was built from."""

    __slots__ = (
        "affinity_terms", "anti_affinity_terms", "cpu", "deleting", "eph", "group_key", "host_ports", "key",
        "labels", "mem", "name", "namespace", "node_name", "node_selector", "nominated_node", "nz_cpu", "nz_mem", "pod",
        "preemption_never", "preferred_affinity", "preferred_anti_affinity", "preferred_node_terms", "priority",
        "required_node_selector", "requests", "scalars", "scheduler_name", "spread_constraints", "start_time",
        "tolerations", "uid",
    )

    def __init__(self, pod: Obj):
        self.pod = pod
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        self.name: str = meta.get("name") or ""
        self.namespace: str = meta.get("namespace") or ""
        self.key = f"{self.namespace}/{self.name}"
        self.uid: str = meta.get("uid") or ""
        self.labels: dict[str, str] = meta.get("labels") or {}
        self.deleting = bool(meta.get("deletionTimestamp"))
        # Pods with equal keys in one namespace match the same selectors (the Cache's PodGroups).
        try:
            self.group_key: Any = (self.deleting, frozenset(self.labels.items()))
        except (TypeError, AttributeError):  # malformed labels: a group of its own
            self.group_key = ("pod", self.key)
        self.node_name: str = spec.get("nodeName") or ""
        self.scheduler_name: str = spec.get("schedulerName") or "default-scheduler"
        self.nominated_node: str = status.get("nominatedNodeName") or ""
        self.start_time: str = status.get("startTime") or meta.get("creationTimestamp") or ""
        self.priority = _priority(spec)
        self.preemption_never = spec.get("preemptionPolicy") == "Never"

        self.requests = pod_requests(spec)
        self.cpu = self.requests.get(CPU, 0)
        self.mem = self.requests.get(MEMORY, 0)
        self.eph = self.requests.get(EPHEMERAL, 0)
        self.scalars = {k: v for k, v in self.requests.items() if k not in (CPU, MEMORY, EPHEMERAL, PODS) and v}
        nz = pod_requests(spec, non_zero=True)
        self.nz_cpu = nz.get(CPU, 0)
        self.nz_mem = nz.get(MEMORY, 0)

        ports: list[tuple[str, str, int]] = []
        sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
        for c in list(spec.get("containers") or []) + sidecars:
            for p in c.get("ports") or []:
                hp = p.get("hostPort")
                if isinstance(hp, int) and hp > 0:
                    ports.append((p.get("hostIP") or "0.0.0.0", p.get("protocol") or "TCP", hp))
        self.host_ports = ports
        self.tolerations: list[Obj] = [t for t in spec.get("tolerations") or [] if isinstance(t, dict)]

        self.node_selector: dict[str, str] = spec.get("nodeSelector") or {}
        affinity = spec.get("affinity") or {}
        na = affinity.get("nodeAffinity") or {}
        req = na.get("requiredDuringSchedulingIgnoredDuringExecution")
        self.required_node_selector = NodeSelector(req) if req else None
        self.preferred_node_terms: list[tuple[int, NodeSelectorTerm]] = [
            (int(p.get("weight") or 0), NodeSelectorTerm(p.get("preference") or {}))
            for p in na.get("preferredDuringSchedulingIgnoredDuringExecution") or []
            if p.get("weight")]

        pa = affinity.get("podAffinity") or {}
        paa = affinity.get("podAntiAffinity") or {}
        ns, labels = self.namespace, self.labels
        self.affinity_terms = [AffinityTerm(t, ns, labels)
                               for t in pa.get("requiredDuringSchedulingIgnoredDuringExecution") or []]
        self.anti_affinity_terms = [AffinityTerm(t, ns, labels)
                                    for t in paa.get("requiredDuringSchedulingIgnoredDuringExecution") or []]
        self.preferred_affinity = [
            AffinityTerm(w.get("podAffinityTerm") or {}, ns, labels, int(w.get("weight") or 0))
            for w in pa.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
        self.preferred_anti_affinity = [
            AffinityTerm(w.get("podAffinityTerm") or {}, ns, labels, int(w.get("weight") or 0))
            for w in paa.get("preferredDuringSchedulingIgnoredDuringExecution") or []]
        self.spread_constraints = [SpreadConstraint(c, labels) for c in spec.get("topologySpreadConstraints") or []]

    @property
    def has_affinity(self) -> bool:
        return bool(self.affinity_terms or self.anti_affinity_terms or self.preferred_affinity
                    or self.preferred_anti_affinity)

    def __repr__(self) -> str:
        return f"PodInfo({self.key})"


# ---------------------------------------------------------------------------- NodeInfo


def _taints(node: Obj) -> list[Obj]:
    return [t for t in (node.get("spec") or {}).get("taints") or [] if isinstance(t, dict)]


class NodeInfo:
    """One node and the aggregate of the pods on it (assumed ones included)."""

    __slots__ = (
        "alloc_cpu", "alloc_eph", "alloc_mem", "alloc_pods", "alloc_scalars", "generation", "labels", "name",
        "node", "nz_cpu", "nz_mem", "pods", "pods_with_affinity", "pods_with_required_anti_affinity",
        "prefer_no_schedule_taints", "req_cpu", "req_eph", "req_mem", "req_scalars", "schedule_taints",
        "taints", "unschedulable", "used_ports",
    )

    def __init__(self, node: Obj | None = None, pods: Iterable[Obj | PodInfo] = ()):
        self.pods: dict[str, PodInfo] = {}
        self.pods_with_affinity: dict[str, PodInfo] = {}
        self.pods_with_required_anti_affinity: dict[str, PodInfo] = {}
        self.used_ports: dict[tuple[str, int], list[str]] = {}  # (protocol, port) -> host IPs
        self.req_cpu = self.req_mem = self.req_eph = 0
        self.req_scalars: dict[str, int] = {}
        self.nz_cpu = self.nz_mem = 0
        self.generation = 0
        self.set_node(node or {"metadata": {"name": ""}})
        for p in pods:
            self.add_pod(p if isinstance(p, PodInfo) else PodInfo(p))

    def set_node(self, node: Obj) -> None:
        self.node = node
        meta = node.get("metadata") or {}
        self.name: str = meta.get("name") or ""
        self.labels: dict[str, str] = meta.get("labels") or {}
        spec = node.get("spec") or {}
        self.unschedulable = bool(spec.get("unschedulable"))
        self.taints = _taints(node)
        self.schedule_taints = [t for t in self.taints if t.get("effect") in ("NoSchedule", "NoExecute")]
        self.prefer_no_schedule_taints = [t for t in self.taints if t.get("effect") == "PreferNoSchedule"]
        status = node.get("status") or {}
        alloc = status.get("allocatable") or status.get("capacity") or {}
        rl = resource_list(alloc)
        self.alloc_cpu = rl.get(CPU, 0)
        self.alloc_mem = rl.get(MEMORY, 0)
        self.alloc_eph = rl.get(EPHEMERAL, 0)
        self.alloc_pods = rl.get(PODS, DEFAULT_PODS_PER_NODE) if alloc else DEFAULT_PODS_PER_NODE
        self.alloc_scalars = {k: v for k, v in rl.items() if k not in (CPU, MEMORY, EPHEMERAL, PODS)}
        self.generation += 1

    def add_pod(self, pi: PodInfo) -> None:
        if pi.key in self.pods:
            self.remove_pod(pi.key)
        self.pods[pi.key] = pi
        if pi.has_affinity:
            self.pods_with_affinity[pi.key] = pi
        if pi.anti_affinity_terms:
            self.pods_with_required_anti_affinity[pi.key] = pi
        self._account(pi, 1)

    def remove_pod(self, key: str) -> PodInfo | None:
        pi = self.pods.pop(key, None)
        if pi is None:
            return None
        self.pods_with_affinity.pop(key, None)
        self.pods_with_required_anti_affinity.pop(key, None)
        self._account(pi, -1)
        return pi

    def _account(self, pi: PodInfo, sign: int) -> None:
        self.req_cpu += sign * pi.cpu
        self.req_mem += sign * pi.mem
        self.req_eph += sign * pi.eph
        self.nz_cpu += sign * pi.nz_cpu
        self.nz_mem += sign * pi.nz_mem
        for k, v in pi.scalars.items():
            self.req_scalars[k] = self.req_scalars.get(k, 0) + sign * v
        for ip, proto, port in pi.host_ports:
            ips = self.used_ports.setdefault((proto, port), [])
            if sign > 0:
                ips.append(ip)
            else:
                if ip in ips:
                    ips.remove(ip)
                if not ips:
                    del self.used_ports[(proto, port)]
        self.generation += 1

    def clone(self) -> NodeInfo:
        """A copy that can have pods added and removed without touching this one (preemption dry runs)."""
        c = NodeInfo.__new__(NodeInfo)
        for attr in NodeInfo.__slots__:
            setattr(c, attr, getattr(self, attr))
        c.pods = dict(self.pods)
        c.pods_with_affinity = dict(self.pods_with_affinity)
        c.pods_with_required_anti_affinity = dict(self.pods_with_required_anti_affinity)
        c.used_ports = {k: list(v) for k, v in self.used_ports.items()}
        c.req_scalars = dict(self.req_scalars)
        return c

    def __repr__(self) -> str:
        return f"NodeInfo({self.name}, pods={len(self.pods)})"


# ---------------------------------------------------------------------------- affinity index

# The roles of a placed pod's affinity terms in the Cache's TermGroups.
REQUIRED_ANTI_AFFINITY = "required-anti-affinity"  # filters: keeps matching pods out of its domain
REQUIRED_AFFINITY = "required-affinity"            # scores matching pods with the hard pod affinity weight
PREFERRED_AFFINITY = "preferred-affinity"          # scores matching pods with +weight
PREFERRED_ANTI_AFFINITY = "preferred-anti-affinity"  # scores matching pods with -weight


class PodGroup:
    """Placed pods of one namespace alike for any selector, and how many of them are on each node."""

    __slots__ = ("deleting", "labels", "namespace", "nodes")

    def __init__(self, pi: PodInfo):
        self.namespace = pi.namespace
        self.labels = pi.labels
        self.deleting = pi.deleting
        self.nodes: dict[NodeInfo, int] = {}

    def __repr__(self) -> str:
        return f"PodGroup({self.namespace}, {self.labels}, nodes={len(self.nodes)})"


class TermGroup:
    """Equal affinity terms (same role) of placed pods, and how many such pods are on each node."""

    __slots__ = ("nodes", "role", "term")

    def __init__(self, role: str, term: AffinityTerm):
        self.role = role
        self.term = term
        self.nodes: dict[NodeInfo, int] = {}

    def __repr__(self) -> str:
        return f"TermGroup({self.role}, {self.term.key}, nodes={len(self.nodes)})"


def _count_on(nodes: dict[NodeInfo, int], ni: NodeInfo, delta: int) -> bool:
    """Adjust the count of ni; True when no node is left."""
    n = nodes.get(ni, 0) + delta
    if n > 0:
        nodes[ni] = n
    else:
        nodes.pop(ni, None)
    return not nodes


# ---------------------------------------------------------------------------- Cache


def pod_key(pod: Obj) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


class Cache:
    """Every node's NodeInfo, kept current from informer events, plus assumed pods.

    The scheduling cycle is synchronous, so it reads this cache directly as its
    snapshot: nothing can change it between two awaits.
    """

    # An assumed pod whose binding succeeded but whose bound state never showed
    # up in the informer is dropped after this long (upstream's assume TTL).
    ASSUME_TTL = 30.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.nodes: dict[str, NodeInfo] = {}
        self.node_list: list[NodeInfo] = []
        self.pod_nodes: dict[str, str] = {}      # pod key -> node name, for every pod we account
        self.assumed: dict[str, float | None] = {}  # pod key -> expiry once its binding finished
        self.namespace_labels: dict[str, dict[str, str]] = {}
        # pods with required anti-affinity anywhere: lets InterPodAffinity skip plain pods cheaply
        self.anti_affinity_pods = 0
        # The affinity index (see the module docstring); only pods on known nodes are in it.
        self.pod_groups: dict[str, dict[Any, PodGroup]] = {}   # namespace -> PodInfo.group_key -> group
        self.anti_affinity_terms: dict[Any, TermGroup] = {}     # placed pods' required anti-affinity
        self.scoring_terms: dict[Any, TermGroup] = {}           # placed pods' terms that score incoming pods
        self.nominated: dict[str, dict[str, PodInfo]] = {}  # node -> pod key -> pod nominated to run there
        self._nominated_by_pod: dict[str, str] = {}
        # pods whose node is not known yet (pod event before the node's)
        self._orphans: dict[str, dict[str, PodInfo]] = {}
        self._clock = clock

    # -- nodes

    def add_node(self, node: Obj) -> NodeInfo:
        name = (node.get("metadata") or {}).get("name") or ""
        ni = self.nodes.get(name)
        if ni is not None:
            ni.set_node(node)
            return ni
        ni = NodeInfo(node)
        for pi in self._orphans.pop(name, {}).values():
            self._add_to(ni, pi)
        self.nodes[name] = ni
        self.node_list.append(ni)
        return ni

    update_node = add_node

    def remove_node(self, node: Obj) -> None:
        name = (node.get("metadata") or {}).get("name") or ""
        ni = self.nodes.pop(name, None)
        if ni is None:
            return
        self.node_list.remove(ni)
        if ni.pods:
            # The pods may still be deleted later; keep them so their removal balances.
            self._orphans[name] = dict(ni.pods)
        for pi in ni.pods.values():
            self._index(ni, pi, -1)
            if pi.anti_affinity_terms:
                self.anti_affinity_pods -= 1

    # -- pods

    def _add_to(self, ni: NodeInfo, pi: PodInfo) -> None:
        old = ni.pods.get(pi.key)
        if old is not None:  # NodeInfo.add_pod replaces it
            self._index(ni, old, -1)
            if old.anti_affinity_terms:
                self.anti_affinity_pods -= 1
        ni.add_pod(pi)
        self._index(ni, pi, 1)
        if pi.anti_affinity_terms:
            self.anti_affinity_pods += 1

    def _index(self, ni: NodeInfo, pi: PodInfo, delta: int) -> None:
        """Count pi (delta 1) or stop counting it (-1) on ni in the affinity index."""
        groups = self.pod_groups.get(pi.namespace)
        if groups is None:
            groups = self.pod_groups[pi.namespace] = {}
        group = groups.get(pi.group_key)
        if group is None:
            group = groups[pi.group_key] = PodGroup(pi)
        if _count_on(group.nodes, ni, delta):
            del groups[pi.group_key]
            if not groups:
                del self.pod_groups[pi.namespace]
        if not pi.has_affinity:
            return
        for term in pi.anti_affinity_terms:
            self._index_term(self.anti_affinity_terms, REQUIRED_ANTI_AFFINITY, term, ni, delta)
        for role, terms in ((REQUIRED_AFFINITY, pi.affinity_terms), (PREFERRED_AFFINITY, pi.preferred_affinity),
                            (PREFERRED_ANTI_AFFINITY, pi.preferred_anti_affinity)):
            for term in terms:
                self._index_term(self.scoring_terms, role, term, ni, delta)

    @staticmethod
    def _index_term(index: dict[Any, TermGroup], role: str, term: AffinityTerm, ni: NodeInfo, delta: int) -> None:
        key = (role, term.key)
        group = index.get(key)
        if group is None:
            group = index[key] = TermGroup(role, term)
        if _count_on(group.nodes, ni, delta):
            del index[key]

    def placed(self, key: str) -> tuple[NodeInfo, PodInfo] | None:
        """The node and PodInfo of the pod with this key, when it is on a known node."""
        node_name = self.pod_nodes.get(key)
        ni = self.nodes.get(node_name) if node_name is not None else None
        if ni is None:
            return None
        pi = ni.pods.get(key)
        return None if pi is None else (ni, pi)

    def _place(self, pi: PodInfo, node_name: str) -> None:
        self.pod_nodes[pi.key] = node_name
        ni = self.nodes.get(node_name)
        if ni is None:
            self._orphans.setdefault(node_name, {})[pi.key] = pi
        else:
            self._add_to(ni, pi)

    def _unplace(self, key: str) -> None:
        node_name = self.pod_nodes.pop(key, None)
        if node_name is None:
            return
        ni = self.nodes.get(node_name)
        if ni is None:
            orphans = self._orphans.get(node_name)
            if orphans is not None:
                orphans.pop(key, None)
                if not orphans:
                    del self._orphans[node_name]
            return
        pi = ni.remove_pod(key)
        if pi is not None:
            self._index(ni, pi, -1)
            if pi.anti_affinity_terms:
                self.anti_affinity_pods -= 1

    def add_pod(self, pod: Obj) -> None:
        """A pod bound to a node (seen through the informer); confirms it if it was assumed."""
        pi = PodInfo(pod)
        self.assumed.pop(pi.key, None)
        self._unplace(pi.key)
        self._place(pi, pi.node_name)

    update_pod = add_pod

    def remove_pod(self, pod: Obj) -> None:
        key = pod_key(pod)
        self.assumed.pop(key, None)
        self._unplace(key)

    def assume_pod(self, pi: PodInfo, node_name: str) -> None:
        """Account the pod on node_name before the API has it bound."""
        self._unplace(pi.key)
        self._place(pi, node_name)
        self.assumed[pi.key] = None

    def finish_binding(self, key: str) -> None:
        if key in self.assumed:
            self.assumed[key] = self._clock() + self.ASSUME_TTL

    def forget_pod(self, key: str) -> None:
        """Binding failed: the pod is not on the node after all."""
        if key in self.assumed:
            del self.assumed[key]
            self._unplace(key)

    def is_assumed(self, key: str) -> bool:
        return key in self.assumed

    def cleanup_assumed(self) -> int:
        now = self._clock()
        expired = [k for k, deadline in self.assumed.items() if deadline is not None and deadline < now]
        for key in expired:
            self.forget_pod(key)
        return len(expired)

    # -- nominations (pods that preempted others and wait for room on a node)

    def set_nominated(self, pi: PodInfo, node_name: str) -> None:
        self.clear_nominated(pi.key)
        if node_name:
            self.nominated.setdefault(node_name, {})[pi.key] = pi
            self._nominated_by_pod[pi.key] = node_name

    def clear_nominated(self, key: str) -> None:
        node = self._nominated_by_pod.pop(key, None)
        if node is not None:
            pods = self.nominated.get(node)
            if pods is not None:
                pods.pop(key, None)
                if not pods:
                    del self.nominated[node]

    # -- namespaces

    def set_namespace(self, ns: Obj, deleted: bool = False) -> None:
        name = (ns.get("metadata") or {}).get("name") or ""
        if deleted:
            self.namespace_labels.pop(name, None)
        else:
            self.namespace_labels[name] = (ns.get("metadata") or {}).get("labels") or {}

    def ns_labels(self, namespace: str) -> Mapping[str, str]:
        return self.namespace_labels.get(namespace) or {"kubernetes.io/metadata.name": namespace}
