"""The OCI runtime: containers from OCI images, run by runc, as containerd runs them for k3s.

A pod sandbox is a holder process (``pause.py``) owning the pod's UTS, IPC and network
namespaces (PID too with shareProcessNamespace; a NODE mode means the host's), a pod
cgroup with the pod-level limits, and the files every container of the pod shares:
``/etc/hostname``, ``/etc/hosts``, ``/etc/resolv.conf`` and a tmpfs for ``/dev/shm``.

A container gets its image from the image provider (``images.status``/``layer_dirs``),
a root filesystem (overlayfs over the layers with a private upper directory, or a copy
when overlayfs is unavailable), and an OCI bundle whose ``config.json`` ``spec.py``
writes: process by Kubernetes' command/args rules, user from the image's /etc/passwd,
containerd's default capabilities, mounts, masked paths and devices, namespaces
joined through ``/proc/<holder>/ns/*``, cgroup limits under the pod's cgroup. The
per-container shim (``shim.py``, OCI mode) runs ``runc create``/``runc start``, owns
the container's stdio and log, records the exit, and has runc delete the container.
Exec is ``runc exec``; stop is ``runc kill``.

State, all in files so a restarted kubelet's new OciRuntime on the same root adopts
everything: ``<root>/sandboxes/<id>/sandbox.json`` (+ the shared files and the shm
mount), ``<root>/containers/<id>/config.json`` (+ ``bundle/``, ``upper/``, the shim's
``shim.json``/``exit.json``), and runc's own state under ``<root>/runc``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import termios
import time
from typing import Any, Protocol

from kybernetes import __version__
from kybernetes.runtime import nsutil, oci_rootfs, pause, spec
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
from kybernetes.runtime.process import ExecHandle
from kybernetes.runtime.state import (
    StateDirRuntime,
    container_config_from,
    notices_from,
    sandbox_config_from,
)
from kybernetes.runtime.shim import (
    attach,
    launch,
    observe,
    poll,
    read_json,
    runc_command,
    runc_delete,
    runc_error,
    running,
    write_json,
)

log = logging.getLogger(__name__)

# containerd gives each pod a 64 MiB /dev/shm.
SHM_SIZE = "65536k"
# What upstream reads of a termination message at most.
TERMINATION_MESSAGE_MAX = 4096


class ImageProvider(Protocol):
    """What the runtime needs of the image service (kybernetes.images.service.ImageService)."""

    async def status(self, ref: str) -> Any: ...  # kybernetes.images.model.Image | None

    def layer_dirs(self, image: Any) -> list[str]: ...  # unpacked layers, lowest first

    def mark_used(self, image: Any) -> None: ...


def _hosts_file(hostname: str, ip: str | None) -> str:
    # The kubelet's managed hosts file for a pod with its own network.
    return (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        f"{ip or '127.0.1.1'}\t{hostname}\n"
    )


def _read_host_file(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _runc_version(runc: str) -> str | None:
    try:
        out = subprocess.run([runc, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"runc version (\S+)", out.stdout)
    return m.group(1) if out.returncode == 0 and m else None


class _RuncExec(ExecHandle):
    """``runc exec`` in the foreground: its exit status is the command's.

    Killing runc does not kill the command inside the container, so ending an exec
    kills the command by the pid runc wrote; runc then returns.
    """

    def __init__(self, proc: asyncio.subprocess.Process, tty: bool, master: int | None, pid_file: str,
                 log_file: str) -> None:
        super().__init__(proc, tty, master)
        self.pid_file = pid_file
        self.log_file = log_file

    def kill_command(self) -> None:
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            # Not started yet or gone: ending runc is all there is to do.
            if self.proc.returncode is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    async def wait(self) -> int | None:
        code = await super().wait()
        return _exec_exit_code(code, self.log_file)

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.kill_command()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                pass
        await super().close()
        for path in (self.pid_file, self.log_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _exec_exit_code(code: int | None, log_file: str) -> int | None:
    """runc's own failure (255 with an error logged) as a shell would say it: 127 not found, 126 else."""
    if code != 255:
        return code
    msg = runc_error(log_file)
    if msg == "runc failed without saying why":
        return code
    return 127 if "not found" in msg or "no such file" in msg.lower() else 126


