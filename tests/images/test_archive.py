"""Archive import: OCI image layouts (directory, tarball, gzip tarball, nested index) and
``docker save`` archives, their names, and digest checks.

``make_image`` builds a small image's blobs in memory with tarfile; the store and
service tests use it (and the writers here) too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kybernetes.images import archive
from kybernetes.images.content import ContentStore
from kybernetes.images.errors import DigestMismatch, UnsupportedImage
from kybernetes.images.model import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    host_platform,
)
from tests.images.test_unpack import compress, tar_bytes


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Layer:
    blob: bytes
    tar: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha(self.blob)

    @property
    def diff_id(self) -> str:
        return sha(self.tar)

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.blob))


@dataclass
class Img:
    config: bytes
    layers: list[Layer]
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return sha(self.config)

    @property
    def manifest_digest(self) -> str:
        return sha(self.manifest)

    @property
    def manifest_doc(self) -> dict:
        return json.loads(self.manifest)


_TYPES = {"": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}


def make_image(layers: list[list], *, kind: str = "gzip", platform: Platform | None = None,
               cmd: list[str] | None = None, label: str = "") -> Img:
    """An image from layer entry lists (see tests.images.test_unpack.tar_bytes)."""
    p = platform or host_platform()
    built = []
    for entries in layers:
        tar = tar_bytes(entries)
        built.append(Layer(compress(tar, kind), tar, _TYPES[kind]))
    config = json.dumps({
        "architecture": p.architecture, "os": p.os,
        "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/bin"], "Labels": {"l": label} if label else {}},
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in built]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [x.descriptor.to_json() for x in built],
    }, sort_keys=True).encode()
    img = Img(config, built, manifest)
    img.blobs = {sha(config): config, sha(manifest): manifest, **{x.digest: x.blob for x in built}}
    return img


def index_of(images: list[tuple[Img, Platform]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": i.manifest_digest, "size": len(i.manifest),
         "platform": {"os": p.os, "architecture": p.architecture}} for i, p in images]}).encode()


def write_oci_layout(dest: Path, entries: list[tuple[bytes, dict[str, str]]], blobs: dict[str, bytes]) -> Path:
    """``entries``: (manifest or index bytes, annotations) for index.json."""
    (dest / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (dest / "blobs/sha256" / digest.split(":")[1]).write_bytes(data)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    manifests = []
    for data, ann in entries:
        mt = json.loads(data).get("mediaType", OCI_MANIFEST)
        manifests.append({"mediaType": mt, "digest": sha(data), "size": len(data), "annotations": ann})
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return dest


def write_docker_archive(dest: Path, images: list[tuple[Img, list[str]]], *, blobs_layout: bool = False
                         ) -> Path:
    """As ``docker save`` writes it (legacy ``<id>/layer.tar``, or Docker 25's blobs/)."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = []
    for img, tags in images:
        if blobs_layout:
            (dest / "blobs/sha256").mkdir(parents=True, exist_ok=True)
            config_name = "blobs/sha256/" + img.id.split(":")[1]
        else:
            config_name = img.id.split(":")[1] + ".json"
        (dest / config_name).write_bytes(img.config)
        names = []
        for layer in img.layers:
            if blobs_layout:
                name = "blobs/sha256/" + layer.diff_id.split(":")[1]
            else:
                name = f"{layer.diff_id.split(':')[1]}/layer.tar"
                (dest / name).parent.mkdir(exist_ok=True)
            (dest / name).write_bytes(layer.tar)
            names.append(name)
        manifest.append({"Config": config_name, "RepoTags": tags, "Layers": names})
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def tar_dir(src: Path, out: Path, *, gz: bool = False, links: dict[str, str] | None = None) -> Path:
    """Pack a directory as an archive tarball; ``links`` adds symlink members (name → target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
        for name, target in (links or {}).items():
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = tarfile.SYMTYPE, target
            tf.addfile(ti)
    out.write_bytes(gzip.compress(buf.getvalue()) if gz else buf.getvalue())
    return out


# A two-layer image: the top layer whites out a file and makes a dir opaque.
LOWER = [("etc/", None), ("etc/os-release", b"test"), ("etc/secret", b"s"), ("opt/", None), ("opt/a", b"a")]
UPPER = [("etc/.wh.secret", b""), ("opt/.wh..wh..opq", b""), ("opt/b", b"b"), ("app", b"app")]


@pytest.fixture
def content(tmp_path: Path) -> ContentStore:
    return ContentStore(str(tmp_path / "content"))


@pytest.mark.parametrize("packing", ["dir", "tar", "tar.gz"])
def test_oci_layout(tmp_path: Path, content: ContentStore, packing: str) -> None:
    img = make_image([LOWER, UPPER])
    layout = write_oci_layout(tmp_path / "layout", [
        (img.manifest, {"io.containerd.image.name": "docker.io/library/app:1",
                        "org.opencontainers.image.ref.name": "1"}),
    ], img.blobs)
    path = layout if packing == "dir" else tar_dir(layout, tmp_path / "a.tar", gz=packing == "tar.gz")
    [got] = archive.load(content, str(path))
    assert got.names == ["docker.io/library/app:1"]
    assert got.digests == [f"docker.io/library/app@{img.manifest_digest}"]
    assert (got.manifest_digest, got.config_digest) == (img.manifest_digest, img.id)
    assert [x.digest for x in got.layers] == [x.digest for x in img.layers]
    assert set(got.blobs) == set(img.blobs)
    for d, data in img.blobs.items():
        assert content.read(d) == data
    assert not os.listdir(os.path.join(content.root, "ingest"))


def test_oci_layout_names_and_platforms(tmp_path: Path, content: ContentStore) -> None:
    here = host_platform()
    other = Platform("linux", "s390x" if here.architecture != "s390x" else "amd64")
    mine, theirs = make_image([LOWER], label="mine"), make_image([UPPER], platform=other, label="theirs")
    index = index_of([(theirs, other), (mine, here)])
    plain = make_image([[("x", b"x")]], label="plain")
    blobs = {**mine.blobs, **theirs.blobs, **plain.blobs, sha(index): index}
    layout = write_oci_layout(tmp_path / "layout", [
        (index, {"org.opencontainers.image.ref.name": "registry.example:5000/multi:2"}),
        (plain.manifest, {"org.opencontainers.image.ref.name": "v1"}),  # a bare tag: untagged without a base
    ], blobs)
    multi, untagged = archive.load(content, str(layout))
    assert multi.manifest_digest == mine.manifest_digest  # the index narrowed to this node's platform
    assert multi.names == ["registry.example:5000/multi:2"]
    assert multi.digests == [f"registry.example:5000/multi@{sha(index)}"]  # the index digest, as containerd
    assert sha(index) in multi.blobs
    assert untagged.names == [] and untagged.manifest_digest == plain.manifest_digest
    assert not content.has(theirs.layers[0].digest)  # another platform's blobs are left out
    # With a base name, the bare tag names the image.
    content2 = ContentStore(str(tmp_path / "c2"))
    _, named = archive.load(content2, str(layout), base_name="example.com/plain")
    assert named.names == ["example.com/plain:v1"]


def test_oci_layout_digest_checked(tmp_path: Path, content: ContentStore) -> None:
    img = make_image([LOWER])
    blobs = dict(img.blobs)
    layer = img.layers[0].digest
    blobs[layer] = blobs[layer][:-1] + b"X"
    layout = write_oci_layout(tmp_path / "layout", [(img.manifest, {})], blobs)
    with pytest.raises(DigestMismatch):
        archive.load(content, str(layout))
    assert not content.has(layer)


def test_not_an_image(tmp_path: Path, content: ContentStore) -> None:
    img = make_image([LOWER])
    doc = img.manifest_doc
    doc["config"]["mediaType"] = "application/vnd.cncf.helm.config.v1+json"
    helm = json.dumps(doc).encode()
    layout = write_oci_layout(tmp_path / "layout", [(helm, {})], {**img.blobs, sha(helm): helm})
    with pytest.raises(UnsupportedImage, match="not a container image"):
        archive.load(content, str(layout))
    (tmp_path / "junk").mkdir()
    with pytest.raises(UnsupportedImage, match="neither"):
        archive.load(content, str(tmp_path / "junk"))


@pytest.mark.parametrize("blobs_layout", [False, True])
def test_docker_archive(tmp_path: Path, content: ContentStore, blobs_layout: bool) -> None:
    img = make_image([LOWER, UPPER], kind="")
    other = make_image([LOWER, [("z", b"z")]], kind="")  # shares the base layer
    src = write_docker_archive(tmp_path / "save", [(img, ["app:1", "example.com/app:latest"]),
                                                   (other, ["other"])], blobs_layout=blobs_layout)
    a, b = archive.load(content, str(tar_dir(src, tmp_path / "save.tar")))
    assert a.names == ["docker.io/library/app:1", "example.com/app:latest"]
    assert b.names == ["docker.io/library/other:latest"]
    assert a.digests == []  # our manifest names nothing in any registry
    assert a.config_digest == img.id
    # Stored as they are: an uncompressed layer's digest is its diff_id.
    assert [(x.media_type, x.digest) for x in a.layers] == [(OCI_LAYER, x.diff_id) for x in img.layers]
    manifest = json.loads(content.read(a.manifest_digest))
    assert manifest["config"]["digest"] == img.id and manifest["mediaType"] == OCI_MANIFEST
    assert a.manifest == manifest
    assert content.read(a.layers[1].digest) == img.layers[1].tar


def test_docker_archive_linked_layer_and_checks(tmp_path: Path, content: ContentStore) -> None:
    img = make_image([LOWER], kind="")
    src = write_docker_archive(tmp_path / "save", [(img, ["app"])])
    layer = next(src.rglob("layer.tar"))
    # docker save stores a repeated layer once and links the others to it.
    os.rename(layer.parent, src / "real")
    manifest = json.loads((src / "manifest.json").read_text())
    manifest[0]["Layers"] = ["dup/layer.tar"]
    (src / "manifest.json").write_text(json.dumps(manifest))
    tarball = tar_dir(src, tmp_path / "save.tar", links={"dup/layer.tar": "../real/layer.tar"})
    [got] = archive.load(content, str(tarball))
    assert content.read(got.layers[0].digest) == img.layers[0].tar
    # A layer that is not what the config's diff_id says.
    (src / "real/layer.tar").write_bytes(tar_bytes([("evil", b"x")]))
    manifest[0]["Layers"] = ["real/layer.tar"]
    (src / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DigestMismatch):
        archive.load(ContentStore(str(tmp_path / "c2")), str(src))
    # A config whose name says one digest and whose bytes another.
    (src / (img.id.split(":")[1] + ".json")).write_bytes(img.config + b" ")
    with pytest.raises(DigestMismatch):
        archive.load(ContentStore(str(tmp_path / "c3")), str(src))


def test_archive_names_cannot_escape(tmp_path: Path, content: ContentStore) -> None:
    (tmp_path / "secret.json").write_text("{}")
    src = tmp_path / "save"
    src.mkdir()
    (src / "manifest.json").write_text(json.dumps([{"Config": "../secret.json", "RepoTags": [], "Layers": []}]))
    with pytest.raises(UnsupportedImage, match="outside"):
        archive.load(content, str(src))
    os.symlink(tmp_path / "secret.json", src / "c.json")
    (src / "manifest.json").write_text(json.dumps([{"Config": "c.json", "RepoTags": [], "Layers": []}]))
    with pytest.raises(UnsupportedImage, match="outside"):
        archive.load(content, str(src))
