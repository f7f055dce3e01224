"""Watch semantics of the API server, in-process over a real SqliteStore.

Resuming from a resourceVersion, selector transitions, bookmarks, 410 from a
version older than the cache window, timeouts, sendInitialEvents, and fan-out
of one write to a thousand watchers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from kybernetes.apiserver.request import Request
from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client

from .conftest import call, cm, start_api, stop_api

CMS = "/api/v1/namespaces/default/configmaps"


class RawWatch:
    """One watch opened through APIServer.handle; events decoded one by one."""

    def __init__(self, stream: AsyncIterator[bytes]):
        self.stream = stream
        self.buf: list[dict[str, Any]] = []
        self.ended = False

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next event, or None once the server ended the watch."""
        while not self.buf:
            if self.ended:
                return None
            try:
                chunk = await asyncio.wait_for(self.stream.__anext__(), timeout)
            except StopAsyncIteration:
                self.ended = True
                return None
            self.buf.extend(orjson.loads(line) for line in chunk.splitlines() if line)
        return self.buf.pop(0)

    async def take(self, n: int, skip_bookmarks: bool = True) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            ev = await self.next()
            assert ev is not None, f"watch ended after {out}"
            if skip_bookmarks and ev["type"] == "BOOKMARK":
                continue
            out.append(ev)
        return out

    def close(self) -> None:
        self.stream.close()


async def open_watch(api: APIServer, path: str = CMS, **query: str) -> RawWatch:
    resp = await api.handle(Request("GET", path, {"watch": "true", **query}))
    assert resp.status == 200 and resp.stream is not None, resp.body
    return RawWatch(resp.stream)


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events]


async def test_watch_from_resource_version_delivers_exactly_later_events(api: APIServer, client: Client) -> None:
    rc = client.resource("v1", "configmaps")
    a = await rc.create(cm("a"))
    start = a["metadata"]["resourceVersion"]
    await rc.create(cm("b"))
    await rc.patch("a", {"data": {"x": "1"}})
    await rc.delete("b")
    # Writes elsewhere are not seen.
    await client.resource("v1", "secrets").create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
    w = await open_watch(api, resourceVersion=start)
    try:
        evs = await w.take(3)
        assert summary(evs) == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in evs]
        assert rvs == sorted(rvs) and rvs[0] > int(start)
        assert evs[1]["object"]["data"] == {"x": "1"}
        # Then live events, in order.
        for i in range(5):
            await rc.patch("a", {"data": {"x": str(i + 2)}})
        live = await w.take(5)
        assert [e["object"]["data"]["x"] for e in live] == ["2", "3", "4", "5", "6"]
    finally:
        w.close()
    # From the latest version nothing old is replayed.
    latest = (await rc.list("default"))["metadata"]["resourceVersion"]
    w = await open_watch(api, resourceVersion=latest)
    try:
        await rc.create(cm("c"))
        assert summary(await w.take(1)) == [("ADDED", "c")]
    finally:
        w.close()


async def test_watch_without_version_starts_with_current_state(api: APIServer, client: Client) -> None:
    rc = client.resource("v1", "configmaps")
    await rc.create(cm("one"))
    await rc.create(cm("two"))
    for rv in ("", "0"):
        w = await open_watch(api, **({"resourceVersion": rv} if rv else {}))
        try:
            assert sorted(summary(await w.take(2))) == [("ADDED", "one"), ("ADDED", "two")]
            await rc.patch("one", {"data": {"r": rv or "empty"}})
            assert summary(await w.take(1)) == [("MODIFIED", "one")]
        finally:
            w.close()


async def test_label_selector_transitions(api: APIServer, client: Client) -> None:
    rc = client.resource("v1", "configmaps")
    await rc.create(cm("x", labels={"app": "web"}))
    await rc.create(cm("y", labels={"app": "db"}))
    w = await open_watch(api, labelSelector="app=web")
    try:
        assert summary(await w.take(1)) == [("ADDED", "x")]
        await rc.patch("x", {"metadata": {"labels": {"app": "other"}}})  # stops matching
        await rc.patch("y", {"metadata": {"labels": {"app": "web"}}})  # starts matching
        await rc.patch("y", {"data": {"k": "v"}})  # still matching
        await rc.patch("x", {"data": {"k": "v"}})  # never seen
        await rc.delete("y")
        await rc.create(cm("z", labels={"app": "web"}))
        evs = await w.take(5)
        assert summary(evs) == [("DELETED", "x"), ("ADDED", "y"), ("MODIFIED", "y"), ("DELETED", "y"),
                                ("ADDED", "z")]
        # DELETED for a transition carries the new state, as upstream.
        assert evs[0]["object"]["metadata"]["labels"] == {"app": "other"}
    finally:
        w.close()
    # Field selectors transition the same way (by name here).
    w = await open_watch(api, fieldSelector="metadata.name=z")
    try:
        assert summary(await w.take(1)) == [("ADDED", "z")]
        await rc.create(cm("zz"))
        await rc.delete("z")
        assert summary(await w.take(1)) == [("DELETED", "z")]
    finally:
        w.close()


