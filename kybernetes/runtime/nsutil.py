"""Thin Linux helpers the process runtime needs and the stdlib lacks (Python 3.11):
namespaces (unshare/setns), mount, the child-subreaper flag, and process identity.

Process identity is (pid, start time in clock ticks from /proc/<pid>/stat): a pid
alone can be reused after a restart, the pair cannot.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

NS_FLAGS = {"ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "net": CLONE_NEWNET, "pid": CLONE_NEWPID, "mnt": CLONE_NEWNS}

_libc = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(libc().unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def b(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    ret = libc().mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data))
    _check(ret, f"mount {source or fstype} on {target}")


def set_child_subreaper() -> None:
    _check(libc().prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "prctl(PR_SET_CHILD_SUBREAPER)")


def set_parent_death_signal(sig: int) -> None:
    _check(libc().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, start time in ticks, parent pid) of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    return rest[0].decode(), int(rest[19]), int(rest[1])


def start_time(pid: int) -> int | None:
    st = proc_stat(pid)
    return st[1] if st else None


def alive(pid: int | None, started: int | None) -> bool:
    """True if the process that had this pid and start time still runs (zombies do not)."""
    if not pid:
        return False
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return started is None or st[1] == started


def children_of(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[2] == ppid and st[0] not in ("Z", "X"):
                out.append(int(name))
    return out


def namespaces_supported() -> tuple[bool, str]:
    """Whether this process may create namespaces, and why not."""
    if os.geteuid() != 0:
        return False, "not running as root"
    if not os.path.exists("/proc/self/ns/pid"):
        return False, "the kernel has no namespace support (/proc/self/ns missing)"
    return True, ""
