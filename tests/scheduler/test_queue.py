"""Scheduling queue semantics with a fake clock: order, backoff, unschedulable moves and flushes."""

from __future__ import annotations

import asyncio

from kybernetes.scheduler.queue import (
    ASSIGNED_POD_ADD,
    ASSIGNED_POD_DELETE,
    NODE_ADD,
    SchedulingQueue,
)

from .helpers import make_pod


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def q_with_clock() -> tuple[SchedulingQueue, Clock]:
    clock = Clock()
    return SchedulingQueue(clock=clock), clock


def test_priority_then_fifo_order():
    q, clock = q_with_clock()
    q.add(make_pod("low-1", priority=1))
    clock.now += 1
    q.add(make_pod("high", priority=100))
    clock.now += 1
    q.add(make_pod("low-2", priority=1))
    assert [q.pop_nowait().key for _ in range(3)] == ["default/high", "default/low-1", "default/low-2"]
    assert q.pop_nowait() is None


def test_backoff_doubles_to_max():
    q, _ = q_with_clock()
    q.add(make_pod("p"))
    qp = q.pop_nowait()
    durations = []
    for attempts in range(1, 7):
        qp.attempts = attempts
        durations.append(q.backoff_duration(qp))
    assert durations == [1, 2, 4, 8, 10, 10]


def test_unschedulable_moves_on_relevant_events_only():
    q, clock = q_with_clock()
    q.add(make_pod("p"))
    qp = q.pop_nowait()
    qp.unschedulable_plugins = {"NodeResourcesFit"}
    q.add_unschedulable(qp, q.scheduling_cycle)
    assert q.where("default/p") == "unschedulable"
    assert q.move_all(ASSIGNED_POD_ADD) == 0  # another pod landing cannot free cpu
    assert q.where("default/p") == "unschedulable"
    assert q.move_all(ASSIGNED_POD_DELETE) == 1
    # Still within its 1 s backoff: waits in backoff, then goes active.
    assert q.where("default/p") == "backoff"
    assert q.flush_backoff() == 0
    clock.now += 1.0
    assert q.flush_backoff() == 1
    assert q.pop_nowait().key == "default/p"


def test_event_during_cycle_sends_failure_to_backoff():
    q, _ = q_with_clock()
    q.add(make_pod("p"))
    qp = q.pop_nowait()
    cycle = q.scheduling_cycle
    q.move_all(NODE_ADD)  # a node appeared while p was being scheduled
    q.add_unschedulable(qp, cycle)
    assert q.where("default/p") == "backoff"


def test_unschedulable_flushed_after_max_duration_and_error_goes_to_backoff():
    q, clock = q_with_clock()
    q.add(make_pod("p"))
    qp = q.pop_nowait()
    q.add_unschedulable(qp, q.scheduling_cycle)
    clock.now += 299
    assert q.flush_unschedulable() == 0
    clock.now += 1
    assert q.flush_unschedulable() == 1 and q.where("default/p") == "active"
    qp = q.pop_nowait()
    q.add_unschedulable(qp, q.scheduling_cycle, error=True)
    assert q.where("default/p") == "backoff"


def test_delete_and_update():
    q, _ = q_with_clock()
    q.add(make_pod("p"))
    qp = q.pop_nowait()
    q.delete(make_pod("p"))  # deleted while in flight: not requeued
    q.add_unschedulable(qp, q.scheduling_cycle)
    assert len(q) == 0 and "default/p" not in q
    q.add(make_pod("u"))
    qp = q.pop_nowait()
    q.add_unschedulable(qp, q.scheduling_cycle)
    changed = make_pod("u", tolerations=[{"operator": "Exists"}])
    q.update(qp.pod, changed)
    assert q.where("default/u") in ("active", "backoff")
    assert q.get("default/u").info.tolerations == [{"operator": "Exists"}]


async def test_pop_waits_and_backoff_timer_fires():
    q = SchedulingQueue(initial_backoff=0.01)
    waiter = asyncio.ensure_future(q.pop())
    await asyncio.sleep(0)
    assert not waiter.done()
    q.add(make_pod("p"))
    qp = await asyncio.wait_for(waiter, 5)
    q.add_unschedulable(qp, q.scheduling_cycle, error=True)
    again = await asyncio.wait_for(q.pop(), 5)  # woken by the backoff timer, no polling
    assert again.key == "default/p" and again.attempts == 2
    q.close()
