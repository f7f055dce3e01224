"""Cluster DNS: the built-in DNS server pods resolve through, fed by informers.

`ClusterDNS` owns the sockets (UDP and TCP on each listen address), the answer
cache and forwarding. The records themselves come from `dnsrecords`: informers on
Services and EndpointSlices (core/v1 Endpoints where the server has no
discovery.k8s.io/v1) call `service_records` for the one Service an event touches
and hand the result to the `Zone`; nothing is rebuilt for the rest of the world.

The hot path. An answer is rendered once per (name, type) by dnspython into two
wire forms, without and with an OPT record, and cached under the query's
lowercased wire name and its type/class bytes. A query for a cached name is then a
scan for the end of the name, two dict lookups, and the reply is the query's ID +
the cached header + the query's own question bytes (so the asker sees its own
letter case, which 0x20-randomising resolvers check) + the cached rest: the
compression pointers in the cached records still point at offset 12, where a
question of the same length sits. Answers with several addresses (headless
Services) are rendered in up to 8 rotations handed out in turn, as CoreDNS's
`loadbalance` (on in k3s's Corefile) shuffles them. Anything unusual (no RD, EDNS with DO or a
version above 0, other opcodes, several questions, a miss) takes the slow path,
which parses with dnspython, answers, and fills the cache. Record changes drop the
changed names and their ancestors from the cache; nothing else is touched.

Everything outside the cluster zone, and reverse names the cluster does not know
(CoreDNS's `fallthrough in-addr.arpa ip6.arpa`), is forwarded to the upstream
resolvers (the host's /etc/resolv.conf by default), in order: UDP with a retry
over TCP when the answer is truncated, a per-upstream timeout, SERVFAIL when none
answers. Positive and negative upstream answers are cached for their TTL, at most
30 s (CoreDNS's `cache 30`), and concurrent identical questions share one upstream
query. An ExternalName Service asked for A/AAAA answers its CNAME plus the target's
records looked up through the upstreams, as CoreDNS's kubernetes plugin does (a
stub resolver such as glibc's does not chase CNAMEs itself).

UDP answers honour the asker's EDNS0 buffer size (512 bytes without EDNS, at most
4096); an answer that does not fit is sent empty with TC set and the client asks
again over TCP, where it is sent whole. Several queries may be pipelined on one
TCP connection.

`ensure_kube_dns_service` writes the `kube-dns` Service in kube-system that
clients (and kubelets' resolv.conf) expect, shaped as k3s's CoreDNS manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from kybernetes.api.errors import StatusError
from kybernetes.client import Client, Informer
from kybernetes.client.informer import informer_for

from .dnsrecords import Answer, Name, Records, Zone, service_records, slices_from_endpoints

log = logging.getLogger(__name__)

Obj = dict[str, Any]

ROTATIONS = 8  # orders of a multi-address answer rendered for round robin
EDNS_PAYLOAD = 1232  # what we advertise: the DNS flag day 2020 size, no IP fragmentation
MAX_UDP = 4096
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DNS_SLICE_MANAGER = "cluster-dns.kybernetes.io"
KUBE_DNS = "kube-system/kube-dns"
_SLICE_INDEX = "kybernetes.io/dns-service"

_QUERY_COUNTS = b"\x00\x01\x00\x00\x00\x00"  # qdcount 1, ancount 0, nscount 0
_OPT_RR = b"\x00\x00\x29" + EDNS_PAYLOAD.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
_ZONE_FLAGS = dns.flags.QR | dns.flags.AA | dns.flags.RD | dns.flags.RA


def _slice_service_key(obj: Obj) -> list[str]:
    meta = obj.get("metadata") or {}
    svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{meta.get('namespace')}/{svc}"] if svc else []


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def parse_upstream(value: str | tuple[str, int]) -> tuple[str, int]:
    """("1.1.1.1", 53) from "1.1.1.1", "1.1.1.1:5353", "[::1]:5353", "::1" or a (host, port) pair."""
    if isinstance(value, tuple):
        return value[0], int(value[1])
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 53
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, 53


def upstreams_from_resolv_conf(path: str | Path = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """The nameservers of a resolv.conf, in order, as (address, 53)."""
    out: list[tuple[str, int]] = []
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver" and _ip(parts[1]) is not None:
            out.append((parts[1], 53))
    return out


def _bare_reply(data: bytes, qend: int, flags_hi: int, flags_lo: int, edns: bool) -> bytes:
    """A reply with the query's question and no records (truncated or an error rcode)."""
    counts = _QUERY_COUNTS + (b"\x00\x01" if edns else b"\x00\x00")
    return b"".join((data[:2], bytes((flags_hi, flags_lo)), counts, data[12:qend], _OPT_RR if edns else b""))


