"""pods/log, pods/exec and pods/attach through the API server to the node's kubelet.

Unit tests cover container defaulting and upstream's messages; the end-to-end
test runs a real APIServer behind the aiohttp front door, a KubeletServer on a
ProcessRuntime, a Node pointing at it and a Pod bound to it, and drives them
with the real kubectl. Until the lead wires proxy.py into http.py/server.py,
``wire`` below applies exactly the proposed wiring from the outside.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from aiohttp import web

from kybernetes.api.errors import StatusError
from kybernetes.apiserver import proxy
from kybernetes.apiserver.http import TokenAuth, make_app, server_ssl_context
from kybernetes.apiserver.pki import PKI
from kybernetes.kubelet.server import KubeletServer, ensure_serving_cert, serving_ssl_context
from kybernetes.runtime import (
    ContainerConfig,
    ContainerMetadata,
    PodSandboxConfig,
    PodSandboxMetadata,
    ProcessRuntime,
)

from .conftest import call, start_api, stop_api

from tests.kubectl import KUBECTL  # noqa: E402


def pod_obj(name: str, containers: list[str], inits: list[str] = (), node: str | None = None) -> dict:
    spec: dict = {"containers": [{"name": c, "image": "busybox"} for c in containers]}
    if inits:
        spec["initContainers"] = [{"name": c, "image": "busybox"} for c in inits]
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


# -- unit ------------------------------------------------------------------------------------


def test_choose_container_defaults_and_messages():
    assert proxy.choose_container(pod_obj("p", ["a"]), None) == "a"
    assert proxy.choose_container(pod_obj("p", ["a", "b"]), "b") == "b"
    assert proxy.choose_container(pod_obj("p", ["a"], ["init"]), "init") == "init"
    with pytest.raises(StatusError) as e:
        proxy.choose_container(pod_obj("p", ["a", "b"]), None)
    assert e.value.code == 400
    assert e.value.message == "a container name must be specified for pod p, choose one of: [a b]"
    with pytest.raises(StatusError) as e:
        proxy.choose_container(pod_obj("p", ["a", "b"], ["i"]), "")
    assert e.value.message.endswith("choose one of: [a b] or one of the init containers: [i]")
    with pytest.raises(StatusError) as e:
        proxy.choose_container(pod_obj("p", ["a"]), "x")
    assert e.value.message == "container x is not valid for pod p"


def test_check_started_and_node_address():
    p = pod_obj("y", ["x"])
    with pytest.raises(StatusError) as e:
        proxy.check_started(p, "x")
    assert (e.value.code, e.value.message) == (400, 'container "x" in pod "y" is waiting to start: ContainerCreating')
    p["status"] = {"containerStatuses": [{"name": "x", "state": {"waiting": {"reason": "ErrImagePull"}}}]}
    with pytest.raises(StatusError) as e:
        proxy.check_started(p, "x")
    assert e.value.message.endswith("is waiting to start: image can't be pulled")
    # Waiting to restart after a crash still has a log to show.
    p["status"]["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 1}}
    proxy.check_started(p, "x")

    node = {"metadata": {"name": "n"}, "status": {
        "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}}}}
    assert proxy.node_address(node) == ("10.0.0.5", 11250)
    del node["status"]["daemonEndpoints"]
    node["status"]["addresses"] = [{"type": "Hostname", "address": "n1"}]
    assert proxy.node_address(node) == ("n1", 10250)


def test_upgrade_target_and_kubelet_query():
    from multidict import MultiDict

    assert proxy.upgrade_target("/api/v1/namespaces/ns/pods/p/exec") == ("ns", "p", "exec")
    assert proxy.upgrade_target("/api/v1/namespaces/ns/pods/p/portforward") == ("ns", "p", "portforward")
    assert proxy.upgrade_target("/api/v1/namespaces/ns/pods/p/log") is None
    q = MultiDict([("command", "ls"), ("command", "/"), ("stdout", "true"), ("stderr", "true"),
                   ("stdin", "false"), ("container", "c")])
    assert proxy._kubelet_query("exec", q) == [("command", "ls"), ("command", "/"), ("output", "1"),
                                              ("error", "1")]
    assert proxy._kubelet_query("portforward", MultiDict([("ports", "80"), ("ports", "443")])) == [
        ("port", "80"), ("port", "443")]


# -- a cluster in one process ------------------------------------------------------------------


class FakeKubelet:
    """A kubelet reduced to what its server needs: the runtime and a (ns, pod, container) lookup."""

    def __init__(self, runtime: ProcessRuntime) -> None:
        self.runtime = runtime
        self.containers: dict[tuple[str, str, str], tuple[str | None, str | None, str | None]] = {}

    def find_container(self, ns: str, pod: str, container: str):
        return self.containers.get((ns, pod, container))

    async def port_forward(self, ns: str, pod: str, port: int):
        # These pods share the node's network, as the process runtime's do.
        return await asyncio.open_connection("127.0.0.1", port)


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pki = PKI(tmp / "pki")
        self.pki.ensure(["127.0.0.1", "localhost"])
        self.kubeconfig = tmp / "kubeconfig"

    async def start(self) -> None:
        self.api = await start_api(self.tmp)
        self.api.kubelet_client = proxy.KubeletClient.from_pki(self.pki)  # type: ignore[attr-defined]
        self.runner = web.AppRunner(make_app(self.api, TokenAuth()), handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=server_ssl_context(self.pki))
        await site.start()
        port = self.runner.addresses[0][1]
        self.pki.write_kubeconfig(self.kubeconfig, f"https://127.0.0.1:{port}")
        self.runtime = ProcessRuntime(str(self.tmp / "rt"), namespaces=False, cgroups=False)
        self.kubelet = FakeKubelet(self.runtime)
        cert, key = self.tmp / "kubelet.crt", self.tmp / "kubelet.key"
        ensure_serving_cert(self.pki, cert, key, ["127.0.0.1"])
        self.kserver = KubeletServer(self.kubelet, "127.0.0.1", 0, serving_ssl_context(self.pki.ca_cert, cert, key))
        await self.kserver.start()
        code, _ = await call(self.api, "POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}})
        assert code == 201
        code, node = await call(self.api, "GET", "/api/v1/nodes/node1")
        node["status"] = {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                          "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kserver.port}}}
        code, _ = await call(self.api, "PUT", "/api/v1/nodes/node1/status", node)
        assert code == 200

    async def stop(self) -> None:
        await self.kserver.stop()
        await self.api.kubelet_client.close()  # type: ignore[attr-defined]
        await self.runner.cleanup()
        await stop_api(self.api)
        for sb in await self.runtime.list_pod_sandboxes():
            await self.runtime.remove_pod_sandbox(sb.id)

    async def run_pod(self, name: str, script: str, *, start: bool = True) -> str | None:
        """A pod bound to node1; with start, its container runs and the status says Running."""
        obj = pod_obj(name, ["c"], node="node1")
        code, body = await call(self.api, "POST", "/api/v1/namespaces/default/pods", obj)
        assert code == 201, body
        if not start:
            return None
        sid = await self.runtime.run_pod_sandbox(PodSandboxConfig(PodSandboxMetadata(name, "default", name)))
        cid = await self.runtime.create_container(sid, ContainerConfig(
            ContainerMetadata("c"), image="busybox", command=["sh", "-c", script]))
        await self.runtime.start_container(cid)
        st = await self.runtime.container_status(cid)
        self.kubelet.containers[("default", name, "c")] = (cid, st.log_path, None)
        _, pod = await call(self.api, "GET", f"/api/v1/namespaces/default/pods/{name}")
        pod["status"] = {"phase": "Running", "containerStatuses": [{
            "name": "c", "ready": True, "restartCount": 0, "image": "busybox", "imageID": "",
            "containerID": f"process://{cid}", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
        code, body = await call(self.api, "PUT", f"/api/v1/namespaces/default/pods/{name}/status", pod)
        assert code == 200, body
        return cid

    async def kubectl(self, *args: str, input: bytes | None = None, timeout: float = 30) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, *args, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=dict(os.environ, KUBECONFIG=str(self.kubeconfig)))
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
        return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def cluster(tmp_path: Path):
    c = Cluster(tmp_path)
    await c.start()
    try:
        yield c
    finally:
        await c.stop()


async def _log_has(runtime: ProcessRuntime, cid: str, text: str) -> bool:
    path = (await runtime.container_status(cid)).log_path
    return os.path.exists(path) and text.encode() in open(path, "rb").read()


async def eventually(cond, timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_pod_log_errors_without_kubectl(cluster: Cluster):
    api = cluster.api
    await call(api, "POST", "/api/v1/namespaces/default/pods", pod_obj("loose", ["c"]))
    resp = await proxy.pod_log(api, "default", "loose", {})
    assert (resp.status, resp.body, resp.stream) == (200, b"", None)  # not scheduled: nothing, as upstream
    await cluster.run_pod("waiting", "true", start=False)
    with pytest.raises(StatusError) as e:
        await proxy.pod_log(api, "default", "waiting", {})
    assert e.value.message == 'container "c" in pod "waiting" is waiting to start: ContainerCreating'
    cid = await cluster.run_pod("p", "echo hi; exec sleep 1000")
    await eventually(lambda: _log_has(cluster.runtime, cid, "hi"), what="log line")
    # The kubelet's own error (no previous instance) comes back with its code and message.
    with pytest.raises(StatusError) as e:
        await proxy.pod_log(api, "default", "p", {"previous": "true"})
    assert (e.value.code, e.value.message) == (400, 'previous terminated container "c" in pod "p" not found')
    resp = await proxy.pod_log(api, "default", "p", {"container": "c"})
    assert b"".join([c async for c in resp.stream]) == b"hi\n"
    with pytest.raises(StatusError) as e:
        await proxy.pod_log(api, "default", "p", {"container": "nope"})
    assert e.value.message == "container nope is not valid for pod p"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
async def test_kubectl_logs_exec_through_the_apiserver(cluster: Cluster, tmp_path: Path):
    flag = tmp_path / "flag"
    cid = await cluster.run_pod(
        "web", f"echo hello; while [ ! -e {flag} ]; do sleep 0.02; done; echo later; exec sleep 1000")
    await eventually(lambda: _log_has(cluster.runtime, cid, "hello"), what="first log line")

    code, out, err = await cluster.kubectl("logs", "web")
    assert (code, out) == (0, "hello\n"), err

    # logs -f: the first line, then one written after kubectl connected, then stop kubectl.
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "logs", "-f", "web", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, KUBECONFIG=str(cluster.kubeconfig)))
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"hello\n"
        flag.touch()
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"later\n"
    finally:
        proc.terminate()
        await proc.wait()

    code, out, err = await cluster.kubectl("exec", "web", "--", "ls", "/")
    assert code == 0, err
    assert "etc" in out.split() and "usr" in out.split()

    code, out, err = await cluster.kubectl("exec", "web", "--", "sh", "-c", "echo oops >&2; exit 7")
    assert code == 7
    assert "oops" in err and "command terminated with exit code 7" in err

    # stdin through the proxy, ended by the v5 CLOSE signal kubectl sends at EOF.
    code, out, err = await cluster.kubectl("exec", "-i", "web", "--", "cat", input=b"piped\n")
    assert (code, out) == (0, "piped\n"), err

    code, out, err = await cluster.kubectl("exec", "web", "-c", "nope", "--", "ls")
    assert code != 0 and "container nope is not valid for pod web" in err

    await cluster.run_pod("idle", "true", start=False)
    code, out, err = await cluster.kubectl("logs", "idle")
    assert code == 1
    assert 'container "c" in pod "idle" is waiting to start: ContainerCreating' in err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _http_get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
async def test_kubectl_port_forward(cluster: Cluster, tmp_path: Path):
    import sys

    port = _free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello through the tunnel\n")
    await cluster.run_pod("srv", f"cd {tmp_path / 'www'} && exec {sys.executable} -m http.server {port} "
                                 "--bind 127.0.0.1")

    async def listening() -> bool:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        w.close()
        return True

    await eventually(listening, what="the pod's server")
    proc = await asyncio.create_subprocess_exec(
        KUBECTL, "port-forward", "pod/srv", f":{port}", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ, KUBECONFIG=str(cluster.kubeconfig)))
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
        assert m and int(m.group(2)) == port, line
        local = int(m.group(1))
        # Two connections over the one tunnel, one after the other.
        for _ in range(2):
            reply = await asyncio.wait_for(_http_get(local), 20)
            assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"hello through the tunnel\n")
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    assert b"error" not in err.lower(), err
