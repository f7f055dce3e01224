"""The pod holder ("pause" process): owns a pod's namespaces for its containers to join.

Run as ``python -m kybernetes.runtime.pause --hostname NAME --ns pid,uts,ipc[,net]``.
It creates the namespaces, sets the hostname, and (for a PID namespace) forks the
process that becomes PID 1 of the pod (it forks in any case), mounts a matching /proc, prints that process's
host pid on stdout and exits. PID 1 then only reaps orphans until it is killed; killing
it makes the kernel kill everything left in the pod's PID namespace.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import socket
import struct
import sys

from kybernetes.runtime import nsutil

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    # A new network namespace starts with "lo" down; pods expect 127.0.0.1 to work.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))


def reap_forever() -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # SIGCHLD stays blocked and is collected with sigtimedwait: no race between
    # "no children left" and the next child dying.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            signal.sigtimedwait({signal.SIGCHLD}, 3600)
        except InterruptedError:
            pass


async def start(python: str, env: dict[str, str], hostname: str, kinds: list[str], owner: str) -> dict:
    """Run a holder for namespaces ``kinds``: ``{"pid", "start"}`` of the process that holds them."""
    import asyncio  # here, not at the top: the holder itself starts faster without it

    from kybernetes.runtime.base import RuntimeServiceError

    proc = await asyncio.create_subprocess_exec(
        python, "-m", "kybernetes.runtime.pause", "--hostname", hostname, "--ns", ",".join(kinds),
        "--owner", owner,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0 or not out.strip().isdigit():
        raise RuntimeServiceError(
            f"creating the pod's namespaces failed: {err.decode(errors='replace').strip()}",
            reason="CreatePodSandboxError",
        )
    pid = int(out.strip())
    return {"pid": pid, "start": nsutil.start_time(pid)}


def kill_unrecorded(owner: str, sandboxes_dir: str) -> int:
    """Kill the holders ``owner`` started whose sandbox was never recorded (``sandbox.json``
    under ``sandboxes_dir`` names its holder): the runtime stopped half way through."""
    known = set()
    for sb in os.listdir(sandboxes_dir) if os.path.isdir(sandboxes_dir) else []:
        try:
            with open(os.path.join(sandboxes_dir, sb, "sandbox.json")) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue
        if (rec.get("holder") or {}).get("pid"):
            known.add(rec["holder"]["pid"])
    killed = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if b"kybernetes.runtime.pause" in args and owner.encode() in args and int(entry) not in known:
            try:
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--hostname", default="")
    p.add_argument("--ns", default="pid,uts,ipc")
    # Names the runtime that made this holder, so that a cleanup can find holders whose
    # sandbox was never recorded (the runtime stopped half way through creating it).
    p.add_argument("--owner", default="")
    a = p.parse_args(argv)
    kinds = [k for k in a.ns.split(",") if k]
    flags = nsutil.CLONE_NEWNS
    for k in kinds:
        flags |= nsutil.NS_FLAGS[k]
    nsutil.unshare(flags)
    # Mounts made for this pod must never propagate back to the host.
    nsutil.mount(None, "/", None, nsutil.MS_REC | nsutil.MS_PRIVATE)
    if "uts" in kinds and a.hostname:
        socket.sethostname(a.hostname)
    if "net" in kinds:
        loopback_up()
    # Always fork, so the process the runtime started can exit and the holder is
    # nobody's child but init's (the runtime may restart; the holder must not care).
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            # /proc must show the pod's PID namespace to processes inside it.
            if "pid" in kinds:
                nsutil.mount("proc", "/proc", "proc", nsutil.MS_NOSUID | nsutil.MS_NODEV | nsutil.MS_NOEXEC)
            os.setsid()
            os.write(w, b"ok")
        except OSError as e:
            os.write(w, str(e).encode())
            os._exit(1)
        os.close(w)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        # Whatever else we inherited (an event loop's spare copy of our stdout pipe,
        # say) would keep the runtime waiting for an end of file that never comes.
        os.closerange(3, 65536)
        reap_forever()
    os.close(w)
    msg = os.read(r, 4096)
    if msg != b"ok":
        print(f"pod holder failed: {msg.decode(errors='replace')}", file=sys.stderr)
        return 1
    print(pid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
