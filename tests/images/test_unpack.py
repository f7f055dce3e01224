"""Layer unpacking: whiteouts and opaque dirs in both modes (checked through a real
overlay mount), hard links, devices, ownership, compression, diff_ids, path safety.

``layer()`` builds a layer tarball from a compact entry list; the archive, store and
service tests build their images with it too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from kybernetes.images.errors import DigestMismatch, UnsupportedImage
from kybernetes.images.unpack import OVERLAY_OPAQUE_XATTR, apply_layer

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (mknod whiteouts, trusted.* xattrs, chown)")

# An entry: (name, content) for a file, (name, None) for a dir (or name ending in "/"),
# or a TarInfo for anything else.
Entry = "tuple[str, bytes | None] | tarfile.TarInfo"


def tar_bytes(entries: list, *, mtime: int = 1_700_000_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            if isinstance(e, tarfile.TarInfo):
                tf.addfile(e)
                continue
            name, content = e
            ti = tarfile.TarInfo(name.rstrip("/"))
            ti.mtime = mtime
            if content is None or name.endswith("/"):
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size, ti.mode = len(content), 0o644
                tf.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def layer(path: Path, entries: list, kind: str = "") -> tuple[Path, str]:
    """Write a layer blob; returns (path, diff_id)."""
    data = tar_bytes(entries)
    path.write_bytes(compress(data, kind))
    return path, "sha256:" + hashlib.sha256(data).hexdigest()


def info(name: str, type: bytes, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def read_tree(root: Path) -> dict[str, str]:
    """A view of a tree: path → "dir", "file:<content>", "link:<target>", "chr:<maj>,<min>"."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISCHR(st.st_mode):
                out[rel] = f"chr:{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
            else:
                out[rel] = "file:" + p.read_bytes().decode()
    return out


def overlay_works(tmp: Path) -> bool:
    if not ROOT:
        return False
    lo, lo2, m = tmp / "ovl-probe-1", tmp / "ovl-probe-2", tmp / "ovl-probe-mnt"
    for d in (lo, lo2, m):
        d.mkdir()
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lo}:{lo2}", str(m)],
                       capture_output=True)
    if r.returncode == 0:
        subprocess.run(["umount", str(m)], check=True)
    return r.returncode == 0


class Overlay:
    """A read-only overlay mount of snapshot dirs (given lowest first), unmounted on exit."""

    def __init__(self, lowers: list[Path], mnt: Path) -> None:
        self.lowers, self.mnt = lowers, mnt

    def __enter__(self) -> Path:
        self.mnt.mkdir(exist_ok=True)
        opts = "lowerdir=" + ":".join(str(p) for p in reversed(self.lowers))
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.mnt)], check=True)
        return self.mnt

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.mnt)], check=True)


@pytest.fixture
def overlay(tmp_path: Path):
    if not overlay_works(tmp_path):
        pytest.skip("overlayfs mounts need root and a kernel with overlay")
    return lambda lowers: Overlay(lowers, tmp_path / "merged")


LOWER = [("etc/", None), ("etc/passwd", b"root"), ("etc/hosts", b"localhost"), ("etc/gone", b"x"),
         ("var/", None), ("var/lib/", None), ("var/lib/old", b"old"), ("var/lib/deep/", None),
         ("var/lib/deep/f", b"f"), ("bin/", None), ("bin/sh", b"#!")]
UPPER = [("etc/.wh.gone", b""), ("etc/hosts", b"127.0.0.1"), ("var/lib/.wh..wh..opq", b""),
         ("var/lib/new", b"new"), ("bin/.wh.sh", b""), ("bin/sh", b"sh2")]
MERGED = {"etc": "dir", "etc/passwd": "file:root", "etc/hosts": "file:127.0.0.1", "var": "dir",
          "var/lib": "dir", "var/lib/new": "file:new", "bin": "dir", "bin/sh": "file:sh2"}


