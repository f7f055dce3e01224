"""Fixtures shared by every test package: a real API server in-process and a client on it.

`api` is an APIServer over a SqliteStore in tmp_path, started and stopped around
each test; `client` is a kybernetes Client on the in-process transport.
(tests/client has its own `client`, on a fake API, which takes precedence there.)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client
from tests.apiserver.conftest import start_api, stop_api

# The e2e tests written before the OCI runtime run host commands on the process runtime;
# the servers they start inherit this. Tests of the OCI runtime ask for it by name.
os.environ.setdefault("KYB_RUNTIME", "process")
# Likewise they share the host's network: a pod network would put a bridge and rules on the
# machine running the tests. The pod network's tests run their nodes in namespaces of their own.
os.environ.setdefault("KYB_POD_NETWORK", "none")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[APIServer]:
    a = await start_api(tmp_path)
    try:
        yield a
    finally:
        await stop_api(a)


@pytest.fixture
async def client(api: APIServer) -> AsyncIterator[Client]:
    c = Client.in_process(api.handle)
    try:
        yield c
    finally:
        await c.close()
