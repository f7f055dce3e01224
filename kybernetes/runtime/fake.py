"""The fake runtime behind hollow nodes: pods report Running and nothing runs.

Like kwok's simulated nodes, it lets the control plane be exercised with thousands
of pods on one machine. All state is in memory and cheap: a sandbox and a container
are a few fields each. Behaviour a test may want is driven by container annotations:

* ``fake.kybernetes.io/exit-code: "N"`` - the container ends right after it starts,
  with that exit code (for Jobs on hollow nodes);
* ``fake.kybernetes.io/log: "text"`` - written to the container's log when it starts.

exec_sync answers exit code 0 with no output, so exec probes pass as kwok's do.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

from kybernetes.runtime.base import (
    ContainerConfig,
    ContainerFilter,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    CreateContainerError,
    ExecResult,
    ImageInfo,
    NotFoundError,
    PodSandboxConfig,
    PodSandboxStatus,
    Runtime,
    RuntimeServiceError,
    SandboxFilter,
    SandboxState,
    StreamHandle,
)
from kybernetes.runtime.logs import LogWriter

EXIT_CODE_ANNOTATION = "fake.kybernetes.io/exit-code"
LOG_ANNOTATION = "fake.kybernetes.io/log"


class _FakeStream(StreamHandle):
    """An exec/attach session that has nothing to say and ends at once."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.stdout = asyncio.StreamReader()
        self.stdout.feed_eof()
        self.stderr = None
        if not tty:
            self.stderr = asyncio.StreamReader()
            self.stderr.feed_eof()

    async def write_stdin(self, data: bytes) -> None:
        return None

    async def close_stdin(self) -> None:
        return None

    def resize(self, width: int, height: int) -> None:
        return None

    async def wait(self) -> int | None:
        return 0

    async def close(self) -> None:
        return None


