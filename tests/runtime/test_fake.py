"""The fake runtime: sandboxes and containers report states without running anything."""

from __future__ import annotations

import pytest

from kybernetes.runtime import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerState,
    FakeRuntime,
    NotFoundError,
    PodSandboxConfig,
    PodSandboxMetadata,
    RuntimeServiceError,
    SandboxState,
)
from kybernetes.runtime.fake import EXIT_CODE_ANNOTATION, LOG_ANNOTATION
from kybernetes.runtime.logs import LogOptions, read_logs


async def test_lifecycle_reports_running_without_processes(tmp_path) -> None:
    rt = FakeRuntime()
    sid = await rt.run_pod_sandbox(
        PodSandboxConfig(PodSandboxMetadata("p", "ns", "uid1"), log_directory=str(tmp_path), labels={"a": "b"})
    )
    cid = await rt.create_container(
        sid, ContainerConfig(ContainerMetadata("c"), image="nginx", log_path="c/0.log",
                             annotations={LOG_ANNOTATION: "hello"})
    )
    assert (await rt.container_status(cid)).state == ContainerState.CREATED
    await rt.start_container(cid)
    st = await rt.container_status(cid)
    assert st.state == ContainerState.RUNNING and st.started_at
    with pytest.raises(RuntimeServiceError):
        await rt.start_container(cid)
    assert (await rt.exec_sync(cid, ["true"])).exit_code == 0
    logs = b"".join([c async for c in read_logs(str(tmp_path / "c/0.log"), LogOptions())])
    assert logs == b"hello\n"
    assert [c.id for c in await rt.list_containers(ContainerFilter(sandbox_id=sid))] == [cid]
    assert [s.id for s in await rt.list_pod_sandboxes()] == [sid]
    await rt.stop_container(cid, 30)
    st = await rt.container_status(cid)
    assert (st.state, st.exit_code, st.reason) == (ContainerState.EXITED, 143, "Error")
    await rt.stop_pod_sandbox(sid)
    assert (await rt.pod_sandbox_status(sid)).state == SandboxState.NOTREADY
    await rt.remove_pod_sandbox(sid)
    await rt.remove_pod_sandbox(sid)  # idempotent
    with pytest.raises(NotFoundError):
        await rt.container_status(cid)


async def test_annotated_exit_code_completes_at_once() -> None:
    rt = FakeRuntime()
    sid = await rt.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("job")))
    cid = await rt.create_container(
        sid, ContainerConfig(ContainerMetadata("c"), image="busybox", annotations={EXIT_CODE_ANNOTATION: "0"})
    )
    await rt.start_container(cid)
    st = await rt.container_status(cid)
    assert (st.state, st.exit_code, st.reason) == (ContainerState.EXITED, 0, "Completed")
    with pytest.raises(RuntimeServiceError):
        await rt.exec_sync(cid, ["true"])