async def test_namespaced_watch_sees_only_its_namespace(api: APIServer, client: Client) -> None:
    await client.resource("v1", "namespaces", namespaced=False).create(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}})
    rc = client.resource("v1", "configmaps")
    w = await open_watch(api, resourceVersion=(await rc.list())["metadata"]["resourceVersion"])
    all_ns = await open_watch(api, "/api/v1/configmaps", resourceVersion=(await rc.list())["metadata"][
        "resourceVersion"])
    try:
        await rc.create(cm("o"), "other")
        await rc.create(cm("d"), "default")
        assert summary(await w.take(1)) == [("ADDED", "d")]
        assert summary(await all_ns.take(2)) == [("ADDED", "o"), ("ADDED", "d")]
    finally:
        w.close()
        all_ns.close()


async def test_watch_single_object_by_name(api: APIServer, client: Client) -> None:
    rc = client.resource("v1", "configmaps")
    await rc.create(cm("one"))
    await rc.create(cm("two"))
    w = await open_watch(api, CMS + "/one")
    try:
        assert summary(await w.take(1)) == [("ADDED", "one")]
        await rc.patch("two", {"data": {"a": "b"}})
        await rc.patch("one", {"data": {"a": "b"}})
        assert summary(await w.take(1)) == [("MODIFIED", "one")]
    finally:
        w.close()


async def test_bookmarks(tmp_path: Path) -> None:
    api = await start_api(tmp_path, bookmark_interval=0.05)
    try:
        code, made = await call(api, "POST", CMS, cm("a"))
        assert code == 201
        w = await open_watch(api, resourceVersion=made["metadata"]["resourceVersion"], allowWatchBookmarks="true")
        try:
            ev = await w.next()
            assert ev["type"] == "BOOKMARK"
            assert ev["object"]["kind"] == "ConfigMap" and ev["object"]["apiVersion"] == "v1"
            assert int(ev["object"]["metadata"]["resourceVersion"]) >= int(made["metadata"]["resourceVersion"])
            # A write elsewhere in the resource moves the bookmark's version on.
            code, later = await call(api, "POST", CMS, cm("b"))
            assert (await w.take(1))[0]["type"] == "ADDED"
            while True:
                ev = await w.next()
                if ev["type"] == "BOOKMARK":
                    break
            assert ev["object"]["metadata"]["resourceVersion"] == later["metadata"]["resourceVersion"]
        finally:
            w.close()
        # Without allowWatchBookmarks there are none: the watch ends on its timeout with no event.
        w = await open_watch(api, resourceVersion=made["metadata"]["resourceVersion"], timeoutSeconds="1")
        try:
            got = []
            while (ev := await w.next()) is not None:
                got.append(ev)
            assert [e["type"] for e in got] == ["ADDED"]  # "b"
        finally:
            w.close()
    finally:
        await stop_api(api)


async def test_watch_older_than_window_is_410(tmp_path: Path) -> None:
    api = await start_api(tmp_path, watch_cache_window=5)
    try:
        code, first = await call(api, "POST", CMS, cm("w"))
        for i in range(10):
            await call(api, "PATCH", CMS + "/w", {"data": {"i": str(i)}},
                       content_type="application/merge-patch+json")
        w = await open_watch(api, resourceVersion=first["metadata"]["resourceVersion"])
        ev = await w.next()
        assert ev["type"] == "ERROR"
        st = ev["object"]
        assert st["kind"] == "Status" and st["code"] == 410 and st["reason"] == "Expired"
        assert st["message"].startswith("too old resource version: ")
        assert await w.next() is None
        # Within the window it resumes.
        code, cur = await call(api, "GET", CMS + "/w")
        w = await open_watch(api, resourceVersion=str(int(cur["metadata"]["resourceVersion"]) - 2))
        try:
            assert [e["object"]["data"]["i"] for e in await w.take(2)] == ["8", "9"]
        finally:
            w.close()
        # The client raises it as a 410 StatusError.
        client = Client.in_process(api.handle)
        try:
            with pytest.raises(Exception) as ei:
                async for _ in client.resource("v1", "configmaps").watch(
                        "default", resource_version=first["metadata"]["resourceVersion"]):
                    pass
            assert getattr(ei.value, "code", None) == 410
        finally:
            await client.close()
    finally:
        await stop_api(api)


async def test_watch_of_resource_untouched_since_start_resumes(tmp_path: Path) -> None:
    # A resource with no events yet must still serve any version since the
    # server started, not 410 just because its cache is made lazily.
    api = await start_api(tmp_path)
    try:
        code, made = await call(api, "POST", CMS, cm("early"))
        start = made["metadata"]["resourceVersion"]
        for i in range(3):
            await call(api, "POST", CMS, cm(f"more{i}"))
        w = await open_watch(api, "/api/v1/namespaces/default/secrets", resourceVersion=start)
        try:
            await call(api, "POST", "/api/v1/namespaces/default/secrets",
                       {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}})
            assert summary(await w.take(1)) == [("ADDED", "s")]
        finally:
            w.close()
    finally:
        await stop_api(api)


