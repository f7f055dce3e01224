"""The HorizontalPodAutoscaler controller against a real in-process API server.

No kubelet, no metrics-server and no workers: the tests create a Deployment
(for its scale subresource) and its pods by hand with Running/Ready status and
resource requests, inject fake metrics and a fake clock, and call reconcile
directly once the controller's caches have caught up, so every round is
deterministic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.client import Client
from kybernetes.controllers.base import Requeue
from kybernetes.controllers.hpa import (
    HorizontalPodAutoscalerController,
    MetricsClient,
    MetricsError,
    ReplicaCalculator,
    effective_behavior,
    milli_quantity,
    parse_pod_metrics_list,
    scale_down_limit,
    scale_up_limit,
)
from kybernetes.controllers.job import rfc3339
from tests.apiserver.conftest import eventually, start_api, stop_api

Obj = dict[str, Any]
NS = "default"
T0 = 1_750_000_000.0


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class FakeMetrics:
    """Per pod usage of container "c"; pods absent from the dict have no metrics."""

    def __init__(self) -> None:
        self.cpu: dict[str, int] = {}
        self.memory: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.error: str | None = None

    async def pod_metrics(self, namespace: str, selector: str) -> dict[str, dict[str, dict[str, int]]]:
        self.calls.append((namespace, selector))
        if self.error:
            raise MetricsError(self.error)
        out: dict[str, dict[str, dict[str, int]]] = {}
        for name in set(self.cpu) | set(self.memory):
            out[name] = {"c": {"cpu_milli": self.cpu.get(name, 0), "memory_bytes": self.memory.get(name, 0)}}
        return out

    def set_cpu(self, **usage: int) -> None:
        self.cpu = {k.replace("_", "-"): v for k, v in usage.items()}


def hpa(name: str = "web", *, min_replicas: int | None = 1, max_replicas: int = 10,
        metrics: list[Obj] | None = None, behavior: Obj | None = None, target: str = "web") -> Obj:
    spec: Obj = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
                 "maxReplicas": max_replicas,
                 "metrics": metrics if metrics is not None else [cpu_utilization(50)]}
    if min_replicas is not None:
        spec["minReplicas"] = min_replicas
    if behavior is not None:
        spec["behavior"] = behavior
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
            "spec": spec}


def cpu_utilization(percent: int) -> Obj:
    return {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                       "averageUtilization": percent}}}


class Cluster:
    api: Any = None

    def __init__(self, client: Client, ctl: HorizontalPodAutoscalerController, metrics: FakeMetrics,
                 clock: Clock):
        self.client = client
        self.ctl = ctl
        self.metrics = metrics
        self.clock = clock
        self.pods = client.resource("v1", "pods")
        self.deployments = client.resource("apps/v1", "deployments")
        self.hpas = client.resource("autoscaling/v2", "horizontalpodautoscalers")

    async def deployment(self, name: str = "web", replicas: int = 2) -> Obj:
        return await self.deployments.create({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}, NS)

    async def pod(self, name: str, *, app: str = "web", ready: bool = True, phase: str = "Running",
                  started_ago: float = 1000.0, ready_since: float = 900.0,
                  requests: Obj | None = None) -> Obj:
        p = await self.pods.create({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "nginx", "resources": {
                "requests": requests if requests is not None else {"cpu": "100m", "memory": "100Mi"}}}]}}, NS)
        status: Obj = {"phase": phase}
        if phase != "Pending":
            status["startTime"] = rfc3339(self.clock.t - started_ago)
            status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False",
                                     "lastTransitionTime": rfc3339(self.clock.t - ready_since)}]
        return await self.pods.patch(p["metadata"]["name"], {"status": status}, namespace=NS, subresource="status")

    async def pods_named(self, *names: str, **kwargs: Any) -> None:
        for n in names:
            await self.pod(n, **kwargs)

    async def caught_up(self) -> None:
        """Wait until the controller's caches hold exactly what the API server has."""
        async def same() -> bool:
            for inf, rc in ((self.ctl.pods, self.pods), (self.ctl.hpas, self.hpas)):
                items = (await rc.list(NS))["items"]
                want = {i["metadata"]["name"]: i["metadata"]["resourceVersion"] for i in items}
                have = {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in inf.list_by_namespace(NS)}
                if want != have:
                    return False
            return True
        await eventually(same, what="controller caches in sync")

    async def reconcile(self, name: str = "web") -> None:
        await self.caught_up()
        with pytest.raises(Requeue) as r:
            await self.ctl.reconcile(f"{NS}/{name}")
        assert r.value.after == self.ctl.sync_period

    async def replicas(self, name: str = "web") -> int:
        return (await self.deployments.get(name, NS))["spec"]["replicas"]

    async def set_replicas(self, n: int, name: str = "web") -> None:
        await self.deployments.patch(name, {"spec": {"replicas": n}}, namespace=NS)

    async def status(self, name: str = "web") -> Obj:
        return (await self.hpas.get(name, NS)).get("status") or {}

    async def condition(self, typ: str, name: str = "web") -> Obj:
        for c in (await self.status(name)).get("conditions") or []:
            if c["type"] == typ:
                return c
        raise AssertionError(f"no {typ} condition")

    async def events(self, reason: str | None = None) -> list[Obj]:
        await self.ctl.recorder.flush()  # events are written in the background
        items = (await self.client.resource("v1", "events").list(NS))["items"]
        return [e for e in items if e["involvedObject"].get("kind") == "HorizontalPodAutoscaler"
                and (reason is None or e["reason"] == reason)]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    clock = Clock()
    metrics = FakeMetrics()
    ctl = HorizontalPodAutoscalerController(Client.in_process(api.handle), metrics=metrics, clock=clock)
    # Only the informers run: the tests call reconcile themselves.
    for inf in ctl.informers:
        await inf.start()
    for inf in ctl.informers:
        await inf.wait_for_sync(5)
    try:
        cl = Cluster(client, ctl, metrics, clock)
        cl.api = api
        yield cl
    finally:
        await ctl.stop()
        await ctl.client.close()
        await client.close()
        await stop_api(api)


