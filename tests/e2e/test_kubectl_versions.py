"""Every kubectl version installed beside the default one (1.27-1.33 here) works as it is.

Streaming differs the most between versions: kubectl before 1.30 runs exec over
SPDY/3.1 (1.30+ over WebSockets, falling back to SPDY), and before 1.31
port-forward too (1.31+ tunnels SPDY in a WebSocket). One pod serves every
version's exec, exec -i and port-forward.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import KUBECTL, Server, free_port, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _versions() -> list[Path]:
    if not KUBECTL:
        return []
    d = Path(os.path.realpath(KUBECTL)).parent
    found = [p for p in d.glob("kubectl.1.*") if re.fullmatch(r"kubectl\.1\.\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit(".", 1)[1]))


VERSIONS = _versions()


@pytest.mark.skipif(not VERSIONS, reason="no versioned kubectl binaries installed")
@pytest.mark.parametrize("binary", VERSIONS, ids=[p.name for p in VERSIONS])
def test_kubectl_version_works(server: Server, binary: Path):
    env = dict(os.environ, KUBECONFIG=str(server.kubeconfig))

    def k(*args: str, input: str | None = None) -> str:
        p = subprocess.run([str(binary), *args], input=input, capture_output=True, text=True, env=env,
                           timeout=60)
        assert p.returncode == 0, f"{binary.name} {' '.join(args)}: {p.stderr}"
        return p.stdout

    ns = "v" + binary.name.rsplit(".", 1)[1]
    k("create", "namespace", ns)
    k("create", "configmap", "c", "-n", ns, "--from-literal=a=b")
    k("apply", "-n", ns, "-f", str(EXAMPLES / "nginx-deployment.yaml"))
    assert "unchanged" in k("apply", "-n", ns, "-f", str(EXAMPLES / "nginx-deployment.yaml"))
    out = k("get", "deploy,cm", "-n", ns, "-o", "wide")
    assert "nginx-deployment" in out and "nginx:1.14.2" in out
    k("scale", "deploy/nginx-deployment", "-n", ns, "--replicas=1")
    d = json.loads(k("get", "deploy", "nginx-deployment", "-n", ns, "-o", "json"))
    assert d["spec"]["replicas"] == 1
    assert "rollingUpdate" in k("explain", "deployment.spec.strategy")
    k("delete", "namespace", ns, "--timeout=30s")


@pytest.fixture(scope="module")
def web_pod(server: Server, tmp_path_factory) -> tuple[str, int]:
    """A pod serving a file over HTTP on a loopback port (pods share the node's network)."""
    port = free_port()
    www = tmp_path_factory.mktemp("www")
    (www / "hello.txt").write_text("hello through the tunnel\n")
    server.kubectl("run", "streams", "--image=busybox", "--restart=Never", "--command", "--", sys.executable,
                   "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(www))
    server.kubectl("wait", "--for=condition=Ready", "pod/streams", "--timeout=60s")
    wait_for(lambda: _get(port).startswith(b"hello"), timeout=30)
    return "streams", port


def _get(port: int) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/hello.txt")
        return conn.getresponse().read()
    except OSError:
        return b""
    finally:
        conn.close()


def _readline(proc: subprocess.Popen, timeout: float) -> bytes:
    """One line of the process's stdout, or what came before the deadline."""
    deadline, line = time.monotonic() + timeout, b""
    fd = proc.stdout.fileno()
    while not line.endswith(b"\n") and time.monotonic() < deadline:
        if select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            b = os.read(fd, 1)
            if not b:
                break
            line += b
    return line


@pytest.mark.skipif(not VERSIONS, reason="no versioned kubectl binaries installed")
@pytest.mark.parametrize("binary", VERSIONS, ids=[p.name for p in VERSIONS])
def test_kubectl_version_exec_and_port_forward(server: Server, web_pod: tuple[str, int], binary: Path):
    pod, port = web_pod
    env = dict(os.environ, KUBECONFIG=str(server.kubeconfig))

    def k(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), *args], input=input, capture_output=True, text=True, env=env,
                              timeout=60)

    # The command's exit code becomes kubectl's (v4+ error stream, or the WebSocket's status).
    p = k("exec", pod, "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (p.returncode, p.stdout) == (3, "out\n"), p.stderr
    assert "err" in p.stderr
    # stdin's end reaches the command (SPDY FIN, or the v5 CLOSE signal).
    p = k("exec", "-i", pod, "--", "cat", input="piped\n")
    assert (p.returncode, p.stdout) == (0, "piped\n"), p.stderr

    pf = subprocess.Popen([str(binary), "port-forward", f"pod/{pod}", f":{port}"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env)
    try:
        line = _readline(pf, 30).decode()
        m = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
        assert m and int(m.group(2)) == port, line
        # Two connections over the one tunnel.
        for _ in range(2):
            assert _get(int(m.group(1))) == b"hello through the tunnel\n"
    finally:
        pf.terminate()
        _, err = pf.communicate(timeout=30)
    assert b"error" not in err.lower(), err

    # attach streams the running container's output: the server logs each request to stderr.
    at = subprocess.Popen([str(binary), "attach", pod], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        seen = b""
        while b"GET /attached-" + binary.name.encode() not in seen and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/attached-" + binary.name)
                conn.getresponse().read()
            finally:
                conn.close()
            if select.select([at.stderr.fileno()], [], [], 0.5)[0]:
                seen += os.read(at.stderr.fileno(), 65536)
        assert b"GET /attached-" + binary.name.encode() in seen, seen
    finally:
        at.terminate()
        at.communicate(timeout=30)
