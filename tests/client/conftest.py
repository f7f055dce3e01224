"""Fixtures: a fake API handler reachable in-process and over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from kybernetes.client import Client, HTTPTransport, InProcessTransport

from .fakeapi import FakeAPI
from .httpserver import HandlerServer


@pytest.fixture
def fake() -> FakeAPI:
    return FakeAPI()


@pytest.fixture(params=["inprocess", "http"])
async def client(request: pytest.FixtureRequest, fake: FakeAPI) -> AsyncIterator[Client]:
    if request.param == "inprocess":
        c = Client(InProcessTransport(fake))
        yield c
        await c.close()
        return
    server = HandlerServer(fake)
    url = await server.start()
    c = Client(HTTPTransport(url))
    try:
        yield c
    finally:
        await c.close()
        await server.stop()


async def eventually(predicate: Callable[[], object], timeout: float = 5.0, what: str = "") -> None:
    """Poll predicate until truthy or fail after timeout (never a fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.005)
