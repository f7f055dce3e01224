"""Informer against the fake API handler: list+watch, re-watch, relist on 410, resync, indexes."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.request import Request, Response
from kybernetes.client import Client, Informer, InProcessTransport, TransportError
from kybernetes.client.informer import meta_namespace_key, split_key

from .conftest import eventually
from .fakeapi import FakeAPI


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": dict(data)}


class Recorder:
    """Handler that records events as (type, key, resourceVersion)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        # The handler's own picture of the world, rebuilt purely from events.
        self.view: dict[str, str] = {}

    def on_add(self, obj: dict) -> None:
        key = meta_namespace_key(obj)
        assert key not in self.view, f"add for known {key}"
        self.view[key] = obj["metadata"]["resourceVersion"]
        self.events.append(("add", key, obj["metadata"]["resourceVersion"]))

    def on_update(self, old: dict, new: dict) -> None:
        key = meta_namespace_key(new)
        assert key in self.view, f"update for unknown {key}"
        assert old["metadata"]["resourceVersion"] == self.view[key]
        self.view[key] = new["metadata"]["resourceVersion"]
        self.events.append(("update", key, new["metadata"]["resourceVersion"]))

    def on_delete(self, obj: dict) -> None:
        key = meta_namespace_key(obj)
        assert key in self.view, f"delete for unknown {key}"
        del self.view[key]
        self.events.append(("delete", key, obj["metadata"]["resourceVersion"]))

    def register(self, informer: Informer) -> None:
        informer.add_handler(self.on_add, self.on_update, self.on_delete)


def server_view(fake: FakeAPI, plural: str = "configmaps") -> dict[str, str]:
    return {f"{ns}/{name}" if ns else name: o["metadata"]["resourceVersion"]
            for (g, p, ns, name), o in fake.objects.items() if p == plural}


def test_keys() -> None:
    assert meta_namespace_key({"metadata": {"name": "a", "namespace": "n"}}) == "n/a"
    assert meta_namespace_key({"metadata": {"name": "node1"}}) == "node1"
    assert split_key("n/a") == ("n", "a")
    assert split_key("node1") == (None, "node1")


