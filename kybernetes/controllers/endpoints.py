"""The Endpoints controller: the core/v1 Endpoints object of every Service with a selector.

Also what both endpoint controllers (this one and endpointslice.py) mean by "the
pods behind a Service", defined once: which pods count (a pod IP, not terminal),
a Service's address families, named target ports resolved per pod, and which
Services a pod event concerns.

One reconcile of a Service key, as upstream's pkg/controller/endpoint:

* the Service is gone: its Endpoints are deleted;
* ExternalName or selector-less Services are left alone: their Endpoints are
  the user's (the EndpointSliceMirroring controller mirrors them into slices);
* otherwise every matching pod with an IP of the Service's primary family and
  not in a terminal phase becomes an address: ready pods under `addresses`, the
  others under `notReadyAddresses` (all are ready with publishNotReadyAddresses).
  Terminating pods are left out unless publishNotReadyAddresses is set. Each
  address is entered once per Service port the pod has (a named targetPort is
  looked up in the pod's container ports; a pod without it is not an address
  for that port), and the (address, port) pairs are packed into subsets of
  addresses that share the same ports, in a canonical order, so equal states
  compare equal;
* the Endpoints carries the Service's labels (plus service.kubernetes.io/headless
  for headless Services), at most 1000 addresses (the rest is truncated and
  marked endpoints.kubernetes.io/over-capacity), and the time of the change that
  triggered the write (endpoints.kubernetes.io/last-change-trigger-time);
* nothing is written when the stored object already says all that, so a
  tampered Endpoints is put back by the next sync and an untouched one costs no
  write. Stale-cache writes fail on resourceVersion (update) or AlreadyExists
  (create) and are retried, so no expectations are needed.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

from ..api.errors import StatusError
from ..client import Client, Informer, split_key
from .base import Controller, key_of
from .common import Obj, is_pod_ready

log = logging.getLogger("kybernetes.controllers.endpoints")

HEADLESS_LABEL = "service.kubernetes.io/headless"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"
OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"
# Endpoints holding a leader-election record are not a Service's: never clean them up.
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
MAX_ENDPOINTS_CAPACITY = 1000


# ---------------------------------------------------------------------- what backs a Service


def service_selector(svc: Obj) -> dict[str, str] | None:
    """A Service's pod selector, or None when it selects nothing (absent or empty, as upstream
    reads it after a storage round trip; such a Service's endpoints are managed by hand)."""
    sel = (svc.get("spec") or {}).get("selector")
    return sel if isinstance(sel, dict) and sel else None


