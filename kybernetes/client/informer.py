"""The informer: a local, watch-fed cache of one resource type, plus change notifications.

An Informer lists a resource once, then watches from the list's resourceVersion,
keeping an in-memory cache that readers (controllers' reconcile loops) query
without touching the API server. It owns the list/watch/relist cycle:

* A watch that ends is resumed from the last resourceVersion seen (bookmarks
  keep that fresh), so nothing is missed and nothing is seen twice.
* 410 Gone (the server no longer has history that old) triggers a relist, and
  the difference against the cache is delivered as add/update/delete events.
* Connection failures are retried with capped exponential backoff.
* An optional resync periodically re-delivers every cached object as an update,
  which is what heals level-triggered controllers from missed work.

Handlers may be plain functions or coroutine functions. Each registered handler
has its own FIFO and delivery task (like client-go's processorListener): the cache
is updated first, then the notification is queued, so a slow handler never
stalls the watch or other handlers, and every handler sees every change in order.
Handlers should be quick (typically: enqueue a key); exceptions are logged and
do not stop delivery. Objects handed out are the cache's own: treat them as
read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Self

from kybernetes.api.errors import StatusError

from .client import ResourceClient, Watch

log = logging.getLogger(__name__)

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], list[str]]

# Watch timeouts are spread like the reflector's (5-10 minutes) so a fleet of
# informers does not reconnect in lockstep.
_MIN_WATCH_TIMEOUT = 300
_BACKOFF_INITIAL = 0.8
_BACKOFF_MAX = 30.0


def strip_managed_fields(obj: Obj) -> Obj:
    """An Informer transform: components never read managedFields, so caches need not keep them."""
    m = obj.get("metadata")
    if isinstance(m, dict) and "managedFields" in m:
        m.pop("managedFields")
    return obj


def informer_for(client: Any, resource: ResourceClient, own: list[Informer], *, resync_period: float = 0,
                 transform: Callable[[Obj], Obj] | None = strip_managed_fields) -> Informer:
    """An informer on `resource` for a component of `client`'s process: the process's shared one
    when it has them (the controller manager's, stopped by it), else a new one appended to `own`,
    which the component starts and stops itself."""
    shared = client.shared_informers
    if shared is not None:
        return shared.informer(resource, resync_period=resync_period, transform=transform)
    inf = Informer(resource, resync_period=resync_period, transform=transform)
    own.append(inf)
    return inf


def meta_namespace_key(obj: Obj) -> str:
    """The cache key: "namespace/name", or "name" for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name', '')}" if ns else meta.get("name", "")


def split_key(key: str) -> tuple[str | None, str]:
    """(namespace, name) from a cache key; namespace is None for cluster-scoped keys."""
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, ns)


class _Add:
    __slots__ = ("obj",)

    def __init__(self, obj: Obj):
        self.obj = obj


class _Update:
    __slots__ = ("new", "old")

    def __init__(self, old: Obj, new: Obj):
        self.old = old
        self.new = new


class _Delete:
    __slots__ = ("obj",)

    def __init__(self, obj: Obj):
        self.obj = obj


_SYNCED = object()


