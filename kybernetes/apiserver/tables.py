"""Server-side printing: the meta.k8s.io/v1 Table responses behind `kubectl get`.

kubectl asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints
whatever columns the server sends. This module owns those columns: one printer per
(group, kind) with the upstream column names, types and priorities (priority 1 is
shown only by ``-o wide``), the cell logic behind them (a pod's aggregate status,
"2/3" ready counts, "<none>"/"<pending>" placeholders, ages in apimachinery's
HumanDuration style), the generic "Name, Created At" table upstream serves for kinds
without a printer, and tables for custom resources from a CRD's
additionalPrinterColumns, evaluated with a small JSONPath subset.

Adding a kind is a few lines: a list of columns and a function from one object (and
the time "now") to its cells, passed to :func:`register`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "PRINTERS",
    "JSONPathError",
    "Printer",
    "custom_resource_table",
    "format_label_selector",
    "human_duration",
    "jsonpath",
    "register",
    "table",
]

NONE = "<none>"
UNKNOWN = "<unknown>"
UNSET = "<unset>"
INVALID = "<invalid>"

_NAME_DESC = "Name of the object, unique within its namespace (or the cluster for cluster-scoped kinds)."
_AGE_DESC = "How long ago the object was created (from metadata.creationTimestamp)."
_CONTAINERS_DESC = "Names of the containers in the pod template."
_IMAGES_DESC = "Images used by the containers in the pod template."
_SELECTOR_DESC = "Label selector that picks the pods this object manages."


def _col(name: str, type_: str = "string", description: str = "", priority: int = 0,
         format_: str = "") -> dict:
    return {"name": name, "type": type_, "format": format_, "description": description,
            "priority": priority}


def _name_col() -> dict:
    return _col("Name", "string", _NAME_DESC, format_="name")


def _age_col() -> dict:
    return _col("Age", "string", _AGE_DESC)


Cells = Callable[[dict, datetime], list]
Conditions = Callable[[dict], "list[dict] | None"]


@dataclass(frozen=True)
class Printer:
    """The columns of one kind and how to fill them from an object."""

    columns: list[dict]
    cells: Cells
    conditions: Conditions | None = None


PRINTERS: dict[tuple[str, str], Printer] = {}


def _group_key(group: str) -> str:
    # The core group is "" on the wire; accept the common spellings of it.
    return "" if group in ("core", "v1") else group


def register(group: str, kind: str, columns: list[dict], cells: Cells,
             conditions: Conditions | None = None) -> None:
    """Register (or replace) the printer for ``group``/``kind``."""
    PRINTERS[(_group_key(group), kind)] = Printer(columns, cells, conditions)


# --------------------------------------------------------------------------- durations


def human_duration(d: timedelta) -> str:
    """A short human form of ``d`` with two to three significant figures, like apimachinery.

    Up to two minutes in seconds ("90s"), then minutes with seconds under ten minutes
    ("5m30s"), minutes up to three hours ("150m"), hours with minutes under eight hours
    ("3h5m"), hours up to two days ("30h"), days with hours under eight days ("3d4h"),
    days up to two years, years with days up to eight years, then years. A small
    negative skew (clocks disagreeing by under two seconds) reads as "0s".
    """
    us = (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds
    # Go truncates toward zero when turning a duration into whole units.
    seconds = us // 1_000_000 if us >= 0 else -((-us) // 1_000_000)
    if seconds < -1:
        return INVALID
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _since(value: Any, now: datetime) -> str:
    """Age of a metav1.Time string: "<unknown>" when unset, as upstream."""
    if value in (None, ""):
        return UNKNOWN
    t = _parse_time(value)
    if t is None:
        return INVALID
    return human_duration(now - t)


# --------------------------------------------------------------------------- helpers


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
        if obj is None:
            return default
    return obj


def _meta(obj: dict, key: str, default: Any = "") -> Any:
    return _get(obj, "metadata", key, default=default)


def _age(obj: dict, now: datetime) -> str:
    return _since(_meta(obj, "creationTimestamp", None), now)


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    try:
        return int(str(value))
    except ValueError:
        return 0


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _quantity(value: Any) -> str:
    if value is None:
        return "0"
    return str(value)


def _bool_text(value: Any) -> str:
    if value is None:
        return UNSET
    return "True" if value else "False"


def _int_or_string(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _containers(template_spec: Any) -> list[str]:
    containers = _list(_get(template_spec, "containers"))
    names = ",".join(str(_get(c, "name", default="")) for c in containers)
    images = ",".join(str(_get(c, "image", default="")) for c in containers)
    return [names, images]


def format_labels(labels: Any) -> str:
    """A label map as "a=b,c=d" in key order, "<none>" when empty."""
    if not isinstance(labels, dict) or not labels:
        return NONE
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def _selector_string(selector: Any) -> str | None:
    """The selector as upstream's labels.Selector prints it; None when it is malformed."""
    if selector is None:
        # A missing selector selects nothing, which prints as an empty string.
        return ""
    if not isinstance(selector, dict):
        return None
    reqs: list[tuple[str, str]] = []
    for key, value in _dict(selector.get("matchLabels")).items():
        reqs.append((key, f"{key}={value}"))
    for expr in _list(selector.get("matchExpressions")):
        if not isinstance(expr, dict) or not expr.get("key"):
            return None
        key, op = expr["key"], expr.get("operator")
        values = sorted(str(v) for v in _list(expr.get("values")))
        if op == "In" and values:
            reqs.append((key, f"{key} in ({','.join(values)})"))
        elif op == "NotIn" and values:
            reqs.append((key, f"{key} notin ({','.join(values)})"))
        elif op == "Exists" and not values:
            reqs.append((key, key))
        elif op == "DoesNotExist" and not values:
            reqs.append((key, f"!{key}"))
        else:
            return None
    # Requirements print sorted by key; the sort is stable so a key's order of
    # appearance breaks ties.
    reqs.sort(key=lambda r: r[0])
    return ",".join(text for _, text in reqs)


def format_label_selector(selector: Any) -> str:
    """A metav1.LabelSelector as kubectl shows it: "<none>" when empty, "<error>" when bad."""
    text = _selector_string(selector)
    if text is None:
        return "<error>"
    return text or NONE


def _join_host_port(host: str, port: Any) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        if ":" in host:
            return f"[{host}]:{port}"
    return f"{host}:{port}"


def _with_more(items: list[str], total: int, maximum: int, empty: str) -> str:
    text = ",".join(items[:maximum])
    if total > maximum:
        return f"{text} + {total - maximum} more..."
    return text or empty


def _lb_ingress(status: Any) -> str:
    seen: list[str] = []
    for ing in _list(_get(status, "loadBalancer", "ingress")):
        value = _get(ing, "ip") or _get(ing, "hostname")
        if value and value not in seen:
            seen.append(value)
    return ",".join(seen)


def _has_condition(conditions: Any, type_: str) -> bool:
    for c in _list(conditions):
        if _get(c, "type") == type_:
            return _get(c, "status") == "True"
    return False


