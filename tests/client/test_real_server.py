"""The client library against the real API server (not the fake one).

Each test runs three ways: through InProcessTransport, through HTTPTransport
to the aiohttp front door with a bearer token over plain HTTP, and over HTTPS
with the cluster PKI and a client certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.http import TokenAuth, serve, server_ssl_context
from kybernetes.apiserver.pki import PKI
from kybernetes.apiserver.request import Request, Response
from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client, HTTPTransport, Informer
from kybernetes.storage.sqlite import SqliteStore

from .conftest import eventually

TOKEN = "t0ken-for-tests"


class Gate:
    """Holds watch requests while closed: a network partition between client and server, for watches only."""

    def __init__(self, api: APIServer):
        self.api = api
        self.inner = api.handle
        self.open = asyncio.Event()
        self.open.set()
        self.held = 0
        self.lists = 0

    async def __call__(self, req: Request) -> Response:
        if req.method == "GET" and req.path.endswith("/configmaps") and "watch" not in req.query:
            self.lists += 1
        if req.query.get("watch") in ("true", "1"):
            self.held += 1
            try:
                await self.open.wait()
            finally:
                self.held -= 1
        return await self.inner(req)

    def drop_watches(self) -> None:
        """End every server-side watch, as a server restart or a proxy timeout would."""
        for c in self.api.cache.caches.values():
            for w in list(c.watchers):
                w.close()


@dataclass
class Env:
    api: APIServer
    client: Client
    gate: Gate


def cm(name: str, data: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}, "data": data or {}}


@pytest.fixture(params=["inprocess", "http", "https"])
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    store = SqliteStore(tmp_path / "state.db")
    api = APIServer(store, watch_cache_window=4)
    await api.start()
    gate = Gate(api)
    # The HTTP front door calls api.handle per request, so the gate sits in front of both transports.
    api.handle = gate  # type: ignore[method-assign]
    runner = None
    try:
        if request.param == "inprocess":
            client = Client.in_process(api.handle)
        else:
            tokens = TokenAuth()
            tokens.add(TOKEN, "admin", ("system:masters", "system:authenticated"))
            ssl_ctx = None
            if request.param == "https":
                pki = PKI(tmp_path / "pki")
                pki.ensure(["127.0.0.1", "localhost"])
                ssl_ctx = server_ssl_context(pki)
            runner = await serve(api, tokens, "127.0.0.1", 0, ssl_ctx)
            port = runner.addresses[0][1]
            if request.param == "http":
                client = Client(HTTPTransport(f"http://127.0.0.1:{port}", token=TOKEN))
            else:
                client = Client(HTTPTransport(f"https://127.0.0.1:{port}", ca_file=str(pki.ca_cert),
                                              cert_file=str(pki.admin_cert), key_file=str(pki.admin_key)))
        try:
            yield Env(api, client, gate)
        finally:
            gate.open.set()
            await client.close()
    finally:
        if runner is not None:
            await runner.cleanup()
        await api.stop()
        await store.close()


async def test_crud(env: Env) -> None:
    rc = env.client.resource("v1", "configmaps")
    made = await rc.create(cm("a", {"k": "1"}, labels={"x": "y"}))
    assert made["metadata"]["uid"] and made["metadata"]["namespace"] == "default"
    got = await rc.get("a")
    assert got == made
    got["data"]["k"] = "2"
    upd = await rc.update(got)
    assert upd["data"] == {"k": "2"} and int(upd["metadata"]["resourceVersion"]) > int(
        made["metadata"]["resourceVersion"])
    # The stale copy now conflicts.
    with pytest.raises(StatusError) as ei:
        await rc.update(got)
    assert ei.value.code == 409 and ei.value.reason == "Conflict"
    assert (await rc.patch("a", {"data": {"m": "1"}}))["data"] == {"k": "2", "m": "1"}
    assert (await rc.patch("a", {"data": {"s": "1"}}, patch_type="strategic"))["data"]["s"] == "1"
    assert "k" not in (await rc.patch("a", [{"op": "remove", "path": "/data/k"}], patch_type="json"))["data"]
    applied = await rc.patch("b", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"},
                                   "data": {"z": "1"}}, patch_type="apply", field_manager="test")
    assert applied["data"] == {"z": "1"}
    with pytest.raises(StatusError) as ei:
        await rc.create(cm("a"))
    assert ei.value.code == 409 and ei.value.reason == "AlreadyExists"
    dry = await rc.create(cm("dry"), dry_run=True)
    assert dry["metadata"]["name"] == "dry"
    deleted = await rc.delete("a")
    assert deleted["kind"] == "Status" and deleted["details"]["name"] == "a"
    with pytest.raises(StatusError) as ei:
        await rc.get("a")
    assert ei.value.code == 404 and ei.value.message == 'configmaps "a" not found'
    with pytest.raises(StatusError) as ei:
        await rc.get("dry")
    assert ei.value.code == 404
    # Status subresource and delete_collection through the client.
    deps = env.client.resource("apps/v1", "deployments")
    await deps.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                       "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                           "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c",
                                                                                         "image": "i"}]}}}})
    d = await deps.get("d")
    d["status"] = {"observedGeneration": 1, "replicas": 0}
    assert (await deps.update_status(d))["status"]["observedGeneration"] == 1
    assert (await deps.get_subresource("d", "scale"))["spec"]["replicas"] == 1
    for i in range(3):
        await rc.create(cm(f"del{i}", labels={"batch": "1"}))
    await rc.delete_collection(label_selector="batch=1")
    assert [i["metadata"]["name"] for i in (await rc.list())["items"]] == ["b"]


async def test_list_all_pagination(env: Env) -> None:
    rc = env.client.resource("v1", "configmaps")
    for i in range(11):
        await rc.create(cm(f"p{i:02d}", labels={"even": str(i % 2 == 0).lower()}))
    page = await rc.list(limit=4)
    assert len(page["items"]) == 4 and page["metadata"]["continue"]
    full = await rc.list_all(page_size=4)
    assert [i["metadata"]["name"] for i in full["items"]] == [f"p{i:02d}" for i in range(11)]
    assert full["kind"] == "ConfigMapList" and "continue" not in full["metadata"]
    evens = await rc.list_all(page_size=2, label_selector="even=true")
    assert [i["metadata"]["name"] for i in evens["items"]] == [f"p{i:02d}" for i in range(0, 11, 2)]
    # Across namespaces (kube-root-ca style objects may exist elsewhere; ours are all in default).
    everywhere = await rc.list_all(None, page_size=5)
    assert {i["metadata"]["name"] for i in everywhere["items"]} >= {f"p{i:02d}" for i in range(11)}


async def test_watch(env: Env) -> None:
    rc = env.client.resource("v1", "configmaps")
    start = (await rc.list())["metadata"]["resourceVersion"]
    async with rc.watch(resource_version=start, allow_bookmarks=False) as w:
        await rc.create(cm("w"))
        await rc.patch("w", {"data": {"a": "b"}})
        await rc.delete("w")
        seen = []
        async for typ, obj in w:
            seen.append((typ, obj["metadata"]["name"]))
            if len(seen) == 3:
                break
        assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
        assert w.resource_version is not None and int(w.resource_version) > int(start)
    # A watch with timeoutSeconds ends by itself.
    async with rc.watch(resource_version=start, timeout_seconds=1, allow_bookmarks=False) as w:
        got = [t async for t, _ in w]
    assert got == ["ADDED", "MODIFIED", "DELETED"]


async def test_informer_add_update_delete_and_relist_after_410(env: Env) -> None:
    rc = env.client.resource("v1", "configmaps")
    await rc.create(cm("pre"))
    events: list[tuple[str, str]] = []
    inf = Informer(rc, namespace="default")
    inf.add_handler(on_add=lambda o: events.append(("add", o["metadata"]["name"])),
                    on_update=lambda old, new: events.append(("update", new["metadata"]["name"])),
                    on_delete=lambda o: events.append(("delete", o["metadata"]["name"])))
    await inf.start()
    try:
        assert await inf.wait_for_sync(5)
        assert inf.keys() == ["default/pre"]
        await rc.create(cm("live"))
        await rc.patch("live", {"data": {"v": "1"}})
        await rc.delete("pre")
        await eventually(lambda: events[-1:] == [("delete", "pre")], what="live events")
        assert events == [("add", "pre"), ("add", "live"), ("update", "live"), ("delete", "pre")]
        assert inf.get("default/live")["data"] == {"v": "1"}
        # Partition the informer's watch, then write more than the server's watch window holds.
        lists = env.gate.lists
        env.gate.open.clear()
        env.gate.drop_watches()
        await eventually(lambda: env.gate.held == 1, what="informer re-watching")
        await rc.delete("live")
        await rc.create(cm("during"))
        for i in range(6):
            await rc.patch("during", {"data": {"i": str(i)}})
        env.gate.open.set()
        # Its resume gets 410 Gone; the relist finds what it missed, deletions included.
        await eventually(lambda: inf.keys() == ["default/during"], what="relist after 410")
        assert inf.get("default/during")["data"] == {"i": "5"}
        assert env.gate.lists > lists
        assert ("delete", "live") in events and ("add", "during") in events
        # And it keeps watching afterwards.
        await rc.create(cm("after"))
        await eventually(lambda: "default/after" in inf, what="watch after relist")
    finally:
        await inf.stop()


async def test_for_kind_discovery(env: Env) -> None:
    deps = await env.client.for_kind("apps/v1", "Deployment")
    assert deps.plural == "deployments" and deps.namespaced
    ns = await env.client.for_kind("v1", "Namespace")
    assert ns.plural == "namespaces" and not ns.namespaced
    assert "default" in {i["metadata"]["name"] for i in (await ns.list())["items"]}
    hpa = await env.client.for_kind("autoscaling/v1", "HorizontalPodAutoscaler")
    assert hpa.plural == "horizontalpodautoscalers"
    with pytest.raises(StatusError) as ei:
        await env.client.for_kind("apps/v1", "NoSuchKind")
    assert ei.value.code == 404
    with pytest.raises(StatusError) as ei:
        await env.client.for_kind("nosuch.example.com/v1", "Thing")
    assert ei.value.code == 404
    made = await env.client.create_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                                           "stringData": {"a": "b"}})
    assert made["data"] == {"a": "Yg=="}
    await env.client.delete_object(made)


async def test_http_front_door_authentication(env: Env, request: pytest.FixtureRequest) -> None:
    transport = env.client.transport
    if not isinstance(transport, HTTPTransport) or transport.base_url.startswith("https"):
        pytest.skip("bearer tokens over the plain HTTP front door")
    bad = Client(HTTPTransport(transport.base_url, token="wrong"))
    anon = Client(HTTPTransport(transport.base_url))
    try:
        with pytest.raises(StatusError) as ei:
            await bad.resource("v1", "configmaps").list()
        assert ei.value.code == 401
        with pytest.raises(StatusError) as ei:
            await anon.resource("v1", "configmaps").list()
        assert ei.value.code == 401
        assert (await anon.request("GET", "/version"))["major"] == "1"
    finally:
        await bad.close()
        await anon.close()
