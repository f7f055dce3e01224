"""LimitRange: per-namespace defaults and bounds for what containers, pods and claims ask for.

Upstream's LimitRanger admission plugin. A new pod's containers (and init
containers) get the namespace's default requests and limits for whatever they
leave unset, noted in the pod's `kubernetes.io/limit-ranger` annotation; then
every container is held to a LimitRange's type Container min, max and
maxLimitRequestRatio, the pod's totals to type Pod, and a claim's
spec.resources.requests to type PersistentVolumeClaim min and max. A
violation is a 403 naming every broken bound. LimitRanges are read from the
watch cache with the API's defaulting applied (`default_limit_range`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from ..api.quantity import Quantity
from .quota import ResourceList, forbidden, parse_resource_list, pod_limits, pod_requests
from .watchcache import WatchCache

if TYPE_CHECKING:
    from ..api.kinds import Kind
    from .rest import Call

__all__ = ["ANNOTATION", "LimitRanger", "default_limit_range", "mutate_pod", "validate_claim", "validate_pod"]

ANNOTATION = "kubernetes.io/limit-ranger"
LIMIT_RANGE_PREFIX = "/registry/limitranges/"
# Above this many whole units a milli-unit count no longer fits upstream's int64.
_MAX_MILLI = (2**63 - 1) // 1000
Obj = dict[str, Any]


def default_limit_range(lr: Obj) -> Obj:
    """The API's defaulting of a LimitRange, in place: for a type Container item, a missing default
    limit is its max, a missing default request its default limit, else its min."""
    for item in (lr.get("spec") or {}).get("limits") or []:
        if not isinstance(item, dict) or item.get("type") != "Container":
            continue
        default = item["default"] = dict(item.get("default") or {})
        request = item["defaultRequest"] = dict(item.get("defaultRequest") or {})
        for source, target in ((item.get("max"), default), (default, request), (item.get("min"), request)):
            for name, value in (source or {}).items():
                target.setdefault(name, value)
        for field in ("default", "defaultRequest"):
            if not item[field]:
                del item[field]
    return lr


def _items(lr: Obj, typ: str) -> list[Obj]:
    return [i for i in (lr.get("spec") or {}).get("limits") or [] if isinstance(i, dict) and i.get("type") == typ]


def _containers(pod: Obj) -> list[tuple[str, Obj]]:
    spec = pod.get("spec") or {}
    return [(label, c) for group, label in (("containers", "container"), ("initContainers", "init container"))
            for c in spec.get(group) or [] if isinstance(c, dict)]


# ------------------------------------------------------------------ defaults


def mutate_pod(lr: Obj, pod: Obj) -> None:
    """Give every container the LimitRange's default requests and limits it does not state itself."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    for item in _items(lr, "Container"):
        requests.update((n, str(q)) for n, q in parse_resource_list(item.get("defaultRequest")).items())
        limits.update((n, str(q)) for n, q in parse_resource_list(item.get("default")).items())
    notes: list[str] = []
    for label, c in _containers(pod):
        res = c.get("resources") if isinstance(c.get("resources"), dict) else {}
        set_requests = _fill(res, "requests", requests)
        set_limits = _fill(res, "limits", limits)
        if res:
            c["resources"] = res
        if set_requests:
            notes.append(f"{', '.join(sorted(set_requests))} request for {label} {c.get('name', '')}")
        if set_limits:
            notes.append(f"{', '.join(sorted(set_limits))} limit for {label} {c.get('name', '')}")
    if notes:
        meta = pod.setdefault("metadata", {})
        meta["annotations"] = {**(meta.get("annotations") or {}),
                               ANNOTATION: "LimitRanger plugin set: " + "; ".join(notes)}


def _fill(res: Obj, field: str, defaults: Mapping[str, str]) -> list[str]:
    have = res.get(field) if isinstance(res.get(field), dict) else {}
    added = [n for n in defaults if n not in have]
    if added:
        res[field] = {**have, **{n: defaults[n] for n in added}}
    return added


# ------------------------------------------------------------------ bounds


def _comparable(*qs: Quantity | None) -> list[int]:
    """The values at one precision, milli-units where all fit (as upstream compares them)."""
    present = [q if q is not None else Quantity(0) for q in qs]
    if all(q.value() <= _MAX_MILLI for q in present):
        return [q.milli_value() for q in present]
    return [q.value() for q in present]


def _min(typ: str, name: str, bound: Quantity, requests: ResourceList, limits: ResourceList) -> str | None:
    req, lim = requests.get(name), limits.get(name)
    r, li, b = _comparable(req, lim, bound)
    if req is None:
        return f"minimum {name} usage per {typ} is {bound}.  No request is specified"
    if r < b:
        return f"minimum {name} usage per {typ} is {bound}, but request is {req}"
    if lim is not None and li < b:
        return f"minimum {name} usage per {typ} is {bound}, but limit is {lim}"
    return None


def _max(typ: str, name: str, bound: Quantity, requests: ResourceList, limits: ResourceList) -> str | None:
    req, lim = requests.get(name), limits.get(name)
    r, li, b = _comparable(req, lim, bound)
    if lim is None:
        return f"maximum {name} usage per {typ} is {bound}.  No limit is specified"
    if li > b:
        return f"maximum {name} usage per {typ} is {bound}, but limit is {lim}"
    if req is not None and r > b:
        return f"maximum {name} usage per {typ} is {bound}, but request is {req}"
    return None


def _max_request(typ: str, name: str, bound: Quantity, requests: ResourceList) -> str | None:
    """A max on what is requested, for claims (which have no limits)."""
    req = requests.get(name)
    r, _, b = _comparable(req, None, bound)
    if req is None:
        return f"maximum {name} usage per {typ} is {bound}.  No request is specified"
    if r > b:
        return f"maximum {name} usage per {typ} is {bound}, but request is {req}"
    return None