def _formerr(data: bytes) -> bytes | None:
    """FORMERR for a query dnspython cannot parse: header only, the query's ID and opcode."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    return data[:2] + bytes((0x80 | (data[2] & 0x79), 0x80 | dns.rcode.FORMERR)) + b"\x00" * 8


def _render(qname: Name, qtype: int, flags: int, ans: Answer, *, ednsflags: int = 0) -> tuple[bytes, bytes]:
    m = dns.message.Message(id=0)
    m.flags = flags
    m.set_rcode(ans.rcode)
    m.find_rrset(m.question, qname, dns.rdataclass.IN, qtype, create=True, force_unique=True)
    m.answer = list(ans.answer)
    m.authority = list(ans.authority)
    m.additional = list(ans.additional)
    # Our order, not dnspython's shuffle: the rotations below are the round robin.
    plain = m.to_wire(want_shuffle=False)
    m.use_edns(0, ednsflags=ednsflags, payload=EDNS_PAYLOAD)
    return plain, m.to_wire(want_shuffle=False)


class _Rotor:
    """Rotations of one answer's address records, handed out in turn, as CoreDNS's
    `loadbalance` shuffles them: clients that take the first address spread out."""

    __slots__ = ("i", "variants")

    def __init__(self, variants: list[tuple[bytes, bytes]]):
        self.variants = variants
        self.i = 0

    def next(self) -> tuple[bytes, bytes]:
        self.i = i = (self.i + 1) % len(self.variants)
        return self.variants[i]


# (expires: monotonic seconds, 0 for "until the records change"; wire without OPT; wire with OPT;
#  rotations of a multi-address answer to hand out in turn, or None)
Entry = tuple[float, bytes, bytes, _Rotor | None]


def _zone_entry(qname: Name, qtype: int, ans: Answer, expires: float) -> Entry:
    plain, with_opt = _render(qname, qtype, _ZONE_FLAGS, ans)
    multi = [rr for rr in ans.answer if rr.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and len(rr) > 1]
    if not multi:
        return (expires, plain, with_opt, None)
    k = min(ROTATIONS, max(len(rr) for rr in multi))
    variants = [(plain, with_opt)]
    for j in range(1, k):
        rotated = []
        for rr in ans.answer:
            if any(rr is m for m in multi):
                items = list(rr)
                shift = j * len(items) // k
                rr = dns.rrset.from_rdata_list(rr.name, rr.ttl, items[shift:] + items[:shift])
            rotated.append(rr)
        variants.append(_render(qname, qtype, _ZONE_FLAGS, Answer(
            rcode=ans.rcode, answer=rotated, authority=ans.authority, additional=ans.additional)))
    return (expires, plain, with_opt, _Rotor(variants))


class _Query:
    """The parts of a parsed query the slow path replies with."""

    __slots__ = ("data", "edns", "limit", "qend", "rd", "tcp")

    def __init__(self, data: bytes, qend: int, edns: bool, limit: int, rd: bool, tcp: bool):
        self.data = data
        self.qend = qend
        self.edns = edns
        self.limit = limit
        self.rd = rd
        self.tcp = tcp


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: ClusterDNS):
        self.server = server
        self.fast = server._fast
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = self.fast(data, False)
            if reply is None:
                slow = self.server._slow(data, False)
                if slow is None:
                    return
                if not isinstance(slow, bytes):
                    self.server._spawn(self._later(slow, addr))
                    return
                reply = slow
            assert self.transport is not None
            self.transport.sendto(reply, addr)
        except Exception:
            log.exception("cluster DNS: failed to answer a UDP query from %s", addr)

    async def _later(self, pending: Coroutine[Any, Any, bytes | None], addr: Any) -> None:
        try:
            reply = await pending
        except Exception:
            log.exception("cluster DNS: failed to answer a UDP query from %s", addr)
            return
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for clients that went away; nothing to do.
        pass


class ClusterDNS:
    """The cluster DNS server for zone `domain`, fed by informers on `client`.

    listen: (address, port) pairs, each served over UDP and TCP; port 0 picks a free
    one (the same for both), see `addresses` after start(). upstreams: where names
    outside the zone go, as "ip", "ip:port", "[v6]:port" or (ip, port); None reads
    the nameservers of `resolv_conf`. Upstreams that are this server itself are
    dropped at start, so a host resolv.conf pointing at us does not loop.
    """

    def __init__(self, client: Client, *, domain: str = "cluster.local",
                 listen: Sequence[tuple[str, int]] = (("127.0.0.1", 53),),
                 upstreams: Sequence[str | tuple[str, int]] | None = None,
                 resolv_conf: str | Path = "/etc/resolv.conf",
                 ttl: int = 5, upstream_timeout: float = 2.0, cache_max_ttl: int = 30,
                 cache_names: int = 100_000, max_pending: int = 2000, sync_timeout: float = 30.0,
                 tcp_idle_timeout: float = 10.0):
        self.client = client
        self.zone = Zone(domain, ttl)
        self.listen = list(listen)
        self._configured_upstreams = upstreams
        self.resolv_conf = resolv_conf
        self.upstreams: list[tuple[str, int]] = []
        self.upstream_timeout = upstream_timeout
        self.cache_max_ttl = cache_max_ttl
        self.cache_names = cache_names
        self.max_pending = max_pending
        self.sync_timeout = sync_timeout
        self.tcp_idle_timeout = tcp_idle_timeout
        # lowercased wire name -> type+class bytes -> Entry
        self._cache: dict[bytes, dict[bytes, Entry]] = {}
        self._inflight: dict[bytes, asyncio.Future[Entry | None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self.addresses: list[tuple[str, int]] = []
        self._services: Informer | None = None
        self._slices: Informer | None = None
        self._endpoints: Informer | None = None
        self._own_informers: list[Informer] = []
        self._running = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the informers, wait (up to sync_timeout) for the first listing, then serve."""
        self._running = True
        self._services = self._informer("v1", "services")
        self._services.add_handler(self._on_object, lambda _old, new: self._on_object(new), self._on_object)
        if await self._serves_slices():
            self._slices = self._informer("discovery.k8s.io/v1", "endpointslices")
            self._slices.add_index(_SLICE_INDEX, _slice_service_key)
            self._slices.add_handler(self._on_slice, self._on_slice_update, self._on_slice)
        else:
            self._endpoints = self._informer("v1", "endpoints")
            self._endpoints.add_handler(self._on_object, lambda _old, new: self._on_object(new), self._on_object)
        informers = [i for i in (self._services, self._slices, self._endpoints) if i is not None]
        for inf in informers:
            await inf.start()
        for inf in informers:
            if not await inf.wait_for_sync(self.sync_timeout):
                # Serving names late is better than not serving the rest of the world.
                log.warning("cluster DNS: %s not synced after %ss; serving anyway",
                            inf.resource.plural, self.sync_timeout)
        try:
            for host, port in self.listen:
                await self._bind(host, port)
        except OSError:
            await self.stop()
            raise
        configured = self._configured_upstreams
        ups = [parse_upstream(u) for u in configured] if configured is not None else \
            upstreams_from_resolv_conf(self.resolv_conf)
        self.upstreams = [u for u in ups if not self._is_self(u)]
        for u in ups:
            if u not in self.upstreams:
                log.warning("cluster DNS: dropping upstream %s:%s, which is this server", *u)
        if not self.upstreams:
            log.warning("cluster DNS: no upstream resolvers; names outside %s will get SERVFAIL",
                        self.zone.origin)
        log.info("cluster DNS for %s on %s, upstreams %s", self.zone.origin,
                 ", ".join(f"{h}:{p}" for h, p in self.addresses), self.upstreams)

    async def stop(self) -> None:
        self._running = False
        for t in self._udp:
            t.close()
        for s in self._tcp:
            s.close()
        for w in list(self._tcp_writers):
            w.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for s in self._tcp:
            with contextlib.suppress(Exception):
                await s.wait_closed()
        self._udp.clear()
        self._tcp.clear()
        for inf in self._own_informers:
            await inf.stop()
        self._own_informers.clear()

    async def __aenter__(self) -> ClusterDNS:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _informer(self, api_version: str, plural: str) -> Informer:
        return informer_for(self.client, self.client.resource(api_version, plural), self._own_informers)

    async def _serves_slices(self) -> bool:
        try:
            resources = await self.client.discover("discovery.k8s.io/v1")
        except StatusError:
            return False
        return any(r.get("name") == "endpointslices" for r in resources)

    async def _bind(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                if family == socket.AF_INET6:
                    for s in (udp, tcp):
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                with contextlib.suppress(OSError):
                    # Bursts from many pods should queue, not drop (capped by rmem_max).
                    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                udp.bind((host, port))
                bound = udp.getsockname()[1]
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((host, bound))
            except OSError:
                udp.close()
                tcp.close()
                if port != 0 or attempt == 19:
                    raise
                continue  # the free UDP port was taken for TCP: try another
            break
        udp.setblocking(False)
        tcp.setblocking(False)
        tcp.listen(128)
        transport, _ = await loop.create_datagram_endpoint(lambda: _UDPProtocol(self), sock=udp)
        self._udp.append(transport)
        self._tcp.append(await asyncio.start_server(self._tcp_client, sock=tcp))
        self.addresses.append((host, bound))

    def _is_self(self, upstream: tuple[str, int]) -> bool:
        ip = _ip(upstream[0].split("%", 1)[0])
        if ip is None:
            return False
        for host, port in self.addresses:
            if port != upstream[1]:
                continue
            mine = _ip(host)
            if mine is None or mine == ip:
                return True
            if mine.is_unspecified and mine.version == ip.version and ip.is_loopback:
                return True
        return False

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if len(self._tasks) >= self.max_pending or not self._running:
            coro.close()  # overloaded: the client will ask again
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ informer events

    def _on_object(self, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        self._sync_service(f"{meta.get('namespace')}/{meta.get('name')}")

    def _on_slice(self, obj: Obj) -> None:
        for key in _slice_service_key(obj):
            self._sync_service(key)

    def _on_slice_update(self, old: Obj, new: Obj) -> None:
        keys = set(_slice_service_key(old)) | set(_slice_service_key(new))
        for key in keys:
            self._sync_service(key)

    def _sync_service(self, key: str) -> None:
        """Recompute one Service's records from the caches and swap them into the zone."""
        if not self._running or self._services is None:
            return
        svc = self._services.get(key)
        records: Records = {}
        if svc is not None:
            if self._slices is not None:
                slices = self._slices.by_index(_SLICE_INDEX, key)
            else:
                ep = self._endpoints.get(key) if self._endpoints is not None else None
                slices = slices_from_endpoints(ep) if ep else []
            records = service_records(svc, slices, self.zone.origin)
            if key == KUBE_DNS:
                self._add_nameserver_records(records)
        self._invalidate(self.zone.set_source(key, records))

    def _add_nameserver_records(self, records: Records) -> None:
        # The apex NS is ns.dns.<zone>; give it the kube-dns addresses, as CoreDNS does.
        svc_name = Name([b"kube-dns", b"kube-system", b"svc", *self.zone.origin.labels])
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            rdatas = records.get(svc_name, {}).get(rdtype)
            if rdatas:
                records.setdefault(self.zone.ns_name, {})[rdtype] = set(rdatas)

    def _invalidate(self, names: set[Name]) -> None:
        cache, origin = self._cache, self.zone.origin
        seen: set[Name] = set()
        for name in names:
            n = name
            while n not in seen:
                seen.add(n)
                cache.pop(n.to_wire(), None)
                # Ancestors may flip between NXDOMAIN and NODATA (empty non-terminals).
                if n == origin or not n.is_subdomain(origin):
                    break
                n = n.parent()

    # ------------------------------------------------------------------ answering

    def _fast(self, data: bytes, tcp: bool) -> bytes | None:
        """The reply from the cache for a plain query, or None to take the slow path."""
        if len(data) < 17 or (data[2] & 0xFB) != 0x01 or data[4:10] != _QUERY_COUNTS:
            return None  # not (a query, opcode QUERY, not truncated, RD set, one question)
        end = data.find(0, 12)
        if end < 0:
            return None
        qend = end + 5
        n = len(data)
        arcount = data[10:12]
        if arcount == b"\x00\x00":
            if n != qend:
                return None
            edns = False
            limit = 512
        elif arcount == b"\x00\x01":
            # One OPT RR: root owner, type 41, class = UDP size, version 0, DO clear.
            if (n < qend + 11 or data[qend] != 0 or data[qend + 1:qend + 3] != b"\x00\x29"
                    or data[qend + 6] != 0 or data[qend + 7] & 0x80
                    or qend + 11 + ((data[qend + 9] << 8) | data[qend + 10]) != n):
                return None
            edns = True
            limit = (data[qend + 3] << 8) | data[qend + 4]
            if limit < 512:
                limit = 512
            elif limit > MAX_UDP:
                limit = MAX_UDP
        else:
            return None
        entries = self._cache.get(data[12:end + 1].lower())
        if entries is None:
            return None
        entry = entries.get(data[end + 1:qend])
        if entry is None:
            return None
        expires, plain, with_opt, rotor = entry
        if expires and expires < time.monotonic():
            return None
        if rotor is not None:
            plain, with_opt = rotor.next()
        wire = with_opt if edns else plain
        reply = data[:2] + wire[2:12] + data[12:qend] + wire[qend:]
        if tcp or len(reply) <= limit:
            return reply
        return _bare_reply(data, qend, wire[2] | 0x02, wire[3], edns)

    def _reply(self, q: _Query, entry: Entry) -> bytes:
        _, plain, with_opt, rotor = entry
        if rotor is not None:
            plain, with_opt = rotor.next()
        wire = with_opt if q.edns else plain
        data, qend = q.data, q.qend
        reply = data[:2] + wire[2:12] + data[12:qend] + wire[qend:]
        if not q.tcp and len(reply) > q.limit:
            reply = _bare_reply(data, qend, wire[2] | 0x02, wire[3], q.edns)
        if not q.rd:
            b = bytearray(reply)
            b[2] &= 0xFE
            reply = bytes(b)
        return reply

    def _rcode_reply(self, q: _Query, rcode: int) -> bytes:
        return _bare_reply(q.data, q.qend, 0x80 | (0x01 if q.rd else 0), 0x80 | rcode, q.edns)

    def _slow(self, data: bytes, tcp: bool) -> bytes | Coroutine[Any, Any, bytes | None] | None:
        """Answer anything: a reply, a coroutine that will produce one, or None to drop the packet."""
        try:
            msg = dns.message.from_wire(data)
        except dns.message.ShortHeader:
            return None
        except Exception:
            return _formerr(data)
        if msg.flags & dns.flags.QR:
            return None  # never answer answers
        if msg.opcode() != dns.opcode.QUERY:
            return self._error(msg, dns.rcode.NOTIMP)
        if len(msg.question) != 1:
            return self._error(msg, dns.rcode.FORMERR)
        if msg.edns > 0:
            return self._error(msg, dns.rcode.BADVERS)
        question = msg.question[0]
        qname = question.name.canonicalize()
        qtype, qclass = question.rdtype, question.rdclass
        key = qname.to_wire()
        qend = 12 + len(key) + 4
        if data[12:12 + len(key)].lower() != key:
            data = msg.to_wire()  # a compressed question: reply to its plain form
        edns = msg.edns >= 0
        limit = 65535 if tcp else (min(max(msg.payload, 512), MAX_UDP) if edns else 512)
        q = _Query(data, qend, edns, limit, bool(msg.flags & dns.flags.RD), tcp)
        if qclass != dns.rdataclass.IN or qtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            return self._rcode_reply(q, dns.rcode.REFUSED)
        if dns.rdatatype.is_metatype(qtype) and qtype != dns.rdatatype.ANY:
            return self._rcode_reply(q, dns.rcode.FORMERR)
        qtc = data[qend - 4:qend]
        entry = (self._cache.get(key) or {}).get(qtc)
        if entry is not None and not (entry[0] and entry[0] < time.monotonic()):
            return self._reply(q, entry)
        ans = self.zone.resolve(qname, qtype)
        if ans.forward:
            if not self.upstreams:
                return self._rcode_reply(q, dns.rcode.SERVFAIL)
            return self._forwarded(q, qname, qtype, key, qtc, bool(msg.ednsflags & dns.flags.DO))
        if ans.chase is not None:
            return self._chased(q, qname, qtype, key, qtc, ans)
        entry = _zone_entry(qname, qtype, ans, time.monotonic() + self.zone.ttl if ans.volatile else 0.0)
        self._store(key, qtc, entry)
        return self._reply(q, entry)

    def _error(self, msg: dns.message.Message, rcode: int) -> bytes:
        r = dns.message.make_response(msg, recursion_available=True, our_payload=EDNS_PAYLOAD)
        r.set_rcode(rcode)
        return r.to_wire()

    def _store(self, key: bytes, qtc: bytes, entry: Entry) -> None:
        entries = self._cache.get(key)
        if entries is None:
            if len(self._cache) >= self.cache_names:
                self._cache.clear()  # a flood of random names: start over rather than grow
            entries = self._cache[key] = {}
        entries[qtc] = entry

    # ------------------------------------------------------------------ upstreams

    async def _forwarded(self, q: _Query, qname: Name, qtype: int, key: bytes, qtc: bytes,
                         do: bool) -> bytes:
        if do:
            # DNSSEC-aware askers get the upstream's records fresh, never our cached copies.
            r = await self._exchange(qname, qtype, do=True)
            entry = self._upstream_entry(r, do=True)[0] if r is not None else None
        else:
            entry = await self._shared_exchange(key, qtc, qname, qtype)
        if entry is None:
            return self._rcode_reply(q, dns.rcode.SERVFAIL)
        return self._reply(q, entry)

    async def _shared_exchange(self, key: bytes, qtc: bytes, qname: Name, qtype: int) -> Entry | None:
        """One upstream query for everyone asking the same question meanwhile; caches the answer."""
        flight = key + qtc
        fut = self._inflight.get(flight)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[flight] = fut
        entry: Entry | None = None
        try:
            r = await self._exchange(qname, qtype)
            if r is not None:
                entry, ttl = self._upstream_entry(r)
                if entry is not None and ttl > 0:
                    self._store(key, qtc, entry)
        finally:
            del self._inflight[flight]
            fut.set_result(entry)
        return entry

    async def _exchange(self, qname: Name, qtype: int, *, do: bool = False) -> dns.message.Message | None:
        """Ask the upstreams in order; the first real answer, else the last SERVFAIL/REFUSED, else None."""
        query = dns.message.make_query(qname, qtype, use_edns=0, payload=EDNS_PAYLOAD, want_dnssec=do)
        last = None
        for host, port in self.upstreams:
            try:
                r, _ = await dns.asyncquery.udp_with_fallback(query, host, timeout=self.upstream_timeout,
                                                              port=port)
            except (dns.exception.DNSException, OSError, EOFError, ValueError) as e:
                log.debug("cluster DNS: upstream %s:%s failed for %s: %r", host, port, qname, e)
                continue
            if r.rcode() in (dns.rcode.SERVFAIL, dns.rcode.REFUSED):
                last = r
                continue
            return r
        return last

    def _upstream_entry(self, r: dns.message.Message, *, do: bool = False) -> tuple[Entry | None, int]:
        """An upstream answer rendered as a cache entry, with how long it may be cached (0: not)."""
        rcode = r.rcode()
        ttl = 0
        if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            ttls = [rr.ttl for rr in (*r.answer, *r.authority)]
            ttls += [rr[0].minimum for rr in r.authority if rr.rdtype == dns.rdatatype.SOA and len(rr)]
            ttl = max(0, min(min(ttls) if ttls else self.zone.ttl, self.cache_max_ttl))
        try:
            r.id = 0
            r.flags |= dns.flags.RA
            r.use_edns(False)
            plain = r.to_wire()
            r.use_edns(0, ednsflags=dns.flags.DO if do else 0, payload=EDNS_PAYLOAD)
            with_opt = r.to_wire()
        except dns.exception.DNSException:
            return None, 0
        return (time.monotonic() + ttl, plain, with_opt, None), ttl

    async def _chased(self, q: _Query, qname: Name, qtype: int, key: bytes, qtc: bytes,
                      ans: Answer) -> bytes:
        """An ExternalName's CNAME plus the target's records from the upstreams."""
        assert ans.chase is not None
        r = await self._exchange(ans.chase, qtype) if self.upstreams else None
        if r is None or r.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            # The CNAME alone (not cached): the asker still learns where the name points.
            plain, with_opt = _render(qname, qtype, _ZONE_FLAGS, ans)
            return self._reply(q, (0.0, plain, with_opt, None))
        full = Answer(rcode=r.rcode(), answer=ans.answer + list(r.answer),
                      authority=[] if r.answer else list(r.authority))
        ttl = min([self.zone.ttl] + [rr.ttl for rr in (*r.answer, *r.authority)])
        plain, with_opt = _render(qname, qtype, _ZONE_FLAGS & ~dns.flags.AA, full)
        entry = (time.monotonic() + ttl, plain, with_opt, None)
        if ttl > 0:
            self._store(key, qtc, entry)
        return self._reply(q, entry)

    # ------------------------------------------------------------------ TCP

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tcp_writers.add(writer)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                data = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")),
                                              self.tcp_idle_timeout)
                reply = self._fast(data, True)
                if reply is None:
                    slow = self._slow(data, True)
                    reply = slow if slow is None or isinstance(slow, bytes) else await slow
                if reply is not None:
                    writer.write(len(reply).to_bytes(2, "big") + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("cluster DNS: TCP connection failed")
        finally:
            self._tcp_writers.discard(writer)
            writer.close()


# ---------------------------------------------------------------------- the kube-dns Service

KUBE_DNS_LABELS = {
    "k8s-app": "kube-dns",
    "kubernetes.io/cluster-service": "true",
    "kubernetes.io/name": "CoreDNS",
}
KUBE_DNS_ANNOTATIONS = {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}


def kube_dns_ip(service_cidr: str) -> str:
    """The conventional DNS Service address: the 10th of the service range (10.43.0.10 for k3s)."""
    return str(ipaddress.ip_network(service_cidr, strict=False).network_address + 10)


async def ensure_kube_dns_service(client: Client, cluster_ip: str | Sequence[str], *,
                                  endpoints: Sequence[str] | None = None, port: int = 53,
                                  selector: dict[str, str] | None = None,
                                  namespace: str = "kube-system", name: str = "kube-dns") -> Obj:
    """Create or update the kube-dns Service with the given ClusterIP(s); returns it.

    Ports, labels and annotations are those of k3s's CoreDNS manifest (dns 53/UDP,
    dns-tcp 53/TCP, metrics 9153/TCP). The built-in server is no pod, so by default
    the Service has no selector; with `endpoints` (the addresses ClusterDNS listens
    on, and its `port`) an EndpointSlice per family is written for the service
    proxy to route to. A ClusterIP cannot change in place: a Service with other
    addresses is replaced.
    """
    ips = [cluster_ip] if isinstance(cluster_ip, str) else list(cluster_ip)
    families = ["IPv6" if ":" in ip else "IPv4" for ip in ips]
    spec: Obj = {
        "type": "ClusterIP",
        "clusterIP": ips[0],
        "clusterIPs": ips,
        "ipFamilies": families,
        "ipFamilyPolicy": "RequireDualStack" if len(ips) > 1 else "SingleStack",
        "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": port},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": port},
            {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
        ],
    }
    if selector:
        spec["selector"] = dict(selector)
    want: Obj = {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": name, "namespace": namespace, "labels": dict(KUBE_DNS_LABELS),
                              "annotations": dict(KUBE_DNS_ANNOTATIONS)},
                 "spec": spec}
    services = client.resource("v1", "services")
    svc: Obj | None = None
    for _ in range(5):
        try:
            cur = await services.get(name, namespace)
        except StatusError as e:
            if e.code != 404:
                raise
            cur = None
        try:
            if cur is None:
                svc = await services.create(want, namespace)
            elif (cur.get("spec") or {}).get("clusterIP") != ips[0]:
                log.warning("kube-dns Service has ClusterIP %s, not %s: replacing it",
                            (cur.get("spec") or {}).get("clusterIP"), ips[0])
                await services.delete(name, namespace)
                continue
            else:
                meta = cur["metadata"]
                cspec = cur["spec"]
                changed = False
                for field, wanted in (("labels", KUBE_DNS_LABELS), ("annotations", KUBE_DNS_ANNOTATIONS)):
                    have = meta.get(field) or {}
                    if any(have.get(k) != v for k, v in wanted.items()):
                        meta[field] = {**have, **wanted}
                        changed = True
                if _port_keys(cspec.get("ports")) != _port_keys(spec["ports"]):
                    cspec["ports"] = spec["ports"]
                    changed = True
                if (cspec.get("selector") or None) != (spec.get("selector") or None):
                    if selector:
                        cspec["selector"] = dict(selector)
                    else:
                        cspec.pop("selector", None)
                    changed = True
                svc = await services.update(cur, namespace) if changed else cur
        except StatusError as e:
            if e.code in (409,):
                continue  # raced with another writer: read again
            raise
        break
    if svc is None:
        raise RuntimeError("could not write the kube-dns Service")
    if endpoints is not None:
        await _ensure_dns_slices(client, svc, list(endpoints), port)
    return svc


