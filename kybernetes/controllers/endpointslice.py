"""The EndpointSlice controllers: discovery.k8s.io/v1 EndpointSlices for every Service with a selector
(EndpointSliceController), and mirrored from the hand-made Endpoints of the others
(EndpointSliceMirroringController).

Which pods back a Service is defined once in endpoints.py; this module owns how
they are cut into slices, as upstream's pkg/controller/endpointslice:

* one set of slices per address type the Service has (spec.ipFamilies: a
  dual-stack Service gets IPv4 and IPv6 slices, each with the pods' addresses
  of that family), and within it one set per distinct port list (a named
  targetPort can resolve to different numbers on different pods);
* every pod with an IP that is not terminal is an endpoint, terminating pods
  included: conditions.ready (Ready and not terminating, or always with
  publishNotReadyAddresses), serving (Ready) and terminating; plus nodeName,
  zone (from the node's topology.kubernetes.io/zone label), targetRef and
  hostname. A pod whose node is unknown is left out (unless not-ready
  addresses are published) until the node appears;
* at most 100 endpoints a slice; slices are named `<service>-<random>`, carry the
  Service's labels plus kubernetes.io/service-name, endpointslice.kubernetes.io/
  managed-by and service.kubernetes.io/headless, and are controlled by the
  Service (ownerReference);
* minimal churn, as upstream's reconciler: endpoints that did not change stay in
  their slice; slices that changed get the new endpoints first (fullest first),
  then the leftovers go to the unchanged slice they fill best, then to new
  slices; a slice that would be deleted while another is created is rewritten
  instead; a Service with no endpoints keeps one empty placeholder slice per
  address type;
* slices this controller does not manage (another managed-by) are never
  touched; its own slices are compared with what they should be, so a tampered
  or deleted slice is put back; those of a deleted Service, or of one that no
  longer has a selector, are deleted.

The informer may not show a slice this controller just created; syncing from that
view would create a duplicate. As upstream's EndpointSliceTracker, the
controller remembers the names (and resourceVersions) of its own recent writes
until its cache shows them, and a sync waits until then. The same record tells
its own writes apart from other writers' when slice events arrive, so only the
latter cause a sync.

The mirroring controller (upstream's pkg/controller/endpointslicemirroring) keeps
one slice per address type and port list of each subset of an Endpoints whose
Service has no selector, managed-by endpointslicemirroring-controller.k8s.io and
controlled by the Endpoints; Endpoints labelled endpointslice.kubernetes.io/
skip-mirror=true (the API server's own `kubernetes`) are not mirrored.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from ..api.errors import StatusError
from ..client import Client, split_key
from .base import Controller, Requeue, key_of
from .common import Obj, is_pod_ready
from .endpoints import (
    HEADLESS_LABEL,
    LEADER_ANNOTATION,
    ServicePodEvents,
    TRIGGER_TIME_ANNOTATION,
    TriggerTimes,
    find_port,
    is_ipv6,
    is_service_ip_set,
    managed_by_controllers,
    normalize_ip,
    pod_ips,
    rfc3339_nano,
    selects,
    service_selector,
    should_pod_be_in_endpoints,
    should_set_hostname,
    target_ref,
)

log = logging.getLogger("kybernetes.controllers.endpointslice")

CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MIRRORING_CONTROLLER_NAME = "endpointslicemirroring-controller.k8s.io"
SKIP_MIRROR_LABEL = "endpointslice.kubernetes.io/skip-mirror"
LAST_APPLIED_ANNOTATION = "kubectl.kubernetes.io/last-applied-configuration"
# Upstream's --mirroring-max-endpoints-per-subset default.
MAX_MIRRORED_PER_SUBSET = 1000
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
ZONE_LABEL = "topology.kubernetes.io/zone"
RESERVED_LABELS = (SERVICE_NAME_LABEL, MANAGED_BY_LABEL, HEADLESS_LABEL)
# Upstream's --max-endpoints-per-slice default.
MAX_ENDPOINTS_PER_SLICE = 100
# Slice events wait this long before a sync (upstream waits 1s): a burst of
# them, or someone's edit followed by more, costs one sync.
SLICE_CHANGE_DELAY = 0.25
# How long the controller waits for its cache to show its own write before
# giving up on seeing it (e.g. a relist skipped it); then it looks afresh.
TRACKER_TTL = 30.0

SERVICE_INDEX = "endpointslice-service"
NODE_INDEX = "endpointslice-node"


def slice_service_index(s: Obj) -> list[str]:
    """A slice's Service key (namespace/name) from its kubernetes.io/service-name label."""
    m = s.get("metadata") or {}
    svc = (m.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{m.get('namespace')}/{svc}"] if svc else []


def pod_node_index(pod: Obj) -> list[str]:
    node = (pod.get("spec") or {}).get("nodeName")
    return [node] if node else []


def managed_by(s: Obj) -> str | None:
    return ((s.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL)


# ---------------------------------------------------------------------- desired endpoints


def address_types(svc: Obj) -> list[str]:
    """The slice address types of a Service (upstream's getAddressTypesForService)."""
    spec = svc.get("spec") or {}
    types = [f for f in dict.fromkeys(spec.get("ipFamilies") or []) if f in ("IPv4", "IPv6")]
    if types:
        return types
    if is_service_ip_set(svc):
        return ["IPv6" if is_ipv6(spec["clusterIP"]) else "IPv4"]
    # Headless without families (not yet defaulted): both, so no family's pods are dropped.
    return ["IPv4", "IPv6"]


def endpoint_ports(svc: Obj, pod: Obj) -> list[Obj]:
    """The slice ports this pod serves the Service on, in the Service's port order."""
    out = []
    for sp in (svc.get("spec") or {}).get("ports") or []:
        if not isinstance(sp, dict):
            continue
        num = find_port(pod, sp)
        if num is None:
            continue
        port: Obj = {"name": sp.get("name") or "", "port": num, "protocol": sp.get("protocol") or "TCP"}
        if sp.get("appProtocol"):
            port["appProtocol"] = sp["appProtocol"]
        out.append(port)
    return out


def ports_key(ports: Iterable[Obj] | None) -> bytes:
    """What identifies a port list regardless of order (upstream's PortMapKey)."""
    return orjson.dumps(sorted((p.get("name") or "", p.get("port") or 0, p.get("protocol") or "TCP",
                                p.get("appProtocol") or "") for p in ports or () if isinstance(p, dict)))


def endpoint_key(ep: Obj) -> tuple:
    """What identifies an endpoint across syncs: its addresses, hostname and target (upstream's
    endpoint hash). Everything else about it (conditions, node, zone) is updated in place."""
    ref = ep.get("targetRef") or {}
    return (tuple(sorted(ep.get("addresses") or [])), ep.get("hostname") or "", ref.get("namespace") or "",
            ref.get("name") or "")


def pod_to_endpoint(pod: Obj, node: Obj | None, svc: Obj, address_type: str) -> Obj:
    serving = is_pod_ready(pod)
    terminating = bool((pod.get("metadata") or {}).get("deletionTimestamp"))
    # Never ready while terminating, for consumers that only read ready, unless the
    # Service asks for every address.
    ready = bool((svc.get("spec") or {}).get("publishNotReadyAddresses")) or (serving and not terminating)
    want_v6 = address_type == "IPv6"
    ep: Obj = {"addresses": sorted(ip for ip in pod_ips(pod) if is_ipv6(ip) == want_v6),
               "conditions": {"ready": ready, "serving": serving, "terminating": terminating}}
    if should_set_hostname(pod, svc):
        ep["hostname"] = pod["spec"]["hostname"]
    ep["targetRef"] = target_ref(pod)
    node_name = (pod.get("spec") or {}).get("nodeName")
    if node_name:
        ep["nodeName"] = node_name
    zone = (((node or {}).get("metadata") or {}).get("labels") or {}).get(ZONE_LABEL)
    if zone:
        ep["zone"] = zone
    return ep


@dataclass
class PortGroup:
    """The desired endpoints of one address type and one port list."""

    ports: list[Obj]
    endpoints: dict[tuple, Obj] = field(default_factory=dict)


def desired_groups(svc: Obj, pods: Iterable[Obj], node_of: Callable[[str], Obj | None],
                   types: list[str]) -> dict[str, dict[bytes, PortGroup]]:
    """address type -> port-list key -> the endpoints the Service's pods make."""
    publish = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    groups: dict[str, dict[bytes, PortGroup]] = {t: {} for t in types}
    for pod in pods:
        if not should_pod_be_in_endpoints(pod, True):
            continue
        node_name = (pod.get("spec") or {}).get("nodeName") or ""
        node = node_of(node_name) if node_name else None
        if node is None and not publish:
            # A pod on a node that does not exist (yet): upstream leaves it out rather
            # than publish an endpoint no node serves; the node's arrival syncs again.
            continue
        ports = endpoint_ports(svc, pod)
        pk = ports_key(ports)
        for t in types:
            group = groups[t].setdefault(pk, PortGroup(ports))
            ep = pod_to_endpoint(pod, node, svc, t)
            if ep["addresses"]:
                group.endpoints[endpoint_key(ep)] = ep
    return groups


# ---------------------------------------------------------------------- planning slices


def slice_labels(svc: Obj, controller: str) -> dict[str, str]:
    """The Service's labels without the reserved ones, then the reserved ones as they must be."""
    m = svc.get("metadata") or {}
    labels = {k: v for k, v in (m.get("labels") or {}).items() if k not in RESERVED_LABELS}
    if not is_service_ip_set(svc):
        labels[HEADLESS_LABEL] = ""
    labels[SERVICE_NAME_LABEL] = m.get("name") or ""
    labels[MANAGED_BY_LABEL] = controller
    return labels


def service_owner_ref(svc: Obj) -> Obj:
    m = svc["metadata"]
    return {"apiVersion": "v1", "kind": "Service", "name": m["name"], "uid": m["uid"], "controller": True,
            "blockOwnerDeletion": True}


def owned_by(s: Obj, owner: Obj, kind: str = "Service") -> bool:
    uid = owner["metadata"].get("uid")
    return any(r.get("uid") == uid and r.get("kind") == kind and r.get("apiVersion") == "v1"
               for r in (s.get("metadata") or {}).get("ownerReferences") or [])


def new_slice(svc: Obj, address_type: str, ports: list[Obj], labels: dict[str, str]) -> Obj:
    m = svc["metadata"]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"generateName": f"{m['name']}-", "namespace": m.get("namespace"), "labels": dict(labels),
                         "ownerReferences": [service_owner_ref(svc)]},
            "addressType": address_type, "endpoints": [], "ports": copy.deepcopy(ports)}