def selects(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def managed_by_controllers(svc: Obj) -> bool:
    """Whether the endpoint controllers compute this Service's endpoints from its pods."""
    return (svc.get("spec") or {}).get("type") != "ExternalName" and service_selector(svc) is not None


def is_service_ip_set(svc: Obj) -> bool:
    ip = (svc.get("spec") or {}).get("clusterIP") or ""
    return ip not in ("", "None")


def normalize_ip(ip: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(ip) if isinstance(ip, str) else None
    except ValueError:
        return None


def pod_ips(pod: Obj) -> list[str]:
    """The pod's IPs in canonical text form (status.podIPs, or status.podIP alone); bad ones skipped."""
    status = pod.get("status") or {}
    raw = [(e or {}).get("ip") for e in status.get("podIPs") or [] if isinstance(e, dict)]
    if not raw and status.get("podIP"):
        raw = [status["podIP"]]
    out = []
    for ip in raw:
        addr = normalize_ip(ip)
        if addr is not None:
            out.append(str(addr))
    return out


def is_ipv6(ip: str) -> bool:
    return ":" in ip


def should_pod_be_in_endpoints(pod: Obj, include_terminating: bool) -> bool:
    """Not terminal, has an IP, and (unless asked to include them) not terminating."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return False
    if not status.get("podIP") and not status.get("podIPs"):
        return False
    return include_terminating or not (pod.get("metadata") or {}).get("deletionTimestamp")


def should_set_hostname(pod: Obj, svc: Obj) -> bool:
    """A pod's spec.hostname names it within a Service whose name is the pod's spec.subdomain."""
    spec, pm, sm = pod.get("spec") or {}, pod.get("metadata") or {}, svc.get("metadata") or {}
    return bool(spec.get("hostname")) and spec.get("subdomain") == sm.get("name") and \
        pm.get("namespace") == sm.get("namespace")


def find_port(pod: Obj, svc_port: Obj) -> int | None:
    """The container port a Service port reaches on this pod: a number as it is, a name looked up
    among the pod's containers (and restartable init containers, i.e. sidecars) with the same
    protocol. None when the pod has no such named port."""
    target = svc_port.get("targetPort")
    if target is None or target == "" or target == 0:
        target = svc_port.get("port")
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = svc_port.get("protocol") or "TCP"
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    containers += [c for c in spec.get("initContainers") or [] if (c or {}).get("restartPolicy") == "Always"]
    for c in containers:
        for p in (c or {}).get("ports") or []:
            if p.get("name") == target and (p.get("protocol") or "TCP") == protocol:
                return p.get("containerPort")
    return None


def target_ref(pod: Obj) -> Obj:
    m = pod.get("metadata") or {}
    return {"kind": "Pod", "namespace": m.get("namespace"), "name": m.get("name"), "uid": m.get("uid")}


def rfc3339_nano(t: float) -> str:
    """A trigger time as upstream writes it (RFC 3339 with the fraction, UTC)."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pod_endpoint_changes(old: Obj, new: Obj) -> tuple[bool, bool]:
    """(the pod changed in a way its endpoints show, the pod's labels changed)."""
    om, nm = old.get("metadata") or {}, new.get("metadata") or {}
    ospec, nspec = old.get("spec") or {}, new.get("spec") or {}
    ostatus, nstatus = old.get("status") or {}, new.get("status") or {}
    terminal = ("Succeeded", "Failed")
    pod_changed = (bool(om.get("deletionTimestamp")) != bool(nm.get("deletionTimestamp"))
                   or is_pod_ready(old) != is_pod_ready(new)
                   or pod_ips(old) != pod_ips(new)
                   # Upstream counts a new hostname or subdomain as a label change, so Services the
                   # pod stays behind miss its new DNS name; here it is a change of the endpoint.
                   or ospec.get("hostname") != nspec.get("hostname")
                   or ospec.get("subdomain") != nspec.get("subdomain")
                   # Upstream leaves these out (a terminal pod is no longer ready; nodeName is set
                   # before there is an IP); they are cheap to look at and say what they mean.
                   or (ostatus.get("phase") in terminal) != (nstatus.get("phase") in terminal)
                   or ospec.get("nodeName") != nspec.get("nodeName"))
    return pod_changed, (om.get("labels") or {}) != (nm.get("labels") or {})


def services_for_labels(services: Informer, namespace: str, labels: dict[str, str] | None) -> set[str]:
    return {key_of(s) for s in services.list_by_namespace(namespace) if selects(service_selector(s), labels)}


def services_to_update(services: Informer, old: Obj, new: Obj) -> set[str]:
    """The Services a pod update concerns (upstream's GetServicesToUpdateOnPodChange).

    A resync (same resourceVersion) concerns none: Services resync themselves. When only the
    labels moved, only Services the pod joined or left care; when the pod also changed, every
    Service it was or is behind does.
    """
    om, nm = old.get("metadata") or {}, new.get("metadata") or {}
    if om.get("resourceVersion") == nm.get("resourceVersion"):
        return set()
    pod_changed, labels_changed = _pod_endpoint_changes(old, new)
    if not pod_changed and not labels_changed:
        return set()
    ns = nm.get("namespace") or ""
    now = services_for_labels(services, ns, nm.get("labels"))
    if not labels_changed:
        return now
    before = services_for_labels(services, ns, om.get("labels"))
    return now | before if pod_changed else now ^ before


def service_labels(svc: Obj) -> dict[str, str]:
    """The labels an Endpoints object of this Service carries."""
    labels = dict((svc.get("metadata") or {}).get("labels") or {})
    if is_service_ip_set(svc):
        labels.pop(HEADLESS_LABEL, None)
    else:
        labels[HEADLESS_LABEL] = ""
    return labels


class TriggerTimes:
    """When the oldest change not yet written for a Service happened.

    Stamped when an event enqueues the Service, taken by the sync that writes it:
    that is the endpoints.kubernetes.io/last-change-trigger-time a proxy measures
    its programming latency from. A sync with nothing pending (a resync healing
    a tampered object) writes no trigger time, as upstream.
    """

    def __init__(self) -> None:
        self._first: dict[str, float] = {}

    def touch(self, key: str, when: float | None = None) -> None:
        self._first.setdefault(key, time.time() if when is None else when)

    def take(self, key: str) -> float | None:
        return self._first.pop(key, None)

    def put_back(self, key: str, when: float | None) -> None:
        if when is not None:
            self._first[key] = min(when, self._first.get(key, when))

    def forget(self, key: str) -> None:
        self._first.pop(key, None)


# ---------------------------------------------------------------------- packing subsets


def _ip_sort_key(ip: str) -> tuple[int, int]:
    addr = normalize_ip(ip)
    return (addr.version, int(addr)) if addr is not None else (0, 0)


def _address_key(addr: Obj) -> tuple[str, str]:
    return addr.get("ip", ""), ((addr.get("targetRef") or {}).get("uid") or "")


def _port_key(port: Obj | None) -> tuple:
    if port is None:
        return ()
    return (port.get("name") or "", port.get("port") or 0, port.get("protocol") or "TCP", port.get("appProtocol") or "")


def repack_subsets(entries: Iterable[tuple[Obj, bool, Obj | None]]) -> list[Obj]:
    """Subsets from (address, ready, port or None) entries, in upstream's canonical layout.

    Each port maps to the set of addresses (with their readiness) that offer it;
    ports with identical address sets share a subset. Addresses sort by IP then
    target uid, ports by name/number/protocol, subsets by their first address.
    An entry without a port (a headless Service without ports) keeps its address.
    """
    addrs: dict[tuple[str, str], Obj] = {}
    by_port: dict[tuple, dict[tuple[str, str], bool]] = {}
    ports: dict[tuple, Obj | None] = {}
    for addr, ready, port in entries:
        ak = _address_key(addr)
        addrs.setdefault(ak, addr)
        pk = _port_key(port)
        ports.setdefault(pk, port)
        seen = by_port.setdefault(pk, {})
        # Ready wins when the same address is entered twice for one port.
        seen[ak] = seen.get(ak, False) or ready
    groups: dict[frozenset, list[tuple]] = {}
    for pk, members in by_port.items():
        groups.setdefault(frozenset(members.items()), []).append(pk)
    subsets = []
    for members, pks in groups.items():
        keys = sorted(members, key=lambda m: (_ip_sort_key(m[0][0]), m[0][1]))
        subset: Obj = {}
        ready = [addrs[ak] for ak, r in keys if r]
        not_ready = [addrs[ak] for ak, r in keys if not r]
        if ready:
            subset["addresses"] = ready
        if not_ready:
            subset["notReadyAddresses"] = not_ready
        real_ports = [ports[pk] for pk in sorted(pks) if ports[pk] is not None]
        if real_ports:
            subset["ports"] = real_ports
        subsets.append(subset)

    def order(s: Obj) -> tuple:
        first = (s.get("addresses") or s.get("notReadyAddresses") or [{}])[0]
        return (_ip_sort_key(first.get("ip", "")), _address_key(first)[1], [_port_key(p) for p in s.get("ports") or []])
    subsets.sort(key=order)
    return subsets


def truncate_subsets(subsets: list[Obj], capacity: int = MAX_ENDPOINTS_CAPACITY) -> bool:
    """Cut subsets in place to `capacity` addresses, as upstream: not-ready addresses go first,
    each subset keeping its share (rounded up) of what remains. True if anything was cut."""
    total_ready = sum(len(s.get("addresses") or []) for s in subsets)
    total_not_ready = sum(len(s.get("notReadyAddresses") or []) for s in subsets)
    if total_ready + total_not_ready <= capacity:
        return False
    if total_ready > capacity:
        field, budget, total = "addresses", capacity, total_ready
    else:
        field, budget, total = "notReadyAddresses", capacity - total_ready, total_not_ready
    left = budget
    for s in subsets:
        have = s.get(field) or []
        n = min(-(-len(have) * budget // total), left, len(have))
        if n:
            s[field] = have[:n]
        else:
            s.pop(field, None)
        left -= n
        if field == "addresses":
            s.pop("notReadyAddresses", None)
    subsets[:] = [s for s in subsets if s.get("addresses") or s.get("notReadyAddresses")]
    return True


def desired_subsets(svc: Obj, pods: Iterable[Obj]) -> list[Obj]:
    """The Endpoints subsets a Service's matching pods make (before truncation)."""
    spec = svc.get("spec") or {}
    publish = bool(spec.get("publishNotReadyAddresses"))
    svc_ports = [p for p in spec.get("ports") or [] if isinstance(p, dict)]
    headless = spec.get("clusterIP") == "None"
    families = spec.get("ipFamilies") or []
    entries: list[tuple[Obj, bool, Obj | None]] = []
    for pod in pods:
        if not should_pod_be_in_endpoints(pod, publish):
            continue
        ips = pod_ips(pod)
        if families:
            want_v6 = families[0] == "IPv6"
        elif is_service_ip_set(svc):
            want_v6 = is_ipv6(spec["clusterIP"])
        else:
            # Headless without families: the pod's primary IP says which family it lives in.
            want_v6 = bool(ips) and is_ipv6(ips[0])
        ip = next((i for i in ips if is_ipv6(i) == want_v6), None)
        if ip is None:
            continue
        addr: Obj = {"ip": ip}
        if should_set_hostname(pod, svc):
            addr["hostname"] = pod["spec"]["hostname"]
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            addr["nodeName"] = node
        addr["targetRef"] = target_ref(pod)
        ready = publish or is_pod_ready(pod)
        if not svc_ports:
            if headless:
                entries.append((addr, ready, None))
            continue
        for sp in svc_ports:
            num = find_port(pod, sp)
            if num is None:
                continue
            port: Obj = {"port": num, "protocol": sp.get("protocol") or "TCP"}
            if sp.get("name"):
                port = {"name": sp["name"], **port}
            if sp.get("appProtocol"):
                port["appProtocol"] = sp["appProtocol"]
            entries.append((addr, ready, port))
    return repack_subsets(entries)


# ---------------------------------------------------------------------- the controller


class ServicePodEvents:
    """The Service and Pod events both endpoint controllers act on: a Service's own changes,
    and a pod's (old or new labels) for every Service selecting it, each noted for the
    last-change-trigger-time. Needs ``services``, ``pods``, ``triggers`` and ``enqueue``."""

    services: Informer
    pods: Informer
    triggers: TriggerTimes
    enqueue: Callable[[str], None]  # the Controller's

    def watch_services_and_pods(self) -> None:
        self.services.add_handler(on_add=self._service_event, on_update=lambda _o, n: self._service_event(n),
                                  on_delete=self._service_event)
        self.pods.add_handler(on_add=self._pod_added, on_update=self._pod_updated, on_delete=self._pod_added)

    def _touch(self, key: str) -> None:
        self.triggers.touch(key)
        self.enqueue(key)

    def _service_event(self, svc: Obj) -> None:
        self._touch(key_of(svc))

    def _pod_added(self, pod: Obj) -> None:
        m = pod.get("metadata") or {}
        for key in services_for_labels(self.services, m.get("namespace") or "", m.get("labels")):
            self._touch(key)

    def _pod_updated(self, old: Obj, new: Obj) -> None:
        for key in services_to_update(self.services, old, new):
            self._touch(key)


class EndpointsController(ServicePodEvents, Controller):
    name = "endpoints"
    workers = 4

    def __init__(self, client: Client, *, max_capacity: int = MAX_ENDPOINTS_CAPACITY):
        super().__init__(client)
        self.max_capacity = max_capacity
        self.endpoints_client = client.resource("v1", "endpoints")
        self.services = self.informer("v1", "services")
        self.pods = self.informer("v1", "pods")
        self.endpoints = self.informer("v1", "endpoints")
        self.triggers = TriggerTimes()
        self.watch_services_and_pods()
        self.endpoints.add_handler(on_add=self._endpoints_seen, on_update=self._endpoints_updated,
                                   on_delete=self._endpoints_deleted)

    async def start(self) -> None:
        await super().start()
        # Endpoints whose Service went away while no controller ran (upstream's
        # checkLeftoverEndpoints): each gets a sync, which deletes it.
        for ep in self.endpoints.list():
            if LEADER_ANNOTATION in ((ep.get("metadata") or {}).get("annotations") or {}):
                continue
            if key_of(ep) not in self.services:
                self.enqueue(key_of(ep))

    # ------------------------------------------------------------ event handlers


    def _endpoints_seen(self, ep: Obj) -> None:
        # Only for a Service we know: Endpoints made before their selector-less
        # Service must not be deleted as leftovers.
        key = key_of(ep)
        if key in self.services:
            self.enqueue(key)

    def _endpoints_updated(self, old: Obj, new: Obj) -> None:
        if (old.get("metadata") or {}).get("resourceVersion") != (new.get("metadata") or {}).get("resourceVersion"):
            self._endpoints_seen(new)

    def _endpoints_deleted(self, ep: Obj) -> None:
        self._endpoints_seen(ep)

    # ------------------------------------------------------------ reconcile

    async def reconcile(self, key: str) -> None:
        ns, name = split_key(key)
        svc = self.services.get(key)
        if svc is None:
            self.triggers.forget(key)
            current = self.endpoints.get(key)
            if current is not None and LEADER_ANNOTATION in (current["metadata"].get("annotations") or {}):
                return
            try:
                await self.endpoints_client.delete(name, ns)
            except StatusError as e:
                if e.code != 404:
                    raise
            return
        if not managed_by_controllers(svc):
            self.triggers.forget(key)
            return
        selector = service_selector(svc)
        pods = [p for p in self.pods.list_by_namespace(ns or "")
                if selects(selector, (p.get("metadata") or {}).get("labels"))]
        subsets = desired_subsets(svc, pods)
        truncated = truncate_subsets(subsets, self.max_capacity)
        labels = service_labels(svc)
        # Whatever was pending is reflected by this sync, written or not.
        trigger = self.triggers.take(key)
        current = self.endpoints.get(key)
        if current is not None:
            annotations = (current["metadata"].get("annotations") or {})
            if (current.get("subsets") or []) == subsets and (current["metadata"].get("labels") or {}) == labels \
                    and (OVER_CAPACITY_ANNOTATION in annotations) == truncated:
                return
        try:
            await self._write(svc, current, subsets, labels, truncated, trigger)
        except BaseException:
            self.triggers.put_back(key, trigger)
            raise

    async def _write(self, svc: Obj, current: Obj | None, subsets: list[Obj], labels: dict[str, str],
                     truncated: bool, trigger: float | None) -> None:
        sm = svc["metadata"]
        annotations = dict(((current or {}).get("metadata") or {}).get("annotations") or {})
        if trigger is not None:
            annotations[TRIGGER_TIME_ANNOTATION] = rfc3339_nano(trigger)
        else:
            annotations.pop(TRIGGER_TIME_ANNOTATION, None)
        if truncated:
            annotations[OVER_CAPACITY_ANNOTATION] = "truncated"
        else:
            annotations.pop(OVER_CAPACITY_ANNOTATION, None)
        if current is None:
            meta: Obj = {"name": sm["name"], "namespace": sm.get("namespace"), "labels": labels}
            if annotations:
                meta["annotations"] = annotations
            body = {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta, "subsets": subsets}
            try:
                await self.endpoints_client.create(body, sm.get("namespace"))
            except StatusError as e:
                if e.code == 403:
                    # The namespace is terminating: creates keep failing, and its Services go too.
                    log.debug("endpoints %s/%s not created: %s", sm.get("namespace"), sm["name"], e.message)
                    return
                raise
            return
        meta = dict(current["metadata"])
        meta["labels"] = labels
        if annotations:
            meta["annotations"] = annotations
        else:
            meta.pop("annotations", None)
        body = {**current, "metadata": meta, "subsets": subsets}
        # A stale cache shows up as a 409 on this resourceVersion: the base retries.
        await self.endpoints_client.update(body, sm.get("namespace"))
