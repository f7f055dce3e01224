"""The CRI-shaped runtime interface the kubelet drives, and the records it exchanges.

Every runtime (process, oci, fake) implements :class:`Runtime`. The shapes follow the
Kubernetes Container Runtime Interface closely enough that a reader who knows CRI finds
the same verbs and states here, but they are plain dataclasses: the kubelet calls these
coroutines in-process, no gRPC in between.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


class ContainerState(str, enum.Enum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    UNKNOWN = "UNKNOWN"


class SandboxState(str, enum.Enum):
    READY = "READY"
    NOTREADY = "NOTREADY"


class NamespaceMode(str, enum.Enum):
    """Which namespace a pod's containers use: the pod's, their own, or the node's."""

    POD = "POD"
    CONTAINER = "CONTAINER"
    NODE = "NODE"


class RuntimeServiceError(Exception):
    """Base of the errors a runtime raises; ``reason`` is the CRI-style short reason."""

    reason = "RuntimeError"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class NotFoundError(RuntimeServiceError):
    reason = "NotFound"


class CreateContainerError(RuntimeServiceError):
    reason = "CreateContainerError"


class StartError(RuntimeServiceError):
    """The container's process could not be started (e.g. executable not found)."""

    reason = "StartError"


@dataclass
class Notice:
    """A warning a runtime wants the user to see: the kubelet turns these into Events."""

    reason: str
    message: str
    type: str = "Warning"


@dataclass
class RuntimeEvent:
    """Something a runtime did on its own initiative (e.g. ran a container without its image)."""

    object_id: str
    reason: str
    message: str
    type: str = "Warning"
    timestamp: float = field(default_factory=time.time)


@dataclass
class PodSandboxMetadata:
    name: str
    namespace: str = "default"
    uid: str = ""
    attempt: int = 0


@dataclass
class NamespaceOptions:
    """Namespace sharing, as a pod spec asks for it (hostNetwork, hostPID, hostIPC).

    ``network`` defaults to NODE: pod networking is a later layer; ``pid`` POD means all
    containers of the pod see each other's processes (shareProcessNamespace).
    """

    network: NamespaceMode = NamespaceMode.NODE
    pid: NamespaceMode = NamespaceMode.POD
    ipc: NamespaceMode = NamespaceMode.POD


@dataclass
class PodSandboxConfig:
    metadata: PodSandboxMetadata
    hostname: str = ""
    log_directory: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    namespace_options: NamespaceOptions = field(default_factory=NamespaceOptions)
    # Pod-level limits (sum of container limits) for the pod cgroup; None = unlimited.
    cpu_millis: int | None = None
    memory_bytes: int | None = None


@dataclass
class PodSandboxStatus:
    id: str
    metadata: PodSandboxMetadata
    state: SandboxState
    created_at: float
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    namespace_options: NamespaceOptions = field(default_factory=NamespaceOptions)
    # The process that holds the pod's namespaces (None when none are created).
    pid: int | None = None
    # Pod IP when the pod has its own network; None means the node's address.
    ip: str | None = None
    notices: list[Notice] = field(default_factory=list)


@dataclass
class Mount:
    host_path: str
    container_path: str
    readonly: bool = False


@dataclass
class Resources:
    """Limits from the container spec, already converted from quantities."""

    cpu_millis: int | None = None  # limits.cpu -> CFS quota
    cpu_request_millis: int | None = None  # requests.cpu -> relative weight
    memory_bytes: int | None = None  # limits.memory -> hard limit, no swap
    pids: int | None = None  # pod pids limit


@dataclass
class ContainerMetadata:
    name: str
    attempt: int = 0


@dataclass
class ContainerConfig:
    metadata: ContainerMetadata
    image: str = ""
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    mounts: list[Mount] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)
    log_path: str = ""
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False
    run_as_user: int | None = None
    run_as_group: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # The security context, as the kubelet resolves it from the pod and container specs.
    # Runtimes without the isolation to honour a field ignore it (the process runtime does).
    privileged: bool = False
    readonly_rootfs: bool = False
    capabilities_add: list[str] = field(default_factory=list)  # "NET_ADMIN" or "CAP_NET_ADMIN"; "ALL"
    capabilities_drop: list[str] = field(default_factory=list)
    no_new_privileges: bool = False  # allowPrivilegeEscalation: false
    supplemental_groups: list[int] = field(default_factory=list)
    # "" or "Unconfined": none; "RuntimeDefault"; "localhost/<absolute path of a profile>".
    seccomp: str = ""
    # Overrides the image's StopSignal: "SIGTERM", "TERM" or "15"; "" means the image's, else SIGTERM.
    stop_signal: str = ""
    # Where the container writes its termination message. The kubelet binds a host file there
    # through ``mounts``; a runtime that finds no mount for it may provide one itself.
    termination_message_path: str = ""


@dataclass
class ContainerStatus:
    id: str
    sandbox_id: str
    metadata: ContainerMetadata
    state: ContainerState
    image: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    pid: int | None = None
    exit_code: int | None = None
    # "Completed", "Error", "OOMKilled", "StartError", "Unknown"; empty while running.
    reason: str = ""
    message: str = ""
    log_path: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    # Where the root filesystem came from; None means the host's filesystem.
    rootfs: str | None = None
    notices: list[Notice] = field(default_factory=list)


@dataclass
class ContainerStats:
    id: str
    timestamp: float
    # Cumulative CPU time, and the rate over the last two samples (None on the first).
    cpu_usage_core_nano_seconds: int | None = None
    cpu_usage_nano_cores: int | None = None
    memory_working_set_bytes: int | None = None
    memory_usage_bytes: int | None = None
    pids: int | None = None


