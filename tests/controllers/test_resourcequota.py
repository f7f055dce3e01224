"""The resourcequota controller: status.hard and status.used recounted from the namespace's objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from kybernetes.client import Client
from kybernetes.controllers.resourcequota import ResourceQuotaController
from tests.apiserver.conftest import eventually, start_api, stop_api

NS = "quota"


@pytest.fixture
async def env(tmp_path: Path):
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    await client.resource("v1", "namespaces", namespaced=False).create(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    ctl = ResourceQuotaController(client, [("apps/v1", "Deployment", "deployments", True)], resync_period=0.3)
    await ctl.start()
    try:
        yield client
    finally:
        await ctl.stop()
        await client.close()
        await stop_api(api)


def pod(name: str, cpu: str | None = None) -> dict:
    c: dict = {"name": "c", "image": "busybox"}
    if cpu:
        c["resources"] = {"requests": {"cpu": cpu}, "limits": {"cpu": cpu}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [c]}}


async def status(client: Client, name: str = "q") -> dict:
    return (await client.resource("v1", "resourcequotas").get(name, NS)).get("status") or {}


async def used_is(client: Client, want: dict, name: str = "q") -> bool:
    return (await status(client, name)).get("used") == want


async def test_used_is_counted_and_given_back(env):
    client = env
    pods = client.resource("v1", "pods")
    await pods.create(pod("a", "500m"), NS)
    await pods.create(pod("b"), NS)
    await client.resource("v1", "configmaps").create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}}, NS)
    await client.resource("apps/v1", "deployments").create(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
         "spec": {"selector": {"matchLabels": {"a": "b"}},
                  "template": {"metadata": {"labels": {"a": "b"}},
                               "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}, NS)
    hard = {"pods": "5", "count/pods": "5", "requests.cpu": "2", "configmaps": "3",
            "count/deployments.apps": "1", "services": "2"}
    await client.resource("v1", "resourcequotas").create(
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "q"}, "spec": {"hard": hard}}, NS)
    want = {"pods": "2", "count/pods": "2", "requests.cpu": "500m", "configmaps": "1",
            "count/deployments.apps": "1", "services": "0"}
    await eventually(lambda: used_is(client, want), what="usage counted")
    assert (await status(client))["hard"] == hard

    # A finished pod frees its compute share but is still an object.
    await pods.patch("a", {"status": {"phase": "Succeeded"}}, namespace=NS, subresource="status")
    want |= {"pods": "1", "requests.cpu": "0"}
    await eventually(lambda: used_is(client, want), what="finished pod given back")

    await pods.delete("b", NS)
    want |= {"pods": "0", "count/pods": "1"}
    await eventually(lambda: used_is(client, want), what="deleted pod given back")

    # A changed spec is mirrored in status.hard, and what it newly tracks is counted.
    q = await client.resource("v1", "resourcequotas").get("q", NS)
    q["spec"]["hard"] = {"count/configmaps": "10"}
    await client.resource("v1", "resourcequotas").update(q, NS)

    async def resized() -> bool:
        s = await status(client)
        return s.get("hard") == {"count/configmaps": "10"} and s.get("used") == {"count/configmaps": "1"}
    await eventually(resized, what="new hard counted")


async def test_scoped_quota_and_resync(env):
    client = env
    pods = client.resource("v1", "pods")
    await pods.create(pod("burst", "100m"), NS)
    await client.resource("v1", "resourcequotas").create(
        {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "be"},
         "spec": {"hard": {"pods": "3"}, "scopes": ["BestEffort"]}}, NS)
    await eventually(lambda: used_is(client, {"pods": "0"}, "be"), what="only best-effort pods counted")
    # A create is admission's to charge; without it, the periodic recount still catches up.
    await pods.create(pod("free"), NS)
    await eventually(lambda: used_is(client, {"pods": "1"}, "be"), what="recounted on resync")


async def test_which_events_recount(api):
    client = Client.in_process(api.handle)
    try:
        ctl = ResourceQuotaController(client)  # not started: only its event filters are exercised
        q = {"metadata": {"name": "q", "namespace": NS, "resourceVersion": "1"},
             "spec": {"hard": {"pods": "1"}}, "status": {"hard": {"pods": "1"}, "used": {"pods": "0"}}}
        charged = {**q, "metadata": {**q["metadata"], "resourceVersion": "2"},
                   "status": {"hard": {"pods": "1"}, "used": {"pods": "1"}}}
        ctl._on_quota_update(q, charged)
        assert len(ctl.queue) == 0  # admission's charge: recounting now would forget in-flight creates
        ctl._on_quota_update(q, q)  # a resync
        assert len(ctl.queue) == 1
    finally:
        await client.close()