async def two_pods(c: Cluster, replicas: int = 2, **hpa_kwargs: Any) -> None:
    await c.deployment(replicas=replicas)
    await c.pods_named(*(f"web-{i}" for i in range(replicas)))
    await c.hpas.create(hpa(**hpa_kwargs), NS)


# --------------------------------------------------------------------------- scaling up


async def test_scale_up_on_high_cpu_with_status_conditions_and_event(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c)
    c.metrics.set_cpu(web_0=90, web_1=90)  # 90% of a 100m request against a 50% target
    await c.reconcile()

    assert await c.replicas() == 4  # ceil(2 * 90/50)
    assert c.metrics.calls == [(NS, "app=web")]
    st = await c.status()
    assert st["currentReplicas"] == 2
    assert st["desiredReplicas"] == 4
    assert st["observedGeneration"] == 1
    assert st["lastScaleTime"] == rfc3339(T0)
    assert st["currentMetrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "current": {"averageUtilization": 90, "averageValue": "90m"}}}]
    conds = {x["type"]: x for x in st["conditions"]}
    assert [x["type"] for x in st["conditions"]] == ["AbleToScale", "ScalingActive", "ScalingLimited"]
    assert (conds["AbleToScale"]["status"], conds["AbleToScale"]["reason"]) == ("True", "SucceededRescale")
    assert conds["AbleToScale"]["message"] == "the HPA controller was able to update the target scale to 4"
    assert (conds["ScalingActive"]["status"], conds["ScalingActive"]["reason"]) == ("True", "ValidMetricFound")
    assert conds["ScalingActive"]["message"] == ("the HPA was able to successfully calculate a replica count "
                                                 "from cpu resource utilization (percentage of request)")
    assert (conds["ScalingLimited"]["status"], conds["ScalingLimited"]["reason"]) == ("False",
                                                                                        "DesiredWithinRange")
    assert all(x["lastTransitionTime"] == rfc3339(T0) for x in st["conditions"])
    [ev] = await c.events("SuccessfulRescale")
    assert ev["type"] == "Normal"
    assert ev["message"] == "New size: 4; reason: cpu resource utilization (percentage of request) above target"
    assert ev["source"]["component"] == "horizontal-pod-autoscaler"

    # The autoscaling/v1 view (what `kubectl get hpa` of old clients reads) carries the utilisation.
    v1 = await c.client.resource("autoscaling/v1", "horizontalpodautoscalers").get("web", NS)
    assert v1["status"]["currentCPUUtilizationPercentage"] == 90
    assert v1["spec"]["targetCPUUtilizationPercentage"] == 50


async def test_scale_up_bounded_by_max_replicas(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c, max_replicas=3)
    c.metrics.set_cpu(web_0=200, web_1=200)
    await c.reconcile()
    assert await c.replicas() == 3
    lim = await c.condition("ScalingLimited")
    assert (lim["status"], lim["reason"]) == ("True", "TooManyReplicas")
    assert lim["message"] == "the desired replica count is more than the maximum replica count"
    assert (await c.status())["desiredReplicas"] == 3


async def test_scale_up_without_behavior_is_limited_to_double_or_four(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c, max_replicas=50)
    c.metrics.set_cpu(web_0=500, web_1=500)  # wants 20
    await c.reconcile()
    assert await c.replicas() == 4  # max(2 * 2, 4)
    lim = await c.condition("ScalingLimited")
    assert (lim["status"], lim["reason"]) == ("True", "ScaleUpLimit")


async def test_scale_up_policy_limits_rate_per_period(cluster: Cluster) -> None:
    c = cluster
    behavior = {"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}}
    await two_pods(c, behavior=behavior)
    c.metrics.set_cpu(web_0=150, web_1=150)  # wants 6
    await c.reconcile()
    assert await c.replicas() == 3
    lim = await c.condition("ScalingLimited")
    assert (lim["status"], lim["reason"]) == ("True", "ScaleUpLimit")
    assert lim["message"] == "the desired replica count is increasing faster than the maximum scale rate"

    # Within the same 60 s period the one pod allowed has been used up.
    await c.pod("web-2")
    c.metrics.set_cpu(web_0=150, web_1=150, web_2=150)
    c.clock.t += 15
    await c.reconcile()
    assert await c.replicas() == 3
    assert (await c.condition("AbleToScale"))["reason"] == "ReadyForNewScale"

    c.clock.t += 50  # the first scale-up is now older than the period
    await c.reconcile()
    assert await c.replicas() == 4
    assert len(await c.events("SuccessfulRescale")) == 2


async def test_select_policy_max_and_min_on_scale_up(cluster: Cluster) -> None:
    c = cluster
    await c.deployment(replicas=4)
    await c.pods_named("web-0", "web-1", "web-2", "web-3")
    c.metrics.set_cpu(web_0=300, web_1=300, web_2=300, web_3=300)  # wants 24
    policies = [{"type": "Pods", "value": 2, "periodSeconds": 15},
                {"type": "Percent", "value": 100, "periodSeconds": 15}]
    await c.hpas.create(hpa("max", max_replicas=30, behavior={"scaleUp": {"policies": policies}}), NS)
    await c.hpas.create(hpa("min", max_replicas=30,
                            behavior={"scaleUp": {"policies": policies, "selectPolicy": "Min"}}), NS)
    await c.hpas.create(hpa("off", max_replicas=30,
                            behavior={"scaleUp": {"policies": policies, "selectPolicy": "Disabled"}}), NS)

    await c.reconcile("max")
    assert await c.replicas() == 8  # the larger of +2 and +100%
    await c.set_replicas(4)
    await c.reconcile("min")
    assert await c.replicas() == 6  # the smaller
    await c.set_replicas(4)
    await c.reconcile("off")
    assert await c.replicas() == 4
    lim = await c.condition("ScalingLimited", "off")
    assert (lim["status"], lim["reason"]) == ("True", "ScaleUpLimit")


# --------------------------------------------------------------------------- scaling down


async def test_scale_down_waits_for_the_stabilization_window(cluster: Cluster) -> None:
    c = cluster
    await c.deployment(replicas=4)
    await c.pods_named("web-0", "web-1", "web-2", "web-3")
    await c.hpas.create(hpa(), NS)
    c.metrics.set_cpu(web_0=10, web_1=10, web_2=10, web_3=10)  # wants 1
    await c.reconcile()
    assert await c.replicas() == 4
    able = await c.condition("AbleToScale")
    assert (able["status"], able["reason"]) == ("True", "ScaleDownStabilized")
    assert able["message"] == ("recent recommendations were higher than current one, applying the highest "
                               "recent recommendation")
    st = await c.status()
    assert st["desiredReplicas"] == 4
    assert "lastScaleTime" not in st

    c.clock.t += 290
    await c.reconcile()
    assert await c.replicas() == 4

    c.clock.t += 11  # the recommendation of 4 made at T0 has left the 300 s window
    await c.reconcile()
    assert await c.replicas() == 1
    [ev] = await c.events("SuccessfulRescale")
    assert ev["message"] == "New size: 1; reason: All metrics below target"
    assert (await c.status())["lastScaleTime"] == rfc3339(T0 + 301)


async def test_scale_down_policy_with_behavior_and_min_replicas(cluster: Cluster) -> None:
    c = cluster
    await c.deployment(replicas=8)
    await c.pods_named(*(f"web-{i}" for i in range(8)))
    c.metrics.set_cpu(**{f"web_{i}": 5 for i in range(8)})  # wants 1
    down = {"stabilizationWindowSeconds": 0,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60},
                         {"type": "Percent", "value": 50, "periodSeconds": 60}]}
    await c.hpas.create(hpa("max", min_replicas=2, behavior={"scaleDown": down}), NS)
    await c.hpas.create(hpa("min", min_replicas=2, behavior={"scaleDown": {**down, "selectPolicy": "Min"}}), NS)
    await c.reconcile("max")
    assert await c.replicas() == 4  # the bigger change: -50%
    lim = await c.condition("ScalingLimited", "max")
    assert (lim["status"], lim["reason"]) == ("True", "ScaleDownLimit")
    await c.set_replicas(8)
    await c.reconcile("min")
    assert await c.replicas() == 7  # the smaller change: -1 pod

    # Without a rate limit the floor is minReplicas.
    await c.hpas.create(hpa("floor", min_replicas=2, behavior={"scaleDown": {"stabilizationWindowSeconds": 0}}),
                        NS)
    await c.set_replicas(8)
    await c.reconcile("floor")
    assert await c.replicas() == 2
    lim = await c.condition("ScalingLimited", "floor")
    assert (lim["status"], lim["reason"]) == ("True", "TooFewReplicas")