def _controller_of(obj: dict) -> dict | None:
    for ref in _list(_meta(obj, "ownerReferences", None)):
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None


# --------------------------------------------------------------------------- core/v1


def _is_restartable_init(container: Any) -> bool:
    return _get(container, "restartPolicy") == "Always"


def _pod_cells(pod: dict, now: datetime) -> list:
    spec, status = _dict(pod.get("spec")), _dict(pod.get("status"))
    restarts = 0
    sidecar_restarts = 0
    total = len(_list(spec.get("containers")))
    ready = 0
    last_restart: datetime | None = None
    last_sidecar_restart: datetime | None = None

    phase = status.get("phase") or ""
    reason = status.get("reason") or phase
    for cond in _list(status.get("conditions")):
        if _get(cond, "type") == "PodScheduled" and _get(cond, "reason") == "SchedulingGated":
            reason = "SchedulingGated"

    init_specs = {}
    for c in _list(spec.get("initContainers")):
        init_specs[_get(c, "name")] = c
        if _is_restartable_init(c):
            total += 1
    n_init = len(_list(spec.get("initContainers")))

    def later(current: datetime | None, cs: dict) -> datetime | None:
        finished = _parse_time(_get(cs, "lastState", "terminated", "finishedAt"))
        if finished is not None and (current is None or current < finished):
            return finished
        return current

    initializing = False
    for i, cs in enumerate(_list(status.get("initContainerStatuses"))):
        cs = _dict(cs)
        count = _int(cs.get("restartCount", 0))
        restarts += count
        last_restart = later(last_restart, cs)
        sidecar = _is_restartable_init(init_specs.get(cs.get("name")))
        if sidecar:
            sidecar_restarts += count
            last_sidecar_restart = later(last_sidecar_restart, cs)
        state = _dict(cs.get("state"))
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if isinstance(terminated, dict) and _int(terminated.get("exitCode", 0)) == 0:
            continue
        if sidecar and cs.get("started") is True:
            if cs.get("ready"):
                ready += 1
            continue
        if isinstance(terminated, dict):
            if not terminated.get("reason"):
                signal = _int(terminated.get("signal", 0))
                if signal:
                    reason = f"Init:Signal:{signal}"
                else:
                    reason = f"Init:ExitCode:{_int(terminated.get('exitCode', 0))}"
            else:
                reason = "Init:" + terminated["reason"]
        elif isinstance(waiting, dict) and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{n_init}"
        initializing = True
        break

    if not initializing or _has_condition(status.get("conditions"), "Initialized"):
        # Once initialised only sidecars (restartable init containers) keep counting.
        restarts = sidecar_restarts
        last_restart = last_sidecar_restart
        has_running = False
        # Walk backwards so the first container's state is the one that ends up shown.
        for cs in reversed(_list(status.get("containerStatuses"))):
            cs = _dict(cs)
            restarts += _int(cs.get("restartCount", 0))
            last_restart = later(last_restart, cs)
            state = _dict(cs.get("state"))
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if isinstance(waiting, dict) and waiting.get("reason"):
                reason = waiting["reason"]
            elif isinstance(terminated, dict) and terminated.get("reason"):
                reason = terminated["reason"]
            elif isinstance(terminated, dict):
                signal = _int(terminated.get("signal", 0))
                if signal:
                    reason = f"Signal:{signal}"
                else:
                    reason = f"ExitCode:{_int(terminated.get('exitCode', 0))}"
            elif cs.get("ready") and isinstance(state.get("running"), dict):
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running" if _has_condition(status.get("conditions"), "Ready") else "NotReady"

    if _meta(pod, "deletionTimestamp", None):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration(now - last_restart)} ago)"

    pod_ips = _list(status.get("podIPs"))
    ip = _get(pod_ips[0], "ip") if pod_ips else None
    ip = ip or status.get("podIP") or NONE
    gates = _list(spec.get("readinessGates"))
    gates_text = NONE
    if gates:
        by_type = {}
        for cond in _list(status.get("conditions")):
            by_type.setdefault(_get(cond, "type"), cond)
        true = sum(1 for g in gates if _get(by_type.get(_get(g, "conditionType")), "status") == "True")
        gates_text = f"{true}/{len(gates)}"
    return [_meta(pod, "name"), f"{ready}/{total}", reason, restarts_text, _age(pod, now),
            ip, spec.get("nodeName") or NONE, status.get("nominatedNodeName") or NONE, gates_text]


def _pod_conditions(pod: dict) -> list[dict] | None:
    # kubectl uses these to tell finished pods apart from live ones.
    phase = _get(pod, "status", "phase")
    if phase == "Succeeded":
        return [{"type": "Completed", "status": "True", "reason": "Succeeded",
                 "message": "The pod has completed successfully."}]
    if phase == "Failed":
        return [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]
    return None


register("", "Pod", [
    _name_col(),
    _col("Ready", description="Ready containers out of all containers (sidecars included)."),
    _col("Status", description="Aggregate status of the pod, derived from its containers."),
    _col("Restarts", description="Container restarts, and how long ago the last one was."),
    _age_col(),
    _col("IP", description="The pod's IP address.", priority=1),
    _col("Node", description="Node the pod is bound to.", priority=1),
    _col("Nominated Node", description="Node the scheduler nominated after preemption.", priority=1),
    _col("Readiness Gates", description="Readiness gates that are true out of all.", priority=1),
], _pod_cells, _pod_conditions)


register("", "PodTemplate", [
    _name_col(),
    _col("Containers", description=_CONTAINERS_DESC),
    _col("Images", description=_IMAGES_DESC),
    _col("Pod Labels", description="Labels of the pod template."),
], lambda o, now: [_meta(o, "name"), *_containers(_get(o, "template", "spec")),
                   format_labels(_get(o, "template", "metadata", "labels"))])


def _node_cells(node: dict, now: datetime) -> list:
    status = _dict(node.get("status"))
    states: list[str] = []
    for cond in _list(status.get("conditions")):
        if _get(cond, "type") == "Ready":
            states = ["Ready" if _get(cond, "status") == "True" else "NotReady"]
    if not states:
        states = ["Unknown"]
    if _get(node, "spec", "unschedulable"):
        states.append("SchedulingDisabled")
    roles: set[str] = set()
    for key, value in _dict(_meta(node, "labels", None)).items():
        if key.startswith("node-role.kubernetes.io/"):
            role = key[len("node-role.kubernetes.io/"):]
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    info = _dict(status.get("nodeInfo"))

    def address(type_: str) -> str:
        for a in _list(status.get("addresses")):
            if _get(a, "type") == type_:
                return _get(a, "address", default="")
        return NONE

    return [_meta(node, "name"), ",".join(states), ",".join(sorted(roles)) or NONE, _age(node, now),
            info.get("kubeletVersion", ""), address("InternalIP"), address("ExternalIP"),
            info.get("osImage") or UNKNOWN, info.get("kernelVersion") or UNKNOWN,
            info.get("containerRuntimeVersion") or UNKNOWN]


