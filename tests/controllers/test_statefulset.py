"""The StatefulSet controller against a real in-process API server.

Pods are not bound here (no scheduler needed); FakeKubelet marks them Running
and Ready, on its own or one by one when a test holds readiness back to watch
the ordering.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.client import Client, Informer
from kybernetes.controllers.history import CONTROLLER_REVISION_HASH_LABEL
from kybernetes.controllers.manager import ControllerManager
from kybernetes.controllers.statefulset import POD_INDEX_LABEL, POD_NAME_LABEL, StatefulSetController
from tests.apiserver.conftest import eventually, start_api, stop_api
from tests.controllers.test_daemonset import FakeKubelet, set_pod_status

Obj = dict[str, Any]
NS = "default"


def statefulset(name: str = "web", replicas: int = 3, *, image: str = "nginx:1", claims: bool = False,
                **spec: Any) -> Obj:
    body: Obj = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
                 "spec": {"replicas": replicas, "serviceName": "nginx", "selector": {"matchLabels": {"app": name}},
                          "template": {"metadata": {"labels": {"app": name}},
                                       "spec": {"containers": [{"name": "c", "image": image}]}}, **spec}}
    if claims:
        body["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
    return body


class Cluster:
    def __init__(self, client: Client, kubelet: FakeKubelet):
        self.client = client
        self.kubelet = kubelet
        self.pods = client.resource("v1", "pods")
        self.sts = client.resource("apps/v1", "statefulsets")
        self.pvcs = client.resource("v1", "persistentvolumeclaims")
        self.revisions = client.resource("apps/v1", "controllerrevisions")

    async def names(self, app: str = "web") -> list[str]:
        items = (await self.pods.list(NS, label_selector=f"app={app}"))["items"]
        return sorted(p["metadata"]["name"] for p in items if not p["metadata"].get("deletionTimestamp"))

    async def wait_names(self, *names: str, app: str = "web") -> None:
        async def check() -> bool:
            return await self.names(app) == sorted(names)
        await eventually(check, what=f"pods {names}")

    async def pod(self, name: str) -> Obj:
        return await self.pods.get(name, NS)

    async def wait_status(self, name: str = "web", **want: Any) -> Obj:
        async def check() -> Obj | None:
            s = await self.sts.get(name, NS)
            st = s.get("status") or {}
            if st.get("observedGeneration") != s["metadata"]["generation"]:
                return None
            return st if all(st.get(k, 0) == v for k, v in want.items()) else None
        return await eventually(check, what=f"{name} status {want}")

    async def wait_recreated(self, name: str, uid: str) -> Obj:
        """Wait for pod `name` to be back under a new uid, Running."""
        async def check() -> Obj | None:
            try:
                p = await self.pod(name)
            except StatusError:
                return None
            fresh = p["metadata"]["uid"] != uid and (p.get("status") or {}).get("phase") == "Running"
            return p if fresh else None
        return await eventually(check, what=f"{name} recreated")

    async def claim_names(self) -> list[str]:
        return sorted(c["metadata"]["name"] for c in (await self.pvcs.list(NS))["items"])

    async def set_image(self, image: str, name: str = "web") -> None:
        s = await self.sts.get(name, NS)
        s["spec"]["template"]["spec"]["containers"][0]["image"] = image
        await self.sts.update(s, NS)


class PodLog:
    """Every pod event of one app, in server order, and the worst unavailability seen."""

    def __init__(self, client: Client, app: str, replicas: int):
        self.informer = Informer(client.resource("v1", "pods"), namespace=NS, label_selector=f"app={app}")
        self.replicas = replicas
        self.events: list[tuple[str, str, str]] = []
        self.max_unavailable = 0
        self.informer.add_handler(on_add=lambda p: self._on("ADDED", p),
                                  on_update=lambda _o, p: self._on("MODIFIED", p),
                                  on_delete=lambda p: self._on("DELETED", p))

    def _on(self, kind: str, pod: Obj) -> None:
        self.events.append((kind, pod["metadata"]["name"], pod["spec"]["containers"][0]["image"]))
        ready = sum(1 for p in self.informer.list() if not p["metadata"].get("deletionTimestamp") and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in (p.get("status") or {}).get(
                "conditions") or []))
        self.max_unavailable = max(self.max_unavailable, self.replicas - ready)

    def order(self, kind: str, image: str | None = None) -> list[str]:
        out: list[str] = []
        for k, name, img in self.events:
            if k == kind and (image is None or img == image) and name not in out:
                out.append(name)
        return out

    async def __aenter__(self) -> PodLog:
        await self.informer.start()
        await self.informer.wait_for_sync(5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.informer.stop()


@contextlib.asynccontextmanager
async def running(tmp_path: Path, *, gc: bool = False) -> AsyncIterator[Cluster]:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    ctrl = StatefulSetController(Client.in_process(api.handle))
    # The garbage collector is only needed where claims or pods are to be collected.
    mgr = ControllerManager.in_process(api) if gc else None
    kubelet = FakeKubelet(client, bind=False)
    await ctrl.start()
    if mgr:
        await mgr.start()
    await kubelet.start()
    try:
        yield Cluster(client, kubelet)
    finally:
        await kubelet.stop()
        if mgr:
            await mgr.stop()
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
        await stop_api(api)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running(tmp_path) as c:
        yield c


@pytest.fixture
async def env_gc(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with running(tmp_path, gc=True) as c:
        yield c


# ---------------------------------------------------------------- identity and ordering


async def test_ordered_ready_creates_one_at_a_time(env: Cluster) -> None:
    c = env
    c.kubelet.auto_ready = False
    await c.sts.create(statefulset(replicas=3), NS)
    await c.wait_names("web-0")
    await c.wait_status(replicas=1, readyReplicas=0)
    # web-1 waits for web-0 to be Running and Ready.
    assert await c.names() == ["web-0"]
    await c.kubelet.ready("web-0")
    await c.wait_names("web-0", "web-1")
    await c.wait_status(replicas=2, readyReplicas=1)
    assert await c.names() == ["web-0", "web-1"]
    await c.kubelet.ready("web-1")
    await c.wait_names("web-0", "web-1", "web-2")
    await c.kubelet.ready("web-2")
    st = await c.wait_status(replicas=3, readyReplicas=3, availableReplicas=3, currentReplicas=3,
                             updatedReplicas=3)
    assert st["currentRevision"] == st["updateRevision"] and st["currentRevision"].startswith("web-")
    pod = await c.pod("web-1")
    labels = pod["metadata"]["labels"]
    assert labels[POD_NAME_LABEL] == "web-1" and labels[POD_INDEX_LABEL] == "1"
    assert labels[CONTROLLER_REVISION_HASH_LABEL] == st["updateRevision"]
    assert pod["spec"]["hostname"] == "web-1" and pod["spec"]["subdomain"] == "nginx"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet"


async def test_scale_down_in_reverse_order(env: Cluster) -> None:
    c = env
    await c.sts.create(statefulset(replicas=4), NS)
    await c.wait_status(replicas=4, readyReplicas=4)
    async with PodLog(c.client, "web", 4) as log:
        await c.sts.patch("web", {"spec": {"replicas": 1}}, namespace=NS)
        await c.wait_names("web-0")
        await c.wait_status(replicas=1, readyReplicas=1)
    assert log.order("DELETED") == ["web-3", "web-2", "web-1"]


async def test_parallel_does_not_wait(env: Cluster) -> None:
    c = env
    c.kubelet.auto_ready = False
    await c.sts.create(statefulset(replicas=3, podManagementPolicy="Parallel"), NS)
    await c.wait_names("web-0", "web-1", "web-2")
    await c.sts.patch("web", {"spec": {"replicas": 0}}, namespace=NS)
    await c.wait_names()
    await c.wait_status(replicas=0)


async def test_start_ordinal(env: Cluster) -> None:
    c = env
    await c.sts.create(statefulset(replicas=2, ordinals={"start": 5}), NS)
    await c.wait_names("web-5", "web-6")
    await c.wait_status(replicas=2, readyReplicas=2)
    await c.sts.patch("web", {"spec": {"ordinals": {"start": 6}}}, namespace=NS)
    await c.wait_names("web-6", "web-7")


async def test_failed_and_deleted_pods_are_recreated(env: Cluster) -> None:
    c = env
    await c.sts.create(statefulset(replicas=2), NS)
    await c.wait_status(replicas=2, readyReplicas=2)
    old = await c.pod("web-1")
    await set_pod_status(c.client, "web-1", NS, "Failed", ready=False)
    await c.wait_recreated("web-1", old["metadata"]["uid"])
    old0 = await c.pod("web-0")
    await c.pods.delete("web-0", NS)
    await c.wait_recreated("web-0", old0["metadata"]["uid"])
    await c.wait_status(replicas=2, readyReplicas=2)


# ---------------------------------------------------------------- storage


async def test_volume_claims_are_stable(env: Cluster) -> None:
    c = env
    await c.sts.create(statefulset(replicas=2, claims=True), NS)
    await c.wait_status(replicas=2, readyReplicas=2)
    assert await c.claim_names() == ["data-web-0", "data-web-1"]
    pod = await c.pod("web-1")
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "data-web-1"}} in pod["spec"]["volumes"]
    claim = await c.pvcs.get("data-web-1", NS)
    assert claim["metadata"]["labels"] == {"app": "web"}
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    # Retain (the default): no owners, so nothing collects the claims.
    assert not claim["metadata"].get("ownerReferences")
    uid = claim["metadata"]["uid"]
    await c.pods.delete("web-1", NS)
    await c.wait_names("web-0", "web-1")
    assert (await c.pvcs.get("data-web-1", NS))["metadata"]["uid"] == uid
    await c.sts.patch("web", {"spec": {"replicas": 1}}, namespace=NS)
    await c.wait_names("web-0")
    assert await c.claim_names() == ["data-web-0", "data-web-1"]


async def test_retention_policy_delete(env_gc: Cluster) -> None:
    c = env_gc
    await c.sts.create(statefulset(replicas=2, claims=True, persistentVolumeClaimRetentionPolicy={
        "whenDeleted": "Delete", "whenScaled": "Delete"}), NS)
    await c.wait_status(replicas=2, readyReplicas=2)
    s = await c.sts.get("web", NS)
    refs = (await c.pvcs.get("data-web-0", NS))["metadata"]["ownerReferences"]
    assert [(r["kind"], r["uid"]) for r in refs] == [("StatefulSet", s["metadata"]["uid"])]
    # Scaling down hands the claim to the condemned pod; it goes with it.
    await c.sts.patch("web", {"spec": {"replicas": 1}}, namespace=NS)

    async def claims_are(*names: str) -> bool:
        return await c.claim_names() == sorted(names)
    await eventually(lambda: claims_are("data-web-0"), what="scaled-down claim collected")
    await c.sts.delete("web", NS)
    await eventually(lambda: claims_are(), what="claims collected with the set")


async def test_retention_when_scaled_only(env_gc: Cluster) -> None:
    c = env_gc
    await c.sts.create(statefulset(replicas=2, claims=True, persistentVolumeClaimRetentionPolicy={
        "whenDeleted": "Retain", "whenScaled": "Delete"}), NS)
    await c.wait_status(replicas=2, readyReplicas=2)
    assert not (await c.pvcs.get("data-web-0", NS))["metadata"].get("ownerReferences")
    await c.sts.patch("web", {"spec": {"replicas": 1}}, namespace=NS)

    async def only_first() -> bool:
        return await c.claim_names() == ["data-web-0"]
    await eventually(only_first, what="scaled-down claim collected")
    await c.sts.delete("web", NS)
    await c.wait_names()
    assert await c.claim_names() == ["data-web-0"]


# ---------------------------------------------------------------- updates


async def test_rolling_update_with_partition(env: Cluster) -> None:
    c = env
    await c.sts.create(statefulset(replicas=3, updateStrategy={
        "type": "RollingUpdate", "rollingUpdate": {"partition": 1}}), NS)
    first = await c.wait_status(replicas=3, readyReplicas=3)
    async with PodLog(c.client, "web", 3) as log:
        await c.set_image("nginx:2")
        st = await c.wait_status(updatedReplicas=2, readyReplicas=3, currentReplicas=1)
        assert st["currentRevision"] == first["currentRevision"] != st["updateRevision"]
        assert (await c.pod("web-0"))["spec"]["containers"][0]["image"] == "nginx:1"
        assert (await c.pod("web-1"))["spec"]["containers"][0]["image"] == "nginx:2"
        # A deleted pod below the partition comes back at the current revision.
        uid = (await c.pod("web-0"))["metadata"]["uid"]
        await c.pods.delete("web-0", NS)
        web0 = await c.wait_recreated("web-0", uid)
        assert web0["spec"]["containers"][0]["image"] == "nginx:1"
        await c.sts.patch("web", {"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}},
                          namespace=NS)
        st = await c.wait_status(updatedReplicas=3, currentReplicas=3, readyReplicas=3)
    assert st["currentRevision"] == st["updateRevision"]
    assert log.order("ADDED", "nginx:2") == ["web-2", "web-1", "web-0"]
    assert log.max_unavailable == 1
    revs = (await c.revisions.list(NS, label_selector="app=web"))["items"]
    assert sorted(r["revision"] for r in revs) == [1, 2]


async def test_max_unavailable(env: Cluster) -> None:
    c = env
    await c.sts.create(statefulset(replicas=4, podManagementPolicy="Parallel", updateStrategy={
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}), NS)
    await c.wait_status(replicas=4, readyReplicas=4)
    async with PodLog(c.client, "web", 4) as log:
        await c.set_image("nginx:2")
        await c.wait_status(updatedReplicas=4, readyReplicas=4, currentReplicas=4)
    assert log.max_unavailable == 2
    assert log.order("DELETED")[:2] == ["web-3", "web-2"]


async def test_on_delete_and_rollback(env: Cluster) -> None:
    c = env
    await c.sts.create(statefulset(replicas=2, updateStrategy={"type": "OnDelete"}), NS)
    first = await c.wait_status(replicas=2, readyReplicas=2)
    await c.set_image("nginx:2")
    st = await c.wait_status(updatedReplicas=0, currentReplicas=2, readyReplicas=2)
    assert st["updateRevision"] != first["updateRevision"]
    await c.pods.delete("web-1", NS)

    async def web1_updated() -> bool:
        try:
            return (await c.pod("web-1"))["spec"]["containers"][0]["image"] == "nginx:2"
        except StatusError:
            return False
    await eventually(web1_updated, what="deleted pod recreated at the update revision")
    await c.wait_status(updatedReplicas=1, currentReplicas=1, readyReplicas=2)
    assert (await c.pod("web-0"))["spec"]["containers"][0]["image"] == "nginx:1"
    # `kubectl rollout undo` applies revision 1's data; that revision becomes number 3.
    revs = sorted((await c.revisions.list(NS, label_selector="app=web"))["items"], key=lambda r: r["revision"])
    await c.sts.patch("web", copy.deepcopy(revs[0]["data"]), namespace=NS, patch_type="strategic")
    st = await c.wait_status(updateRevision=first["updateRevision"], updatedReplicas=1, readyReplicas=2)

    async def renumbered() -> bool:
        got = {r["metadata"]["name"]: r["revision"] for r in
               (await c.revisions.list(NS, label_selector="app=web"))["items"]}
        return got == {revs[0]["metadata"]["name"]: 3, revs[1]["metadata"]["name"]: 2}
    await eventually(renumbered, what="rolled-back revision renumbered")
