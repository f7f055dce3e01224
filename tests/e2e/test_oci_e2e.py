"""Real containers through the real kubectl: `kyb server --runtime oci` pulls OCI images from a
registry on loopback (Debian's docker-registry) and runs them with runc.

The images are the project's own (``kyb image build``, from Debian's busybox-static): no
public registry is reachable, and nothing here talks to any address but loopback. The
server's registries.yaml mirrors docker.io to the local registry, so ``busybox`` resolves
there and never leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kybernetes.images import build
from tests.images.registryfixture import HAVE_REGISTRY, REGISTRY_BIN, _registry_config, bcrypt_hash

from .conftest import KUBECTL, Server, free_port, needs_kubectl, wait_for
from .test_pods_e2e import Terminal


def _oci_available() -> tuple[bool, str]:
    from kybernetes.runtime.oci import OciRuntime
    return OciRuntime.available()


_OK, _WHY = _oci_available()
pytestmark = [needs_kubectl,
              pytest.mark.skipif(not _OK, reason=f"the OCI runtime cannot run here: {_WHY}"),
              pytest.mark.skipif(not HAVE_REGISTRY, reason="docker-registry is not installed")]

KYB = [sys.executable, "-m", "kybernetes.cli.main"]
HTTP_PORT = free_port()
# busybox ash's prompt, then whatever line editing sends after it: a cursor-position query
# (ESC[6n) and, when the terminal does not answer, a redraw ending in ESC[J.
BUSYBOX_PROMPT = r"# (?:\x1b\[[0-9;]*[A-Za-z](?:/ # )?)*$"


class Registry:
    """docker-registry on a free loopback port, started and stopped by a fixture."""

    def __init__(self, base: Path, username: str = "", password: str = ""):
        root = base / "storage"
        root.mkdir(parents=True)
        htpasswd = None
        if username:
            htpasswd = str(base / "htpasswd")
            Path(htpasswd).write_text(f"{username}:{bcrypt_hash(password)}\n")
        self.port = free_port()
        cfg = base / "config.yml"
        cfg.write_text(_registry_config(str(root), self.port, htpasswd, None))
        self.log = base / "registry.log"
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg)], stdout=open(self.log, "wb"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT)
        self.host = f"127.0.0.1:{self.port}"
        self.username, self.password = username, password

        def up() -> bool:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return True
            except urllib.error.HTTPError as e:
                return e.code == 401
            except OSError:
                return False
        wait_for(up, 20)

    def push(self, tarball: Path, name: str) -> str:
        return asyncio.run(build.push(str(tarball), f"{self.host}/{name}", username=self.username,
                                      password=self.password))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    out = {}
    with build.busybox_image("busybox:latest") as img:
        out["busybox"] = Path(build.write_oci_layout(str(d / "busybox.tar"), img))
    with build.web_image("web:1", port=HTTP_PORT) as img:
        out["web"] = Path(build.write_oci_layout(str(d / "web.tar"), img))
    with build.busybox_image("tools:1", user="1000:1000", working_dir="/tmp", env=[
            build.DEFAULT_PATH, "FROM_IMAGE=yes", "OVERRIDE=image"], entrypoint=["echo", "entry"],
            cmd=["from", "cmd"]) as img:
        out["tools"] = Path(build.write_docker_archive(str(d / "tools.tar"), img))
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory, images):
    reg = Registry(tmp_path_factory.mktemp("registry"))
    reg.push(images["busybox"], "library/busybox:latest")
    reg.web_digest = reg.push(images["web"], "web:1")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def private(tmp_path_factory, images):
    reg = Registry(tmp_path_factory.mktemp("private"), "alice", "s3cret")
    reg.push(images["web"], "secret/web:1")
    yield reg
    reg.stop()


@pytest.fixture(scope="module")
def oci(tmp_path_factory, registry):
    data = tmp_path_factory.mktemp("kyb-oci")
    # docker.io resolves through the loopback registry: `busybox` never leaves the machine.
    (data / "registries.yaml").write_text(f'mirrors:\n  docker.io:\n    endpoint: ["http://{registry.host}"]\n')
    s = Server(data, free_port(), ["--runtime", "oci"])
    s.start(timeout=30)
    yield s
    s.stop()


def events(server: Server, pod: str) -> list[dict]:
    return server.kjson("get", "events", "--field-selector", f"involvedObject.name={pod}")["items"]


def waiting_reason(server: Server, pod: str) -> str | None:
    cs = (server.kjson("get", "pod", pod).get("status") or {}).get("containerStatuses") or [{}]
    return ((cs[0].get("state") or {}).get("waiting") or {}).get("reason")


def run(server: Server, name: str, image: str, *cmd: str, extra: tuple[str, ...] = ()) -> None:
    args = ["run", name, f"--image={image}", "--restart=Never", *extra]
    if cmd:
        args += ["--command", "--", *cmd]
    server.kubectl(*args)


def finished(server: Server, name: str, timeout: float = 60) -> dict:
    def done():
        pod = server.kjson("get", "pod", name)
        return pod if pod["status"].get("phase") in ("Succeeded", "Failed") else None
    return wait_for(done, timeout)


def test_pull_run_exec_logs_cp_delete(oci: Server, registry: Registry, tmp_path: Path):
    image = f"{registry.host}/web:1"
    oci.kubectl("run", "web", f"--image={image}", f"--port={HTTP_PORT}")
    oci.kubectl("wait", "--for=condition=Ready", "pod/web", "--timeout=60s")
    reasons = wait_for(lambda: (r := [e["reason"] for e in events(oci, "web")]) and
                       {"Pulling", "Pulled", "Created", "Started"} <= set(r) and r, 10)
    assert reasons.index("Pulling") < reasons.index("Pulled") < reasons.index("Started")
    pulled = next(e["message"] for e in events(oci, "web") if e["reason"] == "Pulled")
    assert pulled.startswith(f'Successfully pulled image "{image}" in ') and "Image size: " in pulled
    pod = oci.kjson("get", "pod", "web")
    cs = pod["status"]["containerStatuses"][0]
    assert cs["imageID"] == f"{registry.host}/web@{registry.web_digest}"
    # Its own root filesystem (the image's /www, none of the host's), hostname and processes.
    root = oci.kubectl("exec", "web", "--", "ls", "/").stdout.split()
    assert "www" in root and "work" not in root and "lib64" not in root, root
    assert oci.kubectl("exec", "web", "--", "hostname").stdout.strip() == "web"
    ps = oci.kubectl("exec", "web", "--", "ps", "-o", "pid,args").stdout.splitlines()[1:]
    assert [line.split(None, 1)[1] for line in ps if "ps -o" not in line] == [
        f"httpd -f -p {HTTP_PORT} -h /www"], ps
    assert ps[0].split()[0] == "1"
    # The server answers on its port (the pod shares the node's network until the pod network lands).
    body = urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/", timeout=5).read().decode()
    assert "hello from kybernetes" in body
    oci.kubectl("cp", "web:/www/index.html", str(tmp_path / "index.html"))
    assert (tmp_path / "index.html").read_text() == body
    # A write lands in the container's own layer, not in the image or on the host.
    oci.kubectl("exec", "web", "--", "sh", "-c", "echo changed > /www/index.html")
    assert oci.kubectl("exec", "web", "--", "cat", "/www/index.html").stdout == "changed\n"
    # httpd as PID 1 ignores SIGTERM (no handler, as for any PID 1): the kill after the grace period ends it.
    oci.kubectl("delete", "pod", "web", "--grace-period=2", "--timeout=30s")
    # The node reports the image in its status.
    node = oci.kjson("get", "nodes")["items"][0]
    names = wait_for(lambda: [n for i in oci.kjson("get", "node", node["metadata"]["name"])["status"].get(
        "images", []) for n in i["names"]], 30)
    assert f"{registry.host}/web:1" in names and f"{registry.host}/web@{registry.web_digest}" in names


def test_docker_io_through_the_mirror_and_logs(oci: Server):
    run(oci, "hello", "busybox", "sh", "-c", "echo hello from $(hostname); cat /etc/hostname")
    pod = finished(oci, "hello")
    assert pod["status"]["phase"] == "Succeeded", pod["status"]
    assert oci.kubectl("logs", "hello").stdout == "hello from hello\nhello\n"
    assert pod["status"]["containerStatuses"][0]["imageID"].startswith("docker.io/library/busybox@sha256:")
    oci.kubectl("delete", "pod", "hello", "--wait=false")


def test_entrypoint_cmd_args_env_user_workdir(oci: Server, images):
    p = subprocess.run(KYB + ["image", "import", "--data-dir", str(oci.data_dir), str(images["tools"])],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "tools:1" in p.stdout
    ls = subprocess.run(KYB + ["image", "ls", "--data-dir", str(oci.data_dir)], capture_output=True, text=True,
                        timeout=60).stdout
    assert "docker.io/library/tools" in ls
    specs = {
        "neither": ({}, "entry from cmd\n"),
        "args": ({"args": ["only", "args"]}, "entry only args\n"),
        "command": ({"command": ["sh", "-c", 'echo "$FROM_IMAGE $OVERRIDE $(id -u):$(id -g) $(pwd)"']},
                    "yes container 1000:1000 /tmp\n"),
        "both": ({"command": ["echo"], "args": ["just", "these"]}, "just these\n"),
        "root": ({"command": ["id", "-u"], "securityContext": {"runAsUser": 0}}, "0\n"),
    }
    for name, (fields, _) in specs.items():
        c = {"name": "c", "image": "tools:1", "imagePullPolicy": "Never",
             "env": [{"name": "OVERRIDE", "value": "container"}], **fields}
        oci.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"cmd-{name}"}, "spec": {"restartPolicy": "Never", "containers": [c]}}))
    for name, (_, want) in specs.items():
        pod = finished(oci, f"cmd-{name}")
        assert pod["status"]["phase"] == "Succeeded", (name, pod["status"])
        assert oci.kubectl("logs", f"cmd-{name}").stdout == want, name
    oci.kubectl("delete", "pod", *[f"cmd-{n}" for n in specs], "--wait=false")


def test_security_context_and_termination_message(oci: Server):
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "locked"}, "spec": {
        "restartPolicy": "Never", "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000},
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", "id; touch /x 2>&1; echo bye > /dev/termination-log; "
                                    "touch /data/mine && stat -c 'data %g %A' /data /data/mine; exit 3"],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/data"}],
                        "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}}}]}}
    oci.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    pod = finished(oci, "locked")
    out = oci.kubectl("logs", "locked").stdout
    assert re.match(r"uid=1000(\(\w+\))? gid=3000 groups=.*2000", out), out
    assert "Read-only file system" in out, out
    # fsGroup owns the volume: the non-root user may write to it, and new files inherit the group.
    assert "data 2000 drwxrwsrwx" in out and "data 2000 -rw-r--r--" in out, out
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term.get("message")) == (3, "Error", "bye\n")
    # runAsNonRoot against an image that runs as root is refused before anything starts.
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nonroot"}, "spec": {
        "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "3600"], "securityContext": {"runAsNonRoot": True}}]}}
    oci.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_for(lambda: waiting_reason(oci, "nonroot") == "CreateContainerConfigError", 30)
    msg = oci.kjson("get", "pod", "nonroot")["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
    assert "container has runAsNonRoot and image will run as root" in msg
    oci.kubectl("delete", "pod", "locked", "nonroot", "--wait=false")


def test_oom_killed(oci: Server):
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hog"}, "spec": {
        "restartPolicy": "Never", "containers": [{
            "name": "hog", "image": "busybox", "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "x=$(head -c 200m /dev/zero | tr '\\0' a); echo survived"],
            "resources": {"limits": {"memory": "32Mi"}}}]}}
    oci.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    pod = finished(oci, "hog")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["reason"], term["exitCode"]) == ("OOMKilled", 137), term
    oci.kubectl("delete", "pod", "hog", "--wait=false")


def test_pull_failures_back_off(oci: Server, registry: Registry):
    missing = f"{registry.host}/nope:1"
    run(oci, "missing", missing, "true")
    wait_for(lambda: waiting_reason(oci, "missing") == "ImagePullBackOff", 60)
    msgs = [e["message"] for e in events(oci, "missing")]
    assert any(m.startswith(f'Failed to pull image "{missing}"') and "not found" in m for m in msgs), msgs
    assert f'Back-off pulling image "{missing}"' in msgs
    # A digest the registry does not have is refused, and the store holds nothing under it.
    bad = "sha256:" + "0" * 64
    run(oci, "baddigest", f"{registry.host}/web@{bad}", "true")
    wait_for(lambda: waiting_reason(oci, "baddigest") in ("ErrImagePull", "ImagePullBackOff"), 60)
    assert not (oci.data_dir / "images" / "content" / "blobs" / "sha256" / ("0" * 64)).exists()
    # By digest, it runs.
    run(oci, "bydigest", f"{registry.host}/web@{registry.web_digest}", "echo", "pinned")
    assert finished(oci, "bydigest")["status"]["phase"] == "Succeeded"
    # Never: not present is an error of its own.
    run(oci, "never", f"{registry.host}/notpulled:1", "true", extra=("--image-pull-policy=Never",))
    wait_for(lambda: waiting_reason(oci, "never") == "ErrImageNeverPull", 30)
    oci.kubectl("delete", "pod", "missing", "baddigest", "bydigest", "never", "--wait=false")


def test_image_pull_secrets(oci: Server, private: Registry):
    image = f"{private.host}/secret/web:1"
    run(oci, "nocreds", image, "true")
    wait_for(lambda: waiting_reason(oci, "nocreds") in ("ErrImagePull", "ImagePullBackOff"), 60)
    oci.kubectl("create", "secret", "docker-registry", "regcred", f"--docker-server={private.host}",
                "--docker-username=alice", "--docker-password=s3cret")
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "withcreds"}, "spec": {
        "restartPolicy": "Never", "imagePullSecrets": [{"name": "regcred"}],
        "containers": [{"name": "c", "image": image, "command": ["cat", "/www/healthz"]}]}}
    oci.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    assert finished(oci, "withcreds")["status"]["phase"] == "Succeeded"
    assert oci.kubectl("logs", "withcreds").stdout == "ok\n"
    # A ServiceAccount's pull secrets apply to its pods.
    oci.kubectl("create", "serviceaccount", "puller")
    oci.kubectl("patch", "serviceaccount", "puller", "-p", '{"imagePullSecrets":[{"name":"regcred"}]}')
    run(oci, "viasa", image, "cat", "/www/healthz", extra=("--overrides",
        json.dumps({"spec": {"serviceAccountName": "puller"}})))
    assert finished(oci, "viasa")["status"]["phase"] == "Succeeded"
    oci.kubectl("delete", "pod", "nocreds", "withcreds", "viasa", "--wait=false")


def test_exec_it_port_forward_and_restart_adoption(oci: Server):
    # A port free now: the pod shares the node's network here (no pod network in this module).
    port = free_port()
    oci.kubectl("run", "shell", "--image=busybox", "--image-pull-policy=IfNotPresent", "--command", "--",
                "sh", "-c", f"httpd -f -p {port} -h /etc & exec sleep 3600")
    oci.kubectl("wait", "--for=condition=Ready", "pod/shell", "--timeout=60s")
    env = dict(os.environ, KUBECONFIG=str(oci.kubeconfig), TERM="xterm")
    t = Terminal([KUBECTL, "exec", "-it", "shell", "--", "sh"], env, rows=24, cols=80)

    def command(line: str, output: str) -> bytes:
        t.send(line + "\r")
        m = t.expect(output)
        t.expect(BUSYBOX_PROMPT)
        return m.group(1)

    try:
        t.expect(BUSYBOX_PROMPT)
        assert command("echo $((6*7))", r"\n(\d+)\r*\n") == b"42"
        assert command("stty size", r"\n(\d+ \d+)\r*\n") == b"24 80"
        t.resize(40, 120)
        deadline = time.monotonic() + 20
        while command("stty size", r"\n(\d+ \d+)\r*\n") != b"40 120":
            assert time.monotonic() < deadline
        t.send("exit 4\r")
        assert t.proc.wait(30) == 4
    finally:
        t.close()
    # port-forward reaches the pod's port.
    local = free_port()
    pf = subprocess.Popen([KUBECTL, "port-forward", "pod/shell", f"{local}:{port}"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def fetched():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{local}/hostname", timeout=2).read()
            except OSError:
                return None
        assert wait_for(fetched, 20) == b"shell\n"
    finally:
        pf.send_signal(signal.SIGINT)
        pf.wait(10)
    # A restarted server (and its kubelet) adopts the running container: same id, no restart.
    before = oci.kjson("get", "pod", "shell")["status"]["containerStatuses"][0]
    oci.stop(killall=False)
    oci.start(timeout=30)
    wait_for(lambda: oci.kubectl("exec", "shell", "--", "echo", "still", check=False).stdout == "still\n", 30)
    after = oci.kjson("get", "pod", "shell")["status"]["containerStatuses"][0]
    assert (after["containerID"], after["restartCount"]) == (before["containerID"], 0)
    assert after["ready"] is True
    # The image is in use: removing it is refused; prune keeps it.
    p = subprocess.run(KYB + ["image", "rm", "--data-dir", str(oci.data_dir), "docker.io/library/busybox:latest"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "in use" in p.stderr.lower(), (p.stdout, p.stderr)
    oci.kubectl("delete", "pod", "shell", "--grace-period=1", "--timeout=60s")


def test_image_prune_and_rm(oci: Server):
    p = subprocess.run(KYB + ["image", "prune", "--data-dir", str(oci.data_dir)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    ls = subprocess.run(KYB + ["image", "ls", "--data-dir", str(oci.data_dir)], capture_output=True, text=True,
                        timeout=60).stdout
    assert "tools" not in ls, ls