register("", "Node", [
    _name_col(),
    _col("Status", description="Readiness of the node, and whether scheduling is disabled."),
    _col("Roles", description="Roles from the node-role.kubernetes.io/* labels."),
    _age_col(),
    _col("Version", description="Kubelet version the node reports."),
    _col("Internal-IP", description="First internal address of the node.", priority=1),
    _col("External-IP", description="First external address of the node.", priority=1),
    _col("OS-Image", description="Operating system image the node reports.", priority=1),
    _col("Kernel-Version", description="Kernel version the node reports.", priority=1),
    _col("Container-Runtime", description="Container runtime and version the node reports.", priority=1),
], _node_cells)


register("", "Namespace", [
    _name_col(), _col("Status", description="Phase of the namespace (Active or Terminating)."), _age_col(),
], lambda o, now: [_meta(o, "name"), _get(o, "status", "phase", default=""), _age(o, now)])


def _service_external_ip(svc: dict) -> str:
    spec = _dict(svc.get("spec"))
    type_ = spec.get("type") or "ClusterIP"
    external = [str(ip) for ip in _list(spec.get("externalIPs"))]
    if type_ in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else NONE
    if type_ == "LoadBalancer":
        lb = _lb_ingress(svc.get("status"))
        parts = (lb.split(",") if lb else []) + external
        if parts:
            return ",".join(parts)
        return "<pending>"
    if type_ == "ExternalName":
        return spec.get("externalName", "")
    return UNKNOWN


def _service_cells(svc: dict, now: datetime) -> list:
    spec = _dict(svc.get("spec"))
    cluster_ips = _list(spec.get("clusterIPs"))
    cluster_ip = cluster_ips[0] if cluster_ips else spec.get("clusterIP") or NONE
    ports = []
    for p in _list(spec.get("ports")):
        proto = _get(p, "protocol") or "TCP"
        node_port = _int(_get(p, "nodePort", default=0))
        if node_port > 0:
            ports.append(f"{_get(p, 'port')}:{node_port}/{proto}")
        else:
            ports.append(f"{_get(p, 'port')}/{proto}")
    return [_meta(svc, "name"), spec.get("type") or "ClusterIP", cluster_ip, _service_external_ip(svc),
            ",".join(ports) or NONE, _age(svc, now), format_labels(spec.get("selector"))]


register("", "Service", [
    _name_col(),
    _col("Type", description="How the service is exposed."),
    _col("Cluster-IP", description="Virtual IP of the service inside the cluster."),
    _col("External-IP", description="Addresses the service is reachable on from outside."),
    _col("Port(s)", description="Ports of the service (port:nodePort/protocol)."),
    _age_col(),
    _col("Selector", description="Label selector of the pods behind the service.", priority=1),
], _service_cells)


def _endpoints_text(ep: dict) -> str:
    subsets = _list(ep.get("subsets"))
    if not subsets:
        return NONE
    items: list[str] = []
    total = 0
    for ss in subsets:
        addresses = [str(_get(a, "ip", default="")) for a in _list(_get(ss, "addresses"))]
        ports = _list(_get(ss, "ports"))
        if not ports:
            # Headless services may have no ports at all.
            total += len(addresses)
            items.extend(addresses)
            continue
        for p in ports:
            total += len(addresses)
            items.extend(_join_host_port(a, _get(p, "port")) for a in addresses)
    return _with_more(items, total, 3, "")


register("", "Endpoints", [
    _name_col(), _col("Endpoints", description="Ready addresses and ports behind the service."), _age_col(),
], lambda o, now: [_meta(o, "name"), _endpoints_text(o), _age(o, now)])

register("", "ConfigMap", [
    _name_col(), _col("Data", description="Number of keys in data and binaryData."), _age_col(),
], lambda o, now: [_meta(o, "name"), len(_dict(o.get("data"))) + len(_dict(o.get("binaryData"))),
                   _age(o, now)])

register("", "Secret", [
    _name_col(), _col("Type", description="Type of the secret."),
    _col("Data", description="Number of keys in data."), _age_col(),
], lambda o, now: [_meta(o, "name"), o.get("type") or "", len(_dict(o.get("data"))), _age(o, now)])

register("", "ServiceAccount", [
    _name_col(), _col("Secrets", description="Number of secrets listed on the account."), _age_col(),
], lambda o, now: [_meta(o, "name"), len(_list(o.get("secrets"))), _age(o, now)])


def _event_cells(ev: dict, now: datetime) -> list:
    first = _since(ev.get("firstTimestamp"), now)
    if not ev.get("firstTimestamp"):
        first = _since(ev.get("eventTime"), now)
    last = _since(ev.get("lastTimestamp"), now) if ev.get("lastTimestamp") else first
    count = _int(ev.get("count") or 0)
    series = ev.get("series")
    if isinstance(series, dict):
        last = _since(series.get("lastObservedTime"), now)
        count = _int(series.get("count") or 0)
    elif count == 0:
        # Events written through events.k8s.io without a series happened once.
        count = 1
    involved = _dict(ev.get("involvedObject"))
    kind = str(involved.get("kind") or "").lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    component = _get(ev, "source", "component") or ev.get("reportingComponent") or ""
    host = _get(ev, "source", "host") or ev.get("reportingInstance") or ""
    source = f"{component}, {host}" if host else component
    return [last, ev.get("type") or "", ev.get("reason") or "", target, involved.get("fieldPath") or "",
            source, str(ev.get("message") or "").strip(), first, count, _meta(ev, "name")]


_EVENT_COLUMNS = [
    _col("Last Seen", description="When the event was last observed."),
    _col("Type", description="Normal or Warning."),
    _col("Reason", description="Short machine-readable reason for the event."),
    _col("Object", description="The object the event is about."),
    _col("Subobject", description="Part of the object the event is about (a container).", priority=1),
    _col("Source", description="Component (and host) that reported the event.", priority=1),
    _col("Message", description="Human-readable description of the event."),
    _col("First Seen", description="When the event was first observed.", priority=1),
    _col("Count", description="How many times the event has occurred.", priority=1),
    _col("Name", description=_NAME_DESC, priority=1, format_="name"),
]
register("", "Event", _EVENT_COLUMNS, _event_cells)


def _events_v1_as_core(ev: dict) -> dict:
    """An events.k8s.io/v1 Event in the core/v1 shape, as upstream converts it before printing."""
    series = ev.get("series")
    return {
        "metadata": ev.get("metadata"),
        "involvedObject": ev.get("regarding"),
        "reason": ev.get("reason"),
        "message": ev.get("note"),
        "type": ev.get("type"),
        "source": ev.get("deprecatedSource"),
        "firstTimestamp": ev.get("deprecatedFirstTimestamp"),
        "lastTimestamp": ev.get("deprecatedLastTimestamp"),
        "count": ev.get("deprecatedCount"),
        "eventTime": ev.get("eventTime"),
        "series": series if isinstance(series, dict) else None,
        "reportingComponent": ev.get("reportingController"),
        "reportingInstance": ev.get("reportingInstance"),
    }


