"""The node IPAM controller against a real in-process API server: pod CIDRs per node and family."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from kybernetes.api.errors import StatusError
from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client
from kybernetes.controllers.nodeipam import CIDRSet, NodeIPAMController
from tests.apiserver.conftest import eventually, start_api, stop_api

Controllers = Callable[..., Any]


def node(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[APIServer, Client, Controllers]]:
    api = await start_api(tmp_path)
    client = Client.in_process(api.handle)
    started: list[NodeIPAMController] = []

    async def controller(cidrs: str, **kw: Any) -> NodeIPAMController:
        c = NodeIPAMController(Client.in_process(api.handle), cidrs, **kw)
        await c.start()
        started.append(c)
        return c

    try:
        yield api, client, controller
    finally:
        for c in started:
            await c.stop()
            await c.client.close()
        await client.close()
        await stop_api(api)


async def pod_cidrs(client: Client, name: str) -> list[str]:
    spec = (await client.resource("v1", "nodes", False).get(name)).get("spec") or {}
    cidrs = spec.get("podCIDRs") or []
    if cidrs:
        assert spec.get("podCIDR") == cidrs[0]
    return cidrs


async def assigned(client: Client, name: str) -> list[str]:
    return await eventually(lambda: pod_cidrs(client, name), what=f"pod CIDRs of {name}")


# ---------------------------------------------------------------------- the CIDR set


def test_cidr_set_hands_out_in_turn_and_takes_back() -> None:
    s = CIDRSet(ipaddress.ip_network("10.42.0.0/22"), 24)
    assert s.count == 4
    got = [str(s.allocate_next()) for _ in range(4)]
    assert got == ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24", "10.42.3.0/24"]
    assert s.allocate_next() is None
    s.release(ipaddress.ip_network("10.42.1.0/24"))
    assert str(s.allocate_next()) == "10.42.1.0/24"
    # A larger range (a service CIDR inside the cluster CIDR) takes every subnet it covers.
    t = CIDRSet(ipaddress.ip_network("10.0.0.0/22"), 24)
    assert t.occupy(ipaddress.ip_network("10.0.2.0/23")) and t.free() == 2
    assert not t.occupy(ipaddress.ip_network("192.168.0.0/24"))
    six = CIDRSet(ipaddress.ip_network("fd42::/56"), 64)
    assert six.count == 256 and str(six.allocate_next()) == "fd42::/64"
    with pytest.raises(ValueError, match="at most 16 bits"):
        CIDRSet(ipaddress.ip_network("fd42::/40"), 64)
    with pytest.raises(ValueError, match="between"):
        CIDRSet(ipaddress.ip_network("10.42.0.0/16"), 8)


# ---------------------------------------------------------------------- the controller


async def test_each_node_gets_one_cidr_per_family_never_twice(env) -> None:
    _api, client, controller = env
    await controller("10.42.0.0/16,fd42::/56")
    nodes = client.resource("v1", "nodes", False)
    for n in ("n1", "n2", "n3"):
        await nodes.create(node(n))
    got = [await assigned(client, n) for n in ("n1", "n2", "n3")]
    for v4, v6 in got:
        assert ipaddress.ip_network(v4).prefixlen == 24 and ipaddress.ip_network(v4).subnet_of(
            ipaddress.ip_network("10.42.0.0/16"))
        assert ipaddress.ip_network(v6).prefixlen == 64 and ipaddress.ip_network(v6).subnet_of(
            ipaddress.ip_network("fd42::/56"))
    assert len({c for pair in got for c in pair}) == 6
    # Once set, a node's pod CIDRs are fixed (as upstream's validation has it).
    with pytest.raises(StatusError) as e:
        await nodes.patch("n1", {"spec": {"podCIDR": "10.42.99.0/24", "podCIDRs": ["10.42.99.0/24"]}})
    assert e.value.code == 422 and "node updates may not change podCIDR" in e.value.message


async def test_primary_family_first_and_mask_sizes(env) -> None:
    _api, client, controller = env
    await controller("fd42::/64,10.42.0.0/16", node_cidr_mask_size_ipv4=26, node_cidr_mask_size_ipv6=80)
    await client.resource("v1", "nodes", False).create(node("n1"))
    v6, v4 = await assigned(client, "n1")
    assert ipaddress.ip_network(v6).prefixlen == 80 and ipaddress.ip_network(v4).prefixlen == 26


async def test_assignments_survive_restarts(env) -> None:
    _api, client, controller = env
    nodes = client.resource("v1", "nodes", False)
    # Given by hand before the controller ever ran, and one from an earlier run.
    await nodes.create(node("manual", podCIDR="10.42.0.0/24", podCIDRs=["10.42.0.0/24"]))
    first = await controller("10.42.0.0/22")
    await nodes.create(node("a"))
    a = await assigned(client, "a")
    assert a == ["10.42.1.0/24"]
    await first.stop()
    await controller("10.42.0.0/22")
    await nodes.create(node("b"))
    b = await assigned(client, "b")
    assert b[0] not in ("10.42.0.0/24", "10.42.1.0/24")
    assert await pod_cidrs(client, "a") == a and await pod_cidrs(client, "manual") == ["10.42.0.0/24"]


async def test_exhausted_range_waits_with_an_event_and_gets_a_released_cidr(env) -> None:
    _api, client, controller = env
    await controller("10.42.0.0/23")
    nodes = client.resource("v1", "nodes", False)
    for n in ("n1", "n2"):
        await nodes.create(node(n))
        await assigned(client, n)
    await nodes.create(node("n3"))

    async def warned():
        events = (await client.resource("v1", "events").list("default"))["items"]
        return [e for e in events if e["reason"] == "CIDRNotAvailable"]
    (ev,) = await eventually(warned, what="CIDRNotAvailable event")
    assert ev["type"] == "Warning" and ev["message"] == "Node n3 status is now: CIDRNotAvailable"
    assert ev["involvedObject"]["kind"] == "Node" and ev["involvedObject"]["name"] == "n3"
    n3 = await nodes.get("n3")
    # Upstream's range allocator sets no condition for this: NetworkUnavailable is the network's.
    assert not (n3.get("spec") or {}).get("podCIDRs")
    conditions = (n3.get("status") or {}).get("conditions") or []
    assert not any(c.get("type") == "NetworkUnavailable" for c in conditions)
    freed = await pod_cidrs(client, "n1")
    await nodes.delete("n1")
    assert await assigned(client, "n3") == freed
    assert len(await warned()) == 1  # told once while it waited


async def test_service_range_inside_the_cluster_cidr_is_never_handed_out(env) -> None:
    _api, client, controller = env
    await controller("10.0.0.0/22", service_cidrs="10.0.1.0/24")
    nodes = client.resource("v1", "nodes", False)
    for n in ("a", "b", "c"):
        await nodes.create(node(n))
    got = sorted([(await assigned(client, n))[0] for n in ("a", "b", "c")])
    assert got == ["10.0.0.0/24", "10.0.2.0/24", "10.0.3.0/24"]
