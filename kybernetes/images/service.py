"""The node's image service, in the shape of CRI's ImageService: pull, status, list,
remove, plus archive import, image GC and the unpacked layers the OCI runtime mounts.

A pull is: resolve and fetch through the RegistryClient (blobs into the ContentStore,
verified), check the config and layer media types and the platform, unpack each layer
once into its snapshot (an overlayfs lowerdir, keyed by chain ID, so images sharing
layers share snapshots) with its diff_id checked, then record the image with its repo
tag and repo digest. Concurrent pulls of one reference share one pull; concurrent
unpacks of one layer share one unpack; the RegistryClient shares blob downloads. Slow
work (unpacking, fsyncs, deletions) runs in worker threads, never on the event loop.

Removal follows containerd's CRI (what ``crictl rmi`` does): removing an image by any of
its names removes the image, with all its tags and digests. ``untag`` takes one tag off
(``docker rmi`` of one of several tags). A blob or snapshot is deleted only when no
other image references it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from kybernetes.images import archive
from kybernetes.images.errors import (
    DigestMismatch,
    ImageError,
    ImageInUse,
    ImageNotFound,
    UnsupportedImage,
)
from kybernetes.images.model import Descriptor, Image, Platform, host_platform
from kybernetes.images.reference import Reference
from kybernetes.images.reference import parse as parse_reference
from kybernetes.images.store import ContentVanished, ImageRecord, ImageStore, chain_ids
from kybernetes.images.unpack import CorruptBlob, apply_layer

if TYPE_CHECKING:
    from kybernetes.images.registry import Credential, RegistryClient

log = logging.getLogger(__name__)

# Kubelet's ImageMinimumGCAge default: a just-pulled image is not collected before the
# container it was pulled for has been created.
GC_MIN_AGE = 120.0
_ATTEMPTS = 2  # a concurrent removal costs one more try, not a failure


class _Pull:
    """One in-flight pull, shared by every caller asking for the same reference."""

    def __init__(self) -> None:
        self.task: asyncio.Task[Image] | None = None
        self.listeners: list[Callable[[int], None]] = []

    def progress(self, n: int) -> None:
        for cb in list(self.listeners):
            try:
                cb(n)
            except Exception:  # a caller's progress display never breaks the pull
                log.exception("image pull progress callback failed")


def _statvfs_usage(path: str) -> tuple[int, int]:
    """(bytes used, capacity) of the filesystem holding ``path``, as the kubelet counts them."""
    st = os.statvfs(path)
    capacity = st.f_blocks * st.f_frsize
    return capacity - st.f_bavail * st.f_frsize, capacity


class ImageService:
    def __init__(self, root: str, *, registry: RegistryClient | None = None, registries_config: Any = None,
                 platform: Platform | None = None, fs_usage: Callable[[], tuple[int, int]] | None = None,
                 durable: bool = True) -> None:
        """``root`` is the store's directory (e.g. ``<node data dir>/images``). ``fs_usage``
        returns (used, capacity) bytes of the filesystem holding it (default: statvfs);
        ``durable=False`` skips the syncfs after each unpack (tests)."""
        self.root = os.path.abspath(root)
        self.platform = platform or host_platform()
        self.store = ImageStore(self.root, durable=durable)
        self.content = self.store.content
        self._registry = registry
        self._own_registry = registry is None
        self._registries_config = registries_config
        self._fs_usage = fs_usage or (lambda: _statvfs_usage(self.root))
        self._pulls: dict[str, _Pull] = {}
        self._unpacks: dict[str, asyncio.Future[None]] = {}
        # Digests and chain IDs that work in progress relies on: a removal meanwhile spares them.
        self._busy: collections.Counter[str] = collections.Counter()
        # Archive imports write blobs from threads: one writer per blob in this process (the
        # ingest's flock would make a second one wait, then find its file renamed away).
        self._stripes = [threading.Lock() for _ in range(64)]

    # --- pulling -----------------------------------------------------------------------------

    def _client(self) -> RegistryClient:
        if self._registry is None:
            # Imported here: the registry client (aiohttp, TLS) is only needed once something is pulled.
            from kybernetes.images.registry import RegistryClient

            self._registry = RegistryClient(self.content, self._registries_config, platform=self.platform)
        return self._registry

    async def pull(self, image: str, credentials: list[Credential] | None = None,
                   progress: Callable[[int], None] | None = None) -> Image:
        """Pull ``image`` (fetch, verify, unpack, record) and return it. Callers asking for the
        same reference meanwhile share this pull; each caller's ``progress`` gets the bytes."""
        ref = parse_reference(image)
        key = str(ref)
        pull = self._pulls.get(key)
        if pull is None:
            pull = self._pulls[key] = _Pull()
            task = pull.task = asyncio.create_task(self._pull(ref, credentials, pull))

            def done(t: asyncio.Task[Image], key: str = key, pull: _Pull = pull) -> None:
                if self._pulls.get(key) is pull:
                    del self._pulls[key]
                if not t.cancelled():
                    t.exception()  # retrieved here: every waiter may have gone
            task.add_done_callback(done)
        assert pull.task is not None
        if progress is not None:
            pull.listeners.append(progress)
        try:
            # Shielded: one caller giving up does not cancel the pull the others wait for.
            return copy.deepcopy(await asyncio.shield(pull.task))
        finally:
            if progress is not None:
                pull.listeners.remove(progress)

    async def _pull(self, ref: Reference, credentials: list[Credential] | None, pull: _Pull) -> Image:
        client = self._client()
        refetched: set[str] = set()
        vanished = 0
        while True:
            result = await client.pull(ref, credentials, pull.progress)
            resolved = getattr(result, "resolved_digest", "") or result.manifest_digest
            blobs = list(dict.fromkeys([resolved, result.manifest_digest, result.config_digest,
                                        *(d.digest for d in result.layers)]))
            try:
                return await self._finish(
                    str(ref), manifest=result.manifest, manifest_digest=result.manifest_digest,
                    config_digest=result.config_digest, layers=list(result.layers), blobs=blobs,
                    # name:tag@digest records only the digest, as containerd normalises it.
                    tags=[ref.tagged] if ref.tagged and not ref.digest else [],
                    digests=[f"{ref.name}@{resolved}"])
            except CorruptBlob as e:
                # Each damaged blob is fetched again once; the same one damaged twice is not the disk.
                if e.digest in refetched:
                    raise
                refetched.add(e.digest)
                log.warning("%s: %s; fetching it again", ref, e)
                await asyncio.to_thread(self.content.delete, e.digest)
            except ContentVanished as e:
                vanished += 1
                if vanished >= _ATTEMPTS:
                    raise
                log.info("%s: %s; pulling again", ref, e)

    async def _finish(self, what: str, *, manifest: dict[str, Any], manifest_digest: str, config_digest: str,
                      layers: list[Descriptor], blobs: list[str], tags: list[str], digests: list[str]) -> Image:
        """Verify, unpack and record an image whose blobs are in the content store."""
        archive.check_manifest(manifest, what)
        held = [*blobs]
        self._busy.update(held)  # before any await: a removal in this process must spare them
        try:
            config = await asyncio.to_thread(self._read_config, config_digest)
            diff_ids = self._check_config(what, config, layers)
            chains = chain_ids(diff_ids)
            self._busy.update(chains)
            held += chains
            for i, (layer, diff_id, chain) in enumerate(zip(layers, diff_ids, chains)):
                await self._snapshot(layer, diff_id, chain, chains[:i])
            size = self.content.size(config_digest) + sum(self.content.size(d.digest) for d in layers)
            record = ImageRecord(Image(id=config_digest, size=size, config=config.get("config") or {},
                                       diff_ids=diff_ids, manifest_digest=manifest_digest), layers, blobs)
            stored = await asyncio.to_thread(self.store.add, record, tags=tags, digests=digests)
            return stored.image
        except FileNotFoundError as e:  # a blob removed under us: fetch it again
            raise ContentVanished(f"{what}: {e}") from e
        finally:
            self._busy.subtract(held)
            for k in held:
                if self._busy[k] <= 0:
                    del self._busy[k]

    def _read_config(self, digest: str) -> dict[str, Any]:
        try:
            data = self.content.read(digest)
        except DigestMismatch as e:
            raise CorruptBlob(digest, str(e)) from e
        try:
            config = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise UnsupportedImage(f"image config {digest} is not JSON: {e}") from e
        if not isinstance(config, dict):
            raise UnsupportedImage(f"image config {digest} is not an object")
        return config

    def _check_config(self, what: str, config: dict[str, Any], layers: list[Descriptor]) -> list[str]:
        os_, arch = config.get("os"), config.get("architecture")
        if (os_ and os_ != self.platform.os) or (arch and arch != self.platform.architecture):
            raise UnsupportedImage(f"{what}: image is for {os_}/{arch}, this node is {self.platform}")
        rootfs = config.get("rootfs") or {}
        if rootfs.get("type", "layers") != "layers":
            raise UnsupportedImage(f"{what}: unsupported rootfs type {rootfs.get('type')!r}")
        diff_ids = list(rootfs.get("diff_ids") or [])
        if len(diff_ids) != len(layers):
            raise UnsupportedImage(f"{what}: the manifest has {len(layers)} layers, the config "
                                   f"{len(diff_ids)} diff_ids")
        return diff_ids

    async def _snapshot(self, layer: Descriptor, diff_id: str, chain: str, below: list[str]) -> None:
        """Unpack one layer into its snapshot unless it is there; one unpack per chain ID at a time."""
        if self.store.has_snapshot(chain):
            return
        fut = self._unpacks.get(chain)
        if fut is None:
            lowers = [self.store.snapshot_dir(c) for c in below]
            fut = asyncio.ensure_future(asyncio.to_thread(self._unpack, layer, diff_id, chain,
                                                          below[-1] if below else None, lowers))
            self._unpacks[chain] = fut

            def done(f: asyncio.Future[None], chain: str = chain, mine: asyncio.Future[None] = fut) -> None:
                if self._unpacks.get(chain) is mine:
                    del self._unpacks[chain]
                if not f.cancelled():
                    f.exception()
            fut.add_done_callback(done)
        await asyncio.shield(fut)

    def _unpack(self, layer: Descriptor, diff_id: str, chain: str, parent: str | None, lowers: list[str]) -> None:
        path = self.content.path(layer.digest)
        if not os.path.exists(path):
            raise CorruptBlob(layer.digest, f"layer blob {layer.digest} is missing")
        started = time.monotonic()
        self.store.create_snapshot(chain, diff_id, parent, lambda d: apply_layer(
            path, d, "overlay", blob_digest=layer.digest, expected_diff_id=diff_id, lowers=lowers).size)
        log.debug("unpacked layer %s in %.2fs", layer.digest, time.monotonic() - started)

    # --- reading -----------------------------------------------------------------------------

    async def status(self, image: str) -> Image | None:
        """The image named by a tag reference, a repo digest, an image id or a unique id prefix
        of at least 12 hex characters; None when absent."""
        record = self.store.resolve(image)
        return record.image if record else None

    async def list(self) -> list[Image]:
        return [r.image for r in self.store.records()]

    def layer_dirs(self, image: Image) -> list[str]:
        """The image's unpacked layers (overlayfs lowerdirs), lowest first."""
        out = []
        for chain in chain_ids(image.diff_ids):
            if not self.store.has_snapshot(chain):
                raise ImageError(f"image {image.id}: layer snapshot {chain} is missing; pull the image again")
            out.append(self.store.snapshot_dir(chain))
        return out

    async def flatten(self, image: Image, target: str) -> None:
        """Copy the image's filesystem into the (empty) directory ``target``, layer by layer:
        the fallback for a runtime that cannot mount overlayfs."""
        record = self.store.get(image.id)
        if record is None:
            raise ImageNotFound(f"image {image.id} not found")
        for layer, diff_id in zip(record.layers, record.image.diff_ids):
            await asyncio.to_thread(apply_layer, self.content.path(layer.digest), target, "flatten",
                                    blob_digest=layer.digest, expected_diff_id=diff_id)

    def mark_used(self, image: Image) -> None:
        self.store.mark_used(image.id)

    def filesystem_usage(self) -> tuple[int, int]:
        """(bytes the store takes, capacity of the filesystem holding it)."""
        return self.store.usage(), self._fs_usage()[1]

    # --- removing ----------------------------------------------------------------------------

    def _resolve(self, image: str) -> ImageRecord:
        record = self.store.resolve(image)
        if record is None:
            raise ImageNotFound(f"image {image!r} not found")
        return record

    async def remove(self, image: str, *, in_use: Iterable[str] = frozenset()) -> None:
        """Remove the image ``image`` names (every tag and digest of it, as containerd's CRI
        does); ImageInUse if its id is in ``in_use``, ImageNotFound if there is none."""
        record = self._resolve(image)
        if record.id in set(in_use):
            raise ImageInUse(f"image {image} ({record.id}) is in use by a container")
        await asyncio.to_thread(self.store.remove, record.id, protect=set(self._busy))

    async def untag(self, name: str) -> Image:
        """Take one repo tag or repo digest off its image; the image stays (untagged when it
        was the last name, listed and removable by :meth:`prune`)."""
        record = await asyncio.to_thread(self.store.untag, name)
        if record is None:
            raise ImageNotFound(f"image {name!r} not found")
        return record.image

    async def pin(self, image: str, pinned: bool = True) -> Image:
        """Pin (or unpin) an image: prune and GC never remove a pinned image (CRI's pinned)."""
        record = self._resolve(image)
        await asyncio.to_thread(self.store.set_pinned, record.id, pinned)
        return self._resolve(record.id).image

    async def prune(self, in_use: Iterable[str]) -> list[Image]:
        """Remove every image not in ``in_use`` and not pinned (``crictl rmi --prune``), then
        whatever content no image references (left by failed pulls)."""
        keep = set(in_use)
        removed = []
        for record in self.store.records():
            if record.id not in keep and not record.image.pinned:
                await asyncio.to_thread(self.store.remove, record.id, protect=set(self._busy))
                removed.append(record.image)
        await asyncio.to_thread(self.store.sweep, protect=set(self._busy))
        return removed

    async def garbage_collect(self, in_use: Iterable[str], high_percent: int = 85, low_percent: int = 80, *,
                              min_age: float = GC_MIN_AGE) -> int:
        """The kubelet's image GC: when the store's filesystem is at least ``high_percent``
        used, remove unused, unpinned images, least recently used first, until the freed
        bytes bring it to ``low_percent``. Images used within ``min_age`` seconds are spared.
        Returns the bytes freed."""
        used, capacity = self._fs_usage()
        if capacity <= 0 or used * 100 < high_percent * capacity:
            return 0
        to_free = used - capacity * low_percent // 100
        keep = set(in_use)
        freed = await asyncio.to_thread(self.store.sweep, protect=set(self._busy))
        now = time.time()
        candidates = sorted((r for r in self.store.records()
                             if r.id not in keep and not r.image.pinned and now - r.image.last_used >= min_age),
                            key=lambda r: r.image.last_used)
        for record in candidates:
            if freed >= to_free:
                break
            log.info("image GC: removing %s (%s), last used %.0fs ago", record.id,
                     ", ".join(record.image.repo_tags) or "untagged", now - record.image.last_used)
            freed += await asyncio.to_thread(self.store.remove, record.id, protect=set(self._busy))
        if freed < to_free:
            log.warning("image GC: freed %d bytes of the %d wanted; the rest is in use", freed, to_free)
        return freed

    # --- importing ---------------------------------------------------------------------------

    def _lock_for(self, digest: str) -> threading.Lock:
        return self._stripes[hash(digest) % len(self._stripes)]

    async def import_archive(self, path: str, *, base_name: str | None = None) -> list[Image]:
        """Import an OCI image layout or ``docker save`` archive (tarball or directory).

        Images for another platform are skipped with a warning; UnsupportedImage when
        nothing could be imported."""
        for attempt in range(_ATTEMPTS):
            found = await asyncio.to_thread(archive.load, self.content, path, self.platform,
                                            base_name=base_name, lock_for=self._lock_for)
            images: list[Image] = []
            errors: list[ImageError] = []
            try:
                for item in found:
                    try:
                        images.append(await self._finish(
                            f"{path}: {', '.join(item.names) or item.manifest_digest}", manifest=item.manifest,
                            manifest_digest=item.manifest_digest, config_digest=item.config_digest,
                            layers=item.layers, blobs=item.blobs, tags=item.names, digests=item.digests))
                    except UnsupportedImage as e:
                        log.warning("%s", e)
                        errors.append(e)
            except (CorruptBlob, ContentVanished) as e:
                if attempt + 1 == _ATTEMPTS:
                    raise
                if isinstance(e, CorruptBlob):
                    await asyncio.to_thread(self.content.delete, e.digest)
                continue
            if not images and errors:
                raise errors[0]
            return images
        raise AssertionError("unreachable")

    # --- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        tasks = [p.task for p in self._pulls.values() if p.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, *self._unpacks.values(), return_exceptions=True)
        if self._registry is not None and self._own_registry:
            with contextlib.suppress(Exception):
                await self._registry.close()
        await asyncio.to_thread(self.store.close)