register("events.k8s.io", "Event", _EVENT_COLUMNS, lambda o, now: _event_cells(_events_v1_as_core(o), now))


_ACCESS_MODES = (("ReadWriteOnce", "RWO"), ("ReadOnlyMany", "ROX"), ("ReadWriteMany", "RWX"),
                 ("ReadWriteOncePod", "RWOP"))


def _access_modes(modes: Any) -> str:
    present = set(_list(modes))
    return ",".join(short for full, short in _ACCESS_MODES if full in present)


_BETA_CLASS = "volume.beta.kubernetes.io/storage-class"


def _pv_cells(pv: dict, now: datetime) -> list:
    spec = _dict(pv.get("spec"))
    claim = spec.get("claimRef")
    claim_text = f"{_get(claim, 'namespace', default='')}/{_get(claim, 'name', default='')}" if claim else ""
    phase = _get(pv, "status", "phase", default="")
    if _meta(pv, "deletionTimestamp", None):
        phase = "Terminating"
    annotations = _dict(_meta(pv, "annotations", None))
    storage_class = annotations[_BETA_CLASS] if _BETA_CLASS in annotations else spec.get("storageClassName", "")
    return [_meta(pv, "name"), _quantity(_get(spec, "capacity", "storage")), _access_modes(spec.get("accessModes")),
            spec.get("persistentVolumeReclaimPolicy") or "", phase, claim_text, storage_class or "",
            spec.get("volumeAttributesClassName") or UNSET, _get(pv, "status", "reason", default=""),
            _age(pv, now), spec.get("volumeMode") or UNSET]


register("", "PersistentVolume", [
    _name_col(),
    _col("Capacity", description="Storage capacity of the volume."),
    _col("Access Modes", description="Ways the volume can be mounted."),
    _col("Reclaim Policy", description="What happens to the volume when its claim is released."),
    _col("Status", description="Phase of the volume."),
    _col("Claim", description="Claim bound to the volume (namespace/name)."),
    _col("StorageClass", description="Storage class of the volume."),
    _col("VolumeAttributesClass", description="Volume attributes class of the volume."),
    _col("Reason", description="Why the volume is in its phase."),
    _age_col(),
    _col("VolumeMode", description="Filesystem or Block.", priority=1),
], _pv_cells)


def _pvc_cells(pvc: dict, now: datetime) -> list:
    spec, status = _dict(pvc.get("spec")), _dict(pvc.get("status"))
    phase = status.get("phase", "")
    if _meta(pvc, "deletionTimestamp", None):
        phase = "Terminating"
    capacity = modes = ""
    if spec.get("volumeName"):
        modes = _access_modes(status.get("accessModes"))
        capacity = _quantity(_get(status, "capacity", "storage"))
    annotations = _dict(_meta(pvc, "annotations", None))
    storage_class = annotations[_BETA_CLASS] if _BETA_CLASS in annotations else spec.get("storageClassName")
    return [_meta(pvc, "name"), phase, spec.get("volumeName") or "", capacity, modes, storage_class or "",
            spec.get("volumeAttributesClassName") or UNSET, _age(pvc, now), spec.get("volumeMode") or UNSET]


register("", "PersistentVolumeClaim", [
    _name_col(),
    _col("Status", description="Phase of the claim."),
    _col("Volume", description="Volume bound to the claim."),
    _col("Capacity", description="Capacity of the bound volume."),
    _col("Access Modes", description="Access modes of the bound volume."),
    _col("StorageClass", description="Storage class requested by the claim."),
    _col("VolumeAttributesClass", description="Volume attributes class requested by the claim."),
    _age_col(),
    _col("VolumeMode", description="Filesystem or Block.", priority=1),
], _pvc_cells)


def _quota_cells(rq: dict, now: datetime) -> list:
    hard = _dict(_get(rq, "status", "hard"))
    used = _dict(_get(rq, "status", "used"))
    requests, limits = [], []
    for name in sorted(hard):
        text = f"{name}: {_quantity(used.get(name))}/{_quantity(hard[name])}"
        (limits if name.split(".")[0] == "limits" and "." in name else requests).append(text)
    return [_meta(rq, "name"), _age(rq, now), ", ".join(requests), ", ".join(limits)]


register("", "ResourceQuota", [
    _name_col(), _age_col(),
    _col("Request", description="Used out of hard for each non-limit resource."),
    _col("Limit", description="Used out of hard for each limits.* resource."),
], _quota_cells)


register("", "ReplicationController", [
    _name_col(),
    _col("Desired", "integer", "Replicas asked for."),
    _col("Current", "integer", "Replicas that exist."),
    _col("Ready", "integer", "Replicas that are ready."),
    _age_col(),
    _col("Containers", description=_CONTAINERS_DESC, priority=1),
    _col("Images", description=_IMAGES_DESC, priority=1),
    _col("Selector", description=_SELECTOR_DESC, priority=1),
], lambda o, now: [_meta(o, "name"), _int(_get(o, "spec", "replicas", default=0)),
                   _int(_get(o, "status", "replicas", default=0)),
                   _int(_get(o, "status", "readyReplicas", default=0)), _age(o, now),
                   *_containers(_get(o, "spec", "template", "spec")), format_labels(_get(o, "spec", "selector"))])


# --------------------------------------------------------------------------- apps/v1


def _ready_of_desired(o: dict) -> str:
    return f"{_int(_get(o, 'status', 'readyReplicas', default=0))}/{_int(_get(o, 'spec', 'replicas', default=0))}"


def _deployment_cells(d: dict, now: datetime) -> list:
    spec, status = _dict(d.get("spec")), _dict(d.get("status"))
    selector = _selector_string(spec.get("selector"))
    return [_meta(d, "name"), _ready_of_desired(d),
            _int(status.get("updatedReplicas", 0)), _int(status.get("availableReplicas", 0)), _age(d, now),
            *_containers(_get(spec, "template", "spec")), INVALID if selector is None else selector]


register("apps", "Deployment", [
    _name_col(),
    _col("Ready", description="Ready replicas out of desired."),
    _col("Up-to-date", description="Replicas running the current template."),
    _col("Available", description="Replicas available to serve."),
    _age_col(),
    _col("Containers", description=_CONTAINERS_DESC, priority=1),
    _col("Images", description=_IMAGES_DESC, priority=1),
    _col("Selector", description=_SELECTOR_DESC, priority=1),
], _deployment_cells)

