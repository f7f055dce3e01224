"""servicelb against a real in-process API server: node addresses (k3s) and an address pool (MetalLB)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kybernetes.client import Client
from kybernetes.controllers.common import now_rfc3339
from kybernetes.controllers.servicelb import AddressPool, ServiceLBController, requested_ips
from tests.apiserver.conftest import eventually, start_api, stop_api

NS = "default"
DUAL = "10.96.0.0/12,fd00:10:96::/112"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """env(service_cidr=..., pools=...) -> (client, controller); torn down at the end."""
    apis: list[Any] = []
    ctrls: list[ServiceLBController] = []
    clients: list[Client] = []

    async def make(service_cidr: str = "10.96.0.0/12", pools: list[str] | None = None,
                   restart: bool = False) -> tuple[Client, ServiceLBController]:
        if not apis:
            apis.append(await start_api(tmp_path, service_cidr=service_cidr))
            clients.append(Client.in_process(apis[0].handle))
        if restart:
            await ctrls[-1].stop()
        ctrl = ServiceLBController(Client.in_process(apis[0].handle), pools=pools)
        await ctrl.start()
        ctrls.append(ctrl)
        return clients[0], ctrl

    try:
        yield make
    finally:
        for c in ctrls:
            await c.stop()
            await c.client.close()
        for cl in clients:
            await cl.close()
        for a in apis:
            await stop_api(a)


async def add_node(client: Client, name: str, internal: list[str], external: list[str] | None = None,
                   ready: bool = True, taints: list[dict[str, str]] | None = None,
                   labels: dict[str, str] | None = None) -> None:
    nodes = client.resource("v1", "nodes", False)
    meta = {"name": name, "labels": labels or {}}
    await nodes.create({"apiVersion": "v1", "kind": "Node", "metadata": meta,
                        "spec": {"taints": taints or []}})
    addresses = [{"type": "InternalIP", "address": a} for a in internal] + \
        [{"type": "ExternalIP", "address": a} for a in external or []] + \
        [{"type": "Hostname", "address": name}]
    await nodes.patch(name, {"status": {"addresses": addresses, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False", "lastHeartbeatTime": now_rfc3339(),
         "lastTransitionTime": now_rfc3339()}]}}, subresource="status")


async def add_lb(client: Client, name: str, port: int = 80, **spec: Any) -> dict[str, Any]:
    body = {"type": "LoadBalancer", "selector": {"app": name}, "ports": [{"port": port, "targetPort": 8080}],
            **spec}
    annotations = body.pop("annotations", None)
    meta: dict[str, Any] = {"name": name, **({"annotations": annotations} if annotations else {})}
    return await client.resource("v1", "services").create(
        {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}, NS)


async def ingress(client: Client, name: str) -> list[dict[str, Any]]:
    svc = await client.resource("v1", "services").get(name, NS)
    return ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []


async def ips_when(client: Client, name: str, want: list[str]) -> None:
    async def check() -> bool:
        got = await ingress(client, name)
        return [i["ip"] for i in got] == want and all(i.get("ipMode") == "VIP" for i in got)
    await eventually(check, what=f"{name} ingress {want}")


async def events(client: Client, name: str, reason: str) -> list[dict[str, Any]]:
    items = (await client.resource("v1", "events").list(NS))["items"]
    return [e for e in items if e["involvedObject"]["name"] == name and e["reason"] == reason]


async def event_when(client: Client, name: str, reason: str) -> dict[str, Any]:
    found = await eventually(lambda: events(client, name, reason), what=f"{reason} event for {name}")
    return found[-1]


# ---------------------------------------------------------------------- pure parts


def test_address_pools_and_requested_ips() -> None:
    pool = AddressPool(["10.0.0.240/30", "fd00:1b::10-fd00:1b::11", "192.0.2.9"])
    assert pool.families() == {"IPv4", "IPv6"}
    assert pool.pick("IPv4", set()) == "10.0.0.240"  # every address of a pool, as MetalLB
    assert pool.pick("IPv4", {"10.0.0.240", "10.0.0.241", "10.0.0.242", "10.0.0.243"}) == "192.0.2.9"
    assert pool.pick("IPv6", {"fd00:1b::10"}) == "fd00:1b::11"
    assert pool.contains("192.0.2.9") and not pool.contains("10.0.0.244")
    with pytest.raises(ValueError):
        AddressPool(["10.0.0.9-10.0.0.1"])
    svc = {"metadata": {"annotations": {"metallb.io/loadBalancerIPs": "10.0.0.241, fd00:1b::11"}}, "spec": {}}
    assert requested_ips(svc) == ["10.0.0.241", "fd00:1b::11"]
    with pytest.raises(ValueError, match="both"):
        requested_ips({"metadata": svc["metadata"], "spec": {"loadBalancerIP": "10.0.0.240"}})


# ---------------------------------------------------------------------- node addresses


async def test_nodes_addresses_by_family_and_external_first(env) -> None:
    client, _ = await env(service_cidr=DUAL)
    await add_node(client, "n1", ["192.168.1.11", "fd00::11"])
    await add_node(client, "n2", ["192.168.1.10", "fd00::10"])
    await add_lb(client, "web")
    await ips_when(client, "web", ["192.168.1.10", "192.168.1.11"])
    ev = await event_when(client, "web", "UpdatedLoadBalancer")
    assert ev["type"] == "Normal" and ev["message"] == (
        "Updated LoadBalancer with new IPs: [] -> [192.168.1.10 192.168.1.11]")
    await add_lb(client, "both", port=81, ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"])
    await ips_when(client, "both", ["fd00::10", "fd00::11", "192.168.1.10", "192.168.1.11"])
    # Once a node has an external address, only external addresses are listed.
    addresses = [{"type": "InternalIP", "address": "192.168.1.10"},
                 {"type": "ExternalIP", "address": "203.0.113.5"}]
    await client.resource("v1", "nodes", False).patch("n2", {"status": {"addresses": addresses}},
                                                      subresource="status", patch_type="merge")
    await ips_when(client, "web", ["203.0.113.5"])


async def test_only_nodes_that_could_run_the_svclb_pods(env) -> None:
    client, _ = await env()
    await add_node(client, "ok", ["192.168.1.1"])
    await add_node(client, "down", ["192.168.1.2"], ready=False)
    await add_node(client, "tainted", ["192.168.1.3"], taints=[{"key": "dedicated", "value": "db",
                                                                   "effect": "NoSchedule"}])
    await add_node(client, "server", ["192.168.1.4"], taints=[{"key": "node-role.kubernetes.io/control-plane",
                                                                  "effect": "NoSchedule"}])
    await add_node(client, "soft", ["192.168.1.5"], taints=[{"key": "x", "effect": "PreferNoSchedule"}])
    await add_lb(client, "web")
    await ips_when(client, "web", ["192.168.1.1", "192.168.1.4", "192.168.1.5"])
    # Label any node for servicelb and only the labelled ones serve.
    await client.resource("v1", "nodes", False).patch(
        "soft", {"metadata": {"labels": {"svccontroller.k3s.cattle.io/enablelb": "true"}}})
    await ips_when(client, "web", ["192.168.1.5"])


async def test_a_port_held_on_the_nodes_leaves_the_next_service_pending(env) -> None:
    client, _ = await env()
    await add_node(client, "n1", ["192.168.1.1"])
    await add_lb(client, "first")
    await ips_when(client, "first", ["192.168.1.1"])
    await add_lb(client, "second")
    await add_lb(client, "other-port", port=8443)
    await ips_when(client, "other-port", ["192.168.1.1"])
    ev = await event_when(client, "second", "UnAvailableLoadBalancer")
    assert ev["type"] == "Warning" and ev["message"] == (
        "There are no available nodes for LoadBalancer: port 80/TCP is in use by LoadBalancer default/first")
    assert await ingress(client, "second") == []
    # The holder keeps the port, however old the other is; once it is gone the port is free.
    await client.resource("v1", "services").delete("first", NS)
    await ips_when(client, "second", ["192.168.1.1"])
    assert len(await events(client, "second", "UnAvailableLoadBalancer")) == 1


async def test_the_ports_of_a_nodes_ingress_are_not_given_to_a_load_balancer(env) -> None:
    client, _ = await env()
    await add_node(client, "n1", ["192.168.1.1"])
    await add_node(client, "n2", ["192.168.1.2"])
    leases = client.resource("coordination.k8s.io/v1", "leases")
    # n1's ingress controller announces that it listens on 80 and 443 (see ingress/controller.py).
    await leases.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {
        "name": "kybernetes-ingress-n1", "labels": {"kybernetes.io/ingress-status": "true"},
        "annotations": {"kybernetes.io/ingress-ports": "80,443"}}, "spec": {"holderIdentity": "n1"}},
        "kube-system")
    await add_lb(client, "web")
    await ips_when(client, "web", ["192.168.1.2"])
    await add_lb(client, "other-port", port=8443)
    await ips_when(client, "other-port", ["192.168.1.1", "192.168.1.2"])
    # Held on every node: pending, and the event says by what.
    await leases.create({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {
        "name": "kybernetes-ingress-n2", "labels": {"kybernetes.io/ingress-status": "true"},
        "annotations": {"kybernetes.io/ingress-ports": "443"}}, "spec": {"holderIdentity": "n2"}}, "kube-system")
    await add_lb(client, "tls", port=443)
    ev = await event_when(client, "tls", "UnAvailableLoadBalancer")
    assert ev["message"] == ("There are no available nodes for LoadBalancer: port 443/TCP is in use by the "
                             "ingress controller of node n1"), ev["message"]
    # The ingress stops (its Lease goes): its ports are free.
    await leases.delete("kybernetes-ingress-n1", "kube-system")
    await ips_when(client, "tls", ["192.168.1.1"])


async def test_no_nodes_pending_and_other_classes_left_alone(env) -> None:
    client, _ = await env()
    await add_lb(client, "lonely")
    ev = await event_when(client, "lonely", "UnAvailableLoadBalancer")
    assert ev["message"] == "There are no available nodes for LoadBalancer"
    await add_lb(client, "theirs", loadBalancerClass="example.com/other-lb")
    await add_node(client, "n1", ["192.168.1.1"])
    await ips_when(client, "lonely", ["192.168.1.1"])
    assert await ingress(client, "theirs") == []


async def test_local_traffic_policy_only_nodes_with_ready_endpoints(env) -> None:
    client, _ = await env()
    await add_node(client, "n1", ["192.168.1.1"])
    await add_node(client, "n2", ["192.168.1.2"])
    await add_lb(client, "local", externalTrafficPolicy="Local")
    await event_when(client, "local", "UnAvailableLoadBalancer")
    await client.resource("discovery.k8s.io/v1", "endpointslices").create({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "local-abc", "labels": {"kubernetes.io/service-name": "local"}},
        "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.42.1.5"], "conditions": {"ready": True}, "nodeName": "n2",
                       "targetRef": {"kind": "Pod", "name": "p", "namespace": NS}},
                      {"addresses": ["10.42.0.5"], "conditions": {"ready": False}, "nodeName": "n1",
                       "targetRef": {"kind": "Pod", "name": "q", "namespace": NS}}]}, NS)
    await ips_when(client, "local", ["192.168.1.2"])


# ---------------------------------------------------------------------- address pool


async def test_pool_addresses_lowest_first_exhaustion_and_release(env) -> None:
    client, _ = await env(pools=["10.0.0.240/31"])
    await add_lb(client, "a")
    await ips_when(client, "a", ["10.0.0.240"])
    ev = await event_when(client, "a", "IPAllocated")
    assert ev["type"] == "Normal" and ev["message"] == 'Assigned IP ["10.0.0.240"]'
    await add_lb(client, "b")
    await ips_when(client, "b", ["10.0.0.241"])
    await add_lb(client, "c")
    ev = await event_when(client, "c", "AllocationFailed")
    assert ev["type"] == "Warning"
    assert ev["message"] == 'Failed to allocate IP for "default/c": no available IPs'
    assert await ingress(client, "c") == []
    # Not a LoadBalancer any more: its address goes to the one waiting.
    await client.resource("v1", "services").patch("a", {"spec": {"type": "ClusterIP"}}, namespace=NS)
    await ips_when(client, "c", ["10.0.0.240"])
    await client.resource("v1", "services").delete("b", NS)
    await add_lb(client, "d")
    await ips_when(client, "d", ["10.0.0.241"])


async def test_pool_addresses_are_kept_across_restarts(env) -> None:
    client, _ = await env(pools=["10.0.0.240/29"])
    for name in ("a", "b", "c"):
        await add_lb(client, name)
    await ips_when(client, "c", ["10.0.0.242"])
    await client.resource("v1", "services").delete("a", NS)
    client, _ = await env(pools=["10.0.0.240/29"], restart=True)
    await add_lb(client, "d", port=81)
    await add_lb(client, "e", port=82)
    await ips_when(client, "d", ["10.0.0.240"])
    await ips_when(client, "e", ["10.0.0.243"])
    await ips_when(client, "b", ["10.0.0.241"])
    await ips_when(client, "c", ["10.0.0.242"])


async def test_pool_families_follow_the_service(env) -> None:
    client, _ = await env(service_cidr=DUAL, pools=["10.0.0.240/30", "fd00:1b::/126"])
    await add_lb(client, "dual", ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv6", "IPv4"])
    await ips_when(client, "dual", ["fd00:1b::", "10.0.0.240"])
    await add_lb(client, "six", ipFamilies=["IPv6"])
    await ips_when(client, "six", ["fd00:1b::1"])
    await add_lb(client, "four")
    await ips_when(client, "four", ["10.0.0.241"])


async def test_pool_prefer_dual_stack_takes_what_there_is(env) -> None:
    client, _ = await env(service_cidr=DUAL, pools=["10.0.0.240/30"])
    await add_lb(client, "prefer", ipFamilyPolicy="PreferDualStack")
    await ips_when(client, "prefer", ["10.0.0.240"])
    await add_lb(client, "require", ipFamilyPolicy="RequireDualStack")
    ev = await event_when(client, "require", "AllocationFailed")
    assert ev["message"] == 'Failed to allocate IP for "default/require": no available IPs'


async def test_pool_requested_addresses(env) -> None:
    client, _ = await env(pools=["10.0.0.240/29"])
    await add_lb(client, "asked", loadBalancerIP="10.0.0.245")
    await ips_when(client, "asked", ["10.0.0.245"])
    await add_lb(client, "annotated", annotations={"metallb.io/loadBalancerIPs": "10.0.0.246"})
    await ips_when(client, "annotated", ["10.0.0.246"])
    await add_lb(client, "outside", loadBalancerIP="10.9.9.9")
    ev = await event_when(client, "outside", "AllocationFailed")
    assert ev["message"] == ('Failed to allocate IP for "default/outside": ["10.9.9.9"] is not allowed in '
                             'config')
    await add_lb(client, "clash", loadBalancerIP="10.0.0.245")
    ev = await event_when(client, "clash", "AllocationFailed")
    assert "already in use by default/asked" in ev["message"]
