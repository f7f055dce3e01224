"""The per-container shim: starts one container process, owns its stdio, outlives the kubelet.

Run as ``python -m kybernetes.runtime.shim <container state dir>``. It detaches
from the runtime (double fork, new session), so a restarting kubelet neither kills
the container nor breaks its output pipes. It then

* starts the container: joins the pod's namespaces, gets a private mount namespace,
  binds mounts into the image root filesystem and chroots into it when there is one,
  joins the container's cgroup as the very last step before exec (so the shim's own
  memory is never charged to the container), and execs the command;
* is the child subreaper, so the container process is its child even though it was
  forked in another PID namespace, and it learns the exact exit status;
* writes stdout/stderr into the CRI log file (rotating it), and serves attach clients
  on a unix socket in the state dir;
* when the container's main process ends, kills what is left of the container,
  records ``exit.json`` (exit code, signal, time, OOM kills) and exits.

Files in the state dir: ``config.json`` (written by the runtime), ``shim.json``
(written once the process runs, or with ``error`` when it could not start),
``exit.json`` (written last). Each is written to a temporary name and renamed.

Attach protocol (one frame = 1 byte kind, 4 bytes big-endian length, payload):
client->shim STDIN, RESIZE ("cols rows"), CLOSE_STDIN; shim->client STDOUT, STDERR,
EXIT (the exit code as text, sent just before the shim closes the connection).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import termios
import time

from kybernetes.runtime import nsutil
from kybernetes.runtime.cgroups import Cgroup
from kybernetes.runtime.logs import LogWriter

STDIN, STDOUT, STDERR, RESIZE, CLOSE_STDIN, EXIT = 0, 1, 2, 3, 4, 5
SOCKET_NAME = "attach.sock"


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BI", kind, len(payload)) + payload


def set_winsize(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


# -- inside the new process ---------------------------------------------------------


def _prepare_rootfs(cfg: dict) -> None:
    """Bind the mounts into the container's view and chroot when it has its own root."""
    rootfs = cfg.get("rootfs")
    base = rootfs or ""
    for m in cfg.get("mounts", []):
        target = base + "/" + m["container_path"].lstrip("/")
        if os.path.isdir(m["host_path"]):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if not os.path.exists(target):
                open(target, "a").close()
        nsutil.mount(m["host_path"], target, None, nsutil.MS_BIND | nsutil.MS_REC)
        if m.get("readonly"):
            nsutil.mount(None, target, None, nsutil.MS_BIND | nsutil.MS_REMOUNT | nsutil.MS_RDONLY)
    if rootfs:
        for sub in ("proc", "dev", "sys", "tmp"):
            os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
        nsutil.mount("proc", rootfs + "/proc", "proc", nsutil.MS_NOSUID | nsutil.MS_NODEV | nsutil.MS_NOEXEC)
        nsutil.mount("/dev", rootfs + "/dev", None, nsutil.MS_BIND | nsutil.MS_REC)
        nsutil.mount("/sys", rootfs + "/sys", None, nsutil.MS_BIND | nsutil.MS_REC)
        nsutil.mount(None, rootfs + "/sys", None, nsutil.MS_BIND | nsutil.MS_REMOUNT | nsutil.MS_RDONLY)
        os.chroot(rootfs)
    elif cfg.get("pid_mode") == "CONTAINER":
        nsutil.mount("proc", "/proc", "proc", nsutil.MS_NOSUID | nsutil.MS_NODEV | nsutil.MS_NOEXEC)


def _container_main(cfg: dict, stdio: tuple[int, int, int], errw: int, tty: bool) -> None:
    """Runs in the forked container process; never returns."""
    try:
        os.setsid()
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        if tty:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        cg_files = []
        if cfg.get("cgroup"):
            cg_files = [os.open(p, os.O_WRONLY) for p in Cgroup.from_json(cfg["cgroup"]).procs_files()]
        if cfg.get("private_mounts"):
            nsutil.mount(None, "/", None, nsutil.MS_REC | nsutil.MS_PRIVATE)
            _prepare_rootfs(cfg)
        os.chdir(cfg.get("cwd") or "/")
        for fd in cg_files:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        gid, uid = cfg.get("gid"), cfg.get("uid")
        if gid is not None:
            os.setgroups([])
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        # Python ignores SIGPIPE and SIGXFSZ for itself; exec keeps "ignored", so undo it.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvpe(cfg["argv"][0], cfg["argv"], cfg.get("env", {}))
        except FileNotFoundError:
            raise OSError(errno.ENOENT, f'exec: "{cfg["argv"][0]}": executable file not found in $PATH') from None
    except BaseException as e:  # noqa: BLE001 - anything here means "could not start"
        msg = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        if isinstance(e, OSError) and e.filename:
            msg = f"{msg}: {e.filename}"
        try:
            os.write(errw, msg.encode(errors="replace"))
        finally:
            os._exit(127)


