"""Nodes in network namespaces of their own on one test-made LAN, as kind runs nodes as containers.

    test (root netns)  10.249.N.1, fd49:0:0:N::1
        │ veth
    lan netns: bridge br0 ─┬─ node 1 netns  eth0 10.249.N.2, fd49:0:0:N::2
                           ├─ node 2 netns  eth0 10.249.N.3, fd49:0:0:N::3
                           └─ …

The nodes share one L2 segment (so the pod network's host-gw routes work between them) and
have no default route: nothing a pod does can leave them. The test talks only to the nodes'
addresses on the LAN. Everything is deleted by `delete()`, even after a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from .conftest import Server, free_port, wait_for

KYB = [sys.executable, "-m", "kybernetes.cli.main"]


def capable() -> tuple[bool, str]:
    """Whether this machine can run nodes in namespaces with real containers, and why not."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces, bridges, nftables)"
    for tool in ("ip", "nft", "nsenter"):
        if shutil.which(tool) is None:
            return False, f"{tool} not found"
    from kybernetes.runtime.oci import OciRuntime
    return OciRuntime.available()


def _run(*argv: str) -> None:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stderr.strip()}")


class NodeNamespace:
    """One node's network namespace: `eth0` on the LAN with an IPv4 and an IPv6 address."""

    def __init__(self, name: str, node_ip: str, node_ip6: str) -> None:
        self.name, self.node_ip, self.node_ip6 = name, node_ip, node_ip6

    def exec(self, *argv: str) -> None:
        _run("ip", "netns", "exec", self.name, *argv)

    def prefix(self) -> list[str]:
        # nsenter changes only the network namespace: `ip netns exec` would also remount /sys
        # and hide the cgroup hierarchies the OCI runtime needs.
        return ["nsenter", f"--net=/run/netns/{self.name}"]


