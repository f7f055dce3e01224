"""Conversion between versions and groups that share storage.

autoscaling/v1 HorizontalPodAutoscaler is served from objects stored as
autoscaling/v2, and events.k8s.io/v1 Event from objects stored as core/v1
Event, as upstream does. Fields one side cannot express ride along in an
annotation so that a round trip through the other version loses nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import orjson

_HPA_V2_EXTRA = "autoscaling.alpha.kubernetes.io/v2-fields"


def _hpa_v1_to_v2(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["apiVersion"] = "autoscaling/v2"
    spec = out.get("spec") or {}
    status = out.get("status") or {}
    meta = out.setdefault("metadata", {})
    ann = meta.get("annotations") or {}
    extra = orjson.loads(ann.pop(_HPA_V2_EXTRA)) if _HPA_V2_EXTRA in ann else {}
    if not ann:
        meta.pop("annotations", None)
    target = spec.pop("targetCPUUtilizationPercentage", None)
    metrics = extra.get("metrics") or []
    if target is not None:
        metrics = [m for m in metrics if not (m.get("type") == "Resource"
                                               and (m.get("resource") or {}).get("name") == "cpu")]
        metrics.insert(0, {"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}}})
    if metrics:
        spec["metrics"] = metrics
    if extra.get("behavior"):
        spec["behavior"] = extra["behavior"]
    cur = status.pop("currentCPUUtilizationPercentage", None)
    current_metrics = extra.get("currentMetrics") or []
    if cur is not None and not current_metrics:
        current_metrics = [{"type": "Resource", "resource": {
            "name": "cpu", "current": {"averageUtilization": cur}}}]
    if current_metrics:
        status["currentMetrics"] = current_metrics
    if extra.get("conditions"):
        status["conditions"] = extra["conditions"]
    if status:
        out["status"] = status
    return out


def _hpa_v2_to_v1(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["apiVersion"] = "autoscaling/v1"
    spec = out.get("spec") or {}
    status = out.get("status") or {}
    extra: dict[str, Any] = {}
    metrics = spec.pop("metrics", None) or []
    for m in metrics:
        r = m.get("resource") or {}
        t = r.get("target") or {}
        if m.get("type") == "Resource" and r.get("name") == "cpu" and t.get("type") == "Utilization":
            spec["targetCPUUtilizationPercentage"] = t.get("averageUtilization")
    if metrics and not (len(metrics) == 1 and "targetCPUUtilizationPercentage" in spec):
        extra["metrics"] = metrics
    if spec.get("behavior"):
        extra["behavior"] = spec.pop("behavior")
    cm = status.pop("currentMetrics", None) or []
    for m in cm:
        r = m.get("resource") or {}
        if m.get("type") == "Resource" and r.get("name") == "cpu":
            u = (r.get("current") or {}).get("averageUtilization")
            if u is not None:
                status["currentCPUUtilizationPercentage"] = u
    if cm:
        extra["currentMetrics"] = cm
    if status.get("conditions"):
        extra["conditions"] = status.pop("conditions")
    if extra:
        meta = out.setdefault("metadata", {})
        meta.setdefault("annotations", {})[_HPA_V2_EXTRA] = orjson.dumps(extra).decode()
    return out


def _event_core_to_events(obj: dict[str, Any]) -> dict[str, Any]:
    src = obj.get("source") or {}
    out: dict[str, Any] = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                           "metadata": copy.deepcopy(obj.get("metadata") or {})}
    mapping = {"eventTime": "eventTime", "series": "series", "reportingComponent": "reportingController",
               "reportingInstance": "reportingInstance", "action": "action", "reason": "reason",
               "involvedObject": "regarding", "related": "related", "message": "note", "type": "type",
               "firstTimestamp": "deprecatedFirstTimestamp", "lastTimestamp": "deprecatedLastTimestamp",
               "count": "deprecatedCount"}
    for a, b in mapping.items():
        if obj.get(a) not in (None, "", {}):
            out[b] = copy.deepcopy(obj[a])
    if src:
        out["deprecatedSource"] = copy.deepcopy(src)
    return out


def _event_events_to_core(obj: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"apiVersion": "v1", "kind": "Event", "metadata": copy.deepcopy(obj.get("metadata") or {})}
    mapping = {"eventTime": "eventTime", "series": "series", "reportingController": "reportingComponent",
               "reportingInstance": "reportingInstance", "action": "action", "reason": "reason",
               "regarding": "involvedObject", "related": "related", "note": "message", "type": "type",
               "deprecatedFirstTimestamp": "firstTimestamp", "deprecatedLastTimestamp": "lastTimestamp",
               "deprecatedCount": "count", "deprecatedSource": "source"}
    for a, b in mapping.items():
        if obj.get(a) not in (None, "", {}):
            out[b] = copy.deepcopy(obj[a])
    out.setdefault("involvedObject", {})
    return out


_CONVERTERS: dict[tuple[str, str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("HorizontalPodAutoscaler", "autoscaling/v1", "autoscaling/v2"): _hpa_v1_to_v2,
    ("HorizontalPodAutoscaler", "autoscaling/v2", "autoscaling/v1"): _hpa_v2_to_v1,
    ("Event", "v1", "events.k8s.io/v1"): _event_core_to_events,
    ("Event", "events.k8s.io/v1", "v1"): _event_events_to_core,
}


def convert(obj: dict[str, Any], to_api_version: str) -> dict[str, Any]:
    """Return obj as to_api_version (obj itself when it already is)."""
    frm = obj.get("apiVersion", "")
    if frm == to_api_version:
        return obj
    fn = _CONVERTERS.get((obj.get("kind", ""), frm, to_api_version))
    if fn is None:
        out = dict(obj)
        out["apiVersion"] = to_api_version
        return out
    return fn(obj)