class FakeRuntime(Runtime):
    name = "fake"

    def __init__(self, write_logs: bool = True) -> None:
        super().__init__()
        self.write_logs = write_logs
        self._sandboxes: dict[str, PodSandboxStatus] = {}
        self._containers: dict[str, ContainerStatus] = {}
        self._configs: dict[str, ContainerConfig] = {}
        self._log_dirs: dict[str, str] = {}

    def _sandbox(self, sid: str) -> PodSandboxStatus:
        try:
            return self._sandboxes[sid]
        except KeyError:
            raise NotFoundError(f"pod sandbox {sid!r} not found") from None

    def _container(self, cid: str) -> ContainerStatus:
        try:
            return self._containers[cid]
        except KeyError:
            raise NotFoundError(f"container {cid!r} not found") from None

    @staticmethod
    def _copy(st: ContainerStatus) -> ContainerStatus:
        return ContainerStatus(**{**st.__dict__, "notices": list(st.notices)})

    async def run_pod_sandbox(self, config: PodSandboxConfig) -> str:
        sid = secrets.token_hex(32)
        self._sandboxes[sid] = PodSandboxStatus(
            id=sid, metadata=config.metadata, state=SandboxState.READY, created_at=time.time(),
            labels=dict(config.labels), annotations=dict(config.annotations),
            namespace_options=config.namespace_options,
        )
        self._log_dirs[sid] = config.log_directory
        return sid

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        sb = self._sandbox(sandbox_id)
        for c in self._containers.values():
            if c.sandbox_id == sandbox_id and c.state == ContainerState.RUNNING:
                self._finish(c, 137)
        sb.state = SandboxState.NOTREADY

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        if sandbox_id not in self._sandboxes:
            return
        await self.stop_pod_sandbox(sandbox_id)
        for cid in [c.id for c in self._containers.values() if c.sandbox_id == sandbox_id]:
            await self.remove_container(cid)
        del self._sandboxes[sandbox_id]
        self._log_dirs.pop(sandbox_id, None)

    async def pod_sandbox_status(self, sandbox_id: str) -> PodSandboxStatus:
        return self._sandbox(sandbox_id)

    async def list_pod_sandboxes(self, filter: SandboxFilter | None = None) -> list[PodSandboxStatus]:
        out = []
        for sb in self._sandboxes.values():
            if filter is None or filter.matches(sb):
                out.append(sb)
        return out

    async def create_container(self, sandbox_id: str, config: ContainerConfig) -> str:
        sb = self._sandbox(sandbox_id)
        if sb.state != SandboxState.READY:
            raise CreateContainerError(f"pod sandbox {sandbox_id} is not ready")
        cid = secrets.token_hex(32)
        self._containers[cid] = ContainerStatus(
            id=cid, sandbox_id=sandbox_id, metadata=config.metadata, state=ContainerState.CREATED,
            image=config.image, created_at=time.time(), log_path=config.log_path,
            labels=dict(config.labels), annotations=dict(config.annotations),
        )
        self._configs[cid] = config
        return cid

    def _finish(self, c: ContainerStatus, code: int) -> None:
        c.state = ContainerState.EXITED
        c.exit_code = code
        c.finished_at = time.time()
        c.reason = "Completed" if code == 0 else "Error"

    async def start_container(self, container_id: str) -> None:
        c = self._container(container_id)
        if c.state != ContainerState.CREATED:
            raise RuntimeServiceError(f"container {container_id} was already started", reason="AlreadyStarted")
        c.state = ContainerState.RUNNING
        c.started_at = time.time()
        cfg = self._configs[container_id]
        if self.write_logs and c.log_path:
            path = c.log_path
            if not os.path.isabs(path):
                path = os.path.join(self._log_dirs.get(c.sandbox_id) or ".", path)
            writer = LogWriter(path)
            text = cfg.annotations.get(LOG_ANNOTATION)
            if text:
                writer.write("stdout", text.encode() + (b"" if text.endswith("\n") else b"\n"))
            writer.close()
        code = cfg.annotations.get(EXIT_CODE_ANNOTATION)
        if code is not None:
            self._finish(c, int(code))

    async def stop_container(self, container_id: str, timeout: float) -> None:
        c = self._container(container_id)
        if c.state == ContainerState.RUNNING:
            # A real process would die of SIGTERM (143) or SIGKILL (137); pick the gentle one.
            self._finish(c, 143 if timeout > 0 else 137)

    async def remove_container(self, container_id: str) -> None:
        self._containers.pop(container_id, None)
        self._configs.pop(container_id, None)

    async def container_status(self, container_id: str) -> ContainerStatus:
        return self._copy(self._container(container_id))

    async def list_containers(self, filter: ContainerFilter | None = None) -> list[ContainerStatus]:
        out = []
        for c in self._containers.values():
            if filter is None or filter.matches(c):
                out.append(self._copy(c))
        return out

    async def container_stats(self, container_id: str) -> ContainerStats:
        self._container(container_id)
        return ContainerStats(
            id=container_id, timestamp=time.time(), cpu_usage_core_nano_seconds=0, cpu_usage_nano_cores=0,
            memory_working_set_bytes=0, memory_usage_bytes=0, pids=0,
        )

    def _running(self, container_id: str) -> ContainerStatus:
        c = self._container(container_id)
        if c.state != ContainerState.RUNNING:
            raise RuntimeServiceError(f"container {container_id} is not running", reason="ContainerNotRunning")
        return c

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float | None = None) -> ExecResult:
        self._running(container_id)
        return ExecResult(0, b"", b"")

    async def exec(
        self, container_id: str, cmd: list[str], *, tty: bool = False, stdin: bool = False
    ) -> StreamHandle:
        self._running(container_id)
        return _FakeStream(tty)

    async def attach(self, container_id: str, *, stdin: bool = False) -> StreamHandle:
        self._running(container_id)
        return _FakeStream(self._configs[container_id].tty)

    async def image_status(self, image: str) -> ImageInfo | None:
        return ImageInfo(ref=image, provided=True)

    async def pull_image(self, image: str) -> ImageInfo:
        return ImageInfo(ref=image, provided=True)

    async def list_images(self) -> list[ImageInfo]:
        return [ImageInfo(ref=i, provided=True) for i in sorted({c.image for c in self._containers.values()})]
