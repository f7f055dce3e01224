"""Termination messages: the file a container writes its last words to, and the log fallback.

As upstream's kubelet does, each container attempt gets an empty host file bind-mounted
at its ``terminationMessagePath`` (``/dev/termination-log`` by default) where the runtime
gives containers their own root filesystem. When the container has exited, its
``state.terminated.message`` is what it wrote there (at most 4096 bytes); with
``terminationMessagePolicy: FallbackToLogsOnError`` and nothing written, a failed
container's message is the tail of its log (at most 80 lines, 2048 bytes).
"""

from __future__ import annotations

import os

from kybernetes.runtime.base import ContainerStatus
from kybernetes.runtime.logs import parse_record

DEFAULT_PATH = "/dev/termination-log"
ANNOTATION_HOST_PATH = "kybernetes.io/termination-message-host-path"
MAX_BYTES = 4096
FALLBACK_LINES = 80
FALLBACK_BYTES = 2048


def prepare(directory: str, container: str, attempt: int) -> str:
    """A fresh, world-writable file for one attempt (the container may run as any user)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{container}-{attempt}.termination-log")
    with open(path, "wb"):
        pass
    os.chmod(path, 0o666)
    return path


def message(st: ContainerStatus, container: dict) -> str:
    """The terminated state's message for an exited container ('' when there is none)."""
    host = st.annotations.get(ANNOTATION_HOST_PATH)
    if host:
        try:
            with open(host, "rb") as f:
                text = f.read(MAX_BYTES)
        except OSError:
            text = b""
        if text:
            return text.decode(errors="replace")
    if container.get("terminationMessagePolicy") == "FallbackToLogsOnError" and st.exit_code not in (0, None):
        return _log_tail(st.log_path)
    return ""


def _log_tail(path: str) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            # CRI lines carry a timestamp and stream tag each: read enough to find 80 lines.
            f.seek(max(0, f.tell() - 64 * 1024))
            raw = f.read()
    except OSError:
        return ""
    out = b""
    for line in raw.splitlines():
        rec = parse_record(line)
        if rec is not None:
            out += rec.content if rec.partial else rec.content + b"\n"
    lines = out.splitlines(keepends=True)[-FALLBACK_LINES:]
    return b"".join(lines)[-FALLBACK_BYTES:].decode(errors="replace")