async def test_within_tolerance_nothing_changes(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c)
    c.metrics.set_cpu(web_0=54, web_1=55)  # 54% of a 50% target: ratio 1.08
    await c.reconcile()
    assert await c.replicas() == 2
    st = await c.status()
    assert st["desiredReplicas"] == 2
    assert st["currentMetrics"][0]["resource"]["current"]["averageUtilization"] == 54
    assert (await c.condition("AbleToScale"))["reason"] == "ReadyForNewScale"
    assert await c.events("SuccessfulRescale") == []


# --------------------------------------------------------------------------- conservative pod handling


async def test_missing_metrics_count_as_full_request_on_scale_down(cluster: Cluster) -> None:
    c = cluster
    await c.deployment(replicas=6)
    await c.pods_named(*(f"web-{i}" for i in range(6)))
    await c.hpas.create(hpa(behavior={"scaleDown": {"stabilizationWindowSeconds": 0}}), NS)
    c.metrics.set_cpu(web_0=10, web_1=10, web_2=10, web_3=10)  # web-4 and web-5 report nothing
    await c.reconcile()
    # Naively ceil(4 * 10/50) = 1; with the two silent pods at 100%: 240m/600m = 40% -> ceil(6 * 0.8) = 5.
    assert await c.replicas() == 5
    # currentMetrics reports what was measured, not the assumption.
    assert (await c.status())["currentMetrics"][0]["resource"]["current"]["averageUtilization"] == 10