def _port_keys(ports: Any) -> list[tuple[Any, ...]]:
    return sorted((p.get("name"), p.get("port"), p.get("protocol", "TCP"), p.get("targetPort"))
                  for p in ports or [])


async def _ensure_dns_slices(client: Client, svc: Obj, endpoints: list[str], port: int) -> None:
    slices = client.resource("discovery.k8s.io/v1", "endpointslices")
    meta = svc["metadata"]
    ns, svc_name = meta["namespace"], meta["name"]
    by_family: dict[str, list[str]] = {"IPv4": [], "IPv6": []}
    for ip in endpoints:
        by_family["IPv6" if ":" in ip else "IPv4"].append(ip)
    for family, addrs in by_family.items():
        slice_name = f"{svc_name}-cluster-dns-{family.lower()}"
        try:
            cur = await slices.get(slice_name, ns)
        except StatusError as e:
            if e.code != 404:
                raise
            cur = None
        if not addrs:
            if cur is not None:
                with contextlib.suppress(StatusError):
                    await slices.delete(slice_name, ns)
            continue
        want: Obj = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": slice_name, "namespace": ns,
                         "labels": {SERVICE_NAME_LABEL: svc_name,
                                    "endpointslice.kubernetes.io/managed-by": DNS_SLICE_MANAGER},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc_name,
                                              "uid": meta.get("uid", ""), "controller": True,
                                              "blockOwnerDeletion": True}]},
            "addressType": family,
            "endpoints": [{"addresses": [a], "conditions": {"ready": True, "serving": True,
                                                            "terminating": False}} for a in addrs],
            "ports": [{"name": "dns", "port": port, "protocol": "UDP"},
                      {"name": "dns-tcp", "port": port, "protocol": "TCP"}],
        }
        if cur is None:
            await slices.create(want, ns)
        elif any(cur.get(k) != want[k] for k in ("addressType", "endpoints", "ports")) or \
                (cur["metadata"].get("labels") or {}) != want["metadata"]["labels"]:
            want["metadata"]["resourceVersion"] = cur["metadata"].get("resourceVersion")
            await slices.update(want, ns)
