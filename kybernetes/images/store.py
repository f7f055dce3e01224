"""The node's image store on disk: blobs, unpacked layer snapshots and image records.

Layout under the store's root (e.g. ``<node data dir>/images``)::

    lock                        flock: one writer of the records at a time, across processes
    images.json                 every image record (Image fields + its layers and blobs);
                                tags and repo digests map to image ids through it
    content/                    the ContentStore: blobs/sha256/<hex>, ingest/<hex>
    snapshots/<chain hex>/fs    one unpacked layer (an overlayfs lowerdir), keyed by the
                                layer's OCI chain ID, so images sharing layers share them
    snapshots/<chain hex>/meta.json   chain ID, diff_id, parent, size
    snapshots/.tmp-*            unpacks in progress (flocked by their writer) or leftovers

Crash safety: ``images.json`` is replaced whole (temp file, fsync, rename, fsync of the
directory), so a reader sees the old records or the new ones, never a torn file. A
snapshot is unpacked into a ``.tmp-`` directory and renamed into place when whole;
deletion renames it back to a ``.tmp-`` name first. A ``.tmp-`` directory nobody holds
a lock on is a leftover of a killed process and is removed on the next open.

Several processes may share a root (the node and ``kyb image import --data-dir``):
records are changed under the flock and re-read whenever the file changed underneath.
Files are deleted under the same lock, and :meth:`ImageStore.add` checks (under it)
that what a new record references still exists, so a concurrent removal can make a
pull retry but never leaves an image whose layers are gone.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from kybernetes.images.content import ContentStore
from kybernetes.images.errors import ImageError
from kybernetes.images.model import Descriptor, Image
from kybernetes.images.reference import is_digest
from kybernetes.images.reference import parse as parse_reference

log = logging.getLogger(__name__)

RECORDS = "images.json"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"
# Unreferenced content younger than this may belong to a pull still running in another
# process (it references its blobs only when it records the image), so sweep spares it.
SWEEP_MIN_AGE = 3600.0
INGEST_MAX_AGE = 86400.0


class ContentVanished(ImageError):
    """A blob or snapshot a new record needs was deleted meanwhile (a concurrent removal): retry."""


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """OCI chain IDs: ChainID(L0) = DiffID(L0); ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def _hex(digest: str) -> str:
    if not is_digest(digest):
        raise ImageError(f"unsupported digest {digest!r} (only sha256 is supported)")
    return digest.split(":", 1)[1]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc: Any = None


