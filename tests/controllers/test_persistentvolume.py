"""The PersistentVolume controller against a real in-process API server.

Binding rules (smallest fitting volume, selectors, pre-binding either way),
the local-path provisioner with WaitForFirstConsumer, reclaiming, protection
finalizers, and the DefaultStorageClass admission step. No scheduler runs here:
a test writes the selected-node annotation as the scheduler would.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.api.storage import find_matching_volume
from kybernetes.client import Client
from kybernetes.controllers.persistentvolume import LOCAL_PATH_PROVISIONER, PersistentVolumeController
from tests.apiserver.conftest import eventually, start_api, stop_api

Obj = dict[str, Any]
NS = "default"


def pv(name: str, size: str = "5Gi", *, modes: tuple[str, ...] = ("ReadWriteOnce",), cls: str = "manual",
       labels: dict[str, str] | None = None, reclaim: str = "Retain", claim_ref: Obj | None = None,
       path: str = "/tmp", **spec: Any) -> Obj:
    body: Obj = {"apiVersion": "v1", "kind": "PersistentVolume",
                 "metadata": {"name": name, "labels": labels or {}},
                 "spec": {"capacity": {"storage": size}, "accessModes": list(modes), "storageClassName": cls,
                          "persistentVolumeReclaimPolicy": reclaim, "hostPath": {"path": path}, **spec}}
    if claim_ref is not None:
        body["spec"]["claimRef"] = claim_ref
    return body


def pvc(name: str, size: str = "2Gi", *, modes: tuple[str, ...] = ("ReadWriteOnce",), cls: str | None = "manual",
        **spec: Any) -> Obj:
    body: Obj = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
                 "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": size}}, **spec}}
    if cls is not None:
        body["spec"]["storageClassName"] = cls
    return body


class Cluster:
    def __init__(self, client: Client, storage: Path):
        self.client = client
        self.storage = storage
        self.pvs = client.resource("v1", "persistentvolumes", namespaced=False)
        self.pvcs = client.resource("v1", "persistentvolumeclaims")
        self.classes = client.resource("storage.k8s.io/v1", "storageclasses", namespaced=False)
        self.events = client.resource("v1", "events")
        self.pods = client.resource("v1", "pods")
        self.nodes = client.resource("v1", "nodes", namespaced=False)

    async def claim(self, name: str) -> Obj:
        return await self.pvcs.get(name, NS)

    async def bound(self, name: str) -> Obj:
        async def check() -> Obj | None:
            try:
                c = await self.claim(name)
            except StatusError:
                return None
            return c if (c.get("status") or {}).get("phase") == "Bound" else None
        return await eventually(check, what=f"claim {name} Bound")

    async def volume_phase(self, name: str, phase: str) -> Obj:
        async def check() -> Obj | None:
            v = await self.pvs.get(name)
            return v if (v.get("status") or {}).get("phase") == phase else None
        return await eventually(check, what=f"volume {name} {phase}")

    async def event(self, name: str, reason: str, namespace: str = NS) -> Obj:
        async def check() -> Obj | None:
            items = (await self.events.list(namespace, field_selector=f"involvedObject.name={name}"))["items"]
            return next((e for e in items if e["reason"] == reason), None)
        return await eventually(check, what=f"{reason} event for {name}")

    async def gone(self, rc: Any, name: str, namespace: str | None = None) -> None:
        async def check() -> bool:
            try:
                await rc.get(name, namespace)
            except StatusError as e:
                return e.code == 404
            return False
        await eventually(check, what=f"{name} gone")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Cluster]:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    storage = tmp_path / "storage"
    ctrl = PersistentVolumeController(Client.in_process(api.handle), storage_dir=str(storage), in_use_recheck=0.05)
    await ctrl.start()
    try:
        yield Cluster(client, storage)
    finally:
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
        await stop_api(api)


# ---------------------------------------------------------------- matching (pure)


def test_matching_prefers_prebound_then_smallest() -> None:
    claim = pvc("c", "2Gi")
    claim["metadata"].update(namespace=NS, uid="u1")
    vols = [pv("big", "10Gi"), pv("small", "1Gi"), pv("mid", "3Gi"), pv("rwx", "2Gi", modes=("ReadWriteMany",)),
            pv("other", "2Gi", cls="gold"), pv("block", "2Gi", volumeMode="Block")]
    for v in vols:
        v["status"] = {"phase": "Available"}
    assert find_matching_volume(claim, vols)["metadata"]["name"] == "mid"
    # Delayed binding leaves the choice for when a node is known…
    assert find_matching_volume(claim, vols, delay_binding=True) is None
    # …and then only volumes reachable from it count.
    assert find_matching_volume(claim, vols, delay_binding=True,
                                node_ok=lambda v: v["metadata"]["name"] == "big")["metadata"]["name"] == "big"
    pre = pv("pre", "20Gi", claim_ref={"namespace": NS, "name": "c"})
    pre["status"] = {"phase": "Available"}
    assert find_matching_volume(claim, [*vols, pre], delay_binding=True)["metadata"]["name"] == "pre"
    taken = pv("taken", "2Gi", claim_ref={"namespace": NS, "name": "c", "uid": "someone-else"})
    taken["status"] = {"phase": "Available"}
    assert find_matching_volume(claim, [taken]) is None


# ---------------------------------------------------------------- binding


async def test_binds_smallest_fitting_volume(env: Cluster) -> None:
    c = env
    for v in (pv("pv-1g", "1Gi"), pv("pv-10g", "10Gi"), pv("pv-5g", "5Gi"),
              pv("pv-rwx", "3Gi", modes=("ReadWriteMany",)), pv("pv-gold", "3Gi", cls="gold")):
        await c.pvs.create(v)
    await c.volume_phase("pv-gold", "Available")
    await c.pvcs.create(pvc("data", "2Gi"), NS)
    claim = await c.bound("data")
    assert claim["spec"]["volumeName"] == "pv-5g"
    ann = claim["metadata"]["annotations"]
    assert ann["pv.kubernetes.io/bind-completed"] == "yes"
    assert ann["pv.kubernetes.io/bound-by-controller"] == "yes"
    assert claim["status"]["capacity"] == {"storage": "5Gi"}
    assert claim["status"]["accessModes"] == ["ReadWriteOnce"]
    assert "kubernetes.io/pvc-protection" in claim["metadata"]["finalizers"]
    vol = await c.volume_phase("pv-5g", "Bound")
    ref = vol["spec"]["claimRef"]
    assert (ref["kind"], ref["namespace"], ref["name"], ref["uid"]) == (
        "PersistentVolumeClaim", NS, "data", claim["metadata"]["uid"])
    assert vol["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    assert "kubernetes.io/pv-protection" in vol["metadata"]["finalizers"]
    for name in ("pv-1g", "pv-10g", "pv-rwx", "pv-gold"):
        v = await c.pvs.get(name)
        assert v["status"]["phase"] == "Available" and not v["spec"].get("claimRef")


async def test_label_selector(env: Cluster) -> None:
    c = env
    await c.pvs.create(pv("plain", "2Gi"))
    await c.pvs.create(pv("gold", "8Gi", labels={"tier": "gold"}))
    await c.pvcs.create(pvc("picky", "1Gi", selector={"matchLabels": {"tier": "gold"}}), NS)
    assert (await c.bound("picky"))["spec"]["volumeName"] == "gold"


async def test_claim_asks_for_a_volume_by_name(env: Cluster) -> None:
    c = env
    await c.pvs.create(pv("small", "2Gi"))
    await c.pvs.create(pv("chosen", "9Gi"))
    await c.pvcs.create(pvc("named", "1Gi", volumeName="chosen"), NS)
    claim = await c.bound("named")
    assert claim["spec"]["volumeName"] == "chosen"
    # The user chose the volume, not the controller.
    assert "pv.kubernetes.io/bound-by-controller" not in claim["metadata"]["annotations"]
    vol = await c.volume_phase("chosen", "Bound")
    assert vol["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    # A volume too small for the claim that names it is refused with an event.
    await c.pvcs.create(pvc("greedy", "5Gi", volumeName="small"), NS)
    ev = await c.event("greedy", "VolumeMismatch")
    assert ev["type"] == "Warning" and ev["message"] == 'Cannot bind to requested volume "small": requested PV is too small'
    assert (await c.claim("greedy"))["status"]["phase"] == "Pending"
    # A claim may name a volume that does not exist yet.
    await c.pvcs.create(pvc("early", "1Gi", volumeName="later"), NS)
    await c.pvs.create(pv("later", "1Gi"))
    assert (await c.bound("early"))["spec"]["volumeName"] == "later"


async def test_volume_prebound_to_a_claim(env: Cluster) -> None:
    c = env
    await c.pvs.create(pv("exact", "2Gi"))
    await c.pvs.create(pv("reserved", "50Gi", claim_ref={"namespace": NS, "name": "mine"}))
    await c.volume_phase("reserved", "Available")
    await c.pvcs.create(pvc("mine", "1Gi"), NS)
    claim = await c.bound("mine")
    assert claim["spec"]["volumeName"] == "reserved"
    vol = await c.volume_phase("reserved", "Bound")
    assert vol["spec"]["claimRef"]["uid"] == claim["metadata"]["uid"]
    assert "pv.kubernetes.io/bound-by-controller" not in (vol["metadata"].get("annotations") or {})
    # Someone else's claim does not get the reserved volume.
    assert (await c.pvs.get("exact"))["status"]["phase"] == "Available"


async def test_no_volume_and_no_class(env: Cluster) -> None:
    c = env
    await c.pvcs.create(pvc("lonely", "1Gi", cls=""), NS)
    ev = await c.event("lonely", "FailedBinding")
    assert ev["type"] == "Normal"
    assert ev["message"] == "no persistent volumes available for this claim and no storage class is set"
    assert (await c.claim("lonely"))["status"]["phase"] == "Pending"
    # A volume appearing later is found without waiting for a resync.
    await c.pvs.create(pv("late", "1Gi", cls=""))
    assert (await c.bound("lonely"))["spec"]["volumeName"] == "late"


# ---------------------------------------------------------------- reclaiming and protection


async def test_retain_releases_the_volume(env: Cluster) -> None:
    c = env
    await c.pvs.create(pv("keep", "1Gi"))
    await c.pvcs.create(pvc("tmp", "1Gi"), NS)
    await c.bound("tmp")
    await c.pvcs.delete("tmp", NS)
    await c.gone(c.pvcs, "tmp", NS)
    vol = await c.volume_phase("keep", "Released")
    assert vol["spec"]["claimRef"]["name"] == "tmp"
    # Released is not Available: a new claim does not get the old data.
    await c.pvcs.create(pvc("next", "1Gi"), NS)
    await c.event("next", "ProvisioningFailed")  # class "manual" does not exist
    assert (await c.claim("next"))["status"]["phase"] == "Pending"


async def test_delete_policy_without_deleter_fails(env: Cluster) -> None:
    c = env
    await c.pvs.create(pv("static", "1Gi", reclaim="Delete"))
    await c.pvcs.create(pvc("s", "1Gi"), NS)
    await c.bound("s")
    await c.pvcs.delete("s", NS)
    vol = await c.volume_phase("static", "Failed")
    assert "no deletable volume plugin matched" in vol["status"]["message"]
    ev = await c.event("static", "VolumeFailedDelete")
    assert ev["type"] == "Warning"


async def test_claim_in_use_is_protected(env: Cluster) -> None:
    c = env
    await c.pvs.create(pv("used", "1Gi"))
    await c.pvcs.create(pvc("busy", "1Gi"), NS)
    await c.bound("busy")
    await c.pods.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "user"},
                         "spec": {"containers": [{"name": "c", "image": "x"}],
                                  "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "busy"}}]}}, NS)
    await c.pvcs.delete("busy", NS)
    claim = await c.claim("busy")
    assert claim["metadata"]["deletionTimestamp"]
    # A bound volume is protected too.
    await c.pvs.delete("used")
    assert (await c.pvs.get("used"))["metadata"]["deletionTimestamp"]
    # The pod goes: the claim goes, the volume is released and can go too.
    await c.pods.delete("user", NS, grace_period_seconds=0)
    await c.gone(c.pvcs, "busy", NS)
    await c.gone(c.pvs, "used")


# ---------------------------------------------------------------- dynamic provisioning


async def test_default_class_and_wait_for_first_consumer(env: Cluster) -> None:
    c = env
    sc = await c.classes.get("local-path")
    assert sc["provisioner"] == LOCAL_PATH_PROVISIONER and sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["reclaimPolicy"] == "Delete"
    assert sc["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    await c.nodes.create({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "host-1"}}})
    # No class named: DefaultStorageClass admission gives it the default.
    claim = await c.pvcs.create(pvc("www", "1Gi", cls=None), NS)
    assert claim["spec"]["storageClassName"] == "local-path"
    ev = await c.event("www", "WaitForFirstConsumer")
    assert ev["message"] == "waiting for first consumer to be created before binding"
    assert (await c.claim("www"))["status"]["phase"] == "Pending"
    assert (await c.pvs.list())["items"] == []
    # The scheduler picked n1 for a pod using the claim.
    await c.pvcs.patch("www", {"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "n1"}}},
                       namespace=NS)
    claim = await c.bound("www")
    uid = claim["metadata"]["uid"]
    assert claim["spec"]["volumeName"] == f"pvc-{uid}"
    assert claim["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] == LOCAL_PATH_PROVISIONER
    vol = await c.volume_phase(f"pvc-{uid}", "Bound")
    path = vol["spec"]["hostPath"]["path"]
    assert path == str(c.storage / f"pvc-{uid}_{NS}_www") and os.path.isdir(path)
    assert vol["spec"]["hostPath"]["type"] == "DirectoryOrCreate"
    assert vol["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    assert vol["spec"]["storageClassName"] == "local-path"
    assert vol["spec"]["capacity"] == {"storage": "1Gi"}
    assert vol["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == LOCAL_PATH_PROVISIONER
    assert vol["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"] == [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["host-1"]}]}]
    ev = await c.event("www", "ProvisioningSucceeded")
    assert ev["message"] == f"Successfully provisioned volume pvc-{uid} using {LOCAL_PATH_PROVISIONER}"
    with open(os.path.join(path, "data"), "w") as f:
        f.write("x")
    # Reclaim policy Delete: the claim goes, the volume and its directory go.
    await c.pvcs.delete("www", NS)
    await c.gone(c.pvs, f"pvc-{uid}")
    assert not os.path.exists(path)


async def test_immediate_class_provisions_at_once(env: Cluster) -> None:
    c = env
    await c.classes.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                            "metadata": {"name": "now"}, "provisioner": LOCAL_PATH_PROVISIONER,
                            "reclaimPolicy": "Retain"})
    await c.pvcs.create(pvc("quick", "3Gi", cls="now"), NS)
    claim = await c.bound("quick")
    vol = await c.pvs.get(claim["spec"]["volumeName"])
    assert "nodeAffinity" not in vol["spec"] and vol["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    await c.pvcs.delete("quick", NS)
    await c.volume_phase(claim["spec"]["volumeName"], "Released")
    assert os.path.isdir(vol["spec"]["hostPath"]["path"])


async def test_external_provisioner_is_waited_for(env: Cluster) -> None:
    c = env
    await c.classes.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                            "metadata": {"name": "ebs"}, "provisioner": "ebs.csi.example.com"})
    await c.pvcs.create(pvc("cloud", "1Gi", cls="ebs"), NS)
    ev = await c.event("cloud", "ExternalProvisioning")
    assert "external provisioner 'ebs.csi.example.com'" in ev["message"]
    claim = await c.claim("cloud")
    assert claim["metadata"]["annotations"]["volume.kubernetes.io/storage-provisioner"] == "ebs.csi.example.com"
    assert claim["status"]["phase"] == "Pending"


async def test_static_delayed_volume_follows_the_selected_node(env: Cluster) -> None:
    c = env
    await c.classes.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                            "metadata": {"name": "local-storage"}, "provisioner": "kubernetes.io/no-provisioner",
                            "volumeBindingMode": "WaitForFirstConsumer"})
    for n in ("n1", "n2"):
        await c.nodes.create({"apiVersion": "v1", "kind": "Node",
                              "metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}})
    affinity = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n2"]}]}]}}
    await c.pvs.create(pv("disk-n2", "10Gi", cls="local-storage", nodeAffinity=affinity))
    await c.volume_phase("disk-n2", "Available")
    await c.pvcs.create(pvc("local", "1Gi", cls="local-storage"), NS)
    await c.event("local", "WaitForFirstConsumer")
    assert (await c.pvs.get("disk-n2"))["status"]["phase"] == "Available"
    await c.pvcs.patch("local", {"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "n1"}}},
                       namespace=NS)
    await c.event("local", "ExternalProvisioning")
    assert (await c.claim("local"))["status"]["phase"] == "Pending"
    await c.pvcs.patch("local", {"metadata": {"annotations": {"volume.kubernetes.io/selected-node": "n2"}}},
                       namespace=NS)
    assert (await c.bound("local"))["spec"]["volumeName"] == "disk-n2"


async def test_several_default_classes(env: Cluster) -> None:
    c = env
    await c.classes.get("local-path")  # made at start
    # The newest default wins; made within the same second, the first by name.
    await c.classes.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                            "metadata": {"name": "a-other", "annotations": {
                                "storageclass.kubernetes.io/is-default-class": "true"}},
                            "provisioner": "example.com/x"})

    async def newest() -> bool:
        claim = await c.pvcs.create(pvc("probe", "1Gi", cls=None), NS, dry_run=True)
        return claim["spec"]["storageClassName"] == "a-other"
    await eventually(newest, what="the other default class chosen")
    # An explicit "" means no class at all and is kept.
    claim = await c.pvcs.create(pvc("none", "1Gi", cls=""), NS)
    assert claim["spec"]["storageClassName"] == ""


# ---------------------------------------------------------------- with a StatefulSet


async def test_statefulset_claims_are_bound_and_retention_applies(tmp_path: Path) -> None:
    from kybernetes.controllers.manager import ControllerManager
    from tests.controllers.test_daemonset import FakeKubelet
    from tests.controllers.test_statefulset import statefulset

    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    mgr = ControllerManager.in_process(api, storage_dir=str(tmp_path / "storage"))
    kubelet = FakeKubelet(client, bind=False)
    await mgr.start()
    await kubelet.start()
    c = Cluster(client, tmp_path / "storage")
    try:
        await c.classes.create({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                                "metadata": {"name": "instant"}, "provisioner": LOCAL_PATH_PROVISIONER})
        body = statefulset(replicas=2, claims=True, persistentVolumeClaimRetentionPolicy={
            "whenScaled": "Delete", "whenDeleted": "Retain"})
        body["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] = "instant"
        sets = client.resource("apps/v1", "statefulsets")
        await sets.create(body, NS)
        claims = [await c.bound(f"data-web-{i}") for i in range(2)]
        paths = [(await c.pvs.get(cl["spec"]["volumeName"]))["spec"]["hostPath"]["path"] for cl in claims]
        assert all(os.path.isdir(p) for p in paths)
        # whenScaled Delete: the condemned pod's claim goes with it, and its provisioned volume and data.
        await sets.patch("web", {"spec": {"replicas": 1}}, namespace=NS)
        await c.gone(c.pvcs, "data-web-1", NS)
        await c.gone(c.pvs, claims[1]["spec"]["volumeName"])
        assert not os.path.exists(paths[1])
        # whenDeleted Retain: the set goes, the remaining claim stays bound to its volume.
        await sets.delete("web", NS)
        await c.gone(c.pods, "web-0", NS)
        claim = await c.claim("data-web-0")
        assert claim["status"]["phase"] == "Bound" and not claim["metadata"].get("deletionTimestamp")
        assert os.path.isdir(paths[0])
    finally:
        await kubelet.stop()
        await mgr.stop()
        await client.close()
        await stop_api(api)


def test_statefulset_mounts_may_name_claim_templates() -> None:
    from kybernetes.api import validation
    from tests.controllers.test_statefulset import statefulset

    body = statefulset(claims=True)
    body["metadata"]["namespace"] = NS
    validation.apply_defaults("StatefulSet", "apps", body)
    body["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/d"}]
    assert validation.validate("StatefulSet", "apps", body, None, namespaced=True) == []
    body["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [{"name": "nope", "mountPath": "/d"}]
    errs = validation.validate("StatefulSet", "apps", body, None, namespaced=True)
    assert [e.field for e in errs] == ["spec.template.spec.containers[0].volumeMounts[0].name"]
