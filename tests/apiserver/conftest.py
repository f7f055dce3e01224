"""Helpers for tests against a real APIServer over a SqliteStore in tmp_path.

start_api/stop_api make one (the `api` and `client` fixtures in tests/conftest.py
use them); `call` sends one raw Request and decodes the answer; `eventually`
polls with a deadline; cm/pod/deployment build objects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from kybernetes.apiserver.request import Request
from kybernetes.apiserver.server import APIServer
from kybernetes.storage.sqlite import SqliteStore


async def start_api(tmp_path: Path, **kwargs: Any) -> APIServer:
    store = SqliteStore(tmp_path / "state.db")
    api = APIServer(store, **kwargs)
    await api.start()
    return api


async def stop_api(api: APIServer) -> None:
    await api.stop()
    await api.store.close()


async def call(api: APIServer, method: str, path: str, body: Any = None, query: dict[str, str] | None = None,
               content_type: str = "application/json") -> tuple[int, Any]:
    """One raw request; returns (status, decoded body)."""
    raw = body if isinstance(body, bytes) else (orjson.dumps(body) if body is not None else b"")
    resp = await api.handle(Request(method, path, dict(query or {}), {"content-type": content_type}, raw))
    assert resp.stream is None, "use the watch helpers for streams"
    return resp.status, (orjson.loads(resp.body) if resp.body else None)


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
    """Poll predicate (sync or async) until truthy; fail after timeout. Returns its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        v = predicate()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.005)


def cm(name: str, data: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}, "data": data or {}}


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}