class NodeLan:
    """A LAN of node namespaces behind one bridge, reachable from the test over a veth."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.n = int(self.tag, 16) % 200 + 20
        self.lan = f"kyblan-{self.tag}"
        self.host_if = f"kyb{self.tag}h"
        self.host_ip, self.host_ip6 = self.address(1)
        self.nodes: list[NodeNamespace] = []
        try:
            _run("ip", "netns", "add", self.lan)
            self._lan("ip", "link", "set", "lo", "up")
            self._lan("ip", "link", "add", "br0", "type", "bridge")
            self._lan("ip", "link", "set", "br0", "up")
            self._plug(self.host_if, None)
            _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
            _run("ip", "addr", "add", f"{self.host_ip6}/64", "dev", self.host_if, "nodad")
            _run("ip", "link", "set", self.host_if, "up")
        except Exception:
            self.delete()
            raise

    def address(self, i: int) -> tuple[str, str]:
        return f"10.249.{self.n}.{i}", f"fd49:0:0:{self.n:x}::{i:x}"

    def _lan(self, *argv: str) -> None:
        _run("ip", "netns", "exec", self.lan, *argv)

    def _plug(self, ifname: str, netns: str | None) -> None:
        """A veth from `netns` (None: the test's own) to the LAN's bridge."""
        peer = f"{ifname}l"
        _run("ip", "link", "add", ifname, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", self.lan)
        self._lan("ip", "link", "set", peer, "master", "br0")
        self._lan("ip", "link", "set", peer, "up")
        if netns is not None:
            _run("ip", "link", "set", ifname, "netns", netns)

    def add_node(self) -> NodeNamespace:
        i = len(self.nodes) + 2
        ip, ip6 = self.address(i)
        node = NodeNamespace(f"kybnode-{self.tag}-{i}", ip, ip6)
        _run("ip", "netns", "add", node.name)
        self.nodes.append(node)
        tmp = f"kyb{self.tag}{i}"
        self._plug(tmp, node.name)
        node.exec("ip", "link", "set", "lo", "up")
        node.exec("ip", "link", "set", tmp, "name", "eth0")
        node.exec("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        node.exec("ip", "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
        node.exec("ip", "link", "set", "eth0", "up")
        return node

    def delete(self) -> None:
        for name in [n.name for n in self.nodes] + [self.lan]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)


class NamespacedServer(Server):
    """`kyb server` started inside a node namespace, reached on the node's LAN address."""

    def __init__(self, data_dir: Path, port: int, ns: NodeNamespace, extra_args: list[str] | None = None,
                 node_ips: str | None = None):
        super().__init__(data_dir, port, ["--bind", ns.node_ip, "--node-ip", node_ips or ns.node_ip,
                                          "--tls-san", ns.node_ip, "--runtime", "oci", "--pod-network", "bridge",
                                          *(extra_args or [])])
        self.ns = ns

    def start(self, timeout: float = 30.0) -> float:
        t0 = time.monotonic()
        logf = open(self.log, "ab")  # noqa: SIM115 - the server process owns it
        self.proc = subprocess.Popen(
            [*self.ns.prefix(), *KYB, "server", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--kubelet-port", "0", *self.extra_args], stdout=logf, stderr=logf)
        wait_for(lambda: self.proc.poll() is not None or b"ready at" in self.log.read_bytes(), timeout)
        if self.proc.poll() is not None:
            raise RuntimeError("server exited:\n" + self.log.read_text())
        return time.monotonic() - t0


class NamespacedAgent:
    """`kyb agent` in a node namespace, joined to `server` with its join string."""

    def __init__(self, server: NamespacedServer, data_dir: Path, ns: NodeNamespace, name: str,
                 node_ips: str | None = None) -> None:
        self.server, self.data_dir, self.ns, self.name = server, data_dir, ns, name
        self.node_ips = node_ips or ns.node_ip
        self.log = data_dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        join = (self.server.data_dir / "pki" / "join.token").read_text().strip()
        logf = open(self.log, "ab")  # noqa: SIM115 - the agent process owns it
        self.proc = subprocess.Popen(
            [*self.ns.prefix(), *KYB, "agent", "--server", f"https://{self.server.ns.node_ip}:{self.server.port}",
             "--token", join, "--data-dir", str(self.data_dir), "--name", self.name, "--node-ip", self.node_ips,
             "--kubelet-port", "0", "--runtime", "oci", "--pod-network", "bridge"], stdout=logf, stderr=logf)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run([*self.ns.prefix(), *KYB, "killall", "--data-dir", str(self.data_dir)],
                           capture_output=True, timeout=60)


def http_get(host: str, port: int, path: str = "/") -> bytes:
    """One HTTP/1.0 GET; the whole response."""
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def try_get(host: str, port: int, path: str = "/") -> bytes | None:
    try:
        return http_get(host, port, path)
    except OSError:
        return None


def node_ready(s: Server, name: str) -> bool:
    p = s.kubectl("get", "node", name, "-o", "json", check=False)
    if p.returncode != 0:
        return False
    conds = (json.loads(p.stdout).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


SERVER_NODE, AGENT_NODE = "node-a", "node-b"


@contextlib.contextmanager
def two_nodes(tmp_path_factory, images: list[str], *, dual_stack: bool = False,
              server_args: tuple[str, ...] = ()):
    """A LAN with `kyb server` (node SERVER_NODE) and a joined `kyb agent` (AGENT_NODE) on it, both
    Ready, each with the image tarballs `images` imported; (lan, server, agent), all gone afterwards."""
    lan = NodeLan()
    agent = server = None
    try:
        a, b = lan.add_node(), lan.add_node()
        data, agent_data = tmp_path_factory.mktemp("kyb-a"), tmp_path_factory.mktemp("kyb-b")
        for d in (data, agent_data):
            p = subprocess.run([*KYB, "image", "import", "--data-dir", str(d), *images], capture_output=True,
                               text=True, timeout=120)
            assert p.returncode == 0, p.stderr
        extra = ["--node-name", SERVER_NODE, *server_args]
        if dual_stack:
            extra += ["--cluster-cidr", "10.42.0.0/16,fd42::/56", "--service-cidr", "10.43.0.0/16,fd43::/112"]
        server = NamespacedServer(data, free_port(), a, node_ips=f"{a.node_ip},{a.node_ip6}" if dual_stack else None,
                                  extra_args=extra)
        server.start()
        agent = NamespacedAgent(server, agent_data, b, AGENT_NODE,
                                node_ips=f"{b.node_ip},{b.node_ip6}" if dual_stack else None)
        agent.start()
        try:
            wait_for(lambda: node_ready(server, AGENT_NODE) and node_ready(server, SERVER_NODE), 60)
        except Exception as e:
            raise AssertionError(f"nodes not ready ({e!r}):\n" + agent.log.read_text()[-4000:]) from None
        yield lan, server, agent
    finally:
        if agent is not None:
            agent.stop()
        if server is not None:
            server.stop()
        lan.delete()
