"""The userspace service proxy: asyncio TCP and UDP listeners forwarding to endpoints, for
nodes where nftables cannot be used (no nf_tables in the kernel, no CAP_NET_ADMIN for it).

`UserspaceProxy` keeps one listener per (address, port, protocol) with a `Target`: its
endpoints, chosen round robin, or by client address for sessionAffinity ClientIP (the
choice is remembered for the affinity timeout and dropped when that endpoint leaves the
pool). Changing a Target's endpoints never rebinds the socket, so established connections
and the listener stay; removing it closes the listener (established connections carry on
until either side closes).

A cluster IP is not an address of any interface, so a listener on one would never see a
packet: as IPVS mode's kube-ipvs0, the addresses are put on a dummy link (`kyb-svc`; on
`lo` where the kernel has no dummy driver) when we may (`assign_addresses`), and every socket is bound with IP_FREEBIND so binding never
depends on the order the address and the listener appear. NodePorts listen on the
wildcard address, which covers every node address and 127.0.0.1.

What userspace cannot do: clients' source addresses are not preserved (endpoints see the
node), so externalTrafficPolicy Local only narrows the pool to local endpoints; a Target
with no endpoints accepts and resets TCP connections and drops UDP datagrams.

TCP is relayed by a pair of protocols with flow control (each side stops reading while the
other's write buffer is full) and half-close (EOF is passed on). UDP keeps one connected
socket per client address and endpoint, closed after `udp_idle` seconds without traffic.

`netns` (a path such as /run/netns/NAME) makes every socket, listening and outgoing, in
that namespace.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from kybernetes.runtime.nsutil import socket_in_netns

log = logging.getLogger(__name__)

ListenKey = tuple[str, int, str]  # (address, port, "tcp" | "udp" | "sctp")
_IP_FREEBIND = 15
_IPV6_FREEBIND = 78


@dataclass(frozen=True)
class Target:
    endpoints: tuple[tuple[str, int], ...]
    affinity_timeout: int | None = None
    cluster_ip: bool = False  # a Service VIP: assign it to the dummy link


class _Pool:
    """Endpoint choice for one listener: round robin, or sticky per client address."""

    def __init__(self, target: Target):
        self.target = target
        self._rr = itertools.count()
        self._affinity: dict[str, tuple[tuple[str, int], float]] = {}

    def choose(self, client: str) -> list[tuple[str, int]]:
        """Endpoints to try, in order, for a new connection from `client`."""
        eps = list(self.target.endpoints)
        if not eps:
            return []
        timeout = self.target.affinity_timeout
        if timeout:
            now = time.monotonic()
            hit = self._affinity.get(client)
            if hit is not None and hit[1] > now and hit[0] in eps:
                first = hit[0]
            else:
                first = eps[next(self._rr) % len(eps)]
            self._affinity[client] = (first, now + timeout)
            if len(self._affinity) > 65536:
                self._affinity = {c: v for c, v in self._affinity.items() if v[1] > now}
        else:
            first = eps[next(self._rr) % len(eps)]
        i = eps.index(first)
        return eps[i:] + eps[:i]

    def update(self, target: Target) -> None:
        self.target = target
        live = set(target.endpoints)
        self._affinity = {c: v for c, v in self._affinity.items() if v[0] in live}


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class UserspaceProxy:
    """Listeners for Service entry points, kept in line with update()/replace()."""

    def __init__(self, *, netns: str | None = None, assign_addresses: bool = True, link: str = "kyb-svc",
                 udp_idle: float = 30.0, connect_timeout: float = 5.0):
        self.netns = netns
        self.assign_addresses = assign_addresses
        self.link = link
        self.udp_idle = udp_idle
        self.connect_timeout = connect_timeout
        self.listeners: dict[ListenKey, _Listener] = {}
        self._assigned: set[str] = set()
        self._link_ready = False
        self._warned_assign = False

    # ------------------------------------------------------------------ state

    async def replace(self, targets: Mapping[ListenKey, Target | None]) -> None:
        """Make the listeners exactly `targets`."""
        changes: dict[ListenKey, Target | None] = {k: None for k in self.listeners if k not in targets}
        changes.update(targets)
        await self.update(changes)

    async def update(self, changes: Mapping[ListenKey, Target | None]) -> None:
        """Apply changed entries; None removes a listener."""
        for key, target in changes.items():
            current = self.listeners.get(key)
            if target is None:
                if current is not None:
                    del self.listeners[key]
                    current.close()
                continue
            if key[2] == "sctp":
                continue  # asyncio has no SCTP transport
            if current is not None:
                current.pool.update(target)
                continue
            if target.cluster_ip:
                await self._assign(key[0])
            try:
                self.listeners[key] = await self._listen(key, target)
            except OSError as e:
                log.warning("userspace proxy: cannot listen on %s:%s/%s: %s", *key, e)
        wanted = {k[0] for k, li in self.listeners.items() if li.pool.target.cluster_ip}
        for ip in self._assigned - wanted:
            await self._unassign(ip)

    async def close(self) -> None:
        for li in self.listeners.values():
            li.close()
        self.listeners.clear()
        for ip in list(self._assigned):
            await self._unassign(ip)

    # ------------------------------------------------------------------ sockets

    def socket(self, family: int, kind: int) -> socket.socket:
        if self.netns is None:
            return socket.socket(family, kind)
        return socket_in_netns(self.netns, family, kind)

    async def _listen(self, key: ListenKey, target: Target) -> _Listener:
        host, port, proto = key
        family = _family(host)
        sock = self.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
            sock.bind((host, port))
            sock.setblocking(False)
            listener = _Listener(self, key, _Pool(target))
            loop = asyncio.get_running_loop()
            if proto == "tcp":
                sock.listen(1024)
                listener.server = await loop.create_server(lambda: _Inbound(self, listener), sock=sock)
            else:
                listener.udp, _ = await loop.create_datagram_endpoint(lambda: _UdpFront(self, listener),
                                                                      sock=sock)
                listener.sweeper = loop.create_task(listener.sweep())
        except BaseException:
            sock.close()
            raise
        return listener

    async def connect(self, endpoints: list[tuple[str, int]], protocol: asyncio.Protocol) -> asyncio.Transport:
        """A TCP connection to the first endpoint that answers."""
        loop = asyncio.get_running_loop()
        last: Exception | None = None
        for host, port in endpoints:
            try:
                if self.netns is None:
                    transport, _ = await asyncio.wait_for(
                        loop.create_connection(lambda: protocol, host, port), self.connect_timeout)
                    return transport  # type: ignore[return-value]
                sock = self.socket(_family(host), socket.SOCK_STREAM)
                try:
                    sock.setblocking(False)
                    await asyncio.wait_for(loop.sock_connect(sock, (host, port)), self.connect_timeout)
                    transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
                except BaseException:
                    sock.close()
                    raise
                return transport  # type: ignore[return-value]
            except (OSError, TimeoutError) as e:
                last = e
        raise last or ConnectionRefusedError("no endpoints")

    # ------------------------------------------------------------------ cluster IPs on a dummy link

    async def _ip(self, *args: str) -> tuple[int, str]:
        prefix = ["nsenter", f"--net={self.netns}"] if self.netns else []
        proc = await asyncio.create_subprocess_exec(*prefix, "ip", *args, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        return proc.returncode or 0, err.decode(errors="replace").strip()

    async def _assign(self, ip: str) -> None:
        if not self.assign_addresses or ip in self._assigned:
            return
        try:
            if not self._link_ready:
                rc, err = await self._ip("link", "add", self.link, "type", "dummy")
                if rc and "exists" not in err:
                    # No dummy driver in this kernel: loopback's addresses are just as local.
                    log.info("userspace proxy: no dummy link (%s); putting cluster IPs on lo", err)
                    self.link = "lo"
                await self._ip("link", "set", self.link, "up")
                self._link_ready = True
            plen = "128" if ":" in ip else "32"
            rc, err = await self._ip("addr", "add", f"{ip}/{plen}", "dev", self.link)
            if rc and "exists" not in err:
                raise OSError(err)
            self._assigned.add(ip)
        except OSError as e:
            if not self._warned_assign:
                log.warning("userspace proxy: cannot put cluster IPs on %s (they will not be reachable): %s",
                            self.link, e)
                self._warned_assign = True

    async def _unassign(self, ip: str) -> None:
        self._assigned.discard(ip)
        plen = "128" if ":" in ip else "32"
        await self._ip("addr", "del", f"{ip}/{plen}", "dev", self.link)


class _Listener:
    def __init__(self, proxy: UserspaceProxy, key: ListenKey, pool: _Pool):
        self.proxy = proxy
        self.key = key
        self.pool = pool
        self.server: asyncio.Server | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.sweeper: asyncio.Task[None] | None = None
        self.sessions: dict[tuple[str, int], _UdpSession] = {}

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.udp is not None:
            self.udp.close()
        if self.sweeper is not None:
            self.sweeper.cancel()
        for s in self.sessions.values():
            s.close()
        self.sessions.clear()

    async def sweep(self) -> None:
        idle = self.proxy.udp_idle
        while True:
            await asyncio.sleep(max(idle / 4, 0.05))
            now = time.monotonic()
            for addr, s in list(self.sessions.items()):
                if now - s.last > idle:
                    s.close()
                    self.sessions.pop(addr, None)


# ---------------------------------------------------------------------- TCP

class _Pipe(asyncio.Protocol):
    """One side of a relayed connection; writes what it reads to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.early: list[bytes] = []
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True  # half-close: keep writing the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def link(self, peer: _Pipe) -> None:
        """Join two connected pipes and pass on what arrived before."""
        self.peer, peer.peer = peer, self
        for side, other in ((self, peer), (peer, self)):
            for data in side.early:
                other.transport.write(data)  # type: ignore[union-attr]
            side.early.clear()
            if side.eof and other.transport is not None and other.transport.can_write_eof():
                other.transport.write_eof()
            if side.lost and other.transport is not None:
                other.transport.close()


