"""The Deployment controller (with the ReplicaSet controller) against a real in-process API server.

The tests play kubelet (FakeKubelet marks pods Running and Ready) and kubectl
(`rollout undo` is a client-side JSON patch in kubectl 1.32, reproduced here;
`rollout status` is evaluated with kubectl's own rules).
"""

from __future__ import annotations

import asyncio
import copy
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.selectors import LabelSelector
from kybernetes.client import Client
from kybernetes.controllers.deployment import (
    DeploymentController,
    equal_ignore_hash,
    max_surge,
    max_unavailable,
    safe_encode,
    template_hash,
)
from kybernetes.controllers.replicaset import ReplicaSetController
from tests.apiserver.conftest import eventually, start_api, stop_api
from tests.controllers.test_replicaset import FakeKubelet

NS = "default"
REV = "deployment.kubernetes.io/revision"


def deployment(name: str, replicas: int = 3, image: str = "nginx:1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}, **spec}}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Client]:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    controllers = [ReplicaSetController(Client.in_process(api.handle)),
                   DeploymentController(Client.in_process(api.handle))]
    for c in controllers:
        await c.start()
    try:
        yield client
    finally:
        for c in controllers:
            await c.stop()
            await c.client.close()
        await client.close()
        await stop_api(api)


@pytest.fixture
async def kubelet(env: Client) -> AsyncIterator[FakeKubelet]:
    k = FakeKubelet(env)
    await k.start()
    try:
        yield k
    finally:
        await k.stop()


async def get_d(client: Client, name: str) -> dict[str, Any]:
    return await client.resource("apps/v1", "deployments").get(name, NS)


async def rs_of(client: Client, name: str) -> list[dict[str, Any]]:
    d = await get_d(client, name)
    items = (await client.resource("apps/v1", "replicasets").list(NS))["items"]
    return [r for r in items
            if any(o.get("uid") == d["metadata"]["uid"] for o in r["metadata"].get("ownerReferences") or [])]


def cond(obj: dict[str, Any], typ: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == typ:
            return c
    return None


def rollout_status(d: dict[str, Any]) -> tuple[str, bool]:
    """kubectl's DeploymentStatusViewer: (message, done)."""
    name = d["metadata"]["name"]
    s = d.get("status") or {}
    if d["metadata"].get("generation", 0) > s.get("observedGeneration", 0):
        return "Waiting for deployment spec update to be observed...\n", False
    c = cond(d, "Progressing")
    if c and c.get("reason") == "ProgressDeadlineExceeded":
        raise AssertionError(f'deployment "{name}" exceeded its progress deadline')
    want, updated = d["spec"]["replicas"], s.get("updatedReplicas", 0)
    if updated < want:
        return (f'Waiting for deployment "{name}" rollout to finish: {updated} out of {want} new replicas '
                "have been updated...\n"), False
    if s.get("replicas", 0) > updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {s["replicas"] - updated} old replicas '
                "are pending termination...\n"), False
    if s.get("availableReplicas", 0) < updated:
        return (f'Waiting for deployment "{name}" rollout to finish: {s.get("availableReplicas", 0)} of '
                f"{updated} updated replicas are available...\n"), False
    return f'deployment "{name}" successfully rolled out\n', True


async def rolled_out(client: Client, name: str) -> bool:
    return rollout_status(await get_d(client, name))[1]


async def rollout_undo(client: Client, name: str) -> None:
    """kubectl 1.32 `rollout undo`: patch the previous revision's template (and annotations) back in."""
    d = await get_d(client, name)
    rss = sorted(await rs_of(client, name), key=lambda r: int(r["metadata"]["annotations"][REV]))
    target = rss[-2]
    template = copy.deepcopy(target["spec"]["template"])
    template["metadata"]["labels"].pop("pod-template-hash", None)
    skip = {"kubectl.kubernetes.io/last-applied-configuration", REV, "deployment.kubernetes.io/revision-history",
            "deployment.kubernetes.io/desired-replicas", "deployment.kubernetes.io/max-replicas",
            "deprecated.deployment.rollback.to"}
    annotations = {k: v for k, v in (d["metadata"].get("annotations") or {}).items() if k in skip}
    annotations.update({k: v for k, v in target["metadata"]["annotations"].items() if k not in skip})
    await client.resource("apps/v1", "deployments").patch(
        name, [{"op": "replace", "path": "/spec/template", "value": template},
               {"op": "replace", "path": "/metadata/annotations", "value": annotations}],
        namespace=NS, patch_type="json")


