"""One pod worker per pod: drives the runtime until the pod's containers match its spec.

A worker loops over ``sync``: each pass looks at the pod object and at the runtime
(polled with container_status, like upstream's PLEG relist) and takes the next
step: sandbox and volumes, init containers one at a time (each must exit 0), then
the app containers, restarting exited ones per restartPolicy with upstream's
exponential back-off, and finally reports the status it saw. Deletion runs the
preStop hooks, stops every container within the grace period, and removes the pod
object with gracePeriodSeconds=0 once nothing runs any more.

Workers are woken by pod updates and probe results, and otherwise poll every
``sync_period``; they keep no state a restarted kubelet could not rebuild from the
runtime's labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kybernetes.api.errors import StatusError
from kybernetes.api.quantity import parse_quantity
from kybernetes.kubelet import dns as kdns
from kybernetes.kubelet import security
from kybernetes.kubelet import status as podstatus
from kybernetes.kubelet import termination
from kybernetes.kubelet.env import EnvError, container_env, expand_command
from kybernetes.kubelet.probes import FAILURE, SUCCESS, ProbeWorker, cancel_and_wait, run_check
from kybernetes.kubelet.volumes import VolumeError, container_mounts
from kybernetes.runtime.base import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerState,
    ContainerStatus,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    PodSandboxConfig,
    PodSandboxMetadata,
    Resources,
    RuntimeServiceError,
    SandboxState,
)

if TYPE_CHECKING:
    from kybernetes.kubelet.kubelet import Kubelet

log = logging.getLogger(__name__)

Obj = dict[str, Any]

LABEL_POD_UID = "io.kubernetes.pod.uid"
LABEL_POD_NAME = "io.kubernetes.pod.name"
LABEL_POD_NAMESPACE = "io.kubernetes.pod.namespace"
LABEL_CONTAINER = "io.kubernetes.container.name"
ANNOTATION_RESTARTS = "io.kubernetes.container.restartCount"
FAKE_PREFIX = "fake.kybernetes.io/"


# Waiting reasons after which the next sync tries to create the container again (image
# pulls have their own back-off in the image manager).
_RETRY_START = ("ContainerCreating", "CreateContainerConfigError", "CreateContainerError", "ErrImagePull",
                "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName")


def _image_id(image: Any) -> str:
    digests = getattr(image, "repo_digests", None) or []
    return digests[0] if digests else image.id


class BackOff:
    """Upstream's flowcontrol.Backoff for container restarts: per key, doubling to a cap.

    An entry not touched for twice the cap (10 minutes by default) starts over at the
    base: a container that ran that long without trouble gets a fresh back-off.
    """

    def __init__(self, base: float = 10.0, cap: float = 300.0) -> None:
        self.base = base
        self.cap = cap
        self._entries: dict[str, tuple[float, float]] = {}  # key -> (duration, last update)

    def _live(self, key: str, now: float) -> tuple[float, float] | None:
        e = self._entries.get(key)
        if e is not None and now - e[1] > 2 * self.cap:
            del self._entries[key]
            return None
        return e

    def in_backoff_since(self, key: str, event_time: float, now: float | None = None) -> float:
        """Seconds still to wait after an exit at ``event_time`` (0 = may restart)."""
        now = time.time() if now is None else now
        e = self._live(key, now)
        if e is None:
            return 0.0
        return max(0.0, e[0] - (now - event_time))

    def current(self, key: str) -> float:
        e = self._entries.get(key)
        return e[0] if e else self.base

    def next(self, key: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        e = self._live(key, now)
        duration = self.base if e is None else min(e[0] * 2, self.cap)
        self._entries[key] = (duration, now)

    def forget_prefix(self, prefix: str) -> None:
        for k in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[k]


@dataclass
class ContainerRecord:
    """What the worker knows about one container name of the pod."""

    spec: Obj
    init: bool
    container_id: str | None = None
    restart_count: int = 0
    status: ContainerStatus | None = None
    # The previous attempt, for lastState and `kubectl logs --previous`.
    previous: ContainerStatus | None = None
    previous_id: str | None = None
    waiting: tuple[str, str] | None = None
    probes: dict[str, ProbeWorker] = field(default_factory=dict)
    kill_reason: str = ""
    image_ref: str = ""  # what the runtime was given: the image's id in the node's image store
    image_id: str = ""  # what status.imageID shows: the repo digest where there is one
    create_failed_at: float = 0.0  # when the runtime last refused to create it (for the back-off)

    @property
    def name(self) -> str:
        return self.spec["name"]


def _cpu_millis(q: Any) -> int | None:
    return parse_quantity(q).milli_value() if q is not None else None


def _bytes(q: Any) -> int | None:
    return parse_quantity(q).value() if q is not None else None


class PodWorker:
    def __init__(self, kubelet: Kubelet, pod: Obj, *, static: bool = False) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.static = static
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta.get("namespace") or "default"
        self.name: str = meta["name"]
        self.sandbox_id: str | None = None
        self.sandbox_ready = False
        self.containers: dict[str, ContainerRecord] = {}
        self.removed = False  # the pod object is gone from the API (or the manifest from disk)
        self.finished = False
        self.init_failed = False
        self.start_time: str | None = (pod.get("status") or {}).get("startTime")
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_status: Obj | None = None
        self._volume_paths: dict[str, str] | None = None
        self._last_volume_sync = 0.0
        self._adopted = False
        self.pod_ips: list[str] = []  # from the pod network; empty on the node's network
        self._said_network_not_ready = False
        self._said_missing_dns = False
        self._rebuild_records()

    # ------------------------------------------------------------------ lifecycle

    @property
    def log_dir(self) -> str:
        return os.path.join(self.kubelet.config.root_dir, "logs", "pods", f"{self.namespace}_{self.name}_{self.uid}")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self._rebuild_records()
        self.wake()

    def mark_removed(self) -> None:
        self.removed = True
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop working on the pod (kubelet shutdown); its containers keep running."""
        if self._task is not None:
            await cancel_and_wait(self._task)
        for rec in self.containers.values():
            await self._stop_probes(rec)

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _rebuild_records(self) -> None:
        spec = self.pod.get("spec") or {}
        for init, key in ((True, "initContainers"), (False, "containers")):
            for c in spec.get(key) or []:
                rec = self.containers.get(c["name"])
                if rec is None:
                    self.containers[c["name"]] = ContainerRecord(spec=c, init=init)
                else:
                    rec.spec = c  # only image may change in place; the rest is immutable

    async def _run(self) -> None:
        period = self.kubelet.config.sync_period
        while not self.finished:
            self._wake.clear()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("syncing pod %s/%s", self.namespace, self.name)
            if self.finished:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), period)

    # ------------------------------------------------------------------ the sync step

    @property
    def deleting(self) -> bool:
        return bool(self.pod["metadata"].get("deletionTimestamp"))

    async def sync(self) -> None:
        if not self._adopted:
            await self._adopt()
        if self.removed or self.deleting:
            await self.terminate()
            return
        phase = (self.pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed") and self._last_status is None:
            # Finished before this kubelet saw it: nothing may run again.
            await self._kill_all(0)
            return
        await self._refresh()
        await self._network_ips()
        if self._terminal_phase():
            if self.sandbox_ready:
                # Done for good: nothing restarts, so release the sandbox once.
                await self._kill_all(0, stop_sandbox=True)
            await self.write_status()
            return
        if not await self._ensure_sandbox():
            await self.write_status()
            return
        initialized = await self._sync_init_containers()
        if initialized and not self.init_failed:
            for rec in self._app_records():
                await self._sync_container(rec)
        msg = self.kubelet.volumes.empty_dir_over_limit(self.pod)
        if msg:
            await self._evict(msg)
            return
        await self._refresh()
        await self.write_status()

    def _terminal_phase(self) -> bool:
        return (self._last_status or {}).get("phase") in ("Succeeded", "Failed")

    def _init_records(self) -> list[ContainerRecord]:
        return [self.containers[c["name"]] for c in (self.pod.get("spec") or {}).get("initContainers") or []]

    def _app_records(self) -> list[ContainerRecord]:
        return [self.containers[c["name"]] for c in (self.pod.get("spec") or {}).get("containers") or []]

    async def _adopt(self) -> None:
        """Find what an earlier kubelet started for this pod (labels carry the pod uid)."""
        self._adopted = True
        rt = self.kubelet.runtime
        for sb in await rt.list_pod_sandboxes():
            if sb.labels.get(LABEL_POD_UID) == self.uid and sb.state == SandboxState.READY:
                self.sandbox_id = sb.id
        if self.sandbox_id is None:
            return
        found = await rt.list_containers(ContainerFilter(sandbox_id=self.sandbox_id))
        for st in sorted(found, key=lambda s: s.created_at):
            rec = self.containers.get(st.labels.get(LABEL_CONTAINER, ""))
            if rec is None:
                continue
            if rec.container_id is not None:
                rec.previous, rec.previous_id = rec.status, rec.container_id
            rec.container_id, rec.status = st.id, st
            rec.image_ref = rec.image_id = st.image
            rec.restart_count = int(st.annotations.get(ANNOTATION_RESTARTS, "0") or 0)
            self.kubelet.own(st.id, self)
        # Probes live in the kubelet, not the runtime: an adopted container needs them again.
        for rec in self._app_records():
            if rec.status is not None and rec.status.state == ContainerState.RUNNING and not rec.probes:
                self._start_probes(rec)

    async def _refresh(self) -> None:
        for rec in self.containers.values():
            if rec.container_id is None:
                continue
            try:
                rec.status = await self.kubelet.runtime.container_status(rec.container_id)
            except RuntimeServiceError:
                rec.status = None
                rec.container_id = None
                continue
            self.kubelet.notices(self, rec.status.notices)
            if rec.status.state == ContainerState.EXITED and not rec.status.message:
                rec.status.message = termination.message(rec.status, rec.spec)

    # ------------------------------------------------------------------ sandbox and volumes

    def _pod_ip(self) -> str:
        return self.pod_ips[0] if self.pod_ips else self.kubelet.config.host_ip

    def own_network(self) -> bool:
        """Whether this pod gets its own network (the node has a pod network, and no hostNetwork)."""
        return self.kubelet.network is not None and not (self.pod.get("spec") or {}).get("hostNetwork")

    async def _network_ips(self) -> None:
        """The sandbox's addresses from the pod network (after an adoption, once it is ready)."""
        net = self.kubelet.network
        if self.pod_ips or self.sandbox_id is None or net is None or not net.ready or not self.own_network():
            return
        got = await net.status(self.sandbox_id)
        if got is not None:
            self.pod_ips = got.ips

    async def _ensure_sandbox(self) -> bool:
        rt = self.kubelet.runtime
        if self.sandbox_id is not None:
            try:
                sb = await rt.pod_sandbox_status(self.sandbox_id)
                self.sandbox_ready = sb.state == SandboxState.READY
            except RuntimeServiceError:
                self.sandbox_ready = False
            if not self.sandbox_ready:
                # The sandbox died under the containers: start over with a new one, as upstream.
                self.kubelet.event(self.pod, "Normal", "SandboxChanged",
                                   "Pod sandbox changed, it will be killed and re-created.")
                await self._kill_all(0, stop_sandbox=True, remove_sandbox=True)
        if not await self._sync_volumes():
            return False
        net = self.kubelet.network
        own_net = self.own_network()
        if self.sandbox_id is None and own_net and net is not None and not net.ready:
            if not self._said_network_not_ready:
                self._said_network_not_ready = True
                self.kubelet.event(self.pod, "Warning", "NetworkNotReady", net.not_ready_message())
            return False
        if self.sandbox_id is None:
            spec = self.pod.get("spec") or {}
            limits = self._pod_limits()
            config = PodSandboxConfig(
                metadata=PodSandboxMetadata(self.name, self.namespace, self.uid),
                hostname=spec.get("hostname") or self.name,
                log_directory=self.log_dir,
                labels={LABEL_POD_UID: self.uid, LABEL_POD_NAME: self.name, LABEL_POD_NAMESPACE: self.namespace},
                annotations=dict(self.pod["metadata"].get("annotations") or {}),
                namespace_options=NamespaceOptions(
                    network=NamespaceMode.POD if own_net else NamespaceMode.NODE,
                    pid=NamespaceMode.NODE if spec.get("hostPID") else (
                        NamespaceMode.POD if spec.get("shareProcessNamespace") else NamespaceMode.CONTAINER),
                    ipc=NamespaceMode.NODE if spec.get("hostIPC") else NamespaceMode.POD),
                cpu_millis=limits[0], memory_bytes=limits[1],
            )
            os.makedirs(self.log_dir, exist_ok=True)
            try:
                self.sandbox_id = await rt.run_pod_sandbox(config)
            except RuntimeServiceError as e:
                self.kubelet.event(self.pod, "Warning", "FailedCreatePodSandBox",
                                   f"Failed to create pod sandbox: {e}")
                return False
            self.kubelet.own(self.sandbox_id, self)
            if own_net and net is not None:
                try:
                    sb = await rt.pod_sandbox_status(self.sandbox_id)
                    self.pod_ips = (await net.add(self.sandbox_id, f"/proc/{sb.pid}/ns/net", self.pod)).ips
                except Exception as e:  # noqa: BLE001 - any failure is the sandbox's, retried with a new one
                    self.kubelet.event(self.pod, "Warning", "FailedCreatePodSandBox",
                                       f'Failed to create pod sandbox: failed to setup network for sandbox '
                                       f'"{self.sandbox_id}": {e}')
                    with contextlib.suppress(Exception):
                        await net.delete(self.sandbox_id)
                    with contextlib.suppress(RuntimeServiceError):
                        await rt.remove_pod_sandbox(self.sandbox_id)
                    self.kubelet.disown(self.sandbox_id)
                    self.sandbox_id = None
                    return False
            self.sandbox_ready = True
            if self.start_time is None:
                self.start_time = podstatus.rfc3339(time.time())
        return True

    def _pod_limits(self) -> tuple[int | None, int | None]:
        """Sum of app container limits (cpu millis, memory bytes); None when any is unlimited."""
        cpu: int | None = 0
        mem: int | None = 0
        for c in (self.pod.get("spec") or {}).get("containers") or []:
            lim = (c.get("resources") or {}).get("limits") or {}
            cpu = None if cpu is None or "cpu" not in lim else cpu + (_cpu_millis(lim["cpu"]) or 0)
            mem = None if mem is None or "memory" not in lim else mem + (_bytes(lim["memory"]) or 0)
        return cpu, mem

    async def _sync_volumes(self) -> bool:
        now = time.monotonic()
        if self._volume_paths is not None and now - self._last_volume_sync < self.kubelet.config.volume_sync_period:
            return True
        try:
            self._volume_paths = await self.kubelet.volumes.setup(self.pod, self.pod_ips or self._pod_ip(),
                                                                  self.kubelet.config.host_ips)
        except (VolumeError, OSError) as e:
            self.kubelet.event(self.pod, "Warning", "FailedMount", f"MountVolume.SetUp failed: {e}")
            if self._volume_paths is None:
                return False
            return True  # a refresh failed: keep running with what was mounted
        self._last_volume_sync = now
        return True

    # ------------------------------------------------------------------ containers

    def _restart_policy(self) -> str:
        return (self.pod.get("spec") or {}).get("restartPolicy") or "Always"

    async def _sync_init_containers(self) -> bool:
        """Advance the init containers; True once all of them have exited 0."""
        for rec in self._init_records():
            st = rec.status
            if rec.container_id is None or st is None:
                if rec.waiting is None or rec.waiting[0] not in ("CrashLoopBackOff",):
                    await self._start(rec)
                return False
            if st.state in (ContainerState.RUNNING, ContainerState.CREATED):
                return False
            if st.exit_code == 0:
                rec.waiting = None
                continue
            if self._restart_policy() == "Never":
                self.init_failed = True
                return False
            await self._restart_with_backoff(rec)
            return False
        return True

    async def _sync_container(self, rec: ContainerRecord) -> None:
        st = rec.status
        if rec.container_id is None or st is None:
            if rec.waiting is None or rec.waiting[0] in _RETRY_START:
                await self._start(rec)
            return
        if st.state == ContainerState.RUNNING:
            if rec.kill_reason:
                reason, rec.kill_reason = rec.kill_reason, ""
                self.kubelet.event(self.pod, "Normal", "Killing", reason, field_path=self._field_path(rec))
                await self._stop_probes(rec)
                await self._stop_container(rec, self._grace())
                rec.status = await self.kubelet.runtime.container_status(rec.container_id)
                await self._after_exit(rec)
            return
        if st.state == ContainerState.EXITED:
            await self._after_exit(rec)

    async def _after_exit(self, rec: ContainerRecord) -> None:
        await self._stop_probes(rec)
        st = rec.status
        assert st is not None
        policy = self._restart_policy()
        if policy == "Always" or (policy == "OnFailure" and st.exit_code != 0):
            await self._restart_with_backoff(rec)
        else:
            rec.waiting = None

    def _backoff_key(self, rec: ContainerRecord) -> str:
        return f"{self.uid}/{rec.name}/{rec.spec.get('image', '')}"

    async def _restart_with_backoff(self, rec: ContainerRecord) -> None:
        st = rec.status
        assert st is not None
        key = self._backoff_key(rec)
        backoff = self.kubelet.backoff
        remaining = backoff.in_backoff_since(key, st.finished_at or time.time())
        if remaining > 0:
            msg = (f"back-off {_fmt_duration(backoff.current(key))} restarting failed container={rec.name} "
                   f"pod={self.name}_{self.namespace}({self.uid})")
            if rec.waiting is None or rec.waiting[0] != "CrashLoopBackOff":
                self.kubelet.event(self.pod, "Warning", "BackOff", "Back-off restarting failed container "
                                   f"{rec.name} in pod {self.name}_{self.namespace}({self.uid})",
                                   field_path=self._field_path(rec))
            rec.waiting = ("CrashLoopBackOff", msg)
            # Come back when the back-off ends rather than at the next poll.
            asyncio.get_running_loop().call_later(remaining + 0.01, self.wake)
            return
        backoff.next(key)
        await self._start(rec)

    def _field_path(self, rec: ContainerRecord) -> str:
        kind = "initContainers" if rec.init else "containers"
        return f"spec.{kind}{{{rec.name}}}"

    async def _start(self, rec: ContainerRecord) -> None:
        """Create and start a new attempt of the container (the first, or a restart)."""
        k = self.kubelet
        rt = k.runtime
        assert self.sandbox_id is not None
        c = rec.spec
        fp = self._field_path(rec)
        attempt = rec.restart_count + 1 if rec.container_id is not None else rec.restart_count
        create_key = f"{self.uid}/{rec.name}/create"
        if rec.waiting is not None and rec.waiting[0] == "CreateContainerError":
            # Upstream backs off failed creations as it does crash loops (10 s doubling to 5 min).
            if self.kubelet.backoff.in_backoff_since(create_key, rec.create_failed_at) > 0:
                return
        image = c.get("image", "")
        k.pulling(image, self)
        pulled = await k.image_manager.ensure(self.pod, c, self.wake, fp)
        k.flush_runtime_events()
        if pulled.image is None:
            rec.waiting = pulled.waiting
            return
        rec.image_ref = pulled.image_ref
        rec.image_id = _image_id(pulled.image)
        try:
            env = await container_env(
                self.pod, c, get_configmap=k.get_configmap, get_secret=k.get_secret, services=k.services(),
                pod_ip=self.pod_ips or self._pod_ip(), host_ip=k.config.host_ips, node_allocatable=k.allocatable,
                warn=lambda m: k.event(self.pod, "Warning", "InvalidEnvironmentVariableNames", m))
            command, args = expand_command(c, env)
            mounts = container_mounts(c, self._volume_paths or {}, self.pod)
        except (EnvError, VolumeError) as e:
            rec.waiting = ("CreateContainerConfigError", str(e))
            k.event(self.pod, "Warning", "Failed", f"Error: {e}", field_path=fp)
            return
        res = c.get("resources") or {}
        lim, req = res.get("limits") or {}, res.get("requests") or {}
        sec = security.effective(self.pod, c)
        if sec.seccomp.startswith("localhost/"):
            # Localhost profiles are paths under the kubelet's seccomp directory, as upstream.
            sec.seccomp = "localhost/" + os.path.join(k.config.root_dir, "seccomp", sec.seccomp[len("localhost/"):])
        try:
            security.verify_run_as_non_root(self.pod, c, sec, str(pulled.image.config.get("User") or ""))
        except security.SecurityError as e:
            rec.waiting = ("CreateContainerConfigError", str(e))
            k.event(self.pod, "Warning", "Failed", f"Error: {e}", field_path=fp)
            return
        log_path = os.path.join(self.log_dir, rec.name, f"{attempt}.log")
        if os.path.exists(log_path):
            os.unlink(log_path)  # a stale file from an attempt the runtime forgot
        annotations = {ANNOTATION_RESTARTS: str(attempt)}
        if rt.isolated_filesystem and self.own_network():
            # A volume the pod mounts at /etc/hosts or /etc/resolv.conf wins: the kubelet then
            # does not manage that file (as upstream).
            taken = {os.path.normpath(m.container_path) for m in mounts}
            mounts.extend(m for m in self._network_files() if m.container_path not in taken)
        if rt.isolated_filesystem:
            term = termination.prepare(os.path.join(k.volumes.pod_dir(self.uid), "containers"), rec.name,
                                       attempt)
            mounts.append(Mount(host_path=term, container_path=c.get("terminationMessagePath")
                                or termination.DEFAULT_PATH))
            annotations[termination.ANNOTATION_HOST_PATH] = term
        annotations.update({a: v for a, v in (self.pod["metadata"].get("annotations") or {}).items()
                            if a.startswith(FAKE_PREFIX)})
        config = ContainerConfig(
            metadata=ContainerMetadata(rec.name, attempt), image=rec.image_ref, command=command, args=args, env=env,
            working_dir=c.get("workingDir") or "", mounts=mounts,
            resources=Resources(cpu_millis=_cpu_millis(lim.get("cpu")), cpu_request_millis=_cpu_millis(req.get("cpu")),
                                memory_bytes=_bytes(lim.get("memory"))),
            log_path=log_path, tty=bool(c.get("tty")), stdin=bool(c.get("stdin")),
            stdin_once=bool(c.get("stdinOnce")), run_as_user=sec.run_as_user, run_as_group=sec.run_as_group,
            privileged=sec.privileged, readonly_rootfs=sec.readonly_rootfs, capabilities_add=sec.capabilities_add,
            capabilities_drop=sec.capabilities_drop, no_new_privileges=sec.no_new_privileges,
            supplemental_groups=sec.supplemental_groups, seccomp=sec.seccomp,
            termination_message_path=c.get("terminationMessagePath") or termination.DEFAULT_PATH,
            labels={LABEL_POD_UID: self.uid, LABEL_POD_NAME: self.name, LABEL_POD_NAMESPACE: self.namespace,
                    LABEL_CONTAINER: rec.name},
            annotations=annotations,
        )
        try:
            cid = await rt.create_container(self.sandbox_id, config)
        except RuntimeServiceError as e:
            rec.waiting = ("CreateContainerError", str(e))
            k.event(self.pod, "Warning", "Failed", f"Error: {e}", field_path=fp)
            k.backoff.next(create_key)
            rec.create_failed_at = time.time()
            asyncio.get_running_loop().call_later(k.backoff.current(create_key) + 0.01, self.wake)
            return
        k.own(cid, self)
        k.flush_runtime_events()
        # Keep exactly one previous attempt: what lastState and `logs --previous` read.
        if rec.container_id is not None:
            if rec.previous_id is not None:
                with contextlib.suppress(RuntimeServiceError):
                    await rt.remove_container(rec.previous_id)
                k.disown(rec.previous_id)
            rec.previous, rec.previous_id = rec.status, rec.container_id
        rec.container_id, rec.restart_count, rec.waiting, rec.kill_reason = cid, attempt, None, ""
        k.event(self.pod, "Normal", "Created", f"Created container {rec.name}", field_path=fp)
        try:
            await rt.start_container(cid)
        except RuntimeServiceError as e:
            k.event(self.pod, "Warning", "Failed", f"Error: {e}", field_path=fp)
            rec.status = await rt.container_status(cid)
            return
        k.event(self.pod, "Normal", "Started", f"Started container {rec.name}", field_path=fp)
        rec.status = await rt.container_status(cid)
        post = ((c.get("lifecycle") or {}).get("postStart"))
        if post:
            result, message = await run_check(post, runtime=rt, container_id=cid, container=c,
                                              pod_ip=self._pod_ip(), timeout=self._grace() or 30)
            if result == FAILURE:
                k.event(self.pod, "Warning", "FailedPostStartHook", message, field_path=fp)
                await self._stop_container(rec, self._grace())
                rec.status = await rt.container_status(cid)
                return
        if not rec.init:
            self._start_probes(rec)

    # ------------------------------------------------------------------ probes

    def _start_probes(self, rec: ContainerRecord) -> None:
        assert rec.container_id is not None
        startup_gate: asyncio.Event | None = None
        scale = self.kubelet.config.probe_time_scale
        specs = [(kind, rec.spec.get(f"{kind}Probe")) for kind in ("startup", "liveness", "readiness")]
        for kind, probe in specs:
            if not probe:
                continue
            w = ProbeWorker(kind, probe, runtime=self.kubelet.runtime, container_id=rec.container_id,
                            container=rec.spec, pod_ip=self._pod_ip(),
                            on_change=lambda w, rec=rec: self._probe_changed(rec, w),
                            on_failure=lambda w, m, rec=rec: self._probe_failed(rec, w, m), time_scale=scale)
            if kind == "startup":
                startup_gate = asyncio.Event()
            else:
                w.gate = startup_gate
            rec.probes[kind] = w
            w.start()

    def _probe_changed(self, rec: ContainerRecord, w: ProbeWorker) -> None:
        if w.kind == "startup" and w.done:
            for other in rec.probes.values():
                if other.gate is not None:
                    other.gate.set()
        if w.kind in ("liveness", "startup") and w.result == FAILURE:
            rec.kill_reason = f"Container {rec.name} failed {w.kind} probe, will be restarted"
        self.wake()

    def _probe_failed(self, rec: ContainerRecord, w: ProbeWorker, message: str) -> None:
        self.kubelet.event(self.pod, "Warning", "Unhealthy", f"{w.kind.capitalize()} probe failed: {message}",
                           field_path=self._field_path(rec))

    async def _stop_probes(self, rec: ContainerRecord) -> None:
        probes, rec.probes = rec.probes, {}
        for w in probes.values():
            await w.stop()

    def _ready(self, rec: ContainerRecord) -> tuple[bool, bool]:
        """(started, ready) of the current attempt."""
        st = rec.status
        if st is None or st.state != ContainerState.RUNNING or rec.waiting is not None:
            return False, False
        startup = rec.probes.get("startup")
        started = startup is None or startup.done
        readiness = rec.probes.get("readiness")
        ready = started and (readiness is None or readiness.result == SUCCESS)
        if "readinessProbe" in rec.spec and readiness is None:
            ready = False  # probes not (yet) running for this attempt
        return started, ready

    # ------------------------------------------------------------------ stopping

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod.get("spec") or {}
        g = meta.get("deletionGracePeriodSeconds")
        if g is None:
            g = spec.get("terminationGracePeriodSeconds")
        return float(30 if g is None else g)

    async def _stop_container(self, rec: ContainerRecord, grace: float) -> None:
        """preStop hook, then SIGTERM and SIGKILL after what is left of the grace period."""
        if rec.container_id is None:
            return
        deadline = time.monotonic() + grace
        pre = (rec.spec.get("lifecycle") or {}).get("preStop")
        st = rec.status
        if pre and st is not None and st.state == ContainerState.RUNNING and grace > 0:
            result, message = await run_check(pre, runtime=self.kubelet.runtime, container_id=rec.container_id,
                                              container=rec.spec, pod_ip=self._pod_ip(), timeout=grace)
            if result == FAILURE:
                self.kubelet.event(self.pod, "Warning", "FailedPreStopHook", message,
                                   field_path=self._field_path(rec))
        # Upstream leaves at least a little time for SIGTERM even after a slow hook.
        remaining = max(deadline - time.monotonic(), 2.0 if grace > 0 else 0.0)
        with contextlib.suppress(RuntimeServiceError):
            await self.kubelet.runtime.stop_container(rec.container_id, remaining)

    async def _kill_all(self, grace: float, *, stop_sandbox: bool = False, remove_sandbox: bool = False,
                        events: bool = False) -> None:
        rt = self.kubelet.runtime
        jobs = []
        for rec in self.containers.values():
            await self._stop_probes(rec)
            if rec.container_id is None:
                continue
            with contextlib.suppress(RuntimeServiceError):
                rec.status = await rt.container_status(rec.container_id)
            if rec.status is not None and rec.status.state == ContainerState.RUNNING:
                if events:
                    self.kubelet.event(self.pod, "Normal", "Killing", f"Stopping container {rec.name}",
                                       field_path=self._field_path(rec))
                jobs.append(self._stop_container(rec, grace))
        # Containers stop in parallel, each with the whole grace period, as upstream.
        await asyncio.gather(*jobs)
        for rec in self.containers.values():
            if rec.container_id is not None:
                with contextlib.suppress(RuntimeServiceError):
                    rec.status = await rt.container_status(rec.container_id)
            if rec.waiting is not None and rec.status is not None:
                rec.waiting = None
        if self.sandbox_id is not None and (stop_sandbox or remove_sandbox):
            await self._release_network()
            with contextlib.suppress(RuntimeServiceError):
                await rt.stop_pod_sandbox(self.sandbox_id)
            self.sandbox_ready = False
            if remove_sandbox:
                with contextlib.suppress(RuntimeServiceError):
                    await rt.remove_pod_sandbox(self.sandbox_id)
                self.kubelet.disown(self.sandbox_id)
                for rec in self.containers.values():
                    if rec.container_id is not None:
                        rec.previous, rec.previous_id = rec.status, None
                        self.kubelet.disown(rec.container_id)
                        rec.container_id = None
                        rec.restart_count += 1
                self.sandbox_id = None

    def _network_files(self) -> list[Mount]:
        """The kubelet-managed /etc/hosts and /etc/resolv.conf of a pod on the pod network."""
        k = self.kubelet
        base = os.path.join(k.volumes.pod_dir(self.uid), "etc")
        os.makedirs(base, exist_ok=True)
        domain = k.config.cluster_domain
        files = {"hosts": kdns.hosts_file(self.pod, self.pod_ips, domain),
                 "resolv.conf": kdns.resolv_conf(self.pod, cluster_dns=k.config.cluster_dns, cluster_domain=domain,
                                                 host=k.host_resolv_conf()).render()}
        out = []
        for name, text in files.items():
            path = os.path.join(base, name)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            out.append(Mount(host_path=path, container_path=f"/etc/{name}"))
        if kdns.missing_cluster_dns(self.pod, k.config.cluster_dns) and not self._said_missing_dns:
            self._said_missing_dns = True
            k.event(self.pod, "Warning", "MissingClusterDNS", "pod: \"" + f"{self.name}_{self.namespace}({self.uid})"
                    + '\". kubelet does not have ClusterDNS IP configured and cannot create Pod using "ClusterFirst" '
                    'policy. Falling back to "Default" policy.')
        return out

    async def _release_network(self) -> None:
        """Give the sandbox's addresses back (upstream tears the network down when a sandbox stops)."""
        net = self.kubelet.network
        if self.sandbox_id is not None and net is not None and self.own_network():
            try:
                await net.delete(self.sandbox_id)
            except Exception:  # noqa: BLE001 - the network's GC frees what a failed delete leaves
                log.exception("releasing the network of pod %s/%s", self.namespace, self.name)

    async def terminate(self) -> None:
        """Graceful termination; then remove the pod object (grace 0) and forget the pod."""
        grace = 0.0 if self.removed and not self.deleting else self._grace()
        await self._kill_all(grace, stop_sandbox=True, events=not self.removed)
        if not self.removed:
            await self.write_status(terminating=True)
        await self._release_network()
        with contextlib.suppress(RuntimeServiceError):
            if self.sandbox_id is not None:
                await self.kubelet.runtime.remove_pod_sandbox(self.sandbox_id)
        self.kubelet.volumes.teardown(self.uid)
        self.kubelet.backoff.forget_prefix(self.uid + "/")
        self.kubelet.image_manager.forget_pod(self.uid)
        if not self.removed:
            await self.kubelet.delete_pod_object(self)
        self.finished = True

    async def _evict(self, message: str) -> None:
        self.kubelet.event(self.pod, "Warning", "Evicted", message)
        await self._kill_all(self._grace(), stop_sandbox=True, events=True)
        await self.write_status(reason=("Evicted", message), force_phase="Failed")

    # ------------------------------------------------------------------ status

    def _container_status(self, rec: ContainerRecord) -> Obj:
        started, ready = self._ready(rec)
        st = rec.status
        if rec.init and st is not None and st.state == ContainerState.EXITED and st.exit_code == 0:
            ready = True  # upstream counts an init container that completed as ready
        waiting = rec.waiting
        if waiting is None and rec.container_id is None:
            waiting = ("PodInitializing", "") if not rec.init and self._init_records() and not \
                self._init_done() else ("ContainerCreating", "")
        out: Obj = {"name": rec.name, "image": rec.spec.get("image", ""), "imageID": rec.image_id or "",
                    "ready": ready, "restartCount": rec.restart_count, "started": started,
                    "state": podstatus.state_of(st, waiting), "lastState": {}}
        if rec.container_id is not None:
            out["containerID"] = podstatus.container_id(rec.container_id)
        if rec.previous is not None and rec.previous.state == ContainerState.EXITED:
            out["lastState"] = {"terminated": podstatus.terminated_state(rec.previous)}
        if st is not None and waiting is not None and st.state == ContainerState.EXITED:
            # Waiting to restart: the attempt that just ended is the last state.
            out["lastState"] = {"terminated": podstatus.terminated_state(st)}
        return out

    def _init_done(self) -> bool:
        return all(r.status is not None and r.status.state == ContainerState.EXITED and r.status.exit_code == 0
                   for r in self._init_records())

    def build_status(self, *, terminating: bool = False, reason: tuple[str, str] | None = None,
                     force_phase: str | None = None) -> Obj:
        init = [self._container_status(r) for r in self._init_records()]
        apps = [self._container_status(r) for r in self._app_records()]
        if terminating:
            for cs in apps + init:
                if "waiting" in cs["state"] and "terminated" in cs.get("lastState", {}):
                    cs["state"] = {"terminated": cs["lastState"]["terminated"]}
        initialized = self._init_done()
        phase = force_phase or podstatus.phase(self.pod, init, apps, initialized=initialized,
                                               init_failed=self.init_failed)
        if terminating and phase == "Running":
            # Upstream: a pod whose containers were all stopped for deletion ends Failed
            # unless every container exited 0.
            codes = [cs["state"].get("terminated", {}).get("exitCode") for cs in apps]
            phase = "Succeeded" if codes and all(c == 0 for c in codes) else "Failed"
        old = self.pod.get("status") or {}
        unready = [cs["name"] for cs in apps if not cs["ready"]]
        incomplete = [r.name for r in self._init_records()
                      if not (r.status is not None and r.status.state == ContainerState.EXITED
                              and r.status.exit_code == 0)]
        conds = podstatus.conditions(self.pod, sandbox_ready=self.sandbox_ready and not terminating,
                                     initialized=initialized, incomplete_init=incomplete, unready=unready,
                                     phase_=phase, previous=list(old.get("conditions") or []))
        host_ips = self.kubelet.config.host_ips or [self.kubelet.config.host_ip]
        out: Obj = {
            "phase": phase, "conditions": conds, "hostIP": host_ips[0], "hostIPs": [{"ip": ip} for ip in host_ips],
            "podIP": self._pod_ip(), "podIPs": [{"ip": ip} for ip in (self.pod_ips or host_ips)],
            "startTime": self.start_time or old.get("startTime"),
            "qosClass": old.get("qosClass") or podstatus.qos_class(self.pod),
            "containerStatuses": apps,
        }
        if init:
            out["initContainerStatuses"] = init
        if reason:
            out["reason"], out["message"] = reason
        return out

    async def write_status(self, *, terminating: bool = False, reason: tuple[str, str] | None = None,
                           force_phase: str | None = None) -> None:
        status = self.build_status(terminating=terminating, reason=reason, force_phase=force_phase)
        if status == self._last_status:
            return
        try:
            await self.kubelet.patch_pod_status(self, status)
        except StatusError as e:
            if e.code != 404:
                raise
            return
        self._last_status = status

    # ------------------------------------------------------------------ lookups for the streaming server

    def find_container(self, name: str) -> tuple[str, str, str] | None:
        rec = self.containers.get(name)
        if rec is None or rec.container_id is None:
            return None
        log_path = os.path.join(self.log_dir, name, f"{rec.restart_count}.log")
        prev = os.path.join(self.log_dir, name, f"{rec.restart_count - 1}.log") if rec.restart_count else ""
        return rec.container_id, log_path, prev


def _fmt_duration(seconds: float) -> str:
    """Go's time.Duration.String for whole and fractional seconds (10s, 2m40s, 500ms)."""
    if seconds < 1:
        return f"{int(seconds * 1000)}ms"
    s = round(seconds, 3)
    m, sec = divmod(s, 60)
    sec_text = f"{sec:g}s"
    return f"{int(m)}m{sec_text}" if m else sec_text
