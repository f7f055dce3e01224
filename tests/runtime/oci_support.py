"""Test support for the OCI runtime: a busybox image built from the host's busybox-static,
a second layer with overlay whiteouts, and a fake image provider with ImageService's contract."""

from __future__ import annotations

import os
import shutil
import subprocess

from kybernetes.images.model import Image

BUSYBOX = shutil.which("busybox") or "/usr/bin/busybox"

PASSWD = """root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user:x:1000:1000:user:/home/user:/bin/sh
"""
GROUP = """root:x:0:
wheel:x:10:user
user:x:1000:
nogroup:x:65534:
"""


def busybox_static() -> bool:
    """Whether the host's busybox runs without shared libraries (it must, inside an image)."""
    if not os.path.exists(BUSYBOX):
        return False
    out = subprocess.run(["ldd", BUSYBOX], capture_output=True, text=True)
    return "not a dynamic executable" in (out.stdout + out.stderr) or out.returncode != 0


def build_busybox_layer(root: str) -> None:
    """The lowest layer: /bin/busybox with a symlink per applet, users, groups, /tmp."""
    os.makedirs(os.path.join(root, "bin"))
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for name in applets:
        if name != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", name))
    for d in ("etc", "root", "home/user", "opt/a", "proc", "sys", "dev"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chown(os.path.join(root, "home/user"), 1000, 1000)
    os.makedirs(os.path.join(root, "tmp"))
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    for name, text in (("passwd", PASSWD), ("group", GROUP), ("motd", "lower motd\n")):
        with open(os.path.join(root, "etc", name), "w") as f:
            f.write(text)
    with open(os.path.join(root, "opt/a/file1"), "w") as f:
        f.write("one\n")


def build_top_layer(root: str) -> None:
    """A layer above: deletes /etc/motd (whiteout), makes /opt/a opaque, adds files."""
    os.makedirs(os.path.join(root, "etc"))
    os.mknod(os.path.join(root, "etc", "motd"), 0o600 | 0o020000, os.makedev(0, 0))
    os.makedirs(os.path.join(root, "opt", "a"))
    os.setxattr(os.path.join(root, "opt", "a"), "trusted.overlay.opaque", b"y")
    with open(os.path.join(root, "opt/a/file2"), "w") as f:
        f.write("two\n")
    with open(os.path.join(root, "layer2"), "w") as f:
        f.write("top\n")


class FakeImages:
    """The image provider contract the OCI runtime uses: status, layer_dirs, mark_used."""

    def __init__(self) -> None:
        self._images: dict[str, tuple[Image, list[str]]] = {}
        self.used: list[str] = []

    def add(self, ref: str, layers: list[str], **config: object) -> Image:
        img = Image(id=f"sha256:{len(self._images):064x}", repo_tags=[ref], config=dict(config))
        self._images[ref] = (img, layers)
        return img

    async def status(self, ref: str) -> Image | None:
        found = self._images.get(ref)
        return found[0] if found else None

    def layer_dirs(self, image: Image) -> list[str]:
        return next(layers for img, layers in self._images.values() if img.id == image.id)

    def mark_used(self, image: Image) -> None:
        self.used.append(image.id)