class OciRuntime(StateDirRuntime):
    name = "oci"
    isolated_filesystem = True

    def __init__(
        self,
        root_dir: str,
        images: ImageProvider,
        *,
        runc: str = "runc",
        cgroup_root: str = "kybernetes",
        log_max_size: int = DEFAULT_MAX_SIZE,
        log_max_files: int = DEFAULT_MAX_FILES,
        rootfs: str = "auto",
        python: str | None = None,
    ) -> None:
        """``rootfs``: "auto" (overlayfs, a copy if it fails), "overlay" or "copy"."""
        super().__init__()
        self.root = os.path.abspath(root_dir)
        self.images = images
        self.runc = shutil.which(runc) or runc
        self.runc_root = os.path.join(self.root, "runc")
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self.rootfs_mode = rootfs
        self.python = python or sys.executable
        for sub in ("sandboxes", "containers", "runc"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        cgroups, why = CgroupManager.detect(cgroup_root)
        if cgroups is None:
            raise RuntimeServiceError(f"the OCI runtime needs cgroups: {why}")
        self.cgroups: CgroupManager = cgroups
        self._swap = cgroups.swap_limit_supported()
        self._cpu_samples: dict[str, tuple[float, int]] = {}
        self._version: str | None = None

    # -- what the node can do -------------------------------------------------------
    @staticmethod
    def available(runc: str = "runc") -> tuple[bool, str]:
        """Whether this host can run OCI containers, and why not (the CLI falls back then)."""
        path = shutil.which(runc)
        if path is None:
            return False, f"{runc!r} was not found on PATH"
        if os.geteuid() != 0:
            return False, "not running as root"
        ok, why = nsutil.namespaces_supported()
        if not ok:
            return False, why
        mgr, why = CgroupManager.detect()
        if mgr is None:
            return False, why
        if _runc_version(path) is None:
            return False, f"{path} --version failed"
        return True, ""

    def version(self) -> str:
        """The node's containerRuntimeVersion: ``kybernetes-oci://<version>+runc.<runc version>``.

        Like containerd's ``containerd://1.7.x`` it names the CRI implementation (this
        runtime, as the kubelet's other runtimes are named); runc's version rides along
        as semver build metadata, so parsers of ``name://semver`` still work.
        """
        if self._version is None:
            runc = _runc_version(self.runc) or "unknown"
            self._version = f"kybernetes-{self.name}://{__version__}+runc.{re.sub(r'[^0-9A-Za-z.-]', '-', runc)}"
        return self._version

    # -- paths and records ------------------------------------------------------------
    def _oci(self, cid: str) -> dict:
        return {"runc": self.runc, "root": self.runc_root, "id": cid, "bundle": os.path.join(self._cdir(cid), "bundle"),
                "log": os.path.join(self._cdir(cid), "runc.log")}

    async def _runc(self, oci: dict, *args: str) -> tuple[int, str]:
        """Run runc on one container: (exit code, runc's error when it failed)."""
        offset = os.path.getsize(oci["log"]) if os.path.exists(oci["log"]) else 0
        proc = await asyncio.create_subprocess_exec(*runc_command(oci, *args), stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        code = await proc.wait()
        return code, runc_error(oci["log"], offset) if code else ""

    # -- images ---------------------------------------------------------------------
    async def image_status(self, image: str) -> ImageInfo | None:
        img = await self.images.status(image) if image else None
        if img is None:
            return None
        return ImageInfo(ref=image, provided=True, size=getattr(img, "size", 0))

    async def pull_image(self, image: str) -> ImageInfo:
        pull = getattr(self.images, "pull", None)
        if pull is None:
            raise RuntimeServiceError(f"cannot pull {image!r}: the image provider does not pull",
                                      reason="ErrImagePull")
        await pull(image)
        info = await self.image_status(image)
        if info is None:
            raise RuntimeServiceError(f"image {image!r} is still not present after pulling it", reason="ErrImagePull")
        return info

    async def list_images(self) -> list[ImageInfo]:
        lister = getattr(self.images, "list", None)
        if lister is None:
            return []
        out = []
        for img in await lister():
            ref = (img.repo_tags or img.repo_digests or [img.id])[0]
            out.append(ImageInfo(ref=ref, provided=True, size=img.size))
        return out

    # -- sandboxes --------------------------------------------------------------------
    async def run_pod_sandbox(self, config: PodSandboxConfig) -> str:
        sid = secrets.token_hex(32)
        sdir = self._sdir(sid)
        ns = config.namespace_options
        hostname = (config.hostname or config.metadata.name)[:63]
        kinds = ["uts"]
        notices: list[Notice] = []
        if ns.pid == NamespaceMode.POD:
            kinds.append("pid")
        if ns.ipc == NamespaceMode.POD:
            kinds.append("ipc")
        if ns.network == NamespaceMode.POD:
            kinds.append("net")
            notices.append(Notice("NetworkNotConfigured", "the pod has its own network namespace with loopback only"))
        os.makedirs(sdir)
        holder = None
        cgroup: Cgroup | None = None
        shm = os.path.join(sdir, "shm")
        try:
            holder = await pause.start(self.python, self._env(), hostname, kinds, self.root)
            cgroup = self.cgroups.create(sid, limits=CgroupLimits(cpu_millis=config.cpu_millis,
                                                                  memory_bytes=config.memory_bytes))
            files = {"/etc/hostname": os.path.join(sdir, "hostname"), "/etc/hosts": os.path.join(sdir, "hosts"),
                     "/etc/resolv.conf": os.path.join(sdir, "resolv.conf")}
            hosts = _hosts_file(hostname, None) if "net" in kinds else _read_host_file("/etc/hosts")
            # DNS is the node's until cluster DNS is wired into pods.
            for dest, text in (("/etc/hostname", hostname + "\n"), ("/etc/hosts", hosts),
                               ("/etc/resolv.conf", _read_host_file("/etc/resolv.conf"))):
                with open(files[dest], "w") as f:
                    f.write(text)
                os.chmod(files[dest], 0o644)
            if "ipc" in kinds:
                # One tmpfs per pod, shared by its containers, as containerd does.
                os.makedirs(shm)
                nsutil.mount("shm", shm, "tmpfs", nsutil.MS_NOSUID | nsutil.MS_NODEV | nsutil.MS_NOEXEC,
                             f"mode=1777,size={SHM_SIZE}")
                files["/dev/shm"] = shm
            else:
                files["/dev/shm"] = "/dev/shm"  # hostIPC: the node's
            rec = {
                "id": sid, "config": to_dict(config), "created_at": time.time(),
                "state": SandboxState.READY.value, "holder": holder, "namespaces": kinds,
                "cgroup": cgroup.to_json(), "files": files, "notices": [to_dict(n) for n in notices],
            }
            write_json(os.path.join(sdir, "sandbox.json"), rec)
        except BaseException as e:
            if holder is not None:
                self._kill_holder(holder)
            oci_rootfs.unmount(shm)
            self.cgroups.remove_tree(sid)
            shutil.rmtree(sdir, ignore_errors=True)
            if isinstance(e, OSError):
                raise RuntimeServiceError(f"creating the pod sandbox failed: {e}", reason="CreatePodSandboxError") from e
            raise
        for n in notices:
            self._emit(RuntimeEvent(sid, n.reason, n.message, n.type))
        return sid

    @staticmethod
    def _kill_holder(h: dict) -> None:
        if nsutil.alive(h["pid"], h["start"]):
            try:
                os.kill(h["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _sandbox_ready(self, rec: dict) -> bool:
        if rec["state"] != SandboxState.READY.value:
            return False
        h = rec.get("holder")
        return h is not None and nsutil.alive(h["pid"], h["start"])

    async def stop_pod_sandbox(self, sandbox_id: str) -> None:
        rec = self._sandbox(sandbox_id)
        for c in await self.list_containers(ContainerFilter(sandbox_id=rec["id"])):
            if c.state == ContainerState.RUNNING:
                await self.stop_container(c.id, 0)
        h = rec.get("holder")
        if h:
            self._kill_holder(h)
            await poll(lambda: not nsutil.alive(h["pid"], h["start"]), 5.0)
        # Nothing of the pod runs any more: its /dev/shm goes now, as containerd unmounts it on stop.
        oci_rootfs.unmount(os.path.join(self._sdir(rec["id"]), "shm"))
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
        sdir = self._sdir(rec["id"])
        for point in oci_rootfs.mounts_under(sdir):
            oci_rootfs.unmount(point)
        self.cgroups.remove_tree(rec["id"])
        shutil.rmtree(sdir, ignore_errors=True)

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

    async def open_connection(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader,
                                                                         asyncio.StreamWriter]:
        rec = self._sandbox(sandbox_id)
        netns = None
        if "net" in rec.get("namespaces", []):
            if not self._sandbox_ready(rec):
                raise RuntimeServiceError(f"pod sandbox {rec['id']} is not ready: its network namespace is gone")
            netns = f"/proc/{rec['holder']['pid']}/ns/net"
        return await nsutil.open_connection(netns, "127.0.0.1", port)

    # -- containers -------------------------------------------------------------------
    async def _make_rootfs(self, layers: list[str], cdir: str, target: str, notices: list[Notice]) -> str:
        """Mount or copy the image at ``target``: "overlay" or "copy"."""
        if self.rootfs_mode != "copy":
            try:
                await oci_rootfs.mount_overlay(layers, os.path.join(cdir, "upper"), os.path.join(cdir, "work"), target)
                return "overlay"
            except OSError as e:
                if self.rootfs_mode == "overlay":
                    raise
                why = str(e)
        else:
            why = "the runtime is configured to copy"
        started = time.monotonic()
        await asyncio.to_thread(oci_rootfs.copy_layers, layers, target)
        notices.append(Notice("RootfsCopied", f"overlayfs unavailable ({why}): the image's layers were copied "
                              f"into a private root filesystem in {time.monotonic() - started:.1f}s"))
        return "copy"

    def _mounts(self, sb: dict, config: ContainerConfig, cdir: str) -> list[dict[str, Any]]:
        """The pod's shared files and the container's volumes, parents before children."""
        own = {os.path.normpath(m.container_path) for m in config.mounts}
        out = []
        ro = config.readonly_rootfs
        for dest, source in (sb.get("files") or {}).items():
            if dest in own:
                continue  # the kubelet's own (e.g. an emptyDir at /dev/shm, its hosts file) wins
            if dest == "/dev/shm":
                out.append(spec.bind_mount(source, dest, False, "nosuid", "nodev", "noexec"))
            else:
                out.append(spec.bind_mount(source, dest, ro))
        tpath = config.termination_message_path
        if tpath and os.path.normpath(tpath) not in own:
            host = os.path.join(cdir, "termination-log")
            open(host, "a").close()
            os.chmod(host, 0o666)  # whatever user the container runs as may write it
            out.append(spec.bind_mount(host, tpath, False))
        volumes = [spec.bind_mount(m.host_path, m.container_path, m.readonly) for m in config.mounts]
        volumes.sort(key=lambda m: len(os.path.normpath(m["destination"]).split("/")))
        return out + volumes

    async def create_container(self, sandbox_id: str, config: ContainerConfig) -> str:
        sb = self._sandbox(sandbox_id)
        if not self._sandbox_ready(sb):
            raise CreateContainerError(f"pod sandbox {sandbox_id} is not ready")
        img = await self.images.status(config.image) if config.image else None
        if img is None:
            raise CreateContainerError(f"image {config.image!r} is not present on this node: pull it first"
                                       if config.image else "no image specified")
        icfg: dict[str, Any] = dict(getattr(img, "config", None) or {})
        try:
            argv = spec.process_args(config.command, config.args, icfg)
            signum = spec.stop_signal(config.stop_signal or str(icfg.get("StopSignal") or ""))
        except spec.SpecError as e:
            raise CreateContainerError(str(e)) from e
        layers = list(self.images.layer_dirs(img))
        self.images.mark_used(img)
        sb_cfg = sandbox_config_from(sb["config"])
        cid = secrets.token_hex(32)
        cdir = self._cdir(cid)
        bundle = os.path.join(cdir, "bundle")
        rootfs = os.path.join(bundle, "rootfs")
        os.makedirs(bundle)
        notices = notices_from(sb.get("notices", []))
        try:
            rootfs_kind = await self._make_rootfs(layers, cdir, rootfs, notices)
            user = spec.resolve_user(rootfs, str(icfg.get("User") or ""), config.run_as_user, config.run_as_group,
                                     config.supplemental_groups)
            caps = spec.capabilities(config.capabilities_add, config.capabilities_drop, config.privileged)
            seccomp = spec.seccomp_profile(config.seccomp, caps, config.privileged)
            hostname = (sb_cfg.hostname or sb_cfg.metadata.name)[:63]
            holder, kinds = sb["holder"], sb.get("namespaces", [])
            nsp = spec.Namespaces()
            for kind, oci_type in (("net", "network"), ("ipc", "ipc"), ("uts", "uts"), ("pid", "pid")):
                if kind in kinds:
                    nsp.join[oci_type] = f"/proc/{holder['pid']}/ns/{kind}"
            if sb_cfg.namespace_options.pid == NamespaceMode.CONTAINER:
                nsp.new.append("pid")
            if self.cgroups.version == 2:
                nsp.new.append("cgroup")  # as containerd on v2: the container sees its cgroup as /
            r = config.resources
            doc = spec.build(
                args=argv,
                env=spec.process_env(icfg, config.env, hostname=hostname, tty=config.tty),
                cwd=config.working_dir or str(icfg.get("WorkingDir") or "") or "/",
                user=user, tty=config.tty, caps=caps, no_new_privileges=config.no_new_privileges,
                readonly_rootfs=config.readonly_rootfs, privileged=config.privileged,
                mounts=self._mounts(sb, config, cdir), namespaces=nsp,
                cgroups_path=self.cgroups.relative_path(sb["id"], cid),
                limits=spec.Limits(r.cpu_millis, r.cpu_request_millis, r.memory_bytes, r.pids),
                swap_supported=self._swap, seccomp=seccomp,
                annotations={"io.kubernetes.cri.container-name": config.metadata.name,
                             "io.kubernetes.cri.sandbox-id": sb["id"],
                             "io.kubernetes.cri.image-name": config.image},
            )
            write_json(os.path.join(bundle, "config.json"), doc)
            log_path = config.log_path
            if log_path and not os.path.isabs(log_path):
                log_path = os.path.join(sb_cfg.log_directory or cdir, log_path)
            log_path = log_path or os.path.join(cdir, "container.log")
            launch_cfg: dict[str, Any] = {
                "oci": self._oci(cid),
                "cgroup": self.cgroups.cgroup(sb["id"], cid).to_json(),
                "tty": config.tty, "stdin": config.stdin, "stdin_once": config.stdin_once,
                "log_path": log_path, "log_max_size": self.log_max_size, "log_max_files": self.log_max_files,
                "stop_signal": signum,
            }
            rec = {
                "id": cid, "sandbox_id": sb["id"], "config": to_dict(config), "created_at": time.time(),
                "image_id": getattr(img, "id", ""), "rootfs": rootfs, "rootfs_kind": rootfs_kind,
                "notices": [to_dict(n) for n in notices], "launch": launch_cfg,
            }
            write_json(os.path.join(cdir, "config.json"), rec)
        except BaseException as e:
            self._discard(cdir)
            if isinstance(e, spec.SpecError):
                raise CreateContainerError(str(e)) from e
            if isinstance(e, OSError):
                raise CreateContainerError(f"preparing the container's root filesystem failed: {e}") from e
            raise
        for n in notices:
            if n.reason == "RootfsCopied":
                self._emit(RuntimeEvent(cid, n.reason, n.message, n.type))
        return cid

    @staticmethod
    def _discard(cdir: str) -> None:
        for point in oci_rootfs.mounts_under(cdir):
            oci_rootfs.unmount(point)
        shutil.rmtree(cdir, ignore_errors=True)

    async def start_container(self, container_id: str) -> None:
        rec = self._container(container_id)
        cid, cdir = rec["id"], self._cdir(rec["id"])
        if os.path.exists(os.path.join(cdir, "shim.json")) or os.path.exists(os.path.join(cdir, "exit.json")):
            raise RuntimeServiceError(f"container {cid} was already started", reason="AlreadyStarted")
        sb = self._sandbox(rec["sandbox_id"])
        if not self._sandbox_ready(sb):
            raise StartError(f"pod sandbox {sb['id']} is not ready")
        await launch(cdir, self.python, self._env())

    async def container_status(self, container_id: str) -> ContainerStatus:
        rec = self._container(container_id)
        cdir = self._cdir(rec["id"])
        cfg = container_config_from(rec["config"])
        seen = observe(cdir)
        st = ContainerStatus(
            id=rec["id"], sandbox_id=rec["sandbox_id"], metadata=cfg.metadata, state=seen.state,
            image=cfg.image, created_at=rec["created_at"], started_at=seen.started_at,
            finished_at=seen.finished_at, pid=seen.pid, exit_code=seen.exit_code, reason=seen.reason,
            message=seen.message, log_path=rec["launch"]["log_path"], labels=cfg.labels,
            annotations=cfg.annotations, rootfs=rec.get("rootfs"), notices=notices_from(rec.get("notices", [])),
        )
        if st.state == ContainerState.EXITED and not st.message:
            st.message = self._termination_message(cdir)
        return st

    @staticmethod
    def _termination_message(cdir: str) -> str:
        try:
            with open(os.path.join(cdir, "termination-log"), "rb") as f:
                f.seek(max(os.fstat(f.fileno()).st_size - TERMINATION_MESSAGE_MAX, 0))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def _signal(self, rec: dict, pid: int, sig: int, all_processes: bool = False) -> None:
        args = ["kill", *(["--all"] if all_processes else []), rec["id"], str(sig)]
        code, _ = await self._runc(rec["launch"]["oci"], *args)
        if code != 0:
            # runc may no longer know it (the shim is deleting it); the process we know directly.
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    async def stop_container(self, container_id: str, timeout: float) -> None:
        rec = self._container(container_id)
        cdir = self._cdir(rec["id"])
        exit_file = os.path.join(cdir, "exit.json")
        target = running(cdir)
        if target is None:
            if observe(cdir).state == ContainerState.RUNNING:
                # The shim is finishing its bookkeeping; let it.
                await poll(lambda: os.path.exists(exit_file), 5.0)
            return
        pid, started = target
        if timeout > 0:
            await self._signal(rec, pid, rec["launch"].get("stop_signal") or signal.SIGTERM)
            if await poll(lambda: os.path.exists(exit_file), timeout):
                return
        if nsutil.alive(pid, started):
            await self._signal(rec, pid, signal.SIGKILL, all_processes=True)
        await asyncio.to_thread(Cgroup.from_json(rec["launch"]["cgroup"]).kill_all)
        if not await poll(lambda: os.path.exists(exit_file), 10.0):
            observe(cdir)  # records a lost exit if the shim is gone too

    async def remove_container(self, container_id: str) -> None:
        try:
            rec = self._container(container_id)
        except NotFoundError:
            return
        cdir = self._cdir(rec["id"])
        if running(cdir) is not None:
            await self.stop_container(rec["id"], 0)
        oci = rec["launch"]["oci"]
        if os.path.isdir(os.path.join(self.runc_root, rec["id"])):
            await asyncio.to_thread(runc_delete, oci)  # the shim would have; it may have died first
        self.cgroups.remove_tree(rec["sandbox_id"], rec["id"])
        self._cpu_samples.pop(rec["id"], None)
        self._discard(cdir)

    async def container_stats(self, container_id: str) -> ContainerStats:
        rec = self._container(container_id)
        now = time.time()
        stats = ContainerStats(id=rec["id"], timestamp=now)
        s = Cgroup.from_json(rec["launch"]["cgroup"]).stats()
        stats.cpu_usage_core_nano_seconds = s["cpu_ns"]
        stats.memory_usage_bytes = s["memory_usage"]
        stats.memory_working_set_bytes = s["working_set"]
        stats.pids = s["pids"]
        cpu = stats.cpu_usage_core_nano_seconds
        if cpu is not None:
            prev = self._cpu_samples.get(rec["id"])
            if prev is not None and now > prev[0] and cpu >= prev[1]:
                stats.cpu_usage_nano_cores = int((cpu - prev[1]) / (now - prev[0]))
            self._cpu_samples[rec["id"]] = (now, cpu)
        return stats

    # -- exec and attach --------------------------------------------------------------
    async def _spawn_exec(self, container_id: str, cmd: list[str], tty: bool, stdin: Any, stdout: Any,
                          stderr: Any, tty_fd: int | None = None) -> tuple[asyncio.subprocess.Process, str, str]:
        if not cmd:
            raise RuntimeServiceError("exec needs a command", reason="InvalidArgument")
        rec = self._container(container_id)
        cdir = self._cdir(rec["id"])
        if running(cdir) is None:
            raise RuntimeServiceError(f"container {rec['id']} is not running", reason="ContainerNotRunning")
        token = secrets.token_hex(6)
        pid_file, log_file = os.path.join(cdir, f"exec-{token}.pid"), os.path.join(cdir, f"exec-{token}.log")
        oci = dict(rec["launch"]["oci"], log=log_file)
        # The user, environment, working directory, capabilities and seccomp profile are the
        # container's: runc exec starts from the process in the bundle's config.json.
        args = runc_command(oci, "exec", *(["--tty"] if tty else []), "--pid-file", pid_file, rec["id"], *cmd)

        def take_terminal() -> None:
            # runc must lead the terminal's session: resizing our master then signals it
            # (SIGWINCH) and it resizes the container's terminal to match.
            try:
                os.setsid()  # uvloop calls this before its own setsid; asyncio's already did it
            except OSError:
                pass
            fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)

        proc = await asyncio.create_subprocess_exec(
            *args, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True,
            preexec_fn=take_terminal if tty_fd is not None else None,
        )
        return proc, pid_file, log_file

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: float | None = None) -> ExecResult:
        PIPE = asyncio.subprocess.PIPE
        proc, pid_file, log_file = await self._spawn_exec(container_id, cmd, False, asyncio.subprocess.DEVNULL,
                                                          PIPE, PIPE)
        handle = _RuncExec(proc, False, None, pid_file, log_file)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout if timeout else None)
        except TimeoutError:
            await handle.close()
            return ExecResult(-1, b"", f"command timed out after {timeout}s\n".encode(), timed_out=True)
        code = _exec_exit_code(proc.returncode, log_file)
        await handle.close()
        return ExecResult(code if code is not None else -1, out, err)

    async def exec(
        self, container_id: str, cmd: list[str], *, tty: bool = False, stdin: bool = False
    ) -> StreamHandle:
        PIPE = asyncio.subprocess.PIPE
        if tty:
            master, slave = os.openpty()
            try:
                proc, pid_file, log_file = await self._spawn_exec(container_id, cmd, True, slave, slave, slave,
                                                                  tty_fd=slave)
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            return _RuncExec(proc, True, master, pid_file, log_file)
        proc, pid_file, log_file = await self._spawn_exec(
            container_id, cmd, False, PIPE if stdin else asyncio.subprocess.DEVNULL, PIPE, PIPE)
        return _RuncExec(proc, False, None, pid_file, log_file)

    async def attach(self, container_id: str, *, stdin: bool = False) -> StreamHandle:
        rec = self._container(container_id)
        cdir = self._cdir(rec["id"])
        if running(cdir) is None:
            raise RuntimeServiceError(f"container {rec['id']} is not running", reason="ContainerNotRunning")
        return await attach(cdir, rec["id"], bool(rec["launch"].get("tty")))

    # -- housekeeping -----------------------------------------------------------------
    def _live_shims(self) -> set[str]:
        """State directories of this root's containers whose shim process still runs."""
        prefix = os.path.join(self.root, "containers").encode() + b"/"
        out = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if b"kybernetes.runtime.shim" in args:
                out.update(a.decode(errors="replace") for a in args if a.startswith(prefix))
        return out

    def kill_strays(self) -> int:
        """Clean up what a crash in the middle of creating left behind: holders never
        recorded, half-made container and sandbox directories (and their mounts), runc
        containers no shim looks after. Meant for start-up, before pods are created."""
        cleaned = pause.kill_unrecorded(self.root, os.path.join(self.root, "sandboxes"))
        for cid in os.listdir(os.path.join(self.root, "containers")):
            cdir = self._cdir(cid)
            if not os.path.exists(os.path.join(cdir, "config.json")):
                self._discard(cdir)
                cleaned += 1
        shims = self._live_shims()
        for cid in os.listdir(self.runc_root):
            cdir = self._cdir(cid)
            rec = read_json(os.path.join(cdir, "config.json"))
            if cdir in shims or (rec is not None and observe(cdir).state == ContainerState.RUNNING):
                continue  # looked after (a shim may be between runc create and shim.json)
            runc_delete(rec["launch"]["oci"] if rec else {**self._oci(cid), "log": os.devnull})
            cleaned += 1
        for sid in os.listdir(os.path.join(self.root, "sandboxes")):
            sdir = self._sdir(sid)
            if not os.path.exists(os.path.join(sdir, "sandbox.json")):
                for point in oci_rootfs.mounts_under(sdir):
                    oci_rootfs.unmount(point)
                self.cgroups.remove_tree(sid)
                shutil.rmtree(sdir, ignore_errors=True)
                cleaned += 1
        return cleaned
