"""The watch cache: one store watch for the whole server, fanned out to every watcher.

At start the cache lists everything under /registry/ once and then follows a
single store watch from that revision. Objects are kept per storage prefix as
their served bytes (resourceVersion spliced in once), with the few fields
selectors need pre-extracted, so lists and watch events are assembled from
bytes and never re-encoded per object or per watcher. Because one watch sees
every revision, every resource cache advances together, and "wait until the
cache has seen revision R" is the consistent-read barrier for lists.

A recent window of events is kept per prefix so a watcher can resume from an
older resourceVersion; older than the window is 410 Gone, as upstream.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..storage.base import KV, Compacted, Store

log = logging.getLogger("kybernetes.watchcache")

_META = b'"metadata":{'


def splice_rv(raw: bytes, rv: int) -> bytes:
    """Insert metadata.resourceVersion into stored bytes (which never carry it)."""
    i = raw.find(_META)
    if i < 0:
        return raw
    i += len(_META)
    return b"".join((raw[:i], b'"resourceVersion":"', str(rv).encode(), b'",', raw[i:]))


class Entry:
    """One object as the cache holds it."""

    __slots__ = ("derived", "fields", "key", "labels", "name", "namespace", "raw", "rv", "uid")

    def __init__(self, key: str, raw: bytes, rv: int, namespace: str, name: str, labels: dict[str, str],
                 fields: dict[str, str], uid: str):
        self.key = key
        self.raw = raw
        self.rv = rv
        self.namespace = namespace
        self.name = name
        self.labels = labels
        self.fields = fields
        self.uid = uid
        # What readers derive from the object and keep with it (see ResourceCache.derive):
        # an entry is replaced on every change, so nothing kept here is ever stale.
        self.derived: dict[str, Any] | None = None


FieldsFn = Callable[[dict[str, Any]], dict[str, str]]


def make_entry(kv: KV, rv: int, fields_fn: FieldsFn | None) -> Entry:
    obj = orjson.loads(kv.value)
    meta = obj.get("metadata") or {}
    raw = splice_rv(kv.value, rv)
    fields = fields_fn(obj) if fields_fn else {}
    return Entry(kv.key, raw, rv, meta.get("namespace", ""), meta.get("name", ""), meta.get("labels") or {},
                 fields, meta.get("uid", ""))


@dataclass(slots=True)
class CacheEvent:
    type: str  # ADDED / MODIFIED / DELETED
    rv: int
    entry: Entry
    prev: Entry | None
    _encoded: dict[str, bytes] = field(default_factory=dict)

    def encoded(self, typ: str) -> bytes:
        b = self._encoded.get(typ)
        if b is None:
            b = b'{"type":"' + typ.encode() + b'","object":' + self.entry.raw + b"}\n"
            self._encoded[typ] = b
        return b


Filter = Callable[[Entry], bool]


class Watcher:
    """One client's watch: a bounded queue of encoded events."""

    MAX_PENDING = 20000

    def __init__(self, cache: ResourceCache, match: Filter, namespace: str | None):
        self.cache = cache
        self.match = match
        self.namespace = namespace
        self.queue: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.overflowed = False
        self.bookmarks = False
        self.last_rv = 0

    def deliver(self, ev: CacheEvent) -> None:
        if self.closed:
            return
        if self.namespace and ev.entry.namespace != self.namespace:
            return
        cur = self.match(ev.entry)
        if ev.type == "DELETED":
            typ = "DELETED" if (ev.prev is not None and self.match(ev.prev)) or cur else None
        elif ev.type == "ADDED":
            typ = "ADDED" if cur else None
        else:
            old = ev.prev is not None and self.match(ev.prev)
            if cur and old:
                typ = "MODIFIED"
            elif cur:
                typ = "ADDED"
            elif old:
                typ = "DELETED"
            else:
                typ = None
        self.last_rv = ev.rv
        if typ is None:
            return
        self.push(ev.encoded(typ))

    def push(self, data: bytes) -> None:
        if len(self.queue) >= self.MAX_PENDING:
            # A watcher this far behind is cut off; the client re-watches from
            # its last resourceVersion, as upstream does with slow watchers.
            self.overflowed = True
            self.close()
            return
        self.queue.append(data)
        self.wake.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.cache.watchers.discard(self)
            self.wake.set()

    async def next_chunk(self, timeout: float | None) -> list[bytes] | None:
        """Pending events (possibly empty on timeout); None once closed and drained."""
        if not self.queue:
            if self.closed:
                return None
            self.wake.clear()
            try:
                if timeout is None:
                    await self.wake.wait()
                else:
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation that races with the event firing, and a closing
                    # watch would then never finish.
                    async with asyncio.timeout(timeout):
                        await self.wake.wait()
            except TimeoutError:
                return []
        out = list(self.queue)
        self.queue.clear()
        if not out and self.closed:
            return None
        return out