def _edited(s: Obj, endpoints: list[Obj] | None, labels: dict[str, str]) -> Obj:
    """A copy of an existing slice to update: new endpoints (if given) and labels."""
    out = dict(s)
    out["metadata"] = {**s["metadata"], "labels": dict(labels)}
    out["endpoints"] = list(s.get("endpoints") or []) if endpoints is None else endpoints
    return out


@dataclass
class SlicePlan:
    creates: list[Obj] = field(default_factory=list)
    updates: list[Obj] = field(default_factory=list)
    deletes: list[Obj] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.creates or self.updates or self.deletes)


def _slice_to_fill(slices: Iterable[Obj], n: int, max_per_slice: int) -> Obj | None:
    """The slice that n more endpoints fill the most without overflowing it."""
    best, best_room = None, max_per_slice
    for s in slices:
        room = max_per_slice - (n + len(s.get("endpoints") or []))
        if 0 <= room < best_room:
            best, best_room = s, room
            if room == 0:
                break
    return best


def _plan_port_group(svc: Obj, address_type: str, existing: list[Obj], group: PortGroup, labels: dict[str, str],
                     max_per_slice: int, plan: SlicePlan) -> None:
    """Upstream's reconcileByPortMapping: keep endpoints where they are, fill, then create."""
    wanted = dict(group.endpoints)
    to_update: dict[str, Obj] = {}
    unchanged: dict[str, Obj] = {}
    for s in existing:
        name = s["metadata"]["name"]
        kept: list[Obj] = []
        changed = False
        for ep in s.get("endpoints") or []:
            want = wanted.pop(endpoint_key(ep), None)
            if want is None:
                continue  # no longer wanted, or a duplicate of one already placed
            kept.append(want)
            changed = changed or want != ep
        if changed or len(kept) != len(s.get("endpoints") or []):
            if kept:
                to_update[name] = _edited(s, kept, labels)
            else:
                plan.deletes.append(s)
        elif (s["metadata"].get("labels") or {}) != labels:
            to_update[name] = _edited(s, None, labels)
        else:
            unchanged[name] = s
    remaining = deque(sorted(wanted.values(), key=endpoint_key))
    # Slices being written anyway take new endpoints first, fullest first.
    for s in sorted(to_update.values(), key=lambda s: -len(s["endpoints"])):
        while remaining and len(s["endpoints"]) < max_per_slice:
            s["endpoints"].append(remaining.popleft())
    while remaining:
        target = None
        if len(remaining) < max_per_slice and unchanged:
            found = _slice_to_fill(unchanged.values(), len(remaining), max_per_slice)
            if found is not None:
                name = found["metadata"]["name"]
                del unchanged[name]
                target = to_update[name] = _edited(found, None, labels)
        if target is None:
            target = new_slice(svc, address_type, group.ports, labels)
            plan.creates.append(target)
        while remaining and len(target["endpoints"]) < max_per_slice:
            target["endpoints"].append(remaining.popleft())
    plan.updates.extend(to_update.values())


