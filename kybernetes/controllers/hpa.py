"""The HorizontalPodAutoscaler controller: sizes a workload from its pods' resource usage.

Every sync period (15 s by default) each autoscaling/v2 HorizontalPodAutoscaler
is reconciled, as upstream's podautoscaler controller does:

* the target's scale subresource (found from scaleTargetRef through discovery)
  gives the current replicas and the pod selector; a target at 0 replicas has
  autoscaling switched off (ScalingActive False, ScalingDisabled);
* each metric (Resource or ContainerResource, cpu or memory, with an
  Utilization or AverageValue target) proposes a replica count the way the
  upstream replica calculator does: a usage ratio against the target with a
  tolerance of 0.1, pods being deleted or failed ignored, pods without metrics
  assumed at 100% of their request on a scale-down and at 0% on a scale-up,
  and (for cpu) pods not yet ready counted at 0% on a scale-up; the largest
  proposal wins;
* the proposal is stabilised and rate limited: with spec.behavior by its
  scaleUp/scaleDown rules (stabilizationWindowSeconds, Pods and Percent
  policies per periodSeconds, selectPolicy Max/Min/Disabled; upstream's
  defaults fill what is not given), without it by upstream's legacy rules
  (5 minutes of scale-down stabilisation, at most max(2x, 4) replicas per
  step); then bounded by minReplicas (default 1) and maxReplicas;
* a changed count is written through the scale subresource and announced by
  a SuccessfulRescale event;
* status carries currentReplicas, desiredReplicas, currentMetrics,
  lastScaleTime, observedGeneration and the AbleToScale, ScalingActive and
  ScalingLimited conditions with upstream's reasons.

The recommendation history and the scale-event history the stabilisation and
rate limits need are kept in memory per HPA, as upstream keeps them: a
restarted controller forgets them and at worst scales down a window early.

Metrics come through a small injectable MetricsClient; the default one reads
metrics.k8s.io/v1beta1 PodMetrics from the API server, as upstream reads
metrics-server.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ..api.errors import StatusError
from ..api.quantity import Quantity
from ..api.selectors import LabelSelector
from ..client import Client
from .base import Controller, Requeue, key_of
from .common import parse_time
from .job import rfc3339

log = logging.getLogger("kybernetes.controllers.hpa")

Obj = dict[str, Any]
# pod name -> container name -> {"cpu_milli": int, "memory_bytes": int}
PodMetrics = dict[str, dict[str, dict[str, int]]]

COMPONENT = "horizontal-pod-autoscaler"

# Upstream's kube-controller-manager defaults (--horizontal-pod-autoscaler-*).
DEFAULT_SYNC_PERIOD = 15.0
DEFAULT_TOLERANCE = 0.1
DEFAULT_DOWNSCALE_STABILIZATION = 300.0
DEFAULT_CPU_INITIALIZATION_PERIOD = 300.0
DEFAULT_INITIAL_READINESS_DELAY = 30.0
# The window a metrics-server sample covers. The MetricsClient interface does
# not carry per-sample timestamps, so a sample is taken as ending now and
# covering this window when deciding whether it straddles a readiness change.
METRICS_WINDOW = 10.0

# autoscaling/v2 defaulting of an empty spec.metrics (and autoscaling/v1's
# default targetCPUUtilizationPercentage).
DEFAULT_CPU_UTILIZATION = 80

METRICS_API = "/apis/metrics.k8s.io/v1beta1"

# ScalingLimited (reason, message) pairs, worded as upstream's.
WITHIN_RANGE = ("DesiredWithinRange", "the desired count is within the acceptable range")
TOO_FEW = ("TooFewReplicas", "the desired replica count is less than the minimum replica count")
TOO_MANY = ("TooManyReplicas", "the desired replica count is more than the maximum replica count")
SCALE_UP_LIMIT = ("ScaleUpLimit",
                  "the desired replica count is increasing faster than the maximum scale rate")
SCALE_DOWN_LIMIT = ("ScaleDownLimit",
                    "the desired replica count is decreasing faster than the maximum scale rate")


class MetricsError(Exception):
    """Metrics could not be fetched or turned into a replica count; the message is for users."""


# --------------------------------------------------------------------------- metrics source


class MetricsClient:
    """Pod resource usage from metrics.k8s.io/v1beta1, as the API server serves it (like metrics-server).

    Tests and other metric sources replace this with any object that has the
    same `pod_metrics` coroutine.
    """

    def __init__(self, client: Client):
        self.client = client

    async def pod_metrics(self, namespace: str, selector: str) -> PodMetrics:
        """Usage of the pods matching `selector`: pod -> container -> cpu_milli, memory_bytes."""
        query = {"labelSelector": selector} if selector else None
        try:
            doc = await self.client.request("GET", f"{METRICS_API}/namespaces/{namespace}/pods", query)
        except StatusError as e:
            raise MetricsError(f"unable to fetch metrics from resource metrics API: {e.message}") from e
        return parse_pod_metrics_list(doc)


def parse_pod_metrics_list(doc: Any) -> PodMetrics:
    """A PodMetricsList as metrics-server returns it, reduced to milli-cpu and bytes per container."""
    out: PodMetrics = {}
    for item in (doc or {}).get("items") or []:
        name = (item.get("metadata") or {}).get("name")
        if not name:
            continue
        containers: dict[str, dict[str, int]] = {}
        for c in item.get("containers") or []:
            usage = c.get("usage") or {}
            values: dict[str, int] = {}
            try:
                if "cpu" in usage:
                    # MilliValue rounds up, as upstream's metrics client reads cpu.
                    values["cpu_milli"] = Quantity.parse(usage["cpu"]).milli_value()
                if "memory" in usage:
                    values["memory_bytes"] = Quantity.parse(usage["memory"]).value()
            except ValueError:
                continue
            containers[c.get("name", "")] = values
        out[name] = containers
    return out


_USAGE_KEY = {"cpu": "cpu_milli", "memory": "memory_bytes"}


def resource_usage_milli(metrics: PodMetrics, resource: str, container: str = "") -> dict[str, int]:
    """Per pod usage of one resource in thousandths (millicores, millibytes), as upstream's metrics client.

    A pod one of whose containers reports no value for the resource is left
    out (it counts as missing), as upstream does; with `container` only that
    container counts and a pod without it is left out.
    """
    key = _USAGE_KEY.get(resource)
    out: dict[str, int] = {}
    if key is None:
        return out
    scale = 1 if resource == "cpu" else 1000
    for pod, containers in metrics.items():
        if container:
            values = containers.get(container)
            if values is None or key not in values:
                continue
            out[pod] = values[key] * scale
            continue
        if not containers or any(key not in v for v in containers.values()):
            continue
        out[pod] = sum(v[key] for v in containers.values()) * scale
    return out


# --------------------------------------------------------------------------- replica calculator


def _condition_of(pod: Obj, typ: str) -> Obj | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == typ:
            return c
    return None


@dataclass
class PodGroups:
    ready_count: int
    unready: set[str]
    missing: set[str]
    ignored: set[str]


def group_pods(pods: list[Obj], metrics: dict[str, int], resource: str, now: float, *,
               cpu_initialization_period: float = DEFAULT_CPU_INITIALIZATION_PERIOD,
               initial_readiness_delay: float = DEFAULT_INITIAL_READINESS_DELAY) -> PodGroups:
    """Sort pods as upstream's groupPods: ready (counted), unready, missing metrics, ignored."""
    g = PodGroups(0, set(), set(), set())
    for pod in pods:
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase")
        if pod["metadata"].get("deletionTimestamp") or phase == "Failed":
            g.ignored.add(name)
            continue
        if phase == "Pending":
            g.unready.add(name)
            continue
        if name not in metrics:
            g.missing.add(name)
            continue
        if resource == "cpu":
            # A starting pod's cpu burns in initialisation, not in serving load:
            # its samples are left out until it is ready and a window has passed.
            cond = _condition_of(pod, "Ready")
            start = parse_time((pod.get("status") or {}).get("startTime"))
            if cond is None or start is None:
                unready = True
            else:
                transition = parse_time(cond.get("lastTransitionTime")) or start
                if start + cpu_initialization_period > now:
                    unready = cond.get("status") == "False" or now < transition + METRICS_WINDOW
                else:
                    # Past initialisation only a pod that has never been ready is left out.
                    unready = cond.get("status") == "False" and start + initial_readiness_delay > transition
            if unready:
                g.unready.add(name)
                continue
        g.ready_count += 1
    return g


