"""The project's own image builder, and a registry push.

No public registry is reachable from where kybernetes is tested, so its images are made here:
from directories or lists of :class:`Entry` (one list per layer) plus an :class:`ImageConfig`,
written as an OCI image layout (a directory or a tarball, gzip layers, as ``skopeo copy
oci-archive:`` and ``ctr import`` read) or as a docker-archive tarball (uncompressed
``layer.tar`` files and ``manifest.json``, as ``docker save`` writes). Builds are deterministic:
fixed mtimes and owners, sorted entries, gzip without a timestamp, sorted JSON, so the same input
gives the same digests on every machine with the same zlib.

:func:`busybox_image` makes a small, runnable image from Debian's ``busybox-static``;
:func:`web_image` stacks a document root and an ``httpd`` entrypoint on it (the multi-layer
image the tests use). :func:`push` uploads a layout or archive to a registry over the OCI
distribution API (monolithic blob uploads, HEAD to skip blobs already there, manifest PUT),
so tests fill a registry without skopeo.

CLI: ``python -m kybernetes.images.build busybox --tag busybox:latest --format oci -o busybox.tar``
(also ``web``, ``dir ROOTFS… --entrypoint …`` and ``push FILE REF``); see :func:`main`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson
from yarl import URL

from kybernetes.images.model import (
    DOCKER_CONFIG,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Platform,
    host_platform,
)
from kybernetes.images.reference import Reference, parse
from kybernetes.images.errors import ImageError, InvalidReference, RegistryError
from kybernetes.images.registries import Credential, Endpoint, TLSConfig, default_endpoint_url
from kybernetes.images.registry import Remote, Transport

# Every file in every image we build carries this mtime (SOURCE_DATE_EPOCH's convention).
EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
CREATED = datetime.datetime.fromtimestamp(EPOCH, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX_PATHS = ("/usr/bin/busybox", "/bin/busybox")
_CHUNK = 1 << 20


def _canonical(doc: Any) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------- layer contents


@dataclass(frozen=True)
class Entry:
    """One thing in a layer. ``path`` is inside the image (``bin/busybox``; a leading ``/`` is
    fine). A file's content is ``data`` or the host file ``source`` (streamed, never read whole)."""

    path: str
    kind: str = "file"  # file | dir | symlink | hardlink
    data: bytes = b""
    source: str = ""
    target: str = ""  # symlink target as written; hardlink target as a path in the image
    mode: int | None = None  # default 0o644 for files, 0o755 for directories
    uid: int = 0
    gid: int = 0

    @classmethod
    def file(cls, path: str, data: bytes | str = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
             source: str = "") -> Entry:
        return cls(path, "file", data.encode() if isinstance(data, str) else data, source, "", mode, uid, gid)

    @classmethod
    def dir(cls, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
        return cls(path, "dir", mode=mode, uid=uid, gid=gid)

    @classmethod
    def symlink(cls, path: str, target: str, uid: int = 0, gid: int = 0) -> Entry:
        return cls(path, "symlink", target=target, mode=0o777, uid=uid, gid=gid)

    @classmethod
    def hardlink(cls, path: str, target: str) -> Entry:
        return cls(path, "hardlink", target=target)


def _clean(path: str) -> str:
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"path {path!r} leaves the image's root")
    if not parts:
        raise ValueError("an entry needs a path below the root")
    return "/".join(parts)


