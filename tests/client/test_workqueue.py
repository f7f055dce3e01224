"""WorkQueue semantics: de-duplication, processing/dirty hand-off, delays, backoff, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from kybernetes.client.workqueue import (
    BucketRateLimiter,
    ItemExponentialRateLimiter,
    QueueShutDown,
    WorkQueue,
    default_controller_rate_limiter,
)

from .conftest import eventually


async def test_add_dedupes_waiting_items_and_keeps_fifo_order() -> None:
    q = WorkQueue()
    for key in ["a", "b", "a", "c", "b"]:
        q.add(key)
    assert len(q) == 3
    assert [await q.get() for _ in range(3)] == ["a", "b", "c"]
    assert q.len() == 0


async def test_key_added_while_processing_is_requeued_after_done_not_handed_out_twice() -> None:
    q = WorkQueue()
    q.add("k")
    assert await q.get() == "k"
    q.add("k")
    q.add("k")
    assert len(q) == 0  # parked as dirty, not queued while being processed
    getter = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.done("k")
    assert await asyncio.wait_for(getter, 1) == "k"
    q.done("k")
    assert len(q) == 0


async def test_concurrent_workers_never_process_same_key_at_once() -> None:
    q = WorkQueue()
    active: set[str] = set()
    seen: list[str] = []
    overlap = False

    async def worker() -> None:
        nonlocal overlap
        while True:
            try:
                key = await q.get()
            except QueueShutDown:
                return
            if key in active:
                overlap = True
            active.add(key)
            seen.append(key)
            await asyncio.sleep(0)
            if seen.count(key) < 3:
                q.add(key)  # re-added while we still hold it
            active.discard(key)
            q.done(key)

    workers = [asyncio.ensure_future(worker()) for _ in range(4)]
    for key in "abcde":
        q.add(key)
    await eventually(lambda: len(seen) == 15, what="15 items processed")
    q.shut_down()
    await asyncio.wait_for(asyncio.gather(*workers), 2)
    assert not overlap
    assert sorted(seen) == sorted("abcde" * 3)


async def test_done_without_readd_does_not_requeue() -> None:
    q = WorkQueue()
    q.add("x")
    await q.get()
    q.done("x")
    assert len(q) == 0


async def test_add_after_delivers_in_due_order_and_keeps_earliest_time() -> None:
    q = WorkQueue()
    q.add_after("late", 0.06)
    q.add_after("early", 0.01)
    q.add_after("early", 0.5)  # a later time never postpones an item
    q.add_after("now", 0)
    assert await asyncio.wait_for(q.get(), 1) == "now"
    assert q.num_waiting() == 2
    assert await asyncio.wait_for(q.get(), 1) == "early"
    assert await asyncio.wait_for(q.get(), 1) == "late"
    assert q.num_waiting() == 0


async def test_add_after_earlier_time_replaces_later_one() -> None:
    q = WorkQueue()
    loop = asyncio.get_running_loop()
    start = loop.time()
    q.add_after("k", 10)
    q.add_after("k", 0.01)
    assert await asyncio.wait_for(q.get(), 2) == "k"
    assert loop.time() - start < 5
    q.done("k")
    assert q.num_waiting() == 0


def test_item_exponential_backoff_grows_and_caps_and_forget_resets() -> None:
    rl = ItemExponentialRateLimiter(0.005, 1000.0)
    delays = [rl.when("a") for _ in range(5)]
    assert delays == [0.005, 0.01, 0.02, 0.04, 0.08]
    assert rl.num_requeues("a") == 5
    assert rl.when("b") == 0.005  # per item
    for _ in range(100):
        last = rl.when("a")
    assert last == 1000.0
    rl.forget("a")
    assert rl.num_requeues("a") == 0
    assert rl.when("a") == 0.005


def test_bucket_allows_burst_then_spaces_at_qps() -> None:
    now = [0.0]
    rl = BucketRateLimiter(qps=10, burst=100, clock=lambda: now[0])
    assert all(rl.when(i) == 0 for i in range(100))
    assert rl.when("x") == pytest.approx(0.1)
    assert rl.when("y") == pytest.approx(0.2)
    now[0] += 20.0  # refills, but never above the burst
    assert rl.when("z") == 0
    assert all(rl.when(i) == 0 for i in range(99))
    assert rl.when("w") > 0


def test_default_controller_limiter_is_max_of_both() -> None:
    now = [0.0]
    rl = default_controller_rate_limiter(clock=lambda: now[0])
    assert rl.when("a") == 0.005
    assert rl.when("a") == 0.01
    for i in range(98):
        rl.when(i)
    # bucket exhausted: its 0.1 s beats item "b"'s first 5 ms
    assert rl.when("b") == pytest.approx(0.1)
    assert rl.num_requeues("a") == 2
    rl.forget("a")
    assert rl.num_requeues("a") == 0


async def test_add_rate_limited_requeues_with_growing_delay() -> None:
    q = WorkQueue(rate_limiter=ItemExponentialRateLimiter(0.01, 1.0))
    q.add_rate_limited("k")
    q.add_rate_limited("k")  # second failure doubles, but the earlier due time wins
    assert q.num_requeues("k") == 2
    assert await asyncio.wait_for(q.get(), 1) == "k"
    q.done("k")
    q.forget("k")
    assert q.num_requeues("k") == 0


async def test_shutdown_wakes_waiting_getters_and_drains_remaining() -> None:
    q = WorkQueue()
    getters = [asyncio.ensure_future(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.shut_down()
    for g in getters:
        with pytest.raises(QueueShutDown):
            await asyncio.wait_for(g, 1)

    q2 = WorkQueue()
    q2.add("left")
    q2.shut_down()
    q2.add("ignored")
    q2.add_after("ignored-too", 0.01)
    assert await q2.get() == "left"  # queued work is still handed out
    with pytest.raises(QueueShutDown):
        await q2.get()
    assert q2.shutting_down


async def test_shutdown_cancels_delayed_items() -> None:
    q = WorkQueue()
    q.add_after("k", 0.01)
    q.shut_down()
    with pytest.raises(QueueShutDown):
        await asyncio.wait_for(q.get(), 1)
    assert q.num_waiting() == 0


async def test_shut_down_with_drain_waits_for_in_flight_items() -> None:
    q = WorkQueue()
    q.add("k")
    await q.get()
    drain = asyncio.ensure_future(q.shut_down_with_drain())
    await asyncio.sleep(0)
    assert not drain.done()
    q.done("k")
    await asyncio.wait_for(drain, 1)


async def test_cancelled_getter_does_not_swallow_an_item() -> None:
    q = WorkQueue()
    first = asyncio.ensure_future(q.get())
    second = asyncio.ensure_future(q.get())
    await asyncio.sleep(0)
    q.add("k")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it can take the item
    assert await asyncio.wait_for(second, 1) == "k"
