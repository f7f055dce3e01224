"""One event recorder for every component, as client-go's tools/record.

A component calls `recorder.event(obj, type, reason, message)` and goes on: the
call never blocks and never fails. Events pass through the correlator that
upstream's recorder runs, in its order, then a background task writes them:

* the spam filter: a token bucket per (source, involved object), burst 25,
  refilled one event every 5 minutes; events beyond it are dropped;
* the aggregator: more than 10 events of one (source, object, type, reason)
  with different messages within 10 minutes become one event whose message
  says "(combined from similar events): …";
* the logger: a repeat of an identical event is written as a patch of the first
  one's `count` and `lastTimestamp`, not as a new Event.

All three remember a bounded number of keys (least recently used first out),
and the write queue is bounded: a component whose API server is away loses
events, never memory. Writing retries a failed write a few times, then drops
the event, as upstream's does. `FakeRecorder` records `"Type Reason message"`
strings for tests, as client-go's FakeRecorder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from ..api.errors import StatusError
from ..api.times import format_time

log = logging.getLogger("kybernetes.events")

Obj = dict[str, Any]

NORMAL = "Normal"
WARNING = "Warning"

# client-go's defaults (tools/record/events_cache.go).
CACHE_SIZE = 4096
SPAM_BURST = 25
SPAM_REFILL_SECONDS = 300.0
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_INTERVAL = 600.0
QUEUE_SIZE = 1000
WRITE_TRIES = 4

COMBINED = "(combined from similar events): "


class _LRU(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_touch(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


@dataclass
class _Seen:
    """What the logger remembers of an event it wrote: its name, namespace and count."""
    name: str
    namespace: str
    count: int
    first: str


@dataclass
class _Similar:
    messages: set[str]
    since: float


def object_reference(obj: Obj, field_path: str = "") -> Obj:
    """The involvedObject of an Event about obj (upstream's reference.GetReference)."""
    meta = obj.get("metadata") or {}
    ref: Obj = {"kind": obj.get("kind") or "", "apiVersion": obj.get("apiVersion") or "v1",
                "name": meta.get("name") or ""}
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    if meta.get("uid"):
        ref["uid"] = meta["uid"]
    if meta.get("resourceVersion"):
        ref["resourceVersion"] = meta["resourceVersion"]
    if field_path:
        ref["fieldPath"] = field_path
    return ref


class EventRecorder:
    """Records core/v1 Events about objects for one component (and host, for node components)."""

    def __init__(self, client: Any, component: str, host: str = "", *, instance: str = "",
                 clock: Callable[[], float] = time.time, cache_size: int = CACHE_SIZE,
                 spam_burst: int = SPAM_BURST, spam_refill: float = SPAM_REFILL_SECONDS,
                 queue_size: int = QUEUE_SIZE, retry_delay: float = 1.0):
        self.client = client
        self.component = component
        self.host = host
        self.instance = instance or host or component
        self.clock = clock
        self.spam_burst = spam_burst
        self.spam_refill = spam_refill
        self.retry_delay = retry_delay
        self.dropped = 0
        self._buckets: _LRU = _LRU(cache_size)   # spam key -> (tokens, last refill)
        self._similar: _LRU = _LRU(cache_size)   # aggregate key -> _Similar
        self._seen: _LRU = _LRU(cache_size)      # event key -> _Seen
        self._queue: asyncio.Queue[tuple[Obj, str, str, str, str, float]] = asyncio.Queue(queue_size)
        self._task: asyncio.Task | None = None
        self._closed = False

    # ------------------------------------------------------------------ recording

    def event(self, obj: Obj, type_: str, reason: str, message: str, field_path: str = "") -> None:
        """Record an Event about obj, in the background. Never blocks, never raises."""
        if self._closed:
            return
        ref = object_reference(obj, field_path)
        now = self.clock()
        if not self._allow(ref, now):
            return
        try:
            self._queue.put_nowait((ref, type_, reason, message, field_path, now))
        except asyncio.QueueFull:
            self.dropped += 1
            return
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._writer(), name=f"events-{self.component}")
            except RuntimeError:  # no loop: nothing can be written; forget it
                self._queue.get_nowait()
                self.dropped += 1

    def eventf(self, obj: Obj, type_: str, reason: str, fmt: str, *args: Any) -> None:
        self.event(obj, type_, reason, fmt % args if args else fmt)

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until every event recorded so far is written (or dropped)."""
        if self._task is None or self._task.done():
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.debug("%s: %d events still unwritten", self.component, self._queue.qsize())

    async def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most timeout seconds), then stop."""
        self._closed = True
        await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    # ------------------------------------------------------------------ correlator

    def _allow(self, ref: Obj, now: float) -> bool:
        """The spam filter: a token bucket per source and involved object."""
        key = (ref.get("kind"), ref.get("namespace"), ref.get("name"), ref.get("uid"), ref.get("apiVersion"))
        bucket = self._buckets.get_touch(key)
        tokens, last = bucket if bucket is not None else (float(self.spam_burst), now)
        tokens = min(float(self.spam_burst), tokens + (now - last) / self.spam_refill)
        if tokens < 1.0:
            self._buckets.put(key, (tokens, now))
            return False
        self._buckets.put(key, (tokens - 1.0, now))
        return True

    def _aggregate(self, ref: Obj, type_: str, reason: str, message: str, now: float) -> tuple[str, tuple]:
        """The message to write and the key that identifies it, after similar events are combined."""
        obj_key = (ref.get("kind"), ref.get("namespace"), ref.get("name"), ref.get("uid"),
                   ref.get("apiVersion"), ref.get("fieldPath"))
        agg_key = (obj_key, type_, reason)
        similar = self._similar.get_touch(agg_key)
        if similar is None or now - similar.since > AGGREGATE_INTERVAL:
            similar = _Similar(set(), now)
        if len(similar.messages) < AGGREGATE_MAX_EVENTS:
            similar.messages.add(message)
        self._similar.put(agg_key, similar)
        if len(similar.messages) < AGGREGATE_MAX_EVENTS:
            return message, (agg_key, message)
        # From now on one event stands for them all; its count says how many.
        return COMBINED + message, (agg_key, None)

    # ------------------------------------------------------------------ writing

    async def _writer(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._write(*item)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - events are advisory; a lost one fails nothing
                log.debug("%s: event not recorded: %s", self.component, e)
            finally:
                self._queue.task_done()

    async def _write(self, ref: Obj, type_: str, reason: str, message: str, field_path: str, at: float) -> None:
        message, key = self._aggregate(ref, type_, reason, message, at)
        ns = ref.get("namespace") or "default"
        now = format_time(at)
        events = self.client.resource("v1", "events")
        for attempt in range(WRITE_TRIES):
            seen = self._seen.get_touch(key)
            try:
                if seen is not None:
                    try:
                        await events.patch(seen.name, {"count": seen.count + 1, "lastTimestamp": now,
                                                       "message": message}, namespace=seen.namespace)
                        seen.count += 1
                        return
                    except StatusError as e:
                        if e.code != 404:
                            raise
                        # Expired or deleted: start it again as a new Event.
                name = f"{ref.get('name') or 'object'}.{time.time_ns():x}"
                source: Obj = {"component": self.component}
                if self.host:
                    source["host"] = self.host
                body: Obj = {
                    "apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": ns},
                    "involvedObject": ref, "reason": reason, "message": message, "type": type_,
                    "source": source, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                    "reportingComponent": self.component, "reportingInstance": self.instance}
                await events.create(body, ns)
                self._seen.put(key, _Seen(name, ns, 1, now))
                return
            except StatusError as e:
                if e.code in (400, 403, 404, 409, 422):
                    # The server will not take it however often we try (a namespace being
                    # deleted, a name taken, a refused body): drop it, as upstream does.
                    log.debug("%s: event %s for %s refused: %s", self.component, reason, ref.get("name"),
                              e.message)
                    return
            except Exception as e:  # noqa: BLE001 - the transport may fail in many ways
                log.debug("%s: writing event %s: %s", self.component, reason, e)
            if attempt + 1 < WRITE_TRIES:
                await asyncio.sleep(self.retry_delay * (2 ** attempt))
        self.dropped += 1


class FakeRecorder:
    """Records `"Type Reason message"` strings (client-go's FakeRecorder), for tests."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.objects: list[Obj] = []

    def event(self, obj: Obj, type_: str, reason: str, message: str, field_path: str = "") -> None:
        self.events.append(f"{type_} {reason} {message}")
        self.objects.append(object_reference(obj, field_path))

    def eventf(self, obj: Obj, type_: str, reason: str, fmt: str, *args: Any) -> None:
        self.event(obj, type_, reason, fmt % args if args else fmt)

    def reasons(self) -> list[str]:
        return [e.split(" ", 2)[1] for e in self.events]

    async def flush(self, timeout: float = 10.0) -> None:
        return None

    async def close(self, timeout: float = 2.0) -> None:
        return None