async def test_list_then_watch_delivers_everything_in_order(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a", x="1"), "ns")
    await cms.create(cm("b"), "other")
    rec = Recorder()
    inf = Informer(cms)
    rec.register(inf)
    async with inf:
        assert await inf.wait_for_sync(5)
        assert inf.has_synced
        assert sorted(inf.keys()) == ["ns/a", "other/b"]
        assert sorted(e[1] for e in rec.events) == ["ns/a", "other/b"]
        a = await cms.get("a", "ns")
        a["data"] = {"x": "2"}
        await cms.update(a)
        await cms.create(cm("c"), "ns")
        await cms.delete("b", "other")
        await eventually(lambda: rec.view == server_view(fake), what="handlers caught up")
        assert [e[0] for e in rec.events[2:]] == ["update", "add", "delete"]
        assert inf.get("ns/a")["data"] == {"x": "2"}
        assert inf.get("other/b") is None
        assert [o["metadata"]["name"] for o in inf.list_by_namespace("ns")] in (["a", "c"], ["c", "a"])
        assert inf.list_by_namespace("other") == []
        assert inf.get_by_name("c", "ns") is not None
        assert len(inf) == 2


async def test_namespace_and_label_scoped_informer(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a", labels={"app": "web"}), "ns")
    await cms.create(cm("b", labels={"app": "web"}), "other")
    await cms.create(cm("c"), "ns")
    async with Informer(cms, namespace="ns", label_selector="app=web") as inf:
        assert await inf.wait_for_sync(5)
        assert inf.keys() == ["ns/a"]
        await cms.create(cm("d", labels={"app": "web"}), "ns")
        await cms.create(cm("e", labels={"app": "web"}), "other")
        await eventually(lambda: "ns/d" in inf)
        assert sorted(inf.keys()) == ["ns/a", "ns/d"]


async def test_cluster_scoped_keys(client: Client) -> None:
    nodes = client.resource("v1", "nodes", namespaced=False)
    await nodes.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    async with Informer(nodes) as inf:
        assert await inf.wait_for_sync(5)
        assert inf.keys() == ["n1"]


async def test_rewatch_resumes_from_last_resource_version(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    rec = Recorder()
    inf = Informer(cms, backoff_initial=0.01)
    rec.register(inf)
    async with inf:
        assert await inf.wait_for_sync(5)
        await cms.create(cm("a"), "ns")
        await eventually(lambda: "ns/a" in rec.view)
        fake.close_watches()
        await cms.create(cm("b"), "ns")  # happens while no watch may be open
        await eventually(lambda: rec.view == server_view(fake))
        await eventually(lambda: fake.active_watches() == 1, what="re-watch")
        watches = [r for r in fake.requests if r.query.get("watch")]
        assert len(watches) >= 2
        # resumed from the rv of the last event seen, not from scratch
        assert watches[1].query["resourceVersion"] == rec.events[0][2]
        assert [e[:2] for e in rec.events] == [("add", "ns/a"), ("add", "ns/b")]
        lists = [r for r in fake.requests if r.path == "/api/v1/configmaps" and not r.query.get("watch")]
        assert len(lists) == 1, "a clean watch end must not cause a relist"


async def test_bookmarks_advance_resource_version(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    other = client.resource("v1", "pods")
    async with Informer(cms) as inf:
        assert await inf.wait_for_sync(5)
        await eventually(lambda: fake.active_watches() == 1)
        await other.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, "ns")
        fake.bookmark()
        await eventually(lambda: inf.last_resource_version == str(fake.rv), what="bookmark seen")


async def test_gone_relists_and_emits_the_difference(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    for name in ("keep", "change", "vanish"):
        await cms.create(cm(name), "ns")
    rec = Recorder()
    inf = Informer(cms, backoff_initial=0.01)
    rec.register(inf)
    async with inf:
        assert await inf.wait_for_sync(5)
        await eventually(lambda: fake.active_watches() == 1)
        # Simulate missed history: change the store behind the watch's back.
        fake.watchers.clear()
        changed = await cms.get("change", "ns")
        changed["data"] = {"v": "2"}
        await cms.update(changed)
        await cms.delete("vanish", "ns")
        await cms.create(cm("new"), "ns")
        fake.compact()
        fake.gone_as_event = False  # the re-watch gets a 410 response, not an event
        before = len(rec.events)
        # The orphaned stream can no longer be reached through the fake: end it from our side,
        # as a dropped connection would.
        await _end_orphaned_watch(inf)
        await eventually(lambda: rec.view == server_view(fake), what="relist diff delivered")
        diff = sorted(e[:2] for e in rec.events[before:])
        assert diff == [("add", "ns/new"), ("delete", "ns/vanish"), ("update", "ns/change")]
        assert sorted(inf.keys()) == ["ns/change", "ns/keep", "ns/new"]
        lists = [r for r in fake.requests if r.path == "/api/v1/configmaps" and not r.query.get("watch")]
        assert len(lists) == 2


async def _end_orphaned_watch(inf: Informer) -> None:
    watch = inf._watch
    assert watch is not None
    await watch.close()


async def test_gone_error_event_relists(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a"), "ns")
    rec = Recorder()
    inf = Informer(cms, backoff_initial=0.01)
    rec.register(inf)
    async with inf:
        assert await inf.wait_for_sync(5)
        await eventually(lambda: fake.active_watches() == 1)
        fake.expire_watches()
        await eventually(lambda: len([r for r in fake.requests if r.path == "/api/v1/configmaps"
                                      and not r.query.get("watch")]) == 2, what="relist")
        await cms.create(cm("b"), "ns")
        await eventually(lambda: rec.view == server_view(fake))
        # nothing changed across the relist, so no spurious events for "a"
        assert [e[:2] for e in rec.events] == [("add", "ns/a"), ("add", "ns/b")]


async def test_connection_errors_are_retried_with_backoff(fake: FakeAPI) -> None:
    failures = {"left": 3}

    async def flaky(req: Request) -> Response:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise TransportError("connection refused")
        return await fake(req)

    client = Client(InProcessTransport(flaky))
    cms = client.resource("v1", "configmaps")
    await fake(Request("POST", "/api/v1/namespaces/ns/configmaps", body=b'{"metadata":{"name":"a"}}'))
    async with Informer(cms, backoff_initial=0.01, backoff_max=0.05) as inf:
        assert await inf.wait_for_sync(5)
        assert inf.keys() == ["ns/a"]
        assert failures["left"] == 0


async def test_wait_for_sync_times_out_while_server_refuses(fake: FakeAPI) -> None:
    async def forbidden(req: Request) -> Response:
        return Response(403, StatusError(403, "Forbidden", "no").to_bytes())

    cms = Client(InProcessTransport(forbidden)).resource("v1", "configmaps")
    async with Informer(cms, backoff_initial=0.01, backoff_max=0.02) as inf:
        assert not await inf.wait_for_sync(0.1)
        assert not inf.has_synced


async def test_periodic_resync_redelivers_updates(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a"), "ns")
    resyncs: list[tuple[str, str]] = []

    def on_update(old: dict, new: dict) -> None:
        assert old is new
        resyncs.append((old["metadata"]["resourceVersion"], new["metadata"]["resourceVersion"]))

    inf = Informer(cms, resync_period=0.02)
    inf.add_handler(on_update=on_update)
    async with inf:
        await eventually(lambda: len(resyncs) >= 2, what="two resyncs")


async def test_async_handlers_late_handlers_and_failing_handlers(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a"), "ns")
    seen: list[str] = []
    calls = {"n": 0}

    async def async_add(obj: dict) -> None:
        await asyncio.sleep(0)
        seen.append(obj["metadata"]["name"])

    def broken(obj: dict) -> None:
        calls["n"] += 1
        raise RuntimeError("handler bug")

    inf = Informer(cms)
    inf.add_handler(on_add=broken)
    async with inf:
        assert await inf.wait_for_sync(5)
        inf.add_handler(on_add=async_add)  # late: replayed the existing object first
        assert not inf.has_synced  # until the new handler has been given the replay
        assert await inf.wait_for_sync(5)
        assert seen == ["a"]
        await cms.create(cm("b"), "ns")
        await eventually(lambda: seen == ["a", "b"])
        await eventually(lambda: calls["n"] == 2, what="broken handler keeps receiving events")


async def test_indexes_follow_updates_and_deletes(client: Client) -> None:
    cms = client.resource("v1", "configmaps")
    await cms.create(cm("a", labels={"team": "x"}), "ns")
    inf = Informer(cms)

    def by_team(obj: dict) -> list[str]:
        team = (obj["metadata"].get("labels") or {}).get("team")
        return [team] if team else []

    async with inf:
        assert await inf.wait_for_sync(5)
        inf.add_index("team", by_team)  # built from what is already cached
        assert [o["metadata"]["name"] for o in inf.by_index("team", "x")] == ["a"]
        await cms.create(cm("b", labels={"team": "x"}), "ns")
        await eventually(lambda: inf.index_keys("team", "x") == ["ns/a", "ns/b"])
        a = await cms.get("a", "ns")
        a["metadata"]["labels"] = {"team": "y"}
        await cms.update(a)
        await eventually(lambda: inf.index_keys("team", "y") == ["ns/a"])
        assert inf.index_keys("team", "x") == ["ns/b"]
        await cms.delete("b", "ns")
        await eventually(lambda: inf.index_keys("team", "x") == [])
        assert inf.by_index("team", "nobody") == []


async def test_no_event_lost_or_reordered_under_churn_and_disconnects(client: Client, fake: FakeAPI) -> None:
    cms = client.resource("v1", "configmaps")
    rec = Recorder()
    inf = Informer(cms, backoff_initial=0.001, backoff_max=0.01)
    rec.register(inf)
    rng = random.Random(7)
    async with inf:
        assert await inf.wait_for_sync(5)
        names = [f"o{i}" for i in range(8)]
        for step in range(150):
            name = rng.choice(names)
            try:
                if rng.random() < 0.5:
                    await cms.create(cm(name, v=str(step)), "ns")
                elif rng.random() < 0.7:
                    await cms.patch(name, {"data": {"v": str(step)}}, namespace="ns")
                else:
                    await cms.delete(name, "ns")
            except StatusError as e:
                assert e.code in (404, 409)
            if step % 25 == 0:
                fake.close_watches()
            if step == 100:
                fake.expire_watches()
        await eventually(lambda: rec.view == server_view(fake), what="handler view matches server")
        assert {k: o["metadata"]["resourceVersion"] for k, o in
                ((k, inf.get(k)) for k in inf)} == server_view(fake)
        per_key: dict[str, list[int]] = {}
        for _, key, rv in rec.events:
            per_key.setdefault(key, []).append(int(rv))
        for key, rvs in per_key.items():
            assert rvs == sorted(rvs), f"{key} events out of order: {rvs}"


async def test_stop_closes_the_watch(client: Client, fake: FakeAPI) -> None:
    inf = Informer(client.resource("v1", "configmaps"))
    await inf.start()
    assert await inf.wait_for_sync(5)
    await eventually(lambda: fake.active_watches() == 1)
    await inf.stop()
    await eventually(lambda: fake.active_watches() == 0, what="watch closed on stop")
