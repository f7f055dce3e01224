"""Pod volumes on the node: where they live, how they are filled and refreshed, and mounts.

Every volume of a pod is a directory ``<root>/pods/<uid>/volumes/<plugin>/<name>``
(``kubernetes.io~empty-dir``, ``kubernetes.io~configmap`` ... as upstream names the
plugins) bind-mounted into containers through the runtime's mounts.

ConfigMap, Secret, downwardAPI and projected volumes are written by the atomic
writer, as upstream does: the files go into a fresh hidden timestamped directory,
a ``..data`` symlink is swapped to it with one rename, and the visible names are
symlinks through ``..data``. A reader therefore sees either the old set of files or
the new one, never a mixture; re-running setup on every sync is how updates reach
running pods.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import os
import shutil
import stat
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kybernetes.api.quantity import parse_quantity
from kybernetes.kubelet.env import IPs, EnvError, field_ref, resource_ref
from kybernetes.runtime.base import Mount

Obj = dict[str, Any]
ObjectGetter = Callable[[str, str], Awaitable[Obj | None]]
TokenGetter = Callable[[Obj, Obj], Awaitable[str | None]]
ClaimResolver = Callable[[str, Obj], Awaitable[str]]

DATA_DIR = "..data"


class VolumeError(Exception):
    """A volume cannot be set up (FailedMount): the pod waits in ContainerCreating."""


PLUGINS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}


def volume_kind(vol: Obj) -> str:
    for k in ("emptyDir", "configMap", "secret", "downwardAPI", "projected", "hostPath", "persistentVolumeClaim"):
        if k in vol:
            return k
    return ""


# --------------------------------------------------------------------- atomic writer


@dataclass
class FileEntry:
    data: bytes
    mode: int


def _current_files(target: str) -> dict[str, tuple[bytes, int]] | None:
    data = os.path.join(target, DATA_DIR)
    if not os.path.islink(data):
        return None
    base = os.path.join(target, os.readlink(data))
    out: dict[str, tuple[bytes, int]] = {}
    for dirpath, _dirs, files in os.walk(base):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, base)] = (fh.read(), stat.S_IMODE(os.stat(p).st_mode))
    return out


def atomic_write(target: str, files: dict[str, FileEntry]) -> bool:
    """Make ``target`` show exactly ``files``; returns whether anything changed."""
    os.makedirs(target, exist_ok=True)
    current = _current_files(target)
    wanted = {k: (v.data, v.mode) for k, v in files.items()}
    if current == wanted:
        return False
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    ts_dir = os.path.join(target, stamp)
    n = 0
    while os.path.exists(ts_dir):
        n += 1
        ts_dir = os.path.join(target, f"{stamp}{n}")
    os.makedirs(ts_dir)
    for rel, entry in files.items():
        p = os.path.join(ts_dir, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(entry.data)
        os.chmod(p, entry.mode)
    os.chmod(ts_dir, 0o755)
    old = os.readlink(os.path.join(target, DATA_DIR)) if current is not None else None
    tmp = os.path.join(target, "..data_tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(os.path.basename(ts_dir), tmp)
    # The one step readers can observe: ..data now names the complete new set.
    os.replace(tmp, os.path.join(target, DATA_DIR))
    tops = {rel.split("/", 1)[0] for rel in files}
    for top in tops:
        link = os.path.join(target, top)
        if not os.path.islink(link):
            if os.path.exists(link):
                shutil.rmtree(link) if os.path.isdir(link) else os.unlink(link)
            os.symlink(os.path.join(DATA_DIR, top), link)
    for name in os.listdir(target):
        if name.startswith(".."):
            continue
        if name not in tops:
            p = os.path.join(target, name)
            if os.path.islink(p):
                os.unlink(p)
    if old is not None:
        shutil.rmtree(os.path.join(target, old), ignore_errors=True)
    return True


# --------------------------------------------------------------------- sources


def _mode(item: Obj, default: int) -> int:
    m = item.get("mode")
    return int(m) if m is not None else default


def _keyed_files(values: dict[str, bytes], items: list[Obj] | None, default_mode: int, what: str,
                 optional: bool) -> dict[str, FileEntry]:
    if not items:
        return {k: FileEntry(v, default_mode) for k, v in values.items()}
    out = {}
    for it in items:
        key = it.get("key", "")
        if key not in values:
            if optional:
                continue
            raise VolumeError(f"configmap references non-existent config key: {key}" if what == "configmap"
                              else f"references non-existent secret key: {key}")
        out[it.get("path") or key] = FileEntry(values[key], _mode(it, default_mode))
    return out


def configmap_values(cm: Obj) -> dict[str, bytes]:
    out = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
    out.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    return out


def secret_values(sec: Obj) -> dict[str, bytes]:
    out = {k: base64.b64decode(v) for k, v in (sec.get("data") or {}).items()}
    out.update({k: v.encode() for k, v in (sec.get("stringData") or {}).items()})
    return out


def set_volume_ownership(path: str, gid: int, *, readonly: bool) -> None:
    """fsGroup, as upstream applies it: every file's group becomes ``gid`` with group read (and
    write, on a writable volume), directories group-searchable and set-gid so new files inherit it."""
    mask = 0o440 if readonly else 0o660

    def fix(p: str, is_dir: bool) -> None:
        try:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                os.lchown(p, -1, gid)
                return
            os.chown(p, -1, gid)
            os.chmod(p, stat.S_IMODE(st.st_mode) | mask | ((stat.S_ISGID | 0o110) if is_dir else 0))
        except FileNotFoundError:
            pass  # removed while walking (an atomic refresh)

    fix(path, True)
    for dirpath, dirs, files in os.walk(path):
        for d in dirs:
            fix(os.path.join(dirpath, d), True)
        for f in files:
            fix(os.path.join(dirpath, f), False)


def downward_files(pod: Obj, items: list[Obj], default_mode: int, pod_ip: IPs, host_ip: IPs,
                   node_allocatable: dict[str, str] | None = None) -> dict[str, FileEntry]:
    out = {}
    for it in items:
        try:
            if "fieldRef" in it:
                text = field_ref(pod, it["fieldRef"].get("fieldPath", ""), pod_ip, host_ip)
            elif "resourceFieldRef" in it:
                text = resource_ref(pod, it["resourceFieldRef"], "", node_allocatable)
            else:
                continue
        except EnvError as e:
            raise VolumeError(str(e)) from e
        out[it.get("path", "")] = FileEntry(text.encode(), _mode(it, default_mode))
    return out


# --------------------------------------------------------------------- the manager


class VolumeManager:
    """Sets up, refreshes and tears down the volumes of the pods on one node."""

    def __init__(self, root: str, *, get_configmap: ObjectGetter, get_secret: ObjectGetter,
                 get_token: TokenGetter | None = None, node_allocatable: dict[str, str] | None = None,
                 resolve_claim: ClaimResolver | None = None) -> None:
        self.root = root
        # persistentVolumeClaim source -> the bound volume's host directory (see pvc.py).
        self.resolve_claim = resolve_claim
        self.get_configmap = get_configmap
        self.get_secret = get_secret
        self.get_token = get_token
        self.node_allocatable = node_allocatable or {}
        self.is_root = os.geteuid() == 0
        self._owned: set[tuple[str, str]] = set()  # (pod uid, volume) given to the fsGroup once
        self.warnings: list[tuple[str, str]] = []

    def pod_dir(self, uid: str) -> str:
        return os.path.join(self.root, "pods", uid)

    def forget_ownership(self, uid: str) -> None:
        self._owned = {k for k in self._owned if k[0] != uid}

    def volume_dir(self, uid: str, vol: Obj) -> str:
        kind = volume_kind(vol)
        if kind == "hostPath":
            return vol["hostPath"].get("path", "")
        return os.path.join(self.pod_dir(uid), "volumes", PLUGINS.get(kind, "unknown"), vol.get("name", ""))

    async def setup(self, pod: Obj, pod_ip: IPs = "", host_ip: IPs = "") -> dict[str, str]:
        """Make every volume of the pod ready (idempotent); name -> host path."""
        uid = pod["metadata"]["uid"]
        out: dict[str, str] = {}
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            out[vol["name"]] = await self._setup_one(pod, vol, pod_ip, host_ip)
        os.makedirs(self.pod_dir(uid), exist_ok=True)
        return out

    async def _setup_one(self, pod: Obj, vol: Obj, pod_ip: IPs, host_ip: IPs) -> str:
        path = await self._make_one(pod, vol, pod_ip, host_ip)
        fs_group = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
        kind = volume_kind(vol)
        if fs_group is not None and self.is_root and kind != "hostPath":
            key = (pod["metadata"]["uid"], vol.get("name", ""))
            # API-sourced volumes are rewritten on every refresh; the others are walked once per pod.
            if kind in ("configMap", "secret", "downwardAPI", "projected") or key not in self._owned:
                set_volume_ownership(path, int(fs_group), readonly=kind not in ("emptyDir", "persistentVolumeClaim"))
                self._owned.add(key)
        return path

    async def _make_one(self, pod: Obj, vol: Obj, pod_ip: IPs, host_ip: IPs) -> str:
        kind = volume_kind(vol)
        uid = pod["metadata"]["uid"]
        ns = pod["metadata"].get("namespace") or "default"
        path = self.volume_dir(uid, vol)
        if kind == "hostPath":
            check_host_path(vol["hostPath"])
            return path
        if kind == "persistentVolumeClaim":
            if self.resolve_claim is None:
                raise VolumeError(f"volume {vol.get('name')!r}: persistentVolumeClaim volumes are not available")
            return await self.resolve_claim(ns, vol["persistentVolumeClaim"])
        if kind == "emptyDir":
            self._empty_dir(path, vol["emptyDir"] or {})
            return path
        if kind == "configMap":
            src = vol["configMap"]
            files = await self._keyed_source("configmap", ns, src, "name", src.get("defaultMode", 0o644))
        elif kind == "secret":
            src = vol["secret"]
            files = await self._keyed_source("secret", ns, src, "secretName", src.get("defaultMode", 0o644))
        elif kind == "downwardAPI":
            src = vol["downwardAPI"]
            files = downward_files(pod, src.get("items") or [], src.get("defaultMode", 0o644), pod_ip, host_ip,
                                   self.node_allocatable)
        elif kind == "projected":
            files = await self._projected(pod, vol["projected"], ns, pod_ip, host_ip)
        else:
            raise VolumeError(f"volume {vol.get('name')!r}: unsupported volume type")
        atomic_write(path, files)
        return path

    async def _keyed_source(self, what: str, ns: str, ref: Obj, name_field: str, mode: int) -> dict[str, FileEntry]:
        """The files of a configMap or secret source (a volume's, or one of a projected volume's)."""
        get, values = (self.get_configmap, configmap_values) if what == "configmap" else (self.get_secret,
                                                                                            secret_values)
        obj = await get(ns, ref.get(name_field, ""))
        if obj is None and not ref.get("optional"):
            raise VolumeError(f'{what} "{ref.get(name_field)}" not found')
        return _keyed_files(values(obj or {}), ref.get("items"), mode, what, bool(ref.get("optional")))

    async def _projected(self, pod: Obj, src: Obj, ns: str, pod_ip: IPs, host_ip: IPs) -> dict[str, FileEntry]:
        mode = src.get("defaultMode", 0o644)
        files: dict[str, FileEntry] = {}
        for s in src.get("sources") or []:
            if "configMap" in s:
                files.update(await self._keyed_source("configmap", ns, s["configMap"], "name", mode))
            elif "secret" in s:
                files.update(await self._keyed_source("secret", ns, s["secret"], "name", mode))
            elif "downwardAPI" in s:
                files.update(downward_files(pod, s["downwardAPI"].get("items") or [], mode, pod_ip, host_ip,
                                            self.node_allocatable))
            elif "serviceAccountToken" in s:
                ref = s["serviceAccountToken"]
                # The getter raises VolumeError when no token can be had (the mount fails, as
                # upstream's); a manager with no getter (tests) writes an empty token.
                token = await self.get_token(pod, ref) if self.get_token else None
                files[ref.get("path") or "token"] = FileEntry((token or "").encode(), mode)
        return files

    def _empty_dir(self, path: str, src: Obj) -> None:
        if not os.path.isdir(path):
            os.makedirs(path)
            # World-writable, as upstream makes them: any container user may use its emptyDir.
            os.chmod(path, 0o777)
        if src.get("medium") != "Memory" or os.path.ismount(path):
            return
        if not self.is_root:
            self.warnings.append(("EmptyDirNotTmpfs", f"emptyDir {path}: medium Memory needs root for a tmpfs; "
                                  "using a disk directory"))
            return
        opts = "mode=0777"
        if src.get("sizeLimit"):
            opts += f",size={parse_quantity(src['sizeLimit']).value()}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", path], check=True, capture_output=True)

    def teardown(self, uid: str) -> None:
        """Unmount tmpfs volumes and remove the pod's directory (after its containers are gone)."""
        self.forget_ownership(uid)
        base = os.path.join(self.pod_dir(uid), "volumes")
        if os.path.isdir(base):
            for dirpath, dirs, _files in os.walk(base, topdown=True):
                for d in list(dirs):
                    p = os.path.join(dirpath, d)
                    if os.path.ismount(p):
                        subprocess.run(["umount", "-l", p], capture_output=True)
                        dirs.remove(d)
        shutil.rmtree(self.pod_dir(uid), ignore_errors=True)

    def empty_dir_over_limit(self, pod: Obj) -> str | None:
        """The eviction message when a disk emptyDir outgrew its sizeLimit, else None."""
        uid = pod["metadata"]["uid"]
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            src = vol.get("emptyDir")
            if src is None or not src.get("sizeLimit") or src.get("medium") == "Memory":
                continue
            limit = parse_quantity(src["sizeLimit"]).value()
            used = _du(self.volume_dir(uid, vol))
            if used > limit:
                return f'Usage of EmptyDir volume "{vol["name"]}" exceeds the limit "{src["sizeLimit"]}". '
        return None