def _syncfs(path: str) -> None:
    """Flush one filesystem (an unpacked snapshot's many files) before it is renamed into place."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syncfs  # noqa: B018 - probe: raises AttributeError where libc lacks it
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _libc.syncfs(fd)
    finally:
        os.close(fd)


@dataclass
class ImageRecord:
    """One image as stored: the CRI-visible Image plus what the store needs to manage it."""

    image: Image
    layers: list[Descriptor] = field(default_factory=list)  # layer blobs, lowest first
    # Every blob the image owns: config, layers, the manifest and any index it was reached
    # through (its repo digests name those). Deleted with the image unless shared.
    blobs: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.image.id

    @property
    def chain_ids(self) -> list[str]:
        return chain_ids(self.image.diff_ids)

    def to_json(self) -> dict[str, Any]:
        return {"image": dataclasses.asdict(self.image), "layers": [d.to_json() for d in self.layers],
                "blobs": self.blobs}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        names = {f.name for f in dataclasses.fields(Image)}
        image = Image(**{k: v for k, v in d["image"].items() if k in names})
        return cls(image, [Descriptor.from_json(x) for x in d.get("layers", ())], list(d.get("blobs", ())))


class ImageStore:
    """Records, blobs and snapshots under one root. Thread-safe; safe across processes.

    Methods that write (``add``, ``untag``, ``remove``, ``sweep``, snapshot creation) do
    blocking I/O (fsync, flock waits): call them from a worker thread. Reads are cheap
    (a stat, and a reload only when another process changed the records).
    """

    def __init__(self, root: str, *, durable: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.durable = durable
        os.makedirs(os.path.join(self.root, "snapshots"), exist_ok=True)
        self.content = ContentStore(os.path.join(self.root, "content"))
        self._records_path = os.path.join(self.root, RECORDS)
        self._lock_file = open(os.path.join(self.root, "lock"), "a+b")  # noqa: SIM115 - closed by close()
        # _mutex guards the in-memory records and is only ever held briefly, so readers on
        # the event loop never wait for a writer's flock or its file deletions; _writer
        # (with the flock) makes writers take turns.
        self._mutex = threading.RLock()
        self._writer = threading.RLock()
        self._depth = 0
        self._stamp: tuple[int, ...] | None = None
        self._images: dict[str, ImageRecord] = {}
        self._tags: dict[str, str] = {}
        self._digests: dict[str, str] = {}
        # last_used updates not yet written: mark_used must stay cheap (a container start).
        self._used: dict[str, float] = {}
        self._snapshot_sizes: dict[str, int] = {}
        with self._locked(), self._mutex:
            self._clean_leftovers()
            self._refresh()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.flush()
        self._lock_file.close()

    # --- locking and the records file ------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._writer:
            if self._depth == 0:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)

    def _file_stamp(self) -> tuple[int, ...] | None:
        try:
            st = os.stat(self._records_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _refresh(self) -> None:
        """Re-read the records if the file changed since we last read or wrote it."""
        with self._mutex:
            stamp = self._file_stamp()
            if stamp == self._stamp and (stamp is not None or not self._images):
                return
            images: dict[str, ImageRecord] = {}
            if stamp is not None:
                try:
                    with open(self._records_path, "rb") as f:
                        doc = orjson.loads(f.read())
                    images = {r["image"]["id"]: ImageRecord.from_json(r) for r in doc.get("images", ())}
                except (ValueError, KeyError, TypeError) as e:
                    # Only outside damage gets here (writes are atomic). Keep it for a human.
                    aside = f"{self._records_path}.corrupt-{int(time.time())}"
                    log.error("image records %s are unreadable (%s); moved to %s", self._records_path, e, aside)
                    os.replace(self._records_path, aside)
                    stamp, images = None, {}
            for image_id, t in self._used.items():
                if image_id in images:
                    images[image_id].image.last_used = max(images[image_id].image.last_used, t)
            self._images, self._stamp = images, stamp
            self._reindex()

    def _reindex(self) -> None:
        self._tags = {t: i for i, r in self._images.items() for t in r.image.repo_tags}
        self._digests = {d: i for i, r in self._images.items() for d in r.image.repo_digests}

    def _save(self) -> None:
        """Write every record atomically. Caller holds the lock."""
        doc = {"version": FORMAT_VERSION, "images": [r.to_json() for r in self._images.values()]}
        tmp = f"{self._records_path}{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(doc))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._records_path)
        _fsync_dir(self.root)
        self._stamp = self._file_stamp()
        self._used.clear()
        self._reindex()

    def _clean_leftovers(self) -> None:
        for name in os.listdir(self.root):
            if name.startswith(RECORDS + TMP_PREFIX):  # we hold the lock: no writer is mid-save
                os.unlink(os.path.join(self.root, name))
        snaps = os.path.join(self.root, "snapshots")
        for name in os.listdir(snaps):
            if name.startswith(TMP_PREFIX):
                path = os.path.join(snaps, name)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # an unpack in progress in another process
                else:
                    log.info("removing %s, left over by an interrupted unpack or removal", path)
                    shutil.rmtree(path, ignore_errors=True)
                finally:
                    os.close(fd)

    # --- reading ---------------------------------------------------------------------------

    def records(self) -> list[ImageRecord]:
        with self._mutex:
            self._refresh()
            return [copy.deepcopy(r) for r in self._images.values()]

    def get(self, image_id: str) -> ImageRecord | None:
        with self._mutex:
            self._refresh()
            r = self._images.get(image_id)
            return copy.deepcopy(r) if r else None

    def resolve(self, name: str) -> ImageRecord | None:
        """Find an image by any of its names, as containerd's CRI does.

        A full image id (``sha256:<hex>``); a reference, normalised (``busybox`` is
        ``docker.io/library/busybox:latest``), by repo tag or repo digest; else a
        unique hex prefix of an id of at least 12 characters (crictl's short ids).
        """
        with self._mutex:
            self._refresh()
            image_id = self._resolve_id(name)
            return copy.deepcopy(self._images[image_id]) if image_id else None

    def _resolve_id(self, name: str) -> str | None:
        if is_digest(name):
            return name if name in self._images else None
        try:
            ref = parse_reference(name)
        except ImageError:
            ref = None
        if ref is not None:
            if ref.digest:
                found = self._digests.get(f"{ref.name}@{ref.digest}")
                if found is None:  # by the platform manifest's digest when pulled through an index
                    found = next((i for i, r in self._images.items() if r.image.manifest_digest == ref.digest
                                  and any(n.startswith(ref.name + "@") or n.startswith(ref.name + ":")
                                          for n in r.image.repo_digests + r.image.repo_tags)), None)
            else:
                found = self._tags.get(ref.tagged or "")
            if found:
                return found
        prefix = name.removeprefix("sha256:").lower()
        if len(prefix) >= 12 and all(c in "0123456789abcdef" for c in prefix):
            hits = [i for i in self._images if i.startswith("sha256:" + prefix)]
            if len(hits) == 1:
                return hits[0]
        return None

    # --- writing records -------------------------------------------------------------------

    def add(self, record: ImageRecord, *, tags: Iterable[str] = (), digests: Iterable[str] = (),
            now: float | None = None) -> ImageRecord:
        """Record an image (merging with an existing one of the same id) and point names at it.

        A tag or repo digest names one image: giving it to this one takes it from any
        other, which keeps its other names or stays, untagged, until pruned.
        """
        now = time.time() if now is None else now
        with self._locked(), self._mutex:
            self._refresh()
            missing = [b for b in record.blobs if not self.content.has(b)]
            missing += [c for c in record.chain_ids if not self.has_snapshot(c)]
            if missing:
                raise ContentVanished(f"image {record.id}: {', '.join(missing)} vanished before it was recorded")
            tags, digests = list(tags), list(digests)
            for r in self._images.values():
                if r.id != record.id:
                    r.image.repo_tags = [t for t in r.image.repo_tags if t not in tags]
                    r.image.repo_digests = [d for d in r.image.repo_digests if d not in digests]
            old = self._images.get(record.id)
            new = copy.deepcopy(record)
            img = new.image
            if old is not None:
                img.repo_tags = _union(old.image.repo_tags, img.repo_tags)
                img.repo_digests = _union(old.image.repo_digests, img.repo_digests)
                new.blobs = _union(old.blobs, new.blobs)
                img.created_at = old.image.created_at or img.created_at
                img.pinned = img.pinned or old.image.pinned
            img.repo_tags = _union(img.repo_tags, tags)
            img.repo_digests = _union(img.repo_digests, digests)
            img.created_at = img.created_at or now
            img.last_used = max(img.last_used, now)
            self._images[record.id] = new
            self._save()
            return copy.deepcopy(new)

    def untag(self, name: str) -> ImageRecord | None:
        """Take one repo tag (or repo digest) off its image; the image stays. None if no such name."""
        with self._locked(), self._mutex:
            self._refresh()
            try:
                ref = parse_reference(name)
            except ImageError:
                return None
            key = f"{ref.name}@{ref.digest}" if ref.digest else ref.tagged or ""
            image_id = self._digests.get(key) if ref.digest else self._tags.get(key)
            if image_id is None:
                return None
            img = self._images[image_id].image
            img.repo_tags = [t for t in img.repo_tags if t != key]
            img.repo_digests = [d for d in img.repo_digests if d != key]
            self._save()
            return copy.deepcopy(self._images[image_id])

    def set_pinned(self, image_id: str, pinned: bool) -> None:
        with self._locked(), self._mutex:
            self._refresh()
            if image_id in self._images:
                self._images[image_id].image.pinned = pinned
                self._save()

    def mark_used(self, image_id: str, when: float | None = None) -> None:
        """Note a use in memory only (written with the next change or :meth:`flush`)."""
        when = time.time() if when is None else when
        with self._mutex:
            self._used[image_id] = when
            r = self._images.get(image_id)
            if r is not None:
                r.image.last_used = max(r.image.last_used, when)

    def flush(self) -> None:
        with self._locked(), self._mutex:
            if self._used:
                self._refresh()
                self._save()

    def remove(self, image_id: str, *, protect: Iterable[str] = ()) -> int:
        """Forget an image and delete its blobs and snapshots no other image (nor ``protect``,
        digests and chain IDs in use by work in progress) references. Returns bytes freed."""
        with self._locked():
            with self._mutex:
                self._refresh()
                record = self._images.pop(image_id, None)
                if record is None:
                    return 0
                self._save()  # first: a crash now leaves orphan files (swept later), never a broken image
                keep = self._referenced(protect)
            freed = 0
            for digest in record.blobs:
                if digest not in keep:
                    freed += self._delete_blob(digest)
            for chain in record.chain_ids:
                if chain not in keep:
                    freed += self._delete_snapshot(chain)
            return freed

    def sweep(self, *, protect: Iterable[str] = (), min_age: float = SWEEP_MIN_AGE,
              now: float | None = None) -> int:
        """Delete blobs and snapshots no image references (left by failed or killed pulls)."""
        now = time.time() if now is None else now
        with self._locked():
            with self._mutex:
                self._refresh()
                keep = self._referenced(protect)
            freed = 0
            for digest in list(self.content.digests()):
                if digest not in keep and _older(self.content.path(digest), now - min_age):
                    freed += self._delete_blob(digest)
            snaps = os.path.join(self.root, "snapshots")
            for name in os.listdir(snaps):
                chain = "sha256:" + name
                if (not name.startswith(TMP_PREFIX) and chain not in keep
                        and _older(os.path.join(snaps, name, "meta.json"), now - min_age)):
                    freed += self._delete_snapshot(chain)
            ingest = os.path.join(self.content.root, "ingest")
            for name in os.listdir(ingest):
                path = os.path.join(ingest, name)
                if _older(path, now - max(min_age, INGEST_MAX_AGE)):
                    with contextlib.suppress(FileNotFoundError):
                        freed += os.path.getsize(path)
                        os.unlink(path)
            return freed

    def _referenced(self, protect: Iterable[str]) -> set[str]:
        keep = set(protect)
        for r in self._images.values():
            keep.update(r.blobs)
            keep.update(r.chain_ids)
        return keep

    def _delete_blob(self, digest: str) -> int:
        try:
            size = self.content.size(digest)
        except FileNotFoundError:
            return 0
        self.content.delete(digest)
        return size

    # --- snapshots -------------------------------------------------------------------------

    def snapshot_dir(self, chain_id: str) -> str:
        """The unpacked layer's directory (the overlayfs lowerdir) for a chain ID."""
        return os.path.join(self.root, "snapshots", _hex(chain_id), "fs")

    def has_snapshot(self, chain_id: str) -> bool:
        return os.path.exists(os.path.join(self.root, "snapshots", _hex(chain_id), "meta.json"))

    def create_snapshot(self, chain_id: str, diff_id: str, parent: str | None,
                        build: Callable[[str], int]) -> str:
        """Make the snapshot for ``chain_id`` unless it exists; ``build(dir)`` fills the (empty)
        directory and returns its size. Returns the snapshot's fs directory.

        ``build`` runs in a ``.tmp-`` directory flocked for the duration, so a concurrent
        open in another process does not take it for a leftover; whoever renames first wins.
        """
        final = os.path.join(self.root, "snapshots", _hex(chain_id))
        if self.has_snapshot(chain_id):
            return os.path.join(final, "fs")
        tmp = os.path.join(self.root, "snapshots", f"{TMP_PREFIX}{_hex(chain_id)[:16]}-{secrets.token_hex(4)}")
        with self._locked():  # the leftover sweep (under the lock) never sees it unlocked
            os.mkdir(tmp, 0o700)
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            fs = os.path.join(tmp, "fs")
            os.mkdir(fs, 0o755)
            size = build(fs)
            meta = {"chain_id": chain_id, "diff_id": diff_id, "parent": parent, "size": size,
                    "created": time.time()}
            with open(os.path.join(tmp, "meta.json"), "wb") as f:
                f.write(orjson.dumps(meta))
            if self.durable:
                _syncfs(tmp)
            os.chmod(tmp, 0o755)
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.has_snapshot(chain_id):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process made it meanwhile
            else:
                if self.durable:
                    _fsync_dir(os.path.dirname(final))
                self._snapshot_sizes[chain_id] = size
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(fd)
        return os.path.join(final, "fs")

    def _delete_snapshot(self, chain_id: str) -> int:
        final = os.path.join(self.root, "snapshots", _hex(chain_id))
        size = self._snapshot_size(chain_id)
        doomed = os.path.join(self.root, "snapshots", f"{TMP_PREFIX}del-{_hex(chain_id)[:16]}-{secrets.token_hex(4)}")
        try:
            os.rename(final, doomed)  # atomic: a half-deleted tree never carries a snapshot's name
        except FileNotFoundError:
            return 0
        self._snapshot_sizes.pop(chain_id, None)
        shutil.rmtree(doomed, ignore_errors=True)
        return size

    def _snapshot_size(self, chain_id: str) -> int:
        size = self._snapshot_sizes.get(chain_id)
        if size is None:
            try:
                with open(os.path.join(self.root, "snapshots", _hex(chain_id), "meta.json"), "rb") as f:
                    size = int(orjson.loads(f.read()).get("size", 0))
            except (OSError, ValueError):
                return 0
            self._snapshot_sizes[chain_id] = size
        return size

    def usage(self) -> int:
        """Bytes the store takes: blobs plus unpacked snapshots (their file content)."""
        total = self.content.usage()
        for name in os.listdir(os.path.join(self.root, "snapshots")):
            if not name.startswith(TMP_PREFIX):
                total += self._snapshot_size("sha256:" + name)
        return total


def _union(a: Iterable[str], b: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*a, *b]))


def _older(path: str, cutoff: float) -> bool:
    try:
        return os.stat(path).st_mtime < cutoff
    except FileNotFoundError:
        return False