def entries_from_dir(root: str, prefix: str = "", *, keep_owner: bool = False) -> list[Entry]:
    """A host directory as a layer's entries (files, directories, symlinks, hard links).
    Owners become root unless ``keep_owner``, as ``COPY`` in a Dockerfile does."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a directory")
    out: list[Entry] = []
    seen: dict[tuple[int, int], str] = {}
    base = _clean(prefix) if prefix.strip("/.") else ""

    def image_path(rel: str) -> str:
        return f"{base}/{rel}" if base else rel

    found: list[tuple[list[str], str, str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            p = image_path(os.path.relpath(full, root).replace(os.sep, "/"))
            found.append((p.split("/"), p, full, os.lstat(full)))
    # The order the tar will have (see _normalised), so a hard link always follows its target.
    found.sort(key=lambda f: f[0])
    for _, p, full, st in found:
        uid, gid = (st.st_uid, st.st_gid) if keep_owner else (0, 0)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out.append(Entry(p, "symlink", target=os.readlink(full), mode=0o777, uid=uid, gid=gid))
        elif stat.S_ISDIR(st.st_mode):
            out.append(Entry(p, "dir", mode=mode, uid=uid, gid=gid))
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen:
                out.append(Entry(p, "hardlink", target=seen[key], mode=mode, uid=uid, gid=gid))
            else:
                seen[key] = p
                out.append(Entry(p, "file", source=full, mode=mode, uid=uid, gid=gid))
        else:
            raise ValueError(f"{full}: only files, directories and symlinks can go into a layer")
    if base:
        out.insert(0, Entry(base, "dir"))
    return out


def _normalised(entries: Iterable[Entry]) -> list[Entry]:
    """Sorted by path (parents first), later duplicates winning, missing parents added."""
    by_path: dict[str, Entry] = {}
    for e in entries:
        if e.kind not in ("file", "dir", "symlink", "hardlink"):
            raise ValueError(f"{e.path}: unknown entry kind {e.kind!r}")
        p = _clean(e.path)
        by_path[p] = Entry(p, e.kind, e.data, e.source, _clean(e.target) if e.kind == "hardlink" else e.target,
                           e.mode, e.uid, e.gid)
    for p in list(by_path):
        parts = p.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            by_path.setdefault(parent, Entry(parent, "dir"))
    return [by_path[p] for p in sorted(by_path, key=lambda p: p.split("/"))]


def write_layer_tar(entries: Iterable[Entry], out: BinaryIO) -> None:
    """An uncompressed, reproducible layer tarball (PAX format, numeric owners, fixed mtime)."""
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in _normalised(entries):
            ti = tarfile.TarInfo(e.path)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = EPOCH, e.uid, e.gid, "", ""
            if e.kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755 if e.mode is None else e.mode
                tar.addfile(ti)
            elif e.kind == "symlink":
                ti.type, ti.mode, ti.linkname = tarfile.SYMTYPE, 0o777, e.target
                tar.addfile(ti)
            elif e.kind == "hardlink":
                ti.type, ti.mode, ti.linkname = tarfile.LNKTYPE, 0o644 if e.mode is None else e.mode, e.target
                tar.addfile(ti)
            else:
                ti.mode = 0o644 if e.mode is None else e.mode
                if e.source:
                    ti.size = os.path.getsize(e.source)
                    with open(e.source, "rb") as f:
                        tar.addfile(ti, f)
                else:
                    ti.size = len(e.data)
                    tar.addfile(ti, io.BytesIO(e.data))


# --------------------------------------------------------------------------- images


@dataclass
class ImageConfig:
    """The runnable part of an image config, spelled as Dockerfile instructions would set it."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)  # "NAME=value"
    working_dir: str = ""
    user: str = ""
    exposed_ports: list[str] = field(default_factory=list)  # "8080/tcp"; a bare number means tcp
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    volumes: list[str] = field(default_factory=list)
    platform: Platform | None = None  # default: this machine's

    def config_object(self) -> dict[str, Any]:
        """The image config's ``config`` object, with the OCI spec's key spellings."""
        c: dict[str, Any] = {}
        if self.user:
            c["User"] = self.user
        if self.exposed_ports:
            c["ExposedPorts"] = {p if "/" in p else f"{p}/tcp": {} for p in self.exposed_ports}
        if self.env:
            c["Env"] = list(self.env)
        if self.entrypoint is not None:
            c["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            c["Cmd"] = list(self.cmd)
        if self.volumes:
            c["Volumes"] = {v: {} for v in self.volumes}
        if self.working_dir:
            c["WorkingDir"] = self.working_dir
        if self.labels:
            c["Labels"] = dict(self.labels)
        if self.stop_signal:
            c["StopSignal"] = self.stop_signal
        return c


@dataclass
class BuiltLayer:
    diff_id: str  # sha256 of the uncompressed tar (what rootfs.diff_ids lists)
    tar_path: str
    tar_size: int
    digest: str  # sha256 of the gzip blob (what an OCI manifest lists)
    gz_path: str
    size: int


@dataclass
class BuiltImage:
    """One image's blobs, in a temporary directory that lives as long as this object
    (or until :meth:`close`)."""

    tags: list[str]  # normalised names: "docker.io/library/busybox:latest"
    config: dict[str, Any]
    config_bytes: bytes
    config_digest: str
    layers: list[BuiltLayer]
    manifest: dict[str, Any]
    manifest_bytes: bytes
    manifest_digest: str
    platform: Platform
    _workdir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def media_type(self) -> str:
        return OCI_MANIFEST

    def blobs(self) -> dict[str, bytes | str]:
        """digest → bytes (manifest, config) or the path of a file holding them (layers)."""
        out: dict[str, bytes | str] = {self.manifest_digest: self.manifest_bytes,
                                       self.config_digest: self.config_bytes}
        for layer in self.layers:
            out[layer.digest] = layer.gz_path
        return out

    def descriptor(self) -> dict[str, Any]:
        p = self.platform
        plat = {"architecture": p.architecture, "os": p.os} | ({"variant": p.variant} if p.variant else {})
        return {"mediaType": OCI_MANIFEST, "digest": self.manifest_digest, "size": len(self.manifest_bytes),
                "platform": plat}

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> BuiltImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class BuiltIndex:
    """A multi-platform image: an OCI image index over several BuiltImages."""

    tags: list[str]
    images: list[BuiltImage]
    index: dict[str, Any]
    index_bytes: bytes
    index_digest: str

    @property
    def media_type(self) -> str:
        return OCI_INDEX

    @property
    def manifest_digest(self) -> str:
        return self.index_digest

    def blobs(self) -> dict[str, bytes | str]:
        out: dict[str, bytes | str] = {self.index_digest: self.index_bytes}
        for img in self.images:
            out.update(img.blobs())
        return out

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": OCI_INDEX, "digest": self.index_digest, "size": len(self.index_bytes)}

    def close(self) -> None:
        for img in self.images:
            img.close()


Built = BuiltImage | BuiltIndex


def _normalise_tags(tags: Iterable[str]) -> list[str]:
    out = []
    for t in tags:
        r = parse(t)
        if r.digest:
            raise ValueError(f"{t}: a tag cannot carry a digest")
        out.append(str(r))
    return out


def build_image(layers: Sequence[str | Sequence[Entry]], config: ImageConfig | None = None, *,
                tags: Iterable[str] = (), history: Sequence[str] | None = None) -> BuiltImage:
    """Build one image. Each layer is a host directory or a list of entries, lowest first."""
    config = config or ImageConfig()
    platform = config.platform or host_platform()
    work = tempfile.TemporaryDirectory(prefix="kyb-build-")
    try:
        built: list[BuiltLayer] = []
        for i, layer in enumerate(layers):
            entries = entries_from_dir(layer) if isinstance(layer, str) else list(layer)
            tar_path = os.path.join(work.name, f"{i}.tar")
            with open(tar_path, "wb") as f:
                write_layer_tar(entries, f)
            gz_path = tar_path + ".gz"
            with open(tar_path, "rb") as src, open(gz_path, "wb") as raw:
                # No name and mtime 0 in the gzip header: the same tar always compresses alike.
                with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
                    shutil.copyfileobj(src, gz, _CHUNK)
            built.append(BuiltLayer(_sha256_file(tar_path), tar_path, os.path.getsize(tar_path),
                                    _sha256_file(gz_path), gz_path, os.path.getsize(gz_path)))
        doc: dict[str, Any] = {
            "created": CREATED, "architecture": platform.architecture, "os": platform.os,
            "config": config.config_object(),
            "rootfs": {"type": "layers", "diff_ids": [b.diff_id for b in built]},
            "history": [{"created": CREATED, "created_by": (history[i] if history and i < len(history)
                                                            else f"kybernetes build: layer {i + 1}")}
                        for i in range(len(built))],
        }
        if platform.variant:
            doc["variant"] = platform.variant
        config_bytes = _canonical(doc)
        config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": b.digest, "size": b.size} for b in built],
        }
        manifest_bytes = _canonical(manifest)
        return BuiltImage(_normalise_tags(tags), doc, config_bytes, config_digest, built, manifest,
                          manifest_bytes, "sha256:" + hashlib.sha256(manifest_bytes).hexdigest(), platform, work)
    except BaseException:
        work.cleanup()
        raise