def _is_placeholder(s: Obj, labels: dict[str, str], address_type: str) -> bool:
    return not s.get("endpoints") and not s.get("ports") and s.get("addressType") == address_type and \
        (s["metadata"].get("labels") or {}) == labels


def plan_slices(svc: Obj, groups: dict[str, dict[bytes, PortGroup]], existing: list[Obj], labels: dict[str, str],
                max_per_slice: int = MAX_ENDPOINTS_PER_SLICE, placeholder: bool = True) -> SlicePlan:
    """The creates, updates and deletes that turn `existing` (this controller's slices of the
    Service, none pending deletion) into slices holding `groups` (upstream's Reconcile)."""
    plan = SlicePlan()
    by_type: dict[str, list[Obj]] = {}
    for s in existing:
        if s.get("addressType") in groups:
            by_type.setdefault(s["addressType"], []).append(s)
        else:
            plan.deletes.append(s)
    for address_type, port_groups in groups.items():
        sub = SlicePlan()
        by_ports: dict[bytes, list[Obj]] = {}
        for s in by_type.get(address_type, []):
            if owned_by(s, svc):
                by_ports.setdefault(ports_key(s.get("ports")), []).append(s)
            else:
                sub.deletes.append(s)  # left by an earlier Service of the same name
        for pk, group in port_groups.items():
            _plan_port_group(svc, address_type, by_ports.get(pk, []), group, labels, max_per_slice, sub)
        for pk, slices in by_ports.items():
            if pk not in port_groups:
                sub.deletes.extend(slices)
        if placeholder and len(by_type.get(address_type, [])) == len(sub.deletes) and not sub.creates:
            # No endpoints of this type: one empty slice still says the Service exists.
            if len(sub.deletes) == 1 and _is_placeholder(sub.deletes[0], labels, address_type):
                sub.deletes.clear()
            else:
                sub.creates.append(new_slice(svc, address_type, [], labels))
        plan.creates += sub.creates
        plan.updates += sub.updates
        plan.deletes += sub.deletes
    _recycle(plan, lambda s: owned_by(s, svc))
    return plan


