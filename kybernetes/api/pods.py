"""Facts about pods that the API server, scheduler, controllers and kubelet all need alike.

Whether a toleration tolerates a taint, and a pod's QoS class, are defined
once here so that every component answers the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def toleration_matches(t: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """Whether one toleration tolerates one taint (an empty effect matches every effect)."""
    effect = t.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    op = t.get("operator") or "Equal"
    if not t.get("key"):
        # An empty key with Exists tolerates every taint.
        return op == "Exists"
    if t.get("key") != taint.get("key"):
        return False
    if op == "Exists":
        return True
    return op == "Equal" and (t.get("value") or "") == (taint.get("value") or "")


def find_toleration(tolerations: Iterable[Mapping[str, Any]] | None,
                    taint: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first toleration that tolerates taint (its tolerationSeconds matter for NoExecute)."""
    for t in tolerations or ():
        if toleration_matches(t, taint):
            return t
    return None


def pod_condition(pod: Mapping[str, Any], typ: str) -> Mapping[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == typ:
            return c
    return None


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    c = pod_condition(pod, "Ready")
    return bool(c and c.get("status") == "True")


def qos_class(spec: Mapping[str, Any]) -> str:
    """Guaranteed / Burstable / BestEffort from the cpu and memory requests and limits of a pod spec.

    Robust to a spec that has not been validated yet: the API server sets it at create time.
    """
    requests: list[dict] = []
    limits: list[dict] = []
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        r = (c.get("resources") or {}) if isinstance(c, dict) else {}
        requests.append({k: v for k, v in (r.get("requests") or {}).items() if k in ("cpu", "memory")})
        limits.append({k: v for k, v in (r.get("limits") or {}).items() if k in ("cpu", "memory")})
    if not any(requests) and not any(limits):
        return "BestEffort"
    for req, lim in zip(requests, limits):
        if set(lim) != {"cpu", "memory"}:
            return "Burstable"
        if req and any(req.get(k) not in (None, lim[k]) for k in req):
            return "Burstable"
    return "Guaranteed"
