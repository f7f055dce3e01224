"""Fixtures for runtime tests: a process runtime on a temp root with its own cgroup subtree."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable

import pytest

from kybernetes.runtime import nsutil
from kybernetes.runtime.cgroups import CgroupManager
from kybernetes.runtime.process import ProcessRuntime

IS_ROOT = os.geteuid() == 0
NAMESPACES, NS_WHY = nsutil.namespaces_supported()
_mgr, CG_WHY = CgroupManager.detect()
CGROUPS = _mgr is not None

needs_namespaces = pytest.mark.skipif(not NAMESPACES, reason=f"namespaces unavailable: {NS_WHY}")
needs_cgroups = pytest.mark.skipif(not CGROUPS, reason=f"cgroups unavailable: {CG_WHY}")


async def poll(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    """Wait for cond() (sync or async) to be truthy, failing after a deadline."""
    end = time.monotonic() + timeout
    while True:
        res = cond()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return res
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def _cleanup(rt: ProcessRuntime) -> None:
    for sb in await rt.list_pod_sandboxes():
        await rt.remove_pod_sandbox(sb.id)
    if rt.cgroups is not None:
        rt.cgroups.cgroup().remove()


@pytest.fixture
async def runtime(tmp_path):
    rt = ProcessRuntime(str(tmp_path / "rt"), cgroup_root=f"kyb-test-{secrets.token_hex(4)}")
    yield rt
    await _cleanup(rt)


@pytest.fixture
async def plain_runtime(tmp_path):
    """The degraded mode a non-root user gets: no namespaces, no cgroups."""
    rt = ProcessRuntime(str(tmp_path / "plain"), namespaces=False, cgroups=False)
    yield rt
    await _cleanup(rt)