def pod_requests_milli(pods: list[Obj], resource: str, container: str = "") -> dict[str, int]:
    """Per pod sum of the containers' requests in thousandths; a container without one is an error."""
    out: dict[str, int] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        # Sidecars (restartable init containers) run beside the app and share its load.
        containers = list(spec.get("containers") or []) + [
            c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
        total = 0
        for c in containers:
            if container and c.get("name") != container:
                continue
            req = ((c.get("resources") or {}).get("requests") or {}).get(resource)
            if req is None:
                raise MetricsError(f"missing request for {resource} in container {c.get('name')} "
                                   f"of Pod {pod['metadata']['name']}")
            total += Quantity.parse(req).milli_value()
        out[pod["metadata"]["name"]] = total
    return out


def utilization_ratio(metrics: dict[str, int], requests: dict[str, int],
                      target: int) -> tuple[float, int, int]:
    """(usage ratio, utilization percent, raw average usage) over the pods with both metric and request."""
    used = requested = n = 0
    for pod, value in metrics.items():
        if pod not in requests:
            continue
        used += value
        requested += requests[pod]
        n += 1
    if requested == 0:
        raise MetricsError("no metrics returned matched known pods")
    # Integer percent first, as upstream, so the ratio is what status reports.
    utilization = used * 100 // requested
    return utilization / target, utilization, used // n


def plain_ratio(metrics: dict[str, int], target: int) -> tuple[float, int]:
    average = sum(metrics.values()) // len(metrics)
    return average / target, average


class ReplicaCalculator:
    """Upstream's replica calculator for resource metrics over a set of pods."""

    def __init__(self, tolerance: float = DEFAULT_TOLERANCE,
                 cpu_initialization_period: float = DEFAULT_CPU_INITIALIZATION_PERIOD,
                 initial_readiness_delay: float = DEFAULT_INITIAL_READINESS_DELAY):
        self.tolerance = tolerance
        self.cpu_initialization_period = cpu_initialization_period
        self.initial_readiness_delay = initial_readiness_delay

    def _group(self, pods: list[Obj], metrics: dict[str, int], resource: str, now: float) -> PodGroups:
        g = group_pods(pods, metrics, resource, now, cpu_initialization_period=self.cpu_initialization_period,
                       initial_readiness_delay=self.initial_readiness_delay)
        for name in g.ignored | g.unready:
            metrics.pop(name, None)
        if not metrics:
            raise MetricsError("did not receive metrics for targeted pods (pods might be unready)")
        return g

    def utilization_replicas(self, current: int, target_utilization: int, resource: str, pods: list[Obj],
                             usage: dict[str, int], now: float, container: str = "") -> tuple[int, int, int]:
        """(replicas, utilization percent, raw average) for an averageUtilization target."""
        if not pods:
            raise MetricsError("no pods returned by selector while calculating replica count")
        if target_utilization <= 0:
            raise MetricsError("averageUtilization target must be positive")
        names = {p["metadata"]["name"] for p in pods}
        metrics = {k: v for k, v in usage.items() if k in names}
        g = self._group(pods, metrics, resource, now)
        requests = pod_requests_milli(pods, resource, container)
        ratio, utilization, raw = utilization_ratio(metrics, requests, target_utilization)

        scale_up_with_unready = bool(g.unready) and ratio > 1.0
        if not scale_up_with_unready and not g.missing:
            if abs(1.0 - ratio) <= self.tolerance:
                return current, utilization, raw
            return math.ceil(ratio * g.ready_count), utilization, raw

        if g.missing:
            if ratio < 1.0:
                # A pod we cannot see may be busy: on the way down assume it
                # uses its whole request (or the target, when that is above 100%).
                fallback = max(100, target_utilization)
                for name in g.missing:
                    metrics[name] = requests[name] * fallback // 100
            elif ratio > 1.0:
                # ... and on the way up, that it is idle.
                for name in g.missing:
                    metrics[name] = 0
        if scale_up_with_unready:
            for name in g.unready:
                metrics[name] = 0

        new_ratio, _, _ = utilization_ratio(metrics, requests, target_utilization)
        return self._rebalanced(current, ratio, new_ratio, len(metrics)), utilization, raw

    def average_value_replicas(self, current: int, target_milli: int, resource: str, pods: list[Obj],
                               usage: dict[str, int], now: float) -> tuple[int, int]:
        """(replicas, average usage in thousandths) for an averageValue target."""
        if not pods:
            raise MetricsError("no pods returned by selector while calculating replica count")
        if target_milli <= 0:
            raise MetricsError("averageValue target must be positive")
        names = {p["metadata"]["name"] for p in pods}
        metrics = {k: v for k, v in usage.items() if k in names}
        g = self._group(pods, metrics, resource, now)
        ratio, average = plain_ratio(metrics, target_milli)

        scale_up_with_unready = bool(g.unready) and ratio > 1.0
        if not scale_up_with_unready and not g.missing:
            if abs(1.0 - ratio) <= self.tolerance:
                return current, average
            return math.ceil(ratio * g.ready_count), average
        if g.missing:
            for name in g.missing:
                metrics[name] = target_milli if ratio < 1.0 else 0
        if scale_up_with_unready:
            for name in g.unready:
                metrics[name] = 0
        new_ratio, _ = plain_ratio(metrics, target_milli)
        return self._rebalanced(current, ratio, new_ratio, len(metrics)), average

    def _rebalanced(self, current: int, ratio: float, new_ratio: float, counted: int) -> int:
        # The conservative assumptions may only damp a change, never turn its direction.
        if (abs(1.0 - new_ratio) <= self.tolerance or (ratio < 1.0 < new_ratio)
                or (ratio > 1.0 > new_ratio)):
            return current
        replicas = math.ceil(new_ratio * counted)
        if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
            return current
        return replicas


# --------------------------------------------------------------------------- behavior


def _default_scale_up() -> Obj:
    return {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
            "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15},
                         {"type": "Percent", "value": 100, "periodSeconds": 15}]}


