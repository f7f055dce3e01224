"""ResourceQuota evaluators, the admission check's messages and scopes, and race-free charging."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from kybernetes.api.errors import StatusError
from kybernetes.api.quantity import Quantity
from kybernetes.apiserver.quota import (
    CREATE,
    UPDATE,
    QuotaAdmission,
    QuotaRefused,
    check_request,
    evaluator_for,
    observed_usage,
    pod_limits,
    pod_requests,
)
from kybernetes.apiserver.rest import Call
from kybernetes.client import Client

PODS = evaluator_for("", "pods")
SERVICES = evaluator_for("", "services")
CLAIMS = evaluator_for("", "persistentvolumeclaims")


def container(name: str = "c", requests: dict | None = None, limits: dict | None = None, **extra: Any) -> dict:
    res: dict[str, Any] = {}
    if requests:
        res["requests"] = requests
    if limits:
        res["limits"] = limits
    return {"name": name, "image": "busybox", **({"resources": res} if res else {}), **extra}


def pod(name: str = "p", *containers: dict, init: list[dict] | None = None, ns: str = "default",
        **spec: Any) -> dict:
    s: dict[str, Any] = {"containers": list(containers) or [container()], **spec}
    if init:
        s["initContainers"] = init
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": s}


def quota(name: str = "q", hard: dict | None = None, used: dict | None = None, **spec: Any) -> dict:
    hard = hard or {"pods": "2"}
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name, "namespace": "default"},
            "spec": {"hard": hard, **spec},
            "status": {"hard": hard, "used": used if used is not None else dict.fromkeys(hard, "0")}}


def strs(rl: dict[str, Quantity]) -> dict[str, str]:
    return {k: str(v) for k, v in rl.items()}


def refused(quotas: list[dict], ev, obj: dict, op: str = CREATE, old: dict | None = None) -> str:
    with pytest.raises(QuotaRefused) as ei:
        check_request(quotas, ev, op, obj, old)
    return str(ei.value)


# ------------------------------------------------------------ evaluators


def test_pod_usage_sums_containers_and_adds_overhead():
    p = pod("p", container("a", {"cpu": "100m", "memory": "64Mi"}, {"cpu": "200m"}),
            container("b", {"cpu": "250m", "nvidia.com/gpu": "1", "hugepages-2Mi": "4Mi"}),
            overhead={"cpu": "10m", "memory": "1Mi"})
    assert strs(PODS.usage(p)) == {
        "count/pods": "1", "pods": "1", "cpu": "360m", "requests.cpu": "360m", "memory": "65Mi",
        "requests.memory": "65Mi", "limits.cpu": "210m", "requests.nvidia.com/gpu": "1",
        "hugepages-2Mi": "4Mi", "requests.hugepages-2Mi": "4Mi"}


def test_init_containers_count_as_their_peak_and_sidecars_add_up():
    p = pod("p", container("a", {"cpu": "100m"}),
            init=[container("i1", {"cpu": "500m"}), container("i2", {"cpu": "200m"})])
    assert str(pod_requests(p)["cpu"]) == "500m"  # the biggest init container beats the sum
    p = pod("p", container("a", {"cpu": "100m"}),
            init=[container("side", {"cpu": "50m"}, restartPolicy="Always"), container("i", {"cpu": "120m"})])
    # The sidecar runs beside the later init container and then beside the app.
    assert str(pod_requests(p)["cpu"]) == "170m"
    p = pod("p", container("a", limits={"cpu": "1"}), overhead={"cpu": "100m", "memory": "10Mi"})
    assert strs(pod_limits(p)) == {"cpu": "1100m"}  # overhead only where something is limited


def test_finished_pods_only_keep_their_object_count():
    p = pod("p", container("a", {"cpu": "1"}))
    p["status"] = {"phase": "Succeeded"}
    assert strs(PODS.usage(p)) == {"count/pods": "1"}
    running = {**p, "status": {"phase": "Running"}}
    assert PODS.released(running, p) and not PODS.released(p, running)
    stuck = pod("p", container("a", {"cpu": "1"}))
    stuck["metadata"].update(deletionTimestamp="2000-01-01T00:00:00Z", deletionGracePeriodSeconds=30)
    assert strs(PODS.usage(stuck)) == {"count/pods": "1"}


def test_service_usage():
    svc = {"metadata": {"name": "s"}, "spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 443}]}}
    assert strs(SERVICES.usage(svc)) == {"count/services": "1", "services": "1", "services.loadbalancers": "0",
                                         "services.nodeports": "2"}
    svc["spec"].update(type="LoadBalancer", allocateLoadBalancerNodePorts=False)
    svc["spec"]["ports"][0]["nodePort"] = 30080
    assert strs(SERVICES.usage(svc))["services.nodeports"] == "1"
    assert strs(SERVICES.usage(svc))["services.loadbalancers"] == "1"
    assert SERVICES.handles(UPDATE) and not PODS.handles(UPDATE)


def test_claim_usage_by_storage_class():
    pvc = {"metadata": {"name": "c"},
           "spec": {"storageClassName": "gold", "resources": {"requests": {"storage": "1Gi"}}},
           "status": {"allocatedResources": {"storage": "2Gi"}}}
    assert strs(CLAIMS.usage(pvc)) == {
        "persistentvolumeclaims": "1", "count/persistentvolumeclaims": "1",
        "gold.storageclass.storage.k8s.io/persistentvolumeclaims": "1", "requests.storage": "2Gi",
        "gold.storageclass.storage.k8s.io/requests.storage": "2Gi"}
    assert CLAIMS.matching_resources(["bronze.storageclass.storage.k8s.io/requests.storage", "pods"]) == \
        ["bronze.storageclass.storage.k8s.io/requests.storage"]


def test_object_counts():
    deploy = evaluator_for("apps", "deployments")
    assert deploy.matching_resources(["count/deployments.apps", "pods"]) == ["count/deployments.apps"]
    assert strs(deploy.usage({})) == {"count/deployments.apps": "1"}
    assert strs(evaluator_for("", "secrets").usage({})) == {"count/secrets": "1", "secrets": "1"}
    assert evaluator_for("", "events") is None
    assert not deploy.handles(UPDATE)


# ------------------------------------------------------------ the admission check


def test_exceeded_message():
    q = quota(hard={"pods": "2", "requests.cpu": "1"}, used={"pods": "2", "requests.cpu": "500m"})
    msg = refused([q], PODS, pod("p", container("c", {"cpu": "100m"})))
    assert msg == "exceeded quota: q, requested: pods=1, used: pods=2, limited: pods=2"
    q = quota(hard={"pods": "5", "requests.cpu": "1", "requests.memory": "1Gi"},
              used={"pods": "1", "requests.cpu": "900m", "requests.memory": "1000Mi"})
    msg = refused([q], PODS, pod("p", container("c", {"cpu": "200m", "memory": "64Mi"})))
    assert msg == ("exceeded quota: q, requested: requests.cpu=200m,requests.memory=64Mi, "
                   "used: requests.cpu=900m,requests.memory=1000Mi, limited: requests.cpu=1,requests.memory=1Gi")


def test_admitted_usage_is_added_to_matching_quotas():
    q1 = quota("a", hard={"pods": "3", "count/pods": "3"}, used={"pods": "1", "count/pods": "1"})
    q2 = quota("b", hard={"services": "1"})
    out = check_request([q1, q2], PODS, CREATE, pod())
    assert strs(out[0]) == {"pods": "2", "count/pods": "2"} and out[1] is None


def test_required_limits():
    q = quota(hard={"limits.cpu": "2", "requests.cpu": "1"})
    msg = refused([q], PODS, pod("p", container("c"), container("d", {"cpu": "100m"})))
    assert msg == "failed quota: q: must specify limits.cpu for: c,d; requests.cpu for: c"
    # A quota on something else asks for nothing.
    assert check_request([quota(hard={"pods": "1"})], PODS, CREATE, pod())[0] is not None


def test_status_unknown_and_uncounted_quotas():
    q = quota(hard={"pods": "1"})
    q["status"]["used"] = {}
    assert refused([q], PODS, pod()) == "status unknown for quota: q, resources: pods"
    q["status"] = {}  # the controller has not seen it: not enforced yet
    assert check_request([q], PODS, CREATE, pod()) == [None]


def test_scopes():
    best_effort = pod("be")
    burstable = pod("bu", container("c", {"memory": "10Mi"}))
    q = quota(hard={"pods": "1"}, scopes=["BestEffort"])
    assert check_request([q], PODS, CREATE, best_effort)[0] is not None
    assert check_request([q], PODS, CREATE, burstable) == [None]
    q = quota(hard={"pods": "1"}, scopes=["NotBestEffort", "Terminating"])
    assert check_request([q], PODS, CREATE, burstable) == [None]
    assert check_request([q], PODS, CREATE, {**burstable, "spec": {**burstable["spec"],
                                                                  "activeDeadlineSeconds": 60}})[0] is not None
    high = pod("h", priorityClassName="high")

    def sel(op: str, *values: str) -> dict:
        return quota(hard={"pods": "1"}, scopeSelector={"matchExpressions": [
            {"scopeName": "PriorityClass", "operator": op, **({"values": list(values)} if values else {})}]})

    def hit(q: dict, p: dict) -> bool:
        return check_request([q], PODS, CREATE, p)[0] is not None
    assert hit(sel("In", "high", "mid"), high) and not hit(sel("In", "high"), pod())
    assert not hit(sel("NotIn", "high"), high) and hit(sel("NotIn", "high"), pod())
    assert hit(sel("Exists"), high) and not hit(sel("Exists"), pod())
    assert hit(sel("DoesNotExist"), pod()) and not hit(sel("DoesNotExist"), high)
    cross = pod("x", affinity={"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "zone", "namespaces": ["other"], "labelSelector": {}}]}})
    q = quota(hard={"pods": "1"}, scopes=["CrossNamespacePodAffinity"])
    assert hit(q, cross) and not hit(q, pod())
    # Scoped quotas never match kinds without scopes.
    assert check_request([quota(hard={"services": "1"}, scopes=["BestEffort"])], SERVICES, CREATE,
                         {"metadata": {"name": "s"}, "spec": {}}) == [None]


def test_updates_charge_only_growth():
    small = {"metadata": {"name": "c", "resourceVersion": "5"},
             "spec": {"resources": {"requests": {"storage": "1Gi"}}}}
    big = {"metadata": {"name": "c", "resourceVersion": "5"},
           "spec": {"resources": {"requests": {"storage": "3Gi"}}}}
    q = quota(hard={"requests.storage": "3Gi", "persistentvolumeclaims": "1"},
              used={"requests.storage": "1Gi", "persistentvolumeclaims": "1"})
    out = check_request([q], CLAIMS, UPDATE, big, small)
    assert strs(out[0]) == {"requests.storage": "3Gi", "persistentvolumeclaims": "1"}
    assert check_request([q], CLAIMS, UPDATE, small, small) == [None]
    q["status"]["used"]["requests.storage"] = "2Gi"
    assert refused([q], CLAIMS, big, UPDATE, small) == \
        "exceeded quota: q, requested: requests.storage=2Gi, used: requests.storage=2Gi, limited: requests.storage=3Gi"


def test_observed_usage_counts_within_scopes():
    q = quota(hard={"pods": "9", "count/pods": "9", "requests.cpu": "4"}, scopes=["NotBestEffort"])
    done = pod("d", container("c", {"cpu": "1"}))
    done["status"] = {"phase": "Failed"}
    pods = [pod("a", container("c", {"cpu": "500m"})), pod("b"), done]
    used = observed_usage(q, [(PODS, lambda: pods), (SERVICES, lambda: [])])
    assert strs(used) == {"pods": "1", "count/pods": "2", "requests.cpu": "500m"}


# ------------------------------------------------------------ admission against a real server


def _status_writer(api):
    kind = api.registry.by_resource("", "v1", "resourcequotas")
    writes: list[dict] = []

    async def update_status(q: dict) -> dict:
        m = q["metadata"]
        _, raw = await api.rest.update(kind, m["namespace"], m["name"], q, Call(), subresource="status")
        writes.append(q)
        return orjson.loads(raw)
    update_status.writes = writes  # type: ignore[attr-defined]
    return update_status


async def _make_quota(client: Client, hard: dict, used: dict | None = None, name: str = "q") -> dict:
    api = client.resource("v1", "resourcequotas")
    q = await api.create({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name},
                          "spec": {"hard": hard}}, "default")
    q["status"] = {"hard": hard, "used": used if used is not None else dict.fromkeys(hard, "0")}
    return await api.update_status(q, "default")


async def _used(client: Client, name: str = "q") -> dict:
    return (await client.resource("v1", "resourcequotas").get(name, "default"))["status"]["used"]


async def test_concurrent_creates_cannot_share_the_last_slot(api, client):
    await _make_quota(client, {"pods": "1"})
    await api.cache.fresh()
    qa = QuotaAdmission(api.cache, _status_writer(api))
    kind = api.registry.by_resource("", "v1", "pods")
    results = await asyncio.gather(qa.admit(kind, pod("a"), None, Call()), qa.admit(kind, pod("b"), None, Call()),
                                   return_exceptions=True)
    errors = [r for r in results if isinstance(r, StatusError)]
    assert len(errors) == 1 and results.count(None) == 1
    e = errors[0]
    assert e.code == 403 and e.reason == "Forbidden"
    assert e.message.endswith('" is forbidden: exceeded quota: q, requested: pods=1, used: pods=1, limited: pods=1')
    assert e.details == {"name": e.message.split('"')[1], "kind": "pods"}
    assert await _used(client) == {"pods": "1"}


async def test_back_to_back_charges_and_dry_run(api, client):
    await _make_quota(client, {"count/configmaps": "3"})
    await api.cache.fresh()
    writer = _status_writer(api)
    qa = QuotaAdmission(api.cache, writer)
    kind = api.registry.by_resource("", "v1", "configmaps")

    def cm(name: str) -> dict:
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}}
    await qa.admit(kind, cm("x"), None, Call(query={"dryRun": "All"}))
    assert writer.writes == []
    # No waiting for the watch cache between charges: each sees the one before.
    for name in ("a", "b", "c"):
        await qa.admit(kind, cm(name), None, Call())
    with pytest.raises(StatusError) as ei:
        await qa.admit(kind, cm("d"), None, Call())
    assert ei.value.message == ('configmaps "d" is forbidden: exceeded quota: q, requested: count/configmaps=1, '
                                'used: count/configmaps=3, limited: count/configmaps=3')
    assert await _used(client) == {"count/configmaps": "3"}
    # Updates of objects only counted are not charged, nor are other namespaces or subresources.
    await qa.admit(kind, cm("a"), cm("a"), Call())
    await qa.admit(kind, {**cm("z"), "metadata": {"name": "z", "namespace": "kube-system"}}, None, Call())
    await qa.admit(kind, cm("z"), None, Call(), subresource="status")


async def test_a_conflicting_write_makes_the_charge_retry(api, client):
    await _make_quota(client, {"pods": "2"})
    await api.cache.fresh()
    real = _status_writer(api)
    raced = False

    async def racing_writer(q: dict) -> dict:
        nonlocal raced
        if not raced:
            # Someone else (say, the controller) counts a pod first.
            raced = True
            cur = await client.resource("v1", "resourcequotas").get("q", "default")
            cur["status"]["used"] = {"pods": "1"}
            await client.resource("v1", "resourcequotas").update_status(cur, "default")
        return await real(q)
    qa = QuotaAdmission(api.cache, racing_writer)
    kind = api.registry.by_resource("", "v1", "pods")
    await qa.admit(kind, pod("a"), None, Call())
    assert await _used(client) == {"pods": "2"}
    with pytest.raises(StatusError):
        await qa.admit(kind, pod("b"), None, Call())


async def test_required_limits_through_admission(api, client):
    await _make_quota(client, {"limits.cpu": "2", "requests.cpu": "1"})
    await api.cache.fresh()
    qa = QuotaAdmission(api.cache, _status_writer(api))
    kind = api.registry.by_resource("", "v1", "pods")
    with pytest.raises(StatusError) as ei:
        await qa.admit(kind, pod("p"), None, Call())
    assert ei.value.message == 'pods "p" is forbidden: failed quota: q: must specify limits.cpu for: c; ' \
                               'requests.cpu for: c'
    await qa.admit(kind, pod("p", container("c", {"cpu": "500m"}, {"cpu": "1"})), None, Call())
    assert await _used(client) == {"limits.cpu": "1", "requests.cpu": "500m"}


class _LaggingCache:
    """A watch cache that shows the quota as of the last fresh(), over a store with CAS writes."""

    def __init__(self, q: dict):
        self.store = {"rv": 1, "obj": q}
        self.shown = self._entry()
        self.fresh_calls = 0

    def _entry(self):
        from kybernetes.apiserver.watchcache import Entry
        obj = {**self.store["obj"], "metadata": {**self.store["obj"]["metadata"],
                                                 "resourceVersion": str(self.store["rv"])}}
        return Entry("/registry/resourcequotas/default/q", orjson.dumps(obj), self.store["rv"], "default", "q",
                     {}, {}, "")

    def cache(self, prefix: str):
        outer = self

        class _C:
            def entries(self, ns: str):
                return [outer.shown] if ns == "default" else []
        return _C()

    async def fresh(self) -> int:
        self.fresh_calls += 1
        self.shown = self._entry()
        return self.store["rv"]

    async def write(self, q: dict) -> dict:
        if q["metadata"]["resourceVersion"] != str(self.store["rv"]):
            raise StatusError(409, "Conflict", "stale")
        self.store = {"rv": self.store["rv"] + 1, "obj": q}
        return {**q, "metadata": {**q["metadata"], "resourceVersion": str(self.store["rv"])}}


async def test_charges_build_on_each_other_while_the_cache_lags():
    cache = _LaggingCache(quota(hard={"pods": "3"}))
    qa = QuotaAdmission(cache, cache.write)  # type: ignore[arg-type]
    kind = type("K", (), {"namespaced": True, "group": "", "plural": "pods", "kind": "Pod"})()
    for name in ("a", "b", "c"):
        await qa.admit(kind, pod(name), None, Call())
    assert cache.fresh_calls == 0 and cache.store["obj"]["status"]["used"] == {"pods": "3"}
    with pytest.raises(StatusError) as ei:
        await qa.admit(kind, pod("d"), None, Call())
    assert ei.value.code == 403 and cache.fresh_calls == 1  # refused only on a fresh look
    # Another writer frees a slot: the cache does not show it, but a refusal looks again first.
    cache.store = {"rv": cache.store["rv"] + 1,
                   "obj": {**cache.store["obj"], "status": {"hard": {"pods": "3"}, "used": {"pods": "2"}}}}
    await qa.admit(kind, pod("e"), None, Call())
    assert cache.fresh_calls == 2 and cache.store["obj"]["status"]["used"] == {"pods": "3"}
    # A write the cache has not shown yet, and our charge fits what we saw: the compare-and-swap
    # fails, we look again and charge on top of what is stored.
    cache.store = {"rv": cache.store["rv"] + 1,
                   "obj": {**cache.store["obj"], "status": {"hard": {"pods": "3"}, "used": {"pods": "1"}}}}
    await qa.admit(kind, pod("f"), None, Call())  # refused on the cache, then charged after a look
    cache.store = {"rv": cache.store["rv"] + 1,
                   "obj": {**cache.store["obj"], "status": {"hard": {"pods": "3"}, "used": {"pods": "0"}}}}
    calls = cache.fresh_calls
    await qa.admit(kind, pod("g"), None, Call())
    assert cache.fresh_calls == calls + 1 and cache.store["obj"]["status"]["used"] == {"pods": "1"}