def _du(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
    return total


def check_host_path(src: Obj) -> None:
    """hostPath type checks (and the OrCreate kinds' creation), as upstream validates them."""
    path, typ = src.get("path", ""), src.get("type") or ""
    if typ == "DirectoryOrCreate":
        os.makedirs(path, mode=0o755, exist_ok=True)
    elif typ == "FileOrCreate":
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            open(path, "a").close()
            os.chmod(path, 0o644)
    checks = {
        "Directory": stat.S_ISDIR, "DirectoryOrCreate": stat.S_ISDIR, "File": stat.S_ISREG,
        "FileOrCreate": stat.S_ISREG, "Socket": stat.S_ISSOCK, "CharDevice": stat.S_ISCHR,
        "BlockDevice": stat.S_ISBLK,
    }
    if typ in checks:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise VolumeError(f"hostPath type check failed: {path} does not exist") from None
        if not checks[typ](mode):
            want = {"DirectoryOrCreate": "Directory", "FileOrCreate": "File"}.get(typ, typ)
            raise VolumeError(f"hostPath type check failed: {path} is not a {want.lower()}")


def container_mounts(container: Obj, volume_paths: dict[str, str], pod: Obj) -> list[Mount]:
    """The runtime mounts for one container's volumeMounts."""
    vols = {v["name"]: v for v in (pod.get("spec") or {}).get("volumes") or []}
    out = []
    for vm in container.get("volumeMounts") or []:
        name = vm.get("name", "")
        if name not in volume_paths:
            raise VolumeError(f"unable to find volume {name!r} for container {container.get('name')!r}")
        host = volume_paths[name]
        if vm.get("subPath"):
            host = os.path.join(host, vm["subPath"])
            if not os.path.lexists(host):
                os.makedirs(host, exist_ok=True)
        kind = volume_kind(vols.get(name, {}))
        # Upstream mounts these API-sourced volumes read-only whatever the mount says.
        readonly = bool(vm.get("readOnly")) or kind in ("configMap", "secret", "downwardAPI", "projected") or (
            kind == "persistentVolumeClaim" and bool(vols[name]["persistentVolumeClaim"].get("readOnly")))
        out.append(Mount(host_path=host, container_path=vm.get("mountPath", ""), readonly=readonly))
    return out
