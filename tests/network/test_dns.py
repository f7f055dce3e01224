"""Cluster DNS against a real in-process API server, queried over UDP and TCP on loopback.

Services and EndpointSlices are created through the API; ClusterDNS listens on
127.0.0.1 on a free port; the only upstream is a fake DNS server on 127.0.0.1
started by the test (no query ever leaves the machine).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from kybernetes.client import Client
from tests.apiserver.conftest import start_api, stop_api
from kybernetes.network.dns import (
    ClusterDNS,
    ensure_kube_dns_service,
    kube_dns_ip,
    parse_upstream,
    upstreams_from_resolv_conf,
)
from kybernetes.network.dnsrecords import Zone, service_records, slices_from_endpoints
from tests.apiserver.conftest import eventually

ZONE = "cluster.local"
A, AAAA, SRV, PTR, CNAME, TXT, SOA, NS, ANY = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV,
                                               dns.rdatatype.PTR, dns.rdatatype.CNAME, dns.rdatatype.TXT,
                                               dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.ANY)


# ---------------------------------------------------------------------- a fake upstream resolver

class FakeUpstream:
    """A tiny authoritative server on 127.0.0.1 (UDP and TCP, one port) answering from a dict."""

    def __init__(self, records: dict[tuple[str, str], list[str]], truncate: set[str] | None = None):
        self.records = records
        self.truncate = truncate or set()  # names answered with TC over UDP, in full over TCP
        self.queries: list[tuple[str, str, bool]] = []
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None

    def answer(self, data: bytes, tcp: bool) -> bytes:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        name = q.question[0].name.to_text().lower()
        rtype = dns.rdatatype.to_text(q.question[0].rdtype)
        self.queries.append((name, rtype, tcp))
        if not tcp and name in self.truncate:
            r.flags |= dns.flags.TC
            return r.to_wire()
        values = self.records.get((name, rtype))
        if values:
            r.answer.append(dns.rrset.from_text(name, 300, "IN", rtype, *values))
        else:
            if not any(n == name for n, _ in self.records):
                r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(dns.rrset.from_text("example.org.", 60, "IN", "SOA",
                                                   "ns.example.org. h.example.org. 1 2 3 4 60"))
        return r.to_wire()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        up = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                self.transport.sendto(up.answer(data, False), addr)


        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    n = int.from_bytes(await reader.readexactly(2), "big")
                    reply = up.answer(await reader.readexactly(n), True)
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        for attempt in range(20):
            self._udp, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
            self.port = self._udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(serve, "127.0.0.1", self.port)
                break
            except OSError:
                # The free UDP port is taken for TCP (by another test's connection): try another.
                self._udp.close()
                if attempt == 19:
                    raise

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()


UPSTREAM_RECORDS = {
    ("example.org.", "A"): ["192.0.2.1"],
    ("www.example.org.", "A"): ["192.0.2.10"],
    ("www.example.org.", "AAAA"): ["2001:db8::10"],
    ("big.example.org.", "A"): [f"192.0.2.{i}" for i in range(1, 21)],
    ("7.7.7.10.in-addr.arpa.", "PTR"): ["seven.example.org."],
}


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    up = FakeUpstream(UPSTREAM_RECORDS, truncate={"big.example.org."})
    await up.start()
    try:
        yield up
    finally:
        await up.stop()


@pytest.fixture
async def server(client: Client, upstream: FakeUpstream) -> AsyncIterator[ClusterDNS]:
    s = ClusterDNS(client, listen=[("127.0.0.1", 0)], upstreams=[f"127.0.0.1:{upstream.port}"],
                   upstream_timeout=1.0)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


# ---------------------------------------------------------------------- helpers

async def ask(server: ClusterDNS, name: str, rdtype: int = A, *, tcp: bool = False, edns: bool = False,
              payload: int = 1232, rd: bool = True) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, payload=payload)
    if not rd:
        q.flags &= ~dns.flags.RD
    host, port = server.addresses[0]
    if tcp:
        return await dns.asyncquery.tcp(q, host, port=port, timeout=3)
    return await dns.asyncquery.udp(q, host, port=port, timeout=3)


def values(r: dns.message.Message, rdtype: int, section: str = "answer") -> list[str]:
    return sorted(rd.to_text() for rrset in getattr(r, section) if rrset.rdtype == rdtype for rd in rrset)


def svc(name: str, *, ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}], **spec}}


def endpoint_slice(name: str, service: str, family: str, endpoints: list[dict[str, Any]],
                   ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "endpoints": endpoints,
            "ports": ports if ports is not None else [{"name": "web", "port": 8080, "protocol": "TCP"}]}


def ep(ip: str, hostname: str | None = None, ready: bool = True) -> dict[str, Any]:
    e: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": ready}}
    if hostname:
        e["hostname"] = hostname
    return e


async def answered(server: ClusterDNS, name: str, rdtype: int = A, **kw: Any) -> dns.message.Message:
    """Poll until the name has an answer of that type (informer events are asynchronous)."""
    async def check() -> dns.message.Message | None:
        r = await ask(server, name, rdtype, **kw)
        return r if values(r, rdtype) else None
    return await eventually(check, timeout=5, what=f"{name} {dns.rdatatype.to_text(rdtype)}")


def services(client: Client) -> Any:
    return client.resource("v1", "services")


def slices(client: Client) -> Any:
    return client.resource("discovery.k8s.io/v1", "endpointslices")


# ---------------------------------------------------------------------- ClusterIP services

async def test_cluster_ip_service_a_srv_ptr(server: ClusterDNS, client: Client) -> None:
    created = await services(client).create(svc("web", ports=[
        {"name": "http", "port": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"}]), "default")
    ip = created["spec"]["clusterIP"]
    r = await answered(server, "web.default.svc.cluster.local")
    assert values(r, A) == [ip]
    assert r.flags & dns.flags.AA and r.rcode() == dns.rcode.NOERROR
    assert r.answer[0].ttl == 5

    r = await ask(server, "_http._tcp.web.default.svc.cluster.local", SRV)
    assert values(r, SRV) == ["0 100 80 web.default.svc.cluster.local."]
    assert values(r, A, "additional") == [ip]
    r = await ask(server, "_dns._udp.web.default.svc.cluster.local", SRV)
    assert values(r, SRV) == ["0 100 53 web.default.svc.cluster.local."]
    r = await ask(server, "_http._udp.web.default.svc.cluster.local", SRV)
    assert r.rcode() == dns.rcode.NXDOMAIN  # no such port/protocol pair
    await services(client).create(svc("single", ports=[{"port": 8080, "protocol": "TCP"}]), "default")
    await answered(server, "single.default.svc.cluster.local")
    r = await ask(server, "_tcp.single.default.svc.cluster.local", SRV)
    assert r.rcode() == dns.rcode.NXDOMAIN  # unnamed ports have no SRV records

    rev = ".".join(reversed(ip.split("."))) + ".in-addr.arpa"
    r = await ask(server, rev, PTR)
    assert values(r, PTR) == ["web.default.svc.cluster.local."]

    # The API server's own Service, as every cluster has.
    r = await answered(server, "kubernetes.default.svc.cluster.local")
    assert values(r, A) == [(await services(client).get("kubernetes", "default"))["spec"]["clusterIP"]]


async def test_nodata_nxdomain_and_zone_records(server: ClusterDNS, client: Client) -> None:
    await services(client).create(svc("web"), "default")
    await answered(server, "web.default.svc.cluster.local")

    r = await ask(server, "web.default.svc.cluster.local", AAAA)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer  # NODATA
    assert values(r, SOA, "authority")

    r = await ask(server, "nope.default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
    (soa,) = r.authority
    assert soa.rdtype == SOA and soa.name.to_text() == "cluster.local."
    assert soa[0].mname.to_text() == "ns.dns.cluster.local." and soa[0].minimum == 5

    # Empty non-terminals exist: NODATA, not NXDOMAIN.
    for ent in ("default.svc.cluster.local", "svc.cluster.local", "_tcp.web.default.svc.cluster.local"):
        r = await ask(server, ent)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer, ent
    r = await ask(server, "nosuchns.svc.cluster.local")
    assert r.rcode() == dns.rcode.NXDOMAIN

    r = await ask(server, "dns-version.cluster.local", TXT)
    assert values(r, TXT) == ['"1.1.0"']
    r = await ask(server, "cluster.local", SOA)
    assert values(r, SOA)
    r = await ask(server, "cluster.local", NS)
    assert values(r, NS) == ["ns.dns.cluster.local."]


async def test_search_path_expansions_are_nxdomain_without_upstream(server: ClusterDNS, client: Client,
                                                                   upstream: FakeUpstream) -> None:
    await services(client).create(svc("web"), "default")
    await answered(server, "web.default.svc.cluster.local")
    for name in ("web.default.svc.cluster.local.default.svc.cluster.local",
                 "web.default.svc.cluster.local.svc.cluster.local",
                 "example.org.default.svc.cluster.local", "example.org.cluster.local"):
        for tcp in (False, True):
            r = await ask(server, name, tcp=tcp)
            assert r.rcode() == dns.rcode.NXDOMAIN, name
    assert upstream.queries == []


async def test_names_are_case_insensitive_and_keep_the_askers_case(server: ClusterDNS,
                                                                   client: Client) -> None:
    created = await services(client).create(svc("web"), "default")
    await answered(server, "web.default.svc.cluster.local")
    for name in ("WEB.Default.SVC.cluster.LOCAL", "wEb.DeFaUlT.sVc.ClUsTeR.lOcAl"):
        for edns in (False, True):
            r = await ask(server, name, edns=edns)
            assert values(r, A) == [created["spec"]["clusterIP"]]
            assert r.question[0].name.to_text() == name + "."
            assert r.answer[0].name.to_text() == name + "."
            assert (r.edns >= 0) == edns


async def test_dual_stack_cluster_ips(tmp_path, upstream: FakeUpstream) -> None:
    """A and AAAA by family, on a dual-stack cluster (the shared fixture's is single-stack)."""
    (tmp_path / "dual").mkdir()
    api = await start_api(tmp_path / "dual", service_cidr="10.96.0.0/12,fd00:10:96::/112")
    client = Client.in_process(api.handle)
    server = ClusterDNS(client, listen=[("127.0.0.1", 0)], upstreams=[f"127.0.0.1:{upstream.port}"],
                        upstream_timeout=1.0)
    await server.start()
    try:
        created = await services(client).create(svc("dual", ipFamilyPolicy="PreferDualStack",
                                                    ipFamilies=["IPv4", "IPv6"]), "default")
        stored = created["spec"]["clusterIPs"]
        assert len(stored) == 2 and ":" in stored[1], created["spec"]
        r = await answered(server, "dual.default.svc.cluster.local")
        assert values(r, A) == [stored[0]]
        r = await ask(server, "dual.default.svc.cluster.local", AAAA)
        assert values(r, AAAA) == [stored[1]]
    finally:
        await server.stop()
        await client.close()
        await stop_api(api)


def test_zone_dual_stack_records() -> None:
    """The record model with both families, independent of what the API server allocates."""
    zone = Zone(ZONE)
    service = {"metadata": {"name": "dual", "namespace": "ns1"},
               "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20", "fd00:43::20"],
                        "ipFamilies": ["IPv4", "IPv6"],
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}
    zone.set_source("ns1/dual", service_records(service, [], zone.origin))
    name = dns.name.from_text("dual.ns1.svc.cluster.local")
    assert [rd.to_text() for rd in zone.resolve(name, A).answer[0]] == ["10.43.0.20"]
    assert [rd.to_text() for rd in zone.resolve(name, AAAA).answer[0]] == ["fd00:43::20"]
    ptr = zone.resolve(dns.name.from_text("0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.4.0.0.0.0.d.f.ip6.arpa"),
                       PTR)
    assert [rd.to_text() for rd in ptr.answer[0]] == ["dual.ns1.svc.cluster.local."]
    srv = zone.resolve(dns.name.from_text("_https._tcp.dual.ns1.svc.cluster.local"), SRV)
    assert sorted(rd.to_text() for rr in srv.additional for rd in rr) == ["10.43.0.20", "fd00:43::20"]
    # Gone again: the name and its empty ancestors disappear.
    zone.set_source("ns1/dual", {})
    assert zone.resolve(name, A).rcode == dns.rcode.NXDOMAIN
    assert zone.resolve(dns.name.from_text("ns1.svc.cluster.local"), A).rcode == dns.rcode.NXDOMAIN
    assert zone.resolve(dns.name.from_text("svc.cluster.local"), A).rcode == dns.rcode.NOERROR


