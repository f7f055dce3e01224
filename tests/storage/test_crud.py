"""CRUD, compare-and-swap, list/count, snapshot reads, compaction, restart and the factory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kybernetes.storage import (
    KV,
    Compacted,
    Compactor,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    Store,
    StoreClosed,
    StoreError,
    open_store,
    prefix_end,
)
from kybernetes.storage.sqlite import SqliteStore


async def test_create_get_update_delete(store: Store) -> None:
    assert await store.current_revision() == 0
    assert await store.get("/a") is None
    kv = await store.create("/a", b"1")
    assert kv == KV("/a", b"1", 1, 1)
    assert await store.get("/a") == kv
    kv2 = await store.update("/a", b"2", 1)
    assert kv2 == KV("/a", b"2", 2, 1)
    kv3 = await store.update("/a", b"3", 0)  # unconditional
    assert kv3 == KV("/a", b"3", 3, 1)
    gone = await store.delete("/a")
    assert gone == KV("/a", b"3", 4, 1)  # old value, delete revision
    assert await store.get("/a") is None
    assert await store.current_revision() == 4
    again = await store.create("/a", b"new")
    assert again == KV("/a", b"new", 5, 5)  # a new lifecycle: fresh create_revision


async def test_errors(store: Store) -> None:
    await store.create("/a", b"1")
    with pytest.raises(KeyExists):
        await store.create("/a", b"x")
    with pytest.raises(KeyNotFound):
        await store.update("/missing", b"x", 0)
    with pytest.raises(KeyNotFound):
        await store.delete("/missing")
    with pytest.raises(RevisionConflict) as ei:
        await store.update("/a", b"x", 99)
    assert ei.value.current == KV("/a", b"1", 1, 1)
    with pytest.raises(RevisionConflict) as ei:
        await store.delete("/a", 99)
    assert ei.value.current is not None and ei.value.current.mod_revision == 1
    # Failed writes consume no revision and change nothing.
    assert await store.current_revision() == 1
    assert await store.get("/a") == KV("/a", b"1", 1, 1)
    assert (await store.delete("/a", 1)).mod_revision == 2
    with pytest.raises(TypeError):
        await store.create("/b", "not bytes")  # type: ignore[arg-type]


async def test_failures_in_a_group_commit_do_not_affect_the_others(store: Store) -> None:
    await store.create("/dup", b"x")
    results = await asyncio.gather(
        store.create("/n1", b"1"),
        store.create("/dup", b"y"),
        store.update("/nope", b"z", 0),
        store.create("/n2", b"2"),
        return_exceptions=True,
    )
    assert isinstance(results[1], KeyExists) and isinstance(results[2], KeyNotFound)
    assert [r.mod_revision for r in (results[0], results[3])] == [2, 3]  # type: ignore[union-attr]
    assert await store.current_revision() == 3


async def test_cas_concurrent_writers_exactly_one_wins_each_round(store: Store) -> None:
    kv = await store.create("/counter", b"0")
    writers = 8
    for rnd in range(25):
        results = await asyncio.gather(
            *(store.update("/counter", b"%d-%d" % (rnd, w), kv.mod_revision) for w in range(writers)),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, KV)]
        losers = [r for r in results if isinstance(r, RevisionConflict)]
        assert len(winners) == 1 and len(losers) == writers - 1
        assert all(lo.current == winners[0] for lo in losers)
        kv = winners[0]
        assert await store.get("/counter") == kv
    assert kv.mod_revision == 26


async def test_cas_interleaved_read_modify_write_loses_no_increment(store: Store) -> None:
    await store.create("/n", b"0")

    async def incr(times: int) -> int:
        conflicts = 0
        for _ in range(times):
            while True:
                cur = await store.get("/n")
                assert cur is not None
                try:
                    await store.update("/n", b"%d" % (int(cur.value) + 1), cur.mod_revision)
                    break
                except RevisionConflict:
                    conflicts += 1
        return conflicts

    conflicts = await asyncio.gather(*(incr(20) for _ in range(5)))
    final = await store.get("/n")
    assert final is not None and int(final.value) == 100
    assert sum(conflicts) > 0  # the writers really raced


async def test_list_prefix_limit_start_key(store: Store) -> None:
    for ns, name in [("b", "x"), ("a", "z"), ("a", "y"), ("ab", "q"), ("c", "w")]:
        await store.create(f"/registry/pods/{ns}/{name}", ns.encode())
    await store.create("/registry/podsx/a/y", b"other resource")
    kvs, rev, more = await store.list("/registry/pods/")
    assert [k.key for k in kvs] == [
        "/registry/pods/a/y",
        "/registry/pods/a/z",
        "/registry/pods/ab/q",
        "/registry/pods/b/x",
        "/registry/pods/c/w",
    ]
    assert rev == 6 and not more
    kvs, _, _ = await store.list("/registry/pods/a/")
    assert [k.key for k in kvs] == ["/registry/pods/a/y", "/registry/pods/a/z"]
    kvs, _, more = await store.list("/registry/pods/", limit=2)
    assert [k.key for k in kvs] == ["/registry/pods/a/y", "/registry/pods/a/z"] and more
    kvs, _, more = await store.list("/registry/pods/", limit=2, start_key="/registry/pods/a/z\x00")
    assert [k.key for k in kvs] == ["/registry/pods/ab/q", "/registry/pods/b/x"] and more
    kvs, _, more = await store.list("/registry/pods/", limit=3, start_key="/registry/pods/b/x")
    assert [k.key for k in kvs] == ["/registry/pods/b/x", "/registry/pods/c/w"] and not more
    kvs, _, more = await store.list("/registry/pods/", limit=1, start_key="/registry/pods/c/w")
    assert len(kvs) == 1 and not more  # exactly limit left is not "more"
    kvs, _, _ = await store.list("")
    assert len(kvs) == 6
    assert (await store.list("/nothing/"))[0] == []
    assert await store.count("/registry/pods/") == 5
    assert await store.count("/registry/pods/a") == 3  # "a/" and "ab/"
    assert await store.count("") == 6
    await store.delete("/registry/pods/a/y")
    assert await store.count("/registry/pods/") == 4
    kvs, rev, _ = await store.list("/registry/pods/")
    assert "/registry/pods/a/y" not in [k.key for k in kvs] and rev == 7


async def test_keys_with_non_ascii_and_max_code_points(store: Store) -> None:
    assert prefix_end("/a/") == "/a0" and prefix_end("") is None and prefix_end("\U0010ffff") is None
    assert prefix_end("a\U0010ffff") == "b"
    for k in ["/ü/1", "/ü/2", "/ü\U0010ffff", "/v"]:
        await store.create(k, b"")
    assert [k.key for k in (await store.list("/ü/"))[0]] == ["/ü/1", "/ü/2"]
    assert [k.key for k in (await store.list("/ü"))[0]] == ["/ü/1", "/ü/2", "/ü\U0010ffff"]


async def test_list_at_historical_revision_is_a_consistent_snapshot(store: Store) -> None:
    for i in range(6):
        await store.create(f"/p/{i}", b"v1")
    snap_kvs, snap_rev, _ = await store.list("/p/")
    assert snap_rev == 6
    await store.update("/p/0", b"v2", 0)
    await store.delete("/p/1")
    await store.create("/p/6", b"v1")
    await store.update("/p/0", b"v3", 0)
    await store.delete("/p/0")
    await store.create("/p/0", b"reborn")
    # Page through the old snapshot while the present moves on.
    got, start = [], ""
    while True:
        kvs, rev, more = await store.list("/p/", revision=snap_rev, limit=2, start_key=start)
        assert rev == snap_rev
        got += kvs
        if not more:
            break
        start = kvs[-1].key + "\x00"
    assert got == snap_kvs
    kvs, _, _ = await store.list("/p/", revision=8)  # after update /p/0 and delete /p/1
    assert [(k.key, k.value, k.mod_revision) for k in kvs][:2] == [("/p/0", b"v2", 7), ("/p/2", b"v1", 3)]
    kvs, _, _ = await store.list("/p/", revision=11)  # /p/0 deleted at 11
    assert "/p/0" not in [k.key for k in kvs]
    now_kvs, now_rev, _ = await store.list("/p/")
    assert (await store.list("/p/", revision=now_rev))[0] == now_kvs
    with pytest.raises(FutureRevision):
        await store.list("/p/", revision=now_rev + 1)


async def test_compaction(store: Store) -> None:
    await store.create("/k/a", b"a1")  # 1
    await store.update("/k/a", b"a2", 0)  # 2
    await store.create("/k/b", b"b1")  # 3
    await store.delete("/k/b")  # 4
    await store.update("/k/a", b"a3", 0)  # 5
    await store.create("/k/c", b"c1")  # 6
    before = {r: (await store.list("/k/", revision=r))[0] for r in range(4, 7)}
    await store.compact(4)
    assert await store.compacted_revision() == 4
    with pytest.raises(Compacted) as ei:
        await store.list("/k/", revision=3)
    assert ei.value.compact_revision == 4
    with pytest.raises(Compacted):
        store.watch("/k/", 3)
    # Everything a read at or after the compacted revision can see is still there.
    for r, kvs in before.items():
        assert (await store.list("/k/", revision=r))[0] == kvs
    await store.compact(4)  # idempotent
    await store.compact(2)  # older than compacted: no-op
    with pytest.raises(FutureRevision):
        await store.compact(7)
    await store.compact(6)
    assert (await store.list("/k/"))[0] == before[6]
    assert await store.current_revision() == 6
    if isinstance(store, SqliteStore):
        rows = store._db.execute("SELECT revision FROM kv_log ORDER BY revision").fetchall()
        assert [r[0] for r in rows] == [5, 6]  # only the live versions remain


async def test_compaction_in_chunks_matches_one_shot(tmp_path: Path) -> None:
    async def history(path: Path, chunk: int) -> list[tuple[int, ...]]:
        s = SqliteStore(path)
        try:
            for i in range(40):
                key = f"/k/{i % 7}"
                cur = await s.get(key)
                if cur is None:
                    await s.create(key, b"%d" % i)
                elif i % 3 == 0:
                    await s.delete(key)
                else:
                    await s.update(key, b"%d" % i, cur.mod_revision)
            await s.compact(17, chunk=chunk)
            await s.compact(33, chunk=chunk)
            assert await s.check() == []
            return s._db.execute("SELECT * FROM kv_log ORDER BY revision").fetchall()
        finally:
            await s.close()

    assert await history(tmp_path / "a.db", 3) == await history(tmp_path / "b.db", 1000)


async def test_revision_survives_compacting_away_trailing_tombstones(db_path: Path) -> None:
    s = open_store(db_path)
    await s.create("/x", b"1")
    await s.delete("/x")
    await s.compact(2)
    await s.close()
    s = open_store(db_path)
    try:
        assert await s.current_revision() == 2  # never goes backwards
        assert (await s.create("/y", b"")).mod_revision == 3
        assert await s.compacted_revision() == 2
    finally:
        await s.close()


async def test_compactor_keeps_one_interval_of_history(store: Store) -> None:
    c = Compactor(store, interval=300)
    await store.create("/a", b"")
    assert await c.tick() == 0  # first tick only remembers revision 1
    await store.update("/a", b"x", 0)
    assert await c.tick() == 1
    assert await store.compacted_revision() == 1
    await store.list("", revision=1)  # still readable: exactly one interval back


async def test_restart_keeps_data_and_revision(db_path: Path) -> None:
    s = open_store(db_path)
    for i in range(50):
        await s.create(f"/r/{i:02d}", b"%d" % i)
    await s.update("/r/07", b"seven", 0)
    await s.delete("/r/08")
    before, rev, _ = await s.list("/r/")
    await s.close()
    with pytest.raises(StoreClosed):
        await s.get("/r/00")
    s = open_store(f"sqlite://{db_path}")
    try:
        assert await s.current_revision() == rev == 52
        assert (await s.list("/r/"))[0] == before
        assert (await s.list("/r/", revision=51))[0][8].key == "/r/08"  # history survives too
        assert (await s.create("/r/new", b"")).mod_revision == 53
        events = [ev async for ev in _take(s.watch("/r/", 50), 3)]
        assert [(e.type, e.kv.mod_revision) for e in events] == [("MODIFIED", 51), ("DELETED", 52), ("ADDED", 53)]
    finally:
        await s.close()


async def _take(w, n):  # type: ignore[no-untyped-def]
    async with w:
        async for ev in w:
            yield ev
            n -= 1
            if n == 0:
                return


async def test_second_process_cannot_open_the_same_file(db_path: Path) -> None:
    s = open_store(db_path)
    try:
        with pytest.raises(StoreError, match="in use"):
            open_store(db_path)
    finally:
        await s.close()
    await open_store(db_path).close()  # released on close


async def test_open_store_forms(tmp_path: Path) -> None:
    s = open_store(tmp_path)  # a directory: the default file inside it
    await s.create("/x", b"")
    await s.close()
    assert (tmp_path / "kybernetes.db").exists()
    s = open_store(f"sqlite://{tmp_path}/sub/dir/s.db")
    await s.close()
    assert (tmp_path / "sub/dir/s.db").exists()
    with pytest.raises(ValueError):
        open_store("etcdx://localhost:2379")
    with pytest.raises(ValueError):
        open_store("sqlite://host/path.db")