class PodWatcher:
    """Follows every pod event in order and records the extremes the rollout reached."""

    def __init__(self, client: Client, selector: str):
        self.client = client
        self.selector = LabelSelector.parse(selector)
        self.pods: dict[str, dict[str, Any]] = {}
        self.max_pods = 0
        self.min_ready: int | None = None
        self.coexisted = False
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        listing = await self.client.resource("v1", "pods").list(NS)
        for p in listing["items"]:
            self.pods[p["metadata"]["name"]] = p
        self._check()
        rv = listing["metadata"]["resourceVersion"]
        self.task = asyncio.create_task(self._run(rv))

    async def _run(self, rv: str) -> None:
        async with self.client.resource("v1", "pods").watch(NS, resource_version=rv) as w:
            async for etype, obj in w:
                if etype == "BOOKMARK":
                    continue
                if etype == "DELETED":
                    self.pods.pop(obj["metadata"]["name"], None)
                else:
                    self.pods[obj["metadata"]["name"]] = obj
                self._check()

    def _active(self) -> list[dict[str, Any]]:
        return [p for p in self.pods.values() if not p["metadata"].get("deletionTimestamp")
                and self.selector.matches(p["metadata"].get("labels") or {})]

    def _check(self) -> None:
        pods = self._active()
        ready = sum(1 for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                           for c in (p.get("status") or {}).get("conditions") or []))
        self.max_pods = max(self.max_pods, len(pods))
        self.min_ready = ready if self.min_ready is None else min(self.min_ready, ready)
        hashes = {p["metadata"]["labels"].get("pod-template-hash") for p in pods}
        if len(hashes) > 1:
            self.coexisted = True

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


# ---------------------------------------------------------------------- pure logic