@dataclass
class ContainerFilter:
    id: str | None = None
    sandbox_id: str | None = None
    state: ContainerState | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, st: ContainerStatus) -> bool:
        return ((not self.id or st.id.startswith(self.id))
                and (not self.sandbox_id or st.sandbox_id == self.sandbox_id)
                and (not self.state or st.state == self.state) and labels_match(st.labels, self.labels))


@dataclass
class SandboxFilter:
    id: str | None = None
    state: SandboxState | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def matches(self, st: PodSandboxStatus) -> bool:
        return ((not self.id or st.id.startswith(self.id)) and (not self.state or st.state == self.state)
                and labels_match(st.labels, self.labels))


@dataclass
class ImageInfo:
    ref: str
    # False when the runtime accepts the name but cannot provide its filesystem.
    provided: bool
    rootfs: str | None = None
    size: int = 0


@dataclass
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-JSON form of a runtime record (enums become their values)."""

    def fix(v: Any) -> Any:
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(asdict(obj))


def labels_match(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())


class StreamHandle(abc.ABC):
    """An interactive connection to a process: exec's child or attach to a container.

    ``stdout``/``stderr`` are readers that reach EOF when the process closes them;
    with a tty everything arrives on ``stdout`` and ``stderr`` is None.
    """

    tty: bool
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader | None

    @abc.abstractmethod
    async def write_stdin(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def close_stdin(self) -> None: ...

    @abc.abstractmethod
    def resize(self, width: int, height: int) -> None: ...

    @abc.abstractmethod
    async def wait(self) -> int | None:
        """Exit code for exec; None for attach (the container outlives the connection)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Drop the connection (for exec: kill the process if it is still running)."""


class Runtime(abc.ABC):
    """What the kubelet drives. All methods are idempotent where CRI says so:
    stopping a stopped thing and removing a missing thing succeed."""

    name: str = "runtime"
    # True when every container has its own root filesystem (the kubelet then mounts
    # per-container files such as the termination log into it).
    isolated_filesystem: bool = False

    # -- pod sandboxes ------------------------------------------------------
    @abc.abstractmethod
    async def run_pod_sandbox(self, config: PodSandboxConfig) -> str: ...

    @abc.abstractmethod
    async def stop_pod_sandbox(self, sandbox_id: str) -> None: ...

    @abc.abstractmethod
    async def remove_pod_sandbox(self, sandbox_id: str) -> None: ...

    @abc.abstractmethod
    async def pod_sandbox_status(self, sandbox_id: str) -> PodSandboxStatus: ...

    @abc.abstractmethod
    async def list_pod_sandboxes(self, filter: SandboxFilter | None = None) -> list[PodSandboxStatus]: ...

    # -- containers ---------------------------------------------------------
    @abc.abstractmethod
    async def create_container(self, sandbox_id: str, config: ContainerConfig) -> str: ...

    @abc.abstractmethod
    async def start_container(self, container_id: str) -> None: ...

    @abc.abstractmethod
    async def stop_container(self, container_id: str, timeout: float) -> None: ...

    @abc.abstractmethod
    async def remove_container(self, container_id: str) -> None: ...

    @abc.abstractmethod
    async def container_status(self, container_id: str) -> ContainerStatus: ...

    @abc.abstractmethod
    async def list_containers(self, filter: ContainerFilter | None = None) -> list[ContainerStatus]: ...

    @abc.abstractmethod
    async def container_stats(self, container_id: str) -> ContainerStats: ...

    # -- streaming ----------------------------------------------------------
    @abc.abstractmethod
    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float | None = None) -> ExecResult: ...

    @abc.abstractmethod
    async def exec(
        self, container_id: str, cmd: list[str], *, tty: bool = False, stdin: bool = False
    ) -> StreamHandle: ...

    @abc.abstractmethod
    async def attach(self, container_id: str, *, stdin: bool = False) -> StreamHandle: ...

    # -- images ---------------------------------------------------------------
    @abc.abstractmethod
    async def image_status(self, image: str) -> ImageInfo | None: ...

    @abc.abstractmethod
    async def pull_image(self, image: str) -> ImageInfo: ...

    @abc.abstractmethod
    async def list_images(self) -> list[ImageInfo]: ...

    # -- housekeeping ---------------------------------------------------------
    def __init__(self) -> None:
        self._event_listeners: list[Callable[[RuntimeEvent], None]] = []
        self._events: list[RuntimeEvent] = []

    def on_event(self, listener: Callable[[RuntimeEvent], None]) -> None:
        """Subscribe to runtime events (the kubelet records them as Kubernetes Events)."""
        self._event_listeners.append(listener)

    def drain_events(self) -> list[RuntimeEvent]:
        """Events since the last drain, for callers that poll instead of subscribing."""
        events, self._events = self._events, []
        return events

    def _emit(self, event: RuntimeEvent) -> None:
        self._events.append(event)
        # Bounded: a kubelet that never drains must not make the runtime grow forever.
        del self._events[:-1000]
        for listener in list(self._event_listeners):
            listener(event)

    async def open_connection(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader,
                                                                         asyncio.StreamWriter]:
        """A TCP connection to 127.0.0.1:``port`` as the pod sees it (port-forward, probes).

        This default is for runtimes whose pods share the node's network; runtimes that give a
        pod its own network namespace connect from inside it.
        """
        return await asyncio.open_connection("127.0.0.1", port)

    async def close(self) -> None:  # noqa: B027 - optional hook, most runtimes hold nothing
        """Release in-memory resources; containers keep running (a restart finds them)."""