def image_index(images: Sequence[BuiltImage], *, tags: Iterable[str] = ()) -> BuiltIndex:
    """A multi-platform image over images built for different platforms."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [img.descriptor() for img in images]}
    data = _canonical(index)
    return BuiltIndex(_normalise_tags(tags), list(images), index, data, "sha256:" + hashlib.sha256(data).hexdigest())


# --------------------------------------------------------------------------- writing


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), EPOCH, 0o644, "", ""
    tar.addfile(ti, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = os.path.getsize(path), EPOCH, 0o644, "", ""
    with open(path, "rb") as f:
        tar.addfile(ti, f)


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mtime, ti.mode, ti.uname, ti.gname = tarfile.DIRTYPE, EPOCH, 0o755, "", ""
    tar.addfile(ti)


def _as_list(images: Built | Sequence[Built]) -> list[Built]:
    return [images] if isinstance(images, BuiltImage | BuiltIndex) else list(images)


def oci_index(images: Built | Sequence[Built]) -> dict[str, Any]:
    """The layout's index.json: one entry per tag (the tag as ``ref.name``, as buildkit writes it,
    and the full name as ``io.containerd.image.name``), one plain entry for an untagged image."""
    manifests = []
    for img in _as_list(images):
        if not img.tags:
            manifests.append(img.descriptor())
        for t in img.tags:
            r = parse(t)
            manifests.append(img.descriptor() | {"annotations": {CONTAINERD_NAME: t, REF_NAME: r.tag or "latest"}})
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}


def write_oci_layout(dest: str, images: Built | Sequence[Built]) -> str:
    """Write an OCI image layout: a tarball when ``dest`` ends in ``.tar``, else a directory."""
    items = _as_list(images)
    blobs: dict[str, bytes | str] = {}
    for img in items:
        blobs.update(img.blobs())
    index = _canonical(oci_index(items))
    layout = _canonical({"imageLayoutVersion": "1.0.0"})
    if dest.endswith(".tar"):
        tmp = dest + ".part"
        with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, "oci-layout", layout)
            _add_bytes(tar, "index.json", index)
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            for digest in sorted(blobs):
                src = blobs[digest]
                name = "blobs/sha256/" + digest.split(":", 1)[1]
                _add_file(tar, name, src) if isinstance(src, str) else _add_bytes(tar, name, src)
        os.replace(tmp, dest)
        return dest
    os.makedirs(os.path.join(dest, "blobs", "sha256"), exist_ok=True)
    for digest, src in blobs.items():
        path = os.path.join(dest, "blobs", "sha256", digest.split(":", 1)[1])
        if isinstance(src, str):
            shutil.copyfile(src, path)
        else:
            with open(path, "wb") as f:
                f.write(src)
    with open(os.path.join(dest, "oci-layout"), "wb") as f:
        f.write(layout)
    with open(os.path.join(dest, "index.json"), "wb") as f:
        f.write(index)
    return dest


def write_docker_archive(dest: str, images: BuiltImage | Sequence[BuiltImage]) -> str:
    """Write a docker-archive tarball (``docker save``'s format, which ``docker load`` and
    ``ctr import`` read): ``<config hex>.json``, ``<diff_id hex>/layer.tar`` uncompressed,
    ``manifest.json`` with familiar RepoTags, and the legacy ``repositories`` file."""
    items = _as_list(images)
    manifest, files, repositories = [], {}, {}
    for img in items:
        if isinstance(img, BuiltIndex):
            raise ValueError("a docker archive holds single-platform images only; write an OCI layout instead")
        cfg = img.config_digest.split(":", 1)[1] + ".json"
        files[cfg] = img.config_bytes
        layer_names = []
        for layer in img.layers:
            name = layer.diff_id.split(":", 1)[1] + "/layer.tar"
            files[name] = layer.tar_path
            layer_names.append(name)
        familiar = [parse(t).familiar() for t in img.tags]
        manifest.append({"Config": cfg, "RepoTags": familiar or None, "Layers": layer_names})
        for t in img.tags:
            r = parse(t)
            repo = r.familiar().rsplit(":", 1)[0] if r.tag else r.familiar()
            top = img.layers[-1].diff_id.split(":", 1)[1] if img.layers else img.config_digest.split(":", 1)[1]
            repositories.setdefault(repo, {})[r.tag or "latest"] = top
    tmp = dest + ".part"
    with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs_done: set[str] = set()
        for name in sorted(files):
            if "/" in name:
                d = name.split("/", 1)[0]
                if d not in dirs_done:
                    dirs_done.add(d)
                    _add_dir(tar, d)
            src = files[name]
            _add_file(tar, name, src) if isinstance(src, str) else _add_bytes(tar, name, src)
        _add_bytes(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
        if repositories:
            _add_bytes(tar, "repositories", _canonical(repositories))
    os.replace(tmp, dest)
    return dest


def write_image(dest: str, images: Built | Sequence[Built], fmt: str = "oci") -> str:
    """``fmt`` is ``oci`` (layout; tarball if dest ends in .tar) or ``docker`` (docker-archive)."""
    if fmt == "oci":
        return write_oci_layout(dest, images)
    if fmt == "docker":
        return write_docker_archive(dest, images)  # type: ignore[arg-type]
    raise ValueError(f"unknown image format {fmt!r} (expected oci or docker)")


# --------------------------------------------------------------------------- busybox


def _is_static_elf(path: str) -> bool:
    """True unless the ELF file asks for a program interpreter (a dynamic loader)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF":
            return False
        is64, little = ident[4] == 2, ident[5] == 1
        end = "<" if little else ">"
        if is64:
            phoff, = struct.unpack(end + "Q", ident[32:40])
            phentsize, phnum = struct.unpack(end + "HH", ident[54:58])
        else:
            phoff, = struct.unpack(end + "I", ident[28:32])
            phentsize, phnum = struct.unpack(end + "HH", ident[42:46])
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, = struct.unpack(end + "I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return False
    return True


def find_busybox(path: str | None = None) -> str:
    """The static busybox to build from; a clear error when Debian's busybox-static is missing."""
    candidates = [path] if path else list(BUSYBOX_PATHS)
    for c in candidates:
        if c and os.path.isfile(c):
            if not _is_static_elf(c):
                raise RuntimeError(f"{c} is dynamically linked and would not run inside an image: install "
                                   "Debian's busybox-static package (apt-get install busybox-static)")
            return c
    raise RuntimeError(f"no busybox at {', '.join(c for c in candidates if c)}: install Debian's "
                       "busybox-static package (apt-get install busybox-static)")


def busybox_entries(busybox: str | None = None) -> list[Entry]:
    """A minimal root filesystem around a static busybox: /bin/busybox and a symlink per applet,
    root, nobody (65534) and user (1000) accounts, /tmp (1777), /root, /home/user, os-release."""
    bb = find_busybox(busybox)
    listing = subprocess.run([bb, "--list"], capture_output=True, text=True, check=True).stdout
    banner = subprocess.run([bb], capture_output=True, text=True).stdout.splitlines()
    version = ""
    if banner and banner[0].startswith("BusyBox v"):
        version = banner[0].split()[1].lstrip("v")
    applets = sorted({a for a in listing.split() if a and "/" not in a and a not in ("busybox", "linuxrc")})
    passwd = ("root:x:0:0:root:/root:/bin/sh\n"
              "user:x:1000:1000:user:/home/user:/bin/sh\n"
              "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    group = "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\nnobody:x:65534:\n"
    os_release = (f'NAME="BusyBox"\nID=busybox\nVERSION_ID="{version}"\n'
                  f'PRETTY_NAME="BusyBox {version} (kybernetes build)"\nHOME_URL="https://busybox.net/"\n')
    out = [
        Entry.dir("bin"), Entry.dir("dev"), Entry.dir("etc"), Entry.dir("home"),
        Entry.dir("home/user", uid=1000, gid=1000), Entry.dir("proc"), Entry.dir("root", mode=0o700),
        Entry.dir("sys"), Entry.dir("tmp", mode=0o1777), Entry.dir("usr"), Entry.dir("usr/bin"),
        Entry.dir("var"), Entry.dir("var/tmp", mode=0o1777),
        Entry.file("bin/busybox", source=bb, mode=0o755),
        Entry.file("etc/passwd", passwd), Entry.file("etc/group", group),
        Entry.file("etc/shadow", "root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\n"
                                 "nobody:*:19000:0:99999:7:::\n", mode=0o640),
        Entry.file("etc/os-release", os_release),
        # `#!/usr/bin/env sh` scripts are everywhere.
        Entry.symlink("usr/bin/env", "/bin/env"),
    ]
    out += [Entry.symlink(f"bin/{a}", "busybox") for a in applets]
    return out


def busybox_config(**overrides: Any) -> ImageConfig:
    base = ImageConfig(cmd=["sh"], env=[DEFAULT_PATH])
    for k, v in overrides.items():
        if not hasattr(base, k):
            raise TypeError(f"ImageConfig has no field {k!r}")
        setattr(base, k, v)
    return base


def busybox_image(tag: str | Sequence[str] = "busybox:latest", *, busybox: str | None = None,
                  extra_layers: Sequence[str | Sequence[Entry]] = (), **config: Any) -> BuiltImage:
    """A runnable busybox image (Cmd ``["sh"]``); ``config`` overrides ImageConfig fields and
    ``extra_layers`` stack on top of the busybox layer."""
    tags = [tag] if isinstance(tag, str) else list(tag)
    return build_image([busybox_entries(busybox), *extra_layers], busybox_config(**config), tags=tags,
                       history=["busybox", *(f"layer {i + 2}" for i in range(len(extra_layers)))])


WEB_INDEX = "<html><body><h1>hello from kybernetes</h1></body></html>\n"


def web_image(tag: str | Sequence[str] = "web:latest", *, index_html: str = WEB_INDEX, port: int = 8080,
              busybox: str | None = None, **config: Any) -> BuiltImage:
    """Two layers: busybox, then a document root /www served by busybox httpd on ``port``."""
    www = [Entry.dir("www"), Entry.file("www/index.html", index_html),
           Entry.file("www/healthz", "ok\n")]
    cfg: dict[str, Any] = {"entrypoint": ["httpd", "-f", "-p", str(port), "-h", "/www"], "cmd": None,
                           "exposed_ports": [f"{port}/tcp"]}
    cfg.update(config)
    return busybox_image(tag, busybox=busybox, extra_layers=[www], **cfg)


# --------------------------------------------------------------------------- reading layouts


class _Source:
    """An OCI layout (directory or tarball) or a docker-archive, read for pushing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(path):
            names = set(os.listdir(path))
        else:
            self._tar = tarfile.open(path)  # noqa: SIM115 - closed by close()
            for m in self._tar.getmembers():
                self._members[m.name.removeprefix("./")] = m
            names = set(self._members)
        if "index.json" in names:
            self.kind = "oci"
        elif "manifest.json" in names:
            self.kind = "docker"
        else:
            raise ValueError(f"{path}: neither an OCI layout (index.json) nor a docker archive (manifest.json)")

    def size(self, name: str) -> int:
        if self._tar is None:
            return os.path.getsize(os.path.join(self.path, name))
        return self._member(name).size

    def _member(self, name: str) -> tarfile.TarInfo:
        try:
            return self._members[name]
        except KeyError:
            raise ValueError(f"{self.path}: {name} is missing") from None

    def open(self, name: str) -> BinaryIO:
        if self._tar is None:
            return open(os.path.join(self.path, name), "rb")
        f = self._tar.extractfile(self._member(name))
        if f is None:
            raise ValueError(f"{self.path}: {name} is not a file")
        return f  # type: ignore[return-value]

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


# --------------------------------------------------------------------------- push


def _push_target(ref: str) -> tuple[Endpoint, Reference]:
    """``127.0.0.1:5000/x:y`` or ``http://127.0.0.1:5000/x:y`` → (the registry's own endpoint, ref)."""
    scheme = ""
    if "://" in ref:
        scheme, ref = ref.split("://", 1)
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {scheme!r} in {ref!r}")
    r = parse(ref)
    url = default_endpoint_url(r.domain)
    if scheme:
        url = f"{scheme}://{url.split('://', 1)[1]}"
    return Endpoint(url, url.split("://", 1)[1].split("/", 1)[0].lower()), r


def _select(index: dict[str, Any], image: str | None, where: str) -> dict[str, Any]:
    entries = [m for m in index.get("manifests") or [] if m.get("mediaType") in MANIFEST_TYPES + INDEX_TYPES
               or "mediaType" not in m]
    if image is not None:
        names = {image}
        try:
            names.add(str(parse(image)))
        except InvalidReference:
            pass
        for m in entries:
            ann = m.get("annotations") or {}
            if ann.get(CONTAINERD_NAME) in names or ann.get(REF_NAME) == image:
                return m
        raise ValueError(f"{where}: no image named {image!r}")
    if len({m["digest"] for m in entries}) != 1:
        names = sorted({(m.get("annotations") or {}).get(CONTAINERD_NAME) or m["digest"] for m in entries})
        raise ValueError(f"{where}: holds {len(names)} images; choose one with image= ({', '.join(names)})")
    return entries[0]


async def push(source: str, ref: str, *, image: str | None = None, username: str = "", password: str = "",
               credential: Credential | None = None, insecure_skip_verify: bool = False) -> str:
    """Push the image in an OCI layout / docker archive ``source`` to ``ref`` (``host:port/name:tag``,
    optionally with ``http://``/``https://``); returns the pushed manifest's digest. A docker
    archive's uncompressed layers go up as OCI ``tar`` layers with an OCI manifest."""
    endpoint, target = _push_target(ref)
    if insecure_skip_verify:
        endpoint = Endpoint(endpoint.url, endpoint.host, TLSConfig(insecure_skip_verify=True))
    if credential is None and (username or password):
        credential = Credential(target.domain, username, password)
    src = _Source(source)
    transport = Transport()
    remote = Remote(transport, endpoint, target.path, [credential] if credential else None, actions="pull,push")
    try:
        if src.kind == "oci":
            top = _select(orjson.loads(src.read("index.json")), image, source)
            return await _push_tree(remote, src, top, target.object)
        return await _push_docker(remote, src, image, target.object, source)
    finally:
        src.close()
        await transport.close()


async def _push_tree(remote: Remote, src: _Source, desc: dict[str, Any], tag: str) -> str:
    digest = desc["digest"]
    blob = "blobs/sha256/" + digest.split(":", 1)[1]
    data = src.read(blob)
    doc = orjson.loads(data)
    mt = desc.get("mediaType") or doc.get("mediaType") or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    if mt in INDEX_TYPES:
        for child in doc.get("manifests") or []:
            await _push_tree(remote, src, child, child["digest"])
    else:
        for d in [doc["config"], *doc.get("layers", [])]:
            name = "blobs/sha256/" + d["digest"].split(":", 1)[1]
            await _upload_blob(remote, d["digest"], src.size(name), lambda name=name: src.open(name))
    return await _put_manifest(remote, tag, mt, data)


async def _push_docker(remote: Remote, src: _Source, image: str | None, tag: str, where: str) -> str:
    entries = orjson.loads(src.read("manifest.json"))
    if image is not None:
        want = parse(image).familiar()
        entries = [e for e in entries if want in (e.get("RepoTags") or []) or image in (e.get("RepoTags") or [])]
    if len(entries) != 1:
        raise ValueError(f"{where}: holds {len(entries)} matching images; choose one with image=")
    entry = entries[0]
    config = src.read(entry["Config"])
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    await _upload_blob(remote, config_digest, len(config), lambda: io.BytesIO(config))
    layers = []
    for name in entry["Layers"]:
        h = hashlib.sha256()
        with src.open(name) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        await _upload_blob(remote, digest, src.size(name), lambda name=name: src.open(name))
        layers.append({"mediaType": OCI_LAYER, "digest": digest, "size": src.size(name)})
    doc = orjson.loads(config)
    config_type = OCI_CONFIG if "rootfs" in doc else DOCKER_CONFIG
    manifest = _canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
                           "layers": layers})
    return await _put_manifest(remote, tag, OCI_MANIFEST, manifest)


