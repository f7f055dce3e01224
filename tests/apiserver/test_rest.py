"""Upstream REST semantics of the API server, in-process over a real SqliteStore.

Metadata rules, finalizers and graceful deletion, optimistic concurrency,
status/scale/binding subresources, list selectors, pagination and
resourceVersion semantics, namespace lifecycle, versions sharing one storage,
and the Service allocators.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client
from kybernetes.controllers.manager import ControllerManager

from .conftest import call, cm, deployment, eventually, pod, start_api, stop_api

CMS = "/api/v1/namespaces/default/configmaps"
PODS = "/api/v1/namespaces/default/pods"
DEPLOYS = "/apis/apps/v1/namespaces/default/deployments"


def cms(client: Client):
    return client.resource("v1", "configmaps")


def rv(obj: dict) -> int:
    return int(obj["metadata"]["resourceVersion"])


# ---------------------------------------------------------------- 1. metadata


async def test_create_sets_uid_timestamp_and_generation(client: Client) -> None:
    d = await client.resource("apps/v1", "deployments").create(deployment("web"))
    m = d["metadata"]
    assert len(m["uid"]) == 36 and m["creationTimestamp"].endswith("Z")
    assert m["generation"] == 1 and m["namespace"] == "default"
    c = await cms(client).create(cm("a", {"k": "v"}))
    assert "generation" not in c["metadata"]  # a kind without spec has none
    # Client-supplied server fields are ignored.
    c2 = await cms(client).create(cm("b", uid="bogus", resourceVersion="5", creationTimestamp="2001-01-01T00:00:00Z"))
    assert c2["metadata"]["uid"] != "bogus" and c2["metadata"]["creationTimestamp"] != "2001-01-01T00:00:00Z"


async def test_generation_bumps_only_on_spec_change(client: Client) -> None:
    deps = client.resource("apps/v1", "deployments")
    d = await deps.create(deployment("web"))
    d["metadata"]["labels"] = {"x": "y"}
    d = await deps.update(d)
    assert d["metadata"]["generation"] == 1
    d = await deps.patch("web", {"metadata": {"annotations": {"a": "b"}}})
    assert d["metadata"]["generation"] == 1
    d = await deps.patch("web", {"status": {"replicas": 3}}, subresource="status")
    assert d["metadata"]["generation"] == 1 and d["status"]["replicas"] == 3
    d = await deps.patch("web", {"spec": {"replicas": 4}})
    assert d["metadata"]["generation"] == 2
    # Clients cannot set generation themselves.
    d["metadata"]["generation"] = 40
    d = await deps.update(d)
    assert d["metadata"]["generation"] == 2


async def test_generate_name_is_unique(client: Client) -> None:
    names = set()
    for _ in range(30):
        o = await cms(client).create({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"generateName": "gen-"}})
        assert o["metadata"]["name"].startswith("gen-") and len(o["metadata"]["name"]) == 9
        assert o["metadata"]["generateName"] == "gen-"
        names.add(o["metadata"]["name"])
    assert len(names) == 30


async def test_resource_version_changes_on_every_write_and_noop_does_not_write(client: Client) -> None:
    a = await cms(client).create(cm("a", {"k": "1"}))
    b = await cms(client).update({**a, "data": {"k": "2"}})
    assert rv(b) > rv(a)
    c = await cms(client).patch("a", {"data": {"k": "3"}})
    assert rv(c) > rv(b)
    # The same content again: nothing is written, the resourceVersion stays.
    same = await cms(client).update(c)
    assert rv(same) == rv(c)
    same = await cms(client).patch("a", {"data": {"k": "3"}})
    assert rv(same) == rv(c)
    assert rv(await cms(client).get("a")) == rv(c)
    lst = await cms(client).list()
    assert int(lst["metadata"]["resourceVersion"]) >= rv(c)


async def test_invalid_labels_and_annotations_are_422_with_causes(api: APIServer) -> None:
    code, st = await call(api, "POST", CMS, cm("bad", labels={"a b": "x", "ok": "-bad-"}))
    assert code == 422 and st["reason"] == "Invalid" and st["kind"] == "Status"
    fields = {c["field"] for c in st["details"]["causes"]}
    assert "metadata.labels" in fields
    assert st["message"].startswith('ConfigMap "bad" is invalid: ')
    code, st = await call(api, "POST", CMS, cm("bad2", annotations={"/x": "y"}))
    assert code == 422 and any(c["field"] == "metadata.annotations" for c in st["details"]["causes"])
    code, st = await call(api, "POST", CMS, cm("Bad_Name"))
    assert code == 422 and st["details"]["causes"][0]["field"] == "metadata.name"
    # An invalid label on update is refused as well, and nothing is written.
    code, good = await call(api, "POST", CMS, cm("good"))
    assert code == 201
    code, st = await call(api, "PATCH", CMS + "/good", {"metadata": {"labels": {"k": "v" * 64}}},
                          content_type="application/merge-patch+json")
    assert code == 422
    code, cur = await call(api, "GET", CMS + "/good")
    assert cur["metadata"]["resourceVersion"] == good["metadata"]["resourceVersion"]


# ---------------------------------------------------------------- 2. finalizers and deletion


async def test_finalizers_keep_object_until_removed(api: APIServer, client: Client) -> None:
    await cms(client).create(cm("f", finalizers=["example.com/hold"]))
    code, body = await call(api, "DELETE", CMS + "/f")
    assert code == 200
    assert body["kind"] == "ConfigMap" and body["metadata"]["deletionTimestamp"]
    cur = await cms(client).get("f")
    assert cur["metadata"]["deletionTimestamp"] == body["metadata"]["deletionTimestamp"]
    assert cur["metadata"]["finalizers"] == ["example.com/hold"]
    # Deleting again changes nothing.
    code, again = await call(api, "DELETE", CMS + "/f")
    assert code == 200 and again["metadata"]["deletionTimestamp"] == cur["metadata"]["deletionTimestamp"]
    # No new finalizers while deleting.
    code, st = await call(api, "PATCH", CMS + "/f", {"metadata": {"finalizers": ["example.com/hold", "more"]}},
                          content_type="application/merge-patch+json")
    assert code == 422 and st["reason"] == "Invalid"
    assert any(c["field"] == "metadata.finalizers" for c in st["details"]["causes"])
    # Other updates still work while deleting, and deletionTimestamp cannot be cleared.
    cur = await cms(client).patch("f", {"data": {"x": "y"}, "metadata": {"deletionTimestamp": None}})
    assert cur["metadata"]["deletionTimestamp"] and cur["data"] == {"x": "y"}
    # Removing the last finalizer deletes the object.
    await cms(client).patch("f", {"metadata": {"finalizers": None}})
    with pytest.raises(StatusError) as ei:
        await cms(client).get("f")
    assert ei.value.code == 404


async def test_finalizer_removed_by_update_deletes(client: Client) -> None:
    await cms(client).create(cm("u", finalizers=["a/b", "c/d"]))
    await cms(client).delete("u")
    cur = await cms(client).get("u")
    cur["metadata"]["finalizers"] = ["c/d"]
    cur = await cms(client).update(cur)
    assert cur["metadata"]["finalizers"] == ["c/d"]
    cur["metadata"]["finalizers"] = []
    await cms(client).update(cur)
    with pytest.raises(StatusError) as ei:
        await cms(client).get("u")
    assert ei.value.code == 404


async def test_delete_without_finalizers_returns_status_and_removes(api: APIServer, client: Client) -> None:
    created = await cms(client).create(cm("plain"))
    code, body = await call(api, "DELETE", CMS + "/plain")
    # ConfigMaps answer with a Status naming what went, as upstream.
    assert code == 200 and body["kind"] == "Status" and body["status"] == "Success"
    assert body["details"] == {"name": "plain", "kind": "configmaps", "uid": created["metadata"]["uid"]}
    code, st = await call(api, "DELETE", CMS + "/plain")
    assert code == 404 and st["message"] == 'configmaps "plain" not found'


async def test_delete_pod_returns_the_deleted_object(api: APIServer, client: Client) -> None:
    pods = client.resource("v1", "pods")
    await pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gone", "namespace": "default"},
                       "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    code, body = await call(api, "DELETE", "/api/v1/namespaces/default/pods/gone")
    assert code == 200 and body["kind"] == "Pod" and body["metadata"]["name"] == "gone"
    assert "generation" not in body["metadata"]


async def test_delete_preconditions(api: APIServer, client: Client) -> None:
    o = await cms(client).create(cm("p"))
    code, st = await call(api, "DELETE", CMS + "/p", {"preconditions": {"uid": "other-uid"}})
    assert code == 409 and st["reason"] == "Conflict"
    assert st["message"] == (f'Operation cannot be fulfilled on configmaps "p": Precondition failed: '
                             f'UID in precondition: other-uid, UID in object meta: {o["metadata"]["uid"]}')
    code, st = await call(api, "DELETE", CMS + "/p", {"preconditions": {"resourceVersion": "1"}})
    assert code == 409 and st["reason"] == "Conflict"
    assert st["message"] == (f'Operation cannot be fulfilled on configmaps "p": Precondition failed: '
                             f'ResourceVersion in precondition: 1, ResourceVersion in object meta: '
                             f'{o["metadata"]["resourceVersion"]}')
    await cms(client).get("p")
    code, _ = await call(api, "DELETE", CMS + "/p", {"preconditions": {
        "uid": o["metadata"]["uid"], "resourceVersion": o["metadata"]["resourceVersion"]}})
    assert code == 200


async def test_propagation_policy_is_validated(api: APIServer, client: Client) -> None:
    await cms(client).create(cm("pp"))
    code, st = await call(api, "DELETE", CMS + "/pp", {"propagationPolicy": "Sideways"})
    assert code == 422 and st["reason"] == "Invalid"
    assert st["message"] == ('DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: Unsupported value: '
                             '"Sideways": supported values: "Foreground", "Background", "Orphan", "nil"')
    code, st = await call(api, "DELETE", CMS + "/pp", None, {"propagationPolicy": "Nope"})
    assert code == 422
    code, st = await call(api, "DELETE", CMS + "/pp", {"propagationPolicy": "Orphan", "orphanDependents": True})
    assert code == 422 and "cannot be both set" in st["message"]
    code, st = await call(api, "DELETE", CMS + "/pp", None, {"gracePeriodSeconds": "soon"})
    assert code == 400
    await cms(client).get("pp")
    code, _ = await call(api, "DELETE", CMS + "/pp", {"propagationPolicy": "Background"})
    assert code == 200
    # The deprecated orphanDependents=false on an object that stays (finalizer): 202 Accepted.
    await cms(client).create(cm("held", finalizers=["example.com/x"]))
    code, body = await call(api, "DELETE", CMS + "/held", {"orphanDependents": False})
    assert code == 202 and body["metadata"]["deletionTimestamp"]


async def test_dry_run_writes_nothing(api: APIServer, client: Client) -> None:
    before = await api.store.current_revision()
    code, o = await call(api, "POST", CMS, cm("dry"), {"dryRun": "All"})
    assert code == 201 and o["metadata"]["name"] == "dry"
    code, _ = await call(api, "GET", CMS + "/dry")
    assert code == 404
    assert await api.store.current_revision() == before
    real = await cms(client).create(cm("real", {"a": "1"}))
    before = await api.store.current_revision()
    code, o = await call(api, "PUT", CMS + "/real", {**real, "data": {"a": "2"}}, {"dryRun": "All"})
    assert code == 200 and o["data"] == {"a": "2"}
    code, o = await call(api, "PATCH", CMS + "/real", {"data": {"a": "3"}}, {"dryRun": "All"},
                         content_type="application/merge-patch+json")
    assert code == 200 and o["data"] == {"a": "3"}
    code, _ = await call(api, "DELETE", CMS + "/real", None, {"dryRun": "All"})
    assert code == 200
    code, _ = await call(api, "DELETE", CMS + "/real", {"dryRun": ["All"]})
    assert code == 200
    assert await api.store.current_revision() == before
    assert (await cms(client).get("real"))["data"] == {"a": "1"}


# ---------------------------------------------------------------- 3. optimistic concurrency


async def test_stale_update_conflicts(api: APIServer, client: Client) -> None:
    o = await cms(client).create(cm("c", {"v": "0"}))
    await cms(client).update({**o, "data": {"v": "1"}})
    code, st = await call(api, "PUT", CMS + "/c", {**o, "data": {"v": "2"}})
    assert code == 409 and st["reason"] == "Conflict"
    assert st["message"] == ('Operation cannot be fulfilled on configmaps "c": the object has been modified; '
                             'please apply your changes to the latest version and try again')
    assert st["details"] == {"name": "c", "kind": "configmaps"}
    # A patch carrying a stale resourceVersion is a precondition too.
    code, st = await call(api, "PATCH", CMS + "/c", {"metadata": {"resourceVersion": o["metadata"][
        "resourceVersion"]}, "data": {"v": "3"}}, content_type="application/merge-patch+json")
    assert code == 409 and st["reason"] == "Conflict"
    assert (await cms(client).get("c"))["data"] == {"v": "1"}


async def test_update_without_resource_version_is_unconditional(client: Client) -> None:
    o = await cms(client).create(cm("u", {"v": "0"}))
    await cms(client).update({**o, "data": {"v": "1"}})
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"}, "data": {"v": "2"}}
    out = await cms(client).update(body)
    assert out["data"] == {"v": "2"} and out["metadata"]["uid"] == o["metadata"]["uid"]


async def test_concurrent_patches_all_apply(client: Client) -> None:
    await cms(client).create(cm("many"))
    await asyncio.gather(*(cms(client).patch("many", {"data": {f"k{i}": str(i)}}) for i in range(40)))
    assert (await cms(client).get("many"))["data"] == {f"k{i}": str(i) for i in range(40)}
    await cms(client).create(cm("jp", {"n": "0"}))
    await asyncio.gather(*(cms(client).patch("jp", [{"op": "add", "path": f"/data/j{i}", "value": "x"}],
                                             patch_type="json") for i in range(20)))
    assert len((await cms(client).get("jp"))["data"]) == 21


async def test_kubectl_server_side_apply_keeps_last_applied_current(client: Client) -> None:
    """An object made by client-side apply carries last-applied-configuration; kubectl's
    server-side apply rewrites it to what it applied, other managers leave it alone."""
    la = "kubectl.kubernetes.io/last-applied-configuration"
    old_cfg = '{"apiVersion":"v1","data":{"v":"1"},"kind":"ConfigMap","metadata":{"name":"la"}}'
    await cms(client).create({**cm("la", {"v": "1"}), "metadata": {"name": "la", "annotations": {la: old_cfg}}})
    cfg = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "la", "labels": {"a": "b"}},
           "data": {"v": "2"}}
    out = await cms(client).patch("la", cfg, patch_type="apply", field_manager="other", force=True)
    assert out["metadata"]["annotations"][la] == old_cfg
    out = await cms(client).patch("la", cfg, patch_type="apply", field_manager="kubectl", force=True)
    assert out["data"] == {"v": "2"}
    assert json.loads(out["metadata"]["annotations"][la]) == cfg
    # Without the annotation there is nothing to keep current, and none is added.
    await cms(client).patch("fresh", {**cfg, "metadata": {"name": "fresh"}}, patch_type="apply",
                            field_manager="kubectl")
    out = await cms(client).patch("fresh", {**cfg, "metadata": {"name": "fresh"}}, patch_type="apply",
                                  field_manager="kubectl")
    assert la not in (out["metadata"].get("annotations") or {})


# ---------------------------------------------------------------- 4. subresources


async def test_status_subresource_changes_only_status(client: Client) -> None:
    deps = client.resource("apps/v1", "deployments")
    d = await deps.create(deployment("s", 2))
    # The main resource ignores status.
    d["status"] = {"replicas": 9}
    d = await deps.update(d)
    assert d["status"].get("replicas") in (None, 0)
    # The status subresource ignores spec but takes status, labels and annotations.
    body = {**d, "spec": {**d["spec"], "replicas": 7}, "status": {"replicas": 2, "readyReplicas": 1}}
    body["metadata"] = {**d["metadata"], "labels": {"from": "status"}}
    s = await deps.update_status(body)
    assert s["spec"]["replicas"] == 2 and s["status"]["replicas"] == 2 and s["status"]["readyReplicas"] == 1
    assert s["metadata"]["labels"] == {"from": "status"} and s["metadata"]["generation"] == 1
    p = await deps.patch("s", {"spec": {"replicas": 5}, "status": {"readyReplicas": 2}}, subresource="status")
    assert p["spec"]["replicas"] == 2 and p["status"]["readyReplicas"] == 2
    assert (await deps.get_subresource("s", "status"))["status"]["readyReplicas"] == 2


@pytest.mark.parametrize("plural", ["deployments", "replicasets", "statefulsets"])
async def test_scale_subresource(api: APIServer, client: Client, plural: str) -> None:
    obj = deployment("sc", 2)
    obj["kind"] = {"deployments": "Deployment", "replicasets": "ReplicaSet", "statefulsets": "StatefulSet"}[plural]
    if plural == "statefulsets":
        obj["spec"]["serviceName"] = "sc"
    rc = client.resource("apps/v1", plural)
    created = await rc.create(obj)
    scale = await rc.get_subresource("sc", "scale")
    assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
    assert scale["spec"]["replicas"] == 2 and scale["status"]["selector"] == "app=sc"
    assert scale["metadata"]["uid"] == created["metadata"]["uid"]
    scale["spec"]["replicas"] = 5
    out = await rc.update_subresource("sc", "scale", scale)
    assert out["spec"]["replicas"] == 5
    assert (await rc.get("sc"))["spec"]["replicas"] == 5
    out = await rc.patch("sc", {"spec": {"replicas": 1}}, subresource="scale")
    assert out["spec"]["replicas"] == 1
    assert (await rc.get("sc"))["metadata"]["generation"] == 3
    # A stale resourceVersion in the Scale is a conflict; a negative count is invalid.
    code, st = await call(api, "PUT", f"/apis/apps/v1/namespaces/default/{plural}/sc/scale", scale)
    assert code == 409 and st["reason"] == "Conflict"
    code, st = await call(api, "PATCH", f"/apis/apps/v1/namespaces/default/{plural}/sc/scale",
                          {"spec": {"replicas": -1}}, content_type="application/merge-patch+json")
    assert code == 422 and st["reason"] == "Invalid"
    code, st = await call(api, "GET", f"/apis/apps/v1/namespaces/default/{plural}/nope/scale")
    assert code == 404


async def test_pod_binding(api: APIServer, client: Client) -> None:
    pods = client.resource("v1", "pods")
    await pods.create(pod("b"))
    binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "b"},
               "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}
    code, st = await call(api, "POST", PODS + "/b/binding", binding)
    assert code == 201 and st["status"] == "Success"
    p = await pods.get("b")
    assert p["spec"]["nodeName"] == "node-1"
    cond = [c for c in p["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert cond and cond[0]["status"] == "True"
    code, st = await call(api, "POST", PODS + "/b/binding", {**binding, "target": {"name": "node-2"}})
    assert code == 409 and st["reason"] == "Conflict"
    assert "is already assigned to node" in st["message"]
    assert (await pods.get("b"))["spec"]["nodeName"] == "node-1"
    # nodeName is immutable through a plain update too.
    code, st = await call(api, "PATCH", PODS + "/b", {"spec": {"nodeName": "node-3"}},
                          content_type="application/merge-patch+json")
    assert code == 422


# ---------------------------------------------------------------- 5. list


async def _names(client: Client, plural: str = "configmaps", **kw) -> list[str]:
    lst = await client.resource("v1", plural).list("default", **kw)
    return sorted(i["metadata"]["name"] for i in lst["items"])


async def test_label_selectors(client: Client) -> None:
    await cms(client).create(cm("a", labels={"env": "prod", "tier": "web"}))
    await cms(client).create(cm("b", labels={"env": "dev", "tier": "web"}))
    await cms(client).create(cm("c", labels={"env": "qa"}))
    await cms(client).create(cm("d"))
    assert await _names(client, label_selector="env=prod") == ["a"]
    assert await _names(client, label_selector="env==prod") == ["a"]
    assert await _names(client, label_selector="env!=prod") == ["b", "c", "d"]
    assert await _names(client, label_selector="env in (dev,qa)") == ["b", "c"]
    assert await _names(client, label_selector="env notin (dev,qa)") == ["a", "d"]
    assert await _names(client, label_selector="tier") == ["a", "b"]
    assert await _names(client, label_selector="!tier") == ["c", "d"]
    assert await _names(client, label_selector="tier=web,env=dev") == ["b"]
    with pytest.raises(StatusError) as ei:
        await _names(client, label_selector="env in (")
    assert ei.value.code == 400


async def test_field_selectors(api: APIServer, client: Client) -> None:
    pods = client.resource("v1", "pods")
    await pods.create(pod("p1"))
    await pods.create(pod("p2", nodeName="n1"))
    await pods.patch("p2", {"status": {"phase": "Running"}}, subresource="status")
    assert await _names(client, "pods", field_selector="spec.nodeName=n1") == ["p2"]
    assert await _names(client, "pods", field_selector="spec.nodeName=") == ["p1"]
    assert await _names(client, "pods", field_selector="status.phase=Running") == ["p2"]
    assert await _names(client, "pods", field_selector="status.phase!=Running") == ["p1"]
    assert await _names(client, "pods", field_selector="metadata.name=p1") == ["p1"]
    assert await _names(client, "pods", field_selector="metadata.namespace=default,metadata.name!=p1") == ["p2"]
    ev = client.resource("v1", "events")
    for i, (kind, name) in enumerate([("Pod", "p1"), ("Pod", "p2"), ("Node", "p1")]):
        await ev.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"e{i}"},
                         "involvedObject": {"kind": kind, "name": name, "namespace": "default"},
                         "reason": "Test", "message": "m", "type": "Normal"})
    assert await _names(client, "events", field_selector="involvedObject.name=p1") == ["e0", "e2"]
    assert await _names(client, "events", field_selector="involvedObject.kind=Pod,involvedObject.name=p1") == ["e0"]
    sec = client.resource("v1", "secrets")
    await sec.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "type": "Opaque"})
    await sec.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s2"},
                      "type": "kubernetes.io/basic-auth", "stringData": {"username": "u", "password": "p"}})
    assert await _names(client, "secrets", field_selector="type=kubernetes.io/basic-auth") == ["s2"]
    code, st = await call(api, "GET", PODS, query={"fieldSelector": "spec.bogus=1"})
    assert code == 400 and st["reason"] == "BadRequest"
    assert st["message"] == "field label not supported: spec.bogus"
    code, st = await call(api, "GET", "/api/v1/nodes", query={"fieldSelector": "metadata.namespace=x"})
    assert code == 400 and st["message"] == "field label not supported: metadata.namespace"
    code, st = await call(api, "GET", CMS, query={"fieldSelector": "data.x=1"})
    assert code == 400 and st["message"] == "field label not supported: data.x"
    # Watches check the field label too.
    code, st = await call(api, "GET", CMS, query={"fieldSelector": "data.x=1", "watch": "true"})
    assert code == 400


async def test_pagination_is_a_consistent_snapshot(client: Client) -> None:
    for i in range(10):
        await cms(client).create(cm(f"c{i:02d}", {"v": "0"}))
    first = await cms(client).list("default", limit=4)
    snap_rv = first["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in first["items"]] == ["c00", "c01", "c02", "c03"]
    assert first["metadata"]["continue"]
    # Writes between pages are not visible in later pages.
    await cms(client).delete("c05")
    await cms(client).patch("c06", {"data": {"v": "1"}})
    await cms(client).create(cm("c99"))
    names = [i["metadata"]["name"] for i in first["items"]]
    token = first["metadata"]["continue"]
    while token:
        page = await cms(client).list("default", limit=4, continue_=token)
        assert page["metadata"]["resourceVersion"] == snap_rv
        for i in page["items"]:
            if i["metadata"]["name"] == "c06":
                assert i["data"] == {"v": "0"}
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == [f"c{i:02d}" for i in range(10)]
    # A later full list sees the writes.
    assert "c05" not in await _names(client) and "c99" in await _names(client)
    # Limit with a selector: pages hold only matching items.
    full = await cms(client).list_all("default", page_size=3, label_selector="!nope")
    assert len(full["items"]) == 10 and "continue" not in full["metadata"]


async def test_list_resource_version_semantics(api: APIServer, client: Client) -> None:
    a = await cms(client).create(cm("a", {"v": "1"}))
    at_create = a["metadata"]["resourceVersion"]
    await cms(client).patch("a", {"data": {"v": "2"}})
    # "" is a consistent (latest) read.
    latest = await cms(client).list("default")
    assert latest["items"][0]["data"] == {"v": "2"}
    assert int(latest["metadata"]["resourceVersion"]) >= rv(latest["items"][0])
    # "0": any (cached) state is fine; ours is current.
    any_ = await cms(client).list("default", resource_version="0")
    assert any_["items"][0]["data"] == {"v": "2"}
    # NotOlderThan: at least that revision.
    nt = await cms(client).list("default", resource_version=at_create, resource_version_match="NotOlderThan")
    assert int(nt["metadata"]["resourceVersion"]) >= int(at_create) and nt["items"][0]["data"] == {"v": "2"}
    # Exact: the state at that revision.
    ex = await cms(client).list("default", resource_version=at_create, resource_version_match="Exact")
    assert ex["metadata"]["resourceVersion"] == at_create and ex["items"][0]["data"] == {"v": "1"}
    # Option combinations upstream refuses are 422 on ListOptions.
    code, st = await call(api, "GET", CMS, query={"resourceVersion": "1", "resourceVersionMatch": "Sometime"})
    assert code == 422 and st["reason"] == "Invalid"
    assert st["message"] == ('ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Unsupported value: '
                             '"Sometime": supported values: "Exact", "NotOlderThan", ""')
    code, st = await call(api, "GET", CMS, query={"resourceVersionMatch": "Exact"})
    assert code == 422 and "resourceVersionMatch is forbidden unless resourceVersion is provided" in st["message"]
    code, st = await call(api, "GET", CMS, query={"resourceVersion": "0", "resourceVersionMatch": "Exact"})
    assert code == 422
    code, st = await call(api, "GET", CMS, query={"sendInitialEvents": "true"})
    assert code == 422 and "sendInitialEvents is forbidden for list" in st["message"]
    code, st = await call(api, "GET", CMS, query={"resourceVersion": "abc"})
    assert code == 400
    # A version from the future: 504 with cause ResourceVersionTooLarge.
    code, st = await call(api, "GET", CMS, query={"resourceVersion": str(10 ** 9),
                                                   "resourceVersionMatch": "Exact"})
    assert code == 504 and st["reason"] == "Timeout"
    assert st["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
    # A version compacted away: 410.
    await api.store.compact(await api.store.current_revision())
    code, st = await call(api, "GET", CMS, query={"resourceVersion": at_create, "resourceVersionMatch": "Exact"})
    assert code == 410 and st["reason"] == "Expired"
    assert st["message"] == "The resourceVersion for the provided list is too old."


async def test_continue_after_compaction_is_410(api: APIServer, client: Client) -> None:
    for i in range(6):
        await cms(client).create(cm(f"x{i}"))
    first = await cms(client).list("default", limit=2)
    token = first["metadata"]["continue"]
    for i in range(3):
        await cms(client).patch("x0", {"data": {"n": str(i)}})
    await api.store.compact(await api.store.current_revision())
    code, st = await call(api, "GET", CMS, query={"limit": "2", "continue": token})
    assert code == 410 and st["reason"] == "Expired"
    assert st["message"].startswith("The provided continue parameter is too old")
    code, st = await call(api, "GET", CMS, query={"limit": "2", "continue": "!!garbage"})
    assert code == 400
    # list_all recovers with a fresh list.
    assert len((await cms(client).list_all("default", page_size=2))["items"]) == 6


# ---------------------------------------------------------------- 7. namespaces


async def test_create_in_missing_namespace_is_404(api: APIServer) -> None:
    code, st = await call(api, "POST", "/api/v1/namespaces/x/configmaps", cm("a"))
    assert code == 404 and st["reason"] == "NotFound" and st["message"] == 'namespaces "x" not found'


async def test_immortal_namespaces(api: APIServer) -> None:
    for ns in ("default", "kube-system", "kube-public"):
        code, st = await call(api, "DELETE", f"/api/v1/namespaces/{ns}")
        assert code == 403 and st["reason"] == "Forbidden", ns
        assert st["message"] == f'namespaces "{ns}" is forbidden: this namespace may not be deleted'
    assert (await call(api, "GET", "/api/v1/namespaces/default"))[1]["status"]["phase"] == "Active"


async def test_namespace_deletion_lifecycle(tmp_path: Path) -> None:
    api = await start_api(tmp_path)
    mgr = ControllerManager.in_process(api)
    client = Client.in_process(api.handle)
    try:
        nsr = client.resource("v1", "namespaces", namespaced=False)
        ns = await nsr.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}})
        assert ns["spec"]["finalizers"] == ["kubernetes"] and ns["status"]["phase"] == "Active"
        await cms(client).create(cm("a"), "doomed")
        await cms(client).create(cm("held", finalizers=["example.com/x"]), "doomed")
        code, body = await call(api, "DELETE", "/api/v1/namespaces/doomed")
        assert code == 200 and body["status"]["phase"] == "Terminating"
        assert body["metadata"]["deletionTimestamp"]
        code, st = await call(api, "POST", "/api/v1/namespaces/doomed/configmaps", cm("late"))
        assert code == 403 and st["reason"] == "Forbidden"
        assert st["message"] == ('configmaps "late" is forbidden: unable to create new content in namespace '
                                 'doomed because it is being terminated')
        await mgr.start()

        async def held_marked() -> bool:
            try:
                return bool((await cms(client).get("held", "doomed"))["metadata"].get("deletionTimestamp"))
            except StatusError:
                return False
        await eventually(held_marked, what="namespace controller deletes content")
        assert (await nsr.get("doomed"))["status"]["phase"] == "Terminating"
        await cms(client).patch("held", {"metadata": {"finalizers": None}}, namespace="doomed")

        async def gone() -> bool:
            try:
                await nsr.get("doomed")
                return False
            except StatusError as e:
                return e.code == 404
        await eventually(gone, what="namespace removed")
    finally:
        await mgr.stop()
        await client.close()
        await stop_api(api)


# ---------------------------------------------------------------- 8. versions sharing storage


HPA_V1 = {"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h1"},
          "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                   "minReplicas": 1, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60}}

HPA_V2 = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "h2"},
          "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                   "minReplicas": 2, "maxReplicas": 4,
                   "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                       "type": "Utilization", "averageUtilization": 70}}}]}}


async def test_hpa_v1_and_v2_share_storage(client: Client) -> None:
    v1 = client.resource("autoscaling/v1", "horizontalpodautoscalers")
    v2 = client.resource("autoscaling/v2", "horizontalpodautoscalers")
    made = await v1.create(HPA_V1)
    assert made["apiVersion"] == "autoscaling/v1" and made["spec"]["targetCPUUtilizationPercentage"] == 60
    as2 = await v2.get("h1")
    assert as2["apiVersion"] == "autoscaling/v2"
    assert as2["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": {
        "type": "Utilization", "averageUtilization": 60}}}]
    assert "targetCPUUtilizationPercentage" not in as2["spec"]
    await v2.create(HPA_V2)
    as1 = await v1.get("h2")
    assert as1["apiVersion"] == "autoscaling/v1" and as1["spec"]["targetCPUUtilizationPercentage"] == 70
    assert "metrics" not in as1["spec"]
    # Update through v1, read through v2.
    as1["spec"]["targetCPUUtilizationPercentage"] = 80
    await v1.update(as1)
    assert (await v2.get("h2"))["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 80
    # Patch through v1.
    await v1.patch("h1", {"spec": {"targetCPUUtilizationPercentage": 65}})
    assert (await v2.get("h1"))["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 65
    # Lists in each version carry that version.
    l1, l2 = await v1.list("default"), await v2.list("default")
    assert l1["kind"] == "HorizontalPodAutoscalerList" and l1["apiVersion"] == "autoscaling/v1"
    assert {i["apiVersion"] for i in l1["items"]} == {"autoscaling/v1"}
    assert {i["apiVersion"] for i in l2["items"]} == {"autoscaling/v2"}
    assert sorted(i["spec"]["targetCPUUtilizationPercentage"] for i in l1["items"]) == [65, 80]
    # Watch in v1 converts the events.
    async with v1.watch("default", resource_version=l1["metadata"]["resourceVersion"]) as w:
        await v2.patch("h2", {"spec": {"maxReplicas": 9}})
        async for typ, obj in w:
            if typ == "BOOKMARK":
                continue
            assert typ == "MODIFIED" and obj["apiVersion"] == "autoscaling/v1"
            assert obj["spec"]["maxReplicas"] == 9 and obj["spec"]["targetCPUUtilizationPercentage"] == 80
            break


async def test_core_event_readable_as_events_k8s_io(client: Client) -> None:
    core = client.resource("v1", "events")
    new = client.resource("events.k8s.io/v1", "events")
    await core.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "e1"},
                       "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                       "reason": "Pulled", "message": "pulled the image", "type": "Normal",
                       "source": {"component": "kubelet"}})
    e = await new.get("e1")
    assert e["apiVersion"] == "events.k8s.io/v1"
    assert e["note"] == "pulled the image" and e["regarding"]["name"] == "p" and e["reason"] == "Pulled"
    assert "message" not in e and "involvedObject" not in e
    await new.create({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e2"},
                      "eventTime": "2024-01-01T00:00:00.000000Z", "reportingController": "x.io/ctl",
                      "reportingInstance": "ctl-1", "action": "Scale",
                      "regarding": {"kind": "Deployment", "name": "web", "namespace": "default"},
                      "reason": "Scaled", "note": "scaled up", "type": "Normal"})
    e2 = await core.get("e2")
    assert e2["apiVersion"] == "v1" and e2["message"] == "scaled up"
    assert e2["involvedObject"]["name"] == "web" and e2["involvedObject"]["kind"] == "Deployment"
    lst = await new.list("default")
    assert lst["apiVersion"] == "events.k8s.io/v1" and sorted(i["note"] for i in lst["items"]) == [
        "pulled the image", "scaled up"]
    async with new.watch("default", resource_version=lst["metadata"]["resourceVersion"]) as w:
        await core.patch("e1", {"message": "again"})
        async for typ, obj in w:
            if typ == "BOOKMARK":
                continue
            assert typ == "MODIFIED" and obj["apiVersion"] == "events.k8s.io/v1" and obj["note"] == "again"
            break


# ---------------------------------------------------------------- 9. services


def svc(name: str, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": name}, **spec}}


async def test_service_allocation(api: APIServer, client: Client) -> None:
    svcs = client.resource("v1", "services")
    net = ipaddress.ip_network("10.96.0.0/12")
    ips = set()
    for i in range(15):
        s = await svcs.create(svc(f"s{i}"))
        ip = s["spec"]["clusterIP"]
        assert ipaddress.ip_address(ip) in net and s["spec"]["clusterIPs"] == [ip]
        ips.add(ip)
    ips.add((await svcs.get("kubernetes"))["spec"]["clusterIP"])
    assert len(ips) == 16 and "10.96.0.1" in ips
    np = await svcs.create(svc("np", type="NodePort"))
    port = np["spec"]["ports"][0]["nodePort"]
    assert 30000 <= port <= 32767
    # An update without nodePort keeps it; clusterIP cannot change.
    np2 = await svcs.patch("np", {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}})
    assert np2["spec"]["ports"][0]["nodePort"] == port
    assert np2["spec"]["clusterIP"] == np["spec"]["clusterIP"]
    code, st = await call(api, "PATCH", "/api/v1/namespaces/default/services/np",
                          {"spec": {"clusterIP": "10.96.0.77", "clusterIPs": ["10.96.0.77"]}},
                          content_type="application/merge-patch+json")
    assert code == 422 and st["reason"] == "Invalid"
    assert (await svcs.get("np"))["spec"]["clusterIP"] == np["spec"]["clusterIP"]
    # A requested clusterIP already in use, or outside the range, is refused.
    code, st = await call(api, "POST", "/api/v1/namespaces/default/services",
                          svc("dup", clusterIP=np["spec"]["clusterIP"]))
    assert code == 422 and "already allocated" in st["message"]
    code, st = await call(api, "POST", "/api/v1/namespaces/default/services", svc("out", clusterIP="192.168.0.1"))
    assert code == 422
    ext = await svcs.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
                             "spec": {"type": "ExternalName", "externalName": "example.com"}})
    assert "clusterIP" not in ext["spec"] and "clusterIPs" not in ext["spec"]
    headless = await svcs.create(svc("hl", clusterIP="None"))
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["clusterIPs"] == ["None"]
    headless = await svcs.patch("hl", {"metadata": {"labels": {"a": "b"}}})
    assert headless["spec"]["clusterIP"] == "None"
    # A deleted service's IP can be requested again.
    freed = (await svcs.get("s0"))["spec"]["clusterIP"]
    await svcs.delete("s0")
    again = await svcs.create(svc("again", clusterIP=freed))
    assert again["spec"]["clusterIP"] == freed
    # A requested node port in use is refused too.
    code, st = await call(api, "POST", "/api/v1/namespaces/default/services",
                          svc("np2", type="NodePort", ports=[{"port": 80, "nodePort": port}]))
    assert code == 422 and "provided port is already allocated" in st["message"]
    # A dry run allocates nothing for good.
    code, dry = await call(api, "POST", "/api/v1/namespaces/default/services", svc("dry", clusterIP="10.96.5.5"),
                           {"dryRun": "All"})
    assert code == 201 and dry["spec"]["clusterIP"] == "10.96.5.5"
    assert (await svcs.create(svc("real", clusterIP="10.96.5.5")))["spec"]["clusterIP"] == "10.96.5.5"


async def test_concurrent_service_creates_get_distinct_addresses(tmp_path: Path) -> None:
    # A tiny range makes collisions certain unless in-flight allocations are respected.
    api = await start_api(tmp_path, service_cidr="10.0.0.0/27")
    client = Client.in_process(api.handle)
    try:
        svcs = client.resource("v1", "services")
        # 10.0.0.1 is the kubernetes service's; the other 29 host addresses are free.
        made = await asyncio.gather(*(svcs.create(svc(f"c{i}", type="NodePort")) for i in range(29)))
        ips = [m["spec"]["clusterIP"] for m in made]
        ports = [m["spec"]["ports"][0]["nodePort"] for m in made]
        assert len(set(ips)) == 29 and "10.0.0.1" not in ips and len(set(ports)) == 29
        code, st = await call(api, "POST", "/api/v1/namespaces/default/services", svc("full"))
        assert code == 500 and st["message"] == ("Internal error occurred: failed to allocate a serviceIP: "
                                                 "range is full")
        # Freed addresses can be had again at once.
        await asyncio.gather(*(svcs.delete(f"c{i}") for i in range(10)))
        more = await asyncio.gather(*(svcs.create(svc(f"d{i}")) for i in range(10)))
        assert {m["spec"]["clusterIP"] for m in more} == set(ips[:10])
    finally:
        await client.close()
        await stop_api(api)


async def test_uid_in_update_is_a_precondition(api: APIServer, client: Client) -> None:
    await cms(client).create(cm("uidpre"))
    code, st = await call(api, "PATCH", CMS + "/uidpre", {"metadata": {"uid": "not-the-uid"}},
                          content_type="application/merge-patch+json")
    assert code == 409 and st["reason"] == "Conflict"
    assert "Precondition failed: UID in precondition: not-the-uid" in st["message"]
