"""Just enough rtnetlink (NETLINK_ROUTE) for the pod network: links (bridge, veth pairs whose
peer is born inside another network namespace), addresses, routes, and running a function
inside a network namespace.

Why not pyroute2, the well-kept library for this: it opens a socket in another namespace
by forking a child process that passes the socket back, which costs ~7 ms per namespace
and is a fork of a threaded asyncio process; its synchronous API runs on an event loop of
its own. Doing a dual-stack pod's netlink steps it measured 10.5 ms per pod (p50) here,
where the whole of PodNetwork.add over these few messages takes 2.3 ms and Debian's CNI
bridge+host-local plugins 16 ms (35 ms mean, 70 ms p99); bench/podnet.py prints all three.
What the pod network needs is a dozen fixed message shapes, so they are spelled out here.

A netlink socket belongs for life to the namespace it was created in, so `Rtnl.open(netns)`
creates its socket on a short-lived thread that entered that namespace (`run_in_netns`) and
then works from any thread: no setns() of a long-lived thread, and nothing left behind in
a pod's namespace if switching back were to fail. Calls are blocking and quick (tens of
microseconds, the kernel's veth creation a millisecond or so); callers run them off the
event loop. One `Rtnl` is not thread-safe: use it from one thread at a time.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from kybernetes.runtime.nsutil import CLONE_NEWNET, setns

T = TypeVar("T")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_ACK_TLVS = 0x200
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSGERR_ATTR_MSG = 1

IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_MASTER = 10
IFLA_PROTINFO = 12
IFLA_LINKINFO = 18
IFLA_NET_NS_FD = 28
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4
NLA_F_NESTED = 0x8000
AF_BRIDGE = 7

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFA_F_NODAD = 0x02

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_TABLE = 15

RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1
RTPROT_BOOT = 3

_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")

_NAMES = {RTM_NEWLINK: "RTM_NEWLINK", RTM_DELLINK: "RTM_DELLINK", RTM_GETLINK: "RTM_GETLINK",
          RTM_SETLINK: "RTM_SETLINK",
          RTM_NEWADDR: "RTM_NEWADDR", RTM_DELADDR: "RTM_DELADDR", RTM_GETADDR: "RTM_GETADDR",
          RTM_NEWROUTE: "RTM_NEWROUTE", RTM_DELROUTE: "RTM_DELROUTE", RTM_GETROUTE: "RTM_GETROUTE"}


class NetlinkError(OSError):
    """A request the kernel refused; errno is the kernel's, the message says what was asked."""


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    flags: int
    mtu: int
    master: int
    kind: str
    mac: str

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gateway: IPAddress | None
    oif: int
    table: int
    protocol: int


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """fn() run on a thread of its own inside the network namespace at path `netns`
    (/proc/<pid>/ns/net, /run/netns/NAME); in the calling thread when netns is None.

    setns() moves only the calling thread, and that thread ends right after, so neither a
    pool's thread nor the event loop's can be left in another namespace."""
    if netns is None:
        return fn()
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            out["error"] = e

    t = threading.Thread(target=work, name="netns", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def write_sysctl(name: str, value: str) -> None:
    """Write /proc/sys/<name with dots as slashes> in the calling thread's namespace (net.*
    entries belong to the namespace of the thread that opens them)."""
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(value)


def _attr(atype: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), atype) + payload
    return data + b"\0" * (-len(data) % 4)


def _u32(atype: int, value: int) -> bytes:
    return _attr(atype, struct.pack("=I", value))


def _str(atype: int, value: str) -> bytes:
    return _attr(atype, value.encode() + b"\0")


