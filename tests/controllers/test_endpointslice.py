"""The EndpointSlice controller against a real in-process API server; the tests play kubelet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.client import Client
from kybernetes.controllers.endpointslice import (
    CONTROLLER_NAME,
    MANAGED_BY_LABEL,
    MIRRORING_CONTROLLER_NAME,
    SERVICE_NAME_LABEL,
    ZONE_LABEL,
    EndpointSliceController,
    EndpointSliceMirroringController,
    PortGroup,
    endpoint_key,
    plan_slices,
    ports_key,
)
from tests.apiserver.conftest import eventually, start_api, stop_api
from tests.controllers.test_endpoints import pod, running_pod, service, set_status

NS = "default"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Client, EndpointSliceController]]:
    api = await start_api(tmp_path, service_cidr="10.96.0.0/12,fd00:10:96::/112")
    client = Client.in_process(api.handle)
    await client.resource("v1", "nodes", namespaced=False).create(
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {ZONE_LABEL: "zone-a"}}})
    ctrl = EndpointSliceController(Client.in_process(api.handle))
    await ctrl.start()
    try:
        yield client, ctrl
    finally:
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
        await stop_api(api)


async def slices_of(client: Client, svc: str) -> list[dict[str, Any]]:
    items = (await client.resource("discovery.k8s.io/v1", "endpointslices").list(
        NS, label_selector=f"{SERVICE_NAME_LABEL}={svc}"))["items"]
    return sorted(items, key=lambda s: (s["addressType"], s["metadata"]["name"]))


def addresses(slices: list[dict[str, Any]], address_type: str | None = None) -> list[str]:
    return sorted(a for s in slices if address_type in (None, s["addressType"])
                  for ep in s.get("endpoints") or [] for a in ep["addresses"])


async def slices_when(client: Client, svc: str, pred, what: str = "") -> list[dict[str, Any]]:
    async def check():
        slices = await slices_of(client, svc)
        return pred(slices) and (slices or [None])
    got = await eventually(check, what=what or f"slices of {svc}")
    return [] if got == [None] else got


def endpoint(slices: list[dict[str, Any]], ip: str) -> dict[str, Any]:
    return next(ep for s in slices for ep in s.get("endpoints") or [] if ip in ep["addresses"])


# ---------------------------------------------------------------------- pure logic


def _svc() -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": NS, "uid": "u1"}, "spec": {"clusterIP": "10.96.0.5"}}


def _ep(i: int) -> dict[str, Any]:
    return {"addresses": [f"10.0.{i // 250}.{i % 250}"], "conditions": {"ready": True},
            "targetRef": {"kind": "Pod", "namespace": NS, "name": f"p{i}"}}


def _group(eps: list[dict[str, Any]], ports: list[dict[str, Any]]) -> dict[str, dict[bytes, PortGroup]]:
    return {"IPv4": {ports_key(ports): PortGroup(ports, {endpoint_key(e): e for e in eps})}}


def _existing(name: str, eps: list[dict[str, Any]], ports: list[dict[str, Any]], labels: dict[str, str]) -> dict:
    return {"metadata": {"name": name, "namespace": NS, "uid": name, "resourceVersion": "1", "labels": labels,
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "u1"}]},
            "addressType": "IPv4", "endpoints": eps, "ports": ports}


def test_plan_fills_and_keeps_endpoints_in_place() -> None:
    ports = [{"name": "", "port": 80, "protocol": "TCP"}]
    labels = {"kubernetes.io/service-name": "web"}
    # 250 endpoints from nothing: three slices, 100 + 100 + 50.
    plan = plan_slices(_svc(), _group([_ep(i) for i in range(250)], ports), [], labels, 100)
    assert sorted(len(s["endpoints"]) for s in plan.creates) == [50, 100, 100] and not plan.updates
    # One endpoint more, next to a full and a half-full slice: it goes to the half-full one.
    full = _existing("full", [_ep(i) for i in range(100)], ports, labels)
    half = _existing("half", [_ep(i) for i in range(100, 150)], ports, labels)
    plan = plan_slices(_svc(), _group([_ep(i) for i in range(151)], ports), [full, half], labels, 100)
    assert not plan.creates and not plan.deletes
    assert [s["metadata"]["name"] for s in plan.updates] == ["half"] and len(plan.updates[0]["endpoints"]) == 51
    # Nothing changed: nothing to do.
    assert not plan_slices(_svc(), _group([_ep(i) for i in range(150)], ports), [full, half], labels, 100)
    # The ports changed: the old slices are rewritten rather than deleted and recreated.
    new_ports = [{"name": "", "port": 81, "protocol": "TCP"}]
    plan = plan_slices(_svc(), _group([_ep(i) for i in range(150)], new_ports), [full, half], labels, 100)
    assert not plan.creates and not plan.deletes
    assert sorted(s["metadata"]["name"] for s in plan.updates) == ["full", "half"]
    assert all(s["ports"] == new_ports and s["metadata"]["resourceVersion"] == "1" for s in plan.updates)


def test_plan_keeps_one_placeholder_without_endpoints() -> None:
    labels = {"kubernetes.io/service-name": "web"}
    plan = plan_slices(_svc(), {"IPv4": {}}, [], labels)
    assert len(plan.creates) == 1 and plan.creates[0]["endpoints"] == [] and plan.creates[0]["ports"] == []
    placeholder = _existing("ph", [], [], labels)
    assert not plan_slices(_svc(), {"IPv4": {}}, [placeholder], labels)


# ---------------------------------------------------------------------- the controller


async def test_endpoints_conditions_and_metadata(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(
        service("web", {"app": "web"}, labels={"tier": "front"},
                ports=[{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"}]), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"], ready=False)
    slices = await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1", "10.1.0.2"])
    assert len(slices) == 1
    s = slices[0]
    assert s["addressType"] == "IPv4"
    assert s["metadata"]["name"].startswith("web-") and len(s["metadata"]["name"]) == len("web-") + 5
    assert s["metadata"]["labels"] == {"tier": "front", SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: CONTROLLER_NAME}
    svc = await client.resource("v1", "services").get("web", NS)
    assert s["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                                 "uid": svc["metadata"]["uid"], "controller": True,
                                                 "blockOwnerDeletion": True}]
    assert s["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}]
    a = endpoint(slices, "10.1.0.1")
    assert a["conditions"] == {"ready": True, "serving": True, "terminating": False}
    assert a["nodeName"] == "n1" and a["zone"] == "zone-a"
    assert a["targetRef"]["kind"] == "Pod" and a["targetRef"]["name"] == "a"
    assert endpoint(slices, "10.1.0.2")["conditions"] == {"ready": False, "serving": False, "terminating": False}
    # b turns ready: updated in place, same slice.
    await set_status(client, "b", ["10.1.0.2"], ready=True)
    slices = await slices_when(client, "web", lambda s: endpoint(s, "10.1.0.2")["conditions"]["ready"])
    assert [x["metadata"]["name"] for x in slices] == [s["metadata"]["name"]]


async def test_terminating_pods_stay_with_conditions(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await client.resource("v1", "services").create(service("all", {"app": "web"}, publishNotReadyAddresses=True),
                                                   NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1"])
    await client.resource("v1", "pods").delete("a", NS)
    slices = await slices_when(client, "web", lambda s: endpoint(s, "10.1.0.1")["conditions"]["terminating"])
    assert endpoint(slices, "10.1.0.1")["conditions"] == {"ready": False, "serving": True, "terminating": True}
    slices = await slices_when(client, "all", lambda s: addresses(s) == ["10.1.0.1"] and
                               endpoint(s, "10.1.0.1")["conditions"]["terminating"])
    assert endpoint(slices, "10.1.0.1")["conditions"] == {"ready": True, "serving": True, "terminating": True}


async def test_named_ports_make_one_slice_per_port_list(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(
        service("web", {"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "web"},
                                              {"name": "admin", "port": 81, "targetPort": 9000}]), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"], ports=[{"name": "web", "containerPort": 8080}])
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"], ports=[{"name": "web", "containerPort": 9090}])
    await running_pod(client, "c", {"app": "web"}, ["10.1.0.3"])  # no "web" port: only admin
    slices = await slices_when(client, "web", lambda s: len(s) == 3 and len(addresses(s)) == 3)
    by_ports = {tuple((p["name"], p["port"]) for p in sorted(s["ports"], key=lambda p: p["name"])):
                addresses([s]) for s in slices}
    assert by_ports == {(("admin", 9000), ("http", 8080)): ["10.1.0.1"],
                        (("admin", 9000), ("http", 9090)): ["10.1.0.2"],
                        (("admin", 9000),): ["10.1.0.3"]}


async def test_dual_stack_service_gets_a_slice_per_family(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(
        service("ds", {"app": "x"}, clusterIP="None", ipFamilies=["IPv4", "IPv6"],
                ipFamilyPolicy="RequireDualStack"), NS)
    await running_pod(client, "a", {"app": "x"}, ["10.1.0.1", "fd00::1"])
    await running_pod(client, "b", {"app": "x"}, ["fd00::2"])
    slices = await slices_when(client, "ds", lambda s: addresses(s, "IPv4") == ["10.1.0.1"] and
                               addresses(s, "IPv6") == ["fd00::1", "fd00::2"])
    assert sorted(s["addressType"] for s in slices) == ["IPv4", "IPv6"]
    assert all(s["metadata"]["labels"]["service.kubernetes.io/headless"] == "" for s in slices)


async def test_pod_whose_labels_change_stops_being_an_endpoint(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"])
    before = await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1", "10.1.0.2"])
    await client.resource("v1", "pods").patch("b", {"metadata": {"labels": {"app": "other"}}}, namespace=NS)
    after = await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1"])
    assert [s["metadata"]["name"] for s in after] == [s["metadata"]["name"] for s in before]


async def test_service_deletion_removes_its_slices_only(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1"])
    # Someone else's slice for the same Service name is never touched.
    theirs = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "web-custom", "labels": {SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: "me"}},
              "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}], "ports": []}
    await client.resource("discovery.k8s.io/v1", "endpointslices").create(theirs, NS)
    await client.resource("v1", "services").delete("web", NS)
    left = await slices_when(client, "web", lambda s: [x["metadata"]["name"] for x in s] == ["web-custom"])
    assert left[0]["endpoints"] == [{"addresses": ["192.0.2.1"]}]


async def test_selectorless_service_is_left_alone(env) -> None:
    client, ctrl = env
    await client.resource("v1", "services").create(service("ext", None), NS)
    mine = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "ext-1", "labels": {SERVICE_NAME_LABEL: "ext"}},
            "addressType": "IPv4", "endpoints": [{"addresses": ["192.0.2.1"]}], "ports": []}
    await client.resource("discovery.k8s.io/v1", "endpointslices").create(mine, NS)
    await eventually(lambda: "default/ext" in ctrl.services and "default/ext-1" in ctrl.slices)
    await ctrl.reconcile("default/ext")
    slices = await slices_of(client, "ext")
    assert [s["metadata"]["name"] for s in slices] == ["ext-1"]
    assert slices[0]["endpoints"] == [{"addresses": ["192.0.2.1"]}]


async def test_tampered_and_deleted_slices_are_healed(env) -> None:
    client, _ctrl = env
    rc = client.resource("discovery.k8s.io/v1", "endpointslices")
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    [good] = await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1"])
    tampered = dict(good)
    tampered["endpoints"] = [{"addresses": ["6.6.6.6"], "conditions": {"ready": True}}]
    tampered["metadata"] = {**good["metadata"], "labels": {**good["metadata"]["labels"], "extra": "x"}}
    await rc.update(tampered, NS)
    healed = await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1"] and
                               "extra" not in s[0]["metadata"]["labels"])
    assert [s["metadata"]["name"] for s in healed] == [good["metadata"]["name"]]
    assert healed[0]["endpoints"] == good["endpoints"]
    await rc.delete(good["metadata"]["name"], NS)
    again = await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1"] and
                              s[0]["metadata"]["name"] != good["metadata"]["name"])
    assert len(again) == 1


async def test_many_pods_make_several_slices(env) -> None:
    client, ctrl = env
    await client.resource("v1", "services").create(service("big", {"app": "big"}), NS)
    pods = client.resource("v1", "pods")
    n = 130

    async def one(i: int) -> None:
        await running_pod(client, f"p{i}", {"app": "big"}, [f"10.2.{i // 200}.{i % 200 + 1}"])
    await asyncio.gather(*(one(i) for i in range(n)))
    slices = await slices_when(client, "big", lambda s: len(addresses(s)) == n, what="130 endpoints")
    assert sorted(len(s["endpoints"]) for s in slices) == [30, 100]
    # Stable: another sync writes nothing.
    rvs = {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in slices}
    await eventually(lambda: all((ctrl.slices.get_by_name(k, NS) or {}).get("metadata", {}).get(
        "resourceVersion") == v for k, v in rvs.items()))
    await ctrl.reconcile("default/big")
    assert {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in await slices_of(client, "big")} == rvs
    # Thirty go: each remaining endpoint stays in the slice it was in, and no slice is made.
    before = {s["metadata"]["name"]: set(addresses([s])) for s in slices}
    await asyncio.gather(*(pods.delete(f"p{i}", NS, grace_period_seconds=0) for i in range(100, n)))
    after = await slices_when(client, "big", lambda s: len(addresses(s)) == 100)
    assert all(set(addresses([s])) <= before[s["metadata"]["name"]] for s in after)


async def test_service_without_pods_has_a_placeholder(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("empty", {"app": "nothing"}), NS)
    [s] = await slices_when(client, "empty", lambda s: len(s) == 1)
    assert not s.get("endpoints") and not s.get("ports")
    await running_pod(client, "a", {"app": "nothing"}, ["10.1.0.1"])
    # The placeholder becomes the slice: rewritten, not replaced.
    [t] = await slices_when(client, "empty", lambda s: addresses(s) == ["10.1.0.1"])
    assert t["metadata"]["name"] == s["metadata"]["name"]


async def test_pod_on_unknown_node_waits_for_the_node(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"], node="n2")
    await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1"])
    await client.resource("v1", "nodes", namespaced=False).create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}})
    slices = await slices_when(client, "web", lambda s: addresses(s) == ["10.1.0.1", "10.1.0.2"])
    assert "zone" not in endpoint(slices, "10.1.0.2")
    await client.resource("v1", "nodes", namespaced=False).patch("n2", {"metadata": {"labels": {ZONE_LABEL: "zone-b"}}})
    await slices_when(client, "web", lambda s: endpoint(s, "10.1.0.2").get("zone") == "zone-b")


async def test_headless_hostname(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("db", {"app": "db"}, ports=[], clusterIP="None"), NS)
    await client.resource("v1", "pods").create(pod("db-0", {"app": "db"}, hostname="db-0", subdomain="db"), NS)
    await set_status(client, "db-0", ["10.1.0.1"])
    slices = await slices_when(client, "db", lambda s: addresses(s) == ["10.1.0.1"])
    assert endpoint(slices, "10.1.0.1")["hostname"] == "db-0"
    assert all(not s.get("ports") for s in slices)


# ---------------------------------------------------------------------- mirroring


@pytest.fixture
async def mirror(tmp_path: Path) -> AsyncIterator[tuple[Client, EndpointSliceMirroringController]]:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    ctrl = EndpointSliceMirroringController(Client.in_process(api.handle))
    await ctrl.start()
    try:
        yield client, ctrl
    finally:
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
        await stop_api(api)


def manual_endpoints(name: str, subsets: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, **meta}, "subsets": subsets}


async def test_mirrors_hand_made_endpoints_per_family(mirror) -> None:
    client, _ctrl = mirror
    eps = client.resource("v1", "endpoints")
    await client.resource("v1", "services").create(service("ext", None, ports=[{"name": "pg", "port": 5432}]), NS)
    created = await eps.create(manual_endpoints(
        "ext", [{"addresses": [{"ip": "192.0.2.1", "hostname": "one"}, {"ip": "2001:db8::1"}],
                 "notReadyAddresses": [{"ip": "192.0.2.2"}, {"ip": "not-an-ip"}],
                 "ports": [{"name": "pg", "port": 5432}]}],
        labels={"team": "data"},
        annotations={"note": "x", "kubectl.kubernetes.io/last-applied-configuration": "{}"}), NS)
    slices = await slices_when(client, "ext", lambda s: len(s) == 2)
    v4, v6 = slices
    assert (v4["addressType"], v6["addressType"]) == ("IPv4", "IPv6")
    assert v4["endpoints"] == [{"addresses": ["192.0.2.1"], "conditions": {"ready": True}, "hostname": "one"},
                               {"addresses": ["192.0.2.2"], "conditions": {"ready": False}}]
    assert v6["endpoints"] == [{"addresses": ["2001:db8::1"], "conditions": {"ready": True}}]
    assert v4["ports"] == [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    assert v4["metadata"]["labels"] == {"team": "data", SERVICE_NAME_LABEL: "ext",
                                        MANAGED_BY_LABEL: MIRRORING_CONTROLLER_NAME}
    assert v4["metadata"]["annotations"] == {"note": "x"}
    assert v4["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Endpoints", "name": "ext",
                                                  "uid": created["metadata"]["uid"], "controller": True,
                                                  "blockOwnerDeletion": True}]
    # An edit of the Endpoints rewrites the slice in place; removing the family removes its slice.
    created["subsets"] = [{"addresses": [{"ip": "192.0.2.3"}], "ports": [{"name": "pg", "port": 5432}]}]
    await eps.update(created, NS)
    [only] = await slices_when(client, "ext", lambda s: len(s) == 1 and addresses(s) == ["192.0.2.3"])
    assert only["metadata"]["name"] == v4["metadata"]["name"]
    await eps.delete("ext", NS)
    await slices_when(client, "ext", lambda s: s == [])


async def test_not_mirrored_skip_mirror_or_selector(mirror) -> None:
    client, ctrl = mirror
    await client.resource("v1", "services").create(service("sel", {"app": "x"}), NS)
    await client.resource("v1", "services").create(service("skip", None), NS)
    await client.resource("v1", "services").create(service("later", None), NS)
    subsets = [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 80}]}]
    await client.resource("v1", "endpoints").create(manual_endpoints("sel", subsets), NS)
    await client.resource("v1", "endpoints").create(
        manual_endpoints("skip", subsets, labels={"endpointslice.kubernetes.io/skip-mirror": "true"}), NS)
    await client.resource("v1", "endpoints").create(manual_endpoints("later", subsets), NS)
    await slices_when(client, "later", lambda s: len(s) == 1)
    for key in ("default/sel", "default/skip"):
        await ctrl.reconcile(key)
    assert await slices_of(client, "sel") == [] and await slices_of(client, "skip") == []
    # The Service gains a selector: its endpoints are the controllers' now, not mirrored.
    await client.resource("v1", "services").patch("later", {"spec": {"selector": {"app": "y"}}}, namespace=NS)
    await slices_when(client, "later", lambda s: s == [])
