"""The DaemonSet controller against a real in-process API server.

There is no scheduler or kubelet here: FakeKubelet binds daemon pods to the
node their affinity names (as the default scheduler would), marks them Running
and Ready, and finishes graceful deletions, so rollouts can be watched end to end.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.client import Client, Informer
from kybernetes.controllers.common import now_rfc3339
from kybernetes.controllers.daemonset import (
    DaemonSetController,
    node_should_run,
    scaled_value,
    target_node,
    toleration_tolerates,
)
from kybernetes.controllers.history import (
    CONTROLLER_REVISION_HASH_LABEL,
    hash_data,
    revision_name,
    revisions_to_prune,
    safe_encode,
)
from tests.apiserver.conftest import eventually, start_api, stop_api

Obj = dict[str, Any]
NS = "default"


class FakeKubelet:
    """Simulates the scheduler's binding and the kubelet's status and termination.

    `auto_ready` decides whether pods become Running+Ready on their own; `ready()`
    does it for one pod. `on_event`, when set, sees every pod event in order.
    """

    def __init__(self, client: Client, *, bind: bool = True, auto_ready: bool = True):
        self.client = client
        self.pods = client.resource("v1", "pods")
        self.bind = bind
        self.auto_ready = auto_ready
        self.informer = Informer(self.pods)
        self.informer.add_handler(on_add=self._on, on_update=lambda _o, n: self._on(n))

    async def start(self) -> None:
        await self.informer.start()
        await self.informer.wait_for_sync(5)

    async def stop(self) -> None:
        await self.informer.stop()

    async def _on(self, pod: Obj) -> None:
        m = pod["metadata"]
        spec = pod.get("spec") or {}
        try:
            if m.get("deletionTimestamp"):
                # The containers stopped: confirm the deletion, as a kubelet does.
                await self.pods.delete(m["name"], m["namespace"], grace_period_seconds=0,
                                       preconditions={"uid": m["uid"]})
                return
            if self.bind and not spec.get("nodeName"):
                node = target_node(pod)
                if node:
                    await self.pods.create_subresource(m["name"], "binding", {
                        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": m["name"]},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node}}, m["namespace"])
                return
            if self.auto_ready and (pod.get("status") or {}).get("phase") in (None, "Pending"):
                await self.ready(m["name"], m["namespace"])
        except StatusError as e:
            if e.code not in (404, 409):
                raise

    async def ready(self, name: str, namespace: str = NS) -> None:
        await set_pod_status(self.client, name, namespace, "Running", ready=True)


async def set_pod_status(client: Client, name: str, namespace: str, phase: str, ready: bool) -> None:
    cond = {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now_rfc3339()}
    await client.resource("v1", "pods").patch(name, {"status": {"phase": phase, "conditions": [cond]}},
                                              namespace=namespace, patch_type="strategic", subresource="status")


def node(name: str, labels: dict[str, str] | None = None, taints: list[Obj] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"taints": taints or []},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


def daemonset(name: str, *, image: str = "agent:1", strategy: Obj | None = None, **tspec: Any) -> Obj:
    spec: Obj = {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": image}], **tspec}}}
    if strategy is not None:
        spec["updateStrategy"] = strategy
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name}, "spec": spec}


class Cluster:
    def __init__(self, client: Client):
        self.client = client
        self.nodes = client.resource("v1", "nodes", False)
        self.pods = client.resource("v1", "pods")
        self.ds = client.resource("apps/v1", "daemonsets")
        self.revisions = client.resource("apps/v1", "controllerrevisions")

    async def add_nodes(self, *nodes: Obj) -> None:
        for n in nodes:
            await self.nodes.create(n)

    async def pods_of(self, app: str, *, live: bool = True) -> list[Obj]:
        items = (await self.pods.list(NS, label_selector=f"app={app}"))["items"]
        return [p for p in items if not (live and p["metadata"].get("deletionTimestamp"))]

    async def placement(self, app: str) -> dict[str, list[Obj]]:
        out: dict[str, list[Obj]] = {}
        for p in await self.pods_of(app):
            out.setdefault(target_node(p) or "", []).append(p)
        return out

    async def status(self, name: str) -> Obj:
        return (await self.ds.get(name, NS)).get("status") or {}

    async def wait_status(self, name: str, **want: Any) -> Obj:
        async def check() -> Obj | None:
            ds = await self.ds.get(name, NS)
            st = ds.get("status") or {}
            if st.get("observedGeneration") != ds["metadata"]["generation"]:
                return None
            return st if all(st.get(k, 0) == v for k, v in want.items()) else None
        return await eventually(check, what=f"{name} status {want}")

    async def revision_list(self, app: str) -> list[Obj]:
        items = (await self.revisions.list(NS, label_selector=f"app={app}"))["items"]
        return sorted(items, key=lambda r: r["revision"])


@pytest.fixture
async def env(tmp_path: Path):
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    ctrl = DaemonSetController(Client.in_process(api.handle))
    kubelet = FakeKubelet(client)
    await ctrl.start()
    await kubelet.start()
    try:
        yield Cluster(client), kubelet
    finally:
        await kubelet.stop()
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
        await stop_api(api)


# ---------------------------------------------------------------- pure logic


def test_tolerations_and_eligibility() -> None:
    taint = {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert toleration_tolerates({"key": "k", "operator": "Equal", "value": "v"}, taint)
    assert not toleration_tolerates({"key": "k", "value": "w"}, taint)
    assert toleration_tolerates({"operator": "Exists"}, taint)
    assert not toleration_tolerates({"key": "k", "operator": "Exists", "effect": "NoExecute"}, taint)
    n = node("n1", {"zone": "a"}, [taint])
    assert node_should_run({}, n) == (False, True)
    assert node_should_run({"tolerations": [{"key": "k", "operator": "Exists"}]}, n) == (True, True)
    n["spec"]["taints"] = [{"key": "k", "effect": "NoExecute"}]
    assert node_should_run({}, n) == (False, False)
    n["spec"]["taints"] = []
    assert node_should_run({"nodeSelector": {"zone": "b"}}, n) == (False, False)
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "c"]}]}]}}}
    assert node_should_run({"affinity": aff}, n) == (True, True)
    aff["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"][0]["operator"] = "NotIn"
    assert node_should_run({"affinity": aff}, n) == (False, False)


def test_scaled_values_and_revision_names() -> None:
    assert scaled_value("25%", 10, True) == 3
    assert scaled_value("25%", 10, False) == 2
    assert scaled_value(2, 10, True) == 2
    data = {"spec": {"template": {"$patch": "replace"}}}
    h = hash_data(data)
    assert h == hash_data(data) and h != hash_data(data, 1)
    assert set(h) <= set("bcdfghjklmnpqrstvwxz2456789")
    assert revision_name("web", h) == f"web-{h}"
    assert safe_encode("0") == safe_encode("0")
    revs = [{"metadata": {"name": f"r{i}", "labels": {CONTROLLER_REVISION_HASH_LABEL: f"h{i}"}}, "revision": i}
            for i in range(1, 6)]
    # r5 is in use (by hash), so four are dead and two of them go.
    assert [r["metadata"]["name"] for r in revisions_to_prune(revs, {"h5"}, 2)] == ["r1", "r2"]


# ---------------------------------------------------------------- placement


async def test_one_pod_per_eligible_node(env) -> None:
    c, _ = env
    await c.add_nodes(node("n1", {"role": "edge"}), node("n2", {"role": "edge"}), node("n3"))
    await c.ds.create(daemonset("agent", nodeSelector={"role": "edge"}), NS)
    st = await c.wait_status("agent", desiredNumberScheduled=2, currentNumberScheduled=2, numberReady=2,
                             numberAvailable=2, numberUnavailable=0, updatedNumberScheduled=2,
                             numberMisscheduled=0)
    assert st["observedGeneration"] == 1
    placed = await c.placement("agent")
    assert sorted(placed) == ["n1", "n2"] and all(len(v) == 1 for v in placed.values())
    pod = placed["n1"][0]
    assert pod["spec"]["nodeName"] == "n1"
    assert pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}
    tol = {(t["key"], t["effect"]): t for t in pod["spec"]["tolerations"]}
    for key in ("not-ready", "unreachable"):
        t = tol[(f"node.kubernetes.io/{key}", "NoExecute")]
        assert t["operator"] == "Exists" and "tolerationSeconds" not in t
    for key in ("disk-pressure", "memory-pressure", "pid-pressure", "unschedulable"):
        assert (f"node.kubernetes.io/{key}", "NoSchedule") in tol
    assert ("node.kubernetes.io/network-unavailable", "NoSchedule") not in tol
    ref = pod["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "DaemonSet" and ref["controller"] is True
    [rev] = await c.revision_list("agent")
    assert pod["metadata"]["labels"][CONTROLLER_REVISION_HASH_LABEL] == rev["metadata"]["labels"][
        CONTROLLER_REVISION_HASH_LABEL]
    assert rev["metadata"]["name"] == "agent-" + rev["metadata"]["labels"][CONTROLLER_REVISION_HASH_LABEL]
    assert rev["revision"] == 1 and rev["data"]["spec"]["template"]["$patch"] == "replace"


async def test_follows_nodes_joining_leaving_and_relabeling(env) -> None:
    c, _ = env
    await c.add_nodes(node("n1", {"role": "edge"}))
    await c.ds.create(daemonset("agent", nodeSelector={"role": "edge"}), NS)
    await c.wait_status("agent", desiredNumberScheduled=1, numberReady=1)
    await c.add_nodes(node("n2", {"role": "edge"}), node("n3"))
    await c.wait_status("agent", desiredNumberScheduled=2, numberReady=2)
    # n3 joins the role: it gets a pod; n1 leaves it: its pod goes.
    await c.nodes.patch("n3", {"metadata": {"labels": {"role": "edge"}}})
    await c.nodes.patch("n1", {"metadata": {"labels": {"role": None}}})
    async def moved() -> bool:
        return sorted(await c.placement("agent")) == ["n2", "n3"]
    await eventually(moved, what="pods follow the label")
    await c.wait_status("agent", desiredNumberScheduled=2, numberReady=2, numberMisscheduled=0)
    await c.nodes.delete("n2")

    async def only_n3() -> bool:
        return sorted(await c.placement("agent")) == ["n3"]
    await eventually(only_n3, what="pod of the deleted node removed")
    await c.wait_status("agent", desiredNumberScheduled=1, currentNumberScheduled=1)


async def test_taints_and_tolerations(env) -> None:
    c, _ = env
    await c.add_nodes(
        node("plain"),
        node("tainted", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        node("cordoned", taints=[{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                                 {"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"},
                                 {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        node("nonet", taints=[{"key": "node.kubernetes.io/network-unavailable", "effect": "NoSchedule"}]))
    await c.ds.create(daemonset("agent"), NS)
    await c.ds.create(daemonset("hostnet", hostNetwork=True), NS)
    await c.wait_status("agent", desiredNumberScheduled=2, numberReady=2)
    assert sorted(await c.placement("agent")) == ["cordoned", "plain"]
    await c.wait_status("hostnet", desiredNumberScheduled=3, numberReady=3)
    assert sorted(await c.placement("hostnet")) == ["cordoned", "nonet", "plain"]
    # A NoSchedule taint keeps the running pod; a NoExecute one evicts it.
    await c.nodes.patch("plain", {"spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}})
    await c.wait_status("agent", desiredNumberScheduled=1, currentNumberScheduled=1, numberMisscheduled=1)
    assert "plain" in await c.placement("agent")
    await c.nodes.patch("plain", {"spec": {"taints": [{"key": "x", "effect": "NoExecute"}]}})

    async def evicted() -> bool:
        return "plain" not in await c.placement("agent")
    await eventually(evicted, what="pod evicted by NoExecute taint")
    await c.wait_status("agent", desiredNumberScheduled=1, numberMisscheduled=0)


async def test_template_node_affinity_and_failed_pod(env) -> None:
    c, kubelet = env
    await c.add_nodes(node("n1", {"disk": "ssd"}), node("n2", {"disk": "hdd"}))
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}}
    await c.ds.create(daemonset("agent", affinity=aff), NS)
    await c.wait_status("agent", desiredNumberScheduled=1, numberReady=1)
    [pod] = (await c.placement("agent"))["n1"]
    await set_pod_status(c.client, pod["metadata"]["name"], NS, "Failed", ready=False)

    async def replaced() -> bool:
        pods = (await c.placement("agent")).get("n1") or []
        return len(pods) == 1 and pods[0]["metadata"]["uid"] != pod["metadata"]["uid"]
    await eventually(replaced, what="failed daemon pod replaced")
    await c.wait_status("agent", numberReady=1, numberAvailable=1)


async def test_adopts_matching_orphan(env) -> None:
    c, _ = env
    await c.add_nodes(node("n1"))
    orphan = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stray", "labels": {"app": "agent"}},
              "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "agent:1"}]}}
    await c.pods.create(orphan, NS)
    # OnDelete: a RollingUpdate would go on to replace the adopted pod, which lacks the hash.
    await c.ds.create(daemonset("agent", strategy={"type": "OnDelete"}), NS)
    await c.wait_status("agent", desiredNumberScheduled=1, currentNumberScheduled=1, numberReady=1,
                        updatedNumberScheduled=0)
    pods = await c.pods_of("agent")
    assert [p["metadata"]["name"] for p in pods] == ["stray"]
    assert pods[0]["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"


# ---------------------------------------------------------------- updates


class Monitor:
    """Watches pods of one app and records the worst moments of a rollout."""

    def __init__(self, client: Client, app: str, nodes: list[str]):
        self.informer = Informer(client.resource("v1", "pods"), namespace=NS, label_selector=f"app={app}")
        self.nodes = nodes
        self.max_unavailable = 0
        self.max_surging = 0
        self.informer.add_handler(on_add=lambda _p: self._check(), on_update=lambda _o, _n: self._check(),
                                  on_delete=lambda _p: self._check())

    def _check(self) -> None:
        per_node: dict[str, list[Obj]] = {n: [] for n in self.nodes}
        for p in self.informer.list():
            if not p["metadata"].get("deletionTimestamp"):
                per_node.setdefault(target_node(p) or "", []).append(p)
        ready = {n for n, pods in per_node.items() if any(
            any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (p.get("status") or {}).get("conditions") or []) for p in pods)}
        self.max_unavailable = max(self.max_unavailable, len(self.nodes) - len(ready))
        self.max_surging = max(self.max_surging, sum(1 for pods in per_node.values() if len(pods) > 1))

    async def __aenter__(self) -> Monitor:
        await self.informer.start()
        await self.informer.wait_for_sync(5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.informer.stop()


async def _set_image(c: Cluster, name: str, image: str) -> None:
    ds = await c.ds.get(name, NS)
    ds["spec"]["template"]["spec"]["containers"][0]["image"] = image
    await c.ds.update(ds, NS)


async def _all_on_image(c: Cluster, app: str, image: str, n: int) -> Callable[[], Any]:
    async def check() -> bool:
        pods = await c.pods_of(app, live=False)
        return len(pods) == n and all(p["spec"]["containers"][0]["image"] == image for p in pods)
    return check


async def test_rolling_update_max_unavailable(env) -> None:
    c, _ = env
    names = ["n1", "n2", "n3", "n4"]
    await c.add_nodes(*(node(n) for n in names))
    await c.ds.create(daemonset("agent", strategy={"type": "RollingUpdate",
                                                   "rollingUpdate": {"maxUnavailable": 1}}), NS)
    await c.wait_status("agent", numberAvailable=4)
    async with Monitor(c.client, "agent", names) as mon:
        await _set_image(c, "agent", "agent:2")
        await eventually(await _all_on_image(c, "agent", "agent:2", 4), what="all pods updated")
        await c.wait_status("agent", updatedNumberScheduled=4, numberAvailable=4, numberUnavailable=0)
    assert mon.max_unavailable == 1
    assert mon.max_surging == 0
    revs = await c.revision_list("agent")
    assert [r["revision"] for r in revs] == [1, 2]
    new_hash = revs[1]["metadata"]["labels"][CONTROLLER_REVISION_HASH_LABEL]
    assert all(p["metadata"]["labels"][CONTROLLER_REVISION_HASH_LABEL] == new_hash
               for p in await c.pods_of("agent"))


async def test_rolling_update_max_surge(env) -> None:
    c, _ = env
    names = ["n1", "n2", "n3"]
    await c.add_nodes(*(node(n) for n in names))
    await c.ds.create(daemonset("agent", strategy={"type": "RollingUpdate",
                                                   "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}), NS)
    await c.wait_status("agent", numberAvailable=3)
    async with Monitor(c.client, "agent", names) as mon:
        await _set_image(c, "agent", "agent:2")
        await eventually(await _all_on_image(c, "agent", "agent:2", 3), what="all pods updated")
        await c.wait_status("agent", updatedNumberScheduled=3, numberAvailable=3)
    # Surging never leaves a node without a ready pod, and surges one node at a time.
    assert mon.max_unavailable == 0
    assert mon.max_surging == 1


async def test_on_delete(env) -> None:
    c, _ = env
    await c.add_nodes(node("n1"), node("n2"))
    await c.ds.create(daemonset("agent", strategy={"type": "OnDelete"}), NS)
    await c.wait_status("agent", numberAvailable=2, updatedNumberScheduled=2)
    await _set_image(c, "agent", "agent:2")
    await c.wait_status("agent", updatedNumberScheduled=0, numberAvailable=2)
    assert len(await c.revision_list("agent")) == 2
    victim = (await c.placement("agent"))["n1"][0]
    await c.pods.delete(victim["metadata"]["name"], NS)
    await c.wait_status("agent", updatedNumberScheduled=1, numberAvailable=2)
    placed = await c.placement("agent")
    assert placed["n1"][0]["spec"]["containers"][0]["image"] == "agent:2"
    assert placed["n2"][0]["spec"]["containers"][0]["image"] == "agent:1"


async def test_rollback_reuses_revision_and_history_limit(env) -> None:
    c, _ = env
    await c.add_nodes(node("n1"))
    ds = daemonset("agent")
    ds["spec"]["revisionHistoryLimit"] = 1
    await c.ds.create(ds, NS)
    await c.wait_status("agent", numberAvailable=1)
    for image in ("agent:2", "agent:3"):
        await _set_image(c, "agent", image)
        await eventually(await _all_on_image(c, "agent", image, 1), what=f"rolled to {image}")
        await c.wait_status("agent", updatedNumberScheduled=1, numberAvailable=1)

    async def pruned() -> list[Obj] | None:
        revs = await c.revision_list("agent")
        return revs if [r["revision"] for r in revs] == [2, 3] else None
    revs = await eventually(pruned, what="history limited to one old revision")
    # `kubectl rollout undo` applies the old revision's data as a strategic merge patch.
    await c.ds.patch("agent", copy.deepcopy(revs[0]["data"]), namespace=NS, patch_type="strategic")
    await eventually(await _all_on_image(c, "agent", "agent:2", 1), what="rolled back")

    async def renumbered() -> bool:
        got = await c.revision_list("agent")
        return [(r["metadata"]["name"], r["revision"]) for r in got] == [
            (revs[1]["metadata"]["name"], 3), (revs[0]["metadata"]["name"], 4)]
    await eventually(renumbered, what="the rolled-back revision becomes the newest")


async def test_status_counts_unready_pods(env) -> None:
    c, kubelet = env
    kubelet.auto_ready = False
    await c.add_nodes(node("n1"), node("n2"))
    await c.ds.create(daemonset("agent"), NS)
    await c.wait_status("agent", desiredNumberScheduled=2, currentNumberScheduled=2, numberReady=0,
                        numberUnavailable=2, numberAvailable=0)

    async def bound() -> list[Obj] | None:
        pods = await c.pods_of("agent")
        return pods if len(pods) == 2 and all(p["spec"].get("nodeName") for p in pods) else None
    pods = await eventually(bound, what="pods bound")
    await kubelet.ready(pods[0]["metadata"]["name"])
    await c.wait_status("agent", numberReady=1, numberAvailable=1, numberUnavailable=1)
    await asyncio.gather(*(kubelet.ready(p["metadata"]["name"]) for p in pods))
    await c.wait_status("agent", numberReady=2, numberAvailable=2, numberUnavailable=0)
