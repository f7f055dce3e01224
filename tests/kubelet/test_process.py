"""The kubelet driving real processes (ProcessRuntime as root): logs, probes, OOM, env,
volumes and graceful deletion."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

from kybernetes.api.errors import StatusError
from kybernetes.client import Client
from kybernetes.runtime.logs import read_logs

from .conftest import eventually, needs_cgroups, needs_process, pod, sh
from .test_fake import cond, events_for, status_of

pytestmark = needs_process


async def logs(kubelet, name: str, container: str = "c", previous: bool = False) -> str:
    found = kubelet.find_container("default", name, container)
    if found is None:
        return ""
    path = found[2] if previous else found[1]
    out = b""
    async for chunk in read_logs(path):
        out += chunk
    return out.decode()


async def test_pod_runs_logs_hi_and_is_ready(client: Client, make_kubelet) -> None:
    k = await make_kubelet("process")
    await client.resource("v1", "pods").create(pod("hi", [sh("c", "echo hi; exec sleep 1000")]))

    async def ready() -> dict | None:
        s = await status_of(client, "hi")
        return s if s.get("phase") == "Running" and cond(s, "Ready") == "True" else None

    await eventually(ready, 10, "Running and Ready")
    await eventually(lambda: _contains(logs(k, "hi"), "hi\n"), 5, "log line")
    cid, log_path, prev = k.find_container("default", "hi", "c")
    assert log_path.endswith("/c/0.log") and prev == ""
    assert k.runtime is not None and cid


async def _contains(coro, text: str) -> bool:
    return text in await coro


async def test_liveness_failure_restarts_container(client: Client, make_kubelet, tmp_path: Path) -> None:
    k = await make_kubelet("process")
    probe = {"exec": {"command": ["sh", "-c", f"test -e {tmp_path}/alive"]}, "periodSeconds": 1,
             "failureThreshold": 1}
    await client.resource("v1", "pods").create(pod("live", [sh("c", "echo run; exec sleep 1000",
                                                               livenessProbe=probe)],
                                                   terminationGracePeriodSeconds=1))

    async def restarted() -> bool:
        cs = ((await status_of(client, "live")).get("containerStatuses") or [{}])[0]
        return cs.get("restartCount", 0) >= 1

    await eventually(restarted, 15, "liveness restart")
    evs = await events_for(client, "live")
    assert any(e["reason"] == "Unhealthy" and "Liveness probe failed" in e["message"] for e in evs)

    async def killing() -> bool:
        return any(e["reason"] == "Killing" and "failed liveness probe" in e["message"]
                   for e in await events_for(client, "live"))

    await eventually(killing, 5, "Killing event")
    await eventually(lambda: _contains(logs(k, "live", previous=True), "run"), 5, "previous log")


async def test_readiness_flips_ready(client: Client, make_kubelet, tmp_path: Path) -> None:
    await make_kubelet("process")
    flag = tmp_path / "ready"
    probe = {"exec": {"command": ["sh", "-c", f"test -e {flag}"]}, "periodSeconds": 1}
    await client.resource("v1", "pods").create(pod("rd", [sh("c", "exec sleep 1000", readinessProbe=probe)]))

    async def ready_is(value: str) -> bool:
        s = await status_of(client, "rd")
        return s.get("phase") == "Running" and cond(s, "Ready") == value

    await eventually(lambda: ready_is("False"), 10, "running but not ready")
    flag.write_text("")
    await eventually(lambda: ready_is("True"), 10, "ready")
    flag.unlink()
    await eventually(lambda: ready_is("False"), 10, "not ready again")
    s = await status_of(client, "rd")
    assert s["containerStatuses"][0]["restartCount"] == 0


async def test_probes_run_again_for_containers_a_restarted_kubelet_adopts(client: Client, make_kubelet,
                                                                         tmp_path: Path) -> None:
    k1 = await make_kubelet("process")
    flag = tmp_path / "ready"
    flag.write_text("")
    probe = {"exec": {"command": ["sh", "-c", f"test -e {flag}"]}, "periodSeconds": 1}
    await client.resource("v1", "pods").create(pod("adopted", [sh("c", "exec sleep 1000", readinessProbe=probe)]))

    async def ready_is(value: str) -> bool:
        s = await status_of(client, "adopted")
        return s.get("phase") == "Running" and cond(s, "Ready") == value

    await eventually(lambda: ready_is("True"), 10, "ready")
    cid = (await status_of(client, "adopted"))["containerStatuses"][0]["containerID"]
    await k1.stop()
    await make_kubelet("process")  # a new kubelet (and runtime object) on the same state
    flag.unlink()
    await eventually(lambda: ready_is("False"), 10, "the adopted container's probe failing")
    flag.write_text("")
    await eventually(lambda: ready_is("True"), 10, "ready again")
    s = await status_of(client, "adopted")
    assert (s["containerStatuses"][0]["containerID"], s["containerStatuses"][0]["restartCount"]) == (cid, 0)


@needs_cgroups
async def test_memory_hog_is_oom_killed(client: Client, make_kubelet) -> None:
    await make_kubelet("process")
    hog = {"name": "c", "image": "python", "command": ["python3", "-c", "b = b'x' * (300 << 20)"],
           "resources": {"limits": {"memory": "32Mi"}}}
    await client.resource("v1", "pods").create(pod("hog", [hog], restartPolicy="Never"))

    async def oom() -> dict | None:
        s = await status_of(client, "hog")
        t = ((s.get("containerStatuses") or [{}])[0].get("state") or {}).get("terminated")
        return t if t else None

    t = await eventually(oom, 20, "terminated")
    assert t["reason"] == "OOMKilled", t
    assert (await status_of(client, "hog"))["phase"] == "Failed"


async def test_configmap_secret_env_and_volumes(client: Client, make_kubelet, tmp_path: Path) -> None:
    k = await make_kubelet("process")
    cms = client.resource("v1", "configmaps")
    await cms.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
                      "data": {"greeting": "hello", "file.txt": "one"}}, "default")
    await client.resource("v1", "secrets").create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
         "data": {"password": base64.b64encode(b"s3cret").decode()}}, "default")
    mnt = tmp_path / "mnt"
    c = sh("c", "echo \"$GREETING $PASSWORD $POD $COMBINED $CFG_greeting\"; exec sleep 1000",
           env=[{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "COMBINED", "value": "$(GREETING)-$(POD)"},
                {"name": "MISSING", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k",
                                                                   "optional": True}}}],
           envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
           volumeMounts=[{"name": "config", "mountPath": str(mnt / "config")},
                         {"name": "secret", "mountPath": str(mnt / "secret")},
                         {"name": "scratch", "mountPath": str(mnt / "scratch")}])
    await client.resource("v1", "pods").create(pod("env", [c], volumes=[
        {"name": "config", "configMap": {"name": "cfg"}},
        {"name": "secret", "secret": {"secretName": "sec", "defaultMode": 0o400}},
        {"name": "scratch", "emptyDir": {}}]))
    await eventually(lambda: _contains(logs(k, "env"), "hello s3cret env hello-env hello\n"), 10, "env in log")
    cid = k.find_container("default", "env", "c")[0]

    async def cat(path: str) -> str:
        r = await k.runtime.exec_sync(cid, ["cat", path], timeout=5)
        return r.stdout.decode()

    assert await cat(f"{mnt}/config/file.txt") == "one"
    assert await cat(f"{mnt}/secret/password") == "s3cret"
    await cms.patch("cfg", {"data": {"greeting": "hello", "file.txt": "two"}}, namespace="default")

    async def updated() -> bool:
        return await cat(f"{mnt}/config/file.txt") == "two"

    await eventually(updated, 10, "configmap update in the mounted file")
    uid = (await client.resource("v1", "pods").get("env", "default"))["metadata"]["uid"]
    vol = Path(k.config.root_dir) / "pods" / uid / "volumes" / "kubernetes.io~configmap" / "config"
    assert os.path.islink(vol / "..data") and os.readlink(vol / "file.txt") == "..data/file.txt"
    secret_file = Path(k.config.root_dir) / "pods" / uid / "volumes" / "kubernetes.io~secret" / "secret" / "password"
    assert oct(os.stat(secret_file).st_mode & 0o777) == oct(0o400)


async def test_graceful_delete_runs_prestop_then_sigterm(client: Client, make_kubelet, tmp_path: Path) -> None:
    await make_kubelet("process")
    pre, term = tmp_path / "prestop", tmp_path / "term"
    c = sh("c", f"trap 'echo term > {term}; exit 0' TERM; while true; do sleep 0.05; done",
           lifecycle={"preStop": {"exec": {"command": ["sh", "-c", f"echo pre > {pre}"]}}})
    pods = client.resource("v1", "pods")
    await pods.create(pod("grace", [c], terminationGracePeriodSeconds=10))

    async def running() -> bool:
        return (await status_of(client, "grace")).get("phase") == "Running"

    await eventually(running, 10, "Running")
    await pods.delete("grace", "default")

    async def gone() -> bool:
        try:
            await pods.get("grace", "default")
        except StatusError as e:
            return e.code == 404
        return False

    await eventually(gone, 10, "pod object deleted")
    assert pre.read_text() == "pre\n"
    assert term.read_text() == "term\n"


@needs_process
async def test_failed_creation_backs_off(client: Client, make_kubelet) -> None:
    await make_kubelet("process")
    # The process runtime cannot create a container without a command: a CreateContainerError.
    await client.resource("v1", "pods").create(pod("nocmd", [{"name": "c", "image": "busybox"}]))

    async def failures() -> int:
        return sum(e.get("count", 1) for e in await events_for(client, "nocmd")
                   if e["reason"] == "Failed" and "no command" in e["message"])

    await eventually(failures, 10, "a CreateContainerError")
    await asyncio.sleep(2.5)  # the window the retries are counted over, not a synchronisation
    # Sync runs every 0.05 s here; with the back-off (0.3 s doubling to 1.2 s) a handful of tries.
    n = await failures()
    assert 2 <= n <= 6, n
    s = await status_of(client, "nocmd")
    assert s["containerStatuses"][0]["state"]["waiting"]["reason"] == "CreateContainerError"
