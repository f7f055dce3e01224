"""persistentVolumeClaim volumes in the kubelet: resolution rules, then a real process writing into one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kybernetes.client import Client
from kybernetes.kubelet.pvc import volume_host_path
from kybernetes.kubelet.volumes import VolumeError, container_mounts

from .conftest import eventually, needs_process, pod, sh
from .test_fake import events_for, status_of

Obj = dict[str, Any]


def test_volume_host_path(tmp_path: Path) -> None:
    claim = {"metadata": {"name": "c", "namespace": "default", "uid": "u1"}}
    made = tmp_path / "made"
    pv = {"metadata": {"name": "v"}, "spec": {"claimRef": {"uid": "u1"},
                                             "hostPath": {"path": str(made), "type": "DirectoryOrCreate"}}}
    assert volume_host_path(pv, claim) == str(made) and made.is_dir()
    with pytest.raises(VolumeError, match="does not exist"):
        volume_host_path({"metadata": {"name": "l"}, "spec": {"local": {"path": str(tmp_path / "nope")}}}, claim)
    with pytest.raises(VolumeError, match="bound to another claim"):
        volume_host_path({"metadata": {"name": "v"}, "spec": {"claimRef": {"uid": "u2"}, "hostPath": {
            "path": str(made)}}}, claim)
    with pytest.raises(VolumeError, match="only hostPath and local"):
        volume_host_path({"metadata": {"name": "n"}, "spec": {"nfs": {"server": "x", "path": "/"}}}, claim)


def test_read_only_claim_mounts() -> None:
    p = {"spec": {"volumes": [{"name": "ro", "persistentVolumeClaim": {"claimName": "c", "readOnly": True}},
                              {"name": "rw", "persistentVolumeClaim": {"claimName": "d"}}]}}
    c = {"name": "c", "volumeMounts": [{"name": "ro", "mountPath": "/a"}, {"name": "rw", "mountPath": "/b"}]}
    mounts = container_mounts(c, {"ro": "/x", "rw": "/y"}, p)
    assert [(m.host_path, m.readonly) for m in mounts] == [("/x", True), ("/y", False)]


@needs_process
async def test_pod_waits_for_its_claim_then_writes_into_the_volume(client: Client, make_kubelet,
                                                                   tmp_path: Path) -> None:
    await make_kubelet("process")
    pvcs = client.resource("v1", "persistentvolumeclaims")
    pvs = client.resource("v1", "persistentvolumes", namespaced=False)
    await pvcs.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                       "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "",
                                "resources": {"requests": {"storage": "1Gi"}}}}, "default")
    mnt = tmp_path / "mnt"
    c = sh("c", f"echo hello > {mnt}/data/out; echo x > {mnt}/ro/out || echo read-only > {mnt}/data/ro; "
                "exec sleep 1000",
           volumeMounts=[{"name": "data", "mountPath": str(mnt / "data")},
                         {"name": "ro", "mountPath": str(mnt / "ro")}])
    await client.resource("v1", "pods").create(pod("user", [c], volumes=[
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "ro", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}}]))

    async def failed_mount() -> Obj | None:
        return next((e for e in await events_for(client, "user") if e["reason"] == "FailedMount"), None)
    ev = await eventually(failed_mount, 10, "FailedMount")
    assert 'PVC default/data has non-bound phase ("Pending")' in ev["message"]
    st = await status_of(client, "user")
    assert st.get("phase") == "Pending"
    assert st["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"

    # Bound by hand as the PV controller would.
    host = tmp_path / "volume"
    await pvs.create({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "vol"},
                      "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                               "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}}})
    claim = await pvcs.get("data", "default")
    claim["spec"]["volumeName"] = "vol"
    claim = await pvcs.update(claim, "default")
    claim["status"] = {"phase": "Bound", "capacity": {"storage": "1Gi"}}
    await pvcs.update_status(claim, "default")

    async def running() -> bool:
        return (await status_of(client, "user")).get("phase") == "Running"
    await eventually(running, 10, "Running")
    await eventually(lambda: (host / "out").exists() and (host / "ro").exists(), 10, "files written")
    assert (host / "out").read_text() == "hello\n"
    assert (host / "ro").read_text() == "read-only\n"
