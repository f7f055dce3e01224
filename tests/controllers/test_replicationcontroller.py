"""ReplicationControllers: the ReplicaSet controller over the older kind and its map selector."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.client import Client
from kybernetes.controllers.replicaset import ReplicaSetController, ReplicationManager
from tests.apiserver.conftest import eventually, start_api, stop_api

from .test_replicaset import NS, FakeKubelet, bare_pod, pods_of, replicaset


def rc(name: str, replicas: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": labels,
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Client]:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    ctrls = [ReplicationManager(Client.in_process(api.handle)), ReplicaSetController(Client.in_process(api.handle))]
    for c in ctrls:
        await c.start()
    try:
        yield client
    finally:
        for c in ctrls:
            await c.stop()
            await c.client.close()
        await client.close()
        await stop_api(api)


async def _count(client: Client, app: str, n: int) -> bool:
    return len(await pods_of(client, app)) == n


async def test_keeps_replicas_adopts_orphans_and_writes_status(env) -> None:
    client = env
    kubelet = FakeKubelet(client)
    await kubelet.start()
    try:
        pods = client.resource("v1", "pods")
        await pods.create(bare_pod("orphan", {"app": "web"}), NS)
        rcs = client.resource("v1", "replicationcontrollers")
        made = await rcs.create(rc("web", 3), NS)
        await eventually(lambda: _count(client, "web", 3), what="3 pods, the orphan adopted")
        for p in await pods_of(client, "web"):
            ref = p["metadata"]["ownerReferences"][0]
            assert (ref["apiVersion"], ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
                "v1", "ReplicationController", "web", made["metadata"]["uid"], True)

        async def settled() -> bool:
            s = (await rcs.get("web", NS)).get("status") or {}
            return (s.get("replicas"), s.get("readyReplicas"), s.get("availableReplicas"),
                    s.get("fullyLabeledReplicas"), s.get("observedGeneration")) == (3, 3, 3, 3, 1)
        await eventually(settled, what="status counts")
        await rcs.patch("web", {"spec": {"replicas": 1}}, namespace=NS)
        await eventually(lambda: _count(client, "web", 1), what="scaled down to 1")
    finally:
        await kubelet.stop()


async def test_a_replicaset_and_a_replication_controller_keep_to_their_own(env) -> None:
    """Each kind recognises only its own ownerReferences: neither counts the other's pods."""
    client = env
    await client.resource("v1", "replicationcontrollers").create(rc("old", 2), NS)
    await client.resource("apps/v1", "replicasets").create(replicaset("new", 2), NS)
    await eventually(lambda: _count(client, "old", 2), what="the RC's pods")
    await eventually(lambda: _count(client, "new", 2), what="the RS's pods")
    kinds = {p["metadata"]["ownerReferences"][0]["kind"] for p in await pods_of(client, "old")}
    assert kinds == {"ReplicationController"}
    kinds = {p["metadata"]["ownerReferences"][0]["kind"] for p in await pods_of(client, "new")}
    assert kinds == {"ReplicaSet"}


def test_map_selector() -> None:
    sel = ReplicationManager.selector_of(rc("x", 1, {"app": "x", "tier": "web"}))
    assert sel.matches({"app": "x", "tier": "web", "more": "y"}) and not sel.matches({"app": "x"})
    assert not ReplicationManager.selector_of({"spec": {"selector": {}}}).matches({"app": "x"})