class ResourceCache:
    """Objects and recent events under one storage prefix.

    ``objects`` is every object by key; ``by_namespace`` the same per namespace,
    so that a namespace's list never walks the others; ``index(field, value)``
    answers "every entry whose selectable field has this value" (pods by
    spec.nodeName, as upstream's watch cache indexes them) from an index built
    on first use and kept up to date by every change after it.
    """

    def __init__(self, prefix: str, window: int, fields_fn: FieldsFn | None = None):
        self.prefix = prefix
        self.objects: dict[str, Entry] = {}
        self.by_namespace: dict[str, dict[str, Entry]] = {}
        self._indexes: dict[str, dict[str, dict[str, Entry]]] = {}
        self.events: deque[CacheEvent] = deque(maxlen=window)
        # Events older than this revision are not in the window.
        self.oldest_rv = 0
        self.watchers: set[Watcher] = set()
        self.fields_fn = fields_fn

    def put(self, entry: Entry) -> None:
        old = self.objects.get(entry.key)
        if old is not None:
            self._unindex(old)
        self.objects[entry.key] = entry
        self.by_namespace.setdefault(entry.namespace, {})[entry.key] = entry
        for name, index in self._indexes.items():
            index.setdefault(entry.fields.get(name, ""), {})[entry.key] = entry

    def remove(self, key: str) -> None:
        old = self.objects.pop(key, None)
        if old is not None:
            self._unindex(old)

    def clear(self) -> None:
        self.objects.clear()
        self.by_namespace.clear()
        self._indexes.clear()

    def _unindex(self, entry: Entry) -> None:
        _discard(self.by_namespace, entry.namespace, entry.key)
        for name, index in self._indexes.items():
            _discard(index, entry.fields.get(name, ""), entry.key)

    def index(self, name: str, value: str) -> list[Entry]:
        """The entries whose selectable field ``name`` (a key of Entry.fields) is ``value``."""
        index = self._indexes.get(name)
        if index is None:
            index = self._indexes[name] = {}
            for e in self.objects.values():
                index.setdefault(e.fields.get(name, ""), {})[e.key] = e
        found = index.get(value)
        return list(found.values()) if found else []

    @staticmethod
    def derive(entry: Entry, what: str, fn: Callable[[Entry], Any]) -> Any:
        """fn(entry), computed once per version of the object and kept with it."""
        d = entry.derived
        if d is None:
            d = entry.derived = {}
        elif what in d:
            return d[what]
        v = d[what] = fn(entry)
        return v

    def apply(self, typ: str, kv: KV, prev_entry: Entry | None) -> CacheEvent:
        entry = make_entry(kv, kv.mod_revision, self.fields_fn)
        if typ == "DELETED":
            self.remove(kv.key)
        else:
            self.put(entry)
        ev = CacheEvent(typ, kv.mod_revision, entry, prev_entry)
        if len(self.events) == self.events.maxlen:
            self.oldest_rv = self.events[0].rv
        self.events.append(ev)
        for w in list(self.watchers):
            w.deliver(ev)
        return ev

    def events_since(self, rv: int) -> list[CacheEvent] | None:
        """Events after rv still in the window, or None if rv is older than the window."""
        if rv < self.oldest_rv:
            return None
        out = []
        for ev in reversed(self.events):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out

    def entries(self, namespace: str | None) -> list[Entry]:
        if namespace:
            found = self.by_namespace.get(namespace)
            return list(found.values()) if found else []
        return list(self.objects.values())


