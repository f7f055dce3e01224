"""The revisioned key-value store interface that every storage backend implements.

Shaped like etcd v3 so that a real etcd backend fits behind it unchanged: one global
revision that every write (create, update, delete) increments by exactly one; each
key carries the revision that created it and the revision that last modified it.
The API server uses a key's mod_revision as the object's resourceVersion, reads
consistent snapshots at a past revision for paginated lists, and watches a prefix
from a revision to feed its watch cache.

This module owns the types (KV, Event, the StoreError family), the abstract Store and
Watch, and the Compactor that applies upstream's history-retention policy to any
backend.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class KV:
    """One version of one key."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int


@dataclass(frozen=True, slots=True)
class Event:
    """One write, as a watcher sees it.

    For DELETED, kv.value is the last value before the deletion and kv.mod_revision is
    the revision of the delete itself, so a watcher can both render the object and
    advance its resourceVersion.
    """

    type: str  # ADDED | MODIFIED | DELETED
    kv: KV
    prev: KV | None  # the version this write replaced; None for ADDED


class StoreError(Exception):
    """Base of every error a store raises on purpose."""


class KeyExists(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key already exists: {key}")
        self.key = key


class KeyNotFound(StoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key}")
        self.key = key


class RevisionConflict(StoreError):
    """A compare-and-swap lost: the key's mod_revision was not the expected one."""

    def __init__(self, key: str, expected: int, current: KV | None) -> None:
        have = current.mod_revision if current is not None else "none"
        super().__init__(f"revision conflict on {key}: expected {expected}, have {have}")
        self.key = key
        self.expected = expected
        self.current = current


class Compacted(StoreError):
    """The history needed to serve a read or a watch has been compacted away."""

    def __init__(self, compact_revision: int, revision: int) -> None:
        super().__init__(
            f"required revision {revision} has been compacted (compacted revision {compact_revision})"
        )
        self.compact_revision = compact_revision
        self.revision = revision


class FutureRevision(StoreError):
    """A read asked for a revision the store has not reached yet."""

    def __init__(self, revision: int, current: int) -> None:
        super().__init__(f"revision {revision} is newer than the current revision {current}")
        self.revision = revision
        self.current = current


class StoreClosed(StoreError):
    def __init__(self) -> None:
        super().__init__("store is closed")


def prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with prefix (None: no bound).

    Python orders str by code point, which is also the UTF-8 byte order that SQLite
    and etcd compare keys in, so one range serves both.
    """
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    return stripped[:-1] + chr(ord(stripped[-1]) + 1)


class Watch(abc.ABC):
    """Events on a key prefix after a revision: history first, then live writes.

    Iterate with `async for ev in watch`, or take whole batches with next_batch()
    (cheaper for fan-out). Events come in strictly increasing revision order with
    none missing. Iteration ends when the watch or its store is closed; it raises
    Compacted if the history it still needs has been compacted away.
    """

    def __init__(self) -> None:
        self._buffer: list[Event] = []
        self._pos = 0

    @abc.abstractmethod
    async def _fetch(self) -> list[Event]:
        """Wait for at least one event and return the events available now; [] once ended."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the watch; a pending next_batch() or iteration returns/ends promptly."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    async def next_batch(self) -> list[Event]:
        """The next events (at least one), in revision order; [] once the watch has ended."""
        if self._pos < len(self._buffer):
            rest = self._buffer[self._pos :]
            self._buffer, self._pos = [], 0
            return rest
        return await self._fetch()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._pos >= len(self._buffer):
            batch = await self._fetch()
            if not batch:
                raise StopAsyncIteration
            self._buffer, self._pos = batch, 0
        ev = self._buffer[self._pos]
        self._pos += 1
        return ev

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Store(abc.ABC):
    """A revisioned key-value store (see the module docstring for the model)."""

    @abc.abstractmethod
    async def get(self, key: str) -> KV | None:
        """The live version of key, or None."""

    @abc.abstractmethod
    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_key: str = ""
    ) -> tuple[list[KV], int, bool]:
        """Live keys starting with prefix and >= start_key, sorted by key.

        With revision != 0 the read is the consistent snapshot at that revision
        (Compacted if it is older than the compacted revision, FutureRevision if it is
        newer than the current one). limit > 0 caps the number of results. Returns
        (kvs, the revision the read was at, whether limit cut the result short).
        """

    @abc.abstractmethod
    async def count(self, prefix: str) -> int:
        """How many live keys start with prefix."""

    @abc.abstractmethod
    async def create(self, key: str, value: bytes) -> KV:
        """Create key; KeyExists if it is live."""

    @abc.abstractmethod
    async def update(self, key: str, value: bytes, expected_revision: int) -> KV:
        """Replace key's value if its mod_revision == expected_revision (0: unconditionally).

        KeyNotFound if the key is not live, RevisionConflict if the revision differs.
        """

    @abc.abstractmethod
    async def delete(self, key: str, expected_revision: int = 0) -> KV:
        """Delete key, optionally only at expected_revision.

        Returns the deleted value with mod_revision = the revision of the delete.
        KeyNotFound / RevisionConflict as for update.
        """

    @abc.abstractmethod
    def watch(self, prefix: str, after_revision: int) -> Watch:
        """Every event on keys starting with prefix with revision > after_revision, then live ones.

        Raises Compacted (here or on first iteration) unless after_revision >= the
        compacted revision, i.e. unless all of that history is still kept.
        """

    @abc.abstractmethod
    async def current_revision(self) -> int:
        """The revision of the latest acknowledged write (0 for an empty store)."""

    @abc.abstractmethod
    async def compacted_revision(self) -> int:
        """The revision history has been compacted up to (0: never compacted)."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Forget history at or below revision that a read at revision cannot see.

        Drops versions superseded at or before revision and tombstones at or below
        it; keeps every version live at revision, so reads at revision and watches
        from revision keep working. Compacting to an already compacted revision is a
        no-op; a revision newer than the current one raises FutureRevision.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish acknowledged work, end all watches and release the backend."""


class Compactor:
    """Upstream's retention policy: each tick, compact to the revision seen one tick ago.

    So at least one interval of history (5 minutes upstream) stays available for
    watchers to resume from and for paginated lists to finish, whatever the write
    rate. The API server runs run() as a background task.
    """

    def __init__(self, store: Store, interval: float = 300.0) -> None:
        self.store = store
        self.interval = interval
        self._seen = 0

    async def tick(self) -> int:
        """Compact to the revision remembered at the previous tick; return the revision compacted to."""
        target = self._seen
        if target:
            await self.store.compact(target)
        self._seen = await self.store.current_revision()
        return target

    async def run(self) -> None:
        while True:
            # The interval is the retention policy itself, not a wait for some condition.
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except StoreClosed:
                return
            except StoreError:
                log.exception("compaction failed; retrying next interval")