async def _chunks(opener: Any) -> AsyncIterator[bytes]:
    with opener() as f:
        while chunk := f.read(_CHUNK):
            yield chunk


async def _upload_blob(remote: Remote, digest: str, size: int, opener: Any) -> None:
    head = await remote.request("HEAD", remote.url(f"/blobs/{digest}"))
    async with head:
        if head.status == 200:
            return
    start = await remote.request("POST", remote.url("/blobs/uploads/"), {"Content-Length": "0"})
    async with start:
        if start.status != 202 or "Location" not in start.headers:
            raise RegistryError(f"starting upload of {digest}: {start.status} {await start.text()}")
        location = start.url.join(URL(start.headers["Location"]))
    put = await remote.request("PUT", location.update_query({"digest": digest}),
                               {"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                               data=lambda: _chunks(opener))
    async with put:
        if put.status not in (201, 204):
            raise RegistryError(f"uploading {digest}: {put.status} {await put.text()}")
        got = put.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise RegistryError(f"uploading {digest}: registry stored it as {got}")


async def _put_manifest(remote: Remote, tag: str, media_type: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp = await remote.request("PUT", remote.url(f"/manifests/{tag}"), {"Content-Type": media_type},
                                data=lambda: data)
    async with resp:
        if resp.status not in (201, 204):
            raise RegistryError(f"putting manifest {tag}: {resp.status} {await resp.text()}")
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise RegistryError(f"putting manifest {tag}: registry computed {got}, expected {digest}")
    return digest


# --------------------------------------------------------------------------- CLI


def _argv_list(value: str | None) -> list[str] | None:
    """``'["httpd","-f"]'`` (JSON, as a Dockerfile's exec form) or ``'httpd -f'`` (split like a shell)."""
    if value is None:
        return None
    v = value.strip()
    if v.startswith("["):
        parsed = json.loads(v)
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise argparse.ArgumentTypeError(f"{value!r}: expected a JSON list of strings")
        return parsed
    return shlex.split(v)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tag", "-t", action="append", help="image name, e.g. busybox:latest (repeatable)")
    p.add_argument("--format", choices=("oci", "docker"), default="oci",
                   help="oci: OCI image layout tarball (default); docker: docker-archive (docker save)")
    p.add_argument("-o", "--output", required=True, help="output file (.tar) or, for oci, a directory")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entrypoint", help='JSON list or shell words, e.g. \'["httpd","-f"]\'')
    p.add_argument("--cmd", help="JSON list or shell words")
    p.add_argument("--env", "-e", action="append", default=[], help="NAME=value (repeatable)")
    p.add_argument("--workdir", default="")
    p.add_argument("--user", default="")
    p.add_argument("--expose", action="append", default=[], help="port[/proto] (repeatable)")
    p.add_argument("--label", action="append", default=[], help="key=value (repeatable)")
    p.add_argument("--stop-signal", default="")
    p.add_argument("--platform", help="os/arch[/variant] recorded in the config (default: this machine's)")


def _config_from(args: argparse.Namespace, base: ImageConfig) -> ImageConfig:
    if args.entrypoint is not None:
        base.entrypoint = _argv_list(args.entrypoint)
        base.cmd = None  # as in a Dockerfile: a new ENTRYPOINT resets an inherited CMD
    if args.cmd is not None:
        base.cmd = _argv_list(args.cmd)
    for e in args.env:
        if "=" not in e:
            raise SystemExit(f"--env {e!r}: expected NAME=value")
        name = e.split("=", 1)[0]
        base.env = [x for x in base.env if x.split("=", 1)[0] != name] + [e]
    base.working_dir = args.workdir or base.working_dir
    base.user = args.user or base.user
    base.exposed_ports += args.expose
    for lab in args.label:
        k, sep, v = lab.partition("=")
        if not sep:
            raise SystemExit(f"--label {lab!r}: expected key=value")
        base.labels[k] = v
    base.stop_signal = args.stop_signal or base.stop_signal
    if args.platform:
        parts = args.platform.split("/")
        base.platform = Platform(parts[0], parts[1] if len(parts) > 1 else "amd64", parts[2] if len(parts) > 2 else "")
    return base


def make_parser(prog: str = "python -m kybernetes.images.build") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Build OCI images without a registry or a daemon.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("busybox", help="a busybox image from Debian's busybox-static")
    _add_output_args(p)
    _add_config_args(p)
    p.add_argument("--busybox", help="path of a static busybox (default /usr/bin/busybox)")
    p.add_argument("--layer", action="append", default=[], help="a directory to add as a layer on top")
    p = sub.add_parser("web", help="busybox plus a /www layer served by httpd on port 8080")
    _add_output_args(p)
    p.add_argument("--busybox")
    p.add_argument("--index-html", help="file whose content becomes /www/index.html")
    p = sub.add_parser("dir", help="an image whose layers are directories (lowest first)")
    p.add_argument("layers", nargs="+", metavar="DIR")
    _add_output_args(p)
    _add_config_args(p)
    p = sub.add_parser("push", help="push an OCI layout or docker archive to a registry")
    p.add_argument("source")
    p.add_argument("ref", help="host[:port]/name:tag, optionally with http:// or https://")
    p.add_argument("--image", help="which image of a multi-image source")
    p.add_argument("--username", "-u", default="")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--insecure-skip-tls-verify", action="store_true")
    return ap


def main(argv: Sequence[str] | None = None, prog: str = "python -m kybernetes.images.build") -> int:
    args = make_parser(prog).parse_args(argv)
    try:
        if args.command == "push":
            password = ""
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            elif args.username:
                password = getpass.getpass(f"password for {args.username}: ")
            digest = asyncio.run(push(args.source, args.ref, image=args.image, username=args.username,
                                      password=password, insecure_skip_verify=args.insecure_skip_tls_verify))
            print(digest)
            return 0
        if args.command == "busybox":
            cfg = _config_from(args, busybox_config())
            img = build_image([busybox_entries(args.busybox), *args.layer], cfg,
                              tags=args.tag or ["busybox:latest"])
        elif args.command == "web":
            html = WEB_INDEX
            if args.index_html:
                with open(args.index_html, encoding="utf-8") as f:
                    html = f.read()
            img = web_image(args.tag or ["web:latest"], index_html=html, busybox=args.busybox)
        else:
            img = build_image(args.layers, _config_from(args, ImageConfig()), tags=args.tag or [])
        with img:
            write_image(args.output, img, args.format)
        print(f"{args.output}: {img.manifest_digest} ({', '.join(img.tags) or 'untagged'})")
        return 0
    except (RuntimeError, ValueError, OSError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