def _discard(index: dict[str, dict[str, Entry]], value: str, key: str) -> None:
    bucket = index.get(value)
    if bucket is not None:
        bucket.pop(key, None)
        if not bucket:
            del index[value]


class WatchCache:
    """All resource caches of the server, fed by one store watch."""

    def __init__(self, store: Store, window: int = 10000, fields_for: Callable[[str], FieldsFn | None] = None):
        self.store = store
        self.window = window
        self.caches: dict[str, ResourceCache] = {}
        self.rv = 0
        # The revision of the last full list: every event after it went
        # through _run, so a resource without a cache yet has had none since.
        self.base_rv = 0
        self._rv_waiters: list[tuple[int, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._fields_for = fields_for or (lambda prefix: None)
        self.ready = asyncio.Event()

    @staticmethod
    def prefix_of(key: str) -> str:
        # "/registry/<resource>/..." -> "/registry/<resource>/"
        i = key.find("/", len("/registry/"))
        return key[: i + 1] if i > 0 else key

    def cache(self, prefix: str) -> ResourceCache:
        c = self.caches.get(prefix)
        if c is None:
            c = ResourceCache(prefix, self.window, self._fields_for(prefix))
            # No event under this prefix since the last full list (it would
            # have made the cache), so the window reaches back to that list.
            c.oldest_rv = self.base_rv
            self.caches[prefix] = c
        return c

    async def start(self) -> None:
        kvs, rev, _ = await self.store.list("/registry/")
        self.base_rv = rev
        for kv in kvs:
            c = self.cache(self.prefix_of(kv.key))
            c.put(make_entry(kv, kv.mod_revision, c.fields_fn))
        self.rv = rev
        for c in self.caches.values():
            c.oldest_rv = rev
        self._task = asyncio.create_task(self._run(rev), name="watchcache")
        self.ready.set()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _run(self, rev: int) -> None:
        while True:
            try:
                watch = self.store.watch("/registry/", rev)
                async for ev in watch:
                    key = ev.kv.key
                    c = self.cache(self.prefix_of(key))
                    prev = c.objects.get(key)
                    c.apply(ev.type, ev.kv, prev)
                    rev = ev.kv.mod_revision
                    self._advance(rev)
                return
            except asyncio.CancelledError:
                raise
            except Compacted:
                # Fell behind compaction: rebuild from a fresh list. Watchers
                # are cut off so that their clients relist too.
                log.warning("watch cache fell behind compaction; relisting")
                await self._relist()
                rev = self.rv
            except Exception:
                log.exception("watch cache store watch failed; restarting")
                await asyncio.sleep(0.5)

    async def _relist(self) -> None:
        kvs, rev, _ = await self.store.list("/registry/")
        for c in self.caches.values():
            for w in list(c.watchers):
                w.close()
            c.clear()
            c.events.clear()
        self.base_rv = rev
        for kv in kvs:
            c = self.cache(self.prefix_of(kv.key))
            c.put(make_entry(kv, kv.mod_revision, c.fields_fn))
        for c in self.caches.values():
            c.oldest_rv = rev
        self._advance(rev)

    def _advance(self, rev: int) -> None:
        self.rv = max(self.rv, rev)
        if self._rv_waiters:
            keep = []
            for want, fut in self._rv_waiters:
                if want <= self.rv:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((want, fut))
            self._rv_waiters = keep

    async def wait_for(self, rev: int, timeout: float = 5.0) -> bool:
        if self.rv >= rev:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._rv_waiters.append((rev, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    async def fresh(self) -> int:
        """Wait until the cache reflects every write acknowledged so far; returns that revision."""
        rev = await self.store.current_revision()
        if not await self.wait_for(rev):
            # The store moved on (e.g. writes to keys no cache covers); what
            # we have is complete up to what we saw.
            return self.rv
        return rev