register("apps", "ReplicaSet", [
    _name_col(),
    _col("Desired", "integer", "Replicas asked for."),
    _col("Current", "integer", "Replicas that exist."),
    _col("Ready", "integer", "Replicas that are ready."),
    _age_col(),
    _col("Containers", description=_CONTAINERS_DESC, priority=1),
    _col("Images", description=_IMAGES_DESC, priority=1),
    _col("Selector", description=_SELECTOR_DESC, priority=1),
], lambda o, now: [_meta(o, "name"), _int(_get(o, "spec", "replicas", default=0)),
                   _int(_get(o, "status", "replicas", default=0)),
                   _int(_get(o, "status", "readyReplicas", default=0)), _age(o, now),
                   *_containers(_get(o, "spec", "template", "spec")),
                   format_label_selector(_get(o, "spec", "selector"))])

register("apps", "StatefulSet", [
    _name_col(),
    _col("Ready", description="Ready replicas out of desired."),
    _age_col(),
    _col("Containers", description=_CONTAINERS_DESC, priority=1),
    _col("Images", description=_IMAGES_DESC, priority=1),
], lambda o, now: [_meta(o, "name"), _ready_of_desired(o), _age(o, now),
                   *_containers(_get(o, "spec", "template", "spec"))])

register("apps", "DaemonSet", [
    _name_col(),
    _col("Desired", "integer", "Nodes that should run the daemon pod."),
    _col("Current", "integer", "Nodes running at least one daemon pod."),
    _col("Ready", "integer", "Nodes whose daemon pod is ready."),
    _col("Up-to-date", "integer", "Nodes running the current template."),
    _col("Available", "integer", "Nodes whose daemon pod is available."),
    _col("Node Selector", description="Node selector of the pod template."),
    _age_col(),
    _col("Containers", description=_CONTAINERS_DESC, priority=1),
    _col("Images", description=_IMAGES_DESC, priority=1),
    _col("Selector", description=_SELECTOR_DESC, priority=1),
], lambda o, now: [_meta(o, "name"),
                   *(_int(_get(o, "status", f, default=0)) for f in (
                       "desiredNumberScheduled", "currentNumberScheduled", "numberReady",
                       "updatedNumberScheduled", "numberAvailable")),
                   format_labels(_get(o, "spec", "template", "spec", "nodeSelector")), _age(o, now),
                   *_containers(_get(o, "spec", "template", "spec")),
                   format_label_selector(_get(o, "spec", "selector"))])


def _resource_name(api_version: str, kind: str, name: str) -> str:
    group = api_version.rpartition("/")[0] if "/" in api_version else ""
    gk = f"{kind}.{group}" if group else kind
    return f"{gk.lower()}/{name}" if gk else name


def _controller_revision_cells(o: dict, now: datetime) -> list:
    ref = _controller_of(o)
    controller = NONE
    if ref is not None:
        controller = _resource_name(str(ref.get("apiVersion", "")), str(ref.get("kind", "")),
                                    str(ref.get("name", "")))
    return [_meta(o, "name"), controller, _int(o.get("revision", 0)), _age(o, now)]


register("apps", "ControllerRevision", [
    _name_col(),
    _col("Controller", description="Object that owns the revision."),
    _col("Revision", description="Revision number."),
    _age_col(),
], _controller_revision_cells)


# --------------------------------------------------------------------------- batch/v1


def _job_cells(job: dict, now: datetime) -> list:
    spec, status = _dict(job.get("spec")), _dict(job.get("status"))
    succeeded = _int(status.get("succeeded", 0))
    if spec.get("completions") is not None:
        completions = f"{succeeded}/{_int(spec['completions'])}"
    else:
        parallelism = _int(spec.get("parallelism") or 0)
        completions = f"{succeeded}/1 of {parallelism}" if parallelism > 1 else f"{succeeded}/1"
    start = _parse_time(status.get("startTime"))
    end = _parse_time(status.get("completionTime"))
    duration = ""
    if start is not None:
        duration = human_duration((end or now) - start)
    conditions = status.get("conditions")
    if _has_condition(conditions, "Complete"):
        state = "Complete"
    elif _has_condition(conditions, "Failed"):
        state = "Failed"
    elif _meta(job, "deletionTimestamp", None):
        state = "Terminating"
    elif _has_condition(conditions, "Suspended"):
        state = "Suspended"
    elif _has_condition(conditions, "FailureTarget"):
        state = "FailureTarget"
    else:
        state = "Running"
    return [_meta(job, "name"), state, completions, duration, _age(job, now),
            *_containers(_get(spec, "template", "spec")), format_label_selector(spec.get("selector"))]


register("batch", "Job", [
    _name_col(),
    _col("Status", description="Status of the job."),
    _col("Completions", description="Succeeded pods out of the completions asked for."),
    _col("Duration", description="How long the job ran, or has been running."),
    _age_col(),
    _col("Containers", description=_CONTAINERS_DESC, priority=1),
    _col("Images", description=_IMAGES_DESC, priority=1),
    _col("Selector", description=_SELECTOR_DESC, priority=1),
], _job_cells)


def _cronjob_cells(cj: dict, now: datetime) -> list:
    spec, status = _dict(cj.get("spec")), _dict(cj.get("status"))
    last = _since(status["lastScheduleTime"], now) if status.get("lastScheduleTime") else NONE
    job_spec = _get(spec, "jobTemplate", "spec")
    return [_meta(cj, "name"), spec.get("schedule", ""), spec.get("timeZone") or NONE,
            _bool_text(spec.get("suspend")), len(_list(status.get("active"))), last, _age(cj, now),
            *_containers(_get(job_spec, "template", "spec")), format_label_selector(_get(job_spec, "selector"))]


register("batch", "CronJob", [
    _name_col(),
    _col("Schedule", description="Cron schedule of the job."),
    _col("Timezone", description="Time zone the schedule is read in."),
    _col("Suspend", "boolean", "Whether new runs are suspended."),
    _col("Active", "integer", "Number of jobs currently running."),
    _col("Last Schedule", description="When a job was last scheduled."),
    _age_col(),
    _col("Containers", description=_CONTAINERS_DESC, priority=1),
    _col("Images", description=_IMAGES_DESC, priority=1),
    _col("Selector", description=_SELECTOR_DESC, priority=1),
], _cronjob_cells)


# --------------------------------------------------------------------------- networking, discovery


def _ingress_cells(ing: dict, now: datetime) -> list:
    spec = _dict(ing.get("spec"))
    rules = _list(spec.get("rules"))
    hosts: list[str] = []
    more = False
    for rule in rules:
        if len(hosts) == 3:
            more = True
        if not more and _get(rule, "host"):
            hosts.append(_get(rule, "host"))
    hosts_text = ",".join(hosts) if hosts else "*"
    if hosts and more:
        hosts_text = f"{hosts_text} + {len(rules) - 3} more..."
    ports = "80, 443" if _list(spec.get("tls")) else "80"
    return [_meta(ing, "name"), spec.get("ingressClassName") or NONE, hosts_text, _lb_ingress(ing.get("status")),
            ports, _age(ing, now)]


register("networking.k8s.io", "Ingress", [
    _name_col(),
    _col("Class", description="IngressClass that handles the ingress."),
    _col("Hosts", description="Hosts the rules match."),
    _col("Address", description="Addresses of the load balancer in front of the ingress."),
    _col("Ports", description="Ports the ingress listens on."),
    _age_col(),
], _ingress_cells)


