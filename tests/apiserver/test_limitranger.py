"""LimitRange admission: defaults, per-container and per-pod bounds, ratios and claim sizes."""

from __future__ import annotations

from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.limitranger import (
    ANNOTATION,
    LimitRanger,
    aggregate,
    default_limit_range,
    mutate_pod,
    validate_claim,
    validate_pod,
)
from kybernetes.apiserver.rest import Call
from tests.apiserver.test_quota import container, pod


def limit_range(*items: dict, name: str = "lr") -> dict:
    return default_limit_range({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": name},
                                "spec": {"limits": list(items)}})


def item(typ: str = "Container", **fields: Any) -> dict:
    return {"type": typ, **fields}


def claim(storage: str | None, name: str = "c") -> dict:
    req = {"requests": {"storage": storage}} if storage else {}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": req}}


def test_limit_range_defaulting():
    lr = limit_range(item(max={"cpu": "1"}, default={"memory": "256Mi"}, min={"memory": "64Mi", "cpu": "50m"}))
    got = lr["spec"]["limits"][0]
    assert got["default"] == {"memory": "256Mi", "cpu": "1"}
    assert got["defaultRequest"] == {"memory": "256Mi", "cpu": "1"}
    lr = limit_range(item(min={"cpu": "50m"}), item("Pod", max={"cpu": "2"}))
    assert lr["spec"]["limits"][0] == {"type": "Container", "min": {"cpu": "50m"}, "defaultRequest": {"cpu": "50m"}}
    assert lr["spec"]["limits"][1] == {"type": "Pod", "max": {"cpu": "2"}}


def test_defaults_fill_what_containers_leave_unset():
    lr = limit_range(item(default={"cpu": "500m", "memory": "256Mi"}, defaultRequest={"cpu": "100m"}))
    p = pod("p", container("c"), container("d", {"cpu": "200m"}, {"memory": "1Gi"}),
            init=[container("i")])
    mutate_pod(lr, p)
    c, d = p["spec"]["containers"]
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                              "limits": {"cpu": "500m", "memory": "256Mi"}}
    assert d["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"},
                              "limits": {"memory": "1Gi", "cpu": "500m"}}
    assert p["metadata"]["annotations"][ANNOTATION] == (
        "LimitRanger plugin set: cpu, memory request for container c; cpu, memory limit for container c; "
        "memory request for container d; cpu limit for container d; "
        "cpu, memory request for init container i; cpu, memory limit for init container i")
    untouched = pod("q", container("c", {"cpu": "1", "memory": "1Gi"}, {"cpu": "1", "memory": "1Gi"}))
    mutate_pod(lr, untouched)
    assert "annotations" not in untouched["metadata"]


