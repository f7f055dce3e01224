"""Importing image archives into the content store, so an imported image looks pulled.

Two formats, as a tarball (plain, gzip or zstd) or an already-extracted directory:

* an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/…``), as
  ``skopeo``, ``ctr export``, buildkit and Docker ≥ 25 write it. An image's name comes
  from containerd's ``io.containerd.image.name`` annotation, else from
  ``org.opencontainers.image.ref.name`` when that holds a full reference (a bare tag
  names an image only given a ``base_name``, as ``ctr import --base-name`` does).
  An index picks this node's platform; only its blobs are imported.
* a ``docker save`` archive (``manifest.json`` listing Config, RepoTags, Layers). Its
  layers are uncompressed tars, stored as they are (their digest is their diff_id), and
  an OCI manifest is written for them.

Every blob is verified against its digest while it is copied, and copied in chunks:
multi-hundred-MB layers never sit in memory. :func:`load` only fills the content
store; the image service unpacks and records what it returns, as it does for a pull.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from kybernetes.images.content import ContentStore, sha256_digest
from kybernetes.images.errors import DigestMismatch, ImageError, UnsupportedImage
from kybernetes.images.model import (
    DOCKER_CONFIG,
    INDEX_TYPES,
    LAYER_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    OCI_MANIFEST,
    Descriptor,
    Platform,
    host_platform,
)
from kybernetes.images.reference import is_digest
from kybernetes.images.registry import select_manifest
from kybernetes.images.reference import parse as parse_reference
from kybernetes.images.unpack import clean_path, compression, decompressor

log = logging.getLogger(__name__)

CONTAINERD_NAME = "io.containerd.image.name"
OCI_REF_NAME = "org.opencontainers.image.ref.name"
_MAX_JSON = 64 << 20  # manifests, indexes and configs are small; a huge one is an attack or a mistake
_CHUNK = 1 << 20
_HEX_JSON = re.compile(r"(?:^|/)([a-f0-9]{64})\.json$")
_BLOB_NAME = re.compile(r"^blobs/sha256/([a-f0-9]{64})$")

LockFor = Callable[[str], AbstractContextManager[Any]]


@dataclass
class ArchiveImage:
    """One image found in an archive, its blobs already in the content store."""

    names: list[str]  # normalised repo tags
    digests: list[str]  # repo digests (name@digest of what the name pointed at)
    manifest_digest: str
    manifest: dict[str, Any]
    config_digest: str
    layers: list[Descriptor]
    blobs: list[str] = field(default_factory=list)  # every blob stored for this image


# --- sources: a directory or a tarball ---------------------------------------------------------


class _Source:
    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def read(self, name: str, limit: int = _MAX_JSON) -> bytes:
        if self.size(name) > limit:
            raise UnsupportedImage(f"archive member {name!r} is too large ({self.size(name)} bytes)")
        with self.open(name) as f:
            return f.read()

    def close(self) -> None:
        pass


def _norm(name: str) -> str:
    """A member name as a path inside the archive (the same rule as a layer's entries)."""
    try:
        return "/".join(clean_path(name))
    except UnsupportedImage:
        raise UnsupportedImage(f"archive names {name!r}, outside the archive") from None


class _DirSource(_Source):
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def _path(self, name: str) -> str:
        path = os.path.realpath(os.path.join(self.root, _norm(name)))
        if path != self.root and not path.startswith(self.root + os.sep):
            raise UnsupportedImage(f"archive names {name!r}, outside the archive")
        return path

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def open(self, name: str) -> IO[bytes]:
        return open(self._path(name), "rb")

    def size(self, name: str) -> int:
        return os.path.getsize(self._path(name))


class _TarSource(_Source):
    """Random access into a tarball; a compressed one is first spilled, uncompressed, to a
    temporary file beside the content store (reading members out of order through a
    decompressor would mean decompressing again for every seek back)."""

    def __init__(self, path: str, spill_dir: str) -> None:
        self._spill: IO[bytes] | None = None
        kind = compression(path)
        try:
            if kind:
                self._spill = tempfile.TemporaryFile(dir=spill_dir)
                with open(path, "rb") as f:
                    src = decompressor(kind, f)
                    while chunk := src.read(_CHUNK):
                        self._spill.write(chunk)
                self._spill.seek(0)
                self.tf = tarfile.open(fileobj=self._spill, mode="r:")
            else:
                self.tf = tarfile.open(path, mode="r:")
            self.members = {_norm(m.name): m for m in self.tf.getmembers()}
        except (tarfile.TarError, EOFError, OSError) as e:
            if self._spill is not None:
                self._spill.close()
            if isinstance(e, OSError) and e.errno:
                raise
            raise UnsupportedImage(f"{path} is not an image archive: {e}") from e

    def _member(self, name: str) -> tarfile.TarInfo:
        m = self.members.get(_norm(name))
        if m is None:
            raise UnsupportedImage(f"archive has no {name!r}")
        return m

    def exists(self, name: str) -> bool:
        try:
            return _norm(name) in self.members
        except UnsupportedImage:
            return False

    def open(self, name: str) -> IO[bytes]:
        try:
            f = self.tf.extractfile(self._member(name))  # follows the archive's own links
        except KeyError as e:
            raise UnsupportedImage(f"archive member {name!r} is a link to nothing") from e
        if f is None:
            raise UnsupportedImage(f"archive member {name!r} is not a file")
        return f

    def size(self, name: str) -> int:
        with self.open(name) as f:
            return f.seek(0, os.SEEK_END)

    def close(self) -> None:
        self.tf.close()
        if self._spill is not None:
            self._spill.close()


# --- storing blobs ------------------------------------------------------------------------------


class _Importer:
    def __init__(self, content: ContentStore, src: _Source, platform: Platform, lock_for: LockFor) -> None:
        self.content, self.src, self.platform, self.lock_for = content, src, platform, lock_for

    def store(self, name: str, digest: str, size: int | None = None) -> int:
        """Copy an archive member into the content store as ``digest``, verified. Returns its size."""
        if not is_digest(digest):
            raise UnsupportedImage(f"archive member {name!r}: unsupported digest {digest!r}")
        with self.lock_for(digest):
            if self.content.has(digest):
                return self.content.size(digest)
            ing = self.content.ingest(digest, size)  # waits while another process writes it
            try:
                if self.content.has(digest):  # it did: our fd may be the committed blob, leave it be
                    return self.content.size(digest)
                ing.reset()  # an archive is re-read whole: simpler than seeking to a partial's end
                with self.src.open(name) as f:
                    while chunk := f.read(_CHUNK):
                        ing.write(chunk)
                try:
                    ing.commit()
                except DigestMismatch as e:
                    raise DigestMismatch(f"archive member {name!r}: {e}") from e
            finally:
                ing.abort(keep=ing.offset > 0)
            return self.content.size(digest)

    def json_blob(self, name: str, digest: str | None = None, *, store: bool = True) -> tuple[str, Any]:
        """Read, verify and (``store``) store a small JSON member; returns (digest, parsed)."""
        data = self.src.read(name)
        got = sha256_digest(data)
        if digest is not None and got != digest:
            raise DigestMismatch(f"archive member {name!r}: expected {digest}, got {got}")
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise UnsupportedImage(f"archive member {name!r} is not JSON: {e}") from e
        if store:
            with self.lock_for(got):
                self.content.write(data, got)
        return got, doc


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def _layer_type(kind: str) -> str:
    return {"": OCI_LAYER, "gzip": OCI_LAYER_GZIP, "zstd": OCI_LAYER_ZSTD}.get(kind) or _unsupported(kind)


def _unsupported(kind: str) -> str:
    raise UnsupportedImage(f"layers compressed with {kind} are not supported")


def _names(annotations: dict[str, str], base_name: str | None) -> list[str]:
    if name := annotations.get(CONTAINERD_NAME):
        return [name]
    ref = annotations.get(OCI_REF_NAME)
    if not ref:
        return []
    if "/" in ref or ":" in ref or "@" in ref:
        return [ref]
    if base_name:
        return [f"{base_name}:{ref}"]
    log.warning("image tagged %r in the archive has no repository name (give a base name); imported untagged",
                ref)
    return []


def check_manifest(manifest: dict[str, Any], where: str) -> None:
    """Refuse what is not a runnable image: an artifact's config, an encrypted or unknown layer."""
    config = manifest.get("config") or {}
    if config.get("mediaType") not in (OCI_CONFIG, DOCKER_CONFIG):
        raise UnsupportedImage(f"{where} is not a container image (config media type "
                               f"{config.get('mediaType')!r})")
    for layer in manifest.get("layers") or ():
        if layer.get("mediaType") not in LAYER_TYPES:
            raise UnsupportedImage(f"{where} has a layer of unsupported media type {layer.get('mediaType')!r}")


def _oci_layout(imp: _Importer, base_name: str | None) -> list[ArchiveImage]:
    _, index = imp.json_blob("index.json", store=False)  # the layout's table of contents, not a blob
    by_manifest: dict[str, ArchiveImage] = {}
    skipped: list[str] = []
    for top in index.get("manifests") or ():
        names = _names(top.get("annotations") or {}, base_name)
        try:
            if top.get("platform"):  # a layout may list each platform's manifest itself
                select_manifest({"manifests": [top]}, imp.platform)
            image = _oci_image(imp, top)
        except UnsupportedImage as e:
            skipped.append(str(e))
            continue
        refs = []
        for n in names:
            try:
                refs.append(parse_reference(n))
            except ImageError:
                log.warning("archive names an image %r, not a valid reference: ignored", n)
        prev = by_manifest.setdefault(image.manifest_digest, image)
        for ref in refs:
            if ref.digest is None and ref.tagged not in prev.names:
                prev.names.append(ref.tagged)  # type: ignore[arg-type]
            digested = f"{ref.name}@{ref.digest or top['digest']}"
            if digested not in prev.digests:
                prev.digests.append(digested)
        for b in image.blobs:
            if b not in prev.blobs:
                prev.blobs.append(b)
    if not by_manifest:
        raise UnsupportedImage("archive holds no image for this node: " + ("; ".join(skipped) or "it is empty"))
    return list(by_manifest.values())


def _oci_image(imp: _Importer, desc: dict[str, Any]) -> ArchiveImage:
    blobs: list[str] = []
    for _ in range(4):  # an index of indexes, at most a few deep
        digest, mt = desc.get("digest", ""), desc.get("mediaType")
        if not is_digest(digest):
            raise UnsupportedImage(f"archive entry with unsupported digest {digest!r}")
        _, doc = imp.json_blob(_blob_name(digest), digest)
        blobs.append(digest)
        mt = mt or doc.get("mediaType")
        if mt in INDEX_TYPES:
            desc = select_manifest(doc, imp.platform).to_json()
            continue
        if mt not in MANIFEST_TYPES:
            raise UnsupportedImage(f"archive entry {digest} has unsupported media type {mt!r}")
        check_manifest(doc, f"manifest {digest}")
        config = Descriptor.from_json(doc["config"])
        imp.store(_blob_name(config.digest), config.digest, config.size)
        layers = [Descriptor.from_json(d) for d in doc.get("layers") or ()]
        for layer in layers:
            if not imp.src.exists(_blob_name(layer.digest)) and (layer.urls or "nondistributable" in
                                                                  layer.media_type or "foreign" in layer.media_type):
                raise UnsupportedImage(f"archive lacks foreign layer {layer.digest}")
            imp.store(_blob_name(layer.digest), layer.digest, layer.size)
        blobs += [config.digest] + [x.digest for x in layers]
        return ArchiveImage([], [], digest, doc, config.digest, layers, blobs)
    raise UnsupportedImage("archive nests indexes too deeply")


def _docker_archive(imp: _Importer) -> list[ArchiveImage]:
    _, manifest = imp.json_blob("manifest.json", store=False)
    if not isinstance(manifest, list):
        raise UnsupportedImage("manifest.json is not a docker save manifest")
    out: list[ArchiveImage] = []
    for entry in manifest:
        config_name = entry.get("Config", "")
        m = _HEX_JSON.search(config_name) or _BLOB_NAME.match(_norm(config_name))
        config_digest, config = imp.json_blob(config_name, f"sha256:{m.group(1)}" if m else None)
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        layer_names = entry.get("Layers") or []
        if len(diff_ids) != len(layer_names):
            raise UnsupportedImage(f"{config_name}: {len(layer_names)} layers but {len(diff_ids)} diff_ids")
        layers = []
        for name, diff_id in zip(layer_names, diff_ids):
            layers.append(_docker_layer(imp, name, diff_id))
        config_desc = Descriptor(OCI_CONFIG, config_digest, imp.content.size(config_digest))
        oci_manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc.to_json(),
                        "layers": [d.to_json() for d in layers]}
        data = orjson.dumps(oci_manifest)
        with imp.lock_for(sha256_digest(data)):
            manifest_digest = imp.content.write(data)
        names = []
        for tag in entry.get("RepoTags") or ():
            try:
                ref = parse_reference(tag)
            except ImageError:
                log.warning("docker archive tags an image %r, not a valid reference: ignored", tag)
                continue
            if ref.tagged and ref.tagged not in names:
                names.append(ref.tagged)
        # No repo digest: the manifest is ours, its digest names nothing in any registry.
        out.append(ArchiveImage(names, [], manifest_digest, oci_manifest, config_digest, layers,
                                [manifest_digest, config_digest] + [d.digest for d in layers]))
    if not out:
        raise UnsupportedImage("manifest.json lists no image")
    return out