def _ingress_class_cells(o: dict, now: datetime) -> list:
    params = _get(o, "spec", "parameters")
    text = NONE
    if isinstance(params, dict):
        text = str(params.get("kind", ""))
        if params.get("apiGroup") is not None:
            text += "." + str(params["apiGroup"])
        text += "/" + str(params.get("name", ""))
    return [_meta(o, "name"), _get(o, "spec", "controller", default=""), text, _age(o, now)]


register("networking.k8s.io", "IngressClass", [
    _name_col(),
    _col("Controller", description="Controller that implements the class."),
    _col("Parameters", description="Object holding extra parameters for the controller."),
    _age_col(),
], _ingress_class_cells)

register("networking.k8s.io", "NetworkPolicy", [
    _name_col(), _col("Pod-Selector", description="Pods the policy applies to."), _age_col(),
], lambda o, now: [_meta(o, "name"), format_label_selector(_get(o, "spec", "podSelector", default={})),
                   _age(o, now)])


def _endpoint_slice_cells(o: dict, now: datetime) -> list:
    ports: list[str] = []
    for p in _list(o.get("ports")):
        if _get(p, "port") is not None:
            ports.append(str(_get(p, "port")))
        elif _get(p, "name") is not None:
            ports.append(str(_get(p, "name")))
        else:
            ports.append("*")
    addresses = [str(a) for ep in _list(o.get("endpoints")) for a in _list(_get(ep, "addresses"))]
    return [_meta(o, "name"), o.get("addressType", ""), _with_more(ports, len(ports), 3, UNSET),
            _with_more(addresses, len(addresses), 3, UNSET), _age(o, now)]


register("discovery.k8s.io", "EndpointSlice", [
    _name_col(),
    _col("AddressType", description="IPv4, IPv6 or FQDN."),
    _col("Ports", description="Ports of the slice."),
    _col("Endpoints", description="Addresses in the slice."),
    _age_col(),
], _endpoint_slice_cells)


# --------------------------------------------------------------------------- the rest


register("coordination.k8s.io", "Lease", [
    _name_col(), _col("Holder", description="Identity of the current holder."), _age_col(),
], lambda o, now: [_meta(o, "name"), _get(o, "spec", "holderIdentity", default=""), _age(o, now)])


def _hpa_metrics(hpa: dict) -> str:
    spec, status = _dict(hpa.get("spec")), _dict(hpa.get("status"))
    if "metrics" not in spec and spec.get("targetCPUUtilizationPercentage") is not None:
        # autoscaling/v1 knows only a CPU utilisation target.
        current = status.get("currentCPUUtilizationPercentage")
        cur = f"{_int(current)}%" if current is not None else UNKNOWN
        return f"cpu: {cur}/{_int(spec['targetCPUUtilizationPercentage'])}%"
    specs = _list(spec.get("metrics"))
    if not specs:
        return NONE
    statuses = _list(status.get("currentMetrics"))
    out: list[str] = []
    for i, m in enumerate(specs):
        m = _dict(m)
        st = _dict(statuses[i]) if i < len(statuses) else {}
        type_ = m.get("type")
        if type_ in ("External", "Object", "Pods"):
            source = _dict(m.get(type_[0].lower() + type_[1:]))
            cur_src = st.get(type_[0].lower() + type_[1:])
            target = _dict(source.get("target"))
            current = _dict(_get(cur_src, "current"))
            if type_ == "Pods":
                cur = _quantity(current.get("averageValue")) if isinstance(cur_src, dict) else UNKNOWN
                out.append(f"{cur}/{_quantity(target.get('averageValue'))}")
            elif target.get("averageValue") is not None:
                cur = UNKNOWN
                if isinstance(cur_src, dict) and current.get("averageValue") is not None:
                    cur = _quantity(current["averageValue"])
                out.append(f"{cur}/{_quantity(target['averageValue'])} (avg)")
            else:
                cur = _quantity(current.get("value")) if isinstance(cur_src, dict) else UNKNOWN
                out.append(f"{cur}/{_quantity(target.get('value'))}")
        elif type_ in ("Resource", "ContainerResource"):
            key = "resource" if type_ == "Resource" else "containerResource"
            source = _dict(m.get(key))
            cur_src = st.get(key)
            target = _dict(source.get("target"))
            current = _dict(_get(cur_src, "current"))
            name = source.get("name", "")
            if target.get("averageValue") is not None:
                cur = _quantity(current.get("averageValue")) if isinstance(cur_src, dict) else UNKNOWN
                out.append(f"{name}: {cur}/{_quantity(target['averageValue'])}")
            else:
                cur = UNKNOWN
                if isinstance(cur_src, dict) and current.get("averageUtilization") is not None:
                    cur = f"{_int(current['averageUtilization'])}%"
                tgt = "<auto>"
                if target.get("averageUtilization") is not None:
                    tgt = f"{_int(target['averageUtilization'])}%"
                out.append(f"{name}: {cur}/{tgt}")
        else:
            out.append("<unknown type>")
    if len(out) > 2:
        return f"{', '.join(out[:2])} + {len(out) - 2} more..."
    return ", ".join(out)


def _hpa_cells(o: dict, now: datetime) -> list:
    spec = _dict(o.get("spec"))
    ref = _dict(spec.get("scaleTargetRef"))
    min_pods = str(_int(spec["minReplicas"])) if spec.get("minReplicas") is not None else UNSET
    return [_meta(o, "name"), f"{ref.get('kind', '')}/{ref.get('name', '')}", _hpa_metrics(o), min_pods,
            _int(spec.get("maxReplicas", 0)), _int(_get(o, "status", "currentReplicas", default=0)),
            _age(o, now)]


register("autoscaling", "HorizontalPodAutoscaler", [
    _name_col(),
    _col("Reference", description="Object being scaled."),
    _col("Targets", description="Current and target value of each metric."),
    _col("MinPods", description="Lower bound of replicas."),
    _col("MaxPods", description="Upper bound of replicas."),
    _col("Replicas", description="Current number of replicas."),
    _age_col(),
], _hpa_cells)


def _storage_class_cells(o: dict, now: datetime) -> list:
    annotations = _dict(_meta(o, "annotations", None))
    name = _meta(o, "name")
    if "true" in (annotations.get("storageclass.kubernetes.io/is-default-class"),
                  annotations.get("storageclass.beta.kubernetes.io/is-default-class")):
        name += " (default)"
    return [name, o.get("provisioner", ""), o.get("reclaimPolicy") or "Delete",
            o.get("volumeBindingMode") or "Immediate", bool(o.get("allowVolumeExpansion")), _age(o, now)]


register("storage.k8s.io", "StorageClass", [
    _name_col(),
    _col("Provisioner", description="Driver that provisions volumes of the class."),
    _col("ReclaimPolicy", description="Reclaim policy of volumes provisioned for the class."),
    _col("VolumeBindingMode", description="When volumes are bound and provisioned."),
    _col("AllowVolumeExpansion", description="Whether claims of the class may grow."),
    _age_col(),
], _storage_class_cells)


