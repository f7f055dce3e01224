"""The kernel side of the service proxy: nft scripts applied as single transactions, and
conntrack cleanup, optionally inside another network namespace.

`Nft` runs a script of nft commands as one atomic transaction (the kernel applies all
of it or none). It talks to libnftables in-process through ctypes when the library
loads (it ships with the `nft` binary: Debian's nftables depends on libnftables1), and
falls back to piping the script into `nft -f -`. The library path is what makes
incremental updates cheap: on this machine adding and deleting one map element takes
0.1-2 ms in-process against 10-20 ms for exec'ing `nft` (most of that is starting the
binary and its libraries), and a cold load of 10,000 services is the same ~0.25 s
either way. Debian's python3-nftables is a thin ctypes wrapper over the same library,
installed for Debian's python3 only; our venv cannot import it, so the few calls it
makes are spelled out here instead.

libnftables works in the network namespace of the calling thread, and a context is not
thread-safe, so every call runs on one dedicated worker thread that entered `netns` (a
path such as /run/netns/NAME) once at start; the event loop never blocks on a
transaction (ctypes releases the GIL). The `nft` fallback is started through
`nsenter --net=` for another namespace. `sysctl` writes go through the same worker, so
they land in the same namespace.

`Script` collects commands and batches set elements into one statement per set.

`delete_conntrack` removes conntrack entries through ctnetlink (NETLINK_NETFILTER),
which is what kube-proxy does with its netlink library for UDP flows to endpoints that
went away: otherwise a UDP "connection" keeps being NATed to the dead endpoint until
its entry times out. The `conntrack` CLI is not needed (and is not installed here).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import ipaddress
import logging
import os
import shutil
import socket
import struct
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from kybernetes.runtime.nsutil import CLONE_NEWNET, setns

log = logging.getLogger(__name__)

_NFT_CTX_OUTPUT_JSON = 1 << 4


class NftError(Exception):
    """An nft transaction the kernel or the parser refused; nothing of it was applied."""

    def __init__(self, message: str, script: str = ""):
        super().__init__(message)
        self.script = script


class _Lib:
    """The few libnftables entry points the service proxy needs."""

    def __init__(self) -> None:
        lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        if not self.ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)

    def run(self, script: str, json: bool = False) -> tuple[int, str, str]:
        lib, ctx = self.lib, self.ctx
        flags = lib.nft_ctx_output_get_flags(ctx)
        lib.nft_ctx_output_set_flags(ctx, (flags | _NFT_CTX_OUTPUT_JSON) if json else
                                     (flags & ~_NFT_CTX_OUTPUT_JSON))
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return rc, out, err

    def close(self) -> None:
        if self.ctx:
            self.lib.nft_ctx_free(self.ctx)
            self.ctx = None


def library_available() -> bool:
    try:
        ctypes.CDLL("libnftables.so.1")
    except OSError:
        return False
    return True


def nft_available(binary: str = "nft") -> bool:
    """Whether nftables can be driven here at all (the library or the binary)."""
    return library_available() or shutil.which(binary) is not None


class Nft:
    """Applies nft scripts as one transaction each, in `netns` (a path) or in our own namespace."""

    def __init__(self, *, netns: str | None = None, binary: str = "nft", use_library: bool | None = None):
        self.netns = netns
        self.binary = binary
        self.use_library = library_available() if use_library is None else use_library
        self._lib: _Lib | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ the worker thread

    def _enter_netns(self) -> None:
        if self.netns is None:
            return
        fd = os.open(self.netns, os.O_RDONLY)
        try:
            setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._pool is None:
            # One thread for life: libnftables contexts are not thread-safe, and the
            # thread's namespace is the namespace every call acts in.
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nft",
                                                               initializer=self._enter_netns)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _lib_run(self, script: str, json: bool) -> tuple[int, str, str]:
        if self._lib is None:
            self._lib = _Lib()
        return self._lib.run(script, json)

    # ------------------------------------------------------------------ public

    async def run(self, script: str) -> str:
        """Apply `script` (nft commands, one per line) as one transaction; its output."""
        if self.use_library:
            rc, out, err = await self._call(self._lib_run, script, False)
        else:
            rc, out, err = await self._exec(["-f", "-"], script)
        if rc != 0:
            raise NftError(_first_lines(err) or f"nft exited with {rc}", script)
        return out

    async def json(self, command: str) -> Any:
        """A `list ...` command's answer as decoded JSON (nft -j)."""
        if self.use_library:
            rc, out, err = await self._call(self._lib_run, command, True)
        else:
            # `nft -j -f -` prints nothing for list commands: pass the command as arguments.
            rc, out, err = await self._exec(["-j", *command.split()], "")
        if rc != 0:
            raise NftError(_first_lines(err) or f"nft exited with {rc}", command)
        return orjson.loads(out) if out.strip() else {}

    async def sysctl(self, name: str, value: str) -> None:
        """Write /proc/sys/<name with dots as slashes> inside our namespace."""
        path = "/proc/sys/" + name.replace(".", "/")

        def write() -> None:
            with open(path, "w") as f:
                f.write(value)

        await self._call(write)

    async def in_netns(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the worker thread, inside our namespace."""
        return await self._call(fn, *args)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        lib, self._lib = self._lib, None
        if lib is not None:
            await asyncio.get_running_loop().run_in_executor(pool, lib.close)
        pool.shutdown(wait=False)

    async def _exec(self, args: list[str], stdin: str) -> tuple[int, str, str]:
        prefix = ["nsenter", f"--net={self.netns}"] if self.netns else []
        proc = await asyncio.create_subprocess_exec(*prefix, self.binary, *args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate(stdin.encode())
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _first_lines(text: str, n: int = 6) -> str:
    return "\n".join(text.strip().splitlines()[:n])


class Script:
    """nft commands for one transaction; elements are batched into one statement per set."""

    def __init__(self, family: str, table: str):
        self.family = family
        self.table = table
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def elements(self, op: str, set_name: str, items: Iterable[str], chunk: int = 10_000) -> None:
        """`add`/`delete` element lines for `items` ("key" or "key : value" strings)."""
        batch: list[str] = []
        for item in items:
            batch.append(item)
            if len(batch) >= chunk:
                self._element_line(op, set_name, batch)
                batch = []
        if batch:
            self._element_line(op, set_name, batch)

    def _element_line(self, op: str, set_name: str, batch: list[str]) -> None:
        self.lines.append(f"{op} element {self.family} {self.table} {set_name} {{ {', '.join(batch)} }}")

    def __bool__(self) -> bool:
        return bool(self.lines)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# ---------------------------------------------------------------------- a table as objects

# An object of a table we own: ("e", set or map, element) -> its value ("" for a set's element),
# ("c", chain, "") -> its rules (newline-separated), ("s", set, "") -> its definition.
ObjKey = tuple[str, str, str]


def changes(s: Script, kernel: Mapping[ObjKey, str], wanted: Mapping[ObjKey, str | None]) -> Script:
    """Add to `s` the commands taking `kernel` to `wanted` (only the keys in it; None = remove),
    in the order one transaction needs: what is referenced exists first, and a chain or set
    goes only once nothing refers to it any more."""
    t = f"{s.family} {s.table}"
    new_sets: list[tuple[str, str]] = []
    gone_sets: list[str] = []
    new_chains: list[str] = []
    gone_chains: list[str] = []
    rewrite: list[tuple[str, bool, str]] = []
    adds: dict[str, list[str]] = {}
    dels: dict[str, list[str]] = {}
    for key, value in wanted.items():
        kind, name, elem = key
        old = kernel.get(key)
        if old == value:
            continue
        if kind == "e":
            if old is not None:
                dels.setdefault(name, []).append(elem)
            if value is not None:
                adds.setdefault(name, []).append(f"{elem} : {value}" if value else elem)
        elif kind == "c":
            if value is None:
                gone_chains.append(name)
            else:
                if old is None:
                    new_chains.append(name)
                rewrite.append((name, old is not None, value))
        elif kind == "s":
            if old is not None:
                gone_sets.append(name)  # a set's definition never changes under one name
            if value is not None:
                new_sets.append((name, value))
    for name, spec in new_sets:
        s.add(f"add set {t} {name} {{ {spec} }}")
    for name in new_chains:
        s.add(f"add chain {t} {name}")
    for name, existed, rules in rewrite:
        if existed:
            s.add(f"flush chain {t} {name}")
        for rule in rules.split("\n"):
            s.add(f"add rule {t} {name} {rule}")
    gone = set(gone_sets)
    for name, items in dels.items():
        if name not in gone:  # deleting the set deletes its elements
            s.elements("delete", name, items)
    for name, items in adds.items():
        s.elements("add", name, items)
    for name in gone_chains:
        s.add(f"flush chain {t} {name}")
    for name in gone_chains:
        s.add(f"delete chain {t} {name}")
    for name in gone_sets:
        s.add(f"delete set {t} {name}")
    return s


class Desired:
    """Objects keyed by ObjKey with the owners wanting each (the proxy's Service keys, the
    policy agent's pod keys); the value of a key is its smallest owner's, so two owners
    claiming one object resolve the same way every time."""

    def __init__(self) -> None:
        self.fragments: dict[str, dict[Hashable, Any]] = {}
        self.owners: dict[Hashable, dict[str, Any]] = {}

    def set(self, owner: str, fragment: dict[Hashable, Any]) -> set[Hashable]:
        """Replace owner's fragment; the keys whose value may have changed."""
        old = self.fragments.pop(owner, {})
        if fragment:
            self.fragments[owner] = fragment
        touched: set[Hashable] = set()
        for key, value in old.items():
            if fragment.get(key, _MISSING) != value:
                touched.add(key)
                owners = self.owners[key]
                del owners[owner]
                if not owners:
                    del self.owners[key]
        for key, value in fragment.items():
            if old.get(key, _MISSING) != value:
                touched.add(key)
                self.owners.setdefault(key, {})[owner] = value
        return touched

    def value(self, key: Hashable) -> Any:
        owners = self.owners.get(key)
        if not owners:
            return None
        return owners[min(owners)] if len(owners) > 1 else next(iter(owners.values()))

    def everything(self) -> dict[Hashable, Any]:
        return {key: self.value(key) for key in self.owners}

    def clear(self) -> None:
        self.fragments.clear()
        self.owners.clear()


_MISSING = object()


# ---------------------------------------------------------------------- conntrack (ctnetlink)

_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_CTNETLINK = 1
_IPCTNL_MSG_CT_GET = 1
_IPCTNL_MSG_CT_DELETE = 2
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLA_F_NESTED = 0x8000
_CTA_TUPLE_ORIG = 1
_CTA_TUPLE_REPLY = 2
_CTA_ZONE = 18
_CTA_TUPLE_IP = 1
_CTA_TUPLE_PROTO = 2
_CTA_PROTO_NUM = 1
_CTA_PROTO_SRC_PORT = 2
_CTA_PROTO_DST_PORT = 3
IPPROTO_UDP = 17


@dataclass(frozen=True)
class NatFlow:
    """UDP conntrack entries to delete: those addressed to dst_ip (None: any address) on dst_port
    and NATed to endpoint ip:port, or, with endpoint_ip None, those that were not NATed at all
    (a packet sent before the Service was programmed pins its flow to no endpoint)."""

    endpoint_ip: str | None
    endpoint_port: int
    dst_ip: str | None
    dst_port: int


def _attrs(data: bytes, offset: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes, int, int]]:
    """(type without flags, payload, start, stop) of each netlink attribute in data[offset:end]."""
    end = len(data) if end is None else end
    while offset + 4 <= end:
        length, atype = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield atype & 0x3FFF, data[offset + 4:offset + length], offset, offset + length
        offset += (length + 3) & ~3


def _tuple(payload: bytes) -> tuple[str | None, str | None, int, int, int]:
    """(src ip, dst ip, protocol, src port, dst port) of a CTA_TUPLE_* payload."""
    src = dst = None
    proto = sport = dport = 0
    for atype, value, _, _ in _attrs(payload):
        if atype == _CTA_TUPLE_IP:
            for itype, ivalue, _, _ in _attrs(value):
                if itype in (1, 3):
                    src = str(ipaddress.ip_address(ivalue))
                elif itype in (2, 4):
                    dst = str(ipaddress.ip_address(ivalue))
        elif atype == _CTA_TUPLE_PROTO:
            for ptype, pvalue, _, _ in _attrs(value):
                if ptype == _CTA_PROTO_NUM:
                    proto = pvalue[0]
                elif ptype == _CTA_PROTO_SRC_PORT:
                    sport = struct.unpack("!H", pvalue[:2])[0]
                elif ptype == _CTA_PROTO_DST_PORT:
                    dport = struct.unpack("!H", pvalue[:2])[0]
    return src, dst, proto, sport, dport


def _nl_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, offset)
        if length < 16:
            return
        yield mtype, data[offset + 16:offset + length]
        offset += (length + 3) & ~3