def _docker_layer(imp: _Importer, name: str, diff_id: str) -> Descriptor:
    with imp.src.open(name) as f:
        kind = _magic_kind(f.read(6))
    if not kind:
        # As `docker save` writes them: the uncompressed tar, whose digest is the diff_id.
        size = imp.store(name, diff_id)
        return Descriptor(OCI_LAYER, diff_id, size)
    media_type = _layer_type(kind)
    h = hashlib.sha256()  # a compressed layer (other tools): its digest is found by reading it
    with imp.src.open(name) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    size = imp.store(name, digest)
    return Descriptor(media_type, digest, size)  # its diff_id is checked when it is unpacked


def _magic_kind(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return ""


@contextlib.contextmanager
def _source(path: str, spill_dir: str) -> Iterator[_Source]:
    src: _Source = _DirSource(path) if os.path.isdir(path) else _TarSource(path, spill_dir)
    try:
        yield src
    finally:
        src.close()


def load(content: ContentStore, path: str, platform: Platform | None = None, *, base_name: str | None = None,
         lock_for: LockFor | None = None) -> list[ArchiveImage]:
    """Import every image of the archive (tarball or directory) at ``path`` into ``content``.

    ``lock_for(digest)`` guards writing one blob (the image service passes per-digest
    locks so that concurrent imports and pulls in one process never open the same
    ingest twice). Blocking: run it in a worker thread.
    """
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    imp_lock: LockFor = lock_for or (lambda _d: contextlib.nullcontext())
    with _source(path, content.root) as src:
        imp = _Importer(content, src, platform or host_platform(), imp_lock)
        if src.exists("index.json"):
            return _oci_layout(imp, base_name)
        if src.exists("manifest.json"):
            return _docker_archive(imp)
    raise UnsupportedImage(f"{path} is neither an OCI image layout nor a docker save archive")
