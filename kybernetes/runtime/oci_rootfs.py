"""A container's root filesystem from its image's unpacked layers: an overlayfs mount
(the layers read-only below, a private upper directory on top), or a plain copy of the
layers when overlayfs cannot be mounted here (e.g. the state directory is itself on an
overlay or a filesystem overlayfs refuses as upper).

Layers come lowest first, in overlayfs' own format: a whiteout is a 0/0 character
device, an opaque directory carries the ``trusted.overlay.opaque`` xattr ("y"). The
copy applies those rules itself, layer by layer.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
import sys

from kybernetes.runtime import nsutil

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
# mount(2) takes its options in one page; longer lowerdir lists need relative paths.
_MAX_OPTIONS = 4000


def _escape(path: str) -> str:
    # ',' separates mount options and ':' separates lower directories.
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def overlay_options(layers: list[str], upper: str, work: str) -> str:
    # overlayfs wants the topmost lower directory first; layers come lowest first.
    lower = ":".join(_escape(d) for d in reversed(layers))
    return f"lowerdir={lower},upperdir={_escape(upper)},workdir={_escape(work)}"


async def mount_overlay(layers: list[str], upper: str, work: str, target: str) -> None:
    """Mount the layers with ``upper`` on top at ``target``; raises OSError when overlayfs can't."""
    if not layers:
        raise OSError(errno.EINVAL, "an image without layers")
    for d in (upper, work, target):
        os.makedirs(d, exist_ok=True)
    opts = overlay_options(layers, upper, work)
    if len(opts) <= _MAX_OPTIONS:
        nsutil.mount("overlay", target, "overlay", 0, opts)
        return
    # Too long for one page: mount from a child whose working directory is the layers'
    # common parent, naming them relatively (containerd does the same). A child, because
    # the working directory is the whole process's.
    base = os.path.commonpath([*layers, upper, work])
    rel = overlay_options([os.path.relpath(d, base) for d in layers], os.path.relpath(upper, base),
                          os.path.relpath(work, base))
    code = (
        "import sys; from kybernetes.runtime import nsutil\n"
        "try:\n    nsutil.mount('overlay', sys.argv[1], 'overlay', 0, sys.argv[2])\n"
        "except OSError as e:\n    print(e, file=sys.stderr); sys.exit(1)\n"
    )
    pkg = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, os.path.abspath(target), rel, cwd=base, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": pkg},
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(errno.EINVAL, f"mount overlay on {target}: {err.decode(errors='replace').strip()}")


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _remove(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _copy_meta(src_st: os.stat_result, dst: str) -> None:
    os.chown(dst, src_st.st_uid, src_st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(src_st.st_mode):
        os.chmod(dst, stat.S_IMODE(src_st.st_mode))
    os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns), follow_symlinks=False)


def _copy_layer(src: str, dst: str) -> None:
    """Apply one layer directory onto ``dst`` (the layers below already there)."""
    dirs_meta: list[tuple[os.stat_result, str]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dst if rel == "." else os.path.join(dst, rel)
        if rel != "." and _is_opaque(dirpath):
            # An opaque directory hides everything the layers below had there.
            _remove(target_dir)
        st = os.lstat(dirpath)
        if os.path.lexists(target_dir) and not os.path.isdir(target_dir):
            _remove(target_dir)  # a file below replaced by a directory here
        os.makedirs(target_dir, exist_ok=True)
        dirs_meta.append((st, target_dir))
        for name in list(dirnames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                # os.walk lists a symlink to a directory among the directories: copy the link.
                dirnames.remove(name)
                filenames.append(name)
        for name in filenames:
            path, target = os.path.join(dirpath, name), os.path.join(target_dir, name)
            st = os.lstat(path)
            if _is_whiteout(st):
                _remove(target)
                continue
            if os.path.lexists(target):
                _remove(target)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(path), target)
            elif stat.S_ISREG(mode):
                shutil.copyfile(path, target, follow_symlinks=False)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.mknod(target, mode, st.st_rdev)
            elif stat.S_ISFIFO(mode):
                os.mkfifo(target, stat.S_IMODE(mode))
            else:
                continue  # sockets do not belong in images
            _copy_meta(st, target)
    # Directories last (deepest first): copying their contents changed their times.
    for st, d in reversed(dirs_meta):
        _copy_meta(st, d)


def copy_layers(layers: list[str], target: str) -> None:
    """A private copy of the layers at ``target`` (blocking; run it in a thread)."""
    os.makedirs(target, exist_ok=True)
    for layer in layers:
        _copy_layer(layer, target)


def unmount(target: str) -> None:
    """Detach whatever is mounted at ``target`` (nothing mounted is fine)."""
    while True:
        try:
            nsutil.umount(target, nsutil.MNT_DETACH)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return  # not (or no longer) a mount point
            raise


def mounts_under(directory: str) -> list[str]:
    """Mount points at or below ``directory`` in this mount namespace, deepest first."""
    prefix = os.path.abspath(directory).rstrip("/") + "/"
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].encode().decode("unicode_escape")
                if point.startswith(prefix) or point == prefix[:-1]:
                    out.append(point)
    except OSError:
        return []
    return sorted(set(out), key=len, reverse=True)
