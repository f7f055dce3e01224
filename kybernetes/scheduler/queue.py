"""The scheduling queue: which pending pod is tried next, and when a failed one is tried again.

Three sub-queues, as upstream's PriorityQueue:

* **active**: pods ready to be tried, highest priority first, then oldest;
* **backoff**: pods that failed and wait out a per-pod exponential backoff
  (1 s doubling to 10 s by default) before going back to active;
* **unschedulable**: pods that fit no node. They stay put until something in
  the cluster changes that could make them fit (a node added or updated, a
  pod deleted …), then move to backoff or active; any pod left there longer
  than five minutes is flushed back regardless, to heal missed events.

Cluster events name the plugins they can help; a pod only moves on an event
relevant to the plugins that rejected it, so a stream of unrelated pod
additions does not keep re-trying pods that lack cpu. A pod that failed while
an event arrived during its own cycle goes to backoff, not unschedulable, so
the event is not lost.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .nodeinfo import PodInfo, pod_key

Obj = dict[str, Any]

DEFAULT_INITIAL_BACKOFF = 1.0
DEFAULT_MAX_BACKOFF = 10.0
DEFAULT_MAX_UNSCHEDULABLE = 300.0
UNSCHEDULABLE_FLUSH_INTERVAL = 30.0

# Cluster events and the plugins whose rejections they can undo (None: every plugin).
NODE_ADD = "NodeAdd"
NODE_UPDATE = "NodeUpdate"
ASSIGNED_POD_ADD = "AssignedPodAdd"
ASSIGNED_POD_UPDATE = "AssignedPodUpdate"
ASSIGNED_POD_DELETE = "AssignedPodDelete"
NAMESPACE_CHANGE = "NamespaceChange"
UNSCHEDULABLE_TIMEOUT = "UnschedulableTimeout"
PVC_CHANGE = "PersistentVolumeClaimChange"
PV_CHANGE = "PersistentVolumeChange"
STORAGE_CLASS_CHANGE = "StorageClassChange"
EVENT_PLUGINS: dict[str, frozenset[str] | None] = {
    NODE_ADD: None,
    NODE_UPDATE: None,
    ASSIGNED_POD_DELETE: frozenset({"NodeResourcesFit", "NodePorts", "InterPodAffinity", "PodTopologySpread"}),
    ASSIGNED_POD_ADD: frozenset({"InterPodAffinity", "PodTopologySpread"}),
    ASSIGNED_POD_UPDATE: frozenset({"InterPodAffinity", "PodTopologySpread"}),
    NAMESPACE_CHANGE: frozenset({"InterPodAffinity"}),
    UNSCHEDULABLE_TIMEOUT: None,
    PVC_CHANGE: frozenset({"VolumeBinding"}),
    PV_CHANGE: frozenset({"VolumeBinding"}),
    STORAGE_CLASS_CHANGE: frozenset({"VolumeBinding"}),
}


@dataclass(eq=False)
class QueuedPod:
    """A pending pod and its scheduling history."""

    pod: Obj
    info: PodInfo
    timestamp: float                 # when it (re-)entered the queue
    initial_attempt: float | None = None
    attempts: int = 0
    unschedulable_plugins: set[str] = field(default_factory=set)
    failed_at: float = 0.0

    @property
    def key(self) -> str:
        return self.info.key


def _spec_changed(old: Obj, new: Obj) -> bool:
    om, nm = old.get("metadata") or {}, new.get("metadata") or {}
    return old.get("spec") != new.get("spec") or om.get("labels") != nm.get("labels")


class SchedulingQueue:
    """Active, backoff and unschedulable sub-queues with pop() for the scheduling loop.

    Single event loop, no locks: every method runs on the loop's thread.
    """

    def __init__(self, *, initial_backoff: float = DEFAULT_INITIAL_BACKOFF,
                 max_backoff: float = DEFAULT_MAX_BACKOFF,
                 max_unschedulable: float = DEFAULT_MAX_UNSCHEDULABLE,
                 clock: Callable[[], float] = time.monotonic):
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.max_unschedulable = max_unschedulable
        self.clock = clock
        self._active: dict[str, QueuedPod] = {}
        self._active_heap: list[tuple[int, float, int, str, QueuedPod]] = []
        self._backoff: dict[str, QueuedPod] = {}
        self._backoff_heap: list[tuple[float, int, str, QueuedPod]] = []
        self._unschedulable: dict[str, QueuedPod] = {}
        self._in_flight: dict[str, QueuedPod] = {}
        self._seq = itertools.count()
        self.scheduling_cycle = 0
        self._move_request_cycle = -1
        self._wakeup: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._closed = False

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        return len(self._active) + len(self._backoff) + len(self._unschedulable)

    def __contains__(self, key: str) -> bool:
        return key in self._active or key in self._backoff or key in self._unschedulable or key in self._in_flight

    def where(self, key: str) -> str | None:
        """"active", "backoff", "unschedulable", "in-flight" or None (for tests and debugging)."""
        for name, d in (("active", self._active), ("backoff", self._backoff),
                        ("unschedulable", self._unschedulable), ("in-flight", self._in_flight)):
            if key in d:
                return name
        return None

    def get(self, key: str) -> QueuedPod | None:
        return (self._active.get(key) or self._backoff.get(key) or self._unschedulable.get(key)
                or self._in_flight.get(key))

    def pending(self) -> list[QueuedPod]:
        return [*self._active.values(), *self._backoff.values(), *self._unschedulable.values()]

    # ------------------------------------------------------------------ sub-queue moves

    def _push_active(self, qp: QueuedPod) -> None:
        self._active[qp.key] = qp
        heapq.heappush(self._active_heap, (-qp.info.priority, qp.timestamp, next(self._seq), qp.key, qp))
        if self._wakeup is not None:
            self._wakeup.set()

    def _push_backoff(self, qp: QueuedPod) -> None:
        self._backoff[qp.key] = qp
        until = self.backoff_expiry(qp)
        heapq.heappush(self._backoff_heap, (until, next(self._seq), qp.key, qp))
        self._arm()

    def _remove(self, key: str) -> QueuedPod | None:
        # Heap entries are dropped lazily: pop() skips those no longer in the maps.
        return self._active.pop(key, None) or self._backoff.pop(key, None) or self._unschedulable.pop(key, None)

    def backoff_duration(self, qp: QueuedPod) -> float:
        d = self.initial_backoff
        for _ in range(1, qp.attempts):
            d *= 2
            if d >= self.max_backoff:
                return self.max_backoff
        return min(d, self.max_backoff)

    def backoff_expiry(self, qp: QueuedPod) -> float:
        return qp.failed_at + self.backoff_duration(qp)

    def _backing_off(self, qp: QueuedPod, now: float) -> bool:
        return qp.attempts > 0 and self.backoff_expiry(qp) > now

    # ------------------------------------------------------------------ informer events

    def add(self, pod: Obj) -> None:
        """A new pending pod (or one seen again): straight to active unless already queued."""
        key = pod_key(pod)
        existing = self.get(key)
        if existing is not None:
            self.update(existing.pod, pod)
            return
        now = self.clock()
        self._push_active(QueuedPod(pod, PodInfo(pod), now))

    def update(self, old: Obj, new: Obj) -> None:
        key = pod_key(new)
        qp = self.get(key)
        if qp is None:
            self.add(new)
            return
        changed = _spec_changed(qp.pod, new)
        qp.pod = new
        qp.info = PodInfo(new)
        if key in self._active:
            # Priority may have changed: re-push; the stale heap entry is skipped.
            self._push_active(qp)
        elif key in self._unschedulable and changed:
            # The pod itself changed (e.g. a toleration was added): worth another try.
            del self._unschedulable[key]
            if self._backing_off(qp, self.clock()):
                self._push_backoff(qp)
            else:
                self._push_active(qp)

    def delete(self, pod: Obj) -> None:
        key = pod_key(pod)
        self._remove(key)
        self._in_flight.pop(key, None)

    # ------------------------------------------------------------------ the scheduling loop's side

    async def pop(self) -> QueuedPod:
        """The next pod to schedule, waiting for one; raises asyncio.CancelledError on close."""
        while True:
            qp = self.pop_nowait()
            if qp is not None:
                return qp
            if self._closed:
                raise asyncio.CancelledError("scheduling queue closed")
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            self._wakeup.clear()
            await self._wakeup.wait()

    def pop_nowait(self) -> QueuedPod | None:
        self._arm_flush()
        while self._active_heap:
            *_, key, qp = heapq.heappop(self._active_heap)
            if self._active.get(key) is not qp:
                continue
            del self._active[key]
            self.scheduling_cycle += 1
            qp.attempts += 1
            if qp.initial_attempt is None:
                qp.initial_attempt = self.clock()
            self._in_flight[key] = qp
            return qp
        return None

    def done(self, key: str) -> None:
        """The cycle for key is over (scheduled, or requeued by add_unschedulable)."""
        self._in_flight.pop(key, None)

    def add_unschedulable(self, qp: QueuedPod, cycle: int, *, error: bool = False) -> None:
        """Requeue a pod that failed in `cycle`: to backoff on errors or if the cluster changed meanwhile."""
        if self._in_flight.pop(qp.key, None) is None or self._closed:
            # Deleted (or bound) while being scheduled: nothing to requeue.
            return
        if self.get(qp.key) is not None:
            return
        now = self.clock()
        qp.failed_at = now
        qp.timestamp = now
        if error or self._move_request_cycle >= cycle:
            self._push_backoff(qp)
        else:
            self._unschedulable[qp.key] = qp

    def move_all(self, event: str) -> int:
        """A cluster event: move the unschedulable pods it may help to backoff or active."""
        self._move_request_cycle = self.scheduling_cycle
        if not self._unschedulable:
            return 0
        plugins = EVENT_PLUGINS.get(event)
        now = self.clock()
        moved = 0
        for key, qp in list(self._unschedulable.items()):
            if plugins is not None and qp.unschedulable_plugins and not (qp.unschedulable_plugins & plugins):
                continue
            del self._unschedulable[key]
            moved += 1
            if self._backing_off(qp, now):
                self._push_backoff(qp)
            else:
                self._push_active(qp)
        return moved

    def activate(self, key: str) -> None:
        """Move one pending pod to active at once (e.g. its victims are gone)."""
        qp = self._backoff.pop(key, None) or self._unschedulable.pop(key, None)
        if qp is not None:
            self._push_active(qp)

    # ------------------------------------------------------------------ timers

    def flush_backoff(self) -> int:
        """Move pods whose backoff has expired to active."""
        now = self.clock()
        moved = 0
        heap = self._backoff_heap
        while heap:
            until, _, key, qp = heap[0]
            if self._backoff.get(key) is not qp:
                heapq.heappop(heap)
                continue
            if until > now:
                break
            heapq.heappop(heap)
            del self._backoff[key]
            self._push_active(qp)
            moved += 1
        return moved

    def flush_unschedulable(self) -> int:
        """Pods left unschedulable too long go back for another try (heals missed events)."""
        now = self.clock()
        moved = 0
        for key, qp in list(self._unschedulable.items()):
            if now - qp.timestamp >= self.max_unschedulable:
                del self._unschedulable[key]
                moved += 1
                if self._backing_off(qp, now):
                    self._push_backoff(qp)
                else:
                    self._push_active(qp)
        return moved

    def _loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def _arm(self) -> None:
        loop = self._loop()
        if loop is None or self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._backoff_heap and self._backoff.get(self._backoff_heap[0][2]) is not self._backoff_heap[0][3]:
            heapq.heappop(self._backoff_heap)
        if self._backoff_heap:
            delay = max(0.0, self._backoff_heap[0][0] - self.clock())
            self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush_backoff()
        self._arm()

    def _arm_flush(self) -> None:
        if self._flush_timer is None and not self._closed:
            loop = self._loop()
            if loop is not None:
                self._flush_timer = loop.call_later(UNSCHEDULABLE_FLUSH_INTERVAL, self._on_flush)

    def _on_flush(self) -> None:
        self._flush_timer = None
        self.flush_unschedulable()
        self._arm_flush()

    def close(self) -> None:
        self._closed = True
        for t in (self._timer, self._flush_timer):
            if t is not None:
                t.cancel()
        self._timer = self._flush_timer = None
        if self._wakeup is not None:
            self._wakeup.set()
