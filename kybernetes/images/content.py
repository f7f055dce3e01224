"""A content-addressed blob store: ``<root>/blobs/sha256/<hex>``.

A blob is visible under its digest only once it is whole and verified: downloads
land in ``<root>/ingest/<hex>`` (kept across restarts, so an interrupted download
resumes where it stopped), are hashed as they are written, fsynced, and renamed
into place by :meth:`Ingest.commit`. A partial file never carries a blob's name, so
a killed pull leaves nothing that a later reader could take for content.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator

from kybernetes.images.errors import DigestMismatch, ImageError
from kybernetes.images.reference import is_digest

_CHUNK = 1 << 20


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ingest:
    """One blob being written. ``offset`` is how much is already there (to resume from).

    Holds an exclusive lock on its partial file while open, so two writers of the same
    blob (two processes pulling it) never interleave; see :meth:`ContentStore.ingest`.
    """

    def __init__(self, store: ContentStore, digest: str, size: int | None) -> None:
        self.store, self.digest, self.expected_size = store, digest, size
        self.path = os.path.join(store.root, "ingest", digest.split(":", 1)[1])
        while True:
            self._f = open(self.path, "a+b")  # noqa: SIM115 - closed by commit/abort
            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX)
            # The writer we waited for may have committed (renamed) the very file we opened:
            # then our descriptor is the finished blob, never to be written. Start again.
            try:
                same = os.stat(self.path).st_ino == os.fstat(self._f.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            self._f.close()
        # True when the blob became whole while we waited: nothing to write, commit is a no-op.
        self.present = store.has(digest)
        self._hash = hashlib.sha256()
        self._f.seek(0)
        while chunk := self._f.read(_CHUNK):
            self._hash.update(chunk)
        self.offset = self._f.tell()
        if size is not None and self.offset > size:
            self.reset()

    def reset(self) -> None:
        """Start over (the server would not resume, or the partial content is wrong)."""
        self._f.seek(0)
        self._f.truncate()
        self._hash = hashlib.sha256()
        self.offset = 0

    def write(self, chunk: bytes) -> None:
        self._f.write(chunk)
        self._hash.update(chunk)
        self.offset += len(chunk)
        if self.expected_size is not None and self.offset > self.expected_size:
            self.abort()
            raise DigestMismatch(f"blob {self.digest} is larger than its descriptor's {self.expected_size} bytes")

    def commit(self) -> str:
        """Verify size and digest, then make the blob visible; returns its path."""
        if self.present and self.offset == 0:
            self._discard()
            self._close()
            return self.store.path(self.digest)
        try:
            got = "sha256:" + self._hash.hexdigest()
            if self.expected_size is not None and self.offset != self.expected_size:
                raise DigestMismatch(f"blob {self.digest}: got {self.offset} bytes, expected {self.expected_size}")
            if got != self.digest:
                raise DigestMismatch(f"blob digest mismatch: expected {self.digest}, got {got}")
            self._f.flush()
            os.fsync(self._f.fileno())
            final = self.store.path(self.digest)
            os.replace(self.path, final)
            _fsync_dir(os.path.dirname(final))
            return final
        except DigestMismatch:
            self._discard()
            raise
        finally:
            self._close()

    def abort(self, keep: bool = True) -> None:
        """Stop writing; ``keep`` leaves the partial file for a later resume."""
        if not keep:
            self._discard()
        self._close()

    def _discard(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> Ingest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class ContentStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        os.makedirs(os.path.join(self.root, "blobs", "sha256"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "ingest"), exist_ok=True)

    def path(self, digest: str) -> str:
        if not is_digest(digest):
            raise ImageError(f"unsupported digest {digest!r} (only sha256 is supported)")
        return os.path.join(self.root, "blobs", "sha256", digest.split(":", 1)[1])

    def has(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def size(self, digest: str) -> int:
        return os.path.getsize(self.path(digest))

    def read(self, digest: str) -> bytes:
        """A small blob's bytes (manifests, configs), verified against its digest."""
        with open(self.path(digest), "rb") as f:
            data = f.read()
        if sha256_digest(data) != digest:
            raise DigestMismatch(f"stored blob {digest} is corrupt")
        return data

    def write(self, data: bytes, expected: str | None = None) -> str:
        """Store bytes in one go; returns their digest. Refuses them if ``expected`` differs."""
        digest = sha256_digest(data)
        if expected is not None and expected != digest:
            raise DigestMismatch(f"digest mismatch: expected {expected}, got {digest}")
        if not self.has(digest):
            with self.ingest(digest, len(data)) as ing:
                if not ing.present:  # another writer may have finished it while we waited
                    ing.reset()
                    ing.write(data)
                    ing.commit()
        return digest

    def ingest(self, digest: str, size: int | None = None) -> Ingest:
        """Open (or resume) the download of one blob. Blocks while another process writes it."""
        self.path(digest)  # validates the digest
        return Ingest(self, digest, size)

    def delete(self, digest: str) -> None:
        for p in (self.path(digest), os.path.join(self.root, "ingest", digest.split(":", 1)[1])):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def digests(self) -> Iterator[str]:
        for name in os.listdir(os.path.join(self.root, "blobs", "sha256")):
            if len(name) == 64:
                yield "sha256:" + name

    def usage(self) -> int:
        """Bytes taken by whole blobs."""
        return sum(self.size(d) for d in self.digests())
