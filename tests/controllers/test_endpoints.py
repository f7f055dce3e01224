"""The Endpoints controller (and the API server's kubernetes Service endpoints) against a real
in-process API server; the tests play kubelet by writing pod status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.endpoints import KubernetesEndpoints, split_advertise
from kybernetes.client import Client
from kybernetes.controllers.common import now_rfc3339
from kybernetes.controllers.endpoints import (
    HEADLESS_LABEL,
    OVER_CAPACITY_ANNOTATION,
    TRIGGER_TIME_ANNOTATION,
    EndpointsController,
    find_port,
    repack_subsets,
    truncate_subsets,
)
from tests.apiserver.conftest import eventually, start_api, stop_api

NS = "default"


def service(name: str, selector: dict[str, str] | None, ports: list[dict[str, Any]] | None = None,
            labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"ports": [{"port": 80, "targetPort": 8080}] if ports is None else ports, **spec}
    if selector is not None:
        body["selector"] = selector
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def pod(name: str, labels: dict[str, str], ports: list[dict[str, Any]] | None = None, node: str = "n1",
        **spec: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": "c", "image": "nginx"}
    if ports:
        c["ports"] = ports
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [c], "nodeName": node, **spec}}


async def set_status(client: Client, name: str, ips: list[str], ready: bool = True, phase: str = "Running") -> None:
    """What a kubelet reports: phase, pod IPs and the Ready condition."""
    status: dict[str, Any] = {"phase": phase, "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips],
                              "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                              "lastTransitionTime": now_rfc3339()}]}
    await client.resource("v1", "pods").patch(name, {"status": status}, namespace=NS, subresource="status")


async def running_pod(client: Client, name: str, labels: dict[str, str], ips: list[str], ready: bool = True,
                      **kw: Any) -> None:
    await client.resource("v1", "pods").create(pod(name, labels, **kw), NS)
    await set_status(client, name, ips, ready)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[Client, EndpointsController]]:
    api = await start_api(tmp_path, service_cidr="10.96.0.0/12,fd00:10:96::/112")
    client = Client.in_process(api.handle)
    ctrl = EndpointsController(Client.in_process(api.handle))
    await ctrl.start()
    try:
        yield client, ctrl
    finally:
        await ctrl.stop()
        await ctrl.client.close()
        await client.close()
        await stop_api(api)


async def get_ep(client: Client, name: str) -> dict[str, Any] | None:
    try:
        return await client.resource("v1", "endpoints").get(name, NS)
    except StatusError as e:
        if e.code == 404:
            return None
        raise


def ips(subset: dict[str, Any], field: str = "addresses") -> list[str]:
    return [a["ip"] for a in subset.get(field) or []]


async def subsets_when(client: Client, name: str, pred) -> list[dict[str, Any]]:
    async def check():
        ep = await get_ep(client, name)
        return ep is not None and pred(ep.get("subsets") or []) and (ep.get("subsets") or [None])
    result = await eventually(check, what=f"endpoints {name}")
    return [] if result == [None] else result


# ---------------------------------------------------------------------- pure logic


def test_repack_groups_addresses_by_port_set_and_ready_wins() -> None:
    a = {"ip": "10.0.0.2", "targetRef": {"uid": "a"}}
    b = {"ip": "10.0.0.1", "targetRef": {"uid": "b"}}
    p80 = {"name": "http", "port": 80, "protocol": "TCP"}
    p90 = {"name": "http", "port": 90, "protocol": "TCP"}
    subsets = repack_subsets([(a, True, p80), (b, False, p80), (a, False, p80), (b, True, p90)])
    # b is ready on port 90 only; a is ready on 80, where b is not (yet a's second entry is not).
    assert subsets == [{"addresses": [b], "ports": [p90]},
                       {"addresses": [a], "notReadyAddresses": [b], "ports": [p80]}]
    # The same entries in another order pack the same way.
    assert repack_subsets([(b, True, p90), (a, False, p80), (b, False, p80), (a, True, p80)]) == subsets


def test_truncate_to_capacity_cuts_not_ready_first() -> None:
    ready = [{"ip": f"10.0.{i // 250}.{i % 250}"} for i in range(900)]
    not_ready = [{"ip": f"10.1.{i // 250}.{i % 250}"} for i in range(300)]
    subsets = [{"addresses": ready, "notReadyAddresses": not_ready, "ports": [{"port": 80}]}]
    assert truncate_subsets(subsets, 1000)
    assert len(subsets[0]["addresses"]) == 900 and len(subsets[0]["notReadyAddresses"]) == 100
    big = [{"addresses": ready + not_ready, "notReadyAddresses": not_ready}]
    assert truncate_subsets(big, 1000)
    assert len(big[0]["addresses"]) == 1000 and "notReadyAddresses" not in big[0]
    assert not truncate_subsets([{"addresses": ready[:10]}], 1000)


def test_find_port_resolves_names_per_pod() -> None:
    p = pod("p", {}, ports=[{"name": "web", "containerPort": 8080}, {"name": "dns", "containerPort": 53,
                                                                    "protocol": "UDP"}])
    assert find_port(p, {"port": 80, "targetPort": "web", "protocol": "TCP"}) == 8080
    assert find_port(p, {"port": 53, "targetPort": "dns", "protocol": "UDP"}) == 53
    assert find_port(p, {"port": 53, "targetPort": "dns", "protocol": "TCP"}) is None
    assert find_port(p, {"port": 80, "targetPort": 9000}) == 9000
    sidecar = pod("s", {}, initContainers=[{"name": "side", "image": "x", "restartPolicy": "Always",
                                            "ports": [{"name": "web", "containerPort": 7000}]}])
    assert find_port(sidecar, {"port": 80, "targetPort": "web", "protocol": "TCP"}) == 7000


def test_split_advertise() -> None:
    assert split_advertise("127.0.0.1:6443") == ("127.0.0.1", 6443)
    assert split_advertise("[::1]:7443") == ("::1", 7443)
    assert split_advertise("10.0.0.1") == ("10.0.0.1", 6443)


# ---------------------------------------------------------------------- the controller


async def test_ready_and_not_ready_pods(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}, labels={"tier": "front"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"], ready=False)
    await running_pod(client, "other", {"app": "db"}, ["10.1.0.3"])
    subsets = await subsets_when(client, "web", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1"]
                                 and ips(s[0], "notReadyAddresses") == ["10.1.0.2"])
    a = subsets[0]["addresses"][0]
    assert a["nodeName"] == "n1"
    assert a["targetRef"]["kind"] == "Pod" and a["targetRef"]["name"] == "a" and a["targetRef"]["uid"]
    assert subsets[0]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    ep = await get_ep(client, "web")
    assert ep["metadata"]["labels"] == {"tier": "front"}
    assert TRIGGER_TIME_ANNOTATION in ep["metadata"]["annotations"]
    # b becomes ready: it moves over.
    await set_status(client, "b", ["10.1.0.2"], ready=True)
    await subsets_when(client, "web", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1", "10.1.0.2"]
                       and not s[0].get("notReadyAddresses"))


async def test_publish_not_ready_addresses_and_terminating(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(
        service("all", {"app": "x"}, publishNotReadyAddresses=True), NS)
    await client.resource("v1", "services").create(service("ready", {"app": "x"}), NS)
    await running_pod(client, "a", {"app": "x"}, ["10.1.0.1"], ready=False)
    await running_pod(client, "b", {"app": "x"}, ["10.1.0.2"])
    await subsets_when(client, "all", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1", "10.1.0.2"])
    await subsets_when(client, "ready", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.2"])
    # b is terminating (a kubelet would be stopping it): out of "ready", still in "all".
    await client.resource("v1", "pods").delete("b", NS)
    pod_b = await client.resource("v1", "pods").get("b", NS)
    assert pod_b["metadata"].get("deletionTimestamp")
    await subsets_when(client, "ready", lambda s: s == [] or all("10.1.0.2" not in ips(x) + ips(
        x, "notReadyAddresses") for x in s))
    await subsets_when(client, "all", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1", "10.1.0.2"])


async def test_terminal_and_ipless_pods_are_left_out(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await running_pod(client, "done", {"app": "web"}, ["10.1.0.9"])
    await client.resource("v1", "pods").create(pod("pending", {"app": "web"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await subsets_when(client, "web", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1", "10.1.0.9"])
    await set_status(client, "done", ["10.1.0.9"], ready=False, phase="Succeeded")
    await subsets_when(client, "web", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1"]
                       and not s[0].get("notReadyAddresses"))


async def test_named_target_ports_make_one_subset_per_number(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(
        service("web", {"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "web"}]), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"], ports=[{"name": "web", "containerPort": 8080}])
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"], ports=[{"name": "web", "containerPort": 9090}])
    # No port of that name: not an address of the Service at all.
    await running_pod(client, "c", {"app": "web"}, ["10.1.0.3"], ports=[{"name": "other", "containerPort": 80}])
    subsets = await subsets_when(client, "web", lambda s: len(s) == 2)
    by_port = {s["ports"][0]["port"]: ips(s) for s in subsets}
    assert by_port == {8080: ["10.1.0.1"], 9090: ["10.1.0.2"]}
    assert all(s["ports"][0]["name"] == "http" for s in subsets)


async def test_multiple_ports_share_a_subset(env) -> None:
    client, _ctrl = env
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
             {"name": "metrics", "port": 9100, "protocol": "TCP"}]
    await client.resource("v1", "services").create(service("web", {"app": "web"}, ports=ports), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"])
    subsets = await subsets_when(client, "web", lambda s: len(s) == 1 and len(ips(s[0])) == 2)
    assert subsets[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
                                   {"name": "metrics", "port": 9100, "protocol": "TCP"}]


async def test_pod_whose_labels_change_leaves(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await client.resource("v1", "services").create(service("canary", {"app": "canary"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"])
    await subsets_when(client, "web", lambda s: len(s) == 1 and len(ips(s[0])) == 2)
    await client.resource("v1", "pods").patch("b", {"metadata": {"labels": {"app": "canary"}}}, namespace=NS)
    await subsets_when(client, "web", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1"])
    await subsets_when(client, "canary", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.2"])


async def test_service_deletion_deletes_endpoints(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await eventually(lambda: get_ep(client, "web"), what="endpoints made")
    await client.resource("v1", "services").delete("web", NS)
    await eventually(lambda: _gone(client, "web"), what="endpoints deleted")


async def _gone(client: Client, name: str) -> bool:
    return await get_ep(client, name) is None


async def test_selectorless_service_endpoints_are_left_alone(env) -> None:
    client, ctrl = env
    manual = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext"},
              "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432, "protocol": "TCP"}]}]}
    # Endpoints first, then its Service: not a leftover to delete.
    await client.resource("v1", "endpoints").create(manual, NS)
    await client.resource("v1", "services").create(service("ext", None, ports=[{"port": 5432}]), NS)
    await client.resource("v1", "services").create(
        service("name", {"app": "x"}, type="ExternalName", externalName="example.com", ports=[]), NS)
    await running_pod(client, "a", {"app": "x"}, ["10.1.0.1"])
    await eventually(lambda: "default/ext" in ctrl.services and "default/name" in ctrl.services)
    await ctrl.reconcile("default/ext")
    await ctrl.reconcile("default/name")
    ep = await get_ep(client, "ext")
    assert ep["subsets"] == manual["subsets"]
    assert await get_ep(client, "name") is None


async def test_tampered_endpoints_are_put_back_and_unchanged_ones_not_written(env) -> None:
    client, ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    subsets = await subsets_when(client, "web", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1"])
    ep = await get_ep(client, "web")
    await eventually(lambda: (ctrl.endpoints.get("default/web") or {}).get("metadata", {}).get(
        "resourceVersion") == ep["metadata"]["resourceVersion"])
    await ctrl.reconcile("default/web")
    assert (await get_ep(client, "web"))["metadata"]["resourceVersion"] == ep["metadata"]["resourceVersion"]
    ep["subsets"] = [{"addresses": [{"ip": "6.6.6.6"}], "ports": [{"port": 1, "protocol": "TCP"}]}]
    await client.resource("v1", "endpoints").update(ep, NS)
    assert await subsets_when(client, "web", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1"]) == subsets
    await client.resource("v1", "endpoints").delete("web", NS)
    await subsets_when(client, "web", lambda s: len(s) == 1 and ips(s[0]) == ["10.1.0.1"])


async def test_headless_service_hostnames_and_no_ports(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(service("db", {"app": "db"}, ports=[], clusterIP="None"), NS)
    await running_pod(client, "db-0", {"app": "db"}, ["10.1.0.1"], hostname="db-0", subdomain="db")
    await running_pod(client, "db-1", {"app": "db"}, ["10.1.0.2"], hostname="db-1", subdomain="elsewhere")
    subsets = await subsets_when(client, "db", lambda s: len(s) == 1 and len(ips(s[0])) == 2)
    assert "ports" not in subsets[0]
    by_ip = {a["ip"]: a for a in subsets[0]["addresses"]}
    assert by_ip["10.1.0.1"]["hostname"] == "db-0" and "hostname" not in by_ip["10.1.0.2"]
    ep = await get_ep(client, "db")
    assert ep["metadata"]["labels"] == {HEADLESS_LABEL: ""}


async def test_primary_family_of_a_dual_stack_service(env) -> None:
    client, _ctrl = env
    await client.resource("v1", "services").create(
        service("v6", {"app": "x"}, clusterIP="None", ipFamilies=["IPv6", "IPv4"], ipFamilyPolicy="RequireDualStack"),
        NS)
    await running_pod(client, "a", {"app": "x"}, ["10.1.0.1", "fd00::1"])
    await running_pod(client, "b", {"app": "x"}, ["10.1.0.2"])  # no IPv6: not an address
    await subsets_when(client, "v6", lambda s: len(s) == 1 and ips(s[0]) == ["fd00::1"])


async def test_leftover_endpoints_are_deleted_at_start(tmp_path: Path) -> None:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    try:
        for name, annotations in (("stale", {}), ("lock", {"control-plane.alpha.kubernetes.io/leader": "{}"})):
            await client.resource("v1", "endpoints").create(
                {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "annotations": annotations}},
                NS)
        ctrl = EndpointsController(Client.in_process(api.handle))
        await ctrl.start()
        try:
            await eventually(lambda: _gone(client, "stale"), what="leftover deleted")
            # Made while the controller runs, with no Service (yet): not a leftover.
            await client.resource("v1", "endpoints").create(
                {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "early"}}, NS)
            await eventually(lambda: "default/early" in ctrl.endpoints)
            assert await get_ep(client, "lock") is not None
            assert await get_ep(client, "early") is not None
        finally:
            await ctrl.stop()
            await ctrl.client.close()
    finally:
        await client.close()
        await stop_api(api)


async def test_over_capacity_annotation(env) -> None:
    client, ctrl = env
    await client.resource("v1", "services").create(service("web", {"app": "web"}), NS)
    await running_pod(client, "a", {"app": "web"}, ["10.1.0.1"])
    await subsets_when(client, "web", lambda s: len(s) == 1)
    # A cap of one address over two pods truncates and says so; back under, it says nothing.
    ctrl.max_capacity = 1
    await running_pod(client, "b", {"app": "web"}, ["10.1.0.2"])

    async def truncated():
        ep = await get_ep(client, "web")
        return (ep["metadata"].get("annotations") or {}).get(OVER_CAPACITY_ANNOTATION) == "truncated" and \
            len(ep["subsets"][0]["addresses"]) == 1
    await eventually(truncated)
    ctrl.max_capacity = 1000
    await ctrl.reconcile("default/web")
    ep = await get_ep(client, "web")
    assert OVER_CAPACITY_ANNOTATION not in (ep["metadata"].get("annotations") or {})
    assert len(ep["subsets"][0]["addresses"]) == 2


# ---------------------------------------------------------------------- the kubernetes Service


async def test_kubernetes_service_endpoints(tmp_path: Path) -> None:
    api = await start_api(tmp_path, advertise="127.0.0.1:6443")
    client = Client.in_process(api.handle)
    rec = KubernetesEndpoints(api, interval=3600)
    try:
        await rec.start()
        ep = await client.resource("v1", "endpoints").get("kubernetes", NS)
        assert ep["metadata"]["labels"] == {"endpointslice.kubernetes.io/skip-mirror": "true"}
        assert ep["subsets"] == [{"addresses": [{"ip": "127.0.0.1"}],
                                  "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}]
        slices = client.resource("discovery.k8s.io/v1", "endpointslices")
        s = await slices.get("kubernetes", NS)
        assert s["addressType"] == "IPv4"
        assert s["metadata"]["labels"] == {"kubernetes.io/service-name": "kubernetes"}
        assert s["endpoints"] == [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]
        assert s["ports"] == [{"name": "https", "port": 6443, "protocol": "TCP"}]
        # Nothing to do: nothing written.
        rv = s["metadata"]["resourceVersion"], ep["metadata"]["resourceVersion"]
        await rec.reconcile()
        assert ((await slices.get("kubernetes", NS))["metadata"]["resourceVersion"],
                (await client.resource("v1", "endpoints").get("kubernetes", NS))["metadata"]["resourceVersion"]) == rv
        # Tampered, deleted, or joined by a stray slice: put back.
        ep["subsets"][0]["addresses"] = [{"ip": "10.9.9.9"}]
        await client.resource("v1", "endpoints").update(ep, NS)
        await slices.delete("kubernetes", NS)
        await slices.create({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                             "metadata": {"name": "kubernetes-stray", "labels": {"kubernetes.io/service-name":
                                                                                 "kubernetes"}},
                             "addressType": "IPv4", "endpoints": [], "ports": []}, NS)
        await rec.reconcile()
        ep = await client.resource("v1", "endpoints").get("kubernetes", NS)
        assert ep["subsets"][0]["addresses"] == [{"ip": "127.0.0.1"}]
        names = [i["metadata"]["name"] for i in (await slices.list(NS))["items"]]
        assert names == ["kubernetes"]
    finally:
        await rec.stop()
        await client.close()
        await stop_api(api)
