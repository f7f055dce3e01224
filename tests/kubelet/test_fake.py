"""The kubelet against FakeRuntime: node registration, lease, pod lifecycle, back-off, static pods."""

from __future__ import annotations

import os
from pathlib import Path

from kybernetes.api.errors import StatusError
from kybernetes.client import Client
from kybernetes.kubelet.node import KUBELET_VERSION

from .conftest import eventually, pod

FAKE_EXIT = "fake.kybernetes.io/exit-code"


async def get_pod(client: Client, name: str) -> dict:
    return await client.resource("v1", "pods").get(name, "default")


async def status_of(client: Client, name: str) -> dict:
    return (await get_pod(client, name)).get("status") or {}


def cond(status: dict, ctype: str) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == ctype), None)


async def events_for(client: Client, name: str) -> list[dict]:
    evs = (await client.resource("v1", "events").list("default"))["items"]
    return [e for e in evs if e["involvedObject"].get("name") == name]


async def test_node_registration_and_lease(client: Client, make_kubelet) -> None:
    k = await make_kubelet(port=12345)
    node = await client.resource("v1", "nodes", namespaced=False).get("node-1")
    st = node["status"]
    assert st["capacity"]["cpu"] == str(os.cpu_count())
    assert st["capacity"]["pods"] == "110"
    assert st["capacity"]["memory"].endswith("Ki") and int(st["capacity"]["memory"][:-2]) > 0
    assert "ephemeral-storage" in st["capacity"] and "ephemeral-storage" in st["allocatable"]
    assert st["allocatable"]["cpu"] == f"{os.cpu_count() * 1000 - 100}m"
    conds = {c["type"]: c for c in st["conditions"]}
    assert set(conds) == {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure"}
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "KubeletReady"
    # Pressure depends on the machine running the tests; the reasons must match the status.
    assert conds["MemoryPressure"]["reason"] == ("KubeletHasSufficientMemory"
                                                 if conds["MemoryPressure"]["status"] == "False"
                                                 else "KubeletHasInsufficientMemory")
    assert {"type": "InternalIP", "address": "127.0.0.1"} in st["addresses"]
    assert {"type": "Hostname", "address": "node-1"} in st["addresses"]
    assert st["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 12345
    info = st["nodeInfo"]
    assert info["kubeletVersion"] == KUBELET_VERSION
    assert info["containerRuntimeVersion"] == "kybernetes-fake://0.1.0"
    assert info["operatingSystem"] == "linux" and info["kernelVersion"] == os.uname().release
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-1"
    leases = client.resource("coordination.k8s.io/v1", "leases")
    first = (await leases.get("node-1", "kube-node-lease"))["spec"]
    assert first["holderIdentity"] == "node-1" and first["leaseDurationSeconds"] == 40

    async def renewed() -> bool:
        return (await leases.get("node-1", "kube-node-lease"))["spec"]["renewTime"] != first["renewTime"]

    await eventually(renewed, 5, "lease renewal")
    assert k.node.registered.is_set()


async def test_pod_runs_and_is_ready(client: Client, make_kubelet) -> None:
    await make_kubelet()
    await client.resource("v1", "pods").create(pod("web", [{"name": "c", "image": "nginx"}]))

    async def ready() -> dict | None:
        s = await status_of(client, "web")
        return s if s.get("phase") == "Running" and cond(s, "Ready") == "True" else None

    s = await eventually(ready, 5, "pod Running and Ready")
    cs = s["containerStatuses"][0]
    assert cs["containerID"].startswith("kybernetes://") and cs["ready"] and cs["started"]
    assert "running" in cs["state"] and cs["restartCount"] == 0 and cs["image"] == "nginx"
    assert s["hostIP"] == "127.0.0.1" and s["podIP"] == "127.0.0.1" and s["startTime"]
    assert {c["type"] for c in s["conditions"]} >= {"PodReadyToStartContainers", "Initialized",
                                                    "ContainersReady", "Ready"}
    assert s["qosClass"] == "BestEffort"

    async def reasons() -> bool:
        got = {e["reason"] for e in await events_for(client, "web")}
        return {"Pulled", "Created", "Started"} <= got

    await eventually(reasons, 5, "Pulled/Created/Started events")


async def test_crashloop_backoff(client: Client, make_kubelet) -> None:
    await make_kubelet()
    await client.resource("v1", "pods").create(pod("crash", [{"name": "c", "image": "busybox"}],
                                                   annotations={FAKE_EXIT: "1"}))

    async def looping() -> dict | None:
        s = await status_of(client, "crash")
        cs = (s.get("containerStatuses") or [{}])[0]
        w = (cs.get("state") or {}).get("waiting") or {}
        return cs if w.get("reason") == "CrashLoopBackOff" and cs.get("restartCount", 0) >= 1 else None

    cs = await eventually(looping, 10, "CrashLoopBackOff")
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert cs["lastState"]["terminated"]["reason"] == "Error"
    assert "back-off" in cs["state"]["waiting"]["message"]

    async def restarted_more() -> bool:
        return (await status_of(client, "crash"))["containerStatuses"][0]["restartCount"] >= 3

    await eventually(restarted_more, 15, "more restarts after back-off")

    async def backoff_event() -> bool:
        return any(e["reason"] == "BackOff" for e in await events_for(client, "crash"))

    await eventually(backoff_event, 5, "BackOff event")


async def test_restart_policy_never_and_on_failure(client: Client, make_kubelet) -> None:
    await make_kubelet()
    pods = client.resource("v1", "pods")
    await pods.create(pod("ok", [{"name": "c", "image": "busybox"}], restartPolicy="Never",
                          annotations={FAKE_EXIT: "0"}))
    await pods.create(pod("bad", [{"name": "c", "image": "busybox"}], restartPolicy="Never",
                          annotations={FAKE_EXIT: "3"}))
    await pods.create(pod("onfail", [{"name": "c", "image": "busybox"}], restartPolicy="OnFailure",
                          annotations={FAKE_EXIT: "0"}))

    async def phase(name: str) -> str | None:
        return (await status_of(client, name)).get("phase")

    await eventually(lambda: _eq(phase("ok"), "Succeeded"), 5, "ok Succeeded")
    await eventually(lambda: _eq(phase("bad"), "Failed"), 5, "bad Failed")
    await eventually(lambda: _eq(phase("onfail"), "Succeeded"), 5, "onfail Succeeded")
    s = await status_of(client, "bad")
    t = s["containerStatuses"][0]["state"]["terminated"]
    assert t["exitCode"] == 3 and t["reason"] == "Error"
    assert cond(s, "Ready") == "False"


async def _eq(coro, value) -> bool:
    return (await coro) == value


async def test_init_containers_run_first(client: Client, make_kubelet) -> None:
    await make_kubelet()
    p = pod("init", [{"name": "app", "image": "nginx"}],
            initContainers=[{"name": "i1", "image": "busybox"}, {"name": "i2", "image": "busybox"}])
    # Fake containers with the exit annotation end at once; init containers need to exit 0.
    p["metadata"]["annotations"] = {}
    await client.resource("v1", "pods").create(p)

    # Fake init containers never exit on their own, so without the annotation the pod
    # stays initializing: the app container must not have started.
    async def initializing() -> dict | None:
        s = await status_of(client, "init")
        return s if s.get("initContainerStatuses") else None

    s = await eventually(initializing, 5, "init container status")
    assert s["phase"] == "Pending" and cond(s, "Initialized") == "False"
    assert "running" in s["initContainerStatuses"][0]["state"]
    assert "waiting" in s["initContainerStatuses"][1]["state"]
    assert s["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"


async def test_init_then_app_with_exit_codes(client: Client, make_kubelet) -> None:
    await make_kubelet()
    # With exit-code 0 every container (init and app) ends at once: init succeeds, the
    # app completes, and OnFailure leaves the pod Succeeded.
    p = pod("seq", [{"name": "app", "image": "nginx"}], restartPolicy="OnFailure",
            initContainers=[{"name": "i1", "image": "busybox"}], annotations={FAKE_EXIT: "0"})
    await client.resource("v1", "pods").create(p)

    async def done() -> dict | None:
        s = await status_of(client, "seq")
        return s if s.get("phase") == "Succeeded" else None

    s = await eventually(done, 5, "Succeeded")
    assert s["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert s["initContainerStatuses"][0]["ready"] is True  # a completed init container is ready
    assert cond(s, "Initialized") == "True"


async def test_graceful_delete_removes_pod_object(client: Client, make_kubelet) -> None:
    await make_kubelet()
    pods = client.resource("v1", "pods")
    await pods.create(pod("gone", [{"name": "c", "image": "nginx"}]))
    await eventually(lambda: _eq(_phase(client, "gone"), "Running"), 5, "Running")
    await pods.delete("gone", "default")

    async def deleted() -> bool:
        try:
            await pods.get("gone", "default")
        except StatusError as e:
            return e.code == 404
        return False

    await eventually(deleted, 5, "pod object removed by the kubelet")

    async def killing() -> bool:
        return any(e["reason"] == "Killing" for e in await events_for(client, "gone"))

    await eventually(killing, 5, "Killing event")


async def _phase(client: Client, name: str) -> str | None:
    return (await status_of(client, name)).get("phase")


async def test_create_container_config_error_then_recovers(client: Client, make_kubelet) -> None:
    await make_kubelet()
    c = {"name": "c", "image": "nginx", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {
        "name": "later", "key": "k"}}}]}
    await client.resource("v1", "pods").create(pod("cfg", [c]))

    async def waiting() -> bool:
        cs = ((await status_of(client, "cfg")).get("containerStatuses") or [{}])[0]
        return ((cs.get("state") or {}).get("waiting") or {}).get("reason") == "CreateContainerConfigError"

    await eventually(waiting, 5, "CreateContainerConfigError")
    await client.resource("v1", "configmaps").create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"}, "data": {"k": "v"}}, "default")
    await eventually(lambda: _eq(_phase(client, "cfg"), "Running"), 5, "Running once the configmap exists")


async def test_static_pod_and_mirror(client: Client, make_kubelet, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "etcd.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: etcd\n  namespace: kube-system\n"
        "spec:\n  containers:\n  - name: etcd\n    image: etcd\n")
    await make_kubelet(static_pod_path=str(manifests))
    pods = client.resource("v1", "pods")

    async def mirror() -> dict | None:
        try:
            p = await pods.get("etcd-node-1", "kube-system")
        except StatusError:
            return None
        return p if (p.get("status") or {}).get("phase") == "Running" else None

    p = await eventually(mirror, 5, "mirror pod Running")
    assert "kubernetes.io/config.mirror" in p["metadata"]["annotations"]
    assert p["spec"]["nodeName"] == "node-1"
    # Deleting the mirror does not stop the static pod: the kubelet puts the mirror back.
    await pods.delete("etcd-node-1", "kube-system", grace_period_seconds=0)

    async def recreated() -> bool:
        p2 = await mirror()
        return p2 is not None and p2["metadata"]["uid"] != p["metadata"]["uid"]

    await eventually(recreated, 5, "mirror recreated")
    os.unlink(manifests / "etcd.yaml")

    async def removed() -> bool:
        try:
            await pods.get("etcd-node-1", "kube-system")
        except StatusError as e:
            return e.code == 404
        return False

    await eventually(removed, 5, "mirror removed with the manifest")



async def test_restarted_kubelet_adopts_running_containers(client: Client, tmp_path: Path) -> None:
    from kybernetes.kubelet import Kubelet
    from kybernetes.runtime.fake import FakeRuntime

    from .conftest import fast_config

    rt = FakeRuntime()
    k1 = Kubelet(client, rt, fast_config(tmp_path))
    await k1.start()
    await client.resource("v1", "pods").create(pod("keep", [{"name": "c", "image": "nginx"}]))

    async def running() -> dict | None:
        s = await status_of(client, "keep")
        return s if s.get("phase") == "Running" else None

    s1 = await eventually(running, 5, "Running")
    await k1.stop()
    k2 = Kubelet(client, rt, fast_config(tmp_path))
    await k2.start()
    try:
        await eventually(lambda: k2.find_container("default", "keep", "c") is not None, 5, "adopted")
        cid = k2.find_container("default", "keep", "c")[0]
        assert s1["containerStatuses"][0]["containerID"] == f"kybernetes://{cid}"
        s2 = await status_of(client, "keep")
        assert s2["containerStatuses"][0]["restartCount"] == 0
    finally:
        await k2.stop()
        for sb in await rt.list_pod_sandboxes():
            await rt.remove_pod_sandbox(sb.id)
