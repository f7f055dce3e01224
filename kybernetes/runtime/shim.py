"""The per-container shim: starts one container process, owns its stdio, outlives the kubelet;
and the runtime's side of it: launching a shim, reading its state files, attaching.

Run as ``python -m kybernetes.runtime.shim <container state dir>``. It detaches
from the runtime (double fork, new session), so a restarting kubelet neither kills
the container nor breaks its output pipes. It then

* starts the container, in one of two ways. Process mode (the process runtime): joins
  the pod's namespaces, gets a private mount namespace, binds mounts into the image
  root filesystem and chroots into it when there is one, joins the container's cgroup
  as the very last step before exec (so the shim's own memory is never charged to the
  container), and execs the command. OCI mode (``launch.oci`` set, the OCI runtime):
  ``runc create`` with the shim's pipes as the container's stdio (or, with a terminal,
  receiving runc's pty master over a console socket), then ``runc start``, as
  containerd's shim does;
* is the child subreaper, so the container process is its child even though it was
  forked in another PID namespace (or by runc), and it learns the exact exit status;
* writes stdout/stderr into the CRI log file (rotating it), and serves attach clients
  on a unix socket in the state dir;
* when the container's main process ends, kills what is left of the container,
  records ``exit.json`` (exit code, signal, time, OOM kills) and exits; in OCI mode
  it first has runc delete the container (its runc state and cgroup).

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
import select
import socket
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass

from kybernetes.runtime import nsutil
from kybernetes.runtime.base import ContainerState, RuntimeServiceError, StartError, StreamHandle
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


# -- OCI mode: runc makes the container ----------------------------------------------


def runc_command(oci: dict, *args: str) -> list[str]:
    """A runc command line on this container's runc state root, logging to its JSON log."""
    return [oci["runc"], "--root", oci["root"], "--log", oci["log"], "--log-format", "json", *args]


