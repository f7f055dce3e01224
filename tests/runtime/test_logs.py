"""CRI log files: the writer's format, partial lines and rotation; the reader's kubectl options."""

from __future__ import annotations

import asyncio
import os
import time

from kybernetes.runtime.logs import (
    MAX_LINE,
    LogOptions,
    LogWriter,
    format_timestamp,
    parse_record,
    parse_timestamp,
    read_logs,
    rotated_paths,
)


async def collect(path: str, **kw) -> bytes:
    return b"".join([c async for c in read_logs(path, LogOptions(**kw))])


def test_timestamp_roundtrip() -> None:
    ns = 1_767_366_245_123_456_789
    text = format_timestamp(ns)
    assert text == "2026-01-02T15:04:05.123456789Z"
    assert abs(parse_timestamp(text) - ns / 1e9) < 1e-6
    assert parse_timestamp("2026-01-02T16:04:05+01:00") == parse_timestamp("2026-01-02T15:04:05Z")


def test_writer_lines_partial_and_flush(tmp_path) -> None:
    path = str(tmp_path / "c" / "0.log")
    w = LogWriter(path)
    w.write("stdout", b"hello\nwor")
    w.write("stderr", b"oops\r\n")
    w.write("stdout", b"ld\n" + b"x" * (MAX_LINE + 10))
    w.write("stdout", b"tail")
    w.close()
    recs = [parse_record(line) for line in open(path, "rb")]
    assert [(r.stream, r.partial, r.content) for r in recs] == [
        (b"stdout", False, b"hello"),
        (b"stderr", False, b"oops"),
        (b"stdout", False, b"world"),
        (b"stdout", True, b"x" * MAX_LINE),
        (b"stdout", True, b"x" * 10 + b"tail"),  # ended without a newline: partial
    ]
    line = open(path, "rb").readline()
    assert line.split(b" ")[0].endswith(b"Z") and len(line.split(b" ")[0]) == 30


async def test_reader_joins_partials_and_options(tmp_path) -> None:
    path = str(tmp_path / "0.log")
    w = LogWriter(path)
    w.write("stdout", b"a" * (MAX_LINE + 1) + b"\n")
    for i in range(5):
        w.write("stdout", b"line %d\n" % i)
    w.close()
    out = await collect(path)
    assert out == b"a" * (MAX_LINE + 1) + b"\n" + b"".join(b"line %d\n" % i for i in range(5))
    assert await collect(path, tail_lines=2) == b"line 3\nline 4\n"
    assert await collect(path, tail_lines=0) == b""
    assert await collect(path, limit_bytes=5) == b"aaaaa"
    stamped = (await collect(path, tail_lines=1, timestamps=True)).split(b" ", 1)
    assert stamped[1] == b"line 4\n" and stamped[0].endswith(b"Z")
    assert await collect(path, since_time=time.time() + 60) == b""
    assert await collect(str(tmp_path / "missing.log")) == b""


async def test_rotation_keeps_max_files_and_reader_spans_them(tmp_path) -> None:
    path = str(tmp_path / "0.log")
    w = LogWriter(path, max_size=1024, max_files=3)
    for i in range(100):
        w.write("stdout", b"record number %03d\n" % i)
    w.close()
    files = rotated_paths(path, 3)
    assert files == [path + ".2", path + ".1", path]
    assert not os.path.exists(path + ".3")
    assert all(os.path.getsize(f) <= 1024 for f in files)
    out = (await collect(path, max_files=3)).splitlines()
    # The oldest records were rotated away; what is left is contiguous and ends with the last.
    assert out[-1] == b"record number 099"
    nums = [int(x.rsplit(b" ", 1)[1]) for x in out]
    assert nums == list(range(nums[0], 100)) and nums[0] > 0


async def test_follow_sees_appends_and_rotation_then_stops(tmp_path) -> None:
    path = str(tmp_path / "0.log")
    w = LogWriter(path, max_size=1024, max_files=3)
    w.write("stdout", b"first\n")
    done = False
    got: list[bytes] = []

    async def reader() -> None:
        async for chunk in read_logs(path, LogOptions(follow=True, max_files=3), stop=lambda: done):
            got.append(chunk)

    task = asyncio.create_task(reader())
    deadline = time.monotonic() + 5
    while b"first\n" not in b"".join(got):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    for i in range(40):  # about 2 KiB: at least one rotation while following
        w.write("stdout", b"follow %02d ..........\n" % i)
    w.close()
    done = True
    await asyncio.wait_for(task, 5)
    lines = b"".join(got).splitlines()
    assert lines[0] == b"first"
    assert lines[1:] == [b"follow %02d .........." % i for i in range(40)]
    assert os.path.exists(path + ".1")