def _attrs(data: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    while offset + 4 <= len(data):
        length, atype = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield atype & 0x3FFF, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def _cstr(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


class Rtnl:
    """A NETLINK_ROUTE socket in one network namespace, with the requests the pod network makes."""

    def __init__(self, sock: socket.socket, netns: str | None):
        self.sock = sock
        self.netns = netns
        self._seq = 0
        self.cap_ack = False

    @classmethod
    def open(cls, netns: str | None = None, prepare: Callable[[], None] | None = None) -> Rtnl:
        """A socket in the namespace at `netns` (ours when None); `prepare()` runs in that
        namespace first, on the same thread hop (e.g. to write its sysctls)."""

        def make() -> socket.socket:
            if prepare is not None:
                prepare()
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)

        sock = run_in_netns(netns, make)
        try:
            sock.bind((0, 0))
            # Errors carry the kernel's own explanation ("Nexthop has invalid gateway"), and
            # acks need not echo our request back.
            cap_ack = True
            for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
                try:
                    sock.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:
                    cap_ack = False
        except BaseException:
            sock.close()
            raise
        rtnl = cls(sock, netns)
        rtnl.cap_ack = cap_ack
        return rtnl

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the protocol

    def request(self, mtype: int, flags: int, body: bytes, what: str = "") -> list[tuple[int, bytes]]:
        """Send one request; the replies' (type, body) until its ack (or a dump's end)."""
        self._seq += 1
        seq = self._seq
        dump = (flags & NLM_F_DUMP) == NLM_F_DUMP
        # A dump ends with NLMSG_DONE; everything else is asked for an ack, so success
        # and failure both have an answer to wait for.
        flags |= NLM_F_REQUEST if dump else NLM_F_REQUEST | NLM_F_ACK
        self.sock.send(_HDR.pack(_HDR.size + len(body), mtype, flags, seq, 0) + body)
        out: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 17)
            offset = 0
            while offset + _HDR.size <= len(data):
                length, rtype, rflags, rseq, _pid = _HDR.unpack_from(data, offset)
                if length < _HDR.size:
                    break
                payload = data[offset + _HDR.size:offset + length]
                offset += (length + 3) & ~3
                if rseq != seq:
                    continue  # a late answer to an earlier request that raised
                if rtype == NLMSG_ERROR:
                    code = struct.unpack_from("=i", payload)[0]
                    if code == 0:
                        return out
                    raise self._error(-code, mtype, rflags, payload, what, self.cap_ack)
                if rtype == NLMSG_DONE:
                    code = struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code < 0:
                        raise self._error(-code, mtype, 0, b"", what, self.cap_ack)
                    if dump:
                        return out
                    continue
                out.append((rtype, payload))

    @staticmethod
    def _error(code: int, mtype: int, rflags: int, payload: bytes, what: str, cap_ack: bool) -> NetlinkError:
        detail = ""
        if rflags & NLM_F_ACK_TLVS and len(payload) >= 4 + _HDR.size:
            # With NETLINK_CAP_ACK the kernel echoes only the header of our request.
            start = 4 + (_HDR.size if cap_ack else _HDR.unpack_from(payload, 4)[0])
            for atype, value in _attrs(payload, start):
                if atype == NLMSGERR_ATTR_MSG:
                    detail = _cstr(value)
        msg = f"{_NAMES.get(mtype, mtype)} {what}: {os.strerror(code)}".replace("  ", " ")
        if detail:
            msg += f" ({detail})"
        return NetlinkError(code, msg)

    # ------------------------------------------------------------------ links

    @staticmethod
    def _parse_link(body: bytes) -> Link:
        _fam, _type, index, flags, _change = _IFINFO.unpack_from(body)
        name, mtu, master, kind, mac = "", 0, 0, "", ""
        for atype, value in _attrs(body, _IFINFO.size):
            if atype == IFLA_IFNAME:
                name = _cstr(value)
            elif atype == IFLA_MTU:
                mtu = struct.unpack_from("=I", value)[0]
            elif atype == IFLA_MASTER:
                master = struct.unpack_from("=I", value)[0]
            elif atype == IFLA_ADDRESS:
                mac = ":".join(f"{b:02x}" for b in value)
            elif atype == IFLA_LINKINFO:
                for itype, ivalue in _attrs(value):
                    if itype == IFLA_INFO_KIND:
                        kind = _cstr(ivalue)
        return Link(index, name, flags, mtu, master, kind, mac)

    def link(self, name: str) -> Link | None:
        """The link called `name`, None if there is none."""
        try:
            replies = self.request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name), name)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for rtype, body in replies:
            if rtype == RTM_NEWLINK:
                return self._parse_link(body)
        return None

    def links(self) -> list[Link]:
        replies = self.request(RTM_GETLINK, NLM_F_DUMP, _IFINFO.pack(0, 0, 0, 0, 0), "dump")
        return [self._parse_link(b) for t, b in replies if t == RTM_NEWLINK]

    def add_bridge(self, name: str, *, mtu: int, mac: bytes | None = None) -> None:
        """Create bridge `name`, up. A MAC given here is kept: a bridge without one takes
        the lowest of its ports' and changes it as pods come and go, which leaves every
        pod's neighbour entry for the gateway stale."""
        attrs = _str(IFLA_IFNAME, name) + _u32(IFLA_MTU, mtu) + _attr(IFLA_LINKINFO, _str(IFLA_INFO_KIND, "bridge"))
        if mac is not None:
            attrs += _attr(IFLA_ADDRESS, mac)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + attrs,
                     f"bridge {name}")

    def add_veth(self, name: str, peer: str, *, peer_netns_fd: int | None, mtu: int, master: int = 0) -> None:
        """A veth pair: `name` here, up (enslaved to `master` when given), and `peer` created
        directly inside the namespace open at `peer_netns_fd`, so it never exists in ours
        under a temporary name and needs no rename. The peer is left down: the kernel
        configures it before the pair is joined, when opening it fails with ENOTCONN."""
        peer_attrs = _str(IFLA_IFNAME, peer) + _u32(IFLA_MTU, mtu)
        if peer_netns_fd is not None:
            peer_attrs += _u32(IFLA_NET_NS_FD, peer_netns_fd)
        peer_info = _IFINFO.pack(0, 0, 0, 0, 0) + peer_attrs
        info = _str(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        attrs = _str(IFLA_IFNAME, name) + _u32(IFLA_MTU, mtu) + _attr(IFLA_LINKINFO, info)
        if master:
            attrs += _u32(IFLA_MASTER, master)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, _IFINFO.pack(0, 0, 0, IFF_UP, IFF_UP) + attrs,
                     f"veth {name} peer {peer}")

    def set_link(self, index: int, *, up: bool | None = None, mtu: int | None = None,
                 master: int | None = None) -> None:
        flags = change = 0
        if up is not None:
            flags, change = (IFF_UP if up else 0), IFF_UP
        attrs = b""
        if mtu is not None:
            attrs += _u32(IFLA_MTU, mtu)
        if master is not None:
            attrs += _u32(IFLA_MASTER, master)
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, flags, change) + attrs, f"set link {index}")

    def set_bridge_port(self, index: int, *, hairpin: bool) -> None:
        """Hairpin mode of bridge port `index` (`bridge link set dev X hairpin on`)."""
        protinfo = _attr(IFLA_BRPORT_MODE, bytes([1 if hairpin else 0]))
        body = _IFINFO.pack(AF_BRIDGE, 0, index, 0, 0) + _attr(IFLA_PROTINFO | NLA_F_NESTED, protinfo)
        self.request(RTM_SETLINK, 0, body, f"bridge port {index} hairpin {'on' if hairpin else 'off'}")

    def delete_link(self, name: str) -> bool:
        """Delete link `name` (a veth takes its peer with it); False if it was not there."""
        try:
            self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + _str(IFLA_IFNAME, name), name)
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise
        return True

    # ------------------------------------------------------------------ addresses

    def add_address(self, index: int, iface: IPInterface, *, nodad: bool = False) -> None:
        """Add (or refresh) `iface` (address/prefix) on link `index`; for IPv6, `nodad` makes it
        usable at once instead of after duplicate address detection."""
        family = _family(iface.version)
        packed = iface.ip.packed
        flags = IFA_F_NODAD if nodad and iface.version == 6 else 0
        attrs = _attr(IFA_ADDRESS, packed) + _u32(IFA_FLAGS, flags)
        if iface.version == 4:
            attrs += _attr(IFA_LOCAL, packed)
        body = _IFADDR.pack(family, iface.network.prefixlen, flags & 0xFF, RT_SCOPE_UNIVERSE, index) + attrs
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, body, f"{iface} dev {index}")

    def delete_address(self, index: int, iface: IPInterface) -> bool:
        """Remove `iface` from link `index`; False if it was not there."""
        attr = IFA_LOCAL if iface.version == 4 else IFA_ADDRESS
        body = _IFADDR.pack(_family(iface.version), iface.network.prefixlen, 0, 0, index) + _attr(attr, iface.ip.packed)
        try:
            self.request(RTM_DELADDR, 0, body, f"{iface} dev {index}")
        except NetlinkError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                return False
            raise
        return True

    def addresses(self, index: int | None = None) -> list[IPInterface]:
        out: list[IPInterface] = []
        for rtype, body in self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0), "dump"):
            if rtype != RTM_NEWADDR:
                continue
            family, prefixlen, _flags, _scope, ifindex = _IFADDR.unpack_from(body)
            if index is not None and ifindex != index:
                continue
            addr = local = None
            for atype, value in _attrs(body, _IFADDR.size):
                if atype == IFA_ADDRESS:
                    addr = value
                elif atype == IFA_LOCAL:
                    local = value
            raw = local or addr
            if raw is not None:
                out.append(ipaddress.ip_interface((ipaddress.ip_address(raw), prefixlen)))
        return out

    # ------------------------------------------------------------------ routes

    def replace_route(self, dst: IPNetwork, *, gateway: IPAddress | None = None, oif: int = 0,
                      protocol: int = RTPROT_BOOT) -> None:
        """`ip route replace dst [via gateway] [dev oif] proto protocol` in the main table."""
        body = _RTMSG.pack(_family(dst.version), dst.prefixlen, 0, 0, RT_TABLE_MAIN, protocol,
                           RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        if dst.prefixlen:
            body += _attr(RTA_DST, dst.network_address.packed)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        if oif:
            body += _u32(RTA_OIF, oif)
        what = f"{dst}" + (f" via {gateway}" if gateway else "") + (f" dev {oif}" if oif else "")
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, what)

    def delete_route(self, route: Route) -> bool:
        body = _RTMSG.pack(_family(route.dst.version), route.dst.prefixlen, 0, 0, RT_TABLE_MAIN,
                           route.protocol, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
        if route.dst.prefixlen:
            body += _attr(RTA_DST, route.dst.network_address.packed)
        if route.gateway is not None:
            body += _attr(RTA_GATEWAY, route.gateway.packed)
        try:
            self.request(RTM_DELROUTE, 0, body, str(route.dst))
        except NetlinkError as e:
            if e.errno == errno.ESRCH:
                return False
            raise
        return True

    def routes(self, version: int, *, protocol: int | None = None) -> list[Route]:
        """Routes of the main table for IP `version`, only those of `protocol` when given."""
        family = _family(version)
        out: list[Route] = []
        for rtype, body in self.request(RTM_GETROUTE, NLM_F_DUMP,
                                        _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), "dump"):
            if rtype != RTM_NEWROUTE:
                continue
            _fam, dst_len, _src, _tos, table, proto, _scope, rt_type, _flags = _RTMSG.unpack_from(body)
            if rt_type != RTN_UNICAST or (protocol is not None and proto != protocol):
                continue
            dst = gateway = None
            oif = 0
            for atype, value in _attrs(body, _RTMSG.size):
                if atype == RTA_DST:
                    dst = ipaddress.ip_address(value)
                elif atype == RTA_GATEWAY:
                    gateway = ipaddress.ip_address(value)
                elif atype == RTA_OIF:
                    oif = struct.unpack_from("=I", value)[0]
                elif atype == RTA_TABLE:
                    table = struct.unpack_from("=I", value)[0]
            if table != RT_TABLE_MAIN:
                continue
            if dst is None:
                net = ipaddress.ip_network(("0.0.0.0" if version == 4 else "::", 0))
            else:
                net = ipaddress.ip_network((dst, dst_len), strict=False)
            out.append(Route(net, gateway, oif, table, proto))
        return out
