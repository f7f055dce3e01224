"""Fixtures for scheduler integration tests: a real APIServer over SQLite in tmp_path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client
from kybernetes.storage.sqlite import SqliteStore


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    store = SqliteStore(tmp_path / "state.db")
    api = APIServer(store)
    await api.start()
    c = Client.in_process(api.handle)
    try:
        yield c
    finally:
        await c.close()
        await api.stop()
        await store.close()


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll predicate (sync or async) until truthy; fail after timeout. Returns its value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while True:
        v = predicate()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        last = v
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate} (last: {last!r})")
        await asyncio.sleep(0.01)