def _enter_namespaces(cfg: dict) -> None:
    """In the intermediate child: join the pod's namespaces, make private ones."""
    holder = cfg.get("ns_pid")
    if holder:
        fds = [(os.open(f"/proc/{holder}/ns/{k}", os.O_RDONLY), k) for k in cfg.get("join", [])]
        # The mount namespace last: before it, /proc/<holder> paths must still resolve.
        fds.sort(key=lambda x: x[1] == "mnt")
        for fd, _ in fds:
            nsutil.setns(fd)
            os.close(fd)
    flags = 0
    if cfg.get("private_mounts"):
        flags |= nsutil.CLONE_NEWNS
    if cfg.get("pid_mode") == "CONTAINER":
        flags |= nsutil.CLONE_NEWPID
    if flags:
        nsutil.unshare(flags)


def spawn(cfg: dict, stdio: tuple[int, int, int], tty: bool) -> tuple[int | None, str]:
    """Start the container process as our (subreaped) grandchild: (pid, error)."""
    pidr, pidw = os.pipe2(os.O_CLOEXEC)
    errr, errw = os.pipe2(os.O_CLOEXEC)
    mid = os.fork()
    if mid == 0:
        try:
            os.close(pidr)
            os.close(errr)
            # setns(pid) and unshare(CLONE_NEWPID) only affect children: fork once more.
            _enter_namespaces(cfg)
            child = os.fork()
            if child == 0:
                os.close(pidw)
                _container_main(cfg, stdio, errw, tty)
            os.write(pidw, str(child).encode())
            os._exit(0)
        except BaseException as e:  # noqa: BLE001
            os.write(errw, f"entering the pod's namespaces: {e}".encode(errors="replace"))
            os._exit(1)
    os.close(pidw)
    os.close(errw)
    pid_text = b""
    while chunk := os.read(pidr, 64):
        pid_text += chunk
    os.close(pidr)
    os.waitpid(mid, 0)
    err = b""
    while chunk := os.read(errr, 4096):
        err += chunk
    os.close(errr)
    pid = int(pid_text) if pid_text else None
    if err:
        if pid:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        return None, err.decode(errors="replace")
    return pid, ""


# -- the shim's own life ------------------------------------------------------------