def test_container_bounds():
    lr = limit_range(item(max={"cpu": "500m", "memory": "1Gi"}, min={"memory": "100Mi"}))
    p = pod("p", container("c", {"cpu": "1", "memory": "50Mi"}, {"cpu": "1", "memory": "50Mi"}))
    assert validate_pod(lr, p) == ["minimum memory usage per Container is 100Mi, but request is 50Mi",
                                   "maximum cpu usage per Container is 500m, but limit is 1"]
    bare = pod("p", container("c", {"cpu": "100m"}))
    with_max = limit_range(item(max={"cpu": "1"}))
    mutate_pod(with_max, bare)  # the max, defaulted into the default limit, gives the container one
    assert bare["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "1"}
    assert validate_pod(with_max, bare) == []
    bare = pod("p", container("c", {"cpu": "100m"}))
    raw = {"spec": {"limits": [{"type": "Container", "max": {"cpu": "1"}, "min": {"memory": "1Mi"}}]}}
    assert validate_pod(raw, bare) == ["minimum memory usage per Container is 1Mi.  No request is specified",
                                       "maximum cpu usage per Container is 1.  No limit is specified"]
    over_request = pod("p", container("c", {"cpu": "2"}, {"cpu": "1"}))
    assert validate_pod(limit_range(item(max={"cpu": "1500m"})), over_request) == \
        ["maximum cpu usage per Container is 1500m, but request is 2"]


def test_ratio():
    lr = limit_range(item(maxLimitRequestRatio={"cpu": "2"}))
    assert validate_pod(lr, pod("p", container("c", {"cpu": "100m"}, {"cpu": "500m"}))) == \
        ["cpu max limit to request ratio per Container is 2, but provided ratio is 5.000000"]
    assert validate_pod(lr, pod("p", container("c", {"cpu": "250m"}, {"cpu": "500m"}))) == []
    assert validate_pod(lr, pod("p", container("c", limits={"cpu": "500m"}))) == \
        ["cpu max limit to request ratio per Container is 2, but no request is specified or request is 0"]
    assert validate_pod(lr, pod("p", container("c", {"cpu": "1"}))) == \
        ["cpu max limit to request ratio per Container is 2, but no limit is specified or limit is 0"]


def test_pod_bounds_apply_to_the_sum():
    lr = limit_range(item("Pod", max={"cpu": "1"}, min={"memory": "100Mi"}))
    p = pod("p", container("a", {"cpu": "600m", "memory": "40Mi"}, {"cpu": "600m"}),
            container("b", {"cpu": "600m", "memory": "40Mi"}, {"cpu": "600m"}))
    assert validate_pod(lr, p) == ["minimum memory usage per Pod is 100Mi, but request is 80Mi",
                                   "maximum cpu usage per Pod is 1, but limit is 1200m"]


def test_claim_bounds():
    lr = limit_range(item("PersistentVolumeClaim", min={"storage": "1Gi"}, max={"storage": "10Gi"}))
    assert validate_claim(lr, claim("20Gi")) == \
        ["maximum storage usage per PersistentVolumeClaim is 10Gi, but request is 20Gi"]
    assert validate_claim(lr, claim("500Mi")) == \
        ["minimum storage usage per PersistentVolumeClaim is 1Gi, but request is 500Mi"]
    assert validate_claim(lr, claim(None)) == [
        "minimum storage usage per PersistentVolumeClaim is 1Gi.  No request is specified",
        "maximum storage usage per PersistentVolumeClaim is 10Gi.  No request is specified"]
    assert validate_claim(lr, claim("5Gi")) == []
    # A size the stored claim already had is not judged again by a newer LimitRange.
    assert validate_claim(lr, claim("20Gi"), claim("20Gi")) == []


def test_aggregate():
    assert aggregate(["a"]) == "a"
    assert aggregate(["a", "b", "a"]) == "[a, b]"
    assert aggregate(["a", "a"]) == "a"


async def _create_limit_range(client, *items: dict) -> None:
    await client.resource("v1", "limitranges").create(
        {"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "lr"}, "spec": {"limits": list(items)}},
        "default")


async def test_admission_defaults_then_refuses(api, client):
    lr = LimitRanger(api.cache)
    kind = api.registry.by_resource("", "v1", "pods")
    p = pod("free")
    await lr.admit(kind, p, None, Call())  # no LimitRange: nothing changes
    assert "resources" not in p["spec"]["containers"][0]
    await _create_limit_range(client, item(default={"cpu": "500m"}, max={"cpu": "1", "memory": "1Gi"}))
    lr = LimitRanger(api.cache)  # a namespace looked at moments ago is only looked at again later
    p = pod("p", container("c", limits={"memory": "512Mi"}))
    await lr.admit(kind, p, None, Call())
    assert p["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"},
                                                       "limits": {"memory": "512Mi", "cpu": "500m"}}
    assert p["metadata"]["annotations"][ANNOTATION] == \
        "LimitRanger plugin set: cpu, memory request for container c; cpu limit for container c"
    big = pod("big", container("c", {"cpu": "2", "memory": "2Gi"}, {"cpu": "2", "memory": "2Gi"}))
    with pytest.raises(StatusError) as ei:
        await lr.admit(kind, big, None, Call())
    assert ei.value.code == 403 and ei.value.reason == "Forbidden"
    assert ei.value.message == ('pods "big" is forbidden: [maximum cpu usage per Container is 1, but limit is 2, '
                                'maximum memory usage per Container is 1Gi, but limit is 2Gi]')
    # Pod updates and subresources are left alone.
    await lr.admit(kind, big, big, Call())
    await lr.admit(kind, big, None, Call(), subresource="status")


async def test_admission_of_claims(api, client):
    await _create_limit_range(client, item("PersistentVolumeClaim", max={"storage": "10Gi"}))
    await api.cache.fresh()
    lr = LimitRanger(api.cache)
    kind = api.registry.by_resource("", "v1", "persistentvolumeclaims")
    await lr.admit(kind, claim("1Gi"), None, Call())
    with pytest.raises(StatusError) as ei:
        await lr.admit(kind, claim("11Gi"), claim("1Gi"), Call())
    assert ei.value.message == ('persistentvolumeclaims "c" is forbidden: maximum storage usage per '
                                'PersistentVolumeClaim is 10Gi, but request is 11Gi')