# ---------------------------------------------------------------------- headless services

async def test_headless_service_endpoints_hostnames_srv_ptr(server: ClusterDNS, client: Client) -> None:
    await services(client).create(svc("nginx", clusterIP="None",
                                      ports=[{"name": "web", "port": 80, "protocol": "TCP"}]), "default")
    await slices(client).create(endpoint_slice("nginx-v4", "nginx", "IPv4", [
        ep("10.42.0.5", "web-0"), ep("10.42.0.6", "web-1"), ep("10.42.0.7"), ep("10.42.0.8", "web-3", ready=False),
    ]), "default")
    await slices(client).create(endpoint_slice("nginx-v6", "nginx", "IPv6", [ep("fd00:42::5", "web-0")]),
                                "default")
    r = await answered(server, "nginx.default.svc.cluster.local")
    assert values(r, A) == ["10.42.0.5", "10.42.0.6", "10.42.0.7"]  # not the unready one
    r = await answered(server, "nginx.default.svc.cluster.local", AAAA)
    assert values(r, AAAA) == ["fd00:42::5"]
    # Round robin: successive answers start with different addresses.
    firsts = set()
    for _ in range(3):
        r = await ask(server, "nginx.default.svc.cluster.local")
        firsts.add(r.answer[0][0].address)
        assert values(r, A) == ["10.42.0.5", "10.42.0.6", "10.42.0.7"]
    assert firsts == {"10.42.0.5", "10.42.0.6", "10.42.0.7"}

    r = await ask(server, "web-0.nginx.default.svc.cluster.local")
    assert values(r, A) == ["10.42.0.5"]
    r = await ask(server, "web-0.nginx.default.svc.cluster.local", AAAA)
    assert values(r, AAAA) == ["fd00:42::5"]
    r = await ask(server, "10-42-0-7.nginx.default.svc.cluster.local")  # no hostname: IP-derived
    assert values(r, A) == ["10.42.0.7"]
    r = await ask(server, "web-3.nginx.default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NXDOMAIN

    r = await ask(server, "_web._tcp.nginx.default.svc.cluster.local", SRV, edns=True)
    assert values(r, SRV) == ["0 33 8080 10-42-0-7.nginx.default.svc.cluster.local.",
                              "0 33 8080 web-0.nginx.default.svc.cluster.local.",
                              "0 33 8080 web-1.nginx.default.svc.cluster.local."]
    assert values(r, A, "additional") == ["10.42.0.5", "10.42.0.6", "10.42.0.7"]
    assert values(r, AAAA, "additional") == ["fd00:42::5"]

    r = await ask(server, "5.0.42.10.in-addr.arpa", PTR)
    assert values(r, PTR) == ["web-0.nginx.default.svc.cluster.local."]
    r = await ask(server, dns.name.from_text("5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.0.0.0.0.d.f"
                                             ".ip6.arpa").to_text(), PTR)
    assert values(r, PTR) == ["web-0.nginx.default.svc.cluster.local."]

    # publishNotReadyAddresses brings the unready endpoint in.
    cur = await services(client).get("nginx", "default")
    cur["spec"]["publishNotReadyAddresses"] = True
    await services(client).update(cur, "default")
    r = await answered(server, "web-3.nginx.default.svc.cluster.local")
    assert values(r, A) == ["10.42.0.8"]
    r = await ask(server, "nginx.default.svc.cluster.local")
    assert "10.42.0.8" in values(r, A)


async def test_headless_without_ready_endpoints_is_nxdomain(server: ClusterDNS, client: Client) -> None:
    await services(client).create(svc("empty", clusterIP="None"), "default")
    await slices(client).create(endpoint_slice("empty-1", "empty", "IPv4", [ep("10.42.1.1", ready=False)]),
                                "default")
    await services(client).create(svc("marker"), "default")  # created after: synced once it resolves
    await answered(server, "marker.default.svc.cluster.local")
    r = await ask(server, "empty.default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NXDOMAIN
    # An endpoint becoming ready brings the name.
    cur = await slices(client).get("empty-1", "default")
    cur["endpoints"][0]["conditions"]["ready"] = True
    await slices(client).update(cur, "default")
    r = await answered(server, "empty.default.svc.cluster.local")
    assert values(r, A) == ["10.42.1.1"]


async def test_large_answers_truncate_over_udp_and_come_whole_over_tcp(server: ClusterDNS,
                                                                       client: Client) -> None:
    await services(client).create(svc("many", clusterIP="None"), "default")
    ips = [f"10.42.2.{i}" for i in range(1, 61)]
    await slices(client).create(endpoint_slice("many-1", "many", "IPv4", [ep(ip) for ip in ips]), "default")

    async def all_there() -> bool:
        r = await ask(server, "many.default.svc.cluster.local", tcp=True)
        return len(values(r, A)) == 60
    await eventually(all_there, timeout=5)

    r = await ask(server, "many.default.svc.cluster.local")  # no EDNS: 512 bytes
    assert r.flags & dns.flags.TC and not r.answer
    r = await ask(server, "many.default.svc.cluster.local", edns=True, payload=4096)
    assert not r.flags & dns.flags.TC and len(values(r, A)) == 60
    r = await ask(server, "many.default.svc.cluster.local", edns=True, payload=512)
    assert r.flags & dns.flags.TC and r.edns == 0
    r = await ask(server, "many.default.svc.cluster.local", tcp=True)
    assert not r.flags & dns.flags.TC and sorted(values(r, A)) == sorted(ips)


# ---------------------------------------------------------------------- ExternalName

async def test_external_name_cname_chased_through_upstream(server: ClusterDNS, client: Client,
                                                           upstream: FakeUpstream) -> None:
    await services(client).create(svc("ext", type="ExternalName", externalName="www.example.org"), "default")
    r = await answered(server, "ext.default.svc.cluster.local", CNAME)
    assert values(r, CNAME) == ["www.example.org."]
    assert not values(r, A)

    r = await ask(server, "ext.default.svc.cluster.local", A)
    assert values(r, CNAME) == ["www.example.org."]
    assert values(r, A) == ["192.0.2.10"]
    assert r.answer[0].rdtype == CNAME  # the CNAME first, then the target's records
    r = await ask(server, "ext.default.svc.cluster.local", AAAA)
    assert values(r, AAAA) == ["2001:db8::10"]

    # Pointing inside the zone: the chain is followed here.
    target = await services(client).create(svc("real"), "default")
    await services(client).create(svc("alias", type="ExternalName",
                                      externalName="real.default.svc.cluster.local"), "default")
    r = await answered(server, "alias.default.svc.cluster.local", A)
    assert values(r, CNAME) == ["real.default.svc.cluster.local."]
    assert values(r, A) == [target["spec"]["clusterIP"]]


# ---------------------------------------------------------------------- pods, updates

async def test_pod_records_from_the_name(server: ClusterDNS) -> None:
    r = await ask(server, "10-42-0-9.default.pod.cluster.local")
    assert values(r, A) == ["10.42.0.9"]
    r = await ask(server, "fd00-42--9.default.pod.cluster.local", AAAA)
    assert values(r, AAAA) == ["fd00:42::9"]
    r = await ask(server, "10-42-0-9.default.pod.cluster.local", AAAA)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    for bad in ("10-42-0-999.default.pod.cluster.local", "x.10-42-0-9.default.pod.cluster.local"):
        r = await ask(server, bad)
        assert r.rcode() == dns.rcode.NXDOMAIN, bad


async def test_updates_follow_the_api(server: ClusterDNS, client: Client) -> None:
    name = "later.default.svc.cluster.local"
    r = await ask(server, name)
    assert r.rcode() == dns.rcode.NXDOMAIN  # and now cached as such
    created = await services(client).create(svc("later"), "default")
    r = await answered(server, name)
    assert values(r, A) == [created["spec"]["clusterIP"]]

    await services(client).delete("later", "default")

    async def gone() -> bool:
        return (await ask(server, name)).rcode() == dns.rcode.NXDOMAIN
    await eventually(gone, timeout=5, what="NXDOMAIN after delete")
    r = await ask(server, "default.svc.cluster.local")
    assert r.rcode() == dns.rcode.NOERROR  # the kubernetes Service is still there


# ---------------------------------------------------------------------- forwarding

async def test_forwarding_caches_and_retries_over_tcp(server: ClusterDNS, upstream: FakeUpstream) -> None:
    r = await ask(server, "example.org")
    assert values(r, A) == ["192.0.2.1"] and r.rcode() == dns.rcode.NOERROR
    assert not r.flags & dns.flags.AA
    r = await ask(server, "EXAMPLE.org", edns=True)
    assert values(r, A) == ["192.0.2.1"] and r.question[0].name.to_text() == "EXAMPLE.org."
    assert [q for q in upstream.queries if q[0] == "example.org."] == [("example.org.", "A", False)]

    r = await ask(server, "missing.example.org")
    assert r.rcode() == dns.rcode.NXDOMAIN and values(r, SOA, "authority")

    # The upstream truncates this one over UDP; we ask it again over TCP.
    r = await ask(server, "big.example.org", edns=True)
    assert len(values(r, A)) == 20
    assert ("big.example.org.", "A", True) in upstream.queries

    # Reverse names the cluster does not know fall through to the upstream.
    r = await ask(server, "7.7.7.10.in-addr.arpa", PTR)
    assert values(r, PTR) == ["seven.example.org."]


async def test_upstreams_tried_in_order_and_servfail_when_none_answers(client: Client,
                                                                     upstream: FakeUpstream) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # reads nothing, answers nothing
    silent.bind(("127.0.0.1", 0))
    silent_port = silent.getsockname()[1]
    try:
        s = ClusterDNS(client, listen=[("127.0.0.1", 0)], upstreams=[("127.0.0.1", silent_port),
                                                                     ("127.0.0.1", upstream.port)],
                       upstream_timeout=0.3)
        async with s:
            r = await ask(s, "example.org")
            assert values(r, A) == ["192.0.2.1"]
        s = ClusterDNS(client, listen=[("127.0.0.1", 0)], upstreams=[("127.0.0.1", silent_port)],
                       upstream_timeout=0.2)
        async with s:
            r = await ask(s, "example.org")
            assert r.rcode() == dns.rcode.SERVFAIL
            r = await ask(s, "kubernetes.default.svc.cluster.local")  # the zone needs no upstream
            assert values(r, A)
        s = ClusterDNS(client, listen=[("127.0.0.1", 0)], upstreams=[])
        async with s:
            r = await ask(s, "example.org", tcp=True)
            assert r.rcode() == dns.rcode.SERVFAIL
    finally:
        silent.close()


# ---------------------------------------------------------------------- protocol details

async def test_protocol_edge_cases(server: ClusterDNS, client: Client) -> None:
    loop = asyncio.get_running_loop()
    host, port = server.addresses[0]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, b"\x12\x34\x01", (host, port))  # too short: dropped
        await loop.sock_sendto(sock, b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07garbage",
                               (host, port))
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), 3)
        reply = dns.message.from_wire(data)
        assert reply.id == 0xABCD and reply.rcode() == dns.rcode.FORMERR
    finally:
        sock.close()

    # EDNS version 1 is not ours.
    q = dns.message.make_query("web.default.svc.cluster.local", A, use_edns=1)
    r = await dns.asyncquery.udp(q, host, port=port, timeout=3)
    assert r.rcode() == dns.rcode.BADVERS

    await services(client).create(svc("web"), "default")
    await answered(server, "web.default.svc.cluster.local")
    r = await ask(server, "web.default.svc.cluster.local", rd=False)
    assert not r.flags & dns.flags.RD and values(r, A)
    r = await ask(server, "web.default.svc.cluster.local", ANY)
    assert values(r, A)
    r = await ask(server, "cluster.local", dns.rdatatype.AXFR, tcp=True)
    assert r.rcode() == dns.rcode.REFUSED

    # Pipelined queries on one TCP connection.
    reader, writer = await asyncio.open_connection(host, port)
    try:
        queries = [dns.message.make_query(n, A) for n in ("web.default.svc.cluster.local", "nope.cluster.local",
                                                          "kubernetes.default.svc.cluster.local")]
        writer.write(b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries)))
        await writer.drain()
        replies = []
        for _ in queries:
            n = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 3), "big")
            replies.append(dns.message.from_wire(await reader.readexactly(n)))
        assert [r.id for r in replies] == [q.id for q in queries]
        assert [r.rcode() for r in replies] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.NOERROR]
    finally:
        writer.close()


