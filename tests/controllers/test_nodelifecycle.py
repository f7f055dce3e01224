"""Node lifecycle: dead nodes turn Unknown, get tainted, and their pods are evicted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.client import Client
from kybernetes.controllers.base import Requeue
from kybernetes.controllers.common import now_rfc3339
from kybernetes.controllers.nodelifecycle import NodeLifecycleController, tolerates
from tests.apiserver.conftest import eventually, start_api, stop_api


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def env(tmp_path: Path):
    import time
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    clock = Clock(time.time())
    ctl = NodeLifecycleController(client, grace_period=40.0, clock=clock)
    await ctl.start()
    try:
        yield client, ctl, clock
    finally:
        await ctl.stop()
        await client.close()
        await stop_api(api)


async def make_node(client: Client, name: str) -> None:
    ts = now_rfc3339()
    await client.resource("v1", "nodes", False).create({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                   "lastHeartbeatTime": ts, "lastTransitionTime": ts}]}})
    await client.resource("coordination.k8s.io/v1", "leases").create({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_rfc3339() + ""}})


async def make_pod(client: Client, name: str, node: str, tolerations: list[dict[str, Any]] | None = None) -> None:
    spec: dict[str, Any] = {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    pods = client.resource("v1", "pods")
    await pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}, "default")
    await pods.patch(name, {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
                     namespace="default", subresource="status")


def test_tolerates():
    taint = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    assert tolerates([{"operator": "Exists"}], taint)
    assert tolerates([{"key": taint["key"], "operator": "Exists", "effect": "NoExecute"}], taint)
    assert not tolerates([{"key": taint["key"], "operator": "Exists", "effect": "NoSchedule"}], taint)
    assert not tolerates([{"key": "other", "operator": "Exists"}], taint)


async def test_dead_node_unknown_tainted_pods_evicted(env):
    client, ctl, clock = env
    await make_node(client, "n1")
    # Pods get the 300 s unreachable toleration from admission; one opts out of tolerating.
    await make_pod(client, "tolerant", "n1")
    await make_pod(client, "short", "n1", tolerations=[
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 5}])
    nodes = client.resource("v1", "nodes", False)
    pods = client.resource("v1", "pods")

    async def ready_status() -> str:
        n = await nodes.get("n1")
        return next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
    assert await ready_status() == "True"
    await eventually(lambda: observed(ctl, "n1"), what="lease seen")
    # The kubelet stops renewing: once the grace period passed, the node is Unknown and tainted.
    clock.t += 41
    ctl.enqueue("node/n1")
    await eventually(lambda: _eq(ready_status(), "Unknown"), what="Ready=Unknown")

    async def taints() -> set[tuple[str, str]]:
        n = await nodes.get("n1")
        return {(t["key"], t["effect"]) for t in (n.get("spec") or {}).get("taints") or []}
    await eventually(lambda: _contains(taints(), ("node.kubernetes.io/unreachable", "NoExecute")),
                     what="unreachable taint")
    # Pods are marked not ready.
    p = await pods.get("tolerant", "default")
    assert any(c["type"] == "Ready" and c["status"] == "False" for c in p["status"]["conditions"])
    # After 5 s of toleration the short one is evicted; the 300 s one stays.
    clock.t += 6
    ctl.enqueue("node/n1")
    await eventually(lambda: _deleting(pods, "short"), what="short evicted")
    assert not (await pods.get("tolerant", "default"))["metadata"].get("deletionTimestamp")
    clock.t += 300
    ctl.enqueue("node/n1")
    await eventually(lambda: _deleting(pods, "tolerant"), what="tolerant evicted after 300 s")


async def test_recovered_node_loses_taints(env):
    client, ctl, clock = env
    await make_node(client, "n2")
    nodes = client.resource("v1", "nodes", False)
    await eventually(lambda: observed(ctl, "n2"), what="lease seen")
    clock.t += 41
    ctl.enqueue("node/n2")

    async def has_taint() -> bool:
        return bool(((await nodes.get("n2")).get("spec") or {}).get("taints"))
    await eventually(has_taint, what="tainted")
    # The kubelet comes back: lease renewed, Ready=True posted.
    leases = client.resource("coordination.k8s.io/v1", "leases")
    import datetime
    renew = datetime.datetime.fromtimestamp(clock.t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    await leases.patch("n2", {"spec": {"renewTime": renew}}, namespace="kube-node-lease")
    await nodes.patch("n2", {"status": {"conditions": [{"type": "Ready", "status": "True",
                                                        "reason": "KubeletReady"}]}},
                      patch_type="strategic", subresource="status")

    async def untainted() -> bool:
        return not ((await nodes.get("n2")).get("spec") or {}).get("taints")
    await eventually(untainted, what="taints removed")


async def test_grace_counts_from_when_the_renewal_was_seen(env):
    """A lease renewed long ago by the node's clock (a restarted control plane, a skewed
    node) is not stale at first sight: the grace runs on the controller's clock."""
    client, ctl, clock = env
    await make_node(client, "n3")
    nodes = client.resource("v1", "nodes", False)
    await eventually(lambda: observed(ctl, "n3"), what="lease seen")
    clock.t += 35
    ctl.enqueue("node/n3")
    await client.resource("coordination.k8s.io/v1", "leases").patch(
        "n3", {"spec": {"renewTime": "2000-01-01T00:00:00.000000Z"}}, namespace="kube-node-lease")
    await eventually(lambda: ctl._probes["n3"][0][0].startswith("2000"), what="renewal seen")
    clock.t += 35  # 70 s after the first sight, 35 s after the (skewed) renewal
    with pytest.raises(Requeue) as r:  # not stale: check again when the grace runs out
        await ctl.reconcile("node/n3")
    assert 4 < r.value.after < 6

    async def ready_status() -> str:
        n = await nodes.get("n3")
        return next(c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready")
    assert await ready_status() == "True"
    clock.t += 6
    ctl.enqueue("node/n3")
    await eventually(lambda: _eq(ready_status(), "Unknown"), what="Ready=Unknown")


async def test_pods_on_missing_node_deleted_after_quarantine(env):
    client, ctl, clock = env
    await make_pod(client, "stray", "ghost")
    pods = client.resource("v1", "pods")
    ctl.enqueue("node/ghost")
    # Quarantine starts when the controller first sees the node missing.
    await eventually(lambda: "ghost" in ctl._missing_since, what="node seen missing")
    assert await _exists(pods, "stray")
    clock.t += 41
    ctl.enqueue("node/ghost")
    await eventually(lambda: _not(_exists(pods, "stray")), what="orphan pod deleted")


def observed(ctl: NodeLifecycleController, name: str) -> bool:
    """The controller has seen the node's lease (the grace period counts from that sight)."""
    seen = ctl._probes.get(name)
    return seen is not None and seen[0][0] is not None


async def _eq(aw, v) -> bool:
    return (await aw) == v


async def _contains(aw, v) -> bool:
    return v in await aw


async def _exists(rc, name: str) -> bool:
    try:
        await rc.get(name, "default")
        return True
    except StatusError as e:
        assert e.code == 404
        return False


async def _not(aw) -> bool:
    return not await aw


async def _deleting(rc, name: str) -> bool:
    try:
        p = await rc.get(name, "default")
    except StatusError:
        return True
    return bool(p["metadata"].get("deletionTimestamp"))