def _ratio(typ: str, name: str, bound: Quantity, requests: ResourceList, limits: ResourceList) -> str | None:
    req, lim = requests.get(name), limits.get(name)
    r, li, _ = _comparable(req, lim, bound)
    if req is None or r == 0:
        return f"{name} max limit to request ratio per {typ} is {bound}, but no request is specified or request is 0"
    if lim is None or li == 0:
        return f"{name} max limit to request ratio per {typ} is {bound}, but no limit is specified or limit is 0"
    ratio = li / r
    observed, allowed = ratio, float(bound.value())
    if bound.value() <= _MAX_MILLI:
        observed, allowed = ratio * 1000, float(bound.milli_value())
    if observed > allowed:
        return f"{name} max limit to request ratio per {typ} is {bound}, but provided ratio is {ratio:.6f}"
    return None


def _bounds(item: Obj, typ: str, requests: ResourceList, limits: ResourceList) -> list[str]:
    errs: list[str | None] = []
    for field, check in (("min", _min), ("max", _max), ("maxLimitRequestRatio", _ratio)):
        bounds = parse_resource_list(item.get(field))
        errs.extend(check(typ, name, bounds[name], requests, limits) for name in sorted(bounds))
    return [e for e in errs if e]


def _own(c: Obj, field: str) -> ResourceList:
    res = c.get("resources")
    return parse_resource_list(res.get(field)) if isinstance(res, dict) else {}


def validate_pod(lr: Obj, pod: Obj) -> list[str]:
    """Every bound of the LimitRange the pod (defaults applied) breaks."""
    errs: list[str] = []
    for item in (lr.get("spec") or {}).get("limits") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "Container":
            for _, c in _containers(pod):
                errs += _bounds(item, "Container", _own(c, "requests"), _own(c, "limits"))
        elif item.get("type") == "Pod":
            errs += _bounds(item, "Pod", _pod_totals(pod, "requests"), _pod_totals(pod, "limits"))
    return errs


def _pod_totals(pod: Obj, field: str) -> ResourceList:
    # A LimitRange bounds the containers' own figures: overhead is not the user's to choose.
    spec = {**(pod.get("spec") or {}), "overhead": None}
    return (pod_requests if field == "requests" else pod_limits)({**pod, "spec": spec})


def validate_claim(lr: Obj, pvc: Obj, old: Obj | None = None) -> list[str]:
    """Every PersistentVolumeClaim bound the claim's requests break; on an update, a request the
    stored claim already holds is not checked again (it was valid when stored)."""
    requests = _own(pvc.get("spec") or {}, "requests")
    before = _own(old.get("spec") or {}, "requests") if old is not None else {}
    errs: list[str | None] = []
    for item in _items(lr, "PersistentVolumeClaim"):
        for field in ("min", "max"):
            bounds = parse_resource_list(item.get(field))
            for name in sorted(bounds):
                if name in requests and name in before and requests[name] == before[name]:
                    continue
                if field == "min":
                    errs.append(_min("PersistentVolumeClaim", name, bounds[name], requests, {}))
                else:
                    errs.append(_max_request("PersistentVolumeClaim", name, bounds[name], requests))
    return [e for e in errs if e]


def aggregate(errs: Iterable[str]) -> str:
    """Messages as apimachinery's aggregate error prints them: de-duplicated, bracketed if several."""
    unique = list(dict.fromkeys(errs))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


# ------------------------------------------------------------------ admission


class LimitRanger:
    """The LimitRanger admission step: a mutating one (call `admit` before validation and quota).

    live_ttl: how long a namespace seen without LimitRanges is believed without a fresh look at
    the store (a LimitRange just created may not be in the watch cache yet), as upstream's live
    lookup does.
    """

    def __init__(self, cache: WatchCache, *, live_ttl: float = 30.0):
        self.cache = cache
        self.live_ttl = live_ttl
        self._looked: dict[str, float] = {}

    async def admit(self, kind: Kind, obj: Obj, old: Obj | None, call: Call, subresource: str = "") -> None:
        """Default (pod creates only) and check a Pod or PersistentVolumeClaim; StatusError 403 if refused."""
        if subresource or kind.group or kind.kind not in ("Pod", "PersistentVolumeClaim"):
            return
        if kind.kind == "Pod" and old is not None:
            return  # containers' resources cannot change in an update
        if old is not None and (old.get("metadata") or {}).get("deletionTimestamp"):
            return
        ns = (obj.get("metadata") or {}).get("namespace") or ""
        ranges = await self._limit_ranges(ns)
        if kind.kind == "Pod":
            for lr in ranges:
                mutate_pod(lr, obj)
        for lr in ranges:
            errs = validate_pod(lr, obj) if kind.kind == "Pod" else validate_claim(lr, obj, old)
            if errs:
                raise forbidden(kind, obj, aggregate(errs))

    def _cached(self, ns: str) -> list[Obj]:
        entries = sorted(self.cache.cache(LIMIT_RANGE_PREFIX).entries(ns), key=lambda e: e.name)
        return [default_limit_range(orjson.loads(e.raw)) for e in entries]

    async def _limit_ranges(self, ns: str) -> list[Obj]:
        ranges = self._cached(ns)
        if ranges or not ns:
            self._looked.pop(ns, None)
            return ranges
        now = time.monotonic()
        last = self._looked.get(ns)
        if last is not None and now - last < self.live_ttl:
            return ranges
        if len(self._looked) > 10000:
            self._looked.clear()
        self._looked[ns] = now
        await self.cache.fresh()
        return self._cached(ns)