def test_fenceposts_round_surge_up_and_unavailable_down() -> None:
    d = deployment("x", 10, strategy={"type": "RollingUpdate",
                                      "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    assert (max_surge(d), max_unavailable(d)) == (3, 2)
    d["spec"]["replicas"] = 1
    assert (max_surge(d), max_unavailable(d)) == (1, 0)
    d["spec"]["strategy"]["rollingUpdate"] = {"maxSurge": 0, "maxUnavailable": "10%"}
    # Both resolve to zero: one pod may be unavailable, as upstream.
    assert (max_surge(d), max_unavailable(d)) == (0, 1)
    d["spec"]["strategy"] = {"type": "Recreate"}
    assert (max_surge(d), max_unavailable(d)) == (0, 0)


def test_template_hash_is_stable_and_safe() -> None:
    t = deployment("x")["spec"]["template"]
    h = template_hash(t)
    assert h == template_hash(copy.deepcopy(t))
    assert set(h) <= set("bcdfghjklmnpqrstvwxz2456789") and 1 <= len(h) <= 10
    assert template_hash(t, 1) != h
    assert safe_encode("0123456789") == "456789bcdf"
    t2 = copy.deepcopy(t)
    t2["metadata"]["labels"]["pod-template-hash"] = h
    assert equal_ignore_hash(t, t2)
    # kubectl sends templates back with null creationTimestamp; Go decodes that as absent.
    t2["metadata"]["creationTimestamp"] = None
    assert equal_ignore_hash(t, t2)
    t3 = copy.deepcopy(t)
    t3["metadata"]["creationTimestamp"] = None
    assert template_hash(t3) == h


# ---------------------------------------------------------------------- against the API server


async def test_creates_hashed_replicaset_with_revision_and_status(env, kubelet) -> None:
    client = env
    await client.resource("apps/v1", "deployments").create(deployment("web", 3), NS)
    await eventually(lambda: rolled_out(client, "web"), what="rolled out")
    d = await get_d(client, "web")
    (rs,) = await rs_of(client, "web")
    h = rs["metadata"]["labels"]["pod-template-hash"]
    assert h == template_hash(d["spec"]["template"])
    assert rs["metadata"]["name"] == f"web-{h}"
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": h}
    assert rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == h
    ann = rs["metadata"]["annotations"]
    assert ann[REV] == "1" and d["metadata"]["annotations"][REV] == "1"
    # Default 25%: surge rounds 0.75 up to 1.
    assert ann["deployment.kubernetes.io/desired-replicas"] == "3"
    assert ann["deployment.kubernetes.io/max-replicas"] == "4"
    s = d["status"]
    assert (s["replicas"], s["updatedReplicas"], s["readyReplicas"], s["availableReplicas"],
            s.get("unavailableReplicas", 0), s["observedGeneration"]) == (3, 3, 3, 3, 0, 1)
    assert cond(d, "Available")["reason"] == "MinimumReplicasAvailable"
    progressing = cond(d, "Progressing")
    assert progressing["status"] == "True" and progressing["reason"] == "NewReplicaSetAvailable"
    assert progressing["message"] == f'ReplicaSet "web-{h}" has successfully progressed.'
    for p in (await client.resource("v1", "pods").list(NS))["items"]:
        assert p["metadata"]["labels"]["pod-template-hash"] == h


async def test_scale_up_and_down(env, kubelet) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    await deps.create(deployment("sc", 2), NS)
    await eventually(lambda: rolled_out(client, "sc"), what="rolled out")
    for n in (5, 1):
        await deps.patch("sc", {"spec": {"replicas": n}}, namespace=NS)

        async def at(n: int = n) -> bool:
            d = await get_d(client, "sc")
            rss = await rs_of(client, "sc")
            return rollout_status(d)[1] and d["status"]["replicas"] == n and len(rss) == 1 \
                and rss[0]["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] == str(n)
        await eventually(at, what=f"scaled to {n}")


@pytest.mark.parametrize("strategy, replicas, bounds", [
    ({"maxSurge": 1, "maxUnavailable": 1}, 4, (5, 3)),
    ({"maxSurge": "50%", "maxUnavailable": 0}, 4, (6, 4)),
    ({"maxSurge": 0, "maxUnavailable": "34%"}, 3, (3, 2)),
])
async def test_rolling_update_stays_within_surge_and_availability(env, kubelet, strategy, replicas, bounds) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    await deps.create(deployment("roll", replicas, strategy={"type": "RollingUpdate", "rollingUpdate": strategy}),
                      NS)
    await eventually(lambda: rolled_out(client, "roll"), what="first rollout")
    watcher = PodWatcher(client, "app=roll")
    await watcher.start()
    messages: set[str] = set()
    try:
        await deps.patch("roll", {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}},
                         namespace=NS, patch_type="strategic")

        async def done() -> bool:
            msg, ok = rollout_status(await get_d(client, "roll"))
            messages.add(msg)
            return ok and len(watcher._active()) == replicas
        await eventually(done, timeout=15, what="second rollout")
    finally:
        await watcher.stop()
    max_pods, min_ready = bounds
    assert watcher.max_pods <= max_pods, f"{watcher.max_pods} pods at once"
    assert watcher.min_ready is not None and watcher.min_ready >= min_ready, f"only {watcher.min_ready} ready"
    assert watcher.coexisted
    d = await get_d(client, "roll")
    assert d["metadata"]["annotations"][REV] == "2"
    rss = {r["metadata"]["annotations"][REV]: r for r in await rs_of(client, "roll")}
    assert rss["1"]["spec"]["replicas"] == 0 and rss["2"]["spec"]["replicas"] == replicas
    assert cond(d, "Progressing")["reason"] == "NewReplicaSetAvailable"
    assert any("new replicas have been updated" in m or "updated replicas are available" in m
               or "old replicas are pending termination" in m for m in messages)


async def test_recreate_never_mixes_revisions(env, kubelet) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    await deps.create(deployment("rec", 3, strategy={"type": "Recreate"}), NS)
    await eventually(lambda: rolled_out(client, "rec"), what="first rollout")
    watcher = PodWatcher(client, "app=rec")
    await watcher.start()
    try:
        await deps.patch("rec", {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}},
                         namespace=NS, patch_type="strategic")

        async def done() -> bool:
            d = await get_d(client, "rec")
            return rollout_status(d)[1] and d["metadata"]["annotations"][REV] == "2"
        await eventually(done, timeout=10, what="recreated")
    finally:
        await watcher.stop()
    assert not watcher.coexisted
    assert watcher.max_pods <= 3
    assert watcher.min_ready == 0


async def test_rollback_reuses_old_replicaset(env, kubelet) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    await deps.create(deployment("rb", 2, image="nginx:1"), NS)
    await eventually(lambda: rolled_out(client, "rb"), what="v1")
    (rs1,) = await rs_of(client, "rb")
    await deps.patch("rb", {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}}},
                     namespace=NS, patch_type="strategic")

    async def at_revision(rev: str) -> bool:
        d = await get_d(client, "rb")
        return rollout_status(d)[1] and d["metadata"]["annotations"].get(REV) == rev
    await eventually(lambda: at_revision("2"), timeout=10, what="v2")
    await rollout_undo(client, "rb")
    await eventually(lambda: at_revision("3"), timeout=10, what="rolled back")
    rss = {r["metadata"]["name"]: r for r in await rs_of(client, "rb")}
    assert len(rss) == 2
    back = rss[rs1["metadata"]["name"]]
    assert back["metadata"]["uid"] == rs1["metadata"]["uid"]
    assert back["metadata"]["annotations"][REV] == "3"
    assert back["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
    assert back["spec"]["replicas"] == 2
    assert back["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1"


async def test_pause_blocks_rollout_but_not_scaling(env, kubelet) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    await deps.create(deployment("pz", 2), NS)
    await eventually(lambda: rolled_out(client, "pz"), what="v1")
    await deps.patch("pz", {"spec": {"paused": True}}, namespace=NS)
    await deps.patch("pz", {"spec": {"replicas": 4, "template": {"spec": {"containers": [
        {"name": "c", "image": "nginx:2"}]}}}}, namespace=NS, patch_type="strategic")

    async def scaled_paused() -> bool:
        d = await get_d(client, "pz")
        c = cond(d, "Progressing")
        return d["status"].get("observedGeneration") == d["metadata"]["generation"] \
            and d["status"].get("availableReplicas") == 4 and c is not None and c["reason"] == "DeploymentPaused"
    await eventually(scaled_paused, timeout=10, what="scaled while paused")
    (rs,) = await rs_of(client, "pz")
    assert rs["spec"]["replicas"] == 4 and rs["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1"
    assert cond(await get_d(client, "pz"), "Progressing")["status"] == "Unknown"
    await deps.patch("pz", {"spec": {"paused": None}}, namespace=NS)

    async def resumed() -> bool:
        d = await get_d(client, "pz")
        return rollout_status(d)[1] and d["metadata"]["annotations"][REV] == "2"
    await eventually(resumed, timeout=10, what="rolled out after resume")
    assert len(await rs_of(client, "pz")) == 2


async def test_restart_makes_new_replicaset(env, kubelet) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    await deps.create(deployment("rs", 2), NS)
    await eventually(lambda: rolled_out(client, "rs"), what="v1")
    # What `kubectl rollout restart` sends.
    await deps.patch("rs", {"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": "2025-01-01T00:00:00Z"}}}}}, namespace=NS, patch_type="strategic")

    async def restarted() -> bool:
        d = await get_d(client, "rs")
        return rollout_status(d)[1] and d["metadata"]["annotations"][REV] == "2"
    await eventually(restarted, timeout=10, what="restarted")
    pods = (await client.resource("v1", "pods").list(NS, label_selector="app=rs"))["items"]
    assert len(pods) == 2
    assert all(p["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] for p in pods)


async def test_proportional_scaling_mid_rollout(env) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    first: dict[str, str] = {}
    # The kubelet only ever readies the first revision's pods: the rollout stalls half way.
    kubelet = FakeKubelet(client, accept=lambda p: p["metadata"]["labels"].get("pod-template-hash") == first.get("h"))
    await kubelet.start()
    try:
        await deps.create(deployment("prop", 10, strategy={
            "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 3, "maxUnavailable": 2}}), NS)
        (rs1,) = await eventually(lambda: rs_of(client, "prop"), what="first rs")
        first["h"] = rs1["metadata"]["labels"]["pod-template-hash"]
        kubelet.informer.resync()
        await eventually(lambda: rolled_out(client, "prop"), what="v1")
        await deps.patch("prop", {"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": "nginx:broken"}]}}}}, namespace=NS, patch_type="strategic")

        async def sizes(old: int, new: int) -> bool:
            rss = await rs_of(client, "prop")
            by = {r["metadata"]["name"] == rs1["metadata"]["name"]: r for r in rss}
            return len(rss) == 2 and by[True]["spec"]["replicas"] == old and by[False]["spec"]["replicas"] == new \
                and by[True]["status"].get("replicas") == old and by[False]["status"].get("replicas") == new
        await eventually(lambda: sizes(8, 5), timeout=10, what="stalled at 8 old + 5 new")
        await deps.patch("prop", {"spec": {"replicas": 15}}, namespace=NS)
        # 5 more (allowed 15+3=18 against 13) split 3 to the old and 2 to the new, as the upstream docs say.
        await eventually(lambda: sizes(11, 7), timeout=10, what="proportionally scaled")
        for r in await rs_of(client, "prop"):
            assert r["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] == "15"
            assert r["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] == "18"

        async def status() -> bool:
            s = (await get_d(client, "prop"))["status"]
            return (s["replicas"], s["updatedReplicas"], s["availableReplicas"], s["unavailableReplicas"]) == \
                (18, 7, 11, 7)
        await eventually(status, what="deployment status after scaling")
    finally:
        await kubelet.stop()


async def test_revision_history_limit_deletes_oldest_empty_replicasets(env, kubelet) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    await deps.create(deployment("hist", 1, revisionHistoryLimit=1), NS)
    await eventually(lambda: rolled_out(client, "hist"), what="v1")
    for v in (2, 3, 4):
        await deps.patch("hist", {"spec": {"template": {"spec": {"containers": [
            {"name": "c", "image": f"nginx:{v}"}]}}}}, namespace=NS, patch_type="strategic")

        async def at(v: int = v) -> bool:
            d = await get_d(client, "hist")
            return rollout_status(d)[1] and d["metadata"]["annotations"][REV] == str(v)
        await eventually(at, timeout=10, what=f"v{v}")

    async def trimmed() -> bool:
        revs = sorted(r["metadata"]["annotations"][REV] for r in await rs_of(client, "hist"))
        return revs == ["3", "4"]
    await eventually(trimmed, what="only the new and one old ReplicaSet left")


async def test_progress_deadline_exceeded(env) -> None:
    client = env  # no kubelet: pods never become ready
    await client.resource("apps/v1", "deployments").create(deployment("stuck", 2, progressDeadlineSeconds=1), NS)

    async def timed_out() -> dict | None:
        d = await get_d(client, "stuck")
        c = cond(d, "Progressing")
        return d if c and c["reason"] == "ProgressDeadlineExceeded" else None
    d = await eventually(timed_out, timeout=6, what="ProgressDeadlineExceeded")
    c = cond(d, "Progressing")
    (rs,) = await rs_of(client, "stuck")
    assert c["status"] == "False"
    assert c["message"] == f'ReplicaSet "{rs["metadata"]["name"]}" has timed out progressing.'
    a = cond(d, "Available")
    assert (a["status"], a["reason"]) == ("False", "MinimumReplicasUnavailable")
    assert d["status"]["unavailableReplicas"] == 2
    with pytest.raises(AssertionError, match="exceeded its progress deadline"):
        rollout_status(d)


async def test_progressing_reasons_during_rollout(env) -> None:
    client = env
    deps = client.resource("apps/v1", "deployments")
    await deps.create(deployment("why", 1), NS)

    async def reason(*want: str) -> bool:
        c = cond(await get_d(client, "why"), "Progressing")
        return c is not None and c["reason"] in want

    async def waiting() -> bool:
        return (await get_d(client, "why"))["status"].get("replicas") == 1
    # Created, then updated as its pod appears: both are progress.
    await eventually(lambda: reason("NewReplicaSetCreated", "ReplicaSetUpdated"), what="progressing")
    await eventually(waiting, what="pod counted")
    d = await get_d(client, "why")
    assert cond(d, "Progressing")["status"] == "True"
    assert rollout_status(d)[0] == 'Waiting for deployment "why" rollout to finish: 0 of 1 updated replicas ' \
                                   "are available...\n"
    (rs,) = await rs_of(client, "why")
    pod = (await client.resource("v1", "pods").list(NS, label_selector="app=why"))["items"][0]
    from tests.controllers.test_replicaset import set_pod_state
    await set_pod_state(client, pod["metadata"]["name"])
    await eventually(lambda: reason("NewReplicaSetAvailable"), what="NewReplicaSetAvailable")
    assert rollout_status(await get_d(client, "why")) == ('deployment "why" successfully rolled out\n', True)


# ---------------------------------------------------------------------- the real kubectl


from tests.kubectl import KUBECTL  # noqa: E402


@pytest.fixture
async def https(tmp_path: Path) -> AsyncIterator[tuple[Client, Callable[..., Awaitable[tuple[int, str]]]]]:
    """An HTTPS API server in this process, the two controllers, a kubelet, and a kubectl runner."""
    from kybernetes.apiserver.http import TokenAuth, serve, server_ssl_context
    from kybernetes.apiserver.pki import PKI

    api = await start_api(tmp_path)
    pki = PKI(tmp_path / "pki")
    pki.ensure(["127.0.0.1", "localhost"])
    tokens = TokenAuth()
    tokens.add(pki.token_file.read_text().strip(), "admin", ("system:masters", "system:authenticated"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = await serve(api, tokens, "127.0.0.1", port, server_ssl_context(pki))
    kubeconfig = tmp_path / "kubeconfig"
    pki.write_kubeconfig(kubeconfig, f"https://127.0.0.1:{port}")
    client = Client.in_process(api.handle)
    controllers = [ReplicaSetController(Client.in_process(api.handle)),
                   DeploymentController(Client.in_process(api.handle))]
    for c in controllers:
        await c.start()
    kubelet = FakeKubelet(client)
    await kubelet.start()

    async def kubectl(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            KUBECTL, "--kubeconfig", str(kubeconfig), "-n", NS, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return proc.returncode or 0, out.decode()
    try:
        yield client, kubectl
    finally:
        await kubelet.stop()
        for c in controllers:
            await c.stop()
            await c.client.close()
        await client.close()
        await runner.cleanup()
        await stop_api(api)


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed")
async def test_kubectl_rollout_commands(https) -> None:
    client, kubectl = https
    await client.resource("apps/v1", "deployments").create(deployment("kc", 2, image="nginx:1"), NS)
    rc, out = await kubectl("rollout", "status", "deployment/kc", "--timeout=30s")
    assert rc == 0 and 'deployment "kc" successfully rolled out' in out, out
    rc, out = await kubectl("set", "image", "deployment/kc", "c=nginx:2")
    assert rc == 0, out
    rc, out = await kubectl("rollout", "status", "deployment/kc", "--timeout=30s")
    assert rc == 0 and out.rstrip().endswith('deployment "kc" successfully rolled out'), out
    rc, out = await kubectl("rollout", "history", "deployment/kc")
    assert rc == 0 and "1 " in out and "2 " in out, out
    (old,) = [r for r in await rs_of(client, "kc") if r["metadata"]["annotations"][REV] == "1"]

    rc, out = await kubectl("rollout", "undo", "deployment/kc")
    assert rc == 0 and "rolled back" in out, out
    rc, out = await kubectl("rollout", "status", "deployment/kc", "--timeout=30s")
    assert rc == 0, out
    d = await get_d(client, "kc")
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1"
    assert d["metadata"]["annotations"][REV] == "3"
    rss = await rs_of(client, "kc")
    assert len(rss) == 2
    (back,) = [r for r in rss if r["metadata"]["annotations"][REV] == "3"]
    assert back["metadata"]["uid"] == old["metadata"]["uid"]

    rc, out = await kubectl("rollout", "pause", "deployment/kc")
    assert rc == 0 and "paused" in out, out
    rc, out = await kubectl("set", "image", "deployment/kc", "c=nginx:3")
    assert rc == 0, out

    async def observed_paused() -> bool:
        d = await get_d(client, "kc")
        c = cond(d, "Progressing")
        return d["status"]["observedGeneration"] == d["metadata"]["generation"] and c["reason"] == "DeploymentPaused"
    await eventually(observed_paused, what="paused deployment observed")
    assert len(await rs_of(client, "kc")) == 2
    rc, out = await kubectl("rollout", "resume", "deployment/kc")
    assert rc == 0 and "resumed" in out, out
    rc, out = await kubectl("rollout", "status", "deployment/kc", "--timeout=30s")
    assert rc == 0 and 'deployment "kc" successfully rolled out' in out, out
    assert (await get_d(client, "kc"))["metadata"]["annotations"][REV] == "4"
    rc, out = await kubectl("rollout", "restart", "deployment/kc")
    assert rc == 0 and "restarted" in out, out
    rc, out = await kubectl("rollout", "status", "deployment/kc", "--timeout=30s")
    assert rc == 0 and 'deployment "kc" successfully rolled out' in out, out
    d = await get_d(client, "kc")
    assert d["metadata"]["annotations"][REV] == "5"
    assert "kubectl.kubernetes.io/restartedAt" in d["spec"]["template"]["metadata"]["annotations"]