def runc_error(log_path: str, offset: int = 0) -> str:
    """The last error runc logged after ``offset``: what it says when it refuses."""
    msg = ""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            for line in f:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("level") in ("error", "fatal"):
                    msg = str(entry.get("msg", ""))
    except OSError:
        pass
    return msg or "runc failed without saying why"


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def runc_delete(oci: dict) -> None:
    """Forget the container in runc (state dir, cgroup); a container already gone is fine."""
    run_runc(runc_command(oci, "delete", "--force", oci["id"]), stdin=subprocess.DEVNULL,
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def _listen_in(directory: str, name: str) -> socket.socket:
    """A listening unix socket bound by a relative name (socket paths are limited to ~107 bytes)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.getcwd()
    try:
        os.chdir(directory)
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass
        sock.bind(name)
        sock.listen(1)
    finally:
        os.chdir(old)
    return sock


def run_runc(argv: list[str], *, timeout: float, **popen: object) -> int:
    """Run runc and return its exit status, noticed the moment it exits.

    ``subprocess.run(timeout=…)`` polls with growing sleeps and saw a 45 ms ``runc create``
    some 20 ms late on every container start; a pidfd becomes readable exactly at exit.
    A runc that hangs past ``timeout`` is killed (status -9).
    """
    proc = subprocess.Popen(argv, **popen)  # type: ignore[call-overload]
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfds (old kernel): the polling wait
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            proc.kill()
        return proc.wait()
    finally:
        os.close(fd)


def spawn_runc(oci: dict, stdio: tuple[int, int, int], tty: bool) -> tuple[int | None, str, int | None]:
    """``runc create`` + ``runc start``: (container init pid, error, pty master when tty).

    Without a terminal, runc hands its own stdio to the container, so ``stdio`` is the
    container's. (runc also prints a failure there; nothing reads those pipes unless the
    container starts, so that copy is dropped: the message comes from runc's log.) With a
    terminal runc allocates the pty and sends us the master over the console socket.
    """
    bundle = oci["bundle"]
    pid_file = os.path.join(bundle, "init.pid")
    offset = _log_size(oci["log"])
    args = ["create", "--bundle", bundle, "--pid-file", pid_file]
    console = None
    if tty:
        console = _listen_in(bundle, "console.sock")
        # Relative to runc's working directory, which is the bundle (runc moves there too).
        args += ["--console-socket", "console.sock"]
    try:
        code = run_runc(runc_command(oci, *args, oci["id"]), stdin=stdio[0], stdout=stdio[1],
                        stderr=stdio[2], cwd=bundle, timeout=120)
        if code != 0:
            runc_delete(oci)  # a half-made container (cgroup, state dir) must not stay behind
            return None, f"OCI runtime create failed: {runc_error(oci['log'], offset)}", None
        with open(pid_file) as f:
            pid = int(f.read().strip())
        master = None
        if console is not None:
            console.settimeout(10)
            conn, _ = console.accept()
            with conn:
                _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
            master = fds[0]
            set_winsize(master, 80, 24)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        runc_delete(oci)
        return None, f"OCI runtime create failed: {e}", None
    finally:
        if console is not None:
            console.close()
            try:
                os.unlink(os.path.join(bundle, "console.sock"))
            except FileNotFoundError:
                pass
    offset = _log_size(oci["log"])
    start_code = run_runc(runc_command(oci, "start", oci["id"]), stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    if start_code != 0:
        err = runc_error(oci["log"], offset)
        runc_delete(oci)
        try:
            os.waitpid(pid, 0)  # the init runc made is our child now (subreaper)
        except ChildProcessError:
            pass
        if master is not None:
            os.close(master)
        return None, f"OCI runtime start failed: {err}", None
    return pid, "", master


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
        if self.cfg.get("oci"):
            # Before exit.json: once that exists the runtime may remove the container.
            runc_delete(self.cfg["oci"])
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
        oci = cfg.get("oci")
        out_fds: list[tuple[int, str]]
        if self.tty and oci:
            # runc allocates the terminal and sends us its master (spawn_runc).
            stdio = (devnull, devnull, devnull)
            out_fds = []
        elif self.tty:
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
        if oci:
            pid, err, master = spawn_runc(oci, stdio, self.tty)
            if master is not None:
                out_fds = [(master, "stdout")]
                if cfg.get("stdin"):
                    self.stdin_fd = os.dup(master)
        else:
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


# -- the runtime's side: launching a shim, reading its files, attaching ---------------


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        # A missing file or one being replaced right now: treat as not written yet.
        return None


async def poll(cond: Callable[[], bool], timeout: float) -> bool:
    """Wait for a condition on files or /proc, backing off up to 50 ms between looks."""
    end = time.monotonic() + timeout
    delay = 0.002
    while True:
        if cond():
            return True
        if time.monotonic() >= end:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def launch(state_dir: str, python: str, env: dict[str, str]) -> None:
    """Start the shim of the container in ``state_dir`` and wait until its process runs.

    Raises StartError with the reason when it could not start (exit.json then says so).
    """
    shim_log = os.path.join(state_dir, "shim.log")
    loop = asyncio.get_running_loop()
    ready_r, ready_w = os.pipe()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(ready_r, "rb", 0))
    try:
        with open(shim_log, "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                python, "-m", "kybernetes.runtime.shim", state_dir, "--ready-fd", str(ready_w),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=log, env=env, cwd="/",
                pass_fds=(ready_w,),
            )
        os.close(ready_w)
        ready_w = -1
        # The shim detaches at once; this only collects the process we started.
        code = await proc.wait()
        # Woken the moment the shim has written shim.json (or died), instead of polling for it.
        try:
            await asyncio.wait_for(reader.read(), 30.0)
        except TimeoutError:
            pass
    finally:
        if ready_w >= 0:
            os.close(ready_w)
        transport.close()
    shim_json = os.path.join(state_dir, "shim.json")

    def shim_crashed() -> bool:
        # A traceback in the shim's log means it died before writing shim.json.
        return os.path.getsize(shim_log) > 0 and b"Traceback" in open(shim_log, "rb").read()

    ready = code == 0 and await poll(lambda: os.path.exists(shim_json) or shim_crashed(), 30.0)
    if not ready or not os.path.exists(shim_json):
        with open(shim_log, errors="replace") as f:
            detail = f.read()[-2000:]
        write_json(os.path.join(state_dir, "exit.json"), {"exit_code": 128, "signal": None,
                                                          "finished_at": time.time(), "oom_kills": 0,
                                                          "start_error": f"shim failed: {detail}"})
        raise StartError(f"container shim did not start: {detail.strip()}")
    info = read_json(shim_json) or {}
    if "error" in info:
        raise StartError(info["error"])


def running(state_dir: str) -> tuple[int, int | None] | None:
    """(pid, start time) of the container's main process while it runs."""
    shim = read_json(os.path.join(state_dir, "shim.json"))
    if shim and "pid" in shim and nsutil.alive(shim["pid"], shim["pid_start"]):
        return shim["pid"], shim["pid_start"]
    return None


@dataclass
class Observed:
    """A container's state as its shim's files tell it (see ContainerStatus for the fields)."""

    state: ContainerState = ContainerState.CREATED
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    reason: str = ""
    message: str = ""


def observe(state_dir: str) -> Observed:
    """Where the container of ``state_dir`` is: created, running, or exited and why."""
    out = Observed()
    shim = read_json(os.path.join(state_dir, "shim.json"))
    if shim and "started_at" in shim:
        out.started_at = shim["started_at"]
    exit_file = os.path.join(state_dir, "exit.json")
    ex = read_json(exit_file)
    if ex is None and shim is not None:
        if nsutil.alive(shim.get("pid"), shim.get("pid_start")) or nsutil.alive(
            shim.get("shim_pid"), shim.get("shim_start")
        ):
            out.state, out.pid = ContainerState.RUNNING, shim.get("pid")
            return out
        ex = read_json(exit_file)  # it may have been written since the first look
        if ex is None:
            # Neither the process nor its shim survive and nobody recorded how it ended,
            # e.g. the machine rebooted. Record it so the answer stays the same.
            ex = {"exit_code": 255, "signal": None, "finished_at": time.time(), "oom_kills": 0, "lost": True}
            write_json(exit_file, ex)
    if ex is None:
        return out
    out.state = ContainerState.EXITED
    out.exit_code = ex["exit_code"]
    out.finished_at = ex["finished_at"]
    if ex.get("start_error"):
        out.reason, out.message = "StartError", ex["start_error"]
    elif ex.get("lost"):
        out.reason = "Unknown"
        out.message = "the container's process and its shim ended without recording an exit status"
    elif ex.get("oom_kills"):
        out.reason = "OOMKilled"
    elif out.exit_code == 0:
        out.reason = "Completed"
    else:
        out.reason = "Error"
    return out


class AttachHandle(StreamHandle):
    """A connection to a running container's shim: its live output and its stdin."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tty: bool) -> None:
        self.tty = tty
        self._reader = reader
        self._writer = writer
        self.stdout = asyncio.StreamReader()
        self.stderr = None if tty else asyncio.StreamReader()
        self.exit_code: int | None = None
        self._task = asyncio.get_running_loop().create_task(self._demux())

    async def _demux(self) -> None:
        try:
            while True:
                kind, n = struct.unpack(">BI", await self._reader.readexactly(5))
                payload = await self._reader.readexactly(n) if n else b""
                if kind == STDOUT:
                    self.stdout.feed_data(payload)
                elif kind == STDERR:
                    (self.stderr or self.stdout).feed_data(payload)
                elif kind == EXIT:
                    self.exit_code = int(payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.stdout.feed_eof()
            if self.stderr is not None:
                self.stderr.feed_eof()

    async def write_stdin(self, data: bytes) -> None:
        self._writer.write(frame(STDIN, data))
        await self._writer.drain()

    async def close_stdin(self) -> None:
        self._writer.write(frame(CLOSE_STDIN, b""))
        await self._writer.drain()

    def resize(self, width: int, height: int) -> None:
        self._writer.write(frame(RESIZE, f"{width} {height}".encode()))

    async def wait(self) -> int | None:
        await asyncio.shield(self._task)
        return self.exit_code

    async def close(self) -> None:
        self._writer.close()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def attach(state_dir: str, container_id: str, tty: bool) -> AttachHandle:
    """Connect to the attach socket of the shim in ``state_dir``."""
    path = os.path.join(state_dir, SOCKET_NAME)
    dirfd = None
    if len(path) > 100:
        # Too long for sockaddr_un: reach it through a short /proc/self/fd path.
        dirfd = os.open(state_dir, os.O_RDONLY)
        path = f"/proc/self/fd/{dirfd}/{SOCKET_NAME}"
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError as e:
        raise RuntimeServiceError(f"attach to container {container_id} failed: {e}") from e
    finally:
        if dirfd is not None:
            os.close(dirfd)
    return AttachHandle(reader, writer, tty)


def main(argv: list[str]) -> int:
    state_dir = os.path.abspath(argv[0])
    # The launcher's end-of-file: closed once shim.json is written (or this process died).
    ready = int(argv[2]) if len(argv) > 2 and argv[1] == "--ready-fd" else None
    if ready is not None:
        os.set_inheritable(ready, False)  # the container must not keep it open
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
    started = shim.start()
    if ready is not None:
        os.close(ready)
    if not started:
        return 1

    async def run() -> int:
        shim.watch_output()
        return await shim.run()

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