def _default_scale_down(window: float) -> Obj:
    return {"stabilizationWindowSeconds": int(window), "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}


def effective_behavior(behavior: Obj, downscale_window: float = DEFAULT_DOWNSCALE_STABILIZATION) -> Obj:
    """spec.behavior with upstream's defaults filled into whatever it leaves out."""
    out: Obj = {}
    defaults = (("scaleUp", _default_scale_up()), ("scaleDown", _default_scale_down(downscale_window)))
    for direction, default in defaults:
        rules = copy.deepcopy(behavior.get(direction) or {})
        for field, value in default.items():
            if rules.get(field) is None:
                rules[field] = value
        out[direction] = rules
    return out


@dataclass
class _Recommendation:
    replicas: int
    at: float


@dataclass
class _ScaleEvent:
    change: int
    at: float
    outdated: bool = False


def _change_in_period(events: list[_ScaleEvent], period: float, now: float) -> int:
    return sum(e.change for e in events if e.at > now - period)


def scale_up_limit(current: int, ups: list[_ScaleEvent], downs: list[_ScaleEvent], rules: Obj,
                   now: float) -> int:
    """The most replicas the scaleUp policies allow now, given this period's earlier scale events."""
    select = rules.get("selectPolicy") or "Max"
    if select == "Disabled":
        return current
    best: int | None = None
    for p in rules.get("policies") or []:
        period = p.get("periodSeconds", 15)
        start = current - _change_in_period(ups, period, now) + _change_in_period(downs, period, now)
        if p.get("type") == "Pods":
            proposed = start + p.get("value", 0)
        else:
            # Rounded up so a small percentage of few replicas still adds one.
            proposed = math.ceil(Fraction(start * (100 + p.get("value", 0)), 100))
        if best is None:
            best = proposed
        else:
            best = min(best, proposed) if select == "Min" else max(best, proposed)
    return current if best is None else best


def scale_down_limit(current: int, ups: list[_ScaleEvent], downs: list[_ScaleEvent], rules: Obj,
                     now: float) -> int:
    """The fewest replicas the scaleDown policies allow now."""
    select = rules.get("selectPolicy") or "Max"
    if select == "Disabled":
        return current
    best: int | None = None
    for p in rules.get("policies") or []:
        period = p.get("periodSeconds", 15)
        start = current - _change_in_period(ups, period, now) + _change_in_period(downs, period, now)
        if p.get("type") == "Pods":
            proposed = start - p.get("value", 0)
        else:
            proposed = int(Fraction(start * (100 - p.get("value", 0)), 100))
        if best is None:
            best = proposed
        else:
            # Min picks the smallest change, which for a scale-down is the largest count.
            best = max(best, proposed) if select == "Min" else min(best, proposed)
    return current if best is None else best


# --------------------------------------------------------------------------- status helpers


def set_condition(status: Obj, typ: str, cond_status: str, reason: str, message: str, now: float) -> None:
    """Upstream's setCondition: the transition time moves only when the status flips."""
    conds = status.setdefault("conditions", [])
    for c in conds:
        if c.get("type") == typ:
            if c.get("status") != cond_status:
                c["lastTransitionTime"] = rfc3339(now)
            c.update(status=cond_status, reason=reason, message=message)
            return
    conds.append({"type": typ, "status": cond_status, "lastTransitionTime": rfc3339(now),
                  "reason": reason, "message": message})


def milli_quantity(milli: int) -> str:
    """resource.NewMilliQuantity(v, DecimalSI).String()."""
    return str(Quantity(Fraction(milli, 1000)))


class _Failure(Exception):
    """One metric could not propose a count: the ScalingActive condition and event to report."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------- controller


class HorizontalPodAutoscalerController(Controller):
    """Reconciles autoscaling/v2 HorizontalPodAutoscalers against their targets' scale and pod metrics."""

    name = "horizontal-pod-autoscaler"
    component = COMPONENT

    def __init__(self, client: Client, *, metrics: MetricsClient | None = None,
                 sync_period: float = DEFAULT_SYNC_PERIOD, tolerance: float = DEFAULT_TOLERANCE,
                 downscale_stabilization: float = DEFAULT_DOWNSCALE_STABILIZATION,
                 cpu_initialization_period: float = DEFAULT_CPU_INITIALIZATION_PERIOD,
                 initial_readiness_delay: float = DEFAULT_INITIAL_READINESS_DELAY,
                 clock: Callable[[], float] = time.time):
        super().__init__(client)
        self.metrics = metrics if metrics is not None else MetricsClient(client)
        self.sync_period = sync_period
        self.downscale_stabilization = downscale_stabilization
        self.calculator = ReplicaCalculator(tolerance, cpu_initialization_period, initial_readiness_delay)
        self.clock = clock
        self.hpas = self.informer("autoscaling/v2", "horizontalpodautoscalers")
        self.pods = self.informer("v1", "pods")
        self.hpas.add_handler(on_add=lambda o: self.enqueue(key_of(o)), on_update=self._on_update,
                              on_delete=self._on_delete)
        self.recommendations: dict[str, list[_Recommendation]] = {}
        self.scale_up_events: dict[str, list[_ScaleEvent]] = {}
        self.scale_down_events: dict[str, list[_ScaleEvent]] = {}

    def _on_update(self, old: Obj, new: Obj) -> None:
        # Our own status writes must not trigger another round: each HPA is
        # looked at once per sync period (the requeue), or at once when its spec changes.
        if old["metadata"].get("generation") != new["metadata"].get("generation"):
            self.enqueue(key_of(new))

    def _on_delete(self, obj: Obj) -> None:
        self.forget(key_of(obj))

    def forget(self, key: str) -> None:
        self.recommendations.pop(key, None)
        self.scale_up_events.pop(key, None)
        self.scale_down_events.pop(key, None)

    async def reconcile(self, key: str) -> None:
        hpa = self.hpas.get(key)
        if hpa is None:
            self.forget(key)
            return
        try:
            await self._reconcile_hpa(key, copy.deepcopy(hpa))
        except StatusError as e:
            if e.code == 409:
                raise  # a write raced another; the base retries soon
            log.warning("hpa %s: %s", key, e.message)
        raise Requeue(after=self.sync_period)

    async def _event(self, hpa: Obj, etype: str, reason: str, message: str) -> None:
        self.recorder.event(hpa, etype, reason, message)

    # ------------------------------------------------------------------ one round

    async def _reconcile_hpa(self, key: str, hpa: Obj) -> None:
        now = self.clock()
        spec = hpa.get("spec") or {}
        original = copy.deepcopy(hpa.get("status") or {})
        status = copy.deepcopy(original)
        ns = hpa["metadata"].get("namespace") or "default"
        ref = spec.get("scaleTargetRef") or {}

        try:
            rc = await self.client.for_kind(ref.get("apiVersion") or "", ref.get("kind") or "")
            scale = await rc.get_subresource(ref.get("name") or "", "scale", ns)
        except (StatusError, ValueError) as e:
            # A bad reference is the user's to fix: report it and look again next period.
            msg = e.message if isinstance(e, StatusError) else str(e)
            await self._event(hpa, "Warning", "FailedGetScale", msg)
            set_condition(status, "AbleToScale", "False", "FailedGetScale",
                          f"the HPA controller was unable to get the target's current scale: {msg}", now)
            await self._write_status(hpa, original, status)
            return
        set_condition(status, "AbleToScale", "True", "SucceededGetScale",
                      "the HPA controller was able to get the target's current scale", now)
        current = int((scale.get("spec") or {}).get("replicas") or 0)
        self.recommendations.setdefault(key, [_Recommendation(current, now)])

        min_replicas = spec.get("minReplicas")
        min_replicas = 1 if min_replicas is None else int(min_replicas)
        max_replicas = int(spec.get("maxReplicas") or 0)
        rescale_reason = ""
        metric_statuses: list[Obj] | None = None
        if current == 0 and min_replicas != 0:
            desired = 0
            rescale = False
            set_condition(status, "ScalingActive", "False", "ScalingDisabled",
                          "scaling is disabled since the replica count of the target is zero", now)
        elif current > max_replicas:
            rescale_reason = "Current number of replicas above Spec.MaxReplicas"
            desired = max_replicas
            rescale = True
        elif current < min_replicas:
            rescale_reason = "Current number of replicas below Spec.MinReplicas"
            desired = min_replicas
            rescale = True
        else:
            proposal, metric_name, metric_statuses, failure = await self._compute_for_metrics(
                hpa, scale, status, now)
            if proposal < 0:
                # No usable proposal: report what was measured and keep the size.
                self._set_status(hpa, status, current, status.get("desiredReplicas", 0), metric_statuses,
                                 rescale=False, now=now)
                await self._write_status(hpa, original, status)
                await self._event(hpa, "Warning", "FailedComputeMetricsReplicas", failure)
                return
            desired = proposal
            if desired > current:
                rescale_reason = f"{metric_name} above target"
            elif desired < current:
                rescale_reason = "All metrics below target"
            if spec.get("behavior") is None:
                desired = self._normalize_legacy(key, status, current, desired, min_replicas, max_replicas,
                                                 now)
            else:
                desired = self._normalize_with_behavior(key, status, spec["behavior"], current, desired,
                                                        min_replicas, max_replicas, now)
            rescale = desired != current

        if rescale:
            body = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": {"name": scale["metadata"]["name"], "namespace": ns,
                                 "resourceVersion": scale["metadata"].get("resourceVersion")},
                    "spec": {"replicas": desired}}
            try:
                await rc.update_subresource(ref["name"], "scale", body, ns)
            except StatusError as e:
                await self._event(hpa, "Warning", "FailedRescale",
                                  f"New size: {desired}; reason: {rescale_reason}; error: {e.message}")
                set_condition(status, "AbleToScale", "False", "FailedUpdateScale",
                              f"the HPA controller was unable to update the target scale: {e.message}", now)
                self._set_status(hpa, status, current, status.get("desiredReplicas", 0), metric_statuses,
                                 rescale=False, now=now)
                await self._write_status(hpa, original, status)
                return
            set_condition(status, "AbleToScale", "True", "SucceededRescale",
                          f"the HPA controller was able to update the target scale to {desired}", now)
            await self._event(hpa, "Normal", "SuccessfulRescale",
                              f"New size: {desired}; reason: {rescale_reason}")
            self._store_scale_event(key, spec.get("behavior"), current, desired, now)
            log.info("hpa %s: scaled %s/%s from %d to %d (%s)", key, ref.get("kind"), ref.get("name"),
                     current, desired, rescale_reason)
        else:
            desired = current
        self._set_status(hpa, status, current, desired, metric_statuses, rescale=rescale, now=now)
        await self._write_status(hpa, original, status)

    def _set_status(self, hpa: Obj, status: Obj, current: int, desired: int,
                    metric_statuses: list[Obj] | None, *, rescale: bool, now: float) -> None:
        status["observedGeneration"] = hpa["metadata"].get("generation", 0)
        status["currentReplicas"] = current
        status["desiredReplicas"] = desired
        if metric_statuses:
            status["currentMetrics"] = metric_statuses
        else:
            status.pop("currentMetrics", None)
        if rescale:
            status["lastScaleTime"] = rfc3339(now)

    async def _write_status(self, hpa: Obj, original: Obj, status: Obj) -> None:
        if status == original:
            return
        # A merge patch of the whole status: the controller is its only writer,
        # and a patch does not fail when the cache lags our previous write.
        patch: Obj = dict(status)
        for gone in original.keys() - status.keys():
            patch[gone] = None
        await self.client.resource("autoscaling/v2", "horizontalpodautoscalers").patch(
            hpa["metadata"]["name"], {"status": patch}, namespace=hpa["metadata"].get("namespace"),
            subresource="status")

    # ------------------------------------------------------------------ metrics

    async def _compute_for_metrics(self, hpa: Obj, scale: Obj, status: Obj,
                                   now: float) -> tuple[int, str, list[Obj], str]:
        """(largest proposal or -1, the metric proposing it, currentMetrics, first failure message)."""
        specs = (hpa.get("spec") or {}).get("metrics") or [
            {"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": DEFAULT_CPU_UTILIZATION}}}]
        selector_text = (scale.get("status") or {}).get("selector") or ""
        if not selector_text:
            await self._event(hpa, "Warning", "SelectorRequired", "selector is required")
            set_condition(status, "ScalingActive", "False", "InvalidSelector",
                          "the HPA target's scale is missing a selector", now)
            return -1, "", [], "selector is required"
        try:
            selector = LabelSelector.parse(selector_text)
        except (StatusError, ValueError) as e:
            msg = ("couldn't convert selector into a corresponding internal selector object: "
                   f"{getattr(e, 'message', e)}")
            await self._event(hpa, "Warning", "InvalidSelector", msg)
            set_condition(status, "ScalingActive", "False", "InvalidSelector", msg, now)
            return -1, "", [], msg

        ns = hpa["metadata"].get("namespace") or "default"
        # Sorted so that messages naming a pod are the same from one round to the next.
        pods = sorted((p for p in self.pods.list_by_namespace(ns)
                       if selector.matches(p["metadata"].get("labels") or {})),
                      key=lambda p: p["metadata"]["name"])
        current = int((scale.get("spec") or {}).get("replicas") or 0)
        usage: PodMetrics | None = None
        usage_error: str | None = None

        statuses: list[Obj] = []
        best, best_name = 0, ""
        invalid = 0
        first_failure: _Failure | None = None
        for m in specs:
            try:
                if usage is None and usage_error is None:
                    try:
                        usage = await self.metrics.pod_metrics(ns, selector_text)
                    except MetricsError as e:
                        usage_error = str(e)
                proposal, name, metric_status = self._compute_for_metric(m, current, pods, usage,
                                                                         usage_error, now)
            except _Failure as f:
                invalid += 1
                if first_failure is None:
                    first_failure = f
                await self._event(hpa, "Warning", f.reason, f.message)
                # Keep currentMetrics aligned with spec.metrics, as upstream's zero-valued entry does.
                statuses.append({"type": ""})
                continue
            statuses.append(metric_status)
            if best == 0 or proposal > best:
                best, best_name = proposal, name

        # Scaling on the metrics that worked is only safe upwards: a broken
        # metric might be the one that would have kept the count high.
        if first_failure is not None and (invalid >= len(specs) or best < current):
            set_condition(status, "ScalingActive", "False", first_failure.reason,
                          f"the HPA was unable to compute the replica count: {first_failure.message}", now)
            return -1, "", statuses, (f"invalid metrics ({invalid} invalid out of {len(specs)}), "
                                      f"first error is: {first_failure.message}")
        set_condition(status, "ScalingActive", "True", "ValidMetricFound",
                      f"the HPA was able to successfully calculate a replica count from {best_name}", now)
        return best, best_name, statuses, ""

    def _compute_for_metric(self, m: Obj, current: int, pods: list[Obj], usage: PodMetrics | None,
                            usage_error: str | None, now: float) -> tuple[int, str, Obj]:
        typ = m.get("type")
        if typ == "Resource":
            src = m.get("resource") or {}
            container, reason, kind = "", "FailedGetResourceMetric", "resource"
        elif typ == "ContainerResource":
            src = m.get("containerResource") or {}
            container, kind = src.get("container") or "", "container"
            reason = "FailedGetContainerResourceMetric"
        else:
            # Pods, Object and External metrics need a custom or external metrics API this cluster lacks.
            raise _Failure("InvalidMetricSourceType", f'unknown metric source type "{typ}"')
        resource = src.get("name") or ""
        target = src.get("target") or {}

        def fail(msg: str) -> _Failure:
            return _Failure(reason, f"failed to get {resource} {kind} metric value: {msg}")

        if usage_error is not None or usage is None:
            raise fail(f"failed to get {resource} utilization: unable to get metrics for resource "
                       f"{resource}: {usage_error}")
        values = resource_usage_milli(usage, resource, container)
        current_status: Obj
        try:
            if target.get("averageValue") is not None:
                try:
                    target_milli = Quantity.parse(target["averageValue"]).milli_value()
                except ValueError as e:
                    raise MetricsError(f"invalid averageValue: {e}") from e
                try:
                    replicas, average = self.calculator.average_value_replicas(
                        current, target_milli, resource, pods, values, now)
                except MetricsError as e:
                    raise MetricsError(f"failed to get {resource} usage: {e}") from e
                name = f"{resource} resource"
                current_status = {"averageValue": milli_quantity(average)}
            elif target.get("averageUtilization") is not None:
                try:
                    replicas, percent, raw = self.calculator.utilization_replicas(
                        current, int(target["averageUtilization"]), resource, pods, values, now, container)
                except MetricsError as e:
                    raise MetricsError(f"failed to get {resource} utilization: {e}") from e
                name = (f"{resource} container resource utilization (percentage of request)" if container
                        else f"{resource} resource utilization (percentage of request)")
                current_status = {"averageUtilization": percent, "averageValue": milli_quantity(raw)}
            else:
                raise MetricsError("invalid resource metric source: neither an average utilization target "
                                   "nor an average value (usage) target was set")
        except MetricsError as e:
            raise fail(str(e)) from e
        if container:
            st = {"type": "ContainerResource", "containerResource": {
                "name": resource, "container": container, "current": current_status}}
        else:
            st = {"type": "Resource", "resource": {"name": resource, "current": current_status}}
        return replicas, name, st

    # ------------------------------------------------------------------ normalization

    def _normalize_legacy(self, key: str, status: Obj, current: int, proposal: int, min_replicas: int,
                          max_replicas: int, now: float) -> int:
        """Without spec.behavior: upstream's fixed scale-down stabilisation and max(2x, 4) step up."""
        recs = self.recommendations.setdefault(key, [])
        highest = proposal
        old: int | None = None
        for i, r in enumerate(recs):
            if r.at < now - self.downscale_stabilization:
                old = i
            elif r.replicas > highest:
                highest = r.replicas
        self._record(recs, old, proposal, now)
        if highest != proposal:
            set_condition(status, "AbleToScale", "True", "ScaleDownStabilized",
                          "recent recommendations were higher than current one, applying the highest "
                          "recent recommendation", now)
        else:
            set_condition(status, "AbleToScale", "True", "ReadyForNewScale",
                          "recommended size matches current size", now)

        up_limit = max(2 * current, 4)
        if max_replicas > up_limit:
            top, (reason, msg) = up_limit, SCALE_UP_LIMIT
        else:
            top, (reason, msg) = max_replicas, TOO_MANY
        if highest < min_replicas:
            desired, (reason, msg) = min_replicas, TOO_FEW
        elif highest > top:
            desired = top
        else:
            desired, (reason, msg) = highest, WITHIN_RANGE
        set_condition(status, "ScalingLimited", "False" if desired == highest else "True", reason, msg, now)
        return desired

    @staticmethod
    def _record(recs: list[_Recommendation], old: int | None, proposal: int, now: float) -> None:
        # Reuse an expired slot so the history stays as long as the window needs.
        if old is not None:
            recs[old] = _Recommendation(proposal, now)
        else:
            recs.append(_Recommendation(proposal, now))

    def _normalize_with_behavior(self, key: str, status: Obj, behavior: Obj, current: int, proposal: int,
                                 min_replicas: int, max_replicas: int, now: float) -> int:
        rules = effective_behavior(behavior, self.downscale_stabilization)
        up, down = rules["scaleUp"], rules["scaleDown"]
        up_cutoff = now - float(up["stabilizationWindowSeconds"])
        down_cutoff = now - float(down["stabilizationWindowSeconds"])

        # Stabilise: within its window a scale-up follows the lowest recent
        # recommendation and a scale-down the highest, so flapping load does not flap replicas.
        recs = self.recommendations.setdefault(key, [])
        up_rec = down_rec = proposal
        old: int | None = None
        for i, r in enumerate(recs):
            if r.at > up_cutoff:
                up_rec = min(up_rec, r.replicas)
            if r.at > down_cutoff:
                down_rec = max(down_rec, r.replicas)
            if r.at < up_cutoff and r.at < down_cutoff:
                old = i
        stabilized = min(max(current, up_rec), down_rec)
        self._record(recs, old, proposal, now)
        if stabilized != proposal:
            if proposal >= current:
                set_condition(status, "AbleToScale", "True", "ScaleUpStabilized",
                              "recent recommendations were lower than current one, applying the lowest "
                              "recent recommendation", now)
            else:
                set_condition(status, "AbleToScale", "True", "ScaleDownStabilized",
                              "recent recommendations were higher than current one, applying the highest "
                              "recent recommendation", now)
        else:
            set_condition(status, "AbleToScale", "True", "ReadyForNewScale",
                          "recommended size matches current size", now)

        ups = self.scale_up_events.get(key, [])
        downs = self.scale_down_events.get(key, [])
        desired, (reason, msg) = stabilized, WITHIN_RANGE
        if stabilized > current:
            # Never below current: the limit only stops growth until old events age out.
            limit = max(scale_up_limit(current, ups, downs, up, now), current)
            if max_replicas > limit:
                top, (r, m) = limit, SCALE_UP_LIMIT
            else:
                top, (r, m) = max_replicas, TOO_MANY
            if stabilized > top:
                desired, reason, msg = top, r, m
        elif stabilized < current:
            limit = min(scale_down_limit(current, ups, downs, down, now), current)
            if min_replicas < limit:
                bottom, (r, m) = limit, SCALE_DOWN_LIMIT
            else:
                bottom, (r, m) = min_replicas, TOO_FEW
            if stabilized < bottom:
                desired, reason, msg = bottom, r, m
        limited = "False" if desired == stabilized else "True"
        set_condition(status, "ScalingLimited", limited, reason, msg, now)
        return desired

    def _store_scale_event(self, key: str, behavior: Obj | None, before: int, after: int, now: float) -> None:
        """Remember a rescale for the rate limits; only HPAs with spec.behavior keep this history."""
        if behavior is None:
            return
        rules = effective_behavior(behavior, self.downscale_stabilization)
        if after > before:
            events = self.scale_up_events.setdefault(key, [])
            direction, change = "scaleUp", after - before
        else:
            events = self.scale_down_events.setdefault(key, [])
            direction, change = "scaleDown", before - after
        longest = max((p.get("periodSeconds", 15) for p in rules[direction].get("policies") or []), default=0)
        for e in events:
            if e.at < now - longest:
                e.outdated = True
        for i, e in enumerate(events):
            if e.outdated:
                events[i] = _ScaleEvent(change, now)
                return
        events.append(_ScaleEvent(change, now))
