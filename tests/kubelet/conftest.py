"""Fixtures: an in-process API server, and kubelets on FakeRuntime or ProcessRuntime.

Timings are shrunk (sync every 0.05 s, back-off from 0.3 s, probe seconds x0.2) so
the behaviour upstream shows over minutes shows here in well under a second.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kybernetes.client import Client
from kybernetes.kubelet import Kubelet, KubeletConfig
from kybernetes.runtime import nsutil
from kybernetes.runtime.cgroups import CgroupManager
from kybernetes.runtime.fake import FakeRuntime
from kybernetes.runtime.process import ProcessRuntime
from tests.apiserver.conftest import eventually

__all__ = ["eventually"]

IS_ROOT = os.geteuid() == 0
NAMESPACES, NS_WHY = nsutil.namespaces_supported()
_mgr, CG_WHY = CgroupManager.detect()
CGROUPS = _mgr is not None

needs_process = pytest.mark.skipif(not (IS_ROOT and NAMESPACES),
                                   reason=f"process runtime tests need root and namespaces ({NS_WHY})")
needs_cgroups = pytest.mark.skipif(not (IS_ROOT and CGROUPS), reason=f"cgroups unavailable: {CG_WHY}")


def fast_config(tmp_path: Path, **kw: Any) -> KubeletConfig:
    base = {"node_name": "node-1", "root_dir": str(tmp_path / "kubelet"), "host_ip": "127.0.0.1",
            "port": 10250, "sync_period": 0.05, "volume_sync_period": 0.1, "backoff_base": 0.3,
            "backoff_max": 1.2, "lease_renew_interval": 0.1, "node_status_update_frequency": 0.1,
            "probe_time_scale": 0.2}
    base.update(kw)
    return KubeletConfig(**base)


@pytest.fixture
async def make_kubelet(client: Client, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Kubelet] = []
    runtimes: list[Any] = []

    async def make(runtime: str = "fake", **kw: Any) -> Kubelet:
        if runtime == "fake":
            rt: Any = FakeRuntime()
        else:
            rt = ProcessRuntime(str(tmp_path / "rt"), cgroup_root=f"kyb-test-{secrets.token_hex(4)}")
        runtimes.append(rt)
        k = Kubelet(client, rt, fast_config(tmp_path, **kw))
        await k.start()
        started.append(k)
        return k

    yield make
    for k in started:
        await k.stop()
    for rt in runtimes:
        for sb in await rt.list_pod_sandboxes():
            await rt.remove_pod_sandbox(sb.id)
        if isinstance(rt, ProcessRuntime):
            # A holder started by a sync the kubelet's stop cut short was never recorded.
            rt.kill_strays()
            if rt.cgroups is not None:
                rt.cgroups.cgroup().remove()


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", {})
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations},
            "spec": {"nodeName": "node-1", "containers": containers, **spec}}


def sh(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "command": ["sh", "-c", script], **extra}
