"""Applying one layer tarball onto a directory, with OCI layer semantics.

:func:`apply_layer` reads a layer blob once, front to back (uncompressed, gzip or
zstd, told apart by their magic bytes), writes its entries into a directory and
returns the layer's diff_id (the sha256 of the uncompressed stream), so the caller
can check it against the image config's ``rootfs.diff_ids``.

Two modes:

* ``overlay``: the directory holds this layer alone (a snapshot, later an overlayfs
  lowerdir). Whiteouts become overlayfs whiteouts: ``.wh.x`` a 0/0 character device
  ``x``, ``.wh..wh..opq`` the ``trusted.overlay.opaque=y`` xattr on its directory.
  The kernel then hides the lower layers' entries at mount time.
* ``flatten``: the directory already holds the lower layers (the copy fallback when
  overlayfs is unavailable); whiteouts delete what they hide, and only what lower
  layers put there, never an entry of this same layer.

Security: every path is resolved component by component from a directory fd,
opening each with ``O_NOFOLLOW``. A symlink met on the way (from this layer or a
lower one) is resolved as the container will see it, inside the target as if it
were ``/`` (``..`` stops at the root, an absolute target restarts from it), the way
containerd and runc's securejoin do; the last component is never followed. So a
layer can never write outside the target. Names that climb above the root with
``..`` refuse the whole layer; a leading ``/`` is dropped, as tar, Docker and
containerd do.
"""

from __future__ import annotations

import base64
import bz2
import errno
import gzip
import hashlib
import lzma
import os
import shutil
import stat
import tarfile
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

import zstandard

from kybernetes.images.errors import DigestMismatch, ImageError, UnsupportedImage

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

Mode = Literal["overlay", "flatten"]

_CHUNK = 1 << 20
_MAX_SYMLINK_HOPS = 40
# Failures that are this node's, not the layer's: they propagate as they are.
_LOCAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE, errno.ENFILE}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BZIP2_MAGIC = b"BZh"


class CorruptBlob(DigestMismatch):
    """The layer blob on disk does not hash to its digest: discard it and fetch it again."""

    def __init__(self, digest: str, message: str) -> None:
        super().__init__(message)
        self.digest = digest


@dataclass(frozen=True)
class AppliedLayer:
    diff_id: str  # "sha256:<hex>" of the uncompressed tar stream
    size: int  # bytes of regular-file content written (the snapshot's approximate size)


def compression(path: str) -> str:
    """``"gzip"``, ``"zstd"``, ``"xz"``, ``"bzip2"`` or ``""`` (plain tar), from the magic bytes."""
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_XZ_MAGIC):
        return "xz"
    if head.startswith(_BZIP2_MAGIC):
        return "bzip2"
    return ""


class _HashingReader:
    """Hashes everything read through it, so one pass gives both the files and the digest."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def decompressor(kind: str, raw: BinaryIO) -> BinaryIO:
    """A reader of ``raw``'s uncompressed bytes; ``kind`` as :func:`compression` names it."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[arg-type]
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,  # type: ignore[return-value]
                                                          closefd=False)
    if kind == "xz":
        return lzma.LZMAFile(raw)  # type: ignore[arg-type]
    if kind == "bzip2":
        return bz2.BZ2File(raw)  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def apply_layer(tar_path: str, target: str, mode: Mode = "overlay", *, blob_digest: str | None = None,
                expected_diff_id: str | None = None, lowers: list[str] | None = None) -> AppliedLayer:
    """Apply the layer at ``tar_path`` onto the existing directory ``target``.

    ``blob_digest`` (the stored blob's digest) and ``expected_diff_id`` are checked
    after the whole stream has been read: CorruptBlob means the blob on disk is
    damaged, DigestMismatch otherwise that the image config lies; either way the
    caller should discard what was written. ``lowers`` (the snapshot dirs below this
    one, lowest first) serve overlay mode where a layer relies on what is below it:
    a directory it writes into without listing it takes the lower one's attributes,
    and a hard link to a lower layer's file copies it up, as overlayfs would.
    """
    if mode not in ("overlay", "flatten"):
        raise ValueError(f"unknown unpack mode {mode!r}")
    kind = compression(tar_path)
    with open(tar_path, "rb") as f:
        raw = _HashingReader(f)
        stream = _HashingReader(decompressor(kind, raw))  # type: ignore[arg-type]
        applier = _Applier(target, mode, lowers or [])
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
                applier.apply(tf)
            stream.drain()  # the end-of-archive padding tarfile leaves unread is part of the diff_id
            raw.drain()
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError,
                UnsupportedImage) as e:
            if isinstance(e, OSError) and e.errno in _LOCAL_ERRNOS:
                raise  # our disk's problem, not the layer's
            if isinstance(e, tarfile.ReadError) and stream.size == 0:
                raw.drain()  # 0 bytes: an empty layer
            else:
                # A damaged blob and a bad layer can fail alike; the blob's digest tells them apart.
                if blob_digest and _file_digest(tar_path) != blob_digest:
                    raise CorruptBlob(blob_digest, f"stored layer blob {blob_digest} is corrupt") from e
                if isinstance(e, UnsupportedImage):
                    raise
                raise UnsupportedImage(f"layer {blob_digest or tar_path} cannot be unpacked "
                                       f"({kind or 'uncompressed'} tar): {e}") from e
        finally:
            applier.close()
    if blob_digest and raw.digest != blob_digest:
        raise CorruptBlob(blob_digest, f"stored layer blob {blob_digest} is corrupt (it hashes to {raw.digest})")
    if expected_diff_id and stream.digest != expected_diff_id:
        raise DigestMismatch(f"layer {blob_digest or tar_path}: uncompressed digest {stream.digest} does not "
                             f"match the image config's diff_id {expected_diff_id}")
    return AppliedLayer(stream.digest, applier.size)


