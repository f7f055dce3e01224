"""The host-local style allocator: ranges, round-robin, persistence, exhaustion, GC."""

from __future__ import annotations

import ipaddress
import multiprocessing
from pathlib import Path

import pytest

from kybernetes.network.ipam import IPAM, IPAMError, IPAMExhausted, Range


def test_ranges_skip_network_gateway_and_last_address() -> None:
    r = Range.parse("10.42.0.0/24")
    assert str(r.gateway) == "10.42.0.1/24"
    assert (str(ipaddress.ip_address(r.first)), str(ipaddress.ip_address(r.last))) == ("10.42.0.2", "10.42.0.254")
    assert r.size == 253
    r6 = Range.parse("fd42::/64")
    assert str(r6.gateway) == "fd42::1/64" and str(ipaddress.ip_address(r6.first)) == "fd42::2"
    with pytest.raises(IPAMError, match="too small"):
        Range.parse("10.0.0.0/31")
    with pytest.raises(IPAMError, match="invalid pod CIDR"):
        Range.parse("10.0.0.300/24")


def test_dual_stack_allocation_is_stable_per_sandbox(tmp_path: Path) -> None:
    ipam = IPAM(tmp_path, ["10.42.0.0/24", "fd42::/64"])
    a = ipam.allocate("a")
    assert [str(i) for i in a] == ["10.42.0.2/24", "fd42::2/64"]
    assert ipam.allocate("a") == a  # idempotent
    b = ipam.allocate("b")
    assert [str(i) for i in b] == ["10.42.0.3/24", "fd42::3/64"]
    assert ipam.get("a") == a and ipam.get("nope") is None
    # A new object on the same directory (a restarted kubelet) sees the same state.
    again = IPAM(tmp_path, ["10.42.0.0/24", "fd42::/64"])
    assert again.allocations() == {"a": ["10.42.0.2/24", "fd42::2/64"], "b": ["10.42.0.3/24", "fd42::3/64"]}
    assert again.release("a") == ["10.42.0.2/24", "fd42::2/64"]
    assert again.release("a") == []
    # Round-robin: the freed address is not handed out again straight away.
    assert str(again.allocate("c")[0]) == "10.42.0.4/24"
    with pytest.raises(IPAMError, match="one pod CIDR per IP family"):
        IPAM(tmp_path, ["10.42.0.0/24", "10.43.0.0/24"])


def test_exhaustion_is_a_clear_error_and_wraps_round(tmp_path: Path) -> None:
    ipam = IPAM(tmp_path, ["10.9.0.0/29"])  # .0 network, .1 gateway, .2-.6 pods, .7 broadcast
    got = [str(ipam.allocate(f"s{i}")[0].ip) for i in range(5)]
    assert got == ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
    with pytest.raises(IPAMExhausted, match=r"no free IPv4 address in pod CIDR 10.9.0.0/29 for sandbox s5: "
                                            r"all 5 usable addresses are allocated"):
        ipam.allocate("s5")
    assert "s5" not in ipam.allocations()
    ipam.release("s2")
    assert str(ipam.allocate("s5")[0].ip) == "10.9.0.4"  # wrapped round to the only free one


def test_a_full_family_allocates_nothing_for_the_other(tmp_path: Path) -> None:
    ipam = IPAM(tmp_path, ["fd42::/64", "10.9.0.0/30"])  # one IPv4 address for pods
    assert [str(i.ip) for i in ipam.allocate("a")] == ["fd42::2", "10.9.0.2"]
    with pytest.raises(IPAMExhausted, match="IPv4"):
        ipam.allocate("b")
    assert list(ipam.allocations()) == ["a"]


def test_gc_frees_what_no_live_sandbox_holds(tmp_path: Path) -> None:
    ipam = IPAM(tmp_path, ["10.42.0.0/24"])
    for s in ("a", "b", "c"):
        ipam.allocate(s)
    assert ipam.gc(live=["b", "unknown"]) == {"a": ["10.42.0.2/24"], "c": ["10.42.0.4/24"]}
    assert list(ipam.allocations()) == ["b"]
    assert ipam.gc(live=["b"]) == {}


def test_an_unreadable_state_file_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "ipam.json").write_text("{not json")
    ipam = IPAM(tmp_path, ["10.42.0.0/24"])
    assert ipam.allocations() == {}
    assert str(ipam.allocate("a")[0]) == "10.42.0.2/24"


def _allocate_many(args: tuple[str, int, int]) -> list[str]:
    path, start, n = args
    ipam = IPAM(path, ["10.42.0.0/24"])
    return [str(ipam.allocate(f"p{start + i}")[0].ip) for i in range(n)]


def test_processes_sharing_the_directory_never_hand_out_one_address_twice(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_allocate_many, [(str(tmp_path), 0, 40), (str(tmp_path), 100, 40)])
    addrs = [a for r in results for a in r]
    assert len(addrs) == 80 and len(set(addrs)) == 80
    assert len(IPAM(tmp_path, ["10.42.0.0/24"]).allocations()) == 80
