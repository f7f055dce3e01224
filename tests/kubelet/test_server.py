"""The kubelet's streaming server: logs, exec and attach over HTTPS with client certificates.

A minimal fake kubelet (a runtime plus find_container) stands in for the real
one. Log tests write CRI log files themselves (FakeRuntime) so follow is
deterministic; exec and attach run real processes in a ProcessRuntime without
namespaces or cgroups. The WebSocket client is a few lines of aiohttp speaking
the v5/v4 channel protocol as kubectl does.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from kybernetes.apiserver.pki import PKI
from kybernetes.apiserver.proxy import KubeletClient, client_ssl_context
from kybernetes.kubelet.server import (
    KubeletServer,
    ensure_serving_cert,
    exit_status,
    log_options,
    serving_ssl_context,
)
from kybernetes.runtime import (
    ContainerConfig,
    ContainerMetadata,
    PodSandboxConfig,
    PodSandboxMetadata,
    ProcessRuntime,
)
from kybernetes.runtime.fake import FakeRuntime
from kybernetes.runtime.logs import LogWriter

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"


class FakeKubelet:
    """What KubeletServer needs: a runtime and find_container."""

    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.containers: dict[tuple[str, str, str], tuple[str | None, str | None, str | None]] = {}

    async def find_container(self, ns: str, pod: str, container: str):
        return self.containers.get((ns, pod, container))

    async def port_forward(self, ns: str, pod: str, port: int):
        # These pods share the node's network, as the process runtime's do.
        return await asyncio.open_connection("127.0.0.1", port)


async def poll(cond, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    p = PKI(tmp_path / "pki")
    p.ensure(["127.0.0.1"])
    return p


async def start_server(kubelet, pki: PKI, tmp_path: Path) -> KubeletServer:
    cert, key = tmp_path / "kubelet.crt", tmp_path / "kubelet.key"
    ensure_serving_cert(pki, cert, key, ["127.0.0.1", "localhost"])
    srv = KubeletServer(kubelet, "127.0.0.1", 0, serving_ssl_context(pki.ca_cert, cert, key))
    await srv.start()
    return srv


@pytest.fixture
async def fake_env(tmp_path: Path, pki: PKI):
    kubelet = FakeKubelet(FakeRuntime(write_logs=False))
    srv = await start_server(kubelet, pki, tmp_path)
    client = KubeletClient.from_pki(pki)
    yield kubelet, srv, client
    await client.close()
    await srv.stop()


@pytest.fixture
async def proc_env(tmp_path: Path, pki: PKI):
    rt = ProcessRuntime(str(tmp_path / "rt"), namespaces=False, cgroups=False)
    kubelet = FakeKubelet(rt)
    srv = await start_server(kubelet, pki, tmp_path)
    client = KubeletClient.from_pki(pki)
    yield kubelet, srv, client
    await client.close()
    await srv.stop()
    for sb in await rt.list_pod_sandboxes():
        await rt.remove_pod_sandbox(sb.id)


async def fake_container(kubelet: FakeKubelet, tmp_path: Path, lines: list[str]) -> tuple[str, str]:
    """A RUNNING fake container whose log holds ``lines``; returns (id, log path)."""
    rt: FakeRuntime = kubelet.runtime
    sid = await rt.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p", "default", "uid")))
    cid = await rt.create_container(sid, ContainerConfig(ContainerMetadata("c"), image="busybox"))
    await rt.start_container(cid)
    path = str(tmp_path / "logs" / "c.log")
    w = LogWriter(path)
    for line in lines:
        w.write("stdout", (line + "\n").encode())
    w.close()
    kubelet.containers[("default", "p", "c")] = (cid, path, None)
    return cid, path


def url(srv: KubeletServer, path: str) -> str:
    return f"https://127.0.0.1:{srv.port}{path}"


async def get(client: KubeletClient, srv: KubeletServer, path: str, **params) -> tuple[int, bytes]:
    async with client.session.get(url(srv, path), params=params, ssl=client.ssl_context) as r:
        return r.status, await r.read()


# -- logs -------------------------------------------------------------------------------


async def test_logs_whole_tail_timestamps_limit(fake_env, tmp_path):
    kubelet, srv, client = fake_env
    await fake_container(kubelet, tmp_path, ["one", "two", "three"])
    path = "/containerLogs/default/p/c"
    assert await get(client, srv, path) == (200, b"one\ntwo\nthree\n")
    assert await get(client, srv, path, tailLines="1") == (200, b"three\n")
    assert await get(client, srv, path, limitBytes="6") == (200, b"one\ntw")
    code, body = await get(client, srv, path, timestamps="true", tailLines="2")
    lines = body.decode().splitlines()
    assert code == 200 and len(lines) == 2
    ts, text = lines[1].split(" ", 1)
    assert text == "three" and ts.endswith("Z") and ts[4] == "-"
    # Everything written is newer than an hour ago, and nothing is newer than the future.
    assert (await get(client, srv, path, sinceSeconds="3600"))[1] == b"one\ntwo\nthree\n"
    assert (await get(client, srv, path, sinceTime="2999-01-01T00:00:00Z"))[1] == b""


async def test_logs_follow_streams_until_the_container_exits(fake_env, tmp_path):
    kubelet, srv, client = fake_env
    cid, path = await fake_container(kubelet, tmp_path, ["first"])
    async with client.session.get(url(srv, "/containerLogs/default/p/c"), params={"follow": "true"},
                                  ssl=client.ssl_context) as r:
        assert r.status == 200
        assert await r.content.readline() == b"first\n"
        w = LogWriter(path)
        w.write("stdout", b"second\n")
        w.close()
        assert await r.content.readline() == b"second\n"
        await kubelet.runtime.stop_container(cid, 0)
        # The stream ends on its own once the container has exited.
        assert await asyncio.wait_for(r.content.read(), 10) == b""


async def test_logs_previous_waiting_and_missing(fake_env, tmp_path):
    kubelet, srv, client = fake_env
    cid, path = await fake_container(kubelet, tmp_path, ["now"])
    code, body = await get(client, srv, "/containerLogs/default/p/c", previous="true")
    assert code == 400
    assert orjson.loads(body)["message"] == 'previous terminated container "c" in pod "p" not found'
    prev = str(tmp_path / "logs" / "prev.log")
    w = LogWriter(prev)
    w.write("stderr", b"before the restart\n")
    w.close()
    kubelet.containers[("default", "p", "c")] = (cid, path, prev)
    assert await get(client, srv, "/containerLogs/default/p/c", previous="true") == (200, b"before the restart\n")

    kubelet.containers[("default", "w", "c")] = (None, str(tmp_path / "nothing-yet.log"), None)
    code, body = await get(client, srv, "/containerLogs/default/w/c")
    assert code == 400
    assert orjson.loads(body)["message"] == 'container "c" in pod "w" is waiting to start: ContainerCreating'

    code, body = await get(client, srv, "/containerLogs/default/nope/c")
    assert code == 404 and orjson.loads(body)["reason"] == "NotFound"
    code, body = await get(client, srv, "/containerLogs/default/p/c", limitBytes="0")
    assert code == 400


def test_log_options_parse():
    o = log_options({"follow": "true", "tailLines": "5", "sinceSeconds": "10", "timestamps": "1"}, now=100.0)
    assert (o.follow, o.tail_lines, o.since_time, o.timestamps) == (True, 5, 90.0, True)
    assert log_options({"sinceTime": "1970-01-01T00:01:00Z"}).since_time == 60.0


# -- authentication ------------------------------------------------------------------------


async def test_only_the_apiserver_identity_is_let_in(fake_env, tmp_path, pki):
    kubelet, srv, client = fake_env
    await fake_container(kubelet, tmp_path, ["x"])
    # A certificate from the same CA but for an ordinary user: authenticated, not allowed.
    crt, key = pki.issue_client("bob", ["developers"])
    (tmp_path / "bob.crt").write_bytes(crt)
    (tmp_path / "bob.key").write_bytes(key)
    ctx = client_ssl_context(pki.ca_cert, tmp_path / "bob.crt", tmp_path / "bob.key")
    async with aiohttp.ClientSession() as s:
        async with s.get(url(srv, "/containerLogs/default/p/c"), ssl=ctx) as r:
            assert r.status == 403
        # No client certificate at all: the TLS handshake itself is refused.
        bare = ssl.create_default_context(cafile=str(pki.ca_cert))
        bare.check_hostname = False
        with pytest.raises(aiohttp.ClientError):
            async with s.get(url(srv, "/containerLogs/default/p/c"), ssl=bare) as r:
                await r.read()


# -- exec and attach ---------------------------------------------------------------------


async def proc_container(kubelet: FakeKubelet, script: str, *, stdin: bool = False, tty: bool = False) -> str:
    rt: ProcessRuntime = kubelet.runtime
    sid = await rt.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata("p", "default", "uid")))
    cid = await rt.create_container(sid, ContainerConfig(ContainerMetadata("c"), image="busybox",
                                                         command=["sh", "-c", script], stdin=stdin, tty=tty))
    await rt.start_container(cid)
    st = await rt.container_status(cid)
    kubelet.containers[("default", "p", "c")] = (cid, st.log_path, None)
    return cid


async def collect(ws: aiohttp.ClientWebSocketResponse) -> tuple[dict[int, bytes], int | None]:
    """Everything the server sends, by channel, until it closes; and the close code."""
    out: dict[int, bytes] = {}
    async for msg in ws:
        assert msg.type == aiohttp.WSMsgType.BINARY
        out[msg.data[0]] = out.get(msg.data[0], b"") + msg.data[1:]
    return out, ws.close_code


def ws_connect(client: KubeletClient, srv: KubeletServer, path: str, params: list[tuple[str, str]],
               protocols=(V5, V4)):
    return client.session.ws_connect(url(srv, path), params=params, protocols=protocols, ssl=client.ssl_context)


async def test_exec_stdout_stderr_and_exit_code(proc_env):
    kubelet, srv, client = proc_env
    await proc_container(kubelet, "exec sleep 1000")
    params = [("command", "sh"), ("command", "-c"), ("command", "echo out; echo err >&2; exit 3"),
              ("output", "1"), ("error", "1")]
    async with ws_connect(client, srv, "/exec/default/p/c", params) as ws:
        assert ws.protocol == V5
        out, code = await collect(ws)
    assert out[1] == b"out\n" and out[2] == b"err\n"
    st = orjson.loads(out[3])
    assert st["status"] == "Failure" and st["reason"] == "NonZeroExitCode"
    assert st["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]
    assert code == aiohttp.WSCloseCode.OK

    # Success, and the API server's parameter names are accepted too; v4 still works.
    params = [("command", "echo"), ("command", "hi"), ("stdout", "true")]
    async with ws_connect(client, srv, "/exec/default/p/c", params, protocols=(V4,)) as ws:
        assert ws.protocol == V4
        out, _ = await collect(ws)
    assert out[1] == b"hi\n" and orjson.loads(out[3]) == orjson.loads(exit_status(0, []))

    # The first channel protocol (the 1.20 e2e suite's): no status frame on success, an error's
    # text on failure.
    async with ws_connect(client, srv, "/exec/default/p/c", params, protocols=("channel.k8s.io",)) as ws:
        assert ws.protocol == "channel.k8s.io"
        out, _ = await collect(ws)
    assert out[1] == b"hi\n" and 3 not in out
    params = [("command", "sh"), ("command", "-c"), ("command", "exit 3"), ("stdout", "true")]
    async with ws_connect(client, srv, "/exec/default/p/c", params, protocols=("channel.k8s.io",)) as ws:
        out, _ = await collect(ws)
    assert out[3] == b"command terminated with non-zero exit code: 3"


async def test_exec_stdin_and_v5_close(proc_env):
    kubelet, srv, client = proc_env
    await proc_container(kubelet, "exec sleep 1000")
    params = [("command", "cat"), ("input", "1"), ("output", "1"), ("error", "1")]
    async with ws_connect(client, srv, "/exec/default/p/c", params) as ws:
        await ws.send_bytes(b"\x00hello ")
        await ws.send_bytes(b"\x00world\n")
        await ws.send_bytes(b"\xff\x00")  # v5 CLOSE of stdin: cat sees EOF and ends
        out, _ = await collect(ws)
    assert out[1] == b"hello world\n"
    assert orjson.loads(out[3])["status"] == "Success"


async def test_exec_tty_resize(proc_env):
    kubelet, srv, client = proc_env
    await proc_container(kubelet, "exec sleep 1000")
    params = [("command", "sh"), ("command", "-c"), ("command", "read x; stty size"), ("input", "1"),
              ("output", "1"), ("tty", "1")]
    async with ws_connect(client, srv, "/exec/default/p/c", params) as ws:
        await ws.send_bytes(b"\x04" + orjson.dumps({"Width": 123, "Height": 45}))
        await ws.send_bytes(b"\x00\n")
        out, _ = await collect(ws)
    assert 2 not in out  # a terminal merges stderr into stdout
    assert b"45 123" in out[1]
    assert orjson.loads(out[3])["status"] == "Success"


async def test_exec_errors(proc_env, tmp_path):
    kubelet, srv, client = proc_env
    cid = await proc_container(kubelet, "exec sleep 1000")
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        async with ws_connect(client, srv, "/exec/default/nope/c", [("command", "ls"), ("output", "1")]):
            pass
    assert e.value.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        async with ws_connect(client, srv, "/exec/default/p/c", [("output", "1")]):
            pass
    assert e.value.status == 400 and "at least 1 command" in e.value.headers["X-Kubelet-Error"]
    # A command that cannot be started is an error status, with no exit code to copy.
    async with ws_connect(client, srv, "/exec/default/p/c", [("command", "/no/such/binary"),
                                                             ("output", "1")]) as ws:
        out, _ = await collect(ws)
    st = orjson.loads(out[3])
    assert st["status"] == "Failure" and st["reason"] == "InternalError"
    await kubelet.runtime.stop_container(cid, 0)
    with pytest.raises(aiohttp.WSServerHandshakeError) as e:
        async with ws_connect(client, srv, "/exec/default/p/c", [("command", "ls"), ("output", "1")]):
            pass
    assert e.value.status == 400 and "is not running" in e.value.headers["X-Kubelet-Error"]


async def test_attach_stdin_and_output(proc_env):
    kubelet, srv, client = proc_env
    cid = await proc_container(kubelet, "while read line; do echo got $line; done", stdin=True)
    params = [("input", "1"), ("output", "1"), ("error", "1")]
    async with ws_connect(client, srv, "/attach/default/p/c", params) as ws:
        await ws.send_bytes(b"\x00ping\n")
        msg = await asyncio.wait_for(ws.receive(), 10)
        assert msg.data == b"\x01got ping\n"
    # Detaching leaves the container running.
    assert (await kubelet.runtime.container_status(cid)).state.value == "RUNNING"
