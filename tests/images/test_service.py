"""The image service: pulls through a fake registry client (shared pulls, shared
snapshots, corrupt blobs re-fetched, unsupported images refused), every name form,
remove / untag / in-use refusal, prune, GC thresholds, archive import, leftovers — and a
few pulls and imports through the real RegistryClient and the project's image builder.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kybernetes.images import service as service_mod
from kybernetes.images.errors import DigestMismatch, ImageInUse, ImageNotFound, UnsupportedImage
from kybernetes.images.model import OCI_MANIFEST, Platform, host_platform
from kybernetes.images.reference import Reference
from kybernetes.images.registry import PullResult
from kybernetes.images.service import ImageService
from kybernetes.images.store import chain_ids
from tests.images.test_archive import (
    LOWER,
    UPPER,
    Img,
    index_of,
    make_image,
    sha,
    tar_dir,
    write_docker_archive,
    write_oci_layout,
)
from tests.images.test_unpack import Overlay, needs_root, overlay_works, read_tree

MERGED = {"etc": "dir", "etc/os-release": "file:test", "opt": "dir", "opt/b": "file:b", "app": "file:app"}


class FakeClient:
    """RegistryClient's shape over in-memory images; ``gate`` holds pulls until set."""

    def __init__(self) -> None:
        self.content: Any = None
        self.images: dict[str, tuple[Img, bytes | None]] = {}
        self.calls: Counter[str] = Counter()
        self.fetched: Counter[str] = Counter()
        self.gate: asyncio.Event | None = None
        self.waiting = 0
        self.arrived = asyncio.Event()

    def add(self, ref: str, img: Img, index: bytes | None = None) -> None:
        self.images[ref] = (img, index)

    async def pull(self, ref: Reference, credentials: Any = None, progress: Any = None) -> PullResult:
        self.calls[str(ref)] += 1
        self.waiting += 1
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        self.waiting -= 1
        key = ref.tagged or ref.digested or ""
        if key not in self.images:
            raise ImageNotFound(f"{ref}: not found")
        img, index = self.images[key]
        blobs = dict(img.blobs) | ({sha(index): index} if index else {})
        n = 0
        for d, data in blobs.items():
            if not self.content.has(d):
                self.content.write(data, d)
                self.fetched[d] += 1
                n += len(data)
                if progress:
                    progress(len(data))
        return PullResult(reference=ref, manifest_digest=img.manifest_digest, manifest=img.manifest_doc,
                          config_digest=img.id, layers=[x.descriptor for x in img.layers], bytes_fetched=n,
                          resolved_digest=sha(index) if index else img.manifest_digest)

    async def close(self) -> None:
        pass


@pytest.fixture
def overlay(tmp_path: Path):
    if not overlay_works(tmp_path):
        pytest.skip("overlayfs mounts need root and a kernel with overlay")
    return lambda lowers: Overlay(lowers, tmp_path / "merged")


@pytest.fixture
async def fake() -> FakeClient:
    return FakeClient()


@pytest.fixture
async def svc(tmp_path: Path, fake: FakeClient):
    s = ImageService(str(tmp_path / "images"), registry=fake, durable=False)  # type: ignore[arg-type]
    fake.content = s.content
    yield s
    await s.close()


