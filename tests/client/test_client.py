"""Client against the fake API handler, in-process and over HTTP (same tests, both transports)."""

from __future__ import annotations

import asyncio

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.client import Client, ResourceClient

from .fakeapi import FakeAPI


def cm(name: str, namespace: str | None = None, labels: dict[str, str] | None = None, **data: str) -> dict:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(data)}


def test_paths_follow_upstream_layout() -> None:
    c = Client(transport=None)  # type: ignore[arg-type]
    pods = c.resource("v1", "pods")
    assert pods.path("ns1", "p") == "/api/v1/namespaces/ns1/pods/p"
    assert pods.path(None) == "/api/v1/pods"
    assert pods.path("ns1", "p", "binding") == "/api/v1/namespaces/ns1/pods/p/binding"
    deploy = c.resource("apps/v1", "deployments")
    assert deploy.path("d", "web", "scale") == "/apis/apps/v1/namespaces/d/deployments/web/scale"
    nodes = c.resource("v1", "nodes", namespaced=False)
    assert nodes.path("ignored", "n1") == "/api/v1/nodes/n1"
    crd = c.resource("apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)
    assert crd.path() == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    with pytest.raises(ValueError):
        pods.path("ns", "")


async def test_create_get_update_delete_roundtrip(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    created = await cms.create(cm("a", a="1"), "ns1")
    assert created["metadata"]["namespace"] == "ns1"
    assert created["metadata"]["resourceVersion"]
    got = await cms.get("a", "ns1")
    assert got["data"] == {"a": "1"}
    got["data"]["a"] = "2"
    updated = await cms.update(got)
    assert updated["data"]["a"] == "2"
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    deleted = await cms.delete("a", "ns1")
    assert deleted["metadata"]["name"] == "a"
    with pytest.raises(StatusError) as err:
        await cms.get("a", "ns1")
    assert (err.value.code, err.value.reason) == (404, "NotFound")
    assert err.value.details == {"name": "a", "kind": "configmaps"}


async def test_default_namespace_comes_from_client(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    created = await cms.create(cm("d"))
    assert created["metadata"]["namespace"] == "default"
    assert (await cms.get("d"))["metadata"]["name"] == "d"


async def test_errors_become_status_errors(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a"), "ns")
    with pytest.raises(StatusError) as err:
        await cms.create(cm("a"), "ns")
    assert (err.value.code, err.value.reason) == (409, "AlreadyExists")
    assert err.value.message == 'configmaps "a" already exists'
    stale = await cms.get("a", "ns")
    await cms.update(stale)
    with pytest.raises(StatusError) as err:
        await cms.update(stale)  # old resourceVersion
    assert (err.value.code, err.value.reason) == (409, "Conflict")
    with pytest.raises(StatusError) as err:
        await cms.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}, "ns")
    assert err.value.code == 422
    assert err.value.details["causes"][0]["field"] == "metadata.name"
    with pytest.raises(StatusError) as err:
        await client.resource("v1", "nonsense").list()
    assert err.value.code == 404


async def test_non_status_error_body_still_raises(fake: FakeAPI) -> None:
    from kybernetes.apiserver.request import Response

    async def proxy(_req):  # what a misbehaving proxy in front of the server might answer
        return Response(502, b"<html>Bad Gateway</html>", "text/html")

    c = Client.in_process(proxy)
    with pytest.raises(StatusError) as err:
        await c.resource("v1", "pods").list()
    assert err.value.code == 502
    assert "Bad Gateway" in err.value.message


async def test_list_selectors_all_namespaces_and_cluster_scope(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a", labels={"app": "web"}), "ns1")
    await cms.create(cm("b", labels={"app": "db"}), "ns1")
    await cms.create(cm("c", labels={"app": "web"}), "ns2")
    everything = await cms.list()
    assert everything["kind"] == "ConfigMapList"
    assert [o["metadata"]["name"] for o in everything["items"]] == ["a", "b", "c"]
    assert everything["metadata"]["resourceVersion"]
    in_ns1 = await cms.list("ns1")
    assert [o["metadata"]["name"] for o in in_ns1["items"]] == ["a", "b"]
    web = await cms.list(label_selector="app=web")
    assert [o["metadata"]["name"] for o in web["items"]] == ["a", "c"]
    named = await cms.list(field_selector="metadata.name=b")
    assert [o["metadata"]["name"] for o in named["items"]] == ["b"]
    nodes = client.resource("v1", "nodes", namespaced=False)
    await nodes.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    node_list = await nodes.list("ignored-for-cluster-scope")
    assert [o["metadata"]["name"] for o in node_list["items"]] == ["n1"]
    assert "namespace" not in node_list["items"][0]["metadata"]


async def test_list_pages_and_list_all_follows_continue(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    for i in range(7):
        await cms.create(cm(f"c{i}"), "ns")
    page = await cms.list("ns", limit=3)
    assert len(page["items"]) == 3 and page["metadata"]["continue"]
    page2 = await cms.list("ns", limit=3, continue_=page["metadata"]["continue"])
    assert [o["metadata"]["name"] for o in page2["items"]] == ["c3", "c4", "c5"]
    whole = await cms.list_all("ns", page_size=2)
    assert [o["metadata"]["name"] for o in whole["items"]] == [f"c{i}" for i in range(7)]
    assert "continue" not in whole["metadata"]
    pages = [r for r in fake.requests if r.query.get("continue")]
    assert len(pages) >= 3


async def test_list_all_falls_back_to_full_list_when_continue_expires(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    for i in range(4):
        await cms.create(cm(f"c{i}"), "ns")
    real = fake._route

    async def compact_after_first_page(req):
        resp = await real(req)
        if req.query.get("limit") and not req.query.get("continue"):
            fake.rv += 1  # writes elsewhere, then compaction past the page's snapshot
            fake.compact()
        return resp

    fake._route = compact_after_first_page  # type: ignore[method-assign]
    whole = await cms.list_all("ns", page_size=2)
    assert [o["metadata"]["name"] for o in whole["items"]] == ["c0", "c1", "c2", "c3"]
    assert not fake.requests[-1].query.get("limit")


async def test_create_dry_run_and_field_validation_are_sent(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    out = await cms.create(cm("dry"), "ns", dry_run=True, field_validation="Strict")
    assert out["metadata"]["name"] == "dry"
    assert fake.requests[-1].query == {"dryRun": "All", "fieldValidation": "Strict"}
    assert fake.requests[-1].headers["content-type"] == "application/json"
    with pytest.raises(StatusError):
        await cms.get("dry", "ns")


async def test_patch_types(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("p", a="1", b="2"), "ns")
    merged = await cms.patch("p", {"data": {"a": "10", "b": None}}, namespace="ns")
    assert merged["data"] == {"a": "10"}
    assert fake.requests[-1].headers["content-type"] == "application/merge-patch+json"
    await cms.patch("p", {"data": {"c": "3"}}, namespace="ns", patch_type="strategic")
    assert fake.requests[-1].headers["content-type"] == "application/strategic-merge-patch+json"
    jp = await cms.patch("p", [{"op": "add", "path": "/data/d", "value": "4"}], namespace="ns",
                         patch_type="json")
    assert jp["data"] == {"a": "10", "c": "3", "d": "4"}
    assert fake.requests[-1].headers["content-type"] == "application/json-patch+json"
    applied = await cms.patch("q", cm("q", x="1"), namespace="ns", patch_type="apply",
                              field_manager="me", force=True)
    assert applied["data"] == {"x": "1"}
    req = fake.requests[-1]
    assert req.headers["content-type"] == "application/apply-patch+yaml"
    assert req.query == {"fieldManager": "me", "force": "true"}
    with pytest.raises(ValueError):
        await cms.patch("q", {}, namespace="ns", patch_type="apply")
    with pytest.raises(ValueError):
        await cms.patch("q", {}, namespace="ns", patch_type="bogus")
    with pytest.raises(StatusError) as err:
        await cms.patch("q", [{"op": "remove", "path": "/data/nope"}], namespace="ns", patch_type="json")
    assert err.value.code == 422


async def test_delete_sends_delete_options_and_preconditions(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    created = await cms.create(cm("x"), "ns")
    with pytest.raises(StatusError) as err:
        await cms.delete("x", "ns", preconditions={"uid": "not-the-uid"})
    assert err.value.code == 409
    await cms.delete("x", "ns", propagation_policy="Foreground", grace_period_seconds=0,
                     preconditions={"uid": created["metadata"]["uid"]})
    import orjson

    opts = orjson.loads(fake.requests[-1].body)
    assert opts == {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground",
                    "gracePeriodSeconds": 0, "preconditions": {"uid": created["metadata"]["uid"]}}


async def test_delete_collection_by_label(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a", labels={"t": "1"}), "ns")
    await cms.create(cm("b", labels={"t": "2"}), "ns")
    await cms.delete_collection("ns", label_selector="t=1")
    left = await cms.list("ns")
    assert [o["metadata"]["name"] for o in left["items"]] == ["b"]


async def test_status_scale_and_binding_subresources(client: Client) -> None:
    deploys = client.resource("apps/v1", "deployments")
    d = await deploys.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                              "spec": {"replicas": 1}}, "ns")
    d["status"] = {"replicas": 1}
    d["spec"]["replicas"] = 99  # ignored by a status update
    after = await deploys.update_status(d)
    assert after["status"] == {"replicas": 1} and after["spec"]["replicas"] == 1
    scale = await deploys.get_subresource("web", "scale", "ns")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 1
    scale["spec"]["replicas"] = 3
    await deploys.update_subresource("web", "scale", scale, "ns")
    assert (await deploys.get("web", "ns"))["spec"]["replicas"] == 3

    pods = client.resource("v1", "pods")
    await pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}, "ns")
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p", "namespace": "ns"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}
    result = await pods.create_subresource("p", "binding", binding)
    assert result["status"] == "Success"
    assert (await pods.get("p", "ns"))["spec"]["nodeName"] == "node-1"
    with pytest.raises(StatusError) as err:
        await pods.create_subresource("p", "binding", binding)
    assert err.value.code == 409


async def test_watch_streams_events_in_order_with_bookmarks(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    listing = await cms.list("ns")
    got: list[tuple[str, str]] = []
    async with cms.watch("ns", resource_version=listing["metadata"]["resourceVersion"]) as w:
        await cms.create(cm("a"), "ns")
        await cms.create(cm("other"), "elsewhere")  # filtered by namespace
        obj = await cms.get("a", "ns")
        obj["data"] = {"k": "v"}
        await cms.update(obj)
        await cms.delete("a", "ns")
        async for etype, o in w:
            got.append((etype, o["metadata"].get("name", "")))
            if etype == "DELETED":
                fake.bookmark()
            if etype == "BOOKMARK":
                break
        assert w.resource_version == str(fake.rv)
    assert got == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a"), ("BOOKMARK", "")]
    req = [r for r in fake.requests if r.query.get("watch")][-1]
    assert req.query["allowWatchBookmarks"] == "true"


async def test_watch_label_selector_and_server_timeout(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a", labels={"app": "web"}), "ns")
    await cms.create(cm("b"), "ns")
    w = cms.watch(label_selector="app=web", timeout_seconds=1)
    names = [o["metadata"]["name"] async for _, o in w]  # ends when the server times the watch out
    assert names == ["a"]


async def test_watch_gone_raises_410(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a"), "ns")
    old_rv = str(fake.rv - 1)
    fake.compact()
    for as_event in (True, False):
        fake.gone_as_event = as_event
        with pytest.raises(StatusError) as err:
            async for _ in cms.watch("ns", resource_version=old_rv):
                pass
        assert err.value.code == 410


async def test_watch_close_unregisters_server_side(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    w = cms.watch("ns", resource_version=str(fake.rv))
    reader = asyncio.ensure_future(w.__anext__())
    from .conftest import eventually

    await eventually(lambda: fake.active_watches() == 1, what="watch registered")
    reader.cancel()
    await w.close()
    await eventually(lambda: fake.active_watches() == 0, what="watch gone")


async def test_for_kind_uses_discovery_and_caches_it(client: Client, fake: FakeAPI) -> None:
    deploys = await client.for_kind("apps/v1", "Deployment")
    assert isinstance(deploys, ResourceClient)
    assert (deploys.plural, deploys.namespaced) == ("deployments", True)
    nodes = await client.for_kind("v1", "Node")
    assert (nodes.plural, nodes.namespaced) == ("nodes", False)
    await client.for_kind("apps/v1", "Deployment")
    assert sum(1 for r in fake.requests if r.path == "/apis/apps/v1") == 1
    with pytest.raises(StatusError) as err:
        await client.for_kind("apps/v1", "Nope")
    assert err.value.code == 404
    with pytest.raises(StatusError):
        await client.for_kind("nogroup.io/v1", "Thing")


async def test_custom_resource_appearing_later_is_found(client: Client, fake: FakeAPI) -> None:
    with pytest.raises(StatusError):
        await client.for_kind("example.com/v1", "Widget")
    fake.add_resource("example.com", "v1", "widgets", "Widget")
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "ns"},
              "spec": {"size": 1}}
    created = await client.create_object(widget)
    assert created["metadata"]["resourceVersion"]
    assert fake.requests[-1].path == "/apis/example.com/v1/namespaces/ns/widgets"
    applied = await client.apply_object({**widget, "spec": {"size": 2}}, field_manager="ctl")
    assert applied["spec"] == {"size": 2}
    await client.delete_object(widget)
    with pytest.raises(StatusError):
        await (await client.for_kind("example.com/v1", "Widget")).get("w", "ns")