def _recycle(plan: SlicePlan, reusable: Callable[[Obj], bool]) -> None:
    """A slice about to be deleted while another is created is rewritten as the new one instead
    (if it is of the same address type, which never changes, and has the same owner)."""
    i = 0
    while i < len(plan.deletes) and plan.creates:
        old, new = plan.deletes[i], plan.creates[-1]
        if old.get("addressType") == new.get("addressType") and reusable(old):
            om = old["metadata"]
            meta = {k: v for k, v in new["metadata"].items() if k != "generateName"}
            meta.update(name=om["name"], uid=om.get("uid"), resourceVersion=om.get("resourceVersion"))
            plan.creates.pop()
            plan.updates.append({**new, "metadata": meta})
            plan.deletes.pop(i)
        else:
            i += 1


# ---------------------------------------------------------------------- tracking own writes


class SliceTracker:
    """The slices this controller wrote or deleted that its cache may not show yet, per Service.

    name -> (resourceVersion written, or None for a deletion; deadline). Only
    equality of resourceVersions is used: an event carrying the version this
    controller wrote is its own.
    """

    def __init__(self, ttl: float = TRACKER_TTL):
        self.ttl = ttl
        self._by_service: dict[str, dict[str, tuple[str | None, float]]] = {}

    def wrote(self, svc_key: str, s: Obj) -> None:
        m = s.get("metadata") or {}
        self._by_service.setdefault(svc_key, {})[m.get("name", "")] = (m.get("resourceVersion"),
                                                                       time.monotonic() + self.ttl)

    def deleted(self, svc_key: str, s: Obj) -> None:
        self._by_service.setdefault(svc_key, {})[s["metadata"]["name"]] = (None, time.monotonic() + self.ttl)

    def own_event(self, svc_key: str, s: Obj, deleted: bool = False) -> bool:
        """Whether this add/update (or delete) event just shows this controller's own write."""
        entries = self._by_service.get(svc_key)
        m = s.get("metadata") or {}
        entry = entries.get(m.get("name", "")) if entries else None
        if entry is None:
            return False
        rv = entry[0]
        if deleted:
            # Ours if this controller deleted it; someone else's otherwise (then it must come back).
            self._drop(svc_key, m["name"])
            return rv is None
        if rv is not None and rv == m.get("resourceVersion"):
            self._drop(svc_key, m["name"])
            return True
        return False

    def _drop(self, svc_key: str, name: str) -> None:
        entries = self._by_service.get(svc_key)
        if entries is not None:
            entries.pop(name, None)
            if not entries:
                del self._by_service[svc_key]

    def stale(self, svc_key: str, cached: Callable[[str], Obj | None]) -> bool:
        """Whether the cache still misses a slice created, or still shows one deleted, for this Service."""
        entries = self._by_service.get(svc_key)
        if not entries:
            return False
        now = time.monotonic()
        waiting = False
        for name, (rv, deadline) in list(entries.items()):
            s = cached(name)
            if now > deadline:
                del entries[name]
            elif rv is None:
                if s is None or s["metadata"].get("deletionTimestamp"):
                    del entries[name]
                else:
                    waiting = True
            elif s is None:
                waiting = True
            else:
                # Seen (this version or a later one; an older one fails its update with a
                # conflict, so it cannot do harm).
                del entries[name]
        if not entries:
            self._by_service.pop(svc_key, None)
        return waiting

    def forget(self, svc_key: str) -> None:
        self._by_service.pop(svc_key, None)


