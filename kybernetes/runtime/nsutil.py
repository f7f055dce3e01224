"""Thin Linux helpers the runtimes need and the stdlib lacks (Python 3.11): namespaces
(unshare/setns), mount and umount, the child-subreaper flag, process identity, and
connecting to a port inside another network namespace.

Process identity is (pid, start time in clock ticks from /proc/<pid>/stat): a pid
alone can be reused after a restart, the pair cannot.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

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

MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

NS_FLAGS = {"ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "net": CLONE_NEWNET, "pid": CLONE_NEWPID, "mnt": CLONE_NEWNS}

_libc = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # By its soname first: find_library forks `ldconfig -p`, which every pod holder and
        # shim would pay for at start-up.
        try:
            _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            from ctypes.util import find_library
            _libc = ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)
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


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(libc().umount2(target.encode(), ctypes.c_int(flags)), f"umount {target}")


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


def socket_in_netns(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket created inside the network namespace at path ``netns`` (/proc/<pid>/ns/net).

    A socket belongs to the namespace it was created in for life, so only its creation has
    to happen there. setns() moves just the calling thread; a thread of our own does it, so
    no thread of a pool (or the event loop's) can be left in the pod's namespace if
    switching back were to fail: that thread ends right after.
    """
    out: dict[str, object] = {}

    def work() -> None:
        own = target = -1
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            target = os.open(netns, os.O_RDONLY)
            setns(target, CLONE_NEWNET)
            try:
                out["sock"] = socket.socket(family, kind)
            finally:
                setns(own, CLONE_NEWNET)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e
        finally:
            for fd in (own, target):
                if fd >= 0:
                    os.close(fd)

    t = threading.Thread(target=work, name="netns-socket", daemon=True)
    t.start()
    t.join()  # microseconds: open, setns, socket, setns
    if "error" in out:
        sock = out.get("sock")
        if isinstance(sock, socket.socket):
            sock.close()
        raise out["error"]  # type: ignore[misc]
    return out["sock"]  # type: ignore[return-value]


async def open_connection(netns: str | None, host: str, port: int) -> tuple[asyncio.StreamReader,
                                                                             asyncio.StreamWriter]:
    """asyncio.open_connection, from inside the network namespace at ``netns`` when given."""
    import asyncio  # here: the pod holder and the shim import this module and must start fast
    if netns is None:
        return await asyncio.open_connection(host, port)
    sock = socket_in_netns(netns, socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock)