def _request(mtype: int, flags: int, family: int, seq: int, payload: bytes = b"") -> bytes:
    body = struct.pack("=BBH", family, 0, 0) + payload
    return struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_CTNETLINK << 8) | mtype, flags, seq, 0) + body


def delete_conntrack_sync(flows: Iterable[NatFlow]) -> int:
    """Delete the UDP conntrack entries matching `flows` in the calling thread's namespace;
    how many were deleted."""
    wanted: dict[tuple[str | None, int], list[NatFlow]] = {}
    families: set[int] = set()
    for f in flows:
        key = (f.endpoint_ip, f.endpoint_port) if f.endpoint_ip else (None, f.dst_port)
        wanted.setdefault(key, []).append(f)
        families.add(socket.AF_INET6 if ":" in (f.endpoint_ip or f.dst_ip or "") else socket.AF_INET)
        if not f.endpoint_ip and not f.dst_ip:
            families.update((socket.AF_INET, socket.AF_INET6))
    if not wanted:
        return 0
    deleted = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
        sock.bind((0, 0))
        seq = 1
        for family in families:
            doomed: list[bytes] = []
            sock.send(_request(_IPCTNL_MSG_CT_GET, _NLM_F_REQUEST | _NLM_F_DUMP, family, seq))
            done = False
            while not done:
                data = sock.recv(1 << 20)
                for mtype, body in _nl_messages(data):
                    if mtype in (_NLMSG_DONE, _NLMSG_ERROR):
                        done = True
                        break
                    orig_attr = zone = b""
                    orig = reply = None
                    for atype, value, start, stop in _attrs(body, 4):
                        if atype == _CTA_TUPLE_ORIG:
                            orig_attr, orig = body[start:stop], _tuple(value)
                        elif atype == _CTA_TUPLE_REPLY:
                            reply = _tuple(value)
                        elif atype == _CTA_ZONE:
                            zone = body[start:stop]
                    if orig is None or reply is None or reply[2] != IPPROTO_UDP:
                        continue
                    if orig[1] == reply[0] and orig[4] == reply[3]:
                        candidates = wanted.get((None, orig[4]), ())  # not NATed
                    else:
                        candidates = wanted.get((reply[0], reply[3]), ())
                    for f in candidates:
                        if f.dst_port == orig[4] and f.dst_ip in (None, orig[1]):
                            doomed.append(_pad(orig_attr) + _pad(zone))
                            break
            for attrs in doomed:
                seq += 1
                sock.send(_request(_IPCTNL_MSG_CT_DELETE, _NLM_F_REQUEST | _NLM_F_ACK, family, seq, attrs))
                with contextlib.suppress(OSError):
                    for mtype, body in _nl_messages(sock.recv(65536)):
                        if mtype == _NLMSG_ERROR and struct.unpack_from("=i", body)[0] == 0:
                            deleted += 1
            seq += 1
    return deleted


def _pad(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)
