"""The watch cache's per-namespace and per-field indexes, and the lists that read them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from kybernetes.api.selectors import field_set
from kybernetes.apiserver.server import APIServer
from kybernetes.apiserver.watchcache import ResourceCache, make_entry
from kybernetes.storage.base import KV

from .conftest import call, start_api, stop_api

PREFIX = "/registry/pods/"


def entry(ns: str, name: str, node: str, rv: int):
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"nodeName": node}}
    return make_entry(KV(f"{PREFIX}{ns}/{name}", orjson.dumps(obj), rv, rv), rv,
                      lambda o: field_set("Pod", o))


def names(entries) -> set[str]:
    return {f"{e.namespace}/{e.name}" for e in entries}


def test_indexes_follow_puts_and_removes() -> None:
    c = ResourceCache(PREFIX, 100)
    c.put(entry("a", "p1", "n1", 1))
    c.put(entry("a", "p2", "n2", 2))
    assert names(c.index("spec.nodeName", "n1")) == {"a/p1"}  # built on first use
    c.put(entry("b", "p1", "n1", 3))
    c.put(entry("a", "p2", "n1", 4))  # moved to n1: out of n2's bucket
    assert names(c.index("spec.nodeName", "n1")) == {"a/p1", "a/p2", "b/p1"}
    assert c.index("spec.nodeName", "n2") == []
    assert names(c.entries("a")) == {"a/p1", "a/p2"}
    assert names(c.entries("b")) == {"b/p1"}
    assert names(c.entries(None)) == {"a/p1", "a/p2", "b/p1"}
    c.remove(f"{PREFIX}a/p1")
    c.remove(f"{PREFIX}a/missing")
    assert names(c.index("spec.nodeName", "n1")) == {"a/p2", "b/p1"}
    assert names(c.entries("a")) == {"a/p2"}
    c.remove(f"{PREFIX}a/p2")
    assert c.entries("a") == [] and "a" not in c.by_namespace
    c.clear()
    assert c.entries(None) == [] and c.index("spec.nodeName", "n1") == []


def test_derived_values_live_with_one_version() -> None:
    c = ResourceCache(PREFIX, 100)
    calls = []

    def fn(e):
        calls.append(e.rv)
        return e.rv * 10
    e1 = entry("a", "p", "n1", 1)
    c.put(e1)
    assert ResourceCache.derive(e1, "x", fn) == 10
    assert ResourceCache.derive(e1, "x", fn) == 10
    e2 = entry("a", "p", "n1", 2)
    c.put(e2)
    assert ResourceCache.derive(c.objects[e2.key], "x", fn) == 20
    assert calls == [1, 2]


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[APIServer]:
    a = await start_api(tmp_path)
    for ns in ("a", "b"):
        assert (await call(a, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}}))[0] == 201
        assert (await call(a, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                           {"metadata": {"name": "default"}}))[0] in (201, 409)
    for ns, name, node in (("a", "p1", "n1"), ("a", "p2", "n2"), ("b", "p3", "n1"), ("b", "p4", "")):
        code, body = await call(a, "POST", f"/api/v1/namespaces/{ns}/pods", {
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
        assert code == 201, body
    yield a
    await stop_api(a)


def item_names(body) -> list[str]:
    return [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in body["items"]]


async def test_node_lists_read_the_index(api: APIServer) -> None:
    code, body = await call(api, "GET", "/api/v1/pods", query={"fieldSelector": "spec.nodeName=n1"})
    assert code == 200 and item_names(body) == ["a/p1", "b/p3"]
    code, body = await call(api, "GET", "/api/v1/namespaces/b/pods", query={"fieldSelector": "spec.nodeName=n1"})
    assert item_names(body) == ["b/p3"]
    code, body = await call(api, "GET", "/api/v1/pods",
                            query={"fieldSelector": "spec.nodeName=n1,metadata.namespace!=a"})
    assert item_names(body) == ["b/p3"]
    code, body = await call(api, "GET", "/api/v1/pods", query={"fieldSelector": "spec.nodeName="})
    assert item_names(body) == ["b/p4"]  # unscheduled pods, as the scheduler lists them
    code, body = await call(api, "GET", "/api/v1/namespaces/a/pods")
    assert item_names(body) == ["a/p1", "a/p2"]


async def test_pages_see_the_listed_revision_though_objects_change(api: APIServer) -> None:
    """Later pages read the store at the first page's revision; an object changed since is
    read from there, not from the cache."""
    code, first = await call(api, "GET", "/api/v1/pods", query={"limit": "1"})
    assert code == 200 and item_names(first) == ["a/p1"]
    rv = first["metadata"]["resourceVersion"]
    code, body = await call(api, "PATCH", "/api/v1/namespaces/a/pods/p2",
                            {"metadata": {"labels": {"changed": "yes"}}},
                            content_type="application/merge-patch+json")
    assert code == 200, body
    code, rest = await call(api, "GET", "/api/v1/pods", query={"limit": "10",
                                                               "continue": first["metadata"]["continue"]})
    assert code == 200 and item_names(rest) == ["a/p2", "b/p3", "b/p4"]
    p2 = rest["items"][0]
    assert "labels" not in p2["metadata"] and int(p2["metadata"]["resourceVersion"]) <= int(rv)
    assert rest["metadata"]["resourceVersion"] == rv


async def test_gets_read_the_cache_only_when_it_has_every_write(api: APIServer, monkeypatch) -> None:
    """A get is the store's answer: from the cache once it has seen every acknowledged write,
    from the store while it lags (a write just acknowledged is never missed)."""
    await api.cache.fresh()
    store_reads = []
    inner_get = api.store.get

    async def counting_get(key):
        store_reads.append(key)
        return await inner_get(key)
    monkeypatch.setattr(api.store, "get", counting_get)
    code, body = await call(api, "GET", "/api/v1/namespaces/a/pods/p1")
    assert code == 200 and body["metadata"]["name"] == "p1" and store_reads == []
    code, _ = await call(api, "GET", "/api/v1/namespaces/a/pods/nope")
    assert code == 404 and store_reads == []
    for i in range(20):
        code, patched = await call(api, "PATCH", "/api/v1/namespaces/a/pods/p1",
                                   {"metadata": {"labels": {"n": str(i)}}},
                                   content_type="application/merge-patch+json")
        assert code == 200
        code, body = await call(api, "GET", "/api/v1/namespaces/a/pods/p1")
        assert body["metadata"]["labels"]["n"] == str(i)
        assert body["metadata"]["resourceVersion"] == patched["metadata"]["resourceVersion"]
    code, _ = await call(api, "DELETE", "/api/v1/namespaces/a/pods/p2", {"gracePeriodSeconds": 0})
    assert code == 200
    assert (await call(api, "GET", "/api/v1/namespaces/a/pods/p2"))[0] == 404