# ---------------------------------------------------------------------- kube-dns

async def test_ensure_kube_dns_service(server: ClusterDNS, client: Client) -> None:
    ip = kube_dns_ip("10.96.0.0/12")
    assert ip == "10.96.0.10" and kube_dns_ip("10.43.0.0/16") == "10.43.0.10"
    svc1 = await ensure_kube_dns_service(client, ip, endpoints=["127.0.0.1"], port=server.addresses[0][1])
    assert svc1["spec"]["clusterIP"] == ip
    assert svc1["metadata"]["labels"]["k8s-app"] == "kube-dns"
    assert svc1["metadata"]["labels"]["kubernetes.io/name"] == "CoreDNS"
    assert [(p["name"], p["port"], p["protocol"]) for p in svc1["spec"]["ports"]] == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")]
    svc2 = await ensure_kube_dns_service(client, ip, endpoints=["127.0.0.1"], port=server.addresses[0][1])
    assert svc2["metadata"]["uid"] == svc1["metadata"]["uid"]
    assert svc2["metadata"]["resourceVersion"] == svc1["metadata"]["resourceVersion"]  # nothing to change
    sl = await slices(client).get("kube-dns-cluster-dns-ipv4", "kube-system")
    assert sl["endpoints"][0]["addresses"] == ["127.0.0.1"]
    assert {p["port"] for p in sl["ports"]} == {server.addresses[0][1]}

    r = await answered(server, "kube-dns.kube-system.svc.cluster.local")
    assert values(r, A) == [ip]
    r = await answered(server, "ns.dns.cluster.local")
    assert values(r, A) == [ip]
    r = await ask(server, "cluster.local", NS)
    assert values(r, NS) == ["ns.dns.cluster.local."] and values(r, A, "additional") == [ip]