def _pdb_cells(o: dict, now: datetime) -> list:
    spec = _dict(o.get("spec"))
    min_available = _int_or_string(spec["minAvailable"]) if spec.get("minAvailable") is not None else "N/A"
    max_unavailable = (_int_or_string(spec["maxUnavailable"]) if spec.get("maxUnavailable") is not None
                       else "N/A")
    return [_meta(o, "name"), min_available, max_unavailable,
            _int(_get(o, "status", "disruptionsAllowed", default=0)), _age(o, now)]


register("policy", "PodDisruptionBudget", [
    _name_col(),
    _col("Min Available", description="Pods that must stay available."),
    _col("Max Unavailable", description="Pods that may be unavailable."),
    _col("Allowed Disruptions", "integer", "Pods that may be disrupted right now."),
    _age_col(),
], _pdb_cells)

register("scheduling.k8s.io", "PriorityClass", [
    _name_col(),
    _col("Value", "integer", "Priority of pods using the class."),
    _col("Global-Default", "boolean", "Whether pods without a class get this one."),
    _age_col(),
    _col("PreemptionPolicy", description="Whether pods of the class may preempt others."),
], lambda o, now: [_meta(o, "name"), _int(o.get("value", 0)), bool(o.get("globalDefault")), _age(o, now),
                   o.get("preemptionPolicy") or ""])

register("node.k8s.io", "RuntimeClass", [
    _name_col(), _col("Handler", description="Runtime handler the class selects."), _age_col(),
], lambda o, now: [_meta(o, "name"), o.get("handler", ""), _age(o, now)])


def _subjects(o: dict) -> list[str]:
    users, groups, sas = [], [], []
    for s in _list(o.get("subjects")):
        kind, name = _get(s, "kind"), str(_get(s, "name", default=""))
        if kind == "User":
            users.append(name)
        elif kind == "Group":
            groups.append(name)
        elif kind == "ServiceAccount":
            ns = _get(s, "namespace")
            sas.append(f"{ns}:{name}" if ns else name)
    return [", ".join(users), ", ".join(groups), ", ".join(sas)]


def _binding_columns(what: str) -> list[dict]:
    return [
        _name_col(),
        _col("Role", description="Role the binding grants (kind/name)."),
        _age_col(),
        _col("Users", description=f"Users in the {what}.", priority=1),
        _col("Groups", description=f"Groups in the {what}.", priority=1),
        _col("ServiceAccounts", description=f"Service accounts in the {what}.", priority=1),
    ]


def _binding_cells(o: dict, now: datetime) -> list:
    ref = _dict(o.get("roleRef"))
    return [_meta(o, "name"), f"{ref.get('kind', '')}/{ref.get('name', '')}", _age(o, now), *_subjects(o)]


register("rbac.authorization.k8s.io", "RoleBinding", _binding_columns("roleBinding"), _binding_cells)
register("rbac.authorization.k8s.io", "ClusterRoleBinding", _binding_columns("clusterRoleBinding"),
         _binding_cells)


def _webhook_cells(o: dict, now: datetime) -> list:
    return [_meta(o, "name"), len(_list(o.get("webhooks"))), _age(o, now)]


for _kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
    register("admissionregistration.k8s.io", _kind, [
        _name_col(), _col("Webhooks", "integer", "Number of webhooks in the configuration."), _age_col(),
    ], _webhook_cells)


def _csr_cells(o: dict, now: datetime) -> list:
    types = {_get(c, "type") for c in _list(_get(o, "status", "conditions"))}
    state = "Denied" if "Denied" in types else "Approved" if "Approved" in types else "Pending"
    if "Failed" in types:
        state += ",Failed"
    if _get(o, "status", "certificate"):
        state += ",Issued"
    spec = _dict(o.get("spec"))
    requested = NONE
    if spec.get("expirationSeconds") is not None:
        requested = human_duration(timedelta(seconds=_int(spec["expirationSeconds"])))
    return [_meta(o, "name"), _age(o, now), spec.get("signerName") or NONE, spec.get("username", ""),
            requested, state]


register("certificates.k8s.io", "CertificateSigningRequest", [
    _name_col(), _age_col(),
    _col("SignerName", description="Signer asked to sign the request."),
    _col("Requestor", description="User who made the request."),
    _col("RequestedDuration", description="Validity asked for."),
    _col("Condition", description="Approval state of the request."),
], _csr_cells)


# Kinds that upstream serves with the generic table (Role, ClusterRole, LimitRange,
# CustomResourceDefinition, APIService, ...) are deliberately absent: they fall back to
# "Name, Created At" below, exactly as `kubectl get roles` shows them.

_GENERIC_COLUMNS = [
    _col("Name", "string", _NAME_DESC, format_="name"),
    _col("Created At", "date", "When the object was created (metadata.creationTimestamp)."),
]


def _created_at(obj: dict) -> str:
    t = _parse_time(_meta(obj, "creationTimestamp", None))
    if t is None:
        # A zero metav1.Time formats as the zero Go time.
        return "0001-01-01T00:00:00Z"
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_GENERIC = Printer(_GENERIC_COLUMNS, lambda o, now: [_meta(o, "name"), _created_at(o)])


# --------------------------------------------------------------------------- JSONPath subset


class JSONPathError(ValueError):
    """The expression is outside the JSONPath subset this module understands."""


_Step = tuple  # ("field", name) | ("index", n) | ("wild",) | ("filter", path, op, literal)
_FILTER_RE = re.compile(r"^\s*@((?:\.[^.\s=!<>]+)*)\s*(?:(==|!=|<=|>=|<|>)\s*(.+?))?\s*$")


def _parse_literal(text: str) -> Any:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError as exc:
        raise JSONPathError(f"bad literal {text!r}") from exc


def _parse_jsonpath(expr: str) -> list[_Step]:
    s = expr.strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1].strip()
    s = s.removeprefix("$")
    steps: list[_Step] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == ".":
            i += 1
            start = i
            while i < len(s) and s[i] not in ".[":
                i += 1
            name = s[start:i]
            if name == "*":
                steps.append(("wild",))
            elif name:
                steps.append(("field", name))
            elif start == 1 and i == len(s):
                # "." alone means the whole object.
                pass
            else:
                raise JSONPathError(f"empty field name in {expr!r}")
        elif ch == "[":
            depth, j = 0, i
            quote = ""
            while j < len(s):
                c = s[j]
                if quote:
                    if c == quote:
                        quote = ""
                elif c in "'\"":
                    quote = c
                elif c in "[(":
                    depth += 1
                elif c in "])":
                    depth -= 1
                    if depth == 0 and c == "]":
                        break
                j += 1
            if j >= len(s):
                raise JSONPathError(f"unclosed bracket in {expr!r}")
            inner = s[i + 1:j].strip()
            i = j + 1
            if inner == "*":
                steps.append(("wild",))
            elif inner.startswith("?(") and inner.endswith(")"):
                m = _FILTER_RE.match(inner[2:-1])
                if not m:
                    raise JSONPathError(f"unsupported filter {inner!r}")
                path = [p for p in m.group(1).split(".") if p]
                op = m.group(2)
                literal = _parse_literal(m.group(3).strip()) if op else None
                steps.append(("filter", path, op, literal))
            elif len(inner) >= 2 and inner[0] == inner[-1] and inner[0] in "'\"":
                steps.append(("field", inner[1:-1]))
            else:
                try:
                    steps.append(("index", int(inner)))
                except ValueError as exc:
                    raise JSONPathError(f"unsupported subscript [{inner}] in {expr!r}") from exc
        else:
            raise JSONPathError(f"unexpected {ch!r} at {i} in {expr!r}")
    return steps


