"""PodDisruptionBudget status and the eviction subresource."""

from __future__ import annotations

from pathlib import Path

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.client import Client
from kybernetes.controllers.disruption import DisruptionController, scaled
from tests.apiserver.conftest import eventually, start_api, stop_api


@pytest.fixture
async def env(tmp_path: Path):
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    ctl = DisruptionController(client)
    await ctl.start()
    try:
        yield client
    finally:
        await ctl.stop()
        await client.close()
        await stop_api(api)


def test_scaled():
    assert scaled("50%", 3, True) == 2 and scaled("50%", 3, False) == 1
    assert scaled(2, 10, True) == 2 and scaled("bad%", 3, True) == 0


async def ready_pod(client: Client, name: str) -> None:
    pods = client.resource("v1", "pods")
    await pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "db"}},
                       "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, "default")
    await pods.patch(name, {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
                     namespace="default", subresource="status")


async def evict(client: Client, name: str) -> dict:
    return await client.resource("v1", "pods").create_subresource(
        name, "eviction", {"apiVersion": "policy/v1", "kind": "Eviction",
                           "metadata": {"name": name, "namespace": "default"}}, "default")


async def test_budget_status_and_eviction(env):
    client = env
    for i in range(3):
        await ready_pod(client, f"db-{i}")
    pdbs = client.resource("policy/v1", "poddisruptionbudgets")
    await pdbs.create({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "db"},
                       "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}}}, "default")

    async def status() -> dict:
        return (await pdbs.get("db", "default")).get("status") or {}

    async def allowed(n: int) -> bool:
        s = await status()
        return s.get("disruptionsAllowed") == n and s.get("observedGeneration") == 1
    await eventually(lambda: allowed(1), what="one disruption allowed")
    s = await status()
    assert (s["currentHealthy"], s["desiredHealthy"], s["expectedPods"]) == (3, 2, 3)
    await evict(client, "db-0")
    with pytest.raises(StatusError) as ei:
        await client.resource("v1", "pods").get("db-0", "default")
    assert ei.value.code == 404
    # The budget is spent: the next eviction is refused until a pod is healthy again.
    with pytest.raises(StatusError) as ei:
        await evict(client, "db-1")
    assert ei.value.code == 429 and ei.value.reason == "TooManyRequests"
    assert "violate the pod's disruption budget" in ei.value.message
    await eventually(lambda: allowed(0), what="no disruption left")
    await ready_pod(client, "db-3")
    await eventually(lambda: allowed(1), what="disruption allowed again")
    await evict(client, "db-1")


async def test_pending_pods_are_not_protected(env):
    client = env
    pods = client.resource("v1", "pods")
    await pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "db"}},
                       "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, "default")
    await client.resource("policy/v1", "poddisruptionbudgets").create(
        {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "strict"},
         "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "db"}}}}, "default")
    await evict(client, "p")
    with pytest.raises(StatusError):
        await pods.get("p", "default")