# ---------------------------------------------------------------------- the controllers


class _SliceWriter(Controller):
    """What both slice controllers share: the slice informer and its events, and writing a plan.

    Slices are keyed by their Service (the kubernetes.io/service-name label); each
    controller only looks at slices whose managed-by label names it.
    """

    manager = ""

    def __init__(self, client: Client):
        super().__init__(client)
        self.slice_client = client.resource("discovery.k8s.io/v1", "endpointslices")
        self.services = self.informer("v1", "services")
        self.slices = self.informer("discovery.k8s.io/v1", "endpointslices")
        self.slices.add_index(SERVICE_INDEX, slice_service_index)
        self.tracker = SliceTracker()
        self.slices.add_handler(on_add=self._slice_added, on_update=self._slice_updated,
                                on_delete=self._slice_deleted)

    def _slice_changed(self, s: Obj) -> None:
        keys = slice_service_index(s)
        if keys:
            self.queue.add_after(keys[0], SLICE_CHANGE_DELAY)

    def _slice_added(self, s: Obj) -> None:
        keys = slice_service_index(s)
        if keys and managed_by(s) == self.manager and not self.tracker.own_event(keys[0], s):
            self._slice_changed(s)

    def _slice_updated(self, old: Obj, new: Obj) -> None:
        if slice_service_index(old) != slice_service_index(new):
            # Someone moved it to another Service: both need a look.
            self._slice_changed(old)
            self._slice_changed(new)
        elif managed_by(old) != managed_by(new) and self.manager in (managed_by(old), managed_by(new)):
            self._slice_changed(new)
        elif (old.get("metadata") or {}).get("resourceVersion") != (new.get("metadata") or {}).get(
                "resourceVersion"):
            self._slice_added(new)

    def _slice_deleted(self, s: Obj) -> None:
        keys = slice_service_index(s)
        if keys and managed_by(s) == self.manager and not self.tracker.own_event(keys[0], s, deleted=True):
            self._slice_changed(s)

    def _mine(self, key: str) -> list[Obj]:
        return [s for s in self.slices.by_index(SERVICE_INDEX, key) if managed_by(s) == self.manager]

    def _cache_is_behind(self, key: str) -> bool:
        ns, _ = split_key(key)
        return self.tracker.stale(key, lambda name: self.slices.get_by_name(name, ns))

    async def _delete_all(self, key: str, slices: list[Obj]) -> None:
        for s in slices:
            if not s["metadata"].get("deletionTimestamp"):
                await self._delete(key, s)

    async def _apply(self, key: str, plan: SlicePlan, trigger: float | None, may_create: bool,
                     stamp: bool = True) -> None:
        """Creates first, then updates, then deletes, so consumers never see a gap."""
        ns, _ = split_key(key)
        if may_create:
            for s in plan.creates:
                if stamp:
                    _stamp(s, trigger)
                try:
                    created = await self.slice_client.create(s, ns)
                except StatusError as e:
                    if e.code == 403:
                        log.debug("endpointslice for %s not created: %s", key, e.message)
                        return  # the namespace is terminating
                    raise
                self.tracker.wrote(key, created)
        for s in plan.updates:
            if stamp:
                _stamp(s, trigger)
            # A stale cache shows up as a 409 on this resourceVersion: the base retries.
            updated = await self.slice_client.update(s, ns)
            self.tracker.wrote(key, updated)
        for s in plan.deletes:
            await self._delete(key, s)

    async def _delete(self, key: str, s: Obj) -> None:
        m = s["metadata"]
        try:
            await self.slice_client.delete(m["name"], m.get("namespace"), preconditions={"uid": m.get("uid")})
        except StatusError as e:
            if e.code not in (404, 409):
                raise
            return
        self.tracker.deleted(key, s)


