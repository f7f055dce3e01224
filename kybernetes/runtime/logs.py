"""Container logs in the CRI log format: the writer (with rotation) and the reader.

A log file holds one record per line::

    2026-01-02T15:04:05.123456789Z stdout F a whole line
    2026-01-02T15:04:05.123456789Z stderr P the first part of a very long li

``F`` ends a line, ``P`` says the line continues in the next record of the same
stream. The writer rotates ``<path>`` to ``<path>.1`` (older files shift up) once it
would exceed its size limit, keeping at most ``max_files`` files. The reader turns the
files back into what ``kubectl logs`` prints (tail, since, timestamps, limit, follow).

The writer is synchronous on purpose: it lives in the per-container shim, which must
keep writing logs while the kubelet restarts, and must not depend on an event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

# containerd splits lines longer than this into P records; so do we, so a process
# printing megabytes without a newline cannot grow the shim's memory.
MAX_LINE = 16 * 1024
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILES = 5


def format_timestamp(ns: int) -> str:
    """RFC 3339 with nine fractional digits in UTC, as the CRI log format uses."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%09dZ" % frac


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch from an RFC 3339 timestamp (any fraction, Z or offset)."""
    if text.endswith("Z"):
        body, offset = text[:-1], timezone.utc
    else:
        body, sign_off = text[:-6], text[-6:]
        sign = 1 if sign_off[0] == "+" else -1
        hours, minutes = int(sign_off[1:3]), int(sign_off[4:6])
        from datetime import timedelta

        offset = timezone(sign * timedelta(hours=hours, minutes=minutes))
    base, _, frac = body.partition(".")
    dt = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=offset)
    return dt.timestamp() + (float("0." + frac) if frac else 0.0)


def rotated_paths(path: str, max_files: int) -> list[str]:
    """Existing files of one log, oldest first, the live file last."""
    out = [f"{path}.{i}" for i in range(max(max_files, 2) - 1, 0, -1) if os.path.exists(f"{path}.{i}")]
    # Rotated files beyond max_files can exist if the limit was lowered; include them too.
    i = max(max_files, 2)
    extra = []
    while os.path.exists(f"{path}.{i}"):
        extra.append(f"{path}.{i}")
        i += 1
    return list(reversed(extra)) + out + [path]


class LogWriter:
    """Appends CRI records for the streams of one container, rotating by size."""

    def __init__(self, path: str, max_size: int = DEFAULT_MAX_SIZE, max_files: int = DEFAULT_MAX_FILES):
        self.path = path
        self.max_size = max(max_size, 1024)
        self.max_files = max(max_files, 1)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._file = open(path, "ab", buffering=0)
        self._size = self._file.tell()
        self._pending: dict[str, bytearray] = {}

    def write(self, stream: str, data: bytes) -> None:
        """Feed raw bytes read from a stream; complete lines are written at once."""
        buf = self._pending.setdefault(stream, bytearray())
        buf += data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            self._record(stream, b"F", bytes(buf[:nl]))
            del buf[: nl + 1]
        while len(buf) >= MAX_LINE:
            self._record(stream, b"P", bytes(buf[:MAX_LINE]))
            del buf[:MAX_LINE]

    def flush(self) -> None:
        """Write what is left of unterminated lines (the stream ended without a newline).

        As a partial record, as containerd writes it: no newline was written, so readers
        (``kubectl logs``, a FallbackToLogsOnError termination message) add none."""
        for stream, buf in self._pending.items():
            if buf:
                self._record(stream, b"P", bytes(buf))
                buf.clear()

    def close(self) -> None:
        self.flush()
        self._file.close()

    def _record(self, stream: str, tag: bytes, content: bytes) -> None:
        if content.endswith(b"\r"):
            # A tty ends lines with CRLF; the record's own newline is the terminator.
            content = content[:-1]
        line = b"%s %s %s %s\n" % (format_timestamp(time.time_ns()).encode(), stream.encode(), tag, content)
        if self._size and self._size + len(line) > self.max_size:
            self._rotate()
        self._file.write(line)
        self._size += len(line)

    def _rotate(self) -> None:
        self._file.close()
        if self.max_files <= 1:
            self._file = open(self.path, "wb", buffering=0)
            self._size = 0
            return
        oldest = f"{self.path}.{self.max_files - 1}"
        if os.path.exists(oldest):
            os.unlink(oldest)
        for i in range(self.max_files - 2, 0, -1):
            src = f"{self.path}.{i}"
            if os.path.exists(src):
                os.replace(src, f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")
        self._file = open(self.path, "ab", buffering=0)
        self._size = 0


@dataclass
class LogRecord:
    timestamp: bytes
    stream: bytes
    partial: bool
    content: bytes

    @property
    def time(self) -> float:
        return parse_timestamp(self.timestamp.decode())


def parse_record(line: bytes) -> LogRecord | None:
    """One CRI log line (without or with its newline); None if it is not one."""
    if line.endswith(b"\n"):
        line = line[:-1]
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    ts, stream, tag = parts[0], parts[1], parts[2]
    if tag not in (b"F", b"P") or stream not in (b"stdout", b"stderr"):
        return None
    return LogRecord(ts, stream, tag == b"P", parts[3] if len(parts) == 4 else b"")


@dataclass
class LogOptions:
    """What ``kubectl logs`` can ask for."""

    follow: bool = False
    tail_lines: int | None = None
    since_time: float | None = None  # seconds since the epoch (sinceSeconds is converted)
    timestamps: bool = False
    limit_bytes: int | None = None
    max_files: int = DEFAULT_MAX_FILES


def _render(rec: LogRecord, timestamps: bool) -> bytes:
    out = rec.content if rec.partial else rec.content + b"\n"
    return rec.timestamp + b" " + out if timestamps else out


def _read_records(paths: list[str]) -> list[LogRecord]:
    records = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                for line in f:
                    rec = parse_record(line)
                    if rec is not None:
                        records.append(rec)
        except FileNotFoundError:
            continue  # rotated away between listing and opening
    return records


def _rotated_since(path: str, old_ino: int, max_files: int) -> list[str]:
    """Rotated files newer than the file with inode ``old_ino``, oldest first."""
    rotated = rotated_paths(path, max_files)[:-1]
    for i, p in enumerate(rotated):
        try:
            if os.stat(p).st_ino == old_ino:
                return rotated[i + 1 :]
        except FileNotFoundError:
            continue
    # The file we followed was already deleted as the oldest: every rotated file is newer.
    return rotated


def _tail(records: list[LogRecord], n: int) -> list[LogRecord]:
    """The records making up the last ``n`` lines (a line is P records ending in an F)."""
    if n <= 0:
        return []
    lines: deque[list[LogRecord]] = deque(maxlen=n)
    current: list[LogRecord] = []
    for rec in records:
        current.append(rec)
        if not rec.partial:
            lines.append(current)
            current = []
    if current:
        lines.append(current)
    return [r for line in lines for r in line]


StopCheck = Callable[[], "bool | Awaitable[bool]"]


async def read_logs(
    path: str, options: LogOptions | None = None, stop: StopCheck | None = None
) -> AsyncIterator[bytes]:
    """Yield the log's output as ``kubectl logs`` prints it.

    With ``follow``, keeps reading as the file grows and across rotations until
    ``stop()`` says the container is finished (then drains what is left) or the
    consumer stops iterating. Without ``stop`` a follow never ends by itself.
    """
    opts = options or LogOptions()
    budget = opts.limit_bytes

    def emit(chunk: bytes) -> tuple[bytes, bool]:
        nonlocal budget
        if budget is None:
            return chunk, False
        chunk = chunk[:budget]
        budget -= len(chunk)
        return chunk, budget <= 0

    def wanted(rec: LogRecord) -> bool:
        return opts.since_time is None or rec.time >= opts.since_time

    # Snapshot the live file's identity first so a rotation during the initial read is seen.
    live_fd = None
    try:
        live_fd = open(path, "rb")
    except FileNotFoundError:
        if not opts.follow:
            return
    try:
        older = rotated_paths(path, opts.max_files)[:-1]
        records = _read_records(older)
        if live_fd is not None:
            for line in live_fd.readlines():
                if line.endswith(b"\n"):
                    rec = parse_record(line)
                    if rec is not None:
                        records.append(rec)
                else:
                    # A half-written line: re-read it on the next poll.
                    live_fd.seek(-len(line), os.SEEK_CUR)
        records = [r for r in records if wanted(r)]
        if opts.tail_lines is not None:
            records = _tail(records, opts.tail_lines)
        out = b"".join(_render(r, opts.timestamps) for r in records)
        if out:
            chunk, done = emit(out)
            yield chunk
            if done:
                return
        if not opts.follow:
            return

        delay = 0.02
        finishing = False
        while True:
            got = False
            if live_fd is not None:
                while True:
                    line = live_fd.readline()
                    if not line:
                        break
                    if not line.endswith(b"\n"):
                        live_fd.seek(-len(line), os.SEEK_CUR)
                        break
                    rec = parse_record(line)
                    if rec is None or not wanted(rec):
                        continue
                    got = True
                    chunk, done = emit(_render(rec, opts.timestamps))
                    yield chunk
                    if done:
                        return
            # Rotation: the name now points at a new file; we drained the old one above.
            # Files rotated in between (several rotations during one poll) come first.
            try:
                st = os.stat(path)
                if live_fd is None or st.st_ino != os.fstat(live_fd.fileno()).st_ino:
                    missed: list[str] = []
                    if live_fd is not None:
                        missed = _rotated_since(path, os.fstat(live_fd.fileno()).st_ino, opts.max_files)
                        live_fd.close()
                    live_fd = open(path, "rb")
                    for rec in _read_records(missed):
                        if wanted(rec):
                            chunk, done = emit(_render(rec, opts.timestamps))
                            yield chunk
                            if done:
                                return
                    got = True
                    continue
            except FileNotFoundError:
                pass
            if got:
                delay = 0.02
                continue
            if finishing:
                return
            if stop is not None:
                res = stop()
                if inspect.isawaitable(res):
                    res = await res
                if res:
                    # One more pass: the writer may have flushed its last lines just now.
                    finishing = True
                    continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
    finally:
        if live_fd is not None:
            live_fd.close()
