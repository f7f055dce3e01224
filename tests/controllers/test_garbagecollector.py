"""The garbage collector against a real in-process API server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client
from kybernetes.controllers.manager import ControllerManager
from tests.apiserver.conftest import cm, deployment, eventually, start_api, stop_api


@pytest.fixture
async def cluster(tmp_path: Path):
    api = await start_api(tmp_path)
    mgr = ControllerManager.in_process(api)
    await mgr.start()
    client = Client.in_process(api.handle)
    try:
        yield api, client, mgr
    finally:
        await client.close()
        await mgr.stop()
        await stop_api(api)


def owned_by(owner: dict[str, Any], block: bool = False) -> list[dict[str, Any]]:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    if block:
        ref["blockOwnerDeletion"] = True
    return [ref]


async def exists(rc, name: str) -> bool:
    try:
        await rc.get(name, "default")
        return True
    except StatusError as e:
        assert e.code == 404
        return False


async def test_background_deletes_dependents(cluster) -> None:
    _api, client, _ = cluster
    deps = client.resource("apps/v1", "deployments")
    cms = client.resource("v1", "configmaps")
    owner = await deps.create(deployment("web"), "default")
    for i in range(3):
        await cms.create(cm(f"dep{i}", ownerReferences=owned_by(owner)), "default")
    await deps.delete("web", "default", propagation_policy="Background")
    for i in range(3):
        await eventually(lambda i=i: _not(exists(cms, f"dep{i}")), what=f"dep{i} collected")


async def _not(aw) -> bool:
    return not await aw


async def test_orphan_keeps_dependents_and_drops_references(cluster) -> None:
    _api, client, _ = cluster
    deps = client.resource("apps/v1", "deployments")
    cms = client.resource("v1", "configmaps")
    owner = await deps.create(deployment("orph"), "default")
    await cms.create(cm("kept", ownerReferences=owned_by(owner)), "default")
    await deps.delete("orph", "default", propagation_policy="Orphan")
    await eventually(lambda: _not(exists(deps, "orph")), what="owner gone")
    kept = await cms.get("kept", "default")
    assert not kept["metadata"].get("ownerReferences")


async def test_foreground_waits_for_blocking_dependents(cluster) -> None:
    _api, client, _ = cluster
    deps = client.resource("apps/v1", "deployments")
    cms = client.resource("v1", "configmaps")
    owner = await deps.create(deployment("fg"), "default")
    # A dependent held back by a finalizer keeps the owner waiting.
    await cms.create(cm("blocker", ownerReferences=owned_by(owner, block=True), finalizers=["test/hold"]),
                     "default")
    await deps.delete("fg", "default", propagation_policy="Foreground")
    o = await deps.get("fg", "default")
    assert o["metadata"]["deletionTimestamp"] and "foregroundDeletion" in o["metadata"]["finalizers"]

    async def blocker_deleting() -> bool:
        return bool((await cms.get("blocker", "default"))["metadata"].get("deletionTimestamp"))
    await eventually(blocker_deleting, what="dependent deleted by the collector")
    assert await exists(deps, "fg")
    await cms.patch("blocker", {"metadata": {"finalizers": None}}, namespace="default")
    await eventually(lambda: _not(exists(deps, "fg")), what="owner gone after its dependents")


async def test_partial_owners_keep_object(cluster) -> None:
    _api, client, _ = cluster
    cms = client.resource("v1", "configmaps")
    a = await cms.create(cm("owner-a"), "default")
    b = await cms.create(cm("owner-b"), "default")
    await cms.create(cm("shared", ownerReferences=owned_by(a) + owned_by(b)), "default")
    await cms.delete("owner-a", "default")

    async def only_b() -> bool:
        refs = (await cms.get("shared", "default"))["metadata"].get("ownerReferences") or []
        return [r["name"] for r in refs] == ["owner-b"]
    await eventually(only_b, what="dangling reference removed")


async def test_owner_gone_while_collector_down(tmp_path: Path) -> None:
    api: APIServer = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    try:
        cms = client.resource("v1", "configmaps")
        owner = await cms.create(cm("gone"), "default")
        await cms.create(cm("leftover", ownerReferences=owned_by(owner)), "default")
        await cms.delete("gone", "default")
        assert await exists(cms, "leftover")
        mgr = ControllerManager.in_process(api)
        await mgr.start()
        try:
            await eventually(lambda: _not(exists(cms, "leftover")), what="leftover collected at start")
        finally:
            await mgr.stop()
    finally:
        await client.close()
        await stop_api(api)
