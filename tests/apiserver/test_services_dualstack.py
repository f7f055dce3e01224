"""Service cluster IPs on single- and dual-stack clusters, by upstream's rules (ipalloc.py).

Each test starts an API server with the service CIDRs it needs and drives it
through the in-process client; messages are compared with upstream's wording.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kybernetes.apiserver.ipalloc import IPRange, ServiceAllocator, kubernetes_service_ip, parse_cidrs
from kybernetes.apiserver.server import APIServer
from kybernetes.client import Client
from tests.apiserver.conftest import call, start_api, stop_api

V4, V6 = "10.96.0.0/12", "fd00:10:96::/112"
SVCS = "/api/v1/namespaces/default/services"
MERGE = "application/merge-patch+json"


def svc(name: str, selector: bool = True, **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", [{"port": 80, "targetPort": 8080}])
    if selector:
        spec.setdefault("selector", {"app": name})
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def addr(spec: dict[str, Any]) -> tuple[Any, ...]:
    return spec.get("clusterIP"), spec.get("clusterIPs"), spec.get("ipFamilies"), spec.get("ipFamilyPolicy")


def in_net(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)


async def post(api: APIServer, body: dict[str, Any], **query: str) -> tuple[int, Any]:
    return await call(api, "POST", SVCS, body, query)


async def patch(api: APIServer, name: str, body: dict[str, Any]) -> tuple[int, Any]:
    return await call(api, "PATCH", f"{SVCS}/{name}", body, content_type=MERGE)


async def put(api: APIServer, obj: dict[str, Any]) -> tuple[int, Any]:
    return await call(api, "PUT", f"{SVCS}/{obj['metadata']['name']}", obj)


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[APIServer]:
    api = await start_api(tmp_path)
    try:
        yield api
    finally:
        await stop_api(api)


@pytest.fixture
async def dual(tmp_path: Path) -> AsyncIterator[APIServer]:
    api = await start_api(tmp_path, service_cidr=f"{V4},{V6}")
    try:
        yield api
    finally:
        await stop_api(api)


# ---------------------------------------------------------------------- configuration


def test_service_cidrs_as_k3s_spells_them() -> None:
    assert [str(n) for n in parse_cidrs("10.43.0.0/16,fd43::/112")] == ["10.43.0.0/16", "fd43::/112"]
    assert [str(n) for n in parse_cidrs(["fd43::/112", "10.43.0.0/16"])] == ["fd43::/112", "10.43.0.0/16"]
    assert [str(n) for n in parse_cidrs("10.43.0.1/16")] == ["10.43.0.0/16"]  # host bits dropped, as upstream
    for bad, why in (("10.0.0.0/16,10.1.0.0/16", "different IP families"), ("", "at least one"),
                     ("10.0.0.0/8", "the mask must be >= 12"), ("fd00::/64", "the mask must be >= 108"),
                     ("10.0.0.0/16,fd00::/112,fd01::/112", "at most two"), ("nonsense", "not a valid CIDR")):
        with pytest.raises(ValueError, match=why):
            parse_cidrs(bad)
    assert kubernetes_service_ip("10.43.0.0/16,fd43::/112") == "10.43.0.1"
    assert kubernetes_service_ip("fd43::/112,10.43.0.0/16") == "fd43::1"


def test_ranges_leave_out_network_and_broadcast_and_pick_above_the_static_band() -> None:
    r = IPRange(ipaddress.ip_network("10.0.0.0/29"))
    got = set()
    while (ip := r.pick(got)) is not None:
        got.add(ip)
    assert got == {f"10.0.0.{i}" for i in range(1, 7)}
    assert not r.contains("10.0.0.0") and not r.contains("10.0.0.7") and r.contains("10.0.0.6")
    six = IPRange(ipaddress.ip_network("fd00::/64"))
    assert six.contains("fd00::ffff") and not six.contains("fd00::1:0")  # capped at 2^16 addresses
    # A /24 keeps its lowest 16 for addresses users pick; dynamic ones come from above first.
    r24 = IPRange(ipaddress.ip_network("10.0.0.0/24"))
    picks = set()
    for _ in range(254 - 16):
        picks.add(r24.pick(picks))
    assert all(int(ip.rsplit(".", 1)[1]) > 16 for ip in picks)
    assert int(r24.pick(picks).rsplit(".", 1)[1]) <= 16


async def test_api_server_takes_one_cidr_a_pair_or_a_list(tmp_path: Path) -> None:
    api = await start_api(tmp_path, service_cidr=["fd00:10:96::/112", "10.96.0.0/16"])
    try:
        assert api.service_cidr == "fd00:10:96::/112,10.96.0.0/16"
        kube = (await Client.in_process(api.handle).resource("v1", "services").get("kubernetes", "default"))
        assert addr(kube["spec"]) == ("fd00:10:96::1", ["fd00:10:96::1"], ["IPv6"], "SingleStack")
        code, out = await post(api, svc("web"))
        assert code == 201 and out["spec"]["ipFamilies"] == ["IPv6"]  # the primary family
    finally:
        await stop_api(api)
    with pytest.raises(ValueError):
        APIServer(api.store, service_cidr="10.0.0.0/16,10.1.0.0/16")


# ---------------------------------------------------------------------- single-stack cluster


async def test_single_stack_defaults_and_prefer_dual_stack_gets_one_address(single: APIServer) -> None:
    code, out = await post(single, svc("plain"))
    ip = out["spec"]["clusterIP"]
    assert code == 201 and addr(out["spec"]) == (ip, [ip], ["IPv4"], "SingleStack") and in_net(ip, V4)
    code, out = await post(single, svc("prefer", ipFamilyPolicy="PreferDualStack"))
    ip = out["spec"]["clusterIP"]
    assert code == 201 and addr(out["spec"]) == (ip, [ip], ["IPv4"], "PreferDualStack")


async def test_single_stack_refuses_what_needs_a_second_family(single: APIServer) -> None:
    cases = [
        (svc("req", ipFamilyPolicy="RequireDualStack"),
         'Service "req" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is '
         'not configured for dual-stack services'),
        (svc("six", ipFamilies=["IPv6"]),
         'Service "six" is invalid: spec.ipFamilies[0]: Invalid value: "IPv6": not configured on this '
         'cluster'),
        (svc("sixip", clusterIP="fd00::5"),
         'Service "sixip" is invalid: spec.clusterIPs[0]: Invalid value: []string{"fd00::5"}: IPv6 is not '
         'configured on this cluster'),
        # Headless services with a selector follow the same rules as headful ones.
        (svc("hlreq", clusterIP="None", ipFamilyPolicy="RequireDualStack"),
         'Service "hlreq" is invalid: spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster '
         'is not configured for dual-stack services'),
    ]
    for body, message in cases:
        code, st = await post(single, body)
        assert (code, st["reason"], st["message"]) == (422, "Invalid", message)


async def test_headless_services_get_families_and_no_addresses(single: APIServer) -> None:
    # Without a selector its endpoints are the user's, of any family: RequireDualStack, even here.
    code, out = await post(single, svc("bare", selector=False, clusterIP="None"))
    assert code == 201 and addr(out["spec"]) == ("None", ["None"], ["IPv4", "IPv6"], "RequireDualStack")
    code, out = await post(single, svc("sel", clusterIP="None"))
    assert code == 201 and addr(out["spec"]) == ("None", ["None"], ["IPv4"], "SingleStack")
    code, out = await post(single, svc("one", selector=False, clusterIP="None", ipFamilyPolicy="SingleStack"))
    assert code == 201 and addr(out["spec"]) == ("None", ["None"], ["IPv4"], "SingleStack")


async def test_external_name_gets_no_address_fields(single: APIServer) -> None:
    ext = svc("ext", selector=False, type="ExternalName", externalName="db.example.com", ports=[])
    code, out = await post(single, ext)
    assert code == 201 and addr(out["spec"]) == (None, None, None, None)
    code, st = await post(single, svc("ext2", selector=False, type="ExternalName",
                                      externalName="db.example.com", ports=[], ipFamilyPolicy="SingleStack",
                                      ipFamilies=["IPv4"]))
    assert code == 422 and st["message"] == (
        'Service "ext2" is invalid: [spec.ipFamilies: Forbidden: may not be set for ExternalName services, '
        'spec.ipFamilyPolicy: Forbidden: may not be set for ExternalName services]')


# ---------------------------------------------------------------------- dual-stack cluster


async def test_dual_stack_allocation_by_policy_and_family_order(dual: APIServer) -> None:
    code, out = await post(dual, svc("single"))
    assert code == 201 and out["spec"]["ipFamilies"] == ["IPv4"] and len(out["spec"]["clusterIPs"]) == 1
    code, out = await post(dual, svc("prefer", ipFamilyPolicy="PreferDualStack"))
    v4, v6 = out["spec"]["clusterIPs"]
    assert addr(out["spec"]) == (v4, [v4, v6], ["IPv4", "IPv6"], "PreferDualStack")
    assert in_net(v4, V4) and in_net(v6, V6)
    # The first family is the primary: it gives clusterIP.
    code, out = await post(dual, svc("v6first", ipFamilyPolicy="RequireDualStack",
                                     ipFamilies=["IPv6", "IPv4"]))
    v6, v4 = out["spec"]["clusterIPs"]
    assert addr(out["spec"]) == (v6, [v6, v4], ["IPv6", "IPv4"], "RequireDualStack") and in_net(v4, V4)
    code, out = await post(dual, svc("only6", ipFamilies=["IPv6"]))
    assert out["spec"]["ipFamilyPolicy"] == "SingleStack" and in_net(out["spec"]["clusterIP"], V6)
    # Families follow requested addresses; the rest is allocated.
    code, out = await post(dual, svc("asked", clusterIP="fd00:10:96::77", ipFamilyPolicy="PreferDualStack"))
    assert out["spec"]["clusterIPs"][0] == "fd00:10:96::77" and out["spec"]["ipFamilies"] == ["IPv6", "IPv4"]
    code, out = await post(dual, svc("both", clusterIP="10.96.0.50",
                                     clusterIPs=["10.96.0.50", "fd00:10:96::50"],
                                     ipFamilyPolicy="RequireDualStack"))
    assert addr(out["spec"]) == ("10.96.0.50", ["10.96.0.50", "fd00:10:96::50"], ["IPv4", "IPv6"],
                                 "RequireDualStack")


async def test_dual_stack_field_errors(dual: APIServer) -> None:
    cases = [
        (svc("a", clusterIP="10.96.0.60", clusterIPs=["10.96.0.60", "fd00:10:96::60"]),
         'spec.ipFamilyPolicy: Invalid value: "SingleStack": must be \'RequireDualStack\' or '
         '\'PreferDualStack\' when multiple cluster IPs are specified'),
        (svc("b", ipFamilyPolicy="SingleStack", ipFamilies=["IPv4", "IPv6"]),
         'spec.ipFamilyPolicy: Invalid value: "SingleStack": must be \'RequireDualStack\' or '
         '\'PreferDualStack\' when multiple IP families are specified'),
        (svc("c", clusterIP="10.96.0.61", clusterIPs=["10.96.0.62"]),
         'spec.clusterIPs: Invalid value: []string{"10.96.0.62"}: first value must match `clusterIP`'),
        (svc("d", clusterIP="10.96.0.63", clusterIPs=["10.96.0.63", "10.96.0.64"],
             ipFamilyPolicy="PreferDualStack"),
         'spec.clusterIPs: Invalid value: []string{"10.96.0.63", "10.96.0.64"}: may specify no more than one '
         'IP for each IP family'),
        (svc("e", clusterIP="fd00:10:96::65", ipFamilies=["IPv4"]),
         'spec.clusterIPs[0]: Invalid value: "fd00:10:96::65": expected an IPv4 value as indicated by '
         '`ipFamilies[0]`'),
        (svc("f", ipFamilies=["IPv4", "IPv4"], ipFamilyPolicy="RequireDualStack"),
         'spec.ipFamilies[1]: Duplicate value: "IPv4"'),
        (svc("g", clusterIP="fd00:11::1", ipFamilyPolicy="SingleStack", ipFamilies=["IPv6"]),
         'spec.clusterIPs: Invalid value: []string{"fd00:11::1"}: failed to allocate IP fd00:11::1: '
         'provided IP fd00:11::1 is not in the valid range'),
    ]
    for body, detail in cases:
        code, st = await post(dual, body)
        name = body["metadata"]["name"]
        assert (code, st["message"]) == (422, f'Service "{name}" is invalid: {detail}')


async def test_requested_addresses_are_exclusive_and_freed_on_delete(dual: APIServer) -> None:
    body = svc("first", clusterIP="fd00:10:96::99", ipFamilies=["IPv6"])
    assert (await post(dual, body))[0] == 201
    code, st = await post(dual, svc("second", clusterIP="fd00:10:96:0::0099", ipFamilies=["IPv6"]))
    assert code == 422 and st["message"] == (
        'Service "second" is invalid: spec.clusterIPs: Invalid value: []string{"fd00:10:96:0::0099"}: '
        'failed to allocate IP fd00:10:96:0::0099: provided IP is already allocated')
    assert (await call(dual, "DELETE", f"{SVCS}/first"))[0] == 200
    code, out = await post(dual, svc("second", clusterIP="fd00:10:96::99", ipFamilies=["IPv6"]))
    assert code == 201 and out["spec"]["clusterIP"] == "fd00:10:96::99"


async def test_upgrade_to_dual_stack_and_back(dual: APIServer) -> None:
    code, out = await post(dual, svc("web"))
    v4 = out["spec"]["clusterIP"]
    code, up = await patch(dual, "web", {"spec": {"ipFamilyPolicy": "PreferDualStack"}})
    assert code == 200 and up["spec"]["clusterIP"] == v4 and up["spec"]["ipFamilies"] == ["IPv4", "IPv6"]
    v6 = up["spec"]["clusterIPs"][1]
    assert in_net(v6, V6)
    # A PUT that leaves the policy (and the allocated addresses) out keeps both.
    body = svc("web", ipFamilies=["IPv4", "IPv6"])
    body["metadata"]["resourceVersion"] = up["metadata"]["resourceVersion"]
    code, same = await put(dual, body)
    assert code == 200 and addr(same["spec"]) == (v4, [v4, v6], ["IPv4", "IPv6"], "PreferDualStack")
    # Only SingleStack releases the secondary.
    code, st = await patch(dual, "web", {"spec": {"clusterIPs": [v4]}})
    assert code == 422 and st["message"] == (
        'Service "web" is invalid: spec.ipFamilyPolicy: Invalid value: "PreferDualStack": must be '
        '\'SingleStack\' to release the secondary cluster IP')
    code, down = await patch(dual, "web", {"spec": {"ipFamilyPolicy": "SingleStack"}})
    assert code == 200 and addr(down["spec"]) == (v4, [v4], ["IPv4"], "SingleStack")
    # The released secondary is free again.
    code, other = await post(dual, svc("other", clusterIP=v6, ipFamilies=["IPv6"]))
    assert code == 201 and other["spec"]["clusterIP"] == v6
    # RequireDualStack upgrades too, with the secondary asked for.
    code, up = await patch(dual, "web", {"spec": {"ipFamilyPolicy": "RequireDualStack",
                                                  "clusterIPs": [v4, "fd00:10:96::abc"]}})
    assert code == 200 and up["spec"]["clusterIPs"] == [v4, "fd00:10:96::abc"]


async def test_primary_family_and_address_never_change(dual: APIServer) -> None:
    code, out = await post(dual, svc("web", ipFamilyPolicy="RequireDualStack"))
    v4, v6 = out["spec"]["clusterIPs"]
    code, st = await patch(dual, "web", {"spec": {"clusterIPs": [v4, "fd00:10:96::beef"]}})
    assert code == 422 and st["message"] == (
        f'Service "web" is invalid: spec.clusterIPs[1]: Invalid value: '
        f'[]string{{"{v4}", "fd00:10:96::beef"}}: may not change once set')
    code, st = await patch(dual, "web", {"spec": {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv6"],
                                                  "clusterIPs": [v6], "clusterIP": v6}})
    assert code == 422 and "may not change once set" in st["message"]
    code, st = await patch(dual, "web", {"spec": {"clusterIP": v6, "clusterIPs": [v6, v4],
                                                  "ipFamilies": ["IPv6", "IPv4"]}})
    assert code == 422 and "may not change once set" in st["message"]
    assert (await call(dual, "GET", f"{SVCS}/web"))[1]["spec"]["clusterIPs"] == [v4, v6]


async def test_headless_families_follow_the_policy_on_update(dual: APIServer) -> None:
    code, out = await post(dual, svc("hl", clusterIP="None"))
    assert addr(out["spec"]) == ("None", ["None"], ["IPv4"], "SingleStack")
    code, up = await patch(dual, "hl", {"spec": {"ipFamilyPolicy": "PreferDualStack"}})
    assert code == 200 and addr(up["spec"]) == ("None", ["None"], ["IPv4", "IPv6"], "PreferDualStack")
    code, down = await patch(dual, "hl", {"spec": {"ipFamilyPolicy": "SingleStack"}})
    assert code == 200 and down["spec"]["ipFamilies"] == ["IPv4"]
    code, flipped = await patch(dual, "hl", {"spec": {"ipFamilies": ["IPv6"]}})
    assert code == 200 and flipped["spec"]["ipFamilies"] == ["IPv6"]  # headless may change its family


async def test_type_changes_wipe_and_allocate(dual: APIServer) -> None:
    code, out = await post(dual, svc("np", type="NodePort", ipFamilyPolicy="PreferDualStack"))
    ips = out["spec"]["clusterIPs"]
    node_port = out["spec"]["ports"][0]["nodePort"]
    assert 30000 <= node_port <= 32767
    # Back to ClusterIP: the node port goes (and can be had again), the addresses stay.
    code, cip = await patch(dual, "np", {"spec": {"type": "ClusterIP"}})
    assert code == 200 and "nodePort" not in cip["spec"]["ports"][0] and cip["spec"]["clusterIPs"] == ips
    code, taker = await post(dual, svc("taker", type="NodePort", ports=[{"port": 80, "nodePort": node_port}]))
    assert code == 201
    # To ExternalName: every address field goes, and the addresses are free.
    code, ext = await patch(dual, "np", {"spec": {"type": "ExternalName", "externalName": "db.example.com"}})
    assert code == 200 and addr(ext["spec"]) == (None, None, None, None)
    code, again = await post(dual, svc("again", clusterIP=ips[1], ipFamilies=["IPv6"]))
    assert code == 201
    # And back: addresses by the (inferred) policy.
    code, back = await patch(dual, "np", {"spec": {"type": "ClusterIP", "externalName": None}})
    assert code == 200 and (back["spec"]["ipFamilyPolicy"], back["spec"]["ipFamilies"]) == ("SingleStack",
                                                                                          ["IPv4"])
    # A LoadBalancer's status goes with its type.
    code, lb = await post(dual, svc("lb", type="LoadBalancer"))
    await call(dual, "PATCH", f"{SVCS}/lb/status",
               {"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}}, content_type=MERGE)
    lb = (await call(dual, "GET", f"{SVCS}/lb"))[1]
    assert lb["status"]["loadBalancer"]["ingress"] == [{"ip": "192.0.2.7", "ipMode": "VIP"}]
    code, cip = await patch(dual, "lb", {"spec": {"type": "ClusterIP"}})
    assert code == 200 and cip["status"]["loadBalancer"] == {}


async def test_node_ports(single: APIServer) -> None:
    dns_ports = [{"name": "dns", "port": 53, "protocol": "UDP"},
                 {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    code, out = await post(single, svc("dns", type="NodePort", ports=dns_ports))
    a, b = (p["nodePort"] for p in out["spec"]["ports"])
    assert code == 201 and a == b  # one node port per service port, whatever the protocols
    code, out = await post(single, svc("nolb", type="LoadBalancer", allocateLoadBalancerNodePorts=False))
    assert code == 201 and "nodePort" not in out["spec"]["ports"][0]
    code, st = await post(single, svc("far", type="NodePort", ports=[{"port": 80, "nodePort": 40000}]))
    assert code == 422 and st["message"] == (
        'Service "far" is invalid: spec.ports[0].nodePort: Invalid value: 40000: provided port is not in the '
        'valid range. The range of valid ports is 30000-32767')
    # externalTrafficPolicy Local on a LoadBalancer gets a health-check node port, released when not needed.
    code, out = await post(single, svc("local", type="LoadBalancer", externalTrafficPolicy="Local"))
    hc = out["spec"]["healthCheckNodePort"]
    assert code == 201 and 30000 <= hc <= 32767 and hc != out["spec"]["ports"][0]["nodePort"]
    code, out = await patch(single, "local", {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}})
    assert out["spec"]["healthCheckNodePort"] == hc  # kept on an update that leaves it out
    code, out = await patch(single, "local", {"spec": {"externalTrafficPolicy": "Cluster"}})
    assert code == 200 and "healthCheckNodePort" not in out["spec"]
    code, out = await post(single, svc("hc", type="NodePort", ports=[{"port": 80, "nodePort": hc}]))
    assert code == 201


async def test_stored_service_without_families_is_read_as_upstream_does() -> None:
    alloc = ServiceAllocator(f"{V4},{V6}")
    old = svc("legacy", clusterIP="10.96.0.9")
    old["spec"]["ports"][0]["protocol"] = "TCP"
    new = {"metadata": {"name": "legacy"}, "spec": {**old["spec"], "sessionAffinity": "None"}}
    assert alloc.prepare(new, old, set(), set()) == (set(), set())
    assert addr(new["spec"]) == ("10.96.0.9", ["10.96.0.9"], ["IPv4"], "SingleStack")


async def test_dry_run_takes_no_secondary_for_good(dual: APIServer) -> None:
    code, dry = await post(dual, svc("d", clusterIP="10.96.5.5", clusterIPs=["10.96.5.5", "fd00:10:96::505"],
                                     ipFamilyPolicy="RequireDualStack"), dryRun="All")
    assert code == 201 and dry["spec"]["clusterIPs"] == ["10.96.5.5", "fd00:10:96::505"]
    code, real = await post(dual, svc("r", clusterIP="fd00:10:96::505", ipFamilies=["IPv6"]))
    assert code == 201
