"""The VolumeBinding plugin: on plain dicts through the framework, then with the PV controller and a real API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client
from kybernetes.controllers.persistentvolume import PersistentVolumeController
from kybernetes.scheduler import Scheduler, SchedulerConfig
from kybernetes.scheduler.framework import SKIP, UNRESOLVABLE, FitError, Framework
from kybernetes.scheduler.nodeinfo import Cache, PodInfo
from kybernetes.scheduler.plugins import DEFAULT_WEIGHTS, default_plugins
from kybernetes.scheduler.plugins.volumebinding import (
    BIND_CONFLICT,
    NODE_CONFLICT,
    PV_NOT_EXIST,
    UNBOUND_IMMEDIATE,
    VolumeBinding,
)
from kybernetes.storage.sqlite import SqliteStore

from .conftest import eventually
from .helpers import make_node, make_pod

Obj = dict[str, Any]


class Store:
    """What the plugin reads from the scheduler's informers: get(key) and list()."""

    def __init__(self, *objs: Obj):
        self.objs: dict[str, Obj] = {}
        for o in objs:
            self.add(o)

    def add(self, o: Obj) -> None:
        m = o["metadata"]
        self.objs[f"{m['namespace']}/{m['name']}" if m.get("namespace") else m["name"]] = o

    def get(self, key: str) -> Obj | None:
        return self.objs.get(key)

    def list(self) -> list[Obj]:
        return list(self.objs.values())


def claim(name: str, cls: str = "", volume: str = "", **extra: Any) -> Obj:
    spec: Obj = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "storageClassName": cls}
    if volume:
        spec["volumeName"] = volume
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", **extra}, "spec": spec}


def volume(name: str, cls: str = "", node: str | None = None, size: str = "5Gi") -> Obj:
    spec: Obj = {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"], "storageClassName": cls,
                 "hostPath": {"path": "/tmp"}}
    if node:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}, "spec": spec,
            "status": {"phase": "Available"}}


def storage_class(name: str, provisioner: str = "kybernetes.io/local-path", wffc: bool = True, **extra: Any) -> Obj:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
            "provisioner": provisioner, "volumeBindingMode": "WaitForFirstConsumer" if wffc else "Immediate",
            **extra}