class EndpointSliceController(ServicePodEvents, _SliceWriter):
    name = "endpointslice"
    workers = 4
    manager = CONTROLLER_NAME

    def __init__(self, client: Client, *, max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE):
        super().__init__(client)
        self.max_endpoints_per_slice = max_endpoints_per_slice
        self.pods = self.informer("v1", "pods")
        self.nodes = self.informer("v1", "nodes", namespaced=False)
        self.pods.add_index(NODE_INDEX, pod_node_index)
        self.triggers = TriggerTimes()
        self.watch_services_and_pods()
        self.nodes.add_handler(on_add=self._node_event, on_update=self._node_updated, on_delete=self._node_event)

    # ------------------------------------------------------------ event handlers


    def _node_event(self, node: Obj) -> None:
        # Pods on a node that was missing (or is gone) join (or leave) their slices.
        for pod in self.pods.by_index(NODE_INDEX, (node.get("metadata") or {}).get("name") or ""):
            self._pod_added(pod)

    def _node_updated(self, old: Obj, new: Obj) -> None:
        ol = (old.get("metadata") or {}).get("labels") or {}
        nl = (new.get("metadata") or {}).get("labels") or {}
        if ol.get(ZONE_LABEL) != nl.get(ZONE_LABEL):
            self._node_event(new)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        svc = self.services.get(key)
        mine = self._mine(key)
        if svc is None or not managed_by_controllers(svc):
            # Gone, or its endpoints are now the user's: what this controller made is stale.
            # (Upstream leaves them to the garbage collector, or for ever once the selector
            # is removed, while the mirroring controller would add its own.)
            self.triggers.forget(key)
            await self._delete_all(key, mine)
            if svc is None:
                self.tracker.forget(key)
            return
        if self._cache_is_behind(key):
            raise Requeue()
        trigger = self.triggers.take(key)
        try:
            ns = svc["metadata"].get("namespace") or ""
            selector = service_selector(svc)
            pods = [p for p in self.pods.list_by_namespace(ns)
                    if selects(selector, (p.get("metadata") or {}).get("labels"))]
            groups = desired_groups(svc, pods, self.nodes.get, address_types(svc))
            existing = [s for s in mine if not s["metadata"].get("deletionTimestamp")]
            plan = plan_slices(svc, groups, existing, slice_labels(svc, CONTROLLER_NAME),
                               self.max_endpoints_per_slice)
            if plan:
                # No new slices for a Service on its way out: the garbage collector would race them.
                await self._apply(key, plan, trigger, not svc["metadata"].get("deletionTimestamp"))
        except BaseException:
            self.triggers.put_back(key, trigger)
            raise


