"""The embedded store: one SQLite file (WAL mode) holding an MVCC log of every write.

Schema:
  kv_log      one row per revision: the key, its value, create_revision, the revision
              of the version it replaced (prev_revision, 0 for a creation) and a
              deleted flag (tombstones store no value; a DELETED event takes the value
              from the previous version). Indexed by (key, revision) for snapshot reads.
  kv_current  key -> revision of its live version; get, list and count read this,
              so they never walk old versions.
  meta        the compacted revision and the schema version.

All SQL runs synchronously on the event-loop thread: statements are small and a
thread hop would cost more than they do. Writes are group-committed: every write
issued during one loop iteration is applied in one transaction and acknowledged
only after COMMIT returns, so with WAL and synchronous=NORMAL a kill -9 loses
nothing acknowledged (a power cut may lose the last few commits). Because a
transaction starts and commits inside one synchronous call, readers on the same
connection never see a partial write. WAL checkpoints, which fsync, run on a
separate connection in a worker thread so they never stall the loop.

Watchers are served from an in-memory ring of recent events and, when they fall
behind it, from kv_log; nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import sqlite3
import weakref
from typing import Any

from kybernetes.storage.base import (
    ADDED,
    DELETED,
    KV,
    MODIFIED,
    Compacted,
    Event,
    FutureRevision,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    Store,
    StoreClosed,
    StoreError,
    Watch,
    prefix_end,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv_log (
    revision INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    deleted INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_log_key ON kv_log (key, revision);
CREATE TABLE IF NOT EXISTS kv_current (
    key TEXT PRIMARY KEY,
    revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

_CREATE, _UPDATE, _DELETE = 1, 2, 3

_GET = (
    "SELECT l.value, l.create_revision, l.revision FROM kv_current c"
    " JOIN kv_log l ON l.revision = c.revision WHERE c.key = ?"
)
_INSERT_LOG = "INSERT INTO kv_log VALUES (?, ?, ?, ?, ?, ?)"

# Range conditions come in two shapes: [lo, hi) and, for an unbounded prefix, [lo, ...).
_LIST_CURRENT = (
    "SELECT c.key, l.value, l.create_revision, l.revision FROM kv_current c"
    " JOIN kv_log l ON l.revision = c.revision WHERE c.key >= ?{hi} ORDER BY c.key LIMIT ?"
)
# The version of a key live at revision R is its newest row at or below R; walking the
# (key, revision) index keeps the output in key order, so LIMIT stops the scan early.
_LIST_AT = (
    "SELECT l.key, l.value, l.create_revision, l.revision FROM kv_log l"
    " WHERE l.key >= ?{hi} AND l.revision <= ? AND NOT EXISTS ("
    "  SELECT 1 FROM kv_log n WHERE n.key = l.key AND n.revision > l.revision AND n.revision <= ?)"
    " AND l.deleted = 0 ORDER BY l.key LIMIT ?"
)
_COUNT = "SELECT count(*) FROM kv_current WHERE key >= ?{hi}"
# The unary + keeps the planner on the revision (rowid) range instead of the key index.
_LOG_RANGE = (
    "SELECT l.revision, l.key, l.value, l.create_revision, l.deleted, p.value, p.revision"
    " FROM kv_log l LEFT JOIN kv_log p ON p.revision = l.prev_revision"
    " WHERE l.revision > ? AND l.revision <= ? AND +l.key >= ?{hi} ORDER BY l.revision LIMIT ?"
)


def _sql(template: str, hi: str | None, column: str) -> str:
    return template.format(hi="" if hi is None else f" AND {column} < ?")


def _sqls(template: str, column: str) -> tuple[str, str]:
    # (unbounded, bounded) variants, built once so sqlite3's statement cache hits.
    return _sql(template, None, column), _sql(template, "", column)


_LIST_CURRENT_SQL = _sqls(_LIST_CURRENT, "c.key")
_LIST_AT_SQL = _sqls(_LIST_AT, "l.key")
_COUNT_SQL = _sqls(_COUNT, "key")
_LOG_RANGE_SQL = _sqls(_LOG_RANGE, "+l.key")


def _range(prefix: str, start_key: str = "") -> tuple[tuple[str, ...], int]:
    """(bound parameters, variant index) for keys starting with prefix and >= start_key."""
    lo = max(prefix, start_key)
    hi = prefix_end(prefix)
    return ((lo,), 0) if hi is None else ((lo, hi), 1)


class SqliteStore(Store):
    """A Store in one SQLite file; see the module docstring for the design."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        ring_size: int = 10_000,
        max_batch: int = 1_000,
        checkpoint_every: int = 1_000,
        wal_limit_frames: int = 4_096,
    ) -> None:
        self.path = os.fspath(path)
        self._ring_size = ring_size
        self._max_batch = max_batch
        self._checkpoint_every = checkpoint_every
        self._wal_limit_frames = wal_limit_frames
        self._writes_since_checkpoint = 0
        self._lock_fd = self._lock(self.path + ".lock")
        db: sqlite3.Connection | None = None
        try:
            self._db = db = self._connect(self.path)
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('compacted', 0)", (SCHEMA_VERSION,)
            )
            schema = self._meta("schema")
            if schema != SCHEMA_VERSION:
                raise StoreError(f"{self.path}: unsupported schema version {schema}")
            self._compacted = self._meta("compacted")
            top = self._db.execute("SELECT max(revision) FROM kv_log").fetchone()[0] or 0
        except BaseException:
            if db is not None:
                db.close()
            os.close(self._lock_fd)
            raise
        # Compaction can drop the newest rows (trailing tombstones); the compacted
        # revision, persisted with it, keeps the counter from going backwards.
        self._rev = max(top, self._compacted)
        self._closed = False
        self._pending: list[tuple[int, str, bytes, int, asyncio.Future[KV]]] = []
        self._flush_scheduled = False
        # Recent events: _ring[i] has revision _ring_base + i (every revision is one event).
        self._ring: list[Event] = []
        self._ring_base = self._rev + 1
        self._waiters: list[asyncio.Future[None]] = []
        # Weak: a watch its owner dropped without close() must not live on here.
        self._watches: weakref.WeakSet[SqliteWatch] = weakref.WeakSet()
        self._ckpt_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._ckpt_db: sqlite3.Connection | None = None
        self._ckpt_running: asyncio.Future[Any] | None = None
        self._compacting = False

    # -- setup ---------------------------------------------------------------

    @staticmethod
    def _lock(path: str) -> int:
        # Two processes on one file would each keep their own revision counter.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"{path}: the store is in use by another process") from None
        return fd

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves. The loop thread is
        # the only user of this connection; check_same_thread only gets in the way
        # of opening the store before the loop starts.
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA cache_size = -65536")
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute("PRAGMA mmap_size = 268435456")
        db.execute("PRAGMA journal_size_limit = 67108864")
        return db

    def _meta(self, name: str) -> int:
        return self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()

    # -- reads ---------------------------------------------------------------

    async def get(self, key: str) -> KV | None:
        self._check_open()
        row = self._db.execute(_GET, (key,)).fetchone()
        if row is None:
            return None
        return KV(key, row[0], row[2], row[1])

    async def list(
        self, prefix: str, *, revision: int = 0, limit: int = 0, start_key: str = ""
    ) -> tuple[list[KV], int, bool]:
        self._check_open()
        current = self._rev
        if revision:
            if revision < self._compacted:
                raise Compacted(self._compacted, revision)
            if revision > current:
                raise FutureRevision(revision, current)
        bounds, variant = _range(prefix, start_key)
        sql_limit = limit + 1 if limit > 0 else -1
        if not revision or revision == current:
            rows = self._db.execute(_LIST_CURRENT_SQL[variant], (*bounds, sql_limit)).fetchall()
            at = current
        else:
            rows = self._db.execute(_LIST_AT_SQL[variant], (*bounds, revision, revision, sql_limit)).fetchall()
            at = revision
        more = limit > 0 and len(rows) > limit
        if more:
            del rows[limit:]
        return [KV(k, v, m, c) for k, v, c, m in rows], at, more

    async def count(self, prefix: str) -> int:
        self._check_open()
        bounds, variant = _range(prefix)
        return self._db.execute(_COUNT_SQL[variant], bounds).fetchone()[0]

    async def current_revision(self) -> int:
        self._check_open()
        return self._rev

    async def compacted_revision(self) -> int:
        self._check_open()
        return self._compacted

    # -- writes --------------------------------------------------------------

    async def create(self, key: str, value: bytes) -> KV:
        return await self._submit(_CREATE, key, value, 0)

    async def update(self, key: str, value: bytes, expected_revision: int) -> KV:
        return await self._submit(_UPDATE, key, value, expected_revision)

    async def delete(self, key: str, expected_revision: int = 0) -> KV:
        return await self._submit(_DELETE, key, b"", expected_revision)

    def _submit(self, op: int, key: str, value: bytes, expected: int) -> asyncio.Future[KV]:
        self._check_open()
        if type(value) is not bytes:
            value = bytes(value)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[KV] = loop.create_future()
        self._pending.append((op, key, value, expected, fut))
        if not self._flush_scheduled:
            # Deferring to the next loop iteration lets every writer that runs in this
            # one join the same transaction (group commit).
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        if self._pending:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if batch:
            self._commit(batch)

    def _commit(self, batch: list[tuple[int, str, bytes, int, asyncio.Future[KV]]]) -> None:
        db = self._db
        start_rev = self._rev
        events: list[Event] = []
        outcomes: list[tuple[asyncio.Future[KV], KV | StoreError]] = []
        try:
            db.execute("BEGIN")
            for op, key, value, expected, fut in batch:
                if fut.cancelled():
                    # The caller gave up before the write happened; don't apply it behind its back.
                    continue
                try:
                    ev = self._apply(op, key, value, expected)
                except StoreError as e:
                    outcomes.append((fut, e))
                    continue
                events.append(ev)
                outcomes.append((fut, ev.kv))
            db.execute("COMMIT")
        except Exception as e:
            if db.in_transaction:
                db.rollback()
            self._rev = start_rev
            log.exception("store write transaction failed")
            for *_, fut in batch:
                if not fut.done():
                    fut.set_exception(StoreError(f"write failed: {e}"))
            return
        if events:
            self._publish(events)
        for fut, outcome in outcomes:
            if fut.done():
                continue
            if isinstance(outcome, KV):
                fut.set_result(outcome)
            else:
                fut.set_exception(outcome)
        self._writes_since_checkpoint += len(batch)
        self._maybe_checkpoint()

    def _apply(self, op: int, key: str, value: bytes, expected: int) -> Event:
        db = self._db
        rev = self._rev + 1
        if op == _CREATE:
            try:
                db.execute("INSERT INTO kv_current VALUES (?, ?)", (key, rev))
            except sqlite3.IntegrityError:
                raise KeyExists(key) from None
            db.execute(_INSERT_LOG, (rev, key, value, rev, 0, 0))
            self._rev = rev
            return Event(ADDED, KV(key, value, rev, rev), None)
        row = db.execute(_GET, (key,)).fetchone()
        if row is None:
            raise KeyNotFound(key)
        prev = KV(key, row[0], row[2], row[1])
        if expected and prev.mod_revision != expected:
            raise RevisionConflict(key, expected, prev)
        if op == _UPDATE:
            db.execute(_INSERT_LOG, (rev, key, value, prev.create_revision, prev.mod_revision, 0))
            db.execute("UPDATE kv_current SET revision = ? WHERE key = ?", (rev, key))
            self._rev = rev
            return Event(MODIFIED, KV(key, value, rev, prev.create_revision), prev)
        db.execute(_INSERT_LOG, (rev, key, b"", prev.create_revision, prev.mod_revision, 1))
        db.execute("DELETE FROM kv_current WHERE key = ?", (key,))
        self._rev = rev
        return Event(DELETED, KV(key, prev.value, rev, prev.create_revision), prev)

    # -- watch ---------------------------------------------------------------

    def watch(self, prefix: str, after_revision: int) -> SqliteWatch:
        self._check_open()
        if after_revision < self._compacted:
            raise Compacted(self._compacted, after_revision + 1)
        w = SqliteWatch(self, prefix, after_revision)
        self._watches.add(w)
        return w

    def _publish(self, events: list[Event]) -> None:
        ring = self._ring
        ring.extend(events)
        if len(ring) > 2 * self._ring_size:
            drop = len(ring) - self._ring_size
            del ring[:drop]
            self._ring_base += drop
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _events_after(self, w: SqliteWatch) -> list[Event]:
        """Events for w after w.last (advancing it), at most one batch; [] if caught up."""
        last = w.last
        if last >= self._rev:
            return []
        if last + 1 >= self._ring_base:
            start = last + 1 - self._ring_base
            chunk = self._ring[start : start + self._max_batch]
            w.last = last + len(chunk)
            if not w.prefix:
                return chunk
            prefix = w.prefix
            return [ev for ev in chunk if ev.kv.key.startswith(prefix)]
        # Fallen behind the ring: catch up from the log, which keeps every revision
        # above the compacted one.
        if last < self._compacted:
            raise Compacted(self._compacted, last + 1)
        upto = self._ring_base - 1
        bounds, variant = _range(w.prefix)
        rows = self._db.execute(
            _LOG_RANGE_SQL[variant], (last, upto, *bounds, self._max_batch)
        ).fetchall()
        w.last = upto if len(rows) < self._max_batch else rows[-1][0]
        events = []
        for rev, key, value, create, deleted, pvalue, prev_rev in rows:
            prev = KV(key, pvalue, prev_rev, create) if prev_rev is not None else None
            if deleted:
                # Compaction keeps every version that a revision above it replaced, so
                # prev is always there for events the watcher may still receive.
                events.append(Event(DELETED, KV(key, pvalue if pvalue is not None else b"", rev, create), prev))
            elif prev is None:
                events.append(Event(ADDED, KV(key, value, rev, create), None))
            else:
                events.append(Event(MODIFIED, KV(key, value, rev, create), prev))
        return events

    def _wait_for_write(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        return fut

    # -- compaction ----------------------------------------------------------

    async def compact(self, revision: int, *, chunk: int = 5_000) -> None:
        self._check_open()
        if revision > self._rev:
            raise FutureRevision(revision, self._rev)
        if self._compacting:
            raise StoreError("a compaction is already running")
        self._compacting = True
        try:
            # Only revisions above the previous compaction can supersede anything new:
            # a row is dropped when its successor (the row naming it prev_revision) is
            # at or below the target, and tombstones at or below the target go too.
            lo = self._compacted
            db = self._db
            while lo < revision and not self._closed:
                hi = min(lo + chunk, revision)
                db.execute("BEGIN")
                try:
                    db.execute(
                        "DELETE FROM kv_log WHERE revision IN (SELECT prev_revision FROM kv_log"
                        " WHERE revision > ? AND revision <= ? AND prev_revision > 0)",
                        (lo, hi),
                    )
                    db.execute("DELETE FROM kv_log WHERE revision > ? AND revision <= ? AND deleted = 1", (lo, hi))
                    db.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (hi,))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.rollback()
                    raise
                self._compacted = lo = hi
                # Let writers and readers run between chunks of a large compaction.
                await asyncio.sleep(0)
        finally:
            self._compacting = False
        self._writes_since_checkpoint += self._checkpoint_every
        self._maybe_checkpoint()

    # -- checkpoints ---------------------------------------------------------

    def _maybe_checkpoint(self) -> None:
        if self._ckpt_running is not None or self._closed:
            return
        if self._writes_since_checkpoint < self._checkpoint_every:
            return
        self._writes_since_checkpoint = 0
        if self._ckpt_executor is None:
            self._ckpt_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kyb-ckpt")
        fut = asyncio.get_running_loop().run_in_executor(self._ckpt_executor, self._checkpoint_in_thread)
        self._ckpt_running = fut
        fut.add_done_callback(self._checkpoint_done)

    def _checkpoint_in_thread(self) -> tuple[int, int, int]:
        if self._ckpt_db is None:
            self._ckpt_db = self._connect(self.path)
        return self._ckpt_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def _checkpoint_done(self, fut: asyncio.Future[tuple[int, int, int]]) -> None:
        self._ckpt_running = None
        if fut.cancelled() or self._closed:
            return
        if fut.exception() is not None:
            log.warning("WAL checkpoint failed: %s", fut.exception())
            return
        _, wal_frames, _ = fut.result()
        # SQLite rewinds the WAL only when a write finds every frame checkpointed, which
        # never happens while writes keep landing during the threaded checkpoint. Past
        # the limit, copy the short tail (written while the thread worked) here, where no
        # write can interleave, so the next write starts the WAL from the beginning.
        if wal_frames >= self._wal_limit_frames:
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as e:
                log.warning("WAL tail checkpoint failed: %s", e)

    # -- lifecycle -----------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        # Writes already submitted were promised an answer; commit them first.
        while self._pending:
            self._flush()
        self._closed = True
        for w in list(self._watches):
            w.close()
        waiters, self._waiters = self._waiters, []
        for f in waiters:
            if not f.done():
                f.set_result(None)
        if self._ckpt_running is not None:
            await asyncio.wait([self._ckpt_running])
        if self._ckpt_executor is not None:
            if self._ckpt_db is not None:
                await asyncio.get_running_loop().run_in_executor(self._ckpt_executor, self._ckpt_db.close)
            self._ckpt_executor.shutdown(wait=True)
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as e:
            log.warning("final WAL checkpoint failed: %s", e)
        self._db.close()
        os.close(self._lock_fd)

    # -- diagnostics ---------------------------------------------------------

    async def check(self) -> list[str]:
        """Consistency problems in the file (empty list: consistent)."""
        self._check_open()
        db = self._db
        problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        for key, rev in db.execute(
            "SELECT c.key, c.revision FROM kv_current c LEFT JOIN kv_log l ON l.revision = c.revision"
            " WHERE l.revision IS NULL OR l.key != c.key OR l.deleted != 0"
        ):
            problems.append(f"current {key} points at missing or wrong revision {rev}")
        for (key,) in db.execute(
            "SELECT key FROM kv_log l WHERE revision = (SELECT max(revision) FROM kv_log WHERE key = l.key)"
            " AND deleted = 0 AND NOT EXISTS (SELECT 1 FROM kv_current c WHERE c.key = l.key)"
        ):
            problems.append(f"live key {key} missing from kv_current")
        top = db.execute("SELECT max(revision) FROM kv_log").fetchone()[0] or 0
        if top > self._rev:
            problems.append(f"log revision {top} is above the store revision {self._rev}")
        return problems


class SqliteWatch(Watch):
    """A watch on a SqliteStore; reads the store's ring and log, holds no queue of its own."""

    def __init__(self, store: SqliteStore, prefix: str, after_revision: int) -> None:
        super().__init__()
        self._store = store
        self.prefix = prefix
        self.last = after_revision  # highest revision already examined
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed or self._store._closed

    async def _fetch(self) -> list[Event]:
        store = self._store
        while True:
            if self.closed:
                return []
            events = store._events_after(self)
            if events:
                return events
            if self.last >= store._rev:
                self._waiter = store._wait_for_write()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store._watches.discard(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