def pod_with(*claims: str) -> dict:
    return make_pod("p", volumes=[{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                                  for i, c in enumerate(claims)])


def framework(claims: Store, volumes: Store, classes: Store) -> tuple[Framework, VolumeBinding]:
    plugins = default_plugins()
    vb = next(p for p in plugins if p.name == "VolumeBinding")
    vb.claims, vb.volumes, vb.classes = claims, volumes, classes
    return Framework(plugins, DEFAULT_WEIGHTS), vb


def nodes(*names: str) -> Cache:
    c = Cache()
    for n in names:
        c.add_node(make_node(n))
    return c


def schedule(fw: Framework, pod: dict, cache: Cache) -> str:
    try:
        return fw.schedule(PodInfo(pod), cache).node
    except FitError as e:
        return str(e)


def test_pods_without_claims_are_skipped() -> None:
    vb = VolumeBinding()
    assert vb.pre_filter(PodInfo(make_pod("p"))) is SKIP
    assert vb.pre_filter(PodInfo(make_pod("p", volumes=[{"name": "e", "emptyDir": {}}]))) is SKIP
    # Bound claims whose volumes go anywhere need no filtering either.
    vb = VolumeBinding(Store(claim("c", volume="v")), Store(volume("v")), Store())
    assert vb.pre_filter(PodInfo(pod_with("c"))) is SKIP


def test_missing_and_unbound_immediate_claims() -> None:
    fw, vb = framework(Store(claim("unbound"), claim("going", deletionTimestamp="2024-01-01T00:00:00Z")),
                       Store(), Store())
    cache = nodes("n1", "n2")
    st = vb.pre_filter(PodInfo(pod_with("nope")))
    assert st.code == UNRESOLVABLE and st.reasons == ('persistentvolumeclaim "nope" not found',)
    assert schedule(fw, pod_with("nope"), cache) == \
        '0/2 nodes are available: persistentvolumeclaim "nope" not found.'
    assert schedule(fw, pod_with("unbound"), cache) == f"0/2 nodes are available: {UNBOUND_IMMEDIATE}."
    assert schedule(fw, pod_with("going"), cache) == \
        '0/2 nodes are available: persistentvolumeclaim "going" is being deleted.'


def test_bound_volume_node_affinity() -> None:
    claims = Store(claim("c", volume="v"), claim("gone", volume="missing"))
    fw, _ = framework(claims, Store(volume("v", node="n2")), Store())
    assert schedule(fw, pod_with("c"), nodes("n1", "n2", "n3")) == "n2"
    assert schedule(fw, pod_with("c"), nodes("n1", "n3")) == f"0/2 nodes are available: 2 {NODE_CONFLICT}."
    assert schedule(fw, pod_with("gone"), nodes("n1")) == f"0/1 nodes are available: 1 {PV_NOT_EXIST}."


def test_delayed_claims() -> None:
    classes = Store(storage_class("local-path"), storage_class("static", "kubernetes.io/no-provisioner"),
                    storage_class("zoned", allowedTopologies=[{"matchLabelExpressions": [
                        {"key": "kubernetes.io/hostname", "values": ["n3"]}]}]))
    claims = Store(claim("dyn", "local-path"), claim("st", "static"), claim("z", "zoned"))
    volumes = Store(volume("on-n1", "static", node="n1"), volume("too-small", "static", node="n2", size="1Mi"))
    fw, vb = framework(claims, volumes, classes)
    cache = nodes("n1", "n2", "n3")
    # A provisioner can make a volume anywhere (within the class's allowed topologies).
    assert schedule(fw, pod_with("dyn"), cache) in ("n1", "n2", "n3")
    assert schedule(fw, pod_with("z"), cache) == "n3"
    # Without one, only nodes that reach a fitting static volume do.
    assert schedule(fw, pod_with("st"), cache) == "n1"
    assert schedule(fw, pod_with("st", "dyn"), cache) == "n1"
    assert schedule(fw, pod_with("st"), nodes("n2", "n3")) == f"0/2 nodes are available: 2 {BIND_CONFLICT}."


async def test_pre_bind_annotates_and_waits() -> None:
    classes = Store(storage_class("local-path"))
    claims = Store(claim("dyn", "local-path"), claim("done", volume="v"))
    patched: list[tuple[str, Obj]] = []

    class Claims:
        async def patch(self, name: str, body: Obj, namespace: str) -> None:
            patched.append((name, body))
            c = claims.get(f"{namespace}/{name}")
            c["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])

    vb = VolumeBinding(claims, Store(volume("v")), classes, Claims(), bind_timeout=5)
    claims.get("default/done")["metadata"]["annotations"] = {"pv.kubernetes.io/bind-completed": "yes"}
    task = asyncio.create_task(vb.pre_bind(PodInfo(pod_with("dyn", "done")), "n1"))
    await asyncio.sleep(0.05)
    assert patched == [("dyn", {"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "n1"}}})]
    assert not task.done()
    # The PV controller binds the claim; the informer tells the plugin.
    c = claims.get("default/dyn")
    c["spec"]["volumeName"] = "pvc-x"
    c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] = "yes"
    vb.notify()
    await asyncio.wait_for(task, 1)


# ---------------------------------------------------------------------------- with the API


@pytest.fixture
async def api(tmp_path: Path):
    store = SqliteStore(tmp_path / "state.db")
    a = APIServer(store)
    await a.start()
    try:
        yield a
    finally:
        await a.stop()
        await store.close()


async def test_scheduler_provisions_for_first_consumer(api: APIServer, tmp_path: Path) -> None:
    client = Client.in_process(api.handle)
    ctrl = PersistentVolumeController(Client.in_process(api.handle), storage_dir=str(tmp_path / "storage"))
    await ctrl.start()
    pods = client.resource("v1", "pods")
    pvcs = client.resource("v1", "persistentvolumeclaims")
    events = client.resource("v1", "events")
    try:
        await client.resource("v1", "nodes", namespaced=False).create(make_node("only"))
        async with Scheduler(client, SchedulerConfig()):
            # A claim that does not exist yet: FailedScheduling, then scheduled once it does.
            p = make_pod("web-0", volumes=[{"name": "www", "persistentVolumeClaim": {"claimName": "www"}}])
            del p["metadata"]["uid"]
            await pods.create(p)

            async def failed() -> Obj | None:
                items = (await events.list("default", field_selector="involvedObject.name=web-0"))["items"]
                return next((e for e in items if e["reason"] == "FailedScheduling"), None)
            ev = await eventually(failed, what="FailedScheduling")
            assert ev["message"].startswith('0/1 nodes are available: persistentvolumeclaim "www" not found.')
            await pvcs.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "www"},
                               "spec": {"accessModes": ["ReadWriteOnce"],
                                        "resources": {"requests": {"storage": "1Gi"}}}}, "default")

            async def node() -> str | None:
                return ((await pods.get("web-0", "default")).get("spec") or {}).get("nodeName")
            assert await eventually(node, what="web-0 bound") == "only"
            # Bound only once the claim was: the kubelet finds the volume ready.
            c = await pvcs.get("www", "default")
            assert c["status"]["phase"] == "Bound"
            assert c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"] == "only"
            pv = await client.resource("v1", "persistentvolumes", namespaced=False).get(c["spec"]["volumeName"])
            assert pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0][
                "values"] == ["only"]
    finally:
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