class _Inbound(_Pipe):
    def __init__(self, proxy: UserspaceProxy, listener: _Listener):
        super().__init__()
        self.proxy = proxy
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername") or ("", 0)
        endpoints = self.listener.pool.choose(peer[0])
        if not endpoints:
            transport.abort()  # no endpoints: the client sees a reset, as a refused connection
            return
        # Referenced from the protocol, which its transport keeps, so the task is not collected.
        self.connecting = asyncio.get_running_loop().create_task(self._connect(endpoints))

    async def _connect(self, endpoints: list[tuple[str, int]]) -> None:
        out = _Pipe()
        try:
            await self.proxy.connect(endpoints, out)
        except (OSError, TimeoutError) as e:
            log.debug("userspace proxy %s: no endpoint answered: %s", self.listener.key, e)
            if self.transport is not None:
                self.transport.abort()
            return
        if self.lost:
            out.transport.close()  # type: ignore[union-attr]
            return
        self.link(out)


# ---------------------------------------------------------------------- UDP

class _UdpFront(asyncio.DatagramProtocol):
    def __init__(self, proxy: UserspaceProxy, listener: _Listener):
        self.proxy = proxy
        self.listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        key = (addr[0], addr[1])
        session = self.listener.sessions.get(key)
        if session is None or session.closed:
            endpoints = self.listener.pool.choose(addr[0])
            if not endpoints:
                return
            session = _UdpSession(self.proxy, self.listener, addr, endpoints[0])
            self.listener.sessions[key] = session
        session.send(data)


class _UdpSession(asyncio.DatagramProtocol):
    """One client address's flow to its endpoint, through a connected socket."""

    def __init__(self, proxy: UserspaceProxy, listener: _Listener, client: tuple[str, int],
                 endpoint: tuple[str, int]):
        self.listener = listener
        self.client = client
        self.endpoint = endpoint
        self.last = time.monotonic()
        self.transport: asyncio.DatagramTransport | None = None
        self.queue: list[bytes] = []
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._open(proxy))
        self.task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.debug("userspace proxy %s: cannot reach %s: %s", self.listener.key, self.endpoint,
                      task.exception())
            self.closed = True

    async def _open(self, proxy: UserspaceProxy) -> None:
        sock = proxy.socket(_family(self.endpoint[0]), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self.endpoint)
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        if self.closed:
            transport.close()
            return
        self.transport = transport
        for data in self.queue:
            transport.sendto(data)
        self.queue.clear()

    def send(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.transport is not None:
            self.transport.sendto(data)
        elif len(self.queue) < 64:
            self.queue.append(data)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.last = time.monotonic()
        front = self.listener.udp
        if front is not None:
            front.sendto(data, self.client)

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors from the endpoint: the client will time out and retry

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        elif not self.task.done():
            self.task.cancel()
