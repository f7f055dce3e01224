"""Fixtures for the store tests: a fresh SQLite store per test, and a reopen helper.

The tests talk to the Store interface only (except where they say otherwise), so the
etcd backend can be added as another parameter of the `store` fixture.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from kybernetes.storage import Store, open_store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    s = open_store(db_path)
    yield s
    await s.close()


async def wait_for(cond: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll cond (letting the loop run) until it holds; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        r = cond()
        if not isinstance(r, bool):
            r = await r
        if r:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)
