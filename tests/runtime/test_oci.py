"""The OCI runtime on the real runc: images' command rules, users, isolation, limits, OOM,
exit reasons, exec/attach/logs, stop, adoption by a new runtime, capabilities, seccomp,
the pod's shared files and network namespace.

Needs root, runc, cgroups and a static busybox (the test image); the module skips with
the reason otherwise. Every test's sandboxes, containers, mounts and cgroups are removed
by the fixture, which then checks that nothing is left.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import pytest

from kybernetes.runtime import (
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    CreateContainerError,
    Mount,
    NamespaceMode,
    NamespaceOptions,
    PodSandboxConfig,
    PodSandboxMetadata,
    Resources,
    RuntimeServiceError,
    SandboxState,
    StartError,
)
from kybernetes.runtime import nsutil
from kybernetes.runtime import spec as oci_spec
from kybernetes.runtime.logs import LogOptions, read_logs
from kybernetes.runtime.oci import OciRuntime
from kybernetes.runtime.oci_rootfs import mounts_under, unmount

from .conftest import poll
from .oci_support import FakeImages, build_busybox_layer, build_top_layer, busybox_static

_OK, _WHY = OciRuntime.available()
if _OK and not busybox_static():
    _OK, _WHY = False, "the test image needs a static busybox at /usr/bin/busybox (busybox-static)"
needs_oci = pytest.mark.skipif(not _OK, reason=f"OCI runtime unavailable: {_WHY}")

ROOT_CAPS = "00000000a80425fb"  # containerd's default set, as CapEff shows it


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layers(tmp_path_factory) -> tuple[str, str]:
    base = str(tmp_path_factory.mktemp("layers") / "base")
    top = str(tmp_path_factory.mktemp("layers") / "top")
    build_busybox_layer(base)
    build_top_layer(top)
    return base, top


@pytest.fixture
def images(layers) -> FakeImages:
    base, top = layers
    imgs = FakeImages()
    imgs.add("busybox", [base])
    imgs.add("stacked", [base, top])
    imgs.add("ep", [base], Entrypoint=["echo", "ep"], Cmd=["cmd"])
    imgs.add("env", [base], Env=["A=img", "B=img", "PATH=/bin"], WorkingDir="/opt")
    imgs.add("user", [base], User="user")
    imgs.add("usergroup", [base], User="user:wheel")
    imgs.add("numeric", [base], User="65534")
    imgs.add("nosuchuser", [base], User="nosuch", Cmd=["true"])
    imgs.add("stopsig", [base], StopSignal="SIGUSR1")
    return imgs


async def _cleanup(rt: OciRuntime) -> None:
    for sb in await rt.list_pod_sandboxes():
        await rt.remove_pod_sandbox(sb.id)
    for c in await rt.list_containers():
        await rt.remove_container(c.id)
    rt.kill_strays()
    rt.cgroups.remove_tree()
    for point in mounts_under(rt.root):
        unmount(point)


@pytest.fixture
async def oci(tmp_path, images):
    rt = OciRuntime(str(tmp_path / "oci"), images, cgroup_root=f"kyb-oci-test-{secrets.token_hex(4)}")
    try:
        yield rt
    finally:
        await _cleanup(rt)
        runc_left = os.listdir(rt.runc_root)
        cgroups_left = [h for h in rt.cgroups.hierarchies if os.path.exists(os.path.join(h, rt.cgroups.root))]
        assert not mounts_under(rt.root) and not runc_left and not cgroups_left, (runc_left, cgroups_left)


def cfg(name: str, script: str | None = None, *, image: str = "busybox", **kw) -> ContainerConfig:
    command = ["sh", "-c", script] if script is not None else kw.pop("command", [])
    return ContainerConfig(ContainerMetadata(name), image=image, command=command, **kw)


async def pod(rt: OciRuntime, name: str = "pod", **kw) -> str:
    return await rt.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata(name, "default", "uid-" + name), **kw))


async def start(rt: OciRuntime, sid: str, config: ContainerConfig) -> str:
    cid = await rt.create_container(sid, config)
    await rt.start_container(cid)
    return cid


async def exited(rt: OciRuntime, cid: str, timeout: float = 10.0):
    async def done():
        st = await rt.container_status(cid)
        return st if st.state == ContainerState.EXITED else None

    return await poll(done, timeout, "container exit")


async def logs(path: str, **kw) -> bytes:
    return b"".join([c async for c in read_logs(path, LogOptions(**kw))])


async def output(rt: OciRuntime, cid: str) -> str:
    st = await exited(rt, cid)
    return (await logs(st.log_path)).decode()


async def run_all(rt: OciRuntime, sid: str, configs: list[ContainerConfig]) -> list[str]:
    """Run containers to completion, concurrently: their outputs."""
    cids = [await start(rt, sid, c) for c in configs]
    return list(await asyncio.gather(*(output(rt, c) for c in cids)))


async def sh(rt: OciRuntime, cid: str, script: str) -> str:
    res = await rt.exec_sync(cid, ["sh", "-c", script], timeout=10)
    assert res.exit_code == 0, res
    return res.stdout.decode()


# -- pure rules -----------------------------------------------------------------------


def test_command_and_args_rules() -> None:
    image = {"Entrypoint": ["/ep"], "Cmd": ["c1", "c2"]}
    assert oci_spec.process_args([], [], image) == ["/ep", "c1", "c2"]
    assert oci_spec.process_args([], ["a"], image) == ["/ep", "a"]
    assert oci_spec.process_args(["cmd"], [], image) == ["cmd"]
    assert oci_spec.process_args(["cmd"], ["a"], image) == ["cmd", "a"]
    assert oci_spec.process_args([], [], {"Cmd": ["only"]}) == ["only"]
    assert oci_spec.process_args([], ["a"], {"Cmd": ["only"]}) == ["a"]
    with pytest.raises(oci_spec.SpecError, match="no command specified"):
        oci_spec.process_args([], [], {})


def test_env_users_caps_and_signals(layers) -> None:
    env = oci_spec.process_env({"Env": ["A=img", "B=img"]}, {"B": "ctr"}, hostname="h", tty=True)
    assert env == ["A=img", "B=ctr", f"PATH={oci_spec.DEFAULT_PATH}", "HOSTNAME=h", "TERM=xterm"]
    base = layers[0]
    u = oci_spec.resolve_user(base, "", None, None)
    assert (u.uid, u.gid, u.additional_gids) == (0, 0, [0])
    u = oci_spec.resolve_user(base, "user", None, None, [5000])
    assert (u.uid, u.gid, u.additional_gids) == (1000, 1000, [1000, 10, 5000])
    assert oci_spec.resolve_user(base, "1000:10", None, None).gid == 10
    assert oci_spec.resolve_user(base, "user:nogroup", None, None).gid == 65534
    assert oci_spec.resolve_user(base, "4242", None, None).gid == 0  # not in passwd: group 0
    u = oci_spec.resolve_user(base, "user", 65534, 7)
    assert (u.uid, u.gid) == (65534, 7)
    with pytest.raises(oci_spec.SpecError, match="unable to find user nosuch"):
        oci_spec.resolve_user(base, "nosuch", None, None)
    with pytest.raises(oci_spec.SpecError, match="unable to find group nosuch"):
        oci_spec.resolve_user(base, "user:nosuch", None, None)
    assert oci_spec.capabilities([], ["ALL"], False) == []
    assert oci_spec.capabilities(["net_admin"], ["ALL"], False) == ["CAP_NET_ADMIN"]
    assert "CAP_KILL" not in oci_spec.capabilities([], ["KILL"], False)
    assert oci_spec.stop_signal("") == 15 and oci_spec.stop_signal("SIGUSR1") == 10
    assert oci_spec.stop_signal("KILL") == 9 and oci_spec.stop_signal("SIGRTMIN+3") == 37
    prof = oci_spec.runtime_default_seccomp(list(oci_spec.DEFAULT_CAPABILITIES))
    assert "mount" in prof["syscalls"][0]["names"] and "keyctl" in prof["syscalls"][0]["names"]
    prof = oci_spec.runtime_default_seccomp([*oci_spec.DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN"])
    assert "mount" not in prof["syscalls"][0]["names"] and "keyctl" in prof["syscalls"][0]["names"]


# -- containers -----------------------------------------------------------------------


@needs_oci
async def test_image_entrypoint_cmd_env_workdir(oci: OciRuntime) -> None:
    sid = await pod(oci)
    outs = await run_all(oci, sid, [
        cfg("neither", image="ep"),
        cfg("args", image="ep", args=["a1", "a2"]),
        cfg("command", image="ep", command=["echo", "c"]),
        cfg("both", image="ep", command=["echo", "c"], args=["x"]),
        cfg("env", "echo $A $B $C $PATH; pwd", image="env", env={"B": "ctr", "C": "ctr"}),
        cfg("wd", "pwd", image="env", working_dir="/tmp"),
    ])
    assert outs == ["ep cmd\n", "ep a1 a2\n", "c\n", "c x\n", "img ctr ctr /bin\n/opt\n", "/tmp\n"]
    with pytest.raises(CreateContainerError, match="no command specified"):
        await oci.create_container(sid, cfg("none"))
    with pytest.raises(CreateContainerError, match="not present on this node"):
        await oci.create_container(sid, cfg("c", "true", image="nope:1"))
    with pytest.raises(CreateContainerError, match="unable to find user nosuch"):
        await oci.create_container(sid, cfg("c", image="nosuchuser"))


@needs_oci
async def test_users_from_image_and_run_as(oci: OciRuntime) -> None:
    sid = await pod(oci)
    outs = await run_all(oci, sid, [
        cfg("root", "id"),
        cfg("image", "id", image="user"),
        cfg("imagegroup", "id", image="usergroup"),
        cfg("numeric", "id", image="numeric"),
        cfg("runas", "id", image="user", run_as_user=1000, run_as_group=65534, supplemental_groups=[4000]),
    ])
    assert outs[0].startswith("uid=0(root) gid=0(root)")
    assert outs[1] == "uid=1000(user) gid=1000(user) groups=10(wheel),1000(user)\n"
    assert outs[2].startswith("uid=1000(user) gid=10(wheel)")
    assert outs[3].startswith("uid=65534(nobody) gid=65534(nogroup)")
    assert outs[4] == "uid=1000(user) gid=65534(nogroup) groups=10(wheel),4000,65534(nogroup)\n"


@needs_oci
async def test_rootfs_hostname_processes_and_shared_pid(oci: OciRuntime) -> None:
    sid = await pod(oci, "mypod", namespace_options=NamespaceOptions(pid=NamespaceMode.CONTAINER))
    a = await start(oci, sid, cfg("a", "sleep 3600"))
    b = await start(oci, sid, cfg("b", "sleep 3600"))
    assert (await sh(oci, a, "ls /")).split() == sorted(
        ["bin", "dev", "etc", "home", "opt", "proc", "root", "sys", "tmp"])
    assert await sh(oci, a, "hostname; cat /etc/hostname") == "mypod\nmypod\n"
    # Each container has its own PID namespace (pid: CONTAINER): only its own processes.
    ps = (await sh(oci, b, "ps -o pid,args")).splitlines()[1:]
    assert [ln.split(None, 1)[1] for ln in ps if "ps -o" not in ln and "sh -c" not in ln] == ["sleep 3600"]
    assert ps[0].split()[0] == "1"
    # shareProcessNamespace: both containers' processes, and the holder as PID 1.
    shared = await pod(oci, "shared", namespace_options=NamespaceOptions(pid=NamespaceMode.POD))
    await start(oci, shared, cfg("a", "exec sleep 1001"))
    d = await start(oci, shared, cfg("d", "exec sleep 1002"))
    ps = await sh(oci, d, "ps -o pid,args")
    assert "sleep 1001" in ps and "sleep 1002" in ps and "kybernetes.runtime.pause" in ps
    host_ns = os.readlink("/proc/self/ns/pid")
    pid = (await oci.container_status(d)).pid
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{(await oci.pod_sandbox_status(shared)).pid}/ns/pid")
    assert os.readlink(f"/proc/{pid}/ns/pid") != host_ns
    await oci.stop_pod_sandbox(sid)
    assert (await oci.pod_sandbox_status(sid)).state == SandboxState.NOTREADY
    assert {(await oci.container_status(c)).state for c in (a, b)} == {ContainerState.EXITED}


@needs_oci
async def test_writes_are_private_and_readonly_rootfs_refuses(oci: OciRuntime, tmp_path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data").write_text("from volume\n")
    sid = await pod(oci)
    a = await start(oci, sid, cfg("a", "echo mine > /etc/written; sleep 3600"))
    b = await start(oci, sid, cfg("b", "sleep 3600", mounts=[Mount(str(vol), "/data", readonly=True)]))
    ro = await start(oci, sid, cfg("ro", "sleep 3600", readonly_rootfs=True,
                                   mounts=[Mount(str(vol), "/data", readonly=False)]))
    await poll(lambda: oci.exec_sync(a, ["cat", "/etc/written"]), what="a's write")
    assert (await oci.exec_sync(b, ["cat", "/etc/written"])).exit_code != 0
    assert await sh(oci, b, "cat /data/data") == "from volume\n"
    res = await oci.exec_sync(b, ["sh", "-c", "echo x > /data/new"])
    assert res.exit_code != 0 and b"Read-only file system" in res.stderr
    res = await oci.exec_sync(ro, ["touch", "/x"])
    assert res.exit_code != 0 and b"Read-only file system" in res.stderr
    await sh(oci, ro, "echo rw > /data/new")  # its volume stays writable
    assert (vol / "new").read_text() == "rw\n"
    # /dev/shm is one tmpfs per pod, shared by its containers.
    await sh(oci, a, "echo shared > /dev/shm/x")
    assert await sh(oci, b, "cat /dev/shm/x; grep ' /dev/shm ' /proc/mounts | cut -d' ' -f3") == "shared\ntmpfs\n"
    hosts = await sh(oci, a, "cat /etc/hosts; cat /etc/resolv.conf")
    assert hosts.startswith(open("/etc/hosts").read())  # host network: the node's hosts file


@needs_oci
async def test_overlay_stacking_and_copy_fallback(oci: OciRuntime, images, tmp_path) -> None:
    script = "ls /etc/motd 2>&1; ls /opt/a; cat /layer2"
    sid = await pod(oci)
    out = await run_all(oci, sid, [cfg("c", script, image="stacked"), cfg("d", "cat /etc/motd; ls /opt/a")])
    assert out[0] == "ls: /etc/motd: No such file or directory\nfile2\ntop\n"
    assert out[1] == "lower motd\nfile1\n"
    assert any("overlay" in ln and oci.root in ln for ln in open("/proc/self/mounts"))
    copy = OciRuntime(str(tmp_path / "copy"), images, cgroup_root=oci.cgroups.root + "-copy", rootfs="copy")
    try:
        sid = await pod(copy)
        cid = await start(copy, sid, cfg("c", script, image="stacked"))
        assert await output(copy, cid) == out[0]
        st = await copy.container_status(cid)
        assert "RootfsCopied" in {n.reason for n in st.notices}
        assert not mounts_under(copy.root + "/containers")
    finally:
        await _cleanup(copy)


@needs_oci
async def test_exit_codes_reasons_logs_and_start_error(oci: OciRuntime, tmp_path) -> None:
    sid = await pod(oci, log_directory=str(tmp_path))
    ok = await start(oci, sid, cfg("ok", "printf 'a\\nb'; echo e >&2", log_path="ok/0.log"))
    bad = await start(oci, sid, cfg("bad", "exit 3"))
    st = await exited(oci, ok)
    assert (st.exit_code, st.reason) == (0, "Completed") and st.log_path == str(tmp_path / "ok/0.log")
    lines = [ln.split(b" ", 1)[1] for ln in open(st.log_path, "rb").read().splitlines()]
    # "b" ended without a newline: a partial record, as containerd writes it.
    assert sorted(lines) == [b"stderr F e", b"stdout F a", b"stdout P b"]
    st = await exited(oci, bad)
    assert (st.exit_code, st.reason) == (3, "Error")
    cid = await oci.create_container(sid, cfg("nf", command=["definitely-not-here"]))
    with pytest.raises(StartError, match=r'exec: "definitely-not-here": executable file not found in \$PATH'):
        await oci.start_container(cid)
    st = await oci.container_status(cid)
    assert (st.state, st.reason, st.exit_code) == (ContainerState.EXITED, "StartError", 128)
    assert "executable file not found" in st.message
    tm = await start(oci, sid, cfg("tm", "echo goodbye > /dev/termination-log; exit 1",
                                   termination_message_path="/dev/termination-log"))
    assert (await exited(oci, tm)).message == "goodbye\n"


async def _settled_pids(oci: OciRuntime, cid: str) -> bool:
    return (await oci.container_stats(cid)).pids in (1, 2)


@needs_oci
async def test_memory_limit_ends_oomkilled_and_cgroup_limits(oci: OciRuntime) -> None:
    sid = await pod(oci, memory_bytes=256 << 20)
    res = Resources(cpu_millis=250, cpu_request_millis=100, memory_bytes=32 << 20, pids=32)
    hog = await start(oci, sid, cfg("hog", "x=$(head -c 200m /dev/zero | tr '\\0' a); echo survived",
                                    resources=res))
    calm = await start(oci, sid, cfg("calm", "sleep 3600", resources=Resources(cpu_millis=250,
                                     cpu_request_millis=100, memory_bytes=64 << 20, pids=32)))
    cg = oci.cgroups.cgroup(sid, calm)
    pid = (await oci.container_status(calm)).pid
    assert pid in cg.pids()
    if cg.version == 1:
        mem = cg.dirs["memory"]
        assert open(f"{mem}/memory.limit_in_bytes").read().strip() == str(64 << 20)
        assert open(f"{cg.dirs['cpu']}/cpu.cfs_quota_us").read().strip() == "25000"
        assert open(f"{cg.dirs['cpu']}/cpu.shares").read().strip() == "102"
        assert open(f"{cg.dirs['pids']}/pids.max").read().strip() == "32"
        pod_mem = oci.cgroups.cgroup(sid).dirs["memory"]
        assert open(f"{pod_mem}/memory.limit_in_bytes").read().strip() == str(256 << 20)
    else:
        d = cg.dirs["unified"]
        assert open(f"{d}/memory.max").read().strip() == str(64 << 20)
        assert open(f"{d}/cpu.max").read().split() == ["25000", "100000"]
    s1 = await oci.container_stats(calm)
    s2 = await oci.container_stats(calm)
    assert s1.memory_working_set_bytes and s1.pids >= 1 and s2.cpu_usage_nano_cores is not None
    # Just after start runc's init helpers may still be leaving the cgroup; then only the shell
    # (and sleep, if it has not exec'd it) is counted.
    assert await poll(lambda: _settled_pids(oci, calm), 5.0)
    st = await exited(oci, hog, 30)
    assert (st.reason, st.exit_code) == ("OOMKilled", 137)
    assert b"survived" not in await logs(st.log_path)


@needs_oci
async def test_exec_sync_exec_tty_resize_and_attach(oci: OciRuntime) -> None:
    sid = await pod(oci)
    cid = await start(oci, sid, cfg("c", "sleep 3600", image="user", env={"GREETING": "hi"}, working_dir="/tmp"))
    res = await oci.exec_sync(cid, ["sh", "-c", "echo $GREETING; pwd; id -u; echo e >&2; exit 4"], timeout=10)
    assert (res.exit_code, res.stdout, res.stderr) == (4, b"hi\n/tmp\n1000\n", b"e\n")
    res = await oci.exec_sync(cid, ["sleep", "30"], timeout=0.3)
    assert res.timed_out
    assert "sleep 30" not in await sh(oci, cid, "ps -o args")  # the timed-out command was killed
    res = await oci.exec_sync(cid, ["no-such-command"])
    assert res.exit_code == 127 and b"executable file not found" in res.stderr
    h = await oci.exec(cid, ["sh", "-c", "while read x; do stty size; done"], tty=True, stdin=True)
    h.resize(100, 30)
    out = b""
    end = asyncio.get_running_loop().time() + 10
    while b"30 100" not in out:
        # The new size reaches the container's terminal asynchronously (runc forwards SIGWINCH).
        assert asyncio.get_running_loop().time() < end, out
        await h.write_stdin(b"\n")
        try:
            out += await asyncio.wait_for(h.stdout.read(1024), 0.2)
        except TimeoutError:
            pass
    await h.close_stdin()
    assert await asyncio.wait_for(h.wait(), 10) == 0
    await h.close()
    h = await oci.exec(cid, ["sh", "-c", "cat; echo bye >&2; exit 2"], stdin=True)
    await h.write_stdin(b"piped\n")
    await h.close_stdin()
    assert await asyncio.wait_for(h.stdout.read(), 10) == b"piped\n"
    assert await asyncio.wait_for(h.stderr.read(), 10) == b"bye\n"
    assert await h.wait() == 2
    await h.close()
    # attach: the container's own stdin and output, through its shim.
    echo = await start(oci, sid, cfg("echo", "while read l; do echo echo:$l; done; exit 7", stdin=True,
                                     stdin_once=True))
    h = await oci.attach(echo, stdin=True)
    await h.write_stdin(b"one\n")
    got = b""
    while b"echo:one\n" not in got:
        got += await asyncio.wait_for(h.stdout.read(100), 10)
    await h.close_stdin()
    assert await asyncio.wait_for(h.wait(), 10) == 7
    assert b"echo:one" in await logs((await exited(oci, echo)).log_path)
    # A container with a terminal: the shim holds the pty master runc made.
    t = await start(oci, sid, cfg("tty", "stty size; tty; exec sleep 3600", tty=True))
    log_path = (await oci.container_status(t)).log_path
    await poll(lambda: b"/dev/pts/0" in open(log_path, "rb").read(), what="tty output")
    assert (await logs(log_path)).replace(b"\r", b"") == b"24 80\n/dev/pts/0\n"


@needs_oci
async def test_stop_signals_and_timeout(oci: OciRuntime) -> None:
    sid = await pod(oci)
    polite = await start(oci, sid, cfg("polite", "trap 'exit 143' TERM; echo ready; sleep 3600 & wait"))
    stubborn = await start(oci, sid, cfg("stubborn", "trap '' TERM; echo ready; sleep 3600 & wait"))
    usr1 = await start(oci, sid, cfg("usr1", "trap 'echo got-usr1; exit 3' USR1; echo ready; sleep 3600 & wait",
                                     image="stopsig"))
    for c in (polite, stubborn, usr1):
        path = (await oci.container_status(c)).log_path
        await poll(lambda p=path: os.path.exists(p) and b"ready" in open(p, "rb").read(), what="trap set")
    await oci.stop_container(polite, 10)
    assert ((await oci.container_status(polite)).exit_code) == 143
    t0 = asyncio.get_running_loop().time()
    await oci.stop_container(stubborn, 0.3)
    assert asyncio.get_running_loop().time() - t0 >= 0.3
    st = await oci.container_status(stubborn)
    assert (st.state, st.exit_code, st.reason) == (ContainerState.EXITED, 137, "Error")
    await oci.stop_container(usr1, 10)
    st = await oci.container_status(usr1)
    assert st.exit_code == 3 and b"got-usr1" in await logs(st.log_path)
    await oci.stop_container(stubborn, 1)  # stopping a stopped container is fine
    with pytest.raises(RuntimeServiceError, match="not running"):
        await oci.exec_sync(stubborn, ["true"])
    assert os.listdir(oci.runc_root) == []  # the shims had runc forget them
    await oci.remove_container(polite)
    assert polite not in {c.id for c in await oci.list_containers()}


@needs_oci
async def test_new_runtime_adopts_running_containers(oci: OciRuntime, images) -> None:
    sid = await pod(oci)
    cid = await start(oci, sid, cfg("c", "trap 'exit 143' TERM; echo before; sleep 3600 & wait",
                                    stdin=True))
    pid = (await oci.container_status(cid)).pid
    # Started means running, not yet past the trap: wait for the line that follows it.
    log_path = (await oci.container_status(cid)).log_path
    await poll(lambda: os.path.exists(log_path) and b"before" in open(log_path, "rb").read(), what="trap set")
    again = OciRuntime(oci.root, images, cgroup_root=oci.cgroups.root)
    st = await again.container_status(cid)
    assert (st.state, st.pid) == (ContainerState.RUNNING, pid)
    assert [s.id for s in await again.list_pod_sandboxes()] == [sid]
    assert (await again.pod_sandbox_status(sid)).state == SandboxState.READY
    assert await sh(again, cid, "echo inside") == "inside\n"
    h = await again.attach(cid)
    await h.close()
    await again.stop_container(cid, 5)
    st = await oci.container_status(cid)
    assert (st.state, st.exit_code) == (ContainerState.EXITED, 143)
    assert await logs(st.log_path) == b"before\n"
    await again.remove_container(cid)
    assert await oci.list_containers() == []


@needs_oci
async def test_capabilities_privileged_and_seccomp(oci: OciRuntime) -> None:
    sid = await pod(oci)
    caps = "grep -E '^(CapEff|Seccomp):' /proc/self/status | cut -f2 | tr '\\n' ' '"
    userns = "unshare -U true 2>/dev/null && echo userns-ok || echo userns-denied"
    outs = await run_all(oci, sid, [
        cfg("default", caps),
        cfg("dropall", caps, capabilities_drop=["ALL"]),
        cfg("add", caps, capabilities_add=["NET_ADMIN"]),
        cfg("nonroot", caps, run_as_user=1000),
        cfg("privileged", caps + "; ls /dev | grep -c . ; touch /sys/x 2>&1 | grep -c Read-only", privileged=True),
        cfg("seccomp", f"{caps}; {userns}", seccomp="RuntimeDefault"),
        cfg("unconfined", f"{caps}; {userns}", seccomp="Unconfined"),
        cfg("masked", "cat /proc/timer_list | wc -c; (echo 1 > /proc/sys/kernel/domainname) 2>&1 | grep -c Read-only"),
    ])
    assert outs[0].split() == [ROOT_CAPS, "0"]
    assert outs[1].split() == ["0000000000000000", "0"]
    assert outs[2].split() == ["00000000a80435fb", "0"]
    assert outs[3].split() == ["0000000000000000", "0"]  # a non-root user keeps none across exec
    priv = outs[4].split()
    own = next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("CapEff:"))
    assert priv[0] == own and priv[1] == "0"  # all this node has (it may lack some itself)
    assert int(priv[2]) > 8 and priv[3] == "0"  # the host's devices; /sys is writable (no EROFS)
    assert outs[5] == f"{ROOT_CAPS} 2 userns-denied\n"
    assert outs[6] == f"{ROOT_CAPS} 0 userns-ok\n"
    assert outs[7] == "0\n1\n"


@needs_oci
async def test_open_connection_into_the_pod_network(oci: OciRuntime) -> None:
    sid = await pod(oci, "web", namespace_options=NamespaceOptions(network=NamespaceMode.POD))
    cid = await start(oci, sid, cfg("web", "mkdir -p /tmp/www && echo hello-from-pod > /tmp/www/index.html && "
                                           "exec httpd -f -p 127.0.0.1:18080 -h /tmp/www"))
    pid = (await oci.container_status(cid)).pid
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert "NetworkNotConfigured" in {n.reason for n in (await oci.pod_sandbox_status(sid)).notices}

    async def fetch() -> bytes | None:
        try:
            reader, writer = await oci.open_connection(sid, 18080)
        except ConnectionRefusedError:
            return None  # not listening yet
        writer.write(b"GET /index.html HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data

    body = await poll(fetch, 10, "httpd in the pod")
    assert body.startswith(b"HTTP/1.") and body.endswith(b"hello-from-pod\n")
    res = await oci.exec_sync(cid, ["cat", "/proc/net/dev"])
    assert [ln.split(b":")[0].strip() for ln in res.stdout.splitlines()[2:]] == [b"lo"]
    hosts = await sh(oci, cid, "cat /etc/hosts")
    assert "127.0.0.1\tlocalhost" in hosts and hosts.rstrip().endswith("\tweb")
    # With the node's network it is a plain loopback connection on the host.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    host_pod = await pod(oci, "hostnet")
    _, writer = await oci.open_connection(host_pod, port)
    writer.close()
    server.close()


@needs_oci
async def test_process_runtime_open_connection(tmp_path) -> None:
    from kybernetes.runtime.process import ProcessRuntime

    rt = ProcessRuntime(str(tmp_path / "proc"), cgroups=False)
    sid = await rt.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p"), namespace_options=NamespaceOptions(
        network=NamespaceMode.POD)))
    try:
        holder = (await rt.pod_sandbox_status(sid)).pid
        # A listener inside the pod's network namespace, made by the same helper.
        listener = nsutil.socket_in_netns(f"/proc/{holder}/ns/net")
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        _, writer = await rt.open_connection(sid, listener.getsockname()[1])
        conn, _ = listener.accept()
        conn.close()
        writer.close()
        listener.close()
    finally:
        await rt.remove_pod_sandbox(sid)


@needs_oci
async def test_remove_leaves_nothing_and_strays_are_cleaned(oci: OciRuntime) -> None:
    sid = await pod(oci)
    cid = await start(oci, sid, cfg("c", "sleep 3600"))
    created = await oci.create_container(sid, cfg("never-started", "true"))
    assert mounts_under(oci.root)
    # A container directory a crash left half made (no config.json), with its rootfs mounted.
    half = os.path.join(oci.root, "containers", "half")
    os.makedirs(os.path.join(half, "bundle", "rootfs"))
    nsutil.mount("tmpfs", os.path.join(half, "bundle", "rootfs"), "tmpfs", 0)
    # A container runc made for a shim that died before recording anything.
    bundle = os.path.join(oci.root, "containers", created, "bundle")
    proc = await asyncio.create_subprocess_exec(oci.runc, "--root", oci.runc_root, "create", "--bundle", bundle,
                                                created, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.DEVNULL)
    assert await proc.wait() == 0 and set(os.listdir(oci.runc_root)) == {cid, created}
    assert oci.kill_strays() == 2
    assert not os.path.exists(half) and os.listdir(oci.runc_root) == [cid]  # the running one stays
    assert {c.id for c in await oci.list_containers()} == {cid, created}
    await oci.remove_pod_sandbox(sid)
    assert mounts_under(oci.root) == []
    assert os.listdir(os.path.join(oci.root, "containers")) == []
    assert not any(os.path.exists(os.path.join(h, oci.cgroups.root, sid)) for h in oci.cgroups.hierarchies)