# ---------------------------------------------------------------------- configuration helpers

def test_upstream_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver   2001:db8::53 \n"
                    "nameserver not-an-ip\noptions ndots:2\nnameserver 127.0.0.53 # stub\n")
    assert upstreams_from_resolv_conf(conf) == [("192.0.2.53", 53), ("2001:db8::53", 53), ("127.0.0.53", 53)]
    assert upstreams_from_resolv_conf(tmp_path / "missing") == []
    assert parse_upstream("192.0.2.1") == ("192.0.2.1", 53)
    assert parse_upstream("192.0.2.1:5353") == ("192.0.2.1", 5353)
    assert parse_upstream("[::1]:5353") == ("::1", 5353)
    assert parse_upstream("2001:db8::1") == ("2001:db8::1", 53)


async def test_upstreams_that_are_this_server_are_dropped(client: Client) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    s = ClusterDNS(client, listen=[("127.0.0.1", port)],
                   upstreams=[("127.0.0.1", port), ("127.0.0.2", port), ("127.0.0.1", 53)])
    try:
        await s.start()
    except OSError:
        pytest.skip("the probed port was taken meanwhile")
    try:
        assert s.upstreams == [("127.0.0.2", port), ("127.0.0.1", 53)]
    finally:
        await s.stop()
    # Listening on the wildcard address, every loopback address on our port is us too
    # (checked without binding it: tests listen on loopback only).
    s = ClusterDNS(client, upstreams=[])
    s.addresses = [("0.0.0.0", 53), ("::", 53)]
    assert s._is_self(("127.0.0.53", 53)) and s._is_self(("::1", 53))
    assert not s._is_self(("127.0.0.53", 5353)) and not s._is_self(("192.0.2.1", 53))