def clean_path(name: str) -> tuple[str, ...]:
    """A tar member name as path components inside the root; refuses one climbing above it."""
    parts: list[str] = []
    for c in name.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if not parts:
                raise UnsupportedImage(f"layer entry {name!r} points outside the image root")
            parts.pop()
        else:
            parts.append(c)
    return tuple(parts)


def _xattrs(m: tarfile.TarInfo) -> Iterator[tuple[str, bytes]]:
    for key, value in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name, data = key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote(key[len("LIBARCHIVE.xattr."):])
            try:
                data = base64.b64decode(value + "=" * (-len(value) % 4))
            except ValueError:
                continue
        else:
            continue
        # Overlay's own xattrs in a layer would forge whiteouts in the merged view.
        if not name.startswith("trusted.overlay."):
            yield name, data


def _times(m: tarfile.TarInfo) -> tuple[int, int]:
    mtime = int(float(m.mtime) * 1e9)
    try:
        atime = int(float(m.pax_headers.get("atime", "")) * 1e9)
    except ValueError:
        atime = mtime
    return atime, mtime


class _Applier:
    def __init__(self, target: str, mode: Mode, lowers: list[str]) -> None:
        self.target, self.mode, self.lowers = target, mode, lowers
        self.root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.privileged = os.geteuid() == 0
        self.size = 0
        # flatten: every path this layer wrote (and their parents); whiteouts spare them.
        self.written: set[str] = set()
        # Directory modes and times are set last: writing their children changes mtime,
        # and a read-only directory would refuse them to an unprivileged unpacker.
        self.dirs: list[tuple[tuple[str, ...], int, tuple[int, int]]] = []
        self._cache: dict[tuple[str, ...], int] = {}

    def close(self) -> None:
        self._forget()
        os.close(self.root_fd)

    # --- resolving paths inside the root -------------------------------------------------

    def _forget(self) -> None:
        """Drop cached directory fds: after a removal a cached fd may name a deleted dir."""
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def _dir(self, parts: tuple[str, ...], create: bool) -> int:
        """An fd (the caller's to close) of the directory ``parts``, resolved inside the root."""
        cached = self._cache.get(parts)
        if cached is not None:
            return os.dup(cached)
        fd = _walk(self.root_fd, parts, create, self._made if self.mode == "overlay" else None)
        if len(self._cache) >= 32:
            os.close(self._cache.pop(next(iter(self._cache))))
        self._cache[parts] = os.dup(fd)
        return fd

    def _made(self, path: tuple[str, ...], fd: int) -> None:
        """A directory the layer writes into without listing it, made in an overlay snapshot:
        give it the lower layer's attributes, or the merged view would show ours (0755,
        root, now) in place of the image's (a 1777 /tmp, say), which a copy-up would keep."""
        for lower in reversed(self.lowers):
            try:
                st = _lstat_in(lower, path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if st is None:
                return  # a whiteout or a file hides anything further down
            if self.privileged:
                os.fchown(fd, st.st_uid, st.st_gid)
            # Mode and times are set last, with the listed directories' (children move mtime).
            self.dirs.append((path, stat.S_IMODE(st.st_mode), (st.st_atime_ns, st.st_mtime_ns)))
            return

    def _remove(self, dir_fd: int, name: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)  # fd-based walk: never follows a symlink out
        else:
            os.unlink(name, dir_fd=dir_fd)
        self._forget()

    # --- entries -------------------------------------------------------------------------

    def apply(self, tf: tarfile.TarFile) -> None:
        for m in tf:
            self._entry(tf, m)
            tf.members.clear()  # a streamed layer's member list would otherwise grow with it
        self._finish_dirs()

    def _entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = clean_path(m.name)
        if not parts:
            return  # the root itself: the snapshot dir's own attributes stay ours
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts[:-1], base)
            return
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.ischr() or m.isblk() or m.isfifo()):
            return  # nothing else exists on a filesystem (GNU volume headers and the like)
        try:
            parent = self._dir(parts[:-1], create=True)
        except NotADirectoryError as e:
            raise UnsupportedImage(f"layer entry {m.name!r}: a parent is not a directory") from e
        try:
            opaque = self._make_room(parent, base, m)
            if not self._create(tf, m, parent, base, parts, opaque):
                return
        finally:
            os.close(parent)
        if self.mode == "flatten":
            for i in range(1, len(parts) + 1):
                self.written.add("/".join(parts[:i]))

    def _make_room(self, parent: int, base: str, m: tarfile.TarInfo) -> bool:
        """Remove what stands where the entry goes (a directory merges with a directory).

        Returns True when the entry replaces an overlay whiteout with a directory: the
        new directory must then hide the lower one's content (be opaque).
        """
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode) and m.isdir():
            return False
        whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        self._remove(parent, base, st)
        return whiteout and m.isdir() and self.mode == "overlay"

    def _create(self, tf: tarfile.TarFile, m: tarfile.TarInfo, parent: int, base: str,
                parts: tuple[str, ...], opaque: bool) -> bool:
        perm = m.mode & 0o7777
        if m.isreg():
            src = tf.extractfile(m)
            fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=parent)
            with os.fdopen(fd, "wb") as out:
                if src is not None:
                    shutil.copyfileobj(src, out, _CHUNK)
                out.flush()  # before utime: a later flush would move mtime
                self.size += m.size
                self._meta_fd(out.fileno(), m, perm)
        elif m.isdir():
            try:
                os.mkdir(base, 0o700, dir_fd=parent)
            except FileExistsError:
                pass
            fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
            try:
                self._own(fd, m)
                self._set_xattrs(fd, m)
                if opaque:
                    os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            self.dirs.append((parts, perm, _times(m)))
        elif m.issym():
            os.symlink(m.linkname, base, dir_fd=parent)
            self._meta_at(parent, base, m, None)
        elif m.islnk():
            self._hardlink(m, parent, base)
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            try:
                os.mknod(base, kind | perm, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
            except PermissionError:
                return False  # unprivileged: a container gets its devices from the runtime anyway
            self._meta_at(parent, base, m, perm)
        elif m.isfifo():
            os.mkfifo(base, perm, dir_fd=parent)
            self._meta_at(parent, base, m, perm)
        return True

    def _hardlink(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        target = clean_path(m.linkname)
        if not target:
            raise UnsupportedImage(f"layer entry {m.name!r} is a hard link to the root")
        try:
            src_dir = self._dir(target[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            src_dir = -1
        if src_dir >= 0:
            try:
                os.link(target[-1], base, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
                return
            except FileNotFoundError:
                pass
            finally:
                os.close(src_dir)
        # A link to a file of a lower layer: in its own snapshot the file is not there, so
        # copy it up, which is what overlayfs would have done had the layer been applied on
        # a mounted overlay (as containerd does).
        for lower in reversed(self.lowers if self.mode == "overlay" else []):
            if _copy_from(lower, target, parent, base):
                return
        raise UnsupportedImage(f"layer entry {m.name!r} is a hard link to {m.linkname!r}, which does not exist")

    def _whiteout(self, dir_parts: tuple[str, ...], base: str) -> None:
        if base == OPAQUE_WHITEOUT:
            if self.mode == "overlay":
                fd = self._dir(dir_parts, create=True)
                try:
                    os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
                except PermissionError as e:
                    raise ImageError("overlay snapshots need trusted.* xattrs (run as root)") from e
                finally:
                    os.close(fd)
            else:
                try:
                    fd = self._dir(dir_parts, create=False)
                except (FileNotFoundError, NotADirectoryError):
                    return  # nothing below to hide
                try:
                    self._clear_lower(fd, dir_parts)
                finally:
                    os.close(fd)
            return
        name = base[len(WHITEOUT_PREFIX):]
        if not name or name in (".", ".."):
            return
        if self.mode == "overlay":
            fd = self._dir(dir_parts, create=True)
            try:
                # Whiteouts hide lower layers only: an entry of this layer stays.
                os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=fd)
                except PermissionError as e:
                    raise ImageError("overlay snapshots need mknod for whiteouts (run as root)") from e
            finally:
                os.close(fd)
            return
        if "/".join((*dir_parts, name)) in self.written:
            return
        try:
            fd = self._dir(dir_parts, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            self._remove(fd, name, st)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def _clear_lower(self, fd: int, prefix: tuple[str, ...]) -> None:
        """flatten's opaque dir: delete what lower layers put under it, keep this layer's."""
        for name in os.listdir(fd):
            path = (*prefix, name)
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if "/".join(path) not in self.written:
                self._remove(fd, name, st)
            elif stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                try:
                    self._clear_lower(sub, path)
                finally:
                    os.close(sub)

    def _finish_dirs(self) -> None:
        for parts, perm, (atime, mtime) in self.dirs:
            try:
                parent = self._dir(parts[:-1], create=False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError:
                continue  # removed or replaced by a later entry
            finally:
                os.close(parent)
            try:
                os.fchmod(fd, perm)
                os.utime(fd, ns=(atime, mtime))
            finally:
                os.close(fd)

    # --- metadata ------------------------------------------------------------------------

    def _own(self, fd: int, m: tarfile.TarInfo) -> None:
        if self.privileged:
            os.fchown(fd, m.uid, m.gid)

    def _set_xattrs(self, fd_or_path: int | str, m: tarfile.TarInfo) -> None:
        for name, value in _xattrs(m):
            try:
                if isinstance(fd_or_path, int):
                    os.setxattr(fd_or_path, name, value)
                else:
                    os.setxattr(fd_or_path, name, value, follow_symlinks=False)
            except OSError:
                pass  # best effort: the filesystem or our privileges may not allow that namespace

    def _meta_fd(self, fd: int, m: tarfile.TarInfo, perm: int) -> None:
        # Order matters: chown clears setuid bits and file capabilities, so mode and
        # xattrs (security.capability) come after it.
        self._own(fd, m)
        os.fchmod(fd, perm)
        self._set_xattrs(fd, m)
        os.utime(fd, ns=_times(m))

    def _meta_at(self, parent: int, base: str, m: tarfile.TarInfo, perm: int | None) -> None:
        """Metadata of an entry that cannot be opened (symlink, device, fifo)."""
        if self.privileged:
            os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        if perm is not None:  # never a symlink here, so fchmodat following it is safe
            os.chmod(base, perm, dir_fd=parent)
        self._set_xattrs(f"/proc/self/fd/{parent}/{base}", m)
        os.utime(base, ns=_times(m), dir_fd=parent, follow_symlinks=False)


def _walk(root_fd: int, parts: tuple[str, ...], create: bool,
          made: Callable[[tuple[str, ...], int], None] | None = None) -> int:
    """Open the directory ``parts`` under ``root_fd`` as a chroot would resolve it.

    Each component is opened with O_NOFOLLOW; a symlink is read and its target
    resolved again from here (relative) or from the root (absolute), ``..`` never
    climbing above the root. Missing directories are made (0755) when ``create``, and
    ``made(path, fd)`` is told each one's resolved path.
    """
    stack = [os.dup(root_fd)]
    names: list[str] = []  # the resolved path of stack[-1]
    todo = list(reversed(parts))
    hops = 0
    try:
        while todo:
            c = todo.pop()
            if c in ("", "."):
                continue
            if c == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                    names.pop()
                continue
            cur = stack[-1]
            try:
                stack.append(os.open(c, _DIR_FLAGS, dir_fd=cur))
                names.append(c)
                continue
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(c, 0o755, dir_fd=cur)
                except FileExistsError:
                    pass
                stack.append(os.open(c, _DIR_FLAGS, dir_fd=cur))
                names.append(c)
                if made is not None:
                    made(tuple(names), stack[-1])
                continue
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
            st = os.stat(c, dir_fd=cur, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, f"{'/'.join(parts)}: {c} is not a directory")
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise UnsupportedImage(f"too many levels of symbolic links resolving {'/'.join(parts)!r}")
            link = os.readlink(c, dir_fd=cur)
            if link.startswith("/"):
                while len(stack) > 1:
                    os.close(stack.pop())
                names.clear()
            todo.extend(reversed(link.split("/")))
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def _lstat_in(lower: str, path: tuple[str, ...]) -> os.stat_result | None:
    """The directory ``path`` of snapshot ``lower``'s stat; None when something else is there."""
    root = os.open(lower, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        d = _walk(root, path[:-1], create=False)
        try:
            st = os.stat(path[-1], dir_fd=d, follow_symlinks=False)
        finally:
            os.close(d)
    finally:
        os.close(root)
    return st if stat.S_ISDIR(st.st_mode) else None


def _copy_from(lower: str, target: tuple[str, ...], parent: int, base: str) -> bool:
    """Copy ``target`` (a regular file) out of the snapshot ``lower`` as ``base``; False if absent."""
    root = os.open(lower, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            d = _walk(root, target[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            try:
                src = os.open(target[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
            except OSError:
                return False
            with os.fdopen(src, "rb") as fin:
                st = os.fstat(fin.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return False
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=parent)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(fin, out, _CHUNK)
                    out.flush()
                    if os.geteuid() == 0:
                        os.fchown(out.fileno(), st.st_uid, st.st_gid)
                    os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
                    os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
            return True
        finally:
            os.close(d)
    finally:
        os.close(root)