def _compare(left: Any, op: str, right: Any) -> bool:
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    if isinstance(left, bool) or isinstance(right, bool):
        return False
    if isinstance(left, (int, float)) and isinstance(right, (int, float)) or (
            isinstance(left, str) and isinstance(right, str)):
        return {"<": left < right, ">": left > right, "<=": left <= right, ">=": left >= right}[op]
    return False


def jsonpath(obj: Any, expr: str) -> list[Any]:
    """Every value ``expr`` selects in ``obj``, in document order; [] when nothing matches.

    Understands the subset CRD printer columns use: ``.a.b``, ``['a.b']``, ``[0]``,
    ``[-1]``, ``[*]``, ``.*`` and filters such as ``[?(@.type=="Ready")]`` (==, !=,
    <, >, <=, >=, or bare existence ``[?(@.x)]``), optionally wrapped in ``{...}``.
    """
    nodes = [obj]
    for step in _parse_jsonpath(expr):
        nxt: list[Any] = []
        kind = step[0]
        for node in nodes:
            if kind == "field":
                if isinstance(node, dict) and step[1] in node:
                    nxt.append(node[step[1]])
            elif kind == "index":
                if isinstance(node, list) and -len(node) <= step[1] < len(node):
                    nxt.append(node[step[1]])
            elif kind == "wild":
                if isinstance(node, dict):
                    nxt.extend(node.values())
                elif isinstance(node, list):
                    nxt.extend(node)
            else:
                _, path, op, literal = step
                items = node if isinstance(node, list) else list(node.values()) if isinstance(node, dict) else []
                for item in items:
                    value, found = item, True
                    for key in path:
                        if isinstance(value, dict) and key in value:
                            value = value[key]
                        else:
                            found = False
                            break
                    if found and (op is None or _compare(value, op, literal)):
                        nxt.append(item)
        nodes = nxt
    return nodes


def _go_text(value: Any) -> str:
    """A JSON value printed the way Go's fmt prints decoded JSON, as kubectl's JSONPath does."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + " ".join(_go_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_text(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def _cell_for_json(type_: str, value: Any, now: datetime) -> Any:
    if value is None:
        return None
    if type_ == "string":
        return _go_text(value)
    if type_ == "integer":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return int(value)
    if type_ == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)
    if type_ == "boolean":
        return value if isinstance(value, bool) else None
    if type_ == "date":
        if not isinstance(value, str):
            return None
        t = _parse_time(value)
        if t is None:
            return INVALID
        return human_duration(now - t)
    return None


_CR_DEFAULT_COLUMNS = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp",
                        "description": _AGE_DESC}]


def _custom_printer(printer_columns: list[dict]) -> Printer:
    specs = list(printer_columns) or _CR_DEFAULT_COLUMNS
    parsed = []
    for spec in specs:
        path = spec.get("jsonPath") or spec.get("JSONPath") or ""
        _parse_jsonpath(path)  # fail early on an expression we cannot evaluate
        parsed.append((str(spec.get("type", "string")), path))
    columns = [_name_col()] + [
        _col(str(s.get("name", "")), str(s.get("type", "string")), str(s.get("description", "")),
             _int(s.get("priority", 0)), str(s.get("format", "")))
        for s in specs
    ]

    def cells(obj: dict, now: datetime) -> list:
        row: list[Any] = [_meta(obj, "name")]
        for type_, path in parsed:
            found = jsonpath(obj, path)
            # Upstream only ever shows the first match of a printer column.
            row.append(_cell_for_json(type_, found[0], now) if found else None)
        return row

    return Printer(columns, cells)


# --------------------------------------------------------------------------- the Table


def _row_object(obj: dict, include_object: str) -> dict | None:
    if include_object == "Object":
        return obj
    if include_object == "None":
        return None
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata", {})}


def _build(printer: Printer, objects: Iterable[dict], include_object: str, now: datetime | None,
           list_meta: dict | None) -> dict:
    if include_object not in ("Metadata", "Object", "None", ""):
        raise ValueError(f"includeObject must be None, Object or Metadata, not {include_object!r}")
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": printer.cells(obj, now)}
        if printer.conditions is not None:
            conditions = printer.conditions(obj)
            if conditions:
                row["conditions"] = conditions
        ref = _row_object(obj, include_object or "Metadata")
        if ref is not None:
            row["object"] = ref
        rows.append(row)
    metadata = {}
    for key in ("resourceVersion", "continue", "remainingItemCount"):
        value = (list_meta or {}).get(key)
        if value not in (None, ""):
            metadata[key] = value
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
            "columnDefinitions": [dict(c) for c in printer.columns], "rows": rows}


def table(group: str, kind: str, objects: list[dict], *, include_object: str = "Metadata",
          now: datetime | None = None, list_meta: dict | None = None,
          printer_columns: list[dict] | None = None) -> dict:
    """The meta.k8s.io/v1 Table for ``objects`` of ``group``/``kind``.

    ``include_object`` is the request's includeObject: "Metadata" (the default) puts a
    PartialObjectMetadata in each row, "Object" the whole object, "None" nothing.
    ``list_meta`` supplies the table's resourceVersion, continue and remainingItemCount.
    ``printer_columns`` marks a custom resource: its CRD version's
    additionalPrinterColumns (an empty list gives upstream's default Age column).
    Kinds with no printer get the generic Name / Created At table.
    """
    if printer_columns is not None:
        printer = _custom_printer(printer_columns)
    else:
        printer = PRINTERS.get((_group_key(group), kind), _GENERIC)
    return _build(printer, objects, include_object, now, list_meta)


def custom_resource_table(printer_columns: list[dict], objects: list[dict], *, include_object: str = "Metadata",
                          now: datetime | None = None, list_meta: dict | None = None) -> dict:
    """The Table for custom resources, from a CRD version's additionalPrinterColumns.

    Each column spec carries name, type (string, integer, number, boolean, date),
    jsonPath and optionally format, description and priority. Raises JSONPathError
    for a path outside the supported subset.
    """
    return _build(_custom_printer(printer_columns), objects, include_object, now, list_meta)