async def test_timeout_seconds_ends_watch(api: APIServer) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    w = await open_watch(api, timeoutSeconds="1", resourceVersion=str(api.cache.rv))
    assert await w.next(timeout=5) is None
    assert 0.9 <= loop.time() - t0 < 4


async def test_send_initial_events(api: APIServer, client: Client) -> None:
    rc = client.resource("v1", "configmaps")
    await rc.create(cm("i1"))
    made = await rc.create(cm("i2"))
    w = await open_watch(api, sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                         allowWatchBookmarks="true", resourceVersion=made["metadata"]["resourceVersion"])
    try:
        evs = [await w.next() for _ in range(3)]
        assert sorted(summary(evs[:2])) == [("ADDED", "i1"), ("ADDED", "i2")]
        assert evs[2]["type"] == "BOOKMARK"
        assert evs[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
        assert int(evs[2]["object"]["metadata"]["resourceVersion"]) >= int(made["metadata"]["resourceVersion"])
        await rc.delete("i1")
        assert summary(await w.take(1)) == [("DELETED", "i1")]
    finally:
        w.close()
    # With no resourceVersion: the latest state.
    w = await open_watch(api, sendInitialEvents="true", resourceVersionMatch="NotOlderThan",
                         allowWatchBookmarks="true")
    try:
        evs = [await w.next() for _ in range(2)]
        assert summary(evs[:1]) == [("ADDED", "i2")] and evs[1]["type"] == "BOOKMARK"
    finally:
        w.close()
    # sendInitialEvents needs resourceVersionMatch=NotOlderThan, and the match needs sendInitialEvents.
    code, st = await call(api, "GET", CMS, query={"watch": "true", "sendInitialEvents": "true"})
    assert code == 422 and "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan" in st[
        "message"]
    code, st = await call(api, "GET", CMS, query={"watch": "true", "resourceVersion": "1",
                                                   "resourceVersionMatch": "NotOlderThan"})
    assert code == 422


async def test_thousand_watchers_fan_out(api: APIServer, client: Client) -> None:
    rc = client.resource("v1", "configmaps")
    start = (await rc.list("default"))["metadata"]["resourceVersion"]
    watches = [await open_watch(api, resourceVersion=start) for _ in range(1000)]
    try:
        made = await rc.create(cm("fan", {"k": "v"}))
        await rc.patch("fan", {"data": {"k": "w"}})
        got = await asyncio.gather(*(w.take(2) for w in watches))
        for evs in got:
            assert summary(evs) == [("ADDED", "fan"), ("MODIFIED", "fan")]
            assert evs[0]["object"]["metadata"]["uid"] == made["metadata"]["uid"]
        # Identical bytes for every watcher: the event is encoded once.
        assert len({orjson.dumps(evs[1]) for evs in got}) == 1
    finally:
        for w in watches:
            w.close()
    assert not api.cache.cache("/registry/configmaps/").watchers


async def test_client_watchers_fan_out(api: APIServer) -> None:
    # The same through the client library's in-process transport (its own pump per watch).
    client = Client.in_process(api.handle)
    rc = client.resource("v1", "configmaps")
    start = (await rc.list("default"))["metadata"]["resourceVersion"]
    watches = [rc.watch("default", resource_version=start, allow_bookmarks=False) for _ in range(200)]

    async def first(w) -> tuple[str, str]:
        async for typ, obj in w:
            return typ, obj["metadata"]["name"]
        return "", ""
    try:
        tasks = [asyncio.create_task(first(w)) for w in watches]
        await asyncio.sleep(0)
        await rc.create(cm("fan2"))
        assert set(await asyncio.wait_for(asyncio.gather(*tasks), 10)) == {("ADDED", "fan2")}
    finally:
        for w in watches:
            await w.close()
        await client.close()
    # Closing a client watch unregisters its server-side watcher.
    assert not api.cache.cache("/registry/configmaps/").watchers


async def test_client_watch_sees_every_event_of_a_burst(api: APIServer) -> None:
    # Several events queued for one watcher reach the client as separate events.
    client = Client.in_process(api.handle)
    rc = client.resource("v1", "configmaps")
    try:
        start = (await rc.list("default"))["metadata"]["resourceVersion"]
        for i in range(5):
            await rc.create(cm(f"burst{i}"))
        names = []
        async with rc.watch("default", resource_version=start, allow_bookmarks=False) as w:
            async for _typ, obj in w:
                names.append(obj["metadata"]["name"])
                if len(names) == 5:
                    break
        assert names == [f"burst{i}" for i in range(5)]
    finally:
        await client.close()