class Shim:
    def __init__(self, state_dir: str, cfg: dict) -> None:
        self.dir = state_dir
        self.cfg = cfg
        self.tty = bool(cfg.get("tty"))
        self.pid: int | None = None
        self.status: int | None = None
        self.clients: set[asyncio.StreamWriter] = set()
        self.stdin_fd: int | None = None
        self.open_streams: set[int] = set()
        self.streams_done = asyncio.Event()
        self.exited = asyncio.Event()
        self.log = LogWriter(cfg["log_path"], cfg.get("log_max_size", 10 << 20), cfg.get("log_max_files", 5))
        self.attached_once = False

    def on_output(self, fd: int, stream: str) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError as e:
            # EIO from a pty master once the last process holding the terminal closes it.
            if e.errno != errno.EIO:
                raise
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(fd)
            self.open_streams.discard(fd)
            os.close(fd)
            if not self.open_streams:
                self.streams_done.set()
            return
        self.log.write(stream, data)
        kind = STDOUT if stream == "stdout" else STDERR
        for w in list(self.clients):
            try:
                w.write(frame(kind, data))
            except (ConnectionError, RuntimeError):
                self.clients.discard(w)

    def on_sigchld(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.status = status
                self.exited.set()

    def close_stdin(self) -> None:
        if self.stdin_fd is None:
            return
        try:
            if self.tty:
                os.write(self.stdin_fd, b"\x04")  # end-of-file for a terminal in canonical mode
            else:
                os.close(self.stdin_fd)
        except OSError:
            pass
        if not self.tty:
            self.stdin_fd = None

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        try:
            while True:
                head = await reader.readexactly(5)
                kind, n = struct.unpack(">BI", head)
                payload = await reader.readexactly(n) if n else b""
                if kind == STDIN and self.stdin_fd is not None:
                    await self._write_stdin(payload)
                elif kind == CLOSE_STDIN:
                    self.close_stdin()
                elif kind == RESIZE and self.tty and self.stdin_fd is not None:
                    cols, rows = (int(x) for x in payload.split())
                    set_winsize(self.stdin_fd, cols, rows)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()
            if self.cfg.get("stdin_once") and not self.attached_once:
                self.attached_once = True
                self.close_stdin()

    async def _write_stdin(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self.stdin_fd is not None:
            try:
                n = os.write(self.stdin_fd, view)
                view = view[n:]
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the container is not reading; back off
            except OSError:
                return

    def kill_leftovers(self) -> None:
        """After the main process: nothing of the container may keep running."""
        if self.pid:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.cfg.get("cgroup"):
            Cgroup.from_json(self.cfg["cgroup"]).kill_all()
        for child in nsutil.children_of(os.getpid()):
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        loop.add_signal_handler(signal.SIGCHLD, self.on_sigchld)
        self.on_sigchld()  # the process may have ended before the handler existed
        server = None
        sock = os.path.join(self.dir, SOCKET_NAME)
        if self.listener is not None:
            server = await asyncio.start_unix_server(self.on_client, sock=self.listener)
        await self.exited.wait()
        # Give readers a moment to drain what the process wrote just before exiting.
        self.kill_leftovers()
        try:
            await asyncio.wait_for(self.streams_done.wait(), 2.0)
        except TimeoutError:
            for fd in list(self.open_streams):
                loop.remove_reader(fd)
                self.open_streams.discard(fd)
        self.log.close()
        status = self.status or 0
        if os.WIFSIGNALED(status):
            code, sig = 128 + os.WTERMSIG(status), os.WTERMSIG(status)
        else:
            code, sig = os.WEXITSTATUS(status), None
        oom = Cgroup.from_json(self.cfg["cgroup"]).oom_kills() if self.cfg.get("cgroup") else 0
        write_json(
            os.path.join(self.dir, "exit.json"),
            {"exit_code": code, "signal": sig, "finished_at": time.time(), "oom_kills": oom},
        )
        for w in list(self.clients):
            try:
                w.write(frame(EXIT, str(code).encode()))
                await w.drain()
                w.close()
            except (ConnectionError, RuntimeError):
                pass
        if server is not None:
            server.close()
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        return 0

    def listen(self) -> None:
        """Bind the attach socket before shim.json exists: "running" implies "attachable"."""
        self.listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.getcwd()
        try:
            # Bind by a relative name: unix socket paths are limited to ~107 bytes.
            os.chdir(self.dir)
            try:
                os.unlink(SOCKET_NAME)
            except FileNotFoundError:
                pass
            self.listener.bind(SOCKET_NAME)
            self.listener.listen(16)
        except OSError as e:
            print(f"shim: attach socket unavailable: {e}", file=sys.stderr)
            self.listener.close()
            self.listener = None
        finally:
            os.chdir(old)

    def start(self) -> bool:
        """Fork the container; False (with shim.json saying why) if it could not start."""
        cfg = self.cfg
        self.listen()
        devnull = os.open(os.devnull, os.O_RDWR)
        child_fds: list[int] = []
        if self.tty:
            master, slave = os.openpty()
            set_winsize(master, 80, 24)
            stdio = (slave if cfg.get("stdin") else devnull, slave, slave)
            child_fds.append(slave)
            out_fds = [(master, "stdout")]
            if cfg.get("stdin"):
                self.stdin_fd = os.dup(master)
        else:
            if cfg.get("stdin"):
                in_r, self.stdin_fd = os.pipe()
                child_fds.append(in_r)
            else:
                in_r = devnull
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            child_fds += [out_w, err_w]
            stdio = (in_r, out_w, err_w)
            out_fds = [(out_r, "stdout"), (err_r, "stderr")]
        pid, err = spawn(cfg, stdio, self.tty)
        for fd in [*child_fds, devnull]:
            os.close(fd)
        if pid is None:
            if self.listener is not None:
                self.listener.close()
                os.unlink(os.path.join(self.dir, SOCKET_NAME))
            self.log.write("stderr", f"failed to start container: {err}\n".encode())
            self.log.close()
            now = time.time()
            write_json(os.path.join(self.dir, "shim.json"), {"error": err, "shim_pid": os.getpid()})
            write_json(
                os.path.join(self.dir, "exit.json"),
                {"exit_code": 128, "signal": None, "finished_at": now, "oom_kills": 0, "start_error": err},
            )
            return False
        self.pid = pid
        if self.stdin_fd is not None:
            os.set_blocking(self.stdin_fd, False)
        self._out_fds = out_fds
        write_json(
            os.path.join(self.dir, "shim.json"),
            {
                "pid": pid,
                "pid_start": nsutil.start_time(pid),
                "started_at": time.time(),
                "shim_pid": os.getpid(),
                "shim_start": nsutil.start_time(os.getpid()),
            },
        )
        return True

    def watch_output(self) -> None:
        loop = asyncio.get_running_loop()
        for fd, stream in self._out_fds:
            os.set_blocking(fd, False)
            self.open_streams.add(fd)
            loop.add_reader(fd, self.on_output, fd, stream)


def main(argv: list[str]) -> int:
    state_dir = os.path.abspath(argv[0])
    with open(os.path.join(state_dir, "config.json")) as f:
        cfg = json.load(f)["launch"]
    # Detach: the runtime that started us must be free to exit or restart.
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    nsutil.set_child_subreaper()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    # The container may exit before the loop runs; on_sigchld() at loop start catches that.
    shim = Shim(state_dir, cfg)
    if not shim.start():
        return 1

    async def run() -> int:
        shim.watch_output()
        return await shim.run()

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
