"""The nft layer: transactions through libnftables and through the `nft` binary, inside a
throwaway network namespace (removed afterwards, even on failure)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from kybernetes.network.nftables import Nft, NftError, Script, library_available


def test_script_batches_elements_per_set() -> None:
    s = Script("inet", "t")
    assert not s
    s.elements("add", "m", (f"{i} : {i}" for i in range(5)), chunk=2)
    s.elements("delete", "n", [])
    assert s.lines == ["add element inet t m { 0 : 0, 1 : 1 }", "add element inet t m { 2 : 2, 3 : 3 }",
                       "add element inet t m { 4 : 4 }"]
    assert s.text().endswith("}\n")


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2")
    name = f"kpx-nft-{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode:
        pytest.skip("cannot create a network namespace")
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def _modes() -> list[bool]:
    modes = [m for m, ok in ((True, library_available()), (False, shutil.which("nft") is not None)) if ok]
    return modes or [True]


@pytest.mark.parametrize("use_library", _modes(), ids=lambda m: "library" if m else "binary")
async def test_transactions_are_atomic_and_stay_in_their_namespace(netns: str, use_library: bool) -> None:
    if not (library_available() or shutil.which("nft")):
        pytest.skip("nftables is not installed")
    nft = Nft(netns=netns, use_library=use_library)
    table = f"t{uuid.uuid4().hex[:6]}"
    try:
        await nft.run(f"table inet {table} {{ set s {{ type ipv4_addr; }}; }}\n"
                      f"add element inet {table} s {{ 10.0.0.1, 10.0.0.2 }}\n")
        doc = await nft.json(f"list set inet {table} s")
        [item] = [i["set"] for i in doc["nftables"] if "set" in i]
        assert sorted(item["elem"]) == ["10.0.0.1", "10.0.0.2"]
        # One bad command and nothing of the transaction happens.
        with pytest.raises(NftError) as err:
            await nft.run(f"add element inet {table} s {{ 10.0.0.3 }}\n"
                          f"add element inet {table} nosuchset {{ 10.0.0.4 }}\n")
        assert err.value.script
        doc = await nft.json(f"list set inet {table} s")
        [item] = [i["set"] for i in doc["nftables"] if "set" in i]
        assert "10.0.0.3" not in item["elem"]
        # The table is in the namespace, not in ours.
        here = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert table not in here
        # sysctl writes land in the same namespace.
        await nft.sysctl("net.ipv4.conf.all.route_localnet", "1")
        inside = subprocess.run(["ip", "netns", "exec", os.path.basename(netns), "sysctl", "-n",
                                 "net.ipv4.conf.all.route_localnet"], capture_output=True, text=True).stdout
        assert inside.strip() == "1"
    finally:
        try:
            await nft.run(f"delete table inet {table}\n")
        finally:
            await nft.close()