def test_endpoints_fallback_and_publish_not_ready() -> None:
    endpoints = {"metadata": {"name": "db", "namespace": "prod"}, "subsets": [{
        "addresses": [{"ip": "10.42.3.1", "hostname": "db-0"}, {"ip": "fd00::31"}],
        "notReadyAddresses": [{"ip": "10.42.3.2", "hostname": "db-1"}],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}]}
    service = {"metadata": {"name": "db", "namespace": "prod"},
               "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}
    zone = Zone(ZONE)
    zone.set_source("prod/db", service_records(service, slices_from_endpoints(endpoints), zone.origin))
    name = dns.name.from_text("db.prod.svc.cluster.local")
    assert [rd.to_text() for rd in zone.resolve(name, A).answer[0]] == ["10.42.3.1"]
    assert [rd.to_text() for rd in zone.resolve(name, AAAA).answer[0]] == ["fd00::31"]
    srv = zone.resolve(dns.name.from_text("_pg._tcp.db.prod.svc.cluster.local"), SRV).answer[0]
    assert sorted(rd.to_text() for rd in srv) == ["0 50 5432 db-0.db.prod.svc.cluster.local.",
                                                  "0 50 5432 fd00--31.db.prod.svc.cluster.local."]
    service["metadata"]["annotations"] = {"service.alpha.kubernetes.io/tolerate-unready-endpoints": "true"}
    zone.set_source("prod/db", service_records(service, slices_from_endpoints(endpoints), zone.origin))
    assert [rd.to_text() for rd in zone.resolve(name, A).answer[0]] == ["10.42.3.1", "10.42.3.2"]


async def test_endpoints_fallback_through_the_server(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server without discovery.k8s.io/v1: headless records come from core/v1 Endpoints."""
    async def no_slices(self: ClusterDNS) -> bool:
        return False
    monkeypatch.setattr(ClusterDNS, "_serves_slices", no_slices)
    async with ClusterDNS(client, listen=[("127.0.0.1", 0)], upstreams=[]) as s:
        await services(client).create(svc("legacy", clusterIP="None"), "default")
        await client.resource("v1", "endpoints").create({
            "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "legacy"},
            "subsets": [{"addresses": [{"ip": "10.42.4.1", "hostname": "legacy-0"}],
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}]}, "default")
        r = await answered(s, "legacy-0.legacy.default.svc.cluster.local")
        assert values(r, A) == ["10.42.4.1"]
        r = await ask(s, "_http._tcp.legacy.default.svc.cluster.local", SRV)
        assert values(r, SRV) == ["0 100 80 legacy-0.legacy.default.svc.cluster.local."]


async def test_listens_on_ipv6_loopback(client: Client) -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    async with ClusterDNS(client, listen=[("127.0.0.1", 0), ("::1", 0)], upstreams=[]) as s:
        host, port = s.addresses[1]
        q = dns.message.make_query("kubernetes.default.svc.cluster.local", A)
        for query in (dns.asyncquery.udp, dns.asyncquery.tcp):
            r = await query(q, host, port=port, timeout=3)
            assert values(r, A)