async def test_missing_metrics_count_as_idle_on_scale_up(cluster: Cluster) -> None:
    c = cluster
    await c.deployment(replicas=4)
    await c.pods_named("web-0", "web-1", "web-2", "web-3")
    await c.hpas.create(hpa(), NS)
    c.metrics.set_cpu(web_0=150)  # 150% of request, three pods silent
    await c.reconcile()
    # The silent pods at 0% turn the ratio below 1: no change of direction, nothing happens.
    assert await c.replicas() == 4


async def test_unready_pods_are_ignored_on_scale_up(cluster: Cluster) -> None:
    c = cluster
    await c.deployment(replicas=4)
    await c.pods_named("web-0", "web-1")
    # Started 30 s ago, within the cpu initialisation period, and not ready yet.
    await c.pods_named("web-2", "web-3", ready=False, started_ago=30, ready_since=30)
    await c.pod("web-4", phase="Pending")
    await c.hpas.create(hpa(max_replicas=20), NS)
    c.metrics.set_cpu(web_0=100, web_1=100, web_2=400, web_3=400)
    await c.reconcile()
    # Ready pods at 100% of a 50% target want 8, but with the unready ones at 0% usage is 200m of 500m
    # requested, below target: the direction would flip, so nothing happens.
    assert await c.replicas() == 4
    st = await c.status()
    assert st["currentMetrics"][0]["resource"]["current"]["averageUtilization"] == 100

    # Once they are ready their usage counts.
    for name in ("web-2", "web-3"):
        await c.pods.patch(name, {"status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": rfc3339(c.clock.t - 60)}]}},
            namespace=NS, subresource="status")
    await c.reconcile()
    assert await c.replicas() == 8  # (100+100+400+400)/400 = 250% -> ceil(4 * 5) = 20, capped at 2x current