def test_flatten_whiteouts_and_opaque(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    lo, lo_id = layer(tmp_path / "l1", LOWER)
    up, up_id = layer(tmp_path / "l2", UPPER)
    assert apply_layer(str(lo), str(root), "flatten").diff_id == lo_id
    assert apply_layer(str(up), str(root), "flatten").diff_id == up_id
    # bin/sh: a whiteout and a new file in the same layer — the whiteout only hides the lower one.
    assert read_tree(root) == MERGED


@needs_root
def test_overlay_snapshots_merge_like_flatten(tmp_path: Path, overlay) -> None:
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.mkdir()
    s2.mkdir()
    apply_layer(str(layer(tmp_path / "l1", LOWER)[0]), str(s1))
    apply_layer(str(layer(tmp_path / "l2", UPPER)[0]), str(s2))
    tree = read_tree(s2)
    assert tree["etc/gone"] == "chr:0,0"  # an overlay whiteout, not a deletion
    assert "bin/sh" in tree and tree["bin/sh"] == "file:sh2"
    assert os.getxattr(s2 / "var/lib", OVERLAY_OPAQUE_XATTR) == b"y"
    assert read_tree(s1)["etc/gone"] == "file:x"  # lower snapshots are never touched
    with overlay([s1, s2]) as merged:
        assert read_tree(merged) == MERGED


@needs_root
def test_overlay_dir_replacing_whiteout_is_opaque(tmp_path: Path, overlay) -> None:
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.mkdir()
    s2.mkdir()
    apply_layer(str(layer(tmp_path / "l1", [("d/", None), ("d/old", b"o")])[0]), str(s1))
    apply_layer(str(layer(tmp_path / "l2", [(".wh.d", b""), ("d/", None), ("d/new", b"n")])[0]), str(s2))
    with overlay([s1, s2]) as merged:
        assert read_tree(merged) == {"d": "dir", "d/new": "file:n"}


@pytest.mark.parametrize("kind", ["", "gzip", "zstd"])
def test_compressions_and_diff_id(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    blob, diff_id = layer(tmp_path / "blob", [("a/", None), ("a/b", b"hello" * 1000)], kind)
    digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    res = apply_layer(str(blob), str(root), blob_digest=digest, expected_diff_id=diff_id)
    assert res.diff_id == diff_id and res.size == 5000
    assert (root / "a/b").read_bytes() == b"hello" * 1000


def test_diff_id_and_blob_digest_mismatch(tmp_path: Path) -> None:
    blob, diff_id = layer(tmp_path / "blob", [("a", b"1")], "gzip")
    (tmp_path / "r").mkdir()
    with pytest.raises(DigestMismatch, match="diff_id"):
        apply_layer(str(blob), str(tmp_path / "r"), expected_diff_id="sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch, match="corrupt"):
        apply_layer(str(blob), str(tmp_path / "r"), blob_digest="sha256:" + "0" * 64)
    # A truncated blob: not a valid archive, and the blob digest says it is damaged.
    data = blob.read_bytes()
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    blob.write_bytes(data[: len(data) // 2])
    with pytest.raises(DigestMismatch):
        apply_layer(str(blob), str(tmp_path / "r"), blob_digest=good)
    blob.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UnsupportedImage, match="cannot be unpacked"):
        apply_layer(str(blob), str(tmp_path / "r"))


def test_empty_layer(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    blob, diff_id = layer(tmp_path / "blob", [], "gzip")
    assert apply_layer(str(blob), str(tmp_path / "r")).diff_id == diff_id
    (tmp_path / "zero").write_bytes(b"")
    assert apply_layer(str(tmp_path / "zero"), str(tmp_path / "r")).diff_id == \
        "sha256:" + hashlib.sha256(b"").hexdigest()


def test_links_modes_times(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    entries = [
        ("usr/", None), ("usr/bin/", None), ("usr/bin/busybox", b"BB"),
        info("usr/bin/ls", tarfile.LNKTYPE, linkname="usr/bin/busybox"),
        info("bin", tarfile.SYMTYPE, linkname="usr/bin", mtime=1234),
        info("usr/bin/su", tarfile.REGTYPE, mode=0o4755, uid=0, gid=0),
        info("ro/", tarfile.DIRTYPE, mode=0o555, mtime=1_000_000),
        ("ro/inside", b"i"),
        info("fifo", tarfile.FIFOTYPE, mode=0o600),
    ]
    blob, _ = layer(tmp_path / "l", entries)
    apply_layer(str(blob), str(root), "flatten")
    assert os.stat(root / "usr/bin/ls").st_ino == os.stat(root / "usr/bin/busybox").st_ino
    assert os.readlink(root / "bin") == "usr/bin"
    assert os.lstat(root / "bin").st_mtime == 1234
    assert stat.S_IMODE(os.stat(root / "usr/bin/su").st_mode) == 0o4755
    ro = os.stat(root / "ro")
    assert stat.S_IMODE(ro.st_mode) == 0o555 and ro.st_mtime == 1_000_000  # set after its children
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert os.stat(root / "usr/bin/busybox").st_mtime == 1_700_000_000


@needs_root
def test_ownership_devices_xattrs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    f = info("owned", tarfile.REGTYPE, uid=1234, gid=5678, mode=0o640)
    f.pax_headers = {"SCHILY.xattr.user.note": "hi", "SCHILY.xattr.trusted.overlay.opaque": "y"}
    entries = [f, info("dev/", tarfile.DIRTYPE, mode=0o755),
               info("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
               info("lnk", tarfile.SYMTYPE, linkname="owned", uid=42, gid=43)]
    blob, _ = layer(tmp_path / "l", entries)
    apply_layer(str(blob), str(root))
    st = os.lstat(root / "owned")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
    try:
        assert os.getxattr(root / "owned", "user.note") == b"hi"
    except OSError:
        pass  # the filesystem may not take user xattrs: best effort, as documented
    with pytest.raises(OSError):  # a layer cannot forge overlay attributes
        os.getxattr(root / "owned", OVERLAY_OPAQUE_XATTR)
    dev = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(1, 3)
    assert (os.lstat(root / "lnk").st_uid, os.lstat(root / "lnk").st_gid) == (42, 43)


def test_hardlink_to_lower_layer_is_copied_up(tmp_path: Path) -> None:
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.mkdir()
    s2.mkdir()
    apply_layer(str(layer(tmp_path / "l1", [("a/", None), ("a/f", b"lower")])[0]), str(s1))
    entries = [("b/", None), info("b/g", tarfile.LNKTYPE, linkname="a/f")]
    apply_layer(str(layer(tmp_path / "l2", entries)[0]), str(s2), lowers=[str(s1)])
    assert (s2 / "b/g").read_bytes() == b"lower"
    with pytest.raises(UnsupportedImage, match="hard link"):
        apply_layer(str(layer(tmp_path / "l3", entries)[0]), str(tmp_path / "s2"))


# --- path safety ---------------------------------------------------------------------------


def _outside_untouched(tmp_path: Path, outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["keep"]
    assert (outside / "keep").read_bytes() == b"precious"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir()
    (o / "keep").write_bytes(b"precious")
    return o


@pytest.mark.parametrize("mode", ["overlay", "flatten"])
def test_dotdot_refused(tmp_path: Path, outside: Path, mode: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for name in ["../outside/pwned", "a/../../outside/pwned", "./../outside/keep"]:
        blob, _ = layer(tmp_path / "l", [(name, b"evil")])
        with pytest.raises(UnsupportedImage, match="outside"):
            apply_layer(str(blob), str(root), mode)  # type: ignore[arg-type]
    # A hard link whose target climbs out is refused too.
    blob, _ = layer(tmp_path / "l", [info("x", tarfile.LNKTYPE, linkname="../outside/keep")])
    with pytest.raises(UnsupportedImage, match="outside"):
        apply_layer(str(blob), str(root), mode)  # type: ignore[arg-type]
    _outside_untouched(tmp_path, outside)


def test_absolute_names_stay_inside(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    blob, _ = layer(tmp_path / "l", [(f"{outside}/pwned", b"evil"), ("/etc/x", b"x")])
    apply_layer(str(blob), str(root), "flatten")
    _outside_untouched(tmp_path, outside)
    assert (root / str(outside).lstrip("/") / "pwned").read_bytes() == b"evil"
    assert (root / "etc/x").exists()


@pytest.mark.parametrize("mode", ["overlay", "flatten"])
@pytest.mark.parametrize("link", ["abs", "rel", "chain"])
def test_write_through_symlink_stays_inside(tmp_path: Path, outside: Path, mode: str, link: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    targets = {"abs": [info("evil", tarfile.SYMTYPE, linkname=str(outside))],
               "rel": [info("evil", tarfile.SYMTYPE, linkname="../../../../../../.." + str(outside))],
               "chain": [info("hop", tarfile.SYMTYPE, linkname="/"),
                         info("evil", tarfile.SYMTYPE, linkname="hop/../.." + str(outside))]}[link]
    entries = [*targets, ("evil/pwned", b"evil"), ("evil/keep", b"overwritten?"),
               info("evil/hl", tarfile.LNKTYPE, linkname="evil/keep"),
               ("evil/.wh.keep", b""), info("evil/sub", tarfile.SYMTYPE, linkname="/")]
    blob, _ = layer(tmp_path / "l", entries)
    apply_layer(str(blob), str(root), mode)  # type: ignore[arg-type]
    _outside_untouched(tmp_path, outside)
    # The writes landed where the container will see them: inside the root.
    inside = root / str(outside).lstrip("/")
    assert (inside / "pwned").read_bytes() == b"evil"


def test_symlink_from_lower_layer_is_not_followed_out(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(outside), root / "evil")  # as a lower layer (or an attacker) left it
    blob, _ = layer(tmp_path / "l", [("evil/keep", b"overwritten?"), ("evil/.wh.keep", b""),
                                     ("evil/.wh..wh..opq", b""), info("evil", tarfile.SYMTYPE, linkname="/x")])
    apply_layer(str(blob), str(root), "flatten")
    _outside_untouched(tmp_path, outside)
    assert os.readlink(root / "evil") == "/x"  # the last component is replaced, never followed


def test_symlink_loop_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    blob, _ = layer(tmp_path / "l", [info("a", tarfile.SYMTYPE, linkname="b"),
                                     info("b", tarfile.SYMTYPE, linkname="a"), ("a/x", b"")])
    with pytest.raises(UnsupportedImage, match="symbolic links"):
        apply_layer(str(blob), str(root), "flatten")


@needs_root
def test_overlay_implicit_parent_keeps_lower_attributes(tmp_path: Path, overlay) -> None:
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    s1.mkdir()
    s2.mkdir()
    lower = [info("tmp/", tarfile.DIRTYPE, mode=0o1777, uid=0, gid=0, mtime=111),
             info("home/", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000, mtime=222), ("home/old", b"o")]
    apply_layer(str(layer(tmp_path / "l1", lower)[0]), str(s1))
    # The upper layer writes into tmp/ and home/ without listing them.
    apply_layer(str(layer(tmp_path / "l2", [("tmp/new", b"n"), ("home/.wh.old", b"")])[0]), str(s2),
                lowers=[str(s1)])
    with overlay([s1, s2]) as merged:
        t, h = os.stat(merged / "tmp"), os.stat(merged / "home")
        assert (stat.S_IMODE(t.st_mode), t.st_mtime) == (0o1777, 111)
        assert (stat.S_IMODE(h.st_mode), h.st_uid, h.st_gid, h.st_mtime) == (0o750, 1000, 1000, 222)
        assert read_tree(merged) == {"tmp": "dir", "tmp/new": "file:n", "home": "dir"}
