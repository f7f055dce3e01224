"""The ReplicaSet controller against a real in-process API server; the tests play kubelet."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.client import Client, Informer
from kybernetes.controllers.common import now_rfc3339
from kybernetes.controllers.replicaset import ReplicaSetController, pods_to_delete, slow_start_batch
from tests.apiserver.conftest import eventually, start_api, stop_api

NS = "default"


def replicaset(name: str, replicas: int = 1, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}, **spec}}


def bare_pod(name: str, labels: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "nginx"}], **spec}}


async def set_pod_state(client: Client, name: str, phase: str = "Running", ready: bool = True) -> None:
    """What a kubelet reports: the phase and the Ready condition."""
    status: dict[str, Any] = {"phase": phase}
    if phase == "Running":
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False",
                                 "lastTransitionTime": now_rfc3339()}]
    await client.resource("v1", "pods").patch(name, {"status": status}, namespace=NS, subresource="status")


class FakeKubelet:
    """Marks pods Running and Ready as they appear, for those `accept` allows."""

    def __init__(self, client: Client, accept=lambda pod: True):
        self.client = client
        self.accept = accept
        self.informer = Informer(client.resource("v1", "pods"))
        self.informer.add_handler(on_add=self._seen, on_update=lambda _o, n: self._seen(n))
        self.tasks: set[asyncio.Task] = set()

    def _seen(self, pod: dict[str, Any]) -> None:
        m = pod["metadata"]
        if m.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") == "Running":
            return
        if not self.accept(pod):
            return
        t = asyncio.create_task(self._ready(m["name"]))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _ready(self, name: str) -> None:
        try:
            await set_pod_state(self.client, name)
        except StatusError as e:
            if e.code != 404:
                raise

    async def start(self) -> None:
        await self.informer.start()
        await self.informer.wait_for_sync(5)

    async def stop(self) -> None:
        await self.informer.stop()
        for t in list(self.tasks):
            t.cancel()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Client, ReplicaSetController]]:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    ctrl = ReplicaSetController(Client.in_process(api.handle))
    await ctrl.start()
    try:
        yield client, ctrl
    finally:
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
        await stop_api(api)


async def pods_of(client: Client, app: str, active_only: bool = True) -> list[dict[str, Any]]:
    items = (await client.resource("v1", "pods").list(NS, label_selector=f"app={app}"))["items"]
    if active_only:
        items = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    return items


async def rs_status(client: Client, name: str) -> dict[str, Any]:
    return (await client.resource("apps/v1", "replicasets").get(name, NS)).get("status") or {}


# ---------------------------------------------------------------------- pure logic


async def test_slow_start_batches_double_and_stop_at_first_failure() -> None:
    sizes: list[int] = []
    inflight = 0

    async def ok() -> None:
        nonlocal inflight
        inflight += 1
        await asyncio.sleep(0)
        sizes.append(inflight)
        inflight -= 1
    assert await slow_start_batch(10, 1, ok) == (10, None)
    calls = 0

    async def fail_after_3() -> None:
        nonlocal calls
        calls += 1
        if calls > 3:
            raise RuntimeError("quota")
    n, err = await slow_start_batch(100, 1, fail_after_3)
    # Batches of 1 and 2 succeed; the batch of 4 has failures and nothing more is tried.
    assert calls == 7 and n == 3 and isinstance(err, RuntimeError)


def _p(name: str, *, node: str = "", phase: str = "Running", ready: bool = True, created: str = "2024-01-01T00:00:00Z",
       cost: int | None = None, restarts: int = 0, ready_at: str = "2024-01-01T00:00:00Z") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": name, "creationTimestamp": created}
    if cost is not None:
        meta["annotations"] = {"controller.kubernetes.io/pod-deletion-cost": str(cost)}
    status: dict[str, Any] = {"phase": phase, "containerStatuses": [{"restartCount": restarts}]}
    if phase == "Running":
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False",
                                 "lastTransitionTime": ready_at}]
    return {"metadata": meta, "spec": {"nodeName": node}, "status": status}


def test_deletion_ranking_follows_upstream_order() -> None:
    now = 1_800_000_000.0
    pods = [
        _p("old-ready", node="n1", created="2020-01-01T00:00:00Z", ready_at="2020-01-01T00:00:00Z"),
        _p("unscheduled", phase="Pending"),
        _p("pending", node="n1", phase="Pending"),
        _p("unknown", node="n1", phase="Unknown"),
        _p("not-ready", node="n1", ready=False),
        _p("cheap", node="n1", cost=-10, created="2020-01-01T00:00:00Z", ready_at="2020-01-01T00:00:00Z"),
        _p("restarted", node="n2", restarts=5, created="2020-01-01T00:00:00Z", ready_at="2020-01-01T00:00:00Z"),
        _p("new-ready", node="n2", created="2027-01-01T00:00:00Z", ready_at="2027-01-01T00:00:00Z"),
    ]
    order = [p["metadata"]["name"] for p in pods_to_delete(pods, [], len(pods) - 1, now=now)]
    assert order == ["unscheduled", "pending", "unknown", "not-ready", "cheap", "new-ready", "restarted"]
    # Crowded nodes lose pods first when everything else is equal.
    a = _p("a", node="busy")
    b = _p("b", node="quiet")
    sibling = _p("s", node="busy")
    assert [p["metadata"]["name"] for p in pods_to_delete([b, a], [a, b, sibling], 1, now=now)] == ["a"]


# ---------------------------------------------------------------------- against the API server


async def test_scale_up_status_and_scale_down(env) -> None:
    client, _ = env
    kubelet = FakeKubelet(client)
    await kubelet.start()
    try:
        rss = client.resource("apps/v1", "replicasets")
        rs = await rss.create(replicaset("web", 3), NS)
        await eventually(lambda: _count(client, "web", 3), what="3 pods")
        for p in await pods_of(client, "web"):
            assert p["metadata"]["generateName"] == "web-"
            assert p["metadata"]["name"].startswith("web-")
            ref = p["metadata"]["ownerReferences"][0]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("ReplicaSet", "web",
                                                                                rs["metadata"]["uid"], True)

        async def settled() -> bool:
            s = await rs_status(client, "web")
            return s.get("replicas") == 3 and s.get("readyReplicas") == 3 and s.get("availableReplicas") == 3 \
                and s.get("fullyLabeledReplicas") == 3 and s.get("observedGeneration") == 1
        await eventually(settled, what="status counts")
        await rss.patch("web", {"spec": {"replicas": 1}}, namespace=NS)
        await eventually(lambda: _count(client, "web", 1), what="scaled down to 1")

        async def down() -> bool:
            s = await rs_status(client, "web")
            return s.get("replicas") == 1 and s.get("observedGeneration") == 2
        await eventually(down, what="status after scale down")
    finally:
        await kubelet.stop()


async def _count(client: Client, app: str, n: int) -> bool:
    return len(await pods_of(client, app)) == n


async def test_adopts_orphans_and_releases_non_matching(env) -> None:
    client, _ = env
    pods = client.resource("v1", "pods")
    for i in range(2):
        await pods.create(bare_pod(f"orphan{i}", {"app": "adopt"}), NS)
    await pods.create(bare_pod("stranger", {"app": "other"}), NS)
    rs = await client.resource("apps/v1", "replicasets").create(replicaset("adopt", 3), NS)
    await eventually(lambda: _count(client, "adopt", 3), what="3 pods, two of them adopted")
    for i in range(2):
        p = await pods.get(f"orphan{i}", NS)
        assert p["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
    assert not (await pods.get("stranger", NS))["metadata"].get("ownerReferences")
    # A pod relabelled out of the selector is released and replaced.
    await pods.patch("orphan0", {"metadata": {"labels": {"app": "gone"}}}, namespace=NS)

    async def released() -> bool:
        return not (await pods.get("orphan0", NS))["metadata"].get("ownerReferences")
    await eventually(released, what="orphan0 released")
    await eventually(lambda: _count(client, "adopt", 3), what="replacement created")


async def test_deletes_least_valuable_pods_first(env) -> None:
    client, _ = env
    pods = client.resource("v1", "pods")
    labels = {"app": "order"}
    await pods.create(bare_pod("scheduled", labels, nodeName="n1"), NS)
    await pods.create(bare_pod("running-ready", labels), NS)
    await pods.create(bare_pod("running-unready", labels), NS)
    await pods.create(bare_pod("pending", labels), NS)
    await set_pod_state(client, "scheduled", "Pending", ready=False)
    await set_pod_state(client, "running-ready")
    await set_pod_state(client, "running-unready", ready=False)
    rss = client.resource("apps/v1", "replicasets")
    await rss.create(replicaset("order", 4), NS)

    async def owned_count() -> bool:
        return (await rs_status(client, "order")).get("replicas") == 4
    await eventually(owned_count, what="all four adopted")
    survivors = ["scheduled", "running-ready", "running-unready", "pending"]
    for n in (3, 2, 1):
        await rss.patch("order", {"spec": {"replicas": n}}, namespace=NS)
        await eventually(lambda n=n: _count(client, "order", n), what=f"scaled to {n}")
        names = sorted(p["metadata"]["name"] for p in await pods_of(client, "order"))
        survivors = survivors[:n]
        assert names == sorted(survivors)


async def test_min_ready_seconds_flips_availability_without_events(env) -> None:
    client, _ = env
    await client.resource("apps/v1", "replicasets").create(replicaset("slow", 1, minReadySeconds=1), NS)
    await eventually(lambda: _count(client, "slow", 1), what="pod")
    (pod,) = await pods_of(client, "slow")
    await set_pod_state(client, pod["metadata"]["name"])

    async def ready_not_available() -> bool:
        s = await rs_status(client, "slow")
        return s.get("readyReplicas") == 1
    await eventually(ready_not_available, what="ready")
    # Nothing else happens to the pod: only the controller's own requeue can flip this.
    await eventually(lambda: _available(client, "slow", 1), timeout=4, what="available after minReadySeconds")


async def _available(client: Client, name: str, n: int) -> bool:
    return (await rs_status(client, name)).get("availableReplicas") == n


async def test_create_failure_sets_replica_failure_then_recovers(env) -> None:
    client, ctrl = env
    real_create = ctrl.pod_client.create
    calls = 0
    failing = True

    async def create(obj, namespace=None, **kw):
        nonlocal calls
        calls += 1
        if failing:
            raise StatusError(403, "Forbidden", 'pods "x" is forbidden: exceeded quota: compute')
        return await real_create(obj, namespace, **kw)
    ctrl.pod_client.create = create  # type: ignore[method-assign]
    await client.resource("apps/v1", "replicasets").create(replicaset("quota", 5), NS)

    async def failed() -> dict | None:
        for c in (await rs_status(client, "quota")).get("conditions") or []:
            if c["type"] == "ReplicaFailure":
                return c
        return None
    cond = await eventually(failed, what="ReplicaFailure condition")
    assert cond["status"] == "True" and cond["reason"] == "FailedCreate" and "exceeded quota" in cond["message"]
    # Slow start: each attempt fails on its first (single) create, never a batch of five.
    first_calls = calls
    assert first_calls >= 1
    failing = False
    await eventually(lambda: _count(client, "quota", 5), what="pods after the failure clears")
    await eventually(lambda: _not(failed()), what="condition removed")


async def _not(aw) -> bool:
    return not await aw


async def test_expectations_prevent_over_creation(env) -> None:
    client, ctrl = env
    real_create = ctrl.pod_client.create
    created = 0

    async def create(obj, namespace=None, **kw):
        nonlocal created
        created += 1
        # Every creation comes with a storm of extra syncs of the same key.
        for _ in range(5):
            ctrl.enqueue(f"{NS}/burst")
        await asyncio.sleep(0)
        return await real_create(obj, namespace, **kw)
    ctrl.pod_client.create = create  # type: ignore[method-assign]
    await client.resource("apps/v1", "replicasets").create(replicaset("burst", 25), NS)
    await eventually(lambda: _count(client, "burst", 25), what="25 pods")

    async def settled() -> bool:
        return (await rs_status(client, "burst")).get("replicas") == 25
    await eventually(settled, what="status 25")
    assert created == 25
    assert len(await pods_of(client, "burst")) == 25


async def test_releases_nothing_and_creates_nothing_while_deleting(env) -> None:
    client, _ = env
    rss = client.resource("apps/v1", "replicasets")
    rs = replicaset("fin", 2)
    rs["metadata"]["finalizers"] = ["test/hold"]
    await rss.create(copy.deepcopy(rs), NS)
    await eventually(lambda: _count(client, "fin", 2), what="2 pods")
    await rss.delete("fin", NS)
    (p0, _p1) = await pods_of(client, "fin")
    await client.resource("v1", "pods").delete(p0["metadata"]["name"], NS)
    await eventually(lambda: _count(client, "fin", 1), what="one pod deleted")
    # Being deleted, the ReplicaSet does not replace it.
    gen = (await rss.patch("fin", {"spec": {"replicas": 3}}, namespace=NS))["metadata"]["generation"]

    async def observed() -> bool:
        s = await rs_status(client, "fin")
        return s.get("observedGeneration") == gen and s.get("replicas") == 1
    await eventually(observed, what="new generation observed, nothing created")
    assert len(await pods_of(client, "fin")) == 1
    await rss.patch("fin", {"metadata": {"finalizers": None}}, namespace=NS)
