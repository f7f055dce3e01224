"""The process runtime: lifecycle, isolation as root, limits, OOM, exec/attach, restarts.

Tests that need root, namespaces or cgroups skip with the reason when unavailable.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys

import pytest

from kybernetes.runtime import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerState,
    CreateContainerError,
    Mount,
    NotFoundError,
    PodSandboxConfig,
    PodSandboxMetadata,
    ProcessRuntime,
    Resources,
    SandboxState,
    StartError,
)
from kybernetes.runtime.logs import LogOptions, read_logs
from kybernetes.runtime.process import image_candidates

from .conftest import needs_cgroups, needs_namespaces, poll


def ccfg(name: str, script: str, **kw) -> ContainerConfig:
    return ContainerConfig(ContainerMetadata(name), image=kw.pop("image", "busybox"),
                           command=["sh", "-c", script], **kw)


async def run(rt: ProcessRuntime, script: str, pod: str = "pod", **kw) -> tuple[str, str]:
    sid = await rt.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata(pod, "default", "uid-" + pod)))
    cid = await rt.create_container(sid, ccfg("c", script, **kw))
    await rt.start_container(cid)
    return sid, cid


async def exited(rt: ProcessRuntime, cid: str, timeout: float = 10.0):
    async def done():
        st = await rt.container_status(cid)
        return st if st.state == ContainerState.EXITED else None

    return await poll(done, timeout, "container exit")


async def logs(path: str, **kw) -> bytes:
    return b"".join([c async for c in read_logs(path, LogOptions(**kw))])


def test_image_candidates() -> None:
    assert image_candidates("busybox") == [("busybox", "latest")]
    assert image_candidates("docker.io/library/busybox:1.36") == [
        ("docker.io/library/busybox", "1.36"), ("library/busybox", "1.36"), ("busybox", "1.36")]
    assert image_candidates("localhost:5000/app") == [("localhost:5000/app", "latest")]


async def test_plain_processes_without_isolation(plain_runtime: ProcessRuntime) -> None:
    rt = plain_runtime
    sid, cid = await run(rt, "echo out; echo err >&2; exit 3")
    st = await exited(rt, cid)
    assert (st.exit_code, st.reason) == (3, "Error")
    reasons = {n.reason for n in st.notices}
    assert {"NoIsolation", "NoResourceLimits", "ImageNotProvided"} <= reasons
    assert "runs busybox on the host filesystem" in next(n.message for n in st.notices
                                                         if n.reason == "ImageNotProvided")
    assert {n.reason for n in (await rt.pod_sandbox_status(sid)).notices} >= {"NoIsolation"}
    assert await logs(st.log_path) == b"out\nerr\n"
    assert any(e.reason == "ImageNotProvided" for e in rt.drain_events())


async def test_completed_and_logs_in_cri_format(runtime: ProcessRuntime, tmp_path) -> None:
    sid = await runtime.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p"), log_directory=str(tmp_path)))
    cid = await runtime.create_container(sid, ccfg("c", "printf 'a\\nb'; echo e >&2", log_path="c/0.log"))
    await runtime.start_container(cid)
    st = await exited(runtime, cid)
    assert (st.exit_code, st.reason) == (0, "Completed")
    assert st.log_path == str(tmp_path / "c/0.log")
    lines = open(st.log_path, "rb").read().splitlines()
    # "b" ended without a newline: a partial record, as containerd writes it.
    assert sorted(ln.split(b" ", 1)[1] for ln in lines) == [b"stderr F e", b"stdout F a", b"stdout P b"]
    assert st.started_at <= st.finished_at


async def test_create_and_start_errors(runtime: ProcessRuntime) -> None:
    sid = await runtime.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p")))
    with pytest.raises(CreateContainerError):
        await runtime.create_container(sid, ContainerConfig(ContainerMetadata("c"), image="busybox"))
    cid = await runtime.create_container(
        sid, ContainerConfig(ContainerMetadata("c"), command=["definitely-not-a-command-kyb"]))
    with pytest.raises(StartError, match="executable file not found"):
        await runtime.start_container(cid)
    st = await runtime.container_status(cid)
    assert (st.state, st.reason, st.exit_code) == (ContainerState.EXITED, "StartError", 128)
    with pytest.raises(NotFoundError):
        await runtime.container_status("nope")


async def test_stop_sigterm_then_sigkill(runtime: ProcessRuntime) -> None:
    sid = await runtime.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p")))
    polite = await runtime.create_container(sid, ccfg("polite", "sleep 3600"))
    stubborn = await runtime.create_container(sid, ccfg("stubborn", "trap '' TERM; echo ready; sleep 3600 & wait"))
    await runtime.start_container(polite)
    await runtime.start_container(stubborn)
    running = await runtime.list_containers(ContainerFilter(state=ContainerState.RUNNING))
    assert {c.id for c in running} == {polite, stubborn}
    await runtime.stop_container(polite, 10)
    st = await runtime.container_status(polite)
    assert (st.state, st.exit_code) == (ContainerState.EXITED, 143)
    log_path = (await runtime.container_status(stubborn)).log_path
    await poll(lambda: os.path.exists(log_path) and b"ready" in open(log_path, "rb").read(), what="trap set")
    await runtime.stop_container(stubborn, 0.2)
    st = await runtime.container_status(stubborn)
    assert (st.state, st.exit_code, st.reason) == (ContainerState.EXITED, 137, "Error")
    await runtime.stop_container(stubborn, 1)  # stopping a stopped container is fine
    await runtime.remove_container(polite)
    assert [c.id for c in await runtime.list_containers()] == [stubborn]


async def test_exec_sync_and_timeout(runtime: ProcessRuntime) -> None:
    sid, cid = await run(runtime, "sleep 3600", env={"GREETING": "hi"}, working_dir="/tmp")
    res = await runtime.exec_sync(cid, ["sh", "-c", "echo $GREETING; pwd; echo e >&2; exit 4"], timeout=10)
    assert (res.exit_code, res.stdout, res.stderr) == (4, b"hi\n/tmp\n", b"e\n")
    res = await runtime.exec_sync(cid, ["sleep", "30"], timeout=0.2)
    assert res.timed_out
    await runtime.stop_container(cid, 0)
    with pytest.raises(Exception, match="not running"):
        await runtime.exec_sync(cid, ["true"])


async def test_exec_interactive_with_tty_and_pipes(runtime: ProcessRuntime) -> None:
    sid, cid = await run(runtime, "sleep 3600")
    h = await runtime.exec(cid, ["sh", "-c", "stty size; read x; echo got:$x"], tty=True, stdin=True)
    h.resize(100, 30)
    out = b""
    await h.write_stdin(b"hello\n")
    while b"got:hello" not in out:
        chunk = await asyncio.wait_for(h.stdout.read(1024), 10)
        assert chunk, out
        out += chunk
    assert await asyncio.wait_for(h.wait(), 10) == 0
    await h.close()
    h = await runtime.exec(cid, ["sh", "-c", "cat; echo bye >&2"], stdin=True)
    await h.write_stdin(b"piped\n")
    await h.close_stdin()
    assert await asyncio.wait_for(h.stdout.read(), 10) == b"piped\n"
    assert await asyncio.wait_for(h.stderr.read(), 10) == b"bye\n"
    assert await h.wait() == 0


async def test_attach_streams_output_and_stdin(runtime: ProcessRuntime) -> None:
    sid = await runtime.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p")))
    cid = await runtime.create_container(sid, ccfg("c", "while read line; do echo echo:$line; done; exit 7",
                                                   stdin=True, stdin_once=True))
    await runtime.start_container(cid)
    h = await runtime.attach(cid, stdin=True)
    await h.write_stdin(b"one\n")
    got = b""
    while b"echo:one\n" not in got:
        got += await asyncio.wait_for(h.stdout.read(100), 10)
    await h.close_stdin()
    assert await asyncio.wait_for(h.wait(), 10) == 7
    st = await exited(runtime, cid)
    assert st.exit_code == 7
    assert b"echo:one" in await logs(st.log_path)


@needs_namespaces
async def test_pod_namespaces_hostname_and_shared_pids(runtime: ProcessRuntime) -> None:
    sid = await runtime.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("mypod")))
    a = await runtime.create_container(sid, ccfg("a", "echo $$; sleep 3600"))
    b = await runtime.create_container(sid, ccfg("b", "sleep 3600"))
    await runtime.start_container(a)
    await runtime.start_container(b)
    status = await runtime.pod_sandbox_status(sid)
    assert status.state == SandboxState.READY and status.pid
    host_ns = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("pid", "uts", "ipc", "mnt")}
    pid_a = (await runtime.container_status(a)).pid
    for k in ("pid", "uts", "ipc", "mnt"):
        assert os.readlink(f"/proc/{pid_a}/ns/{k}") != host_ns[k], k
    assert os.readlink(f"/proc/{pid_a}/ns/pid") == os.readlink(f"/proc/{status.pid}/ns/pid")
    res = await runtime.exec_sync(b, ["sh", "-c", "hostname; ls /proc | grep -c '^[0-9]'"], timeout=10)
    hostname, nprocs = res.stdout.split()
    assert hostname == b"mypod"
    assert int(nprocs) < 12  # holder, two containers, their sleeps, this exec: not the host's
    log_a = (await runtime.container_status(a)).log_path
    await poll(lambda: os.path.exists(log_a) and open(log_a, "rb").read().strip(), what="log")
    assert int((await logs(log_a)).split()[0]) < 10  # a small pid inside the pod
    await runtime.stop_pod_sandbox(sid)
    assert (await runtime.pod_sandbox_status(sid)).state == SandboxState.NOTREADY
    for c in (a, b):
        assert (await runtime.container_status(c)).state == ContainerState.EXITED


@needs_cgroups
async def test_cgroup_limits_written_and_stats(runtime: ProcessRuntime) -> None:
    res = Resources(cpu_millis=250, cpu_request_millis=100, memory_bytes=64 << 20, pids=32)
    sid, cid = await run(runtime, "sleep 3600", resources=res)
    rec_cg = runtime.cgroups.cgroup(sid, cid)
    pid = (await runtime.container_status(cid)).pid
    assert pid in rec_cg.pids()
    if rec_cg.version == 2:
        d = rec_cg.dirs["unified"]
        assert open(f"{d}/cpu.max").read().split() == ["25000", "100000"]
        assert open(f"{d}/memory.max").read().strip() == str(64 << 20)
        assert open(f"{d}/pids.max").read().strip() == "32"
    else:
        assert open(rec_cg.dirs["memory"] + "/memory.limit_in_bytes").read().strip() == str(64 << 20)
        if "cpu" in rec_cg.dirs:
            assert open(rec_cg.dirs["cpu"] + "/cpu.cfs_quota_us").read().strip() == "25000"
        if "pids" in rec_cg.dirs:
            assert open(rec_cg.dirs["pids"] + "/pids.max").read().strip() == "32"
    s1 = await runtime.container_stats(cid)
    assert s1.memory_working_set_bytes and s1.cpu_usage_core_nano_seconds is not None
    s2 = await runtime.container_stats(cid)
    assert s2.cpu_usage_nano_cores is not None
    await runtime.remove_pod_sandbox(sid)
    assert not any(os.path.exists(d) for d in rec_cg.dirs.values())


@needs_cgroups
async def test_memory_limit_ends_oomkilled(runtime: ProcessRuntime) -> None:
    py = shutil.which("python3") or "/usr/bin/python3"
    sid, cid = await run(runtime, f"exec {py} -c 'x = bytearray(200 * 1024 * 1024); print(len(x))'",
                         resources=Resources(memory_bytes=32 << 20))
    st = await exited(runtime, cid, 20)
    assert (st.reason, st.exit_code) == ("OOMKilled", 137)


@needs_cgroups
async def test_pids_limit(runtime: ProcessRuntime) -> None:
    sid, cid = await run(runtime, "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; wait", resources=Resources(pids=4))
    st = await exited(runtime, cid)
    assert st.exit_code != 0
    assert b"fork" in (await logs(st.log_path)).lower()


async def test_restarted_runtime_finds_and_stops_containers(runtime: ProcessRuntime) -> None:
    sid, cid = await run(runtime, "echo before; sleep 3600")
    pid = (await runtime.container_status(cid)).pid
    # start_container returns once the process runs, maybe before it printed anything.
    log_path = (await runtime.container_status(cid)).log_path
    await poll(lambda: os.path.exists(log_path) and b"before" in open(log_path, "rb").read(), what="output")
    again = ProcessRuntime(runtime.root, cgroup_root=runtime.cgroups.root if runtime.cgroups else "kybernetes")
    st = await again.container_status(cid)
    assert (st.state, st.pid) == (ContainerState.RUNNING, pid)
    assert [s.id for s in await again.list_pod_sandboxes()] == [sid]
    assert (await again.pod_sandbox_status(sid)).state == SandboxState.READY
    await again.stop_container(cid, 5)
    st = await runtime.container_status(cid)
    assert (st.state, st.exit_code) == (ContainerState.EXITED, 143)
    assert b"before\n" == await logs(st.log_path)


def _build_rootfs(root: str) -> None:
    """A tiny image: /bin/sh, cat, ls, sleep and their shared libraries copied from the host."""
    for tool in ("sh", "cat", "ls", "sleep"):
        src = shutil.which(tool)
        paths = [src]
        for line in subprocess.run(["ldd", src], capture_output=True, text=True).stdout.splitlines():
            for word in line.split():
                if word.startswith("/"):
                    paths.append(word)
        for p in paths:
            dst = root + os.path.realpath(p) if p != src else root + "/bin/" + tool
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.realpath(p), dst)
            if p != src and os.path.realpath(p) != p:
                os.makedirs(os.path.dirname(root + p), exist_ok=True)
                if not os.path.lexists(root + p):
                    os.symlink(os.path.realpath(p), root + p)


@needs_namespaces
async def test_image_rootfs_chroot_with_mounts(runtime: ProcessRuntime, tmp_path) -> None:
    _build_rootfs(os.path.join(runtime.images_dir, "mini", "1.0", "rootfs"))
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data.txt").write_text("from volume\n")
    sid = await runtime.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p")))
    cid = await runtime.create_container(sid, ccfg(
        "c", "cat /data/data.txt; ls /; echo x > /data/new 2>/dev/null || echo readonly; sleep 3600",
        image="mini:1.0", mounts=[Mount(str(vol), "/data", readonly=True)]))
    await runtime.start_container(cid)
    st = await runtime.container_status(cid)
    assert st.rootfs and st.rootfs.endswith("mini/1.0/rootfs")
    assert not any(n.reason == "ImageNotProvided" for n in st.notices)
    await poll(lambda: os.path.exists(st.log_path) and b"readonly" in open(st.log_path, "rb").read(),
               what="script output")
    out = (await logs(st.log_path)).split()
    assert out[:2] == [b"from", b"volume"] and b"bin" in out and b"work" not in out
    res = await runtime.exec_sync(cid, ["ls", "/"], timeout=10)
    assert b"bin" in res.stdout.split() and b"work" not in res.stdout.split()
    assert not (vol / "new").exists()
    assert (await runtime.image_status("mini:1.0")).provided
    assert [i.ref for i in await runtime.list_images()] == ["mini:1.0"]


@needs_namespaces
async def test_pod_network_namespace_has_loopback(runtime: ProcessRuntime) -> None:
    from kybernetes.runtime import NamespaceMode, NamespaceOptions

    cfg = PodSandboxConfig(PodSandboxMetadata("net"), namespace_options=NamespaceOptions(network=NamespaceMode.POD))
    sid = await runtime.run_pod_sandbox(cfg)
    cid = await runtime.create_container(sid, ccfg("c", "sleep 3600"))
    await runtime.start_container(cid)
    pid = (await runtime.container_status(cid)).pid
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    probe = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
             "socket.create_connection(s.getsockname(), timeout=5); print('ok')")
    res = await runtime.exec_sync(cid, [shutil.which("python3") or "python3", "-c", probe], timeout=10)
    assert res.stdout == b"ok\n", res.stderr
    res = await runtime.exec_sync(cid, ["cat", "/proc/net/dev"], timeout=10)
    assert [ln.split(b":")[0].strip() for ln in res.stdout.splitlines()[2:]] == [b"lo"]
    assert "NetworkNotConfigured" in {n.reason for n in (await runtime.pod_sandbox_status(sid)).notices}


async def test_containers_outlive_the_runtime_process(runtime: ProcessRuntime) -> None:
    """A kubelet that exits (or crashes) leaves its containers running and logging."""
    script = f"""
import asyncio, sys
from kybernetes.runtime import *
async def main():
    rt = ProcessRuntime({runtime.root!r}, cgroup_root={runtime.cgroups.root if runtime.cgroups else 'x'!r})
    sid = await rt.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p")))
    cid = await rt.create_container(sid, ContainerConfig(ContainerMetadata("c"), command=["sh", "-c",
        "echo first; read x < /dev/null; while :; do echo tick; sleep 0.05; done"]))
    await rt.start_container(cid)
    print(cid)
asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(__file__)))})
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    cid = out.decode().strip()
    st = await runtime.container_status(cid)
    assert st.state == ContainerState.RUNNING
    # Output keeps flowing into the log although the process that started it is gone.
    await poll(lambda: open(st.log_path, "rb").read().count(b"tick") >= 3, what="ticks after runtime exit")
    await runtime.stop_container(cid, 5)
    assert (await runtime.container_status(cid)).exit_code == 143