async def test_deleted_and_failed_pods_are_ignored(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c)
    await c.pod("web-failed", phase="Failed")
    c.metrics.set_cpu(web_0=20, web_1=20, web_failed=900)
    await c.hpas.patch("web", {"spec": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}}}},
                       namespace=NS)
    await c.reconcile()
    assert await c.replicas() == 1  # ceil(2 * 20/50)


# --------------------------------------------------------------------------- other metric shapes


async def test_average_value_memory_target(cluster: Cluster) -> None:
    c = cluster
    metric = {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue",
                                                                            "averageValue": "100Mi"}}}
    await two_pods(c, metrics=[metric])
    c.metrics.memory = {"web-0": 200 * 2**20, "web-1": 200 * 2**20}
    await c.reconcile()
    assert await c.replicas() == 4
    st = await c.status()
    assert st["currentMetrics"] == [{"type": "Resource", "resource": {
        "name": "memory", "current": {"averageValue": "209715200"}}}]
    [ev] = await c.events("SuccessfulRescale")
    assert ev["message"] == "New size: 4; reason: memory resource above target"


async def test_several_metrics_take_the_largest_proposal(cluster: Cluster) -> None:
    c = cluster
    mem = {"type": "Resource", "resource": {"name": "memory", "target": {"type": "Utilization",
                                                                         "averageUtilization": 50}}}
    container = {"type": "ContainerResource", "containerResource": {
        "name": "cpu", "container": "c", "target": {"type": "Utilization", "averageUtilization": 60}}}
    await two_pods(c, metrics=[cpu_utilization(50), mem, container])
    c.metrics.set_cpu(web_0=60, web_1=60)  # cpu wants 3, the container metric stays
    c.metrics.memory = {"web-0": 150 * 2**20, "web-1": 150 * 2**20}  # 150% of 100Mi -> wants 6, limited to 4
    await c.reconcile()
    assert await c.replicas() == 4
    st = await c.status()
    assert [m["type"] for m in st["currentMetrics"]] == ["Resource", "Resource", "ContainerResource"]
    assert st["currentMetrics"][2] == {"type": "ContainerResource", "containerResource": {
        "name": "cpu", "container": "c", "current": {"averageUtilization": 60, "averageValue": "60m"}}}
    [ev] = await c.events("SuccessfulRescale")
    assert ev["message"] == "New size: 4; reason: memory resource utilization (percentage of request) above target"


async def test_container_resource_metric(cluster: Cluster) -> None:
    c = cluster
    container = {"type": "ContainerResource", "containerResource": {
        "name": "cpu", "container": "c", "target": {"type": "Utilization", "averageUtilization": 50}}}
    await two_pods(c, metrics=[container])
    c.metrics.set_cpu(web_0=100, web_1=100)
    await c.reconcile()
    assert await c.replicas() == 4
    [ev] = await c.events("SuccessfulRescale")
    assert ev["message"] == ("New size: 4; reason: cpu container resource utilization (percentage of request) "
                             "above target")


# --------------------------------------------------------------------------- bounds, disabling, failures


async def test_min_and_max_bounds_apply_without_metrics(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c, min_replicas=3)
    await c.reconcile()
    assert await c.replicas() == 3
    [ev] = await c.events("SuccessfulRescale")
    assert ev["message"] == "New size: 3; reason: Current number of replicas below Spec.MinReplicas"
    assert c.metrics.calls == []
    await c.set_replicas(12)
    await c.reconcile()
    assert await c.replicas() == 10
    assert "currentMetrics" not in await c.status()


async def test_target_at_zero_disables_scaling(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c, replicas=0)
    c.metrics.set_cpu(web_0=500)
    await c.reconcile()
    assert await c.replicas() == 0
    act = await c.condition("ScalingActive")
    assert (act["status"], act["reason"]) == ("False", "ScalingDisabled")
    assert act["message"] == "scaling is disabled since the replica count of the target is zero"
    st = await c.status()
    assert (st["currentReplicas"], st["desiredReplicas"]) == (0, 0)
    assert await c.events("SuccessfulRescale") == []