@pytest.fixture
def unpacks(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts layer unpacks by blob digest."""
    seen: Counter[str] = Counter()
    real = service_mod.apply_layer

    def counting(path: str, target: str, mode: str = "overlay", **kw: Any) -> Any:
        if mode == "overlay":  # unpacks into snapshots, not the flatten fallback
            seen[kw.get("blob_digest") or path] += 1
        return real(path, target, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(service_mod, "apply_layer", counting)
    return seen


async def test_pull_records_and_unpacks(svc: ImageService, fake: FakeClient, tmp_path: Path) -> None:
    img = make_image([LOWER, UPPER], cmd=["/app"])
    fake.add("docker.io/library/app:1", img)
    got: list[int] = []
    image = await svc.pull("app:1", progress=got.append)
    assert image.id == img.id
    assert image.repo_tags == ["docker.io/library/app:1"]
    assert image.repo_digests == [f"docker.io/library/app@{img.manifest_digest}"]
    assert image.manifest_digest == img.manifest_digest
    assert image.size == len(img.config) + sum(len(x.blob) for x in img.layers)
    assert image.config["Cmd"] == ["/app"] and image.diff_ids == [x.diff_id for x in img.layers]
    assert image.last_used > 0 and image.created_at > 0
    assert sum(got) == sum(len(b) for b in img.blobs.values())
    dirs = svc.layer_dirs(image)
    assert dirs == [svc.store.snapshot_dir(c) for c in chain_ids(image.diff_ids)]
    assert read_tree(Path(dirs[0]))["etc/secret"] == "file:s"
    target = tmp_path / "rootfs"
    target.mkdir()
    await svc.flatten(image, str(target))  # the copy fallback gives the merged view too
    assert read_tree(target) == MERGED
    assert await svc.list() == [image]


@needs_root
async def test_pulled_layers_mount_as_overlay(svc: ImageService, fake: FakeClient, overlay) -> None:
    fake.add("docker.io/library/app:1", make_image([LOWER, UPPER]))
    image = await svc.pull("app:1")
    with overlay([Path(d) for d in svc.layer_dirs(image)]) as merged:
        assert read_tree(merged) == MERGED


async def test_status_by_every_name(svc: ImageService, fake: FakeClient) -> None:
    img = make_image([LOWER])
    index = index_of([(img, host_platform())])
    fake.add("docker.io/library/busybox:latest", img, index)
    image = await svc.pull("busybox")
    assert image.repo_digests == [f"docker.io/library/busybox@{sha(index)}"]  # the index digest
    for name in ["busybox", "busybox:latest", "docker.io/library/busybox:latest", f"busybox@{sha(index)}",
                 f"docker.io/library/busybox@{img.manifest_digest}", image.id, image.id[7:19], image.id[7:]]:
        found = await svc.status(name)
        assert found is not None and found.id == image.id, name
    for name in ["busybox:1", "alpine", image.id[7:17], f"busybox@{sha(b'x')}", "Bad/Name"]:
        assert await svc.status(name) is None, name


async def test_concurrent_pulls_share_one(svc: ImageService, fake: FakeClient) -> None:
    fake.add("docker.io/library/app:1", make_image([LOWER, UPPER]))
    fake.gate = asyncio.Event()
    progress: list[list[int]] = [[], []]
    first = asyncio.create_task(svc.pull("app:1", progress=progress[0].append))
    second = asyncio.create_task(svc.pull("docker.io/library/app:1", progress=progress[1].append))
    await fake.arrived.wait()  # by now both callers have joined: they ran before the pull's task
    fake.gate.set()
    a, b = await asyncio.gather(first, second)
    assert a == b and fake.calls["docker.io/library/app:1"] == 1
    assert sum(progress[0]) == sum(progress[1]) > 0  # both callers saw the bytes
    # One caller giving up does not cancel the pull the other waits for.
    fake.gate = asyncio.Event()
    fake.arrived.clear()
    first = asyncio.create_task(svc.pull("app:1"))
    second = asyncio.create_task(svc.pull("app:1"))
    await fake.arrived.wait()
    first.cancel()
    fake.gate.set()
    assert (await second).id == a.id
    assert fake.calls["docker.io/library/app:1"] == 2


async def test_shared_layers_unpacked_once(svc: ImageService, fake: FakeClient, unpacks: Counter[str]) -> None:
    a, b = make_image([LOWER, [("a", b"a")]]), make_image([LOWER, [("b", b"b")]])
    fake.add("docker.io/library/a:latest", a)
    fake.add("docker.io/library/b:latest", b)
    ia, ib = await asyncio.gather(svc.pull("a"), svc.pull("b"))
    base = a.layers[0].digest
    assert b.layers[0].digest == base
    assert unpacks[base] == 1 and sum(unpacks.values()) == 3
    assert svc.layer_dirs(ia)[0] == svc.layer_dirs(ib)[0]
    assert fake.fetched[base] == 1
    await svc.pull("a")  # a re-pull finds everything in place
    assert sum(unpacks.values()) == 3


async def test_corrupt_blobs_are_fetched_again(svc: ImageService, fake: FakeClient) -> None:
    img = make_image([LOWER, UPPER])
    fake.add("docker.io/library/app:1", img)
    image = await svc.pull("app:1")
    # Damage the top layer's blob and lose its snapshot; damage the config.
    top = img.layers[1].digest
    Path(svc.content.path(top)).write_bytes(b"rotten")
    Path(svc.content.path(img.id)).write_bytes(b"rotten")
    svc.store._delete_snapshot(chain_ids(image.diff_ids)[1])
    fake.calls.clear()
    again = await svc.pull("app:1")
    assert again.id == image.id and fake.calls["docker.io/library/app:1"] == 3  # config, then the layer
    assert svc.content.read(top) == img.layers[1].blob
    assert svc.layer_dirs(again)


async def test_refuses_what_it_cannot_run(svc: ImageService, fake: FakeClient) -> None:
    other = Platform("linux", "s390x" if host_platform().architecture != "s390x" else "amd64")
    fake.add("docker.io/library/foreign:latest", make_image([LOWER], platform=other))
    with pytest.raises(UnsupportedImage, match="this node is"):
        await svc.pull("foreign")
    img = make_image([LOWER])
    doc = img.manifest_doc
    doc["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"
    img.manifest = json.dumps(doc).encode()
    fake.add("docker.io/library/encrypted:latest", img)
    with pytest.raises(UnsupportedImage, match="unsupported media type"):
        await svc.pull("encrypted")
    # A config whose diff_ids lie about the layers: refused, nothing unpacked or recorded.
    liar = make_image([LOWER])
    config = json.loads(liar.config)
    config["rootfs"]["diff_ids"] = [sha(b"other")]
    liar.config = json.dumps(config).encode()
    doc = liar.manifest_doc
    doc["config"].update(digest=sha(liar.config), size=len(liar.config))
    liar.manifest = json.dumps(doc).encode()
    liar.blobs = {sha(liar.config): liar.config, sha(liar.manifest): liar.manifest,
                  liar.layers[0].digest: liar.layers[0].blob}
    fake.add("docker.io/library/liar:latest", liar)
    with pytest.raises(DigestMismatch, match="diff_id"):
        await svc.pull("liar")
    assert await svc.list() == []
    assert os.listdir(os.path.join(svc.root, "snapshots")) == []
    with pytest.raises(ImageNotFound):
        await svc.pull("missing")


async def test_remove_untag_in_use(svc: ImageService, fake: FakeClient) -> None:
    img = make_image([LOWER])
    fake.add("docker.io/library/app:1", img)
    fake.add("docker.io/library/app:2", img)
    fake.add("docker.io/library/other:latest", make_image([LOWER, [("o", b"o")]]))
    image = await svc.pull("app:1")
    await svc.pull("app:2")
    other = await svc.pull("other")
    assert (await svc.status("app:1")).repo_tags == ["docker.io/library/app:1", "docker.io/library/app:2"]
    with pytest.raises(ImageInUse):
        await svc.remove("app:2", in_use={image.id})
    untagged = await svc.untag("app:2")
    assert untagged.repo_tags == ["docker.io/library/app:1"]
    assert await svc.status("app:2") is None
    # Removing by one tag removes the image with all its names (containerd's CRI semantics).
    await svc.pull("app:2")
    await svc.remove("app:1")
    assert await svc.status("app:2") is None and await svc.status(image.id) is None
    assert not svc.content.has(img.manifest_digest)
    # The base layer is the other image's too: its blob and snapshot stay.
    assert svc.content.has(img.layers[0].digest) and svc.layer_dirs(other)
    with pytest.raises(ImageNotFound):
        await svc.remove("app:1")


async def test_prune(svc: ImageService, fake: FakeClient) -> None:
    for name in ("a", "b", "c"):
        fake.add(f"docker.io/library/{name}:latest", make_image([[(name, name.encode())]]))
    a, b, c = [await svc.pull(n) for n in ("a", "b", "c")]
    await svc.pin("c")
    removed = await svc.prune(in_use={a.id})
    assert [i.id for i in removed] == [b.id]
    assert {i.id for i in await svc.list()} == {a.id, c.id}


async def test_garbage_collect(tmp_path: Path, fake: FakeClient) -> None:
    capacity = {"bytes": 0, "other": 0}  # "other": what else fills the filesystem
    svc = ImageService(str(tmp_path / "images"), registry=fake, durable=False,  # type: ignore[arg-type]
                       fs_usage=lambda: (capacity["other"] + svc.store.usage(), capacity["bytes"]))
    fake.content = svc.content
    try:
        images = {}
        for i, name in enumerate(["old", "mid", "new", "used", "pinned"]):
            fake.add(f"docker.io/library/{name}:latest", make_image([[(name, os.urandom(2000))]], kind=""))
            images[name] = await svc.pull(name)
            svc.store.mark_used(images[name].id, 1000.0 + i)
        await svc.pin("pinned")
        in_use = {images["used"].id}
        used = svc.store.usage()
        capacity["bytes"] = used * 100 // 84  # 84% used: under the high threshold
        assert await svc.garbage_collect(in_use, 85, 80, min_age=0) == 0
        capacity["bytes"] = used * 100 // 90  # 90%: free down to 80%, one image's worth
        freed = await svc.garbage_collect(in_use, 85, 80, min_age=0)
        assert freed == used - svc.store.usage() > 0
        assert {i.repo_tags[0].split("/")[-1] for i in await svc.list()} == \
            {"mid:latest", "new:latest", "used:latest", "pinned:latest"}  # least recently used went first
        # Full of other things: everything unused goes, never what is in use or pinned.
        capacity["other"] = capacity["bytes"]
        await svc.garbage_collect(in_use, 85, 80, min_age=0)
        assert {i.id for i in await svc.list()} == {images["used"].id, images["pinned"].id}
        # Recently used images are spared by min_age (the kubelet's minimum GC age).
        svc.mark_used(images["used"])
        assert await svc.garbage_collect(set(), 85, 80) == 0
        assert svc.filesystem_usage() == (svc.store.usage(), capacity["bytes"])
    finally:
        await svc.close()


async def test_killed_unpack_leftovers_cleaned(tmp_path: Path, fake: FakeClient) -> None:
    root = tmp_path / "images"
    svc = ImageService(str(root), registry=fake, durable=False)  # type: ignore[arg-type]
    fake.content = svc.content
    img = make_image([LOWER])
    fake.add("docker.io/library/app:1", img)
    await svc.pull("app:1")
    await svc.close()
    leftover = root / "snapshots" / ".tmp-0123456789abcdef-0000" / "fs" / "etc"
    leftover.mkdir(parents=True)
    svc = ImageService(str(root), registry=fake, durable=False)  # type: ignore[arg-type]
    try:
        assert not leftover.parent.parent.exists()
        image = await svc.status("app:1")
        assert image is not None and svc.layer_dirs(image)
    finally:
        await svc.close()


async def test_layer_dirs_missing_snapshot(svc: ImageService, fake: FakeClient) -> None:
    fake.add("docker.io/library/app:1", make_image([LOWER]))
    image = await svc.pull("app:1")
    svc.store._delete_snapshot(chain_ids(image.diff_ids)[0])
    with pytest.raises(Exception, match="missing"):
        svc.layer_dirs(image)


@pytest.mark.parametrize("fmt", ["oci", "docker"])
async def test_import_archive(svc: ImageService, tmp_path: Path, fmt: str, unpacks: Counter[str]) -> None:
    img = make_image([LOWER, UPPER], kind="gzip" if fmt == "oci" else "")
    if fmt == "oci":
        src = write_oci_layout(tmp_path / "layout", [(img.manifest, {"io.containerd.image.name":
                                                                      "example.com/app:1"})], img.blobs)
    else:
        src = write_docker_archive(tmp_path / "save", [(img, ["example.com/app:1"])])
    [image] = await svc.import_archive(str(tar_dir(src, tmp_path / "a.tar")))
    assert image.id == img.id and image.repo_tags == ["example.com/app:1"]
    assert (await svc.status("example.com/app:1")).id == img.id
    target = tmp_path / "rootfs"
    target.mkdir()
    await svc.flatten(image, str(target))
    assert read_tree(target) == MERGED
    # Importing again changes nothing and unpacks nothing.
    [again] = await svc.import_archive(str(src))
    assert again.id == image.id and sum(unpacks.values()) == 2


# --- through the real RegistryClient and the project's builder -------------------------------


def _builder():
    try:
        from kybernetes.images import build
        from tests.images.registryfixture import FakeRegistry, poll
    except ImportError as e:  # pragma: no cover - the builder and fixture ship beside this file
        pytest.skip(f"image builder or registry fixture unavailable: {e}")
    return build, FakeRegistry, poll


async def test_real_client_pulls_share_blobs(tmp_path: Path, unpacks: Counter[str]) -> None:
    build, FakeRegistry, poll = _builder()
    base = [build.Entry.dir("etc"), build.Entry.file("etc/os-release", "base")]
    one = build.build_image([base, [build.Entry.file("one", "1")]], build.ImageConfig(cmd=["/one"]))
    two = build.build_image([base, [build.Entry.file("two", "2")]], build.ImageConfig(cmd=["/two"]))
    async with FakeRegistry() as reg:
        reg.add_image("one", "latest", one)
        reg.add_image("two", "latest", two)
        svc = ImageService(str(tmp_path / "images"), durable=False)  # makes its own RegistryClient
        try:
            reg.gate = asyncio.Event()
            pulls = [asyncio.create_task(svc.pull(reg.ref(n))) for n in ("one", "two", "one")]
            # Both pulls are fetching blobs (held at the gate) before any completes.
            await poll(lambda: reg.blob_gets[one.config_digest] and reg.blob_gets[two.config_digest],
                       what="both pulls fetching blobs")
            reg.gate.set()
            a, b, a2 = await asyncio.gather(*pulls)
            assert a == a2 and a.id == one.config_digest and b.id == two.config_digest
            assert reg.blob_gets[one.layers[0].digest] == 1  # the shared base layer: one download
            assert unpacks[one.layers[0].digest] == 1
            assert a.repo_tags == [f"{reg.host}/one:latest"]
        finally:
            await svc.close()


async def test_imports_what_the_builder_writes(tmp_path: Path) -> None:
    build, _, _ = _builder()
    img = build.build_image([[build.Entry.file("hello", "hi")]], build.ImageConfig(cmd=["/hello"]),
                            tags=["example.com/hello:1"])
    svc = ImageService(str(tmp_path / "images"), durable=False)
    try:
        for fmt in ("oci", "docker"):
            out = build.write_image(str(tmp_path / f"hello-{fmt}.tar"), img, fmt)
            [image] = await svc.import_archive(out)
            assert image.id == img.config_digest and image.repo_tags == ["example.com/hello:1"]
            assert image.config["Cmd"] == ["/hello"]
            assert read_tree(Path(svc.layer_dirs(image)[0])) == {"hello": "file:hi"}
    finally:
        await svc.close()


def test_manifest_media_type_constant() -> None:
    assert make_image([LOWER]).manifest_doc["mediaType"] == OCI_MANIFEST
