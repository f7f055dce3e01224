"""Exec with a terminal into a running container, the command leading its own session.

Run by the process runtime as ``python -I -S nsexec.py <target pid> <ns,ns,...> -- <argv>``
with the terminal already on fds 0-2 and the container's environment. It joins the
target's namespaces (the mount namespace last), takes the target's root and working
directory, forks (a process joins a PID namespace only through its children) and
makes the child a new session's leader with the terminal as its controlling terminal,
as runc does for `exec -t`; it then waits and ends as the child did.

nsenter does the same joining, but its child stays in nsenter's session, whose
process group is not visible inside the container's PID namespace: an interactive
shell there cannot hand the terminal back when it exits (dash: "Cannot set tty
process group", exit status 2 instead of the one asked for).

It is run by path, isolated (-I), so the container's PYTHONPATH and other PYTHON*
variables reach the command untouched instead of steering this helper.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import termios

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from kybernetes.runtime import nsutil  # noqa: E402 - needs the path above


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: nsexec.py <target pid> <ns,...> -- <command> [args...]", file=sys.stderr)
        return 126
    target, kinds, cmd = int(argv[0]), [k for k in argv[1].split(",") if k], argv[3:]
    root = os.open(f"/proc/{target}/root", os.O_RDONLY | os.O_DIRECTORY)
    cwd = os.open(f"/proc/{target}/cwd", os.O_RDONLY | os.O_DIRECTORY)
    fds = [os.open(f"/proc/{target}/ns/{k}", os.O_RDONLY) for k in sorted(kinds, key=lambda k: k == "mnt")]
    for fd in fds:
        nsutil.setns(fd)
        os.close(fd)
    os.fchdir(root)
    os.chroot(".")
    os.fchdir(cwd)
    os.close(root)
    os.close(cwd)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # The runtime ends an exec by killing this helper: the command goes with it.
            nsutil.set_parent_death_signal(signal.SIGKILL)
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_DFL)
            os.execvp(cmd[0], cmd)
        except OSError as e:
            os.write(2, f"exec {cmd[0]}: {e.strerror}\r\n".encode(errors="replace"))
            os._exit(127 if isinstance(e, FileNotFoundError) else 126)
    # Terminal signals belong to the command, which owns the terminal; this helper only waits.
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