async def test_failed_metrics_and_missing_target(cluster: Cluster) -> None:
    c = cluster
    await c.deployment(replicas=2)
    await c.pods_named("web-0", "web-1", requests={"memory": "100Mi"})  # no cpu request
    await c.hpas.create(hpa(), NS)
    c.metrics.set_cpu(web_0=50, web_1=50)
    await c.reconcile()
    act = await c.condition("ScalingActive")
    assert (act["status"], act["reason"]) == ("False", "FailedGetResourceMetric")
    assert act["message"] == ("the HPA was unable to compute the replica count: failed to get cpu resource "
                              "metric value: failed to get cpu utilization: missing request for cpu in "
                              "container c of Pod web-0")
    st = await c.status()
    assert st["currentReplicas"] == 2
    assert st["currentMetrics"] == [{"type": ""}]
    assert (await c.condition("AbleToScale"))["reason"] == "SucceededGetScale"
    assert [e["type"] for e in await c.events("FailedGetResourceMetric")] == ["Warning"]
    assert len(await c.events("FailedComputeMetricsReplicas")) == 1
    # kubectl's table shows the metric as unknown.
    table = await c.client.request("GET", f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/web",
                                   headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    assert "cpu: <unknown>/50%" in table["rows"][0]["cells"]

    # The metrics API being down is reported the same way.
    c.metrics.error = "the server is currently unable to handle the request"
    await c.reconcile()
    act = await c.condition("ScalingActive")
    assert act["reason"] == "FailedGetResourceMetric"
    assert "unable to handle the request" in act["message"]

    await c.hpas.create(hpa("lost", target="nope"), NS)
    await c.reconcile("lost")
    able = await c.condition("AbleToScale", "lost")
    assert (able["status"], able["reason"]) == ("False", "FailedGetScale")
    assert able["message"].startswith("the HPA controller was unable to get the target's current scale: ")
    assert len(await c.events("FailedGetScale")) == 1


async def test_condition_transition_time_moves_only_on_flips(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c)
    c.metrics.set_cpu(web_0=50, web_1=50)
    await c.reconcile()
    c.clock.t += 15
    c.metrics.error = "down"
    await c.reconcile()
    act = await c.condition("ScalingActive")
    assert (act["status"], act["lastTransitionTime"]) == ("False", rfc3339(T0 + 15))
    assert (await c.condition("AbleToScale"))["lastTransitionTime"] == rfc3339(T0)
    c.clock.t += 15
    c.metrics.error = None
    await c.reconcile()
    assert (await c.condition("ScalingActive"))["lastTransitionTime"] == rfc3339(T0 + 30)


async def test_hpa_created_through_autoscaling_v1_like_kubectl_autoscale(cluster: Cluster) -> None:
    """kubectl 1.32 `autoscale deployment/web --min=2 --max=10 --cpu-percent=50` POSTs this autoscaling/v1 object."""
    c = cluster
    await c.deployment(replicas=2)
    await c.pods_named("web-0", "web-1")
    await c.client.resource("autoscaling/v1", "horizontalpodautoscalers").create({
        "apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "web"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 50}}, NS)
    c.metrics.set_cpu(web_0=80, web_1=80)
    await c.reconcile()
    assert await c.replicas() == 4
    v1 = await c.client.resource("autoscaling/v1", "horizontalpodautoscalers").get("web", NS)
    assert v1["status"]["currentCPUUtilizationPercentage"] == 80
    assert (v1["status"]["currentReplicas"], v1["status"]["desiredReplicas"]) == (2, 4)


async def test_empty_metrics_default_to_80_percent_cpu(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c, metrics=[])
    c.metrics.set_cpu(web_0=160, web_1=160)
    await c.reconcile()
    assert await c.replicas() == 4


async def test_deleted_hpa_is_forgotten(cluster: Cluster) -> None:
    c = cluster
    await two_pods(c)
    c.metrics.set_cpu(web_0=50, web_1=50)
    await c.reconcile()
    assert "default/web" in c.ctl.recommendations
    await c.hpas.delete("web", NS)
    await eventually(lambda: "default/web" not in c.ctl.recommendations, what="history forgotten")
    await c.caught_up()
    await c.ctl.reconcile("default/web")  # gone: no requeue


async def test_runs_under_the_worker_loop(cluster: Cluster) -> None:
    """Started as the manager starts it: a new HPA is acted on at once, then requeued per sync period."""
    c = cluster
    metrics = FakeMetrics()
    metrics.set_cpu(web_0=100, web_1=100)
    ctl = HorizontalPodAutoscalerController(Client.in_process(c.api.handle), metrics=metrics, clock=c.clock)
    await ctl.start()
    try:
        await c.deployment()
        await c.pods_named("web-0", "web-1")
        await eventually(lambda: len(ctl.pods.list_by_namespace(NS)) == 2, what="pods seen")
        await c.hpas.create(hpa(), NS)
        await eventually(lambda: _replicas_are(c, 4), what="scaled to 4")
        # Our own status write did not start another round before the sync period.
        assert len(metrics.calls) == 1
    finally:
        await ctl.stop()
        await ctl.client.close()


async def _replicas_are(c: Cluster, n: int) -> bool:
    return await c.replicas() == n and (await c.status()).get("desiredReplicas") == n


# --------------------------------------------------------------------------- pure logic


def test_metrics_client_parses_metrics_server_answers() -> None:
    doc = {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "items": [
        {"metadata": {"name": "p", "namespace": NS, "labels": {"app": "web"}}, "timestamp": "2025-01-01T00:00:00Z",
         "window": "10s", "containers": [
             {"name": "a", "usage": {"cpu": "12345678n", "memory": "12345Ki"}},
             {"name": "b", "usage": {"cpu": "250m", "memory": "1Mi"}}]}]}
    assert parse_pod_metrics_list(doc) == {"p": {
        "a": {"cpu_milli": 13, "memory_bytes": 12345 * 1024},
        "b": {"cpu_milli": 250, "memory_bytes": 2**20}}}


async def test_metrics_client_asks_the_metrics_api() -> None:
    seen: list[tuple[str, str, Any]] = []

    class Stub:
        async def request(self, method: str, path: str, query: Any = None) -> Obj:
            seen.append((method, path, query))
            return {"items": []}

    assert await MetricsClient(Stub()).pod_metrics(NS, "app=web") == {}  # type: ignore[arg-type]
    assert seen == [("GET", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods", {"labelSelector": "app=web"})]


def test_rate_limits_and_defaults() -> None:
    b = effective_behavior({"scaleUp": {"stabilizationWindowSeconds": 60}})
    assert b["scaleUp"]["stabilizationWindowSeconds"] == 60
    assert b["scaleUp"]["selectPolicy"] == "Max"
    assert b["scaleUp"]["policies"] == [{"type": "Pods", "value": 4, "periodSeconds": 15},
                                        {"type": "Percent", "value": 100, "periodSeconds": 15}]
    assert b["scaleDown"] == {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
                              "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}
    assert scale_up_limit(1, [], [], b["scaleUp"], T0) == 5  # max(1 + 4, 2)
    assert scale_up_limit(10, [], [], b["scaleUp"], T0) == 20
    pct = {"selectPolicy": "Max", "policies": [{"type": "Percent", "value": 10, "periodSeconds": 15}]}
    assert scale_up_limit(3, [], [], pct, T0) == 4  # rounded up so it can grow at all
    assert scale_down_limit(3, [], [], pct, T0) == 2  # truncated
    assert scale_down_limit(10, [], [], b["scaleDown"], T0) == 0
    assert milli_quantity(90) == "90m"
    assert milli_quantity(1500) == "1500m"
    assert milli_quantity(2000) == "2"


def test_replica_calculator_direction_never_flips() -> None:
    calc = ReplicaCalculator()
    pods = [{"metadata": {"name": n}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
             "status": {"phase": "Running", "startTime": rfc3339(T0 - 1000),
                        "conditions": [{"type": "Ready", "status": "True",
                                        "lastTransitionTime": rfc3339(T0 - 900)}]}} for n in "abcd"]
    # Two pods at 20% (target 50) and two silent: assumed at 100% the ratio flips above 1, so keep 4.
    assert calc.utilization_replicas(4, 50, "cpu", pods, {"a": 200, "b": 200}, T0)[0] == 4
    with pytest.raises(MetricsError, match="did not receive metrics"):
        calc.utilization_replicas(4, 50, "cpu", pods, {}, T0)
