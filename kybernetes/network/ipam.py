"""IP address management for one node's pod CIDRs, in the manner of CNI's host-local plugin.

An `IPAM` hands each pod sandbox one address from each of the node's pod CIDRs (one per
family: two for dual stack, in the node's spec.podCIDRs order). Per range it skips the
network address, the gateway (the first address, which lives on the node's bridge) and
the last address (IPv4's broadcast; host-local skips it for IPv6 too). Addresses are
handed out round-robin from the last one given, as host-local does, so an address just
freed is not reused at once while conntrack entries or peers' caches may still name it.

State is one JSON file per state directory: {sandbox id: ["10.42.0.5/24", "fd42::5/64"]}
and the last address given per range. Every operation is a read-modify-write under an
exclusive flock, so two processes (a kubelet and a restarted kubelet, a benchmark) never
hand out the same address, and the file is replaced atomically (write, then rename), so a
crash leaves the old state or the new, never half of one. It is not fsync'ed: the state
only has to survive a crashed kubelet; after a power loss no sandbox survives and `gc`
with the (empty) live set frees everything.

Calls block on the file system for well under a millisecond; async callers run them off
the event loop (the pod network does, on its worker thread).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class IPAMError(Exception):
    """An allocation that cannot be made (bad ranges, a full range)."""


class IPAMExhausted(IPAMError):
    """Every usable address of a range is taken."""


@dataclass(frozen=True)
class Range:
    """One pod CIDR and the part of it that pods get."""

    network: IPNetwork

    @classmethod
    def parse(cls, cidr: str) -> Range:
        try:
            net = ipaddress.ip_network(cidr.strip(), strict=False)
        except ValueError as e:
            raise IPAMError(f"invalid pod CIDR {cidr!r}: {e}") from None
        if net.num_addresses < 4:
            raise IPAMError(f"pod CIDR {net} is too small: it needs room for a network address, "
                            "a gateway, a pod and a last address")
        return cls(net)

    @property
    def version(self) -> int:
        return self.network.version

    @property
    def gateway(self) -> IPInterface:
        """The gateway pods route through: the first address, with the range's prefix."""
        return ipaddress.ip_interface((self.network.network_address + 1, self.network.prefixlen))

    @property
    def first(self) -> int:
        return int(self.network.network_address) + 2

    @property
    def last(self) -> int:
        return int(self.network.broadcast_address) - 1

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def interface(self, value: int) -> IPInterface:
        return ipaddress.ip_interface((ipaddress.ip_address(value), self.network.prefixlen))

    def __contains__(self, ip: IPAddress) -> bool:
        return ip.version == self.version and self.first <= int(ip) <= self.last


class IPAM:
    """File-backed allocator of one address per range for each sandbox."""

    def __init__(self, state_dir: str | os.PathLike[str], cidrs: Sequence[str]):
        if not cidrs:
            raise IPAMError("no pod CIDRs: the node has no spec.podCIDRs yet")
        self.ranges = [Range.parse(c) for c in cidrs]
        versions = [r.version for r in self.ranges]
        if len(set(versions)) != len(versions):
            raise IPAMError(f"at most one pod CIDR per IP family, got {', '.join(cidrs)}")
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "ipam.json"
        self._lock_path = self.dir / "ipam.lock"

    # ------------------------------------------------------------------ the file

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """The state, under the lock; written back if the body changed it."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            state = self._read()
            before = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
            yield state
            after = orjson.dumps(state, option=orjson.OPT_SORT_KEYS)
            if after != before:
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                with open(tmp, "wb") as f:
                    f.write(orjson.dumps(state, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
                os.replace(tmp, self.path)
        finally:
            os.close(fd)  # releases the flock

    def _read(self) -> dict:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {"sandboxes": {}, "last": {}}
        try:
            state = orjson.loads(data)
            if not isinstance(state.get("sandboxes"), dict) or not isinstance(state.get("last"), dict):
                raise ValueError("not an IPAM state document")
        except ValueError as e:
            # Only a power loss (no fsync) or a hand edit gets here; the allocations are
            # unknowable, and the sandboxes they were for did not survive a power loss.
            log.error("IPAM state %s is unreadable (%s); starting empty", self.path, e)
            return {"sandboxes": {}, "last": {}}
        return state

    # ------------------------------------------------------------------ allocation

    def allocate(self, sandbox_id: str) -> list[IPInterface]:
        """One address per range for `sandbox_id`, in range order; the same ones again
        if it already has them."""
        with self._locked() as state:
            existing = state["sandboxes"].get(sandbox_id)
            if existing:
                return [ipaddress.ip_interface(a) for a in existing]
            # Canonical text (what this file stores) is compared as text: parsing every
            # allocation with ipaddress on every call would cost more than the rest.
            used = {a.split("/", 1)[0] for addrs in state["sandboxes"].values() for a in addrs}
            got: list[IPInterface] = []
            for r in self.ranges:
                key = str(r.network)
                start = r.first
                last = state["last"].get(key)
                if last is not None:
                    with contextlib.suppress(ValueError):
                        ip = ipaddress.ip_address(last)
                        if ip in r:
                            start = int(ip) + 1
                found = self._free(r, start, used)
                if found is None:
                    raise IPAMExhausted(f"no free IPv{r.version} address in pod CIDR {r.network} for "
                                        f"sandbox {sandbox_id}: all {r.size} usable addresses are allocated")
                got.append(r.interface(found))
            for r, iface in zip(self.ranges, got):
                state["last"][str(r.network)] = str(iface.ip)
            state["sandboxes"][sandbox_id] = [str(i) for i in got]
            return got

    @staticmethod
    def _free(r: Range, start: int, used: set[str]) -> int | None:
        """The first free address at or after start, wrapping round; None when full. Among any
        len(used)+1 consecutive candidates one is free unless the range is full, so a /64
        costs no more than a /24."""
        value = start if r.first <= start <= r.last else r.first
        cls = ipaddress.IPv4Address if r.version == 4 else ipaddress.IPv6Address
        for _ in range(min(r.size, len(used) + 1)):
            if str(cls(value)) not in used:
                return value
            value = value + 1 if value < r.last else r.first
        return None

    def get(self, sandbox_id: str) -> list[IPInterface] | None:
        with self._locked() as state:
            addrs = state["sandboxes"].get(sandbox_id)
        return [ipaddress.ip_interface(a) for a in addrs] if addrs else None

    def release(self, sandbox_id: str) -> list[str]:
        """Free `sandbox_id`'s addresses; the addresses freed (none if it had none)."""
        with self._locked() as state:
            return state["sandboxes"].pop(sandbox_id, None) or []

    def allocations(self) -> dict[str, list[str]]:
        """{sandbox id: ["address/prefix", ...]} for every allocation."""
        with self._locked() as state:
            return {k: list(v) for k, v in state["sandboxes"].items()}

    def gc(self, live: Iterable[str]) -> dict[str, list[str]]:
        """Free the allocations of every sandbox not in `live` (those that exist on the node
        now); {sandbox id: addresses freed}."""
        keep = set(live)
        with self._locked() as state:
            dead = {k: v for k, v in state["sandboxes"].items() if k not in keep}
            for k in dead:
                del state["sandboxes"][k]
        for k, v in dead.items():
            log.info("IPAM: freed %s of sandbox %s, which no longer exists", ", ".join(v), k)
        return dead