class _Listener:
    """One handler registration with its own ordered, unbounded notification buffer."""

    def __init__(self, on_add: Callable[..., Any] | None, on_update: Callable[..., Any] | None,
                 on_delete: Callable[..., Any] | None):
        self.on_add = on_add
        self.on_update = on_update
        self.on_delete = on_delete
        self.pending: deque[Any] = deque()
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    def push(self, notification: Any) -> None:
        self.pending.append(notification)
        self.wakeup.set()

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            while not self.pending:
                self.wakeup.clear()
                await self.wakeup.wait()
            item = self.pending.popleft()
            if item is _SYNCED:
                self.synced.set()
                continue
            try:
                if isinstance(item, _Add):
                    result = self.on_add(item.obj) if self.on_add else None
                elif isinstance(item, _Update):
                    result = self.on_update(item.old, item.new) if self.on_update else None
                else:
                    result = self.on_delete(item.obj) if self.on_delete else None
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("informer handler failed on %s", type(item).__name__)

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Informer:
    """List+watch cache of one resource, with handlers and optional indexes."""

    def __init__(self, resource: ResourceClient, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 resync_period: float = 0, page_size: int = 500,
                 backoff_initial: float = _BACKOFF_INITIAL, backoff_max: float = _BACKOFF_MAX,
                 transform: Callable[[Obj], Obj] | None = None):
        # Applied to every object before it is cached or handed to handlers,
        # e.g. to drop managedFields a component never reads.
        self.transform = transform
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self.page_size = page_size
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._cache: dict[str, Obj] = {}
        self._listeners: list[_Listener] = []
        self._index_funcs: dict[str, IndexFunc] = {}
        # index name -> value -> keys; plus key -> values, to unindex old versions.
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._indexed_values: dict[str, dict[str, list[str]]] = {}
        self._by_namespace: dict[str, set[str]] = {}
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._watch: Watch | None = None
        self.last_resource_version: str | None = None
        self._stopping = False

    # ------------------------------------------------------------------ handlers and indexes

    def add_handler(self, on_add: Callable[[Obj], Any] | None = None,
                    on_update: Callable[[Obj, Obj], Any] | None = None,
                    on_delete: Callable[[Obj], Any] | None = None) -> None:
        """Register change callbacks (sync or async). A handler added late first gets an
        on_add for every object already in the cache, as if it had been there all along."""
        listener = _Listener(on_add, on_update, on_delete)
        self._listeners.append(listener)
        if self._synced.is_set():
            for obj in self._cache.values():
                listener.push(_Add(obj))
            listener.push(_SYNCED)
        if self._task is not None:
            listener.start()

    def add_index(self, name: str, fn: IndexFunc) -> None:
        """Index the cache by fn(obj) -> values; query with by_index(name, value)."""
        if name in self._index_funcs:
            if self._index_funcs[name] is fn:
                return  # a shared informer: another user asked for the same index
            raise ValueError(f"index {name!r} already exists")
        self._index_funcs[name] = fn
        self._indices[name] = {}
        self._indexed_values[name] = {}
        for key, obj in self._cache.items():
            self._index_one(name, key, obj)

    def by_index(self, name: str, value: str) -> list[Obj]:
        keys = self._indices[name].get(value, ())
        return [self._cache[k] for k in keys]

    def index_keys(self, name: str, value: str) -> list[str]:
        return sorted(self._indices[name].get(value, ()))

    # ------------------------------------------------------------------ reading the cache

    def get(self, key: str) -> Obj | None:
        return self._cache.get(key)

    def get_by_name(self, name: str, namespace: str | None = None) -> Obj | None:
        return self._cache.get(f"{namespace}/{name}" if namespace else name)

    def list(self) -> list[Obj]:
        return list(self._cache.values())

    def keys(self) -> list[str]:
        return list(self._cache)

    def list_by_namespace(self, namespace: str) -> list[Obj]:
        return [self._cache[k] for k in self._by_namespace.get(namespace, ())]

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._cache))

    @property
    def has_synced(self) -> bool:
        """True once the first list is in the cache and every handler has been told about it."""
        return self._synced.is_set() and all(li.synced.is_set() for li in self._listeners)

    async def wait_for_sync(self, timeout: float | None = None) -> bool:
        """Wait for has_synced; returns False if the timeout passed first."""
        async def wait() -> None:
            await self._synced.wait()
            for listener in list(self._listeners):
                await listener.synced.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listing and watching in the background; returns at once (see wait_for_sync)."""
        if self._task is not None:
            return
        self._stopping = False
        for listener in self._listeners:
            listener.start()
        self._task = asyncio.get_running_loop().create_task(self._run())
        if self.resync_period > 0:
            self._resync_task = asyncio.get_running_loop().create_task(self._resync_loop())

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._task, self._resync_task) if t is not None]
        self._task = self._resync_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._watch is not None:
            await self._watch.close()
            self._watch = None
        for listener in self._listeners:
            await listener.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ the list/watch loop

    async def _run(self) -> None:
        need_list = True
        delay = self.backoff_initial
        gone_in_a_row = 0
        while not self._stopping:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                if await self._watch_once():
                    delay = self.backoff_initial
                    gone_in_a_row = 0
                    continue
                # A watch that ended without a single event: do not spin on a
                # server that keeps closing watches at once.
            except asyncio.CancelledError:
                raise
            except StatusError as e:
                if e.code == 410:
                    # History is gone: only a fresh list can tell us what we missed.
                    log.info("informer %s: %s; relisting", self.resource.plural, e.message)
                    need_list = True
                    gone_in_a_row += 1
                    if gone_in_a_row == 1:
                        continue
                log.warning("informer %s: %s (%s); relisting after %.1fs",
                            self.resource.plural, e.message, e.code, delay)
                need_list = True
            except ConnectionError as e:
                # The server may just be restarting: resume the watch where we were.
                log.warning("informer %s: %s; retrying in %.1fs", self.resource.plural, e, delay)
                if self.last_resource_version is None:
                    need_list = True
            except Exception:
                log.exception("informer %s: unexpected failure; relisting", self.resource.plural)
                need_list = True
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff_max)

    async def _relist(self) -> None:
        listing = await self.resource.list_all(self.namespace, label_selector=self.label_selector,
                                               field_selector=self.field_selector, page_size=self.page_size)
        fresh: dict[str, Obj] = {}
        for obj in listing.get("items") or []:
            if self.transform is not None:
                obj = self.transform(obj)
            fresh[meta_namespace_key(obj)] = obj
        # Apply the whole diff without yielding to the loop, so readers never
        # see half an old and half a new snapshot.
        for key in [k for k in self._cache if k not in fresh]:
            self._delete(key, self._cache[key])
        for key, obj in fresh.items():
            old = self._cache.get(key)
            if old is None:
                self._store(key, obj)
                self._notify(_Add(obj))
            elif _rv(old) != _rv(obj):
                self._store(key, obj)
                self._notify(_Update(old, obj))
        self.last_resource_version = (listing.get("metadata") or {}).get("resourceVersion") or None
        if not self._synced.is_set():
            self._synced.set()
            for listener in self._listeners:
                listener.push(_SYNCED)

    async def _watch_once(self) -> bool:
        """One watch from last_resource_version until it ends; True if anything arrived."""
        timeout = random.randint(_MIN_WATCH_TIMEOUT, 2 * _MIN_WATCH_TIMEOUT)
        watch = self.resource.watch(self.namespace, resource_version=self.last_resource_version,
                                    label_selector=self.label_selector, field_selector=self.field_selector,
                                    allow_bookmarks=True, timeout_seconds=timeout)
        self._watch = watch
        progressed = False
        try:
            async for etype, obj in watch:
                progressed = True
                self._apply(etype, obj)
        finally:
            self._watch = None
            await watch.close()
        return progressed

    def _apply(self, etype: str, obj: Obj) -> None:
        rv = _rv(obj)
        if etype == "BOOKMARK":
            if rv:
                self.last_resource_version = rv
            return
        if self.transform is not None:
            obj = self.transform(obj)
        key = meta_namespace_key(obj)
        if etype in ("ADDED", "MODIFIED"):
            old = self._cache.get(key)
            self._store(key, obj)
            self._notify(_Add(obj) if old is None else _Update(old, obj))
        elif etype == "DELETED":
            old = self._cache.get(key)
            if old is not None:
                self._delete(key, obj)
        else:
            log.warning("informer %s: ignoring watch event type %r", self.resource.plural, etype)
        if rv:
            self.last_resource_version = rv

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_period)
            if self._synced.is_set():
                self.resync()

    def resync(self) -> None:
        """Re-deliver every cached object as on_update(obj, obj) to every handler."""
        for obj in self._cache.values():
            self._notify(_Update(obj, obj))

    # ------------------------------------------------------------------ cache bookkeeping

    def _notify(self, notification: Any) -> None:
        for listener in self._listeners:
            listener.push(notification)

    def _store(self, key: str, obj: Obj) -> None:
        old = self._cache.get(key)
        self._cache[key] = obj
        ns, _ = split_key(key)
        if ns is not None and old is None:
            self._by_namespace.setdefault(ns, set()).add(key)
        for name in self._index_funcs:
            self._index_one(name, key, obj)

    def _delete(self, key: str, final: Obj) -> None:
        """Drop key from the cache and tell handlers, with `final` as the last known state."""
        self._cache.pop(key, None)
        ns, _ = split_key(key)
        if ns is not None:
            keys = self._by_namespace.get(ns)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_namespace[ns]
        for name in self._index_funcs:
            self._unindex(name, key)
        self._notify(_Delete(final))

    def _index_one(self, name: str, key: str, obj: Obj) -> None:
        self._unindex(name, key)
        try:
            values = list(self._index_funcs[name](obj) or [])
        except Exception:
            log.exception("index function %r failed for %s", name, key)
            values = []
        index = self._indices[name]
        for value in values:
            index.setdefault(value, set()).add(key)
        if values:
            self._indexed_values[name][key] = values

    def _unindex(self, name: str, key: str) -> None:
        old_values = self._indexed_values[name].pop(key, None)
        if not old_values:
            return
        index = self._indices[name]
        for value in old_values:
            keys = index.get(value)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del index[value]


def _rv(obj: Obj) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


class SharedInformers:
    """One Informer per resource and options for every component of a process.

    The controllers of `kyb server` all watch pods; sharing means each pod event
    is decoded, cached and indexed once, then fanned out to every controller's
    handler. Informers differing in resync period, transform or metadata-only
    reads are not shared, so each user still gets exactly what it asked for.
    """

    def __init__(self, client: Any = None) -> None:
        """client: whom the informers list and watch as (upstream's controller manager uses its own
        identity for them, each controller its own for writes); None: the first asker's client."""
        self.client = client
        self._informers: dict[tuple[Any, ...], Informer] = {}

    def informer(self, resource: ResourceClient, *, resync_period: float = 0,
                 transform: Callable[[Obj], Obj] | None = None) -> Informer:
        key = (resource.api_version, resource.plural, resource.namespaced, resource.metadata_only,
               resync_period, transform)
        inf = self._informers.get(key)
        if inf is None:
            if self.client is not None:
                resource = self.client.resource(resource.api_version, resource.plural, resource.namespaced,
                                                metadata_only=resource.metadata_only)
            inf = self._informers[key] = Informer(resource, resync_period=resync_period, transform=transform)
        return inf

    def __len__(self) -> int:
        return len(self._informers)

    async def stop(self) -> None:
        for inf in self._informers.values():
            await inf.stop()
