"""The process runtime: every container is a process tree on this machine.

As root, a pod sandbox is a holder process (``pause.py``) owning the pod's PID, mount,
UTS and IPC namespaces (and a network namespace when asked); each container joins
them, gets its own mount namespace, chroots into its image's root filesystem when
the images directory has one, and runs in a cgroup carrying its cpu, memory and pids
limits. Without root (or namespaces, or cgroups) it degrades to plain processes and
says so in every sandbox and container status (``notices``) and as runtime events.

Each started container is supervised by a detached shim (``shim.py``) that owns its
output and log file and records its exit. All state lives in files under
``<root>/sandboxes`` and ``<root>/containers``; nothing is kept only in memory, so a
restarted kubelet builds a new ProcessRuntime on the same root and finds, lists,
stops and removes what the previous one started.

Images: ``<images dir>/<name>/<tag>/rootfs`` (e.g. ``images/busybox/latest/rootfs``).
An image with no such directory still runs, on the host filesystem, and the runtime
reports ``ImageNotProvided`` for it; the OCI runtime is the one that pulls images.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import shutil
import signal
import struct
import sys
import termios
import time
from typing import Any

from kybernetes.runtime import nsutil, pause
from kybernetes.runtime.base import (
    ContainerConfig,
    ContainerFilter,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    CreateContainerError,
    ExecResult,
    ImageInfo,
    NamespaceMode,
    NotFoundError,
    Notice,
    PodSandboxConfig,
    PodSandboxStatus,
    RuntimeEvent,
    RuntimeServiceError,
    SandboxState,
    StartError,
    StreamHandle,
    to_dict,
)
from kybernetes.runtime.cgroups import Cgroup, CgroupLimits, CgroupManager
from kybernetes.runtime.logs import DEFAULT_MAX_FILES, DEFAULT_MAX_SIZE
from kybernetes.runtime.shim import attach as shim_attach
from kybernetes.runtime.shim import launch, observe, poll, running, write_json
from kybernetes.runtime.state import (
    StateDirRuntime,
    container_config_from,
    notices_from,
    sandbox_config_from,
)

log = logging.getLogger(__name__)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NSEXEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nsexec.py")


def image_candidates(image: str) -> list[tuple[str, str]]:
    """(name, tag) pairs an image reference may be stored under, most specific first."""
    ref = image.strip()
    ref, _, digest = ref.partition("@")
    name, tag = ref, ""
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
    tag = tag or (digest.replace(":", "-") if digest else "latest")
    names = [name]
    for prefix in ("docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            names.append(name[len(prefix) :])
    for n in list(names):
        if n.startswith("library/"):
            names.append(n[len("library/") :])
    return [(n, tag) for n in dict.fromkeys(names)]


class ExecHandle(StreamHandle):
    """A process started by exec: pipes, or a pty when a terminal was asked for."""

    def __init__(self, proc: asyncio.subprocess.Process, tty: bool, master: int | None) -> None:
        self.proc = proc
        self.tty = tty
        self.master = master
        if master is not None:
            loop = asyncio.get_running_loop()
            self.stdout = asyncio.StreamReader()
            self.stderr = None
            os.set_blocking(master, False)
            loop.add_reader(master, self._on_pty)
        else:
            assert proc.stdout is not None
            self.stdout = proc.stdout
            self.stderr = proc.stderr

    def _on_pty(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: every process holding the terminal has gone
        if data:
            self.stdout.feed_data(data)
        else:
            asyncio.get_running_loop().remove_reader(self.master)
            self.stdout.feed_eof()

    async def write_stdin(self, data: bytes) -> None:
        if self.master is not None:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self.master, view) :]
                except BlockingIOError:
                    await asyncio.sleep(0.01)
        elif self.proc.stdin is not None:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()

    async def close_stdin(self) -> None:
        if self.master is not None:
            await self.write_stdin(b"\x04")
        elif self.proc.stdin is not None:
            self.proc.stdin.close()

    def resize(self, width: int, height: int) -> None:
        if self.master is not None:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def wait(self) -> int | None:
        code = await self.proc.wait()
        # A pty still has to deliver what the process wrote before it ended.
        if self.master is not None:
            await poll(self.stdout.at_eof, 1.0)
        return 128 - code if code < 0 else code

    async def close(self) -> None:
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.proc.wait()
        if self.master is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.master)
                os.close(self.master)
            except OSError:
                pass
            self.master = None


class ProcessRuntime(StateDirRuntime):
    name = "process"

    def __init__(
        self,
        root_dir: str,
        *,
        images_dir: str | None = None,
        cgroup_root: str = "kybernetes",
        namespaces: bool = True,
        cgroups: bool = True,
        log_max_size: int = DEFAULT_MAX_SIZE,
        log_max_files: int = DEFAULT_MAX_FILES,
        python: str | None = None,
    ) -> None:
        super().__init__()
        self.root = os.path.abspath(root_dir)
        self.images_dir = os.path.abspath(images_dir or os.path.join(self.root, "images"))
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self.python = python or sys.executable
        for sub in ("sandboxes", "containers"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self.is_root = os.geteuid() == 0
        if namespaces:
            self.namespaces, ns_why = nsutil.namespaces_supported()
        else:
            self.namespaces, ns_why = False, "disabled by configuration"
        self.cgroups: CgroupManager | None = None
        cg_why = "disabled by configuration"
        if cgroups:
            self.cgroups, cg_why = CgroupManager.detect(cgroup_root)
        self.base_notices: list[Notice] = []
        if not self.namespaces:
            self.base_notices.append(
                Notice(
                    "NoIsolation",
                    f"process runtime without namespaces ({ns_why}): containers run as plain host "
                    "processes sharing the host's PID, IPC, UTS and mount namespaces",
                )
            )
        if self.cgroups is None:
            self.base_notices.append(
                Notice("NoResourceLimits", f"cgroups unavailable ({cg_why}): cpu, memory and pids limits are "
                       "not enforced and OOM kills are not detected")
            )
        for n in self.base_notices:
            log.warning("%s: %s", n.reason, n.message)
        self._cpu_samples: dict[str, tuple[float, int]] = {}

    # -- paths and records ----------------------------------------------------------
    def kill_strays(self) -> int:
        """Kill pod holders this runtime started but never recorded (it stopped mid-creation)."""
        return pause.kill_unrecorded(self.root, os.path.join(self.root, "sandboxes"))

    # -- images -------------------------------------------------------------------
    def resolve_image(self, image: str) -> str | None:
        """The root filesystem directory for an image, or None if this host has none."""
        if not image:
            return None
        for name, tag in image_candidates(image):
            path = os.path.join(self.images_dir, name, tag, "rootfs")
            if os.path.isdir(path) and os.path.realpath(path).startswith(self.images_dir + os.sep):
                return path
        return None

    async def image_status(self, image: str) -> ImageInfo | None:
        rootfs = self.resolve_image(image)
        return ImageInfo(ref=image, provided=rootfs is not None, rootfs=rootfs)

    async def pull_image(self, image: str) -> ImageInfo:
        info = await self.image_status(image)
        assert info is not None
        if not info.provided:
            # Not a failure: the process runtime runs the command on the host instead.
            self._emit(RuntimeEvent(image, "ImageNotProvided", self._image_message(image)))
        return info

    async def list_images(self) -> list[ImageInfo]:
        out = []
        for dirpath, dirnames, _ in os.walk(self.images_dir):
            if "rootfs" in dirnames:
                rel = os.path.relpath(dirpath, self.images_dir)
                name, _, tag = rel.rpartition(os.sep)
                out.append(ImageInfo(ref=f"{name}:{tag}", provided=True, rootfs=os.path.join(dirpath, "rootfs")))
                dirnames.remove("rootfs")
        return sorted(out, key=lambda i: i.ref)

    def _image_message(self, image: str) -> str:
        name = image_candidates(image)[-1][0].rsplit("/", 1)[-1] if image else "(no image)"
        return (
            f"process runtime has no root filesystem for image {image!r} (looked under {self.images_dir}): "
            f"runs {name} on the host filesystem"
        )

    # -- sandboxes ------------------------------------------------------------------
    async def run_pod_sandbox(self, config: PodSandboxConfig) -> str:
        sid = secrets.token_hex(32)
        notices = list(self.base_notices)
        holder = None
        kinds: list[str] = []
        ns = config.namespace_options
        hostname = (config.hostname or config.metadata.name)[:63]
        if self.namespaces:
            kinds = ["uts"]
            if ns.pid == NamespaceMode.POD:
                kinds.append("pid")
            if ns.ipc == NamespaceMode.POD:
                kinds.append("ipc")
            if ns.network == NamespaceMode.POD:
                kinds.append("net")
                notices.append(
                    Notice("NetworkNotConfigured", "the pod has its own network namespace with loopback only")
                )
            holder = await pause.start(self.python, self._env(), hostname, kinds, self.root)
        cgroup = None
        if self.cgroups is not None:
            try:
                limits = CgroupLimits(cpu_millis=config.cpu_millis, memory_bytes=config.memory_bytes)
                cgroup = self.cgroups.create(sid, limits=limits).to_json()
            except OSError as e:
                notices.append(Notice("NoResourceLimits", f"creating the pod cgroup failed ({e}): limits are "
                                      "not enforced"))
        os.makedirs(self._sdir(sid))
        rec = {
            "id": sid,
            "config": to_dict(config),
            "created_at": time.time(),
            "state": SandboxState.READY.value,
            "holder": holder,
            "namespaces": kinds,
            "cgroup": cgroup,
            "notices": [to_dict(n) for n in notices],
        }
        write_json(os.path.join(self._sdir(sid), "sandbox.json"), rec)
        for n in notices:
            if n.reason != "NoIsolation" and n.reason != "NoResourceLimits":
                self._emit(RuntimeEvent(sid, n.reason, n.message, n.type))
        return sid

    def _sandbox_ready(self, rec: dict) -> bool:
        if rec["state"] != SandboxState.READY.value:
            return False
        h = rec.get("holder")
        return h is None or nsutil.alive(h["pid"], h["start"])

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        rec = self._sandbox(sandbox_id)
        for c in await self.list_containers(ContainerFilter(sandbox_id=rec["id"])):
            if c.state == ContainerState.RUNNING:
                await self.stop_container(c.id, 0)
        h = rec.get("holder")
        if h and nsutil.alive(h["pid"], h["start"]):
            try:
                os.kill(h["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            await poll(lambda: not nsutil.alive(h["pid"], h["start"]), 5.0)
        if rec["state"] != SandboxState.NOTREADY.value:
            rec["state"] = SandboxState.NOTREADY.value
            write_json(os.path.join(self._sdir(rec["id"]), "sandbox.json"), rec)

    async def remove_pod_sandbox(self, sandbox_id: str) -> None:
        try:
            rec = self._sandbox(sandbox_id)
        except NotFoundError:
            return
        await self.stop_pod_sandbox(rec["id"])
        for c in await self.list_containers(ContainerFilter(sandbox_id=rec["id"])):
            await self.remove_container(c.id)
        if rec.get("cgroup"):
            Cgroup.from_json(rec["cgroup"]).remove()
        shutil.rmtree(self._sdir(rec["id"]), ignore_errors=True)

    async def pod_sandbox_status(self, sandbox_id: str) -> PodSandboxStatus:
        rec = self._sandbox(sandbox_id)
        cfg = sandbox_config_from(rec["config"])
        notices = notices_from(rec.get("notices", []))
        state = SandboxState.READY if self._sandbox_ready(rec) else SandboxState.NOTREADY
        if state == SandboxState.NOTREADY and rec["state"] == SandboxState.READY.value:
            notices.append(Notice("SandboxHolderGone", "the process holding the pod's namespaces has exited"))
        h = rec.get("holder")
        return PodSandboxStatus(
            id=rec["id"], metadata=cfg.metadata, state=state, created_at=rec["created_at"],
            labels=cfg.labels, annotations=cfg.annotations, namespace_options=cfg.namespace_options,
            pid=h["pid"] if h and state == SandboxState.READY else None, notices=notices,
        )

    # -- containers -----------------------------------------------------------------
    async def create_container(self, sandbox_id: str, config: ContainerConfig) -> str:
        sb = self._sandbox(sandbox_id)
        if not self._sandbox_ready(sb):
            raise CreateContainerError(f"pod sandbox {sandbox_id} is not ready")
        argv = list(config.command) + list(config.args)
        if not argv:
            raise CreateContainerError(
                "no command given: the process runtime has no image metadata to supply an entrypoint"
            )
        sb_cfg = sandbox_config_from(sb["config"])
        cid = secrets.token_hex(32)
        cdir = self._cdir(cid)
        os.makedirs(cdir)
        notices = list(notices_from(sb.get("notices", [])))
        rootfs = self.resolve_image(config.image)
        if rootfs is None:
            notices.append(Notice("ImageNotProvided", self._image_message(config.image)))
        elif not self.namespaces:
            notices.append(Notice("RootfsNotUsed", f"image {config.image!r} has a root filesystem at {rootfs} "
                                  "but without namespaces the container runs on the host filesystem"))
            rootfs = None
        if config.mounts and not self.namespaces:
            notices.append(Notice("MountsNotApplied", "volume mounts need a private mount namespace (root); "
                                  "the container sees the host paths instead"))
        if config.run_as_user is not None and not self.is_root:
            notices.append(Notice("RunAsUserIgnored", "not running as root: cannot change user"))
        log_path = config.log_path
        if log_path and not os.path.isabs(log_path):
            log_path = os.path.join(sb_cfg.log_directory or cdir, log_path)
        log_path = log_path or os.path.join(cdir, "container.log")
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": (sb_cfg.hostname or sb_cfg.metadata.name)[:63]}
        env.update(config.env)
        if config.tty:
            env.setdefault("TERM", "xterm")
        cgroup = None
        if self.cgroups is not None and sb.get("cgroup"):
            r = config.resources
            limits = CgroupLimits(r.cpu_millis, r.cpu_request_millis, r.memory_bytes, r.pids)
            try:
                cgroup = self.cgroups.create(sandbox_id, cid, limits=limits).to_json()
            except OSError as e:
                shutil.rmtree(cdir, ignore_errors=True)
                raise CreateContainerError(f"applying resource limits failed: {e}") from e
        holder = sb.get("holder")
        ns = sb_cfg.namespace_options
        join = [k for k in sb.get("namespaces", []) if k != "pid" or ns.pid == NamespaceMode.POD]
        launch: dict[str, Any] = {
            "argv": argv,
            "env": env,
            "cwd": config.working_dir or "/",
            "rootfs": rootfs,
            "mounts": [to_dict(m) for m in config.mounts] if self.namespaces else [],
            "ns_pid": holder["pid"] if holder else None,
            "join": [*join, "mnt"] if holder else [],
            "pid_mode": ns.pid.value if self.namespaces else "NODE",
            "private_mounts": self.namespaces,
            "cgroup": cgroup,
            "uid": config.run_as_user if self.is_root else None,
            "gid": config.run_as_group if self.is_root else None,
            "tty": config.tty,
            "stdin": config.stdin,
            "stdin_once": config.stdin_once,
            "log_path": log_path,
            "log_max_size": self.log_max_size,
            "log_max_files": self.log_max_files,
        }
        rec = {
            "id": cid,
            "sandbox_id": sb["id"],
            "config": to_dict(config),
            "created_at": time.time(),
            "rootfs": rootfs,
            "notices": [to_dict(n) for n in notices],
            "launch": launch,
        }
        write_json(os.path.join(cdir, "config.json"), rec)
        for n in notices:
            if n.reason not in ("NoIsolation", "NoResourceLimits"):
                self._emit(RuntimeEvent(cid, n.reason, n.message, n.type))
        return cid

    async def start_container(self, container_id: str) -> None:
        rec = self._container(container_id)
        cid, cdir = rec["id"], self._cdir(rec["id"])
        if os.path.exists(os.path.join(cdir, "shim.json")) or os.path.exists(os.path.join(cdir, "exit.json")):
            raise RuntimeServiceError(f"container {cid} was already started", reason="AlreadyStarted")
        sb = self._sandbox(rec["sandbox_id"])
        if not self._sandbox_ready(sb):
            raise StartError(f"pod sandbox {sb['id']} is not ready")
        await launch(cdir, self.python, self._env())

    def _running_pid(self, rec: dict) -> tuple[int, int | None] | None:
        return running(self._cdir(rec["id"]))

    async def container_status(self, container_id: str) -> ContainerStatus:
        rec = self._container(container_id)
        cdir = self._cdir(rec["id"])
        cfg = container_config_from(rec["config"])
        st = ContainerStatus(
            id=rec["id"], sandbox_id=rec["sandbox_id"], metadata=cfg.metadata, state=ContainerState.CREATED,
            image=cfg.image, created_at=rec["created_at"], log_path=rec["launch"]["log_path"],
            labels=cfg.labels, annotations=cfg.annotations, rootfs=rec.get("rootfs"),
            notices=notices_from(rec.get("notices", [])),
        )
        seen = observe(cdir)
        st.state, st.pid, st.started_at, st.finished_at = seen.state, seen.pid, seen.started_at, seen.finished_at
        st.exit_code, st.reason, st.message = seen.exit_code, seen.reason, seen.message
        return st

    async def stop_container(self, container_id: str, timeout: float) -> None:
        rec = self._container(container_id)
        cdir = self._cdir(rec["id"])
        exit_file = os.path.join(cdir, "exit.json")
        target = self._running_pid(rec)
        if target is None:
            if (await self.container_status(rec["id"])).state == ContainerState.RUNNING:
                # The shim is finishing its bookkeeping; let it.
                await poll(lambda: os.path.exists(exit_file), 5.0)
            return
        pid, started = target
        if timeout > 0:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if await poll(lambda: os.path.exists(exit_file), timeout):
                return
        if nsutil.alive(pid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        cg = rec["launch"].get("cgroup")
        if cg:
            Cgroup.from_json(cg).kill_all()
        if not await poll(lambda: os.path.exists(exit_file), 10.0):
            await self.container_status(rec["id"])  # records a lost exit if the shim is gone too

    async def remove_container(self, container_id: str) -> None:
        try:
            rec = self._container(container_id)
        except NotFoundError:
            return
        if self._running_pid(rec) is not None:
            await self.stop_container(rec["id"], 0)
        cg = rec["launch"].get("cgroup")
        if cg:
            cgroup = Cgroup.from_json(cg)
            cgroup.kill_all()
            cgroup.remove()
        self._cpu_samples.pop(rec["id"], None)
        shutil.rmtree(self._cdir(rec["id"]), ignore_errors=True)

    async def container_stats(self, container_id: str) -> ContainerStats:
        rec = self._container(container_id)
        now = time.time()
        stats = ContainerStats(id=rec["id"], timestamp=now)
        cg = rec["launch"].get("cgroup")
        target = self._running_pid(rec)
        if cg:
            s = Cgroup.from_json(cg).stats()
            stats.cpu_usage_core_nano_seconds = s["cpu_ns"]
            stats.memory_usage_bytes = s["memory_usage"]
            stats.memory_working_set_bytes = s["working_set"]
            stats.pids = s["pids"]
        elif target is not None:
            # Without a cgroup only the main process can be measured.
            stats.cpu_usage_core_nano_seconds, stats.memory_working_set_bytes = _proc_usage(target[0])
            stats.memory_usage_bytes = stats.memory_working_set_bytes
            stats.pids = 1
        cpu = stats.cpu_usage_core_nano_seconds
        if cpu is not None:
            prev = self._cpu_samples.get(rec["id"])
            if prev is not None and now > prev[0] and cpu >= prev[1]:
                stats.cpu_usage_nano_cores = int((cpu - prev[1]) / (now - prev[0]))
            self._cpu_samples[rec["id"]] = (now, cpu)
        return stats

    # -- exec and attach ------------------------------------------------------------
    def _exec_spec(self, container_id: str, tty: bool = False) -> tuple[list[str], dict[str, str], str | None,
                                                                        list[str]]:
        """(command prefix entering the container, env, cwd, cgroup procs files); a prefix, when there
        is one, also makes the command its terminal's session leader when `tty` is asked."""
        rec = self._container(container_id)
        target = self._running_pid(rec)
        if target is None:
            raise RuntimeServiceError(f"container {rec['id']} is not running", reason="ContainerNotRunning")
        launch = rec["launch"]
        procs = Cgroup.from_json(launch["cgroup"]).procs_files() if launch.get("cgroup") else []
        if launch.get("private_mounts") and tty:
            kinds = ["ipc", "uts", "mnt"]
            if launch.get("pid_mode") != "NODE":
                kinds.append("pid")
            if "net" in launch.get("join", []):
                kinds.append("net")
            return [self.python, "-I", "-S", _NSEXEC, str(target[0]), ",".join(kinds), "--"], launch["env"], \
                None, procs
        if launch.get("private_mounts"):
            nsenter = shutil.which("nsenter")
            if nsenter is None:
                raise RuntimeServiceError("exec into namespaces needs nsenter (util-linux), not found")
            pre = [nsenter, "--target", str(target[0]), "--mount", "--uts", "--ipc", "--root", "--wd"]
            if launch.get("pid_mode") != "NODE":
                pre.append("--pid")
            if "net" in launch.get("join", []):
                pre.append("--net")
            return [*pre, "--"], launch["env"], None, procs
        return [], launch["env"], launch.get("cwd") or "/", procs

    async def _spawn_exec(self, container_id: str, cmd: list[str], stdin: Any, stdout: Any, stderr: Any,
                          tty_fd: int | None = None) -> asyncio.subprocess.Process:
        if not cmd:
            raise RuntimeServiceError("exec needs a command", reason="InvalidArgument")
        prefix, env, cwd, procs = self._exec_spec(container_id, tty=tty_fd is not None)
        take_tty = tty_fd is not None and not prefix

        def enter() -> None:
            # Runs in the child before exec: join the container's cgroup so exec'd work is
            # limited and counted like the container's own; take the terminal if any.
            for path in procs:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))
            if take_tty:
                # uvloop runs this before its own setsid and before the terminal becomes
                # fds 0-2, so lead a new session here and take the terminal by its own fd.
                try:
                    os.setsid()
                except OSError:
                    pass  # asyncio's subprocess already made the child a session leader
                fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)

        if cwd is not None and not os.path.isdir(cwd):
            cwd = "/"
        return await asyncio.create_subprocess_exec(
            *prefix, *cmd, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
            start_new_session=True, preexec_fn=enter,
        )

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float | None = None) -> ExecResult:
        PIPE = asyncio.subprocess.PIPE
        try:
            proc = await self._spawn_exec(container_id, cmd, asyncio.subprocess.DEVNULL, PIPE, PIPE)
        except FileNotFoundError as e:
            return ExecResult(126, b"", f"exec failed: {e}\n".encode())
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout if timeout else None)
        except TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
            return ExecResult(-1, b"", f"command timed out after {timeout}s\n".encode(), timed_out=True)
        code = proc.returncode if proc.returncode is not None else -1
        return ExecResult(128 - code if code < 0 else code, out, err)

    async def exec(
        self, container_id: str, cmd: list[str], *, tty: bool = False, stdin: bool = False
    ) -> StreamHandle:
        PIPE = asyncio.subprocess.PIPE
        if tty:
            master, slave = os.openpty()
            try:
                proc = await self._spawn_exec(container_id, cmd, slave, slave, slave, tty_fd=slave)
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            return ExecHandle(proc, True, master)
        proc = await self._spawn_exec(container_id, cmd, PIPE if stdin else asyncio.subprocess.DEVNULL, PIPE, PIPE)
        return ExecHandle(proc, False, None)

    async def attach(self, container_id: str, *, stdin: bool = False) -> StreamHandle:
        rec = self._container(container_id)
        if self._running_pid(rec) is None:
            raise RuntimeServiceError(f"container {rec['id']} is not running", reason="ContainerNotRunning")
        return await shim_attach(self._cdir(rec["id"]), rec["id"], bool(rec["launch"].get("tty")))

    async def open_connection(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader,
                                                                         asyncio.StreamWriter]:
        rec = self._sandbox(sandbox_id)
        h = rec.get("holder")
        netns = None
        if "net" in rec.get("namespaces", []):
            if not (h and nsutil.alive(h["pid"], h["start"])):
                raise RuntimeServiceError(f"pod sandbox {rec['id']} is not ready: its network namespace is gone")
            netns = f"/proc/{h['pid']}/ns/net"
        return await nsutil.open_connection(netns, "127.0.0.1", port)


def _proc_usage(pid: int) -> tuple[int | None, int | None]:
    """(CPU nanoseconds, resident bytes) of one process from /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        return cpu, rss
    except (OSError, IndexError, ValueError):
        return None, None