# ---------------------------------------------------------------------- mirroring


def mirrored_groups(ep: Obj, max_per_subset: int = MAX_MIRRORED_PER_SUBSET) -> dict[tuple[str, bytes], PortGroup]:
    """(address type, port-list key) -> the endpoints an Endpoints' subsets make; at most
    max_per_subset addresses of each subset, invalid IPs skipped."""
    groups: dict[tuple[str, bytes], PortGroup] = {}
    for subset in ep.get("subsets") or []:
        if not isinstance(subset, dict):
            continue
        ports = []
        for p in subset.get("ports") or []:
            port: Obj = {"name": p.get("name") or "", "port": p.get("port"), "protocol": p.get("protocol") or "TCP"}
            if p.get("appProtocol"):
                port["appProtocol"] = p["appProtocol"]
            ports.append(port)
        pk = ports_key(ports)
        added = 0
        for field_name, ready in (("addresses", True), ("notReadyAddresses", False)):
            for a in subset.get(field_name) or []:
                if added >= max_per_subset:
                    break
                ip = normalize_ip((a or {}).get("ip"))
                if ip is None:
                    continue
                e: Obj = {"addresses": [str(ip)], "conditions": {"ready": ready}}
                if a.get("hostname"):
                    e["hostname"] = a["hostname"]
                if a.get("targetRef"):
                    e["targetRef"] = a["targetRef"]
                if a.get("nodeName"):
                    e["nodeName"] = a["nodeName"]
                at = "IPv6" if ip.version == 6 else "IPv4"
                groups.setdefault((at, pk), PortGroup(ports)).endpoints[endpoint_key(e)] = e
                added += 1
    return groups


