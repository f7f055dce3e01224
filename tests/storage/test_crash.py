"""Crash safety: kill -9 in the middle of a write storm loses nothing that was acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from kybernetes.storage.sqlite import SqliteStore

# Concurrent writers, each cycling its own keys through create / update / update / delete and
# printing a line for every write only after the store acknowledged it. Frequent checkpoints
# (in their thread, and WAL rewinds) so they are also under way when the kill lands.
WRITER = r"""
import asyncio, sys
from kybernetes.storage.sqlite import SqliteStore

async def main(path):
    s = SqliteStore(path, checkpoint_every=64, wal_limit_frames=256)
    out = sys.stdout

    async def writer(w):
        n = 0
        while True:
            key = f"/storm/{w}/{n % 3}"
            for step in range(4):
                value = b"%d-%d-%d" % (w, n, step)
                if step == 0:
                    kv = await s.create(key, value)
                elif step < 3:
                    kv = await s.update(key, value, kv.mod_revision)
                else:
                    kv = await s.delete(key, kv.mod_revision)
                    value = b"-"
                out.write(f"{kv.mod_revision} {key} {value.decode()}\n")
                out.flush()
            n += 1

    await asyncio.gather(*(writer(w) for w in range(16)))

asyncio.run(main(sys.argv[1]))
"""


async def test_kill_9_during_write_storm_loses_no_acknowledged_write(db_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(db_path),
        stdout=asyncio.subprocess.PIPE,
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        # Read acknowledgements until the storm is well under way, then kill without warning.
        async with asyncio.timeout(20):
            while len(lines) < 3000:
                line = await proc.stdout.readline()
                assert line, f"writer exited early with {proc.returncode}"
                lines.append(line)
    finally:
        # Signal exactly once: Popen.send_signal polls first, and a second call could reap
        # the child behind asyncio's watcher (which then reports returncode 255).
        proc.send_signal(signal.SIGKILL)
        lines += (await proc.stdout.read()).splitlines(keepends=True)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    acked = [ln.decode().split() for ln in lines if ln.endswith(b"\n")]

    s = SqliteStore(db_path)
    try:
        assert await s.check() == []
        rows = {
            rev: (key, value, deleted)
            for rev, key, value, deleted in s._db.execute("SELECT revision, key, value, deleted FROM kv_log")
        }
        top = await s.current_revision()
        # No compaction ran, so the log is every revision 1..top with no holes.
        assert sorted(rows) == list(range(1, top + 1))
        assert top >= max(int(rev) for rev, _, _ in acked)
        last_ack: dict[str, tuple[int, str]] = {}
        for rev_s, key, value in acked:
            rev = int(rev_s)
            row_key, row_value, deleted = rows[rev]
            assert row_key == key
            assert (b"-" if deleted else row_value) == value.encode()
            last_ack[key] = (rev, value)
        # The live state of each key is its last acknowledged write, or one write past it
        # (committed, but killed before it could be printed).
        for key, (rev, value) in last_ack.items():
            kv = await s.get(key)
            if kv is None:
                assert value == "-" or _deleted_after(rows, key, rev)
            elif kv.mod_revision == rev:
                assert kv.value == value.encode()
            else:
                assert kv.mod_revision > rev
                later = [r for r in range(rev + 1, kv.mod_revision + 1) if rows[r][0] == key]
                assert later == [kv.mod_revision]
        # And the store carries on from where it was.
        assert (await s.create("/after/crash", b"")).mod_revision == top + 1
    finally:
        await s.close()


def _deleted_after(rows: dict[int, tuple[str, bytes, int]], key: str, rev: int) -> bool:
    later = [r for r in sorted(rows) if r > rev and rows[r][0] == key]
    return len(later) == 1 and rows[later[0]][2] == 1
