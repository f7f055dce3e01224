"""The controllers' work queue: de-duplicating, delaying and rate-limited, like client-go's.

A key waits in the queue at most once however often it is added; a key being
processed is never handed to a second worker, and if it is added meanwhile it
goes back in line when the first worker calls done(). Failed keys come back
after a per-key exponential backoff combined with an overall token bucket, so
one broken object cannot hog the workers and a mass failure cannot hammer the
API server.

The queue is single-event-loop (no locks): every method is called from the
loop's thread; get() is the only one that waits.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

Clock = Callable[[], float]


class QueueShutDown(Exception):
    """Raised by WorkQueue.get() once the queue is shut down and empty."""


# ---------------------------------------------------------------------------- rate limiters


class RateLimiter:
    """How long an item should wait before its next retry."""

    def when(self, item: Hashable) -> float:
        raise NotImplementedError

    def forget(self, item: Hashable) -> None:
        """The item succeeded: stop tracking its failures."""

    def num_requeues(self, item: Hashable) -> int:
        return 0


class ItemExponentialRateLimiter(RateLimiter):
    """base * 2**failures per item, capped at max_delay."""

    def __init__(self, base_delay: float = 0.005, max_delay: float = 1000.0):
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._failures: dict[Hashable, int] = {}

    def when(self, item: Hashable) -> float:
        failures = self._failures.get(item, 0)
        self._failures[item] = failures + 1
        # Past ~60 doublings the float overflows long after the cap applies.
        if failures > 62:
            return self.max_delay
        return min(self.base_delay * (2 ** failures), self.max_delay)

    def forget(self, item: Hashable) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: Hashable) -> int:
        return self._failures.get(item, 0)


class BucketRateLimiter(RateLimiter):
    """An overall token bucket (qps, burst) shared by all items; reservations may go into debt."""

    def __init__(self, qps: float = 10.0, burst: int = 100, clock: Clock = time.monotonic):
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def when(self, item: Hashable) -> float:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        # Taking the token now even when there is none books the slot in the
        # future, so concurrent callers get successive, evenly spaced delays.
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.qps


class MaxOfRateLimiter(RateLimiter):
    """The longest delay any of the limiters asks for."""

    def __init__(self, *limiters: RateLimiter):
        self.limiters = limiters

    def when(self, item: Hashable) -> float:
        return max(limiter.when(item) for limiter in self.limiters)

    def forget(self, item: Hashable) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


def default_controller_rate_limiter(clock: Clock = time.monotonic) -> RateLimiter:
    """Per-item 5 ms .. 1000 s exponential backoff, and overall 10 qps with bursts of 100."""
    return MaxOfRateLimiter(ItemExponentialRateLimiter(0.005, 1000.0), BucketRateLimiter(10.0, 100, clock))


# ---------------------------------------------------------------------------- queue


class WorkQueue:
    """A de-duplicating FIFO of keys with delayed and rate-limited adds.

    Workers loop: ``key = await q.get()``, reconcile, then ``q.forget(key)`` on
    success or ``q.add_rate_limited(key)`` on failure, and always ``q.done(key)``.
    """

    def __init__(self, name: str = "", *, rate_limiter: RateLimiter | None = None):
        self.name = name
        self.rate_limiter = rate_limiter or default_controller_rate_limiter()
        self._queue: deque[Hashable] = deque()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False
        self._drained: asyncio.Event | None = None
        # Delayed adds: a heap of (ready_at, seq, item) plus the earliest time
        # per item, so re-adding with a later time never postpones an item.
        self._waiting: list[tuple[float, int, Hashable]] = []
        self._ready_at: dict[Hashable, float] = {}
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ core

    def add(self, item: Hashable) -> None:
        """Queue item unless it is already waiting; after shut_down() adds are ignored."""
        if self._shutting_down or item in self._dirty:
            return
        self._dirty.add(item)
        if item in self._processing:
            return  # done() puts it back in line
        self._queue.append(item)
        self._wake_one()

    async def get(self) -> Any:
        """The next item, waiting for one; raises QueueShutDown when shut down and nothing is left."""
        while not self._queue:
            if self._shutting_down:
                raise QueueShutDown(self.name)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut in self._getters:
                    self._getters.remove(fut)
                elif self._queue:
                    # We were woken for an item but will not take it: pass the wake-up on.
                    self._wake_one()
                raise
        item = self._queue.popleft()
        self._processing.add(item)
        self._dirty.discard(item)
        return item

    def done(self, item: Hashable) -> None:
        """The worker has finished with item; if it was added meanwhile, it is queued again."""
        self._processing.discard(item)
        if item in self._dirty:
            self._queue.append(item)
            self._wake_one()
        if not self._processing and self._drained is not None:
            self._drained.set()

    def __len__(self) -> int:
        return len(self._queue)

    def len(self) -> int:
        """Items waiting to be handed out (not those being processed or delayed)."""
        return len(self._queue)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def shut_down(self) -> None:
        """Stop accepting items; workers drain what is queued, then get() raises QueueShutDown."""
        self._shutting_down = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()
        self._ready_at.clear()
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)

    async def shut_down_with_drain(self) -> None:
        """shut_down(), then wait until every item being processed is done()."""
        self.shut_down()
        if self._processing:
            self._drained = asyncio.Event()
            await self._drained.wait()

    def _wake_one(self) -> None:
        while self._getters:
            fut = self._getters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    # ------------------------------------------------------------------ delaying

    def add_after(self, item: Hashable, delay: float) -> None:
        """Add item once delay seconds have passed (at once if delay <= 0)."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(item)
            return
        loop = self._loop = self._loop or asyncio.get_running_loop()
        ready_at = loop.time() + delay
        current = self._ready_at.get(item)
        if current is not None and current <= ready_at:
            return
        self._ready_at[item] = ready_at
        heapq.heappush(self._waiting, (ready_at, next(self._seq), item))
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting and self._loop is not None:
            self._timer = self._loop.call_at(self._waiting[0][0], self._fire)

    def _fire(self) -> None:
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        while self._waiting and self._waiting[0][0] <= now:
            ready_at, _, item = heapq.heappop(self._waiting)
            # Entries superseded by an earlier add_after for the same item are stale.
            if self._ready_at.get(item) == ready_at:
                del self._ready_at[item]
                self.add(item)
        self._arm()

    def num_waiting(self) -> int:
        """Items scheduled by add_after/add_rate_limited and not yet due."""
        return len(self._ready_at)

    # ------------------------------------------------------------------ rate limiting

    def add_rate_limited(self, item: Hashable) -> None:
        """Re-add item after the rate limiter's delay (grows with each failure until forget())."""
        self.add_after(item, self.rate_limiter.when(item))

    def forget(self, item: Hashable) -> None:
        self.rate_limiter.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return self.rate_limiter.num_requeues(item)