class EndpointSliceMirroringController(_SliceWriter):
    """Slices for the hand-made Endpoints of selector-less Services (upstream's endpointslicemirroring).

    For a Service without a selector whose Endpoints does not carry
    endpointslice.kubernetes.io/skip-mirror=true: one slice per address type and
    port list of its subsets (at most 1000 addresses a subset), carrying the
    Endpoints' labels and annotations, controlled by the Endpoints object.
    Mirrored slices of anything else are deleted.
    """

    name = "endpointslicemirroring"
    workers = 2
    manager = MIRRORING_CONTROLLER_NAME

    def __init__(self, client: Client, *, max_per_subset: int = MAX_MIRRORED_PER_SUBSET):
        super().__init__(client)
        self.max_per_subset = max_per_subset
        self.endpoints = self.informer("v1", "endpoints")
        on = dict(on_add=lambda o: self.enqueue(key_of(o)), on_update=lambda _o, n: self.enqueue(key_of(n)),
                  on_delete=lambda o: self.enqueue(key_of(o)))
        self.services.add_handler(**on)
        self.endpoints.add_handler(**on)

    def _mirrors(self, key: str) -> Obj | None:
        """The Endpoints to mirror under this key, if there is one to mirror."""
        svc, ep = self.services.get(key), self.endpoints.get(key)
        if svc is None or ep is None or service_selector(svc) is not None:
            return None
        meta = ep.get("metadata") or {}
        if (meta.get("labels") or {}).get(SKIP_MIRROR_LABEL) == "true" or LEADER_ANNOTATION in (
                meta.get("annotations") or {}):
            return None
        return ep

    async def reconcile(self, key: str) -> None:
        mine = self._mine(key)
        ep = self._mirrors(key)
        if ep is None:
            await self._delete_all(key, mine)
            if key not in self.endpoints:
                self.tracker.forget(key)
            return
        if self._cache_is_behind(key):
            raise Requeue()
        meta = ep["metadata"]
        labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in (MANAGED_BY_LABEL,
                                                                                   SERVICE_NAME_LABEL)}
        labels.update({SERVICE_NAME_LABEL: meta["name"], MANAGED_BY_LABEL: MIRRORING_CONTROLLER_NAME})
        annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                       if k not in (TRIGGER_TIME_ANNOTATION, LAST_APPLIED_ANNOTATION)}
        owner = {"apiVersion": "v1", "kind": "Endpoints", "name": meta["name"], "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        existing: dict[tuple[str, bytes], list[Obj]] = {}
        for s in mine:
            if not s["metadata"].get("deletionTimestamp"):
                existing.setdefault((s.get("addressType") or "", ports_key(s.get("ports"))), []).append(s)
        plan = SlicePlan()
        for gk, group in mirrored_groups(ep, self.max_per_subset).items():
            want_eps = sorted(group.endpoints.values(), key=endpoint_key)
            have = existing.pop(gk, [])
            # One slice per subset's ports (upstream's 1:1 mapping); extras go.
            plan.deletes += have[1:]
            body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"namespace": meta.get("namespace"), "labels": labels,
                                 "ownerReferences": [owner]},
                    "addressType": gk[0], "endpoints": want_eps, "ports": copy.deepcopy(group.ports)}
            if annotations:
                body["metadata"]["annotations"] = dict(annotations)
            if not have:
                body["metadata"]["generateName"] = f"{meta['name']}-"
                plan.creates.append(body)
                continue
            cur = have[0]
            cm = cur["metadata"]
            if {endpoint_key(e): e for e in cur.get("endpoints") or []} == group.endpoints and \
                    len(cur.get("endpoints") or []) == len(want_eps) and (cm.get("labels") or {}) == labels and \
                    (cm.get("annotations") or {}) == annotations and cm.get("ownerReferences") == [owner]:
                continue
            body["metadata"].update(name=cm["name"], uid=cm.get("uid"), resourceVersion=cm.get("resourceVersion"))
            plan.updates.append(body)
        for slices in existing.values():
            plan.deletes += slices
        _recycle(plan, lambda s: owned_by(s, ep, "Endpoints"))
        if plan:
            # Annotations are the Endpoints', so no trigger time of this controller's own.
            await self._apply(key, plan, None, not meta.get("deletionTimestamp"), stamp=False)


def _stamp(s: Obj, trigger: float | None) -> None:
    """Set (or clear) the trigger-time annotation on a slice about to be written."""
    m = s["metadata"] = dict(s["metadata"])
    annotations = dict(m.get("annotations") or {})
    if trigger is not None:
        annotations[TRIGGER_TIME_ANNOTATION] = rfc3339_nano(trigger)
    else:
        annotations.pop(TRIGGER_TIME_ANNOTATION, None)
    if annotations:
        m["annotations"] = annotations
    else:
        m.pop("annotations", None)
