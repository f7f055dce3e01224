"""Watch: history replay then live events, in revision order, none missing, batches, ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kybernetes.storage import ADDED, DELETED, KV, MODIFIED, Compacted, Event, RevisionConflict, Store
from kybernetes.storage.sqlite import SqliteStore

from .conftest import wait_for


async def collect(w, n: int, timeout: float = 10.0) -> list[Event]:  # type: ignore[no-untyped-def]
    out: list[Event] = []

    async def run() -> None:
        while len(out) < n:
            batch = await w.next_batch()
            assert batch, "watch ended early"
            out.extend(batch)

    await asyncio.wait_for(run(), timeout)
    return out


async def test_event_shapes(store: Store) -> None:
    w = store.watch("/a", 0)
    await store.create("/a", b"1")
    await store.update("/a", b"2", 1)
    await store.delete("/a", 2)
    evs = await collect(w, 3)
    assert evs[0] == Event(ADDED, KV("/a", b"1", 1, 1), None)
    assert evs[1] == Event(MODIFIED, KV("/a", b"2", 2, 1), KV("/a", b"1", 1, 1))
    assert evs[2] == Event(DELETED, KV("/a", b"2", 3, 1), KV("/a", b"2", 2, 1))
    w.close()


@pytest.mark.parametrize("ring_size", [10_000, 3])
async def test_replay_from_log_matches_live_events(db_path: Path, ring_size: int) -> None:
    s = SqliteStore(db_path, ring_size=ring_size, max_batch=4)
    try:
        live = s.watch("", 0)
        await s.create("/w/a", b"1")
        await s.create("/other", b"x")
        await s.update("/w/a", b"2", 0)
        await s.create("/w/b", b"1")
        await s.delete("/w/a")
        await s.update("/other", b"y", 0)
        await s.delete("/w/b")
        await s.create("/w/a", b"again")
        live_events = await collect(live, 8)
        # A watcher that starts later replays the same events, whether from the ring or from kv_log.
        for after in range(8):
            replayed = await collect(s.watch("", after), 8 - after)
            assert replayed == live_events[after:]
        prefixed = await collect(s.watch("/w/", 2), 4)
        assert prefixed == [e for e in live_events[2:] if e.kv.key.startswith("/w/")]
    finally:
        await s.close()


@pytest.mark.parametrize("ring_size", [10_000, 16])
async def test_concurrent_writers_watcher_sees_every_acknowledged_write_in_order(
    db_path: Path, ring_size: int
) -> None:
    s = SqliteStore(db_path, ring_size=ring_size, max_batch=32)
    try:
        await s.create("/c/seed", b"")
        early = s.watch("/c/", 0)  # replays the seed, then live
        acked: list[int] = []

        async def writer(w: int) -> None:
            for i in range(60):
                key = f"/c/{w}/{i % 5}"
                cur = await s.get(key)
                try:
                    if cur is None:
                        kv = await s.create(key, b"%d" % i)
                    elif i % 4 == 0:
                        kv = await s.delete(key, cur.mod_revision)
                    else:
                        kv = await s.update(key, b"%d" % i, cur.mod_revision)
                except RevisionConflict:
                    continue
                acked.append(kv.mod_revision)
                await s.create(f"/noise/{w}/{i}", b"")  # events the prefix filter must skip

        # A watcher that starts mid-storm from an old revision must catch up and merge into live.
        async def late_watcher() -> list[Event]:
            await wait_for(lambda: len(acked) > 50)
            return await collect(s.watch("/c/", 1), 1 + 8 * 60 - 1)

        late = asyncio.create_task(late_watcher())
        await asyncio.gather(*(writer(w) for w in range(8)))
        assert len(acked) == 8 * 60
        early_events = await collect(early, 1 + len(acked))
        revs = [e.kv.mod_revision for e in early_events]
        assert revs == sorted(set(revs)), "strictly increasing"
        assert revs == [1, *sorted(acked)]
        assert all(e.kv.key.startswith("/c/") for e in early_events)
        assert await late == early_events[1:]
    finally:
        await s.close()


async def test_watch_from_future_revision_waits(store: Store) -> None:
    await store.create("/a", b"")
    w = store.watch("/", 3)
    await store.create("/b", b"")
    await store.create("/c", b"")
    await store.create("/d", b"")
    (ev,) = await collect(w, 1)
    assert ev.kv.key == "/d"


async def test_close_ends_pending_iteration(store: Store) -> None:
    w = store.watch("/", 0)

    async def consume() -> list[Event]:
        return [ev async for ev in w]

    task = asyncio.create_task(consume())
    await store.create("/a", b"")
    await wait_for(lambda: w.last == 1)  # type: ignore[attr-defined]
    w.close()
    assert [e.kv.key for e in await asyncio.wait_for(task, 5)] == ["/a"]
    assert w.closed and await w.next_batch() == []


async def test_store_close_ends_watches(db_path: Path) -> None:
    s = SqliteStore(db_path)
    w = s.watch("/", 0)
    task = asyncio.create_task(w.next_batch())
    await asyncio.sleep(0)
    await s.close()
    assert await asyncio.wait_for(task, 5) == []


async def test_iteration_and_batches_mix(store: Store) -> None:
    w = store.watch("/", 0)
    for i in range(5):
        await store.create(f"/{i}", b"")
    first = await w.__anext__()
    rest = await w.next_batch()
    assert [e.kv.mod_revision for e in [first, *rest]] == [1, 2, 3, 4, 5]


async def test_watcher_overtaken_by_compaction_gets_compacted(db_path: Path) -> None:
    s = SqliteStore(db_path, ring_size=2, max_batch=2)
    try:
        w = s.watch("/", 0)
        for i in range(10):
            await s.create(f"/{i}", b"")
        assert len(await w.next_batch()) == 2  # from the log: the ring holds only recent events
        await s.update("/5", b"", 0)
        await s.compact(6)
        with pytest.raises(Compacted):
            await w.next_batch()
        with pytest.raises(Compacted):
            s.watch("/", 5)
        w6 = s.watch("/", 6)  # exactly at the compacted revision: nothing needed is gone
        evs = await collect(w6, 5)
        assert [e.kv.mod_revision for e in evs] == [7, 8, 9, 10, 11]
        assert evs[-1].prev == KV("/5", b"", 6, 6)  # the replaced version outlives compaction
    finally:
        await s.close()
