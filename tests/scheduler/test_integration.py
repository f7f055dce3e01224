"""The scheduler against a real in-process API server: binding, events, conditions, preemption."""

from __future__ import annotations

from typing import Any

from kybernetes.client import Client
from kybernetes.scheduler import Scheduler, SchedulerConfig

from .conftest import eventually
from .helpers import make_node, make_pod


async def node_of(pods: Any, name: str) -> str | None:
    return ((await pods.get(name, "default")).get("spec") or {}).get("nodeName")


def api_pod(name: str, cpu: str | None = None, **kw: Any) -> dict:
    p = make_pod(name, cpu, **kw)
    del p["metadata"]["uid"]
    return p


async def test_binds_pods_to_the_right_nodes(client: Client):
    nodes = client.resource("v1", "nodes", namespaced=False)
    pods = client.resource("v1", "pods")
    events = client.resource("v1", "events")
    await nodes.create(make_node("ssd", cpu="2", labels={"disk": "ssd"}))
    await nodes.create(make_node("plain", cpu="2"))
    await nodes.create(make_node("gpu", cpu="8", taints=[{"key": "dedicated", "value": "gpu",
                                                           "effect": "NoSchedule"}]))
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    async with Scheduler(client, SchedulerConfig()) as sched:
        await pods.create(api_pod("on-ssd", "100m", nodeSelector={"disk": "ssd"}))
        await pods.create(api_pod("big-tolerating", "4", tolerations=[
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]))
        await pods.create(api_pod("web-1", "100m", labels={"app": "web"}, affinity=anti))
        await pods.create(api_pod("web-2", "100m", labels={"app": "web"}, affinity=anti))
        assert await eventually(lambda: node_of(pods, "on-ssd"), what="on-ssd bound") == "ssd"
        assert await eventually(lambda: node_of(pods, "big-tolerating")) == "gpu"
        web1 = await eventually(lambda: node_of(pods, "web-1"))
        web2 = await eventually(lambda: node_of(pods, "web-2"))
        assert web1 != web2
        bound = await pods.get("on-ssd", "default")
        cond = next(c for c in bound["status"]["conditions"] if c["type"] == "PodScheduled")
        assert cond["status"] == "True"

        # Fits nowhere: FailedScheduling with the upstream summary, PodScheduled=False.
        await pods.create(api_pod("huge", "16"))

        async def failed_event() -> dict | None:
            items = (await events.list("default", field_selector="involvedObject.name=huge")).get("items")
            return next((e for e in items if e["reason"] == "FailedScheduling"), None)
        ev = await eventually(failed_event, what="FailedScheduling event")
        assert ev["type"] == "Warning" and ev["involvedObject"]["kind"] == "Pod"
        assert ev["message"] == (
            "0/3 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}, 2 Insufficient cpu. "
            "preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, "
            "2 No preemption victims found for incoming pod..")

        async def unschedulable_condition() -> dict | None:
            p = await pods.get("huge", "default")
            return next((c for c in (p.get("status") or {}).get("conditions") or []
                         if c["type"] == "PodScheduled" and c["status"] == "False"), None)
        cond = await eventually(unschedulable_condition, what="PodScheduled=False")
        assert cond["reason"] == "Unschedulable" and cond["message"] == ev["message"]

        # A node big enough appears: the pod leaves the unschedulable queue and is bound.
        await nodes.create(make_node("xl", cpu="32"))
        assert await eventually(lambda: node_of(pods, "huge"), what="huge bound") == "xl"
        assert sched.stats["scheduled"] == 5

        scheduled = await eventually(lambda: events.list("default", field_selector="reason=Scheduled"))
        assert any(e["message"] == "Successfully assigned default/on-ssd to ssd" for e in scheduled["items"])


async def test_resource_fit_fills_nodes_and_bin_packing(client: Client):
    nodes = client.resource("v1", "nodes", namespaced=False)
    pods = client.resource("v1", "pods")
    for name in ("a", "b", "c"):
        await nodes.create(make_node(name, cpu="1"))
    cfg = SchedulerConfig.from_kube_scheduler_configuration({
        "profiles": [{"schedulerName": "default-scheduler", "pluginConfig": [
            {"name": "NodeResourcesFit", "args": {"scoringStrategy": {"type": "MostAllocated"}}}]}]})
    assert cfg.scoring_strategy == "MostAllocated"
    async with Scheduler(client, cfg):
        for i in range(4):
            await pods.create(api_pod(f"p{i}", "250m"))
        placed = [await eventually(lambda i=i: node_of(pods, f"p{i}")) for i in range(4)]
    # Bin packing: all four quarter-cpu pods share one node.
    assert len(set(placed)) == 1


async def test_preemption_evicts_lower_priority_pod(client: Client):
    nodes = client.resource("v1", "nodes", namespaced=False)
    pods = client.resource("v1", "pods")
    pcs = client.resource("scheduling.k8s.io/v1", "priorityclasses", namespaced=False)
    await pcs.create({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                      "metadata": {"name": "urgent"}, "value": 1000})
    await nodes.create(make_node("only", cpu="1"))
    async with Scheduler(client, SchedulerConfig()):
        await pods.create(api_pod("low", "800m"))
        assert await eventually(lambda: node_of(pods, "low")) == "only"
        await pods.create(api_pod("high", "800m", priorityClassName="urgent"))

        async def victim_terminating() -> bool:
            p = await pods.get("low", "default")
            return bool(p["metadata"].get("deletionTimestamp"))
        await eventually(victim_terminating, what="victim gracefully deleted")
        await eventually(lambda: _nominated(pods), what="status.nominatedNodeName")
        high = await pods.get("high", "default")
        assert not high["spec"].get("nodeName")
        assert "preemption" not in next(c for c in high["status"]["conditions"]
                                        if c["type"] == "PodScheduled")["message"]
        # Play the kubelet: the victim's containers are gone, the pod object goes.
        await pods.delete("low", "default", grace_period_seconds=0)
        assert await eventually(lambda: node_of(pods, "high"), what="high bound") == "only"


async def _nominated(pods: Any) -> bool:
    p = await pods.get("high", "default")
    return (p.get("status") or {}).get("nominatedNodeName") == "only"
